"""The ROUTER front end: validate each request, route it to the worker that owns its account.

The broker thread owns the client-facing ROUTER socket and one inproc DEALER per worker. It
decodes and validates every request (so workers receive only valid commands), answers ``ping``
and every malformed request itself, and forwards each reply from a worker to the client as soon
as it arrives, so a slow account never delays a reply for another worker's account.

Routing is explicit: ``partition.owner_of(account)`` picks the worker. The broker takes every
request that is waiting (up to FORWARD_BATCH), then sends each worker its share in one message;
under load this makes one thread crossing carry many commands. The broker counts the commands
each worker has not answered yet; at ``queue_max`` the request is answered with ``busy``
instead of queueing without bound.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import msgpack
import zmq

from zmqbalance.batch import Gather, account_of
from zmqbalance.errors import BadRequest, Busy, RequestError, Unavailable
from zmqbalance.partition import PARTITION_FUNCTION, owner_of
from zmqbalance.protocol import (
    BATCH,
    PING,
    Request,
    decode_request,
    encode_exception,
    encode_ping,
    pack,
    peek_rid,
)
from zmqbalance.ratelimit import RateLimitedLog
from zmqbalance.worker import STOP, STOPPED, Command, has_message

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
        self.queued = [0] * len(worker_endpoints)  # commands sent to each worker, not answered
        self.gathers: dict[int, Gather] = {}  # batches waiting for their parts
        self._gather_ids = itertools.count()

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
            socket.setsockopt(zmq.SNDHWM, 0)  # bounded by the queued counts, see _route
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
            for index, socket in enumerate(workers):
                if socket in ready:
                    self._forward_replies(router, socket, index)
            if router in ready:
                self._take_requests(router, workers)

    def _take_requests(self, router: zmq.Socket[bytes], workers: list[zmq.Socket[bytes]]) -> None:
        batches: list[list[Command]] = [[] for _ in workers]
        for _ in range(FORWARD_BATCH):
            if not has_message(router):
                break
            self._route(router, router.recv_multipart(zmq.NOBLOCK), batches)
        for index, batch in enumerate(batches):
            if batch:
                workers[index].send(pack(batch))
                self.queued[index] += sum(_weight(command) for command in batch)

    def _route(
        self, router: zmq.Socket[bytes], frames: list[bytes], batches: list[list[Command]]
    ) -> None:
        """Validate one request and add it to its owner's batch, or answer it here."""
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
            ping = encode_ping(len(batches), self.scale, PARTITION_FUNCTION, request.rid)
            self._reply(router, envelope, ping)
            return
        if request.op == BATCH:
            self._route_batch(router, envelope, request, body, batches)
            return

        owner = owner_of(request.account, len(batches))
        batch = batches[owner]
        if self.queued[owner] + len(batch) >= self.queue_max:
            self.stats.busy += 1
            busy = Busy(
                f"worker {owner} has {self.queue_max} commands queued; retry later",
                op=request.op,
                account=request.account,
                rid=request.rid,
            )
            self._rate_limited.warning("busy", "answered busy: %s", busy)
            self._reply(router, envelope, encode_exception(busy))
            return
        batch.append(
            (
                envelope,
                request.op,
                request.account,
                request.units,
                request.rid,
                request.seconds,
                None,
            )
        )

    def _route_batch(
        self,
        router: zmq.Socket[bytes],
        envelope: list[bytes],
        request: Request,
        body: bytes,
        batches: list[list[Command]],
    ) -> None:
        """Split a batch into one part per owning worker, or answer it here if it cannot go."""
        assert request.changes is not None
        gather = Gather(envelope, request.rid, len(request.changes), request.detail)
        try:
            parts = self._split_batch(request, gather, len(batches))
        except RequestError as exc:
            exc.rid = request.rid
            self._reply(router, envelope, encode_exception(exc))
            return

        for owner, items in parts.items():
            size = len(items) if items is not None else len(request.changes)
            if self.queued[owner] + sum(map(_weight, batches[owner])) + size > self.queue_max:
                self.stats.busy += 1
                busy = Busy(
                    f"worker {owner} cannot queue {size} more changes; nothing of the "
                    "batch was applied; retry later",
                    op=BATCH,
                    rid=request.rid,
                )
                self._reply(router, envelope, encode_exception(busy))
                return
        if not parts:
            self._reply(router, envelope, gather.reply())
            return

        gather_id = next(self._gather_ids)
        gather.pending = len(parts)
        self.gathers[gather_id] = gather
        for owner, items in parts.items():
            size = len(items) if items is not None else len(request.changes)
            gather.sizes[owner] = size
            frame = body if items is None else None
            part = (gather_id, size, items, request.detail, frame)
            batches[owner].append(([], BATCH, "", 0, None, 0.0, part))

    def _split_batch(
        self, request: Request, gather: Gather, workers: int
    ) -> dict[int, list[tuple[int, Any]] | None]:
        """Group a batch's changes by owner; None stands for the whole batch, unsplit."""
        assert request.changes is not None
        if request.partition is not None:
            if not 0 <= request.partition < workers:
                raise BadRequest(
                    f"partition {request.partition} does not exist; the server has "
                    f"{workers} workers"
                )
            if not request.changes:
                return {}
            return {request.partition: None}

        parts: dict[int, list[tuple[int, Any]] | None] = {}
        for index, change in enumerate(request.changes):
            try:
                owner = owner_of(account_of(change), workers)
            except RequestError as exc:
                gather.fail(index, exc)
                continue
            items = parts.get(owner)
            if items is None:
                items = parts[owner] = []
            items.append((index, change))
        return parts

    def _on_bad_frames(
        self, router: zmq.Socket[bytes], envelope: list[bytes], problem: str
    ) -> None:
        self.stats.rejected += 1
        self._rate_limited.warning("frames", "rejected message: %s", problem)
        self._reply(router, envelope, encode_exception(BadRequest(problem)))

    def _forward_replies(
        self, router: zmq.Socket[bytes], worker: zmq.Socket[bytes], index: int
    ) -> int:
        """Send every reply a worker has ready to its client; return how many workers stopped."""
        stopped = 0
        for _ in range(FORWARD_BATCH):
            if not has_message(worker):
                break
            frame = worker.recv()
            if frame == STOPPED:
                stopped += 1
                continue
            for envelope, body in msgpack.unpackb(frame, raw=False):
                if isinstance(envelope, int):
                    self._on_part(router, envelope, body, index)
                    continue
                self.queued[index] -= 1
                envelope.append(body)
                self._send(router, envelope)
        return stopped

    def _on_part(
        self, router: zmq.Socket[bytes], gather_id: int, part: list[Any], worker: int
    ) -> None:
        """Add a worker's part to its batch; reply once every part has arrived."""
        gather = self.gathers[gather_id]
        self.queued[worker] -= gather.sizes[worker]
        gather.add(part)
        if gather.pending == 0:
            del self.gathers[gather_id]
            self._reply(router, gather.envelope, gather.reply())

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
        for index, socket in enumerate(workers):
            try:
                socket.send(STOP, zmq.NOBLOCK)  # HWM is off, so only a dead worker refuses
            except zmq.Again:
                log.error("worker %d is not running; it cannot be stopped cleanly", index)
        poller = zmq.Poller()
        poller.register(router, zmq.POLLIN)
        for socket in workers:
            poller.register(socket, zmq.POLLIN)

        running = len(workers)
        while running and time.monotonic() < deadline:
            ready = dict(poller.poll(POLL_INTERVAL_MS))
            for index, socket in enumerate(workers):
                if socket in ready:
                    running -= self._forward_replies(router, socket, index)
            if router in ready:
                self._refuse_requests(router)
        if running:
            log.error("%d workers did not stop within %s s", running, DRAIN_TIMEOUT)
        self._refuse_requests(router)  # what arrived after the last poll

    def _refuse_requests(self, router: zmq.Socket[bytes]) -> None:
        for _ in range(FORWARD_BATCH):
            if not has_message(router):
                return
            frames = router.recv_multipart(zmq.NOBLOCK)
            envelope, body, _ = split_envelope(frames)
            refusal = Unavailable(
                "the server is shutting down; retry after it restarts",
                rid=None if body is None else peek_rid(body),
            )
            self._reply(router, envelope, encode_exception(refusal))


def _weight(command: Command) -> int:
    """How many changes a queued command stands for: a batch part counts each change."""
    part = command[6]
    return 1 if part is None else part[1]


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
