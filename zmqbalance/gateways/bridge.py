"""The gateways' way into the engine: one asyncio DEALER socket to the front end.

A gateway serves many TCP connections from one event loop, and every connection's commands
travel over one DEALER socket connected to the broker's front end, the same wire contract any
other client speaks. Each request gets a fresh request id (rid) and a future. One reader task
receives every reply and resolves the future whose rid the reply carries, so replies may arrive
in any order and each still reaches the connection that asked.

Retries follow the blocking client: a request that gets no reply within ``timeout`` seconds, or
gets ``busy`` or ``unavailable``, is sent again with the same rid, at most ``retries`` more times.
The engine applies a resent change once, so a retry never doubles a credit or a debit.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
from typing import Any

import msgpack
import zmq
import zmq.asyncio

from zmqbalance.client import DEFAULT_RETRIES, DEFAULT_TIMEOUT
from zmqbalance.protocol import pack
from zmqbalance.ratelimit import RateLimitedLog
from zmqbalance.retry import RETRY_BACKOFF, RETRYABLE_ERRORS

log = logging.getLogger(__name__)

TIMED_OUT = "timed_out"  # error code of a request the engine did not reply to in time
RID_PREFIX_BYTES = 8  # random per bridge, so two gateways never share a rid


class EngineBridge:
    """A DEALER connection to the engine, shared by every connection of one gateway.

    Create it, call :meth:`start` and :meth:`close` from the event loop's thread only.
    """

    def __init__(
        self,
        context: zmq.asyncio.Context,
        endpoint: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
    ) -> None:
        self.context = context
        self.endpoint = endpoint
        self.timeout = timeout
        self.retries = retries
        self.late_replies = 0
        self._socket: zmq.asyncio.Socket | None = None
        self._reader: asyncio.Task[None] | None = None
        self._pending: dict[bytes, asyncio.Future[dict[str, Any]]] = {}
        self._rid_prefix = os.urandom(RID_PREFIX_BYTES)
        self._rid_counter = itertools.count()
        self._rate_limited = RateLimitedLog(log)

    def __repr__(self) -> str:
        return f"<EngineBridge {self.endpoint} pending={len(self._pending)}>"

    def start(self) -> None:
        socket = self.context.socket(zmq.DEALER)
        socket.setsockopt(zmq.LINGER, 0)
        socket.connect(self.endpoint)
        self._socket = socket
        self._reader = asyncio.get_running_loop().create_task(self._read_replies())

    async def close(self) -> None:
        """Stop reading replies, fail every pending request, and close the socket."""
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        for future in self._pending.values():
            if not future.done():
                future.cancel()
        self._pending.clear()
        if self._socket is not None:
            self._socket.close(linger=0)
            self._socket = None

    async def request(self, message: dict[str, Any]) -> dict[str, Any]:
        """Send one request map and return the engine's reply map, successful or not.

        When every attempt times out the result is a failure map with the code ``timed_out``,
        so callers handle one shape of result.
        """
        rid = self._rid_prefix + next(self._rid_counter).to_bytes(8, "big")
        frame = pack({**message, "rid": rid})
        backoff = RETRY_BACKOFF
        try:
            for attempt in range(self.retries + 1):
                reply = await self._attempt(rid, frame)
                if reply is None:
                    log.warning(
                        "engine at %s did not reply within %s s to rid %s (attempt %d of %d)",
                        self.endpoint,
                        self.timeout,
                        rid.hex(),
                        attempt + 1,
                        self.retries + 1,
                    )
                    continue
                if reply.get("error") in RETRYABLE_ERRORS and attempt < self.retries:
                    await asyncio.sleep(backoff)
                    backoff *= 2
                    continue
                return reply
        finally:
            self._pending.pop(rid, None)
        return {
            "ok": False,
            "error": TIMED_OUT,
            "message": f"the engine did not reply within {self.timeout} s, "
            f"{self.retries + 1} attempts; the change may or may not have been applied",
        }

    async def _attempt(self, rid: bytes, frame: bytes) -> dict[str, Any] | None:
        """Send ``frame`` once and wait for the reply carrying ``rid``; None on timeout."""
        if self._socket is None:
            raise RuntimeError("the engine bridge is not started or already closed")
        future = self._pending.get(rid)
        if future is None or future.done():
            future = asyncio.get_running_loop().create_future()
            self._pending[rid] = future
        await self._socket.send_multipart([b"", frame])
        try:
            return await asyncio.wait_for(asyncio.shield(future), self.timeout)
        except asyncio.TimeoutError:
            return None

    async def _read_replies(self) -> None:
        assert self._socket is not None
        while True:
            frames = await self._socket.recv_multipart()
            reply = self._decode(frames[-1])
            if reply is None:
                continue
            future = self._pending.get(reply.get("rid"))  # type: ignore[arg-type]
            if future is None or future.done():
                # A late reply to an attempt that timed out, after a resend already got its reply.
                self.late_replies += 1
                log.debug("discarded a late reply for rid %r", reply.get("rid"))
                continue
            future.set_result(reply)

    def _decode(self, frame: bytes) -> dict[str, Any] | None:
        try:
            reply = msgpack.unpackb(frame, raw=False)
        except (ValueError, msgpack.UnpackException) as exc:
            self._rate_limited.warning("undecodable", "discarded an undecodable reply: %s", exc)
            return None
        if not isinstance(reply, dict) or not isinstance(reply.get("rid"), bytes):
            self._rate_limited.warning("shape", "discarded a reply without a rid: %.80r", reply)
            return None
        return reply
