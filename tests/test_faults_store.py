"""Faults of the buffering mechanisms, in a whole gateway (in this process, real sinks).

max_bytes reached under each overflow policy with exact counters, a data directory that
fills up or is read-only (real tmpfs mounts, so the errors are the kernel's own), and a
hanging broker behind a write-ahead buffer. The far side of the MQTT sink is a FarSide
relay in front of a real Mosquitto, so "broker down" never races the test's subscriber.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket

import pytest

from gateway.api.metrics import Metrics
from gateway.app import Gateway
from gateway.config import loads
from gateway.core.breaker import OPEN
from gateway.sources.simulator import VirtualSerialDevice
from gateway.store.buffer import encode_reading
from tests.support.broker import Subscriber
from tests.support.clock import as_sent
from tests.support.far_side import FarSide
from tests.support.tmpfs import remount, tmpfs
from tests.support.waiting import eventually

pytestmark = pytest.mark.timeout(120)

TS = 1764236400.5
FIRST_SEQ = 1000  # four-digit seq numbers: every reading encodes to the same size
SO_RCVBUFFORCE = 33  # Linux; lets root exceed rmem_max (Python has no name for it)


def config_text(data_dir, mqtt_url: str, preset: str, buffer: str = "", udp_port: int = 0):
    routes = '{ sink = "mqtt" }' + (', { sink = "udp" }' if udp_port else "")
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
port = "{{pty}}"
preset = "p"

[presets.p]
extends = "{preset}"
routes = [{routes}]

[sinks.mqtt]
type = "mqtt"
url = "{mqtt_url}"
availability = false
send_timeout = "300ms"
retry = {{ base = "10ms", cap = "50ms" }}
breaker = {{ failures = 3, reset_after = "200ms" }}
{buffer}
{udp}
"""


def expected_reading(index: int, pad: int = 0) -> dict:
    data = {"n": 10000 + index}
    if pad:
        data["pad"] = "x" * pad
    return as_sent(
        {
            "gateway": "gw",
            "device": "dev",
            "stream": "default",
            "seq": FIRST_SEQ + index,
            "ts": TS,
            "data": data,
        }
    )


READING_SIZE = len(encode_reading(expected_reading(0)))


class RunningGateway:
    """A Gateway built from TOML and running in this loop; its source is an idle pty."""

    def __init__(self, text: str, data_dir):
        self.device = VirtualSerialDevice()
        os.makedirs(data_dir, exist_ok=True)
        try:
            with open(os.path.join(data_dir, "sequences.json"), "w") as file:
                json.dump({"dev/default": FIRST_SEQ}, file)
        except OSError:
            pass  # a read-only data directory: numbering starts at its default
        self.gateway = Gateway(loads(text.replace("{pty}", self.device.path), environ={}))
        self.ingest = self.gateway.ingests[0]
        self.fed = 0
        writer = self.gateway.buffers.writer
        if writer is not None:
            writer.probe_interval = 0.2
            writer.maintenance_interval = 0.05

    async def __aenter__(self) -> RunningGateway:
        self.stop = asyncio.Event()
        self.task = asyncio.create_task(self.gateway.run(self.stop))
        return self

    async def __aexit__(self, *exc) -> None:
        self.stop.set()
        await asyncio.wait_for(self.task, 30)
        self.device.close()

    def feed(self, count: int, pad: int = 0) -> None:
        for _ in range(count):
            data = {"n": 10000 + self.fed}
            if pad:
                data["pad"] = "x" * pad
            self.ingest.on_line(json.dumps(data), TS)
            self.fed += 1

    def sink(self, name: str = "mqtt"):
        return self.gateway.sinks[name]


def received(subscriber: Subscriber) -> list[dict]:
    return [json.loads(payload) for _topic, payload, _at in subscriber.messages]


# -- max_bytes ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("preset", "overflow", "kept"),
    [
        ("research", "drop_oldest", range(30, 50)),  # write-ahead: the newest 20 stay
        ("basic", "drop_newest", range(0, 20)),  # spill: the oldest 20 stay
    ],
)
def test_max_bytes_reached_keeps_exactly_what_the_policy_says(
    broker, tmp_path, preset, overflow, kept
):
    subscriber = Subscriber(broker.port, "gw/gw/#")
    buffer = f'buffer = {{ max_bytes = {20 * READING_SIZE}, overflow = "{overflow}" }}'

    async def scenario():
        far = await FarSide(broker.port, mode="refuse").start()
        text = config_text(tmp_path / "var", far.url, preset, buffer)
        try:
            async with RunningGateway(text, tmp_path / "var") as running:
                sink = running.sink()
                await eventually(lambda: sink.counters["failures"] >= 1, 10, "the broker down")
                running.feed(50)
                assert await running.ingest.settle()  # dropping is the policy: nothing refused
                await eventually(lambda: sink.stats()["buffer"]["disk"] == 20, 10, "20 stored")
                stats = sink.stats()["buffer"]
                far.mode = "forward"
                await eventually(lambda: sink.counters["delivered"] == 20, 20, "delivery")
                await eventually(lambda: sink.stats()["buffer"]["depth"] == 0, 10, "empty")
        finally:
            await far.close()
        return stats

    stats = asyncio.run(scenario())
    try:
        assert subscriber.wait_for(lambda m: len(m) >= 20, 20)
    finally:
        subscriber.close()
    assert stats["depth"] == 20 and stats["bytes"] == 20 * READING_SIZE
    assert stats["drops"] == {"max_bytes": 30}
    assert received(subscriber) == [expected_reading(i) for i in kept]


