"""Log lines for repeated problems: the first of a kind at once, then one per interval."""

from __future__ import annotations

import logging
import time
from typing import Any


class ThrottledLog:
    """Logs a kind of problem at most once per interval and says how many it held back.

    A device spewing garbage or an absent UDP receiver must not flood the log, but the
    first occurrence is logged at once and the count of the rest is never lost.
    """

    def __init__(self, logger: logging.Logger, interval: float = 10.0):
        self.logger = logger
        self.interval = interval
        self._last: dict[str, float] = {}
        self._held_back: dict[str, int] = {}

    def warning(self, kind: str, message: str, *args: Any, exc_info: bool = False) -> None:
        now = time.monotonic()
        last = self._last.get(kind)
        if last is not None and now - last < self.interval:
            self._held_back[kind] = self._held_back.get(kind, 0) + 1
            return
        self._last[kind] = now
        held_back = self._held_back.pop(kind, 0)
        if held_back:
            message += " (and %d more since the last report)"
            args += (held_back,)
        self.logger.warning(message, *args, exc_info=exc_info)
