"""The per-worker journal: segment files of checksummed group records, appended and fsynced.

Rules of this module:

- It stores records and knows their format; it knows nothing of balances or business rules.
- A worker appends one *group record* per commit, holding every change decided in that group,
  and then calls :meth:`FileJournal.sync`. Only after ``sync`` returns may the worker reply, so a
  record is acknowledged only once it is on disk (``fsync="always"``) or at least handed to the
  operating system (``fsync="off"``).
- Segments are only ever appended to. Recovery may cut a torn last group off the newest segment;
  nothing else is ever rewritten.

Segment file ``journal-<first seq, 20 digits>.log``, byte by byte::

    offset 0   8 bytes  magic b"ZMQBJRN1"
    offset 8   group records, back to back, until the end of the file

Group record, byte by byte (all integers little-endian)::

    offset 0   u32  payload length in bytes (n), at most MAX_GROUP_BYTES
    offset 4   u64  sequence number of the group's first change; the k-th change has seq + k
    offset 12  u32  CRC-32 (zlib.crc32) of bytes 0 .. 12, the length and the sequence number
    offset 16  u32  CRC-32 of the payload
    offset 20  n    payload: a msgpack array of changes

The header has its own checksum so that a damaged length is told apart from a write that was
cut short: an interrupted write leaves a prefix of the right bytes, never a wrong length.

Each change in the payload is a msgpack array ``[op, account, units]`` for an applied change
without a request id, or ``[op, account, units, rid, error, message]`` otherwise. ``op`` is 0 for
plus_funds and 1 for sub_funds, ``units`` are minor units, ``error`` is None for an applied change
or the wire error code of a refused change (kept so that its rid replays the same refusal).
"""

from __future__ import annotations

import logging
import os
import struct
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack

from zmqbalance import testhooks
from zmqbalance.errors import JournalCorrupt
from zmqbalance.ledger import PLUS_FUNDS, SUB_FUNDS, Rid

log = logging.getLogger(__name__)

SEGMENT_MAGIC = b"ZMQBJRN1"
GROUP_HEADER = struct.Struct("<IQII")
assert GROUP_HEADER.size == 20
_LENGTH_AND_SEQ = struct.Struct("<IQ")
MAX_GROUP_BYTES = 64 << 20  # a group of 1024 changes with 128-byte accounts is far smaller
DEFAULT_SEGMENT_BYTES = 64 << 20  # a new segment starts once the current one is this large
SEGMENT_PREFIX = "journal-"
SEGMENT_SUFFIX = ".log"
OP_CODES = {PLUS_FUNDS: 0, SUB_FUNDS: 1}
OP_NAMES = (PLUS_FUNDS, SUB_FUNDS)
FSYNC_MODES = ("always", "off")

# (op, account, units, rid, error, message): the decision about one change.
Record = tuple[str, str, int, "Rid | None", "str | None", "str | None"]


def segment_name(first_seq: int) -> str:
    return f"{SEGMENT_PREFIX}{first_seq:020d}{SEGMENT_SUFFIX}"


def list_segments(directory: Path) -> list[tuple[int, Path]]:
    """Return the directory's segments as (first seq, path), oldest first."""
    segments = []
    for path in directory.glob(f"{SEGMENT_PREFIX}*{SEGMENT_SUFFIX}"):
        digits = path.name[len(SEGMENT_PREFIX) : -len(SEGMENT_SUFFIX)]
        if digits.isdigit():
            segments.append((int(digits), path))
    return sorted(segments)


