"""Home Assistant discovery and per-device availability against a real Mosquitto and a pty."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess

import pytest

from gateway.sinks.discovery import field_class, object_id
from gateway.sources.simulator import VirtualSerialDevice
from tests.support.api import gateway_in_loop
from tests.support.broker import Subscriber
from tests.support.waiting import eventually, wait_until

pytestmark = pytest.mark.timeout(90)

CONFIG_TOPIC = re.compile(r"homeassistant/sensor/[a-zA-Z0-9_-]+/[a-zA-Z0-9_-]+/config")
# Home Assistant's sensor device classes and the units each accepts (the ones used here).
DEVICE_CLASS_UNITS = {
    "temperature": {"°C", "°F", "K"},
    "humidity": {"%"},
    "pressure": {"Pa", "hPa", "kPa", "bar", "cbar", "mbar", "mmHg", "inHg", "psi"},
}
DEVICE_KEYS = {"identifiers", "connections", "name", "model", "sw_version", "via_device"}
TEMPLATE = re.compile(r"""\{\{ value_json\['data'\]\[("(?:[^"\\]|\\.)*")\] \}\}""")


def config_text(data_dir, pty_paths: dict[str, str], broker_port: int, base: str = "iot") -> str:
    sources = "".join(
        f'[[sources]]\nname = "{name}"\nport = "{path}"\nformat = "json"\n'
        f'stream = "env"\npreset = "home"\n'
        for name, path in pty_paths.items()
    )
    return f"""
[gateway]
id = "lab.pi"
data_dir = "{data_dir}"

[api]
listen = "127.0.0.1:0"

{sources}
[presets.home]
extends = "{base}"
steps = []

[sinks.mqtt]
type = "mqtt"
url = "mqtt://127.0.0.1:{broker_port}"
device_timeout = "400ms"
"""


def check_sensor_config(topic: str, payload: bytes) -> dict:
    """What Home Assistant's MQTT sensor platform and device schema require of a config."""
    assert CONFIG_TOPIC.fullmatch(topic), topic
    config = json.loads(payload)
    assert isinstance(config["state_topic"], str) and config["state_topic"]
    assert isinstance(config["unique_id"], str) and config["unique_id"]
    device = config["device"]
    assert set(device) <= DEVICE_KEYS and device["identifiers"], device
    assert all(isinstance(identifier, str) for identifier in device["identifiers"])
    assert device["via_device"] == "lab_pi" and device["name"] and device["model"]
    assert isinstance(config["origin"]["name"], str)
    assert [entry["topic"] for entry in config["availability"]] == [
        "gw/lab.pi/status",
        f"gw/lab.pi/{device['name']}/status",
    ]
    assert config["availability_mode"] == "all"
    assert TEMPLATE.fullmatch(config["value_template"]), config["value_template"]
    if "device_class" in config:
        assert config["unit_of_measurement"] in DEVICE_CLASS_UNITS[config["device_class"]]
    return config


def template_field(config: dict) -> str:
    return json.loads(TEMPLATE.fullmatch(config["value_template"]).group(1))


def configs(subscriber: Subscriber) -> dict[str, list[bytes]]:
    found: dict[str, list[bytes]] = {}
    for topic, payload, _at in subscriber.messages:
        if topic.startswith("homeassistant/sensor/"):
            found.setdefault(topic, []).append(payload)
    return found


def statuses(subscriber: Subscriber, device: str) -> list[bytes]:
    topic = f"gw/lab.pi/{device}/status"
    return [payload for t, payload, _at in subscriber.messages if t == topic]


def test_configs_follow_the_schema_are_retained_and_come_again_after_a_birth_message(
    broker, tmp_path
):
    device = VirtualSerialDevice()
    ha = Subscriber(broker.port, "homeassistant/#")
    states = Subscriber(broker.port, "gw/#")
    line = b'{"temperature": 21.5, "humidity": 40.2, "pm2.5 raw": 3, "label": "x"}\n'

    async def scenario():
        async with gateway_in_loop(config_text(tmp_path, {"bench-1": device.path}, broker.port)):
            device.write(line)
            await eventually(lambda: len(configs(ha)) == 4, 10, "four configs")
            await eventually(lambda: statuses(states, "bench-1")[-1:] == [b"online"], 10)
            late = Subscriber(broker.port, "homeassistant/#")  # sees what is retained
            await eventually(lambda: len(configs(late)) == 4, 10, "retained configs")
            late.close()
            birth = ["-t", "homeassistant/status", "-m", "online"]
            subprocess.run(["mosquitto_pub", "-p", str(broker.port), *birth], check=True)
            await eventually(
                lambda: all(len(p) == 2 for p in configs(ha).values()), 10, "re-published"
            )
            readings = [
                json.loads(p) for t, p, _ in states.messages if t == "gw/lab.pi/bench-1/env"
            ]
            return configs(ha), readings

    try:
        found, readings = asyncio.run(scenario())
    finally:
        ha.close()
        states.close()
        device.close()
    checked = {topic: check_sensor_config(topic, payloads[0]) for topic, payloads in found.items()}
    assert sorted(checked) == [
        f"homeassistant/sensor/lab_pi/bench-1_env_{name}/config"
        for name in ("humidity", "label", "pm2_5_raw", "temperature")
    ]
    by_field = {template_field(config): config for config in checked.values()}
    assert set(by_field) == {"temperature", "humidity", "pm2.5 raw", "label"}
    assert by_field["temperature"]["device_class"] == "temperature"
    assert by_field["temperature"]["unit_of_measurement"] == "°C"
    assert by_field["humidity"]["unit_of_measurement"] == "%"
    assert "device_class" not in by_field["label"]
    # Each template reads its field from what arrives on its state topic.
    assert all(config["state_topic"] == "gw/lab.pi/bench-1/env" for config in checked.values())
    assert readings and all(field in readings[0]["data"] for field in by_field)
    assert len({config["unique_id"] for config in checked.values()}) == 4


def test_device_status_follows_link_and_silence_and_a_removed_device_is_removed(broker, tmp_path):
    first, second = VirtualSerialDevice(), VirtualSerialDevice()
    states = Subscriber(broker.port, "gw/+/+/status")
    ha = Subscriber(broker.port, "homeassistant/#")
    both = {"bench-1": first.path, "bench-2": second.path}

    async def run_both():
        async with gateway_in_loop(config_text(tmp_path, both, broker.port)):
            first.write(b'{"temperature": 20.0}\n')
            second.write(b'{"pressure_hpa": 1013.2}\n')
            await eventually(lambda: len(configs(ha)) == 2, 10, "both announced")
            await eventually(lambda: statuses(states, "bench-1")[-1:] == [b"online"], 10)
            # Silent for longer than device_timeout: offline; a reading: online again.
            await eventually(lambda: statuses(states, "bench-1")[-1:] == [b"offline"], 10)
            first.write(b'{"temperature": 20.5}\n')
            await eventually(lambda: statuses(states, "bench-1")[-1:] == [b"online"], 10)
            first.unplug()  # the link drops
            await eventually(lambda: statuses(states, "bench-1")[-1:] == [b"offline"], 10)

    async def run_without_second():
        async with gateway_in_loop(config_text(tmp_path, {"bench-1": first.path}, broker.port)):
            removed = "homeassistant/sensor/lab_pi/bench-2_env_pressure_hpa/config"
            await eventually(lambda: configs(ha).get(removed, [])[-1:] == [b""], 10, "removal")
            return removed

    try:
        asyncio.run(run_both())
        pressure = json.loads(
            configs(ha)["homeassistant/sensor/lab_pi/bench-2_env_pressure_hpa/config"][0]
        )
        first.replug()
        removed = asyncio.run(run_without_second())
        late = Subscriber(broker.port, "homeassistant/#")
        try:
            # Retained: bench-1's config only; bench-2's was cleared. A subscription's
            # retained messages come together, right after its SUBACK.
            kept_topic = "homeassistant/sensor/lab_pi/bench-1_env_temperature/config"
            wait_until(lambda: kept_topic in configs(late), 10, "the retained config")
            kept = configs(late)
        finally:
            late.close()
    finally:
        states.close()
        ha.close()
        first.close()
        second.close()
    assert pressure["device_class"] == "pressure" and pressure["unit_of_measurement"] == "hPa"
    assert removed not in kept and list(kept) == [
        "homeassistant/sensor/lab_pi/bench-1_env_temperature/config"
    ]
    assert statuses(states, "bench-2")[-1:] == [b""]  # its retained status cleared too


def test_object_ids_and_field_classes():
    assert object_id("pm2.5 raw") == "pm2_5_raw" and object_id("lab.pi") == "lab_pi"
    assert object_id("ok-Id_9") == "ok-Id_9" and object_id("...") == "_"
    assert field_class("Temperature") == ("temperature", "°C")
    assert field_class("temp_f") == ("temperature", "°F")
    assert field_class("pressure_kpa") == ("pressure", "kPa")
    assert field_class("wind") == (None, None)


def test_a_device_with_ever_new_fields_is_announced_up_to_the_bound():
    from gateway.sinks.discovery import MAX_FIELDS, Announcer

    async def publish(*args, **kwargs):
        pass

    async def main():
        announcer = Announcer(publish, "gw", "homeassistant", "gw/gw/status", None)
        announcer.watch("dev", "test")
        for index in range(MAX_FIELDS + 50):
            announcer.seen({"device": "dev", "stream": "s", "data": {f"f{index}": 1}}, "t")
        return announcer

    announcer = asyncio.run(main())
    assert len(announcer.configs) == MAX_FIELDS
    assert announcer.counters["fields_over_limit"] == 50


def test_without_discovery_a_device_still_has_its_status_and_nothing_is_announced(broker, tmp_path):
    device, other = VirtualSerialDevice(), VirtualSerialDevice()
    states = Subscriber(broker.port, "gw/+/+/status")
    ha = Subscriber(broker.port, "homeassistant/#")
    both = {"bench-1": device.path, "bench-2": other.path}

    async def run(paths):
        async with gateway_in_loop(config_text(tmp_path, paths, broker.port, "basic")):
            device.write(b'{"temperature": 20.0}\n')
            await eventually(lambda: statuses(states, "bench-1")[-1:] == [b"online"], 10)
            await eventually(lambda: statuses(states, "bench-1")[-1:] == [b"offline"], 10)
            device.write(b'{"temperature": 20.5}\n')
            await eventually(lambda: statuses(states, "bench-1")[-1:] == [b"online"], 10)

    try:
        asyncio.run(run(both))
        assert statuses(states, "bench-2")[-1:] == [b"offline"]  # connected, never heard from
        asyncio.run(run({"bench-1": device.path}))  # bench-2 left the config
        wait_until(lambda: statuses(states, "bench-2")[-1:] == [b""], 10, "bench-2 cleared")
    finally:
        states.close()
        ha.close()
        device.close()
        other.close()
    assert configs(ha) == {}
