"""Wiring: build the ledgers, journals, workers and broker from a Config, start and stop them.

Start order: workers bind their inproc sockets first, then the broker connects to them and
binds the front end. Stop order: the broker stops taking requests, tells every worker to finish
what it has queued, forwards the last replies, and only then does the context terminate.
"""

from __future__ import annotations

import itertools
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import zmq

from zmqbalance.broker import Broker
from zmqbalance.datadir import (
    DEFAULT_SNAPSHOT_BYTES,
    DirectoryLock,
    MemoryStore,
    WorkerStore,
    describe_snapshot,
    open_meta,
    recover,
    worker_directory,
)
from zmqbalance.gateways import Gateway, check_gateway_address, start_gateways, stop_gateways
from zmqbalance.journal import DEFAULT_SEGMENT_BYTES, FSYNC_MODES
from zmqbalance.ledger import DEFAULT_RID_WINDOW, Ledger
from zmqbalance.money import check_scale
from zmqbalance.protocol import MAX_FRAME_BYTES, MIN_FRAME_BYTES
from zmqbalance.worker import Store, Worker

log = logging.getLogger(__name__)

DEFAULT_BIND = "tcp://127.0.0.1:7070"
DEFAULT_WORKERS = 4
DEFAULT_SCALE = 6
DEFAULT_DATA_DIR = "zmqbalance-data"
DEFAULT_QUEUE_MAX = 50_000  # changes queued per worker before the broker replies busy
START_TIMEOUT = 10.0  # seconds to wait for every thread to report that it started
STOP_TIMEOUT = 30.0  # seconds the workers get to finish their queues on shutdown
TEST_HOOKS_VARIABLE = "ZMQBALANCE_TEST_HOOKS"
_server_ids = itertools.count()


@dataclass
class Config:
    """The settings of ``zmqbalance serve``."""

    bind: str = DEFAULT_BIND
    workers: int = DEFAULT_WORKERS
    scale: int = DEFAULT_SCALE
    allow_negative: bool = False
    data_dir: str | None = None  # None keeps everything in memory
    fsync: str = "always"
    segment_bytes: int = DEFAULT_SEGMENT_BYTES
    snapshot_bytes: int = DEFAULT_SNAPSHOT_BYTES
    queue_max: int = DEFAULT_QUEUE_MAX
    max_frame_bytes: int = MAX_FRAME_BYTES
    rid_window: int = DEFAULT_RID_WINDOW
    test_hooks: bool = False
    line_bind: str | None = None  # old TCP line protocol gateway, HOST:PORT
    http_bind: str | None = None  # old HTTP API gateway, HOST:PORT

    def __post_init__(self) -> None:
        check_scale(self.scale)
        check_gateway_address(self.line_bind)
        check_gateway_address(self.http_bind)
        if self.workers < 1:
            raise ValueError(f"--workers must be at least 1, got {self.workers}")
        if self.fsync not in FSYNC_MODES:
            raise ValueError(f"--fsync must be one of {', '.join(FSYNC_MODES)}, got {self.fsync!r}")
        if self.queue_max < 1:
            raise ValueError(f"--queue-max must be at least 1, got {self.queue_max}")
        if self.max_frame_bytes < MIN_FRAME_BYTES:
            raise ValueError(
                f"--max-frame-bytes must be at least {MIN_FRAME_BYTES}, got {self.max_frame_bytes}"
            )


