"""Presets: the five built-ins, their TOML text, and `extends` resolution for user presets."""

import sys

import pytest

from gateway.config import ConfigError, loads, presets

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

SINKS = (
    '[sinks.mqtt]\ntype = "mqtt"\n'
    '[sinks.udp]\ntype = "udp"\ntargets = ["127.0.0.1:9999"]\n'
    '[sinks.live]\ntype = "websocket"\n'
)


@pytest.mark.parametrize("name", presets.BUILTIN_NAMES)
def test_each_builtin_text_parses_and_resolves(name):
    text = presets.builtin_text(name)
    table = tomllib.loads(text)
    assert text.lstrip().startswith("#"), "each built-in explains itself in comments"
    assert table["description"]
    assert table["buffer"] in ("write_ahead", "spill", "none")
    resolved = presets.resolve(None, name)
    assert resolved["name"] == name and resolved["builtin"] is True
    assert resolved["description"] == table["description"]
    assert resolved["extends"] == []
    assert resolved["routes"], "a built-in preset routes somewhere"
    assert all(set(route) & {"type"} and "sink" not in route for route in resolved["routes"])


def test_builtin_contents_follow_the_design():
    basic = presets.resolve(None, "basic")
    assert basic["routes"] == [{"type": "mqtt", "qos": 1, "batch": {"max_readings": 1}}]
    assert (basic["steps"], basic["buffer"]) == ([], "spill")

    realtime = presets.resolve(None, "realtime")
    assert [route["type"] for route in realtime["routes"]] == ["udp", "websocket"]
    assert all(route["batch"]["max_readings"] == 1 for route in realtime["routes"])
    assert realtime["buffer"] == "none"

    iot = presets.resolve(None, "iot")
    assert iot["routes"] == [{"type": "mqtt", "qos": 1}]
    assert iot["steps"] == [{"op": "deadband", "delta": 0.1}, {"op": "downsample", "every": 1.0}]
    assert (iot["buffer"], iot["discovery"]) == ("spill", True)

    research = presets.resolve(None, "research")
    assert research["routes"] == [{"type": "mqtt", "qos": 1}, {"type": "udp"}, {"type": "recorder"}]
    assert (research["steps"], research["buffer"], research["device_time"]) == (
        [],
        "write_ahead",
        True,
    )

    fast = presets.resolve(None, "high_throughput")
    assert [route["type"] for route in fast["routes"]] == ["mqtt", "udp"]
    for route in fast["routes"]:
        assert route["encoding"] == "msgpack"
        assert route["batch"] == {"max_readings": 200}
    assert fast["routes"][0]["qos"] == 1


def test_builtin_text_of_an_unknown_name_is_a_config_error():
    with pytest.raises(ConfigError) as caught:
        presets.builtin_text("iott")
    assert caught.value.errors == [
        "preset: expected one of basic, realtime, iot, research, high_throughput"
        ' (built-in or [presets.NAME]), got "iott" (did you mean "iot"?)'
    ]


def test_user_preset_extending_a_builtin_replaces_steps_and_inherits_the_rest():
    config = loads(
        SINKS + '[presets.lab]\nextends = "iot"\n'
        'steps = [{ op = "rename", map = { t = "temperature" } }]\n'
    )
    lab = presets.resolve(config, "lab")
    assert lab["steps"] == [{"op": "rename", "map": {"t": "temperature"}}]
    assert lab["routes"] == [{"type": "mqtt", "qos": 1}]
    assert (lab["buffer"], lab["discovery"], lab["builtin"]) == ("spill", True, False)
    assert lab["extends"] == ["iot"]
    assert lab["description"] == 'Extends "iot".'


def test_append_steps_adds_after_the_parent_steps():
    config = loads(
        SINKS + '[presets.lab]\nextends = "iot"\n'
        'append_steps = [{ op = "drop", fields = ["debug"] }]\n'
    )
    assert [step["op"] for step in presets.resolve(config, "lab")["steps"]] == [
        "deadband",
        "downsample",
        "drop",
    ]


