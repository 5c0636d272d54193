"""The control plane over a running gateway: (role × endpoint), the OpenAPI document, metrics."""

from __future__ import annotations

import re

import pytest

from gateway.api.control import ENDPOINTS, PREFIX, openapi
from tests.support.api import (
    ROLES,
    ThreadedGateway,
    api_head,
    call,
    call_raw,
    token_for,
    tokens_toml,
)
from tests.support.openapi import conforms
from tests.support.udp import UdpCollector
from tests.support.waiting import wait_until

# Generous limits: this module's requests must never be rate limited (test_api_security is).
TOML = (
    api_head("api-test")
    + """
[[sources]]
name = "sim"
simulate = { profile = "env", rate = 200 }
preset = "checked"

[presets.checked]
extends = "realtime"

[[presets.checked.append_steps]]
op = "validate"
on_fail = "flag"
fields = { co2 = { type = "number", required = true } }

[sinks.udp]
type = "udp"
targets = ["127.0.0.1:9"]

[sinks.live]
type = "websocket"
"""
)


# Per endpoint, a call that passes the gate and changes nothing: (path, body, status).
# DELETE names what does not exist; POST /sinks names a sink that exists (409); POST
# /sessions leaves out its routes (400); reload reads the unchanged file (200); a device
# command goes to a device this gateway does not have (404).
HARMLESS = {
    ("DELETE", "/sinks/{name}"): ("/sinks/nope", None, 404),
    ("POST", "/sinks"): ("/sinks", {"name": "udp", "type": "udp", "targets": ["[::1]:9"]}, 409),
    ("PATCH", "/sinks/{name}"): ("/sinks/udp", {"enabled": True}, 200),
    ("POST", "/sessions"): ("/sessions", {"name": "x"}, 400),
    ("GET", "/sessions/{id}"): ("/sessions/none", None, 404),
    ("DELETE", "/sessions/{id}"): ("/sessions/none", None, 404),
    ("POST", "/devices/{id}/commands"): ("/devices/node-9/commands", {"command": "ping"}, 404),
}


def concrete(method: str, path: str) -> str:
    return PREFIX + HARMLESS.get((method, path), (path.replace("{name}", "udp"),))[0]


def body_for(method: str, path: str) -> dict | None:
    return HARMLESS.get((method, path), (None, None))[1]


def allowed_status(method: str, path: str) -> int:
    return HARMLESS.get((method, path), (None, None, 200))[2]


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("api-control")
    toml = TOML.replace("{data_dir}", str(data_dir))
    gateway = ThreadedGateway(toml, path=data_dir / "gateway.toml").start()
    wait_until(lambda: gateway.gateway.stats()["totals"]["readings"] > 0, 10, "first readings")
    yield gateway
    gateway.close()


ENDPOINT_IDS = [f"{method} {path}" for method, path, *_ in ENDPOINTS]


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize(("method", "path", "least"), [e[:3] for e in ENDPOINTS], ids=ENDPOINT_IDS)
def test_each_role_on_each_endpoint(running, role, method, path, least):
    url, body = running.base + concrete(method, path), body_for(method, path)
    answer = call(url, method, token_for(role), body)
    if ROLES.index(role) >= ROLES.index(least):
        assert answer.status == allowed_status(method, path), answer.body
    else:
        assert answer.status == 403
        assert answer.json()["error"]["code"] == "forbidden"


@pytest.mark.parametrize(("method", "path"), [e[:2] for e in ENDPOINTS], ids=ENDPOINT_IDS)
@pytest.mark.parametrize("token", [None, "not-a-token", ""], ids=["none", "wrong", "empty"])
def test_each_endpoint_without_a_valid_token_is_401(running, method, path, token):
    answer = call(running.base + concrete(method, path), method, token, body_for(method, path))
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
    url, body = running.base + concrete(method, path), body_for(method, path)
    answer = call(url, method, token_for("admin"), body)
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


@pytest.mark.parametrize(
    ("role", "body", "status", "message"),
    [
        (
            "operator",
            {"enabled": True, "targets": ["127.0.0.1:1"]},
            403,
            "targets: reconfiguring a sink needs the admin role",
        ),
        ("admin", {"enabled": "no"}, 400, 'enabled: expected true or false, got "no"'),
        ("admin", {}, 400, "body: expected a JSON object with keys"),
        ("admin", [True], 400, "body: expected a JSON object"),
        ("admin", {"targets": ["nowhere"]}, 400, "targets[0]: expected"),
        ("admin", {"type": "mqtt"}, 400, "type: a udp sink stays one"),
        ("admin", {"colour": "red"}, 400, "colour: unknown key"),
    ],
)
def test_a_patch_names_the_field_it_refuses(running, role, body, status, message):
    answer = call(running.base + PREFIX + "/sinks/udp", "PATCH", token_for(role), body)
    assert answer.status == status, answer.body
    assert answer.json()["error"]["message"].startswith(message), answer.body
    sink = running.gateway.sinks["udp"]
    assert sink.enabled and sink.options["targets"] == ["127.0.0.1:9"]


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
    # UDP confirms each batch at once: every observation is well under a second.
    batches = metric(text, "gateway_sink_delivery_latency_seconds_count", sink="udp")
    assert batches > 0
    assert metric(text, "gateway_sink_delivery_latency_seconds_bucket", sink="udp", le="+Inf") == (
        batches
    )
    assert metric(text, "gateway_sink_delivery_latency_seconds_bucket", sink="udp", le="1.0") == (
        batches
    )
    assert 0 < metric(text, "gateway_sink_delivery_latency_seconds_sum", sink="udp") < batches
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
