"""Workloads: which changes each client process sends, and the final state they must leave.

Most plans send changes in pairs, plus 1 then minus 1 on the same account from the same
client, so every balance must end at exactly 0 and can never go below 0 in between. The
throughput plans (kind `credits`) send credits of 1 only, so a balance ends at its change
count. An account's expected change count is the number of changes the plan sends to it.

`WORKLOADS` is the registry the command line selects from. Each entry names a `Plan` for a
full run and a smaller one for `--quick`.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass

SEED_ACCOUNTS = ("0", "1", "2")
SPREAD_ACCOUNTS = tuple(str(i) for i in range(64))  # enough to reach every worker up to 8
RANDOM_ACCOUNT_SPACE = 100_000
RANDOM_SEED = 20_240  # fixed, so the same accounts are drawn in every repetition
LOCK_SYSTEMS = frozenset({"redis-lock", "redlock"})
THROUGHPUT_SYSTEMS = frozenset({"zmq-mem", "zmq-durable", "redis", "redis-aof"})
THROUGHPUT_ACCOUNTS = 10_000
BATCH_CHANGES = 1_000  # changes per batch request, and commands per Redis pipeline
PIPELINE_CHUNK = 10_000  # changes handed to the pipelining client per call
PIPELINED_CHUNK = 40_000  # changes split into pipelined partitioned batches per call


@dataclass(frozen=True)
class Plan:
    """The changes of one run; picklable, so each client process rebuilds its own sequence.

    kind `rounds`: `rounds` times over `accounts` in order (the original 10-client workload).
    kind `cycle`: `rounds` pairs, pair j on `accounts[(client + j) % len(accounts)]`.
    kind `random`: `rounds` pairs on accounts drawn from range(`account_space`).
    kind `credits`: `rounds` credits of 1, credit j on account `j % account_space`.

    `send` selects how a client sends its changes: `single` (one request each, in order),
    `batch` or `partitioned` (batches of `chunk` changes), or `pipeline` (up to a window of
    single requests in flight, handed over `chunk` changes at a time).
    """

    kind: str
    clients: int
    rounds: int
    accounts: tuple[str, ...] = SEED_ACCOUNTS
    account_space: int = 0
    send: str = "single"
    chunk: int = 1

    def client_accounts(self, client: int) -> Iterator[str]:
        """Yield the account of each change pair that client `client` sends."""
        if self.kind == "rounds":
            for _ in range(self.rounds):
                yield from self.accounts
        elif self.kind == "cycle":
            for j in range(self.rounds):
                yield self.accounts[(client + j) % len(self.accounts)]
        elif self.kind == "random":
            rng = random.Random(RANDOM_SEED * 1_000 + client)
            for _ in range(self.rounds):
                yield str(rng.randrange(self.account_space))
        else:
            raise ValueError(f"unknown plan kind {self.kind!r}")

    def client_changes(self, client: int) -> Iterator[tuple[str, int]]:
        """Yield (account, delta) for each change of one client: +1 then -1 per pair, or +1."""
        if self.kind == "credits":
            for j in range(self.rounds):
                yield str(j % self.account_space), 1
            return
        for account in self.client_accounts(client):
            yield account, 1
            yield account, -1

    def total_changes(self) -> int:
        if self.kind == "credits":
            return self.rounds * self.clients
        pairs_per_client = self.rounds * (len(self.accounts) if self.kind == "rounds" else 1)
        return 2 * pairs_per_client * self.clients

    def expected_counts(self) -> dict[str, int]:
        """Return how many changes each touched account must have seen after the run."""
        counts: Counter[str] = Counter()
        for client in range(self.clients):
            for account, _ in self.client_changes(client):
                counts[account] += 1
        return dict(counts)


@dataclass(frozen=True)
class Workload:
    """One named workload of the registry.

    `measure` selects the report's table: `wall` for the time from the barrier to the last
    reply, `latency` for percentiles of single changes, `fanout` for a grid over server
    worker counts and client counts, `throughput` for changes per second compared with the
    `baseline` system. `points` lists the fanout's (workers, clients) pairs. A system
    outside `only_systems` is left out, or listed as skipped with `skip_reason` when set.
    """

    name: str
    description: str
    measure: str
    full: Callable[[int], Plan]  # clients -> plan; fanout passes each point's client count
    quick: Callable[[int], Plan]
    clients: int = 10
    quick_clients: int = 2
    only_systems: frozenset[str] | None = None
    skip_reason: str = ""
    baseline: str | None = None  # throughput only: the system the ratio column divides by
    # Systems that run only when --systems names them, because they are slow at this size.
    opt_in_systems: frozenset[str] = frozenset()
    points: tuple[tuple[int, int], ...] = ()
    quick_points: tuple[tuple[int, int], ...] = ()
    time_budget_s: float = 120.0  # clients stop sending after this; the run is marked incomplete

    def plan(self, quick: bool, clients: int | None = None) -> Plan:
        if clients is None:
            clients = self.quick_clients if quick else self.clients
        return (self.quick if quick else self.full)(clients)

    def fanout_points(self, quick: bool) -> tuple[tuple[int, int], ...]:
        return self.quick_points if quick else self.points


FANOUT_WORKERS = (1, 2, 4, 8)
FANOUT_CLIENTS = (1, 2, 4, 8, 16, 32, 64)
FANOUT_PAIRS = 1_600  # 3,200 changes per point, split over its clients


def _fanout_plan(pairs: int) -> Callable[[int], Plan]:
    """Return a plan maker whose accounts are named after the client count.

    The fanout points of one worker count share one server, so each point needs accounts
    of its own for its final counts to be checked.
    """

    def plan(clients: int) -> Plan:
        accounts = tuple(f"fanout{clients}-{i}" for i in range(len(SPREAD_ACCOUNTS)))
        return Plan("cycle", clients, max(1, pairs // clients), accounts)

    return plan


def _credits_plan(credits: int, send: str, chunk: int) -> Callable[[int], Plan]:
    def plan(clients: int) -> Plan:
        return Plan("credits", clients, credits, (), THROUGHPUT_ACCOUNTS, send, chunk)

    return plan


NO_BATCHES = "sends one change per request; batches and pipelining are not part of it"


def _throughput_workload(
    name: str,
    description: str,
    send: str,
    credits: int,
    chunk: int,
    *,
    quick_credits: int = 20_000,
) -> Workload:
    """Build a one-client workload of credits sent ``send``-wise, compared with Redis."""
    return Workload(
        name,
        description,
        "throughput",
        full=_credits_plan(credits, send, chunk),
        quick=_credits_plan(quick_credits, send, chunk),
        clients=1,
        quick_clients=1,
        only_systems=THROUGHPUT_SYSTEMS,
        skip_reason=NO_BATCHES,
        baseline="redis",
    )


WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in (
        Workload(
            "seed",
            "the original workload: rounds of +1 then -1 on accounts 0, 1, 2",
            "wall",
            full=lambda c: Plan("rounds", c, 100),
            quick=lambda c: Plan("rounds", c, 5),
        ),
        Workload(
            "seed1000",
            "seed with 10 times the rounds",
            "wall",
            full=lambda c: Plan("rounds", c, 1_000),
            quick=lambda c: Plan("rounds", c, 10),
            opt_in_systems=LOCK_SYSTEMS,
        ),
        Workload(
            "hot",
            "rounds of +1 then -1 on one account",
            "wall",
            full=lambda c: Plan("rounds", c, 50, ("hot",)),
            quick=lambda c: Plan("rounds", c, 5, ("hot",)),
            clients=16,
        ),
        Workload(
            "random",
            "+1/-1 pairs on accounts drawn at random from 100,000",
            "wall",
            full=lambda c: Plan("random", c, 1_000, (), RANDOM_ACCOUNT_SPACE),
            quick=lambda c: Plan("random", c, 5, (), RANDOM_ACCOUNT_SPACE),
        ),
        Workload(
            "latency",
            "+1/-1 pairs cycling over 64 accounts; percentiles of single changes",
            "latency",
            full=lambda c: Plan("cycle", c, 500, SPREAD_ACCOUNTS),
            quick=lambda c: Plan("cycle", c, 5, SPREAD_ACCOUNTS),
        ),
        Workload(
            "fanout",
            "zmqbalance in memory by --workers and client count; changes/s and p99",
            "fanout",
            full=_fanout_plan(FANOUT_PAIRS),
            quick=_fanout_plan(10),
            only_systems=frozenset({"zmq-mem"}),
            points=tuple((w, c) for w in FANOUT_WORKERS for c in FANOUT_CLIENTS),
            quick_points=((2, 2),),
        ),
        _throughput_workload(
            "batch",
            "one client, credits over 10,000 accounts in batches of 1,000"
            " (Redis: pipelines of 1,000 INCRBY)",
            "batch",
            1_000_000,
            BATCH_CHANGES,
        ),
        _throughput_workload(
            "batch-partitioned",
            "as batch, but each 1,000 split into one partitioned batch per worker",
            "partitioned",
            1_000_000,
            BATCH_CHANGES,
        ),
        _throughput_workload(
            "batch-pipelined",
            "one AsyncClient, partitioned batches of up to 5,000, all of a 40,000-change chunk"
            " in flight at once (Redis: pipelines of 1,000 INCRBY)",
            "pipelined-batches",
            1_000_000,
            PIPELINED_CHUNK,
        ),
        _throughput_workload(
            "pipeline",
            "one AsyncClient, single credits with up to 1,000 in flight"
            " (Redis: pipelines of 1,000 INCRBY)",
            "pipeline",
            100_000,
            PIPELINE_CHUNK,
            quick_credits=5_000,
        ),
    )
}
