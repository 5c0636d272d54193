"""WebSocket sink: fans readings out to /ws clients by MQTT topic filter, each with a queue."""

from __future__ import annotations

import asyncio
import collections
import logging
from typing import Any, Iterator

from aiohttp import WSMsgType, web

from gateway.api.server import ApiServer, HttpRequest, error_response
from gateway.core.routing import TopicFilter, check_filter, render_topic
from gateway.sinks.base import Item, Sink
from gateway.sinks.encoding import encoder

log = logging.getLogger("gateway.sinks.websocket")

DEFAULT_TOPIC = "gw/{gateway}/{device}/{stream}"
POLICIES = ("drop_oldest", "disconnect")


def client_transport(request: HttpRequest) -> tuple[Any, str]:
    """A client's transport, kept at connect (once the connection closes aiohttp no longer
    hands it out), and its address as host:port for logs and stats."""
    transport = request.native.transport if request.native else None
    address = transport.get_extra_info("peername") if transport else None
    return transport, f"{address[0]}:{address[1]}" if address else "?"


def served_options(
    kind: str, name: str, options: dict[str, Any], api: ApiServer | None, default_path: str
) -> tuple[ApiServer, str, str, int, str]:
    """(api, path, topic, client queue, slow-consumer policy) of a sink served on the API
    listener to clients with topic filters (WebSocket, SSE); ValueError names the key."""
    where = f"sinks.{name}"
    if api is None:
        raise ValueError(f"{where}: {kind} sink is served by the API listener; none given")
    capacity = int(options.get("queue", 1000))
    if capacity < 1:
        raise ValueError(f"{where}.queue: expected at least 1, got {capacity}")
    policy = options.get("slow_consumer", "drop_oldest")
    if policy not in POLICIES:
        expected = ", ".join(POLICIES)
        raise ValueError(f"{where}.slow_consumer: expected one of {expected}, got {policy!r}")
    topic = options.get("topic") or DEFAULT_TOPIC
    return api, options.get("path", default_path), topic, capacity, policy


CLOSE_TIMEOUT = 2.0  # a client that will not read its close frame is cut off after this

_encode_json = encoder("json")


class _Client:
    """One connected WebSocket client: its filters, its bounded frame queue, its writer task."""

    def __init__(
        self, connection: web.WebSocketResponse, request: HttpRequest, capacity: int
    ) -> None:
        self.connection = connection
        filters = parse_filters(request)
        self.filters = filters
        # matches() remembers each topic it has seen, so fan-out pre-matches per client.
        self.wants = TopicFilter(filters).matches if filters else _everything
        # Clients with the same filters receive the same batches: encode those once.
        self.key = tuple(filters) if filters else None
        self.capacity = capacity
        self.queue: collections.deque = collections.deque()
        self.wakeup = asyncio.Event()
        self.writer: asyncio.Task | None = None
        self.sent = 0
        self.dropped = 0
        self.transport, self.peer = client_transport(request)

    def stats(self) -> dict[str, Any]:
        return {
            "peer": self.peer,
            "topics": self.filters or ["#"],
            "queued": len(self.queue),
            "sent": self.sent,
            "dropped": self.dropped,
        }


def _everything(topic: str) -> bool:
    return True


def parse_filters(request: HttpRequest) -> list[str] | None:
    """The client's topic filters from `?topics=a/+/b,c/#`; None (everything) when absent."""
    filters = []
    for value in request.query_values("topics"):
        filters.extend(part.strip() for part in value.split(",") if part.strip())
    return filters or None


