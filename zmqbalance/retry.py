"""The retry rules that the blocking and the asyncio client share for one request.

A request is sent at most ``retries + 1`` times, always with the same rid. A timeout is followed
by a resend (unless the caller forbade it, for a batch without rids); ``busy`` and
``unavailable`` are followed by a resend after a back-off that doubles each time; any other
failure reply is raised at once. The clients do the sending and the waiting; this module only
decides.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

from zmqbalance.errors import TimedOut, format_rid
from zmqbalance.ledger import Rid
from zmqbalance.replies import exception_from

log = logging.getLogger("zmqbalance.client")

RETRYABLE_ERRORS = frozenset({"busy", "unavailable"})
RETRY_BACKOFF = 0.05  # seconds before resending after busy or unavailable, doubled each time


class Attempts:
    """The decisions for one request: resend, wait and resend, return, or raise."""

    def __init__(
        self,
        endpoint: str,
        timeout: float,
        retries: int,
        message: dict[str, Any],
        rid: Rid,
        *,
        resend_on_timeout: bool = True,
        warn: Callable[..., None] = log.warning,
    ) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self.retries = retries
        self.message = message
        self.rid = rid
        self.resend_on_timeout = resend_on_timeout
        self.backoff = RETRY_BACKOFF
        self.warn = warn  # how timeouts are logged; the asyncio client rate-limits them

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.retries + 1))

    def timed_out(self, attempt: int) -> None:
        """Log a timeout; raise TimedOut if the request must not be resent."""
        self.warn(
            "no reply from %s within %s s for rid %s (attempt %d of %d)",
            self.endpoint,
            self.timeout,
            format_rid(self.rid),
            attempt + 1,
            self.retries + 1,
        )
        if not self.resend_on_timeout:
            raise TimedOut(
                f"no reply from {self.endpoint} within {self.timeout} s; the request was"
                " not resent because it may have been applied",
                op=self.message.get("op"),
                rid=self.rid,
            )

    def delay_before_resend(self, reply: dict[str, Any], attempt: int) -> float | None:
        """Return None for a successful reply, the seconds to wait before a resend, or raise."""
        if reply.get("ok") is True:
            return None
        if reply.get("error") in RETRYABLE_ERRORS and attempt < self.retries:
            log.info(
                "server answered %s for rid %s; retrying", reply["error"], format_rid(self.rid)
            )
            delay = self.backoff
            self.backoff *= 2
            return delay
        raise exception_from(reply, self.message, self.rid)

    def exhausted(self) -> TimedOut:
        """Return the error for a request that got no usable reply in any attempt."""
        account = self.message.get("account")
        return TimedOut(
            f"no reply from {self.endpoint} after {self.retries + 1} attempts of {self.timeout} s",
            op=self.message.get("op"),
            account=None if account is None else str(account),
            rid=self.rid,
        )
