"""The SSE replay window on disk: a client resumes across a gateway restart or a kill -9."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time

import pytest

from gateway.api.server import ApiServer
from gateway.sinks.sse import ReplayWindow, SseSink
from gateway.store.replay_log import UNWRITTEN, SegmentFiles
from tests.support.api import call
from tests.support.broker import free_port
from tests.support.e2e import DeviceWriters, GatewayProcess
from tests.support.sse import SseClient, served_sink
from tests.support.tmpfs import fill, tmpfs
from tests.support.waiting import eventually, wait_until

pytestmark = pytest.mark.timeout(120)


def reading(seq: int) -> dict:
    return {"gateway": "gw", "device": "d", "stream": "s", "seq": seq, "ts": 1.0, "data": {}}


async def feed(sink, start: int, count: int) -> None:
    """Offer readings start.. and wait until the sink has taken them all."""
    for seq in range(start, start + count):
        sink.offer(reading(seq), {})
        if seq % 50 == 49:
            await asyncio.sleep(0.001)
    await eventually(lambda: sink.depth == 0, 10, "the sink to take them")


async def written(sink) -> None:
    await eventually(lambda: sink.log.written_id == sink.window.last_id, 5, "the write")


def ids(client: SseClient) -> list[int]:
    return [int(event["id"]) for event in client.events if "id" in event]


def on_disk(directory: str) -> list[tuple]:
    """Every event the window's files hold (read as the sink reads them at start)."""
    return list(SegmentFiles(directory).load(10**9, 10**9, 0.0).events)


# -- in one process: the sink stopped and built again over the same directory -----------------


@pytest.mark.parametrize("fsync", ["always", "batch", "off"])
def test_after_a_clean_restart_a_client_gets_exactly_what_it_missed_then_live(tmp_path, fsync):
    options = {"replay_dir": str(tmp_path), "replay_fsync": fsync, "replay": 1000}

    async def scenario():
        client = SseClient("")
        async with served_sink(options) as (sink, url):
            client.url = url
            await client.connect()
            await feed(sink, 0, 100)
            await client.wait_for(lambda c: len(c.readings) == 100)
            await client.cut()
            await feed(sink, 100, 200)  # missed while away
            before = sink.stats()["window"]
        async with served_sink(options) as (sink, url):
            after = sink.stats()["window"]
            client.url = url
            await client.connect()  # Last-Event-ID: the 100th
            await client.wait_for(lambda c: len(c.readings) == 300)
            await feed(sink, 300, 100)  # live
            await client.wait_for(lambda c: len(c.readings) == 400)
        await client.close()
        return client, before, after

    client, before, after = asyncio.run(scenario())
    assert [r["seq"] for r in client.readings] == list(range(400))
    got = ids(client)
    assert got == list(range(got[0], got[0] + 400)) and client.named("gap") == []
    assert after["events"] == before["events"] == 300 and after["first_id"] == before["first_id"]


def test_an_id_behind_the_window_after_a_restart_gets_a_gap_then_what_is_kept(tmp_path):
    options = {"replay_dir": str(tmp_path), "replay": 100, "queue": 10}

    async def scenario():
        client = SseClient("")
        async with served_sink(options) as (sink, url):
            client.url = url
            await client.connect()
            await feed(sink, 0, 5)
            await client.wait_for(lambda c: len(c.readings) == 5)
            await client.cut()
            await feed(sink, 5, 500)
        async with served_sink(options) as (sink, url):
            client.url = url
            await client.connect()
            await client.wait_for(lambda c: len(c.readings) == 105)
        await client.close()
        return client

    client = asyncio.run(scenario())
    assert [event["event"] for event in client.events[:6]] == ["reading"] * 5 + ["gap"]
    gap = json.loads(client.named("gap")[0]["data"])
    assert gap == {"last_event_id": int(client.events[4]["id"]), "first_id": ids(client)[5]}
    assert [r["seq"] for r in client.readings] == list(range(5)) + list(range(405, 505))


