"""The listener's gate: tokens, roles, rate limits, local-only without tokens, TLS, quiet logs."""

from __future__ import annotations

import asyncio
import logging
import ssl
import subprocess
import sys

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from gateway.api.server import ApiServer, json_response
from gateway.config import ConfigError, loads
from tests.support.api import (
    api_table,
    call,
    digest,
    non_loopback_address,
    run_api,
    self_signed_cert,
    token_for,
    tokens_toml,
)

HEALTH = "/api/v1/health"
GENEROUS = (
    "rate_limit = { token = { rate = 1000, burst = 1000 }, "
    "address = { rate = 1000, burst = 1000 } }"
)


def local(server: ApiServer, path: str = HEALTH) -> str:
    return f"{server.scheme}://127.0.0.1:{server.port}{path}"


async def fetch(url: str, token: str | None = None, **options):
    return await asyncio.to_thread(call, url, token=token, **options)


# -- rate limits ---------------------------------------------------------------------------


def test_a_burst_over_a_tokens_limit_gets_429_and_other_tokens_go_on():
    api = api_table(
        f'listen = "127.0.0.1:0"\n{tokens_toml()}\n'
        "rate_limit = { token = { rate = 0.5, burst = 3 }, "
        "address = { rate = 1000, burst = 1000 } }"
    )

    async def scenario(server):
        burst = [await fetch(local(server), token_for("viewer")) for _ in range(4)]
        other = await fetch(local(server), token_for("operator"))
        return burst, other

    burst, other = run_api(api, scenario)
    assert [answer.status for answer in burst] == [200, 200, 200, 429]
    limited = burst[-1]
    assert int(limited.headers["retry-after"]) == 2  # one token at 0.5 a second
    assert limited.json()["error"]["code"] == "rate_limited"
    assert "token viewer" in limited.json()["error"]["message"]
    assert other.status == 200


def test_a_client_address_is_limited_whatever_its_token():
    api = api_table(
        'listen = "127.0.0.1:0"\n'
        "rate_limit = { token = { rate = 1000, burst = 1000 }, address = { rate = 1, burst = 2 } }"
    )

    async def scenario(server):
        return [await fetch(local(server)) for _ in range(3)]

    answers = run_api(api, scenario)
    assert [answer.status for answer in answers] == [200, 200, 429]
    assert answers[-1].headers["retry-after"] == "1"
    assert "this client address" in answers[-1].json()["error"]["message"]


# -- roles ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("role", "status"), [("viewer", 403), ("operator", 403), ("admin", 200), (None, 401)]
)
def test_a_route_for_admins_refuses_lower_roles_with_403(role, status):
    api = api_table(f'listen = "127.0.0.1:0"\n{tokens_toml()}\n{GENEROUS}')

    def setup(server):
        server.add_http("GET", "/api/v1/admin-only", lambda r: json_response(200, {}), "admin")

    async def scenario(server):
        token = token_for(role) if role else None
        return await fetch(local(server, "/api/v1/admin-only"), token)

    answer = run_api(api, scenario, setup)
    assert answer.status == status
    if status == 403:
        message = f"needs the admin role; token {role} has {role}"
        assert answer.json()["error"] == {"code": "forbidden", "message": message}


# -- who is served ---------------------------------------------------------------------------


def test_without_tokens_only_clients_on_this_machine_are_served(caplog):
    address = non_loopback_address()
    api = api_table(f'listen = "0.0.0.0:0"\nallow_insecure = true\n{GENEROUS}')

    async def scenario(server):
        remote = await fetch(f"http://{address}:{server.port}{HEALTH}")
        here = await fetch(local(server))
        return remote, here

    with caplog.at_level(logging.WARNING, logger="gateway.api"):
        remote, here = run_api(api, scenario)
    assert remote.status == 403 and remote.json()["error"]["code"] == "local_only"
    assert here.status == 200
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("allow_insecure = true: listening on 0.0.0.0 without tokens" in w for w in warnings)


def test_with_tokens_a_remote_client_is_served(caplog):
    address = non_loopback_address()
    api = api_table(f'listen = "0.0.0.0:0"\nallow_insecure = true\n{tokens_toml()}\n{GENEROUS}')

    async def scenario(server):
        return await fetch(f"http://{address}:{server.port}{HEALTH}", token_for("viewer"))

    with caplog.at_level(logging.WARNING, logger="gateway.api"):
        assert run_api(api, scenario).status == 200
    assert any("without TLS" in record.getMessage() for record in caplog.records)


@pytest.mark.parametrize("tokens", ["", tokens_toml()], ids=["no tokens", "tokens, no tls"])
def test_a_bind_reachable_from_elsewhere_needs_tokens_and_tls(tokens):
    with pytest.raises(ConfigError) as refused:
        loads(f'[api]\nlisten = "0.0.0.0:8080"\n{tokens}\n', environ={})
    assert refused.value.errors == [
        "api.listen: 0.0.0.0:8080 is reachable from other hosts, which needs tokens and tls "
        "(or allow_insecure = true)"
    ]
    with pytest.raises(ValueError, match="api.listen: 0.0.0.0:0 is reachable"):
        ApiServer(api={"listen": "0.0.0.0:0"})


def test_gateway_check_refuses_an_open_bind_and_names_the_key(tmp_path):
    path = tmp_path / "gateway.toml"
    path.write_text('[api]\nlisten = "[::]:8080"\n')
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "check", "-c", str(path)], capture_output=True, text=True
    )
    assert done.returncode == 2
    assert "api.listen: [::]:8080 is reachable from other hosts" in done.stdout


