"""The `gateway` command: check, presets, run's refusals, and a clean SIGTERM stop."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import pytest

from gateway.store.reservations import peek
from tests.support.api import call
from tests.support.broker import free_port
from tests.support.e2e import REPO_ROOT, free_udp_port
from tests.support.waiting import wait_until


def gateway(*arguments: str, cwd: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *arguments],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": REPO_ROOT},
        timeout=60,
    )


def test_check_accepts_the_shipped_example():
    result = gateway("check", "-c", os.path.join(REPO_ROOT, "docs", "examples", "gateway.toml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "valid" in result.stdout


def test_check_lists_every_error_one_per_line_and_exits_2(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text(
        '[[sources]]\nname = "a"\nport = "/dev/ttyACM0"\nbaud = "fast"\n'
        '[sinks.mqtt]\ntype = "mqtt"\nqos = 3\n'
    )
    result = gateway("check", "-c", str(config))
    assert result.returncode == 2
    lines = result.stdout.strip().splitlines()
    assert any(line.startswith("sources[0].baud: expected") for line in lines), lines
    assert any(line.startswith("sinks.mqtt.qos: expected") for line in lines), lines


def test_presets_lists_the_five_and_prints_one_as_toml():
    listing = gateway("presets")
    assert listing.returncode == 0
    names = [line.split()[0] for line in listing.stdout.strip().splitlines()]
    assert names == ["basic", "realtime", "iot", "research", "high_throughput"]
    one = gateway("presets", "iot")
    assert one.returncode == 0 and "routes" in one.stdout and "deadband" in one.stdout
    assert gateway("presets", "nope").returncode == 2


SOURCE_AND_SINK = """
[[sources]]
name = "a"
port = "/dev/null"
preset = "{preset}"
[sinks.mqtt]
type = "mqtt"
[sinks.udp]
type = "udp"
targets = ["127.0.0.1:9"]
"""


@pytest.mark.parametrize("name", ["basic", "realtime", "iot", "research", "high_throughput"])
def test_a_printed_builtin_preset_pastes_into_a_config_that_checks(tmp_path, name):
    printed = gateway("presets", name)
    assert printed.returncode == 0
    assert f"[presets.my_{name}]" in printed.stdout
    config = tmp_path / "gateway.toml"
    sinks = '[sinks.rec]\ntype = "recorder"\n' if name == "research" else ""
    config.write_text(SOURCE_AND_SINK.format(preset=f"my_{name}") + sinks + printed.stdout)
    checked = gateway("check", "-c", str(config))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_presets_with_a_config_lists_and_prints_its_own_presets(tmp_path):
    config = tmp_path / "gateway.toml"
    config.write_text(
        SOURCE_AND_SINK.format(preset="lab")
        + '[presets.lab]\nextends = "basic"\ndescription = "my lab"\n'
        + 'append_steps = [{ op = "downsample", every = "250ms" }]\n'
        + 'routes = [{ sink = "udp" }]\n'
    )
    listing = gateway("presets", "-c", str(config))
    assert listing.returncode == 0
    names = [line.split()[0] for line in listing.stdout.strip().splitlines()]
    assert names == ["basic", "realtime", "iot", "research", "high_throughput", "lab"]
    printed = gateway("presets", "-c", str(config), "lab")
    assert printed.returncode == 0
    assert printed.stdout.splitlines()[1] == "[presets.lab]"
    assert '{ op = "downsample", every = 0.25 }' in printed.stdout
    # The effective preset, pasted instead of the original, is the same preset.
    again = tmp_path / "again.toml"
    again.write_text(SOURCE_AND_SINK.format(preset="lab") + printed.stdout)
    reprinted = gateway("presets", "-c", str(again), "lab").stdout
    assert reprinted.splitlines()[1:] == printed.stdout.splitlines()[1:]
    assert gateway("presets", "lab").returncode == 2  # without -c only built-ins are known


def test_run_refuses_an_invalid_config_with_the_key_path(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text('[sinks.u]\ntype = "udp"\n')
    result = gateway("run", "-c", str(config))
    assert result.returncode == 2
    assert "sinks.u.targets" in result.stderr
    missing = gateway("run", "-c", str(tmp_path / "absent.toml"))
    assert missing.returncode == 2 and "No such file" in missing.stderr
    assert "hint: start from docs/examples/gateway.toml" in missing.stderr


def test_sigterm_stops_cleanly_and_saves_sequence_numbers(tmp_path, gateway_process):
    api_port = free_port()
    config = f"""
