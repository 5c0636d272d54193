"""POST /api/v1/devices/{id}/commands relays protocol commands to a COBS device on a pty."""

from __future__ import annotations

import asyncio

import pytest

from gateway.core import protocol
from tests.support.api import call, gateway_in_loop, token_for, tokens_toml
from tests.support.cobs_device import CobsTestDevice
from tests.support.waiting import eventually

TOML = f"""
[gateway]
id = "gw-commands"
data_dir = "{{data_dir}}"
[api]
listen = "127.0.0.1:0"
{tokens_toml()}
[[sources]]
name = "bench-port"
port = "{{port}}"
framing = "cobs"
preset = "raw"
[presets.raw]
routes = [{{ sink = "udp" }}]
[sinks.udp]
type = "udp"
targets = ["127.0.0.1:9"]
"""


def run_with_device(tmp_path, scenario, device: CobsTestDevice | None = None):
    """A gateway reading a CobsTestDevice; scenario(post, device) runs once the device is
    greeted, post(device_id, body, role) being one HTTP call from another thread."""
    device = device or CobsTestDevice("node-1", boot=7)
    toml = TOML.replace("{data_dir}", str(tmp_path)).replace("{port}", device.path)

    async def main():
        await device.start()
        try:
            async with gateway_in_loop(toml) as gateway:
                link = gateway.sources[0].handler.link
                await eventually(lambda: link.greeted, 10, "the device's HELLO")
                base = f"http://127.0.0.1:{gateway.api.port}/api/v1/devices"

                async def post(device_id: str, body, role: str = "operator"):
                    url = f"{base}/{device_id}/commands"
                    return await asyncio.to_thread(call, url, "POST", token_for(role), body)

                return await scenario(post, device)
        finally:
            await device.stop()

    return asyncio.run(asyncio.wait_for(main(), 60))


def test_commands_answer_with_the_devices_resp(tmp_path):
    async def scenario(post, device):
        ping = await post("node-1", {"command": "ping"})
        rate = await post("node-1", {"command": "set_rate", "args": {"stream": "env", "rate": 5}})
        config = await post("node-1", {"command": "set_config", "args": {"name": "bench"}})
        return ping, rate, config, dict(device.config)

    ping, rate, config, device_config = run_with_device(tmp_path, scenario)
    assert ping.status == 200
    body = ping.json()
    assert (body["device"], body["command"], body["result"]["pong"]) == ("node-1", "ping", True)
    assert rate.json()["result"] == {"stream": "env", "rate": 5.0}
    assert config.json()["result"] == {"keys": ["name"]}
    assert device_config == {"name": "bench"}


def test_a_device_that_does_not_answer_is_504_after_the_timeout(tmp_path):
    async def scenario(post, device):
        device.answer_commands = False
        loop = asyncio.get_running_loop()
        started = loop.time()
        answer = await post("node-1", {"command": "info", "timeout": 0.3})
        return answer, loop.time() - started, device.counters["commands_ignored"]

    answer, waited, ignored = run_with_device(tmp_path, scenario)
    assert answer.status == 504 and answer.json()["error"]["code"] == "device_timeout"
    assert "no answer to 'info'" in answer.json()["error"]["message"]
    assert 0.3 <= waited < 5 and ignored == 1


def test_a_refused_command_is_502_naming_the_nack(tmp_path):
    async def scenario(post, device):
        return await post("node-1", {"command": "set_rate", "args": {"stream": "nope", "rate": 1}})

    answer = run_with_device(tmp_path, scenario)
    assert answer.status == 502
    error = answer.json()["error"]
    assert error["code"] == "device_refused"
    assert "refused 'set_rate'" in error["message"]


@pytest.mark.parametrize(
    ("device_id", "body", "status", "message"),
    [
        ("node-2", {"command": "ping"}, 404, "id: no COBS device 'node-2' has said HELLO"),
        ("node-1", {"command": "dance"}, 400, "command: expected one of ping, info"),
        ("node-1", {"command": "ping", "args": [1]}, 400, "args: expected an object, got [1]"),
        ("node-1", {"command": "ping", "timeout": 0}, 400, "timeout: expected seconds above 0"),
        ("node-1", {"command": "ping", "wait": 1}, 400, "wait: unknown (command, args, timeout)"),
    ],
)
def test_bad_requests_name_the_field(tmp_path, device_id, body, status, message):
    async def scenario(post, device):
        answer = await post(device_id, body)
        return answer, device.counters["commands"]

    answer, commands = run_with_device(tmp_path, scenario)
    assert answer.status == status
    assert answer.json()["error"]["message"].startswith(message)
    assert commands == 0  # nothing reached the device


def test_a_viewer_may_not_send_commands(tmp_path):
    async def scenario(post, device):
        return await post("node-1", {"command": "reboot"}, role="viewer"), device.boots

    answer, boots = run_with_device(tmp_path, scenario)
    assert answer.status == 403
    assert boots == [7]  # not rebooted


def test_protocol_commands_are_the_ones_accepted():
    from gateway.api.control import REQUEST_BODIES

    schema = REQUEST_BODIES[("POST", "/devices/{id}/commands")]
    assert schema["properties"]["command"]["enum"] == list(protocol.COMMANDS)
