"""A logger wrapper that lets a repeated message through at most once per interval."""

from __future__ import annotations

import logging
import time


class RateLimitedLog:
    """Log at most one message per ``interval`` seconds for each key, with a count of the rest."""

    def __init__(self, logger: logging.Logger, interval: float = 5.0) -> None:
        self.logger = logger
        self.interval = interval
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def warning(self, key: str, message: str, *args: object) -> None:
        self.log(logging.WARNING, key, message, *args)

    def exception(self, key: str, message: str, *args: object) -> None:
        """Log at ERROR with the traceback of the exception being handled."""
        self.log(logging.ERROR, key, message, *args, exc_info=True)

    def log(
        self, level: int, key: str, message: str, *args: object, exc_info: bool = False
    ) -> None:
        now = time.monotonic()
        if now - self._last.get(key, -self.interval) < self.interval:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return
        suppressed = self._suppressed.pop(key, 0)
        self._last[key] = now
        if suppressed:
            message += " (%d similar messages suppressed)"
            args = (*args, suppressed)
        self.logger.log(level, message, *args, exc_info=exc_info)