class WebSocketSink(Sink):
    """Serves readings at a WebSocket path of the API listener.

    send() only appends encoded frames to each interested client's bounded queue and never
    awaits a client, so a stalled client slows neither this sink nor any other. A full queue
    drops its oldest frame (policy drop_oldest) or closes the client with 1008 (disconnect).
    """

    kind = "websocket"

    def __init__(self, name: str, options: dict[str, Any], gateway_id: str, api: ApiServer):
        super().__init__(name, options, gateway_id)
        self.api, self.path, self.topic, self.client_capacity, self.policy = served_options(
            "a websocket", name, options, api, "/ws"
        )
        self.batch = options.get("batch") or None
        self._clients: list[_Client] = []
        self._closing: set[asyncio.Task] = set()
        self._registered = False
        self._register()

    # -- lifecycle -----------------------------------------------------------------------
    async def open(self) -> None:
        self._register()

    async def close(self) -> None:
        if self._registered:
            self.api.remove_websocket(self.path)
            self._registered = False
        for client in list(self._clients):
            self._disconnect(client, 1001, "gateway sink stopping")
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    def stats(self) -> dict[str, Any]:
        return {**super().stats(), "clients": [client.stats() for client in self._clients]}

    def _register(self) -> None:
        if not self._registered:
            self.api.add_websocket(self.path, self._serve_client, check=self._check_request)
            self._registered = True

    # -- clients -------------------------------------------------------------------------
    def _check_request(self, request: HttpRequest):
        for pattern in parse_filters(request) or []:
            try:
                check_filter(pattern)
            except ValueError as error:
                self.counters["rejected_clients"] += 1
                return error_response(400, "invalid_topic_filter", str(error))
        return None

    async def _serve_client(self, connection: web.WebSocketResponse, request: HttpRequest) -> None:
        client = _Client(connection, request, self.client_capacity)
        client.writer = asyncio.create_task(self._write(client))
        self._clients.append(client)
        self.counters["clients_connected"] += 1
        log.info("sink %s: client %s connected, topics %s", self.name, client.peer, client.filters)
        try:
            # Clients have nothing to say, but reading keeps pings and the close handshake going.
            async for _ in connection:
                pass
        finally:
            self._forget(client)
            client.writer.cancel()
            log.info(
                "sink %s: client %s left after %d frames (%d dropped)",
                self.name, client.peer, client.sent, client.dropped,
            )  # fmt: skip

    async def _write(self, client: _Client) -> None:
        queue = client.queue
        connection = client.connection
        try:
            while True:
                if not queue:
                    client.wakeup.clear()
                    await client.wakeup.wait()
                    continue
                # aiohttp writes an uncompressed frame at once and waits only while the
                # transport is paused: a client that does not read makes this task, and
                # only this task, wait here.
                await connection.send_frame(queue.popleft(), WSMsgType.TEXT)
                client.sent += 1
        except ConnectionError:  # closed under us: the client left or is being closed
            pass

    def _forget(self, client: _Client) -> None:
        if client in self._clients:
            self._clients.remove(client)

    def _disconnect(self, client: _Client, code: int, reason: str) -> None:
        """Close a client from synchronous code; the close handshake runs in its own task."""
        self._forget(client)
        if client.writer:
            client.writer.cancel()
        task = asyncio.ensure_future(self._close_connection(client, code, reason))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    @staticmethod
    async def _close_connection(client: _Client, code: int, reason: str) -> None:
        try:
            await asyncio.wait_for(
                client.connection.close(code=code, message=reason.encode()), CLOSE_TIMEOUT
            )
        except Exception:  # timed out or failed: closing is best effort, cut the connection
            if client.transport:
                client.transport.abort()

    # -- delivery ------------------------------------------------------------------------
    async def send(self, items: list[Item]) -> None:
        # A snapshot: a client disconnected for being slow leaves self._clients mid-loop.
        clients = list(self._clients)
        if not clients:
            self.counters["delivered_to_nobody"] += len(items)
        for max_readings, batch in self._runs(items) if clients else ():
            topics = [render_topic(template, reading) for reading, template in batch]
            if max_readings == 1:
                self._fan_out_each(batch, topics, clients)
            else:
                self._fan_out_arrays(batch, topics, clients, max_readings)
        # One scheduler turn, not a wait for anyone: the base calls send() back to back while
        # readings are queued, and client writers must get to run between batches.
        await asyncio.sleep(0)

    def _runs(self, items: list[Item]) -> Iterator[tuple[int, list[tuple[dict, str]]]]:
        """Consecutive (reading, topic template) pairs sharing a batch size, in order."""
        default = (self._batch_size(None), self.topic)
        current = None
        last_route, last_settings = None, default
        run: list[tuple[dict, str]] = []
        for reading, route in items:
            if not route:
                size, template = default
            elif route is last_route:  # items of one ingest route share its options dict
                size, template = last_settings
            else:
                size, template = last_settings = (
                    self._batch_size(route),
                    route.get("topic") or self.topic,
                )
                last_route = route
            if size != current and run:
                yield current, run
                run = []
            current = size
            run.append((reading, template))
        if run:
            yield current, run

    def _batch_size(self, route: dict | None) -> int:
        batch = (route or {}).get("batch") or self.batch
        return max(int(batch.get("max_readings", 1)), 1) if batch else 1

    def _fan_out_each(self, batch: list[tuple[dict, str]], topics: list[str], clients: list):
        for (reading, _), topic in zip(batch, topics):
            frame = None
            for client in clients:
                if client.wants(topic):
                    if frame is None:
                        frame = _encode_json(reading)
                    self._enqueue(client, frame)

    def _fan_out_arrays(
        self, batch: list[tuple[dict, str]], topics: list[str], clients: list, size: int
    ) -> None:
        frames_by_filters: dict[Any, list[bytes]] = {}
        for client in clients:
            frames = frames_by_filters.get(client.key)
            if frames is None:
                wants = client.wants
                wanted = [reading for (reading, _), topic in zip(batch, topics) if wants(topic)]
                frames = [_encode_json(wanted[i : i + size]) for i in range(0, len(wanted), size)]
                frames_by_filters[client.key] = frames
            for frame in frames:
                self._enqueue(client, frame)

    def _enqueue(self, client: _Client, frame: bytes) -> None:
        queue = client.queue
        if len(queue) >= client.capacity:
            if self.policy == "disconnect":
                if client in self._clients:
                    self.counters["disconnected_slow_client"] += 1
                    log.warning("sink %s: client %s too slow, closing it", self.name, client.peer)
                    reason = f"slow consumer: more than {client.capacity} frames queued"
                    self._disconnect(client, 1008, reason)
                return
            queue.popleft()
            client.dropped += 1
            self.counters["dropped_slow_client"] += 1
            if client.dropped == 1:
                log.warning("sink %s: client %s too slow, dropping oldest", self.name, client.peer)
        queue.append(frame)
        client.wakeup.set()
        self.counters["frames"] += 1
