"""Client-side drivers: one change per call, one request in flight, one driver per process.

Each driver turns `change(account, delta)` into what its system needs on the wire:

- `zmq`: one msgpack map on a raw pyzmq REQ socket, as the wire contract defines it. The
  bench does not use zmqbalance's own client here, so it measures the wire and not a wrapper.
- `redis-incrby`: one INCRBY of the balance in minor units.
- `redis-lock`: redis-py's `Lock` on `cb_<account>`, GET, SET, release, the way the
  service zmqbalance replaces kept its balances.
- `redlock`: the same with pottery's `Redlock` (one Redis master).

The throughput workloads call `change_many(changes, send)` instead, with many changes at once.
There the `zmq` driver uses zmqbalance's own clients, because their batching and pipelining is
what those workloads measure: `Client.batch`, `Client.batch_by_partition`, or an
`AsyncClient` with a window of 1,000. The Redis INCRBY drivers send redis-py pipelines of
1,000 INCRBY commands without MULTI/EXEC (`transaction=False`), for every `send` mode.

Redis balances live under `cb:balance:<account>` as integers of minor units (10**-6).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Protocol

import msgpack
import zmq

MINOR_UNITS = 10**6  # Redis rows keep integers of 10**-6, zmqbalance's default scale
REPLY_TIMEOUT_MS = 10_000  # a reply slower than this means the server is stuck
LOCK_TTL_S = 8.0  # lock validity of the replaced service
LOCK_WAIT_S = 30.0  # a client gives up on a lock after this long instead of looping forever
# redis-py's Lock polls every 0.1 s by default. A 1 ms poll measures the round trips of the
# lock design rather than its back-off. pottery's Redlock keeps its own random 0-0.2 s back-off.
LOCK_RETRY_S = 0.001
REDIS_SOCKET_TIMEOUT_S = 10.0
REDIS_PIPELINE = 1_000  # INCRBY commands per redis-py pipeline
PIPELINE_WINDOW = 1_000  # requests in flight for the `pipeline` send mode
PIPELINED_BATCH = 5_000  # changes per batch request in the `pipelined-batches` send mode


class RequestFailed(RuntimeError):
    """A system replied to a change with an error, or sent no reply in time."""


@dataclass(frozen=True)
class ClientConfig:
    """Driver name and address of one system, passed to each client process (picklable)."""

    driver: str
    endpoint: str = ""  # ZeroMQ endpoint for the `zmq` driver
    redis_port: int = 0


class Driver(Protocol):
    def warm_up(self) -> None: ...
    def change(self, account: str, delta: int) -> None: ...
    def change_many(self, changes: list[tuple[str, int]], send: str) -> None: ...
    def close(self) -> None: ...


def balance_key(account: str) -> str:
    return f"cb:balance:{account}"


def lock_name(account: str) -> str:
    return f"cb_{account}"


class ZmqDriver:
    """Speaks the zmqbalance wire contract on a REQ socket."""

    def __init__(self, endpoint: str) -> None:
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.REQ)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.RCVTIMEO, REPLY_TIMEOUT_MS)
        self.socket.setsockopt(zmq.SNDTIMEO, REPLY_TIMEOUT_MS)
        self.socket.connect(endpoint)
        self.endpoint = endpoint
        self.client: Any = None  # zmqbalance.Client for batches, made on first use
        self.loop: asyncio.AbstractEventLoop | None = None
        self.async_client: Any = None  # zmqbalance.AsyncClient for pipelining
        self.workers: int | None = None  # the server's worker count, from ping

    def request(self, message: dict[str, Any]) -> dict[str, Any]:
        self.socket.send(msgpack.packb(message))
        try:
            data = self.socket.recv()
        except zmq.Again as exc:
            raise RequestFailed(f"no reply within {REPLY_TIMEOUT_MS} ms to {message}") from exc
        reply: dict[str, Any] = msgpack.unpackb(data)
        if reply.get("ok") is not True:
            raise RequestFailed(f"request {message} failed: {reply}")
        return reply

    def warm_up(self) -> None:
        self.request({"op": "ping"})

    def change(self, account: str, delta: int) -> None:
        op = "plus_funds" if delta > 0 else "sub_funds"
        self.request({"op": op, "account": account, "amount": abs(delta)})

    def change_many(self, changes: list[tuple[str, int]], send: str) -> None:
        wire = [("plus_funds" if d > 0 else "sub_funds", a, abs(d)) for a, d in changes]
        if send == "pipeline":
            self._pipeline(wire)
            return
        if send == "pipelined-batches":
            self._pipelined_batches(wire)
            return
        if self.client is None:
            from zmqbalance import Client

            self.client = Client(self.endpoint, timeout=REPLY_TIMEOUT_MS / 1000)
        if send == "batch":
            result = self.client.batch(wire)
        elif send == "partitioned":
            result = self.client.batch_by_partition(wire)
        else:
            raise ValueError(f"unknown send mode {send!r}")
        if result.failed:
            raise RequestFailed(
                f"{len(result.failed)} changes of a batch failed: {result.failed[0]}"
            )

    def _async_client(self) -> Any:
        if self.loop is None:
            from zmqbalance import AsyncClient

            self.loop = asyncio.new_event_loop()
            self.async_client = AsyncClient(
                self.endpoint, window=PIPELINE_WINDOW, timeout=REPLY_TIMEOUT_MS / 1000
            )
        return self.async_client

    def _pipelined_batches(self, wire: list[tuple[str, str, int]]) -> None:
        """Send partitioned batches of up to PIPELINED_BATCH changes, all in flight at once."""
        from zmqbalance.replies import group_by_owner

        client = self._async_client()

        async def send_all() -> list[Any]:
            if self.workers is None:
                self.workers = (await client.ping()).workers
            calls = []
            for owner, indexes in group_by_owner(wire, self.workers).items():
                for start in range(0, len(indexes), PIPELINED_BATCH):
                    part = [wire[i] for i in indexes[start : start + PIPELINED_BATCH]]
                    calls.append(client.batch(part, partition=owner))
            return list(await asyncio.gather(*calls))

        assert self.loop is not None
        for result in self.loop.run_until_complete(send_all()):
            if result.failed:
                raise RequestFailed(f"{len(result.failed)} changes failed: {result.failed[0]}")

    def _pipeline(self, wire: list[tuple[str, str, int]]) -> None:
        client = self._async_client()
        assert self.loop is not None

        async def send_all() -> None:
            await asyncio.gather(
                *(
                    client.plus_funds(a, n) if op == "plus_funds" else client.sub_funds(a, n)
                    for op, a, n in wire
                )
            )

        self.loop.run_until_complete(send_all())

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
        if self.loop is not None:
            self.loop.run_until_complete(self.async_client.close())
            self.loop.close()
        self.socket.close(linger=0)
        self.context.term()


class RedisIncrDriver:
    def __init__(self, port: int) -> None:
        import redis  # imported here so that zmq-only runs work without redis-py

        self.redis = redis.Redis(host="127.0.0.1", port=port, socket_timeout=REDIS_SOCKET_TIMEOUT_S)

    def warm_up(self) -> None:
        self.redis.ping()

    def change(self, account: str, delta: int) -> None:
        self.redis.incrby(balance_key(account), delta * MINOR_UNITS)

    def change_many(self, changes: list[tuple[str, int]], send: str) -> None:
        for start in range(0, len(changes), REDIS_PIPELINE):
            pipe = self.redis.pipeline(transaction=False)
            for account, delta in changes[start : start + REDIS_PIPELINE]:
                pipe.incrby(balance_key(account), delta * MINOR_UNITS)
            pipe.execute()

    def close(self) -> None:
        self.redis.close()


class RedisLockDriver(RedisIncrDriver):
    """Lock, GET, SET, unlock: four round trips per change, more under contention."""

    def change_many(self, changes: list[tuple[str, int]], send: str) -> None:
        raise NotImplementedError("the lock drivers send one change at a time")

    def change(self, account: str, delta: int) -> None:
        lock = self.redis.lock(
            lock_name(account), timeout=LOCK_TTL_S, sleep=LOCK_RETRY_S, blocking_timeout=LOCK_WAIT_S
        )
        if not lock.acquire():
            raise RequestFailed(f"lock {lock_name(account)} not acquired in {LOCK_WAIT_S} s")
        try:
            self._read_modify_write(account, delta)
        finally:
            lock.release()

    def _read_modify_write(self, account: str, delta: int) -> None:
        key = balance_key(account)
        current = self.redis.get(key)
        self.redis.set(key, int(current or 0) + delta * MINOR_UNITS)


class RedlockDriver(RedisLockDriver):
    def __init__(self, port: int) -> None:
        from pottery import Redlock

        super().__init__(port)
        self.redlock_class = Redlock
        self.locks: dict[str, Redlock] = {}

    def change(self, account: str, delta: int) -> None:
        lock = self.locks.get(account)
        if lock is None:
            lock = self.redlock_class(
                key=lock_name(account), masters={self.redis}, auto_release_time=LOCK_TTL_S
            )
            self.locks[account] = lock
        if not lock.acquire(timeout=LOCK_WAIT_S):
            raise RequestFailed(f"redlock {lock_name(account)} not acquired in {LOCK_WAIT_S} s")
        try:
            self._read_modify_write(account, delta)
        finally:
            lock.release()


def make_driver(config: ClientConfig) -> Driver:
    if config.driver == "zmq":
        return ZmqDriver(config.endpoint)
    if config.driver == "redis-incrby":
        return RedisIncrDriver(config.redis_port)
    if config.driver == "redis-lock":
        return RedisLockDriver(config.redis_port)
    if config.driver == "redlock":
        return RedlockDriver(config.redis_port)
    raise ValueError(f"unknown client driver {config.driver!r}")
