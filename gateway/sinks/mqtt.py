"""MQTT sink: an asyncio driver of the sans-I/O session in gateway.core.mqtt_session."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import os
import socket
import ssl
import time
from typing import Any, Callable, Iterator
from urllib.parse import urlsplit

from gateway.core import compat, mqtt
from gateway.core.breaker import OPEN, Breaker
from gateway.core.mqtt_session import (
    CONNECTED,
    LOST,
    MESSAGE,
    REFUSED,
    MqttSession,
    WindowFull,
)
from gateway.core.routing import check_topic_template, render_topic
from gateway.sinks.base import ConnectRefused, Item, Sink, SinkError
from gateway.sinks.encoding import encoder

log = logging.getLogger("gateway.sinks.mqtt")

DEFAULT_URL = "mqtt://127.0.0.1:1883"
DEFAULT_TOPIC = "gw/{gateway}/{device}/{stream}"
DEFAULT_CLIENT_ID = "gw-{gateway}"
STATUS_TOPIC = "gw/{gateway}/status"
CONNACK_TIMEOUT = 10.0
CLOSE_TIMEOUT = 2.0
TOPIC_CACHE_LIMIT = 4096
DEFAULT_MAX_INFLIGHT = 1000
# The in-flight window's byte bound: what a slow broker link can make us hold (the session
# keeps each unacknowledged packet for its resend).
MAX_INFLIGHT_BYTES = 1024 * 1024
FLUSH_EVERY = 64  # messages encoded between writes, so the broker works while we encode
# While connected to a broker later in `urls`, the earlier ones are probed every breaker
# reset_after, but not more often than this.
MIN_RETURN_PROBE_INTERVAL = 1.0


def parse_url(url: str) -> tuple[str, int, bool]:
    """(host, port, tls) from mqtt://host[:port] or mqtts://host[:port]; credentials are the
    sink's username and password (the config refuses them in a URL, where logs show it)."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
        raise ValueError(f"url: expected mqtt://host:port or mqtts://host:port, got {url!r}")
    tls = parts.scheme in ("mqtts", "ssl")
    if not parts.hostname:
        raise ValueError(f"url: {url!r} names no host")
    port = parts.port or (8883 if tls else 1883)
    return parts.hostname, port, tls


class Endpoint:
    """One broker of the sink's `urls`, with a breaker of its own for failover."""

    def __init__(self, url: str, breaker: Breaker):
        self.url = url
        self.host, self.port, self.tls = parse_url(url)
        self.breaker = breaker

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


def tls_context(options: dict[str, Any]) -> ssl.SSLContext:
    """A verifying client context; ca, cert and key are optional file paths."""
    context = ssl.create_default_context(cafile=options.get("ca") or None)
    if options.get("cert"):
        context.load_cert_chain(options["cert"], options.get("key") or None)
    return context


