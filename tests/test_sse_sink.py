"""SSE sink against aiohttp's client: resume by Last-Event-ID, gaps, slow clients, CORS, tokens."""

from __future__ import annotations

import asyncio
import json
import socket

import aiohttp
import pytest

from gateway.config import ConfigError, loads
from tests.support.api import api_table, token_for, tokens_toml
from tests.support.sse import SseClient, served_sink
from tests.support.waiting import eventually

pytestmark = pytest.mark.timeout(60)

DEVICES = [("bench-1", "env"), ("bench-2", "env"), ("pump", "flow")]


def reading(seq: int, pad: int = 0) -> dict:
    device, stream = DEVICES[seq % len(DEVICES)]
    data = {"value": seq * 0.5, **({"pad": "x" * pad} if pad else {})}
    return {
        "gateway": "gw",
        "device": device,
        "stream": stream,
        "seq": seq,
        "ts": 1.0,
        "data": data,
    }


def run(scenario, api: dict | None = None, **options):
    """Start an API listener with an SSE sink (options), run scenario(sink, url), stop."""

    async def main():
        async with served_sink(options, api) as (sink, url):
            return await scenario(sink, url)

    return asyncio.run(main())


async def feed(sink, count: int, rate: float = 2000.0, start: int = 0) -> None:
    """Offer readings at `rate` per second, 20 at a time."""
    loop = asyncio.get_running_loop()
    began = loop.time()
    for seq in range(start, start + count):
        sink.offer(reading(seq), {})
        if seq % 20 == 19:
            await asyncio.sleep(max(0.0, began + (seq - start + 1) / rate - loop.time()))


def test_cut_off_mid_stream_at_2000_per_second_and_resumed_gets_every_reading_once_in_order():
    total = 10_000

    async def scenario(sink, url):
        client = await SseClient(url).connect()
        feeding = asyncio.create_task(feed(sink, total))
        cuts = []
        for at in (1_500, 4_000, 7_000):
            await client.wait_for(lambda c, at=at: len(c.readings) >= at)
            await client.cut()
            cuts.append(len(client.readings))
            await client.connect()  # Last-Event-ID: the last complete event
        await feeding
        await client.wait_for(lambda c: len(c.readings) >= total)
        await client.close()
        return client, cuts, sink.stats()

    client, cuts, stats = run(scenario)
    assert [r["seq"] for r in client.readings] == list(range(total))
    assert client.named("gap") == [] and client.retry == 2000
    ids = [int(event["id"]) for event in client.named("reading")]
    assert ids == list(range(ids[0], ids[0] + total))  # one id per reading, monotonic
    assert all(cut < total for cut in cuts) and stats["clients_connected"] == 4
    assert stats.get("dropped_slow_client", 0) == 0


def test_a_client_behind_the_window_gets_a_gap_event_then_what_is_kept():
    async def scenario(sink, url):
        client = await SseClient(url).connect()
        await feed(sink, 5)
        await client.wait_for(lambda c: len(c.readings) == 5)
        await client.cut()
        await feed(sink, 500, start=5)
        await eventually(lambda: sink.depth == 0, 5, "the sink to take them")
        await client.connect()
        await client.wait_for(lambda c: len(c.readings) == 105)
        await client.close()
        return client, sink.stats()

    client, stats = run(scenario, replay=100, queue=10, replay_age=60)
    kinds = [event["event"] for event in client.events]
    assert kinds[:6] == ["reading"] * 5 + ["gap"]
    gap = json.loads(client.named("gap")[0]["data"])
    assert gap["last_event_id"] == int(client.events[4]["id"])
    assert gap["first_id"] == int(client.events[6]["id"])
    assert [r["seq"] for r in client.readings] == list(range(5)) + list(range(405, 505))
    assert stats["resumed_behind_window"] == 1 and stats["window"]["events"] == 100


def test_topic_filters_and_batches_like_ws():
    async def scenario(sink, url):
        pumps = await SseClient(url + "?topics=gw/%2B/pump/%23").connect()
        both = await SseClient(url + "?topics=gw/gw/bench-1/env,gw/gw/bench-2/%2B").connect()
        await feed(sink, 300)
        await pumps.wait_for(lambda c: len(c.readings) == 100)
        await both.wait_for(lambda c: len(c.readings) == 200)
        await pumps.close()
        await both.close()
        return pumps, both

    pumps, both = run(scenario, batch={"max_readings": 10})
    assert [r["seq"] for r in pumps.readings] == list(range(2, 300, 3))
    assert [r["seq"] for r in both.readings] == [s for s in range(300) if s % 3 != 2]
    assert {event["event"] for event in pumps.events} == {"batch"}
    sizes = [len(json.loads(event["data"])) for event in pumps.events]
    assert max(sizes) <= 10 and len(sizes) < 100  # arrays of what was there, at most 10


