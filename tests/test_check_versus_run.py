"""`gateway check` refuses exactly what `gateway run` refuses, over the shipped configs too."""

from __future__ import annotations

import glob
import os

import pytest

from gateway.api.control import ControlPlane
from gateway.app import Gateway
from gateway.config import ConfigError, check_file, load
from tests.support.e2e import REPO_ROOT

SHIPPED = sorted(glob.glob(os.path.join(REPO_ROOT, "docs", "examples", "*.toml"))) + [
    os.path.join(REPO_ROOT, "gateway", "demo.toml")
]

SOURCE = '[[sources]]\nname = "s"\nport = "/dev/null"\npreset = "p"\n'
PRESET = '[presets.p]\nextends = "basic"\nroutes = [{ sink = "out" }]\n'
# Each sink type, and combinations that are easy to get wrong: what both must agree on.
VARIANTS = {
    "mqtt": '[sinks.out]\ntype = "mqtt"\n',
    "mqtt-tls-missing-ca": '[sinks.out]\ntype = "mqtt"\nurl = "mqtts://h"\nca = "absent.pem"\n',
    "mqtt-qos2": '[sinks.out]\ntype = "mqtt"\nqos = 2\n',
    "udp": '[sinks.out]\ntype = "udp"\ntargets = ["127.0.0.1:9"]\n',
    "udp-bad-target": '[sinks.out]\ntype = "udp"\ntargets = ["nowhere"]\n',
    "websocket": '[sinks.out]\ntype = "websocket"\n',
    "sse": '[sinks.out]\ntype = "sse"\n',
    "webhook": '[sinks.out]\ntype = "webhook"\nurl = "http://127.0.0.1:9/in"\n',
    "webhook-no-url": '[sinks.out]\ntype = "webhook"\n',
    "recorder": '[sinks.out]\ntype = "recorder"\n',
    "unknown-type": '[sinks.out]\ntype = "kafka"\n',
    "route-to-nothing": '[sinks.other]\ntype = "udp"\ntargets = ["127.0.0.1:9"]\n',
}


def builds(path: str) -> bool:
    """What `gateway run` does before it starts running: load, build the gateway (sources,
    sinks, buffers) and its control plane; False where that refuses the config."""
    try:
        ControlPlane(Gateway(load(path, environ={}))).install()
    except (ConfigError, ValueError):
        return False
    return True


def checks(path: str) -> bool:
    return check_file(path, environ={}) == []


@pytest.mark.parametrize("path", SHIPPED, ids=os.path.basename)
def test_the_shipped_configs_check_and_build(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # their data_dir is relative: keep it out of the repo
    assert checks(path), check_file(path, environ={})
    assert builds(path)


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_check_and_run_agree(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "gateway.toml"
    data_dir = f'[gateway]\ndata_dir = "{tmp_path / "var"}"\n'
    path.write_text(data_dir + SOURCE + PRESET + VARIANTS[name])
    assert checks(str(path)) == builds(str(path)), (name, check_file(str(path), environ={}))
