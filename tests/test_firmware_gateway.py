"""Protocol v1 end to end: the real sensor-node firmware → the real gateway → a real Mosquitto.

Every test runs twice: the firmware under the MicroPython unix port and under CPython. Tests
1, 2 and 4 run `gateway run` as a child process and read what it says through its health
endpoint and its log; tests 3 and 5 run the Gateway in this process, because they check the
link's own counters (bad frames) and call device commands, which the app does not expose yet.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import importlib.util
import json
import re
import struct
import threading
import time
from typing import Any, Callable

import pytest

from gateway.app import Gateway
from gateway.config import loads
from gateway.core import protocol
from gateway.sources.simulator import VirtualSerialDevice
from host_tools.simulate import FIRMWARE_DIR
from tests.support.broker import Subscriber, free_port
from tests.support.clock import envelope_keys
from tests.support.firmware import RUNTIMES, NodeProcess, node_config, start_node
from tests.support.relay import TO_DEVICE, TO_GATEWAY, CorruptingRelay

GATEWAY_ID = "fw-gw"
DEVICE = "node-1"
SOURCE = "node-port"
TOPIC = f"gw/{GATEWAY_ID}/{DEVICE}/synthetic"
# The firmware's highest rate per stream; both runtimes keep it up through the gateway.
RATE = 1000.0
ENVELOPE_KEYS = envelope_keys("gateway", "device", "stream", "seq", "ts", "dts", "data")
DEADLINE = 30.0  # seconds; reached only when something is wrong

_spec = importlib.util.spec_from_file_location("sensors", FIRMWARE_DIR / "sensors.py")
sensors = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sensors)


@pytest.fixture(params=RUNTIMES)
def runtime(request):
    return request.param


def gateway_toml(port: str, broker_port: int, api_listen: str, data_dir: str = "./var") -> str:
    """One cobs source, lossless preset (ACK only after the write-ahead commit), MQTT QoS 1."""
    return f"""
[gateway]
id = "{GATEWAY_ID}"
data_dir = "{data_dir}"

[api]
listen = "{api_listen}"

[[sources]]
name = "{SOURCE}"
port = "{port}"
framing = "cobs"
preset = "lossless"

[presets.lossless]
extends = "research"
routes = [{{ sink = "mqtt" }}]

