"""The control plane over a running gateway: (role × endpoint), the OpenAPI document, metrics."""

from __future__ import annotations

import re

import pytest

from gateway.api.control import ENDPOINTS, PREFIX, openapi
from tests.support.api import ROLES, ThreadedGateway, call, call_raw, token_for, tokens_toml
from tests.support.openapi import conforms
from tests.support.udp import UdpCollector
from tests.support.waiting import wait_until

# Generous limits: this module's requests must never be rate limited (test_api_security is).
TOML = f"""
[gateway]
id = "api-test"
data_dir = "{{data_dir}}"

[api]
listen = "127.0.0.1:0"
{tokens_toml()}
[api.rate_limit]
token = {{ rate = 1000, burst = 1000 }}
address = {{ rate = 1000, burst = 1000 }}

[[sources]]
name = "sim"
simulate = {{ profile = "env", rate = 200 }}
preset = "checked"

[presets.checked]
extends = "realtime"

[[presets.checked.append_steps]]
op = "validate"
on_fail = "flag"
fields = {{ co2 = {{ type = "number", required = true }} }}

[sinks.udp]
type = "udp"
targets = ["127.0.0.1:9"]

[sinks.live]
type = "websocket"
"""


def concrete(path: str) -> str:
    return PREFIX + path.replace("{name}", "udp").replace("{id}", "node-9")


def body_for(method: str) -> dict | None:
    """A valid body where one is needed: PATCH re-enables an enabled sink (changes nothing);
    POST pings a device (this gateway has none, so the answer past the gate is 404)."""
    return {"PATCH": {"enabled": True}, "POST": {"command": "ping"}}.get(method)


def allowed_status(method: str) -> int:
    return 404 if method == "POST" else 200


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("api-control")
    gateway = ThreadedGateway(TOML.replace("{data_dir}", str(data_dir))).start()
    wait_until(lambda: gateway.gateway.stats()["totals"]["readings"] > 0, 10, "first readings")
    yield gateway
    gateway.close()


ENDPOINT_IDS = [f"{method} {path}" for method, path, *_ in ENDPOINTS]


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize(("method", "path", "least"), [e[:3] for e in ENDPOINTS], ids=ENDPOINT_IDS)
def test_each_role_on_each_endpoint(running, role, method, path, least):
    answer = call(running.base + concrete(path), method, token_for(role), body_for(method))
    if ROLES.index(role) >= ROLES.index(least):
        assert answer.status == allowed_status(method), answer.body
    else:
        assert answer.status == 403
        assert answer.json()["error"]["code"] == "forbidden"


@pytest.mark.parametrize(("method", "path"), [e[:2] for e in ENDPOINTS], ids=ENDPOINT_IDS)
@pytest.mark.parametrize("token", [None, "not-a-token", ""], ids=["none", "wrong", "empty"])
def test_each_endpoint_without_a_valid_token_is_401(running, method, path, token):
    answer = call(running.base + concrete(path), method, token, body_for(method))
    assert answer.status == 401
    assert answer.headers["www-authenticate"].startswith("Bearer")
    error = answer.json()["error"]
    assert error["code"] == ("unauthorized" if token is None else "invalid_token")


def test_the_document_lists_exactly_the_routes_served(running):
    document = call(running.base + PREFIX + "/openapi.json", token=token_for("viewer")).json()
    assert document == openapi()
    documented = {
        (method.upper(), path, operation["x-required-role"])
        for path, operations in document["paths"].items()
        for method, operation in operations.items()
    }
    served = {tuple(route) for route in running.gateway.api.routes()}
    assert documented == served
    assert document["openapi"] == "3.1.0"


@pytest.mark.parametrize(("method", "path"), [e[:2] for e in ENDPOINTS], ids=ENDPOINT_IDS)
def test_every_answer_conforms_to_its_documented_schema(running, method, path):
    document = openapi()
    operation = document["paths"][PREFIX + path][method.lower()]
    answer = call(running.base + concrete(path), method, token_for("admin"), body_for(method))
    documented = operation["responses"][str(answer.status)]
    media, spec = next(iter(documented["content"].items()))
    assert answer.headers["content-type"].split(";")[0] == media
    value = answer.json() if media == "application/json" else answer.body.decode()
    problems = conforms(value, spec["schema"], document)
    assert not problems, problems


def test_an_unknown_sink_is_404_naming_it(running):
    answer = call(running.base + PREFIX + "/sinks/nope", token=token_for("viewer"))
    assert answer.status == 404
    assert answer.json()["error"] == {"code": "not_found", "message": "name: no sink named 'nope'"}
    assert conforms(answer.json(), {"$ref": "#/components/schemas/Error"}, openapi()) == []


