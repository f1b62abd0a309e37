from collections.abc import Callable
from typing import Any

import msgpack
import pytest
import zmq

from tests.wire import dealer, request
from zmqbalance.broker import split_envelope
from zmqbalance.server import Server

Context = zmq.Context[zmq.Socket[bytes]]
PING = msgpack.packb({"op": "ping"})
IDENTITY = b"\x00id"


@pytest.mark.parametrize(
    ("frames", "envelope", "body"),
    [
        ([IDENTITY, b"", PING], [IDENTITY, b""], PING),
        ([IDENTITY, PING], [IDENTITY], PING),
        ([IDENTITY, b"hop", b"", PING], [IDENTITY, b"hop", b""], PING),
        ([IDENTITY, b"", b""], [IDENTITY, b""], b""),
    ],
    ids=["delimiter", "no delimiter", "two hops", "empty body"],
)
def test_split_envelope_body(frames: list[bytes], envelope: list[bytes], body: bytes) -> None:
    assert split_envelope(frames) == (envelope, body, "")


@pytest.mark.parametrize(
    ("frames", "envelope", "problem"),
    [
        ([IDENTITY, b"", PING, PING], [IDENTITY, b""], "got 2"),
        ([IDENTITY, b""], [IDENTITY, b""], "got 0"),
        ([IDENTITY, PING, PING], [IDENTITY], "got 2 frames"),
        ([IDENTITY], [IDENTITY], "got 0 frames"),
    ],
    ids=["two bodies", "delimiter only", "two bodies without delimiter", "identity only"],
)
def test_split_envelope_problem(frames: list[bytes], envelope: list[bytes], problem: str) -> None:
    found_envelope, body, found_problem = split_envelope(frames)
    assert found_envelope == envelope
    assert body is None
    assert problem in found_problem


def exchange_frames(context: Context, endpoint: str, frames: list[bytes]) -> list[bytes]:
    socket = dealer(context, endpoint)
    try:
        socket.send_multipart(frames)
        return socket.recv_multipart()
    finally:
        socket.close(linger=0)


def unpack(frame: bytes) -> Any:
    return msgpack.unpackb(frame, raw=False)


def test_dealer_with_delimiter(engine: Server, zmq_context: Context) -> None:
    assert engine.endpoint is not None
    reply = exchange_frames(zmq_context, engine.endpoint, [b"", PING])
    assert reply[0] == b""
    assert unpack(reply[1])["pong"] is True


def test_dealer_without_delimiter(engine: Server, zmq_context: Context) -> None:
    assert engine.endpoint is not None
    reply = exchange_frames(zmq_context, engine.endpoint, [PING])
    assert len(reply) == 1
    assert unpack(reply[0])["pong"] is True


BAD_FRAMES: list[tuple[str, list[bytes], str]] = [
    # (case, frames a DEALER sends, text the error message must contain)
    ("bad body without delimiter", [b"\xc1"], "msgpack"),
    ("delimiter only", [b""], "got 0"),
    ("empty body", [b"", b""], "msgpack"),
    ("two bodies", [b"", PING, PING], "got 2"),
    ("not a map", [b"", msgpack.packb("ping")], "map"),
    ("truncated", [b"", PING[:-1]], "msgpack"),
]


@pytest.mark.parametrize(
    ("frames", "text"), [case[1:] for case in BAD_FRAMES], ids=[case[0] for case in BAD_FRAMES]
)
def test_bad_frames_answered(
    engine: Server, zmq_context: Context, frames: list[bytes], text: str
) -> None:
    assert engine.endpoint is not None
    reply = unpack(exchange_frames(zmq_context, engine.endpoint, frames)[-1])
    assert reply["ok"] is False
    assert reply["error"] == "bad_request"
    assert text in reply["message"]
    assert request(zmq_context, engine.endpoint, {"op": "ping"})["pong"] is True


def test_oversized_frame_dropped(
    engine_factory: Callable[..., Server], zmq_context: Context
) -> None:
    engine = engine_factory(max_frame_bytes=1024)
    assert engine.endpoint is not None
    socket = dealer(zmq_context, engine.endpoint)
    try:
        socket.send_multipart([b"", b"\x00" * 2048])
        assert socket.poll(300) == 0  # ZeroMQ disconnects a peer that sends over MAXMSGSIZE
    finally:
        socket.close(linger=0)
    assert request(zmq_context, engine.endpoint, {"op": "ping"})["pong"] is True


def test_rejected_frames_counted(engine: Server, zmq_context: Context) -> None:
    assert engine.endpoint is not None and engine.broker is not None
    exchange_frames(zmq_context, engine.endpoint, [b"", PING, PING])
    exchange_frames(zmq_context, engine.endpoint, [b"", b"\xc1"])
    assert engine.broker.stats.rejected == 2
