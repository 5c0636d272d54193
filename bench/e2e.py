"""End-to-end benchmark: N pty devices → gateway process → MQTT, UDP and WebSocket receivers.

Prints one JSON object per run: offered and delivered readings per sink, loss, readings/s,
latency p50/p99 per sink (serial write → receiver), the gateway's peak RSS and CPU seconds.

    python bench/e2e.py --rate 1000 --seconds 10
    python bench/e2e.py --preset high_throughput --rate 50000 --seconds 10
    python bench/e2e.py --find-max            # highest rate with zero loss
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gateway.config import presets  # noqa: E402
from tests.support.broker import Broker, free_port  # noqa: E402
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
    preset: str, paths: list[str], broker_port: int, udp_port: int, api_port: int
) -> str:
    sources = "".join(
        f'\n[[sources]]\nname = "dev-{i}"\nport = "{path}"\nstream = "bench"\npreset = "bench"\n'
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
        receivers = Receivers(
            udp_port=udp_port,
            websocket_url=f"ws://127.0.0.1:{api_port}/ws",
            mqtt_port=broker.port,
            mqtt_topic="gw/bench/#",
            expected=offered,
        )
        receivers.start()
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
    return {
        "delivered": len(unique),
        "duplicates": len(received) - len(unique),
        "lost": offered - len(unique),
        "readings_per_second": round(len(unique) / max(1e-9, last - started)),
        "latency_ms_p50": round(percentile(latencies, 0.50), 3),
        "latency_ms_p99": round(percentile(latencies, 0.99), 3),
    }


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


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="realtime")
    parser.add_argument("--devices", type=int, default=4)
    parser.add_argument(
        "--rate", type=float, default=1000, help="readings/s offered, all devices together"
    )
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--find-max", action="store_true")
    parser.add_argument("--ceiling", type=float, default=200_000)
    arguments = parser.parse_args()
    if arguments.find_max:
        result = find_max(
            arguments.preset, arguments.devices, arguments.seconds, 2000, arguments.ceiling
        )
    else:
        result = run_once(arguments.preset, arguments.devices, arguments.rate, arguments.seconds)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
