"""What the blocking and the asyncio client share: request encoding and typed replies.

Neither client has sockets in here. A request map goes out through :func:`encode_amount` and
:func:`encode_changes`; a reply frame comes back through :func:`decode_reply` and becomes a
:class:`Balance`, a :class:`ServerInfo`, a :class:`BatchResult`, or the exception that
:data:`~zmqbalance.errors.ERROR_CLASSES` maps its error code to.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import msgpack

from zmqbalance.errors import (
    ERROR_CLASSES,
    InternalError,
    InvalidAmount,
    ProtocolViolation,
    ServerError,
)
from zmqbalance.ledger import Rid
from zmqbalance.partition import owner_of

Amount = int | str | Decimal | float
Account = str | int
# One change of a batch: (op, account, amount) or (op, account, amount, rid).
Change = tuple[str, Account, Amount] | tuple[str, Account, Amount, Rid]

RID_BYTES = 16  # length of a generated request id


@dataclass(frozen=True)
class Balance:
    """An account's balance and change count, as one reply reported them."""

    account: str
    balance: Decimal
    balance_text: str
    count: int
    rid: Rid | None = None
    replay: bool = False

    def __str__(self) -> str:
        return f"{self.balance_text} {self.count}"


@dataclass(frozen=True)
class ServerInfo:
    """The server's ``ping`` reply: the partition function and worker count clients route by."""

    workers: int
    scale: int
    partition: str


@dataclass(frozen=True)
class ChangeResult:
    """The outcome of one change of a batch, from a reply sent with ``"detail": true``."""

    ok: bool
    balance_text: str | None = None  # after the change, when ok
    count: int | None = None  # changes applied to the account so far, when ok
    error: str | None = None  # wire error code, when not ok
    message: str | None = None

    @property
    def balance(self) -> Decimal | None:
        return None if self.balance_text is None else Decimal(self.balance_text)


@dataclass(frozen=True)
class BatchResult:
    """The reply to a batch.

    ``failed`` lists (index, error code, message) of the changes that failed, indexes into the
    changes as the caller passed them. ``replayed`` lists the indexes whose rid the server had
    already applied; their first outcome is the result, and a replayed failure is in ``failed`` too.
    ``results`` has one entry per change when the batch was sent with ``detail=True``.
    """

    applied: int
    failed: list[tuple[int, str, str]]
    replayed: list[int]
    results: list[ChangeResult] | None = None

    @property
    def ok(self) -> bool:
        """True when no change failed."""
        return not self.failed


def new_rid() -> bytes:
    """Return a fresh random 16-byte request id."""
    return os.urandom(RID_BYTES)


def encode_amount(amount: Amount) -> int | str | float:
    """Turn a caller's amount into its wire form, keeping Decimal exact as a plain string."""
    if isinstance(amount, bool):
        raise InvalidAmount(f"amount must be a number, got the boolean {amount!r}")
    if isinstance(amount, Decimal):
        if not amount.is_finite():
            raise InvalidAmount(f"amount must be a finite number, got {amount}")
        return format(amount, "f")
    if isinstance(amount, (int, str, float)):
        return amount
    raise InvalidAmount(f"amount must be int, str, Decimal or float, got {type(amount).__name__}")


def encode_changes(changes: Iterable[Sequence[Any]]) -> tuple[list[Sequence[Any]], bool]:
    """Return the wire form of batch changes and whether every change carries a rid.

    Raises ValueError for a change that is not a 3- or 4-tuple and InvalidAmount for an amount
    of the wrong type. Ops, accounts and rids are checked by the server, change by change.
    """
    encoded: list[Sequence[Any]] = []
    all_have_rids = True
    for index, change in enumerate(changes):
        size = len(change)
        if size == 3 or (size == 4 and change[3] is None):
            all_have_rids = False
            if type(change[2]) is int and size == 3:
                encoded.append(change)  # msgpack sends a tuple as an array, unchanged
            else:
                encoded.append((change[0], change[1], encode_amount(change[2])))
        elif size == 4:
            encoded.append((change[0], change[1], encode_amount(change[2]), change[3]))
        else:
            raise ValueError(
                f"change {index} must be (op, account, amount) or (op, account, amount, rid),"
                f" got {change!r:.80}"
            )
    return encoded, all_have_rids


def account_text(account: object) -> str:
    """Return the account id the server uses for ``account`` (an int means its decimal string)."""
    if isinstance(account, int) and not isinstance(account, bool):
        return str(account)
    return account if isinstance(account, str) else repr(account)


