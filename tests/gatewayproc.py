"""Helpers for gateway tests: start a server with both gateways and talk the line protocol."""

from __future__ import annotations

import re
import socket
import time

from tests.serverproc import ServerProcess

GATEWAY_ARGS = ("--workers", "4", "--line-bind", "127.0.0.1:0", "--http-bind", "127.0.0.1:0")
LOG_TIMEOUT = 10.0  # seconds for a gateway's "listening on" line to appear in the log
REPLY_TIMEOUT = 10.0  # seconds for any one reply line


def gateway_address(server: ServerProcess, kind: str) -> tuple[str, int]:
    """Return the host and port that the ``kind`` gateway logged as its listening address."""
    pattern = re.compile(rf"{kind} gateway listening on (\S+):(\d+)")
    deadline = time.monotonic() + LOG_TIMEOUT
    while time.monotonic() < deadline:
        match = pattern.search(server.log)
        if match:
            return match.group(1), int(match.group(2))
        time.sleep(0.02)
    raise AssertionError(f"no '{kind} gateway listening on' line in the log:\n{server.log}")


class LineConnection:
    """One TCP connection to the line gateway; every read is bounded by REPLY_TIMEOUT."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.socket = socket.create_connection(address, timeout=REPLY_TIMEOUT)
        self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reader = self.socket.makefile("rb")

    def __enter__(self) -> LineConnection:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self.reader.close()
        self.socket.close()

    def send(self, data: bytes) -> None:
        self.socket.sendall(data)

    def read_line(self) -> str:
        line = self.reader.readline()
        assert line.endswith(b"\n"), f"connection closed or cut a reply short: {line!r}"
        return line.decode().rstrip("\n")

    def command(self, text: str) -> str:
        self.send(text.encode() + b"\n")
        return self.read_line()
