"""The line gateway: framing and parsing without sockets, then a real server over TCP."""

from __future__ import annotations

import shutil
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import ServerFactory
from tests.gatewayproc import GATEWAY_ARGS, LineConnection, gateway_address
from tests.serverproc import ServerProcess
from zmqbalance import Client
from zmqbalance.gateways.base import parse_tcp_address
from zmqbalance.gateways.line import (
    MAX_LINE_BYTES,
    TOO_LONG,
    LineError,
    LineFramer,
    format_reply,
    parse_command,
)
from zmqbalance.server import Config, Server

ROOT = Path(__file__).resolve().parent.parent
WORKLOAD_TIMEOUT = 120.0  # seconds; only a bound against hangs, the run takes a few seconds


@pytest.fixture
def gateways(server_factory: ServerFactory) -> ServerProcess:
    return server_factory(*GATEWAY_ARGS)


@pytest.fixture
def line_address(gateways: ServerProcess) -> tuple[str, int]:
    return gateway_address(gateways, "line")


# Framing and parsing, no sockets.


def test_framer_joins_split_line() -> None:
    framer = LineFramer()
    assert framer.feed(b"BALA") == []
    assert framer.feed(b"NCE 1") == []
    assert framer.feed(b"\n") == [b"BALANCE 1"]


def test_framer_splits_merged_lines() -> None:
    framer = LineFramer()
    assert framer.feed(b"BALANCE 1\nBALANCE 2\nBAL") == [b"BALANCE 1", b"BALANCE 2"]
    assert framer.feed(b"ANCE 3\n") == [b"BALANCE 3"]


def test_framer_strips_crlf() -> None:
    framer = LineFramer()
    assert framer.feed(b"BALANCE 1\r\nBALANCE 2\r") == [b"BALANCE 1"]
    assert framer.feed(b"\n") == [b"BALANCE 2"]


def test_framer_byte_at_a_time() -> None:
    framer = LineFramer()
    events = []
    for byte in b"PLUS_FUNDS 1 2\r\nBALANCE 1\n":
        events += framer.feed(bytes([byte]))
    assert events == [b"PLUS_FUNDS 1 2", b"BALANCE 1"]


def test_framer_reports_long_line_once() -> None:
    framer = LineFramer(max_bytes=10)
    assert framer.feed(b"x" * 11) == []  # one byte over is room for a CR
    assert framer.feed(b"x") == [TOO_LONG]
    assert framer.feed(b"x" * 100) == []
    assert framer.feed(b"x\nBALANCE 1\n") == [b"BALANCE 1"]
    assert framer.pending == 0


def test_framer_limit_excludes_terminator() -> None:
    framer = LineFramer(max_bytes=10)
    assert framer.feed(b"y" * 10 + b"\r\n") == [b"y" * 10]
    assert framer.feed(b"y" * 11 + b"\n") == [TOO_LONG]
    assert framer.feed(b"y" * 10 + b"\r\r\n") == [TOO_LONG]


def test_parse_command_any_case() -> None:
    expected = {"op": "plus_funds", "account": "7", "amount": "0.1"}
    assert parse_command(b"PLUS_FUNDS 7 0.1") == expected
    assert parse_command(b"plus_funds 7 0.1") == expected
    assert parse_command(b"Plus_Funds\t7   0.1 ") == expected
    assert parse_command(b"balance 0") == {"op": "balance", "account": "0"}
    assert parse_command(b"sub_funds a b") == {"op": "sub_funds", "account": "a", "amount": "b"}


def test_parse_command_blank_line() -> None:
    assert parse_command(b"") is None
    assert parse_command(b" \t ") is None


