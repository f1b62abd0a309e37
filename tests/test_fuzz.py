"""Fuzz the front end: thousands of generated messages to one server, which must stay exact.

The stream mixes random bytes, mutated valid requests, random msgpack values, and maps with the
right keys and wrong values, in right and wrong framings. Some are valid changes by chance: the
test keeps a model of every change the server reports as applied (``ok`` and not a replay) and
checks each reply's balance against it, then every balance at the end.

``ZMQBALANCE_FUZZ_MESSAGES`` sets the number of messages (default 2000). Each Hypothesis example
is a batch of :data:`BATCH` messages, because generating one small example costs Hypothesis
more than sending it. Hypothesis runs derandomized, so a run is repeatable.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import msgpack
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.rawsockets import Context, Socket, decode, open_socket, receive
from tests.serverproc import ServerProcess
from zmqbalance import Client

FUZZ_MESSAGES = int(os.environ.get("ZMQBALANCE_FUZZ_MESSAGES", "2000"))
BATCH = 10  # messages per Hypothesis example
SCALE = 6
ACCOUNTS = ["fz-0", "fz-1", "fz-ü", 7]  # few, so that debits and rid reuse meet earlier changes
OPS = ["plus_funds", "sub_funds", "balance", "ping"]

pack = msgpack.packb

# Values of every msgpack type, nested a little.
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=20)
    | st.binary(max_size=20)
)
values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=8) | st.integers(0, 9), children, max_size=4)
    ),
    max_leaves=10,
)

# Fields that are often valid and often almost valid.
ops = st.sampled_from(OPS) | st.sampled_from(["PLUS_FUNDS", "plus-funds", "", "debug_sleep"])
accounts = (
    st.sampled_from(ACCOUNTS) | st.text(max_size=140) | st.integers(-(2**63), 2**64 - 1) | values
)
amounts = (
    st.integers(-3, 10**7)
    | st.integers(-(2**63), 2**64 - 1)
    | st.decimals(min_value=-10, max_value=10**6, places=7, allow_nan=False).map(str)
    | st.floats(-1e3, 1e22)
    | st.text(alphabet="0123456789.-+e_ ", max_size=30)
    | values
)
rids = st.binary(min_size=0, max_size=70) | st.text(max_size=70) | st.sampled_from(["r1", "r2"])
request_maps = st.fixed_dictionaries(
    {"op": ops},
    optional={"account": accounts, "amount": amounts, "rid": rids | values, "note": values},
)
# Changes with every key right except perhaps the amount, so that many are valid.
changes = st.fixed_dictionaries(
    {
        "op": st.sampled_from(["plus_funds", "sub_funds"]),
        "account": st.sampled_from(ACCOUNTS),
        "amount": st.integers(1, 1000)
        | st.decimals(min_value="0.000001", max_value=10**6, places=6).map(str)
        | st.integers(1, 10**5).map(lambda cents: cents / 100)
        | amounts,
    },
    optional={"rid": st.sampled_from(["r1", "r2", b"r3"]) | st.binary(min_size=1, max_size=8)},
)


@st.composite
def mutated_requests(draw: st.DrawFn) -> bytes:
    """Pack a valid-looking request, then flip, insert, delete or cut a few bytes."""
    frame = bytearray(pack(draw(request_maps)))
    for _ in range(draw(st.integers(1, 4))):
        position = draw(st.integers(0, len(frame)))
        kind = draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        if kind == "flip" and position < len(frame):
            frame[position] ^= draw(st.integers(1, 255))
        elif kind == "insert":
            frame.insert(position, draw(st.integers(0, 255)))
        elif kind == "delete" and position < len(frame):
            del frame[position]
        elif kind == "truncate":
            del frame[position:]
    return bytes(frame)


bodies = st.one_of(
    st.binary(max_size=200),
    mutated_requests(),
    values.map(pack),
    request_maps.map(pack),
    changes.map(pack),
    changes.map(pack),
)


@st.composite
def messages(draw: st.DrawFn) -> list[bytes]:
    """The frames a DEALER sends: mostly delimiter + body, sometimes a wrong framing."""
    body = draw(bodies)
    framing = draw(st.sampled_from(["normal"] * 6 + ["bare", "two-bodies", "empty", "routed"]))
    if framing == "bare":
        return [body]
    if framing == "two-bodies":
        return [b"", body, draw(bodies)]
    if framing == "empty":
        return [b""]
    if framing == "routed":
        routing = draw(st.lists(st.binary(min_size=1, max_size=300), min_size=1, max_size=20))
        return [*routing, b"", body]
    return [b"", body]


@dataclass
class Model:
    """What each account must hold: the sum of the changes the server reported as applied."""

    balances: dict[str, Decimal] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    applied: int = 0
    rejected: int = 0

    def apply(self, request: dict[str, Any], reply: dict[str, Any]) -> None:
        account = reply["account"]
        amount = wire_amount(request["amount"])
        sign = 1 if request["op"] == "plus_funds" else -1
        self.balances[account] = self.balances.get(account, Decimal(0)) + sign * amount
        self.counts[account] = self.counts.get(account, 0) + 1
        self.applied += 1

    def expected(self, account: str) -> tuple[str, int]:
        balance = self.balances.get(account, Decimal(0)).quantize(Decimal(1).scaleb(-SCALE))
        return f"{balance:f}", self.counts.get(account, 0)


def wire_amount(value: object) -> Decimal:
    """The exact value of an amount the server accepted, computed independently of it."""
    if isinstance(value, float):
        return Decimal(repr(value))
    assert isinstance(value, (int, str)), value
    return Decimal(value)


def decode_plain(body: bytes) -> Any:
    """Decode a body as plain msgpack, or return None if it is not one valid value."""
    try:
        return msgpack.unpackb(body, raw=False, strict_map_key=False)
    except Exception:
        return None


def valid_rid(request: object) -> object:
    if not isinstance(request, dict):
        return None
    rid = request.get("rid")
    if isinstance(rid, str):
        size = len(rid.encode("utf-8", "surrogatepass"))
    elif isinstance(rid, bytes):
        size = len(rid)
    else:
        return None
    return rid if 1 <= size <= 64 else None


@pytest.fixture(scope="module")
def fuzz_server() -> Iterator[ServerProcess]:
    server = ServerProcess(["--workers", "2"]).start()
    yield server
    server.kill()


@pytest.fixture
def fuzz_dealer(fuzz_server: ServerProcess, zmq_context: Context) -> Iterator[Socket]:
    socket = open_socket(zmq_context, zmq.DEALER, fuzz_server.endpoint)
    yield socket
    socket.close(linger=0)


def check_reply(model: Model, frames: list[bytes], reply_frames: list[bytes] | None) -> None:
    """Check one reply and record the change it reports as applied."""
    assert reply_frames is not None, f"no reply to {frames!r:.300}"
    reply = decode(reply_frames[-1])
    assert isinstance(reply.get("ok"), bool), reply
    if not reply["ok"]:
        assert isinstance(reply["error"], str) and isinstance(reply["message"], str), reply
        model.rejected += 1

    # Every framing the server accepts carries the body last.
    request = decode_plain(frames[-1])
    rid = valid_rid(request)
    if len(frames) == 2 and frames[0] == b"" and rid is not None:
        assert reply.get("rid") == rid, (request, reply)

    if not reply["ok"] or "pong" in reply or reply.get("replay"):
        return
    assert isinstance(request, dict), (frames, reply)
    if request["op"] in ("plus_funds", "sub_funds"):
        model.apply(request, reply)
    assert (reply["balance"], reply["count"]) == model.expected(reply["account"]), (request, reply)


def test_fuzzed_messages_keep_balances_exact(
    fuzz_server: ServerProcess, fuzz_dealer: Socket
) -> None:
    model = Model()

    @settings(
        max_examples=max(1, FUZZ_MESSAGES // BATCH),
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(batch=st.lists(messages(), min_size=BATCH, max_size=BATCH))
    def send_batch(batch: list[list[bytes]]) -> None:
        for frames in batch:
            fuzz_dealer.send_multipart(frames)
            check_reply(model, frames, receive(fuzz_dealer))

    send_batch()

    with Client(fuzz_server.endpoint, timeout=5, retries=0) as client:
        assert client.ping().workers == 2
        for account in model.balances:
            balance = client.balance(account)
            assert (balance.balance_text, balance.count) == model.expected(account)
        final = client.plus_funds("fz-final", "1.5")
        assert (final.balance_text, final.count) == ("1.500000", 1)
    print(f"fuzz: {model.applied} changes applied, {model.rejected} rejected")
    assert model.rejected > FUZZ_MESSAGES // 2
    if FUZZ_MESSAGES >= 1000:
        assert model.applied > 0, "no generated change was valid; the model went untested"
    assert fuzz_server.terminate() == 0
