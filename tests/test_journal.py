"""The journal and snapshot formats and recovery, on real files without a server."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from zmqbalance.datadir import WorkerStore, open_meta, recover, worker_directory
from zmqbalance.errors import ConfigMismatch, JournalCorrupt
from zmqbalance.journal import (
    GROUP_HEADER,
    SEGMENT_MAGIC,
    FileJournal,
    GroupRead,
    TornTail,
    list_segments,
    read_segment,
)
from zmqbalance.ledger import PLUS_FUNDS, SUB_FUNDS, Ledger


def write_groups(directory: Path, groups: int, per_group: int = 3) -> list[int]:
    """Journal ``groups`` groups of credits of 1 to account "a"; return each group's offset."""
    journal = FileJournal(directory, 1)
    offsets = []
    for _ in range(groups):
        assert journal.current_segment is not None
        offsets.append(journal.current_segment.stat().st_size)
        journal.append([(PLUS_FUNDS, "a", 1_000_000, None, None, None)] * per_group)
        journal.sync()
    journal.close()
    return offsets


def only_segment(directory: Path) -> Path:
    segments = list_segments(directory)
    assert len(segments) == 1
    return segments[0][1]


def test_journal_round_trip(tmp_path: Path) -> None:
    journal = FileJournal(tmp_path, 1)
    journal.append([(PLUS_FUNDS, "a", 5, None, None, None), (SUB_FUNDS, "b", 7, "r1", None, None)])
    journal.append([(SUB_FUNDS, "c", 9, b"r2", "insufficient_funds", "too little")])
    journal.sync()
    journal.close()

    items = list(read_segment(only_segment(tmp_path), last=True))

    assert all(isinstance(item, GroupRead) for item in items)
    groups = [item for item in items if isinstance(item, GroupRead)]
    assert [group.first_seq for group in groups] == [1, 3]
    assert groups[0].records() == [
        (PLUS_FUNDS, "a", 5, None, None, None),
        (SUB_FUNDS, "b", 7, "r1", None, None),
    ]
    assert groups[1].records() == [(SUB_FUNDS, "c", 9, b"r2", "insufficient_funds", "too little")]


def test_segment_starts_with_magic(tmp_path: Path) -> None:
    write_groups(tmp_path, 1)

    assert only_segment(tmp_path).read_bytes().startswith(SEGMENT_MAGIC)


