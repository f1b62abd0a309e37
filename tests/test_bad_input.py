"""Malformed requests: each gets an error reply where one can be routed, and the server goes on.

Every test sends raw frames over a REQ, DEALER or ROUTER socket, checks the error code and that
the message names the fault, and then checks that a correct credit is still answered right.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import msgpack
import pytest
import zmq

from tests.rawsockets import (
    Context,
    Socket,
    ask,
    assert_serving,
    decode,
    fresh_account,
    open_router_peer,
    open_socket,
    receive,
    rss_bytes,
    send_via_router,
)
from tests.serverproc import ServerProcess
from zmqbalance.broker import MAX_ENVELOPE_FRAMES
from zmqbalance.server import Config, Server

pack = msgpack.packb
SocketFactory = Callable[[int], Socket]


@pytest.fixture(scope="module")
def engine() -> Iterator[Server]:
    """One in-process engine takes every malformed request of this module, in turn."""
    server = Server(Config(bind="tcp://127.0.0.1:*", workers=2))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def open_peer(engine: Server, zmq_context: Context) -> Iterator[SocketFactory]:
    """Open raw sockets of a given kind to the engine; all are closed after the test."""
    sockets: list[Socket] = []

    def open_kind(kind: int) -> Socket:
        assert engine.endpoint is not None
        socket = open_socket(zmq_context, kind, engine.endpoint)
        sockets.append(socket)
        return socket

    yield open_kind
    for socket in sockets:
        socket.close(linger=0)


@pytest.fixture(params=[zmq.REQ, zmq.DEALER], ids=["req", "dealer"])
def peer(request: pytest.FixtureRequest, open_peer: SocketFactory) -> Socket:
    """A REQ or a DEALER socket connected to the engine."""
    return open_peer(request.param)


@pytest.fixture
def dealer(open_peer: SocketFactory) -> Socket:
    return open_peer(zmq.DEALER)


def assert_error(reply: dict[str, Any], code: str, *fragments: str) -> None:
    assert reply["ok"] is False, reply
    assert reply["error"] == code, reply
    for fragment in fragments:
        assert fragment in reply["message"], reply


def test_not_msgpack_rejected(peer: Socket) -> None:
    reply = ask(peer, b"\xc1\x00hello")

    assert_error(reply, "bad_request", "not valid msgpack", "c1 00")
    assert_serving(peer)


def test_empty_frame_rejected(peer: Socket) -> None:
    reply = ask(peer, b"")

    assert_error(reply, "bad_request", "not a complete msgpack value", "0 bytes")
    assert_serving(peer)


def test_truncated_request_rejected(peer: Socket) -> None:
    frame = pack({"op": "plus_funds", "account": "a", "amount": 1})

    reply = ask(peer, frame[:-3])

    assert_error(reply, "bad_request", "not a complete msgpack value")
    assert_serving(peer)


def test_trailing_bytes_rejected(peer: Socket) -> None:
    frame = pack({"op": "plus_funds", "account": "a", "amount": 1}) + b"\x01\x02"

    reply = ask(peer, frame)

    assert_error(reply, "bad_request", "2 extra bytes")
    assert_serving(peer)


@pytest.mark.parametrize(
    "value",
    [[1, 2], "plus_funds", 7, None, True, b"\x81", 1.5],
    ids=["array", "str", "int", "nil", "bool", "bin", "float"],
)
def test_request_not_map_rejected(peer: Socket, value: object) -> None:
    reply = ask(peer, pack(value))

    assert_error(reply, "bad_request", "must be a msgpack map", type(value).__name__)
    assert_serving(peer)


@pytest.mark.parametrize(
    ("frame", "fragment"),
    [
        (pack({1: "plus_funds"}), "got int 1"),
        (pack({b"op": "ping"}), "got bytes"),
        (pack({None: "ping"}), "got NoneType"),
        (b"\x81\x91\x01\xa4ping", "unhashable type: 'list'"),
        (b"\x81\x81\x01\x02\xa4ping", "unhashable type: 'dict'"),
    ],
    ids=["int", "bin", "nil", "array", "map"],
)
def test_non_string_keys_rejected(peer: Socket, frame: bytes, fragment: str) -> None:
    reply = ask(peer, frame)

    assert_error(reply, "bad_request", "keys must be strings", fragment)
    assert_serving(peer)


@pytest.mark.parametrize(
    ("request_map", "code", "fragment"),
    [
        ({"op": 1}, "bad_request", "op must be a string"),
        ({"op": b"ping"}, "bad_request", "op must be a string"),
        ({"op": "PLUS_FUNDS", "account": "a", "amount": 1}, "unknown_op", "'PLUS_FUNDS'"),
        ({"account": "a"}, "bad_request", "no op"),
        ({"op": "plus_funds", "account": [1], "amount": 1}, "invalid_account", "list"),
        ({"op": "plus_funds", "account": 1.5, "amount": 1}, "invalid_account", "float"),
        ({"op": "plus_funds", "account": b"a", "amount": 1}, "invalid_account", "bytes"),
        ({"op": "plus_funds", "account": True, "amount": 1}, "invalid_account", "True"),
        ({"op": "plus_funds", "account": "", "amount": 1}, "invalid_account", "empty"),
        ({"op": "plus_funds", "account": "x" * 129, "amount": 1}, "invalid_account", "129"),
        ({"op": "plus_funds", "account": "a\nb", "amount": 1}, "invalid_account", "control"),
        ({"op": "plus_funds", "amount": 1}, "invalid_account", "missing"),
        ({"op": "plus_funds", "account": "a"}, "invalid_amount", "missing"),
        ({"op": "plus_funds", "account": "a", "amount": [1]}, "invalid_amount", "list"),
        ({"op": "plus_funds", "account": "a", "amount": {"n": 1}}, "invalid_amount", "dict"),
        ({"op": "plus_funds", "account": "a", "amount": b"1"}, "invalid_amount", "bytes"),
        ({"op": "plus_funds", "account": "a", "amount": False}, "invalid_amount", "boolean"),
        ({"op": "plus_funds", "account": "a", "amount": 0}, "invalid_amount", "greater than"),
        ({"op": "plus_funds", "account": "a", "amount": -5}, "invalid_amount", "greater than"),
        ({"op": "plus_funds", "account": "a", "amount": 2**64 - 1}, "invalid_amount", "maximum"),
        ({"op": "plus_funds", "account": "a", "amount": "1e3"}, "invalid_amount", "'1e3'"),
        ({"op": "plus_funds", "account": "a", "amount": "9" * 65}, "invalid_amount", "65"),
        ({"op": "plus_funds", "account": "a", "amount": float("nan")}, "invalid_amount", "nan"),
        ({"op": "plus_funds", "account": "a", "amount": "0.0000001"}, "invalid_amount", "digits"),
        ({"op": "ping", "rid": 5}, "invalid_rid", "int"),
        ({"op": "ping", "rid": ""}, "invalid_rid", "0 bytes"),
        ({"op": "ping", "rid": b"r" * 65}, "invalid_rid", "65 bytes"),
        ({"op": "ping", "rid": ["r"]}, "invalid_rid", "list"),
        ({"op": "ping", "colour": "red"}, "bad_request", "unknown request key 'colour'"),
        ({"op": "ping", "account": "a"}, "bad_request", "'account' does not apply"),
        ({"op": "balance", "account": "a", "amount": 1}, "bad_request", "'amount' does not apply"),
        ({"op": "ping", "hold_reply": 1}, "bad_request", "unknown request key 'hold_reply'"),
        ({"op": "ping", "seconds": 1}, "bad_request", "unknown request key 'seconds'"),
        ({"op": "debug_sleep", "account": "a"}, "unknown_op", "debug_sleep"),
    ],
)
def test_wrong_value_rejected(
    peer: Socket, request_map: dict[str, Any], code: str, fragment: str
) -> None:
    reply = ask(peer, pack(request_map))

    assert_error(reply, code, fragment)
    assert_serving(peer)


def test_error_reply_echoes_valid_rid(peer: Socket) -> None:
    reply = ask(peer, pack({"op": "plus_funds", "account": "a", "amount": -1, "rid": b"r-1"}))

    assert_error(reply, "invalid_amount")
    assert reply["rid"] == b"r-1"


@pytest.mark.parametrize(("opener", "name"), [(b"\x91", "arrays"), (b"\x81\xa1k", "maps")])
def test_deeply_nested_values_rejected(peer: Socket, opener: bytes, name: str) -> None:
    frame = opener * 100_000 + b"\xc0"  # 100,000 nested one-element containers around nil

    reply = ask(peer, frame)

    assert_error(reply, "bad_request", "nested more than")
    assert_serving(peer)


@pytest.mark.parametrize(
    "header",
    [
        b"\xdb\xff\xff\xff\xff",  # str 32
        b"\xc6\xff\xff\xff\xff",  # bin 32
        b"\xdd\xff\xff\xff\xff",  # array 32
        b"\xdf\xff\xff\xff\xff",  # map 32
        b"\xc9\xff\xff\xff\xff\x05",  # ext 32
    ],
    ids=["str32", "bin32", "array32", "map32", "ext32"],
)
def test_declared_length_beyond_frame_rejected(peer: Socket, header: bytes) -> None:
    """A header that claims 4 GB fails at once; the server allocates nothing for it."""
    before = rss_bytes()

    for position in ("alone", "as a value"):
        frame = header if position == "alone" else b"\x81\xa2op" + header + b"x" * 100
        reply = ask(peer, frame)
        assert_error(reply, "bad_request", "not a complete msgpack value")

    # The engine runs in this process; a 4 GB allocation attempt would show here.
    assert rss_bytes() - before < 100 * 2**20
    assert_serving(peer)


@pytest.mark.parametrize(
    "frame",
    [
        pack(msgpack.ExtType(5, b"data")),
        pack({"op": "plus_funds", "account": "a", "amount": msgpack.ExtType(1, b"\x01")}),
        pack({"op": "ping", "rid": msgpack.ExtType(127, b"")}),
        pack({msgpack.ExtType(2, b"k"): "ping"}),
    ],
    ids=["top-level", "amount", "rid", "key"],
)
def test_extension_types_rejected(peer: Socket, frame: bytes) -> None:
    reply = ask(peer, frame)

    assert_error(reply, "bad_request", "extension type")
    assert_serving(peer)


@pytest.mark.parametrize(
    ("request_map", "code"),
    [
        (msgpack.Timestamp(1, 0), "bad_request"),
        ({"op": msgpack.Timestamp(1, 0)}, "bad_request"),
        ({"op": "plus_funds", "account": "a", "amount": msgpack.Timestamp(1, 0)}, "invalid_amount"),
        ({"op": "plus_funds", "account": msgpack.Timestamp(1, 0), "amount": 1}, "invalid_account"),
        ({"op": "ping", "rid": msgpack.Timestamp(1, 0)}, "invalid_rid"),
        ({"op": "ping", "account": msgpack.Timestamp(1, 0)}, "bad_request"),
    ],
    ids=["top-level", "op", "amount", "account", "rid", "unused-key"],
)
def test_timestamp_extension_rejected(peer: Socket, request_map: object, code: str) -> None:
    """msgpack decodes extension type -1 itself, as a Timestamp; no field accepts one."""
    reply = ask(peer, pack(request_map, datetime=False))

    assert_error(reply, code)
    assert_serving(peer)


def test_invalid_utf8_string_rejected(peer: Socket) -> None:
    frame = b"\x81\xa2op\xa4\xff\xfe\xfd\xfc"  # {"op": <4 bytes that are not UTF-8>}

    reply = ask(peer, frame)

    assert_error(reply, "bad_request", "not valid UTF-8")
    assert_serving(peer)


def test_dealer_without_delimiter_answered(dealer: Socket) -> None:
    """A DEALER that skips the empty delimiter is served, and answered without one."""
    account = fresh_account()
    dealer.send(pack({"op": "plus_funds", "account": account, "amount": 3}))

    frames = receive(dealer)

    assert frames is not None
    assert len(frames) == 1
    assert decode(frames[0])["balance"] == "3.000000"
    assert_serving(dealer)


@pytest.mark.parametrize(
    ("frames", "fragment"),
    [
        ([b""], "got 0"),
        ([b"", pack({"op": "ping"}), pack({"op": "ping"})], "got 2"),
        ([b"", b"", pack({"op": "ping"})], "got 2"),
        ([b"x", pack({"op": "ping"}), b"y"], "got 3 frames"),
    ],
    ids=["empty-body", "two-bodies", "two-delimiters", "no-delimiter-three-frames"],
)
def test_dealer_wrong_frame_count_rejected(
    dealer: Socket, frames: list[bytes], fragment: str
) -> None:
    dealer.send_multipart(frames)

    reply_frames = receive(dealer)

    assert reply_frames is not None
    assert_error(decode(reply_frames[-1]), "bad_request", fragment)
    assert_serving(dealer)


def test_long_envelope_answered_without_echo(dealer: Socket) -> None:
    envelope = [b"hop-%d" % index for index in range(MAX_ENVELOPE_FRAMES + 4)]
    dealer.send_multipart([*envelope, b"", pack({"op": "ping"})])

    frames = receive(dealer)

    assert frames is not None
    assert frames[0] == b""  # answered at the sender's identity, the envelope is not echoed
    assert_error(decode(frames[-1]), "bad_request", "routing frames")
    assert_serving(dealer)


def test_oversized_routing_frame_answered_without_echo(dealer: Socket) -> None:
    dealer.send_multipart([b"r" * 256, b"", pack({"op": "ping"})])

    frames = receive(dealer)

    assert frames is not None
    assert frames == [b"", frames[-1]]
    assert_error(decode(frames[-1]), "bad_request", "255 bytes")
    assert_serving(dealer)


def test_router_peer_answered(engine: Server, zmq_context: Context) -> None:
    """A ROUTER connected to the server's ROUTER is served like a DEALER."""
    assert engine.endpoint is not None
    router = open_router_peer(zmq_context, engine.endpoint, b"router-peer")
    try:
        send_via_router(router, [b"", pack({"op": "ping"})])
        pong = receive(router)
        send_via_router(router, [b"", b"\xc1"])
        rejected = receive(router)
        send_via_router(router, [b"", b"a", b"b"])
        wrong_count = receive(router)
    finally:
        router.close(linger=0)

    assert pong is not None and pong[:2] == [b"server", b""]
    assert decode(pong[-1])["pong"] is True
    assert rejected is not None
    assert_error(decode(rejected[-1]), "bad_request", "not valid msgpack")
    assert wrong_count is not None
    assert_error(decode(wrong_count[-1]), "bad_request", "got 2")
    assert engine.broker is not None and engine.broker.is_alive()