def test_steps_and_append_steps_together_are_an_error():
    with pytest.raises(ConfigError) as caught:
        loads(SINKS + '[presets.lab]\nextends = "iot"\nsteps = []\nappend_steps = []\n')
    assert caught.value.errors == [
        "presets.lab.append_steps: expected either steps or append_steps, got both"
    ]


def test_chain_of_user_presets_routes_replace_and_scalars_override():
    config = loads(
        SINKS + '[presets.base]\ndescription = "ours"\nextends = "research"\n'
        'routes = [{ sink = "udp" }]\nsteps = [{ op = "drop", fields = ["x"] }]\n'
        '[presets.child]\nextends = "base"\nbuffer = "none"\n'
        'routes = [{ sink = "mqtt", topic = "lab/{device}", qos = 0 }, { sink = "live" }]\n'
    )
    child = presets.resolve(config, "child")
    assert child["extends"] == ["base", "research"]
    assert child["routes"] == [
        {"sink": "mqtt", "topic": "lab/{device}", "qos": 0},
        {"sink": "live"},
    ]
    assert child["steps"] == [{"op": "drop", "fields": ["x"]}]
    assert (child["buffer"], child["device_time"]) == ("none", True)
    assert presets.resolve(config, "base")["description"] == "ours"


def test_resolve_does_not_share_state_between_calls():
    first = presets.resolve(None, "iot")
    first["steps"].clear()
    first["routes"][0]["qos"] = 0
    again = presets.resolve(None, "iot")
    assert len(again["steps"]) == 2 and again["routes"][0]["qos"] == 1


def test_resolve_raises_for_unknown_name_and_cycles():
    with pytest.raises(ConfigError, match='got "nope"'):
        presets.resolve(None, "nope")
    config = {
        "presets": {
            "a": {**_empty_preset(), "extends": "b"},
            "b": {**_empty_preset(), "extends": "a"},
        }
    }
    with pytest.raises(ConfigError) as caught:
        presets.resolve(config, "a")
    assert caught.value.errors == [
        "presets.a.extends: expected an extends chain without a cycle, got a -> b -> a"
    ]


def test_preset_leading_into_a_cycle_reports_its_own_chain():
    with pytest.raises(ConfigError) as caught:
        loads(
            SINKS + '[presets.c]\nextends = "a"\n'
            '[presets.a]\nextends = "b"\n[presets.b]\nextends = "a"\n'
        )
    assert caught.value.errors[0] == (
        "presets.c.extends: expected an extends chain without a cycle, got c -> a -> b -> a"
    )
    assert len(caught.value.errors) == 3


def test_type_routes_without_a_matching_sink_are_allowed():
    config = loads(
        '[sinks.udp]\ntype = "udp"\ntargets = ["127.0.0.1:9"]\n'
        '[presets.lab]\nextends = "research"\n'
    )
    assert [route["type"] for route in presets.resolve(config, "lab")["routes"]] == [
        "mqtt",
        "udp",
        "recorder",
    ]


def test_available_lists_builtins_then_user_presets():
    config = loads(SINKS + '[presets.lab]\nextends = "basic"\ndescription = "mine"\n')
    listing = presets.available(config)
    assert [entry["name"] for entry in listing] == [*presets.BUILTIN_NAMES, "lab"]
    assert listing[-1] == {"name": "lab", "description": "mine", "builtin": False}
    assert all(entry["builtin"] for entry in listing[:-1])


def test_buffer_policy_is_validated():
    with pytest.raises(ConfigError) as caught:
        loads(SINKS + '[presets.lab]\nextends = "basic"\nbuffer = "write-ahead"\n')
    assert caught.value.errors == [
        'presets.lab.buffer: expected write_ahead, spill or none, got "write-ahead"'
        ' (did you mean "write_ahead"?)'
    ]


def _empty_preset():
    return {
        key: None
        for key in (
            "description",
            "extends",
            "steps",
            "append_steps",
            "routes",
            "buffer",
            "device_time",
            "discovery",
        )
    }
