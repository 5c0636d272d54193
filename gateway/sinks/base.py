"""Sink base: a queue per sink drained by its own task, with a circuit breaker and backoff."""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from typing import Any, Callable, Iterator

from gateway.core.backoff import Backoff
from gateway.core.bounds import DEFAULT_QUEUE_SIZE
from gateway.core.breaker import CLOSED, HALF_OPEN, OPEN, Breaker
from gateway.sinks.latency import LatencyHistogram
from gateway.store.queues import MemoryQueue
from gateway.throttled_log import ThrottledLog

log = logging.getLogger("gateway.sinks")

# One routed item: the reading (the DESIGN §3 envelope, a plain dict) and the resolved route
# options for this sink: {"topic": str template, "qos": int, "retain": bool,
# "encoding": "json"|"msgpack"|"cbor", "batch": {"max_readings": int} | None}.
Item = tuple


def route_runs(items: list[Item], settings: Callable[[Any], Any]) -> Iterator[tuple[Any, list]]:
    """Consecutive readings whose routes give the same `settings(route)`, in order: a batch
    never mixes encodings or sizes, and order is kept across route overrides. Items of one
    ingest route share its options dict, so settings are looked up once per route object."""
    default = settings(None)
    current: Any = None
    last_route: Any = None
    last_key = default
    readings: list = []
    for reading, route in items:
        if not route:
            key = default
        elif route is last_route:
            key = last_key
        else:
            key = last_key = settings(route)
            last_route = route
        if key != current and readings:
            yield current, readings
            readings = []
        current = key
        readings.append(reading)
    if readings:
        yield current, readings


DEFAULT_SEND_TIMEOUT = 10.0
STOP_TIMEOUT = 2.0  # how long stop() waits for the sender task to hand its batch back
REOPEN_LOG_INTERVAL = 300.0  # a long outage is reported this often, not at every probe
RECONNECT_CAP = 1.0  # the longest wait between connects that were refused


class SinkError(Exception):
    """The sink could not deliver; the items handed to send() must be retried."""


class ConnectRefused(SinkError):
    """Nothing listens at the far side (the connection was refused at once).

    A retry costs one refused connect, so it does not count toward the breaker and comes
    within RECONNECT_CAP: a broker restarting for a few seconds is back in use within about
    a second of answering, instead of after the breaker's reset time.
    """


