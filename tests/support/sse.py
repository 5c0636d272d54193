"""An event-stream client on aiohttp's client: keeps complete events only, as EventSource does."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import aiohttp

from gateway.api.server import ApiServer
from gateway.sinks.sse import SseSink
from tests.support.waiting import eventually


@contextlib.asynccontextmanager
async def served_sink(options: dict[str, Any], api: dict | None = None):
    """An API listener with a running SSE sink named "sse" (options): yields (sink, URL)."""
    server = ApiServer(api=api or {"listen": "127.0.0.1:0"})
    sink = SseSink("sse", {"heartbeat": 5.0, **options}, "gw", server)
    await server.start()
    task = asyncio.create_task(sink.run())
    try:
        await eventually(lambda: sink.connected, 5, "the sink to open")
        yield sink, f"http://127.0.0.1:{server.port}/sse"
    finally:
        await sink.stop()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await server.stop()


class SseClient:
    """GET an SSE URL and parse events; cut() drops the connection mid-stream, connect()
    again resumes with Last-Event-ID = the id of the last complete event, like a browser."""

    def __init__(self, url: str, headers: dict[str, str] | None = None):
        self.url = url
        self.headers = headers or {}
        self.events: list[dict[str, Any]] = []
        self.last_id: str | None = None
        self.retry: int | None = None
        self.comments = 0
        self.status: int | None = None
        self.response_headers: dict[str, str] = {}
        self.ended = asyncio.Event()
        self._changed = asyncio.Event()
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task | None = None

    async def connect(self, resume: bool = True) -> SseClient:
        self._session = self._session or aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, sock_read=30)
        )
        headers = dict(self.headers)
        if resume and self.last_id is not None:
            headers["Last-Event-ID"] = self.last_id
        self.ended.clear()
        self._response = await self._session.get(self.url, headers=headers)
        self.status = self._response.status
        self.response_headers = dict(self._response.headers)
        self._task = asyncio.create_task(self._read(self._response))
        return self

    async def cut(self) -> None:
        """Drop the connection at once: what was half received is lost, as on a network cut."""
        self._response.close()
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    async def close(self) -> None:
        if self._task:
            await self.cut()
        if self._session:
            await self._session.close()

    async def _read(self, response: aiohttp.ClientResponse) -> None:
        pending = b""
        try:
            async for chunk in response.content.iter_any():
                pending += chunk
                *blocks, pending = pending.split(b"\n\n")
                for block in blocks:
                    self._dispatch(block.decode())
                self._changed.set()
        except (aiohttp.ClientError, ConnectionError):
            pass
        finally:
            self.ended.set()
            self._changed.set()

    def _dispatch(self, block: str) -> None:
        event: dict[str, Any] = {"event": "message", "data": []}
        for line in block.split("\n"):
            if line.startswith(":"):
                self.comments += 1
                continue
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "retry":
                self.retry = int(value)
            elif name in ("id", "event"):
                event[name] = value
            elif name == "data":
                event["data"].append(value)
        if not event["data"]:
            return
        event["data"] = "\n".join(event["data"])
        if "id" in event:
            self.last_id = event["id"]
        self.events.append(event)

    def named(self, name: str) -> list[dict[str, Any]]:
        return [event for event in self.events if event["event"] == name]

    @property
    def readings(self) -> list[dict]:
        found = []
        for event in self.events:
            if event["event"] in ("reading", "batch"):
                value = json.loads(event["data"])
                found.extend(value if isinstance(value, list) else [value])
        return found

    async def wait_for(self, predicate, timeout: float = 15.0) -> None:
        async def until() -> None:
            while not predicate(self):
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(until(), timeout)
