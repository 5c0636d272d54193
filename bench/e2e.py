"""End-to-end benchmark: N pty devices → gateway process → MQTT, UDP and WebSocket receivers.

Prints one JSON object per run: offered and delivered readings per sink, loss, readings/s,
latency p50/p99 per sink (serial write → receiver), the gateway's peak RSS and CPU seconds.

    python bench/e2e.py --rate 1000 --seconds 10
    python bench/e2e.py --preset high_throughput --rate 50000 --seconds 10
    python bench/e2e.py --find-max            # highest rate with zero loss
    python bench/e2e.py --outage 60           # broker stopped 60 s mid-run (5,000/s, basic)

--outage SECONDS stops Mosquitto (persistent, with a persistent-session subscriber, so the
broker loses nothing itself) for SECONDS after --seconds of traffic, starts it again on the
same port, and goes on for --seconds more. It reports per sink the unique readings delivered,
loss, duplicates and whether each device's order was kept, plus the time until the MQTT sink
reconnected and until its backlog drained, the gateway's peak RSS and its disk writes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gateway.config import presets  # noqa: E402
from tests.support.broker import Broker, PersistentBroker, ProcessSubscriber, free_port  # noqa: E402  # noqa: E402
from tests.support.e2e import (  # noqa: E402
    DeviceWriters,
    GatewayProcess,
    Receivers,
    free_udp_port,
    percentile,
)

SINK_KINDS = ("mqtt", "udp", "websocket")


SINK_NAMES = {"mqtt": "mqtt", "udp": "udp", "websocket": "live"}


def inline_table(values: dict) -> str:
    """A small dict as a TOML inline table (strings, numbers, booleans, nested tables)."""
    parts = []
    for key, value in values.items():
        if isinstance(value, dict):
            text = inline_table(value)
        elif isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, str):
            text = json.dumps(value)
        else:
            text = repr(value)
        parts.append(f"{key} = {text}")
    return "{ " + ", ".join(parts) + " }"


def bench_routes(preset: str) -> list[dict]:
    """The preset's own routes (batching, encoding, QoS), to all three sinks by name."""
    routes = {}
    for route in presets.resolve(None, preset)["routes"]:
        kind = route.get("type") or route.get("sink")
        options = {k: v for k, v in route.items() if k not in ("type", "sink") and v is not None}
        routes[kind] = options
    batch = next((r["batch"] for r in routes.values() if r.get("batch")), None)
    for kind in SINK_NAMES:
        routes.setdefault(kind, {"batch": batch} if batch else {})
    return [{"sink": SINK_NAMES[kind], **options} for kind, options in routes.items()]


def bench_config(
    preset: str,
    paths: list[str],
    broker_port: int,
    udp_port: int,
    api_port: int,
    buffer: str | None = None,
    framing: str = "lines",
) -> str:
    # A line device's readings need a stream name; a COBS device names its streams in HELLO.
    framed = 'stream = "bench"' if framing == "lines" else f'framing = "{framing}"'
    sources = "".join(
        f'\n[[sources]]\nname = "dev-{i}"\nport = "{path}"\n{framed}\npreset = "bench"\n'
        for i, path in enumerate(paths)
    )
    routes = ",\n  ".join(inline_table(route) for route in bench_routes(preset))
    return f"""
[gateway]
id = "bench"
data_dir = "./var"

[api]
listen = "127.0.0.1:{api_port}"
{sources}
[presets.bench]
extends = "{preset}"
{f'buffer = "{buffer}"' if buffer else ""}
routes = [
  {routes},
]

[sinks.mqtt]
type = "mqtt"
url = "mqtt://127.0.0.1:{broker_port}"
qos = 1

[sinks.udp]
type = "udp"
targets = ["127.0.0.1:{udp_port}"]

[sinks.live]
type = "websocket"
queue = 1000000
"""


