"""A TCP far side under a test's control: refuses, hangs (accepts, never answers) or relays.

Sinks connect to it instead of the real server (a Mosquitto broker): `mode = "forward"`
relays both ways, `"hang"` accepts and swallows everything (a hung broker or a firewall
dropping packets; established relays stop passing bytes too), `"refuse"` closes every new
connection at once (the broker is down). Subscribers stay on the real broker, so switching
modes never races a subscription.
"""

from __future__ import annotations

import asyncio

MODES = ("forward", "hang", "refuse")


class FarSide:
    def __init__(self, target_port: int, mode: str = "forward"):
        self.target_port = target_port
        self.mode = mode
        self.accepted: list[float] = []  # loop time of each accepted connection
        self._writers: list[asyncio.StreamWriter] = []
        self._tasks: set[asyncio.Task] = set()

    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"mode: expected one of {', '.join(MODES)}, got {mode!r}")
        self._mode = mode

    async def start(self) -> FarSide:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted.append(asyncio.get_running_loop().time())
        self._tasks.add(asyncio.current_task())
        if self.mode == "refuse":
            writer.close()
            return
        self._writers.append(writer)
        if self.mode == "hang":
            await self._pipe(reader, None)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self._writers.append(up_writer)
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    async def _pipe(self, reader: asyncio.StreamReader, writer) -> None:
        try:
            while data := await reader.read(65536):
                if writer is None or self.mode != "forward":
                    continue  # swallowed: the sender never hears back
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            if writer is not None:
                writer.close()

    async def close(self) -> None:
        self.server.close()
        for writer in self._writers:
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
