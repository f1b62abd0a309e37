"""Snapshots of a worker's ledger: written aside, fsynced, renamed into place.

A snapshot holds every account and every remembered rid of one worker, as of the last change of
a journal group. Recovery loads the newest snapshot and replays only the journal after it, so
snapshots bound recovery time. The write is crash-safe: the snapshot goes to a ``.tmp`` file,
is fsynced, renamed, and the directory fsynced; only then may older segments be removed. A
crash at any moment leaves either the old snapshot with all its segments, or the new one.

File ``snapshot-<last seq, 20 digits>.snap``, byte by byte (integers little-endian)::

    offset 0   8 bytes  magic b"ZMQBSNP1"
    offset 8   u64      sequence number of the last change the snapshot includes (0: none)
    offset 16  u64      body length in bytes (n)
    offset 24  u32      CRC-32 (zlib.crc32) of the body
    offset 28  n        body: msgpack map with "scale", "accounts" and "rids"

``accounts`` is an array of ``[account, balance units, count]``; ``rids`` is an array of
``[rid, op, account, units, ok, balance, count, error, message]``, oldest first.
"""

from __future__ import annotations

import logging
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack

from zmqbalance import testhooks
from zmqbalance.errors import JournalCorrupt
from zmqbalance.journal import fsync_directory
from zmqbalance.ledger import Account, Ledger, Outcome

log = logging.getLogger(__name__)

SNAPSHOT_MAGIC = b"ZMQBSNP1"
SNAPSHOT_HEADER = struct.Struct("<8sQQI")
assert SNAPSHOT_HEADER.size == 28
SNAPSHOT_PREFIX = "snapshot-"
SNAPSHOT_SUFFIX = ".snap"
TMP_SUFFIX = ".tmp"


@dataclass
class SnapshotInfo:
    path: Path
    last_seq: int
    accounts: int
    rids: int


def snapshot_name(last_seq: int) -> str:
    return f"{SNAPSHOT_PREFIX}{last_seq:020d}{SNAPSHOT_SUFFIX}"


def list_snapshots(directory: Path) -> list[tuple[int, Path]]:
    """Return the directory's finished snapshots as (last seq, path), oldest first."""
    snapshots = []
    for path in directory.glob(f"{SNAPSHOT_PREFIX}*{SNAPSHOT_SUFFIX}"):
        digits = path.name[len(SNAPSHOT_PREFIX) : -len(SNAPSHOT_SUFFIX)]
        if digits.isdigit():
            snapshots.append((int(digits), path))
    return sorted(snapshots)


def encode_ledger(ledger: Ledger) -> bytes:
    accounts = [[name, state.balance, state.count] for name, state in ledger.accounts.items()]
    rids = [
        [
            rid,
            kept.op,
            kept.account,
            kept.units,
            kept.outcome.ok,
            kept.outcome.balance,
            kept.outcome.count,
            kept.outcome.error,
            kept.outcome.message,
        ]
        for rid, kept in ledger.rids.items()
    ]
    body: bytes = msgpack.packb({"scale": ledger.scale, "accounts": accounts, "rids": rids})
    return body


def write_snapshot(directory: Path, last_seq: int, ledger: Ledger) -> Path:
    """Write a snapshot of ``ledger`` crash-safely and return its path."""
    body = encode_ledger(ledger)
    header = SNAPSHOT_HEADER.pack(SNAPSHOT_MAGIC, last_seq, len(body), zlib.crc32(body))
    final = directory / snapshot_name(last_seq)
    temporary = final.with_name(final.name + TMP_SUFFIX)

    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        half = len(body) // 2
        os.write(fd, header)
        _write_all(fd, body[:half])
        testhooks.crash_point("during_snapshot")
        _write_all(fd, body[half:])
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(temporary, final)
    fsync_directory(directory)
    return final


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def read_snapshot(path: Path, ledger: Ledger) -> SnapshotInfo:
    """Load a snapshot into an empty ledger; raise JournalCorrupt if it fails its checks."""
    data = path.read_bytes()
    if len(data) < SNAPSHOT_HEADER.size:
        raise JournalCorrupt("snapshot header is cut short", path=str(path), offset=0)
    magic, last_seq, length, checksum = SNAPSHOT_HEADER.unpack_from(data)
    body = data[SNAPSHOT_HEADER.size :]
    if magic != SNAPSHOT_MAGIC:
        raise JournalCorrupt(
            "snapshot does not start with the snapshot magic", path=str(path), offset=0
        )
    if len(body) != length or zlib.crc32(body) != checksum:
        raise JournalCorrupt(
            "snapshot body length or checksum does not match",
            path=str(path),
            offset=SNAPSHOT_HEADER.size,
        )
    content: dict[str, Any] = msgpack.unpackb(body, raw=False)
    if content["scale"] != ledger.scale:
        raise JournalCorrupt(
            f"snapshot has scale {content['scale']}, the server {ledger.scale}",
            path=str(path),
            offset=SNAPSHOT_HEADER.size,
        )
    for name, balance, count in content["accounts"]:
        ledger.accounts[name] = Account(balance, count)
    for rid, op, account, units, ok, balance, count, error, message in content["rids"]:
        outcome = Outcome(ok, account, balance, count, error, message)
        ledger.remember(rid, op, account, units, outcome)
    return SnapshotInfo(path, last_seq, len(content["accounts"]), len(content["rids"]))
