"""Sinks changed at runtime over the API: reconfigured under load, added, removed, purged."""

from __future__ import annotations

import pytest

from gateway.api.control import PREFIX
from tests.support.api import ThreadedGateway, api_head, call, token_for
from tests.support.broker import Broker, ProcessSubscriber
from tests.support.udp import UdpCollector
from tests.support.waiting import wait_until

ADMIN = token_for("admin")
HEAD = api_head("runtime")


def sink_url(gateway: ThreadedGateway, name: str = "") -> str:
    return gateway.base + PREFIX + "/sinks" + (f"/{name}" if name else "")


def mqtt_config(tmp_path, source: str, rate: int, buffer: str, url: str) -> str:
    """One simulated source at `rate` through a preset with `buffer` to one MQTT sink."""
    return (
        HEAD.replace("{data_dir}", str(tmp_path))
        + f"""
[[sources]]
name = "{source}"
simulate = {{ profile = "env", rate = {rate} }}
preset = "to-mqtt"

[presets.to-mqtt]
extends = "basic"
buffer = "{buffer}"
routes = [{{ sink = "mqtt" }}]

[sinks.mqtt]
type = "mqtt"
url = "{url}"
"""
    )


def test_moving_the_mqtt_sink_to_another_broker_under_load_loses_nothing(tmp_path):
    first, second = Broker().start(), Broker().start()
    at_first = ProcessSubscriber(first.port, "gw/runtime/fast/default")
    at_second = ProcessSubscriber(second.port, "gw/runtime/fast/default")
    try:
        moved_under_load(tmp_path, first, second, at_first, at_second)
    finally:
        for closing in (at_first, at_second, first, second):
            closing.close()


def moved_under_load(tmp_path, first, second, at_first, at_second) -> None:
    toml = mqtt_config(tmp_path, "fast", 5000, "spill", first.url)
    gateway = ThreadedGateway(toml).start()
    try:
        wait_until(lambda: len(at_first.seqs()) >= 5000, 30, "a second of readings", 0.1)
        moved = call(sink_url(gateway, "mqtt"), "PATCH", ADMIN, {"url": second.url})
        assert moved.status == 200, moved.body
        assert moved.json()["breaker"]["state"] == "closed"
        wait_until(lambda: len(at_second.seqs()) >= 5000, 30, "readings at the second", 0.1)
    finally:
        gateway.close()
    sink = gateway.gateway.sinks["mqtt"]
    assert sink.options["url"] == second.url
    readings = gateway.gateway.stats()["totals"]["readings"]
    assert readings > 10_000
    wait_until(
        lambda: len(set(at_first.seqs()) | set(at_second.seqs())) >= readings, 30, "all", 0.1
    )
    seqs = set(at_first.seqs()) | set(at_second.seqs())
    assert seqs == set(range(min(seqs), min(seqs) + readings))  # every reading, at one or both
    duplicates = len(at_first.seqs()) + len(at_second.seqs()) - len(seqs)
    # At most what was in flight at the move is sent again, to the second broker.
    assert duplicates <= sink.options["max_inflight"]
    assert sink.latency.count > 0  # PUBACKed batches, across the move (the histogram moved too)


@pytest.fixture
def udp_gateway(tmp_path):
    """Readings routed to every UDP sink (a route by type), one configured."""
    collectors = [UdpCollector(), UdpCollector()]
    toml = (
        HEAD.replace("{data_dir}", str(tmp_path))
        + f"""
[[sources]]
name = "sim"
simulate = {{ profile = "env", rate = 200 }}
preset = "to-udp"

[presets.to-udp]
extends = "basic"
routes = [{{ type = "udp" }}]

[sinks.one]
type = "udp"
targets = ["127.0.0.1:{collectors[0].port}"]
"""
    )
    gateway = ThreadedGateway(toml).start()
    yield gateway, collectors
    gateway.close()
    for collector in collectors:
        collector.close()


