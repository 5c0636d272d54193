"""Sink base: a bounded queue per sink drained by its own task, so no sink stalls another."""

from __future__ import annotations

import asyncio
import collections
import logging
import random
from typing import Any

log = logging.getLogger("gateway.sinks")

# One routed item: the reading (the DESIGN §3 envelope, a plain dict) and the resolved route
# options for this sink: {"topic": str template, "qos": int, "retain": bool,
# "encoding": "json"|"msgpack"|"cbor", "batch": {"max_readings": int, "max_delay": float} | None}.
Item = tuple


class SinkError(Exception):
    """The sink could not deliver; the items handed to send() must be retried."""


class Sink:
    """A destination for readings.

    Subclasses implement open(), send() and close(). The base owns the queue, batching and
    reconnection with capped exponential backoff (full jitter). send(items) returns only once
    every item is confirmed by this sink's own definition (MQTT QoS 1: PUBACK; UDP: datagram
    sent; WebSocket: handed to every client queue) and raises SinkError otherwise, so the
    durable buffer can later acknowledge exactly what send() returned for.
    """

    kind = "base"

    def __init__(self, name: str, options: dict[str, Any], gateway_id: str):
        self.name = name
        self.options = options
        self.gateway_id = gateway_id
        self.capacity = int(options.get("queue_size", 100_000))
        self.max_batch = int(options.get("max_batch", 500))
        retry = options.get("retry") or {}
        self.retry_base = float(retry.get("base", 0.5))
        self.retry_cap = float(retry.get("cap", 60.0))
        self.connected = False
        self.last_error: str | None = None
        self.counters = collections.Counter()
        self._queue: collections.deque = collections.deque()
        self._wakeup = asyncio.Event()
        self._stopping = False
        self._dropped: str | None = None

    # -- called by the app -------------------------------------------------------------
    def offer(self, reading: dict, route: dict) -> bool:
        """Queue one reading without blocking; a full queue drops the newest and counts it."""
        self.counters["offered"] += 1
        if len(self._queue) >= self.capacity:
            self.counters["dropped_queue_full"] += 1
            return False
        self._queue.append((reading, route))
        self._wakeup.set()
        return True

    @property
    def depth(self) -> int:
        return len(self._queue)

    def stats(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.kind,
            "connected": self.connected,
            "queue_depth": len(self._queue),
            "last_error": self.last_error,
            **self.counters,
        }

    async def run(self) -> None:
        """Connect, then deliver queued items until stop(); reconnect with backoff on failure."""
        attempt = 0
        while not self._stopping:
            try:
                if not self.connected:
                    await self.open()
                    self._dropped = None  # whatever dropped before this connection is handled
                    self.connected = True
                    self.last_error = None
                    attempt = 0
                    log.info("sink %s connected", self.name)
                await self._deliver_until_failure()
            except (SinkError, OSError) as error:
                await self._mark_failed(error)
                attempt += 1
                await asyncio.sleep(self._backoff(attempt))
            except asyncio.CancelledError:
                raise

    async def stop(self, drain_seconds: float = 2.0) -> None:
        """Give queued items a short chance to leave, then close."""
        if self.connected and self._queue:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + drain_seconds
            while self._queue and self.connected and loop.time() < deadline:
                await asyncio.sleep(0.01)
        self._stopping = True
        self._wakeup.set()
        try:
            await self.close()
        except Exception as error:  # closing is best effort
            log.debug("sink %s close: %s", self.name, error)
        self.connected = False

    # -- for subclasses ------------------------------------------------------------------
    def connection_dropped(self, reason: str) -> None:
        """Report a connection lost while idle, so the sender reconnects now, not on next send."""
        self._dropped = reason
        self._wakeup.set()

    async def open(self) -> None:
        """Connect to the far side; raise SinkError or OSError when it cannot be reached."""

    async def send(self, items: list[Item]) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        """Release the connection."""

    # -- internals -----------------------------------------------------------------------
    async def _deliver_until_failure(self) -> None:
        while not self._stopping:
            if self._dropped is not None:
                reason, self._dropped = self._dropped, None
                raise SinkError(reason)
            if not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            batch = self._take_batch()
            try:
                await self.send(batch)
            except BaseException:
                self._queue.extendleft(reversed(batch))
                raise
            self.counters["delivered"] += len(batch)

    def _take_batch(self) -> list[Item]:
        count = min(len(self._queue), self.max_batch)
        popleft = self._queue.popleft
        return [popleft() for _ in range(count)]

    async def _mark_failed(self, error: BaseException) -> None:
        was_connected = self.connected
        self.connected = False
        self.last_error = str(error) or type(error).__name__
        self.counters["failures"] += 1
        if was_connected:
            log.warning("sink %s failed: %s", self.name, self.last_error)
        try:
            await self.close()
        except Exception:
            pass

    def _backoff(self, attempt: int) -> float:
        return random.uniform(0, min(self.retry_cap, self.retry_base * (2 ** min(attempt, 30))))
