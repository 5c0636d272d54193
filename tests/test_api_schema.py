"""Schemathesis against the live OpenAPI document: generated requests, no 5xx, as documented."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import positive_data_acceptance

from gateway.api.control import PREFIX, openapi
from tests.support.api import ThreadedGateway, call, token_for, tokens_toml
from tests.support.udp import UdpCollector

TOML = f"""
[gateway]
id = "api-schema"
data_dir = "{{data_dir}}"

[api]
listen = "127.0.0.1:0"
{tokens_toml()}

[api.rate_limit]
token = {{ rate = 10000, burst = 10000 }}
address = {{ rate = 10000, burst = 10000 }}

[[sources]]
name = "sim"
simulate = {{ profile = "env", rate = 50 }}
preset = "realtime"

[sinks.udp]
type = "udp"
targets = ["127.0.0.1:{{port}}"]

[sinks.live]
type = "websocket"
"""


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    receiver = UdpCollector()
    data_dir = tmp_path_factory.mktemp("api-schema")
    toml = TOML.replace("{data_dir}", str(data_dir)).replace("{port}", str(receiver.port))
    gateway = ThreadedGateway(toml, path=data_dir / "gateway.toml").start()
    live = call(gateway.base + PREFIX + "/openapi.json", token=token_for("viewer")).json()
    assert live == openapi()
    yield gateway
    gateway.close()
    receiver.close()


# Generated from the table the routes are registered from; the fixture checks that the
# running gateway serves this very document, so the cases are those of the live one.
schema = schemathesis.openapi.from_dict(openapi())


# Bodies that mirror a TOML table are judged by the config's validator, which knows more
# than a JSON schema says (a sink's targets, a session's filters): a body valid by the
# schema may still get 400 naming the field. Every other check applies to them.
CONFIG_BODIES = {("POST", "/sinks"), ("PATCH", "/sinks/{name}"), ("POST", "/sessions")}


@schema.parametrize()
@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_operation_answers_as_documented(case, running):
    operation = (case.method.upper(), case.path.removeprefix(PREFIX))
    excluded = [positive_data_acceptance] if operation in CONFIG_BODIES else []
    case.call_and_validate(
        base_url=running.base,
        headers={"Authorization": f"Bearer {token_for('admin')}"},
        excluded_checks=excluded,
    )
