"""Ingest: a source's lines → parsed, transformed, numbered readings offered to routed sinks."""

from __future__ import annotations

import logging

import pytest

from gateway.clock import ClockWatch
from gateway.config import loads, presets
from gateway.ingest import Ingest, resolve_routes
from gateway.sinks.base import Sink
from gateway.sources.simulator import make_line
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


def nmea_ingest(tmp_path, **source):
    config = loads(CONFIG, environ={})
    sink = QueueOnlySink("a", "mqtt")
    preset = presets.resolve(config, "basic")
    options = {"name": "gps", "format": "nmea", **source}
    store = SequenceStore(str(tmp_path / "seq.json"))
    return Ingest(options, preset, [(sink, {})], "gw", store), sink


def test_a_gps_burst_gives_readings_and_no_parse_errors(tmp_path):
    """Seven sentences a second (GGA, GSA, three GSV parts, RMC, VTG): the GSV parts make
    one reading when their group completes, and nothing is counted as an error."""
    ingest, sink = nmea_ingest(tmp_path)
    for index in range(70):
        ingest.on_line(make_line("nmea", index).decode().strip(), 1.0)
    counters = ingest.counters
    assert counters["parse_errors"] == 0
    assert counters["readings"] == 50 and len(sink.taken()) == 50
    assert counters["skipped"] == 0  # the parts held for their group are not "skipped"


def test_sentences_not_asked_for_are_counted_as_skipped_by_kind(tmp_path):
    ingest, sink = nmea_ingest(tmp_path, sentences=["GGA", "RMC"])
    for index in range(70):
        ingest.on_line(make_line("nmea", index).decode().strip(), 1.0)
    counters = ingest.counters
    assert counters["parse_errors"] == 0 and counters["readings"] == 20
    assert counters["skipped_kinds"] == {"GSA": 10, "GSV": 30, "VTG": 10}
    assert counters["skipped"] == 50
    assert {reading["stream"] for reading, _route in sink.taken()} == {"gga", "rmc"}


def test_validate_drops_and_counts_by_reason_per_source(tmp_path):
    config = loads(
        CONFIG.replace(
            'steps = [{ op = "rename", map = { t = "temperature" } },',
            'steps = [{ op = "validate", fields = { t = { type = "number", min = -400, '
            "max = 1250, required = true } } },\n"
            '         { op = "rename", map = { t = "temperature" } },',
        ),
        environ={},
    )
    sink = QueueOnlySink("a", "mqtt")
    preset = presets.resolve(config, "lab")
    store = SequenceStore(str(tmp_path / "seq.json"))
    ingest = Ingest(config["sources"][0], preset, [(sink, {})], "gw", store)
    lines = ['{"t": 215}', '{"t": "hot"}', '{"t": {"x": 1}}', '{"t": true}', "{}", '{"h": 1}']
    lines += ['{"t": 1300}', '{"t": -401}', '{"t": 216}']
    for line in lines:
        ingest.on_line(line, 1.0)
    kept = [reading["data"]["temperature"] for reading, _ in sink.taken()]
    assert kept == [21.5, 21.6]
    counters = ingest.counters
    assert counters["readings"] == 2 and counters["parse_errors"] == 0
    assert counters["invalid"] == {
        "type:t": 3,
        "empty": 1,
        "missing:t": 2,  # {} and {"h": 1}
        "range:t": 2,
    }


TYPED = """
[[sources]]
name = "bench-1"
port = "/dev/null"
format = "FORMAT"
OPTIONS
preset = "typed"
[presets.typed]
extends = "basic"
[[presets.typed.steps]]
op = "validate"
fields.id = { type = "string" }
fields.n = { type = "integer" }
fields.on = { type = "bool" }
fields.t = { type = "number", min = -40, max = 85, required = true }
[sinks.mqtt]
type = "mqtt"
"""


def typed_ingest(tmp_path, format: str, options: str = ""):
    config = loads(TYPED.replace("FORMAT", format).replace("OPTIONS", options), environ={})
    sink = QueueOnlySink("mqtt", "mqtt")
    preset = presets.resolve(config, "typed")
    store = SequenceStore(str(tmp_path / "seq.json"))
    return Ingest(config["sources"][0], preset, [(sink, {})], "gw", store), sink


@pytest.mark.parametrize(
    ("format", "options", "lines", "invalid"),
    [
        (
            "csv",
            'fields = ["id", "t", "n", "on"]',
            ["007,21.5,7,true", "008,hot,7,1", "009,90,7,0", "010,20,7.5,yes", "011,-40,-3,0"],
            {"type:t": 1, "range:t": 1, "type:n": 1, "type:on": 1},
        ),
        (
            "kv",
            "",
            ["id=007 t=21.5 n=7 on=true", 'id=8 t="21.5"', "t=90", "n=7", "id=011 t=-40 n=-3 on=0"],
            {"type:t": 1, "range:t": 1, "missing:t": 1},
        ),
        (
            "json",
            "",
            [
                '{"id": "007", "t": 21.5, "n": 7, "on": true}',
                '{"id": 7, "t": "21.5"}',
                '{"t": 90}',
                "{}",
                '{"id": "011", "t": -40, "n": -3, "on": false}',
            ],
            {"type:id": 1, "type:t": 1, "range:t": 1, "empty": 1, "missing:t": 1},
        ),
    ],
)
def test_text_formats_convert_fields_by_the_declared_type(
    tmp_path, format, options, lines, invalid
):
    ingest, sink = typed_ingest(tmp_path, format, options)
    for line in lines:
        ingest.on_line(line, 1.0)
    kept = [reading["data"] for reading, _route in sink.taken()]
    assert kept == [
        {"id": "007", "t": 21.5, "n": 7, "on": True},
        {"id": "011", "t": -40, "n": -3, "on": False},
    ]
    counters = ingest.counters
    assert counters["readings"] == 2 and counters["parse_errors"] == 0
    assert counters["invalid"] == invalid


def test_readings_say_so_while_the_system_clock_is_not_synchronised(tmp_path):
    ingest, sinks = build(tmp_path)
    status = {"synced": False}
    watch = ClockWatch(
        status=lambda: status["synced"], on_change=lambda u: setattr(ingest, "unsynced", u)
    )
    ingest.unsynced = watch.unsynced  # as the app sets a new ingest
    ingest.on_line('{"t": 215, "h": 40}', 1.0)
    status["synced"] = True
    watch.check()
    ingest.on_line('{"t": 216, "h": 40}', 2.0)
    status["synced"] = False
    watch.check()
    ingest.on_line('{"t": 217, "h": 40}', 3.0)
    readings = [reading for reading, _route in sinks["b"].taken()]
    assert [reading.get("unsynced") for reading in readings] == [True, None, True]