def test_a_torn_last_record_is_skipped_and_ids_go_on_past_what_may_have_been_lost(tmp_path):
    options = {"replay_dir": str(tmp_path), "replay": 1000}
    directory = os.path.join(tmp_path, "sse")

    async def scenario():
        async with served_sink(options) as (sink, _url):
            await feed(sink, 0, 40)
            await written(sink)
            kept = sink.window.last_id  # seq 39: the last id of a whole record
            await feed(sink, 40, 10)
            await written(sink)  # a record of its own, about to be torn
            # A crash: the process ends between writes (no stop record), the last torn.
            sink.log._task.cancel()
            sink.log.files.close()
            segment = max(name for name in os.listdir(directory) if name.endswith(".seg"))
            path = os.path.join(directory, segment)
            os.truncate(path, os.path.getsize(path) - 3)
            with open(path, "ab") as file:
                file.write(b"\x00\x01")  # and some garbage after it
            sink.log = None  # nothing more reaches these files from this run
        client = SseClient("", {"Last-Event-ID": str(kept - 10)})
        async with served_sink(options) as (sink, url):
            client.url = url
            await client.connect()
            await feed(sink, 50, 10)
            await client.wait_for(lambda c: len(c.readings) == 20)
        await client.close()
        return client, kept

    client, kept = asyncio.run(scenario())
    kinds = [event["event"] for event in client.events]
    assert kinds == ["reading"] * 10 + ["gap"] + ["reading"] * 10
    assert [r["seq"] for r in client.readings] == list(range(30, 40)) + list(range(50, 60))
    gap = json.loads(client.named("gap")[0]["data"])
    assert gap == {"lost_after": kept, "next_id": kept + 1 + UNWRITTEN}
    assert ids(client)[10] == kept + 1 + UNWRITTEN  # the first id of the new run


def test_the_files_stay_within_their_bound_under_a_long_stream(tmp_path):
    options = {"replay_dir": str(tmp_path), "replay": 1000, "replay_fsync": "off"}
    directory = os.path.join(tmp_path, "sse")
    sizes = []

    async def scenario():
        async with served_sink(options) as (sink, _url):
            for block in range(6):
                await feed(sink, block * 5000, 5000)
                await written(sink)
                sizes.append((len(on_disk(directory)), sink.stats()["window"]))
            return sink.window.first_id, sink.window.last_id

    first_id, last_id = asyncio.run(scenario())
    held = [events for events, _window in sizes]
    # The window (1,000) and at most one segment of 1,024 more, however long the stream.
    assert all(1000 <= events < 1000 + 1024 for events in held), held
    assert max(window["segments"] for _events, window in sizes) <= 3
    kept = on_disk(directory)
    assert kept[-1][0] == last_id and kept[0][0] <= first_id  # the whole window, in order
    assert [event[0] for event in kept] == list(range(kept[0][0], last_id + 1))


@pytest.mark.parametrize(
    ("limit", "max_age", "kept"),
    [(1000, 30.0, range(69, 100)), (20, 30.0, range(80, 100)), (1000, 1000.0, range(100))],
    ids=["by-age", "by-count", "all"],
)
def test_the_files_give_back_the_newest_events_within_replay_and_replay_age(
    tmp_path, limit, max_age, kept
):
    files = SegmentFiles(str(tmp_path), "off", segment_events=32)  # four segments
    files.begin(500, UNWRITTEN)
    events = [(500 + i, 1000.0 + i, f"t/{i % 3}", b'{"i":%d}' % i) for i in range(100)]
    for at in range(0, 100, 10):
        files.write(events[at : at + 10], keep_from=0)
    files.end(600)
    loaded = SegmentFiles(str(tmp_path)).load(limit, max_age, now=1099.0)
    assert list(loaded.events) == [events[i] for i in kept]
    assert loaded.next_id == 600 and loaded.clean and loaded.damaged == 0


def test_a_damaged_segment_is_read_up_to_the_damage_and_the_ids_missing_are_a_hole(tmp_path):
    files = SegmentFiles(str(tmp_path), "off", segment_events=32)
    files.begin(0, UNWRITTEN)
    events = [(i, time.time(), "t", b'{"i":%d}' % i) for i in range(100)]
    for at in range(0, 100, 8):
        files.write(events[at : at + 8], keep_from=0)
    files.end(100)
    second = sorted(name for name in os.listdir(tmp_path) if name.endswith(".seg"))[1]
    with open(os.path.join(tmp_path, second), "r+b") as file:  # ids 32..63, records of 8
        file.seek(-100, os.SEEK_END)  # in its last record: 56..63
        file.write(b"X")
    loaded = SegmentFiles(str(tmp_path)).load(1000, 600.0, now=time.time())
    assert [event[0] for event in loaded.events] == list(range(56)) + list(range(64, 100))
    assert loaded.damaged == 1 and loaded.clean and loaded.next_id == 100
    window = ReplayWindow.restored(1000, 600.0, loaded.events, loaded.next_id)
    assert window.holes == [(56, 63)] and len(window) == 92 and window.next_id == 100


