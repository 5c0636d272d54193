"""Reading timestamps: wall-clock time once NTP (or the host) set it, device ticks before.

A board boots with its clock at the epoch; until ntptime has set it, readings carry seconds
since boot and say so ("unsynced": true, as the Pi marks readings while its kernel clock is
unsynchronised). On a host (the unix port) the system clock is kept by the host, so it
counts as set.
"""

import sys

from gateway.core import compat

HOST = sys.platform in ("linux", "darwin")


class Clock:
    def __init__(self, server=None):
        self.server = server
        self.synced = HOST
        self.boot = compat.ticks_ms()
        self.elapsed_ms = 0
        self._last = self.boot
        self.attempts = 0

    def now(self):
        """(ts in seconds, synced): Unix time when synced, else seconds since boot."""
        if self.synced:
            return round(compat.time_seconds(), 6), True
        ticks = compat.ticks_ms()
        self.elapsed_ms += compat.ticks_diff(ticks, self._last)
        self._last = ticks
        return self.elapsed_ms / 1000, False

    def sync(self):
        """One NTP attempt (a board with network); True once the clock is set."""
        if self.synced or not self.server:
            return self.synced
        self.attempts += 1
        try:
            import ntptime

            ntptime.host = self.server
            ntptime.settime()
        except (ImportError, OSError, OverflowError, IndexError):
            return False
        self.synced = True
        return True
