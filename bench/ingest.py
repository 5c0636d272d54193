"""Ingest path alone: pty-sized chunks through the serial source, parser, Ingest and a queue.

No I/O: 4 KiB chunks of JSON lines go through SerialSource._receive (split, backpressure
look, decode), the JSON parser, Ingest (envelope, preset steps, seq) and an MQTT sink's
memory queue, which is drained as a sink would. Prints one JSON object with µs per reading.

    python bench/ingest.py --readings 200000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gateway.config import presets  # noqa: E402
from gateway.ingest import Ingest, resolve_routes  # noqa: E402
from gateway.sinks.mqtt import MqttSink  # noqa: E402
from gateway.sources.serial import SerialSource  # noqa: E402
from gateway.store.sequences import SequenceStore  # noqa: E402
from tests.support.e2e import counter_lines  # noqa: E402

CHUNK = 4095  # what one read of a pty returns at most


async def run(count: int) -> dict:
    data = counter_lines(count)
    chunks = [data[start : start + CHUNK] for start in range(0, len(data), CHUNK)]
    sink = MqttSink("mqtt", {"type": "mqtt", "url": "mqtt://127.0.0.1:1"}, "bench")
    preset = presets.resolve(None, "basic")
    sequences = SequenceStore(os.path.join(tempfile.mkdtemp(), "sequences.json"))
    source = {"name": "dev-0", "stream": "bench", "format": "json"}
    ingest = Ingest(source, preset, resolve_routes(preset, {"mqtt": sink}), "bench", sequences)
    serial = SerialSource(
        {"name": "dev-0", "port": "/dev/null"},
        ingest.on_line,
        room=ingest.room,
    )
    queue = sink.queue
    started = time.perf_counter()
    for chunk in chunks:
        serial._receive(chunk, time.time())
        queue.take_now(CHUNK)
        queue.confirm(CHUNK)
    elapsed = time.perf_counter() - started
    return {
        "bench": "ingest",
        "readings": count,
        "queued": ingest.counters["readings"],
        "us_per_reading": round(elapsed / count * 1e6, 2),
        "readings_per_second": round(count / elapsed),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readings", type=int, default=200_000)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args.readings))))


if __name__ == "__main__":
    main()