def test_a_client_that_comes_while_the_sink_reads_its_window_waits_for_it(tmp_path):
    options = {"replay_dir": str(tmp_path), "heartbeat": 5.0}

    async def scenario():
        async with served_sink(options) as (sink, _url):
            await feed(sink, 0, 30)
        server = ApiServer(api={"listen": "127.0.0.1:0"})
        sink = SseSink("sse", options, "gw", server)
        await server.start()
        client = SseClient(f"http://127.0.0.1:{server.port}/sse", {"Last-Event-ID": "0"})
        connecting = asyncio.create_task(client.connect())  # before the sink runs at all
        await eventually(lambda: sink.counters["clients_before_open"] == 1, 5, "the request")
        task = asyncio.create_task(sink.run())
        await connecting
        await client.wait_for(lambda c: len(c.readings) == 30)
        await client.close()
        await sink.stop()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await server.stop()
        return client

    client = asyncio.run(scenario())
    assert client.status == 200 and [r["seq"] for r in client.readings] == list(range(30))
    assert json.loads(client.named("gap")[0]["data"])["last_event_id"] == 0


def test_a_full_disk_holds_readings_back_and_loses_none_when_room_comes_back(tmp_path):
    mount = str(tmp_path / "small")
    options = {"replay_dir": mount, "retry": {"base": 0.05, "cap": 0.2}}

    async def scenario():
        async with served_sink(options) as (sink, url):
            client = await SseClient(url).connect()
            await feed(sink, 0, 100)
            await written(sink)
            fill(mount)
            await feed(sink, 100, 50)  # sent live, then their write fails
            await eventually(lambda: sink.stats()["window"]["error"], 10, "the write to fail")
            for seq in range(150, 200):  # held back while the disk is full
                sink.offer(reading(seq), {})
            await eventually(lambda: sink.last_error, 10, "the sink to refuse them")
            await asyncio.wait_for(client.ended.wait(), 10)  # a failed sink closes its clients
            during = sink.stats()
            os.remove(os.path.join(mount, "filler"))
            await eventually(lambda: sink.depth == 0, 20, "the sink to take the rest")
            await written(sink)
            await client.connect()  # resumes, as a browser does
            await client.wait_for(lambda c: len(c.readings) == 200)
            await client.close()
        async with served_sink(options) as (sink, _url):
            after = sink.stats()["window"]
        return client, during, after

    with tmpfs(mount, "1m"):
        client, during, after = asyncio.run(scenario())
    assert "No space left on device" in during["last_error"] and during["failures"] >= 1
    assert "No space left on device" in during["window"]["error"]
    assert during["queue_depth"] == 50  # held back in the queue, not lost
    assert [r["seq"] for r in client.readings] == list(range(200))
    got = ids(client)
    assert got == list(range(got[0], got[0] + 200)) and client.named("gap") == []
    assert after["events"] == 200 and after["first_id"] == got[0]  # every one of them on disk


def test_a_second_sink_on_the_same_directory_is_refused_and_says_why(tmp_path):
    options = {"replay_dir": str(tmp_path)}

    async def scenario():
        async with served_sink(options):
            server = ApiServer(api={"listen": "127.0.0.1:0"})
            other = SseSink("sse", options, "gw", server)
            task = asyncio.create_task(other.run())
            await eventually(lambda: other.last_error, 5, "the second sink to fail")
            await other.stop()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            return other

    other = asyncio.run(scenario())
    assert not other.connected
    assert "in use by another sink or process" in other.last_error
    assert os.path.join(tmp_path, "sse") in other.last_error


# -- a real gateway process: stopped, or killed, and started again -----------------------------

CONFIG = """
[gateway]
id = "sse-restart"
data_dir = "./var"

[api]
listen = "127.0.0.1:{api_port}"

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
queue = 10000
"""


def counter_lines(start: int):
    return lambda index: b'{"n":%d}\n' % (start + index)


def numbers(client: SseClient) -> list[int]:
    return [r["data"]["n"] for r in client.readings]


class Rig:
    """A gateway process with one pty device and an SSE sink, started again at will."""

    def __init__(self, tmp_path):
        self.writers = DeviceWriters(1, str(tmp_path))
        self.port = free_port()
        config = CONFIG.format(api_port=self.port, device=self.writers.paths[0])
        self.gateway = GatewayProcess(config, str(tmp_path))
        self.url = f"http://127.0.0.1:{self.port}/sse"

    def write(self, start: int, count: int) -> threading.Thread:
        thread = threading.Thread(
            target=self.writers.run, args=(count, 2000.0, counter_lines(start))
        )
        thread.start()
        return thread

    def close(self) -> None:
        self.gateway.kill()
        self.writers.close()


@pytest.fixture
def rig(tmp_path):
    made = Rig(tmp_path)
    yield made
    made.close()


