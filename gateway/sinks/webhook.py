"""Webhook sink: batches of readings as HTTP POSTs (aiohttp client), one Idempotency-Key each."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import ssl
from typing import Any, Iterator

import aiohttp

from gateway.sinks.base import ConnectRefused, Item, Sink, SinkError, route_runs
from gateway.sinks.encoding import encoder
from gateway.sinks.udp import join_array
from gateway.throttled_log import ThrottledLog

log = logging.getLogger("gateway.sinks.webhook")

CONTENT_TYPES = {
    "json": "application/json",
    "msgpack": "application/msgpack",
    "cbor": "application/cbor",
}
DEFAULT_BATCH = 500  # readings per POST unless batch.max_readings says otherwise
# Answers worth asking again: the receiver is busy, overloaded or failing, not refusing.
RETRYABLE = frozenset({408, 425, 429})
MAX_ANSWER = 64 * 1024  # of an answer's body, only this much is read (and 200 bytes logged)


class Payload:
    """One POST: its encoded body, how many readings it carries and its Idempotency-Key."""

    __slots__ = ("body", "content_type", "count", "key", "first")

    def __init__(self, body: bytes, content_type: str, count: int, key: str, first: tuple):
        self.body = body
        self.first = first
        self.content_type = content_type
        self.count = count
        self.key = key


def identity(reading: dict) -> tuple:
    """What makes a reading unique (DESIGN §3): its device, stream and seq."""
    return reading.get("device"), reading.get("stream"), reading.get("seq")


class WebhookSink(Sink):
    """POSTs readings as arrays (JSON, MessagePack or CBOR) to one URL.

    Each POST confirms its own readings to the queue: a 2xx confirms them, any other 4xx
    (but 408, 425, 429) rejects them — counted, logged, not sent again — and 429, 5xx, a
    timeout or a lost connection fail the send, so the base backs off, feeds the breaker and
    the readings stay at the front of the queue. The Idempotency-Key is a digest of the
    readings a POST carries, and a failed POST's grouping is remembered, so a retry of the
    same readings carries the same key, even after a restart from the disk buffer.
    """

    kind = "webhook"

    def __init__(self, name: str, options: dict[str, Any], gateway_id: str):
        super().__init__(name, options, gateway_id)
        where = f"sinks.{name}"
        self.url = options.get("url")
        if not isinstance(self.url, str) or not self.url.startswith(("http://", "https://")):
            raise ValueError(f"{where}.url: expected an http:// or https:// URL, got {self.url!r}")
        self.timeout = float(options.get("timeout", 10.0))
        self.encoding = options.get("encoding", "json")
        encoder(self.encoding)  # raises ValueError naming the choices
        self.batch = options.get("batch") or None
        self.headers = dict(options.get("headers") or {})
        self.ssl = _ssl_context(options, where) if self.url.startswith("https://") else None
        self._session: aiohttp.ClientSession | None = None
        # (identity of the first reading, count) of the POST that failed last: its retry
        # carries the same readings, hence the same key.
        self._regroup: tuple[tuple, int] | None = None
        self._rejections = ThrottledLog(log, interval=10.0)

    # -- connection ----------------------------------------------------------------------
    async def open(self) -> None:
        await self.close()
        connector = aiohttp.TCPConnector(ssl=self.ssl if self.ssl is not None else True)
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        self._session = aiohttp.ClientSession(connector=connector, timeout=timeout)

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    # -- delivery ------------------------------------------------------------------------
    async def _deliver(self, batch: list[Item]) -> None:
        """One POST per payload, each confirmed as its answer comes: a failure gives back
        only what was not answered yet."""
        try:
            for payload in self._payloads(batch):
                await self._bounded(self._post(payload), "posting")
                self.queue.confirm(payload.count)
        except BaseException:
            self.queue.give_back()
            raise

    async def send(self, items: list[Item]) -> None:
        """Post every item now (tools and tests); the sender task confirms per POST instead."""
        for payload in self._payloads(items):
            await self._post(payload)

    async def _post(self, payload: Payload) -> None:
        session = self._session
        if session is None:
            raise SinkError("webhook sink is not open")
        headers = {
            **self.headers,
            "Content-Type": payload.content_type,
            "Idempotency-Key": payload.key,
        }
        self.counters["posts"] += 1
        try:
            async with session.post(
                self.url, data=payload.body, headers=headers, allow_redirects=False
            ) as response:
                status = response.status
                answer = await response.content.read(MAX_ANSWER)
        except asyncio.TimeoutError:
            self._failed_post(payload)
            raise SinkError(f"no answer within {self.timeout:g}s (timeout)") from None
        except aiohttp.ClientConnectorError as error:
            self._failed_post(payload)
            if isinstance(error.os_error, ConnectionRefusedError):
                raise ConnectRefused(f"{self.url}: connection refused") from None
            raise SinkError(f"{self.url}: {error.os_error or error}") from None
        except aiohttp.ClientError as error:
            self._failed_post(payload)
            raise SinkError(f"{self.url}: {type(error).__name__}: {error}") from None
        self._answered(payload, status, answer)

    def _answered(self, payload: Payload, status: int, answer: bytes) -> None:
        if 200 <= status < 300:
            self._regroup = None
            self.counters["delivered"] += payload.count
            return
        if status >= 500 or status in RETRYABLE:
            self._failed_post(payload)
            self.counters["http_errors"] += 1
            raise SinkError(f"{self.url} answered {status}")
        self._regroup = None
        self.counters["rejected"] += payload.count
        self.counters["dropped_rejected"] += payload.count  # metrics: dropped, reason rejected
        self.counters["rejected_posts"] += 1
        self._rejections.warning(
            status,
            "sink %s: %s answered %d; %d readings rejected, not sent again: %s",
            self.name, self.url, status, payload.count, answer[:200].decode("utf-8", "replace"),
        )  # fmt: skip

    def _failed_post(self, payload: Payload) -> None:
        self._regroup = (payload.first, payload.count)

    # -- payloads ------------------------------------------------------------------------
    def _payloads(self, items: list[Item]) -> Iterator[Payload]:
        for (encoding, size), readings in route_runs(items, self._settings):
            encode = encoder(encoding)
            start = 0
            while start < len(readings):
                count = self._group_size(readings[start], size)
                group = readings[start : start + count]
                body = join_array(encoding, [encode(reading) for reading in group])
                key = self._key(group)
                yield Payload(body, CONTENT_TYPES[encoding], len(group), key, identity(group[0]))
                start += len(group)

    def _group_size(self, first: dict, size: int) -> int:
        regroup = self._regroup
        if regroup is not None and regroup[0] == identity(first):
            return regroup[1]
        return size

    def _key(self, group: list[dict]) -> str:
        digest = hashlib.sha256(f"{self.gateway_id}\n{self.name}".encode())
        for reading in group:
            device, stream, seq = identity(reading)
            digest.update(f"\n{device}/{stream}/{seq}".encode())
        return digest.hexdigest()[:32]

    def _settings(self, route: dict | None) -> tuple[str, int]:
        route = route or {}
        batch = route.get("batch") or self.batch
        size = int(batch.get("max_readings", DEFAULT_BATCH)) if batch else DEFAULT_BATCH
        return route.get("encoding") or self.encoding, max(size, 1)


def _ssl_context(options: dict[str, Any], where: str) -> ssl.SSLContext:
    """Verification on by default; `ca` adds a CA file, `verify = false` turns it off."""
    try:
        context = ssl.create_default_context(cafile=options.get("ca"))
        if options.get("cert"):
            context.load_cert_chain(options["cert"], options.get("key"))
    except (OSError, ssl.SSLError) as error:
        raise ValueError(f"{where}: cannot load the TLS files: {error}") from None
    if options.get("verify", True) is False:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context