def test_parse_command_errors() -> None:
    unknown = parse_command(b"WITHDRAW 1 2")
    assert isinstance(unknown, LineError)
    assert unknown.code == "unknown_op"
    assert "'WITHDRAW'" in unknown.message

    too_few = parse_command(b"PLUS_FUNDS 1")
    assert isinstance(too_few, LineError)
    assert too_few.code == "bad_request"
    assert "PLUS_FUNDS <account> <amount>" in too_few.message

    too_many = parse_command(b"BALANCE 1 2")
    assert isinstance(too_many, LineError)
    assert too_many.code == "bad_request"

    not_utf8 = parse_command(b"BALANCE \xff")
    assert isinstance(not_utf8, LineError)
    assert not_utf8.code == "bad_request"


def test_format_reply_lines() -> None:
    success = {"ok": True, "account": "1", "balance": "0.000000", "count": 2000}
    assert format_reply(success) == b"0.000000 2000\n"
    failure = {"ok": False, "error": "invalid_amount", "message": "amount\n'x' is\r\nbad"}
    assert format_reply(failure) == b"ERR invalid_amount amount 'x' is bad\n"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("tcp://127.0.0.1:7071", ("127.0.0.1", 7071)),
        ("127.0.0.1:0", ("127.0.0.1", 0)),
        ("localhost:7080", ("localhost", 7080)),
        ("[::1]:7071", ("::1", 7071)),
    ],
)
def test_parse_tcp_address_valid(text: str, expected: tuple[str, int]) -> None:
    assert parse_tcp_address(text) == expected


@pytest.mark.parametrize("text", ["127.0.0.1", ":7071", "127.0.0.1:", "127.0.0.1:x", "h:70000"])
def test_parse_tcp_address_invalid(text: str) -> None:
    with pytest.raises(ValueError, match="gateway address"):
        parse_tcp_address(text)


# Configuration, in process.


def test_config_rejects_bad_gateway_address() -> None:
    with pytest.raises(ValueError, match="invalid gateway address"):
        Config(line_bind="7071")


def test_server_start_fails_on_taken_port() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = Server(Config(bind="tcp://127.0.0.1:*", line_bind=f"127.0.0.1:{port}"))
        with pytest.raises(OSError, match="cannot start the line gateway"):
            server.start()
    assert server.broker is not None
    assert not server.broker.is_alive()


def test_in_process_gateway_stops_with_open_connection(
    engine_factory: Callable[..., Server],
) -> None:
    engine = engine_factory(line_bind="127.0.0.1:0")
    gateway = engine.gateways[0]
    assert gateway.address is not None
    with LineConnection(gateway.address) as connection:
        assert connection.command("PLUS_FUNDS 1 5") == "5.000000 1"
        engine.stop()
        assert connection.reader.readline() == b""  # the gateway closed the connection
    assert not gateway.is_alive()


# A real server process over TCP.


def run_line_workload(address: tuple[str, int], clients: int, rounds: int) -> list[str]:
    """Run the balance workload, one connection per thread; return the unexpected replies."""
    problems: list[str] = []
    barrier = threading.Barrier(clients, timeout=WORKLOAD_TIMEOUT)

    def client() -> None:
        with LineConnection(address) as connection:
            barrier.wait()
            for _ in range(rounds):
                for account in (0, 1, 2):
                    for verb in ("PLUS_FUNDS", "SUB_FUNDS"):
                        reply = connection.command(f"{verb} {account} 1")
                        if reply.startswith("ERR"):
                            problems.append(reply)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WORKLOAD_TIMEOUT)
        assert not thread.is_alive(), "a workload client did not finish"
    return problems


def test_line_ten_client_workload(gateways: ServerProcess, line_address: tuple[str, int]) -> None:
    assert run_line_workload(line_address, clients=10, rounds=100) == []

    with LineConnection(line_address) as connection:
        for account in (0, 1, 2):
            assert connection.command(f"BALANCE {account}") == "0.000000 2000"
    with Client(gateways.endpoint, timeout=5) as client:
        for account in (0, 1, 2):
            assert str(client.balance(account)) == "0.000000 2000"


