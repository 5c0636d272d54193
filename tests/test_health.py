"""Health tells the truth: each degraded or failing state, its reason, and the way back to ok."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket

from gateway.app import Gateway
from gateway.config import loads
from gateway.sources.simulator import VirtualSerialDevice
from tests.support.broker import Broker, free_port
from tests.support.waiting import eventually


def config_text(data_dir, device: str, mqtt_port: int, mqtt_keys: str = "") -> str:
    return f"""
[gateway]
id = "health"
data_dir = "{data_dir}"
[api]
listen = "127.0.0.1:0"
[[sources]]
name = "dev"
port = "{device}"
preset = "p"
[presets.p]
extends = "basic"
buffer = "none"
routes = [{{ sink = "mqtt" }}, {{ sink = "udp" }}]
[sinks.mqtt]
type = "mqtt"
url = "mqtt://127.0.0.1:{mqtt_port}"
retry = {{ base = "0.05s", cap = "0.2s" }}
{mqtt_keys}
[sinks.udp]
type = "udp"
targets = ["127.0.0.1:9"]
"""


class Running:
    """A Gateway running in this test's event loop; health() read directly."""

    def __init__(self, text: str):
        self.gateway = Gateway(loads(text, environ={}))
        self.stop = asyncio.Event()

    async def __aenter__(self) -> Gateway:
        self.task = asyncio.create_task(self.gateway.run(self.stop))
        return self.gateway

    async def __aexit__(self, *exc) -> None:
        self.stop.set()
        await asyncio.wait_for(self.task, 15)


def status(gateway: Gateway) -> tuple[str, dict[str, str]]:
    health = gateway.health()
    return health["status"], health["reasons"]


def test_a_source_waiting_for_its_device_degrades_until_it_comes(tmp_path, broker):
    path = str(tmp_path / "ttyACM-health")

    async def scenario():
        async with Running(config_text(tmp_path / "var", path, broker.port)) as gateway:
            await eventually(lambda: gateway.sinks["mqtt"].connected, what="broker")
            await eventually(lambda: gateway.sources[0].state == "waiting", what="waiting")
            state, reasons = status(gateway)
            assert state == "degraded" and reasons["source:dev"] == "waiting for its device"
            with VirtualSerialDevice(path):
                await eventually(lambda: status(gateway)[0] == "ok", what="ok again")
                assert status(gateway)[1] == {}
                await eventually(lambda: gateway.sources[0].state == "connected")
                # Unplugged: this plain path says how to follow the device.
            await eventually(lambda: status(gateway)[0] == "degraded", what="unplugged")
            assert "names a port, not a device" in status(gateway)[1]["source:dev"]

    asyncio.run(scenario())


def test_a_sink_without_its_broker_degrades_and_with_no_sink_left_it_is_failing(tmp_path):
    port = free_port()

    async def scenario():
        with VirtualSerialDevice() as device:
            text = config_text(tmp_path / "var", device.path, port)
            async with Running(text) as gateway:
                await eventually(lambda: gateway.sinks["udp"].connected, what="udp")
                # Its first connect may still be under way: wait until it has been refused.
                mqtt = gateway.sinks["mqtt"]
                await eventually(lambda: mqtt.last_error is not None, what="refused")
                state, reasons = status(gateway)
                assert state == "degraded"
                assert reasons["sink:mqtt"].startswith("disconnected (no MQTT broker answers")
                await gateway.set_sink_enabled("udp", False)  # nothing left to deliver
                assert status(gateway)[0] == "failing"
                await gateway.set_sink_enabled("udp", True)
                broker = Broker(port).start()
                try:
                    await eventually(lambda: status(gateway)[0] == "ok", what="broker back")
                finally:
                    broker.close()

    asyncio.run(scenario())


def test_an_open_breaker_degrades_with_its_reason(tmp_path):
    # A far side that takes the connection and never answers CONNECT: every attempt fails.
    silent = socket.create_server(("127.0.0.1", 0))
    port = silent.getsockname()[1]
    keys = 'send_timeout = "0.2s"\nbreaker = { failures = 2, reset_after = "30s" }'

    async def scenario():
        with VirtualSerialDevice() as device:
            async with Running(config_text(tmp_path / "var", device.path, port, keys)) as gw:
                await eventually(
                    lambda: gw.sinks["mqtt"].breaker.state == "open", what="breaker open"
                )
                health = gw.health()
                assert health["components"]["sink:mqtt"] == "breaker open"
                assert health["reasons"]["sink:mqtt"].startswith("breaker open after repeated")
                assert health["status"] == "degraded"  # UDP still delivers

    try:
        asyncio.run(scenario())
    finally:
        silent.close()


def test_a_buffer_past_the_threshold_degrades_while_connected(tmp_path, broker):
    keys = "queue_size = 20\nmax_inflight = 1"

    async def scenario():
        with VirtualSerialDevice() as device:
            text = config_text(tmp_path / "var", device.path, broker.port, keys)
            async with Running(text) as gateway:
                sink = gateway.sinks["mqtt"]
                await eventually(lambda: sink.connected, what="broker")
                os.kill(broker.process.pid, signal.SIGSTOP)  # the link stays up, acks stop
                try:
                    lines = b"".join(b'{"n": %d}\n' % index for index in range(18))
                    os.write(device.master, lines)
                    await eventually(lambda: sink.depth >= 16, what="readings queue up")
                    state, reasons = status(gateway)
                    assert state == "degraded" and sink.connected
                    pattern = r"buffer (8\d|9\d|100)% full \(in memory, of queue_size\)"
                    assert re.match(pattern, reasons["sink:mqtt"]), reasons
                finally:
                    os.kill(broker.process.pid, signal.SIGCONT)
                await eventually(lambda: status(gateway)[0] == "ok", what="drained")

    asyncio.run(scenario())
