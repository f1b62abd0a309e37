import logging
import socket
import time
from decimal import Decimal

import pytest

from zmqbalance import (
    BadRequest,
    Balance,
    Client,
    InsufficientFunds,
    InvalidAccount,
    InvalidAmount,
    InvalidRid,
    LimitExceeded,
    RefusedError,
    RequestError,
    RidConflict,
    ServerInfo,
    TimedOut,
    UnknownOp,
)
from zmqbalance.client import encode_amount
from zmqbalance.errors import ERROR_CLASSES, WIRE_ERRORS


def unused_endpoint() -> str:
    """Return a loopback address that nothing listens on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"tcp://127.0.0.1:{port}"


def test_balance_result_typed(client: Client) -> None:
    result = client.plus_funds("a", "12.50")
    assert isinstance(result, Balance)
    assert result.account == "a"
    assert result.balance == Decimal("12.5")
    assert isinstance(result.balance, Decimal)
    assert result.balance_text == "12.500000"
    assert result.count == 1
    assert result.replay is False
    assert str(result) == "12.500000 1"


def test_balance_of_unknown_account(client: Client) -> None:
    result = client.balance("nobody")
    assert result.balance == 0
    assert result.balance_text == "0.000000"
    assert result.count == 0


def test_ping_result_typed(client: Client) -> None:
    assert client.ping() == ServerInfo(workers=4, scale=6, partition="crc32")


def test_rid_echoed(client: Client) -> None:
    assert client.plus_funds("a", 1, rid="text-rid").rid == "text-rid"
    assert client.plus_funds("a", 1, rid=b"\x00\xff").rid == b"\x00\xff"


def test_generated_rid_echoed(client: Client) -> None:
    rid = client.plus_funds("a", 1).rid
    assert isinstance(rid, bytes)
    assert len(rid) == 16


def test_replay_flag(client: Client) -> None:
    client.plus_funds("a", 1, rid="r1")
    again = client.plus_funds("a", 1, rid="r1")
    assert again.replay is True
    assert again.count == 1


def test_insufficient_funds_raised(client: Client) -> None:
    with pytest.raises(InsufficientFunds) as info:
        client.sub_funds("a", 1, rid="r2")
    error = info.value
    assert isinstance(error, RefusedError)
    assert error.code == "insufficient_funds"
    assert error.op == "sub_funds"
    assert error.account == "a"
    assert error.rid == "r2"
    assert "0.000000" in str(error)
    assert "account='a'" in str(error)


def test_limit_exceeded_raised(client: Client) -> None:
    client.plus_funds("a", "9223372036854.775807")
    with pytest.raises(LimitExceeded):
        client.plus_funds("a", 1)


def test_rid_conflict_raised(client: Client) -> None:
    client.plus_funds("a", 1, rid="r3")
    with pytest.raises(RidConflict) as info:
        client.plus_funds("a", 2, rid="r3")
    assert "'r3'" in info.value.message


@pytest.mark.parametrize("rid", ["r" * 65, b"", 5], ids=["long", "empty", "integer"])
def test_invalid_rid_raised(client: Client, rid: object) -> None:
    # The server leaves an unreadable rid out of its reply; the client must still match it.
    started = time.monotonic()
    with pytest.raises(InvalidRid):
        client.plus_funds("a", 1, rid=rid)  # type: ignore[arg-type]
    assert time.monotonic() - started < client.timeout
    assert client.balance("a").count == 0


def test_request_errors_raised(client: Client) -> None:
    with pytest.raises(InvalidAccount):
        client.balance("")
    with pytest.raises(InvalidAmount):
        client.plus_funds("a", "1.0000001")
    with pytest.raises(UnknownOp):
        client.request({"op": "steal", "account": "a"})
    with pytest.raises(BadRequest):
        client.request({"op": "ping", "memo": 1})


def test_error_table_complete() -> None:
    for cls in WIRE_ERRORS:
        assert ERROR_CLASSES[cls.code] is cls
    assert set(ERROR_CLASSES) == {
        "bad_request",
        "unknown_op",
        "invalid_account",
        "invalid_amount",
        "invalid_rid",
        "rid_conflict",
        "too_large",
        "wrong_partition",
        "insufficient_funds",
        "limit_exceeded",
        "busy",
        "unavailable",
        "internal_error",
    }


def test_decimal_amount_kept_exact(client: Client) -> None:
    assert client.plus_funds("a", Decimal("1E+2")).balance_text == "100.000000"
    assert client.plus_funds("a", Decimal("0.000001")).balance_text == "100.000001"


@pytest.mark.parametrize(
    ("amount", "wire"),
    [
        (Decimal("1E+2"), "100"),
        (Decimal("0.10"), "0.10"),
        (Decimal("1E-7"), "0.0000001"),
        (5, 5),
        ("5.5", "5.5"),
        (0.1, 0.1),
    ],
)
def test_encode_amount(amount: object, wire: object) -> None:
    assert encode_amount(amount) == wire  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "amount", [Decimal("NaN"), Decimal("Infinity"), True, None, b"1"], ids=repr
)
def test_encode_amount_rejects(amount: object) -> None:
    with pytest.raises(InvalidAmount):
        encode_amount(amount)  # type: ignore[arg-type]


def test_timed_out_after_retries(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="zmqbalance.client")
    started = time.monotonic()
    with Client(unused_endpoint(), timeout=0.2, retries=2) as client:
        with pytest.raises(TimedOut) as info:
            client.balance("a")
    elapsed = time.monotonic() - started

    assert info.value.op == "balance"
    assert info.value.account == "a"
    assert "3 attempts" in info.value.message
    assert [record.getMessage().endswith("of 3)") for record in caplog.records] == [True] * 3
    # Three attempts of 0.2 s each; the upper bound only catches a client that waits far longer.
    assert elapsed >= 0.6
    assert elapsed < 3.0


def test_client_usable_after_timeout(client: Client) -> None:
    with Client(unused_endpoint(), timeout=0.1, retries=0) as lost:
        with pytest.raises(TimedOut):
            lost.ping()
        lost.endpoint = client.endpoint  # the next request opens a new socket to this address
        assert lost.ping().workers == 4


def test_request_errors_not_retried(client: Client, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="zmqbalance.client")
    with pytest.raises(RequestError):
        client.plus_funds("a", -1)
    assert [record for record in caplog.records if record.name == "zmqbalance.client"] == []


@pytest.mark.parametrize(("timeout", "retries"), [(0, 3), (-1, 3), (1, -1)])
def test_client_rejects_bad_options(timeout: float, retries: int) -> None:
    with pytest.raises(ValueError):
        Client(timeout=timeout, retries=retries)


def test_client_repr() -> None:
    with Client("tcp://127.0.0.1:7070", timeout=1, retries=0) as client:
        assert repr(client) == "<Client tcp://127.0.0.1:7070 timeout=1 retries=0>"