def test_line_decimal_amounts_exact(line_address: tuple[str, int]) -> None:
    with LineConnection(line_address) as connection:
        assert connection.command("PLUS_FUNDS 7 0.1") == "0.100000 1"
        assert connection.command("PLUS_FUNDS 7 0.2") == "0.300000 2"
        assert connection.command("SUB_FUNDS 7 0.3") == "0.000000 3"
        assert connection.command("BALANCE 7") == "0.000000 3"


def test_line_large_balance_printed_plainly(line_address: tuple[str, int]) -> None:
    with LineConnection(line_address) as connection:
        assert connection.command("PLUS_FUNDS 8 100000000") == "100000000.000000 1"
        assert connection.command("BALANCE 8") == "100000000.000000 1"


def test_line_lowercase_commands(line_address: tuple[str, int]) -> None:
    with LineConnection(line_address) as connection:
        assert connection.command("plus_funds lc 3") == "3.000000 1"
        assert connection.command("sub_funds lc 1") == "2.000000 2"
        assert connection.command("balance lc") == "2.000000 2"
        assert connection.command("Balance lc") == "2.000000 2"


def test_line_bad_commands_keep_connection(line_address: tuple[str, int]) -> None:
    bad_commands = {
        "WITHDRAW 1 5": "ERR unknown_op ",
        "PLUS_FUNDS 1": "ERR bad_request ",
        "BALANCE": "ERR bad_request ",
        "PLUS_FUNDS bad -5": "ERR invalid_amount ",
        "PLUS_FUNDS bad 1e3": "ERR invalid_amount ",
        "PLUS_FUNDS bad 0.0000001": "ERR invalid_amount ",
        "SUB_FUNDS bad 1": "ERR insufficient_funds ",
        "BALANCE " + "a" * 129: "ERR invalid_account ",
    }
    with LineConnection(line_address) as connection:
        for command, prefix in bad_commands.items():
            assert connection.command(command).startswith(prefix), command
        connection.send(b"BALANCE \xff\xfe\n")
        assert connection.read_line().startswith("ERR bad_request ")
        assert connection.command("BALANCE bad") == "0.000000 0"


def test_line_blank_lines_get_no_reply(line_address: tuple[str, int]) -> None:
    with LineConnection(line_address) as connection:
        connection.send(b"\n\r\n   \nBALANCE blank\n")
        assert connection.read_line() == "0.000000 0"


def test_line_command_split_across_packets(line_address: tuple[str, int]) -> None:
    with LineConnection(line_address) as connection:
        for piece in (b"PLUS_", b"FUNDS sp", b"lit 2", b".5", b"\r", b"\n"):
            connection.send(piece)
            time.sleep(0.05)  # lets each piece leave as its own TCP segment
        assert connection.read_line() == "2.500000 1"


def test_line_commands_merged_in_one_packet(line_address: tuple[str, int]) -> None:
    with LineConnection(line_address) as connection:
        connection.send(
            b"PLUS_FUNDS merged 1\nPLUS_FUNDS merged 2\r\nSUB_FUNDS merged 0.5\nBALANCE merged\n"
        )
        replies = [connection.read_line() for _ in range(4)]
    assert replies == ["1.000000 1", "3.000000 2", "2.500000 3", "2.500000 3"]


def test_line_crlf_and_lf_mixed(line_address: tuple[str, int]) -> None:
    with LineConnection(line_address) as connection:
        connection.send(b"PLUS_FUNDS crlf 1\r\n")
        assert connection.read_line() == "1.000000 1"
        connection.send(b"PLUS_FUNDS crlf 1\n")
        assert connection.read_line() == "2.000000 2"


def test_line_byte_at_a_time(line_address: tuple[str, int]) -> None:
    with LineConnection(line_address) as connection:
        for byte in b"PLUS_FUNDS bytes 4\r\nBALANCE bytes\n":
            connection.send(bytes([byte]))
        assert connection.read_line() == "4.000000 1"
        assert connection.read_line() == "4.000000 1"


