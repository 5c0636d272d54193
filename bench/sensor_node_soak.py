"""Sensor-node heap soak: the firmware under the unix port at -X heapsize=96k, as JSON.

The modules compiled by mpy-cross as provisioning copies them, a synthetic stream at 200
samples/s. First the worst case for the heap (tests/test_firmware_gateway_node_memory.py):
the HELLO goes unanswered until the ring holds 64 full DATA frames; then, for N minutes,
every frame is acknowledged as it comes, and after each minute `info` reports the node's
gc.mem_free(). Prints the free heap per minute, the readings received, and whether the node
stayed up without a MemoryError.

    python bench/sensor_node_soak.py --minutes 10
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gateway.core import protocol  # noqa: E402
from tests.support.firmware import (  # noqa: E402
    SENSOR_NODE_HEAP,
    CompiledSensorNode,
    data_records,
    ring_full,
)
from tests.support.waiting import wait_until  # noqa: E402


def soak(workdir: Path, minutes: float, heap: str) -> dict:
    stream = {"name": "synthetic", "type": "synthetic", "rate": 200}
    mem_free: list[int] = []
    readings = 0
    with CompiledSensorNode(workdir, {"streams": [stream]}, heap) as node:
        peer = node.peer
        peer.expect(protocol.HELLO, 5.0)
        wait_until(lambda: ring_full(peer), 30, "the ring to fill", interval=0.25)
        peer.ack_fresh()
        for _minute in range(int(minutes)):
            frames = peer.collect_acking(60)
            readings += len(data_records(frames))
            status, result = peer.call("info", {"section": "counters"})
            if status != protocol.STATUS_OK:
                break
            mem_free.append(result["mem_free"])
        alive = node.running
    output = node.output()
    return {
        "heap": heap,
        "minutes": minutes,
        "alive": alive,
        "mem_free_per_minute": mem_free,
        "readings": readings,
        "ok": alive and "MemoryError" not in output and len(mem_free) == int(minutes),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--heap", default=SENSOR_NODE_HEAP)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sensor-node-soak-") as workdir:
        result = soak(Path(workdir), args.minutes, args.heap)
    print(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
