"""Raw sockets for tests that speak the wire format without the Client library."""

from __future__ import annotations

from typing import Any

import msgpack
import zmq

REPLY_TIMEOUT_MS = 5000  # bounds every receive, so a lost reply fails the test instead of hanging


def exchange(context: zmq.Context[zmq.Socket[bytes]], endpoint: str, body: bytes) -> Any:
    """Send one frame on a fresh REQ socket and return the unpacked reply."""
    socket = context.socket(zmq.REQ)
    socket.setsockopt(zmq.LINGER, 0)
    socket.setsockopt(zmq.RCVTIMEO, REPLY_TIMEOUT_MS)
    try:
        socket.connect(endpoint)
        socket.send(body)
        return msgpack.unpackb(socket.recv(), raw=False)
    finally:
        socket.close(linger=0)


def request(
    context: zmq.Context[zmq.Socket[bytes]], endpoint: str, message: dict[str, Any]
) -> dict[str, Any]:
    """Send one request map on a fresh REQ socket and return the reply map."""
    reply: dict[str, Any] = exchange(context, endpoint, msgpack.packb(message))
    return reply


def dealer(context: zmq.Context[zmq.Socket[bytes]], endpoint: str) -> zmq.Socket[bytes]:
    """Open a DEALER socket whose receives time out; the caller closes it."""
    socket = context.socket(zmq.DEALER)
    socket.setsockopt(zmq.LINGER, 0)
    socket.setsockopt(zmq.RCVTIMEO, REPLY_TIMEOUT_MS)
    socket.connect(endpoint)
    return socket
