"""Overload and misbehaving clients: the server keeps serving others and loses nothing.

- A client that pipelines credits and never reads its replies loses those replies (the server
  counts them as undeliverable) but never stalls the broker, and every credit is applied.
- A full worker queue answers ``busy``; a credit answered ``busy`` is not applied.
- Clients that vanish right after sending leave each change applied at most once, and a resend
  with the same rid makes it exactly once.

``ZMQBALANCE_OVERLOAD_CREDITS`` (default 100000) and ``ZMQBALANCE_VANISH_CLIENTS`` (default 200)
size the runs.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any

import msgpack
import pytest
import zmq

from tests.rawsockets import Context, ask, decode, fresh_account, open_socket, receive, rss_bytes
from tests.serverproc import ServerProcess
from zmqbalance import Busy, Client, ZmqBalanceError
from zmqbalance.partition import owner_of

OVERLOAD_CREDITS = int(os.environ.get("ZMQBALANCE_OVERLOAD_CREDITS", "100000"))
VANISH_CLIENTS = int(os.environ.get("ZMQBALANCE_VANISH_CLIENTS", "200"))
CHUNK = 2000  # credits sent before the sender checks how far the server has got
MAX_IN_FLIGHT = 4000  # credits sent but not yet applied; below --queue-max, so none is busy
ANSWER_BOUND = 2.0  # seconds; a liveness bound far above a normal reply time, not a benchmark
RSS_GROWTH_BOUND = 300 * 2**20  # bytes the server may grow by while it sheds the flood
SEND_TIMEOUT_MS = 30_000  # a send blocked longer than this fails the test instead of hanging
ServerFactory = Callable[..., ServerProcess]


def wait_for_count(client: Client, account: str, count: int, timeout: float = 60.0) -> int:
    """Poll an account until its change count reaches ``count``; return the last count seen."""
    deadline = time.monotonic() + timeout
    seen = client.balance(account).count
    while seen < count and time.monotonic() < deadline:
        time.sleep(0.01)
        seen = client.balance(account).count
    return seen


class Bystander(threading.Thread):
    """A client that sends single credits, each bounded by ANSWER_BOUND, until stopped."""

    def __init__(self, endpoint: str, accounts: list[str]) -> None:
        super().__init__(daemon=True)
        self.endpoint = endpoint
        self.accounts = accounts
        self.stop_requested = threading.Event()
        self.applied = dict.fromkeys(accounts, 0)
        self.failures: list[ZmqBalanceError] = []
        self.slowest = 0.0

    def run(self) -> None:
        with Client(self.endpoint, timeout=ANSWER_BOUND, retries=0) as client:
            while not self.stop_requested.is_set():
                for account in self.accounts:
                    started = time.monotonic()
                    try:
                        client.plus_funds(account, 1)
                    except ZmqBalanceError as exc:
                        self.failures.append(exc)
                        return
                    self.slowest = max(self.slowest, time.monotonic() - started)
                    self.applied[account] += 1
                time.sleep(0.005)


def accounts_for_workers(workers: int) -> list[str]:
    """Return one fresh account owned by each worker."""
    found: dict[int, str] = {}
    while len(found) < workers:
        account = fresh_account("bystander")
        found.setdefault(owner_of(account, workers), account)
    return [found[index] for index in range(workers)]


def test_non_reading_client_does_not_stall_others(
    server_factory: ServerFactory, zmq_context: Context
) -> None:
    server = server_factory("--workers", "2", "--queue-max", "10000")
    flood_account = fresh_account("flood")
    probe = Client(server.endpoint, timeout=ANSWER_BOUND, retries=0)
    probe.ping()
    rss_before = rss_bytes(server.pid)
    bystander = Bystander(server.endpoint, accounts_for_workers(2))
    flood = zmq_context.socket(zmq.DEALER)
    flood.setsockopt(zmq.LINGER, 0)
    flood.setsockopt(zmq.SNDTIMEO, SEND_TIMEOUT_MS)
    # Small receive buffers, so the replies fill the server's pipe to this client early.
    flood.setsockopt(zmq.RCVHWM, 100)
    flood.setsockopt(zmq.RCVBUF, 4096)
    flood.connect(server.endpoint)
    credit = msgpack.packb({"op": "plus_funds", "account": flood_account, "amount": 1})

    try:
        bystander.start()
        sent = 0
        while sent < OVERLOAD_CREDITS:
            for _ in range(min(CHUNK, OVERLOAD_CREDITS - sent)):
                flood.send_multipart([b"", credit])
                sent += 1
            # Keep fewer credits in flight than the queue takes, so that none gets busy.
            wait_for_count(probe, flood_account, sent - MAX_IN_FLIGHT)
        applied = wait_for_count(probe, flood_account, OVERLOAD_CREDITS)
        final = probe.balance(flood_account)
        rss_after = rss_bytes(server.pid)
    finally:
        bystander.stop_requested.set()
        bystander.join(ANSWER_BOUND * 3)
        flood.close(linger=0)

    assert applied == OVERLOAD_CREDITS
    assert (final.balance_text, final.count) == (f"{OVERLOAD_CREDITS}.000000", OVERLOAD_CREDITS)
    assert bystander.failures == []
    assert sum(bystander.applied.values()) > 0
    for account, count in bystander.applied.items():
        balance = probe.balance(account)
        assert (balance.balance_text, balance.count) == (f"{count}.000000", count)
    if OVERLOAD_CREDITS >= 100_000:
        # The flood's replies outran its pipe and the socket buffers (about 1,000 messages
        # and a few MB on loopback), so the server dropped the rest instead of waiting.
        assert "not delivered" in server.log
    assert rss_after - rss_before < RSS_GROWTH_BOUND
    print(
        f"overload: {OVERLOAD_CREDITS} credits, server RSS {rss_before >> 20} -> "
        f"{rss_after >> 20} MiB, slowest bystander reply {bystander.slowest:.3f} s"
    )
    probe.close()
    assert server.terminate() == 0


def test_full_queue_answers_busy_and_applies_nothing(
    server_factory: ServerFactory, zmq_context: Context
) -> None:
    server = server_factory(
        "--workers", "1", "--queue-max", "5", env={"ZMQBALANCE_TEST_HOOKS": "1"}
    )
    account = fresh_account("busy")
    dealer = open_socket(zmq_context, zmq.DEALER, server.endpoint)
    sleep = {"op": "debug_sleep", "account": account, "seconds": 1.0, "rid": b"sleep"}
    credits = 200
    replies: list[dict[str, Any]] = []
    try:
        dealer.send_multipart([b"", msgpack.packb(sleep)])
        for index in range(credits):
            credit = {"op": "plus_funds", "account": account, "amount": 1, "rid": b"c%d" % index}
            dealer.send_multipart([b"", msgpack.packb(credit)])
        for _ in range(credits + 1):
            frames = receive(dealer)
            assert frames is not None, f"only {len(replies)} replies arrived"
            replies.append(decode(frames[-1]))
    finally:
        dealer.close(linger=0)

    credit_replies = [reply for reply in replies if reply["rid"] != b"sleep"]
    acknowledged = [reply for reply in credit_replies if reply["ok"]]
    busy = [reply for reply in credit_replies if reply.get("error") == "busy"]
    assert len(acknowledged) + len(busy) == credits
    assert len(busy) > 0
    assert "retry later" in busy[0]["message"]
    with Client(server.endpoint, timeout=5, retries=0) as client:
        balance = client.balance(account)
        # A credit answered busy was not applied: the balance counts the acknowledged ones.
        assert (balance.balance_text, balance.count) == (
            f"{len(acknowledged)}.000000",
            len(acknowledged),
        )
        # The same rid sent again now succeeds: busy left no trace of it.
        retried = client.plus_funds(account, 1, rid=busy[0]["rid"])
        assert retried.replay is False
        assert retried.count == len(acknowledged) + 1
    assert server.terminate() == 0


def test_client_raises_busy_after_retries(
    server_factory: ServerFactory, zmq_context: Context
) -> None:
    server = server_factory(
        "--workers", "1", "--queue-max", "1", env={"ZMQBALANCE_TEST_HOOKS": "1"}
    )
    account = fresh_account("busy-client")
    blocker = open_socket(zmq_context, zmq.DEALER, server.endpoint)
    sleep = {"op": "debug_sleep", "account": account, "seconds": 3.0}
    filler = {"op": "debug_sleep", "account": account, "seconds": 0}
    try:
        # Fillers queue behind the sleeping worker until one gets busy: the queue is full.
        blocker.send_multipart([b"", msgpack.packb(sleep)])
        full = False
        for _ in range(200):
            blocker.send_multipart([b"", msgpack.packb(filler)])
            frames = receive(blocker, timeout=0.01)
            if frames is not None and decode(frames[-1]).get("error") == "busy":
                full = True
                break
        assert full, "the worker queue never filled"
        with Client(server.endpoint, timeout=5, retries=1) as client:
            with pytest.raises(Busy) as raised:
                client.plus_funds(account, 1, rid=b"too-busy")
    finally:
        blocker.close(linger=0)

    assert raised.value.rid == b"too-busy"
    assert server.terminate() == 0


def test_vanishing_clients_apply_each_change_once(
    server_factory: ServerFactory, zmq_context: Context
) -> None:
    """REQ clients send a credit and close at once; resending every rid makes each exact."""
    server = server_factory("--workers", "2")
    account = fresh_account("vanish")

    for index in range(VANISH_CLIENTS):
        socket = open_socket(zmq_context, zmq.REQ, server.endpoint)
        try:
            if index % 2 == 0:  # half of them make sure the connection is up first
                assert ask(socket, msgpack.packb({"op": "ping"}))["pong"] is True
            credit = {"op": "plus_funds", "account": account, "amount": 1, "rid": f"v{index}"}
            socket.send(msgpack.packb(credit))
        finally:
            socket.close(linger=0)

    with Client(server.endpoint, timeout=5, retries=0) as client:
        replays = 0
        for index in range(VANISH_CLIENTS):
            result = client.plus_funds(account, 1, rid=f"v{index}")
            replays += result.replay
        balance = client.balance(account)
        assert client.ping().workers == 2

    assert (balance.balance_text, balance.count) == (f"{VANISH_CLIENTS}.000000", VANISH_CLIENTS)
    print(f"vanish: {replays} of {VANISH_CLIENTS} credits arrived before their client vanished")
    assert server.terminate() == 0


def test_dealer_vanishing_after_apply_loses_only_reply(
    server_factory: ServerFactory, zmq_context: Context
) -> None:
    """A DEALER that closes once its credit is applied but before reading the reply."""
    server = server_factory("--workers", "2")
    account = fresh_account("vanish-dealer")

    with Client(server.endpoint, timeout=5, retries=0) as client:
        for index in range(20):
            dealer = open_socket(zmq_context, zmq.DEALER, server.endpoint)
            try:
                credit = {
                    "op": "plus_funds",
                    "account": account,
                    "amount": 1,
                    "rid": b"d%d" % index,
                }
                dealer.send_multipart([b"", msgpack.packb(credit)])
                assert wait_for_count(client, account, index + 1, timeout=10) == index + 1
            finally:
                dealer.close(linger=0)
        resent = client.plus_funds(account, 1, rid=b"d0")
        balance = client.balance(account)

    assert resent.replay is True
    assert (balance.balance_text, balance.count) == ("20.000000", 20)
    assert server.terminate() == 0
