"""End to end: pty devices → gateway process (preset from TOML) → MQTT, UDP and WebSocket."""

from __future__ import annotations

import base64
import math
import os
import socket

import pytest

from gateway.sources.simulator import VirtualSerialDevice
from tests.support.broker import free_port
from tests.support.clock import envelope_keys
from tests.support.config import gateway_toml, line_source
from tests.support.e2e import DeviceWriters, Receivers, free_udp_port

DEVICES = 4
PER_DEVICE = 2_600  # 10,400 readings in all
ENVELOPE_KEYS = envelope_keys("gateway", "device", "stream", "seq", "ts", "data")


def e2e_config(
    device_paths: list[str], broker_port: int, udp_port: int, api_port: int, ws_queue: int = 50_000
) -> str:
    sources = "".join(
        f"""
[[sources]]
name = "dev-{index}"
port = "{path}"
format = "json"
stream = "counter"
preset = "e2e"
"""
        for index, path in enumerate(device_paths)
    )
    return f"""
[gateway]
id = "e2e"
data_dir = "./var"

[api]
listen = "127.0.0.1:{api_port}"
{sources}
[presets.e2e]
extends = "realtime"
steps = [
  {{ op = "rename", map = {{ t = "temperature" }} }},
  {{ op = "scale", field = "temperature", factor = 0.1, offset = 20.0 }},
  {{ op = "drop", fields = ["sent"] }},
]
routes = [{{ sink = "mqtt" }}, {{ sink = "udp" }}, {{ sink = "live" }}]

[sinks.mqtt]
type = "mqtt"
url = "mqtt://127.0.0.1:{broker_port}"
qos = 1

[sinks.udp]
type = "udp"
targets = ["127.0.0.1:{udp_port}"]

[sinks.live]
type = "websocket"
queue = {ws_queue}
"""


def assert_complete_and_ordered(
    kind: str,
    received: list,
    per_device: int,
    devices: int = DEVICES,
    data_keys=("n", "temperature"),
) -> None:
    assert len(received) == devices * per_device, f"{kind}: {len(received)} received"
    by_device: dict[str, list] = {}
    for device, stream, seq, data, ts, _at, reading in received:
        assert set(reading) == ENVELOPE_KEYS, f"{kind}: envelope {sorted(reading)}"
        assert reading["gateway"] == "e2e" and stream == "counter"
        assert isinstance(ts, float) and ts > 1e9
        by_device.setdefault(device, []).append((seq, data))
    assert sorted(by_device) == [f"dev-{i}" for i in range(devices)], kind
    for device, items in by_device.items():
        counters = [data["n"] for _seq, data in items]
        assert counters == list(range(per_device)), f"{kind} {device}: missing or out of order"
        sequence_numbers = [seq for seq, _data in items]
        assert sequence_numbers == list(
            range(sequence_numbers[0], sequence_numbers[0] + per_device)
        )
        for _seq, data in items:
            assert set(data) == set(data_keys), f"{kind}: transforms not applied: {data}"
            assert math.isclose(data["temperature"], data["n"] * 0.1 + 20.0, abs_tol=1e-9)


@pytest.mark.timeout(180)
def test_every_reading_reaches_mqtt_udp_and_websocket_in_order(broker, tmp_path, gateway_process):
    udp_port, api_port = free_udp_port(), free_port()
    writers = DeviceWriters(DEVICES, str(tmp_path))
    gateway = gateway_process(e2e_config(writers.paths, broker.port, udp_port, api_port))
    gateway.start(api_port)
    receivers = Receivers(
        udp_port=udp_port,
        websocket_url=f"ws://127.0.0.1:{api_port}/ws?topics=gw/e2e/%23",
        mqtt_port=broker.port,
        mqtt_topic="gw/e2e/#",
        expected=DEVICES * PER_DEVICE,
    )
    receivers.start()
    try:
        writers.run(PER_DEVICE, rate_per_device=1_000)
        total = DEVICES * PER_DEVICE
        gateway.wait_for(
            lambda stats: all(count >= total for count in stats["totals"]["delivered"].values())
        )
    finally:
        results = receivers.finish()
        assert gateway.stop() == 0, gateway.log()
        writers.close()
    for kind in ("mqtt", "udp", "websocket"):
        assert_complete_and_ordered(kind, results[kind], PER_DEVICE)


