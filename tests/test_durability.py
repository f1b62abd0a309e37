"""Crash tests against real durable servers: SIGKILL at random moments and at named points.

Every test ends the same way: restart on the same data directory, resend every change that was
not acknowledged with its rid, and compare the balances and counts with a sequential model.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.crashkit import (
    DurableServer,
    credits_and_debits,
    expected_state,
    kill_started,
    read_state,
    run_clients,
    send_until_acknowledged,
)
from zmqbalance import Client, TimedOut


@pytest.fixture(autouse=True)
def _kill_servers_after_test() -> Iterator[None]:
    yield
    kill_started()


KILLS = int(os.environ.get("ZMQBALANCE_CRASH_KILLS", "24"))
HOOKS = {"ZMQBALANCE_TEST_HOOKS": "1"}


def crash_under_load(data_dir: Path, kills: int, env: dict[str, str] | None = None) -> tuple:
    """Run 4 clients while the server is SIGKILLed ``kills`` times; return (expected, found)."""
    server = DurableServer(data_dir, ("--workers", "4"))
    server.start(env)
    plans = [credits_and_debits(client_id, 100_000) for client_id in range(4)]
    stop = threading.Event()
    threads, acknowledged, refused = run_clients(server.endpoint, plans, stop)

    chance = random.Random(1234)
    for _ in range(kills):
        time.sleep(chance.uniform(0.05, 0.4))
        server.kill()
        server.start(env)
    assert all(thread.is_alive() for thread in threads), "a client ended before the kills did"
    stop.set()
    for thread in threads:
        thread.join(120)
        assert not thread.is_alive(), "a client did not finish"

    server.kill()
    server.start()
    assert len(acknowledged) > 10 * kills, "too few changes were acknowledged between kills"
    expected = expected_state(acknowledged + refused)
    found = read_state(server.endpoint, sorted(expected.balances))
    server.kill()
    return expected, found


def test_crash_under_load_loses_and_doubles_nothing(tmp_path: Path) -> None:
    expected, found = crash_under_load(tmp_path / "data", KILLS)

    assert found.balances == expected.balances
    assert found.counts == expected.counts


def test_crash_check_detects_skipped_journal_write(tmp_path: Path) -> None:
    # Proves the check above can fail: without journal writes, killed servers lose changes.
    env = {**HOOKS, "ZMQBALANCE_TEST_SKIP": "journal_write"}
    expected, found = crash_under_load(tmp_path / "data", 3, env)

    assert found.counts != expected.counts


def crash_at(
    tmp_path: Path, point: str, *, extra: tuple[str, ...] = (), env: dict[str, str] | None = None
) -> tuple:
    """Crash once at ``point``, restart without hooks, finish; return (expected, found, log)."""
    server = DurableServer(tmp_path / "data", ("--workers", "2", *extra))
    server.start({**HOOKS, "ZMQBALANCE_CRASH_AT": point, **(env or {})})
    plan = credits_and_debits(0, 240)
    threads, _, _ = run_clients(server.endpoint, [plan])

    status = server.wait_exit(60)
    log = server.process.log if server.process else ""
    server.start()
    threads[0].join(120)
    assert not threads[0].is_alive()

    expected = expected_state(plan)
    found = read_state(server.endpoint, sorted(expected.balances))
    server.kill()
    assert status == -9, f"the crash hook did not fire:\n{log}"
    return expected, found, log


@pytest.mark.parametrize(
    "point",
    ["after_fsync:40", "before_journal_write:40"],
)
def test_crash_point_in_commit(tmp_path: Path, point: str) -> None:
    expected, found, log = crash_at(tmp_path, point)

    assert f"crashing at {point.split(':')[0]}" in log
    assert found.balances == expected.balances
    assert found.counts == expected.counts


@pytest.mark.parametrize("point", ["during_snapshot:2", "after_snapshot_rename:2"])
def test_crash_point_in_snapshot(tmp_path: Path, point: str) -> None:
    expected, found, log = crash_at(tmp_path, point, extra=("--snapshot-bytes", "3000"))

    assert f"crashing at {point.split(':')[0]}" in log
    assert found.balances == expected.balances
    assert found.counts == expected.counts


def test_power_cut_keeps_fsynced_changes(tmp_path: Path) -> None:
    env = {"ZMQBALANCE_CRASH_MODE": "power_cut"}
    expected, found, _ = crash_at(tmp_path, "after_fsync:40", env=env)

    assert found.counts == expected.counts
    assert found.balances == expected.balances


def test_power_cut_check_detects_skipped_fsync(tmp_path: Path) -> None:
    # Proves the fsync matters: a power cut drops what was written but never fsynced, and
    # the acknowledged changes before it are lost, which the model comparison notices.
    server = DurableServer(tmp_path / "data", ("--workers", "1"))
    env = {
        **HOOKS,
        "ZMQBALANCE_CRASH_AT": "after_fsync:40",
        "ZMQBALANCE_CRASH_MODE": "power_cut",
        "ZMQBALANCE_TEST_SKIP": "fsync",
    }
    server.start(env)
    plan = credits_and_debits(0, 60)
    acknowledged: list = []
    try:
        send_until_acknowledged_once(server.endpoint, plan, acknowledged)
    finally:
        assert server.wait_exit(60) == -9
    server.start()
    found = read_state(server.endpoint, sorted(expected_state(acknowledged).balances))
    server.kill()

    assert len(acknowledged) >= 39
    assert found.counts != expected_state(acknowledged).counts


def send_until_acknowledged_once(endpoint: str, plan: list, acknowledged: list) -> None:
    """Send changes until the first one that gets no reply (the server has crashed)."""
    with Client(endpoint, timeout=1.0, retries=0) as client:
        for change in plan:
            try:
                getattr(client, change.op)(change.account, change.amount, rid=change.rid)
            except TimedOut:
                return
            acknowledged.append(change)


def test_acknowledged_changes_survive_restart(tmp_path: Path) -> None:
    server = DurableServer(tmp_path / "data", ("--workers", "3"))
    server.start()
    plan = credits_and_debits(0, 90)
    send_until_acknowledged(server.endpoint, plan, [])
    assert server.process is not None
    assert server.process.terminate() == 0

    server.start()
    expected = expected_state(plan)
    found = read_state(server.endpoint, sorted(expected.balances))
    server.kill()

    assert found.balances == expected.balances
    assert found.counts == expected.counts