def test_router_peer_identity_only_ignored(engine: Server, zmq_context: Context) -> None:
    """A ROUTER peer that sends only the routing frame puts nothing on the wire."""
    assert engine.endpoint is not None
    router = open_router_peer(zmq_context, engine.endpoint, b"router-peer-2")
    try:
        send_via_router(router, [])
        nothing = receive(router, timeout=0.3)
        send_via_router(router, [b"", pack({"op": "ping"})])
        pong = receive(router)
    finally:
        router.close(linger=0)

    assert nothing is None
    assert pong is not None
    assert decode(pong[-1])["pong"] is True


def test_oversized_frame_disconnects_only_sender(
    server_factory: Callable[..., ServerProcess], zmq_context: Context
) -> None:
    """ZeroMQ drops a frame over --max-frame-bytes and disconnects its sender; others go on."""
    server = server_factory("--workers", "2", "--max-frame-bytes", "4096")
    sender = open_socket(zmq_context, zmq.DEALER, server.endpoint)
    bystander = open_socket(zmq_context, zmq.REQ, server.endpoint)
    try:
        assert ask(sender, pack({"op": "ping"}))["pong"] is True
        sender.send_multipart([b"", pack({"op": "ping", "rid": b"x" * 5000})])
        lost = receive(sender, timeout=1.0)
        assert_serving(bystander)

        # The DEALER reconnects by itself; its next request is served.
        reply_after = ask(sender, pack({"op": "ping"}))
        assert_serving(sender)
    finally:
        sender.close(linger=0)
        bystander.close(linger=0)

    assert lost is None
    assert reply_after["pong"] is True
    assert server.terminate() == 0