[gateway]
id = "cli"
data_dir = "./var"
[api]
listen = "127.0.0.1:{api_port}"
[[sources]]
name = "sim"
simulate = {{ profile = "counter", rate = 200 }}
preset = "only-udp"
[presets.only-udp]
extends = "realtime"
routes = [{{ sink = "udp" }}]
[sinks.udp]
type = "udp"
targets = ["127.0.0.1:{free_udp_port()}"]
"""
    process = gateway_process(config)
    process.start(api_port)
    process.wait_for(lambda stats: stats["totals"]["readings"] >= 20)
    process.process.send_signal(signal.SIGTERM)
    assert process.process.wait(30) == 0, process.log()
    log = process.log()
    assert "gateway cli stopped" in log
    saved = peek(str(tmp_path / "var" / "sequences.reservation"))
    assert 20 <= saved.values["sim/default"] < 10_000  # the exact next number, not a block


def demo_and_its_dashboard(arguments: list[str], directory) -> tuple:
    """Run `gateway demo`; while it runs, GET the dashboard URL it printed. Returns the
    finished process (its stdout and stderr as text) and the page's answer."""
    with open(directory / "demo.err", "w+") as errors:
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway", "demo", *arguments],
            stdout=subprocess.PIPE,
            stderr=errors,
            text=True,
            cwd=str(directory),
            env={**os.environ, "PYTHONPATH": REPO_ROOT, "PYTHONUNBUFFERED": "1"},
        )
        lines = []
        for line in process.stdout:
            lines.append(line)
            found = re.search(r"the dashboard: (\S+)", line)
            if found:
                break
        assert found, "".join(lines)
        answers = []
        wait_until(lambda: answers.append(fetch(found.group(1))) or answers[-1], 10, "the page")
        lines += process.stdout.readlines()
        process.wait(60)
        errors.seek(0)
        finished = subprocess.CompletedProcess(process.args, process.returncode)
        finished.stdout, finished.stderr = "".join(lines), errors.read()
    return finished, answers[-1]


def fetch(url: str):
    """The answer at url, or None while nothing listens there yet."""
    try:
        return call(url)
    except OSError:
        return None


def test_the_demo_brings_its_own_receivers_and_each_output_arrives(tmp_path):
    """Nothing listens where the demo's MQTT URL points: it starts its own broker, listens
    for its own UDP, watches its own WebSocket, and every reading delivered arrived."""
    nothing = free_port()  # the demo's broker probe finds no one here
    listen, mqtt = f"127.0.0.1:{free_port()}", f"mqtt://127.0.0.1:{nothing}"
    result, page = demo_and_its_dashboard(
        ["--seconds", "4", "--listen", listen, "--mqtt", mqtt], tmp_path
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"the dashboard: http://{listen}/" in result.stdout
    assert page.status == 200 and b'src="/static/dashboard.js"' in page.body
    assert "started its own MQTT broker" in result.stderr
    arrived = {}
    for line in result.stdout.split("what arrived:")[1].strip().splitlines():
        match = re.match(
            r"\s*(\w+)\s+sink \w+: (\d+) delivered(?: \((\d+) before its client connected\))?, "
            r"(\d+) received",
            line,
        )
        assert match, line
        kind, delivered, early, received = match.groups()
        arrived[kind] = (int(delivered) - int(early or 0), int(received))
    assert set(arrived) == {"mqtt", "udp", "websocket"}
    for kind, (delivered, received) in arrived.items():
        assert delivered > 0 and received == delivered, (kind, delivered, received)
    assert f"mosquitto_sub -h 127.0.0.1 -p {nothing}" not in result.stdout