# -- TLS -----------------------------------------------------------------------------------


def test_the_listener_speaks_tls_with_its_certificate(tmp_path):
    cert, key = self_signed_cert(tmp_path)
    api = api_table(
        f'listen = "127.0.0.1:0"\ntls = {{ cert = "{cert}", key = "{key}" }}\n'
        f"{tokens_toml()}\n{GENEROUS}"
    )
    trusting = ssl.create_default_context(cafile=str(cert))

    async def scenario(server):
        secure = await fetch(local(server), token_for("viewer"), context=trusting)
        url = f"wss://127.0.0.1:{server.port}/ws?access_token={token_for('viewer')}"
        async with connect(url, ssl=trusting) as client:
            echoed = await asyncio.wait_for(client.recv(), 5)
        with pytest.raises(OSError):  # plain HTTP to the TLS port: no answer it can read
            await fetch(f"http://127.0.0.1:{server.port}{HEALTH}", token_for("viewer"))
        return server.scheme, secure, echoed

    async def hello(websocket, request):
        await websocket.send_str("hello over tls")

    scheme, secure, echoed = run_api(api, scenario, lambda s: s.add_websocket("/ws", hello))
    assert scheme == "https" and secure.status == 200
    assert echoed == "hello over tls"


def test_an_unreadable_certificate_is_a_clear_error(tmp_path):
    api = api_table(f'listen = "127.0.0.1:0"\ntls = {{ cert = "{tmp_path}/no.pem", key = "k" }}')
    with pytest.raises(ValueError, match=f"api.tls: cannot load {tmp_path}/no.pem"):
        ApiServer(api=api)


# -- WebSocket paths -------------------------------------------------------------------------


def test_websocket_clients_need_a_viewer_token_by_header_or_query():
    api = api_table(f'listen = "127.0.0.1:0"\n{tokens_toml()}\n{GENEROUS}')

    async def hello(websocket, request):
        await websocket.send_str(request.principal.name)

    async def scenario(server):
        base = f"ws://127.0.0.1:{server.port}/ws"
        with pytest.raises(InvalidStatus) as refused:
            async with connect(base):
                pass
        async with connect(f"{base}?access_token={token_for('viewer')}") as client:
            by_query = await asyncio.wait_for(client.recv(), 5)
        header = {"Authorization": f"Bearer {token_for('operator')}"}
        async with connect(base, additional_headers=header) as client:
            by_header = await asyncio.wait_for(client.recv(), 5)
        return refused.value.response.status_code, by_query, by_header

    status, by_query, by_header = run_api(api, scenario, lambda s: s.add_websocket("/ws", hello))
    assert (status, by_query, by_header) == (401, "viewer", "operator")


# -- secrets ---------------------------------------------------------------------------------


def test_no_token_ever_reaches_a_log_line(caplog):
    api = api_table(f'listen = "127.0.0.1:0"\n{tokens_toml()}\n{GENEROUS}')
    wrong = "wrong-token-that-must-not-be-logged"

    def broken(request):
        raise RuntimeError("a handler bug, logged with its traceback")

    async def hello(websocket, request):
        await websocket.send_str("hi")

    def setup(server):
        server.add_http("GET", "/api/v1/broken", broken)
        server.add_websocket("/ws", hello)

    async def scenario(server):
        await fetch(local(server), token_for("viewer"))
        await fetch(local(server), wrong)
        await fetch(local(server, "/api/v1/broken"), token_for("admin"))
        url = f"ws://127.0.0.1:{server.port}/ws?access_token={token_for('operator')}"
        async with connect(url) as client:
            await asyncio.wait_for(client.recv(), 5)

    with caplog.at_level(logging.DEBUG):
        run_api(api, scenario, setup)
    # What the server side logged: the test's own client (websockets) logs its requests.
    server_side = [r for r in caplog.records if not r.name.startswith("websockets.client")]
    logged = "".join(f"{r.getMessage()} {r.args} {r.exc_text}" for r in server_side)
    logged += "".join(caplog.handler.format(r) for r in server_side)
    assert "a handler bug" in logged  # the log was captured at all
    access = [r.getMessage() for r in server_side if r.name == "gateway.api.access"]
    assert any(" GET /ws " in line for line in access), access  # at DEBUG, path only
    for secret in (token_for("viewer"), token_for("admin"), token_for("operator"), wrong):
        assert secret not in logged


def test_gateway_token_new_prints_a_token_once_and_its_config_line():
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "token", "new", "--name", "ops", "--role", "operator"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    token, *_comments, line = done.stdout.strip().splitlines()
    assert len(token) >= 40 and token not in line
    assert line == f'tokens = [{{ name = "ops", role = "operator", sha256 = "{digest(token)}" }}]'
    api = api_table(f'listen = "127.0.0.1:0"\n{line}\n{GENEROUS}')
    assert api["tokens"] == [{"name": "ops", "role": "operator", "sha256": digest(token)}]

    async def scenario(server):
        return await fetch(local(server), token)

    assert run_api(api, scenario).status == 200


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--name", "two words", "--role", "admin"], "--name: expected a name"),
        (["--name", "ops", "--role", "root"], "invalid choice: 'root'"),
    ],
)
def test_gateway_token_new_refuses_a_bad_name_or_role(arguments, message):
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "token", "new", *arguments],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2 and message in done.stderr
    assert done.stdout == ""
