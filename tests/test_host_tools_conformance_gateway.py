"""`host-tools conformance --gateway`: passes our gateway, fails configs that break a contract."""

from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest

from tests.support.broker import free_port

HOST_TOOLS = str(Path(sys.executable).parent / "host-tools")
ALL_CHECKS = [
    "api_health",
    "api_metrics",
    "availability",
    "envelope",
    "topics",
    "seq",
    "device_status",
    "will",
]


def gateway_toml(api_port: int, broker_port: int, sink_keys: str = "") -> str:
    return f"""
[gateway]
id = "conf-gw"
data_dir = "./var"

[api]
listen = "127.0.0.1:{api_port}"

[[sources]]
name = "sim-1"
simulate = {{ profile = "counter", rate = 20 }}
preset = "counted"

[presets.counted]
extends = "basic"
discovery = true

[sinks.mqtt]
type = "mqtt"
url = "mqtt://127.0.0.1:{broker_port}"
qos = 1
{sink_keys}
"""


def run_suite(broker, gateway_process, tmp_path, sink_keys: str = "") -> tuple:
    api_port = free_port()
    gateway = gateway_process(gateway_toml(api_port, broker.port, sink_keys))
    gateway.start(api_port)
    junit = tmp_path / "gateway.xml"
    done = subprocess.run(
        [
            HOST_TOOLS,
            "conformance",
            "--gateway",
            f"http://127.0.0.1:{api_port}",
            "--mqtt",
            broker.url,
            "--seconds",
            "1.5",
            "--junit",
            str(junit),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    gateway.stop()
    root = ElementTree.parse(junit).getroot()
    failures = {
        case.get("name"): case.find("failure").text
        for case in root.iter("testcase")
        if case.find("failure") is not None
    }
    names = [case.get("name") for case in root.iter("testcase")]
    return done, names, failures


def test_our_gateway_passes_every_check(broker, gateway_process, tmp_path):
    done, names, failures = run_suite(broker, gateway_process, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert names == ALL_CHECKS
    assert failures == {}
    assert "8 passed, 0 failed" in done.stdout
    assert "will `offline` published, back online" in done.stdout


@pytest.mark.parametrize(
    "sink_keys, failing, words",
    [
        (
            'topic = "sensors/{device}/{stream}"',
            {"topics"},
            "expected the reading of sim-1/default on gw/conf-gw/sim-1/default",
        ),
        (
            "availability = false",
            {"availability", "will"},
            "expected a retained `online` on gw/conf-gw/status",
        ),
    ],
)
def test_a_config_breaking_a_contract_fails_the_check_naming_it(
    broker, gateway_process, tmp_path, sink_keys, failing, words
):
    done, names, failures = run_suite(broker, gateway_process, tmp_path, sink_keys)
    assert done.returncode == 1, done.stdout + done.stderr
    assert set(failures) == failing, done.stdout
    assert any(words in message for message in failures.values()), failures
    if "topics" in failures:
        assert "seen topic sensors/sim-1/default" in failures["topics"]
        assert "frame 7b" in failures["topics"]  # the payload, in hex
    if "will" in failures:
        assert "no will" in failures["will"]


def test_the_gateway_suite_needs_a_broker_url():
    done = subprocess.run(
        [HOST_TOOLS, "conformance", "--gateway", "http://127.0.0.1:9"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2
    assert "--gateway needs --mqtt URL" in done.stderr