[sinks.mqtt]
type = "mqtt"
url = "mqtt://127.0.0.1:{broker_port}"
qos = 1
"""


def port_for_node(tmp_path: Any, name: str = "tty-node") -> VirtualSerialDevice:
    """A pty behind a stable link in tmp_path, like /dev/serial/by-id: a gateway still
    retrying it after the test never opens a /dev/pts/N that another test now uses."""
    return VirtualSerialDevice(str(tmp_path / name))


# -- what the subscriber got ----------------------------------------------------------------


def float32(value: float) -> bytes:
    return struct.pack("<f", value)


def received(subscriber: Subscriber) -> list[dict[str, Any]]:
    """Every reading the subscriber got, in arrival order (one reading per message)."""
    readings = []
    for topic, payload, _at in list(subscriber.messages):
        reading = json.loads(payload)
        assert isinstance(reading, dict), f"{topic}: expected one reading, got {payload[:80]!r}"
        readings.append(reading)
    return readings


def wait_for_readings(subscriber: Subscriber, count: int, timeout: float = DEADLINE) -> None:
    if not subscriber.wait_for(lambda messages: len(messages) >= count, timeout):
        raise AssertionError(f"{len(subscriber.messages)} of {count} readings in {timeout} s")


def assert_synthetic(reading: dict[str, Any]) -> None:
    """The DESIGN §3 envelope around an untouched synthetic sample (value as the node made it)."""
    assert set(reading) == ENVELOPE_KEYS, sorted(reading)
    assert (reading["gateway"], reading["device"], reading["stream"]) == (
        GATEWAY_ID,
        DEVICE,
        "synthetic",
    )
    assert isinstance(reading["ts"], float) and abs(reading["ts"] - time.time()) < 120
    assert isinstance(reading["dts"], int) and reading["dts"] >= 0
    data = reading["data"]
    assert set(data) == {"n", "value"}, data
    # Exactly the float32 the node sent: a corrupted value would differ.
    assert float32(data["value"]) == float32(sensors.synthetic_value(int(data["n"]))), data


def assert_boots(readings: list[dict[str, Any]], boots: int) -> list[int]:
    """Readings of `boots` consecutive boots, each n = 0, 1, 2, ... (no gap, no duplicate), and
    one gateway seq running through them all; returns how many each boot delivered."""
    for reading in readings:
        assert_synthetic(reading)
    runs: list[list[int]] = []
    for reading in readings:
        n = reading["data"]["n"]
        if n == 0:
            runs.append([])
        assert runs, f"the first reading has n = {n}, not 0"
        runs[-1].append(n)
    assert len(runs) == boots, f"{len(runs)} runs of n from 0, expected {boots}"
    for run in runs:
        assert run == list(range(len(run))), "a reading is missing, repeated or out of order"
    seqs = [reading["seq"] for reading in readings]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "gateway seq not consecutive"
    for boot_readings in _split(readings, [len(run) for run in runs]):
        times = [reading["dts"] for reading in boot_readings]
        assert times == sorted(times), "device time went backwards within a boot"
    return [len(run) for run in runs]


def _split(items: list, sizes: list[int]) -> list[list]:
    parts, start = [], 0
    for size in sizes:
        parts.append(items[start : start + size])
        start += size
    return parts


def arrival_rate(subscriber: Subscriber, first: int, last: int) -> float:
    """Readings per second at the subscriber from message `first` to message `last`."""
    times = [at for _topic, _payload, at in subscriber.messages[first : last + 1]]
    return (last - first) / (times[-1] - times[0])


# -- what the node and the gateway said -----------------------------------------------------


def node_boot(node: NodeProcess, after: int = 0) -> tuple[int, str]:
    """(boot id, firmware version) from the node's boot LOG line (echoed to its output)."""
    deadline = time.monotonic() + DEADLINE
    while True:
        found = re.findall(r"boot ([0-9a-f]{8}), firmware (\S+)", node.output())
        if len(found) > after:
            boot, fw = found[after]
            return int(boot, 16), fw
        assert time.monotonic() < deadline, f"no boot line from the node:\n{node.output()}"
        time.sleep(0.02)  # another process's output file: no event to await


def gateway_log(gateway: Any) -> str:
    with open(gateway.log_path, errors="replace") as file:
        return file.read()


# -- a relay on its own event loop, for tests that are otherwise synchronous ---------------