class Server:
    """One engine: a broker thread and ``config.workers`` worker threads in this process."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.workers: list[Worker] = []
        self.broker: Broker | None = None
        self.gateways: list[Gateway] = []
        self._stopped = False
        self._lock: DirectoryLock | None = None
        self._prefix = f"inproc://zmqbalance-{os.getpid()}-{next(_server_ids)}"

    def __repr__(self) -> str:
        return f"<Server {self.endpoint or self.config.bind} workers={len(self.workers)}>"

    @property
    def endpoint(self) -> str | None:
        """The bound front-end address, with the real port when ``bind`` asked for port 0."""
        return self.broker.endpoint if self.broker else None

    def start(self) -> None:
        """Start every thread; raise OSError if the front end cannot bind."""
        config = self.config
        if config.data_dir is not None:
            self._lock = DirectoryLock(Path(config.data_dir))
            open_meta(Path(config.data_dir), config.scale, config.workers)
        for index in range(config.workers):
            ledger = Ledger(
                config.scale, allow_negative=config.allow_negative, rid_window=config.rid_window
            )
            worker = Worker(
                index,
                config.workers,
                self.context,
                f"{self._prefix}-worker-{index}",
                ledger,
                self._open_store(index, ledger),
                queue_max=config.queue_max,
            )
            worker.start()
            self.workers.append(worker)
        for worker in self.workers:
            if not worker.started.wait(START_TIMEOUT):
                raise RuntimeError(f"worker {worker.index} did not start in {START_TIMEOUT} s")

        self.broker = Broker(
            self.context,
            config.bind,
            [worker.endpoint for worker in self.workers],
            scale=config.scale,
            max_frame_bytes=config.max_frame_bytes,
            queue_max=config.queue_max,
            debug_ops=config.test_hooks,
        )
        self.broker.start()
        self.broker.started.wait(START_TIMEOUT)
        if self.broker.bind_error is not None:
            error = self.broker.bind_error
            self.stop()
            raise OSError(f"cannot bind the front end to {config.bind}: {error}") from error
        # Gateways are clients of the front end, so they start after it binds.
        assert self.endpoint is not None
        try:
            self.gateways = start_gateways(
                self.endpoint, line_bind=config.line_bind, http_bind=config.http_bind
            )
        except OSError:
            self.stop()
            raise
        log.info(
            "zmqbalance started on %s with %d workers, scale %d, %s%s",
            self.endpoint,
            config.workers,
            config.scale,
            "in memory"
            if config.data_dir is None
            else f"data in {config.data_dir} (fsync {config.fsync})",
            ", negative balances allowed" if config.allow_negative else "",
        )

    def _open_store(self, index: int, ledger: Ledger) -> Store:
        """Recover a worker's ledger from the data directory and open its journal."""
        config = self.config
        if config.data_dir is None:
            return MemoryStore()
        directory = worker_directory(Path(config.data_dir), index)
        started = time.monotonic()
        report = recover(directory, index, ledger, repair=True)
        log.info(
            "worker %d recovered %d accounts from %s and %d changes in %d segments in %.3f s",
            index,
            len(ledger.accounts),
            describe_snapshot(report.snapshot_seq),
            report.changes,
            report.segments,
            time.monotonic() - started,
        )
        return WorkerStore(
            directory,
            report.next_seq,
            fsync=config.fsync,
            segment_bytes=config.segment_bytes,
            snapshot_bytes=config.snapshot_bytes,
        )

    def stop(self) -> None:
        """Finish queued commands, send their replies, stop every thread and free the sockets."""
        if self._stopped:
            return
        self._stopped = True
        stop_gateways(self.gateways)  # first, so their last commands still reach the broker
        if self.broker is not None and self.broker.is_alive():
            self.broker.stop_requested.set()
            self.broker.join(STOP_TIMEOUT)
            if self.broker.is_alive():
                log.error("broker did not stop within %s s", STOP_TIMEOUT)

        # Terminating the context wakes any thread still blocked on a socket, which then
        # closes its sockets and exits, so term() cannot wait forever.
        self.context.term()
        for worker in self.workers:
            worker.join(STOP_TIMEOUT)
        if self._lock is not None:
            self._lock.release()  # after the workers closed their journals
        if self.endpoint is not None:  # a server that never bound never started
            log.info("zmqbalance stopped")

    def serve_forever(self) -> None:
        """Start, run until SIGINT or SIGTERM, then stop cleanly."""
        stop = threading.Event()

        def on_signal(signum: int, frame: FrameType | None) -> None:
            log.info("received %s; stopping", signal.Signals(signum).name)
            stop.set()

        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            self.start()
            while not stop.wait(0.2):
                if self.broker is not None and not self.broker.is_alive():
                    raise RuntimeError("the broker thread stopped unexpectedly")
                for worker in self.workers:
                    if not worker.is_alive():
                        raise RuntimeError(f"worker {worker.index} stopped unexpectedly")
        finally:
            self.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
