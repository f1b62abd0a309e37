"""The ``batch`` op: many changes in one request, each applied on its own.

The broker splits a batch by owner. A batch that the client built for one partition goes whole
to that worker. Each worker applies its part in request order with the rest of its group and
one fsync, and the broker gathers the parts into one reply. A change that fails
(a bad amount, insufficient funds) fails alone; every other change is applied.

A change on the wire is ``[op, account, amount]`` or ``[op, account, amount, rid]``. The reply
is compact: ``applied`` (how many changes were applied now), ``failed`` (``[index, code,
message]`` for each failed change, by index), ``replayed`` (indexes whose rid had already been
applied, so their first outcome stands); with ``detail`` also ``results``, one entry per change
in request order: ``[true, balance, count]`` or ``[false, code, message]``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from zmqbalance.errors import BadRequest, InvalidRid, RequestError, UnknownOp
from zmqbalance.ledger import CHANGE_OPS, Rid
from zmqbalance.money import parse_amount
from zmqbalance.protocol import MAX_RID_BYTES, pack, read_account

# One change after it is checked: op, account, minor units, rid.
Change = tuple[str, str, int, "Rid | None"]
# A worker's share of a batch: the gather id, how many changes, the (index, unchecked change)
# pairs, the detail flag, and the request frame itself. The broker passes a batch that the
# client built for one partition as its frame (pairs None), so that it is not re-encoded; the
# worker then decodes it and checks that it owns each account.
Part = tuple[int, int, "list[tuple[int, Any]] | None", bool, "bytes | None"]


@dataclass
class PartResult:
    """A worker's results for its part of a batch."""

    applied: int = 0
    failed: list[tuple[int, str, str]] = field(default_factory=list)
    replayed: list[int] = field(default_factory=list)
    results: list[tuple[int, list[Any]]] = field(default_factory=list)

    def to_wire(self) -> list[Any]:
        return [self.applied, self.failed, self.replayed, self.results]


def parse_change(change: Any, scale: int) -> Change:
    """Check one batch change and return it with its amount in minor units."""
    if type(change) is not list or not 3 <= len(change) <= 4:
        _check_shape(change)
    op = change[0]
    if op not in CHANGE_OPS:
        raise UnknownOp(f"unknown op {op!r:.40} in a batch; expected plus_funds or sub_funds")
    account = read_account(change[1])
    units = parse_amount(change[2], scale)
    rid = change[3] if len(change) == 4 else None
    if rid is not None:
        if not isinstance(rid, (str, bytes)):
            raise InvalidRid(f"rid must be a string or bytes, got {type(rid).__name__}")
        size = len(rid) if isinstance(rid, bytes) else len(rid.encode("utf-8", "surrogatepass"))
        if not 0 < size <= MAX_RID_BYTES:
            raise InvalidRid(f"rid must be 1 to {MAX_RID_BYTES} bytes long, got {size} bytes")
    return op, account, units, rid


def account_of(change: Any) -> str:
    """Return the account of an unchecked change, for routing; raise RequestError if bad."""
    _check_shape(change)
    return read_account(change[1])


def _check_shape(change: Any) -> None:
    if not isinstance(change, list) or len(change) not in (3, 4):
        raise BadRequest(
            "a change must be [op, account, amount] or [op, account, amount, rid], "
            f"got {change!r:.60}"
        )


@dataclass
class Gather:
    """A batch waiting for its parts, kept by the broker until every worker has replied."""

    envelope: list[bytes]
    rid: Rid | None
    size: int
    detail: bool
    pending: int = 0  # parts with no reply yet
    sizes: dict[int, int] = field(default_factory=dict)  # changes sent to each worker
    applied: int = 0
    failed: list[Any] = field(default_factory=list)
    replayed: list[int] = field(default_factory=list)
    results: list[Any] = field(default_factory=list)

    def fail(self, index: int, exc: RequestError) -> None:
        self.failed.append([index, exc.code, exc.message])
        if self.detail:
            self.results.append((index, [False, exc.code, exc.message]))

    def add(self, part: list[Any]) -> None:
        applied, failed, replayed, results = part
        self.applied += applied
        self.failed.extend(failed)
        self.replayed.extend(replayed)
        self.results.extend(results)
        self.pending -= 1

    def reply(self) -> bytes:
        reply: dict[str, Any] = {
            "ok": True,
            "applied": self.applied,
            "failed": sorted(self.failed),
            "replayed": sorted(self.replayed),
        }
        if self.detail:
            reply["results"] = [entry for _, entry in sorted(self.results, key=_index)]
        if self.rid is not None:
            reply["rid"] = self.rid
        return pack(reply)


def _index(item: tuple[int, Any]) -> int:
    return item[0]
