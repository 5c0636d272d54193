"""Ingest: a source's lines → parsed, transformed, numbered readings offered to routed sinks."""

from __future__ import annotations

import logging

from gateway.config import loads, presets
from gateway.ingest import Ingest, resolve_routes
from gateway.sinks.base import Sink
from gateway.store.sequences import SequenceStore

CONFIG = """
[gateway]
id = "gw"
[[sources]]
name = "bench-1"
port = "/dev/null"
stream = "env"
preset = "lab"
[presets.lab]
extends = "basic"
steps = [{ op = "rename", map = { t = "temperature" } },
         { op = "scale", field = "temperature", factor = 0.1 }]
routes = [{ sink = "a", topic = "lab/{device}" }, { type = "udp" }]
[sinks.a]
type = "mqtt"
[sinks.b]
type = "udp"
targets = ["127.0.0.1:9"]
[sinks.c]
type = "udp"
targets = ["127.0.0.1:9"]
[sinks.d]
type = "websocket"
"""


class QueueOnlySink(Sink):
    """A real Sink whose queue we read directly instead of running its sender task."""

    def __init__(self, name: str, kind: str):
        super().__init__(name, {}, "gw")
        self.kind = kind

    def taken(self) -> list:
        return self._take_batch()


def build(tmp_path):
    config = loads(CONFIG, environ={})
    sinks = {
        name: QueueOnlySink(name, options["type"]) for name, options in config["sinks"].items()
    }
    preset = presets.resolve(config, "lab")
    routes = resolve_routes(preset, sinks)
    store = SequenceStore(str(tmp_path / "seq.json"))
    return Ingest(config["sources"][0], preset, routes, "gw", store), sinks


def test_routes_by_name_and_by_type_fan_out(tmp_path):
    ingest, sinks = build(tmp_path)
    assert [(sink.name, route) for sink, route in ingest.routes] == [
        ("a", {"topic": "lab/{device}"}),
        ("b", {}),
        ("c", {}),
    ]


def test_envelope_transforms_and_consecutive_seq(tmp_path):
    ingest, sinks = build(tmp_path)
    for value in (215, 216, 217):
        ingest.on_line(f'{{"t": {value}, "h": 40}}', 1764236400.1234567)
    readings = [reading for reading, _route in sinks["a"].taken()]
    assert [r["seq"] for r in readings] == [0, 1, 2]
    first = readings[0]
    assert list(first) == ["gateway", "device", "stream", "seq", "ts", "data"]
    assert first["gateway"] == "gw" and first["device"] == "bench-1" and first["stream"] == "env"
    assert first["ts"] == 1764236400.123457
    assert first["data"] == {"temperature": 21.5, "h": 40}
    assert [r for r, _ in sinks["b"].taken()] == readings  # the same readings, every route
    assert sinks["d"].taken() == []  # websocket: not routed by this preset


def test_a_lines_own_stream_and_device_time_are_honoured(tmp_path):
    ingest, sinks = build(tmp_path)
    ingest.on_line('{"stream": "power", "dts": 98765, "t": 1}', 1.0)
    ingest.on_line('{"t": 2}', 2.0)
    (power, _), (env, _) = sinks["a"].taken()
    assert power["stream"] == "power" and power["dts"] == 98765 and power["seq"] == 0
    assert list(power) == ["gateway", "device", "stream", "seq", "ts", "dts", "data"]
    assert env["stream"] == "env" and "dts" not in env and env["seq"] == 0


def test_bad_lines_are_counted_and_logged_and_the_good_around_them_kept(tmp_path, caplog):
    ingest, sinks = build(tmp_path)
    lines = ['{"t": 1}', '{"t": 2', '{"t": 2}', "[1, 2]", "\x00\x01garbage", '{"t": 3}']
    with caplog.at_level(logging.WARNING, logger="gateway.ingest"):
        for line in lines:
            ingest.on_line(line, 1.0)
    kept = [reading["data"]["temperature"] for reading, _ in sinks["a"].taken()]
    assert kept == [0.1, 0.2, 0.30000000000000004]
    assert ingest.counters["parse_errors"] == 3 and ingest.counters["readings"] == 3
    assert "source bench-1: bad line dropped" in caplog.text
