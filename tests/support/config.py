"""The one config builder for tests that run `gateway run`: sources → one preset → MQTT."""

from __future__ import annotations

PRESET = "under_test"


def line_source(name: str, path: str, keys: str = 'format = "json"\nstream = "counter"'):
    """A source table's name, port and further keys (TOML lines), for gateway_toml()."""
    return name, path, keys


def gateway_toml(
    gateway_id: str,
    api_port: int,
    broker_port: int,
    sources: list[tuple[str, str, str]],
    buffer: str = "spill",
    sink_keys: str = "",
    udp_port: int = 0,
) -> str:
    """A gateway whose sources all use one preset extending "basic" with `buffer`, routed to
    one MQTT sink at QoS 1 on 127.0.0.1:`broker_port`; `sink_keys` are more [sinks.mqtt]
    lines (breaker, retry, buffer, queue_size, …). With `udp_port` the preset routes to a
    UDP sink sending to 127.0.0.1:`udp_port` too."""
    routes = 'routes = [{ type = "mqtt" }, { sink = "udp" }]' if udp_port else ""
    udp = f'[sinks.udp]\ntype = "udp"\ntargets = ["127.0.0.1:{udp_port}"]' if udp_port else ""
    tables = "".join(
        f'\n[[sources]]\nname = "{name}"\nport = "{path}"\n{keys}\npreset = "{PRESET}"\n'
        for name, path, keys in sources
    )
    return f"""
[gateway]
id = "{gateway_id}"
data_dir = "./var"

[api]
listen = "127.0.0.1:{api_port}"
{tables}
[presets.{PRESET}]
extends = "basic"
buffer = "{buffer}"
{routes}

[sinks.mqtt]
type = "mqtt"
url = "mqtt://127.0.0.1:{broker_port}"
qos = 1
{sink_keys}
{udp}
"""
