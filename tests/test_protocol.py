from typing import Any

import msgpack
import pytest

from zmqbalance.errors import RequestError
from zmqbalance.ledger import Outcome
from zmqbalance.protocol import (
    Request,
    decode_request,
    encode_error,
    encode_outcome,
    encode_ping,
    peek_rid,
    read_account,
)


def decode(message: object, *, debug_ops: bool = False) -> Request:
    return decode_request(msgpack.packb(message), 6, debug_ops=debug_ops)


def rejection(message: object, *, debug_ops: bool = False) -> RequestError:
    with pytest.raises(RequestError) as info:
        decode(message, debug_ops=debug_ops)
    return info.value


def test_decode_plus_funds() -> None:
    request = decode({"op": "plus_funds", "account": "a", "amount": "1.5", "rid": b"r"})
    assert request == Request("plus_funds", "a", 1_500_000, b"r")


def test_decode_balance_ignores_amount() -> None:
    assert decode({"op": "balance", "account": "a"}) == Request("balance", "a")


def test_decode_ping_needs_no_account() -> None:
    assert decode({"op": "ping", "rid": "p"}) == Request("ping", "", rid="p")


def test_integer_account_is_decimal_string() -> None:
    assert decode({"op": "balance", "account": 1}).account == "1"
    assert decode({"op": "balance", "account": -7}).account == "-7"
    assert decode({"op": "balance", "account": 2**64 - 1}).account == str(2**64 - 1)


def test_account_limits_accepted() -> None:
    assert read_account("x" * 128) == "x" * 128
    assert read_account("é" * 64) == "é" * 64
    assert read_account("a b~") == "a b~"


BAD_REQUESTS: list[tuple[str, Any, str, str]] = [
    # (case, message, error code, text the message must contain)
    ("negative", {"op": "plus_funds", "account": "a", "amount": -5}, "invalid_amount", "-5"),
    ("zero", {"op": "sub_funds", "account": "a", "amount": 0}, "invalid_amount", "0"),
    ("nan", {"op": "plus_funds", "account": "a", "amount": float("nan")}, "invalid_amount", "nan"),
    ("inf", {"op": "plus_funds", "account": "a", "amount": float("inf")}, "invalid_amount", "inf"),
    ("1e309 float", {"op": "plus_funds", "account": "a", "amount": 1e309}, "invalid_amount", "inf"),
    (
        "1e309 text",
        {"op": "plus_funds", "account": "a", "amount": "1e309"},
        "invalid_amount",
        "'1e309'",
    ),
    (
        "past scale",
        {"op": "plus_funds", "account": "a", "amount": "0.0000001"},
        "invalid_amount",
        "'0.0000001'",
    ),
    ("not numeric", {"op": "plus_funds", "account": "a", "amount": "ten"}, "invalid_amount", "ten"),
    ("no amount", {"op": "plus_funds", "account": "a"}, "invalid_amount", "missing"),
    ("unknown op", {"op": "steal", "account": "a", "amount": 1}, "unknown_op", "'steal'"),
    ("no op", {"account": "a"}, "bad_request", "no op"),
    ("op not text", {"op": 1, "account": "a"}, "bad_request", "int"),
    ("unknown key", {"op": "ping", "colour": 1}, "bad_request", "'colour'"),
    ("key not text", {"op": "ping", 1: 1}, "bad_request", "int"),
    ("no account", {"op": "balance"}, "invalid_account", "missing"),
    ("empty account", {"op": "balance", "account": ""}, "invalid_account", "empty"),
    ("long account", {"op": "balance", "account": "x" * 129}, "invalid_account", "129 bytes"),
    (
        "long utf8 account",
        {"op": "balance", "account": "é" * 65},
        "invalid_account",
        "130 bytes",
    ),
    ("newline", {"op": "balance", "account": "a\nb"}, "invalid_account", "'a\\nb'"),
    ("nul", {"op": "balance", "account": "a\x00"}, "invalid_account", "'a\\x00'"),
    ("del", {"op": "balance", "account": "a\x7f"}, "invalid_account", "'a\\x7f'"),
    ("c1 control", {"op": "balance", "account": "a\x85"}, "invalid_account", "'a\\x85'"),
    ("bool account", {"op": "balance", "account": True}, "invalid_account", "True"),
    ("float account", {"op": "balance", "account": 1.5}, "invalid_account", "float"),
    ("rid type", {"op": "ping", "rid": 5}, "invalid_rid", "int"),
    ("long rid", {"op": "ping", "rid": "r" * 65}, "invalid_rid", "65 bytes"),
    ("empty rid", {"op": "ping", "rid": b""}, "invalid_rid", "0 bytes"),
    ("debug op off", {"op": "debug_sleep", "account": "a", "seconds": 1}, "unknown_op", "debug"),
    ("not a map", [1, 2], "bad_request", "list"),
]


