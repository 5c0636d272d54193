"""Process-level faults: broker outage, gateway SIGKILL, unplugged device; every reading counted.

Each test runs `gateway run` as a child process, injects one fault from outside (stops
Mosquitto, kills the gateway, pulls a pty) and compares what was sent with what a
subscriber in its own process received. The subscriber keeps a persistent session (QoS 1,
clean session off) on a Mosquitto with persistence, so the broker itself loses nothing
across its restart and every gap found is the gateway's.
"""

from __future__ import annotations

import asyncio
import collections
import signal
import threading
import time
from typing import Any

import pytest

from gateway.core import protocol
from gateway.sources.simulator import VirtualSerialDevice
from tests.support.broker import ProcessSubscriber, free_port
from tests.support.cobs_device import CobsTestDevice, reading_values
from tests.support.config import gateway_toml, line_source
from tests.support.e2e import DeviceWriters
from tests.support.subscriber import Tally, by_seq, sink_stats, wait_for_unique

GATEWAY_ID = "faults"
TOPIC = f"gw/{GATEWAY_ID}/#"
# Sink retries kept short so recovery after the fault is quick; the breaker still opens.
SINK_TUNING = """
breaker = { failures = 5, reset_after = "1s" }
retry = { base = "0.1s", cap = "1s" }
"""


def line_config(device_paths: list[str], broker_port: int, api_port: int) -> str:
    sources = [line_source(f"dev-{i}", path) for i, path in enumerate(device_paths)]
    return gateway_toml(GATEWAY_ID, api_port, broker_port, sources, "spill", SINK_TUNING)


def cobs_config(device_path: str, broker_port: int, api_port: int) -> str:
    sources = [line_source("node-port", device_path, 'framing = "cobs"')]
    return gateway_toml(GATEWAY_ID, api_port, broker_port, sources, "write_ahead", SINK_TUNING)


# -- 1. Broker stopped for 10 s mid-stream at 2,000 readings/s ------------------------------


@pytest.mark.timeout(180)
def test_broker_outage_mid_stream_loses_nothing_and_keeps_order(
    persistent_broker, tmp_path, gateway_process
):
    broker = persistent_broker
    devices, rate_per_device, phase = 2, 1_000, 10.0  # 2,000/s: 10 s before, 10 out, 10 after
    per_device = int(rate_per_device * 3 * phase)
    api_port = free_port()
    writers = DeviceWriters(devices, str(tmp_path))
    subscriber = ProcessSubscriber(broker.port, TOPIC)
    gateway = gateway_process(line_config(writers.paths, broker.port, api_port))
    writing = threading.Thread(target=writers.run, args=(per_device, rate_per_device))
    try:
        gateway.start(api_port)
        started = time.monotonic()
        writing.start()
        time.sleep(phase)  # the fault's schedule, not synchronisation
        broker.stop()
        gateway.wait_for(lambda stats: not sink_stats(stats)["connected"])
        time.sleep(max(0.0, started + 2 * phase - time.monotonic()))
        outage_stats = gateway.health()["stats"]
        broker.start()
        writing.join()
        total = devices * per_device
        gateway.wait_for(lambda stats: stats["totals"]["delivered"]["mqtt"] >= total, 60)
        wait_for_unique(subscriber, lambda r: (r["device"], r["seq"]), total)
        final = gateway.health()["stats"]
        assert gateway.stop() == 0, gateway.log()
        readings = subscriber.readings()
    finally:
        if writing.is_alive():
            writing.join()
        subscriber.close()
        writers.close()
    tally = Tally(readings, by_seq)
    for index in range(devices):
        counters = tally.counters(f"dev-{index}")
        assert counters == list(range(per_device)), f"dev-{index}: missing or out of order"
    assert tally.unique == total
    # Duplicates are re-sent readings of the batch in flight at the stop (max_batch 2,000
    # readings, shared by the devices), never anything older.
    assert all(lag <= 2_000 for lag in tally.duplicate_lag), max(tally.duplicate_lag)
    assert tally.duplicates <= 2 * 2_000
    mqtt = sink_stats(final)
    assert mqtt["failures"] >= 1 and mqtt["buffer"]["spilled"] > 0, mqtt
    assert outage_stats["sinks"]["mqtt"]["buffer"]["disk"] > 0, outage_stats["sinks"]["mqtt"]
    assert sum(mqtt["buffer"]["drops"].values()) == 0
    print(
        f"\nbroker outage: sent {total}, arrived {tally.unique} unique, "
        f"{tally.duplicates} duplicates (max lag {max(tally.duplicate_lag, default=0)}), "
        f"spilled {mqtt['buffer']['spilled']}"
    )


# -- 2. Gateway killed with SIGKILL mid-stream, restarted on the same data_dir --------------


def acknowledged(device: CobsTestDevice) -> int:
    """Readings the gateway acknowledged: all made minus those still unsent or in the ring."""
    in_ring = sum(len(protocol.parse_data(payload)) for _seq, payload in device.ring)
    return device.produced - len(device._backlog) - in_ring


def by_counter(reading: dict[str, Any]) -> int:
    return int(reading["data"]["n"])


def same_device_reading(reading: dict[str, Any], original: dict[str, Any]) -> bool:
    """A reading the device sent again: the gateway may number it anew, the content is equal."""
    return (reading["data"], reading["dts"]) == (original["data"], original["dts"])


