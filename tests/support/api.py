"""The API from outside: a gateway with its control plane on its own thread, calls, tokens, TLS."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import socket
import ssl
import subprocess
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from gateway.api.control import ControlPlane
from gateway.api.server import ApiServer
from gateway.app import Gateway
from gateway.config import loads
from tests.support.waiting import eventually, wait_until

ROLES = ("viewer", "operator", "admin")


def token_for(role: str) -> str:
    """A fixed test token per role (the config holds only its SHA-256)."""
    return f"test-token-{role}-0123456789"


def tokens_toml(roles: tuple[str, ...] = ROLES) -> str:
    entries = ", ".join(
        f'{{ name = "{role}", role = "{role}", sha256 = "{digest(token_for(role))}" }}'
        for role in roles
    )
    return f"tokens = [{entries}]"


def api_head(gateway_id: str) -> str:
    """A config's [gateway] and [api] tables for a gateway the tests call: a token for every
    role, limits no test module reaches (test_api_security tests them), `{data_dir}` to fill
    in. The rest of the config (sources, presets, sinks) follows it."""
    return f"""
[gateway]
id = "{gateway_id}"
data_dir = "{{data_dir}}"

[api]
listen = "127.0.0.1:0"
{tokens_toml()}
[api.rate_limit]
token = {{ rate = 1000, burst = 1000 }}
address = {{ rate = 1000, burst = 1000 }}
"""


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Answer:
    """One HTTP answer: status, headers (lower-case names), body; json() decodes it."""

    def __init__(self, status: int, headers: dict[str, str], body: bytes):
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body)


def call(
    url: str,
    method: str = "GET",
    token: str | None = None,
    body: Any = None,
    context: ssl.SSLContext | None = None,
) -> Answer:
    """One request with urllib (a client that is not ours); HTTP errors are answers too."""
    data = None if body is None else json.dumps(body).encode()
    return call_raw(url, method, token, data, context)


def call_raw(
    url: str,
    method: str = "GET",
    token: str | None = None,
    data: bytes | None = None,
    context: ssl.SSLContext | None = None,
) -> Answer:
    """call() with the body as bytes, sent as they are."""
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    if data is not None:
        headers["Content-Type"] = "application/json"
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as response:
            return Answer(response.status, _lower(response.headers), response.read())
    except urllib.error.HTTPError as error:
        return Answer(error.code, _lower(error.headers), error.read())


def _lower(headers: Any) -> dict[str, str]:
    return {key.lower(): value for key, value in headers.items()}


class ThreadedGateway:
    """A Gateway (with ControlPlane) running its own event loop on a thread, until close()."""

    def __init__(self, toml: str, path: Path | None = None):
        """`path`: the TOML is written there too, for the gateway to reload."""
        if path is not None:
            path.write_text(toml)
        self.gateway = Gateway(loads(toml, environ={}), str(path) if path else None)
        ControlPlane(self.gateway).install()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, daemon=True)

    def start(self) -> ThreadedGateway:
        self._thread.start()
        # The port is known once the listener is up: run() starts it before anything else.
        wait_until(lambda: self.gateway.api.port or not self._thread.is_alive(), 30, "listener")
        assert self._thread.is_alive(), "the gateway stopped while starting"
        return self

    @property
    def base(self) -> str:
        return f"{self.gateway.api.scheme}://127.0.0.1:{self.gateway.api.port}"

    def _main(self) -> None:
        asyncio.run(self._run())

    async def _run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        await self.gateway.run(self._stop)

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)


def self_signed_cert(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost, made by the openssl command."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


def non_loopback_address() -> str:
    """This machine's address toward the outside (no packet is sent by a UDP connect)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("192.0.2.1", 9))
        address = probe.getsockname()[0]
    assert not address.startswith("127."), "this machine has no non-loopback IPv4 address"
    return address


def api_table(toml: str) -> dict[str, Any]:
    """The validated [api] table of a config holding only `toml` (the [api] lines)."""
    return loads("[api]\n" + toml, environ={})["api"]


def run_api(api: dict[str, Any], scenario, setup=None):
    """Start an ApiServer for the [api] table `api`, let `setup` register routes, run the
    async scenario(server) and stop; blocking calls in it go through asyncio.to_thread."""

    async def main():
        server = ApiServer(api=api)
        if setup:
            setup(server)
        await server.start()
        try:
            return await scenario(server)
        finally:
            await server.stop()

    return asyncio.run(main())


@contextlib.asynccontextmanager
async def gateway_in_loop(toml: str):
    """A Gateway with its control plane running in this event loop, for tests whose other
    parts (a CobsTestDevice) live in the same loop; the listener is up when it yields."""
    gateway = Gateway(loads(toml, environ={}))
    ControlPlane(gateway).install()
    stop = asyncio.Event()
    task = asyncio.create_task(gateway.run(stop))
    # The port is known once the listener is up: run() starts it before anything else.
    await eventually(lambda: gateway.api.port or task.done(), 30, "listener")
    try:
        yield gateway
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
