"""Test-only hooks: crash the process at named points, or skip a durability step.

Everything here is inert unless ``ZMQBALANCE_TEST_HOOKS=1`` is set in the environment when the
process starts. The hooks exist so tests can prove two things: that a crash at each point of a
commit or snapshot loses and doubles nothing, and that the crash tests would notice if a
durability step were missing.

- ``ZMQBALANCE_CRASH_AT=POINT:N`` kills the process with SIGKILL the N-th time any worker
  reaches POINT (``before_journal_write``, ``after_fsync``, ``during_snapshot``,
  ``after_snapshot_rename``).
- ``ZMQBALANCE_CRASH_MODE=power_cut`` first drops whatever the journal wrote after its last
  fsync, as a power cut would, then kills the process.
- ``ZMQBALANCE_TEST_SKIP=fsync,journal_write`` skips those steps.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Protocol

log = logging.getLogger(__name__)

ENABLED = os.environ.get("ZMQBALANCE_TEST_HOOKS") == "1"
CRASH_POINTS = ("before_journal_write", "after_fsync", "during_snapshot", "after_snapshot_rename")


class PowerCuttable(Protocol):
    def drop_unsynced(self) -> None: ...


def _parse_crash_at(text: str) -> tuple[str, int] | None:
    if not text:
        return None
    point, _, count = text.partition(":")
    if point not in CRASH_POINTS:
        raise ValueError(f"unknown crash point {point!r}; expected one of {CRASH_POINTS}")
    return point, int(count or "1")


_crash_at = _parse_crash_at(os.environ.get("ZMQBALANCE_CRASH_AT", "")) if ENABLED else None
_crash_mode = os.environ.get("ZMQBALANCE_CRASH_MODE", "kill")
_skipped = (
    frozenset(os.environ.get("ZMQBALANCE_TEST_SKIP", "").split(",")) if ENABLED else frozenset()
)
_reached: dict[str, int] = {}
_lock = threading.Lock()  # guards the test-only counters, never a balance


def skipped(step: str) -> bool:
    """Tell whether a test asked to skip ``step``."""
    return step in _skipped


def crash_point(point: str, journal: PowerCuttable | None = None) -> None:
    """Kill the process here if a test asked for a crash at this point and count."""
    if _crash_at is None or _crash_at[0] != point:
        return
    with _lock:
        _reached[point] = _reached.get(point, 0) + 1
        if _reached[point] != _crash_at[1]:
            return
        log.warning("test hook: crashing at %s (time %d)", point, _crash_at[1])
        if _crash_mode == "power_cut" and journal is not None:
            journal.drop_unsynced()
        os.kill(os.getpid(), signal.SIGKILL)
