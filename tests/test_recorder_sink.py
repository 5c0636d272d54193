"""Recorder sink on real files: rotation keeps every reading once, kill -9 leaves whole lines."""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import signal
import subprocess
import sys
import threading

import pytest

from gateway.config import ConfigError, loads
from gateway.sinks.recorder import RecorderSink, Recording, compress, recording_files
from gateway.sources.simulator import DeviceUnplugged, VirtualSerialDevice
from tests.support.api import gateway_in_loop
from tests.support.broker import free_port
from tests.support.e2e import REPO_ROOT, DeviceWriters
from tests.support.waiting import eventually, wait_until

pytestmark = pytest.mark.timeout(120)


def reading(seq: int) -> dict:
    return {
        "gateway": "gw",
        "device": f"dev-{seq % 3}",
        "stream": "env",
        "seq": seq,
        "ts": 1764236400.0 + seq / 1000,
        "dts": seq * 10,
        "data": {"t": seq * 0.5, "label": f'a,"b" {seq}'},
    }


def record(directory, count: int, **options) -> RecorderSink:
    sink = RecorderSink("rec", {"path": str(directory), "queue_size": count, **options}, "gw")

    async def main():
        task = asyncio.create_task(sink.run())
        for seq in range(count):
            sink.offer(reading(seq), {})
        while sink.depth:
            await asyncio.sleep(0.01)  # the sink's own task writes: no event says "empty"
        await sink.stop()
        task.cancel()

    asyncio.run(main())
    return sink


@pytest.mark.parametrize(("fmt", "packed"), [("jsonl", False), ("csv", False), ("jsonl", True)])
def test_100000_readings_rotated_by_size_are_in_the_files_exactly_once(tmp_path, fmt, packed):
    sink = record(tmp_path, 100_000, format=fmt, rotate_bytes=256 * 1024, gzip=packed)
    files = recording_files([str(tmp_path)])
    assert len(files) == len(sink.files) == sink.counters["files"] > 20
    suffix = f".{fmt}.gz" if packed else f".{fmt}"
    assert all(path.endswith(suffix) for path in files)
    assert sorted(os.listdir(tmp_path)) == [os.path.basename(path) for path in files]
    for path in files[:-1]:  # each rotated as soon as it passed the size, by one batch at most
        size = os.path.getsize(path[:-3] if packed else path) if not packed else None
        if size is not None:
            assert 256 * 1024 <= size < 256 * 1024 + 500 * 200
    recording = Recording([str(tmp_path)])
    assert list(recording) == [reading(seq) for seq in range(100_000)]
    assert recording.skipped == 0
    assert os.path.basename(files[0]).startswith("gw_rec_")


def test_a_partial_last_line_is_skipped_by_readers(tmp_path):
    sink = record(tmp_path, 10, rotate_bytes=1 << 20)
    with open(sink.files[0], "ab") as file:
        file.write(b'{"gateway": "gw", "dev')  # what a power cut may leave
    recording = Recording(sink.files)
    assert list(recording) == [reading(seq) for seq in range(10)]
    assert recording.skipped == 1


def test_a_file_left_both_plain_and_compressed_is_read_once(tmp_path):
    sink = record(tmp_path, 10)
    plain = sink.files[0]
    with open(plain, "rb") as source, gzip.open(plain + ".gz", "wb") as packed:
        packed.write(source.read())  # as if the crash came between compressing and unlinking
    assert recording_files([str(tmp_path)]) == [plain]
    assert compress(plain) == plain + ".gz" and not os.path.exists(plain)
    assert list(Recording([str(tmp_path)])) == [reading(seq) for seq in range(10)]


def test_rotation_by_time_starts_new_files(tmp_path):
    sink = RecorderSink("rec", {"path": str(tmp_path), "rotate_every": 0.05}, "gw")

    async def main():
        task = asyncio.create_task(sink.run())
        for seq in range(30):
            sink.offer(reading(seq), {})
            await asyncio.sleep(0.01)  # the clock rotation follows: readings spread over time
        while sink.depth:
            await asyncio.sleep(0.01)
        await sink.stop()
        task.cancel()

    asyncio.run(main())
    assert sink.counters["rotations"] >= 3
    assert list(Recording([str(tmp_path)])) == [reading(seq) for seq in range(30)]


def gateway_config(directory, device_path: str, api_port: int) -> str:
    return f"""
[gateway]
id = "rec"
data_dir = "{directory}/var"

[api]
listen = "127.0.0.1:{api_port}"

[[sources]]
name = "dev-0"
port = "{device_path}"
format = "json"
stream = "counter"
preset = "p"

[presets.p]
extends = "basic"
buffer = "none"
routes = [{{ sink = "rec" }}]

[sinks.rec]
type = "recorder"
path = "{directory}/recordings"
rotate_bytes = "64KB"
fsync_every = "0s"

[sinks.copy]
type = "recorder"
path = "{directory}/copy"
format = "csv"
"""


