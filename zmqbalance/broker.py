"""The ROUTER front end: validate each request, route it to the worker that owns its account.

The broker thread owns the client-facing ROUTER socket and one inproc DEALER per worker. It
decodes and validates every request (so workers receive only valid commands), answers ``ping``
and every malformed request itself, and forwards each reply from a worker to the client as soon
as it arrives, so a slow account never delays a reply for another worker's account.

Routing is explicit: ``partition.owner_of(account)`` picks the worker. A worker whose queue is
full gets nothing more: the request is answered with ``busy`` instead of queueing without bound.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import zmq

from zmqbalance.errors import BadRequest, Busy, RequestError, Unavailable
from zmqbalance.partition import PARTITION_FUNCTION, owner_of
from zmqbalance.protocol import (
    PING,
    decode_request,
    encode_exception,
    encode_ping,
    peek_rid,
)
from zmqbalance.ratelimit import RateLimitedLog
from zmqbalance.worker import STOP, STOPPED, pack_command

log = logging.getLogger(__name__)

POLL_INTERVAL_MS = 100  # how often the loop checks for a stop request
FORWARD_BATCH = 256  # messages taken from one socket before the others get a turn
DRAIN_TIMEOUT = 20.0  # seconds the workers get to finish their queues on shutdown


@dataclass
class BrokerStats:
    """Counters of what the front end could not deliver or decode."""

    requests: int = 0
    rejected: int = 0
    busy: int = 0
    dropped_frames: int = 0
    undeliverable_replies: int = 0


class Broker(threading.Thread):
    """The thread that serves the ROUTER front end."""

    def __init__(
        self,
        context: zmq.Context[zmq.Socket[bytes]],
        bind: str,
        worker_endpoints: list[str],
        *,
        scale: int,
        max_frame_bytes: int,
        queue_max: int,
        debug_ops: bool = False,
    ) -> None:
        super().__init__(name="zmqbalance-broker", daemon=True)
        self.context = context
        self.bind = bind
        self.worker_endpoints = worker_endpoints
        self.scale = scale
        self.max_frame_bytes = max_frame_bytes
        self.queue_max = queue_max
        self.debug_ops = debug_ops
        self.stats = BrokerStats()
        self.started = threading.Event()
        self.stop_requested = threading.Event()
        self.bind_error: Exception | None = None
        self.endpoint: str | None = None
        self._rate_limited = RateLimitedLog(log)

    def __repr__(self) -> str:
        return f"<Broker {self.endpoint or self.bind} workers={len(self.worker_endpoints)}>"

    def run(self) -> None:
        router = self.context.socket(zmq.ROUTER)
        workers = [self.context.socket(zmq.DEALER) for _ in self.worker_endpoints]
        try:
            self._set_up(router, workers)
            if self.bind_error is None:
                self._serve(router, workers)
                self._drain(router, workers)
        except Exception:
            log.exception("broker crashed")
            raise
        finally:
            self.started.set()
            router.close(linger=0)
            for socket in workers:
                socket.close(linger=0)

    def _set_up(self, router: zmq.Socket[bytes], workers: list[zmq.Socket[bytes]]) -> None:
        router.setsockopt(zmq.LINGER, 0)
        router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        router.setsockopt(zmq.MAXMSGSIZE, self.max_frame_bytes)
        for socket, endpoint in zip(workers, self.worker_endpoints, strict=True):
            socket.setsockopt(zmq.LINGER, 0)
            socket.setsockopt(zmq.SNDHWM, self.queue_max)
            socket.setsockopt(zmq.RCVHWM, 0)
            socket.connect(endpoint)
        try:
            router.bind(self.bind)
        except zmq.ZMQError as exc:
            self.bind_error = exc
            return
        self.endpoint = router.getsockopt_string(zmq.LAST_ENDPOINT)
        self.started.set()

    def _serve(self, router: zmq.Socket[bytes], workers: list[zmq.Socket[bytes]]) -> None:
        poller = zmq.Poller()
        poller.register(router, zmq.POLLIN)
        for socket in workers:
            poller.register(socket, zmq.POLLIN)

        while not self.stop_requested.is_set():
            ready = dict(poller.poll(POLL_INTERVAL_MS))
            for socket in workers:
                if socket in ready:
                    self._forward_replies(router, socket)
            if router in ready:
                self._take_requests(router, workers)

    def _take_requests(self, router: zmq.Socket[bytes], workers: list[zmq.Socket[bytes]]) -> None:
        for _ in range(FORWARD_BATCH):
            try:
                frames = router.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self._route(router, workers, frames)

    def _route(
        self, router: zmq.Socket[bytes], workers: list[zmq.Socket[bytes]], frames: list[bytes]
    ) -> None:
        self.stats.requests += 1
        envelope, body, problem = split_envelope(frames)
        if body is None:
            self._on_bad_frames(router, envelope, problem)
            return

        try:
            request = decode_request(body, self.scale, debug_ops=self.debug_ops)
        except RequestError as exc:
            self.stats.rejected += 1
            self._rate_limited.warning(exc.code, "rejected request: %s: %s", exc.code, exc)
            self._reply(router, envelope, encode_exception(exc))
            return
        if request.op == PING:
            ping = encode_ping(len(workers), self.scale, PARTITION_FUNCTION, request.rid)
            self._reply(router, envelope, ping)
            return

        owner = owner_of(request.account, len(workers))
        command = pack_command(
            request.op, request.account, request.units, request.rid, request.seconds
        )
        try:
            workers[owner].send_multipart([*envelope, command], zmq.NOBLOCK)
        except zmq.Again:
            self.stats.busy += 1
            busy = Busy(
                f"worker {owner} has {self.queue_max} commands queued; retry later",
                op=request.op,
                account=request.account,
                rid=request.rid,
            )
            self._rate_limited.warning("busy", "answered busy: %s", busy)
            self._reply(router, envelope, encode_exception(busy))

    def _on_bad_frames(
        self, router: zmq.Socket[bytes], envelope: list[bytes], problem: str
    ) -> None:
        self.stats.rejected += 1
        self._rate_limited.warning("frames", "rejected message: %s", problem)
        self._reply(router, envelope, encode_exception(BadRequest(problem)))

    def _forward_replies(self, router: zmq.Socket[bytes], worker: zmq.Socket[bytes]) -> int:
        stopped = 0
        for _ in range(FORWARD_BATCH):
            try:
                frames = worker.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            if frames == [STOPPED]:
                stopped += 1
                continue
            self._send(router, frames)
        return stopped

    def _reply(self, router: zmq.Socket[bytes], envelope: list[bytes], body: bytes) -> None:
        self._send(router, [*envelope, body])

    def _send(self, router: zmq.Socket[bytes], frames: list[bytes]) -> None:
        """Send a reply; a client that is gone or not reading loses it, and it is counted."""
        try:
            router.send_multipart(frames, zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            if exc.errno not in (zmq.EHOSTUNREACH, zmq.EAGAIN):
                raise
            self.stats.undeliverable_replies += 1
            self._rate_limited.warning(
                "undeliverable",
                "reply to client %s not delivered: %s (%d so far)",
                frames[0].hex(),
                exc.strerror,
                self.stats.undeliverable_replies,
            )

    def _drain(self, router: zmq.Socket[bytes], workers: list[zmq.Socket[bytes]]) -> None:
        """Stop the workers after what they have queued; refuse requests that arrive meanwhile.

        Gives up after DRAIN_TIMEOUT seconds, for instance when a worker has died.
        """
        deadline = time.monotonic() + DRAIN_TIMEOUT
        pending_stop = list(workers)
        poller = zmq.Poller()
        poller.register(router, zmq.POLLIN)
        for socket in workers:
            poller.register(socket, zmq.POLLIN)

        running = len(workers)
        while running and time.monotonic() < deadline:
            for socket in list(pending_stop):
                try:
                    socket.send(STOP, zmq.NOBLOCK)
                    pending_stop.remove(socket)
                except zmq.Again:
                    pass  # that worker's queue is full; try again after the next poll
            ready = dict(poller.poll(POLL_INTERVAL_MS))
            for socket in workers:
                if socket in ready:
                    running -= self._forward_replies(router, socket)
            if router in ready:
                self._refuse_requests(router)
        if running:
            log.error("%d workers did not stop within %s s", running, DRAIN_TIMEOUT)
        self._refuse_requests(router)  # what arrived after the last poll

    def _refuse_requests(self, router: zmq.Socket[bytes]) -> None:
        for _ in range(FORWARD_BATCH):
            try:
                frames = router.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            envelope, body, _ = split_envelope(frames)
            refusal = Unavailable(
                "the server is shutting down; retry after it restarts",
                rid=None if body is None else peek_rid(body),
            )
            self._reply(router, envelope, encode_exception(refusal))


def split_envelope(frames: list[bytes]) -> tuple[list[bytes], bytes | None, str]:
    """Split a ROUTER message into its routing envelope and its single body frame.

    A REQ or DEALER peer sends ``[identity, b"", body]``; a DEALER that skips the delimiter sends
    ``[identity, body]``. Anything else has no usable body: the envelope returned can still
    carry an error reply, and the string says what was wrong.
    """
    try:
        delimiter = frames.index(b"", 1)
    except ValueError:
        if len(frames) == 2:
            return frames[:1], frames[1], ""
        return (
            frames[:1],
            None,
            f"expected a body frame after the identity, got {len(frames) - 1} frames",
        )
    envelope, rest = frames[: delimiter + 1], frames[delimiter + 1 :]
    if len(rest) == 1:
        return envelope, rest[0], ""
    return envelope, None, f"expected one body frame after the empty delimiter, got {len(rest)}"
