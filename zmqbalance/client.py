"""The blocking client: one REQ socket, a timeout per request, and safe retries.

The client follows the ZeroMQ guide's Lazy Pirate pattern. Each request waits at most
``timeout`` seconds for its reply. After a timeout the REQ socket is closed and replaced (a REQ
socket that lost a reply cannot send again), and the same request is sent again, at most
``retries`` more times. Every request carries a request id (rid), generated when the caller gives
none, so a resent credit or debit is applied once: the server answers a repeated rid with the
first outcome. A reply whose rid is not the one awaited is a late reply to an earlier request and
is thrown away.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from types import TracebackType
from typing import Any

import zmq

from zmqbalance.errors import WrongPartition, format_rid
from zmqbalance.ledger import BALANCE, PLUS_FUNDS, SUB_FUNDS, Rid
from zmqbalance.protocol import BATCH, MAX_BATCH_CHANGES, PING, pack
from zmqbalance.replies import (
    Amount,
    Balance,
    BatchResult,
    Change,
    ServerInfo,
    balance_from,
    batch_result_from,
    decode_reply,
    encode_amount,
    encode_changes,
    group_by_owner,
    merge_batch_results,
    new_rid,
    server_info_from,
)
from zmqbalance.retry import Attempts

log = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "tcp://127.0.0.1:7070"
DEFAULT_TIMEOUT = 2.5  # seconds per attempt
DEFAULT_RETRIES = 3  # attempts after the first one


class Client:
    """A blocking zmqbalance client; not thread-safe, so give each thread its own.

    ``timeout`` (default :data:`DEFAULT_TIMEOUT`, 2.5 s) bounds the wait for one reply, and
    ``retries`` (default :data:`DEFAULT_RETRIES`, 3) is how many times a request is sent again
    after a timeout, ``busy`` or ``unavailable``. With the defaults a call returns or raises
    within about 4 x 2.5 s = 10 s, plus at most 0.35 s of backoff after ``busy`` or
    ``unavailable`` replies.

    Every attempt carries the same rid. While the server remembers that rid, a credit or debit
    is applied at most once however many attempts reach it, and a resend of an applied change
    returns its first outcome with ``replay`` set. :class:`~zmqbalance.errors.TimedOut` means
    no reply arrived: the change may or may not have been applied. Calling again with the rid
    from the exception is safe while the server still remembers that rid (its ``rid_window``).
    """

    def __init__(
        self,
        endpoint: str = DEFAULT_ENDPOINT,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
        context: zmq.Context[zmq.Socket[bytes]] | None = None,
    ) -> None:
        if not 0 < timeout < math.inf:
            raise ValueError(f"timeout must be a positive, finite number of seconds, got {timeout}")
        if retries < 0:
            raise ValueError(f"retries must be zero or more, got {retries}")
        self.endpoint = endpoint
        self.timeout = timeout
        self.retries = retries
        self.context = context or zmq.Context.instance()
        self.late_replies = 0
        self._workers: int | None = None  # cached by batch_by_partition
        self._socket: zmq.Socket[bytes] | None = None

    def __repr__(self) -> str:
        return f"<Client {self.endpoint} timeout={self.timeout} retries={self.retries}>"

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close(linger=0)
            self._socket = None

    def plus_funds(self, account: str | int, amount: Amount, rid: Rid | None = None) -> Balance:
        """Credit ``amount`` to ``account`` and return the new balance."""
        return self._change(PLUS_FUNDS, account, amount, rid)

    def sub_funds(self, account: str | int, amount: Amount, rid: Rid | None = None) -> Balance:
        """Debit ``amount`` from ``account``; raises InsufficientFunds if it would go below zero."""
        return self._change(SUB_FUNDS, account, amount, rid)

    def balance(self, account: str | int) -> Balance:
        """Return the balance and change count of ``account``."""
        reply = self.request({"op": BALANCE, "account": account})
        return balance_from(reply)

    def ping(self) -> ServerInfo:
        return server_info_from(self.request({"op": PING}))

    def batch(
        self, changes: Sequence[Change], *, detail: bool = False, partition: int | None = None
    ) -> BatchResult:
        """Send ``changes`` in one request; the server applies each change on its own, in order.

        A change is ``(op, account, amount)`` or ``(op, account, amount, rid)`` with op
        ``"plus_funds"`` or ``"sub_funds"``. A failed change does not stop the others: it is
        listed in ``BatchResult.failed``. A batch over the server's limit of changes is
        rejected whole, with TooLarge. ``partition=k`` promises that worker k owns every
        account (see :meth:`batch_by_partition`).

        After a timeout the batch is resent only when every change carries a rid, because the
        server recognises a repeated change by its rid alone. Without rids, a timeout raises
        TimedOut at once and the caller cannot know which changes were applied.
        """
        encoded, all_have_rids = encode_changes(changes)
        message: dict[str, Any] = {"op": BATCH, "changes": encoded}
        if detail:
            message["detail"] = True
        if partition is not None:
            message["partition"] = partition
        reply = self.request(message, resend_on_timeout=all_have_rids)
        return batch_result_from(reply)

    def batch_by_partition(self, changes: Sequence[Change], *, detail: bool = False) -> BatchResult:
        """Send ``changes`` as one partitioned batch per worker and merge the replies.

        The server's worker count comes from one ``ping``, cached until a change fails with
        ``wrong_partition`` (the server was restarted with another count). Indexes in the
        result refer to ``changes`` as passed. Changes of one account keep their order. A
        worker's share over the server's limit of changes goes as several requests.

        The requests go one after another. If one raises (TimedOut, say), the requests before
        it were applied. Give every change a rid, so that calling again with the same changes
        applies each of them once.
        """
        if self._workers is None:
            self._workers = self.ping().workers
        parts = []
        for owner, indexes in group_by_owner(changes, self._workers).items():
            for start in range(0, len(indexes), MAX_BATCH_CHANGES):
                chunk = indexes[start : start + MAX_BATCH_CHANGES]
                part = [changes[i] for i in chunk]
                parts.append((chunk, self.batch(part, detail=detail, partition=owner)))
        merged = merge_batch_results(parts, len(changes), detail)
        if any(code == WrongPartition.code for _, code, _ in merged.failed):
            self._workers = None
        return merged

    def _change(self, op: str, account: str | int, amount: Amount, rid: Rid | None) -> Balance:
        message = {"op": op, "account": account, "amount": encode_amount(amount)}
        reply = self.request(message, rid=rid)
        return balance_from(reply)

    def request(
        self, message: dict[str, Any], *, rid: Rid | None = None, resend_on_timeout: bool = True
    ) -> dict[str, Any]:
        """Send one request map and return the successful reply map, or raise its error.

        A rid is generated when neither ``rid`` nor ``message["rid"]`` gives one. ``busy`` and
        ``unavailable`` are retried with the same rid, and so are timeouts unless
        ``resend_on_timeout`` is false: then the first timeout raises TimedOut.
        """
        if rid is None:
            rid = message.get("rid")
        if rid is None:
            rid = new_rid()
        frame = pack({**message, "rid": rid})
        attempts = Attempts(
            self.endpoint,
            self.timeout,
            self.retries,
            message,
            rid,
            resend_on_timeout=resend_on_timeout,
        )
        for attempt in attempts:
            reply = self._attempt(frame, rid)
            if reply is None:
                attempts.timed_out(attempt)
                continue
            delay = attempts.delay_before_resend(reply, attempt)
            if delay is None:
                return reply
            time.sleep(delay)
        raise attempts.exhausted()

    def _attempt(self, frame: bytes, rid: Rid) -> dict[str, Any] | None:
        """Send ``frame`` once and wait for the reply carrying ``rid``; None on timeout."""
        socket = self._connected_socket()
        socket.send(frame)
        deadline = time.monotonic() + self.timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not socket.poll(int(remaining * 1000) + 1, zmq.POLLIN):
                self.close()  # a REQ socket that lost its reply cannot send again
                return None
            reply = decode_reply(socket.recv())
            if reply.get("rid", rid) == rid:
                # A reply without a rid belongs to this request too: the server leaves the rid out
                # only when it could not read it, as with invalid_rid or bad_request.
                return reply
            # Only possible with a reused socket: a reply to an earlier, abandoned request.
            self.late_replies += 1
            log.info("discarded a late reply for rid %s", format_rid(reply.get("rid")))
            self.close()
            socket = self._connected_socket()
            socket.send(frame)

    def _connected_socket(self) -> zmq.Socket[bytes]:
        if self._socket is None:
            socket = self.context.socket(zmq.REQ)
            socket.setsockopt(zmq.LINGER, 0)
            socket.connect(self.endpoint)
            self._socket = socket
        return self._socket