def gateway_command(*arguments: str) -> list[str]:
    return [sys.executable, "-m", "gateway", *arguments]


def test_kill_9_mid_write_leaves_whole_lines_and_replay_reproduces_the_stream(
    tmp_path, gateway_process
):
    api_port = free_port()
    writers = DeviceWriters(1, str(tmp_path))
    text = gateway_config(tmp_path, writers.paths[0], api_port)
    gateway = gateway_process(text)
    recordings = str(tmp_path / "recordings")

    def write() -> None:
        try:
            writers.run(40_000, 4_000)
        except (DeviceUnplugged, OSError):
            pass  # the test pulled the device (closing its fd) once the gateway was dead

    writing = threading.Thread(target=write)
    try:
        gateway.start(api_port)
        writing.start()
        # Killed while lines still pour in, once a few files were rotated.
        wait_until(lambda: len(os.listdir(recordings)) >= 4, 30, "rotated files")
        gateway.process.send_signal(signal.SIGKILL)
        gateway.process.wait(10)
        assert writing.is_alive(), "the writer finished before the kill"
        writers.close()  # nobody reads the pty any more: the writer would wait for ever
        writing.join()
        recording = Recording([recordings])
        recorded = list(recording)
        assert recording.skipped <= 1  # at most the last line of the last file
        counters = [r["data"]["n"] for r in recorded]
        assert counters == list(range(len(counters))) and len(counters) > 1000
        assert [r["seq"] for r in recorded] == list(range(recorded[0]["seq"], len(recorded)))
        env = {**os.environ, "PYTHONPATH": REPO_ROOT}
        printed = subprocess.run(
            gateway_command("replay", recordings, "--stdout"),
            capture_output=True, check=True, env=env, cwd=str(tmp_path), timeout=60,
        )  # fmt: skip
        assert [json.loads(line) for line in printed.stdout.splitlines()] == recorded
        replay = ("replay", "-c", gateway.config_path, recordings, "--to", "copy", "--fast")
        sent = subprocess.run(
            gateway_command(*replay),
            capture_output=True, text=True, env=env, cwd=str(tmp_path), timeout=60,
        )  # fmt: skip
        assert sent.returncode == 0, sent.stderr
        assert f"replayed {len(recorded)} readings to copy" in sent.stdout
        assert list(Recording([str(tmp_path / "copy")])) == recorded
    finally:
        if writing.is_alive():
            writing.join()
        writers.close()


def test_replay_names_an_unknown_sink(tmp_path):
    config = tmp_path / "gateway.toml"
    config.write_text('[sinks.udp]\ntype = "udp"\ntargets = ["127.0.0.1:9"]\n')
    record(tmp_path / "rec", 3)
    done = subprocess.run(
        gateway_command("replay", "-c", str(config), str(tmp_path / "rec"), "--to", "nope"),
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": REPO_ROOT}, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert "unknown sink 'nope'; known sinks: udp" in done.stderr


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('format = "xml"', "sinks.rec.format: expected"),
        ('rotate_every = "soon"', "sinks.rec.rotate_every: expected"),
        ("gzip = 1", "sinks.rec.gzip: expected"),
        ('name = "a b"', "sinks.rec.name: expected"),
    ],
)
def test_bad_options_name_the_key(table, message):
    with pytest.raises(ConfigError) as raised:
        loads(f'[sinks.rec]\ntype = "recorder"\n{table}\n', environ={})
    assert any(line.startswith(message) for line in raised.value.errors), raised.value.errors


def test_the_research_preset_records_every_reading_written_ahead(tmp_path):
    device = VirtualSerialDevice()
    text = f"""
[gateway]
id = "lab"
data_dir = "{tmp_path}/var"
[api]
listen = "127.0.0.1:0"
[[sources]]
name = "bench"
port = "{device.path}"
preset = "research"
[sinks.rec]
type = "recorder"
path = "{tmp_path}/recordings"
"""

    async def main():
        async with gateway_in_loop(text) as gateway:
            ingest, sink = gateway.ingests[0], gateway.sinks["rec"]
            for index in range(500):
                ingest.on_line(json.dumps({"n": index}), 1764236400.0 + index)
            assert await ingest.settle()  # on disk before it is recorded: write-ahead
            await eventually(lambda: sink.counters["delivered"] == 500, 10, "recorded")
            return sink.stats()["buffer"]["policy"]

    try:
        policy = asyncio.run(main())
    finally:
        device.close()
    assert policy == "write_ahead"
    recorded = list(Recording([str(tmp_path / "recordings")]))
    assert [r["data"]["n"] for r in recorded] == list(range(500))
    assert recorded[0]["ts"] == 1764236400.0 and recorded[0]["gateway"] == "lab"