class RelayThread:
    """A CorruptingRelay run by an event loop in a thread; `relay` is read from the test."""

    def __init__(self, device_path: str, **options: Any):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.relay: CorruptingRelay = self.call(lambda: CorruptingRelay(device_path, **options))
        self.call(self.relay.start)

    @property
    def path(self) -> str:
        return self.relay.path

    def call(self, function: Callable[[], Any]) -> Any:
        """Run function on the relay's loop and return its result."""
        done: concurrent.futures.Future = concurrent.futures.Future()

        def run() -> None:
            try:
                done.set_result(function())
            except BaseException as error:  # handed to the caller's thread
                done.set_exception(error)

        self.loop.call_soon_threadsafe(run)
        return done.result(10)

    def close(self) -> None:
        self.call(self.relay.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


class RetransmitTap:
    """Counts DATA frames on their way to the gateway that carry the RETRANSMIT flag."""

    def __init__(self) -> None:
        self.data_frames = 0
        self.retransmitted = 0

    def __call__(self, direction: str, encoded: bytes) -> None:
        if direction != TO_GATEWAY:
            return
        try:
            frame = protocol.decode_frame(encoded)
        except protocol.ProtocolError:
            return
        if frame.type == protocol.DATA:
            self.data_frames += 1
            if frame.flags & protocol.FLAG_RETRANSMIT:
                self.retransmitted += 1


# -- 1. HELLO, then 10,000 readings exactly once and in order -------------------------------


@pytest.mark.timeout(120)
def test_hello_is_known_and_ten_thousand_readings_arrive_once_in_order(
    runtime, broker, gateway_process, tmp_path
):
    device = port_for_node(tmp_path)
    node = start_node(node_config(DEVICE, RATE), runtime, str(tmp_path), device)
    subscriber = Subscriber(broker.port, TOPIC)
    api_port = free_port()
    gateway = gateway_process(gateway_toml(device.path, broker.port, f"127.0.0.1:{api_port}"))
    try:
        gateway.start(api_port)
        wait_for_readings(subscriber, 10_000)
        rate = arrival_rate(subscriber, 1_000, 9_999)  # steady state, after the start-up
        readings = received(subscriber)
        stats = gateway.health()["stats"]
        exit_code = gateway.stop()
    finally:
        subscriber.close()
        node.stop()
        device.close()
    assert exit_code == 0, gateway_log(gateway)
    print(f"\n{runtime} node → gateway → Mosquitto: {rate:.0f} readings/s")

    # The HELLO taught the gateway who is talking: id, firmware, boot id and streams.
    boot, fw = node_boot(node)
    assert (
        f"device {DEVICE} (fw {fw}) connected on {device.path}, boot {boot:08x}; "
        "streams synthetic [n, value] at 1000/s" in gateway_log(gateway)
    )
    (delivered,) = assert_boots(readings, boots=1)
    assert delivered >= 10_000
    assert stats["sources"][SOURCE]["readings"] >= 10_000


# -- 2. ACKs withheld: the node resends, nothing is duplicated downstream ------------------


@pytest.mark.timeout(120)
def test_withheld_acks_bring_retransmissions_and_no_duplicates(
    runtime, broker, gateway_process, tmp_path
):
    device = port_for_node(tmp_path)
    node = start_node(node_config(DEVICE, RATE), runtime, str(tmp_path), device)
    relay = RelayThread(device.path, path=str(tmp_path / "tty-gateway"))
    tap = relay.relay.tap = RetransmitTap()
    subscriber = Subscriber(broker.port, TOPIC)
    api_port = free_port()
    gateway = gateway_process(gateway_toml(relay.path, broker.port, f"127.0.0.1:{api_port}"))
    try:
        gateway.start(api_port)
        wait_for_readings(subscriber, 1_000)
        before = tap.retransmitted
        relay.call(lambda: relay.relay.hold(TO_DEVICE))
        time.sleep(1.5)  # the fault's duration: three of the node's 500 ms retransmit timeouts
        relay.call(lambda: relay.relay.release(TO_DEVICE))
        wait_for_readings(subscriber, 4_000)
        readings = received(subscriber)
        exit_code = gateway.stop()
    finally:
        subscriber.close()
        node.stop()
        relay.close()
        device.close()
    assert exit_code == 0, gateway_log(gateway)
    assert relay.relay.held[TO_DEVICE] > 0  # ACKs were swallowed
    assert tap.retransmitted > before, f"no RETRANSMIT among {tap.data_frames} DATA frames"
    (delivered,) = assert_boots(readings, boots=1)  # each n once, in order
    assert delivered >= 4_000


# -- 3. A damaged cable: every bad frame counted, nothing bad delivered, nothing lost --------


@contextlib.asynccontextmanager
async def gateway_in_process(config_text: str):
    gateway = Gateway(loads(config_text, environ={}))
    stop = asyncio.Event()
    task = asyncio.create_task(gateway.run(stop))
    try:
        yield gateway
    finally:
        stop.set()
        await asyncio.wait_for(task, DEADLINE)


async def until(condition: Callable[[], bool], what: str, timeout: float = DEADLINE) -> None:
    """Poll state that has no event of its own (counters, another process) until it holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.01)


def link_stats(gateway: Gateway) -> dict[str, Any]:
    return gateway.sources[0].stats()["link"]


def remote(gateway: Gateway) -> dict[str, Any]:
    return gateway.sources[0].stats()["remote"]


@pytest.mark.timeout(120)
def test_corrupted_frames_are_all_counted_and_every_reading_arrives_intact(
    runtime, broker, tmp_path
):
    count = 3_000
    device = port_for_node(tmp_path)
    subscriber = Subscriber(broker.port, TOPIC)

    async def scenario():
        relay = CorruptingRelay(
            device.path, to_gateway=0.05, to_device=0.05, seed=11, path=str(tmp_path / "tty-gw")
        )
        relay.start()
        node = start_node(node_config(DEVICE, RATE), runtime, str(tmp_path), device)
        config = gateway_toml(relay.path, broker.port, "127.0.0.1:0", str(tmp_path / "var"))
        try:
            async with gateway_in_process(config) as gateway:
                await until(lambda: len(subscriber.messages) >= count, f"{count} readings")
                # A clean cable from here on: what was damaged so far is final.
                relay.probability = {TO_GATEWAY: 0.0, TO_DEVICE: 0.0}
                relayed = relay.frames[TO_GATEWAY]

                def read_all() -> bool:
                    stats = link_stats(gateway)
                    return stats["frames"] + stats["bad_frames"] >= relayed

                await until(
                    read_all,
                    "the gateway read every frame relayed while the cable was bad",
                )
                stats = link_stats(gateway)
                # The node counted what reached it damaged (the CMD goes after all of it).
                counters = (await gateway.sources[0].command("info", {"section": "counters"}))[
                    "counters"
                ]
        finally:
            await asyncio.to_thread(node.stop)
            relay.close()
        return relay, stats, counters

    try:
        relay, stats, counters = asyncio.run(scenario())
        readings = received(subscriber)
    finally:
        subscriber.close()
        device.close()
    assert relay.corrupted[TO_GATEWAY] > 5 and relay.corrupted[TO_DEVICE] > 0, relay.corrupted
    assert relay.kinds["flip"] and relay.kinds["truncate"]
    assert stats["bad_frames"] == relay.corrupted[TO_GATEWAY], stats["bad_frames_by_reason"]
    assert counters["bad_frames"] == relay.corrupted[TO_DEVICE]
    assert counters["retransmitted"] > 0 and stats["duplicates"] + stats["gaps"] > 0
    (delivered,) = assert_boots(readings, boots=1)
    assert delivered >= count


# -- 4. Power cycle: a new boot id, n from 0 again, the gateway's seq carries on ------------


@pytest.mark.timeout(120)
def test_a_restarted_node_is_seen_as_a_reboot_and_its_readings_follow(
    runtime, broker, gateway_process, tmp_path
):
    device = port_for_node(tmp_path)  # replugged behind the same link
    config = node_config(DEVICE, RATE)
    first = start_node(config, runtime, str(tmp_path), device)
    second = None
    subscriber = Subscriber(broker.port, TOPIC)
    api_port = free_port()
    gateway = gateway_process(gateway_toml(device.path, broker.port, f"127.0.0.1:{api_port}"))
    try:
        gateway.start(api_port)
        wait_for_readings(subscriber, 1_000)
        # Unplug: the board loses power (and its ring), the port goes away.
        first.stop()
        device.unplug()
        stats = gateway.wait_for(
            lambda stats: stats["sources"][SOURCE]["state"] == "waiting", DEADLINE
        )
        accepted = stats["sources"][SOURCE]["readings"]  # all of the first boot's
        device.replug()
        second = start_node(config, runtime, str(tmp_path), device)
        wait_for_readings(subscriber, accepted + 1_000)
        readings = received(subscriber)
        stats = gateway.health()["stats"]
        exit_code = gateway.stop()
    finally:
        subscriber.close()
        for node in (first, second):
            if node is not None:
                node.stop()
        device.close()
    assert exit_code == 0, gateway_log(gateway)
    old_boot, _ = node_boot(first)
    new_boot, _ = node_boot(second)
    reboots = re.findall(
        r"device (\S+) rebooted \(boot ([0-9a-f]{8}), was ([0-9a-f]{8})", gateway_log(gateway)
    )
    assert reboots == [(DEVICE, f"{new_boot:08x}", f"{old_boot:08x}")]
    assert stats["sources"][SOURCE]["reconnects"] == 1
    first_boot, second_boot = assert_boots(readings, boots=2)  # seq runs on across the boots
    assert first_boot == accepted >= 1_000 and second_boot >= 1_000


# -- 5. Every command through the gateway -------------------------------------------------


@pytest.mark.timeout(120)
def test_every_command_round_trips_through_the_gateway(runtime, broker, tmp_path):
    device = port_for_node(tmp_path)
    node = start_node(node_config(DEVICE, 20.0), runtime, str(tmp_path), device)
    subscriber = Subscriber(broker.port, TOPIC)
    config = gateway_toml(device.path, broker.port, "127.0.0.1:0", str(tmp_path / "var"))

    async def scenario():
        async with gateway_in_process(config) as gateway:
            source = gateway.sources[0]
            await until(lambda: remote(gateway)["greeted"], "the node's HELLO")
            boot = remote(gateway)["boot"]

            pong = await source.command("ping")
            assert pong["pong"] is True and pong["uptime_ms"] >= 0

            info = await source.command("info")
            assert (info["device"], info["boot"], info["proto"]) == (DEVICE, boot, [1])
            assert info["streams"] == [
                {"name": "synthetic", "fields": ["n", "value"], "rate": 20.0}
            ]
            assert info["fw"] == remote(gateway)["fw"] and isinstance(info["queued"], int)

            # 20/s → 500/s: 400 readings would take 20 s at the old rate, 0.8 s at the new.
            answer = await source.command("set_rate", {"stream": "synthetic", "rate": 500})
            assert answer == {"stream": "synthetic", "rate": 500.0, "saved": True}
            target = len(subscriber.messages) + 400
            await until(lambda: len(subscriber.messages) >= target, "500/s", timeout=5.0)
            info = await source.command("info")
            assert info["streams"][0]["rate"] == 500.0

            changes = {"heartbeat_ms": 1000, "retransmit_ms": 300}
            answer = await source.command("set_config", changes)
            assert answer == {
                "keys": ["heartbeat_ms", "retransmit_ms"],
                "saved": True,
                "reboot_required": False,
            }
            saved = (await source.command("info", {"section": "config"}))["config"]
            assert {key: saved[key] for key in changes} == changes

            assert await source.command("reboot") == {}
            await until(lambda: remote(gateway)["boot"] != boot, "a HELLO with a new boot id")
            after = await source.command("info")
            assert after["boot"] == remote(gateway)["boot"] != boot
            assert after["uptime_ms"] < info["uptime_ms"]
            # The new boot read its configuration back from the file: all changes kept.
            assert after["streams"][0]["rate"] == 500.0
            assert {key: after["config"][key] for key in changes} == changes
            target = len(subscriber.messages) + 200
            await until(lambda: len(subscriber.messages) >= target, "the new boot's readings")
            return link_stats(gateway)

    try:
        stats = asyncio.run(scenario())
        readings = received(subscriber)
    finally:
        subscriber.close()
        node.stop()
        device.close()
    assert stats["reboots"] == 1 and stats["hellos"] >= 2
    assert stats["commands"] == stats["responses"] == 8
    with open(node.config_path) as file:
        on_disk = json.load(file)
    assert on_disk["streams"][0]["rate"] == 500
    assert (on_disk["heartbeat_ms"], on_disk["retransmit_ms"]) == (1000, 300)
    assert_boots(readings, boots=2)