def fsync_directory(directory: Path) -> None:
    """Make a file creation, rename or removal in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def encode_group(first_seq: int, records: Sequence[Record]) -> bytes:
    """Encode records as one group record, header included."""
    changes: list[list[Any]] = []
    for op, account, units, rid, error, message in records:
        if rid is None and error is None:
            changes.append([OP_CODES[op], account, units])
        else:
            changes.append([OP_CODES[op], account, units, rid, error, message])
    payload: bytes = msgpack.packb(changes)
    header_crc = zlib.crc32(_LENGTH_AND_SEQ.pack(len(payload), first_seq))
    return GROUP_HEADER.pack(len(payload), first_seq, header_crc, zlib.crc32(payload)) + payload


def decode_changes(changes: list[list[Any]]) -> list[Record]:
    """Turn stored changes (see the payload format above) back into records."""
    records: list[Record] = []
    for change in changes:
        if len(change) == 3:
            records.append((OP_NAMES[change[0]], change[1], change[2], None, None, None))
        else:
            records.append((OP_NAMES[change[0]], *change[1:]))
    return records


class FileJournal:
    """A worker's journal in ``directory``: appends group records, fsyncs, rotates segments."""

    def __init__(
        self,
        directory: Path,
        next_seq: int,
        *,
        fsync: str = "always",
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
    ) -> None:
        if fsync not in FSYNC_MODES:
            raise ValueError(f"fsync must be one of {', '.join(FSYNC_MODES)}, got {fsync!r}")
        self.directory = directory
        self.next_seq = next_seq
        self.fsync = fsync
        self.segment_bytes = segment_bytes
        self.bytes_written = 0  # since this journal was opened or last snapshot
        self.groups = 0
        self.syncs = 0
        self._fd = -1
        self._segment_size = 0
        self._segment_path: Path | None = None
        self._unsynced = False
        self._synced_size = 0
        self._open_segment()

    def __repr__(self) -> str:
        return f"<FileJournal {self._segment_path} next_seq={self.next_seq} fsync={self.fsync}>"

    def _open_segment(self) -> None:
        """Continue the newest segment, or start one named after the next sequence number."""
        segments = list_segments(self.directory)
        if segments:
            path = segments[-1][1]
        else:
            path = self.directory / segment_name(self.next_seq)
        self._open(path)

    def _open(self, path: Path) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._segment_path = path
        if os.fstat(self._fd).st_size == 0:
            self._write(SEGMENT_MAGIC)
            os.fsync(self._fd)
            fsync_directory(self.directory)
        self._segment_size = os.fstat(self._fd).st_size
        self._synced_size = self._segment_size

    def append(self, records: Sequence[Record]) -> None:
        """Write one group record holding ``records``; it is durable only after sync()."""
        if not records:
            return
        testhooks.crash_point("before_journal_write")
        data = encode_group(self.next_seq, records)
        if len(data) - GROUP_HEADER.size > MAX_GROUP_BYTES:
            raise ValueError(f"group of {len(records)} changes is over {MAX_GROUP_BYTES} bytes")
        if not testhooks.skipped("journal_write"):
            self._write(data)
        self.next_seq += len(records)
        self.bytes_written += len(data)
        self._segment_size += len(data)
        self.groups += 1
        self._unsynced = True

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]

    def sync(self) -> None:
        """Make every appended group durable, per the fsync mode, then rotate if due."""
        if not self._unsynced:
            return
        if self.fsync == "always" and not testhooks.skipped("fsync"):
            os.fdatasync(self._fd)
            self.syncs += 1
            self._synced_size = self._segment_size
        self._unsynced = False
        testhooks.crash_point("after_fsync", self)
        if self._segment_size >= self.segment_bytes:
            self.rotate()

    def rotate(self) -> Path:
        """Close the current segment and start a new one at the next sequence number."""
        if self._unsynced:
            self.sync()
        os.close(self._fd)
        self._open(self.directory / segment_name(self.next_seq))
        assert self._segment_path is not None
        return self._segment_path

    def drop_unsynced(self) -> None:
        """Cut the segment back to its last fsynced size, as a power cut would (tests only)."""
        os.ftruncate(self._fd, self._synced_size)

    @property
    def current_segment(self) -> Path | None:
        return self._segment_path

    def close(self) -> None:
        if self._fd >= 0:
            if self._unsynced and self.fsync == "always":
                os.fdatasync(self._fd)
            os.close(self._fd)
            self._fd = -1


@dataclass
class GroupRead:
    """One group record read back from a segment, its changes still in their stored form."""

    path: Path
    offset: int
    first_seq: int
    changes: list[list[Any]]

    def records(self) -> list[Record]:
        return decode_changes(self.changes)


@dataclass
class TornTail:
    """A group record at the end of a segment that was cut short or never completed."""

    path: Path
    offset: int
    size: int


def read_segment(path: Path, *, last: bool) -> Iterator[GroupRead | TornTail]:
    """Yield the group records of one segment in order.

    A bad record at the very end of the newest segment (``last``) is a torn tail, yielded as
    :class:`TornTail` for the caller to cut. A bad record anywhere else raises JournalCorrupt.
    """
    data = path.read_bytes()
    if not data and last:
        return  # created but not written yet; the journal writes the magic when it opens it
    if not data.startswith(SEGMENT_MAGIC):
        if last and SEGMENT_MAGIC.startswith(data):
            yield TornTail(path, 0, len(data))
            return
        raise JournalCorrupt(
            "segment does not start with the journal magic", path=str(path), offset=0
        )

    offset = len(SEGMENT_MAGIC)
    while offset < len(data):
        problem, torn = _check_group(data, offset)
        if problem is None:
            length, first_seq, _, _ = GROUP_HEADER.unpack_from(data, offset)
            payload = data[offset + GROUP_HEADER.size : offset + GROUP_HEADER.size + length]
            yield GroupRead(path, offset, first_seq, msgpack.unpackb(payload, raw=False))
            offset += GROUP_HEADER.size + length
            continue
        if last and torn:
            yield TornTail(path, offset, len(data) - offset)
            return
        raise JournalCorrupt(problem, path=str(path), offset=offset)


def _check_group(data: bytes, offset: int) -> tuple[str | None, bool]:
    """Return why the group record at ``offset`` is bad (None if intact) and if it is torn.

    A record is torn, the unfinished last write of the file, when it could not be completed by
    anything after it: fewer bytes than a header remain, only zero bytes remain (space a file
    system allocated but never wrote), its intact header declares an end past the end of the
    file, or its payload fails its checksum and ends exactly at the end of the file.
    """
    rest = len(data) - offset
    if rest < GROUP_HEADER.size:
        return "group header is cut short", True
    length, _, header_crc, payload_crc = GROUP_HEADER.unpack_from(data, offset)
    if zlib.crc32(data[offset : offset + 12]) != header_crc:
        if not data[offset:].strip(b"\0"):
            return "only zero bytes follow", True
        return "group header checksum does not match", False
    if length > MAX_GROUP_BYTES:
        return f"group length {length} is over the maximum of {MAX_GROUP_BYTES}", False
    start = offset + GROUP_HEADER.size
    end = start + length
    if end > len(data):
        return "group record is cut short", True
    if zlib.crc32(data[start:end]) != payload_crc:
        return "group payload checksum does not match", end == len(data)
    return None, False