def bench_receivers(udp_port: int, api_port: int, broker_port: int, expected: int) -> Receivers:
    """Started receivers for the three bench sinks, each stopping once it has `expected`."""
    receivers = Receivers(
        udp_port=udp_port,
        websocket_url=f"ws://127.0.0.1:{api_port}/ws",
        mqtt_port=broker_port,
        mqtt_topic="gw/bench/#",
        expected=expected,
    )
    receivers.start()
    return receivers


def run_once(preset: str, devices: int, rate: float, seconds: float) -> dict:
    """One run at `rate` readings/s in all; returns the figures as a dict."""
    directory = tempfile.mkdtemp(prefix="bench-e2e-")
    broker = Broker().start()
    writers = DeviceWriters(devices, directory)
    udp_port, api_port = free_udp_port(), free_port()
    gateway = GatewayProcess(
        bench_config(preset, writers.paths, broker.port, udp_port, api_port), directory
    )
    per_device = max(1, int(rate * seconds / devices))
    offered = per_device * devices
    try:
        gateway.start(api_port)
        receivers = bench_receivers(udp_port, api_port, broker.port, offered)
        started = time.time()
        write_seconds = writers.run(per_device, rate / devices)
        results = receivers.finish(timeout=max(30.0, seconds * 3))
        resources = gateway.resources()
        gateway.stop()
    finally:
        writers.close()
        broker.close()
    report = {
        "preset": preset,
        "devices": devices,
        "rate_offered": rate,
        "seconds": seconds,
        "write_seconds": round(write_seconds, 3),
        "offered": offered,
        **resources,
        "sinks": {},
    }
    for kind in SINK_KINDS:
        report["sinks"][kind] = summarise(results.get(kind, []), offered, started)
    report["zero_loss"] = all(sink["lost"] == 0 for sink in report["sinks"].values())
    return report


def summarise(received: list, offered: int, started: float) -> dict:
    unique = {(device, seq) for device, _stream, seq, *_rest in received}
    latencies = [
        (at - data["sent"]) * 1000 for _d, _s, _q, data, _ts, at, _r in received if "sent" in data
    ]
    last = max((at for *_rest, at, _r in received), default=started)
    summary = {
        "delivered": len(unique),
        "duplicates": len(received) - len(unique),
        "lost": offered - len(unique),
        "readings_per_second": round(len(unique) / max(1e-9, last - started)),
    }
    if latencies:  # lines carry their write time; COBS devices' float32 values cannot
        summary["latency_ms_p50"] = round(percentile(latencies, 0.50), 3)
        summary["latency_ms_p99"] = round(percentile(latencies, 0.99), 3)
    return summary


def find_max(preset: str, devices: int, seconds: float, start: float, ceiling: float) -> dict:
    """Double the rate until a run loses readings or falls behind, then bisect twice."""
    best, failed = None, None
    rate = start
    while rate <= ceiling:
        report = probe(preset, devices, rate, seconds)
        if report is None:
            failed = rate
            break
        best = report
        rate *= 2
    for _ in range(2):
        if best is None or failed is None:
            break
        rate = (best["rate_offered"] + failed) / 2
        report = probe(preset, devices, rate, seconds)
        if report is None:
            failed = rate
        else:
            best = report
    return {"find_max": True, "preset": preset, "best_zero_loss": best}


def probe(preset: str, devices: int, rate: float, seconds: float) -> dict | None:
    """One run; its report when it kept up (≥ 90 % of the rate) with zero loss, else None."""
    report = run_once(preset, devices, rate, seconds)
    achieved = min(sink["readings_per_second"] for sink in report["sinks"].values())
    kept_up = report["zero_loss"] and achieved >= 0.9 * rate
    progress = {"probe_rate": rate, "zero_loss": report["zero_loss"], "achieved": achieved}
    print(json.dumps(progress), file=sys.stderr, flush=True)
    return report if kept_up else None