def test_an_added_sink_gets_the_readings_its_routes_select_and_a_removed_one_none(udp_gateway):
    gateway, (one, two) = udp_gateway
    body = {"name": "two", "type": "udp", "targets": [f"127.0.0.1:{two.port}"]}
    added = call(sink_url(gateway), "POST", ADMIN, body)
    assert added.status == 201, added.body
    assert added.json()["name"] == "two"
    wait_until(lambda: len(two.readings) >= 50, 15, "readings at the new sink")
    assert call(sink_url(gateway), "POST", ADMIN, body).status == 409
    # From the moment it was added, the new sink got what the configured one got.
    first_new = two.readings[0]["seq"]
    removed = call(sink_url(gateway, "two"), "DELETE", ADMIN)
    assert removed.status == 200 and removed.json() == {"name": "two", "purged": 0}
    got = len(two.readings)
    wait_until(lambda: one.readings[-1]["seq"] > two.readings[-1]["seq"] + 100, 15, "more")
    assert len(two.readings) == got
    assert [r["seq"] for r in two.readings] == list(range(first_new, first_new + got))
    assert "two" not in {s["name"] for s in call(sink_url(gateway), token=ADMIN).json()["sinks"]}


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"type": "udp"}, 400, "name: expected a name"),
        ({"name": "x y", "type": "udp"}, 400, "name: expected a name"),
        ({"name": "x", "type": "udp"}, 400, "targets: expected"),
        ({"name": "x", "type": "carrier-pigeon"}, 400, "type: expected one of"),
        ({"name": "one", "type": "udp", "targets": ["127.0.0.1:9"]}, 409, "name: a sink named"),
    ],
)
def test_a_bad_new_sink_is_refused_naming_the_field(udp_gateway, body, status, message):
    gateway, _collectors = udp_gateway
    answer = call(sink_url(gateway), "POST", ADMIN, body)
    assert answer.status == status, answer.body
    assert answer.json()["error"]["message"].startswith(message), answer.body
    assert list(gateway.gateway.sinks) == ["one"]
    assert call(sink_url(gateway), "POST", token_for("operator"), body).status == 403


def test_a_removed_sink_keeps_its_buffer_unless_purged(tmp_path):
    down = Broker()  # never started: readings wait in the write-ahead buffer
    toml = mqtt_config(tmp_path, "sim", 200, "write_ahead", down.url)
    gateway = ThreadedGateway(toml).start()
    try:
        mqtt = gateway.gateway.sinks["mqtt"]
        wait_until(lambda: mqtt.queue.depth >= 100, 15, "buffered readings")
        options = {key: value for key, value in mqtt.options.items() if value is not None}
        kept = call(sink_url(gateway, "mqtt"), "DELETE", ADMIN)
        assert kept.status == 200 and kept.json()["purged"] == 0
        assert call(sink_url(gateway, "mqtt"), "DELETE", ADMIN).status == 404
        again = call(sink_url(gateway), "POST", ADMIN, {"name": "mqtt", **options})
        assert again.status == 201, again.body
        buffered = again.json()["queue_depth"]
        assert buffered >= 100  # what the removed sink buffered is there again
        purged = call(sink_url(gateway, "mqtt") + "?purge=true", "DELETE", ADMIN)
        assert purged.status == 200 and purged.json()["purged"] >= buffered
        bad = call(sink_url(gateway, "nope") + "?purge=maybe", "DELETE", ADMIN)
        assert bad.status == 404
    finally:
        gateway.close()


def test_a_live_sink_added_at_runtime_cannot_take_another_ones_path(udp_gateway):
    gateway, _collectors = udp_gateway
    first = call(sink_url(gateway), "POST", ADMIN, {"name": "ws1", "type": "websocket"})
    assert first.status == 201, first.body
    second = call(sink_url(gateway), "POST", ADMIN, {"name": "ws2", "type": "websocket"})
    assert second.status == 400
    assert second.json()["error"]["message"] == "path: /ws is served by sink ws1 already"
    moved = call(sink_url(gateway, "ws1"), "PATCH", ADMIN, {"path": "/live"})
    assert moved.status == 200, moved.body
    assert (
        call(sink_url(gateway), "POST", ADMIN, {"name": "ws2", "type": "websocket"}).status == 201
    )
