"""/sse in Debian's Chromium: an EventSource cut off mid-stream at 2,000 readings/s resumes
with Last-Event-ID and gets every reading exactly once, in order."""

from __future__ import annotations

import threading

from tests.support.api import token_for, tokens_toml
from tests.support.broker import free_port
from tests.support.browser import CuttingRelay, TokenGatewayProcess, WatchedPage, chromium
from tests.support.e2e import DeviceWriters
from tests.support.waiting import wait_until

RATE = 2000  # readings per second, from one pty device
READINGS = 8000  # four seconds of them
CUTS = (2000, 4500)  # the relay drops the connection once the browser has this many

CONFIG = """
[gateway]
id = "sse-browser"
data_dir = "./var"

[api]
listen = "127.0.0.1:{api_port}"
{tokens}

[[sources]]
name = "counter"
port = "{device}"
format = "json"
preset = "events_only"

[presets.events_only]
extends = "basic"
buffer = "none"
routes = [{{ sink = "events" }}]

[sinks.events]
type = "sse"
client_retry = "100ms"
queue = 10000  # a browser slowed by a busy machine is not a slow consumer here: all may lag
"""

# Collects what an EventSource gets: each reading's n (the device's line number) and each
# event's id; counts opens (the first and every reconnect) and gap events.
LISTEN = """url => {
  window.got = []; window.ids = []; window.opens = 0; window.gaps = 0;
  const source = new EventSource(url);
  source.addEventListener("open", () => { window.opens += 1; });
  source.addEventListener("gap", () => { window.gaps += 1; });
  source.addEventListener("reading", event => {
    window.got.push(JSON.parse(event.data).data.n);
    window.ids.push(Number(event.lastEventId));
  });
  window.source = source;
}"""


def test_an_eventsource_cut_off_mid_stream_resumes_with_nothing_missing_or_twice(tmp_path):
    writers = DeviceWriters(1, str(tmp_path))
    port = free_port()
    config = CONFIG.format(api_port=port, tokens=tokens_toml(), device=writers.paths[0])
    gateway = TokenGatewayProcess(config, str(tmp_path), token_for("admin"))
    relay = None
    try:
        gateway.start(port)
        relay = CuttingRelay(port)
        with chromium() as browser:
            page = WatchedPage(browser)
            origin = f"http://127.0.0.1:{relay.port}"
            page.page.goto(origin + "/")  # the page's origin is the stream's; its script idles
            page.page.evaluate(LISTEN, f"{origin}/sse?access_token={token_for('viewer')}")
            count = lambda: page.page.evaluate("window.got.length")  # noqa: E731
            wait_until(lambda: page.page.evaluate("window.opens") == 1, 10, "the stream opens")
            writing = threading.Thread(target=writers.run, args=(READINGS, RATE))
            writing.start()
            for at in CUTS:
                wait_until(lambda at=at: count() >= at, 20, f"{at} readings")
                # The stream's two sockets (browser side, gateway side), and any keep-alive
                # one left from loading the page.
                assert relay.cut() >= 2
            writing.join()
            wait_until(lambda: count() >= READINGS, 20, "every reading")
            got, ids = page.page.evaluate("[window.got, window.ids]")
            opens, gaps = page.page.evaluate("[window.opens, window.gaps]")
            page.screenshot("sse-browser")
            errors = page.errors
            page.close()
    finally:
        if relay is not None:
            relay.close()
        gateway.kill()
    assert got == list(range(READINGS))  # every reading, once, in order
    assert ids == list(range(ids[0], ids[0] + READINGS))  # and so every event id
    assert opens == len(CUTS) + 1  # it was cut off, and reconnected, each time
    assert gaps == 0
    # What the browser logs is one broken response per cut, and nothing else.
    broken = "console: Failed to load resource: net::ERR_INCOMPLETE_CHUNKED_ENCODING"
    assert errors == [broken] * len(CUTS)
