"""`gateway replay`: send a recording back through a sink, at its recorded pace or at once."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Iterable

from gateway.sinks.base import Sink

POLL = 0.005  # a sink's queue has no "room again" event: the feeder looks this often


def replay_options(options: dict[str, Any]) -> dict[str, Any]:
    """A sink's options for a replay: its queue pushes back instead of dropping."""
    buffer = {**(options.get("buffer") or {}), "overflow": "block"}
    return {**options, "buffer": buffer}


async def replay(
    readings: Iterable[dict], sink: Sink, paced: bool, drain_timeout: float = 60.0
) -> int:
    """Offer every reading to `sink` (running it meanwhile); returns how many are left
    undelivered once the queue did not empty within drain_timeout after the last one."""
    task = asyncio.create_task(sink.run(), name=f"replay-{sink.name}")
    try:
        await _feed(readings, sink, paced)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + drain_timeout
        while sink.depth and loop.time() < deadline:
            await asyncio.sleep(POLL)
        return sink.depth
    finally:
        await sink.stop()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def _feed(readings: Iterable[dict], sink: Sink, paced: bool) -> None:
    started = time.monotonic()
    first_ts = None
    for count, reading in enumerate(readings):
        if paced:
            first_ts = reading["ts"] if first_ts is None else first_ts
            wait = started + (float(reading["ts"]) - first_ts) - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)  # the recording's own pace
        while not sink.room:
            await asyncio.sleep(POLL)
        sink.offer(reading, {})
        if count % 1000 == 999:
            await asyncio.sleep(0)  # let the sink's task send while a fast replay feeds