class StalledClient:
    """An SSE request on a bare socket with a tiny receive buffer that is then never read."""

    async def connect(self, port: int) -> StalledClient:
        loop = asyncio.get_running_loop()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect
        self.sock.setblocking(False)
        await loop.sock_connect(self.sock, ("127.0.0.1", port))
        request = f"GET /sse HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n"
        await loop.sock_sendall(self.sock, request.encode())
        return self

    def close(self) -> None:
        self.sock.close()


@pytest.mark.parametrize("policy", ["drop_oldest", "disconnect"])
def test_a_stalled_client_is_handled_by_policy_and_never_slows_the_others(policy):
    total = 3_000

    async def scenario(sink, url):
        port = int(url.split(":")[2].split("/")[0])
        stalled = await StalledClient().connect(port)
        fast = await SseClient(url).connect()
        await eventually(lambda: len(sink.stats()["clients"]) == 2, 5, "two clients")
        for seq in range(total):
            sink.offer(reading(seq, pad=1000), {})
            if seq % 50 == 49:
                await asyncio.sleep(0.001)
        await fast.wait_for(lambda c: len(c.readings) == total)
        await fast.close()
        stalled.close()
        return sink.stats()

    stats = run(scenario, queue=200, replay=200, slow_consumer=policy)
    if policy == "disconnect":
        assert stats["disconnected_slow_client"] == 1
    else:
        assert stats["dropped_slow_client"] > 0


def test_retry_heartbeat_cors_and_a_token_in_the_query():
    api = api_table(f'listen = "127.0.0.1:0"\n{tokens_toml()}')

    async def scenario(sink, url):
        viewer = f"{url}?access_token={token_for('viewer')}"
        allowed = await SseClient(viewer, {"Origin": "https://dash.example"}).connect()
        await allowed.wait_for(lambda c: c.comments >= 2)  # two heartbeats with nothing to say
        other = await SseClient(viewer, {"Origin": "https://evil.example"}).connect()
        refused = await SseClient(url).connect()
        await allowed.close()
        await other.close()
        await refused.close()
        return allowed, other, refused

    allowed, other, refused = run(
        scenario, api=api, heartbeat=0.05, client_retry=0.5, cors_origins=["https://dash.example"]
    )
    assert allowed.status == 200 and allowed.retry == 500
    assert allowed.response_headers["Content-Type"] == "text/event-stream"
    assert allowed.response_headers["Access-Control-Allow-Origin"] == "https://dash.example"
    assert other.status == 200 and "Access-Control-Allow-Origin" not in other.response_headers
    assert refused.status == 401


@pytest.mark.parametrize(
    ("query", "headers", "code"),
    [
        ("?topics=gw/%23/x", {}, "invalid_topic_filter"),
        ("", {"Last-Event-ID": "yesterday"}, "invalid_last_event_id"),
    ],
)
def test_bad_requests_are_400_with_the_reason(query, headers, code):
    async def scenario(sink, url):
        async with (
            aiohttp.ClientSession() as session,
            session.get(url + query, headers=headers) as response,
        ):
            return response.status, await response.json()

    status, body = run(scenario)
    assert status == 400 and body["error"]["code"] == code


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ("replay = -1", "sinks.live.replay: expected"),
        ('heartbeat = "0s"', "sinks.live.heartbeat: expected"),
        ('cors_origins = "*"', "sinks.live.cors_origins: expected a list of origins"),
    ],
)
def test_bad_options_name_the_key(table, message):
    with pytest.raises(ConfigError) as raised:
        loads(f'[sinks.live]\ntype = "sse"\n{table}\n', environ={})
    assert any(line.startswith(message) for line in raised.value.errors), raised.value.errors


@pytest.mark.parametrize("offset", [-1000, 1000], ids=["earlier-run", "unknown-future"])
def test_an_id_this_window_never_held_gets_a_gap_then_the_window(offset):
    async def scenario(sink, url):
        await feed(sink, 10)
        await eventually(lambda: sink.depth == 0, 5, "the sink to take them")
        window = sink.window
        last_seen = window.first_id + offset if offset < 0 else window.last_id + offset
        client = await SseClient(url, {"Last-Event-ID": str(last_seen)}).connect()
        await client.wait_for(lambda c: len(c.readings) == 10)
        await client.close()
        return client, last_seen

    client, last_seen = run(scenario)
    assert client.events[0]["event"] == "gap"
    assert json.loads(client.events[0]["data"])["last_event_id"] == last_seen
    assert [r["seq"] for r in client.readings] == list(range(10))
