import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.serverproc import ServerProcess
from tests.test_client import unused_endpoint

ROOT = Path(__file__).resolve().parent.parent
ServerFactory = Callable[..., ServerProcess]


def zmqbalance(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the command line in a child process and return its exit status and output."""
    return subprocess.run(
        [sys.executable, "-m", "zmqbalance", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_cli_changes_and_balance(server: ServerProcess) -> None:
    connect = ("--connect", server.endpoint)
    credit = zmqbalance("plus-funds", "7", "12.50", *connect)
    debit = zmqbalance("sub-funds", "7", "2.25", *connect)
    balance = zmqbalance("balance", "7", *connect)

    assert credit.returncode == 0
    assert credit.stdout == "12.500000 1\n"
    assert debit.returncode == 0
    assert debit.stdout == "10.250000 2\n"
    assert balance.returncode == 0
    assert balance.stdout == "10.250000 2\n"
    assert balance.stderr == ""


def test_cli_ping(server: ServerProcess) -> None:
    result = zmqbalance("ping", "--connect", server.endpoint)
    assert result.returncode == 0
    assert result.stdout == "pong: 4 workers, scale 6, partition crc32\n"


def test_cli_refused_debit(server: ServerProcess) -> None:
    result = zmqbalance("sub-funds", "7", "1", "--connect", server.endpoint)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith("error: insufficient_funds: ")
    assert "account='7'" in result.stderr


def test_cli_invalid_amount(server: ServerProcess) -> None:
    result = zmqbalance("plus-funds", "7", "ten", "--connect", server.endpoint)
    assert result.returncode == 1
    assert "error: invalid_amount: " in result.stderr
    assert "'ten'" in result.stderr


def test_cli_rid_replayed(server: ServerProcess) -> None:
    connect = ("--connect", server.endpoint)
    zmqbalance("plus-funds", "7", "1", "--rid", "once", *connect)
    again = zmqbalance("plus-funds", "7", "1", "--rid", "once", *connect)
    assert again.returncode == 0
    assert again.stdout == "1.000000 1\n"


def test_cli_timed_out() -> None:
    result = zmqbalance(
        "ping", "--connect", unused_endpoint(), "--timeout", "0.2", "--retries", "0"
    )
    assert result.returncode == 1
    assert "error: timed_out: " in result.stderr


def test_serve_address_in_use(server: ServerProcess) -> None:
    result = zmqbalance("serve", "--bind", server.endpoint, "--workers", "1")
    assert result.returncode == 2
    assert f"cannot bind the front end to {server.endpoint}" in result.stderr
    assert "Address already in use" in result.stderr


def test_serve_bad_workers() -> None:
    result = zmqbalance("serve", "--bind", "tcp://127.0.0.1:*", "--workers", "0")
    assert result.returncode == 2
    assert "workers must be at least 1, got 0" in result.stderr


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_serve_stops_on_signal(server_factory: ServerFactory, signum: signal.Signals) -> None:
    server = server_factory("--workers", "3", "--scale", "4")
    stop = server.interrupt if signum == signal.SIGINT else server.terminate
    assert stop() == 0
    assert f"zmqbalance started on {server.endpoint} with 3 workers, scale 4" in server.log
    assert f"received {signum.name}; stopping" in server.log
    assert server.log.rstrip().endswith("zmqbalance stopped")


@pytest.mark.parametrize(
    ("option", "value", "fragment"),
    [
        ("--timeout", "0", "timeout must be"),
        ("--timeout", "nan", "timeout must be"),
        ("--timeout", "inf", "timeout must be"),
        ("--retries", "-1", "retries must be"),
        ("--connect", "nonsense", "cannot connect to 'nonsense'"),
    ],
)
def test_cli_bad_client_option(option: str, value: str, fragment: str) -> None:
    result = zmqbalance("balance", "x", option, value)

    assert result.returncode == 2
    assert fragment in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_in_memory_with_data_dir_rejected(tmp_path: Path) -> None:
    result = zmqbalance(
        "serve", "--bind", "tcp://127.0.0.1:*", "--in-memory", "--data-dir", str(tmp_path)
    )

    assert result.returncode == 2
    assert "--in-memory keeps no data" in result.stderr
