"""The ROUTER front end: validate each request, route it to the worker that owns its account.

The broker thread owns the client-facing ROUTER socket and one inproc DEALER per worker. It
decodes and validates every request, so workers receive only valid commands. It replies to
``ping`` and to every malformed request itself. It forwards each reply from a worker to the
client as soon as it arrives, so a slow account never delays a reply for another worker's
account.

Routing is explicit: ``partition.owner_of(account)`` picks the worker. The broker takes every
request that is waiting (up to FORWARD_BATCH), then sends each worker its share in one message;
under load this makes one thread crossing carry many commands.

Limits and high-water marks, so that no client can stall the loop or grow its memory:

- ``ZMQ_MAXMSGSIZE`` on the front end is ``max_frame_bytes``. ZeroMQ checks it per frame in its
  I/O thread, before it allocates the frame, and disconnects a peer that sends a larger frame.
  The broker never sees that frame, so it is neither answered nor counted here.
- Replies go out with ``ZMQ_ROUTER_MANDATORY`` and ``NOBLOCK``. A client that has gone, or that
  stops reading until its pipe (``ZMQ_SNDHWM``, 1000 messages by default) is full, loses the
  reply; it is counted in :attr:`BrokerStats.undeliverable_replies` and logged at a limited rate.
  The change it reports was applied all the same.
- The broker counts the commands each worker has not answered yet. At ``queue_max`` a request
  for that worker is answered ``busy`` and not applied, instead of queueing without bound.
- A message with more than :data:`MAX_ENVELOPE_FRAMES` routing frames, or a routing frame longer
  than :data:`MAX_ROUTING_ID_BYTES`, is answered with ``bad_request`` at its sender's identity
  instead of echoing the envelope back.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import msgpack
import zmq

from zmqbalance.batch import Gather, account_of
from zmqbalance.errors import BadRequest, Busy, InternalError, RequestError, Unavailable
from zmqbalance.ledger import Rid
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
# Replies ZeroMQ queues for one client before a reply to it counts as undeliverable. It is ten
# times the AsyncClient's default window of 1,000, so a pipelining client that reads its replies
# does not lose one. A client that reads nothing costs at most this many queued replies.
REPLIES_QUEUED_PER_CLIENT = 10_000
FORWARD_BATCH = 256  # messages taken from one socket before the others get a turn
MAX_ENVELOPE_FRAMES = 16  # routing frames before the delimiter; each proxy hop adds one
MAX_ROUTING_ID_BYTES = 255  # ZeroMQ's own limit on a routing id
SHUTDOWN_LINGER_MS = 1000  # how long the last replies may take to reach the wire at shutdown

# Test hook only (ZMQBALANCE_TEST_HOOKS=1): a request with ``hold_reply`` travels to its worker
# with this marker and the delay in front of its envelope, and the broker keeps the reply until
# it is due. A routing id never equals the marker: ZeroMQ generates 5-byte ids starting with a
# zero byte, and ids chosen by applications must not start with a zero byte.
HOLD_MARKER = b"\x00hold-reply"
HELD_RIDS_REMEMBERED = 10_000  # a rid's reply is held once; a resend gets its reply at once
DRAIN_TIMEOUT = 20.0  # seconds the workers get to finish their queues on shutdown


@dataclass
class BrokerStats:
    """Counters of what the front end took in, rejected, and could not deliver."""

    requests: int = 0  # messages taken from the front end
    rejected: int = 0  # replied with a request error: malformed frames, msgpack or values
    busy: int = 0  # replied busy because the owning worker's queue was full
    refused_unavailable: int = 0  # replied unavailable while shutting down
    internal_errors: int = 0  # replied internal_error after a bug in the broker
    undeliverable_replies: int = 0  # replies dropped: client gone or its pipe full
    held_replies: int = 0  # test hook: replies held back by hold_reply


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
        # Changes routed to each worker that have no reply yet, counted when routed.
        self.queued = [0] * len(worker_endpoints)
        self.gathers: dict[int, Gather] = {}  # batches waiting for their parts
        self._gather_ids = itertools.count()
        self._held: list[tuple[float, int, list[bytes]]] = []  # (due, sequence, frames) heap
        self._held_sequence = itertools.count()
        self._held_rids: OrderedDict[Rid, None] = OrderedDict()

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
            router.close()  # LINGER is 0 unless _drain raised it to flush the last replies
            for socket in workers:
                socket.close(linger=0)

    def _set_up(self, router: zmq.Socket[bytes], workers: list[zmq.Socket[bytes]]) -> None:
        router.setsockopt(zmq.LINGER, 0)
        router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        router.setsockopt(zmq.SNDHWM, REPLIES_QUEUED_PER_CLIENT)
        router.setsockopt(zmq.MAXMSGSIZE, self.max_frame_bytes)
        for socket, endpoint in zip(workers, self.worker_endpoints, strict=True):
            socket.setsockopt(zmq.LINGER, 0)
            socket.setsockopt(zmq.SNDHWM, 0)  # bounded by self.queued instead, see _route
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
            ready = dict(poller.poll(self._poll_timeout()))
            for index, socket in enumerate(workers):
                if socket in ready:
                    self._forward_replies(router, socket, index)
            if router in ready:
                self._take_requests(router, workers)
            if self._held:
                self._release_held(router, time.monotonic())

    def _take_requests(self, router: zmq.Socket[bytes], workers: list[zmq.Socket[bytes]]) -> None:
        batches: list[list[Command]] = [[] for _ in workers]
        for _ in range(FORWARD_BATCH):
            if not has_message(router):
                break
            frames = router.recv_multipart(zmq.NOBLOCK)
            try:
                self._route(router, frames, batches)
            except zmq.ContextTerminated:
                raise
            except Exception as exc:
                self._on_internal_error(router, frames, exc)
        for index, batch in enumerate(batches):
            if batch:
                workers[index].send(pack(batch))

    def _route(
        self, router: zmq.Socket[bytes], frames: list[bytes], batches: list[list[Command]]
    ) -> None:
        """Validate one request and add it to its owner's batch, or reply to it here."""
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
        hold = self._hold_for(request)
        if request.op == PING:
            ping = encode_ping(len(batches), self.scale, PARTITION_FUNCTION, request.rid)
            if hold:
                self._hold([*envelope, ping], hold)
            else:
                self._reply(router, envelope, ping)
            return
        if request.op == BATCH:
            self._route_batch(router, envelope, request, body, batches)
            return

        owner = owner_of(request.account, len(batches))
        batch = batches[owner]
        if self.queued[owner] >= self.queue_max:
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
        route = [HOLD_MARKER, repr(hold).encode(), *envelope] if hold else envelope
        self.queued[owner] += 1
        batch.append(
            (
                route,
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
            if self.queued[owner] + size > self.queue_max:
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
            self.queued[owner] += size
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

    def _on_internal_error(
        self, router: zmq.Socket[bytes], frames: list[bytes], exc: Exception
    ) -> None:
        """Answer internal_error for a request that made the broker fail, and keep serving."""
        self.stats.internal_errors += 1
        self._rate_limited.exception(
            "internal", "broker failed on a request from client %s: %s", frames[0].hex(), exc
        )
        error = InternalError("the server failed on this request; see its log")
        self._reply(router, split_envelope(frames)[0], encode_exception(error))

    def _hold_for(self, request: Request) -> float:
        """Return how long to hold this request's reply: its hold_reply, once per rid."""
        if not request.hold_reply:
            return 0.0
        if request.rid is not None:
            if request.rid in self._held_rids:
                return 0.0
            self._held_rids[request.rid] = None
            if len(self._held_rids) > HELD_RIDS_REMEMBERED:
                self._held_rids.popitem(last=False)
        return request.hold_reply

    def _hold(self, frames: list[bytes], seconds: float) -> None:
        self.stats.held_replies += 1
        due = time.monotonic() + seconds
        heapq.heappush(self._held, (due, next(self._held_sequence), frames))

    def _release_held(self, router: zmq.Socket[bytes], now: float) -> None:
        """Send every held reply that is due at ``now``; ``float("inf")`` sends them all."""
        while self._held and self._held[0][0] <= now:
            _, _, frames = heapq.heappop(self._held)
            self._send(router, frames)

    def _poll_timeout(self) -> int:
        """Return the poll timeout in ms: the stop check interval, or less if a reply is due."""
        if not self._held:
            return POLL_INTERVAL_MS
        due_in_ms = (self._held[0][0] - time.monotonic()) * 1000
        return max(0, min(POLL_INTERVAL_MS, int(due_in_ms) + 1))

    def _on_bad_frames(
        self, router: zmq.Socket[bytes], envelope: list[bytes], problem: str
    ) -> None:
        self.stats.rejected += 1
        self._rate_limited.warning("frames", "rejected message: %s", problem)
        self._reply(router, envelope, encode_exception(BadRequest(problem)))

    def _forward_replies(
        self,
        router: zmq.Socket[bytes],
        worker: zmq.Socket[bytes],
        index: int,
        *,
        hold: bool = True,
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
                if envelope[0] == HOLD_MARKER:
                    seconds, envelope = float(envelope[1]), envelope[2:]
                    if hold:
                        self._hold(envelope, seconds)
                        continue
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

        Every command already handed to a worker is applied and answered. Requests that arrive
        from now on, and those still waiting in the front end, are answered ``unavailable``
        and not applied. Held replies are sent at once. Gives up after :data:`DRAIN_TIMEOUT`
        seconds, for instance when a worker has died. The front end then gets
        :data:`SHUTDOWN_LINGER_MS` to write the last replies before it closes.
        """
        log.info("stopping: finishing the queued commands, refusing new ones")
        self._release_held(router, float("inf"))
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
                    running -= self._forward_replies(router, socket, index, hold=False)
            if router in ready:
                self._refuse_requests(router)
        if running:
            log.error("%d workers did not stop within %s s", running, DRAIN_TIMEOUT)
        self._refuse_requests(router)  # what arrived after the last poll
        router.setsockopt(zmq.LINGER, SHUTDOWN_LINGER_MS)
        log.info(
            "broker stopped after %d requests: %d rejected, %d busy, %d refused while stopping, "
            "%d replies undeliverable",
            self.stats.requests,
            self.stats.rejected,
            self.stats.busy,
            self.stats.refused_unavailable,
            self.stats.undeliverable_replies,
        )

    def _refuse_requests(self, router: zmq.Socket[bytes]) -> None:
        for _ in range(FORWARD_BATCH):
            if not has_message(router):
                return
            frames = router.recv_multipart(zmq.NOBLOCK)
            self.stats.requests += 1
            self.stats.refused_unavailable += 1
            envelope, body, _ = split_envelope(frames)
            refusal = Unavailable(
                "the server is shutting down; retry after it restarts",
                rid=None if body is None else peek_rid(body),
            )
            self._reply(router, envelope, encode_exception(refusal))


def split_envelope(frames: list[bytes]) -> tuple[list[bytes], bytes | None, str]:
    """Split a ROUTER message into its routing envelope and its single body frame.

    A REQ or DEALER peer sends ``[identity, b"", body]``; a DEALER that skips the delimiter sends
    ``[identity, body]``. Anything else has no usable body. The envelope returned can still
    carry an error reply, and the string describes what was wrong.
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

    if delimiter > 1 and not _is_routing_envelope(frames[1:delimiter]):
        return (
            [frames[0], b""],
            None,
            f"the envelope must have at most {MAX_ENVELOPE_FRAMES} routing frames of at most "
            f"{MAX_ROUTING_ID_BYTES} bytes each, got {delimiter} frames",
        )
    envelope, rest = frames[: delimiter + 1], frames[delimiter + 1 :]
    if len(rest) == 1:
        return envelope, rest[0], ""
    return envelope, None, f"expected one body frame after the empty delimiter, got {len(rest)}"


def _is_routing_envelope(frames: list[bytes]) -> bool:
    if len(frames) >= MAX_ENVELOPE_FRAMES:
        return False
    return all(len(frame) <= MAX_ROUTING_ID_BYTES for frame in frames)
