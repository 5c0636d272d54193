"""Bounded memory under overload: backpressure to a line source, and a slow broker link.

The gateway runs as its own process; a pty device is flooded as fast as the pty takes bytes
(tests/support/e2e.PtyFlood), and what a persistent-session subscriber got is compared with
what was written.
"""

from __future__ import annotations

import json

import pytest

from gateway.sources.simulator import VirtualSerialDevice
from tests.support.broker import ProcessSubscriber, free_port
from tests.support.config import gateway_toml, line_source
from tests.support.e2e import PtyFlood, counter_lines
from tests.support.throttle import ThrottledProxy
from tests.support.waiting import wait_until

GATEWAY_ID = "pressure"
# The memory bound DESIGN §11 holds every run to, overload and slow links included.
RSS_BOUND_MB = 64


def config(device: str, broker_port: int, api_port: int, buffer: str, sink_extra: str) -> str:
    sources = [line_source("dev-0", device, 'stream = "counter"')]
    sink_keys = 'retry = { base = "0.1s", cap = "1s" }\n' + sink_extra
    return gateway_toml(GATEWAY_ID, api_port, broker_port, sources, buffer, sink_keys)


def counters_received(subscriber: ProcessSubscriber) -> list[int]:
    """The device counter `n` of every reading, in arrival order."""
    values = []
    with open(subscriber.output.name) as lines:
        for line in lines:
            topic, _, payload = line.rstrip("\n").partition(" ")
            if topic.endswith("/counter"):
                values.append(json.loads(payload)["data"]["n"])
    return values


def first_arrivals(values: list[int]) -> list[int]:
    return list(dict.fromkeys(values))


def wait_for_all(subscriber: ProcessSubscriber, count: int, timeout: float) -> list[int]:
    """Poll the subscriber's output (another process: no event) until `count` distinct."""
    wait_until(
        lambda: len(set(counters_received(subscriber))) >= count, timeout, "readings", interval=0.2
    )
    return counters_received(subscriber)


def peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        line = next(line for line in status if line.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


@pytest.mark.timeout(120)
def test_block_stops_reading_the_port_pushes_the_writer_back_and_loses_nothing(
    persistent_broker, tmp_path, gateway_process
):
    broker, count, capacity = persistent_broker, 20_000, 500
    device = VirtualSerialDevice(str(tmp_path / "tty-flood"))
    api_port = free_port()
    sink_extra = f'queue_size = {capacity}\nbuffer = {{ overflow = "block" }}'
    gateway = gateway_process(config(device.path, broker.port, api_port, "none", sink_extra))
    subscriber = ProcessSubscriber(broker.port, f"gw/{GATEWAY_ID}/#")
    flood = PtyFlood(device, counter_lines(count))
    try:
        gateway.start(api_port)
        broker.stop()
        gateway.wait_for(lambda stats: not stats["sinks"]["mqtt"]["connected"])
        flood.start()
        assert flood.full.wait(30), "the pty never filled: the gateway kept reading"
        paused = gateway.wait_for(lambda stats: stats["sources"]["dev-0"]["paused"] >= 1)
        source, sink = paused["sources"]["dev-0"], paused["sinks"]["mqtt"]
        assert sink["queue_depth"] <= capacity  # the bound holds
        assert not flood.done.is_set() and source["lines"] < count
        broker.start()
        flood.join(60)
        gateway.wait_for(lambda stats: stats["totals"]["delivered"]["mqtt"] >= count, 60)
        final = gateway.health()["stats"]
        assert gateway.stop() == 0, gateway.log()
        values = wait_for_all(subscriber, count, 30)
    finally:
        subscriber.close()
        device.close()
    assert first_arrivals(values) == list(range(count))  # all of them, in order
    source, sink = final["sources"]["dev-0"], final["sinks"]["mqtt"]
    assert source["lines"] == count and source["paused"] >= 1 and source["paused_seconds"] > 0
    assert final["sources"]["dev-0"].get("refused", 0) == 0
    assert sink["buffer"]["drops"] == {}  # nothing refused, nothing dropped
    assert flood.full_waits >= 1


@pytest.mark.timeout(180)
def test_a_slow_broker_link_spills_to_disk_within_the_memory_bound_and_delivers_all(
    persistent_broker, tmp_path, gateway_process
):
    broker, count = persistent_broker, 200_000
    device = VirtualSerialDevice(str(tmp_path / "tty-flood"))
    # About 190 bytes per message: 200 kB/s drains ~1,000 readings/s, far slower than the
    # flood (tens of thousands a second).
    proxy = ThrottledProxy(broker.port, rate_bytes_per_s=200_000)
    proxy.start()
    api_port = free_port()
    gateway = gateway_process(config(device.path, proxy.port, api_port, "spill", ""))
    subscriber = ProcessSubscriber(broker.port, f"gw/{GATEWAY_ID}/#")
    flood = PtyFlood(device, counter_lines(count))
    try:
        gateway.start(api_port)
        flood.start()
        flood.join(120)  # every reading is read while the link is still slow
        spilled = gateway.wait_for(lambda stats: stats["sources"]["dev-0"]["lines"] >= count)
        backlog = spilled["sinks"]["mqtt"]["buffer"]
        proxy.set_rate(None)
        gateway.wait_for(lambda stats: stats["totals"]["delivered"]["mqtt"] >= count, 120)
        peak = peak_rss_mb(gateway.process.pid)
        assert gateway.stop() == 0, gateway.log()
        values = wait_for_all(subscriber, count, 60)
    finally:
        subscriber.close()
        proxy.close()
        device.close()
    assert backlog["disk"] > count // 2, backlog  # beyond memory it went to disk
    assert backlog["memory"] <= 10_000 + 1_000  # queue_size, and the window in flight
    assert peak <= RSS_BOUND_MB, f"peak RSS {peak:.1f} MB"
    assert first_arrivals(values) == list(range(count))