def group_by_owner(changes: Sequence[Sequence[Any]], workers: int) -> dict[int, list[int]]:
    """Return the indexes of ``changes`` grouped by the worker that owns each change's account.

    Within a group the indexes stay in ascending order, so changes of one account keep theirs.
    """
    groups: dict[int, list[int]] = {}
    for index, change in enumerate(changes):
        account = change[1] if len(change) >= 2 else ""
        if type(account) is not str:
            account = account_text(account)
        owner = owner_of(account, workers)
        group = groups.get(owner)
        if group is None:
            group = groups[owner] = []
        group.append(index)
    return groups


def merge_batch_results(
    parts: Sequence[tuple[Sequence[int], BatchResult]], size: int, detail: bool
) -> BatchResult:
    """Merge the results of sub-batches back into one, indexed as the original ``size`` changes.

    Each part pairs the original indexes of a sub-batch's changes with that sub-batch's result.
    """
    applied = 0
    failed: list[tuple[int, str, str]] = []
    replayed: list[int] = []
    results: list[ChangeResult | None] = [None] * size
    for indexes, part in parts:
        applied += part.applied
        failed += [(indexes[i], code, text) for i, code, text in part.failed]
        replayed += [indexes[i] for i in part.replayed]
        for i, outcome in enumerate(part.results or ()):
            results[indexes[i]] = outcome
    failed.sort()
    replayed.sort()
    merged = None
    if detail:
        if any(outcome is None for outcome in results):
            raise ProtocolViolation("a batch reply sent with detail has no result for a change")
        merged = [outcome for outcome in results if outcome is not None]
    return BatchResult(applied, failed, replayed, merged)


def decode_reply(frame: bytes) -> dict[str, Any]:
    """Decode one reply frame, raising ProtocolViolation for anything but a reply map."""
    try:
        reply = msgpack.unpackb(frame, raw=False)
    except (ValueError, msgpack.UnpackException) as exc:
        raise ProtocolViolation(f"reply is not valid msgpack: {exc}") from exc
    if not isinstance(reply, dict) or not isinstance(reply.get("ok"), bool):
        raise ProtocolViolation(f"reply is not a reply map: {reply!r:.80}")
    return reply


def exception_from(reply: dict[str, Any], message: dict[str, Any], rid: Rid) -> Exception:
    """Return the exception for a failure reply to ``message``."""
    code = reply.get("error")
    cls = ERROR_CLASSES.get(code, InternalError) if isinstance(code, str) else ServerError
    account = message.get("account")
    return cls(
        str(reply.get("message") or code),
        op=message.get("op"),
        account=None if account is None else str(account),
        rid=rid,
    )


def balance_from(reply: dict[str, Any]) -> Balance:
    try:
        text = reply["balance"]
        return Balance(
            account=reply["account"],
            balance=Decimal(text),
            balance_text=text,
            count=reply["count"],
            rid=reply.get("rid"),
            replay=bool(reply.get("replay", False)),
        )
    except (KeyError, TypeError, ArithmeticError) as exc:
        raise ProtocolViolation(f"reply lacks a valid balance: {reply!r:.80}") from exc


def server_info_from(reply: dict[str, Any]) -> ServerInfo:
    try:
        return ServerInfo(reply["workers"], reply["scale"], reply["partition"])
    except KeyError as exc:
        raise ProtocolViolation(f"ping reply lacks {exc}: {reply!r:.80}") from exc


def batch_result_from(reply: dict[str, Any]) -> BatchResult:
    try:
        failed = [(int(i), str(code), str(text)) for i, code, text in reply.get("failed", [])]
        results = None
        if "results" in reply:
            results = [_change_result(entry) for entry in reply["results"]]
        return BatchResult(
            applied=int(reply["applied"]),
            failed=failed,
            replayed=[int(i) for i in reply.get("replayed", [])],
            results=results,
        )
    except (KeyError, TypeError, ValueError, ArithmeticError) as exc:
        raise ProtocolViolation(f"reply is not a valid batch reply: {reply!r:.120}") from exc


def _change_result(entry: Sequence[Any]) -> ChangeResult:
    ok, first, second = entry
    if ok is True:
        Decimal(first)  # a balance the caller cannot parse is a protocol violation here
        return ChangeResult(True, balance_text=first, count=int(second))
    return ChangeResult(False, error=str(first), message=str(second))
