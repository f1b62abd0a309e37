"""Shared fixtures: real servers on free loopback ports, in-process or as child processes.

`server` runs ``zmqbalance serve --workers 4`` as a child process. Other
options come through indirect parametrization:

    @pytest.mark.parametrize(
        "server", [{"workers": 2, "extra_args": ["--allow-negative"]}], indirect=True
    )
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import zmq

from tests.serverproc import ServerProcess
from zmqbalance import Client
from zmqbalance.server import Config, Server

ServerFactory = Callable[..., ServerProcess]

SERVER_STOP_TIMEOUT = 10.0  # seconds a server gets to exit after SIGTERM at teardown


@pytest.fixture
def engine_factory() -> Iterator[Callable[..., Server]]:
    """Start in-process engines on free ports; every one is stopped after the test."""
    started: list[Server] = []

    def start(**options: object) -> Server:
        server = Server(Config(bind="tcp://127.0.0.1:*", **options))  # type: ignore[arg-type]
        server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def engine(engine_factory: Callable[..., Server]) -> Server:
    """An in-process engine with the default options."""
    return engine_factory()


@pytest.fixture
def client_factory() -> Iterator[Callable[..., Client]]:
    """Make clients that are all closed after the test."""
    clients: list[Client] = []

    def make(endpoint: str, **options: object) -> Client:
        client = Client(endpoint, **options)  # type: ignore[arg-type]
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def client(engine: Server, client_factory: Callable[..., Client]) -> Client:
    assert engine.endpoint is not None
    return client_factory(engine.endpoint)


@pytest.fixture
def server_factory() -> Iterator[ServerFactory]:
    """Start ``zmqbalance serve`` child processes; each is stopped by pid after the test.

    Teardown sends SIGTERM and falls back to SIGKILL when a server has not
    exited within SERVER_STOP_TIMEOUT.
    """
    started: list[ServerProcess] = []

    def start(*args: str, env: dict[str, str] | None = None) -> ServerProcess:
        server = ServerProcess(args, env=env).start()
        started.append(server)
        return server

    yield start
    for server in started:
        try:
            server.terminate(timeout=SERVER_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            server.kill()


@pytest.fixture
def server(request: pytest.FixtureRequest, server_factory: ServerFactory) -> ServerProcess:
    """A ``zmqbalance serve`` child process, in memory, with 4 workers by default.

    Indirect parametrization may pass `workers` (int) and `extra_args`
    (more ``serve`` arguments).
    """
    options: dict[str, Any] = getattr(request, "param", {})
    workers = options.get("workers", 4)
    extra_args = options.get("extra_args", ())
    return server_factory("--workers", str(workers), *extra_args)


@pytest.fixture
def zmq_context() -> Iterator[zmq.Context[zmq.Socket[bytes]]]:
    """A private context for raw sockets; every socket must be closed with linger 0."""
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    yield context
    context.destroy(linger=0)