def test_block_refuses_beyond_max_bytes_and_settle_says_do_not_acknowledge(broker, tmp_path):
    subscriber = Subscriber(broker.port, "gw/gw/#")
    buffer = f'buffer = {{ max_bytes = {10 * READING_SIZE}, overflow = "block" }}'

    async def scenario():
        far = await FarSide(broker.port, mode="refuse").start()
        text = config_text(tmp_path / "var", far.url, "research", buffer)
        try:
            async with RunningGateway(text, tmp_path / "var") as running:
                sink, ingest = running.sink(), running.ingest
                running.feed(9)
                assert await ingest.settle() and ingest.accepting()
                running.feed(6)  # the tenth fills it; a line device cannot be held back
                assert not ingest.accepting()
                assert not await ingest.settle()  # a COBS device would not get its ACK
                assert ingest.counters["refused"] == 5
                drops = sink.stats()["buffer"]["drops"]
                far.mode = "forward"
                await eventually(lambda: sink.counters["delivered"] == 10, 20, "delivery")
                # Room for the three fed next: "block" looks at each reading's size, so
                # wait until the delivered rows' bytes are freed (their deletion commits).
                queue = sink.queue
                await eventually(lambda: queue.bytes == 0 and ingest.accepting(), 10, "room")
                running.feed(3)
                assert await ingest.settle()
                await eventually(lambda: sink.counters["delivered"] == 13, 20, "the rest")
        finally:
            await far.close()
        return drops

    drops = asyncio.run(scenario())
    try:
        assert subscriber.wait_for(lambda m: len(m) >= 13, 20)
    finally:
        subscriber.close()
    assert drops == {"blocked_overflow": 5}
    assert [r["seq"] for r in received(subscriber)] == [
        FIRST_SEQ + i for i in (*range(10), 15, 16, 17)
    ]


# -- the data directory fails -------------------------------------------------------------------


