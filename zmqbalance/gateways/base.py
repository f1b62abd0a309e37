"""The gateway thread: its own event loop, a TCP listener, and an engine bridge.

Each gateway follows the controllable-thread pattern the engine's threads use. The thread
creates its event loop, its ZeroMQ context and its DEALER socket itself. ``started`` is set
once the listener is bound, or once binding failed and ``bind_error`` is set.
:meth:`Gateway.stop` may be called from any thread.

Stopping is graceful. The listener closes first, idle connections are closed at once, and a
connection with a command in flight finishes that command and sends its reply before it is
closed, for at most ``STOP_GRACE`` seconds. The bridge closes last.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import zmq.asyncio

from zmqbalance.client import DEFAULT_RETRIES, DEFAULT_TIMEOUT
from zmqbalance.gateways.bridge import EngineBridge

log = logging.getLogger(__name__)

START_TIMEOUT = 10.0  # seconds for a gateway to bind its listener
STOP_GRACE = 10.0  # seconds a connection gets to finish its command in flight on shutdown
LISTEN_BACKLOG = 1024  # pending TCP connections, so a burst of hundreds is not refused
READ_CHUNK_BYTES = 65536  # one read from a client socket


def parse_tcp_address(text: str) -> tuple[str, int]:
    """Split ``tcp://HOST:PORT`` or ``HOST:PORT`` into host and port; IPv6 hosts in brackets.

    Port 0 asks the system for a free port.
    """
    rest = text.removeprefix("tcp://")
    host, colon, port_text = rest.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not colon or not host or not (port_text.isascii() and port_text.isdigit()):
        raise ValueError(
            f"invalid gateway address {text!r}; expected tcp://HOST:PORT or HOST:PORT, "
            "such as 127.0.0.1:7071"
        )
    port = int(port_text)
    if port > 65535:
        raise ValueError(f"invalid port {port} in gateway address {text!r}; expected 0 to 65535")
    return host, port


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def connectable_endpoint(endpoint: str) -> str:
    """Turn a front end bound to every interface into an address a local socket can connect to."""
    for wildcard, loopback in (
        ("tcp://0.0.0.0:", "tcp://127.0.0.1:"),
        ("tcp://[::]:", "tcp://[::1]:"),
    ):
        if endpoint.startswith(wildcard):
            return loopback + endpoint.removeprefix(wildcard)
    return endpoint


@dataclass
class GatewayStats:
    """Counters of one gateway's traffic."""

    connections: int = 0
    open_connections: int = 0
    commands: int = 0
    errors: int = 0


class Gateway(threading.Thread):
    """Base class: subclasses set ``kind`` and implement :meth:`serve_connection`."""

    kind = "tcp"

    def __init__(
        self,
        engine_endpoint: str,
        bind: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
    ) -> None:
        super().__init__(name=f"zmqbalance-{self.kind}-gateway", daemon=True)
        self.engine_endpoint = connectable_endpoint(engine_endpoint)
        self.host, self.port = parse_tcp_address(bind)
        self.timeout = timeout
        self.retries = retries
        self.stats = GatewayStats()
        self.started = threading.Event()
        self.bind_error: OSError | None = None
        self.address: tuple[str, int] | None = None
        self.bridge: EngineBridge | None = None
        self._stop_requested = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._idle: set[asyncio.Task[None]] = set()
        self._connections: set[asyncio.Task[None]] = set()

    def __repr__(self) -> str:
        where = format_address(*self.address) if self.address else f"{self.host}:{self.port}"
        return (
            f"<{type(self).__name__} {where} engine={self.engine_endpoint} "
            f"open={self.stats.open_connections} commands={self.stats.commands}>"
        )

    @property
    def stopping(self) -> bool:
        return self._stop_requested.is_set()

    async def serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        raise NotImplementedError

    def request_stop(self) -> None:
        """Ask the thread to close the listener and every connection; return at once."""
        self._stop_requested.set()
        loop, event = self._loop, self._stop_event
        if loop is not None and event is not None:
            try:
                loop.call_soon_threadsafe(event.set)
            except RuntimeError:
                pass  # the loop already closed: the thread is ending by itself

    def stop(self, timeout: float = STOP_GRACE + 5.0) -> None:
        """Close the listener and every connection, then wait for the thread to end."""
        self.request_stop()
        if self.is_alive():
            self.join(timeout)
            if self.is_alive():
                log.error("%s gateway did not stop within %s s", self.kind, timeout)

    def run(self) -> None:
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(self._main())
        except Exception:
            log.exception("%s gateway crashed", self.kind)
            raise
        finally:
            self.started.set()
            loop.close()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        if self._stop_requested.is_set():
            self._stop_event.set()

        context = zmq.asyncio.Context()
        self.bridge = EngineBridge(
            context, self.engine_endpoint, timeout=self.timeout, retries=self.retries
        )
        try:
            self.bridge.start()
            await self._listen()
        finally:
            await self.bridge.close()
            context.term()
            log.info("%s gateway stopped", self.kind)

    async def _listen(self) -> None:
        try:
            server = await asyncio.start_server(
                self._on_connection, self.host, self.port, backlog=LISTEN_BACKLOG
            )
        except OSError as exc:
            self.bind_error = exc
            return
        host, port = server.sockets[0].getsockname()[:2]
        self.address = (host, port)
        log.info("%s gateway listening on %s", self.kind, format_address(host, port))
        self.started.set()

        assert self._stop_event is not None
        await self._stop_event.wait()
        server.close()
        await self._close_connections()
        await server.wait_closed()

    async def _close_connections(self) -> None:
        for task in self._idle:
            task.cancel()
        if not self._connections:
            return
        done, still_busy = await asyncio.wait(self._connections, timeout=STOP_GRACE)
        for task in still_busy:
            log.warning("%s gateway: closing a connection with a command in flight", self.kind)
            task.cancel()
        await asyncio.gather(*still_busy, return_exceptions=True)

    async def _on_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        self._idle.add(task)
        self.stats.connections += 1
        self.stats.open_connections += 1
        peer = writer.get_extra_info("peername")
        log.debug("%s gateway: connection from %s", self.kind, peer)
        try:
            await self.serve_connection(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError) as exc:
            log.debug("%s gateway: connection from %s lost: %s", self.kind, peer, exc)
        except asyncio.CancelledError:
            pass  # stop() closes idle connections by cancelling them
        except Exception:
            log.exception("%s gateway: connection from %s failed", self.kind, peer)
        finally:
            self._connections.discard(task)
            self._idle.discard(task)
            self.stats.open_connections -= 1
            writer.close()

    @asynccontextmanager
    async def busy(self) -> AsyncIterator[None]:
        """Mark the current connection as having a command in flight, so stop() lets it finish."""
        task = asyncio.current_task()
        assert task is not None
        self._idle.discard(task)
        try:
            yield
        finally:
            if task in self._connections:
                self._idle.add(task)
