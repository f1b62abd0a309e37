"""The main job: start the engine on its defaults, run the original workload, restart, read back.

Steps: start ``zmqbalance serve`` on its default address (tcp://127.0.0.1:7070) with a fresh data
directory, run the 10-client workload, stop the engine with SIGTERM, start it again on the same
data directory, and read the balances back. Exits 1 if any balance or count is wrong.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from workload import read_counts, run

from zmqbalance import Client, TimedOut
from zmqbalance.client import DEFAULT_ENDPOINT

START_TIMEOUT = 20.0  # seconds for the engine to answer ping
ACCOUNTS = ["0", "1", "2"]


def start_engine(data_dir: Path) -> subprocess.Popen[bytes]:
    engine = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "zmqbalance",
            "serve",
            "--data-dir",
            str(data_dir),
            "--log-level",
            "WARNING",
        ]
    )
    deadline = time.monotonic() + START_TIMEOUT
    with Client(DEFAULT_ENDPOINT, timeout=0.5, retries=0) as client:
        while time.monotonic() < deadline:
            if engine.poll() is not None:
                raise SystemExit(f"the engine exited with status {engine.returncode} at start")
            try:
                client.ping()
                return engine
            except TimedOut:
                continue
    engine.kill()
    raise SystemExit(f"the engine did not answer on {DEFAULT_ENDPOINT} within {START_TIMEOUT} s")


def stop_engine(engine: subprocess.Popen[bytes]) -> int:
    engine.send_signal(signal.SIGTERM)
    return engine.wait(60)


def main() -> int:
    logging.basicConfig(level=logging.ERROR)  # the start-up pings time out by design
    data_dir = Path(tempfile.mkdtemp(prefix="zmqbalance-main-job-")) / "data"
    print(f"engine: {DEFAULT_ENDPOINT}, data directory {data_dir}, fsync always")
    engine = start_engine(data_dir)
    try:
        correct = run(DEFAULT_ENDPOINT, clients=10, rounds=100, accounts=ACCOUNTS)
    finally:
        status = stop_engine(engine)
    print(f"engine stopped with exit status {status}")

    engine = start_engine(data_dir)
    try:
        after = read_counts(DEFAULT_ENDPOINT, ACCOUNTS)
    finally:
        stop_engine(engine)
    print("after a restart from the data directory:")
    for account in ACCOUNTS:
        _, text, count = after[account]
        print(f"account {account}: {text} {count}")
        correct = correct and text == "0.000000" and count == 2000

    print("result: OK" if correct and status == 0 else "result: WRONG")
    return 0 if correct and status == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
