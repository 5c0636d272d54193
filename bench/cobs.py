"""COBS benchmark: N wire-protocol devices on ptys → gateway → MQTT, UDP and WebSocket receivers.

The devices speak protocol v1 (tests/support/cobs_device.py: HELLO, DATA with 16 readings
per frame, a ring of unacknowledged frames, retransmits), as fast as the gateway's
acknowledgements allow. Prints JSON: offered and delivered readings per sink, loss,
duplicates, readings/s, the gateway's peak RSS and CPU seconds.

    python bench/cobs.py --devices 4 --readings 50000 --preset high_throughput
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

from bench.e2e import bench_config, bench_receivers, summarise  # noqa: E402
from gateway.sources.simulator import VirtualSerialDevice  # noqa: E402
from tests.support.broker import Broker, free_port  # noqa: E402
from tests.support.cobs_device import CobsTestDevice  # noqa: E402
from tests.support.e2e import GatewayProcess, free_udp_port  # noqa: E402


async def drive(devices: list[CobsTestDevice], per_device: int) -> float:
    """Every device sends per_device readings; returns the seconds until all were ACKed."""
    for device in devices:
        await device.start()
    started = time.perf_counter()
    await asyncio.gather(*(device.send_readings(per_device, timeout=600) for device in devices))
    seconds = time.perf_counter() - started
    for device in devices:
        await device.stop()
    return seconds


def run(preset: str, count: int, readings: int) -> dict:
    directory = tempfile.mkdtemp(prefix="bench-cobs-")
    broker = Broker().start()
    devices = [
        CobsTestDevice(
            f"node-{i}",
            virtual=VirtualSerialDevice(os.path.join(directory, f"tty-node-{i}")),
            retransmit_timeout=0.5,
        )
        for i in range(count)
    ]
    per_device = readings // count
    offered = per_device * count
    udp_port, api_port = free_udp_port(), free_port()
    paths = [device.path for device in devices]
    gateway = GatewayProcess(
        bench_config(preset, paths, broker.port, udp_port, api_port, framing="cobs"), directory
    )
    try:
        gateway.start(api_port)
        receivers = bench_receivers(udp_port, api_port, broker.port, offered)
        started = time.time()
        acknowledged_seconds = asyncio.run(drive(devices, per_device))
        results = receivers.finish(timeout=120)
        resources = gateway.resources()
        gateway.stop()
    finally:
        gateway.kill()
        broker.close()
    report = {
        "framing": "cobs",
        "preset": preset,
        "devices": count,
        "offered": offered,
        "acknowledged_seconds": round(acknowledged_seconds, 3),
        "acknowledged_per_second": round(offered / acknowledged_seconds),
        **resources,
        "sinks": {},
    }
    for kind, received in results.items():
        report["sinks"][kind] = summarise(received, offered, started)
    report["zero_loss"] = all(sink["lost"] == 0 for sink in report["sinks"].values())
    return report


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="high_throughput")
    parser.add_argument("--devices", type=int, default=4)
    parser.add_argument("--readings", type=int, default=100_000, help="all devices together")
    arguments = parser.parse_args()
    print(json.dumps(run(arguments.preset, arguments.devices, arguments.readings), indent=2))


if __name__ == "__main__":
    main()