def _quickack(transport: asyncio.BaseTransport) -> Callable[[], None] | None:
    """Linux: ACK received data at once instead of up to 40 ms later.

    A broker with Nagle's algorithm on (Mosquitto's default) holds back its next PUBACKs until
    we ACK the previous segment; a delayed ACK then stalls the end of every batch.
    """
    sock = transport.get_extra_info("socket")
    option = getattr(socket, "TCP_QUICKACK", None)
    if sock is None or option is None:
        return None

    def quickack() -> None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, option, 1)
        except OSError:
            pass  # the socket is going away; connection_lost will follow

    return quickack


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection; received bytes go straight to the sink's session.

    A protocol rather than a stream reader and a task: PUBACKs are handled in the same event
    loop step that reads them, which matters at tens of thousands per second.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.transport: asyncio.Transport | None = None
        self.closed: asyncio.Future = loop.create_future()
        self.paused = False  # the transport's buffer is above its high-water mark
        self.on_data: Callable[[bytes], None] | None = None
        self.on_lost: Callable[[str], None] | None = None
        self.on_resume: Callable[[], None] | None = None
        self._failure: str | None = None
        self._quickack: Callable[[], None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._quickack = _quickack(transport)

    def data_received(self, data: bytes) -> None:
        if self._quickack is not None:
            self._quickack()
        if self.on_data is not None:
            self.on_data(data)

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed.done():
            self.transport.write(data)

    def fail(self, reason: str) -> None:
        """Close the connection, remembering why."""
        self._failure = self._failure or reason
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        reason = self._failure or (str(exc) if exc else "") or "the broker closed the connection"
        if not self.closed.done():
            self.closed.set_result(None)
        if self.on_lost is not None:
            self.on_lost(reason)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        if self.on_resume is not None:
            self.on_resume()


class _Outstanding:
    """The readings taken from the queue and not yet confirmed to it, numbered in take order.

    A reading is "through" once acknowledged, sent at QoS 0 or dropped; the leading run of
    through readings is what may be confirmed to the queue. Flags live in a list read from
    `head`, so a batch's readings are marked by one slice and the run found by one scan.
    """

    def __init__(self) -> None:
        self.base = 0  # the number of the reading at flags[head]
        self.flags: list[bool] = []
        self.head = 0

    def __len__(self) -> int:
        return len(self.flags) - self.head

    def add(self, count: int) -> int:
        """Number `count` more readings; returns the first number."""
        first = self.base + len(self)
        self.flags.extend([False] * count)
        return first

    def mark(self, token: Any) -> int:
        """Mark a token's readings through: a number, a range or a tuple of numbers."""
        offset = self.head - self.base
        if token.__class__ is int:
            self.flags[offset + token] = True
            return 1
        if token.__class__ is range:
            self.flags[offset + token.start : offset + token.stop] = [True] * len(token)
            return len(token)
        for number in token:
            self.flags[offset + number] = True
        return len(token)

    def advance(self) -> int:
        """Drop the leading run of through readings; returns how many."""
        flags = self.flags
        try:
            end = flags.index(False, self.head)
        except ValueError:
            end = len(flags)
        count = end - self.head
        if count:
            self.head = end
            self.base += count
            if end > 4096 and end * 2 > len(flags):
                del flags[:end]
                self.head = 0
        return count

    def through_positions(self) -> set[int]:
        """Positions (from the oldest not confirmed) of readings through out of order."""
        return {index for index, through in enumerate(self.flags[self.head :]) if through}

    def clear(self) -> None:
        self.base += len(self)
        self.flags = []
        self.head = 0


_JSON = encoder("json")  # discovery reads only topics of one JSON reading per message


class _Settings:
    """One route's effective options: route keys first, then the sink's own."""

    __slots__ = ("template", "qos", "retain", "encode", "max_readings")

    def __init__(self, template: str, qos: int, retain: bool, encoding: str, max_readings: int):
        self.template = template
        self.qos = qos
        self.retain = retain
        self.encode: Callable[[Any], bytes] = encoder(encoding)
        self.max_readings = max_readings

    def unpacked(self) -> tuple[str, Callable[[Any], bytes], int, bool]:
        return self.template, self.encode, self.qos, self.retain


def _max_readings(batch: Any) -> int:
    if not batch:
        return 1
    return max(1, int(batch.get("max_readings", 1) or 1))


class MqttSink(Sink):
    """Publishes each reading (or each batch of readings) to an MQTT broker.

    The session (gateway.core.mqtt_session) holds the protocol state; this driver keeps its
    in-flight window full: it takes readings from the queue whenever the window has room,
    and each PUBACK releases its own readings, so the queue confirms them as soon as every
    older one is confirmed too. Messages unacknowledged when a connection dies stay in the
    session and are sent again (DUP) on the next connection: only those, once each. QoS 0
    readings count as sent (`sent_qos0`) once written, never as delivered.
    """

    kind = "mqtt"

    def __init__(self, name: str, options: dict[str, Any], gateway_id: str):
        super().__init__(name, options, gateway_id)
        self.endpoints = self._endpoints(options)
        self.endpoint = self.endpoints[0]  # the one connected to, or tried last
        try:
            tls = any(endpoint.tls for endpoint in self.endpoints)
            self._tls_context = tls_context(options) if tls else None
        except (OSError, ssl.SSLError) as error:
            raise ValueError(
                f"sinks.{name}: cannot load the TLS ca/cert/key files: {error}"
            ) from None
        template = options.get("client_id") or DEFAULT_CLIENT_ID
        self.client_id = template.replace("{gateway}", gateway_id).replace("{sink}", name)
        self.username = options.get("username")
        self.password = options.get("password")
        self.keepalive = float(options.get("keepalive", 30.0))
        # A PUBACK is the answer to a send: the base's send_timeout bounds the wait too.
        self.ack_timeout = max(self.keepalive, 10.0)
        if self.send_timeout > 0:
            self.ack_timeout = min(self.ack_timeout, self.send_timeout)
        self.connect_timeout = CONNACK_TIMEOUT
        self.max_inflight = min(
            mqtt.MAX_PACKET_ID, max(1, int(options.get("max_inflight") or DEFAULT_MAX_INFLIGHT))
        )
        self.availability = bool(options.get("availability", True))
        self.status_topic = STATUS_TOPIC.replace("{gateway}", gateway_id)
        try:
            mqtt.encode_topic(self.status_topic)
        except ValueError as error:
            raise ValueError(f"sinks.{name}: availability topic: {error}") from None
        topic = options.get("topic") or DEFAULT_TOPIC
        try:
            check_topic_template(topic)
        except ValueError as error:
            raise ValueError(f"sinks.{name}.topic: {error}") from None
        self._default = _Settings(
            topic,
            self._checked_qos(options.get("qos", 1)),
            bool(options.get("retain", False)),
            options.get("encoding") or "json",
            _max_readings(options.get("batch")),
        )
        self.session = self._new_session()
        for counter in ("published", "acked", "resent", "sent_qos0", "failovers"):
            self.counters[counter] = 0
        self._settings_cache: dict[tuple, _Settings] = {}
        self._route_errors: set[str] = set()
        self._topic_cache: dict[tuple, str] = {}
        self._connection: _Connection | None = None
        self._connack: asyncio.Future | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_due = 0  # the session tick the timer is set for
        self._lost: str | None = "not connected yet"
        self._reported: str | None = None
        self._raw_waiters: set[asyncio.Future] = set()
        # The readings taken from the queue and not yet confirmed to it; the messages made
        # from them that still wait for room in the window are in _unsent.
        self._out = _Outstanding()
        # Per taken batch not yet confirmed whole: (its first number, its oldest reading's ts).
        self._batches: collections.deque = collections.deque()
        self._unsent: collections.deque = collections.deque()
        self._taking: asyncio.Future | None = None  # the take from the queue under way
        self._take_error: BaseException | None = None
        self._qos0_written: list[Any] = []
        self.announcer: Any = None  # discovery and device statuses: see watch_device()
        self._return_probe: asyncio.Task | None = None  # connected to a later url: see there
        self._preferred_up = False  # an earlier url answers again: move back to it
        self._left: Endpoint | None = None  # the broker whose connection died under us
        self._last_connected: Endpoint | None = None

    def _endpoints(self, options: dict[str, Any]) -> list[Endpoint]:
        """`urls` (failover, in order of preference) or the one `url`; a breaker each."""
        urls = list(options.get("urls") or [options.get("url") or DEFAULT_URL])
        breaker = options.get("breaker") or {}
        endpoints = []
        for index, url in enumerate(urls):
            key = f"urls[{index}]" if options.get("urls") else "url"
            try:
                endpoint = Endpoint(
                    url, Breaker(breaker.get("failures"), float(breaker.get("reset_after", 30.0)))
                )
            except ValueError as error:
                message = str(error).removeprefix("url: ")
                raise ValueError(f"sinks.{self.name}.{key}: {message}") from None
            endpoints.append(endpoint)
        return endpoints

    def _new_session(self) -> MqttSession:
        will = {}
        if self.availability:
            will = {
                "will_topic": self.status_topic,
                "will_payload": b"offline",
                "will_qos": 1,
                "will_retain": True,
            }
        password = self.password.encode() if isinstance(self.password, str) else self.password
        return MqttSession(
            self.client_id,
            keepalive=int(round(self.keepalive)),
            clean_session=True,
            username=self.username,
            password=password,
            max_inflight=self.max_inflight,
            max_inflight_bytes=MAX_INFLIGHT_BYTES,
            ack_timeout_ms=int(self.ack_timeout * 1000),
            **will,
        )

    @property
    def address(self) -> str:
        return self.endpoint.address

    @property
    def host(self) -> str:
        return self.endpoint.host

    @property
    def port(self) -> int:
        return self.endpoint.port

    @property
    def tls(self) -> bool:
        return self.endpoint.tls

    def stats(self) -> dict[str, Any]:
        return {**super().stats(), "broker": self.endpoint.url}

    # -- connection ------------------------------------------------------------------------
    async def open(self) -> None:
        """Connect to the first broker of `urls` that answers, skipping those whose breaker
        is open while another one is left to try."""
        if len(self.endpoints) == 1:
            await self._open_endpoint(self.endpoints[0])
            return
        errors: list[SinkError] = []
        for endpoint in self._candidates():
            try:
                await self._open_endpoint(endpoint)
            except SinkError as error:
                endpoint.breaker.failure()
                errors.append(error)
                if self._deadline is not None:  # each broker gets the whole send_timeout
                    self._deadline = self._loop_time() + self.send_timeout
                continue
            endpoint.breaker.success()
            self._left = None
            if self._last_connected not in (None, endpoint):
                self.counters["failovers"] += 1  # moved to another broker
            self._last_connected = endpoint
            self._watch_preferred()
            return
        refused = all(isinstance(error, ConnectRefused) for error in errors)
        summary = "; ".join(str(error) for error in errors)
        kind = ConnectRefused if refused else SinkError
        raise kind(f"no MQTT broker of {len(self.endpoints)} answers: {summary}")

    def _candidates(self) -> Iterator[Endpoint]:
        """The brokers to try: in the order of `urls`, or after the one whose connection
        died, the next ones first (then round to it). Those whose breaker lets a call
        through come first (asked one at a time, as each is tried: a half-open breaker lets
        one probe through); when every breaker is open, all of them, soonest to half-open
        first: the sink's own breaker and backoff pace a sink that reaches no broker.

        A breaker counts failed connects only: a connection that died was to a broker
        that answered, and the connect that follows finds out whether it still does."""
        order = self.endpoints
        if self._left is not None:
            start = order.index(self._left) + 1
            order = order[start:] + order[:start]
        skipped = []
        for endpoint in order:
            if endpoint.breaker.allow():
                yield endpoint
            else:
                skipped.append(endpoint)
        if len(skipped) == len(self.endpoints):
            yield from sorted(skipped, key=lambda endpoint: endpoint.breaker.remaining())

    def _watch_preferred(self) -> None:
        """Connected to a broker later in `urls`: probe the earlier ones."""
        self._preferred_up = False
        if self.endpoint is self.endpoints[0] or self._return_probe is not None:
            return
        self._return_probe = asyncio.ensure_future(self._probe_earlier())

    async def _probe_earlier(self) -> None:
        """Every breaker reset_after, try a TCP connect to each broker before the current
        one whose breaker is not open; once one accepts, the sender moves back to it."""
        current = self.endpoints.index(self.endpoint)
        interval = max(MIN_RETURN_PROBE_INTERVAL, self.breaker.reset_after)
        while True:
            await asyncio.sleep(interval)
            for endpoint in self.endpoints[:current]:
                if endpoint.breaker.state == OPEN:
                    continue
                try:
                    _, writer = await asyncio.wait_for(
                        asyncio.open_connection(endpoint.host, endpoint.port),
                        self.connect_timeout,
                    )
                except (OSError, asyncio.TimeoutError):
                    continue
                writer.close()
                log.info(
                    "sink %s: the earlier MQTT broker at %s answers again; moving back to it",
                    self.name,
                    endpoint.address,
                )
                self._preferred_up = True
                self._wakeup.set()
                self._return_probe = None
                return

    async def _fail_over(self) -> None:
        """The broker died under a sink with several `urls`: connect to the next at once.

        The loss is counted (failures) but waits for no backoff and opens no breaker: the
        sink's own breaker and backoff count only an open() that reached no broker at all
        (raised from here into the sender's failure path). Unacknowledged messages are sent
        again to the next broker.
        """
        self.counters["failures"] += 1
        self.last_error = f"MQTT connection lost: {self._lost}"
        self.connected = False
        self._troubled = True  # the next PUBACK counts as the recovery (breaker, queue)
        self.queue.sink_failed()  # a spill queue moves what waits in memory to disk
        await self.close()
        await self._bounded(self.open(), "connecting")
        self.connected = True
        self.last_error = None

    async def _move_back(self) -> None:
        """An earlier broker answers again: let the in-flight window drain here, leave with
        DISCONNECT (no last will, no "offline"), and connect anew, trying it first. What was
        not acknowledged stays in the session and is sent again; the queue keeps the rest."""
        self._preferred_up = False
        connection = self._connection
        await self._drain_window(CLOSE_TIMEOUT * 2)
        if self._lost is not None or connection is None:
            return  # lost meanwhile: the sender's failure path reconnects
        left = self.endpoint.address
        self.connected = False
        self.session.disconnect()
        self._flush()
        self._end_connection("moving back to an earlier broker")
        self._connection = None
        try:
            await asyncio.wait_for(asyncio.shield(connection.closed), CLOSE_TIMEOUT)
        except asyncio.TimeoutError:
            if connection.transport is not None:
                connection.transport.abort()
        log.info("sink %s: left the MQTT broker at %s for an earlier one", self.name, left)
        await self.open()  # a SinkError here is a failed attempt like any other
        self.connected = True

    async def _open_endpoint(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        connection = await self._connect_transport()
        loop = asyncio.get_running_loop()
        self._connection = connection
        self._lost = None
        self._connack = loop.create_future()
        connection.on_data = self._on_data
        connection.on_lost = functools.partial(self._on_connection_lost, connection)
        connection.on_resume = self._wakeup.set
        self.session.connect(compat.ticks_ms())
        self._flush()
        try:
            event = await asyncio.wait_for(asyncio.shield(self._connack), self.connect_timeout)
        except (OSError, asyncio.TimeoutError) as error:
            self._end_connection("no CONNACK")
            reason = str(error) or type(error).__name__
            raise self._failure(
                f"MQTT broker at {self.address} did not answer CONNECT ({reason})"
            ) from error
        except BaseException:  # cancelled (the sink's send_timeout, or a stop): no leak
            self._end_connection("connecting cancelled")
            raise
        if event.kind == REFUSED:
            self._end_connection("connection refused")
            raise self._failure(
                f"MQTT broker at {self.address} refused the connection: {event.reason} "
                f"(CONNACK code {event.return_code}); check sinks.{self.name}"
                ".username/password/client_id",
                level=logging.ERROR,
            )
        # The session queued its unacknowledged messages again with the CONNACK.
        resent = self.session.counters["resent"] - self.counters["resent"]
        self.counters["resent"] += resent
        if self.availability:
            # First in line, but behind the resent messages: the window may be full of them.
            self._unsent.appendleft((self.status_topic, b"online", 1, True, None))
        self._publish_unsent()
        if self.announcer is not None:
            self.session.subscribe([(self.announcer.birth_topic, 0)], compat.ticks_ms())
            self.announcer.connected()
        self._flush()
        self._arm_timer()
        self._reported = None
        log.info(
            "sink %s: connected to MQTT broker at %s as %r; %d readings queued%s",
            self.name,
            self.address,
            self.client_id,
            self.depth,
            f", {resent} unacknowledged sent again" if resent else "",
        )

    async def _connect_transport(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            _, connection = await asyncio.wait_for(
                loop.create_connection(
                    functools.partial(_Connection, loop),
                    self.endpoint.host,
                    self.endpoint.port,
                    ssl=self._tls_context if self.endpoint.tls else None,
                    server_hostname=self.endpoint.host if self.endpoint.tls else None,
                ),
                self.connect_timeout,
            )
            return connection
        except ssl.SSLError as error:
            raise self._failure(
                f"TLS handshake with MQTT broker at {self.address} failed ({error}); "
                "readings are kept queued and retried",
                level=logging.ERROR,
            ) from error
        except (OSError, asyncio.TimeoutError) as error:
            reason = getattr(error, "strerror", None) or str(error) or "timed out"
            kind = ConnectRefused if isinstance(error, ConnectionRefusedError) else SinkError
            raise self._failure(
                f"no MQTT broker answers at {self.address}; readings are kept queued and "
                f"retried ({reason})",
                kind=kind,
            ) from error

    def _on_connection_lost(self, connection: _Connection, reason: str) -> None:
        if connection is self._connection:  # not an older connection closing late
            self._connection_lost(reason)

    def _failure(
        self, message: str, level: int = logging.WARNING, kind: type = SinkError
    ) -> SinkError:
        """A SinkError for message, logged once per kind of outage rather than per retry."""
        summary = message.split("(")[0]
        if summary != self._reported:
            log.log(level, "sink %s: %s", self.name, message)
            self._reported = summary
        else:
            log.debug("sink %s: %s", self.name, message)
        return kind(message)

    def _connection_lost(self, reason: str) -> None:
        """The connection died under us: say so once; the sender reconnects."""
        if self._lost is not None:
            return
        self._left = self.endpoint  # the next open() tries the brokers after it first
        if self.connected:
            log.warning(
                "sink %s: lost the MQTT broker at %s (%s); readings are kept queued and retried",
                self.name,
                self.address,
                reason,
            )
            self._reported = "lost"
        self.connected = False
        self._end_connection(reason)
        self._wakeup.set()

    def _end_connection(self, reason: str) -> None:
        """Close the transport; unacknowledged messages stay in the session for the next."""
        self._lost = self._lost or reason
        self.session.connection_lost(compat.ticks_ms())
        if self._return_probe is not None:
            self._return_probe.cancel()
            self._return_probe = None
        self._qos0_written.clear()  # not written after all: the session dropped its output
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._connack is not None and not self._connack.done():
            self._connack.set_exception(ConnectionError(reason))
            self._connack.exception()  # retrieved: open() may have stopped waiting
        for waiter in self._raw_waiters:
            if not waiter.done():
                waiter.set_exception(SinkError(f"MQTT connection lost: {reason}"))
                waiter.exception()
        if self._connection is not None:
            self._connection.fail(reason)

    async def close(self) -> None:
        connection = self._connection
        if connection is None:
            return
        if self._stopping and self._lost is None:
            await self._say_goodbye(connection)
        self._end_connection("closed by the gateway")
        self._connection = None
        try:
            await asyncio.wait_for(asyncio.shield(connection.closed), CLOSE_TIMEOUT)
        except asyncio.TimeoutError:
            if connection.transport is not None:
                connection.transport.abort()

    async def _say_goodbye(self, connection: _Connection) -> None:
        """Let the window drain, publish offline, then DISCONNECT (no last will)."""
        await self._drain_window(CLOSE_TIMEOUT * 2)
        try:
            if self.availability:
                await asyncio.wait_for(
                    self.publish_raw(self.status_topic, b"offline", qos=1, retain=True),
                    CLOSE_TIMEOUT,
                )
            self.connected = False  # the broker closing the socket now is no loss
            self.session.disconnect()
            self._flush()
            log.info("sink %s: disconnected from MQTT broker at %s", self.name, self.address)
        except (SinkError, OSError, asyncio.TimeoutError) as error:
            log.info("sink %s: closing without a clean goodbye (%s)", self.name, error)

    async def _drain_window(self, seconds: float) -> None:
        """Wait (at most `seconds`, or ack_timeout) for the PUBACKs of what is in flight."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + min(self.ack_timeout, seconds)
        while self.session.inflight and self._lost is None and loop.time() < deadline:
            self._wakeup.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), deadline - loop.time())

    # -- from the broker -------------------------------------------------------------------
    def _on_data(self, data: bytes) -> None:
        session = self.session
        session.receive_data(data, compat.ticks_ms())
        tokens = session.acked()
        if tokens:
            self._acknowledged(tokens)
        for event in session.events_received():
            self._on_event(event)
        self._flush()

    def _on_event(self, event: Any) -> None:
        if event.kind == LOST:
            self._connection_lost(event.reason)
            return
        if event.kind == MESSAGE:
            if self.announcer is not None:
                self.announcer.message(event.topic, event.payload)
            return
        connack = self._connack
        if event.kind in (CONNECTED, REFUSED) and connack is not None and not connack.done():
            connack.set_result(event)

    def _acknowledged(self, tokens: list) -> None:
        mark = self._out.mark
        readings = 0
        for token in tokens:
            kind = token.__class__
            if kind is int or kind is range or kind is tuple:
                readings += mark(token)
            elif token is not None and not token.done():  # a future publish_raw waits for
                token.set_result(None)
        self.counters["acked"] += len(tokens)
        self.counters["delivered"] += readings
        self._confirm_through()
        if self._troubled and readings:
            self._succeeded()
        self._wakeup.set()  # the window has room again

    def _confirm_through(self) -> None:
        """Confirm to the queue the leading readings that are through."""
        count = self._out.advance()
        if count:
            self.queue.confirm(count)
            batches, confirmed = self._batches, self._out.base
            while batches and batches[0][0] <= confirmed:  # every reading of it is confirmed
                self.latency.observe_since(batches.popleft()[1])

    # -- keepalive and acknowledgement deadlines -------------------------------------------
    def _arm_timer(self) -> None:
        """Set the timer for the session's next deadline, unless it is set for earlier."""
        now = compat.ticks_ms()
        deadline = self.session.next_deadline(now)
        if deadline is None or self._lost is not None:
            return
        if self._timer is not None:
            if compat.ticks_diff(self._timer_due, deadline) <= 0:
                return
            self._timer.cancel()
        delay = max(0.01, compat.ticks_diff(deadline, now) / 1000)
        self._timer_due = deadline
        self._timer = asyncio.get_running_loop().call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        session = self.session
        session.tick(compat.ticks_ms())
        for event in session.events_received():
            self._on_event(event)
        if self._lost is None:
            self._flush()
            self._arm_timer()

    # -- to the broker ---------------------------------------------------------------------
    def _flush(self) -> None:
        data = self.session.data_to_send()
        if data and self._connection is not None:
            self._connection.write(data)
        if self._qos0_written:
            tokens, self._qos0_written = self._qos0_written, []
            self._sent_unconfirmed(tokens)

    def _sent_unconfirmed(self, tokens: list) -> None:
        """QoS 0 readings are through once written: counted as sent, never resent."""
        mark = self._out.mark
        for token in tokens:
            self.counters["sent_qos0"] += mark(token)
        self._confirm_through()

    async def _deliver_until_failure(self) -> None:
        """Keep the window full until the link fails: publish what waits, and take the next
        readings while the window drains rather than once it is empty.

        A take from a disk queue is a round trip to the buffer's writer thread, behind its
        appends and commits (milliseconds under load); waiting for it with an empty window
        left the sink idle most of the time. So one take is always under way while fewer
        than max_batch messages wait (at most two batches' worth are held here).
        """
        queue = self.queue
        while not self._stopping:
            if self._lost is not None and len(self.endpoints) > 1:
                await self._fail_over()
                continue
            if self._lost is not None:
                raise SinkError(f"MQTT connection lost: {self._lost}")
            if self._preferred_up:
                await self._move_back()
                continue
            if self._take_error is not None:
                error, self._take_error = self._take_error, None
                raise error
            self._publish_unsent()
            connection = self._connection
            if (
                self._taking is None
                and len(self._unsent) < self.max_batch
                and queue.ready
                and connection is not None
                and not connection.paused
            ):
                self._taking = asyncio.ensure_future(queue.take(self.max_batch))
                self._taking.add_done_callback(self._took)
            self._wakeup.clear()
            await self._wakeup.wait()

    def _took(self, task: asyncio.Future) -> None:
        """A take finished: its readings join the messages waiting for the window, in order
        (one take at a time), whether or not the link is up by now."""
        self._taking = None
        self._wakeup.set()
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:
            self._take_error = error  # the sender raises it: a failed attempt, counted
            return
        items = task.result()
        if items:
            self._encode(items)

    async def _finish_taking(self) -> None:
        """Before what is out goes back at a stop: let the take under way land first."""
        if self._taking is not None:
            await asyncio.wait({self._taking}, timeout=CLOSE_TIMEOUT)

    def _publish_unsent(self) -> None:
        unsent = self._unsent
        session = self.session
        if not unsent or self._lost is not None:
            return
        now = compat.ticks_ms()
        publish = session.publish
        count = 0
        try:
            while unsent:
                topic, payload, qos, retain, token = unsent[0]
                publish(topic, payload, qos, retain, token, now)
                unsent.popleft()
                if not qos:
                    self._qos0_written.append(token)
                count += 1
                if count % FLUSH_EVERY == 0:
                    self._flush()
        except WindowFull:
            pass  # the rest goes out as PUBACKs make room
        self.counters["published"] += count
        self._flush()
        self._arm_timer()

    def _encode(self, items: list[Item]) -> None:
        """Turn taken readings into messages waiting for the window, numbered from _base."""
        first = self._out.add(len(items))
        if items:
            self._batches.append((first + len(items), items[0][0].get("ts")))
        dropped: list[int] = []
        self._unsent.extend(self._messages(items, first, dropped))
        if dropped:
            self._out.mark(tuple(dropped))
            self._confirm_through()

    def _give_back_out(self) -> None:
        """At a stop: what the session still holds goes back to the queue, except what got
        through out of order."""
        self.session.forget_inflight()
        self._unsent.clear()
        delivered = self._out.through_positions()
        self._out.clear()
        self._batches.clear()
        if self.queue.out:
            self.queue.give_back(delivered)

    # -- Home Assistant discovery and device statuses (gateway.sinks.discovery) -------------
    def watch_device(
        self, device: str, model: str, data_dir: str | None, discover: bool = False
    ) -> None:
        """Publish this device's status at gw/{gateway}/{device}/status (with availability
        on) and, when `discover`, announce it to Home Assistant (the app calls this for every
        device routed here; `discover` when its preset says discovery = true)."""
        if not (discover or self.availability):
            return
        if self.announcer is None:
            from gateway.sinks.discovery import Announcer

            state = os.path.join(data_dir, f"discovery-{self.name}.json") if data_dir else None
            self.announcer = Announcer(
                self.publish_raw,
                self.gateway_id,
                self.options.get("discovery_prefix") or "homeassistant",
                self.status_topic,
                state,
                float(self.options.get("device_timeout", 60.0)),
            )
            self.offer = self._offer_watched  # sinks without discovery keep the plain offer
        self.announcer.watch(device, model, discover)

    def device_link(self, device: str, up: bool) -> None:
        if self.announcer is not None:
            self.announcer.device_link(device, up)

    def _offer_watched(self, reading: dict, route: dict) -> bool:
        announcer = self.announcer
        device = reading.get("device")
        details = announcer.devices.get(device)
        if details is None:
            pass
        elif details["discover"]:
            announcer.seen(reading, self._state_topic(reading, route))
        else:  # status only: the device is alive (once per reading, so kept to this)
            announcer.last_seen[device] = time.monotonic()
        return Sink.offer(self, reading, route)

    def _state_topic(self, reading: dict, route: dict) -> str | None:
        """The topic a reading goes to, if Home Assistant can read it there (one JSON reading
        per message), else None."""
        settings = self._route_settings(route)
        if settings is None or settings.max_readings != 1 or settings.encode is not _JSON:
            return None
        try:
            return render_topic(settings.template, reading)
        except (KeyError, ValueError, TypeError):  # the delivery path counts it as dropped
            return None

    async def run(self) -> None:
        if self.announcer is not None:
            self.announcer.start()
        try:
            await super().run()
        finally:
            if self.announcer is not None:
                await self.announcer.stop()

    async def publish_raw(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False):
        """Publish one message outside the reading path (availability, discovery).

        Returns once the broker acknowledged it (QoS 1) or it was written (QoS 0).
        """
        qos = self._checked_qos(qos)
        mqtt.encode_topic(topic)  # a bad topic is the caller's error, not a lost link
        if self._lost is not None or self.session.state != CONNECTED:
            raise SinkError(f"not connected to MQTT broker at {self.address} ({self._lost})")
        waiter = asyncio.get_running_loop().create_future() if qos else None
        try:
            self.session.publish(topic, payload, qos, retain, waiter, compat.ticks_ms())
        except WindowFull as error:
            raise SinkError(f"MQTT in-flight window full ({error})") from None
        self.counters["published"] += 1
        self._flush()
        if waiter is None:
            return
        self._raw_waiters.add(waiter)
        try:
            await asyncio.wait_for(asyncio.shield(waiter), self.ack_timeout)
        except asyncio.TimeoutError:
            raise SinkError(f"no PUBACK for {topic!r} within {self.ack_timeout:g}s") from None
        finally:
            self._raw_waiters.discard(waiter)

    # -- readings to messages --------------------------------------------------------------
    def _messages(self, items: list[Item], first: int, dropped: list[int]):
        """(topic, payload, qos, retain, token) per message; batch routes group readings by
        topic. The token is the reading's number (first + position), or a tuple of them for
        a batch; numbers of readings that cannot be sent are added to `dropped`.

        This is the hot path: one reading per message at tens of thousands per second.
        Batches gather a round's readings per topic, not only consecutive runs: readings of
        several devices arrive interleaved, and runs would make batches of a few readings.
        Order within a topic is kept, which is the order MQTT consumers can rely on.
        """
        topic_cache = self._topic_cache
        last_route: Any = None
        settings: _Settings | None = self._default
        template, encode, qos, retain = self._default.unpacked()
        groups: dict[tuple, tuple[list[dict], list[int]]] = {}
        number = first - 1
        for reading, route in items:
            number += 1
            if route is not last_route:
                last_route = route
                settings = self._route_settings(route)
                if settings is not None:
                    template, encode, qos, retain = settings.unpacked()
            if settings is None:
                self.counters["dropped_bad_route"] += 1  # logged once per route
                dropped.append(number)
                continue
            # Templates use only {gateway}, {device} and {stream}: those values name the topic.
            key = (template, reading.get("gateway"), reading.get("device"), reading.get("stream"))
            try:
                topic = topic_cache.get(key)
            except TypeError:  # an unhashable name: rendered below, not cached
                topic = None
            if topic is None:
                topic = self._topic(template, reading, key)
                if topic is None:
                    dropped.append(number)
                    continue
            if settings.max_readings == 1:
                try:
                    payload = encode(reading)
                except (TypeError, ValueError, OverflowError) as error:
                    self._drop("unencodable", f"cannot encode reading: {error}")
                    dropped.append(number)
                    continue
                yield topic, payload, qos, retain, number
                continue
            group_key = (topic, settings)
            group = groups.get(group_key)
            if group is None:
                group = groups[group_key] = ([], [])
            group[0].append(reading)
            group[1].append(number)
            if len(group[0]) >= settings.max_readings:
                del groups[group_key]
                yield from self._encoded_group(topic, settings, group, dropped)
        for (topic, group_settings), group in groups.items():
            yield from self._encoded_group(topic, group_settings, group, dropped)

    def _encoded_group(
        self, topic: str, settings: _Settings, group: tuple[list[dict], list[int]], dropped
    ):
        readings, numbers = group
        try:
            payload = settings.encode(readings)
        except (TypeError, ValueError, OverflowError):
            kept = []
            for reading, number in zip(readings, numbers):
                if self._encodable(settings, reading):
                    kept.append((reading, number))
                else:
                    dropped.append(number)
            if not kept:
                return
            readings = [reading for reading, _number in kept]
            numbers = [number for _reading, number in kept]
            payload = settings.encode(readings)
        if numbers[-1] - numbers[0] + 1 == len(numbers):  # one device's run: mark as a slice
            token: Any = range(numbers[0], numbers[-1] + 1)
        else:
            token = tuple(numbers)
        yield topic, payload, settings.qos, settings.retain, token

    def _encodable(self, settings: _Settings, reading: dict) -> bool:
        try:
            settings.encode(reading)
        except (TypeError, ValueError, OverflowError) as error:
            self._drop("unencodable", f"cannot encode reading: {error}")
            return False
        return True

    def _topic(self, template: str, reading: dict, key: tuple) -> str | None:
        """Render a topic the cache does not know yet, and remember it when it can."""
        topic = self._render(template, reading)
        if topic is None:
            return None
        if len(self._topic_cache) >= TOPIC_CACHE_LIMIT:
            self._topic_cache.clear()  # bounded: many devices must not grow memory
        try:
            self._topic_cache[key] = topic
        except TypeError:
            pass  # unhashable names are rendered every time
        return topic

    def _render(self, template: str, reading: dict) -> str | None:
        try:
            return render_topic(template, reading)
        except (KeyError, ValueError, TypeError) as error:
            self._drop("bad_topic", f"cannot render topic {template!r}: {error}")
            return None

    def _route_settings(self, route: dict | None) -> _Settings | None:
        try:
            return self._settings(route)
        except (TypeError, ValueError) as error:
            message = f"route {route!r} is not usable, its readings are dropped: {error}"
            if message not in self._route_errors:
                self._route_errors.add(message)
                log.warning("sink %s: %s", self.name, message)
            return None

    def _settings(self, route: dict | None) -> _Settings:
        if not route:
            return self._default
        batch = route.get("batch")
        key = (
            route.get("topic"),
            route.get("qos"),
            route.get("retain"),
            route.get("encoding"),
            _max_readings(batch) if batch is not None else None,
        )
        settings = self._settings_cache.get(key)
        if settings is None:
            default = self._default
            settings = _Settings(
                key[0] or default.template,
                default.qos if key[1] is None else self._checked_qos(key[1]),
                default.retain if key[2] is None else bool(key[2]),
                key[3] or self.options.get("encoding") or "json",
                default.max_readings if key[4] is None else key[4],
            )
            self._settings_cache[key] = settings
        return settings

    def _checked_qos(self, qos: Any) -> int:
        qos = int(qos)
        if qos not in (0, 1):
            raise ValueError(f"sinks.{self.name}.qos: expected 0 or 1, got {qos}")
        return qos

    def _drop(self, reason: str, message: str) -> None:
        self.counters[f"dropped_{reason}"] += 1
        log.warning("sink %s: dropped a reading: %s", self.name, message)
