"""The one wait-until helper: poll state that has no event of its own, with a deadline."""

from __future__ import annotations

import asyncio
import time
from typing import Callable


async def eventually(
    predicate: Callable[[], bool], timeout: float = 15.0, what: str = "condition"
) -> None:
    """In the event loop: await until predicate() holds (sink counters, connection state)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


def wait_until(
    predicate: Callable[[], bool],
    timeout: float = 30.0,
    what: str = "condition",
    interval: float = 0.02,
) -> None:
    """From a test's own thread: block until predicate() holds (another process's output).

    `interval` spaces predicates that are costly themselves (re-reading a subscriber's file).
    """
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval)
