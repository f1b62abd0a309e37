"""The wire format: msgpack request maps in, msgpack reply maps out.

A request is one msgpack map with string keys ``op``, ``account``, ``amount`` and ``rid``.
:func:`decode_request` turns a frame into a validated :class:`Request` or raises a
:class:`~zmqbalance.errors.RequestError` that names the bad value; nothing past this module sees
an unchecked value. Untrusted input is unpacked with msgpack's own limits, so no declared length
makes the unpacker allocate more than the frame holds.
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

import msgpack

from zmqbalance.errors import (
    BadRequest,
    InvalidAccount,
    InvalidAmount,
    InvalidRid,
    RequestError,
    TooLarge,
    UnknownOp,
    ZmqBalanceError,
)
from zmqbalance.ledger import BALANCE, PLUS_FUNDS, SUB_FUNDS, Outcome, Rid
from zmqbalance.money import format_units, parse_amount

PING = "ping"
DEBUG_SLEEP = "debug_sleep"  # test hook: keeps the owning worker busy; off unless enabled
BATCH = "batch"
OPS = (PLUS_FUNDS, SUB_FUNDS, BALANCE, PING, BATCH)

# One request frame: a full batch of 10,000 changes with 128-byte accounts and 64-byte rids
# takes about 2.2 MB.
MAX_FRAME_BYTES = 4 << 20
MAX_BATCH_CHANGES = 10_000
MIN_FRAME_BYTES = 1024  # a request with the longest account, rid and amount fits in about 300
MAX_ACCOUNT_BYTES = 128
MAX_RID_BYTES = 64
MAX_DEBUG_SLEEP = 10.0  # seconds
MAX_HOLD_REPLY = 10.0  # seconds
_CONTROL_CHARACTER = re.compile("[\x00-\x1f\x7f-\x9f]")
MAX_NESTING = 1024  # levels; msgpack's C unpacker raises StackError past its fixed stack

# The keys each op takes. A key that the op does not use is rejected rather than ignored, so a
# misspelt or misplaced field never passes unnoticed.
OP_KEYS: dict[str, frozenset[str]] = {
    PING: frozenset({"op", "rid"}),
    BALANCE: frozenset({"op", "account", "rid"}),
    PLUS_FUNDS: frozenset({"op", "account", "amount", "rid"}),
    SUB_FUNDS: frozenset({"op", "account", "amount", "rid"}),
    BATCH: frozenset({"op", "changes", "detail", "partition", "rid"}),
}
REQUEST_KEYS = frozenset().union(*OP_KEYS.values())
# Accepted only when the server runs with test hooks (ZMQBALANCE_TEST_HOOKS=1).
DEBUG_OP_KEYS = {DEBUG_SLEEP: frozenset({"op", "account", "seconds", "rid"})}
HOLD_REPLY = "hold_reply"  # delay the reply by this many seconds; the change applies at once
TEST_HOOK_KEYS = frozenset({"seconds", HOLD_REPLY})


class Request(NamedTuple):
    """A validated request: amounts are minor units, accounts are strings."""

    op: str
    account: str
    units: int = 0
    rid: Rid | None = None
    seconds: float = 0.0
    changes: list[Any] | None = None  # batch only: the changes, each still unchecked
    detail: bool = False  # batch only: reply with every change's outcome
    partition: int | None = None  # batch only: the worker the client says owns every change
    hold_reply: float = 0.0


def pack(value: object) -> bytes:
    """Encode a value as msgpack, keeping bytes and str apart."""
    data: bytes = msgpack.packb(value)
    return data


def unpack_frame(frame: bytes) -> Any:
    """Unpack one untrusted msgpack frame, raising BadRequest for anything malformed.

    Every declared length is bounded by the frame's own size, so a header that claims 4 GB
    fails at once instead of making the unpacker allocate it.
    """
    size = len(frame)
    try:
        return msgpack.unpackb(
            frame,
            raw=False,
            strict_map_key=False,
            ext_hook=_reject_ext,
            object_pairs_hook=_unique_keys,
            max_str_len=size,
            max_bin_len=size,
            max_array_len=size,
            max_map_len=size // 2,
            max_ext_len=size,
        )
    except BadRequest:
        raise
    except msgpack.ExtraData as exc:
        raise BadRequest(
            f"request has {len(exc.extra)} extra bytes after its msgpack value; "
            "send one value per frame"
        ) from None
    except msgpack.StackError:
        raise BadRequest(f"request is nested more than {MAX_NESTING} levels deep") from None
    except msgpack.FormatError:
        raise BadRequest(
            "request is not valid msgpack: it contains a byte that is no msgpack type "
            f"(frame starts {_head(frame)})"
        ) from None
    except UnicodeDecodeError as exc:
        raise BadRequest(
            f"request contains a string that is not valid UTF-8: {exc.reason}"
        ) from None
    except TypeError as exc:
        # strict_map_key=False lets any hashable key through; a list or map key lands here.
        raise BadRequest(f"request keys must be strings: {exc}") from None
    except ValueError as exc:
        # Truncated input and lengths over the limits above.
        raise BadRequest(
            f"request is not a complete msgpack value ({exc}); frame of {size} bytes "
            f"starts {_head(frame)}"
        ) from None
    except RecursionError:
        raise BadRequest("request is nested too deeply") from None


def _head(frame: bytes) -> str:
    """Return the first bytes of a frame in hex, for error messages."""
    return frame[:16].hex(" ") or "empty"


def _unique_keys(pairs: list[tuple[Any, Any]]) -> dict[Any, Any]:
    """Build a map, rejecting a key that appears twice instead of keeping the last value."""
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[Any] = set()
        for key, _ in pairs:
            if key in seen:
                raise BadRequest(f"request map has the key {key!r:.40} more than once")
            seen.add(key)
    return result


def _reject_ext(code: int, data: bytes) -> Any:
    raise BadRequest(f"msgpack extension type {code} is not accepted")


def decode_request(frame: bytes, scale: int, *, debug_ops: bool = False) -> Request:
    """Decode and validate one request frame."""
    message = unpack_frame(frame)
    if not isinstance(message, dict):
        raise BadRequest(f"request must be a msgpack map, got {type(message).__name__}")
    rid = _read_rid(message)

    try:
        return _validate(message, rid, scale, debug_ops)
    except ZmqBalanceError as exc:
        exc.rid = rid
        raise


def _validate(message: dict[Any, Any], rid: Rid | None, scale: int, debug_ops: bool) -> Request:
    op = message.get("op")
    if op is None:
        _check_keys(message, debug_ops)
        raise BadRequest("request has no op")
    if not isinstance(op, str):
        raise BadRequest(f"op must be a string, got {type(op).__name__}")
    allowed = OP_KEYS.get(op) or (DEBUG_OP_KEYS.get(op) if debug_ops else None)
    if allowed is None:
        raise UnknownOp(f"unknown op {op!r:.40}; expected one of {', '.join(OPS)}", rid=rid)

    _check_keys(message, debug_ops)
    for key in message:
        if key not in allowed and key != HOLD_REPLY:
            raise BadRequest(f"key {key!r} does not apply to op {op!r}")
    hold_reply = _read_seconds(HOLD_REPLY, message.get(HOLD_REPLY, 0), MAX_HOLD_REPLY)

    if op == PING:
        return Request(PING, "", rid=rid, hold_reply=hold_reply)
    if op == BATCH:
        return _validate_batch(message, rid)
    account = read_account(message.get("account"))
    if op == BALANCE:
        return Request(op, account, rid=rid, hold_reply=hold_reply)
    if op == DEBUG_SLEEP:
        seconds = _read_seconds("seconds", message.get("seconds"), MAX_DEBUG_SLEEP)
        return Request(op, account, rid=rid, seconds=seconds, hold_reply=hold_reply)
    try:
        units = parse_amount(message.get("amount"), scale)
    except InvalidAmount as exc:
        exc.op, exc.account = op, account
        raise
    return Request(op, account, units, rid, hold_reply=hold_reply)


def _check_keys(message: dict[Any, Any], debug_ops: bool) -> None:
    for key in message:
        if not isinstance(key, str):
            raise BadRequest(f"request keys must be strings, got {type(key).__name__} {key!r:.40}")
        if key not in REQUEST_KEYS and not (debug_ops and key in TEST_HOOK_KEYS):
            raise BadRequest(
                f"unknown request key {key!r:.40}; expected {', '.join(sorted(REQUEST_KEYS))}"
            )


def _validate_batch(message: dict[Any, Any], rid: Rid | None) -> Request:
    """Check a batch's own fields; each change is checked by the worker that applies it."""
    changes = message.get("changes")
    if not isinstance(changes, list):
        raise BadRequest(f"batch changes must be an array, got {type(changes).__name__}")
    if len(changes) > MAX_BATCH_CHANGES:
        raise TooLarge(
            f"batch has {len(changes)} changes, over the limit of {MAX_BATCH_CHANGES}; "
            "nothing was applied"
        )
    detail = message.get("detail", False)
    if not isinstance(detail, bool):
        raise BadRequest(f"detail must be true or false, got {detail!r:.40}")
    partition = message.get("partition")
    if partition is not None and (isinstance(partition, bool) or not isinstance(partition, int)):
        raise BadRequest(f"partition must be a worker index, got {partition!r:.40}")
    return Request(BATCH, "", rid=rid, changes=changes, detail=detail, partition=partition)