def run_outage(
    preset: str, buffer: str | None, devices: int, rate: float, lead: float, outage: float
) -> dict:
    """`lead` s of traffic, the broker stopped for `outage` s, `lead` s more; then drain."""
    directory = tempfile.mkdtemp(prefix="bench-outage-")
    broker = PersistentBroker().start()
    subscriber = ProcessSubscriber(broker.port, "gw/bench/+/+")
    writers = DeviceWriters(devices, directory)
    udp_port, api_port = free_udp_port(), free_port()
    config = bench_config(preset, writers.paths, broker.port, udp_port, api_port, buffer)
    gateway = GatewayProcess(config, directory)
    per_device = max(1, int(rate * (2 * lead + outage) / devices))
    offered = per_device * devices
    timings: dict[str, float] = {}
    try:
        gateway.start(api_port)
        receivers = Receivers(
            udp_port=udp_port, websocket_url=f"ws://127.0.0.1:{api_port}/ws", expected=offered
        )
        receivers.start()
        written: list[float] = []
        writing = threading.Thread(
            target=lambda: written.append(writers.run(per_device, rate / devices))
        )
        writing.start()
        time.sleep(lead)  # the fault's schedule
        io_before, commits_before = process_io(gateway), store_commits(gateway)
        broker.stop()
        stopped = time.monotonic()
        time.sleep(max(0.0, stopped + outage - time.monotonic()))
        broker.start()
        returned = time.monotonic()
        timings["reconnect_seconds"] = seconds_until(gateway, returned, mqtt_connected)
        timings["drain_seconds"] = seconds_until(gateway, returned, mqtt_backlog_drained)
        io_after, commits_after = process_io(gateway), store_commits(gateway)
        window = time.monotonic() - stopped
        writing.join()
        gateway.wait_for(lambda s: s["totals"]["delivered"]["mqtt"] >= offered, 120)
        wait_for_lines(subscriber, offered, 120)
        results = receivers.finish(timeout=60)
        results["mqtt"] = mqtt_received(subscriber)
        stats = gateway.health()["stats"]
        resources = gateway.resources()
        gateway.stop()
    finally:
        subscriber.close()
        writers.close()
        broker.close()
        gateway.kill()
    mqtt_buffer = stats["sinks"]["mqtt"]["buffer"]
    report = {
        "mode": "outage",
        "preset": preset,
        "buffer": mqtt_buffer["policy"],
        "fsync": stats["store"]["fsync"],
        "devices": devices,
        "rate_offered": rate,
        "outage_seconds": outage,
        "seconds_before_and_after": lead,
        "write_seconds": round(written[0], 1),
        "offered": offered,
        # Sinks run with the default breaker: the first probe after the broker returned can
        # wait up to its reset_after.
        "breaker": "default: open after 5 failures, probe every 30 s",
        **{key: round(value, 2) for key, value in timings.items()},
        "drain_after_reconnect_seconds": round(
            timings["drain_seconds"] - timings["reconnect_seconds"], 2
        ),
        **resources,
        "disk_during_outage_and_drain": disk_rates(
            io_before, io_after, commits_after - commits_before, window
        ),
        "mqtt_buffer_at_end": {k: mqtt_buffer.get(k) for k in ("depth", "drops", "spilled")},
        "sinks": {kind: outage_summary(results.get(kind, []), offered) for kind in SINK_KINDS},
    }
    report["zero_loss"] = all(sink["lost"] == 0 for sink in report["sinks"].values())
    report["order_kept"] = all(sink["order_kept"] for sink in report["sinks"].values())
    return report


def mqtt_connected(stats: dict) -> bool:
    return stats["sinks"]["mqtt"]["connected"]


def mqtt_backlog_drained(stats: dict) -> bool:
    """Nothing left on disk: the sink is back to memory, only live readings waiting."""
    buffer = stats["sinks"]["mqtt"]["buffer"]
    return buffer["disk"] == 0 and buffer["depth"] < 1000


