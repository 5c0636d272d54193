"""The asyncio and ticks shim that lets core code run unchanged on CPython and MicroPython."""

import asyncio
import sys
import time

MICROPYTHON = sys.implementation.name == "micropython"

CancelledError = asyncio.CancelledError
TimeoutError = asyncio.TimeoutError
Event = asyncio.Event
Lock = asyncio.Lock
create_task = asyncio.create_task
gather = asyncio.gather
wait_for = asyncio.wait_for
sleep = asyncio.sleep


# -- ticks: wrapping millisecond/microsecond counters ---------------------------------------
# Values wrap at TICKS_PERIOD; only ticks_diff/ticks_add may combine them, exactly as on
# MicroPython. CPython emulates the 30-bit counter of the boards so the wrap is exercised on
# the Pi too (2**30 ms is about 12.4 days).

if MICROPYTHON:
    ticks_ms = time.ticks_ms
    ticks_us = time.ticks_us
    ticks_add = time.ticks_add
    ticks_diff = time.ticks_diff
    TICKS_PERIOD = time.ticks_add(0, -1) + 1
    sleep_ms = asyncio.sleep_ms
else:
    TICKS_PERIOD = 1 << 30
    _TICKS_MASK = TICKS_PERIOD - 1
    _TICKS_HALF = TICKS_PERIOD >> 1

    def ticks_ms():
        return (time.monotonic_ns() // 1000000) & _TICKS_MASK

    def ticks_us():
        return (time.monotonic_ns() // 1000) & _TICKS_MASK

    def ticks_add(ticks, delta):
        return (ticks + delta) & _TICKS_MASK

    def ticks_diff(end, start):
        """Signed end - start in [-TICKS_PERIOD/2, TICKS_PERIOD/2)."""
        return ((end - start + _TICKS_HALF) & _TICKS_MASK) - _TICKS_HALF

    def sleep_ms(ms):
        return asyncio.sleep(ms / 1000)


def time_seconds():
    """Wall-clock Unix time in seconds (a float where the platform can tell fractions)."""
    if MICROPYTHON and hasattr(time, "time_ns"):
        return time.time_ns() / 1e9
    return time.time()


def run(coroutine):
    """Run a coroutine to completion on a fresh event loop and return its result."""
    if MICROPYTHON:
        # MicroPython keeps one global loop; tasks left by an earlier run() must not leak in.
        asyncio.new_event_loop()
    return asyncio.run(coroutine)
