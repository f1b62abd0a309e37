"""Client recovery: timeouts, resends with the same rid, late replies, busy and unavailable.

The engine tests hold a reply back with the ``hold_reply`` test hook, so the client times out
while the change is already applied. The scripted-server tests put a raw ROUTER in place of the
engine to send replies no engine would send (a reply for another rid, busy, nothing at all).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import msgpack
import pytest
import zmq

from tests.rawsockets import Context, ask, fresh_account, open_socket, receive
from zmqbalance import Busy, Client, TimedOut, Unavailable
from zmqbalance.client import DEFAULT_RETRIES, DEFAULT_TIMEOUT
from zmqbalance.server import Server

HOLD = 1.0  # seconds the engine holds a reply; well above the client timeouts used below
Reply = Callable[[dict[str, Any]], dict[str, Any] | None]


@pytest.fixture
def hooked_engine(engine_factory: Callable[..., Server]) -> Server:
    """An engine with the test hooks on, so requests may carry hold_reply."""
    return engine_factory(workers=2, test_hooks=True)


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_client_defaults_documented() -> None:
    client = Client()
    try:
        assert (client.timeout, client.retries) == (DEFAULT_TIMEOUT, DEFAULT_RETRIES)
        assert client.__doc__ is not None
        assert f"{DEFAULT_TIMEOUT} s" in client.__doc__
        assert f"``retries`` (default :data:`DEFAULT_RETRIES`, {DEFAULT_RETRIES})" in client.__doc__
    finally:
        client.close()


def test_timed_out_credit_resent_once_applied(
    hooked_engine: Server, client_factory: Callable[..., Client]
) -> None:
    assert hooked_engine.endpoint is not None and hooked_engine.broker is not None
    client = client_factory(hooked_engine.endpoint, timeout=0.3, retries=2)
    account = fresh_account()
    message = {"op": "plus_funds", "account": account, "amount": "7.25", "hold_reply": HOLD}

    reply = client.request(message, rid=b"held-credit")

    assert reply["rid"] == b"held-credit"
    assert reply["replay"] is True  # the first attempt applied it; the resend got its outcome
    assert (reply["balance"], reply["count"]) == ("7.250000", 1)
    balance = client.balance(account)
    assert (balance.balance_text, balance.count) == ("7.250000", 1)


def test_late_reply_not_taken_for_next_request(
    hooked_engine: Server, client_factory: Callable[..., Client]
) -> None:
    assert hooked_engine.endpoint is not None and hooked_engine.broker is not None
    stats = hooked_engine.broker.stats
    client = client_factory(hooked_engine.endpoint, timeout=0.3, retries=2)
    account = fresh_account()
    undeliverable_before = stats.undeliverable_replies

    client.request(
        {"op": "plus_funds", "account": account, "amount": 1, "hold_reply": HOLD}, rid=b"late-1"
    )
    # Wait until the held reply has been sent to the socket the client abandoned.
    assert wait_for(lambda: stats.undeliverable_replies > undeliverable_before)
    second = client.plus_funds(account, 2, rid=b"late-2")

    assert second.rid == b"late-2"
    assert second.replay is False
    assert (second.balance_text, second.count) == ("3.000000", 2)
    assert client.late_replies == 0


def test_held_reply_does_not_delay_others(hooked_engine: Server, zmq_context: Context) -> None:
    """One DEALER sends a held request and then a plain one; the plain reply comes first."""
    assert hooked_engine.endpoint is not None
    dealer = open_socket(zmq_context, zmq.DEALER, hooked_engine.endpoint)
    account = fresh_account()
    try:
        held = {"op": "plus_funds", "account": account, "amount": 1, "hold_reply": HOLD}
        dealer.send_multipart([b"", msgpack.packb({**held, "rid": b"slow"})])
        first = ask(dealer, msgpack.packb({"op": "balance", "account": account, "rid": b"fast"}))
        second = receive(dealer, timeout=HOLD + 5)
    finally:
        dealer.close(linger=0)

    assert first["rid"] == b"fast"
    assert first["count"] == 1  # the held change was applied at once
    assert second is not None
    assert msgpack.unpackb(second[-1])["rid"] == b"slow"


def test_hold_reply_held_once_per_rid(hooked_engine: Server, zmq_context: Context) -> None:
    assert hooked_engine.endpoint is not None
    dealer = open_socket(zmq_context, zmq.DEALER, hooked_engine.endpoint)
    request = msgpack.packb({"op": "ping", "rid": b"ping-held", "hold_reply": HOLD})
    try:
        dealer.send_multipart([b"", request])
        resend = ask(dealer, request, timeout=HOLD / 2)
        first = receive(dealer, timeout=HOLD + 5)
    finally:
        dealer.close(linger=0)

    assert resend["pong"] is True
    assert first is not None
    assert msgpack.unpackb(first[-1])["rid"] == b"ping-held"


class ScriptedServer:
    """A raw ROUTER that answers each request with the next function of a script.

    A function returns the reply map, or None to send nothing. The thread stops when the script
    runs out or after ``timeout`` seconds, and keeps every request it received.
    """

    def __init__(self, context: Context, script: list[Reply], timeout: float = 10.0) -> None:
        self.socket = context.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.bind("tcp://127.0.0.1:*")
        self.endpoint = self.socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self.script = script
        self.timeout = timeout
        self.requests: list[dict[str, Any]] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ScriptedServer:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.thread.join(self.timeout + 5)
        self.socket.close(linger=0)

    def _run(self) -> None:
        deadline = time.monotonic() + self.timeout
        for answer in self.script:
            frames = None
            while frames is None and time.monotonic() < deadline:
                frames = receive(self.socket, timeout=0.1)
            if frames is None:
                return
            request = msgpack.unpackb(frames[-1], raw=False)
            self.requests.append(request)
            reply = answer(request)
            if reply is not None:
                self.socket.send_multipart([*frames[:-1], msgpack.packb(reply)])


def balance_reply(request: dict[str, Any]) -> dict[str, Any]:
    return {"ok": True, "account": "a", "balance": "1.000000", "count": 1, "rid": request["rid"]}


def error_reply(code: str) -> Reply:
    return lambda request: {"ok": False, "error": code, "message": code, "rid": request["rid"]}


def no_reply(request: dict[str, Any]) -> None:
    return None


@pytest.fixture
def scripted(zmq_context: Context) -> Iterator[Callable[[list[Reply]], ScriptedServer]]:
    servers: list[ScriptedServer] = []

    def start(script: list[Reply]) -> ScriptedServer:
        server = ScriptedServer(zmq_context, script).__enter__()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.__exit__()


def test_timeout_resends_same_rid_then_raises(
    scripted: Callable[[list[Reply]], ScriptedServer], client_factory: Callable[..., Client]
) -> None:
    server = scripted([no_reply] * 3)
    client = client_factory(server.endpoint, timeout=0.5, retries=2)

    with pytest.raises(TimedOut) as raised:
        client.plus_funds("a", 1, rid=b"never-answered")

    assert raised.value.rid == b"never-answered"
    assert "after 3 attempts" in str(raised.value)
    assert wait_for(lambda: len(server.requests) == 3), server.requests
    assert {request["rid"] for request in server.requests} == {b"never-answered"}


def test_reply_for_other_rid_discarded(
    scripted: Callable[[list[Reply]], ScriptedServer], client_factory: Callable[..., Client]
) -> None:
    def other_rid(request: dict[str, Any]) -> dict[str, Any]:
        return {**balance_reply(request), "rid": b"someone-else"}

    server = scripted([other_rid, balance_reply])
    client = client_factory(server.endpoint, timeout=2.0, retries=0)

    result = client.plus_funds("a", 1, rid=b"mine")

    assert result.rid == b"mine"
    assert client.late_replies == 1
    assert [request["rid"] for request in server.requests] == [b"mine", b"mine"]


@pytest.mark.parametrize("code", ["busy", "unavailable"])
def test_retryable_error_retried_same_rid(
    scripted: Callable[[list[Reply]], ScriptedServer],
    client_factory: Callable[..., Client],
    code: str,
) -> None:
    server = scripted([error_reply(code), error_reply(code), balance_reply])
    client = client_factory(server.endpoint, timeout=2.0, retries=2)

    result = client.plus_funds("a", 1, rid=b"retry-me")

    assert result.count == 1
    assert [request["rid"] for request in server.requests] == [b"retry-me"] * 3


@pytest.mark.parametrize(("code", "error"), [("busy", Busy), ("unavailable", Unavailable)])
def test_retryable_error_raised_after_retries(
    scripted: Callable[[list[Reply]], ScriptedServer],
    client_factory: Callable[..., Client],
    code: str,
    error: type[Exception],
) -> None:
    server = scripted([error_reply(code)] * 2)
    client = client_factory(server.endpoint, timeout=2.0, retries=1)

    with pytest.raises(error):
        client.sub_funds("a", 1, rid=b"give-up")

    assert len(server.requests) == 2
