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


# -- Queue ----------------------------------------------------------------------------------

if MICROPYTHON:

    class QueueEmpty(Exception):
        """get_nowait() on an empty queue."""

    class QueueFull(Exception):
        """put_nowait() on a full queue."""

else:
    QueueEmpty = asyncio.QueueEmpty
    QueueFull = asyncio.QueueFull


class ListQueue:
    """FIFO queue built on a list and two Events (MicroPython has no asyncio.Queue).

    maxsize <= 0 means unbounded. Waiters re-check after every wake-up, so several
    getters or putters may wait at once and a cancelled waiter loses nothing.
    """

    def __init__(self, maxsize=0):
        self.maxsize = maxsize
        self._items = []
        self._head = 0  # index of the oldest item; the list is compacted lazily
        self._readable = Event()
        self._writable = Event()

    def qsize(self):
        return len(self._items) - self._head

    def empty(self):
        return self.qsize() == 0

    def full(self):
        return 0 < self.maxsize <= self.qsize()

    def put_nowait(self, item):
        if self.full():
            raise QueueFull()
        self._items.append(item)
        self._readable.set()

    def get_nowait(self):
        if self._head >= len(self._items):
            raise QueueEmpty()
        item = self._items[self._head]
        self._head += 1
        if self._head == len(self._items):
            self._items = []
            self._head = 0
        elif self._head >= 64 and self._head * 2 >= len(self._items):
            del self._items[: self._head]
            self._head = 0
        else:
            self._items[self._head - 1] = None  # release the reference early
        self._writable.set()
        return item

    async def put(self, item):
        while self.full():
            self._writable.clear()
            await self._writable.wait()
        self.put_nowait(item)

    async def get(self):
        while self.empty():
            self._readable.clear()
            await self._readable.wait()
        return self.get_nowait()


Queue = ListQueue if MICROPYTHON else asyncio.Queue
