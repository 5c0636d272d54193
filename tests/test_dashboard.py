"""The dashboard at / in Debian's Chromium, headless, over a real `gateway run` with tokens."""

from __future__ import annotations

import asyncio
import re

import pytest

from gateway.sources.simulator import VirtualSerialDevice
from tests.support.api import (
    api_table,
    call,
    non_loopback_address,
    run_api,
    token_for,
    tokens_toml,
)
from tests.support.broker import Broker, free_port
from tests.support.browser import TokenGatewayProcess, WatchedPage, chromium
from tests.support.firmware import node_config, start_node
from tests.support.udp import UdpCollector
from tests.support.waiting import wait_until

STREAM = "bench/default"  # the simulated env device: its readings' "device/stream"
NODE = "node-1"  # the firmware node's id, from its HELLO

CONFIG = """
[gateway]
id = "dash-test"
data_dir = "./var"

[api]
listen = "127.0.0.1:{api_port}"
{tokens}

[[sources]]
name = "bench"
simulate = {{ profile = "env", rate = 20 }}
preset = "shown"
{more_sources}

[presets.shown]
extends = "basic"
buffer = "none"
routes = [{{ sink = "live" }}, {{ sink = "mqtt" }}]

[sinks.live]
type = "sse"

[sinks.mqtt]
type = "mqtt"
url = "mqtt://127.0.0.1:{broker_port}"
"""

NODE_SOURCE = """
[[sources]]
name = "node-port"
port = "{path}"
framing = "cobs"
preset = "shown"
"""


@pytest.fixture(scope="module")
def broker():
    running = Broker().start()
    yield running
    running.close()


@pytest.fixture(scope="module")
def gateway(broker, tmp_path_factory):
    """`gateway run` with tokens: a simulated env device and the sensor-node firmware (the
    MicroPython unix port) on ptys, to the SSE sink and to MQTT."""
    directory = tmp_path_factory.mktemp("dash")
    device = VirtualSerialDevice(str(directory / "tty-node"))
    node = start_node(node_config(NODE, 20.0), "micropython", str(directory), device)
    port = free_port()
    node_source = NODE_SOURCE.format(path=device.path)
    text = CONFIG.format(
        api_port=port, tokens=tokens_toml(), broker_port=broker.port, more_sources=node_source
    )
    process = TokenGatewayProcess(text, str(directory), token_for("admin"))
    try:
        process.start(port)
        yield process
    finally:
        process.kill()
        node.stop()
        device.close()


@pytest.fixture(scope="module")
def browser():
    with chromium() as running:
        yield running


@pytest.fixture
def page(browser):
    watched = WatchedPage(browser)
    yield watched
    watched.close()


def base(gateway) -> str:
    return f"http://127.0.0.1:{gateway.api_port}"


def open_with_token(page: WatchedPage, gateway, role: str) -> None:
    """Load / and give the token the page asks for (the API answers it 401 without one)."""
    page.page.goto(base(gateway) + "/")
    page.page.wait_for_selector("#token-form:not([hidden])")
    page.page.fill("#token-input", token_for(role))
    page.page.click("#token-form button")


def cell(page: WatchedPage, table: str, name: str, column: int) -> str:
    return page.page.inner_text(f"#{table} tr[data-{table[:-1]}='{name}'] td:nth-child({column})")


def test_the_page_needs_no_token_and_its_data_does(gateway):
    page = call(base(gateway) + "/")
    assert page.status == 200
    assert page.headers["content-type"].startswith("text/html")
    assert b'src="/static/dashboard.js"' in page.body
    # The page says which live feed to open, and that a token is needed.
    listener = '{"sse":["/sse"],"websocket":[],"tokens":true}'.replace('"', "&quot;")
    assert f'<meta name="gateway-listener" content="{listener}">'.encode() in page.body
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for path in ("/static/dashboard.js", "/static/dashboard.css", "/static/favicon.svg"):
        assert call(base(gateway) + path).status == 200, path
    assert call(base(gateway) + "/api/v1/health").status == 401
    assert call(base(gateway) + "/", method="POST").status == 405


