"""MQTT sink: publishes readings to a broker through a small asyncio MQTT 3.1.1 client."""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
import ssl
from typing import Any, Callable
from urllib.parse import unquote, urlsplit

from gateway.core import mqtt
from gateway.core.routing import check_topic_template, render_topic
from gateway.sinks.base import Item, Sink, SinkError
from gateway.sinks.encoding import encoder

log = logging.getLogger("gateway.sinks.mqtt")

DEFAULT_URL = "mqtt://127.0.0.1:1883"
DEFAULT_TOPIC = "gw/{gateway}/{device}/{stream}"
DEFAULT_CLIENT_ID = "gw-{gateway}"
STATUS_TOPIC = "gw/{gateway}/status"
CONNACK_TIMEOUT = 10.0
CLOSE_TIMEOUT = 2.0
TOPIC_CACHE_LIMIT = 4096
MAX_PACKET_ID = mqtt.MAX_PACKET_ID
DEFAULT_MAX_BATCH = 2000  # readings per send(); the base's default is 500
WRITE_CHUNK = 16384  # bytes handed to the socket at a time within one send()


def parse_url(url: str) -> tuple[str, int, bool, str | None, str | None]:
    """(host, port, tls, username, password) from mqtt://[user:pass@]host[:port] or mqtts://."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
        raise ValueError(f"url: expected mqtt://host:port or mqtts://host:port, got {url!r}")
    tls = parts.scheme in ("mqtts", "ssl")
    if not parts.hostname:
        raise ValueError(f"url: {url!r} names no host")
    port = parts.port or (8883 if tls else 1883)
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password else None
    return parts.hostname, port, tls, username, password


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
    """One TCP (or TLS) connection: received bytes go straight through the codec.

    A protocol rather than a stream reader and a task: PUBACKs are handled in the same event
    loop step that reads them, which matters at tens of thousands per second.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.transport: asyncio.Transport | None = None
        self.packets = mqtt.PacketReader()
        self.first_packet: asyncio.Future = loop.create_future()  # CONNACK, before the session
        self.closed: asyncio.Future = loop.create_future()
        self.on_packets: Callable[[list], None] | None = None
        self.on_lost: Callable[[str], None] | None = None
        self._loop = loop
        self._failure: str | None = None
        self._paused = False
        self._drain_waiter: asyncio.Future | None = None
        self._quickack: Callable[[], None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._quickack = _quickack(transport)

    def data_received(self, data: bytes) -> None:
        if self._quickack is not None:
            self._quickack()
        try:
            packets = self.packets.feed(data)
        except mqtt.MqttProtocolError as error:
            self.fail(f"the broker sent invalid MQTT: {error}")
            return
        if packets and not self.first_packet.done():
            self.first_packet.set_result(packets.pop(0))
        if packets and self.on_packets is not None:
            self.on_packets(packets)

    def fail(self, reason: str) -> None:
        """Close the connection, remembering why."""
        self._failure = self._failure or reason
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        reason = self._failure or (str(exc) if exc else "") or "the broker closed the connection"
        for future in (self.first_packet, self._drain_waiter):
            if future is not None and not future.done():
                future.set_exception(ConnectionError(reason))
                future.exception()  # retrieved: nobody may be waiting any more
        if not self.closed.done():
            self.closed.set_result(None)
        if self.on_lost is not None:
            self.on_lost(reason)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_result(None)

    async def drain(self) -> None:
        """Wait while the transport's buffer is above its high-water mark."""
        if self.closed.done():
            raise ConnectionError(self._failure or "the connection is closed")
        if not self._paused:
            return
        self._drain_waiter = self._loop.create_future()
        await self._drain_waiter


class _AckGroup:
    """The PUBACKs still awaited for one write; done resolves when the last one arrives."""

    __slots__ = ("remaining", "done")

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.remaining = 0
        self.done: asyncio.Future = loop.create_future()


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

    QoS 1 messages count as delivered only once the broker's PUBACK arrived. The PUBLISH
    packets of one send() are written in a few large chunks as they are encoded (so the broker
    works while we encode) and their PUBACKs are awaited together.
    """

    kind = "mqtt"

    def __init__(self, name: str, options: dict[str, Any], gateway_id: str):
        super().__init__(name, options, gateway_id)
        # One send() is one round of PUBACKs; bigger rounds amortise the wait for the last one.
        self.max_batch = int(options.get("max_batch", DEFAULT_MAX_BATCH))
        url = options.get("url") or DEFAULT_URL
        try:
            self.host, self.port, self.tls, url_user, url_password = parse_url(url)
        except ValueError as error:
            raise ValueError(f"sinks.{name}.{error}") from None
        try:
            self._tls_context = tls_context(options) if self.tls else None
        except (OSError, ssl.SSLError) as error:
            raise ValueError(
                f"sinks.{name}: cannot load the TLS ca/cert/key files: {error}"
            ) from None
        template = options.get("client_id") or DEFAULT_CLIENT_ID
        self.client_id = template.replace("{gateway}", gateway_id).replace("{sink}", name)
        self.username = options.get("username") or url_user
        self.password = options.get("password") or url_password
        self.keepalive = float(options.get("keepalive", 30.0))
        self.ack_timeout = float(options.get("ack_timeout") or max(self.keepalive, 10.0))
        self.connect_timeout = float(options.get("connect_timeout") or CONNACK_TIMEOUT)
        self.max_inflight = min(
            mqtt.MAX_PACKET_ID - 1, max(1, int(options.get("max_inflight", 65534)))
        )
        self.availability = bool(options.get("availability", True))
        self.status_topic = (options.get("status_topic") or STATUS_TOPIC).replace(
            "{gateway}", gateway_id
        )
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
        self.counters["published"] = 0
        self.counters["acked"] = 0
        self._settings_cache: dict[tuple, _Settings] = {}
        self._route_errors: set[str] = set()
        self._topic_cache: dict[tuple, str] = {}
        self._publish = mqtt.PublishEncoder()
        self._packet_id = 0
        self._inflight: dict[int, _AckGroup] = {}
        self._connection: _Connection | None = None
        self._keepalive_task: asyncio.Task | None = None
        self._lost: str | None = "not connected yet"
        self._reported: str | None = None
        self._last_write = 0.0
        self._ping_sent_at: float | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    # -- connection ------------------------------------------------------------------------
    async def open(self) -> None:
        connection = await self._connect_transport()
        try:
            connection.transport.write(self._connect_packet())
            connack = await asyncio.wait_for(connection.first_packet, self.connect_timeout)
        except (OSError, asyncio.TimeoutError) as error:
            connection.fail("no CONNACK")
            reason = str(error) or type(error).__name__
            raise self._failure(
                f"MQTT broker at {self.address} did not answer CONNECT ({reason})"
            ) from error
        except BaseException:  # cancelled (the sink's send_timeout, or a stop): no leak
            connection.fail("connecting cancelled")
            raise
        if connack.type != mqtt.CONNACK:
            connection.fail("no CONNACK")
            raise self._failure(f"MQTT broker at {self.address} sent {connack.name} before CONNACK")
        if connack.return_code:
            connection.fail("connection refused")
            reason = mqtt.CONNACK_REASONS.get(connack.return_code, "unknown reason")
            raise self._failure(
                f"MQTT broker at {self.address} refused the connection: {reason} "
                f"(CONNACK code {connack.return_code}); check sinks.{self.name}"
                ".username/password/client_id",
                level=logging.ERROR,
            )
        self._start_session(connection)
        if self.availability:
            await self.publish_raw(self.status_topic, b"online", qos=1, retain=True)
        self._reported = None
        log.info(
            "sink %s: connected to MQTT broker at %s as %r; %d readings queued",
            self.name,
            self.address,
            self.client_id,
            self.depth,
        )

    async def _connect_transport(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            _, connection = await asyncio.wait_for(
                loop.create_connection(
                    functools.partial(_Connection, loop),
                    self.host,
                    self.port,
                    ssl=self._tls_context,
                    server_hostname=self.host if self._tls_context else None,
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
            raise self._failure(
                f"no MQTT broker answers at {self.address}; readings are kept queued and "
                f"retried ({reason})"
            ) from error

    def _connect_packet(self) -> bytes:
        will = {}
        if self.availability:
            will = {
                "will_topic": self.status_topic,
                "will_payload": b"offline",
                "will_qos": 1,
                "will_retain": True,
            }
        return mqtt.connect(
            self.client_id,
            keepalive=int(round(self.keepalive)),
            clean_session=True,
            username=self.username,
            password=self.password.encode() if isinstance(self.password, str) else self.password,
            **will,
        )

    def _start_session(self, connection: _Connection) -> None:
        self._connection = connection
        self._lost = None
        self._ping_sent_at = None
        self._last_write = asyncio.get_running_loop().time()
        connection.on_packets = self._on_packets
        connection.on_lost = functools.partial(self._on_connection_lost, connection)
        if self._keepalive_task is not None:
            self._keepalive_task.cancel()  # one keepalive loop per session
            self._keepalive_task = None
        if self.keepalive > 0:
            self._keepalive_task = asyncio.create_task(self._keepalive_loop())

    def _on_connection_lost(self, connection: _Connection, reason: str) -> None:
        if connection is self._connection:  # not an older connection closing late
            self._connection_lost(reason)

    def _failure(self, message: str, level: int = logging.WARNING) -> SinkError:
        """A SinkError for message, logged once per kind of outage rather than per retry."""
        kind = message.split("(")[0]
        if kind != self._reported:
            log.log(level, "sink %s: %s", self.name, message)
            self._reported = kind
        else:
            log.debug("sink %s: %s", self.name, message)
        return SinkError(message)

    def _connection_lost(self, reason: str) -> None:
        """The session died under us: say so once; the base reconnects on the next send."""
        if self._lost is not None:
            return
        if self.connected:
            log.warning(
                "sink %s: lost the MQTT broker at %s (%s); readings are kept queued and retried",
                self.name,
                self.address,
                reason,
            )
            self._reported = "lost"
        self.connected = False
        self._end_session(reason)
        self.connection_dropped(reason)

    def _end_session(self, reason: str) -> None:
        """Fail every awaited acknowledgement and close the transport."""
        if self._lost is not None:
            return
        self._lost = reason
        self._fail_inflight(reason)
        if self._connection is not None:
            self._connection.fail(reason)

    def _fail_inflight(self, reason: str) -> None:
        groups = {id(group): group for group in self._inflight.values()}
        self._inflight.clear()
        for group in groups.values():
            if not group.done.done():
                group.done.set_exception(SinkError(f"MQTT connection lost: {reason}"))
                group.done.exception()  # whoever awaits sees it; nobody waiting is fine too

    async def close(self) -> None:
        connection = self._connection
        if connection is None:
            return
        if self._stopping and self._lost is None:
            await self._say_goodbye(connection)
        self._end_session("closed by the gateway")
        if self._keepalive_task is not None:
            self._keepalive_task.cancel()
            self._keepalive_task = None
        self._connection = None
        try:
            await asyncio.wait_for(asyncio.shield(connection.closed), CLOSE_TIMEOUT)
        except asyncio.TimeoutError:
            connection.transport.abort()

    async def _say_goodbye(self, connection: _Connection) -> None:
        """Let the batch in flight finish, publish offline, then DISCONNECT (no last will)."""
        pending = [group.done for group in self._inflight.values() if not group.done.done()]
        if pending:
            await asyncio.wait(set(pending), timeout=min(self.ack_timeout, CLOSE_TIMEOUT * 2))
        try:
            if self.availability:
                await asyncio.wait_for(
                    self.publish_raw(self.status_topic, b"offline", qos=1, retain=True),
                    CLOSE_TIMEOUT,
                )
            self.connected = False  # the broker closing the socket now is no loss
            self._write(mqtt.disconnect())
            await asyncio.wait_for(connection.drain(), CLOSE_TIMEOUT)
            log.info("sink %s: disconnected from MQTT broker at %s", self.name, self.address)
        except (SinkError, OSError, asyncio.TimeoutError) as error:
            log.info("sink %s: closing without a clean goodbye (%s)", self.name, error)

    # -- background tasks ------------------------------------------------------------------
    def _on_packets(self, packets: list) -> None:
        """Packets from the broker: acknowledgements complete their group."""
        inflight = self._inflight
        acked = 0
        for packet in packets:
            kind = packet.type
            if kind == mqtt.PUBACK or kind == mqtt.PUBCOMP:
                group = inflight.pop(packet.packet_id, None)
                if group is None:
                    continue  # a late acknowledgement for a window that timed out
                acked += 1
                group.remaining -= 1
                if not group.remaining and not group.done.done():
                    group.done.set_result(None)
            elif kind == mqtt.PUBREC:
                self._write(mqtt.pubrel(packet.packet_id))  # QoS 2, second step
            elif kind == mqtt.PINGRESP:
                self._ping_sent_at = None
            else:
                log.debug("sink %s: ignoring %r from the broker", self.name, packet)
        self.counters["acked"] += acked

    async def _keepalive_loop(self) -> None:
        """PINGREQ when nothing was written for half the keepalive; no PINGRESP means dead."""
        loop = asyncio.get_running_loop()
        interval = self.keepalive
        while self._lost is None:
            await asyncio.sleep(max(0.05, interval / 4))
            now = loop.time()
            if self._ping_sent_at is not None and now - self._ping_sent_at > interval:
                self._connection_lost(f"no PINGRESP within the {interval:g}s keepalive")
                return
            if self._ping_sent_at is None and now - self._last_write >= interval / 2:
                self._ping_sent_at = now
                try:
                    self._write(mqtt.pingreq())
                except SinkError:
                    return  # the session ended meanwhile

    # -- publishing ------------------------------------------------------------------------
    def _write(self, data: bytes | bytearray) -> None:
        if self._lost is not None or self._connection is None:
            raise SinkError(f"not connected to MQTT broker at {self.address} ({self._lost})")
        self._connection.transport.write(data)
        self._last_write = asyncio.get_running_loop().time()

    def _next_packet_id(self) -> int:
        packet_id = self._packet_id
        inflight = self._inflight
        while True:
            packet_id = packet_id + 1 if packet_id < mqtt.MAX_PACKET_ID else 1
            if packet_id not in inflight:
                self._packet_id = packet_id
                return packet_id
            if packet_id == self._packet_id:
                raise SinkError("all 65535 MQTT packet ids are in flight")

    async def publish_raw(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False):
        """Publish one message outside the reading path (availability, discovery).

        Returns once the broker acknowledged it (QoS 1 and 2) or it was written (QoS 0).
        """
        out = bytearray()
        packet_id = self._next_packet_id() if qos else 0
        self._publish.append(out, topic, payload, self._checked_qos(qos), retain, packet_id)
        group = _AckGroup(asyncio.get_running_loop())
        ids = [packet_id] if qos else []
        if qos:
            self._inflight[packet_id] = group
        try:
            self._write(out)
            self.counters["published"] += 1
            await self._confirm(group, ids)
        except SinkError:
            self._forget(ids)
            raise

    async def send(self, items: list[Item]) -> None:
        if self._lost is not None:
            raise SinkError(f"not connected to MQTT broker at {self.address} ({self._lost})")
        loop = asyncio.get_running_loop()
        append = self._publish.append
        inflight = self._inflight
        packet_id = self._packet_id
        out = bytearray()
        group = _AckGroup(loop)
        ids: list[int] = []
        published = 0
        try:
            for topic, payload, qos, retain in self._messages(items):
                if qos:
                    packet_id = packet_id + 1 if packet_id < MAX_PACKET_ID else 1
                    if packet_id in inflight:
                        self._packet_id = packet_id
                        packet_id = self._next_packet_id()
                try:
                    append(out, topic, payload, qos, retain, packet_id)
                except ValueError as error:
                    self._drop("bad_topic", f"cannot publish to {topic!r}: {error}")
                    continue
                published += 1
                if qos:
                    inflight[packet_id] = group
                    ids.append(packet_id)
                # Hand bytes to the socket as they are made so the broker works while we encode.
                if len(out) >= WRITE_CHUNK:
                    self._write(out)
                    out = bytearray()
                if len(ids) >= self.max_inflight:
                    self._write(out)
                    out = bytearray()
                    await self._confirm(group, ids)
                    group, ids = _AckGroup(loop), []
            if out:
                self._write(out)
            await self._confirm(group, ids)
        except SinkError:
            self._forget(ids)
            raise
        finally:
            self._packet_id = packet_id
            self.counters["published"] += published

    async def _confirm(self, group: _AckGroup, ids: list[int]) -> None:
        """Wait until the written bytes left and every id in ids is acknowledged."""
        group.remaining = len(ids)
        connection = self._connection
        try:
            if connection is None:
                raise ConnectionError(self._lost or "not connected")
            await connection.drain()
        except OSError as error:
            self._connection_lost(str(error) or type(error).__name__)
            raise SinkError(f"MQTT connection lost while writing: {self._lost}") from error
        if not ids:
            return
        try:
            await asyncio.wait_for(group.done, self.ack_timeout)
        except asyncio.TimeoutError:
            waiting = group.remaining
            self._connection_lost(f"{waiting} acknowledgements missing after {self.ack_timeout:g}s")
            raise SinkError(
                f"MQTT broker at {self.address} did not acknowledge {waiting} of {len(ids)} "
                f"messages within {self.ack_timeout:g}s; they will be sent again"
            ) from None

    def _forget(self, ids: list[int]) -> None:
        pop = self._inflight.pop
        for packet_id in ids:
            pop(packet_id, None)

    # -- readings to messages --------------------------------------------------------------
    def _messages(self, items: list[Item]):
        """(topic, payload, qos, retain) per message; batch routes group readings by topic.

        This is the hot path: one reading per message at tens of thousands per second.
        Batches gather a round's readings per topic, not only consecutive runs: readings of
        several devices arrive interleaved, and runs would make batches of a few readings.
        Order within a topic is kept, which is the order MQTT consumers can rely on.
        """
        topic_cache = self._topic_cache
        last_route: Any = None
        settings: _Settings | None = self._default
        template, encode, qos, retain = self._default.unpacked()
        groups: dict[tuple, list[dict]] = {}
        for reading, route in items:
            if route is not last_route:
                last_route = route
                settings = self._route_settings(route)
                if settings is not None:
                    template, encode, qos, retain = settings.unpacked()
            if settings is None:
                self.counters["dropped_bad_route"] += 1  # logged once per route
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
                    continue
            if settings.max_readings == 1:
                try:
                    payload = encode(reading)
                except (TypeError, ValueError, OverflowError) as error:
                    self._drop("unencodable", f"cannot encode reading: {error}")
                    continue
                yield topic, payload, qos, retain
                continue
            group_key = (topic, settings)
            group = groups.setdefault(group_key, [])
            group.append(reading)
            if len(group) >= settings.max_readings:
                del groups[group_key]
                yield from self._encoded_group(topic, settings, group)
        for (topic, group_settings), group in groups.items():
            yield from self._encoded_group(topic, group_settings, group)

    def _encoded_group(self, topic: str, settings: _Settings, readings: list[dict]):
        try:
            payload = settings.encode(readings)
        except (TypeError, ValueError, OverflowError):
            readings = [reading for reading in readings if self._encodable(settings, reading)]
            if not readings:
                return
            payload = settings.encode(readings)
        yield topic, payload, settings.qos, settings.retain

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
        if qos not in (0, 1, 2):
            raise ValueError(f"sinks.{self.name}.qos: expected 0, 1 or 2, got {qos}")
        return qos

    def _drop(self, reason: str, message: str) -> None:
        self.counters[f"dropped_{reason}"] += 1
        log.warning("sink %s: dropped a reading: %s", self.name, message)
