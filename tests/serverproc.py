"""Run ``zmqbalance serve`` as a real child process for tests, and stop it by its pid."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

START_TIMEOUT = 20.0  # seconds for the server to log its bound address
_STARTED = re.compile(r"zmqbalance started on (tcp://\S+)")


class ServerProcess:
    """A ``zmqbalance serve`` child bound to a free loopback port, with its log kept.

    The server keeps its balances in memory unless ``args`` name ``--data-dir``.
    """

    def __init__(self, args: Sequence[str] = (), *, env: dict[str, str] | None = None) -> None:
        self.args = list(args)
        self.env = {**os.environ, **(env or {})}
        self.process: subprocess.Popen[str] | None = None
        self.endpoint = ""
        self.log_lines: list[str] = []
        self._reader: threading.Thread | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def log(self) -> str:
        return "".join(self.log_lines)

    def start(self, bind: str = "tcp://127.0.0.1:*") -> ServerProcess:
        storage = [] if {"--data-dir", "--in-memory"} & set(self.args) else ["--in-memory"]
        command = [
            sys.executable,
            "-m",
            "zmqbalance",
            "serve",
            "--bind",
            bind,
            *storage,
            *self.args,
        ]
        self.process = subprocess.Popen(
            command,
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
            text=True,
            env=self.env,
            cwd=Path(__file__).resolve().parent.parent,
        )
        self._reader = threading.Thread(target=self._read_log, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            match = _STARTED.search(self.log)
            if match:
                self.endpoint = match.group(1)
                return self
            if self.process.poll() is not None:
                break
            time.sleep(0.02)
        self.kill()
        raise RuntimeError(f"server did not start: {command}\n{self.log}")

    def _read_log(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        for line in self.process.stderr:
            self.log_lines.append(line)

    def interrupt(self, timeout: float = 30.0) -> int:
        """Send SIGINT, as Ctrl-C in a terminal does, and return the exit status."""
        return self._signal(signal.SIGINT, timeout)

    def terminate(self, timeout: float = 30.0) -> int:
        """Send SIGTERM and return the exit status."""
        return self._signal(signal.SIGTERM, timeout)

    def kill(self) -> int:
        """Send SIGKILL and return the exit status."""
        return self._signal(signal.SIGKILL, 10.0)

    def _signal(self, signum: int, timeout: float) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            os.kill(self.process.pid, signum)
        status = self.process.wait(timeout)
        if self._reader is not None:
            self._reader.join(5)
        if self.process.stderr is not None:
            self.process.stderr.close()
        return status
