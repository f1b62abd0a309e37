"""The data directory: its metadata, each worker's journal and snapshots, and recovery.

Layout::

    DIR/meta.json            format version, scale, worker count, partition function
    DIR/worker-N/            one folder per worker, holding only the accounts that worker owns
        journal-<seq>.log    segments of group records (see journal.py)
        snapshot-<seq>.snap  snapshots (see snapshot.py); only the newest one is needed
        torn/                copies of torn journal tails that recovery cut off

Recovery of a worker loads its newest snapshot, then replays every group record after the
snapshot's sequence number, checking that sequence numbers follow on without a gap. A torn tail
of the newest segment is copied into ``torn/`` and cut off with a WARNING; a damaged record
anywhere else stops the start with :class:`~zmqbalance.errors.JournalCorrupt`, which names the
file and offset.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zmqbalance import testhooks
from zmqbalance.errors import ConfigMismatch, JournalCorrupt, StorageError
from zmqbalance.journal import (
    DEFAULT_SEGMENT_BYTES,
    OP_CODES,
    FileJournal,
    Record,
    TornTail,
    decode_changes,
    fsync_directory,
    list_segments,
    read_segment,
)
from zmqbalance.ledger import PLUS_FUNDS, Ledger
from zmqbalance.partition import PARTITION_FUNCTION
from zmqbalance.snapshot import TMP_SUFFIX, list_snapshots, read_snapshot, write_snapshot

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
META_FILE = "meta.json"
LOCK_FILE = "lock"
TORN_FOLDER = "torn"
PLUS_CODE = OP_CODES[PLUS_FUNDS]
DEFAULT_SNAPSHOT_BYTES = 256 << 20  # journal bytes written before a worker takes a snapshot


@dataclass
class Meta:
    """The settings a data directory was created with, which a server must start with."""

    format: int
    scale: int
    workers: int
    partition: str


@dataclass
class RecoveryReport:
    """The findings of recovering one worker."""

    worker: int
    snapshot_seq: int = 0
    snapshot_path: Path | None = None
    segments: int = 0
    groups: int = 0
    changes: int = 0
    next_seq: int = 1
    torn: list[TornTail] = field(default_factory=list)


class DirectoryLock:
    """An exclusive lock on a data directory, so two processes never write its journals.

    The lock is ``flock`` on ``DIR/lock``. The operating system releases it when the process
    ends, even by SIGKILL, so a killed server leaves no stale lock behind.
    """

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / LOCK_FILE
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self._fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(self._fd)
            raise StorageError(
                f"data directory {directory} is in use by another process (pid {holder}); "
                "stop that process first, or choose another --data-dir"
            ) from None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        if self._fd >= 0:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = -1


def lock_existing(directory: Path) -> tuple[Meta, DirectoryLock]:
    """Read an existing data directory's metadata and lock it, for the offline commands."""
    meta = read_meta(directory)
    return meta, DirectoryLock(directory)