def read_account(value: object) -> str:
    """Return the account id as a string, or raise InvalidAccount naming the value."""
    if isinstance(value, bool):
        raise InvalidAccount(f"account must be a string or an integer, got {value!r}")
    if isinstance(value, int):
        return str(value)
    if value is None:
        raise InvalidAccount("account is missing")
    if not isinstance(value, str):
        raise InvalidAccount(f"account must be a string or an integer, got {type(value).__name__}")
    if value.isascii() and value.isprintable():  # the common case, checked in C
        size = len(value)
    else:
        size = len(value.encode("utf-8", "surrogatepass"))
        control = _CONTROL_CHARACTER.search(value)
        if control:
            raise InvalidAccount(
                f"account {value!r} contains the control character {control.group()!r}"
            )
    if size == 0:
        raise InvalidAccount("account is empty")
    if size > MAX_ACCOUNT_BYTES:
        raise InvalidAccount(
            f"account {value[:20]!r}... is {size} bytes long, over the limit of {MAX_ACCOUNT_BYTES}"
        )
    return value


def _read_rid(message: dict[Any, Any]) -> Rid | None:
    rid = message.get("rid")
    if rid is None:
        return None
    if not isinstance(rid, (str, bytes)):
        raise InvalidRid(f"rid must be a string or bytes, got {type(rid).__name__}")
    size = len(rid) if isinstance(rid, bytes) else len(rid.encode("utf-8", "surrogatepass"))
    if size == 0 or size > MAX_RID_BYTES:
        raise InvalidRid(f"rid must be 1 to {MAX_RID_BYTES} bytes long, got {size} bytes")
    return rid


