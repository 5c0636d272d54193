"""host_tools.node_config: gateway.toml compiled into the gateway node's config.json."""

from __future__ import annotations

import pytest

from gateway.config import ConfigError
from host_tools.node_config import SEGMENT_BYTES, compile_text

BASE = """
[gateway]
id = "node-gw"

[[sources]]
name = "bench-1"
port = "/dev/ttyUSB0"
format = "csv"
fields = ["t", "h"]
preset = "board"

[presets.board]
extends = "basic"
routes = [{ sink = "mqtt" }]

[sinks.mqtt]
type = "mqtt"
url = "mqtt://broker.local:1884"
username = "user"
password = "pw"
"""


def errors_of(text: str, board: dict | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        compile_text(text, board)
    return caught.value.errors


def test_a_board_config_carries_the_resolved_preset_and_the_sink_settings():
    config = compile_text(
        BASE.replace(
            'extends = "basic"',
            'extends = "basic"\nsteps = [{ op = "scale", field = "t", factor = 2.0 }]',
        )
    )
    source = config["sources"][0]
    assert source["steps"] == [{"op": "scale", "field": "t", "factor": 2.0}]
    assert source["routes"] == [{"sink": "mqtt"}]
    assert (source["format"], source["fields"], source["port"]) == (
        "csv",
        ["t", "h"],
        "/dev/ttyUSB0",
    )
    mqtt = config["sinks"]["mqtt"]
    assert (mqtt["host"], mqtt["port"], mqtt["user"], mqtt["password"]) == (
        "broker.local",
        1884,
        "user",
        "pw",
    )
    assert mqtt["flash"] is True
    assert mqtt["max_bytes"] % SEGMENT_BYTES == 0 and mqtt["max_bytes"] <= 256 * 1024


@pytest.mark.parametrize(
    "extra, expected",
    [
        (
            '[sinks.live]\ntype = "websocket"\n',
            'sinks.live.type: the board build has no "websocket" sink',
        ),
        ('[sinks.events]\ntype = "sse"\n', 'sinks.events.type: the board build has no "sse" sink'),
        (
            '[sinks.hook]\ntype = "webhook"\nurl = "http://127.0.0.1:9/x"\n',
            'sinks.hook.type: the board build has no "webhook" sink',
        ),
        (
            '[sinks.rec]\ntype = "recorder"\npath = "./rec"\n',
            'sinks.rec.type: the board build has no "recorder" sink',
        ),
        (
            '[sinks.udp]\ntype = "udp"\ntargets = ["127.0.0.1:9"]\nencoding = "msgpack"\n',
            "sinks.udp.encoding: the board build sends json only",
        ),
    ],
)
def test_what_the_board_cannot_do_is_refused_with_its_key_path(extra, expected):
    errors = errors_of(BASE + extra)
    assert any(line.startswith(expected) for line in errors), errors


def test_a_preset_with_discovery_or_batches_is_refused_where_it_says_so():
    text = BASE.replace('extends = "basic"', 'extends = "iot"')
    assert any(line.startswith("presets.board.discovery:") for line in errors_of(text))
    batched = BASE.replace(
        'routes = [{ sink = "mqtt" }]',
        'routes = [{ sink = "mqtt", batch = { max_readings = 10 } }]',
    )
    assert any(line.startswith("presets.board.routes[0].batch:") for line in errors_of(batched))


def test_the_gateway_validator_runs_first_and_board_settings_are_checked():
    assert any("sinks.mqtt.qos" in line for line in errors_of(BASE + "qos = 3\n"))
    errors = errors_of(BASE, {"fs_share": 100, "colour": "red"})
    assert any(line.startswith("board.fs_share:") for line in errors), errors
    assert any(line.startswith("board.colour: unknown setting") for line in errors), errors


def test_uarts_named_per_source_replace_the_port():
    config = compile_text(BASE, {"uarts": {"bench-1": {"id": 1, "tx": 4, "rx": 5}}})
    assert config["sources"][0]["uart"] == {"baud": 115200, "id": 1, "tx": 4, "rx": 5}
    assert "port" not in config["sources"][0]
