"""Benchmark: MqttSink publish rate into a real Mosquitto, counted by an independent subscriber.

Prints JSON: messages per second at QoS 0 and at QoS 1 (every PUBACK awaited before a batch
counts as delivered), one small JSON reading per message, counted by mosquitto_sub (a separate
C process subscribed at QoS 1). The clock runs from the first offer() until both the sink has
every confirmation and the subscriber has every message. Median and best of --repeat runs.

    .venv/bin/python bench/mqtt_client.py [--count 100000] [--max-batch N] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import logging
import os
import pstats
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gateway.sinks.mqtt import DEFAULT_MAX_BATCH, MqttSink  # noqa: E402
from tests.support.broker import Broker  # noqa: E402

READY_TOPIC = "bench/ready"


def readings(count: int) -> list[dict]:
    return [
        {
            "gateway": "bench",
            "device": f"dev-{index % 4}",
            "stream": "env",
            "seq": index,
            "ts": 1764236400.0 + index / 1e4,
            "data": {"temperature": 21.5, "humidity": 40.2},
        }
        for index in range(count)
    ]


class Counter:
    """mosquitto_sub in its own process: exits once it has received every expected message."""

    def __init__(self, port: int, expected: int):
        self.output = tempfile.NamedTemporaryFile(prefix="mqtt-bench-", suffix=".txt")  # noqa: SIM115
        binary = shutil.which("mosquitto_sub") or "/usr/bin/mosquitto_sub"
        # The retained READY_TOPIC message arrives right after SUBACK: that is the ready signal.
        self.process = subprocess.Popen(
            [binary, "-h", "127.0.0.1", "-p", str(port), "-q", "1", "-C", str(expected + 1)]
            + ["-t", READY_TOPIC, "-t", "bench/data/#"],
            stdout=self.output,
            stderr=subprocess.DEVNULL,
        )

    async def wait_ready(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while os.path.getsize(self.output.name) == 0:
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError("mosquitto_sub did not subscribe")
            await asyncio.sleep(0.01)  # an external process: polling its output is all we have

    async def wait_done(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(asyncio.to_thread(self.process.wait), timeout)
            return self.process.returncode == 0
        except asyncio.TimeoutError:
            self.process.kill()
            return False

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.output.close()


async def wait_until(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.001)
    return True


async def run_once(broker: Broker, qos: int, count: int, max_batch: int | None) -> dict:
    options = {
        "type": "mqtt",
        "url": broker.url,
        "qos": qos,
        "topic": "bench/data/{device}/{stream}",
        "availability": False,
        "queue_size": count + 1,
    }
    if max_batch:
        options["max_batch"] = max_batch
    sink = MqttSink("bench", options, "bench")
    items = readings(count)
    task = asyncio.create_task(sink.run())
    await wait_until(lambda: sink.connected, 10)
    await sink.publish_raw(READY_TOPIC, b"ready", qos=1, retain=True)
    counter = Counter(broker.port, count)
    try:
        await counter.wait_ready()
        started = time.perf_counter()
        route: dict = {}
        for reading in items:
            sink.offer(reading, route)
        confirmed = await wait_until(lambda: sink.counters["delivered"] >= count, 120)
        confirmed_at = time.perf_counter()
        received = await counter.wait_done(120)
        received_at = time.perf_counter()
    finally:
        counter.close()
        await sink.stop()
        task.cancel()
    elapsed = max(confirmed_at, received_at) - started
    return {
        "qos": qos,
        "messages": count,
        "all_confirmed": confirmed,
        "all_received": received,
        "acked": sink.counters["acked"],
        "seconds": round(elapsed, 3),
        "msg_per_s": round(count / elapsed),
    }


async def main(args: argparse.Namespace) -> dict:
    broker = Broker().start()
    try:
        results = {}
        for qos in (0, 1):
            runs = [
                await run_once(broker, qos, args.count, args.max_batch) for _ in range(args.repeat)
            ]
            rates = sorted(run["msg_per_s"] for run in runs)
            results[f"qos{qos}"] = {
                "msg_per_s_median": statistics.median(rates),
                "msg_per_s_best": rates[-1],
                "all_confirmed": all(run["all_confirmed"] for run in runs),
                "all_received": all(run["all_received"] for run in runs),
                "runs": runs,
            }
        return results
    finally:
        broker.close()


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--max-batch", type=int, help="readings per send() (sink default)")
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs per QoS (the machine is shared)"
    )
    parser.add_argument("--profile", action="store_true", help="cProfile, top 25 to stderr")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    profiler = cProfile.Profile() if args.profile else None
    if profiler:
        profiler.enable()
    results = asyncio.run(main(args))
    if profiler:
        profiler.disable()
        pstats.Stats(profiler, stream=sys.stderr).sort_stats("tottime").print_stats(25)
    summary = {
        "benchmark": "mqtt_client",
        "python": sys.version.split()[0],
        "messages": args.count,
        "max_batch": args.max_batch or DEFAULT_MAX_BATCH,
        "cpus": os.cpu_count(),
        **results,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    cli()
