"""Time on a board without a real-time clock: a store clock that never jumps, jumps noticed.

A Raspberry Pi boots with the time it shut down at (fake-hwclock) and jumps when NTP
answers: forward by days after a long power-off, sometimes backward. Ages (the buffer's
max_age) therefore run on StoreTime, which moves only with elapsed time; ClockWatch says
when the wall clock jumps (once per jump, with its size) and whether the kernel considers
it synchronised (adjtimex(2)'s STA_UNSYNC).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import time
from typing import Any, Callable

log = logging.getLogger("gateway.clock")

STA_UNSYNC = 0x0040  # adjtimex(2): the clock is not synchronised
TIME_ERROR = 5  # adjtimex(2)'s return value while unsynchronised
JUMP_THRESHOLD = 2.0  # seconds the wall clock may drift from the monotonic one per check
CHECK_INTERVAL = 1.0  # how often ClockWatch looks
BOOT_ID_PATH = "/proc/sys/kernel/random/boot_id"
KEYS = ("store", "monotonic", "wall")  # of what StoreTime.saved() returns, besides "boot"


class _Timex(ctypes.Structure):
    """struct timex of <sys/timex.h> (longs and ints; the tail is padding)."""

    _fields_ = [
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("constant", ctypes.c_long),
        ("precision", ctypes.c_long),
        ("tolerance", ctypes.c_long),
        ("time_sec", ctypes.c_long),
        ("time_usec", ctypes.c_long),
        ("tick", ctypes.c_long),
        ("ppsfreq", ctypes.c_long),
        ("jitter", ctypes.c_long),
        ("shift", ctypes.c_int),
        ("stabil", ctypes.c_long),
        ("jitcnt", ctypes.c_long),
        ("calcnt", ctypes.c_long),
        ("errcnt", ctypes.c_long),
        ("stbcnt", ctypes.c_long),
        ("tai", ctypes.c_int),
        ("padding", ctypes.c_int * 11),
    ]


_adjtimex: Any = None


def kernel_clock_synced() -> bool | None:
    """Whether the kernel says its clock is synchronised (NTP, chrony, timesyncd): a
    read-only adjtimex(2). None where that cannot be asked (not Linux, or denied)."""
    global _adjtimex
    if _adjtimex is None:
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            _adjtimex = libc.adjtimex
        except (OSError, AttributeError):
            _adjtimex = False
    if _adjtimex is False:
        return None
    timex = _Timex()  # modes = 0: read only, needs no privilege
    state = _adjtimex(ctypes.byref(timex))
    if state < 0:
        return None
    return state != TIME_ERROR and not timex.status & STA_UNSYNC


def boot_id() -> str | None:
    """This boot's id: CLOCK_MONOTONIC readings compare only within one boot."""
    try:
        with open(BOOT_ID_PATH) as source:
            return source.read().strip() or None
    except OSError:
        return None


class StoreTime:
    """Seconds on a timeline that moves with elapsed time only, continued across restarts.

    Within a run it is the start plus the monotonic clock's progress, so a wall-clock jump
    changes nothing. A run resumes (resume()) from what saved() returned in the previous
    run, kept with the buffer, plus the time the gateway was down: measured by CLOCK_MONOTONIC
    when the machine did not reboot (exact, whatever the wall clock did), else by the wall
    clock, never negative (a clock set back does not make rows younger; a board that was
    off longer than its wall clock knows keeps its rows longer rather than dropping them).
    A first run starts at the wall clock's time, so stored times read as Unix times.
    """

    def __init__(
        self,
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        boot: Callable[[], str | None] = boot_id,
    ):
        self.wall = wall
        self.monotonic = monotonic
        self.boot = boot()
        self._base = wall() - monotonic()

    def resume(self, saved: dict[str, Any] | None) -> None:
        """Continue the timeline a previous run saved (nothing saved: keep the wall's)."""
        if not isinstance(saved, dict):
            return  # nothing saved: a first run, or a database of an older gateway
        try:
            store, then_mono, then_wall = (float(saved[key]) for key in KEYS)
        except (TypeError, KeyError, ValueError):
            return  # not readable: start from the wall clock as a first run does
        now_mono, now_wall = self.monotonic(), self.wall()
        if saved.get("boot") and saved["boot"] == self.boot:
            down = now_mono - then_mono
        else:
            down = now_wall - then_wall
        self._base = store + max(0.0, down) - now_mono

    def __call__(self) -> float:
        return self._base + self.monotonic()

    def saved(self) -> dict[str, Any]:
        """What the next run resumes from (kept with the buffer database)."""
        return {
            "store": self(),
            "monotonic": self.monotonic(),
            "wall": self.wall(),
            "boot": self.boot,
        }


class ClockWatch:
    """Notices wall-clock jumps (logged once each, with the size) and the kernel's sync
    status: `synced` is False while the kernel says the clock is not synchronised, None
    where it cannot tell. check() is called every CHECK_INTERVAL by run()."""

    def __init__(
        self,
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        status: Callable[[], bool | None] = kernel_clock_synced,
        on_change: Callable[[bool], None] | None = None,
    ):
        self.wall = wall
        self.monotonic = monotonic
        self.status = status
        self.on_change = on_change  # called with `unsynced` when the kernel's status changes
        self.jumps = 0
        self.last_jump = 0.0  # seconds, + forward
        self._offset = wall() - monotonic()
        self.synced = status()
        if self.synced is False:
            log.info(
                "the system clock is not synchronised (yet): reading timestamps may be off; "
                "buffer ages do not depend on it"
            )

    @property
    def unsynced(self) -> bool:
        return self.synced is False

    def check(self) -> None:
        offset = self.wall() - self.monotonic()
        jump = offset - self._offset
        self._offset = offset
        if abs(jump) >= JUMP_THRESHOLD:
            self.jumps += 1
            self.last_jump = jump
            log.warning(
                "the wall clock jumped %s by %s; buffer ages and timers are unaffected",
                "forward" if jump > 0 else "back",
                describe_seconds(abs(jump)),
            )
        synced = self.status()
        changed = synced != self.synced
        if changed and synced is not None:
            log.info("the system clock is %s", "synchronised" if synced else "not synchronised")
        self.synced = synced
        if changed and self.on_change is not None:
            self.on_change(self.unsynced)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(CHECK_INTERVAL)
            self.check()


def describe_seconds(seconds: float) -> str:
    """3d 4h 5m 6.0s, for a log line."""
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            count, seconds = divmod(seconds, size)
            parts.append(f"{int(count)}{unit}")
    parts.append(f"{seconds:.1f}s")
    return " ".join(parts)
