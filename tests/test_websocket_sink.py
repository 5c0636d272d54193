"""WebSocket sink against real clients: topic filters, batches, clients that stop reading."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import struct

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from gateway.api.server import ApiServer
from gateway.sinks.websocket import WebSocketSink

DEVICES = [("bench-1", "env"), ("bench-1", "power"), ("bench-2", "env"), ("pump", "flow")]


def reading(seq: int, device: str = "bench-1", stream: str = "env") -> dict:
    return {
        "gateway": "gw-test",
        "device": device,
        "stream": stream,
        "seq": seq,
        "ts": 1764236400.0 + seq / 1000,
        "data": {"value": seq * 0.5},
    }


def mixed_readings(count: int) -> list[dict]:
    return [reading(seq, *DEVICES[seq % len(DEVICES)]) for seq in range(count)]


class FastClient:
    """A websockets client that reads everything, as fast as it comes."""

    def __init__(self, port: int, query: str = ""):
        self.url = f"ws://127.0.0.1:{port}/ws{query}"
        self.frames: list = []
        self._changed = asyncio.Event()
        self.close_code = None

    async def __aenter__(self):
        self.connection = await connect(self.url)
        self._task = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc):
        await self.connection.close()
        await self._task

    async def _read(self):
        async for message in self.connection:
            self.frames.append(json.loads(message))
            self._changed.set()
        self.close_code = self.connection.close_code
        self._changed.set()

    @property
    def readings(self) -> list[dict]:
        flat = []
        for frame in self.frames:
            flat.extend(frame if isinstance(frame, list) else [frame])
        return flat

    async def wait_for_readings(self, count: int, timeout: float = 10.0) -> None:
        async def caught_up():
            while len(self.readings) < count:
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(caught_up(), timeout)


class StalledClient:
    """A WebSocket client written by hand on a bare socket, so it can truly stop reading."""

    async def connect(self, port: int, target: str = "/ws") -> StalledClient:
        loop = asyncio.get_running_loop()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect
        self.sock.setblocking(False)
        await loop.sock_connect(self.sock, ("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        await loop.sock_sendall(self.sock, request.encode())
        self.buffer = b""
        while b"\r\n\r\n" not in self.buffer:
            self.buffer += await loop.sock_recv(self.sock, 1)  # not a byte beyond the headers
        assert self.buffer.startswith(b"HTTP/1.1 101"), self.buffer
        self.buffer = b""
        return self

    async def read_frames(self, until):
        """Resume reading: collect text payloads until until(texts) or a close frame."""
        loop = asyncio.get_running_loop()
        texts = []
        while not until(texts):
            frame = self._next_frame()
            if frame is None:
                chunk = await asyncio.wait_for(loop.sock_recv(self.sock, 1 << 16), 10)
                if not chunk:
                    return texts, None
                self.buffer += chunk
                continue
            opcode, payload = frame
            if opcode == 0x8:
                code = struct.unpack(">H", payload[:2])[0]
                return texts, (code, payload[2:].decode())
            if opcode == 0x1:
                texts.append(json.loads(payload))
        return texts, None

    def _next_frame(self):
        data = self.buffer
        if len(data) < 2:
            return None
        opcode, length, start = data[0] & 0x0F, data[1] & 0x7F, 2
        if length == 126:
            length, start = (struct.unpack(">H", data[2:4])[0], 4) if len(data) >= 4 else (None, 0)
        elif length == 127:
            length, start = (
                (struct.unpack(">Q", data[2:10])[0], 10) if len(data) >= 10 else (None, 0)
            )
        if length is None or len(data) < start + length:
            return None
        self.buffer = data[start + length :]
        return opcode, data[start : start + length]

    def close(self):
        self.sock.close()


async def wait_for_clients(sink: WebSocketSink, count: int, timeout: float = 5.0) -> None:
    """Poll (the handshake finishes in the server's own task) until `count` clients are in."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while len(sink.stats()["clients"]) != count:
        assert loop.time() < deadline, f"expected {count} clients, have {sink.stats()['clients']}"
        await asyncio.sleep(0.005)


def with_sink(options: dict, scenario):
    async def main():
        api = ApiServer("127.0.0.1:0")
        sink = WebSocketSink("live", options, "gw-test", api)
        await api.start()
        await sink.open()
        try:
            return await scenario(api, sink)
        finally:
            await sink.stop(drain_seconds=0)
            await api.stop()

    return asyncio.run(main())


def frames_beyond_socket_buffers(frame_size: int) -> int:
    """Enough frames that the kernel's TCP send buffer (autotuned up to tcp_wmem's maximum)
    cannot absorb them, so a client that stops reading really falls behind."""
    try:
        with open("/proc/sys/net/ipv4/tcp_wmem") as limits:
            largest = int(limits.read().split()[2])
    except (OSError, IndexError, ValueError):
        largest = 4 << 20
    return max(20_000, 3 * largest // frame_size)


def never_waits(coroutine) -> bool:
    """True when the coroutine finishes without waiting on anything: at most it yields once,
    bare, to let other tasks run (asyncio.sleep(0)), and completes on the next step."""
    for _ in range(2):
        try:
            awaited = coroutine.send(None)
        except StopIteration:
            return True
        if awaited is not None:  # a future: it would wait for something to happen
            break
    coroutine.close()
    return False


def items(readings, route=None):
    return [(r, route or {}) for r in readings]


async def send_in_batches(sink, readings, size=500):
    """As the base's sender task does: batches of up to max_batch (500) items."""
    for start in range(0, len(readings), size):
        await sink.send(items(readings[start : start + size]))


def test_one_client_gets_every_reading_in_order_through_the_sender_task():
    readings = mixed_readings(5000)

    async def scenario(api, sink):
        runner = asyncio.create_task(sink.run())
        async with FastClient(api.port) as client:
            await wait_for_clients(sink, 1)
            for r in readings:
                sink.offer(r, {})
            await client.wait_for_readings(len(readings))
        runner.cancel()
        return client.frames

    assert with_sink({}, scenario) == readings


def test_topic_filters_plus_hash_several_and_none():
    readings = mixed_readings(2000)
    queries = {
        "all": "",
        "bench1": "?topics=gw/%2B/bench-1/%23",
        "bench1_or_pump": "?topics=gw/+/bench-1/%23,gw/+/pump/+",
        "env": "?topics=gw/gw-test/+/env",
        "exact": "?topics=gw/gw-test/pump/flow",
        "nothing": "?topics=other/%23",
    }
    expected = {
        "all": readings,
        "bench1": [r for r in readings if r["device"] == "bench-1"],
        "bench1_or_pump": [r for r in readings if r["device"] in ("bench-1", "pump")],
        "env": [r for r in readings if r["stream"] == "env"],
        "exact": [r for r in readings if r["device"] == "pump"],
        "nothing": [],
    }

    async def scenario(api, sink):
        clients = {name: FastClient(api.port, query) for name, query in queries.items()}
        for client in clients.values():
            await client.__aenter__()
        await wait_for_clients(sink, len(clients))
        await send_in_batches(sink, readings)
        for name, client in clients.items():
            await client.wait_for_readings(len(expected[name]))
        for client in clients.values():
            await client.__aexit__()
        return {name: client.frames for name, client in clients.items()}

    assert with_sink({}, scenario) == expected


def test_route_topic_template_overrides_the_sinks():
    readings = mixed_readings(40)

    async def scenario(api, sink):
        async with FastClient(api.port, "?topics=lab/pump") as client:
            await wait_for_clients(sink, 1)
            await sink.send(items(readings, {"topic": "lab/{device}"}))
            await client.wait_for_readings(10)
        return client.frames

    assert with_sink({"topic": "x/{device}/{stream}"}, scenario) == readings[3::4]


def test_batch_mode_sends_arrays_encoded_once_per_filter():
    readings = mixed_readings(1000)
    queries = [
        "",
        "",
        "?topics=gw/+/bench-1/%23",
        "?topics=gw/+/bench-1/%23",
        "?topics=gw/+/pump/+",
    ]

    async def scenario(api, sink):
        clients = [FastClient(api.port, query) for query in queries]
        for client in clients:
            await client.__aenter__()
        await wait_for_clients(sink, len(clients))
        await send_in_batches(sink, readings, 100)
        expected = [readings, readings, readings[0::4] + readings[1::4], None, readings[3::4]]
        for client, wanted in zip(clients, expected):
            await client.wait_for_readings(len(wanted or expected[2]))
        for client in clients:
            await client.__aexit__()
        return [client.frames for client in clients], sink.counters["frames"]

    frames, frame_count = with_sink({"batch": {"max_readings": 30}}, scenario)
    assert all(isinstance(frame, list) and 1 <= len(frame) <= 30 for got in frames for frame in got)
    flat = [[r for frame in got for r in frame] for got in frames]
    bench1 = [r for r in readings if r["device"] == "bench-1"]
    assert flat == [readings, readings, bench1, bench1, readings[3::4]]
    assert frame_count == sum(len(got) for got in frames)


def test_stalled_client_drops_oldest_and_never_slows_the_sink():
    total, chunk = frames_beyond_socket_buffers(650), 100  # a chunk fits a client queue
    readings = [dict(r, data={"note": "n" * 500}) for r in mixed_readings(total)]  # ~650 B

    async def scenario(api, sink):
        stalled = await StalledClient().connect(api.port)
        async with FastClient(api.port) as fast:
            await wait_for_clients(sink, 2)
            for start in range(0, total, chunk):
                batch = items(readings[start : start + chunk])
                assert never_waits(sink.send(batch))
                # Pace by the fast client only: the stalled one is never waited for.
                await fast.wait_for_readings(start + chunk)
            dropped = sink.counters["dropped_slow_client"]
            stalled_stats = [c for c in sink.stats()["clients"] if c["dropped"]]
            # Everything not dropped is queued or already written; reading again drains it.
            late, _ = await stalled.read_frames(lambda got: len(got) >= total - dropped)
        stalled.close()
        return fast.frames, dropped, stalled_stats, late

    fast_frames, dropped, stalled_stats, late = with_sink({"queue": 100}, scenario)
    assert fast_frames == readings
    assert dropped > 0, "the stalled client's queue never overflowed"
    assert [c["dropped"] for c in stalled_stats] == [dropped]
    seqs = [r["seq"] for r in late]
    assert len(seqs) == total - dropped
    assert seqs == sorted(set(seqs)) and seqs[-1] == total - 1  # oldest dropped, newest kept


def test_disconnect_policy_closes_the_slow_client_with_1008():
    total, chunk = frames_beyond_socket_buffers(650), 20
    readings = [dict(r, data={"note": "n" * 500}) for r in mixed_readings(total)]

    async def scenario(api, sink):
        stalled = await StalledClient().connect(api.port)
        async with FastClient(api.port) as fast:
            await wait_for_clients(sink, 2)
            for start in range(0, total, chunk):
                assert never_waits(sink.send(items(readings[start : start + chunk])))
                await fast.wait_for_readings(start + chunk)
                if sink.counters["disconnected_slow_client"]:
                    break
            _, close = await stalled.read_frames(lambda got: False)
            await fast.wait_for_readings(start + chunk)
            # The fast client is still served after the slow one is gone.
            await sink.send(items([reading(total)]))
            await fast.wait_for_readings(start + chunk + 1)
            await wait_for_clients(sink, 1)
        stalled.close()
        return close, fast.readings, start + chunk, sink.counters

    options = {"queue": 20, "slow_consumer": "disconnect"}
    close, fast_readings, sent, counters = with_sink(options, scenario)
    assert close == (1008, "slow consumer: more than 20 frames queued")
    assert fast_readings == readings[:sent] + [reading(total)]
    assert counters["disconnected_slow_client"] == 1
    assert counters["dropped_slow_client"] == 0


def test_without_clients_readings_count_as_delivered_to_nobody():
    async def scenario(api, sink):
        runner = asyncio.create_task(sink.run())
        for seq in range(25):
            sink.offer(reading(seq), {})
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while sink.counters["delivered"] < 25 and loop.time() < deadline:
            await asyncio.sleep(0.005)
        runner.cancel()
        return sink.counters

    counters = with_sink({}, scenario)
    assert counters["delivered"] == counters["delivered_to_nobody"] == 25


def test_invalid_topic_filter_is_refused_with_400_json():
    async def scenario(api, sink):
        with pytest.raises(InvalidStatus) as refused:
            async with connect(f"ws://127.0.0.1:{api.port}/ws?topics=gw/%23/x"):
                pass
        return refused.value.response, sink.counters["rejected_clients"]

    response, rejected = with_sink({}, scenario)
    assert response.status_code == 400
    error = json.loads(response.body)["error"]
    assert (
        error["code"] == "invalid_topic_filter" and "'#' must be the last level" in error["message"]
    )
    assert rejected == 1


def test_custom_path_and_a_leaving_client_is_forgotten():
    async def scenario(api, sink):
        async with connect(f"ws://127.0.0.1:{api.port}/live/feed"):
            await wait_for_clients(sink, 1)
        await wait_for_clients(sink, 0)
        return sink.counters["clients_connected"]

    assert with_sink({"path": "/live/feed"}, scenario) == 1


def test_stopping_the_sink_closes_clients_with_1001():
    async def scenario(api, sink):
        async with FastClient(api.port) as client:
            await wait_for_clients(sink, 1)
            await sink.stop(drain_seconds=0)
            await asyncio.wait_for(client._task, 5)
            return client.close_code

    assert with_sink({}, scenario) == 1001


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"queue": 0}, "sinks.live.queue: expected at least 1"),
        ({"slow_consumer": "block"}, "sinks.live.slow_consumer: expected one of drop_oldest"),
    ],
)
def test_bad_options_are_clear_errors(options, message):
    with pytest.raises(ValueError, match=message):
        WebSocketSink("live", options, "gw-test", ApiServer("127.0.0.1:0"))


def test_needs_the_api_listener():
    with pytest.raises(ValueError, match="served by the API listener"):
        WebSocketSink("live", {}, "gw-test", None)
