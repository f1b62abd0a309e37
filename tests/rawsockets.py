"""Raw ZeroMQ peers for tests that send frames no well-behaved client would send."""

from __future__ import annotations

import itertools
import os
import time
from typing import Any

import msgpack
import zmq

REPLY_TIMEOUT = 5.0  # seconds; far above any reply time on a loaded test machine
SERVER_ALIAS = b"server"  # the name a raw ROUTER peer gives its connection to the server
_accounts = itertools.count()

Context = zmq.Context[zmq.Socket[bytes]]
Socket = zmq.Socket[bytes]


def open_socket(context: Context, kind: int, endpoint: str) -> Socket:
    """Connect a socket of ``kind`` (REQ, DEALER) to ``endpoint`` with linger 0."""
    socket = context.socket(kind)
    socket.setsockopt(zmq.LINGER, 0)
    socket.connect(endpoint)
    return socket


def open_router_peer(context: Context, endpoint: str, routing_id: bytes) -> Socket:
    """Connect a ROUTER to the server's ROUTER, naming the connection :data:`SERVER_ALIAS`.

    A ROUTER can only send to a peer whose routing id it knows, so the connection gets an alias
    (``ZMQ_CONNECT_ROUTING_ID``), and the peer sets its own id so that replies can reach it.
    """
    socket = context.socket(zmq.ROUTER)
    socket.setsockopt(zmq.LINGER, 0)
    socket.setsockopt(zmq.ROUTING_ID, routing_id)
    socket.setsockopt(zmq.CONNECT_ROUTING_ID, SERVER_ALIAS)
    socket.setsockopt(zmq.ROUTER_MANDATORY, 1)
    socket.connect(endpoint)
    return socket


def send_via_router(socket: Socket, frames: list[bytes], timeout: float = REPLY_TIMEOUT) -> None:
    """Send ``frames`` after the alias, waiting until the connection to the server is up."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.send_multipart([SERVER_ALIAS, *frames])
            return
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EHOSTUNREACH or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def receive(socket: Socket, timeout: float = REPLY_TIMEOUT) -> list[bytes] | None:
    """Return the next message, or None if none arrives within ``timeout`` seconds."""
    if not socket.poll(int(timeout * 1000), zmq.POLLIN):
        return None
    return socket.recv_multipart()


def ask(socket: Socket, body: bytes, timeout: float = REPLY_TIMEOUT) -> dict[str, Any]:
    """Send one body frame (with a delimiter on a DEALER) and return the decoded reply map."""
    if socket.type == zmq.DEALER:
        socket.send_multipart([b"", body])
    else:
        socket.send(body)
    frames = receive(socket, timeout)
    assert frames is not None, f"no reply within {timeout} s"
    return decode(frames[-1])


def decode(frame: bytes) -> dict[str, Any]:
    reply = msgpack.unpackb(frame, raw=False)
    assert isinstance(reply, dict), reply
    return reply


def fresh_account(prefix: str = "acct") -> str:
    """Return an account id no other test in this process uses."""
    return f"{prefix}-{os.getpid()}-{next(_accounts)}"


def assert_serving(socket: Socket) -> None:
    """Check that a credit on a fresh account is applied and gets the right reply."""
    account = fresh_account("check")
    reply = ask(socket, msgpack.packb({"op": "plus_funds", "account": account, "amount": "2.5"}))
    assert reply == {"ok": True, "account": account, "balance": "2.500000", "count": 1}


def rss_bytes(pid: int | str = "self") -> int:
    """Return a process's resident set size from /proc (Linux only)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS line in /proc/{pid}/status")
