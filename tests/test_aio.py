"""Tests of zmqbalance.AsyncClient against real servers and a scripted ROUTER stand-in."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import msgpack
import pytest
import zmq

from tests.conftest import ServerFactory
from tests.serverproc import ServerProcess
from zmqbalance import AsyncClient, InsufficientFunds, TimedOut
from zmqbalance.errors import ClientError, InvalidRid

T = TypeVar("T")

RUN_TIMEOUT = 60.0  # seconds any one test's event loop may run
ROUTER_POLL_MS = 20


def run(coroutine: Coroutine[Any, Any, T], timeout: float = RUN_TIMEOUT) -> T:
    """Run ``coroutine`` in a fresh event loop, failing instead of hanging past ``timeout``."""

    async def bounded() -> T:
        return await asyncio.wait_for(coroutine, timeout)

    return asyncio.run(bounded())


async def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


class StandInRouter:
    """A ROUTER on a random 127.0.0.1 port that holds requests until ``answering`` is set.

    While ``answering`` is off, requests are only recorded. Once it is on, every held request
    and every new one gets a success reply echoing its rid, ``copies`` times each.
    """

    def __init__(self, copies: int = 1) -> None:
        self.copies = copies
        self.requests: list[dict[str, Any]] = []
        self.frames: list[bytes] = []
        self.answering = threading.Event()
        self.endpoint = ""
        self._held: list[tuple[bytes, dict[str, Any]]] = []
        self._stop = threading.Event()
        self._bound = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> StandInRouter:
        self._thread.start()
        assert self._bound.wait(5), "stand-in ROUTER did not bind"
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _serve(self) -> None:
        context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        router = context.socket(zmq.ROUTER)
        router.setsockopt(zmq.LINGER, 0)
        try:
            router.bind("tcp://127.0.0.1:*")
            self.endpoint = router.getsockopt_string(zmq.LAST_ENDPOINT)
            self._bound.set()
            while not self._stop.is_set():
                if router.poll(ROUTER_POLL_MS, zmq.POLLIN):
                    identity, _, body = router.recv_multipart()
                    request = msgpack.unpackb(body)
                    self.frames.append(body)
                    self.requests.append(request)
                    self._held.append((identity, request))
                if self.answering.is_set():
                    for identity, request in self._held:
                        for _ in range(self.copies):
                            router.send_multipart([identity, b"", msgpack.packb(success(request))])
                    self._held.clear()
        finally:
            router.close(linger=0)
            context.term()


def success(request: dict[str, Any]) -> dict[str, Any]:
    return {
        "ok": True,
        "account": str(request.get("account")),
        "balance": "1.000000",
        "count": 1,
        "rid": request["rid"],
    }


@pytest.fixture
def stand_in() -> Iterator[StandInRouter]:
    with StandInRouter() as router:
        yield router


def test_window_bounds_requests_sent(stand_in: StandInRouter) -> None:
    async def scenario() -> None:
        async with AsyncClient(stand_in.endpoint, window=10, timeout=30) as client:
            calls = [asyncio.ensure_future(client.plus_funds(i, 1)) for i in range(50)]
            await wait_until(lambda: len(stand_in.requests) >= 10)
            await asyncio.sleep(0.3)  # room for any request past the window to arrive
            assert len(stand_in.requests) == 10
            assert client.in_flight == 10

            stand_in.answering.set()
            results = await asyncio.gather(*calls)
            assert [r.account for r in results] == [str(i) for i in range(50)]
            assert len(stand_in.requests) == 50
            assert client.max_in_flight == 10
            assert client.in_flight == 0

    run(scenario())


def test_timeout_resends_same_frame(stand_in: StandInRouter) -> None:
    async def scenario() -> None:
        async with AsyncClient(stand_in.endpoint, timeout=0.3, retries=2) as client:
            call = asyncio.ensure_future(client.plus_funds("a", 5))
            await wait_until(lambda: len(stand_in.requests) >= 2)
            stand_in.answering.set()
            result = await call
            assert result.account == "a"
            assert stand_in.frames[0] == stand_in.frames[1]
            assert client.resends >= 1
            # The held first copy gets a reply too, and no call waits for it any more.
            await wait_until(lambda: client.late_replies >= 1)

    run(scenario())


def test_duplicate_reply_counted_late() -> None:
    async def scenario(router: StandInRouter) -> None:
        router.answering.set()
        async with AsyncClient(router.endpoint) as client:
            await client.plus_funds("a", 1)
            await wait_until(lambda: client.late_replies == 1)

    with StandInRouter(copies=2) as router:
        run(scenario(router))


def test_no_reply_raises_timed_out(stand_in: StandInRouter) -> None:
    async def scenario() -> None:
        async with AsyncClient(stand_in.endpoint, timeout=0.2, retries=1) as client:
            with pytest.raises(TimedOut):
                await client.plus_funds("a", 1, rid="order-1")
            assert client.in_flight == 0

    run(scenario())
    assert [r["rid"] for r in stand_in.requests] == ["order-1", "order-1"]


def test_invalid_rid_rejected_before_sending(stand_in: StandInRouter) -> None:
    async def scenario() -> None:
        async with AsyncClient(stand_in.endpoint) as client:
            with pytest.raises(InvalidRid):
                await client.plus_funds("a", 1, rid="x" * 65)

    run(scenario())
    assert stand_in.requests == []


def test_closed_client_rejects_calls(stand_in: StandInRouter) -> None:
    async def scenario() -> None:
        client = AsyncClient(stand_in.endpoint)
        await client.close()
        with pytest.raises(ClientError):
            await client.ping()

    run(scenario())


def test_pipelined_credits_within_window(server_factory: ServerFactory) -> None:
    server = server_factory("--workers", "4")

    async def scenario() -> None:
        async with AsyncClient(server.endpoint, window=100) as client:
            await asyncio.gather(*(client.plus_funds(f"w{i % 50}", 1) for i in range(5_000)))
            assert client.max_in_flight == 100
            assert client.late_replies == 0
            balances = await asyncio.gather(*(client.balance(f"w{i}") for i in range(50)))
            assert {b.balance_text for b in balances} == {"100.000000"}
            assert {b.count for b in balances} == {100}

    run(scenario())


def test_order_kept_within_account(server_factory: ServerFactory) -> None:
    server = server_factory("--workers", "4")

    async def scenario() -> None:
        async with AsyncClient(server.endpoint, window=500) as client:
            # Each debit succeeds only when the credit sent just before it was applied first.
            calls = []
            for _ in range(1_000):
                calls.append(client.plus_funds("ordered", "1.5"))
                calls.append(client.sub_funds("ordered", "1.5"))
            results = await asyncio.gather(*calls)
            assert [r.count for r in results] == list(range(1, 2_001))
            assert [r.balance_text for r in results[:2]] == ["1.500000", "0.000000"]
            with pytest.raises(InsufficientFunds):
                await client.sub_funds("ordered", 1)

    run(scenario())


@pytest.mark.slow
def test_server_restart_loses_and_doubles_nothing(
    server_factory: ServerFactory, tmp_path: Path
) -> None:
    data_dir = str(tmp_path / "data")
    first = server_factory("--data-dir", data_dir, "--workers", "2")
    credits = 20_000
    restarted: list[ServerProcess] = []

    async def scenario() -> tuple[Decimal, int, int]:
        async with AsyncClient(first.endpoint, window=1_000, timeout=1.0, retries=30) as client:
            done = 0
            killed = asyncio.Event()

            async def credit(i: int) -> None:
                nonlocal done
                await client.plus_funds(f"r{i % 10}", 1, rid=f"credit-{i}")
                done += 1
                if done == credits // 5:
                    # Kill at once, with about a window of credits still in flight.
                    first.kill()
                    killed.set()

            pipeline = asyncio.ensure_future(asyncio.gather(*(credit(i) for i in range(credits))))
            await asyncio.wait_for(killed.wait(), 30)
            assert client.in_flight > 0
            # Down for longer than the timeout, so credits sent meanwhile are resent.
            await asyncio.sleep(1.5)
            server = ServerProcess(["--data-dir", data_dir, "--workers", "2"])
            restarted.append(server)
            await asyncio.to_thread(server.start, first.endpoint)
            await pipeline

            balances = await asyncio.gather(*(client.balance(f"r{i}") for i in range(10)))
            total = sum((b.balance for b in balances), Decimal(0))
            return total, sum(b.count for b in balances), client.resends

    try:
        total, count, resends = run(scenario(), timeout=120)
    finally:
        for server in restarted:
            server.kill()
    assert total == credits
    assert count == credits
    assert resends > 0
