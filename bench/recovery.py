"""Recovery time and disk size of a data directory holding N journaled changes.

Writes one worker's journal directly through the engine's storage classes (the same code that
serves requests, without the network), then times ``recover()``, the function the server runs
for each worker at start. With ``--snapshot`` the changes are first folded into a snapshot, as
a worker does once its journal passes ``--snapshot-bytes``, and a tail of 1% is journaled after
it.

    python3 -m bench.recovery --changes 1000000 --accounts 100000
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

from zmqbalance.datadir import WorkerStore, open_meta, recover, worker_directory
from zmqbalance.journal import Record
from zmqbalance.ledger import PLUS_FUNDS, Ledger

GROUP = 1024  # changes per group record, the worker's maximum group
SCALE = 6


def write_journal(store: WorkerStore, changes: int, accounts: int, ledger: Ledger) -> None:
    """Journal ``changes`` credits spread over ``accounts`` accounts, as committed groups."""
    written = 0
    while written < changes:
        count = min(GROUP, changes - written)
        records: list[Record] = []
        for number in range(written, written + count):
            account = str(number % accounts)
            ledger.change(PLUS_FUNDS, account, 1_000_000)
            records.append((PLUS_FUNDS, account, 1_000_000, None, None, None))
        store.append(records)
        store.sync()
        written += count


def disk_bytes(directory: Path) -> int:
    return sum(path.stat().st_size for path in directory.rglob("*") if path.is_file())


def measure(changes: int, accounts: int, snapshot: bool, root: Path) -> dict[str, float]:
    data = root / f"data-{changes}-{int(snapshot)}"
    open_meta(data, SCALE, 1)
    folder = worker_directory(data, 0)
    ledger = Ledger(SCALE)

    started = time.perf_counter()
    store = WorkerStore(folder, 1, fsync="off", snapshot_bytes=1 << 62)
    if snapshot:
        write_journal(store, changes - changes // 100, accounts, ledger)
        store.take_snapshot(ledger)
        write_journal(store, changes // 100, accounts, ledger)
    else:
        write_journal(store, changes, accounts, ledger)
    store.close()
    write_seconds = time.perf_counter() - started

    recovered = Ledger(SCALE)
    started = time.perf_counter()
    report = recover(folder, 0, recovered, repair=True)
    recover_seconds = time.perf_counter() - started
    assert sum(state.count for state in recovered.accounts.values()) == changes
    size = disk_bytes(data)
    shutil.rmtree(data)
    return {
        "changes": changes,
        "snapshot": snapshot,
        "journaled_after_snapshot": report.changes,
        "write_s": round(write_seconds, 2),
        "recover_s": round(recover_seconds, 2),
        "disk_mb": round(size / 1e6, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--changes", type=int, nargs="+", default=[1_000_000])
    parser.add_argument("--accounts", type=int, default=100_000)
    parser.add_argument(
        "--dir", type=Path, default=None, help="where to write (default: a temp dir)"
    )
    args = parser.parse_args(argv)

    root = Path(tempfile.mkdtemp(prefix="zmqbalance-recovery-", dir=args.dir))
    print("changes     snapshot  journaled  write s  recover s  disk MB")
    try:
        for changes in args.changes:
            for snapshot in (False, True):
                row = measure(changes, args.accounts, snapshot, root)
                print(
                    f"{row['changes']:>10,}  {'yes' if snapshot else 'no':>8}  "
                    f"{row['journaled_after_snapshot']:>9,}  {row['write_s']:>7}  "
                    f"{row['recover_s']:>9}  {row['disk_mb']:>7}",
                    flush=True,
                )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
