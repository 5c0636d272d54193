"""`gateway check` accepts exactly the sink types `gateway run` builds."""

from __future__ import annotations

import pytest

from gateway.api.server import ApiServer
from gateway.config import loads
from gateway.config.sinks_schema import SINK_TYPES
from gateway.sinks import IMPLEMENTED_TYPES, create

MINIMAL = {
    "mqtt": "",
    "udp": 'targets = ["127.0.0.1:9"]',
    "websocket": "",
    "sse": "",
    "webhook": 'url = "http://127.0.0.1:9/in"',
    "recorder": "",
}


def test_every_type_the_schema_knows_is_implemented():
    assert set(IMPLEMENTED_TYPES) == set(SINK_TYPES) == set(MINIMAL)


@pytest.mark.parametrize("kind", SINK_TYPES)
def test_a_minimal_valid_table_of_each_type_builds(kind, tmp_path):
    text = f'[gateway]\ndata_dir = "{tmp_path}"\n[sinks.s]\ntype = "{kind}"\n{MINIMAL[kind]}\n'
    config = loads(text, environ={})
    sink = create("s", config["sinks"]["s"], "gw", ApiServer("127.0.0.1:0"))
    assert sink.kind == kind and sink.name == "s"
