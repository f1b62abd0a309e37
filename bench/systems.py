"""The systems the bench compares, how to start each one, and how to read its final balances.

Each run gets a fresh server on a free 127.0.0.1 port with its own temporary directory, so no
state leaks from one run into the next. Redis rows start their own `redis-server` and never
connect to a Redis they did not start.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Any

import msgpack
import zmq

from bench.clients import MINOR_UNITS, REPLY_TIMEOUT_MS, ClientConfig, balance_key
from bench.procs import LOOPBACK, ServerProcess, free_port

ROOT = Path(__file__).resolve().parent.parent
REDIS_SERVER = "redis-server"
PROBE_TIMEOUT_MS = 200
HELP_TIMEOUT_S = 60.0
MGET_CHUNK = 1_000


@dataclass(frozen=True)
class System:
    name: str
    label: str
    kind: str  # zmqbalance | echo | redis
    driver: str  # client driver name in bench/clients.py
    server_args: tuple[str, ...] = ()
    has_counts: bool = False  # the system reports a change count per account


SYSTEMS: dict[str, System] = {
    s.name: s
    for s in (
        System("zmq-mem", "zmqbalance, in memory", "zmqbalance", "zmq", ("--in-memory",), True),
        System(
            "zmq-durable",
            "zmqbalance, --fsync always",
            "zmqbalance",
            "zmq",
            ("--fsync", "always"),
            True,
        ),
        System(
            "redis", "Redis INCRBY, no persistence", "redis", "redis-incrby", ("--appendonly", "no")
        ),
        System(
            "redis-aof",
            "Redis INCRBY, appendfsync always",
            "redis",
            "redis-incrby",
            ("--appendonly", "yes", "--appendfsync", "always"),
        ),
        System(
            "redis-lock",
            "Redis lock + GET + SET (redis-py Lock)",
            "redis",
            "redis-lock",
            ("--appendonly", "no"),
        ),
        System(
            "redlock",
            "Redis Redlock + GET + SET (pottery)",
            "redis",
            "redlock",
            ("--appendonly", "no"),
        ),
        System("echo", "bare pyzmq ROUTER echo", "echo", "zmq"),
    )
}
BASELINE = "zmq-mem"


def server_env() -> dict[str, str]:
    """Return the environment for server processes: this worktree first on PYTHONPATH."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return env


@cache
def zmqbalance_help() -> tuple[str | None, str]:
    """Return (reason it cannot run or None, text of `zmqbalance serve --help`)."""
    argv = [sys.executable, "-m", "zmqbalance", "serve", "--help"]
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, env=server_env(), timeout=HELP_TIMEOUT_S
        )
    except subprocess.TimeoutExpired:
        return f"`{' '.join(argv[1:])}` did not finish in {HELP_TIMEOUT_S} s", ""
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return f"`python3 -m zmqbalance serve --help` failed in {ROOT}: {last}", ""
    return None, done.stdout


@cache
def missing_python_module(name: str) -> str | None:
    try:
        __import__(name)
    except ImportError:
        return f"Python package {name!r} is not installed; run: pip install -e '.[bench]'"
    return None


def unavailable_reason(system: System) -> str | None:
    """Return why `system` cannot run on this machine, or None when it can."""
    if system.kind == "zmqbalance":
        reason, text = zmqbalance_help()
        if reason is None and system.name == "zmq-durable":
            for flag in ("--data-dir", "--fsync"):
                if flag not in text:
                    reason = f"`zmqbalance serve --help` lists no {flag} option yet"
        return reason
    if system.kind == "redis":
        if shutil.which(REDIS_SERVER) is None:
            return "redis-server is not installed; run: sudo apt-get install -y redis-server"
        module = "pottery" if system.driver == "redlock" else "redis"
        return missing_python_module("redis") or missing_python_module(module)
    return None


class Running:
    """One started server: its process, how clients reach it, and its final balances."""

    def __init__(self, system: System, server: ServerProcess, config: ClientConfig):
        self.system = system
        self.server = server
        self.client_config = config
        self.info: dict[str, Any] = {}  # e.g. the worker count a zmqbalance ping reports

    def read_balances(self, accounts: list[str]) -> dict[str, tuple[Decimal, int | None]]:
        """Return {account: (balance in units, change count or None)}."""
        if self.system.kind == "redis":
            return _redis_balances(self.client_config.redis_port, accounts)
        if self.system.kind == "zmqbalance":
            return _zmq_balances(self.client_config.endpoint, accounts)
        return {}

    def stop(self) -> int | None:
        return self.server.stop()