@pytest.mark.timeout(180)
def test_gateway_sigkill_loses_no_acknowledged_reading(broker, tmp_path, gateway_process):
    total = 20_000
    api_port = free_port()
    # A stable link under tmp_path: a gateway that outlived the test never opens a /dev/pts/N
    # another test uses by then.
    device = CobsTestDevice(virtual=VirtualSerialDevice(str(tmp_path / "tty-node")))
    subscriber = ProcessSubscriber(broker.port, TOPIC)
    config = cobs_config(device.path, broker.port, api_port)
    first = gateway_process(config)

    async def scenario() -> dict[str, Any]:
        await device.start()
        try:
            await asyncio.to_thread(first.start, api_port)
            device.queue_readings(total)
            await asyncio.to_thread(
                first.wait_for, lambda stats: stats["totals"]["delivered"]["mqtt"] >= total // 3
            )
            first.kill()  # SIGKILL, and reaped
            first._log.close()
            await asyncio.sleep(0.3)  # let the device read ACKs the dead gateway already wrote
            acked_at_kill = acknowledged(device)
            unacked_at_kill = device.produced - len(device._backlog) - acked_at_kill
            second = gateway_process(config)
            await asyncio.to_thread(second.start, api_port)
            await device.wait_idle(60)
            await asyncio.to_thread(
                wait_for_unique, subscriber, lambda r: (r["device"], by_counter(r)), total
            )
            assert await asyncio.to_thread(second.stop) == 0, second.log()
            return {"acked": acked_at_kill, "unacked": unacked_at_kill}
        finally:
            await device.stop()

    try:
        outcome = asyncio.run(scenario())
        readings = subscriber.readings()
    finally:
        subscriber.close()
    assert first.process.returncode == -signal.SIGKILL
    acked_at_kill, unacked_at_kill = outcome["acked"], outcome["unacked"]
    assert 0 < acked_at_kill < total
    tally = Tally(readings, by_counter, same_device_reading)
    counters = {by_counter(reading) for reading in readings}
    # Everything acknowledged before the kill arrived; in the end everything did.
    assert set(range(acked_at_kill)) <= counters
    assert counters == set(range(total)) and tally.unique == total
    for reading in readings:
        assert reading["data"] == dict(zip(("n", "value"), reading_values(by_counter(reading))))
    # A reading comes twice only as a row the store replayed (delivered just before the kill,
    # its deletion not yet committed: the same seq) or as a frame the device still held
    # unacknowledged at the kill and sent again.
    held = range(acked_at_kill, acked_at_kill + unacked_at_kill)
    seqs: dict[int, set[int]] = collections.defaultdict(set)
    arrivals = collections.Counter()
    for reading in readings:
        seqs[by_counter(reading)].add(reading["seq"])
        arrivals[by_counter(reading)] += 1
    repeated = sorted(n for n, times in arrivals.items() if times > 1)
    resent = [n for n in repeated if len(seqs[n]) > 1]
    assert all(n in held for n in resent), (acked_at_kill, unacked_at_kill, resent[:10])
    # The new gateway asked for a HELLO, answered it, and the device sent its ring again.
    hellos_answered = device.counters["fresh_acks"] + device.counters["resume_acks"]
    assert device.counters["nack NEED_HELLO"] >= 1 and hellos_answered >= 2, device.counters
    assert device.counters["retransmits"] > 0, device.counters
    print(
        f"\ngateway SIGKILL: sent {total}, {acked_at_kill} acknowledged at the kill "
        f"({unacked_at_kill} not), arrived {tally.unique} unique, {tally.duplicates} duplicates "
        f"({len(repeated) - len(resent)} replayed by the store, {len(resent)} resent by the device)"
    )


# -- 3. Device unplugged and replugged while the broker is down -----------------------------


def source_stats(stats: dict[str, Any]) -> dict[str, Any]:
    return stats["sources"]["dev-0"]


@pytest.mark.timeout(120)
def test_device_replugged_while_broker_down_reconnects_and_everything_arrives(
    persistent_broker, tmp_path, gateway_process
):
    broker = persistent_broker
    api_port = free_port()
    writers = DeviceWriters(1, str(tmp_path))
    (device,) = writers.devices
    subscriber = ProcessSubscriber(broker.port, TOPIC)
    gateway = gateway_process(line_config(writers.paths, broker.port, api_port))
    before, after = 1_000, 1_000
    try:
        gateway.start(api_port)
        broker.stop()
        gateway.wait_for(lambda stats: not sink_stats(stats)["connected"])
        writers.run(before, rate_per_device=1_000)
        # Read by the gateway before the cable goes: what waits in the pty is lost by design.
        gateway.wait_for(lambda stats: source_stats(stats)["readings"] >= before)
        device.unplug()
        gateway.wait_for(lambda stats: source_stats(stats)["state"] != "connected")
        device.replug()
        reconnected = gateway.wait_for(
            lambda stats: (
                source_stats(stats)["state"] == "connected"
                and source_stats(stats)["reconnects"] >= 1
            )
        )
        writers.run(after, rate_per_device=1_000, line_for=lambda i: b'{"n":%d}\n' % (before + i))
        held = gateway.wait_for(lambda stats: source_stats(stats)["readings"] >= before + after)
        broker.start()
        wait_for_unique(subscriber, lambda r: (r["device"], r["seq"]), before + after)
        final = gateway.health()["stats"]
        assert gateway.stop() == 0, gateway.log()
        readings = subscriber.readings()
    finally:
        subscriber.close()
        writers.close()
    tally = Tally(readings, by_seq)
    assert tally.counters("dev-0") == list(range(before + after))
    assert source_stats(reconnected)["reconnects"] >= 1
    assert sink_stats(held)["buffer"]["depth"] == before + after, sink_stats(held)["buffer"]
    assert sink_stats(final)["delivered"] == before + after
    print(
        f"\nunplug while broker down: sent {before + after}, arrived {tally.unique} unique, "
        f"{tally.duplicates} duplicates, source reconnects {source_stats(final)['reconnects']}"
    )
