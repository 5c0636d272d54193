"""A changed config file applied at runtime (POST /config/reload, SIGHUP): whole or not at all."""

from __future__ import annotations

import signal

import pytest

from gateway.api.control import PREFIX
from tests.support.api import ThreadedGateway, call, token_for
from tests.support.broker import free_port
from tests.support.udp import UdpCollector
from tests.support.waiting import wait_until

ADMIN = token_for("admin")
CONFIG = """
[gateway]
id = "reload"
data_dir = "{data_dir}"

[api]
listen = "127.0.0.1:{api_port}"

[[sources]]
name = "sim"
simulate = {{ profile = "env", rate = 200 }}
preset = "to-udp"

[presets.to-udp]
extends = "basic"
routes = [{{ type = "udp" }}]

[sinks.one]
type = "udp"
targets = ["127.0.0.1:{one}"]
"""
SECOND_SOURCE = """
[[sources]]
name = "sim-2"
simulate = { profile = "env", rate = 200 }
preset = "to-udp"
"""


@pytest.fixture
def collectors():
    made = [UdpCollector(), UdpCollector(), UdpCollector()]
    yield made
    for collector in made:
        collector.close()


def config(tmp_path, collectors, api_port: int = 0, **changes: str) -> str:
    text = CONFIG.format(data_dir=tmp_path, api_port=api_port, one=collectors[0].port)
    for old, new in changes.items():
        text = text.replace(old.replace("_", " "), new)
    return text


def reload(gateway: ThreadedGateway):
    return call(gateway.base + PREFIX + "/config/reload", "POST", ADMIN)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (('"127.0.0.1:{one}"', '"nowhere"'), "sinks.one.targets[0]: expected"),
        (('id = "reload"', 'id = "another"'), "gateway.id: changed; this takes a restart"),
        (
            ('type = "udp"\ntargets = ["127.0.0.1:{one}"]', 'type = "websocket"'),
            "sinks.one.type: changed from udp to websocket",
        ),
        (('extends = "basic"', 'extends = "nope"'), "presets.to-udp.extends"),
        (("[sinks.one]", "[sinks.one]\nbogus = 1"), "sinks.one.bogus: unknown key"),
    ],
)
def test_a_reload_with_an_error_changes_nothing_and_names_the_key(
    tmp_path, collectors, edit, message
):
    path = tmp_path / "gateway.toml"
    gateway = ThreadedGateway(config(tmp_path, collectors), path).start()
    try:
        before = gateway.gateway.sinks["one"]
        broken = path.read_text().replace(edit[0].format(one=collectors[0].port), edit[1])
        path.write_text(broken + SECOND_SOURCE)
        answer = reload(gateway)
        assert answer.status == 400, answer.body
        assert answer.json()["error"]["code"] == "invalid_config"
        assert message in answer.json()["error"]["message"]
        assert gateway.gateway.sinks == {"one": before}
        assert [source.name for source in gateway.gateway.sources] == ["sim"]
        count = len(collectors[0].readings)
        wait_until(lambda: len(collectors[0].readings) > count + 20, 10, "readings go on")
    finally:
        gateway.close()


def test_a_valid_reload_adds_removes_and_rebuilds_what_changed(tmp_path, collectors):
    one, two, three = collectors
    path = tmp_path / "gateway.toml"
    gateway = ThreadedGateway(config(tmp_path, collectors), path).start()
    try:
        wait_until(lambda: len(one.readings) > 20, 10, "first readings")
        changed = config(tmp_path, collectors).replace(str(one.port), str(two.port))
        changed += f'\n[sinks.extra]\ntype = "udp"\ntargets = ["127.0.0.1:{three.port}"]\n'
        path.write_text(changed + SECOND_SOURCE)
        answer = reload(gateway)
        assert answer.status == 200, answer.body
        assert answer.json() == {
            "sinks": {"added": ["extra"], "removed": [], "reconfigured": ["one"]},
            "sources": {"added": ["sim-2"], "removed": [], "restarted": []},
            "api": False,
        }
        moved_at = len(one.readings)
        wait_until(lambda: {r["device"] for r in three.readings} == {"sim", "sim-2"}, 10, "both")
        wait_until(lambda: {r["device"] for r in two.readings} == {"sim", "sim-2"}, 10, "moved")
        assert len(one.readings) <= moved_at + 1  # at most one datagram was on its way
        # The source that stayed was not restarted: its numbers go on across the reload.
        sim = [r["seq"] for r in one.readings + two.readings if r["device"] == "sim"]
        assert sim == list(range(sim[0], sim[0] + len(sim)))
        assert reload(gateway).json()["sinks"] == {"added": [], "removed": [], "reconfigured": []}
    finally:
        gateway.close()


def test_sighup_reloads_the_file_or_logs_why_not(tmp_path, collectors, gateway_process):
    api_port = free_port()
    text = config(tmp_path, collectors, api_port)
    process = gateway_process(text)
    process.start(api_port)
    process.wait_for(lambda stats: stats["sinks"]["one"].get("delivered", 0) > 10, 15)
    with open(process.config_path, "w") as file:
        file.write(text.replace("[sinks.one]", "[sinks.one]\nbogus = 1"))
    process.process.send_signal(signal.SIGHUP)
    wait_until(lambda: "config reload refused" in process.log(), 10, "the refusal", 0.05)
    assert "sinks.one.bogus: unknown key" in process.log()
    with open(process.config_path, "w") as file:
        two = collectors[1].port
        file.write(text + f'\n[sinks.two]\ntype = "udp"\ntargets = ["127.0.0.1:{two}"]\n')
    process.process.send_signal(signal.SIGHUP)
    stats = process.wait_for(lambda stats: stats["sinks"].get("two", {}).get("delivered", 0), 15)
    assert set(stats["sinks"]) == {"one", "two"}
    assert "config reloaded" in process.log()
    assert process.stop() == 0


def test_a_reload_puts_back_what_the_api_changed(tmp_path, collectors):
    one, two, three = collectors
    path = tmp_path / "gateway.toml"
    gateway = ThreadedGateway(config(tmp_path, collectors), path).start()
    try:
        base = gateway.base + PREFIX + "/sinks"
        moved = call(base + "/one", "PATCH", ADMIN, {"targets": [f"127.0.0.1:{two.port}"]})
        assert moved.status == 200, moved.body
        body = {"name": "extra", "type": "udp", "targets": [f"127.0.0.1:{three.port}"]}
        assert call(base, "POST", ADMIN, body).status == 201
        answer = reload(gateway)  # the file says: one to the first port, no extra
        assert answer.status == 200, answer.body
        assert answer.json()["sinks"] == {
            "added": [],
            "removed": ["extra"],
            "reconfigured": ["one"],
        }
        count = len(one.readings)
        wait_until(lambda: len(one.readings) > count + 20, 10, "back at the first port")
    finally:
        gateway.close()
