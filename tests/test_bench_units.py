"""Pure parts of the bench: plans, expected counts, percentiles, spreads, CPU time by pid."""

from __future__ import annotations

import os

from bench.procs import cpu_seconds
from bench.report import spread
from bench.runner import percentile
from bench.workloads import WORKLOADS, Plan


def test_seed_plan_matches_original_workload():
    plan = WORKLOADS["seed"].plan(quick=False)
    assert plan.clients == 10
    assert plan.total_changes() == 6_000
    assert plan.expected_counts() == {"0": 2_000, "1": 2_000, "2": 2_000}


def test_seed1000_plan_size():
    plan = WORKLOADS["seed1000"].plan(quick=False)
    assert plan.total_changes() == 60_000


def test_plan_pairs_plus_then_minus():
    changes = list(Plan("rounds", 1, 2).client_changes(0))
    assert changes[:2] == [("0", 1), ("0", -1)]
    assert sum(delta for _, delta in changes) == 0
    assert len(changes) == Plan("rounds", 1, 2).total_changes()


def test_plan_total_matches_sequences():
    for name, workload in WORKLOADS.items():
        plan = workload.plan(quick=True, clients=3)
        sent = sum(len(list(plan.client_changes(c))) for c in range(plan.clients))
        assert sent == plan.total_changes(), name
        assert sum(plan.expected_counts().values()) == sent, name


def test_random_plan_repeatable():
    plan = Plan("random", 2, 50, (), 100_000)
    assert list(plan.client_accounts(1)) == list(plan.client_accounts(1))
    assert list(plan.client_accounts(0)) != list(plan.client_accounts(1))
    assert all(0 <= int(a) < 100_000 for a in plan.client_accounts(0))


def test_fanout_points_use_separate_accounts():
    workload = WORKLOADS["fanout"]
    accounts_1 = set(workload.plan(quick=False, clients=1).expected_counts())
    accounts_2 = set(workload.plan(quick=False, clients=2).expected_counts())
    assert accounts_1
    assert accounts_1.isdisjoint(accounts_2)


def test_fanout_grid_full_and_quick():
    workload = WORKLOADS["fanout"]
    assert len(workload.fanout_points(quick=False)) == 28
    assert len(workload.fanout_points(quick=True)) == 1


def test_percentile_nearest_rank():
    values = list(range(1, 1001))
    assert percentile(values, 0.5) == 500
    assert percentile(values, 0.99) == 990
    assert percentile(values, 0.999) == 999
    assert percentile([7], 0.999) == 7


def test_spread_median_and_range():
    stats = spread([3.0, 1.0, 2.0])
    assert stats is not None
    assert stats["median"] == 2.0
    assert stats["min"] == 1.0
    assert stats["max"] == 3.0
    assert spread([]) is None
    assert spread([5.0])["q1"] == 5.0


def test_cpu_seconds_of_own_process():
    before = cpu_seconds(os.getpid())
    sum(i * i for i in range(200_000))
    assert cpu_seconds(os.getpid()) >= before > 0


def test_throughput_plans_send_credits_only():
    for name in ("batch", "batch-partitioned", "batch-pipelined", "pipeline"):
        plan = WORKLOADS[name].plan(quick=True)
        changes = list(plan.client_changes(0))
        assert len(changes) == plan.total_changes(), name
        assert {delta for _, delta in changes} == {1}, name
        assert len(plan.expected_counts()) == min(len(changes), 10_000), name


def test_full_batch_plan_size():
    plan = WORKLOADS["batch"].plan(quick=False)
    assert plan.total_changes() == 1_000_000
    assert set(plan.expected_counts().values()) == {100}
