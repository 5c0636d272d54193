"""The memory budgets of the board builds, on the MicroPython unix port (64-bit: a 32-bit
board needs about half), with the modules compiled by mpy-cross as provisioning copies them.
"""

from __future__ import annotations

from gateway.core import protocol
from gateway.core.step_chain import STEP_MODULES
from host_tools import resources
from tests.support.firmware import (
    SENSOR_NODE_HEAP,
    CompiledSensorNode,
    ring_full,
    run_soak,
)
from tests.support.waiting import wait_until

FULL_FRAME = 247  # bytes of records in a sensor node's DATA frame (firmware README, "DATA")
RECORD = 14  # one synthetic record: stream, dts, count, n and value
SOAK_SECONDS = 24  # every path runs in the first seconds; make bench soaks for 10 minutes
GATEWAY_NODE_FREE = 35 * 1024  # room left at 192k with steps (firmware README, "Memory")


def test_the_gateway_node_runs_in_192k_with_free_memory_bounded(tmp_path):
    """2 UART sources and 2 sinks under -X heapsize=192k, a preset with steps (a scale and a
    rename): no MemoryError, nothing restarted, every line delivered and transformed, at
    least GATEWAY_NODE_FREE bytes free, and the free heap does not shrink over the run
    (bench/gateway_node_soak.py runs the 10-minute version)."""
    result = run_soak(str(tmp_path), seconds=SOAK_SECONDS, status_every=3, steps=True)
    print("gateway node mem_free every 3 s:", result["mem_free"])
    log = result["log"][-3000:]
    assert result["alive"], log
    assert "MemoryError" not in result["log"], log
    assert result["restarts"] == 0 and result["main_errors"] == 0, log
    assert result["missing_lines"] == [] and result["mqtt_lines"] == result["lines_written"]
    assert result["first_line"] == {"t": 0.05, "humidity": 0}  # the steps ran: 0.5 * 0.1
    assert result["mqtt_cobs"] >= 0.8 * SOAK_SECONDS * 20
    assert result["udp"] >= result["mqtt_lines"] + result["mqtt_cobs"] - 20
    free = result["mem_free"]
    assert len(free) >= 6
    assert min(free) >= GATEWAY_NODE_FREE, free
    settled = free[1:]  # the first line comes before every path has run once
    assert min(settled[len(settled) // 2 :]) >= min(settled[: len(settled) // 2]) - 2048, free


def test_the_board_carries_the_steps_but_not_their_validation():
    """The board's pipeline (core.step_chain) loads a step family when a preset uses one; the
    validation tables (core.steps) and the checked pipeline stay on the Pi."""
    files = set(resources.core_files("gateway_node"))
    families = {f"gateway/core/{module}.py" for module in STEP_MODULES.values()}
    assert families | {"gateway/core/step_chain.py"} <= files
    assert not {"gateway/core/steps.py", "gateway/core/pipeline.py"} & files


def test_the_sensor_node_survives_a_full_ring_in_its_heap(tmp_path):
    """The worst case for the sensor node's heap: its ring full of full DATA frames, then
    everything acknowledged while it catches up at 200 samples/s. The HELLO stays
    unacknowledged meanwhile, so records pile up into full frames until sampling pauses (an
    acknowledged HELLO would have each record sent at once, one per frame)."""
    stream = {"name": "synthetic", "type": "synthetic", "rate": 200}
    failure = None
    with CompiledSensorNode(tmp_path, {"streams": [stream]}) as node:
        peer = node.peer
        try:
            peer.expect(protocol.HELLO, 5.0)
            wait_until(lambda: ring_full(peer), 30, "the ring to fill", interval=0.25)
            # Commands with the ring full: set_rate applies; set_config, which loads the config
            # validator, may find no room and answer BUSY, and the node runs on either way.
            rate = peer.call("set_rate", {"stream": "synthetic", "rate": 200})
            config = peer.call("set_config", {"heartbeat_ms": 4000})
            peer.ack_fresh()
            unacked = peer.collect(protocol.DATA, 2)  # four go-back-N rounds of the full ring
            acked = peer.collect_acking(4)
            status, after = peer.call("info", {"section": "counters"})
            running = node.running
        except AssertionError as error:  # the node stopped answering: its output tells why
            failure = str(error)
    output = node.output()
    assert failure is None, f"{failure}\n{output[-2000:]}"
    assert len({frame.seq for frame in unacked}) == protocol.RING_FRAMES, "the ring did not fill"
    assert min(len(frame.payload) for frame in unacked) > FULL_FRAME - RECORD, "frames not full"
    assert running and "MemoryError" not in output, output[-2000:]
    assert len(acked) > 100, f"only {len(acked)} frames after the ACKs resumed"
    assert status == protocol.STATUS_OK, after
    assert rate == (protocol.STATUS_OK, {"stream": "synthetic", "rate": 200.0, "saved": True})
    assert config[0] in (protocol.STATUS_OK, protocol.NACK_BUSY), config
    print(f"sensor node mem_free after catching up, in {SENSOR_NODE_HEAP}:", after["mem_free"])
    assert after["mem_free"] > 0


def test_a_sensor_node_whose_ring_does_not_fit_its_heap_runs_on_the_defaults(tmp_path):
    """The ring is allocated whole at boot, so a ring too big for the heap shows there: the
    node runs on the default config (whose ring fits) and says which key did not fit."""
    with CompiledSensorNode(tmp_path, {"ring": 1024}) as node:
        hello = node.peer.handshake()
        log = node.peer.expect(protocol.LOG, where=lambda frame: b"ring: 1024" in frame.payload)
        running = node.running
    output = node.output()
    assert hello["device"] == "sensor-node", hello  # the default config's name
    assert protocol.parse_log(log.payload) == (
        protocol.LOG_ERROR,
        "ring: 1024 frames do not fit in the heap",
    )
    assert running and "MemoryError" not in output, output[-2000:]
