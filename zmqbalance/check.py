"""``zmqbalance check DIR``: verify a data directory offline and print what it holds.

The check reads every snapshot and journal segment the way recovery does, but changes nothing:
a torn tail is reported, not cut. It takes the directory's lock, so it refuses to run while a
server is using the directory.
"""

from __future__ import annotations

from pathlib import Path

from zmqbalance.datadir import Meta, describe_snapshot, lock_existing, recover
from zmqbalance.errors import StorageError
from zmqbalance.ledger import Ledger
from zmqbalance.money import format_units


def check_data_directory(directory: Path) -> int:
    """Print a summary of ``directory``; return 0 if it is sound, 1 if it is damaged."""
    try:
        meta, lock = lock_existing(directory)
    except StorageError as exc:
        print(f"error: {exc}")
        return 1
    try:
        return _check(directory, meta)
    finally:
        lock.release()


def _check(directory: Path, meta: Meta) -> int:
    print(
        f"{directory}: format {meta.format}, scale {meta.scale}, {meta.workers} workers, "
        f"partition {meta.partition}"
    )

    damaged = False
    accounts = changes = 0
    total = 0
    for index in range(meta.workers):
        folder = directory / f"worker-{index}"
        ledger = Ledger(meta.scale)
        if not folder.is_dir():
            print(f"worker {index}: no folder yet (no changes)")
            continue
        try:
            report = recover(folder, index, ledger, repair=False)
        except StorageError as exc:
            print(f"worker {index}: DAMAGED: {exc}")
            damaged = True
            continue
        worker_total = sum(state.balance for state in ledger.accounts.values())
        print(
            f"worker {index}: {describe_snapshot(report.snapshot_seq)}, "
            f"{report.segments} segments, "
            f"{report.groups} groups, {report.changes} changes after the snapshot, "
            f"{len(ledger.accounts)} accounts, {len(ledger.rids)} rids, "
            f"total balance {format_units(worker_total, meta.scale)}"
        )
        for torn in report.torn:
            print(
                f"worker {index}: torn tail of {torn.size} bytes in {torn.path} at offset "
                f"{torn.offset}; the server cuts it off (keeping a copy) at its next start"
            )
        accounts += len(ledger.accounts)
        changes += report.changes
        total += worker_total

    print(f"total: {accounts} accounts, balance {format_units(total, meta.scale)}")
    if damaged:
        print("DAMAGED: the server will refuse to start on this directory; see docs/durability.md")
        return 1
    print("OK")
    return 0
