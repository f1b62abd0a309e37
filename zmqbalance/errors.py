"""The exception tree and the table of wire error codes.

Every failure a client can see has one wire code and one exception class. The server encodes
an exception as ``{"ok": false, "error": code, "message": ...}`` and the client raises the class
that :data:`ERROR_CLASSES` maps the code to, so both sides read one table.

The tree is split by who is at fault:

- :class:`RequestError`: the client sent something the server cannot take.
- :class:`RefusedError`: the request was valid, but a business rule rejected it.
- :class:`ServerError`: the server could not take the request now (busy, stopping, a bug).
- :class:`ClientError`: failures seen only by the client library (timed out).
- :class:`StorageError`: the data directory is damaged or does not match the options.
"""

from __future__ import annotations

from typing import Any


class ZmqBalanceError(Exception):
    """Root of every error zmqbalance raises on purpose."""

    code = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        op: str | None = None,
        account: str | None = None,
        rid: Any = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.op = op
        self.account = account
        self.rid = rid

    def __str__(self) -> str:
        context = []
        if self.op is not None:
            context.append(f"op={self.op}")
        if self.account is not None:
            context.append(f"account={self.account!r}")
        if self.rid is not None:
            context.append(f"rid={format_rid(self.rid)}")
        if not context:
            return self.message
        return f"{self.message} ({', '.join(context)})"


class RequestError(ZmqBalanceError):
    """The client sent a request the server cannot take; resending it unchanged fails again."""

    code = "bad_request"


class BadRequest(RequestError):
    code = "bad_request"


class UnknownOp(RequestError):
    code = "unknown_op"


class InvalidAccount(RequestError):
    code = "invalid_account"


class InvalidAmount(RequestError):
    code = "invalid_amount"


class InvalidRid(RequestError):
    code = "invalid_rid"


class RidConflict(RequestError):
    """A request id was reused with different content."""

    code = "rid_conflict"


class TooLarge(RequestError):
    code = "too_large"


class WrongPartition(RequestError):
    """A change in a partitioned batch names an account that another worker owns."""

    code = "wrong_partition"


class RefusedError(ZmqBalanceError):
    """A valid request that a business rule rejected; nothing changed."""

    code = "refused"


class InsufficientFunds(RefusedError):
    code = "insufficient_funds"


class LimitExceeded(RefusedError):
    """The change would take a balance past the documented bound."""

    code = "limit_exceeded"


class ServerError(ZmqBalanceError):
    """The server could not handle the request now; a retry with the same rid is safe."""

    code = "internal_error"


class Busy(ServerError):
    code = "busy"


class Unavailable(ServerError):
    code = "unavailable"


class InternalError(ServerError):
    code = "internal_error"


class ClientError(ZmqBalanceError):
    """A failure seen by the client library rather than reported by the server."""

    code = "client_error"


class TimedOut(ClientError):
    """No reply arrived within the timeout, after every retry."""

    code = "timed_out"


class ProtocolViolation(ClientError):
    """The server's reply was not a valid reply map."""

    code = "protocol_violation"


class StorageError(ZmqBalanceError):
    """The data directory is damaged or does not match the server's options."""

    code = "storage_error"


class JournalCorrupt(StorageError):
    """A record before the end of a journal failed its checks."""

    code = "journal_corrupt"

    def __init__(self, message: str, *, path: str, offset: int) -> None:
        super().__init__(f"{message} in {path} at offset {offset}")
        self.path = path
        self.offset = offset


class ConfigMismatch(StorageError):
    code = "config_mismatch"


def format_rid(rid: object) -> str:
    """Show a request id for people: bytes as hex, anything else as its repr."""
    return rid.hex() if isinstance(rid, bytes) else repr(rid)


# One table for both directions: the server writes ``exc.code``, the client raises the class.
WIRE_ERRORS: tuple[type[ZmqBalanceError], ...] = (
    BadRequest,
    UnknownOp,
    InvalidAccount,
    InvalidAmount,
    InvalidRid,
    RidConflict,
    TooLarge,
    WrongPartition,
    InsufficientFunds,
    LimitExceeded,
    Busy,
    Unavailable,
    InternalError,
)
ERROR_CLASSES: dict[str, type[ZmqBalanceError]] = {cls.code: cls for cls in WIRE_ERRORS}