@pytest.mark.parametrize(
    ("tokens", "remote_page", "remote_api"),
    [("", 403, 403), (tokens_toml(), 200, 401)],
    ids=["no tokens: this machine only", "tokens: the page for anyone, the data with one"],
)
def test_who_gets_the_page_from_another_address(tokens, remote_page, remote_api):
    address = non_loopback_address()
    api = api_table(f'listen = "0.0.0.0:0"\nallow_insecure = true\n{tokens}')

    async def scenario(server):
        def calls():
            remote = f"http://{address}:{server.port}"
            return (
                call(remote + "/"),
                call(remote + "/api/v1/health"),
                call(f"http://127.0.0.1:{server.port}/", method="HEAD"),
            )

        return await asyncio.to_thread(calls)

    page, health, head = run_api(api, scenario)
    assert (page.status, health.status) == (remote_page, remote_api)
    if remote_page == 403:
        assert page.json()["error"]["code"] == "local_only"
    assert head.status == 200 and head.body == b""
    assert head.headers["content-type"].startswith("text/html")


def test_live_values_and_states_show_with_no_console_errors(gateway, page):
    open_with_token(page, gateway, "viewer")
    figure = f"figure[data-stream='{STREAM}']"
    page.page.wait_for_selector(figure)
    first = page.page.inner_text(f"{figure} .seq")
    values = page.page.locator(f"{figure} .value").all_inner_texts
    before = values()
    assert len(before) == 3  # temperature, humidity, pressure: one line each
    wait_until(lambda: page.page.inner_text(f"{figure} .seq") != first, 10, "a newer reading")
    wait_until(lambda: values() != before, 10, "new values")
    assert int(page.page.inner_text(f"{figure} .seq").split()[1]) > int(first.split()[1])
    assert page.page.inner_text("#feed-state") == "live feed: /sse"

    wait_until(lambda: cell(page, "sources", "bench", 4) not in ("", "0"), 10, "source row")
    assert cell(page, "sources", "bench", 2) == "connected"
    assert cell(page, "sources", "node-port", 2) == f"connected ({NODE} online)"
    page.page.wait_for_selector(f"figure[data-stream='{NODE}/synthetic'] .field .value")
    sinks = {sink["name"]: sink for sink in gateway.health()["stats"]["sinks"].values()}
    for name, sink in sinks.items():
        assert cell(page, "sinks", name, 2) == sink["type"]
        assert cell(page, "sinks", name, 3) == "connected"
        assert cell(page, "sinks", name, 4) == sink["breaker"]["state"] == "closed"
    assert page.page.inner_text("#health") == "ok"
    assert page.page.inner_text("#gateway-id") == "dash-test"
    shown = lambda: int(page.page.inner_text(f"{figure} .count").split()[0])  # noqa: E731
    wait_until(lambda: shown() >= 40, 10, "two seconds of readings charted")  # for the picture
    page.screenshot("dashboard")
    assert page.errors == []


def test_without_tokens_it_asks_for_none_and_charts_the_websocket_feed(broker, page, tmp_path):
    port = free_port()
    text = CONFIG.format(api_port=port, tokens="", broker_port=broker.port, more_sources="")
    gateway = TokenGatewayProcess(text.replace('"sse"', '"websocket"'), str(tmp_path), None)
    try:
        gateway.start(port)
        page.page.goto(base(gateway) + "/")
        figure = f"figure[data-stream='{STREAM}']"
        page.page.wait_for_selector(figure)
        first = page.page.inner_text(f"{figure} .seq")
        wait_until(lambda: page.page.inner_text(f"{figure} .seq") != first, 10, "a newer one")
        assert page.page.inner_text("#feed-state") == "live feed: /ws"
        assert page.page.is_hidden("#token-form")
        assert cell(page, "sinks", "live", 2) == "websocket"
    finally:
        gateway.kill()
    assert page.errors == []


