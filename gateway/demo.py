"""`gateway demo`'s own receivers: a broker when none answers, a UDP listener, a subscriber."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import socket
import subprocess
import sys
import time
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from gateway.core import mqtt

log = logging.getLogger("gateway.demo")

BROKER_START_TIMEOUT = 5.0
PROBE_TIMEOUT = 1.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def _answers(host: str, port: int) -> bool:
    """Something accepts TCP connections at host:port (a broker, presumably)."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), PROBE_TIMEOUT)
    except (OSError, asyncio.TimeoutError):
        return False
    writer.close()
    return True


def _readings_in(payload: bytes) -> int:
    """How many readings a JSON payload carries (a reading, or a batch of them); 0 if none."""
    try:
        value = json.loads(payload)
    except ValueError:
        return 0
    if isinstance(value, list):
        return sum(1 for item in value if isinstance(item, dict) and "seq" in item)
    return 1 if isinstance(value, dict) and "seq" in value else 0


class _UdpCounter(asyncio.DatagramProtocol):
    def __init__(self, counts: dict[str, int]) -> None:
        self.counts = counts

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.counts["udp"] += _readings_in(data)


class Demo:
    """Receivers for every output of the demo config, so its summary says what arrived.

    start() rewrites the config: the UDP sink sends to the demo's own listener; the MQTT
    sink keeps its broker when one answers there, else the demo starts Mosquitto on a free
    port (when it is installed) and uses that. A subscriber counts the MQTT readings, a
    WebSocket client those of /ws. `commands` says how to watch each output, and where the
    dashboard is.
    """

    def __init__(self) -> None:
        self.counts = {"mqtt": 0, "udp": 0, "websocket": 0}
        self.broker: subprocess.Popen | None = None
        self.broker_port: int | None = None
        self.commands: list[str] = []
        self._transport: asyncio.DatagramTransport | None = None
        self._tasks: list[asyncio.Task] = []
        self._http: aiohttp.ClientSession | None = None

    async def start(self, config: dict[str, Any]) -> None:
        gateway_id = config["gateway"]["id"]
        await self._start_udp(config)
        for sink in config["sinks"].values():
            if sink["type"] == "mqtt":
                await self._use_broker(sink, gateway_id)
        listen = config["api"]["listen"]
        # The listener serves the dashboard (gateway.api.dashboard) at / of the same address.
        self.commands.append(f"the dashboard: http://{listen}/")
        if any(sink["type"] == "websocket" for sink in config["sinks"].values()):
            self._tasks.append(asyncio.create_task(self._watch_websocket(f"ws://{listen}/ws")))
            self.commands.append(f"{sys.executable} -m websockets ws://{listen}/ws")
        self.commands.append(f"curl -s http://{listen}/api/v1/health")

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._http is not None:
            await self._http.close()
        if self._transport is not None:
            self._transport.close()
        if self.broker is not None:
            self.broker.terminate()
            try:
                self.broker.wait(5)
            except subprocess.TimeoutExpired:
                self.broker.kill()

    async def caught_up(self, stats: dict[str, Any], timeout: float = 2.0) -> None:
        """Give the receivers a moment for what is still on its way (a broker forwards a
        message after it acknowledged it), so the summary compares like with like."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(
            self.counts[kind] < delivered - early
            for _name, kind, delivered, early in self._rows(stats)
        ):
            await asyncio.sleep(0.02)

    def _rows(self, stats: dict[str, Any]) -> list[tuple[str, str, int, int]]:
        """(sink, kind, delivered, delivered before the receiver was there) per sink that a
        receiver of the demo's counts; WebSocket readings sent to no client are the latter."""
        return [
            (
                name,
                sink["type"],
                stats["totals"]["delivered"].get(name, 0),
                sink.get("delivered_to_nobody", 0),
            )
            for name, sink in stats["sinks"].items()
            if sink["type"] in self.counts
        ]

    def summary(self, stats: dict[str, Any]) -> str:
        """Per output: what the gateway counted as delivered, and what its receiver got."""
        lines = ["what arrived:"]
        for name, kind, delivered, early in self._rows(stats):
            before = f" ({early} before its client connected)" if early else ""
            lines.append(
                f"  {kind:9} sink {name}: {delivered} delivered{before}, "
                f"{self.counts[kind]} received by the demo's {self._receiver(kind)}"
            )
        return "\n".join(lines)

    @staticmethod
    def _receiver(kind: str) -> str:
        return {"mqtt": "subscriber", "udp": "listener", "websocket": "client"}[kind]

    # -- UDP -------------------------------------------------------------------------------
    async def _start_udp(self, config: dict[str, Any]) -> None:
        udp_sinks = [sink for sink in config["sinks"].values() if sink["type"] == "udp"]
        if not udp_sinks:
            return
        loop = asyncio.get_running_loop()
        self._transport, _protocol = await loop.create_datagram_endpoint(
            lambda: _UdpCounter(self.counts), local_addr=("127.0.0.1", 0)
        )
        host, port = self._transport.get_extra_info("sockname")[:2]
        for sink in udp_sinks:
            sink["targets"] = [f"{host}:{port}"]
        self.commands.append(f"(UDP goes to the demo's own listener on {host}:{port})")

    # -- MQTT ------------------------------------------------------------------------------
    async def _use_broker(self, sink: dict[str, Any], gateway_id: str) -> None:
        parts = urlsplit(sink["url"])
        host, port = parts.hostname or "127.0.0.1", parts.port or 1883
        if not await _answers(host, port):
            started = await self._start_broker()
            if started is None:
                log.warning(
                    "demo: no MQTT broker answers at %s:%d and mosquitto is not installed "
                    "(`make demo` installs it); MQTT readings wait in the buffer",
                    host,
                    port,
                )
                return
            host, port = "127.0.0.1", started
            sink["url"] = f"mqtt://{host}:{port}"
        topic = f"gw/{gateway_id}/#"
        self.commands.append(f"mosquitto_sub -h {host} -p {port} -t '{topic}' -v")
        self._tasks.append(asyncio.create_task(self._subscribe(host, port, topic)))

    async def _start_broker(self) -> int | None:
        binary = shutil.which("mosquitto") or shutil.which("/usr/sbin/mosquitto")
        if binary is None:
            return None
        port = _free_port()
        self.broker = subprocess.Popen(
            [binary, "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + BROKER_START_TIMEOUT
        while time.monotonic() < deadline:
            if await _answers("127.0.0.1", port):
                self.broker_port = port
                log.info("demo: started its own MQTT broker on 127.0.0.1:%d", port)
                return port
            await asyncio.sleep(0.05)
        log.warning("demo: the MQTT broker it started did not answer on port %d", port)
        return None

    async def _subscribe(self, host: str, port: int, topic: str) -> None:
        """A QoS 0 subscriber on our own MQTT codec; reconnects until the demo stops."""
        while True:
            try:
                reader, writer = await asyncio.open_connection(host, port)
            except OSError:
                await asyncio.sleep(0.5)
                continue
            try:
                await self._count_publishes(reader, writer, topic)
            except (OSError, mqtt.MqttProtocolError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.close()
            await asyncio.sleep(0.5)

    async def _count_publishes(self, reader: Any, writer: Any, topic: str) -> None:
        writer.write(mqtt.connect("gateway-demo-watch", keepalive=0, clean_session=True))
        writer.write(mqtt.subscribe(1, [(topic, 0)]))
        packets = mqtt.PacketReader()
        while True:
            data = await reader.read(65536)
            if not data:
                return
            for packet in packets.feed(data):
                if packet.type == mqtt.PUBLISH and not packet.topic.endswith("/status"):
                    self.counts["mqtt"] += _readings_in(packet.payload)

    # -- WebSocket -------------------------------------------------------------------------
    async def _watch_websocket(self, url: str) -> None:
        self._http = aiohttp.ClientSession()
        while True:
            try:
                async with self._http.ws_connect(url) as connection:
                    async for message in connection:
                        if message.type == aiohttp.WSMsgType.TEXT:
                            self.counts["websocket"] += _readings_in(message.data.encode())
            except (aiohttp.ClientError, OSError):
                pass
            await asyncio.sleep(0.2)
