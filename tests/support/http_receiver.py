"""A real aiohttp webhook receiver for tests: records every POST and answers by a script."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from gateway.sinks.encoding import decoder

DECODERS = {
    "application/json": "json",
    "application/msgpack": "msgpack",
    "application/cbor": "cbor",
}


class Post:
    """One request as the receiver got it: its key, headers, readings and the answer given."""

    def __init__(self, key: str | None, headers: dict, readings: list[dict], answer: Any):
        self.key = key
        self.headers = headers
        self.readings = readings
        self.answer = answer


class HookReceiver:
    """POST / on 127.0.0.1: answers the next entry of `script` (a status, or "hang": never
    answer), then `status` for ever. stop()/start() take it down and up on the same port."""

    def __init__(self, script: list | None = None, status: int = 200, tls=None):
        self.tls = tls  # an ssl.SSLContext: serve https
        self.script = list(script or [])
        self.status = status
        self.posts: list[Post] = []
        self.changed = asyncio.Event()
        self._released = asyncio.Event()  # lets hanging handlers end at close()
        self.port = 0
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.port}/hook"

    async def start(self) -> HookReceiver:
        application = web.Application(client_max_size=64 * 1024**2)
        application.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(application, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(
            self._runner, "127.0.0.1", self.port, reuse_address=True, ssl_context=self.tls
        )
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        """Down: nothing listens on the port any more (connections are refused)."""
        self._released.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        self._released = asyncio.Event()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        encoding = DECODERS[request.headers["Content-Type"]]
        answer = self.script.pop(0) if self.script else self.status
        post = Post(
            request.headers.get("Idempotency-Key"),
            dict(request.headers),
            decoder(encoding)(body),
            answer,
        )
        self.posts.append(post)
        self.changed.set()
        if answer == "hang":
            await self._released.wait()
            return web.Response(status=503)
        return web.Response(status=answer, text="no thanks" if answer >= 400 else "ok")

    def accepted(self) -> list[dict]:
        """Readings of the POSTs answered 2xx, in arrival order."""
        return [
            reading
            for post in self.posts
            if isinstance(post.answer, int) and 200 <= post.answer < 300
            for reading in post.readings
        ]

    async def wait_for_accepted(self, count: int, timeout: float = 30.0) -> None:
        async def caught_up() -> None:
            while len(self.accepted()) < count:
                self.changed.clear()
                await self.changed.wait()

        await asyncio.wait_for(caught_up(), timeout)
