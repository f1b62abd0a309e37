"""One run: client processes against one started server, timed from a barrier.

Each client process connects and sends one warm-up request, then waits at a barrier with the
parent. After the barrier every client sends its changes one at a time, timing each one, or
for the throughput workloads hands them to its driver in chunks, untimed. The
run's wall time is from the earliest client start to the latest client end, on
CLOCK_MONOTONIC, which Linux keeps system-wide so times from different processes compare.
The server's CPU time is read from /proc around the same window.
"""

from __future__ import annotations

import itertools
import logging
import math
import queue
import time
from array import array
from dataclasses import dataclass
from decimal import Decimal
from multiprocessing.context import BaseContext
from multiprocessing.synchronize import Barrier
from typing import Any

from bench.clients import ClientConfig, make_driver
from bench.systems import Running
from bench.workloads import Plan

log = logging.getLogger(__name__)

SETUP_TIMEOUT_S = 60.0  # 64 client processes fork, import and warm up on 2 cores
DEADLINE_CHECK_EVERY = 64  # changes between two looks at the clock
RESULT_GRACE_S = 30.0  # the last change may be waiting on a lock or a slow reply
JOIN_TIMEOUT_S = 10.0


@dataclass
class ClientResult:
    client: int
    start: float = 0.0
    end: float = 0.0
    changes: int = 0
    cpu_s: float = 0.0
    latencies_ns: bytes = b""
    timed_out: bool = False
    error: str | None = None


def client_main(
    client: int,
    config: ClientConfig,
    plan: Plan,
    barrier: Barrier,
    results: Any,
    time_budget_s: float,
) -> None:
    """Run one client process: warm up, wait at the barrier, send the plan, report."""
    result = ClientResult(client)
    driver = None
    try:
        driver = make_driver(config)
        driver.warm_up()
        barrier.wait(SETUP_TIMEOUT_S)
        _send_plan(driver, plan, client, time.monotonic() + time_budget_s, result)
    except Exception as exc:
        result.error = f"client {client}: {type(exc).__name__}: {exc}"
        barrier.abort()
    finally:
        if driver is not None:
            driver.close()
        results.put(result)


def _send_plan(driver: Any, plan: Plan, client: int, deadline: float, result: ClientResult) -> None:
    latencies = array("q")
    cpu_start = time.process_time()
    result.start = time.monotonic()
    try:
        if plan.send != "single":
            _send_chunks(driver, plan, client, deadline, result)
            return
        for account, delta in plan.client_changes(client):
            if result.changes % DEADLINE_CHECK_EVERY == 0 and time.monotonic() > deadline:
                result.timed_out = True
                break
            sent = time.perf_counter_ns()
            driver.change(account, delta)
            latencies.append(time.perf_counter_ns() - sent)
            result.changes += 1
    finally:
        result.end = time.monotonic()
        result.cpu_s = time.process_time() - cpu_start
        result.latencies_ns = latencies.tobytes()


def _send_chunks(
    driver: Any, plan: Plan, client: int, deadline: float, result: ClientResult
) -> None:
    """Hand the driver `plan.chunk` changes at a time; no per-change latency is measured."""
    changes = plan.client_changes(client)
    while chunk := list(itertools.islice(changes, plan.chunk)):
        if time.monotonic() > deadline:
            result.timed_out = True
            break
        driver.change_many(chunk, plan.send)
        result.changes += len(chunk)


def percentile(sorted_values: list[int], q: float) -> int:
    """Return the nearest-rank `q` quantile (0 < q <= 1) of non-empty sorted values."""
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[rank - 1]


def run_plan(
    ctx: BaseContext, running: Running, plan: Plan, time_budget_s: float
) -> dict[str, Any]:
    """Run `plan` against `running` and return the measured run as a JSON-ready dict."""
    barrier = ctx.Barrier(plan.clients + 1)
    results = ctx.Queue()
    procs = [
        ctx.Process(  # type: ignore[attr-defined]
            target=client_main,
            args=(i, running.client_config, plan, barrier, results, time_budget_s),
            daemon=True,
        )
        for i in range(plan.clients)
    ]
    for proc in procs:
        proc.start()
    try:
        return _measure(running, plan, barrier, results, time_budget_s)
    finally:
        _reap(procs)


