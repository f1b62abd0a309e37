"""Graceful shutdown: SIGTERM finishes queued commands, refuses new ones, and exits 0.

With a data directory, a restart then holds every acknowledged change exactly once: every
acknowledged rid replays, and resending the rids that got no answer makes each count exact.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq

from tests.rawsockets import Context, decode, fresh_account, open_socket, receive
from tests.serverproc import ServerProcess
from zmqbalance import Client, TimedOut, Unavailable
from zmqbalance.broker import DRAIN_TIMEOUT, SHUTDOWN_LINGER_MS
from zmqbalance.partition import owner_of

SENDERS = 10
ACKS_BEFORE_SIGTERM = 200  # changes acknowledged across all senders before the signal
# A hang bound, not a benchmark: the drain gives up after DRAIN_TIMEOUT, the front end lingers
# for SHUTDOWN_LINGER_MS, and process exit needs a little more.
EXIT_BOUND = DRAIN_TIMEOUT + SHUTDOWN_LINGER_MS / 1000 + 10
ServerFactory = Callable[..., ServerProcess]


class Sender(threading.Thread):
    """Send credits of 1, each with its own rid, until the server refuses or stops answering.

    Odd-numbered senders retry once, so they see a refusal as a timeout once the server is gone;
    even-numbered ones do not retry and report ``unavailable`` if the refusal reaches them.
    """

    def __init__(self, endpoint: str, index: int) -> None:
        super().__init__(daemon=True)
        self.endpoint = endpoint
        self.retries = index % 2
        self.account = fresh_account(f"sender-{index}")
        self.prefix = f"s{index}-"
        self.acknowledged: list[str] = []
        self.unanswered: list[str] = []  # rids that timed out or were refused
        self.outcome = "running"
        self.stop_requested = threading.Event()

    def run(self) -> None:
        with Client(self.endpoint, timeout=1.0, retries=self.retries) as client:
            for number in range(1_000_000):
                rid = f"{self.prefix}{number}"
                try:
                    client.plus_funds(self.account, 1, rid=rid)
                except (Unavailable, TimedOut) as exc:
                    self.unanswered.append(rid)
                    self.outcome = exc.code
                    return
                except Exception as exc:
                    self.unanswered.append(rid)
                    self.outcome = f"unexpected {exc!r}"
                    return
                self.acknowledged.append(rid)
                if self.stop_requested.is_set():
                    self.outcome = "stopped"
                    return


def start_senders(endpoint: str) -> list[Sender]:
    senders = [Sender(endpoint, index) for index in range(SENDERS)]
    for sender in senders:
        sender.start()
    deadline = time.monotonic() + 60
    while sum(len(s.acknowledged) for s in senders) < ACKS_BEFORE_SIGTERM:
        assert time.monotonic() < deadline, "the senders made no progress"
        time.sleep(0.01)
    return senders


def join_senders(senders: list[Sender]) -> None:
    """Wait for every sender; each ends within its client's timeouts once the server is gone."""
    for sender in senders:
        sender.stop_requested.set()
    for sender in senders:
        sender.join(30)
    hung = [sender.account for sender in senders if sender.is_alive()]
    assert hung == [], f"senders still waiting: {hung}"


@pytest.mark.parametrize("storage", ["in-memory", "data-dir"])
def test_sigterm_under_load_exits_cleanly(
    server_factory: ServerFactory, tmp_path: Path, storage: str
) -> None:
    data = ["--data-dir", str(tmp_path / "data")] if storage == "data-dir" else []
    server = server_factory("--workers", "4", *data)
    senders = start_senders(server.endpoint)

    status = server.terminate(timeout=EXIT_BOUND)
    join_senders(senders)

    assert status == 0
    assert "zmqbalance stopped" in server.log
    for sender in senders:
        assert sender.outcome in ("unavailable", "timed_out"), sender.outcome
    outcomes = [sender.outcome for sender in senders]
    print(f"shutdown: {sum(len(s.acknowledged) for s in senders)} acknowledged, {outcomes}")

    if storage == "data-dir":
        restarted = server_factory("--workers", "4", *data)
        check_restart(restarted, senders)
        assert restarted.terminate(timeout=EXIT_BOUND) == 0


