import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

from zmqbalance.partition import PARTITION_FUNCTION, owner_of

ROOT = Path(__file__).resolve().parent.parent
ACCOUNTS = [str(number) for number in range(1000)]
PRINT_OWNERS = (
    "from zmqbalance.partition import owner_of\n"
    "print(' '.join(str(owner_of(str(n), 4)) for n in range(1000)))\n"
)


def owners_in_child(hash_seed: str) -> list[int]:
    result = subprocess.run(
        [sys.executable, "-c", PRINT_OWNERS],
        env={**os.environ, "PYTHONHASHSEED": hash_seed},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return [int(owner) for owner in result.stdout.split()]


def test_every_worker_owns_accounts() -> None:
    counts = Counter(owner_of(account, 4) for account in ACCOUNTS)
    assert sorted(counts) == [0, 1, 2, 3]
    assert min(counts.values()) > 150


def test_owner_same_across_processes() -> None:
    first = owners_in_child("1")
    second = owners_in_child("2")
    assert len(first) == 1000
    assert first == second
    assert first == [owner_of(account, 4) for account in ACCOUNTS]


def test_owner_values_pinned() -> None:
    # A journal holds only its worker's accounts, so these values must never change.
    assert PARTITION_FUNCTION == "crc32"
    assert owner_of("0", 4) == 1  # crc32(b"0") == 0xF4DBDF21
    assert owner_of("alice", 7) == 5  # crc32(b"alice") == 0x278EBC47
    assert owner_of("é", 4) == 2  # crc32 of the UTF-8 bytes C3 A9 == 0x0E048D3E


def test_single_worker_owns_all() -> None:
    assert {owner_of(account, 1) for account in ACCOUNTS} == {0}
