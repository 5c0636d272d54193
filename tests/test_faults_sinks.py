"""Faults of the webhook, recorder and SSE sinks in a whole gateway (this process, real far sides).

The far side of each goes away for 10 s at 2,000 readings/s under `spill` — a webhook
receiver stops listening, the recorder's file system is full (a real tmpfs), the SSE client
is cut off — and every reading still arrives. A webhook receiver that hangs trips the
breaker while a UDP sink beside it keeps its pace.
"""

from __future__ import annotations

import asyncio
import json
import os
import time

import pytest

from gateway.core.breaker import CLOSED, OPEN
from gateway.sinks.recorder import Recording
from gateway.sources.simulator import VirtualSerialDevice
from tests.support.api import gateway_in_loop
from tests.support.http_receiver import HookReceiver
from tests.support.sse import SseClient
from tests.support.tmpfs import fill, tmpfs
from tests.support.udp import UdpCollector
from tests.support.waiting import eventually

pytestmark = pytest.mark.timeout(150)

RATE = 2_000
BEFORE, OUTAGE, AFTER = 2.0, 10.0, 3.0  # seconds of the schedule


class WebhookFar:
    """A webhook receiver that stops listening while down."""

    def __init__(self, directory):
        self.receiver = HookReceiver()

    async def start(self, gateway=None) -> None:
        if gateway is None:
            await self.receiver.start()

    def table(self) -> str:
        return f'type = "webhook"\nurl = "{self.receiver.url}"\ntimeout = "500ms"'

    async def down(self) -> None:
        await self.receiver.stop()

    async def up(self) -> None:
        await self.receiver.start()

    def readings(self) -> list[dict]:
        return self.receiver.accepted()

    async def close(self) -> None:
        await self.receiver.stop()


class RecorderFar:
    """The recorder's directory on a small tmpfs that is filled up while down."""

    def __init__(self, directory):
        self.path = str(directory / "recordings")
        self._mount = tmpfs(self.path, "16m")

    async def start(self, gateway=None) -> None:
        if gateway is None:
            self._mount.__enter__()

    def table(self) -> str:
        return f'type = "recorder"\npath = "{self.path}"\nrotate_bytes = "1MB"'

    async def down(self) -> None:
        fill(self.path)

    async def up(self) -> None:
        os.remove(os.path.join(self.path, "filler"))

    def readings(self) -> list[dict]:
        return list(Recording([self.path]))

    async def close(self) -> None:
        self._mount.__exit__(None, None, None)


class SseFar:
    """An SSE client cut off while down, resuming with Last-Event-ID after."""

    def __init__(self, directory):
        self.client: SseClient | None = None

    async def start(self, gateway=None) -> None:
        if gateway is not None:
            url = f"http://127.0.0.1:{gateway.api.port}/sse"
            self.client = await SseClient(url).connect()

    def table(self) -> str:
        return 'type = "sse"\nreplay = 40000'  # the window holds the whole outage

    async def down(self) -> None:
        await self.client.cut()

    async def up(self) -> None:
        await self.client.connect()

    def readings(self) -> list[dict]:
        return self.client.readings

    async def close(self) -> None:
        if self.client:
            await self.client.close()


FAR_SIDES = {"webhook": WebhookFar, "recorder": RecorderFar, "sse": SseFar}


def config(data_dir, pty: str, table: str, udp_port: int = 0) -> str:
    routes = '{ sink = "out" }' + (', { sink = "udp" }' if udp_port else "")
    udp = f'[sinks.udp]\ntype = "udp"\ntargets = ["127.0.0.1:{udp_port}"]\n' if udp_port else ""
    return f"""
[gateway]
id = "gw"
data_dir = "{data_dir}"
commit_interval = "20ms"

[api]
listen = "127.0.0.1:0"

[[sources]]
name = "dev"
port = "{pty}"
preset = "p"

[presets.p]
extends = "basic"
buffer = "spill"
routes = [{routes}]

[sinks.out]
{table}
send_timeout = "1s"
retry = {{ base = "20ms", cap = "200ms" }}
breaker = {{ failures = 3, reset_after = "300ms" }}

{udp}
"""


