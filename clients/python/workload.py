"""The original 10-client workload, run against a zmqbalance server.

Each client process runs ``rounds`` rounds; a round is ``plus_funds(account, 1)`` then
``sub_funds(account, 1)`` for every account. Clients start together at a barrier, one request in
flight each. Afterwards every account must read balance 0 and a count that grew by
``2 * rounds * clients``. The output keeps the old service's ``0.000000 2000`` form.

    python clients/python/workload.py --endpoint tcp://127.0.0.1:7070 --clients 10 --rounds 100
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import time
from decimal import Decimal

from zmqbalance import Client

BARRIER_TIMEOUT = 60.0  # seconds for every client process to be ready


def run_client(
    index: int,
    endpoint: str,
    rounds: int,
    accounts: list[str],
    barrier: multiprocessing.synchronize.Barrier,
    results: multiprocessing.queues.Queue,  # type: ignore[type-arg]
) -> None:
    with Client(endpoint) as client:
        client.ping()  # connect before the clock starts
        barrier.wait(BARRIER_TIMEOUT)
        started = time.perf_counter()
        for _ in range(rounds):
            for account in accounts:
                client.plus_funds(account, 1)
                client.sub_funds(account, 1)
        results.put((index, time.perf_counter() - started))


def read_counts(endpoint: str, accounts: list[str]) -> dict[str, tuple[Decimal, str, int]]:
    with Client(endpoint) as client:
        return {
            account: (reply.balance, reply.balance_text, reply.count)
            for account in accounts
            for reply in [client.balance(account)]
        }


def run(endpoint: str, clients: int, rounds: int, accounts: list[str]) -> bool:
    """Run the workload, print its report, and return True if every balance and count is right."""
    before = read_counts(endpoint, accounts)
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(clients + 1)
    results = context.Queue()
    processes = [
        context.Process(target=run_client, args=(i, endpoint, rounds, accounts, barrier, results))
        for i in range(clients)
    ]
    for process in processes:
        process.start()
    barrier.wait(BARRIER_TIMEOUT)
    started = time.perf_counter()
    timings = sorted(results.get(timeout=600) for _ in processes)
    wall = time.perf_counter() - started
    for process in processes:
        process.join(10)

    for index, seconds in timings:
        print(f"client {index}: {seconds:.3f} s")
    after = read_counts(endpoint, accounts)
    correct = True
    for account in accounts:
        balance, text, count = after[account]
        expected_count = before[account][2] + 2 * rounds * clients
        mark = ""
        if balance != before[account][0] or count != expected_count:
            correct = False
            mark = f"  WRONG: expected {before[account][1]} {expected_count}"
        print(f"account {account}: {text} {count}{mark}")
    changes = 2 * rounds * clients * len(accounts)
    print(f"total: {changes} changes in {wall:.3f} s, {changes / wall:,.0f} changes/s")
    return correct


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--endpoint", default="tcp://127.0.0.1:7070", help="server address")
    parser.add_argument("--clients", type=int, default=10, help="concurrent client processes")
    parser.add_argument("--rounds", type=int, default=100, help="rounds per client")
    parser.add_argument("--accounts", default="0,1,2", help="comma-separated account ids")
    args = parser.parse_args()
    accounts = [account for account in args.accounts.split(",") if account]
    return 0 if run(args.endpoint, args.clients, args.rounds, accounts) else 1


if __name__ == "__main__":
    sys.exit(main())
