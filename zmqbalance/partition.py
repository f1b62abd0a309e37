"""Account ownership: which worker owns an account.

The function must give the same answer in every process and after every restart, because the
journal of a worker holds only the accounts it owns. CRC-32 of the account id's UTF-8 bytes is
used; Python's ``hash()`` of a str is randomized per process and must never be used here.
"""

from __future__ import annotations

import zlib

PARTITION_FUNCTION = "crc32"


def owner_of(account: str, workers: int) -> int:
    """Return the index of the worker that owns ``account`` among ``workers`` workers."""
    return zlib.crc32(account.encode("utf-8")) % workers