async def feed(ingest, count: int, rate: float = RATE) -> None:
    """Readings {"n": i} into the source's ingest path at `rate` per second."""
    loop = asyncio.get_running_loop()
    began = loop.time()
    for index in range(count):
        ingest.on_line(json.dumps({"n": index}), time.time())
        if index % 20 == 19:
            await asyncio.sleep(max(0.0, began + (index + 1) / rate - loop.time()))


def first_seen(readings: list[dict]) -> list[int]:
    return list(dict.fromkeys(reading["data"]["n"] for reading in readings))


@pytest.mark.parametrize("kind", list(FAR_SIDES))
def test_far_side_down_10_s_at_2000_per_second_under_spill_loses_nothing(kind, tmp_path):
    total = int(RATE * (BEFORE + OUTAGE + AFTER))
    far = FAR_SIDES[kind](tmp_path)
    device = VirtualSerialDevice()

    async def scenario():
        await far.start()
        try:
            text = config(tmp_path / "var", device.path, far.table())
            async with gateway_in_loop(text) as gateway:
                await far.start(gateway)
                sink = gateway.sinks["out"]
                await eventually(lambda: sink.connected, 10, "the sink to connect")
                feeding = asyncio.create_task(feed(gateway.ingests[0], total))
                await asyncio.sleep(BEFORE)  # the fault's schedule, not synchronisation
                await far.down()
                await asyncio.sleep(OUTAGE)
                during = sink.stats()
                await far.up()
                await feeding
                await eventually(lambda: len(first_seen(far.readings())) >= total, 60, "all")
                await eventually(lambda: sink.depth == 0, 10, "an empty queue")
                return during, sink.stats(), far.readings()
        finally:
            await far.close()
            device.close()

    during, stats, readings = asyncio.run(scenario())
    assert first_seen(readings) == list(range(total))  # every reading, in order of first arrival
    if kind == "recorder":  # a write the full disk cut short was cut back: no line twice
        assert len(readings) == total
    assert sum(stats["buffer"]["drops"].values()) == 0
    if kind != "sse":  # the SSE sink confirms into its window: its client's outage is not its own
        assert stats["failures"] >= 1 and stats["buffer"]["spilled"] > 0, stats
        assert during["queue_depth"] > RATE, during
    print(
        f"\n{kind}: {total} readings, failures {stats.get('failures', 0)}, buffer {stats['buffer']}"
    )


def test_a_hanging_webhook_trips_the_breaker_and_udp_keeps_its_pace(tmp_path):
    total = 6_000
    collector = UdpCollector()
    device = VirtualSerialDevice()

    async def scenario():
        receiver = await HookReceiver(status="hang").start()
        table = f'type = "webhook"\nurl = "{receiver.url}"\ntimeout = "300ms"'
        text = config(tmp_path / "var", device.path, table, collector.port)
        try:
            async with gateway_in_loop(text) as gateway:
                sink = gateway.sinks["out"]
                feeding = asyncio.create_task(feed(gateway.ingests[0], total))
                await eventually(lambda: sink.breaker.state == OPEN, 20, "the breaker to open")
                await feeding
                await eventually(lambda: len(collector.readings) == total, 10, "udp")
                receiver.status = 200
                await eventually(lambda: sink.breaker.state == CLOSED, 10, "the breaker to close")
                await eventually(lambda: sink.depth == 0, 20, "the webhook's backlog")
                return sink.stats(), first_seen(receiver.accepted())
        finally:
            await receiver.stop()
            device.close()

    try:
        stats, seen = asyncio.run(scenario())
    finally:
        collector.close()
    assert seen == list(range(total))
    assert [r["data"]["n"] for r in collector.readings] == list(range(total))
    lags = sorted(at - r["ts"] for at, r in zip(collector.arrivals, collector.readings))
    assert lags[int(len(lags) * 0.99)] < 0.05, lags[-10:]
    # Timeouts, not HTTP answers, opened it.
    assert stats["breaker"]["opened"] >= 1 and stats["failures"] >= 3, stats
    assert stats.get("http_errors", 0) == 0, stats
