"""Gateway-node heap soak: the board firmware under the unix port for N minutes, as JSON.

2 UART sources (a CSV line device and the sensor-node firmware over COBS) and 2 sinks (a
real Mosquitto, a UDP receiver), a preset with steps (a scale and a rename; --no-steps
leaves them out), modules compiled by mpy-cross, `-X heapsize=192k`. Prints gc.mem_free()
after each minute, readings offered and delivered, and whether the node stayed up without
a task restart or a main-loop error (tests/test_firmware_gateway_node_memory.py runs 24 s
of it).

    python bench/gateway_node_soak.py --minutes 10 [--no-steps]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.support.firmware import run_soak  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=20.0, help="readings/s per source")
    parser.add_argument("--heap", default="192k")
    parser.add_argument("--no-steps", action="store_true", help="a preset without steps")
    args = parser.parse_args()
    steps = not args.no_steps
    with tempfile.TemporaryDirectory(prefix="gateway-node-soak-") as workdir:
        result = run_soak(workdir, args.minutes * 60, 60, args.rate, args.heap, steps)
    log = result.pop("log")
    result["steps"] = steps
    clean = result["restarts"] == 0 and result["main_errors"] == 0
    result["ok"] = bool(result["alive"] and clean and "MemoryError" not in log)
    result["mem_free_per_minute"] = result.pop("mem_free")
    print(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
