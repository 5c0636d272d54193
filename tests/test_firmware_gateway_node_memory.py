"""The memory budgets of the board builds, on the MicroPython unix port (64-bit: a 32-bit
board needs about half), with the modules compiled by mpy-cross as provisioning copies them.
"""

from __future__ import annotations

import json
import os
import subprocess

from gateway.core import protocol
from gateway.sources.simulator import VirtualSerialDevice
from tests.support.firmware import Peer, find_micropython, run_soak, staged_sensor_node

SENSOR_NODE_HEAP = "112k"
SOAK_SECONDS = 24  # every path runs in the first seconds; make bench soaks for 10 minutes


def test_the_gateway_node_runs_in_192k_with_free_memory_bounded(tmp_path):
    """2 UART sources and 2 sinks under -X heapsize=192k: no MemoryError, nothing restarted,
    every line delivered, and the free heap does not shrink over the run
    (bench/gateway_node_soak.py runs the 10-minute version)."""
    result = run_soak(str(tmp_path), seconds=SOAK_SECONDS, status_every=3)
    print("gateway node mem_free every 3 s:", result["mem_free"])
    log = result["log"][-3000:]
    assert result["alive"], log
    assert "MemoryError" not in result["log"], log
    assert result["restarts"] == 0
    assert result["missing_lines"] == [] and result["mqtt_lines"] == result["lines_written"]
    assert result["mqtt_cobs"] >= 0.8 * SOAK_SECONDS * 20
    assert result["udp"] >= result["mqtt_lines"] + result["mqtt_cobs"] - 20
    free = result["mem_free"]
    assert len(free) >= 6
    assert min(free) >= 16 * 1024, free
    settled = free[1:]  # the first line comes before every path has run once
    assert min(settled[len(settled) // 2 :]) >= min(settled[: len(settled) // 2]) - 2048, free


def test_the_sensor_node_survives_a_full_ring_in_its_heap(tmp_path):
    """The worst case for the sensor node's heap: no ACKs until its ring holds 64 full DATA
    frames, then everything acknowledged while it catches up at 200 samples/s."""
    device = VirtualSerialDevice()
    config_path = tmp_path / "node.json"
    stream = {"name": "synthetic", "type": "synthetic", "rate": 200}
    config = {"device": "n1", "streams": [stream], "link": {"type": "fd", "fd": device.master}}
    config_path.write_text(json.dumps(config))
    stage = staged_sensor_node()
    log_path = tmp_path / "node.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [
                find_micropython(),
                "-X",
                f"heapsize={SENSOR_NODE_HEAP}",
                os.path.join(stage, "main.py"),
            ]
            + ["--config", str(config_path)],
            env={**os.environ, "MICROPYPATH": ".frozen:" + stage},
            pass_fds=(device.master,),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    peer = Peer(device.path)
    try:
        peer.handshake()
        unacked = peer.collect(protocol.DATA, 4)
        acked = peer.collect_acking(6)
        running = process.poll() is None
    finally:
        process.kill()
        process.wait()
        peer.close()
        device.close()
    output = log_path.read_text(errors="replace")
    assert len({frame.seq for frame in unacked}) == protocol.RING_FRAMES, "the ring did not fill"
    assert running and "MemoryError" not in output, output[-2000:]
    assert len(acked) > 100, f"only {len(acked)} frames after the ACKs resumed"