class Sink:
    """A destination for readings.

    Subclasses implement open(), send() and close(). The base owns the queue (memory,
    spill or write-ahead: see gateway.store.queues; the app hands it over with
    use_queue()), batching, a circuit breaker and retries with capped exponential backoff
    (full jitter). send(items) returns only once every item is confirmed by this sink's own
    definition (UDP: datagram sent; WebSocket: handed to every client queue) and raises
    SinkError otherwise; the queue then keeps the batch, in front. A sink that confirms part
    of a batch at a time (webhook: per POST) overrides _deliver; one that keeps several
    batches in flight (MQTT) overrides _deliver_until_failure. Both confirm to the queue
    themselves (queue.confirm, queue.give_back; see gateway.store.queues).

    Every open() and send() is bounded by `send_timeout`: a far side that accepts the
    connection but never answers counts as a failure, so the breaker opens. Each sink has
    its own task, so a dead or slow sink never holds up another one.
    """

    kind = "base"

    def __init__(self, name: str, options: dict[str, Any], gateway_id: str):
        self.name = name
        self.options = options
        self.gateway_id = gateway_id
        self.capacity = int(options.get("queue_size", DEFAULT_QUEUE_SIZE))
        self.max_batch = int(options.get("max_batch", 500))
        self.overflow = (options.get("buffer") or {}).get("overflow", "drop_oldest")
        self.send_timeout = float(options.get("send_timeout", DEFAULT_SEND_TIMEOUT))
        retry = options.get("retry") or {}
        self.backoff = Backoff(float(retry.get("base", 0.5)), float(retry.get("cap", 60.0)))
        # A sink built without a breaker table (tests, tools) only backs off; the config
        # always supplies one (5 failures, 30 s).
        breaker = options.get("breaker") or {}
        self.breaker = Breaker(
            breaker.get("failures"),
            float(breaker.get("reset_after", 30.0)),
            on_change=self._breaker_changed,
        )
        self.connected = False
        self.last_error: str | None = None
        self.counters = collections.Counter()
        self.offered = 0
        self.latency = LatencyHistogram()
        self._wakeup = asyncio.Event()
        self._stop_requested = asyncio.Event()
        self.queue: Any = MemoryQueue(self.capacity, self.overflow, notify=self._wakeup.set)
        self._stopping = False
        self._disabled = False
        self._dropped: str | None = None
        self._retry_at = 0.0
        self._troubled = False  # failed since the last confirmed delivery
        self._task: asyncio.Task | None = None
        self._deadline: float | None = None  # when the open() or send() under way times out
        self._timed_out = False
        self._watchdog: asyncio.TimerHandle | None = None
        self._loop_time = time.monotonic
        self._last_reopen_log = float("-inf")
        self._unexpected = ThrottledLog(log, interval=60.0)

    # -- called by the app -------------------------------------------------------------
    def use_queue(self, queue: Any) -> None:
        """Take the queue the app built for this sink's buffering policy (before run())."""
        queue.notify = self._wakeup.set
        self.queue = queue

    def take_over(self, old: Sink) -> None:
        """Continue where `old` (the same sink before a reconfiguration, its sender ended)
        stopped: its queue with everything buffered, and its counters."""
        self.use_queue(old.queue)
        self.counters = old.counters
        self.offered = old.offered
        self.latency = old.latency

    def mark_disabled(self) -> None:
        """Built disabled (reconfigured while disabled): enable() starts its sender."""
        self._disabled = True

    def offer(self, reading: dict, route: dict) -> bool:
        """Queue one reading without blocking.

        False when it was not queued: dropped by the overflow policy, or refused because
        the queue is full and the policy is "block" (see `accepting`).
        """
        self.offered += 1  # a plain int: a Counter's += costs more, once per reading
        return self.queue.put((reading, route))

    @property
    def room(self) -> int:
        """Readings the queue takes for sure before it pushes back (0: backpressure)."""
        return self.queue.room

    async def settled(self) -> bool:
        """Wait until what was offered so far is as durable as the policy makes it."""
        return await self.queue.settled()

    @property
    def depth(self) -> int:
        return self.queue.depth

    def stats(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.kind,
            "enabled": not self._disabled,
            "connected": self.connected,
            "queue_depth": self.queue.depth,
            "last_error": self.last_error,
            "offered": self.offered,
            **self.counters,
            "breaker": {
                "state": self.breaker.state,
                "failures": self.breaker.failures,
                "opened": self.breaker.opened,
                "next_probe_in": round(self.breaker.remaining(), 3),
            },
            "buffer": self.queue.stats(),
        }

    async def run(self) -> None:
        """Connect, then deliver queued items until stop(); back off and trip on failures."""
        self._task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        self._watch(loop)
        try:
            while not self._stopping:
                wait = max(self._retry_at - loop.time(), self.breaker.remaining())
                if wait > 0:
                    await self._pause(wait)
                    continue
                if not self.breaker.allow():
                    await self._pause(0.01)  # a probe is already out (not with one task)
                    continue
                try:
                    if not self.connected:
                        await self._bounded(self.open(), "connecting")
                        self._opened()
                    await self._deliver_until_failure()
                except asyncio.CancelledError:
                    raise
                except Exception as error:  # SinkError, OSError, a timeout, a bug in send()
                    await self._failed(error)
        finally:
            if self._watchdog is not None:
                self._watchdog.cancel()
                self._watchdog = None

    async def stop(self, drain_seconds: float = 2.0) -> None:
        """Give queued items a short chance to leave, then close; the queue keeps the rest."""
        if self.connected and self.queue.depth:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + drain_seconds
            while self.queue.depth and self.connected and loop.time() < deadline:
                await asyncio.sleep(0.01)
        await self._end_sender()
        await self.queue.close()

    async def _end_sender(self) -> None:
        """Close the connection, let the sender task end, and give back what it had taken."""
        self._stopping = True
        self._wakeup.set()
        self._stop_requested.set()
        try:
            await asyncio.wait_for(self.close(), max(self.send_timeout, STOP_TIMEOUT))
        except Exception as error:  # closing is best effort
            log.debug("sink %s close: %s", self.name, error)
        self.connected = False
        await self._wait_for_sender()
        await self._finish_taking()
        self._give_back_out()

    @property
    def enabled(self) -> bool:
        return not self._disabled

    async def disable(self) -> None:
        """Stop sending and keep buffering (PATCH /sinks/NAME): the sender closes the
        connection and ends, what it had taken goes back to the queue, and readings offered
        meanwhile wait in the queue as through an outage, up to its bound and policy."""
        if self._disabled:
            return
        self._disabled = True
        await self._end_sender()
        log.info("sink %s disabled; %d readings wait in its buffer", self.name, self.queue.depth)

    def enable(self) -> asyncio.Task | None:
        """Deliver again after disable(): a new sender task (the caller keeps it), which
        starts with the backlog; None when the sink was not disabled."""
        if not self._disabled:
            return None
        self._disabled = False
        self._stopping = False
        self._stop_requested.clear()
        log.info("sink %s enabled; %d readings wait in its buffer", self.name, self.queue.depth)
        return asyncio.create_task(self.run(), name=f"sink-{self.name}")

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

    async def _finish_taking(self) -> None:
        """A sink that takes from its queue outside its sender task waits for that here."""

    def _give_back_out(self) -> None:
        """At a stop, what was taken and never confirmed goes back to the queue (which keeps
        it for the next run as far as its policy does)."""
        if self.queue.out:
            self.queue.give_back()

    # -- internals -----------------------------------------------------------------------
    async def _deliver_until_failure(self) -> None:
        queue = self.queue
        while not self._stopping:
            if self._dropped is not None:
                reason, self._dropped = self._dropped, None
                raise SinkError(reason)
            if not queue.ready:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            batch = await queue.take(self.max_batch)
            if not batch:
                continue
            await self._deliver(batch)
            self.latency.observe_since(batch[0][0].get("ts"))
            if self._troubled:
                self._succeeded()

    async def _deliver(self, batch: list[Item]) -> None:
        """Send one batch taken from the queue and confirm it, or give it back and raise."""
        try:
            await self._bounded(self.send(batch), "sending")
        except BaseException:
            self.queue.release(False)
            raise
        self.queue.release(True)
        self.counters["delivered"] += len(batch)

    async def _bounded(self, awaitable: Any, what: str) -> Any:
        """Await open() or send(), failing with SinkError after send_timeout seconds.

        A watchdog timer (see _watch) cancels the sender task when the deadline passed;
        one timer per sink instead of one per send keeps this off the hot path.
        """
        self._deadline = self._loop_time() + self.send_timeout
        try:
            return await awaitable
        except asyncio.CancelledError:
            if not self._timed_out:
                raise
            self._timed_out = False
            uncancel = getattr(self._task, "uncancel", None)  # Python 3.11+
            if uncancel is not None and uncancel() > 0:
                raise  # stop() cancelled it as well
            raise SinkError(self._timeout_message(what)) from None
        finally:
            self._deadline = None
            if self._timed_out:  # the watchdog fired but the sink swallowed the cancellation
                self._timed_out = False
                uncancel = getattr(self._task, "uncancel", None)
                if uncancel is not None:
                    uncancel()

    def _watch(self, loop: asyncio.AbstractEventLoop) -> None:
        """Check every quarter of send_timeout whether open() or send() ran over."""
        self._loop_time = loop.time
        if self.send_timeout <= 0:
            return
        interval = max(0.01, self.send_timeout / 4)

        def check() -> None:
            deadline = self._deadline
            if deadline is not None and loop.time() >= deadline and not self._timed_out:
                self._timed_out = True
                self._task.cancel()
            self._watchdog = loop.call_later(interval, check)

        self._watchdog = loop.call_later(interval, check)

    def _timeout_message(self, what: str) -> str:
        return f"no answer within {self.send_timeout:g}s while {what} (send_timeout)"

    def _opened(self) -> None:
        self._dropped = None  # whatever dropped before this connection is handled
        self.connected = True
        self.last_error = None
        log.info("sink %s connected", self.name)
        if not self.queue.ready:
            self._succeeded()  # nothing waits: the connection itself is the proof

    def _succeeded(self) -> None:
        self._troubled = False
        self._retry_at = 0.0
        self.backoff.reset()
        self.breaker.success()
        self.queue.sink_recovered()

    async def _failed(self, error: BaseException) -> None:
        if not isinstance(error, (SinkError, OSError)):
            self._unexpected.warning(
                "unexpected",
                "sink %s: unexpected %s; treated as a failed delivery",
                self.name,
                type(error).__name__,
                exc_info=True,
            )
        was_connected = self.connected
        self.connected = False
        self._troubled = True
        self.last_error = str(error) or type(error).__name__
        self.counters["failures"] += 1
        if was_connected:
            log.warning("sink %s failed: %s", self.name, self.last_error)
        try:
            await asyncio.wait_for(self.close(), max(self.send_timeout, STOP_TIMEOUT))
        except Exception:
            pass
        self.queue.sink_failed()
        if isinstance(error, ConnectRefused) and self.breaker.state != HALF_OPEN:
            delay = min(self.backoff.next(), RECONNECT_CAP)
        else:
            self.breaker.failure()
            delay = 0.0 if self.breaker.state == OPEN else self.backoff.next()
        self._retry_at = asyncio.get_running_loop().time() + delay

    async def _pause(self, seconds: float) -> None:
        """Sleep before the next attempt; stop() cuts it short."""
        try:
            await asyncio.wait_for(self._stop_requested.wait(), seconds)
        except asyncio.TimeoutError:
            pass

    async def _wait_for_sender(self) -> None:
        task = self._task
        if task is None or task.done() or task is asyncio.current_task():
            return
        done, _pending = await asyncio.wait({task}, timeout=STOP_TIMEOUT)
        if not done:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    def _breaker_changed(self, old: str, new: str) -> None:
        waiting = self.queue.depth if hasattr(self, "queue") else 0
        reset = self.breaker.reset_after
        if new == OPEN and old == CLOSED:
            self._last_reopen_log = time.monotonic()
            log.warning(
                "sink %s: breaker open after %d failures (%s); next probe in %gs",
                self.name,
                self.breaker.failures,
                self.last_error,
                reset,
            )
        elif new == OPEN:
            now = time.monotonic()
            level = logging.DEBUG
            if now - self._last_reopen_log >= REOPEN_LOG_INTERVAL:
                self._last_reopen_log, level = now, logging.WARNING
            log.log(
                level,
                "sink %s: probe failed (%s); still unreachable after %d failures, "
                "%d readings waiting; next probe in %gs",
                self.name,
                self.last_error,
                self.breaker.failures,
                waiting,
                reset,
            )
        elif new == HALF_OPEN:
            log.debug("sink %s: breaker half-open, probing", self.name)
        elif new == CLOSED:
            log.info(
                "sink %s: breaker closed; delivering again (%d readings waiting)",
                self.name,
                waiting,
            )

    def _take_batch(self) -> list[Item]:
        """Take and confirm up to max_batch items at once (tests reading a memory queue)."""
        items = self.queue.take_now(self.max_batch)
        self.queue.release(True)
        return items