async def first_run(rig: Rig) -> tuple[SseClient, SseClient]:
    """1,000 readings at 2,000/s; `away` is cut off after 300 of them, `witness` sees all."""
    rig.gateway.start(rig.port)
    witness = await SseClient(rig.url).connect()
    away = await SseClient(rig.url).connect()
    writing = rig.write(0, 1000)
    await away.wait_for(lambda c: len(c.readings) >= 300)
    await away.cut()
    await witness.wait_for(lambda c: len(c.readings) == 1000)
    await asyncio.to_thread(writing.join)
    return away, witness


async def second_run(rig: Rig, *clients: SseClient) -> None:
    """Start again; the clients resume; 500 more readings, live."""
    await asyncio.to_thread(rig.gateway.start, rig.port)
    for client in clients:
        await client.connect()
    writing = rig.write(1000, 500)
    for client in clients:
        await client.wait_for(lambda c: numbers(c)[-1:] == [1499], 30)
        await client.close()
    await asyncio.to_thread(writing.join)


def test_a_gateway_stopped_and_started_again_resumes_every_client_exactly(rig):
    async def scenario():
        away, witness = await first_run(rig)
        assert await asyncio.to_thread(rig.gateway.stop) == 0
        await witness.cut()
        await second_run(rig, away, witness)
        return away, witness

    away, witness = asyncio.run(scenario())
    for client in (away, witness):
        assert numbers(client) == list(range(1500)) and client.named("gap") == []
        got = ids(client)
        assert got == list(range(got[0], got[0] + 1500))  # ids go on across the restart
    assert "restored after a clean stop" in rig.gateway.log()


def test_after_kill_9_at_most_the_unwritten_batch_is_missing_and_a_gap_says_so(rig):
    async def scenario():
        away, witness = await first_run(rig)
        rig.gateway.process.kill()  # SIGKILL: no stop record, maybe a batch unwritten
        await asyncio.to_thread(rig.gateway.process.wait, 10)
        rig.gateway._log.close()
        await witness.cut()
        seen = int(witness.last_id)
        await second_run(rig, away, witness)
        return away, witness, seen

    away, witness, seen = asyncio.run(scenario())
    for client in (away, witness):
        events = [e for e in client.events if e["event"] in ("reading", "gap")]
        gaps = [at for at, event in enumerate(events) if event["event"] == "gap"]
        assert len(gaps) == 1, gaps  # exactly one gap, where the crash was: never a silent hole
        before, gap, after = events[: gaps[0]], events[gaps[0]], events[gaps[0] + 1 :]
        detail = json.loads(gap["data"])
        assert [json.loads(e["data"])["data"]["n"] for e in after] == list(range(1000, 1500))
        assert int(after[0]["id"]) == detail["next_id"]
        assert detail["next_id"] == detail["lost_after"] + UNWRITTEN + 1
        got = [json.loads(e["data"])["data"]["n"] for e in before]
        assert got == list(range(len(got)))  # nothing twice, nothing skipped before the gap
        if client is away:  # what it missed came from the disk, up to the last id written
            assert int(before[-1]["id"]) == detail["lost_after"] and len(got) >= 300
        assert detail["lost_after"] <= seen < detail["next_id"]
    on_disk_last = json.loads(away.named("gap")[0]["data"])["lost_after"]
    lost = seen - on_disk_last  # handed out before the kill, never written: the last batch
    assert 0 <= lost < UNWRITTEN
    assert "restored after a crash" in rig.gateway.log()


def test_a_sink_rebuilt_or_disabled_through_the_api_keeps_its_window_and_ids(rig):
    sink_url = f"http://127.0.0.1:{rig.port}/api/v1/sinks/events"

    async def scenario():
        away, witness = await first_run(rig)
        await witness.close()
        changes = [{"heartbeat": 5.0}, {"enabled": False}, {"enabled": True}]
        answers = [await asyncio.to_thread(call, sink_url, "PATCH", None, body) for body in changes]
        opened = lambda: call(sink_url).json()["connected"]  # noqa: E731
        await asyncio.to_thread(wait_until, opened, 10, "the sink to open again")
        await away.connect()
        writing = rig.write(1000, 500)
        await away.wait_for(lambda c: numbers(c)[-1:] == [1499], 30)
        await away.close()
        await asyncio.to_thread(writing.join)
        return away, answers

    away, answers = asyncio.run(scenario())
    assert [answer.status for answer in answers] == [200, 200, 200], answers[0].body
    assert numbers(away) == list(range(1500)) and away.named("gap") == []
    got = ids(away)
    assert got == list(range(got[0], got[0] + 1500))