def check_restart(server: ServerProcess, senders: list[Sender]) -> None:
    """Every acknowledged rid replays; resending the others makes each account exact."""
    with Client(server.endpoint, timeout=5, retries=1) as client:
        for sender in senders:
            before = client.balance(sender.account)
            assert before.count >= len(sender.acknowledged)
            for rid in sender.acknowledged:
                assert client.plus_funds(sender.account, 1, rid=rid).replay is True, rid
            for rid in sender.unanswered:
                client.plus_funds(sender.account, 1, rid=rid)
            sent = len(sender.acknowledged) + len(sender.unanswered)
            after = client.balance(sender.account)
            assert (after.balance_text, after.count) == (f"{sent}.000000", sent)


def test_sigterm_finishes_queued_and_refuses_new(
    server_factory: ServerFactory, zmq_context: Context, tmp_path: Path
) -> None:
    """Credits queued behind a sleeping worker are applied and answered; new ones are refused."""
    data = ["--data-dir", str(tmp_path / "data")]
    hooks = {"ZMQBALANCE_TEST_HOOKS": "1"}
    server = server_factory("--workers", "2", *data, env=hooks)
    account = fresh_account("queued")
    other = next(a for a in (fresh_account("other") for _ in range(100)) if owner_of(a, 2) == 1)
    owner_of_account = owner_of(account, 2)
    queued = 50
    dealer = open_socket(zmq_context, zmq.DEALER, server.endpoint)
    late = open_socket(zmq_context, zmq.DEALER, server.endpoint)
    try:
        sleep = {"op": "debug_sleep", "account": account, "seconds": 4.0}
        dealer.send_multipart([b"", msgpack.packb(sleep)])
        time.sleep(0.3)  # the worker has taken the sleep; the credits below queue behind it
        for index in range(queued):
            credit = {"op": "plus_funds", "account": account, "amount": 1, "rid": b"q%d" % index}
            dealer.send_multipart([b"", msgpack.packb(credit)])
        time.sleep(0.2)

        os.kill(server.pid, signal.SIGTERM)
        time.sleep(0.6)  # the broker notices within its poll interval and starts draining
        refused_account = other if owner_of_account == 0 else account
        late_credit = {"op": "plus_funds", "account": refused_account, "amount": 1, "rid": b"late"}
        late.send_multipart([b"", msgpack.packb(late_credit)])
        refusal = receive(late)

        replies: list[dict[str, Any]] = []
        for _ in range(queued + 1):
            frames = receive(dealer)
            assert frames is not None, f"only {len(replies)} replies before the server exited"
            replies.append(decode(frames[-1]))
    finally:
        dealer.close(linger=0)
        late.close(linger=0)
    # Wait for the exit without a second SIGTERM: one that lands after the server has put back
    # the default handlers, just before it exits, would kill it with status -15.
    assert server.process is not None
    server.process.wait(timeout=EXIT_BOUND)
    status = server.terminate()  # the process has exited, so no signal is sent

    assert status == 0
    assert refusal is not None
    assert decode(refusal[-1])["error"] == "unavailable"
    assert decode(refusal[-1])["rid"] == b"late"
    credits = [reply for reply in replies if "rid" in reply]
    assert [reply["ok"] for reply in credits] == [True] * queued
    assert sorted(reply["count"] for reply in credits) == list(range(1, queued + 1))

    restarted = server_factory("--workers", "2", *data)
    with Client(restarted.endpoint, timeout=5, retries=0) as client:
        balance = client.balance(account)
        refused = client.balance(refused_account)
    assert (balance.balance_text, balance.count) == (f"{queued}.000000", queued)
    assert refused.count == (queued if refused_account == account else 0)
    assert restarted.terminate(timeout=EXIT_BOUND) == 0
