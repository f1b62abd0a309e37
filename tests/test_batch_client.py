"""Tests of Client.batch, Client.batch_by_partition and AsyncClient.batch."""

from __future__ import annotations

from decimal import Decimal

import pytest

from tests.serverproc import ServerProcess
from tests.test_aio import StandInRouter, run
from zmqbalance import AsyncClient, Client, TimedOut
from zmqbalance.errors import TooLarge
from zmqbalance.partition import owner_of
from zmqbalance.protocol import MAX_BATCH_CHANGES


def test_batch_reports_failures_by_index(server: ServerProcess) -> None:
    with Client(server.endpoint) as client:
        result = client.batch(
            [
                ("plus_funds", "b1", Decimal("10.25")),
                ("sub_funds", "b1", 20),
                ("plus_funds", 7, "0.0000001"),
                ("sub_funds", "b1", "0.25"),
            ]
        )
        assert result.applied == 2
        assert [(i, code) for i, code, _ in result.failed] == [
            (1, "insufficient_funds"),
            (2, "invalid_amount"),
        ]
        assert result.replayed == []
        assert result.results is None
        assert not result.ok
        assert client.balance("b1").balance_text == "10.000000"


def test_batch_detail_gives_each_outcome(server: ServerProcess) -> None:
    with Client(server.endpoint) as client:
        result = client.batch(
            [("plus_funds", "d1", 5), ("sub_funds", "d1", 9), ("sub_funds", "d1", 2)],
            detail=True,
        )
        assert result.results is not None
        first, second, third = result.results
        assert (first.ok, first.balance, first.count) == (True, Decimal(5), 1)
        assert (second.ok, second.error) == (False, "insufficient_funds")
        assert (third.balance_text, third.count) == ("3.000000", 2)


def test_batch_with_rids_replays(server: ServerProcess) -> None:
    changes = [("plus_funds", "r1", 1, f"rid-{i}") for i in range(5)]
    with Client(server.endpoint) as client:
        first = client.batch(changes)
        again = client.batch(changes)
        assert first.applied == 5
        assert again.applied == 0
        assert again.replayed == [0, 1, 2, 3, 4]
        assert again.failed == []
        assert client.balance("r1").count == 5


def test_batch_over_limit_raises_too_large(server: ServerProcess) -> None:
    changes = [("plus_funds", "big", 1)] * (MAX_BATCH_CHANGES + 1)
    with Client(server.endpoint) as client:
        with pytest.raises(TooLarge):
            client.batch(changes)
        assert client.balance("big").count == 0


def test_batch_malformed_change_rejected_locally() -> None:
    with Client("tcp://127.0.0.1:1") as client:
        with pytest.raises(ValueError, match="change 1"):
            client.batch([("plus_funds", "a", 1), ("plus_funds", "a")])  # type: ignore[list-item]


def test_batch_wrong_partition_fails_change(server: ServerProcess) -> None:
    with Client(server.endpoint) as client:
        workers = client.ping().workers
        accounts = [f"p{i}" for i in range(20)]
        mine = [a for a in accounts if owner_of(a, workers) == 0]
        other = [a for a in accounts if owner_of(a, workers) != 0]
        result = client.batch(
            [("plus_funds", mine[0], 1), ("plus_funds", other[0], 1)], partition=0
        )
        assert result.applied == 1
        assert [(i, code) for i, code, _ in result.failed] == [(1, "wrong_partition")]


def test_batch_by_partition_maps_indexes_back(server: ServerProcess) -> None:
    changes: list[tuple[str, str | int, int]] = []
    for i in range(200):
        changes.append(("plus_funds", f"g{i % 40}", 2))
    changes.append(("sub_funds", "g3", 1_000))  # index 200 fails
    changes.append(("sub_funds", 17, 1))  # index 201 fails: account "17" is empty
    changes.append(("sub_funds", "g5", 1))

    with Client(server.endpoint) as client:
        result = client.batch_by_partition(changes, detail=True)
        assert result.applied == 201
        assert [(i, code) for i, code, _ in result.failed] == [
            (200, "insufficient_funds"),
            (201, "insufficient_funds"),
        ]
        assert result.results is not None
        assert len(result.results) == len(changes)
        assert [r.count for r in result.results[:40]] == [1] * 40
        assert [r.count for r in result.results[160:200]] == [5] * 40
        assert result.results[202].balance_text == "9.000000"
        assert client.balance("g5").balance_text == "9.000000"
        assert client.balance("g3").balance_text == "10.000000"


def test_batch_by_partition_empty(server: ServerProcess) -> None:
    with Client(server.endpoint) as client:
        result = client.batch_by_partition([])
        assert (result.applied, result.failed, result.replayed) == (0, [], [])


def test_batch_without_rids_not_resent() -> None:
    with StandInRouter() as router:
        with Client(router.endpoint, timeout=0.2, retries=2) as client:
            with pytest.raises(TimedOut, match="not resent"):
                client.batch([("plus_funds", "a", 1)])
        assert len(router.requests) == 1


def test_batch_with_rids_resent() -> None:
    with StandInRouter() as router:
        with Client(router.endpoint, timeout=0.2, retries=2) as client:
            with pytest.raises(TimedOut):
                client.batch([("plus_funds", "a", 1, "r-1"), ("plus_funds", "b", 1, "r-2")])
        assert len(router.requests) == 3
        assert router.frames[0] == router.frames[2]


def test_async_batch_partitioned(server: ServerProcess) -> None:
    async def scenario() -> None:
        async with AsyncClient(server.endpoint) as client:
            workers = (await client.ping()).workers
            owner = owner_of("ab1", workers)
            result = await client.batch(
                [("plus_funds", "ab1", "1.5"), ("sub_funds", "ab1", "0.5")],
                detail=True,
                partition=owner,
            )
            assert result.applied == 2
            assert result.results is not None
            assert [r.balance_text for r in result.results] == ["1.500000", "1.000000"]

    run(scenario())


def test_async_batch_without_rids_not_resent() -> None:
    async def scenario(endpoint: str) -> None:
        async with AsyncClient(endpoint, timeout=0.2, retries=2) as client:
            with pytest.raises(TimedOut, match="not resent"):
                await client.batch([("plus_funds", "a", 1)])

    with StandInRouter() as router:
        run(scenario(router.endpoint))
        assert len(router.requests) == 1


def test_batch_by_partition_splits_over_limit(server: ServerProcess) -> None:
    changes = [("plus_funds", "split-a", 1)] * 10_001 + [("plus_funds", "split-b", 2)]
    with Client(server.endpoint) as client:
        result = client.batch_by_partition(changes)
        first = client.balance("split-a")
        second = client.balance("split-b")

    assert result.applied == 10_002
    assert result.failed == []
    assert (first.balance_text, first.count) == ("10001.000000", 10_001)
    assert (second.balance_text, second.count) == ("2.000000", 1)
