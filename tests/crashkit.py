"""Crash-test tools: a restartable durable server, and clients that resend until acknowledged."""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

from tests.serverproc import ServerProcess
from zmqbalance import Client, RefusedError, ServerError, TimedOut

RESEND_TIMEOUT = 0.5  # seconds a client waits for one reply before resending the same rid
CHANGE_DEADLINE = 60.0  # seconds one change may take, restarts included, before a test fails


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


# Every server process a crash test started; the test's fixture kills those still running.
STARTED: list[ServerProcess] = []


def kill_started() -> None:
    while STARTED:
        process = STARTED.pop()
        if process.process is not None:
            process.kill()


@dataclass
class DurableServer:
    """A durable server on a fixed port and data directory, killed and restarted by tests."""

    data_dir: Path
    args: tuple[str, ...] = ()
    port: int = field(default_factory=free_port)
    process: ServerProcess | None = None
    starts: int = 0

    @property
    def endpoint(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    def start(self, env: dict[str, str] | None = None) -> ServerProcess:
        args = ("--data-dir", str(self.data_dir), *self.args)
        self.process = ServerProcess(args, env=env)
        STARTED.append(self.process)
        self.process.start(bind=self.endpoint)
        self.starts += 1
        return self.process

    def kill(self) -> int:
        assert self.process is not None
        return self.process.kill()

    def wait_exit(self, timeout: float) -> int:
        """Wait for the server to exit by itself (a crash hook) and return its status."""
        assert self.process is not None and self.process.process is not None
        status = self.process.process.wait(timeout)
        self.process.kill()  # collects the log reader; the process is gone already
        return status


@dataclass(frozen=True)
class Change:
    op: str
    account: str
    amount: str
    rid: str


@dataclass
class Model:
    """The sequential model: what every balance and count must be once all changes applied."""

    balances: dict[str, Decimal] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    def add(self, change: Change) -> None:
        sign = 1 if change.op == "plus_funds" else -1
        self.balances[change.account] = self.balances.get(
            change.account, Decimal(0)
        ) + sign * Decimal(change.amount)
        self.counts[change.account] = self.counts.get(change.account, 0) + 1


def credits_and_debits(client_id: int, count: int, shared_accounts: int = 5) -> list[Change]:
    """Changes for one client: credits on shared accounts and credit-debit pairs on its own.

    Debits follow the client's own credit on an account no one else debits, so the outcome
    of every change is the same in any interleaving and a sequential model applies.
    """
    changes = []
    for k in range(count):
        rid = f"c{client_id}-{k}"
        if k % 3 == 2:
            changes.append(Change("sub_funds", f"own-{client_id}", "0.25", rid))
        elif k % 3 == 1:
            changes.append(Change("plus_funds", f"own-{client_id}", "0.25", rid))
        else:
            amount = f"{k % 7 + 1}.{k % 100:02d}"
            changes.append(Change("plus_funds", str(k % shared_accounts), amount, rid))
    return changes


def send_until_acknowledged(
    endpoint: str,
    changes: list[Change],
    acknowledged: list[Change],
    stop: threading.Event | None = None,
    refused: list[Change] | None = None,
) -> None:
    """Send each change, resending it with the same rid until a reply arrives.

    With ``stop``, the client ends early once it is set, after its current change is
    acknowledged, so ``acknowledged`` is then exactly what was applied. Changes that a
    business rule rejected go to ``refused``.
    """
    refused = refused if refused is not None else []
    with Client(endpoint, timeout=RESEND_TIMEOUT, retries=0) as client:
        for change in changes:
            if stop is not None and stop.is_set():
                return
            deadline = time.monotonic() + CHANGE_DEADLINE
            while True:
                try:
                    if change.op == "plus_funds":
                        client.plus_funds(change.account, change.amount, rid=change.rid)
                    else:
                        client.sub_funds(change.account, change.amount, rid=change.rid)
                    acknowledged.append(change)
                    break
                except RefusedError:
                    # Only possible when a credit before it was lost: record the refusal so
                    # the comparison with the model fails.
                    refused.append(change)
                    break
                except (TimedOut, ServerError):
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.02)


def read_state(endpoint: str, accounts: list[str]) -> Model:
    state = Model()
    with Client(endpoint, timeout=5, retries=2) as client:
        for account in accounts:
            reply = client.balance(account)
            state.balances[account] = reply.balance
            state.counts[account] = reply.count
    return state


def expected_state(changes: list[Change]) -> Model:
    model = Model()
    for change in changes:
        model.add(change)
    return model


def run_clients(
    endpoint: str, plans: list[list[Change]], stop: threading.Event | None = None
) -> tuple[list[threading.Thread], list[Change], list[Change]]:
    """Start one client thread per plan; return the threads, the acknowledged and refused."""
    acknowledged: list[Change] = []
    refused: list[Change] = []
    threads = [
        threading.Thread(
            target=send_until_acknowledged,
            args=(endpoint, plan, acknowledged, stop, refused),
            daemon=True,
        )
        for plan in plans
    ]
    for thread in threads:
        thread.start()
    return threads, acknowledged, refused
