"""Server processes for the bench: free ports, start and stop by pid, CPU time by pid.

Every server the bench starts is a child process that it stops by its own pid: SIGTERM
first, SIGKILL if it is still alive after `STOP_TIMEOUT_S`. Nothing here looks up or
signals a process by name.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
STOP_TIMEOUT_S = 10.0  # a durable server may flush its journal before it exits
READY_TIMEOUT_S = 15.0  # a Python server imports pyzmq and msgpack before it binds
READY_POLL_S = 0.02
CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


class ServerStartError(RuntimeError):
    """A server process exited, or did not reply to its readiness probe within `READY_TIMEOUT_S`."""


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def process_cpu_clock(pid: int) -> int:
    """Return the clock id of process `pid`'s CPU-time clock, as glibc's clock_getcpuclockid."""
    cpuclock_sched = 2  # Linux: CPU time of all threads, including threads that have exited
    return ((~pid) << 3) | cpuclock_sched


def cpu_seconds(pid: int) -> float:
    """Return user + system CPU seconds of all threads of process `pid`.

    Reads the process's CPU-time clock, which counts in nanoseconds. Where that fails it reads
    fields 14 and 15 (utime, stime) of /proc/PID/stat, which count in clock ticks (usually
    10 ms). The command name in field 2 may contain spaces and parentheses, so the fields
    are counted from the last ')'.
    """
    try:
        return time.clock_gettime(process_cpu_clock(pid))
    except OSError:
        pass
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / CLOCK_TICKS_PER_S


class ServerProcess:
    """A child server process, its log file, and a way to stop it by pid."""

    def __init__(self, name: str, argv: Sequence[str], log_path: Path, env: dict[str, str]):
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self._log_file = log_path.open("wb")
        self.proc = subprocess.Popen(
            self.argv, stdout=self._log_file, stderr=subprocess.STDOUT, env=env
        )
        self.pid = self.proc.pid
        log.debug("started %s pid=%d argv=%s", name, self.pid, self.argv)

    def __repr__(self) -> str:
        state = "running" if self.proc.poll() is None else f"exited {self.proc.returncode}"
        return f"<ServerProcess {self.name} pid={self.pid} {state}>"

    def wait_ready(self, probe: Callable[[], bool]) -> None:
        """Call `probe` until it returns True; raise if the process exits or time runs out."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerStartError(
                    f"{self.name} exited with code {self.proc.returncode} before it was ready; "
                    f"its output: {self.tail()!r}"
                )
            if probe():
                return
            time.sleep(READY_POLL_S)
        raise ServerStartError(
            f"{self.name} did not reply within {READY_TIMEOUT_S} s; its output: {self.tail()!r}"
        )

    def tail(self, max_bytes: int = 2000) -> str:
        self._log_file.flush()
        data = self.log_path.read_bytes()[-max_bytes:]
        return data.decode("utf-8", "replace")

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)

    def stop(self) -> int | None:
        """Send SIGTERM to this pid, then SIGKILL after `STOP_TIMEOUT_S`; return the exit code."""
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                log.warning("%s pid=%d ignored SIGTERM; sending SIGKILL", self.name, self.pid)
                os.kill(self.pid, signal.SIGKILL)
                self.proc.wait(timeout=STOP_TIMEOUT_S)
        self._log_file.close()
        log.debug("stopped %s pid=%d code=%s", self.name, self.pid, self.proc.returncode)
        return self.proc.returncode