def start(system: System, workdir: Path, workers: int | None = None) -> Running:
    """Start a fresh server for `system` with its files under `workdir`; wait until it replies."""
    port = free_port()
    endpoint = f"tcp://{LOOPBACK}:{port}"
    if system.kind == "redis":
        return _start_redis(system, workdir, port)

    if system.kind == "echo":
        argv = [sys.executable, str(ROOT / "bench" / "echo_server.py"), "--bind", endpoint]
    else:
        argv = [sys.executable, "-m", "zmqbalance", "serve", "--bind", endpoint]
        argv += _supported_args(system.server_args)
        if system.name == "zmq-durable":
            argv += ["--data-dir", str(workdir / "data")]
        if workers is not None:
            argv += ["--workers", str(workers)]
    server = ServerProcess(system.name, argv, workdir / "server.log", server_env())
    running = Running(system, server, ClientConfig("zmq", endpoint=endpoint))
    try:
        server.wait_ready(lambda: _zmq_ping(endpoint, running.info))
    except BaseException:
        server.stop()
        raise
    return running


def _supported_args(args: tuple[str, ...]) -> list[str]:
    """Drop `--in-memory` when `zmqbalance serve` has no such flag: memory is then its only mode."""
    _, text = zmqbalance_help()
    return [a for a in args if a != "--in-memory" or a in text]


def _start_redis(system: System, workdir: Path, port: int) -> Running:
    argv = [
        REDIS_SERVER, "--port", str(port), "--bind", LOOPBACK, "--dir", str(workdir),
        "--save", "", "--daemonize", "no", "--protected-mode", "yes", *system.server_args,
    ]  # fmt: skip
    server = ServerProcess(system.name, argv, workdir / "server.log", dict(os.environ))
    try:
        server.wait_ready(lambda: _redis_ping(port))
    except BaseException:
        server.stop()
        raise
    return Running(system, server, ClientConfig(system.driver, redis_port=port))


def _zmq_request(endpoint: str, message: dict[str, Any], timeout_ms: int) -> dict[str, Any] | None:
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    with context.socket(zmq.REQ) as sock:
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(endpoint)
        sock.send(msgpack.packb(message))
        if not sock.poll(timeout_ms):
            return None
        reply: dict[str, Any] = msgpack.unpackb(sock.recv())
        return reply


def _zmq_ping(endpoint: str, info: dict[str, Any]) -> bool:
    reply = _zmq_request(endpoint, {"op": "ping"}, PROBE_TIMEOUT_MS)
    if reply is None or reply.get("ok") is not True:
        return False
    info.update({k: v for k, v in reply.items() if k in ("workers", "scale", "partition")})
    return True


def _zmq_balances(endpoint: str, accounts: list[str]) -> dict[str, tuple[Decimal, int | None]]:
    balances: dict[str, tuple[Decimal, int | None]] = {}
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    with context.socket(zmq.REQ) as sock:
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVTIMEO, REPLY_TIMEOUT_MS)
        sock.connect(endpoint)
        for account in accounts:
            sock.send(msgpack.packb({"op": "balance", "account": account}))
            reply = msgpack.unpackb(sock.recv())
            if reply.get("ok") is not True:
                raise RuntimeError(f"balance of account {account!r} failed: {reply}")
            balances[account] = (Decimal(reply["balance"]), int(reply["count"]))
    return balances


def _redis_ping(port: int) -> bool:
    import redis

    client = redis.Redis(host=LOOPBACK, port=port, socket_connect_timeout=PROBE_TIMEOUT_MS / 1000)
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False
    finally:
        client.close()


def _redis_balances(port: int, accounts: list[str]) -> dict[str, tuple[Decimal, int | None]]:
    import redis

    client = redis.Redis(host=LOOPBACK, port=port)
    balances: dict[str, tuple[Decimal, int | None]] = {}
    try:
        for i in range(0, len(accounts), MGET_CHUNK):
            chunk = accounts[i : i + MGET_CHUNK]
            values = client.mget([balance_key(a) for a in chunk])
            for account, value in zip(chunk, values, strict=True):
                minor = int(value) if value is not None else 0
                balances[account] = (Decimal(minor) / MINOR_UNITS, None)
    finally:
        client.close()
    return balances