def seconds_until(gateway: GatewayProcess, since: float, predicate) -> float:
    gateway.wait_for(predicate, timeout=600)
    return time.monotonic() - since


def process_io(gateway: GatewayProcess) -> dict[str, int]:
    """The gateway's write_bytes (reached the block layer) and write calls (syscw)."""
    with open(f"/proc/{gateway.process.pid}/io") as io:
        fields = dict(line.split(": ") for line in io.read().splitlines())
    return {"write_bytes": int(fields["write_bytes"]), "syscw": int(fields["syscw"])}


def store_commits(gateway: GatewayProcess) -> int:
    return gateway.health()["stats"]["store"]["commits"]


def disk_rates(before: dict, after: dict, commits: int, seconds: float) -> dict:
    written = after["write_bytes"] - before["write_bytes"]
    return {
        "seconds": round(seconds, 1),
        "mb_per_second": round(written / seconds / 1e6, 3),
        "write_calls_per_second": round((after["syscw"] - before["syscw"]) / seconds),
        "commits_per_second": round(commits / seconds, 1),
        "note": "write calls include the sockets (UDP, WebSocket) and the log",
    }


def wait_for_lines(subscriber: ProcessSubscriber, count: int, timeout: float) -> int:
    """Poll mosquitto_sub's output (another process) until `count` lines or timeout."""
    deadline = time.monotonic() + timeout
    while True:
        with open(subscriber.output.name, "rb") as output:
            lines = sum(chunk.count(b"\n") for chunk in iter(lambda: output.read(1 << 20), b""))
        if lines >= count or time.monotonic() > deadline:
            return lines
        time.sleep(0.5)


def mqtt_received(subscriber: ProcessSubscriber) -> list:
    """mosquitto_sub's "topic payload" lines as receiver tuples (no arrival times)."""
    received = []
    with open(subscriber.output.name) as lines:
        for line in lines:
            topic, _, payload = line.rstrip("\n").partition(" ")
            if topic == ProcessSubscriber.READY:
                continue
            for r in json.loads(payload) if payload.startswith("[") else [json.loads(payload)]:
                received.append((r["device"], r["stream"], r["seq"], r["data"], r["ts"], 0.0, r))
    return received


def outage_summary(received: list, offered: int) -> dict:
    first_seen: dict[str, list[int]] = {}
    seen = set()
    for device, _stream, seq, data, *_rest in received:
        if (device, seq) in seen:
            continue
        seen.add((device, seq))
        first_seen.setdefault(device, []).append(data["n"])
    order_kept = all(counters == sorted(counters) for counters in first_seen.values())
    return {
        "delivered_unique": len(seen),
        "lost": offered - len(seen),
        "duplicates": len(received) - len(seen),
        "order_kept": order_kept,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", help="realtime (basic with --outage)")
    parser.add_argument(
        "--buffer", choices=("write_ahead", "spill", "none"), help="override (with --outage)"
    )
    parser.add_argument("--devices", type=int, default=4)
    parser.add_argument(
        "--rate",
        type=float,
        help="readings/s offered, all devices together (1000; 5000 with --outage)",
    )
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--find-max", action="store_true")
    parser.add_argument("--ceiling", type=float, default=200_000)
    parser.add_argument("--outage", type=float, metavar="SECONDS", help="stop the broker mid-run")
    arguments = parser.parse_args()
    if arguments.outage:
        result = run_outage(
            arguments.preset or "basic",
            arguments.buffer,
            arguments.devices,
            arguments.rate or 5000,
            arguments.seconds,
            arguments.outage,
        )
        print(json.dumps(result, indent=2))
        return
    arguments.preset = arguments.preset or "realtime"
    arguments.rate = arguments.rate or 1000
    if arguments.find_max:
        result = find_max(
            arguments.preset, arguments.devices, arguments.seconds, 2000, arguments.ceiling
        )
    else:
        result = run_once(arguments.preset, arguments.devices, arguments.rate, arguments.seconds)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
