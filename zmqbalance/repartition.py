"""``zmqbalance repartition DIR --workers N``: move a stopped data directory to N workers.

Each worker's journal holds only the accounts it owns under ``crc32(account) % workers``, so a
server refuses to start with another ``--workers`` than its data directory was created with.
This command recovers every worker's accounts and remembered rids, regroups them by the new
count, and writes a new directory with one snapshot per new worker. The old directory is kept
beside it, renamed ``DIR.before-repartition-<time>``.

The two renames at the end are separate steps. If the process dies between them, ``DIR`` is
missing and ``DIR.repartition`` holds the finished result: rename it to ``DIR``.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from zmqbalance.datadir import (
    lock_existing,
    open_meta,
    recover,
    worker_directory,
)
from zmqbalance.errors import StorageError
from zmqbalance.journal import fsync_directory
from zmqbalance.ledger import Ledger
from zmqbalance.partition import owner_of
from zmqbalance.snapshot import write_snapshot


def repartition(directory: Path, workers: int) -> int:
    """Rewrite ``directory`` for ``workers`` workers; return a process exit status."""
    if workers < 1:
        print(f"error: --workers must be at least 1, got {workers}")
        return 2
    try:
        meta, lock = lock_existing(directory)
    except StorageError as exc:
        print(f"error: {exc}")
        return 1
    try:
        if meta.workers == workers:
            print(f"{directory} already has {workers} workers; nothing to do")
            return 0
        ledgers = _regroup(_recover_all(directory, meta.workers, meta.scale), workers, meta.scale)
        staging = directory.with_name(directory.name + ".repartition")
        _write(staging, ledgers, meta.scale)
        backup = directory.with_name(
            f"{directory.name}.before-repartition-{time.strftime('%Y%m%dT%H%M%S')}"
        )
        os.rename(directory, backup)
        os.rename(staging, directory)
        fsync_directory(directory.parent)
    except StorageError as exc:
        print(f"error: {exc}")
        return 1
    finally:
        lock.release()

    accounts = sum(len(ledger.accounts) for ledger in ledgers)
    print(
        f"{directory}: {meta.workers} workers -> {workers} workers, {accounts} accounts; "
        f"the old directory is {backup}"
    )
    return 0


def _recover_all(directory: Path, workers: int, scale: int) -> list[Ledger]:
    """Recover every old worker's ledger without changing anything on disk."""
    ledgers = []
    for index in range(workers):
        ledger = Ledger(scale, rid_window=1 << 62)  # keep every rid until they are regrouped
        folder = directory / f"worker-{index}"
        if folder.is_dir():
            report = recover(folder, index, ledger, repair=False)
            if report.torn:
                raise StorageError(
                    f"{folder} ends in a torn journal record; start and stop the server once "
                    "so that it cuts the tail off, then repartition"
                )
        ledgers.append(ledger)
    return ledgers


def _regroup(old: list[Ledger], workers: int, scale: int) -> list[Ledger]:
    """Move every account and remembered rid to the ledger of its new owner."""
    new = [Ledger(scale) for _ in range(workers)]
    for ledger in old:
        for account, state in ledger.accounts.items():
            new[owner_of(account, workers)].accounts[account] = state
        for rid, kept in ledger.rids.items():
            owner = new[owner_of(kept.account, workers)]
            owner.remember(rid, kept.op, kept.account, kept.units, kept.outcome)
    return new


def _write(staging: Path, ledgers: list[Ledger], scale: int) -> None:
    """Write a complete new data directory: metadata and one snapshot per worker."""
    if staging.exists():
        shutil.rmtree(staging)
    open_meta(staging, scale, len(ledgers))
    for index, ledger in enumerate(ledgers):
        write_snapshot(worker_directory(staging, index), 0, ledger)
    fsync_directory(staging)
