"""Memory per account of a ledger at a given number of accounts, measured with tracemalloc.

python3 -m bench.memory --accounts 1000000
"""

from __future__ import annotations

import argparse
import sys
import tracemalloc

from zmqbalance.ledger import PLUS_FUNDS, Ledger


def bytes_per_account(accounts: int) -> float:
    """Credit each of ``accounts`` accounts once; return the traced bytes per account."""
    ledger = Ledger(6)
    tracemalloc.start()
    try:
        for number in range(accounts):
            ledger.change(PLUS_FUNDS, f"acct-{number}", 1_000_000)
        traced, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return traced / accounts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--accounts", type=int, default=1_000_000)
    args = parser.parse_args(argv)
    print(f"{args.accounts:,} accounts: {bytes_per_account(args.accounts):.1f} bytes per account")
    return 0


if __name__ == "__main__":
    sys.exit(main())