def test_frame_just_under_limit_answered(
    server_factory: Callable[..., ServerProcess], zmq_context: Context
) -> None:
    server = server_factory("--workers", "1", "--max-frame-bytes", "4096")
    dealer = open_socket(zmq_context, zmq.DEALER, server.endpoint)
    try:
        reply = ask(dealer, pack({"op": "ping", "pad": "x" * 4000}))
    finally:
        dealer.close(linger=0)

    assert_error(reply, "bad_request", "unknown request key 'pad'")


def test_rejections_counted_and_logged_rate_limited(
    engine_factory: Callable[..., Server], zmq_context: Context, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="zmqbalance.broker")
    engine = engine_factory(workers=1)
    assert engine.endpoint is not None and engine.broker is not None
    dealer = open_socket(zmq_context, zmq.DEALER, engine.endpoint)
    try:
        for _ in range(50):
            assert_error(ask(dealer, b"\xc1"), "bad_request")
    finally:
        dealer.close(linger=0)

    assert engine.broker.stats.rejected == 50
    rejections = [r for r in caplog.records if "rejected request" in r.getMessage()]
    assert 1 <= len(rejections) <= 2  # one per 5 s interval, however many arrive


def test_broker_failure_answers_internal_error(
    engine: Server, dealer: Socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug while handling one request costs that request an internal_error, nothing more."""
    import zmqbalance.broker

    def broken_decode(*args: object, **kwargs: object) -> object:
        raise KeyError("simulated bug")

    assert engine.broker is not None
    before = engine.broker.stats.internal_errors
    monkeypatch.setattr(zmqbalance.broker, "decode_request", broken_decode)
    reply = ask(dealer, pack({"op": "ping", "rid": b"r-bug"}))
    monkeypatch.undo()

    assert_error(reply, "internal_error", "see its log")
    assert engine.broker.stats.internal_errors - before == 1
    assert_serving(dealer)


def test_duplicate_key_rejected(peer: Socket) -> None:
    pairs = [("op", "plus_funds"), ("account", "dup"), ("amount", 1), ("amount", 1000)]
    frame = b"\x84" + b"".join(msgpack.packb(key) + msgpack.packb(value) for key, value in pairs)
    reply = ask(peer, frame)

    assert_error(reply, "bad_request", "'amount' more than once")
    assert_serving(peer)