def test_what_is_not_built_is_neither_served_nor_accepted(running):
    viewer, admin = token_for("viewer"), token_for("admin")
    assert call(running.base + PREFIX + "/sessions", token=viewer).status == 404
    assert call(running.base + PREFIX + "/config/reload", "POST", admin, {}).status == 404
    added = call(running.base + PREFIX + "/sinks", "POST", admin, {"name": "x", "type": "udp"})
    assert added.status == 405 and added.headers["allow"] == "GET"
    removed = call(running.base + PREFIX + "/sinks/udp", "DELETE", admin)
    assert removed.status == 405 and removed.headers["allow"] == "GET, PATCH"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"enabled": True, "targets": ["127.0.0.1:1"]}, "targets: cannot be changed at runtime"),
        ({}, "enabled: required, true or false"),
        ({"enabled": "no"}, 'enabled: expected true or false, got "no"'),
        ([True], "body: expected a JSON object"),
    ],
)
def test_a_patch_names_the_field_it_refuses(running, body, message):
    answer = call(running.base + PREFIX + "/sinks/udp", "PATCH", token_for("operator"), body)
    assert answer.status == 400
    assert answer.json()["error"]["message"].startswith(message)
    assert running.gateway.sinks["udp"].enabled


def test_a_patch_body_that_is_not_json_is_400(running):
    request_body = b"{not json"
    answer = call_raw(
        running.base + PREFIX + "/sinks/udp", "PATCH", token_for("admin"), request_body
    )
    assert answer.status == 400
    assert answer.json()["error"]["code"] == "invalid_json"


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample, found by name and labels (in whatever order they come)."""
    for found in re.finditer(rf"^{name}(?:\{{(.*)\}})? (\S+)$", text, re.MULTILINE):
        pairs = dict(re.findall(r'(\w+)="([^"]*)"', found.group(1) or ""))
        if pairs == labels:
            return float(found.group(2))
    raise AssertionError(f"{name} {labels} not in metrics")


def test_metrics_follow_the_gateways_counters(running):
    first = call(running.base + PREFIX + "/metrics", token=token_for("viewer"))
    assert first.headers["content-type"].startswith("text/plain; version=")
    text = first.body.decode()
    readings = metric(text, "gateway_readings_total", source="sim")
    assert readings > 0
    assert metric(text, "gateway_parse_errors_total", source="sim", reason="unparsable") == 0
    assert metric(text, "gateway_sink_delivered_total", sink="live") > 0
    assert metric(text, "gateway_sink_breaker_state", sink="udp", state="closed") == 1
    assert metric(text, "gateway_sink_breaker_state", sink="udp", state="open") == 0
    assert metric(text, "gateway_sink_buffer_readings", sink="udp") >= 0
    assert metric(text, "gateway_source_connected", source="sim") == 1
    # Every simulated reading lacks co2: flagged (still delivered) and counted by check.
    labels = {"source": "sim", "reason": "missing", "field": "co2"}
    assert metric(text, "gateway_invalid_readings_total", **labels) == readings
    assert metric(text, "gateway_component_ok", component="sequences") == 1
    assert metric(text, "gateway_sequence_reservation_write_failures_total") == 0
    assert metric(text, "process_resident_memory_bytes") > 10e6
    assert metric(text, "process_cpu_seconds_total") > 0
    wait_until(
        lambda: running.gateway.stats()["totals"]["readings"] > readings, 10, "more readings"
    )
    later = call(running.base + PREFIX + "/metrics", token=token_for("viewer")).body.decode()
    assert metric(later, "gateway_readings_total", source="sim") > readings


def test_a_disabled_sink_buffers_and_an_enabled_one_delivers_the_backlog(tmp_path):
    receiver = UdpCollector()
    toml = f"""
[gateway]
id = "api-patch"
data_dir = "{tmp_path}"
[api]
listen = "127.0.0.1:0"
{tokens_toml()}
[[sources]]
name = "counter"
simulate = {{ profile = "counter", rate = 500 }}
preset = "realtime"
[sinks.udp]
type = "udp"
targets = ["127.0.0.1:{receiver.port}"]
"""
    running = ThreadedGateway(toml).start()
    sink = running.gateway.sinks["udp"]
    url = running.base + PREFIX + "/sinks/udp"
    try:
        wait_until(lambda: len(receiver.readings) >= 50, 10, "readings before disabling")
        off = call(url, "PATCH", token_for("operator"), {"enabled": False})
        assert (off.status, off.json()["enabled"], off.json()["connected"]) == (200, False, False)
        sent = sink.counters["delivered"]  # datagrams may still be on their way: wait for them
        wait_until(lambda: len(receiver.readings) >= sent, 10, "what was sent before")
        wait_until(lambda: sink.depth >= 200, 10, "readings waiting in the disabled sink")
        assert sink.counters["delivered"] == sent  # nothing left meanwhile
        assert len(receiver.readings) == sent
        on = call(url, "PATCH", token_for("operator"), {"enabled": True})
        assert (on.status, on.json()["enabled"]) == (200, True)
        offered = sink.counters["offered"]
        wait_until(lambda: len(receiver.readings) >= offered, 10, "the backlog delivered")
    finally:
        running.close()
        receiver.close()
    seqs = [reading["seq"] for reading in receiver.readings]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # none lost, none twice