def open_meta(directory: Path, scale: int, workers: int) -> Meta:
    """Create the data directory's metadata, or check it against the server's options."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / META_FILE
    if not path.exists():
        meta = Meta(FORMAT_VERSION, scale, workers, PARTITION_FUNCTION)
        temporary = path.with_name(META_FILE + TMP_SUFFIX)
        temporary.write_text(json.dumps(meta.__dict__, indent=2) + "\n")
        with open(temporary, "rb") as handle:
            os.fsync(handle.fileno())
        os.rename(temporary, path)
        fsync_directory(directory)
        return meta

    meta = read_meta(directory)
    if meta.format != FORMAT_VERSION:
        raise ConfigMismatch(
            f"data directory {directory} has format {meta.format}; this version reads "
            f"format {FORMAT_VERSION}"
        )
    if meta.scale != scale:
        raise ConfigMismatch(
            f"data directory {directory} was created with --scale {meta.scale}; start with "
            f"--scale {meta.scale} (amounts would change meaning under another scale)"
        )
    if meta.workers != workers:
        raise ConfigMismatch(
            f"data directory {directory} was created with --workers {meta.workers}; start with "
            f"--workers {meta.workers}, because each worker's journal holds only the accounts "
            f"it owns; to change the count, stop the server and run: zmqbalance repartition "
            f"{directory} --workers {workers}"
        )
    return meta


def read_meta(directory: Path) -> Meta:
    path = directory / META_FILE
    try:
        content = json.loads(path.read_text())
        return Meta(
            int(content["format"]),
            int(content["scale"]),
            int(content["workers"]),
            str(content["partition"]),
        )
    except FileNotFoundError as exc:
        raise StorageError(
            f"{directory} is not a zmqbalance data directory: no {META_FILE}"
        ) from exc
    except (ValueError, KeyError, TypeError) as exc:
        raise StorageError(f"{path} is not valid zmqbalance metadata: {exc}") from exc


def describe_snapshot(snapshot_seq: int) -> str:
    return f"snapshot up to seq {snapshot_seq}" if snapshot_seq else "no snapshot"


def worker_directory(directory: Path, index: int) -> Path:
    path = directory / f"worker-{index}"
    path.mkdir(exist_ok=True)
    return path


def recover(directory: Path, index: int, ledger: Ledger, *, repair: bool) -> RecoveryReport:
    """Rebuild ``ledger`` from a worker's snapshot and journal.

    With ``repair`` a torn tail is copied aside and cut off, and unfinished snapshot files are
    removed; without it (``zmqbalance check``) nothing on disk changes.
    """
    report = RecoveryReport(index)
    if repair:
        for leftover in directory.glob(f"*{TMP_SUFFIX}"):
            log.info("removing unfinished snapshot %s", leftover)
            leftover.unlink()

    snapshots = list_snapshots(directory)
    if snapshots:
        info = read_snapshot(snapshots[-1][1], ledger)
        report.snapshot_seq, report.snapshot_path = info.last_seq, info.path
    expected = report.snapshot_seq + 1

    segments = list_segments(directory)
    report.segments = len(segments)
    for position, (_, path) in enumerate(segments):
        for item in read_segment(path, last=position == len(segments) - 1):
            if isinstance(item, TornTail):
                report.torn.append(item)
                if repair:
                    cut_torn_tail(directory, item)
                continue
            last_seq = item.first_seq + len(item.changes) - 1
            if last_seq <= report.snapshot_seq:
                continue  # already in the snapshot
            if item.first_seq != expected:
                raise JournalCorrupt(
                    f"sequence number {item.first_seq} follows {expected - 1}",
                    path=str(path),
                    offset=item.offset,
                )
            _restore(ledger, item.changes)
            report.groups += 1
            report.changes += len(item.changes)
            expected = last_seq + 1
    report.next_seq = expected
    return report


def _restore(ledger: Ledger, changes: list[list[Any]]) -> None:
    """Re-apply stored changes; the short form (applied, no rid) takes a fast path."""
    for change in changes:
        if len(change) == 3:
            op_code, account, units = change
            ledger.restore_applied(op_code == PLUS_CODE, account, units)
        else:
            for record in decode_changes([change]):
                ledger.restore(*record)


def cut_torn_tail(directory: Path, torn: TornTail) -> Path:
    """Copy a torn tail into ``torn/``, cut it off the segment, and log a WARNING."""
    aside = directory / TORN_FOLDER
    aside.mkdir(exist_ok=True)
    copy = aside / f"{torn.path.name}.{torn.offset}"
    with open(torn.path, "rb") as source, open(copy, "wb") as target:
        source.seek(torn.offset)
        shutil.copyfileobj(source, target)
        target.flush()
        os.fsync(target.fileno())
    fsync_directory(aside)
    with open(torn.path, "r+b") as segment:
        segment.truncate(torn.offset)
        os.fsync(segment.fileno())
    log.warning(
        "cut a torn journal tail of %d bytes off %s at offset %d; a copy is in %s",
        torn.size,
        torn.path,
        torn.offset,
        copy,
    )
    return copy


class WorkerStore:
    """A worker's durable storage: its journal, plus snapshots once the journal grows enough."""

    durable = True

    def __init__(
        self,
        directory: Path,
        next_seq: int,
        *,
        fsync: str,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        snapshot_bytes: int = DEFAULT_SNAPSHOT_BYTES,
    ) -> None:
        self.directory = directory
        self.journal = FileJournal(directory, next_seq, fsync=fsync, segment_bytes=segment_bytes)
        self.snapshot_bytes = snapshot_bytes
        self.snapshots = 0

    def __repr__(self) -> str:
        return f"<WorkerStore {self.directory} {self.journal!r}>"

    @property
    def syncs(self) -> int:
        return self.journal.syncs

    def append(self, records: list[Record]) -> None:
        self.journal.append(records)

    def sync(self) -> None:
        self.journal.sync()

    def close(self) -> None:
        self.journal.close()

    def snapshot_due(self) -> bool:
        return self.journal.bytes_written >= self.snapshot_bytes

    def take_snapshot(self, ledger: Ledger) -> Path:
        """Snapshot ``ledger`` as of the last journaled change, then drop what it replaces.

        The journal moves to a fresh segment first, so every older segment contains only
        changes the snapshot includes. They are removed after the snapshot is durable.
        """
        current = self.journal.rotate()
        last_seq = self.journal.next_seq - 1
        path = write_snapshot(self.directory, last_seq, ledger)
        testhooks.crash_point("after_snapshot_rename")

        for _, segment in list_segments(self.directory):
            if segment != current:
                segment.unlink()
        for _, older in list_snapshots(self.directory):
            if older != path:
                older.unlink()
        fsync_directory(self.directory)
        self.journal.bytes_written = 0
        self.snapshots += 1
        log.info(
            "worker snapshot %s: %d accounts, %d rids", path, len(ledger.accounts), len(ledger.rids)
        )
        return path


class MemoryStore:
    """The in-memory engine's storage: keeps nothing, so a restart starts from zero."""

    durable = False
    syncs = 0

    def append(self, records: list[Record]) -> None:
        pass

    def sync(self) -> None:
        pass

    def close(self) -> None:
        pass

    def snapshot_due(self) -> bool:
        return False

    def take_snapshot(self, ledger: Ledger) -> Path:
        raise StorageError("an in-memory engine takes no snapshots")