@pytest.mark.parametrize(
    ("message", "code", "text"),
    [case[1:] for case in BAD_REQUESTS],
    ids=[case[0] for case in BAD_REQUESTS],
)
def test_decode_rejects(message: Any, code: str, text: str) -> None:
    error = rejection(message)
    assert error.code == code
    assert text in error.message


@pytest.mark.parametrize(
    "frame",
    [b"", b"\xc1", b"\x81", msgpack.packb({"op": "ping"}) + b"\x00", b"\xc7\x01\x05x"],
    ids=["empty", "never used byte", "truncated map", "trailing data", "extension type"],
)
def test_decode_rejects_malformed_frame(frame: bytes) -> None:
    with pytest.raises(RequestError) as info:
        decode_request(frame, 6)
    assert info.value.code == "bad_request"


def test_decode_rejects_invalid_utf8() -> None:
    with pytest.raises(RequestError) as info:
        decode_request(b"\x81\xa2op\xa2\xff\xfe", 6)
    assert info.value.code == "bad_request"


def test_decode_rejects_deep_nesting() -> None:
    with pytest.raises(RequestError) as info:
        decode_request(b"\x91" * 100_000 + b"\xc0", 6)
    assert info.value.code == "bad_request"


def test_rejection_keeps_rid() -> None:
    error = rejection({"op": "plus_funds", "account": "a", "amount": -1, "rid": "r9"})
    assert error.rid == "r9"


def test_rejection_names_op_and_account() -> None:
    error = rejection({"op": "sub_funds", "account": "a", "amount": "x"})
    assert error.op == "sub_funds"
    assert error.account == "a"


def test_debug_sleep_when_enabled() -> None:
    request = decode({"op": "debug_sleep", "account": "a", "seconds": 2}, debug_ops=True)
    assert request == Request("debug_sleep", "a", seconds=2.0)


def test_debug_sleep_seconds_bounded() -> None:
    error = rejection({"op": "debug_sleep", "account": "a", "seconds": 11}, debug_ops=True)
    assert error.code == "bad_request"
    assert "11" in error.message


def test_encode_success_reply() -> None:
    reply = msgpack.unpackb(encode_outcome(Outcome(True, "1", 0, 2000), 6, "r"), raw=False)
    assert reply == {"ok": True, "account": "1", "balance": "0.000000", "count": 2000, "rid": "r"}


def test_encode_reply_without_rid() -> None:
    reply = msgpack.unpackb(encode_outcome(Outcome(True, "1", -1_500_000, 3), 6, None), raw=False)
    assert reply == {"ok": True, "account": "1", "balance": "-1.500000", "count": 3}


def test_encode_replay_flag() -> None:
    outcome = Outcome(True, "1", 5, 1, replay=True)
    reply = msgpack.unpackb(encode_outcome(outcome, 6, b"r"), raw=False)
    assert reply["replay"] is True
    assert reply["rid"] == b"r"


def test_encode_refusal() -> None:
    outcome = Outcome(False, "1", error="insufficient_funds", message="too little")
    reply = msgpack.unpackb(encode_outcome(outcome, 6, "r"), raw=False)
    expected = {"ok": False, "error": "insufficient_funds", "message": "too little", "rid": "r"}
    assert reply == expected


def test_encode_error_without_rid() -> None:
    reply = msgpack.unpackb(encode_error("bad_request", "no"), raw=False)
    assert reply == {"ok": False, "error": "bad_request", "message": "no"}


def test_encode_ping() -> None:
    reply = msgpack.unpackb(encode_ping(4, 6, "crc32", None), raw=False)
    assert reply == {"ok": True, "pong": True, "workers": 4, "scale": 6, "partition": "crc32"}


def test_peek_rid() -> None:
    assert peek_rid(msgpack.packb({"op": "x", "rid": b"r"})) == b"r"
    assert peek_rid(msgpack.packb({"op": "x", "rid": 5})) is None
    assert peek_rid(msgpack.packb([1])) is None
    assert peek_rid(b"\xc1") is None