class UdpArrivals(asyncio.DatagramProtocol):
    def __init__(self):
        self.seqs: list[int] = []

    def datagram_received(self, data: bytes, addr) -> None:
        self.seqs.append(json.loads(data)["seq"])

    @classmethod
    async def listen(cls) -> tuple[asyncio.DatagramTransport, UdpArrivals, int]:
        """A receiver in this loop; a large buffer holds a burst sent while it cannot read."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 16 * 1024 * 1024)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024 * 1024)
        sock.bind(("127.0.0.1", 0))
        loop = asyncio.get_running_loop()
        transport, receiver = await loop.create_datagram_endpoint(cls, sock=sock)
        return transport, receiver, sock.getsockname()[1]


def test_a_full_disk_falls_back_to_memory_then_recovers_and_nothing_is_lost(broker, tmp_path):
    subscriber = Subscriber(broker.port, "gw/gw/#")
    data_dir = tmp_path / "var"
    pad = 400

    async def scenario():
        transport, udp, udp_port = await UdpArrivals.listen()
        far = await FarSide(broker.port, mode="refuse").start()
        text = config_text(data_dir, far.url, "research", udp_port=udp_port)
        try:
            async with RunningGateway(text, data_dir) as running:
                gateway, sink = running.gateway, running.sink()
                filler = data_dir / "filler"
                free = os.statvfs(data_dir)
                filler.write_bytes(b"\0" * (free.f_bavail * free.f_frsize - 200 * 1024))
                settled = []
                while gateway.health()["components"]["store"] == "ok":
                    assert running.fed < 5000, "the disk never filled"
                    running.feed(20, pad)
                    settled.append(await running.ingest.settle())
                health = gateway.health()
                running.feed(100, pad)  # more while full: memory
                settled_while_full = await running.ingest.settle()
                total = running.fed
                await eventually(lambda: len(udp.seqs) == total, 10, "udp to keep flowing")
                fallback = sink.stats()["buffer"]["memory_fallback"]
                filler.unlink()
                await eventually(
                    lambda: gateway.health()["components"]["store"] == "ok", 10, "recovery"
                )
                far.mode = "forward"
                await eventually(lambda: sink.counters["delivered"] >= total, 30, "delivery")
        finally:
            await far.close()
            transport.close()
        return settled, health, settled_while_full, total, fallback, udp.seqs

    with tmpfs(data_dir, "2m"):
        settled, health, settled_while_full, total, fallback, udp_seqs = asyncio.run(scenario())
    try:
        assert subscriber.wait_for(lambda m: len(m) >= total, 30)
    finally:
        subscriber.close()
    assert all(settled[:-1]) and not settled_while_full
    assert health["status"] == "degraded"
    assert "database or disk is full" in health["components"]["store"]
    assert fallback >= 100
    assert udp_seqs == [FIRST_SEQ + i for i in range(total)]  # the other sink never stopped
    seqs = [reading["seq"] for reading in received(subscriber)]
    assert seqs == [FIRST_SEQ + i for i in range(total)]  # disk first, then memory, in order


def test_a_read_only_data_directory_numbers_nothing_until_writable_then_runs_from_memory(
    broker, tmp_path
):
    """No number can be reserved on a read-only disk, so none is handed out (issue 8): the
    source is pushed back and says why; once the directory is writable numbering starts,
    and the buffer store, which could not be opened at start, runs from memory."""
    subscriber = Subscriber(broker.port, "gw/gw/#")
    data_dir = tmp_path / "ro"

    async def scenario():
        far = await FarSide(broker.port, mode="forward").start()
        text = config_text(data_dir, far.url, "research")
        try:
            async with RunningGateway(text, data_dir) as running:
                ingest, sink = running.ingest, running.sink()
                health = running.gateway.health()
                scraped = Metrics(running.gateway).render().decode()
                paused = ingest.room()
                running.feed(30)  # a line source would not even read them now
                refused = (ingest.counters["unnumbered"], await ingest.settle())
                remount(data_dir, "rw")
                await eventually(lambda: ingest.room() > 0, 10, "numbering to resume")
                running.feed(30)
                safe = await ingest.settle()
                await eventually(lambda: sink.counters["delivered"] == 30, 20, "delivery")
                stats = sink.stats()["buffer"]
                after = running.gateway.health()
                scraped_after = Metrics(running.gateway).render().decode()
        finally:
            await far.close()
        return health, paused, refused, safe, stats, after, (scraped, scraped_after)

    with tmpfs(data_dir, "1m", readonly=True):
        health, paused, refused, safe, stats, after, scrapes = asyncio.run(scenario())
    try:
        assert subscriber.wait_for(lambda m: len(m) >= 30, 20)
    finally:
        subscriber.close()
    assert health["status"] == "failing"
    assert "read-only" in health["components"]["store"].lower()
    assert health["components"]["sequences"].startswith("failed: cannot write sequence")
    assert "Read-only file system" in health["components"]["sequences"]
    assert paused == 0 and refused == (30, False)  # a COBS device would keep them
    assert not safe  # in memory only: a device must keep its readings
    assert stats["policy"] == "write_ahead" and stats["memory_fallback"] == 30
    assert after["status"] == "degraded" and after["components"]["sequences"] == "ok"
    assert [reading["seq"] for reading in received(subscriber)] == list(range(30))
    # Metrics say the same: both failing while read-only, the reservation ok again after.
    during, later = scrapes
    for component in ("store", "sequences"):
        assert f'gateway_component_ok{{component="{component}"}} 0.0' in during
    assert 'gateway_component_ok{component="sequences"} 1.0' in later
    assert 'gateway_component_ok{component="store"} 0.0' in later  # runs from memory


# -- a hanging broker behind a write-ahead buffer ---------------------------------------------


def test_a_hanging_broker_keeps_readings_on_disk_while_udp_flows(broker, tmp_path):
    subscriber = Subscriber(broker.port, "gw/gw/#")
    data_dir = tmp_path / "var"

    async def scenario():
        transport, udp, udp_port = await UdpArrivals.listen()
        far = await FarSide(broker.port, mode="hang").start()
        text = config_text(data_dir, far.url, "research", udp_port=udp_port)
        try:
            async with RunningGateway(text, data_dir) as running:
                sink = running.sink()
                running.feed(300)
                assert await running.ingest.settle()  # on disk: safe to acknowledge
                await eventually(lambda: sink.breaker.state == OPEN, 10, "the breaker to open")
                await eventually(lambda: len(udp.seqs) == 300, 10, "udp")
                on_disk = sink.stats()["buffer"]["disk"]
                far.mode = "forward"
                await eventually(lambda: sink.counters["delivered"] == 300, 20, "delivery")
                await eventually(lambda: sink.stats()["buffer"]["depth"] == 0, 10, "empty")
        finally:
            await far.close()
            transport.close()
        return on_disk, udp.seqs

    on_disk, udp_seqs = asyncio.run(scenario())
    try:
        assert subscriber.wait_for(lambda m: len(m) >= 300, 20)
    finally:
        subscriber.close()
    assert on_disk == 300
    assert udp_seqs == [FIRST_SEQ + i for i in range(300)]
    assert [r["seq"] for r in received(subscriber)] == [FIRST_SEQ + i for i in range(300)]
