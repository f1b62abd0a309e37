"""Recovery through the real server and the check command: torn tails, damage, mismatches."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from tests.crashkit import DurableServer, kill_started
from tests.wire import request
from zmqbalance import Client
from zmqbalance.journal import list_segments

CHECK_TIMEOUT = 60  # seconds for one zmqbalance command


@pytest.fixture(autouse=True)
def _kill_servers_after_test() -> Iterator[None]:
    yield
    kill_started()


def credit(endpoint: str, count: int, prefix: str) -> None:
    with Client(endpoint) as client:
        for number in range(count):
            client.plus_funds("acct", 1, rid=f"{prefix}-{number}")


def segment_of_acct(data_dir: Path) -> Path:
    for folder in sorted(data_dir.glob("worker-*")):
        segments = list_segments(folder)
        if segments and segments[-1][1].stat().st_size > 8:
            return segments[-1][1]
    raise AssertionError("no journal segment holds a change")


def run_zmqbalance(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "zmqbalance", *args],
        capture_output=True,
        text=True,
        timeout=CHECK_TIMEOUT,
    )


def test_torn_tail_cut_then_more_changes_survive(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    server = DurableServer(data_dir, ("--workers", "1"))
    server.start()
    credit(server.endpoint, 5, "first")
    server.kill()

    # Each credit above was its own group: cut the fifth in half.
    segment = segment_of_acct(data_dir)
    size = segment.stat().st_size
    group = (size - 8) // 5
    with open(segment, "r+b") as handle:
        handle.truncate(size - group // 2)

    process = server.start()
    with Client(server.endpoint) as client:
        assert client.balance("acct").count == 4
        credit(server.endpoint, 3, "second")
    server.kill()
    torn = list((segment.parent / "torn").iterdir())
    server.start()
    with Client(server.endpoint) as client:
        final = client.balance("acct")

    assert "WARNING" in process.log
    assert f"at offset {size - group}" in process.log
    assert len(torn) == 1
    assert torn[0].stat().st_size == group - group // 2
    assert final.count == 7
    assert final.balance_text == "7.000000"


def test_flipped_byte_refuses_start(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    server = DurableServer(data_dir, ("--workers", "1"))
    server.start()
    credit(server.endpoint, 6, "a")
    server.kill()
    segment = segment_of_acct(data_dir)
    data = bytearray(segment.read_bytes())
    middle = len(data) // 2
    data[middle] ^= 0x10
    segment.write_bytes(bytes(data))

    result = run_zmqbalance(
        "serve", "--bind", "tcp://127.0.0.1:*", "--data-dir", str(data_dir), "--workers", "1"
    )
    check = run_zmqbalance("check", str(data_dir))

    assert result.returncode == 2
    assert str(segment) in result.stderr
    assert "at offset" in result.stderr
    assert check.returncode == 1
    assert "DAMAGED" in check.stdout
    assert str(segment) in check.stdout


def test_other_scale_refused(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    server = DurableServer(data_dir, ("--workers", "2"))
    server.start()
    credit(server.endpoint, 1, "s")
    server.kill()

    result = run_zmqbalance(
        "serve",
        "--bind",
        "tcp://127.0.0.1:*",
        "--data-dir",
        str(data_dir),
        "--workers",
        "2",
        "--scale",
        "2",
    )

    assert result.returncode == 2
    assert "--scale 6" in result.stderr


def test_other_worker_count_refused(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    server = DurableServer(data_dir, ("--workers", "2"))
    server.start()
    server.kill()

    result = run_zmqbalance(
        "serve", "--bind", "tcp://127.0.0.1:*", "--data-dir", str(data_dir), "--workers", "4"
    )

    assert result.returncode == 2
    assert "--workers 2" in result.stderr


def test_check_summarizes_directory(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    server = DurableServer(data_dir, ("--workers", "2"))
    server.start()
    credit(server.endpoint, 4, "c")
    assert server.process is not None
    server.process.terminate()

    result = run_zmqbalance("check", str(data_dir))

    assert result.returncode == 0
    assert "format 1, scale 6, 2 workers, partition crc32" in result.stdout
    assert "total: 1 accounts, balance 4.000000" in result.stdout
    assert result.stdout.rstrip().endswith("OK")


def test_check_rejects_missing_directory(tmp_path: Path) -> None:
    result = run_zmqbalance("check", str(tmp_path / "nothing"))

    assert result.returncode == 1
    assert "not a zmqbalance data directory" in result.stdout


def test_second_server_on_same_directory_refused(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    server = DurableServer(data_dir, ("--workers", "2"))
    first = server.start()

    second = run_zmqbalance(
        "serve", "--bind", "tcp://127.0.0.1:*", "--data-dir", str(data_dir), "--workers", "2"
    )
    check = run_zmqbalance("check", str(data_dir))

    assert second.returncode == 2
    assert f"in use by another process (pid {first.pid})" in second.stderr
    assert check.returncode == 1
    assert "in use by another process" in check.stdout


def test_refused_change_replays_with_flag(tmp_path: Path) -> None:
    server = DurableServer(tmp_path / "data", ("--workers", "1"))
    server.start()
    request = {"op": "sub_funds", "account": "poor", "amount": 5, "rid": "refused-1"}
    first = raw_request(server.endpoint, request)
    server.kill()
    server.start()
    again = raw_request(server.endpoint, request)

    assert first["error"] == "insufficient_funds"
    assert "replay" not in first
    assert again["error"] == "insufficient_funds"
    assert again["replay"] is True
    assert again["message"] == first["message"]


def raw_request(endpoint: str, message: dict[str, Any]) -> dict[str, Any]:
    return request(zmq.Context.instance(), endpoint, message)


def test_repartition_keeps_balances_and_rids(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    server = DurableServer(data_dir, ("--workers", "2", "--snapshot-bytes", "3000"))
    server.start()
    with Client(server.endpoint) as client:
        for number in range(60):
            client.plus_funds(f"move-{number % 12}", f"{number}.25", rid=f"move-rid-{number}")
    assert server.process is not None
    server.process.terminate()

    moved = run_zmqbalance("repartition", str(data_dir), "--workers", "3")
    refused = run_zmqbalance(
        "serve", "--bind", "tcp://127.0.0.1:*", "--data-dir", str(data_dir), "--workers", "2"
    )
    server.args = ("--workers", "3")
    server.start()
    with Client(server.endpoint) as client:
        totals = {f"move-{n}": client.balance(f"move-{n}") for n in range(12)}
        replayed = client.plus_funds("move-5", "41.25", rid="move-rid-41")
        after = client.balance("move-5")

    assert moved.returncode == 0, moved.stdout
    assert "2 workers -> 3 workers, 12 accounts" in moved.stdout
    assert list(tmp_path.glob("data.before-repartition-*"))
    assert refused.returncode == 2
    assert "--workers 3" in refused.stderr
    assert totals["move-0"].balance_text == "121.250000"  # 0, 12, 24, 36, 48, each plus 0.25
    assert all(reply.count == 5 for reply in totals.values())
    assert replayed.replay is True
    assert after.count == 5


def test_repartition_refused_while_server_runs(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    server = DurableServer(data_dir, ("--workers", "2"))
    server.start()

    result = run_zmqbalance("repartition", str(data_dir), "--workers", "4")

    assert result.returncode == 1
    assert "in use by another process" in result.stdout
