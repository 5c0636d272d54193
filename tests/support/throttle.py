"""A TCP proxy on 127.0.0.1 that slows the client → server direction to a set rate (a slow link)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time

UP = "client_to_server"
DOWN = "server_to_client"


class _TokenBucket:
    """Bytes may pass at `rate` per second on average, with bursts up to `burst` seconds' worth.

    A taker may overdraw and then waits off its debt, so a large chunk never waits forever for
    a bucket smaller than itself. Lives in the proxy's event loop; only that loop touches it.
    """

    def __init__(self, rate: float | None, burst: float = 0.02):
        self.burst = burst
        self.rate = rate
        self.tokens = 0.0
        self.updated = time.monotonic()
        self.changed = asyncio.Event()  # set by set_rate() to wake takers that wait off a debt

    def set_rate(self, rate: float | None) -> None:
        self._refill()
        self.rate = rate
        self.tokens = min(self.tokens, self._capacity()) if rate else 0.0
        self.changed.set()  # wakes the takers, who carry on at the new rate
        self.changed = asyncio.Event()

    def _capacity(self) -> float:
        return (self.rate or 0.0) * self.burst

    def _refill(self) -> None:
        now = time.monotonic()
        if self.rate:  # a debt (negative tokens) is paid off at the rate, a credit capped
            self.tokens = min(self._capacity(), self.tokens + (now - self.updated) * self.rate)
        self.updated = now

    async def take(self, count: int) -> None:
        self._refill()
        if self.rate is None:
            return
        self.tokens -= count
        while self.rate is not None and self.tokens < 0:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.changed.wait(), -self.tokens / self.rate)
            self._refill()


class ThrottledProxy:
    """127.0.0.1:<port> → 127.0.0.1:<target_port>, run by an event loop in its own thread.

    The client → server direction of all connections together passes through one token
    bucket of `rate_bytes_per_s` (None: unthrottled); with both_directions=True the server →
    client direction gets its own bucket at the same rate. set_rate() changes both at once,
    from any thread. `forwarded[UP]` / `forwarded[DOWN]` count the bytes passed each way.
    When either side of a connection closes, the proxy closes the other.
    """

    def __init__(
        self,
        target_port: int,
        rate_bytes_per_s: float | None = None,
        *,
        both_directions: bool = False,
        target_host: str = "127.0.0.1",
    ):
        _check_rate(rate_bytes_per_s)
        self.target = (target_host, target_port)
        self.both_directions = both_directions
        self.port = 0
        self.forwarded = {UP: 0, DOWN: 0}
        self.connections = 0  # accepted so far
        self._rate = rate_bytes_per_s
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.AbstractServer | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._buckets: dict[str, _TokenBucket] = {}

    @property
    def rate(self) -> float | None:
        return self._rate

    def start(self) -> ThrottledProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(10)
        return self

    def set_rate(self, rate_bytes_per_s: float | None) -> None:
        """Change the rate (None lifts it) at once, including for bytes already waiting."""
        _check_rate(rate_bytes_per_s)
        self._rate = rate_bytes_per_s
        # Through the loop: the buckets and their events belong to it.
        asyncio.run_coroutine_threadsafe(self._apply_rate(), self._loop).result(10)

    def close(self) -> None:
        if not self._thread.is_alive():
            return
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def __enter__(self) -> ThrottledProxy:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    async def _apply_rate(self) -> None:
        for bucket in self._buckets.values():
            bucket.set_rate(self._rate)

    async def _listen(self) -> None:
        # Buckets are made here, in the loop, because asyncio.Event binds to it (Python 3.9).
        self._buckets[UP] = _TokenBucket(self._rate)
        if self.both_directions:
            self._buckets[DOWN] = _TokenBucket(self._rate)
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _accept(self, client_in: asyncio.StreamReader, client_out: asyncio.StreamWriter):
        self.connections += 1
        try:
            server_in, server_out = await asyncio.open_connection(*self.target)
        except OSError:
            client_out.close()  # the target is down: the client sees the connection close
            return
        writers = (client_out, server_out)
        self._writers.update(writers)
        try:
            await asyncio.gather(
                self._pump(client_in, server_out, UP, writers),
                self._pump(server_in, client_out, DOWN, writers),
            )
        finally:
            self._writers.difference_update(writers)

    async def _pump(self, source, sink, direction: str, writers) -> None:
        bucket = self._buckets.get(direction)
        try:
            while True:
                data = await source.read(16384)  # small reads keep the throttled flow smooth
                if not data:
                    break
                if bucket is not None:
                    await bucket.take(len(data))
                sink.write(data)
                await sink.drain()
                self.forwarded[direction] += len(data)
        except (ConnectionError, OSError):
            pass  # a side went away: closing both below is all there is to do
        finally:
            for writer in writers:  # closing one side closes the other
                writer.close()

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for writer in list(self._writers):
            writer.close()


def _check_rate(rate: float | None) -> None:
    if rate is not None and not rate > 0:
        raise ValueError(f"rate_bytes_per_s must be positive or None, not {rate!r}")