def test_torn_tail_recovers_whole_groups(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    offsets = write_groups(tmp_path, 5)
    segment = only_segment(tmp_path)
    size = segment.stat().st_size
    fifth_length = size - offsets[4]
    with open(segment, "r+b") as handle:
        handle.truncate(offsets[4] + fifth_length // 2)

    ledger = Ledger(6)
    with caplog.at_level(logging.WARNING):
        report = recover(tmp_path, 0, ledger, repair=True)

    assert ledger.read("a").count == 12
    assert report.next_seq == 13
    assert segment.stat().st_size == offsets[4]
    kept = tmp_path / "torn" / f"{segment.name}.{offsets[4]}"
    assert kept.stat().st_size == fifth_length // 2
    assert f"at offset {offsets[4]}" in caplog.text
    assert str(segment) in caplog.text


def test_torn_header_recovers_whole_groups(tmp_path: Path) -> None:
    offsets = write_groups(tmp_path, 3)
    segment = only_segment(tmp_path)
    with open(segment, "r+b") as handle:
        handle.truncate(offsets[2] + GROUP_HEADER.size - 5)

    ledger = Ledger(6)
    recover(tmp_path, 0, ledger, repair=True)

    assert ledger.read("a").count == 6


def test_zero_filled_tail_is_torn(tmp_path: Path) -> None:
    write_groups(tmp_path, 2)
    segment = only_segment(tmp_path)
    with open(segment, "ab") as handle:
        handle.write(b"\0" * 4096)

    items = list(read_segment(segment, last=True))

    assert isinstance(items[-1], TornTail)
    assert items[-1].size == 4096


def test_flipped_payload_byte_stops_recovery(tmp_path: Path) -> None:
    offsets = write_groups(tmp_path, 4)
    segment = only_segment(tmp_path)
    data = bytearray(segment.read_bytes())
    data[offsets[1] + GROUP_HEADER.size + 2] ^= 0xFF
    segment.write_bytes(bytes(data))

    with pytest.raises(JournalCorrupt) as caught:
        recover(tmp_path, 0, Ledger(6), repair=True)

    assert caught.value.offset == offsets[1]
    assert caught.value.path == str(segment)
    assert f"at offset {offsets[1]}" in str(caught.value)
    assert segment.stat().st_size == len(data)  # nothing was cut


def test_flipped_length_byte_stops_recovery(tmp_path: Path) -> None:
    # A damaged length must not pass for a torn tail and cut off acknowledged groups.
    offsets = write_groups(tmp_path, 4)
    segment = only_segment(tmp_path)
    data = bytearray(segment.read_bytes())
    data[offsets[1] + 2] ^= 0x40
    segment.write_bytes(bytes(data))

    with pytest.raises(JournalCorrupt) as caught:
        recover(tmp_path, 0, Ledger(6), repair=True)

    assert caught.value.offset == offsets[1]
    assert "header checksum" in str(caught.value)


def test_damaged_last_group_in_older_segment_stops_recovery(tmp_path: Path) -> None:
    journal = FileJournal(tmp_path, 1)
    journal.append([(PLUS_FUNDS, "a", 1, None, None, None)])
    journal.sync()
    first = journal.rotate()
    journal.append([(PLUS_FUNDS, "a", 1, None, None, None)])
    journal.sync()
    journal.close()
    older = list_segments(tmp_path)[0][1]
    with open(older, "r+b") as handle:
        handle.truncate(older.stat().st_size - 3)

    with pytest.raises(JournalCorrupt):
        recover(tmp_path, 0, Ledger(6), repair=True)
    assert first != older


def test_sequence_gap_stops_recovery(tmp_path: Path) -> None:
    journal = FileJournal(tmp_path, 1)
    journal.append([(PLUS_FUNDS, "a", 1, None, None, None)])
    journal.sync()
    journal.next_seq += 5
    journal.append([(PLUS_FUNDS, "a", 1, None, None, None)])
    journal.sync()
    journal.close()

    with pytest.raises(JournalCorrupt, match="sequence number 7 follows 1"):
        recover(tmp_path, 0, Ledger(6), repair=True)


def test_check_mode_changes_nothing(tmp_path: Path) -> None:
    offsets = write_groups(tmp_path, 3)
    segment = only_segment(tmp_path)
    with open(segment, "r+b") as handle:
        handle.truncate(offsets[2] + 7)

    report = recover(tmp_path, 0, Ledger(6), repair=False)

    assert len(report.torn) == 1
    assert segment.stat().st_size == offsets[2] + 7
    assert not (tmp_path / "torn").exists()


def test_snapshot_replaces_older_segments(tmp_path: Path) -> None:
    ledger = Ledger(6)
    store = WorkerStore(tmp_path, 1, fsync="always", snapshot_bytes=1)
    for rid in ("r1", "r2"):
        outcome = ledger.apply(PLUS_FUNDS, "a", 3, rid)
        store.append([(PLUS_FUNDS, "a", 3, rid, outcome.error, outcome.message)])
        store.sync()
    assert store.snapshot_due()
    store.take_snapshot(ledger)
    outcome = ledger.apply(SUB_FUNDS, "a", 100, "r3")
    store.append([(SUB_FUNDS, "a", 100, "r3", outcome.error, outcome.message)])
    store.sync()
    store.close()

    recovered = Ledger(6)
    report = recover(tmp_path, 0, recovered, repair=True)

    assert report.snapshot_seq == 2
    assert report.changes == 1
    assert len(list_segments(tmp_path)) == 1
    assert recovered.read("a").balance == 6
    assert recovered.apply(PLUS_FUNDS, "a", 3, "r1").replay is True
    assert recovered.apply(SUB_FUNDS, "a", 100, "r3").error == "insufficient_funds"
    assert recovered.apply(SUB_FUNDS, "a", 100, "r3").replay is True


def test_damaged_snapshot_stops_recovery(tmp_path: Path) -> None:
    ledger = Ledger(6)
    store = WorkerStore(tmp_path, 1, fsync="always")
    ledger.apply(PLUS_FUNDS, "a", 3)
    store.append([(PLUS_FUNDS, "a", 3, None, None, None)])
    store.sync()
    snapshot = store.take_snapshot(ledger)
    store.close()
    data = bytearray(snapshot.read_bytes())
    data[-1] ^= 0x01
    snapshot.write_bytes(bytes(data))

    with pytest.raises(JournalCorrupt, match="snapshot"):
        recover(tmp_path, 0, Ledger(6), repair=True)


def test_unfinished_snapshot_file_removed(tmp_path: Path) -> None:
    write_groups(tmp_path, 1)
    leftover = tmp_path / "snapshot-00000000000000000003.snap.tmp"
    leftover.write_bytes(b"half a snapshot")

    ledger = Ledger(6)
    recover(tmp_path, 0, ledger, repair=True)

    assert not leftover.exists()
    assert ledger.read("a").count == 3


def test_meta_rejects_other_scale(tmp_path: Path) -> None:
    open_meta(tmp_path, 6, 4)

    with pytest.raises(ConfigMismatch, match="--scale 6"):
        open_meta(tmp_path, 2, 4)


def test_meta_rejects_other_worker_count(tmp_path: Path) -> None:
    open_meta(tmp_path, 6, 4)

    with pytest.raises(ConfigMismatch, match="--workers 4"):
        open_meta(tmp_path, 6, 3)


def test_worker_directory_created(tmp_path: Path) -> None:
    assert worker_directory(tmp_path, 2) == tmp_path / "worker-2"
    assert (tmp_path / "worker-2").is_dir()