def stalled_websocket_client(port: int, path: str) -> socket.socket:
    """A WebSocket client on a bare socket that completes the handshake and never reads again."""
    client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    client.sendall(
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    response = b""
    while b"\r\n\r\n" not in response:
        response += client.recv(1)
    assert response.startswith(b"HTTP/1.1 101"), response
    return client


@pytest.mark.timeout(180)
def test_a_stalled_websocket_client_does_not_slow_mqtt_or_udp(broker, tmp_path, gateway_process):
    udp_port, api_port = free_udp_port(), free_port()
    writers = DeviceWriters(2, str(tmp_path))
    config = e2e_config(writers.paths, broker.port, udp_port, api_port, ws_queue=100)
    gateway = gateway_process(config)
    gateway.start(api_port)
    stalled = stalled_websocket_client(api_port, "/ws")
    per_device = 3_000
    receivers = Receivers(
        udp_port=udp_port,
        websocket_url=f"ws://127.0.0.1:{api_port}/ws",
        mqtt_port=broker.port,
        mqtt_topic="gw/e2e/#",
        expected=2 * per_device,
    )
    receivers.start()
    # Frames large enough that the kernel's socket buffers (up to 4 MB) cannot hide the stall.
    padding = "x" * 1000  # and small enough for one 1472-byte UDP datagram

    def padded_line(index: int) -> bytes:
        return b'{"n":%d,"t":%d,"pad":"%s"}\n' % (index, index, padding.encode())

    try:
        writers.run(per_device, rate_per_device=1_500, line_for=padded_line)
        stats = gateway.wait_for(
            lambda stats: (
                stats["totals"]["delivered"]["mqtt"] >= 2 * per_device
                and stats["totals"]["delivered"]["udp"] >= 2 * per_device
            )
        )
    finally:
        results = receivers.finish()
        stalled.close()
        assert gateway.stop() == 0, gateway.log()
        writers.close()
    for kind in ("mqtt", "udp", "websocket"):
        assert_complete_and_ordered(
            kind, results[kind], per_device, devices=2, data_keys=("n", "temperature", "pad")
        )
    live = stats["sinks"]["live"]
    assert live["dropped_slow_client"] > 0, live
    assert stats["sinks"]["mqtt"]["queue_depth"] == 0 and stats["sinks"]["udp"]["queue_depth"] == 0


def test_the_totals_count_every_dropped_line_by_reason(broker, tmp_path, gateway_process):
    """Good lines, garbage and a device unplugged mid-line: every line that did not become a
    reading is in the totals under its reason, and the good ones all became readings."""
    api_port = free_port()
    with VirtualSerialDevice() as device:
        config = gateway_toml(
            "totals", api_port, broker.port, [line_source("dev", device.path)], "none"
        )
        config = config.replace(
            'extends = "basic"',
            'extends = "basic"\nappend_steps = '
            '[{ op = "validate", fields = { n = { type = "integer", required = true } } }]',
        )
        process = gateway_process(config)
        process.start(api_port)
        good = b"".join(b'{"n": %d}\n' % index for index in range(40))
        garbage = b'{"n": 1\n' + b"\xff\xfe\n" + b"x" * 5000 + b"\n" + b"[1, 2]\n" + b'{"n": "a"}\n'
        os.write(device.master, good + garbage + good + b'{"n": 7')
        process.wait_for(lambda stats: stats["totals"]["readings"] >= 80, 30)
    stats = process.wait_for(
        lambda stats: stats["totals"]["dropped_lines"]["partial_at_disconnect"], 30
    )
    assert stats["totals"]["readings"] == 80
    assert stats["totals"]["parse_errors"] == 2  # '{"n": 1' and '[1, 2]'
    assert stats["totals"]["dropped_lines"] == {
        "oversize": 1,
        "invalid_utf8": 1,
        "partial_at_disconnect": 1,
        "parse_errors": 2,
        "pipeline_errors": 0,
        "skipped": 0,
        "unnumbered": 0,
    }
    assert stats["sources"]["dev"]["invalid"] == {"type:n": 1}
