"""Client-side drivers: one change per call, one request in flight, one driver per process.

Each driver turns `change(account, delta)` into what its system needs on the wire:

- `zmq`: one msgpack map on a raw pyzmq REQ socket, as the wire contract defines it. The
  bench does not use zmqbalance's own client, so it measures the wire and not a wrapper.
- `redis-incrby`: one INCRBY of the balance in minor units.
- `redis-lock`: redis-py's `Lock` on `cb_<account>`, GET, SET, release, the way the
  service zmqbalance replaces kept its balances.
- `redlock`: the same with pottery's `Redlock` (one Redis master).

Redis balances live under `cb:balance:<account>` as integers of minor units (10**-6).
"""

from __future__ import annotations

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

    def close(self) -> None:
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

    def close(self) -> None:
        self.redis.close()


class RedisLockDriver(RedisIncrDriver):
    """Lock, GET, SET, unlock: four round trips per change, more under contention."""

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
