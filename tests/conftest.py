"""Shared pytest fixtures: a real zmqbalance server run as a subprocess.

`server` starts `python3 -m zmqbalance serve` on a free 127.0.0.1 port, waits
until it answers a ping and stops it by pid with SIGTERM after the test. The
defaults are `--in-memory --workers 4`; other options come through indirect
parametrization:

    @pytest.mark.parametrize(
        "server", [{"workers": 2, "in_memory": False, "extra_args": ["--data-dir", "d"]}],
        indirect=True,
    )

`server_factory` starts as many servers as a test needs, with the same options
as keyword arguments; all of them are stopped at teardown.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq

REPO_ROOT = Path(__file__).resolve().parent.parent

SERVER_START_TIMEOUT = 15.0  # seconds until the first ping must succeed
SERVER_STOP_TIMEOUT = 10.0  # seconds to exit after SIGTERM before SIGKILL
PING_TIMEOUT_MS = 200  # per ping attempt while waiting for the server


@dataclass
class ServerProcess:
    """A running server: its endpoint, its pid and where its output goes."""

    endpoint: str
    process: subprocess.Popen[bytes]
    log_path: Path
    args: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


def free_tcp_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    # NOTE: another process may take the port between this check and the
    # server's bind; the server then fails to start and the test reports it.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def ping_once(context: zmq.Context[zmq.Socket[bytes]], endpoint: str) -> bool:
    """Send one ping on a fresh REQ socket; return whether a pong came back in time."""
    with context.socket(zmq.REQ) as request_socket:
        request_socket.setsockopt(zmq.LINGER, 0)
        request_socket.connect(endpoint)
        request_socket.send(msgpack.packb({"op": "ping"}))
        if not request_socket.poll(PING_TIMEOUT_MS, zmq.POLLIN):
            return False
        reply = msgpack.unpackb(request_socket.recv())
    return isinstance(reply, dict) and reply.get("pong") is True


def wait_until_serving(server: ServerProcess) -> None:
    """Block until the server replies to a ping; fail the test if it exits or never replies."""
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        while time.monotonic() < deadline:
            if server.process.poll() is not None:
                pytest.fail(
                    f"server exited with {server.process.returncode} before answering a ping; "
                    f"args {server.args}; output:\n{server.log_text()}"
                )
            if ping_once(context, server.endpoint):
                return
        pytest.fail(
            f"server at {server.endpoint} did not answer a ping within "
            f"{SERVER_START_TIMEOUT} s; output:\n{server.log_text()}"
        )
    finally:
        context.term()


def start_server(
    log_dir: Path,
    workers: int = 4,
    in_memory: bool = True,
    extra_args: Sequence[str] = (),
) -> ServerProcess:
    """Start `python3 -m zmqbalance serve` on a free port and wait until it serves."""
    endpoint = f"tcp://127.0.0.1:{free_tcp_port()}"
    args = [sys.executable, "-m", "zmqbalance", "serve", "--bind", endpoint]
    args += ["--workers", str(workers)]
    if in_memory:
        args.append("--in-memory")
    args += list(extra_args)

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    log_path = log_dir / f"server-{endpoint.rsplit(':', 1)[1]}.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            args, cwd=log_dir, env=env, stdout=log_file, stderr=subprocess.STDOUT
        )
    server = ServerProcess(endpoint=endpoint, process=process, log_path=log_path, args=args)
    try:
        wait_until_serving(server)
    except BaseException:
        stop_server(server)
        raise
    return server


def stop_server(server: ServerProcess) -> None:
    """Stop the server by its pid: SIGTERM, then SIGKILL if it outlives the timeout."""
    if server.process.poll() is None:
        os.kill(server.pid, signal.SIGTERM)
        try:
            server.process.wait(timeout=SERVER_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.kill(server.pid, signal.SIGKILL)
            server.process.wait(timeout=SERVER_STOP_TIMEOUT)


@pytest.fixture
def server_factory(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[..., ServerProcess]]:
    """Yield a function that starts a server with the options of `start_server`."""
    started: list[ServerProcess] = []

    def start(**options: Any) -> ServerProcess:
        server = start_server(tmp_path_factory.mktemp("server"), **options)
        started.append(server)
        return server

    yield start
    for server in started:
        stop_server(server)


@pytest.fixture
def server(
    request: pytest.FixtureRequest, server_factory: Callable[..., ServerProcess]
) -> ServerProcess:
    """A running server; indirect parametrization passes options to `start_server`."""
    options: dict[str, Any] = getattr(request, "param", {})
    return server_factory(**options)