def _measure(
    running: Running, plan: Plan, barrier: Barrier, results: Any, time_budget_s: float
) -> dict[str, Any]:
    from threading import BrokenBarrierError

    cpu_before = None
    try:
        barrier.wait(SETUP_TIMEOUT_S)
        cpu_before = running.server.cpu_seconds()
    except BrokenBarrierError:
        log.debug("barrier broken: a client failed while connecting")

    collected: list[ClientResult] = []
    wait_until = time.monotonic() + time_budget_s + RESULT_GRACE_S
    while len(collected) < plan.clients:
        try:
            collected.append(results.get(timeout=max(0.1, wait_until - time.monotonic())))
        except queue.Empty:
            break
    cpu_after = running.server.cpu_seconds()
    server_cpu = None if cpu_before is None else cpu_after - cpu_before
    return _summarize_run(running, plan, collected, server_cpu)


def _summarize_run(
    running: Running, plan: Plan, clients: list[ClientResult], server_cpu: float | None
) -> dict[str, Any]:
    errors = [c.error for c in clients if c.error]
    if len(clients) < plan.clients:
        errors.append(f"{plan.clients - len(clients)} client(s) sent no result in time")
    changes = sum(c.changes for c in clients)
    started = [c for c in clients if c.start]
    wall = max(c.end for c in started) - min(c.start for c in started) if started else 0.0

    latencies = sorted(v for c in clients for v in array("q", c.latencies_ns))
    run: dict[str, Any] = {
        "wall_s": wall,
        "changes": changes,
        "clients": plan.clients,
        "planned_changes": plan.total_changes(),
        "changes_per_s": changes / wall if wall > 0 else None,
        "server_cpu_s": server_cpu,
        "client_cpu_s": sum(c.cpu_s for c in clients),
        "timed_out": any(c.timed_out for c in clients),
        "errors": errors,
        "server_info": running.info,
    }
    if latencies:
        run["latency_us"] = {
            name: percentile(latencies, q) / 1000
            for name, q in (("p50", 0.5), ("p99", 0.99), ("p99.9", 0.999))
        }
    run["check"] = None if errors else check_balances(running, plan, clients)
    return run


def check_balances(
    running: Running, plan: Plan, clients: list[ClientResult]
) -> dict[str, Any] | None:
    """Compare final balances (and counts where the system has them) with the changes sent.

    Clients that stopped at the time budget stopped between two requests, so the expected
    state is exactly the prefix of each plan that was sent.
    """
    expected_count: dict[str, int] = {}
    expected_balance: dict[str, int] = {}
    for result in clients:
        for index, (account, delta) in enumerate(plan.client_changes(result.client)):
            if index >= result.changes:
                break
            expected_count[account] = expected_count.get(account, 0) + 1
            expected_balance[account] = expected_balance.get(account, 0) + delta

    actual = running.read_balances(sorted(expected_count))
    if not actual:
        return None
    wrong_balances, balance_error, lost, doubled = 0, Decimal(0), 0, 0
    for account, count in expected_count.items():
        balance, seen = actual[account]
        diff = balance - expected_balance[account]
        if diff:
            wrong_balances += 1
            balance_error += abs(diff)
        if seen is not None:
            lost += max(0, count - seen)
            doubled += max(0, seen - count)
    has_counts = running.system.has_counts
    return {
        "accounts": len(expected_count),
        "wrong_balances": wrong_balances,
        "balance_error_units": str(balance_error),
        "lost": lost if has_counts else None,
        "doubled": doubled if has_counts else None,
        "ok": wrong_balances == 0 and lost == 0 and doubled == 0,
    }


def _reap(procs: list[Any]) -> None:
    for proc in procs:
        proc.join(JOIN_TIMEOUT_S)
        if proc.is_alive():
            log.warning("client pid=%s did not exit; sending SIGTERM", proc.pid)
            proc.terminate()
            proc.join(JOIN_TIMEOUT_S)
