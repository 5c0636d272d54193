"""SSE sink: readings as Server-Sent Events at /sse, resumable by Last-Event-ID within a window."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from typing import Any

from aiohttp import web

from gateway.api.server import ApiServer, HttpRequest, error_response
from gateway.core.routing import TopicFilter, check_filter, render_topic
from gateway.sinks.base import Item, Sink, SinkError
from gateway.sinks.encoding import encoder
from gateway.sinks.websocket import client_transport, parse_filters, served_options
from gateway.store.replay_log import UNWRITTEN, ReplayLog

log = logging.getLogger("gateway.sinks.sse")

WRITE_CHUNK = 500  # events one client write carries at most
COMPACT_AT = 4096  # the window's list drops its dead front once this many are dead
MAX_HOLES = 1 << 16  # placeholder ids (lost in crashes) a window keeps at most, 8 bytes each
OPEN_WAIT = 5.0  # a client that comes while the sink opens (reads its window) waits this long
CLOSE_TIMEOUT = 2.0  # a client whose stream has not ended this long after close() is cut off

_encode_json = encoder("json")


class ReplayWindow:
    """The last events by id: at most `limit`, none older than `max_age` seconds.

    Ids are consecutive, so an id is an index: entries[start + id - first_id]. Each entry is
    (topic, added at, reading as JSON). A list with a moving start keeps that O(1). Ids
    lost in a crash (never written to disk, maybe never used) are a hole: placeholder
    entries (topic None) that do not count toward `limit`, listed in `holes` as (first,
    last); a client is told about a hole, not sent it.
    """

    def __init__(self, limit: int, max_age: float, first_id: int):
        self.limit = max(1, limit)
        self.max_age = max_age
        self.entries: list[tuple[str | None, float, bytes]] = []
        self.start = 0
        self.first_id = first_id  # the oldest id kept (== next_id when empty)
        self.next_id = first_id
        self.holes: list[tuple[int, int]] = []
        self.in_holes = 0  # placeholder entries kept

    @classmethod
    def restored(cls, limit: int, max_age: float, events, next_id: int) -> ReplayWindow:
        """The window from disk: events (id, wall time, topic, JSON) in id order; ids missing
        between them, and up to next_id, become holes."""
        first_id = events[0][0] if events else next_id
        window = cls(limit, max_age, first_id)
        now, wall_now = time.monotonic(), time.time()
        added = now
        for event_id, wall, topic, frame in events:
            added = now - max(0.0, wall_now - wall)
            window.skip_to(event_id, added)
            window.append(topic, frame, added)
        window.skip_to(next_id, added)
        window.trim(now)
        return window

    @property
    def last_id(self) -> int:
        return self.next_id - 1

    def __len__(self) -> int:
        return len(self.entries) - self.start - self.in_holes

    def append(self, topic: str, frame: bytes, now: float) -> None:
        self.entries.append((topic, now, frame))
        self.next_id += 1

    def skip_to(self, event_id: int, now: float) -> None:
        """Ids from next_id up to event_id (excluded) are a hole. Placeholders are bounded:
        beyond MAX_HOLES (or `limit`), the window starts over at event_id."""
        count = event_id - self.next_id
        if count <= 0:
            return
        if self.in_holes + count > max(self.limit, MAX_HOLES):
            self.entries, self.start, self.holes, self.in_holes = [], 0, [], 0
            self.first_id = self.next_id = event_id
            return
        self.holes.append((self.next_id, event_id - 1))
        self.entries.extend([(None, now, b"")] * count)
        self.in_holes += count
        self.next_id = event_id

    def trim(self, now: float) -> None:
        entries, oldest = self.entries, now - self.max_age
        excess = len(self) - self.limit
        if not self.in_holes:  # the usual case, kept cheap
            while self.start < len(entries) and (excess > 0 or entries[self.start][1] < oldest):
                self.start += 1
                self.first_id += 1
                excess -= 1
        while self.start < len(entries):
            topic, added, _frame = entries[self.start]
            if excess <= 0 and added >= oldest:
                break
            self.start += 1
            self.first_id += 1
            if topic is None:
                self.in_holes -= 1
            else:
                excess -= 1
        if self.start >= COMPACT_AT and self.start * 2 >= len(entries):
            del entries[: self.start]
            self.start = 0
        while self.holes and self.holes[0][1] < self.first_id:
            del self.holes[0]

    def hole_from(self, event_id: int) -> tuple[int, int] | None:
        """The first hole that ends at or after event_id."""
        for hole in self.holes:
            if hole[1] >= event_id:
                return hole
        return None

    def get(self, event_id: int) -> tuple[str, float, bytes]:
        return self.entries[self.start + event_id - self.first_id]


class _SseClient:
    """One connected client: its filters and its cursor (the next event id it is sent)."""

    def __init__(self, request: HttpRequest, filters: list[str] | None, next_id: int):
        self.filters = filters
        self.wants = TopicFilter(filters).matches if filters else None
        self.next_id = next_id
        self.floor = next_id - 1  # events up to here are a replay: not held against it
        self.skipped = 0  # events passed over as a slow consumer, not yet reported
        self.dropped = 0
        self.sent = 0
        self.closing = False
        self.done = False  # its handler returned
        self.wakeup = asyncio.Event()
        self.transport, self.peer = client_transport(request)

    def stats(self) -> dict[str, Any]:
        return {
            "peer": self.peer,
            "topics": self.filters or ["#"],
            "next_id": self.next_id,
            "sent": self.sent,
            "dropped": self.dropped,
        }


class SseSink(Sink):
    """Serves readings as an event stream on the API listener.

    send() appends each reading to the replay window with the next id and wakes the
    clients; each client's handler writes from the window at its own cursor, so a stalled
    client holds up nobody and costs no memory beyond the window. A client more than
    `queue` events behind the newest (replayed events not counted) is a slow consumer:
    drop_oldest moves its cursor up (an `event: gap` says how many it missed), disconnect
    closes it (it may resume with Last-Event-ID while the window still holds its place).
    """

    kind = "sse"

    def __init__(self, name: str, options: dict[str, Any], gateway_id: str, api: ApiServer):
        super().__init__(name, options, gateway_id)
        self.api, self.path, self.topic, self.client_capacity, self.policy = served_options(
            "an sse", name, options, api, "/sse"
        )
        batch = options.get("batch") or {}
        self.batch_size = max(1, int(batch.get("max_readings", 1)))
        self.client_retry = float(options.get("client_retry", 2.0))
        self.heartbeat = float(options.get("heartbeat", 15.0))
        self.cors_origins = list(options.get("cors_origins") or [])
        # Live delivery reads from the window too: it holds at least one client queue.
        limit = max(int(options.get("replay", 10_000)), self.client_capacity)
        # Ids start at the start time in µs when there is no window on disk to go on from:
        # those ids are higher than any a lost or earlier window handed out (at fewer than
        # a million events a second), so an old id is never mistaken for a recent one.
        self.window = ReplayWindow(limit, float(options.get("replay_age", 600.0)), _first_id())
        self.log = _replay_log(name, options, limit, self.max_batch)
        self._loaded = False
        self._clients: list[_SseClient] = []
        self._open = False
        self._ready = asyncio.Event()
        api.add_http("GET", self.path, self._serve)
        api.allow_query_token(self.path)

    # -- lifecycle -----------------------------------------------------------------------
    async def open(self) -> None:
        if self.log is not None and not self.log.running:
            await self._open_log(self.log)
        self._open = True
        self._ready.set()

    async def _open_log(self, replay: ReplayLog) -> None:
        """The first time: the window from disk; every time: a new segment to write to."""
        window = self.window
        try:
            if not self._loaded:
                loaded = await replay.load(window.limit, window.max_age)
                if loaded.damaged:
                    log.warning(
                        "sink %s: %d damaged replay segment(s) in %s, read up to the damage",
                        self.name,
                        loaded.damaged,
                        replay.files.directory,
                    )
                if loaded.next_id is not None:
                    window = ReplayWindow.restored(
                        window.limit, window.max_age, loaded.events, loaded.next_id
                    )
                    self._log_restored(window, loaded.clean)
                self.window, self._loaded = window, True
            await replay.start(self.window.next_id, lambda: self.window.first_id)
        except OSError as error:
            await replay.abandon()
            raise SinkError(f"replay window {replay.files.directory}: {error}") from error

    def _log_restored(self, window: ReplayWindow, clean: bool) -> None:
        how = "after a clean stop" if clean else "after a crash (ids lost in it are a gap)"
        log.info(
            "sink %s: replay window of %d events restored %s; ids go on at %d",
            self.name,
            len(window),
            how,
            window.next_id,
        )

    async def close(self) -> None:
        self._open = False
        self._ready.clear()
        loop = asyncio.get_running_loop()
        for client in list(self._clients):
            self._close_client(client)
            # Its stream ends at its next turn, unless it waits in a write nobody reads.
            loop.call_later(CLOSE_TIMEOUT, _abort_unless_done, client)
        if self.log is not None:
            await self.log.close(self.window.next_id)

    def stats(self) -> dict[str, Any]:
        window = {"events": len(self.window), "first_id": self.window.first_id}
        if self.log is not None:
            window.update(self.log.stats())
        clients = [client.stats() for client in self._clients]
        return {**super().stats(), "window": window, "clients": clients}

    # -- delivery ------------------------------------------------------------------------
    async def send(self, items: list[Item]) -> None:
        window, replay = self.window, self.log
        if replay is not None:
            if replay.error:
                raise SinkError(f"replay window: {replay.error}")
            await replay.room(len(items), window.last_id)  # the disk is far behind: wait
            if not self._open:  # closed meanwhile: its stop record is written
                raise SinkError(f"sink {self.name} is closing")
        now = time.monotonic()
        wall = time.time()
        for reading, route in items:
            template = (route.get("topic") if route else None) or self.topic
            topic, frame = render_topic(template, reading), _encode_json(reading)
            window.append(topic, frame, now)
            if replay is not None:
                replay.add((window.next_id - 1, wall, topic, frame))
        window.trim(now)
        self.counters["events"] += len(items)
        if not self._clients:
            self.counters["delivered_to_nobody"] += len(items)
        for client in list(self._clients):
            self._check_lag(client)
            client.wakeup.set()
        # One scheduler turn: client handlers must get to write between batches.
        await asyncio.sleep(0)

    def _check_lag(self, client: _SseClient) -> None:
        last = self.window.last_id
        behind = last - max(client.next_id - 1, client.floor)
        if behind <= self.client_capacity:
            return
        if self.policy == "disconnect":
            self.counters["disconnected_slow_client"] += 1
            log.warning("sink %s: client %s too slow, closing it", self.name, client.peer)
            self._close_client(client, abort=True)
            return
        skip_to = last - self.client_capacity + 1
        passed = skip_to - client.next_id
        if passed > 0:
            if not client.dropped:
                log.warning("sink %s: client %s too slow, dropping oldest", self.name, client.peer)
            client.next_id = skip_to
            client.skipped += passed
            client.dropped += passed
            self.counters["dropped_slow_client"] += passed

    def _close_client(self, client: _SseClient, abort: bool = False) -> None:
        client.closing = True
        client.wakeup.set()
        if client in self._clients:
            self._clients.remove(client)
        if abort and client.transport:  # its handler may wait in a write that never ends
            client.transport.abort()

    # -- clients -------------------------------------------------------------------------
    async def _serve(self, request: HttpRequest):
        if not self._open and self.enabled and not self._stopping:  # starting: wait for it
            self.counters["clients_before_open"] += 1
            try:
                await asyncio.wait_for(self._ready.wait(), OPEN_WAIT)
            except asyncio.TimeoutError:
                pass
        if not self._open:
            return error_response(503, "unavailable", f"sink {self.name} is not running")
        filters = parse_filters(request)
        for pattern in filters or []:
            try:
                check_filter(pattern)
            except ValueError as error:
                self.counters["rejected_clients"] += 1
                return error_response(400, "invalid_topic_filter", str(error))
        last_seen = _last_event_id(request)
        if isinstance(last_seen, tuple):
            return last_seen
        response = web.StreamResponse(headers=self._headers(request))
        await response.prepare(request.native)
        # From here to registering the client nothing awaits: no event falls between.
        client, gap = self._resume(request, filters, last_seen)
        self._clients.append(client)
        self.counters["clients_connected"] += 1
        log.info("sink %s: client %s connected, topics %s", self.name, client.peer, filters)
        try:
            await self._stream(response, client, gap)
        except (ConnectionError, RuntimeError):  # the client left (aiohttp: RuntimeError too)
            pass
        finally:
            client.done = True
            self._close_client(client)
            log.info("sink %s: client %s left after %d events", self.name, client.peer, client.sent)
        return response

    def _resume(self, request: HttpRequest, filters, last_seen: int | None):
        window = self.window
        window.trim(time.monotonic())
        if last_seen is None:
            return _SseClient(request, filters, window.next_id), None
        if window.first_id - 1 <= last_seen <= window.last_id:
            client = _SseClient(request, filters, last_seen + 1)
            client.floor = window.last_id
            return client, None
        # Older than the window (or from a run whose window is gone): say so, send what is kept.
        self.counters["resumed_behind_window"] += 1
        client = _SseClient(request, filters, window.first_id)
        client.floor = window.last_id
        gap = {"last_event_id": last_seen, "first_id": window.first_id}
        return client, gap

    def _headers(self, request: HttpRequest) -> dict[str, str]:
        headers = {
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",  # nginx: pass events on at once
        }
        origin = request.headers.get("Origin")
        if origin and ("*" in self.cors_origins or origin in self.cors_origins):
            headers["Access-Control-Allow-Origin"] = "*" if "*" in self.cors_origins else origin
            headers["Vary"] = "Origin"
        return headers

    async def _stream(self, response: web.StreamResponse, client: _SseClient, gap) -> None:
        await response.write(b"retry: %d\n\n" % int(self.client_retry * 1000))
        if gap is not None:
            await response.write(_gap_event(gap))
        window = self.window
        while not client.closing:
            if client.next_id < window.first_id:  # the window moved past it (age or size)
                client.skipped += window.first_id - client.next_id
                client.next_id = window.first_id
            if client.skipped:
                skipped, client.skipped = client.skipped, 0
                await response.write(_gap_event({"dropped": skipped, "next_id": client.next_id}))
                continue
            hole = window.hole_from(client.next_id) if window.holes else None
            if hole is not None and hole[0] <= client.next_id:  # ids a crash may have lost
                client.next_id = hole[1] + 1
                await response.write(
                    _gap_event({"lost_after": hole[0] - 1, "next_id": hole[1] + 1})
                )
                continue
            if client.next_id > window.last_id:
                client.wakeup.clear()
                try:
                    await asyncio.wait_for(client.wakeup.wait(), self.heartbeat)
                except asyncio.TimeoutError:
                    await response.write(b": heartbeat\n\n")  # keeps proxies from closing it
                continue
            upto = min(window.last_id, client.next_id + WRITE_CHUNK - 1)
            if hole is not None:
                upto = min(upto, hole[0] - 1)
            chunk, count = self._events(client, client.next_id, upto)
            client.next_id = upto + 1
            if chunk:
                await response.write(chunk)
                client.sent += count

    def _events(self, client: _SseClient, first: int, last: int) -> tuple[bytes, int]:
        """The SSE text of the events first..last the client wants, and how many readings."""
        get, wants = self.window.get, client.wants
        picked = []
        for event_id in range(first, last + 1):
            topic, _added, frame = get(event_id)
            if wants is None or wants(topic):
                picked.append((event_id, frame))
        if self.batch_size == 1:
            parts = [b"id: %d\nevent: reading\ndata: %s\n\n" % pair for pair in picked]
            return b"".join(parts), len(picked)
        parts = []
        size = self.batch_size
        for start in range(0, len(picked), size):
            group = picked[start : start + size]
            data = b"[" + b",".join(frame for _id, frame in group) + b"]"
            parts.append(b"id: %d\nevent: batch\ndata: %s\n\n" % (group[-1][0], data))
        return b"".join(parts), len(picked)


def _abort_unless_done(client: _SseClient) -> None:
    if not client.done and client.transport:
        client.transport.abort()


def _first_id() -> int:
    return int(time.time() * 1_000_000)


def _replay_log(name: str, options: dict[str, Any], limit: int, max_batch: int):
    """The window's files under replay_dir/NAME, or None (no replay_dir: memory only)."""
    directory = options.get("replay_dir")
    if not directory:
        return None
    return ReplayLog(
        os.path.join(directory, name),
        fsync=options.get("replay_fsync", "always"),
        unwritten=max(UNWRITTEN, 2 * max_batch),
        segment_events=max(1024, limit // 8),
    )


def _gap_event(detail: dict) -> bytes:
    return b"event: gap\ndata: %s\n\n" % json.dumps(detail).encode()


def _last_event_id(request: HttpRequest):
    """The Last-Event-ID header (or ?last_event_id=): an int, None, or a 400 answer."""
    value = request.headers.get("Last-Event-ID")
    if value is None:
        values = request.query_values("last_event_id")
        value = values[0] if values else None
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        message = f"Last-Event-ID: expected an event id this stream sent, got {value!r}"
        return error_response(400, "invalid_last_event_id", message)