def test_a_sink_whose_broker_goes_away_shows_it_and_its_return(gateway, broker, page):
    open_with_token(page, gateway, "viewer")
    page.page.wait_for_selector("#sinks tr[data-sink='mqtt']")
    broker.stop()
    try:
        wait_until(lambda: cell(page, "sinks", "mqtt", 3) == "disconnected", 15, "disconnected")
        wait_until(lambda: page.page.inner_text("#health") == "degraded", 15, "degraded")
    finally:
        broker.start()
    wait_until(lambda: cell(page, "sinks", "mqtt", 3) == "connected", 30, "connected again")
    assert page.errors == []


def test_a_wrong_token_is_asked_again_and_a_viewer_cannot_start_a_session(gateway, page):
    page.page.goto(base(gateway) + "/")
    page.page.wait_for_selector("#token-form:not([hidden])")
    page.page.fill("#token-input", "not-a-token")
    page.page.click("#token-form button")
    page.page.wait_for_selector("#token-form:not([hidden])")
    assert "not accepted" in page.page.inner_text("#token-message")
    page.page.fill("#token-input", token_for("viewer"))
    page.page.click("#token-form button")
    page.page.wait_for_selector("#sessions-section:not([hidden])")
    page.page.fill("#session-form input[name=name]", "viewer-try")
    page.page.select_option("#session-form select[name=sink]", "mqtt")
    page.page.click("#session-form button")
    wait_until(lambda: "operator" in page.page.inner_text("#message"), 10, "refusal shown")
    assert "Starting the session" in page.page.inner_text("#message")
    # The browser logs each refusal the page was given, and nothing else.
    refused = "console: Failed to load resource: the server responded with a status of {}"
    assert page.errors == [refused.format("401 (Unauthorized)"), refused.format("403 (Forbidden)")]


def test_an_operator_starts_and_stops_a_session_from_the_page(gateway, page):
    admin = token_for("admin")
    udp = UdpCollector()
    try:
        open_with_token(page, gateway, "operator")
        page.page.wait_for_selector("#sessions-section:not([hidden]) #session-form")
        page.page.fill("#session-form input[name=name]", "run-7")
        page.page.fill("#session-form input[name=select]", STREAM)
        page.page.fill("#session-form input[name=udp]", f"127.0.0.1:{udp.port}")
        page.page.click("#session-form button")
        row = "#sessions tr:has(td:text-is('run-7'))"
        page.page.wait_for_selector(f"{row} td:text-is('running')")
        wait_until(lambda: len(udp.readings) > 0, 15, "the session's UDP target gets readings")
        assert {(r["device"], r["stream"]) for r in udp.readings} == {tuple(STREAM.split("/"))}
        sessions = call(base(gateway) + "/api/v1/sessions", token=admin).json()
        listed = sessions if isinstance(sessions, list) else sessions["sessions"]
        (started,) = [session for session in listed if session["name"] == "run-7"]
        assert started["state"] == "running"
        page.screenshot("dashboard-session")

        page.page.click(f"{row} button.stop")
        page.page.wait_for_selector("#message:has-text('Session run-7 stopped')")
        # The final counters, as DELETE answered them: what the UDP target got, exactly.
        final = re.search(r"run-7-udp (\d+) delivered, 0 dropped", page.page.inner_text("#message"))
        assert final, page.page.inner_text("#message")
        wait_until(lambda: len(udp.readings) == int(final.group(1)), 10, "every delivered one")
        page.page.wait_for_selector(f"{row} td:text-is('running')", state="detached")
        answer = call(base(gateway) + f"/api/v1/sessions/{started['id']}", token=admin)
        assert answer.status == 404 or answer.json()["state"] != "running"
        assert page.errors == []
    finally:
        udp.close()
