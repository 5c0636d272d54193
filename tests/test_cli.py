"""The `gateway` command: check, presets, run's refusals, and a clean SIGTERM stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from tests.support.broker import free_port
from tests.support.e2e import REPO_ROOT, free_udp_port


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
    saved = (tmp_path / "var" / "sequences.json").read_text()
    assert '"sim/default"' in saved