def _read_seconds(key: str, value: object, maximum: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadRequest(f"{key} must be a number of seconds, got {value!r:.40}")
    if not 0 <= value <= maximum:
        raise BadRequest(f"{key} must be between 0 and {maximum} seconds, got {value!r}")
    return float(value)


def encode_outcome(outcome: Outcome, scale: int, rid: Rid | None) -> bytes:
    """Encode an outcome as a success or failure reply."""
    if not outcome.ok:
        code, message = outcome.error or "internal_error", outcome.message or ""
        return encode_error(code, message, rid, replay=outcome.replay)
    reply: dict[str, Any] = {
        "ok": True,
        "account": outcome.account,
        "balance": format_units(outcome.balance, scale),
        "count": outcome.count,
    }
    if rid is not None:
        reply["rid"] = rid
    if outcome.replay:
        reply["replay"] = True
    return pack(reply)


def encode_error(code: str, message: str, rid: Rid | None = None, *, replay: bool = False) -> bytes:
    reply: dict[str, Any] = {"ok": False, "error": code, "message": message}
    if rid is not None:
        reply["rid"] = rid
    if replay:
        reply["replay"] = True
    return pack(reply)


def encode_exception(exc: ZmqBalanceError) -> bytes:
    rid = exc.rid if isinstance(exc.rid, (str, bytes)) else None
    return encode_error(exc.code, exc.message, rid)


def encode_ping(workers: int, scale: int, partition: str, rid: Rid | None) -> bytes:
    reply: dict[str, Any] = {
        "ok": True,
        "pong": True,
        "workers": workers,
        "scale": scale,
        "partition": partition,
    }
    if rid is not None:
        reply["rid"] = rid
    return pack(reply)


def peek_rid(frame: bytes) -> Rid | None:
    """Return the valid rid of a request frame, or None, without validating anything else."""
    try:
        message = unpack_frame(frame)
        return _read_rid(message) if isinstance(message, dict) else None
    except RequestError:
        return None