def test_line_too_long_then_usable(line_address: tuple[str, int]) -> None:
    with LineConnection(line_address) as connection:
        connection.send(b"PLUS_FUNDS long " + b"9" * (MAX_LINE_BYTES * 50))
        reply = connection.read_line()  # sent before the line even ends
        assert reply.startswith("ERR too_large ")
        assert str(MAX_LINE_BYTES) in reply
        connection.send(b"9" * 1000 + b"\nBALANCE long\n")
        assert connection.read_line() == "0.000000 0"
        assert connection.command("PLUS_FUNDS long 1") == "1.000000 1"


def test_line_disconnect_mid_line(line_address: tuple[str, int]) -> None:
    with LineConnection(line_address) as connection:
        connection.send(b"PLUS_FUNDS cut 10")  # no newline: must not be run

    reset = socket.create_connection(line_address, timeout=5)
    reset.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    reset.sendall(b"PLUS_FUNDS cut 20")
    reset.close()  # linger 0 sends RST instead of FIN

    with LineConnection(line_address) as connection:
        assert connection.command("BALANCE cut") == "0.000000 0"
        assert connection.command("PLUS_FUNDS cut 1") == "1.000000 1"


def test_line_disconnect_before_reply(line_address: tuple[str, int]) -> None:
    with LineConnection(line_address) as connection:
        connection.send(b"PLUS_FUNDS gone 1\n" * 50)  # the replies go to a closed socket

    # Commands read before the gateway noticed the disconnect are applied, the rest are not,
    # and every one that was applied was applied whole.
    with LineConnection(line_address) as connection:
        balance, count = connection.command("BALANCE gone").split()
        assert 0 <= int(count) <= 50
        assert balance == f"{count}.000000"
        assert connection.command("PLUS_FUNDS gone2 1") == "1.000000 1"


def test_line_300_concurrent_connections(line_address: tuple[str, int]) -> None:
    connections: list[LineConnection] = []
    try:
        for _ in range(300):
            connections.append(LineConnection(line_address))
        for connection in connections:
            connection.send(b"PLUS_FUNDS many 1\n")
        replies = [connection.read_line() for connection in connections]
    finally:
        for connection in connections:
            connection.close()

    assert all(not reply.startswith("ERR") for reply in replies), replies
    counts = sorted(int(reply.split()[1]) for reply in replies)
    assert counts == list(range(1, 301))
    with LineConnection(line_address) as connection:
        assert connection.command("BALANCE many") == "300.000000 300"


def test_line_gateway_stops_cleanly(gateways: ServerProcess, line_address: tuple[str, int]) -> None:
    with LineConnection(line_address) as connection:
        assert connection.command("PLUS_FUNDS stop 1") == "1.000000 1"
        assert gateways.terminate() == 0
        assert connection.reader.readline() == b""
    assert "line gateway stopped" in gateways.log
    assert "http gateway stopped" in gateways.log
    assert gateways.log.index("line gateway stopped") < gateways.log.index("zmqbalance stopped")


@pytest.mark.skipif(shutil.which("ruby") is None, reason="ruby is not installed")
def test_ruby_old_line_client(line_address: tuple[str, int]) -> None:
    host, port = line_address
    completed = subprocess.run(
        ["ruby", str(ROOT / "clients/ruby/old_line_client.rb"), host, str(port), "10", "100"],
        capture_output=True,
        text=True,
        timeout=WORKLOAD_TIMEOUT,
        stdin=subprocess.DEVNULL,
    )
    assert completed.returncode == 0, completed.stderr
    lines = completed.stdout.splitlines()
    for account in (0, 1, 2):
        assert f"account {account}: 0.000000 2000" in lines, completed.stdout
    assert any(line.startswith("total: 6000 changes in ") for line in lines), completed.stdout
