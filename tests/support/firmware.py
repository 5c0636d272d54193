"""Sensor-node firmware in tests: start a node on a pty, and a minimal gateway peer to talk to it.

    device = VirtualSerialDevice()
    node = start_node(node_config("bench-1", rate=20), "micropython", str(tmp_path), device)
    ...the gateway (or Peer) opens device.path...
    node.stop()

A pulled USB cable powers a board down, so "unplug" with a firmware node is node.stop() plus
device.unplug(); "replug" is device.replug() plus a fresh start_node() (a new boot).
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import tempfile
import time
import tty
from pathlib import Path
from typing import Any, Callable

from gateway.core import protocol
from gateway.sources.simulator import VirtualSerialDevice
from host_tools import gateway_node
from host_tools.gateway_node import GatewayNodeProcess
from host_tools.node_config import compile_text
from host_tools.simulate import RUNTIMES, NodeProcess, find_micropython, node_config
from tests.support.broker import Broker, Subscriber
from tests.support.udp import UdpCollector
from tests.support.waiting import wait_until

_staged: dict[str, str] = {}  # one staging (mpy-cross, umqtt.simple fetched) per test session

__all__ = [
    "RUNTIMES",
    "GatewayNodeProcess",
    "NodeProcess",
    "Peer",
    "find_micropython",
    "node_config",
    "start_gateway_node",
    "start_node",
]


def start_node(
    config: dict[str, Any],
    runtime: str,
    workdir: str,
    device: VirtualSerialDevice | None = None,
    tty_path: str | None = None,
) -> NodeProcess:
    """A running node ("micropython" or "cpython"): on device's pty (made when None), or
    opening tty_path itself. The gateway side is node.path; node.stop() ends it."""
    return NodeProcess(config, runtime, workdir, device, tty_path).start()


def staged_gateway_node(compiled: bool = True) -> str:
    """The gateway node's board files, staged once per session (umqtt.simple fetched from
    PyPI into the cache on first use, modules compiled by mpy-cross)."""
    key = "mpy" if compiled else "py"
    if key not in _staged:
        directory = tempfile.mkdtemp(prefix=f"gateway-node-{key}-")
        gateway_node.stage(directory, compiled)
        _staged[key] = directory
    return _staged[key]


def staged_sensor_node() -> str:
    """The sensor node's files compiled by mpy-cross as a board gets them (main.py stays
    source), staged once per session; run with MICROPYPATH=.frozen:<this folder>."""
    if "sensor" not in _staged:
        import subprocess

        from host_tools import resources

        directory = tempfile.mkdtemp(prefix="sensor-node-mpy-")
        mpy_cross = gateway_node.find_mpy_cross()
        files = {**resources.app_files("sensor_node"), **resources.core_files("sensor_node")}
        for board_path, source in files.items():
            target = os.path.join(directory, board_path)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            if board_path == "main.py":
                with open(source, "rb") as original, open(target, "wb") as copy:
                    copy.write(original.read())
                continue
            output = target[: -len(".py")] + ".mpy"
            subprocess.run([mpy_cross, "-s", board_path, "-o", output, str(source)], check=True)
        _staged["sensor"] = directory
    return _staged["sensor"]


def start_gateway_node(
    toml: str,
    workdir: str,
    board: dict[str, Any] | None = None,
    heap: str = gateway_node.DEFAULT_HEAP,
) -> GatewayNodeProcess:
    """The gateway node for this gateway.toml text, compiled as provisioning does, running
    under the unix port with its flash buffers in workdir/flash (kept across restarts)."""
    settings = {"data_dir": os.path.join(workdir, "flash"), **(board or {})}
    config = compile_text(toml, settings)
    node = GatewayNodeProcess(config, workdir, heap, stage_dir=staged_gateway_node())
    return node.start()


def node_statuses(node: GatewayNodeProcess) -> list[dict[str, Any]]:
    """Every complete status the gateway node logged so far, in order: {"mem_free",
    "restarts", "sources": {name: counters}, "sinks": {name: counters}}."""
    found: list[dict[str, Any]] = []
    current: dict[str, Any] | None = None
    expected = 0
    output = node.output()
    # A running node may be writing its last line (status lines go out in pieces): skip it.
    lines = output.splitlines() if output.endswith("\n") else output.splitlines()[:-1]
    for line in lines:
        _, marker, text = line.partition(" info status ")
        if not marker:
            continue
        kind, _, rest = text.partition(" ")
        if kind == "node":
            current = {**json.loads(rest), "sources": {}, "sinks": {}}
            expected = len(node.config["sources"]) + len(node.config["sinks"])
            continue
        if current is None:
            continue
        name, _, counters = rest.partition(" ")
        current[kind + "s"][name] = json.loads(counters)
        expected -= 1
        if expected == 0:
            found.append(current)
            current = None
    return found


class Peer:
    """The gateway's end of a node's link, speaking protocol v1 through gateway.core.protocol.

    Synchronous: every wait has a deadline and fails with what did arrive. Frames are taken in
    arrival order; expect() skips (and keeps in `skipped`) frames that do not match.
    """

    def __init__(self, path: str | None = None, fd: int | None = None):
        if fd is None:
            assert path is not None, "a tty path or an open descriptor"
            fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
            tty.setraw(fd)
            self.owns_fd = True
        else:
            self.owns_fd = False
        os.set_blocking(fd, False)
        self.fd = fd
        self.decoder = protocol.FrameDecoder()
        self.backlog: list[Any] = []  # frames and ProtocolErrors received, not yet taken
        self.skipped: list[Any] = []
        self.next_request = 1

    def close(self) -> None:
        if self.owns_fd:
            os.close(self.fd)

    # -- receiving ---------------------------------------------------------------------------

    def _pump(self, timeout: float) -> None:
        ready, _, _ = select.select([self.fd], [], [], max(0.0, timeout))
        if not ready:
            return
        try:
            data = os.read(self.fd, 65536)
        except BlockingIOError:
            return
        self.backlog.extend(self.decoder.feed(data))

    def take(self, timeout: float) -> Any | None:
        """The next frame (or ProtocolError), or None when nothing comes within timeout."""
        deadline = time.monotonic() + timeout
        while not self.backlog:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self._pump(remaining)
        return self.backlog.pop(0)

    def expect(
        self,
        kind: int,
        timeout: float = 3.0,
        where: Callable[[protocol.Frame], bool] | None = None,
    ) -> protocol.Frame:
        """The next frame of type kind (matching where); others are skipped."""
        deadline = time.monotonic() + timeout
        while True:
            item = self.take(deadline - time.monotonic())
            if item is None:
                name = protocol.TYPE_NAMES.get(kind, kind)
                recent = ", ".join(describe(frame) for frame in self.skipped[-8:])
                raise AssertionError(f"no {name} within {timeout} s; last skipped: {recent}")
            if (
                isinstance(item, protocol.Frame)
                and item.type == kind
                and (where is None or where(item))
            ):
                return item
            self.skipped.append(item)

    def collect(self, kind: int, duration: float) -> list[protocol.Frame]:
        """Every frame of type kind arriving within duration seconds (others skipped)."""
        found = []
        deadline = time.monotonic() + duration
        while True:
            item = self.take(deadline - time.monotonic())
            if item is None:
                return found
            if isinstance(item, protocol.Frame) and item.type == kind:
                found.append(item)
            else:
                self.skipped.append(item)

    def collect_acking(self, duration: float) -> list[protocol.Frame]:
        """Every DATA frame arriving within duration seconds, each acknowledged on arrival."""
        found = []
        deadline = time.monotonic() + duration
        while True:
            item = self.take(deadline - time.monotonic())
            if item is None:
                return found
            if isinstance(item, protocol.Frame) and item.type == protocol.DATA:
                found.append(item)
                self.ack(item.seq)
            else:
                self.skipped.append(item)

    def drain(self, quiet: float = 0.05) -> list[Any]:
        """Everything received until the line is quiet for `quiet` seconds."""
        items = []
        while (item := self.take(quiet)) is not None:
            items.append(item)
        return items

    # -- sending -----------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        deadline = time.monotonic() + 3.0
        while view:
            try:
                view = view[os.write(self.fd, view) :]
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError("the node does not read its link") from None
                select.select([], [self.fd], [], 0.05)

    def send(self, kind: int, seq: int = 0, payload: bytes = b"", flags: int = 0) -> None:
        self.write(protocol.encode_frame(kind, seq, payload, flags))

    def ack(self, seq: int) -> None:
        self.send(protocol.ACK, seq)

    def ack_fresh(self) -> None:
        self.send(protocol.ACK, protocol.FRESH_SEQ, flags=protocol.FLAG_FRESH)

    def nack(self, code: int, expected: int = 0, reason: str = "") -> None:
        self.send(protocol.NACK, payload=protocol.nack_payload(code, expected, reason))

    def handshake(self, timeout: float = 5.0) -> dict[str, Any]:
        """Wait for the HELLO, answer it FRESH; the parsed HELLO."""
        hello = protocol.parse_hello(self.expect(protocol.HELLO, timeout).payload)
        self.ack_fresh()
        return hello

    def call(
        self, name: str, args: dict[str, Any] | None = None, timeout: float = 3.0
    ) -> tuple[int, Any]:
        """Send a CMD, wait for its RESP: (status, result)."""
        request_id = self.next_request
        self.next_request += 1
        self.send(protocol.CMD, payload=protocol.cmd_payload(request_id, name, args or {}))

        def answers(frame: protocol.Frame) -> bool:
            return protocol.parse_resp(frame.payload)[0] == request_id

        frame = self.expect(protocol.RESP, timeout, answers)
        _, status, result = protocol.parse_resp(frame.payload)
        return status, result


def describe(item: Any) -> str:
    if isinstance(item, protocol.Frame):
        return f"{protocol.TYPE_NAMES.get(item.type, item.type)}#{item.seq}/{item.flags}"
    return f"error({item})"


def data_records(frames: list[protocol.Frame]) -> list[tuple[int, int, list[float]]]:
    """Every record of these DATA frames, in order."""
    return [record for frame in frames for record in protocol.parse_data(frame.payload)]


# -- the sensor node's heap -----------------------------------------------------------------

# The design's budget for the sensor node on the unix port (64-bit: a 32-bit board needs
# about half), with a ring of 64 full DATA frames.
SENSOR_NODE_HEAP = "96k"


class CompiledSensorNode:
    """The sensor node as provisioning compiles it, in its own process under a heap limit,
    with a Peer on its link: `with CompiledSensorNode(...) as node:` ends both on exit."""

    def __init__(self, tmp_path: Path, config: dict[str, Any], heap: str = SENSOR_NODE_HEAP):
        self.device = VirtualSerialDevice()
        self.process, self.log_path = _start_compiled_node(tmp_path, self.device, config, heap)
        self.peer = Peer(self.device.path)

    def __enter__(self) -> CompiledSensorNode:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.process.kill()
        self.process.wait()
        self.peer.close()
        self.device.close()

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")


def _start_compiled_node(
    tmp_path: Path, device: VirtualSerialDevice, config: dict[str, Any], heap: str
) -> tuple[subprocess.Popen, Path]:
    """config: device n1 on the device's pty unless it says otherwise."""
    config = {"device": "n1", "link": {"type": "fd", "fd": device.master}, **config}
    config_path = tmp_path / "node.json"
    config_path.write_text(json.dumps(config))
    stage = staged_sensor_node()
    log_path = tmp_path / "node.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [find_micropython(), "-X", f"heapsize={heap}"]
            + [os.path.join(stage, "main.py"), "--config", str(config_path)],
            env={**os.environ, "MICROPYPATH": ".frozen:" + stage},
            pass_fds=(device.master,),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    return process, log_path


def ring_full(peer: Peer) -> bool:
    """Whether the node has paused sampling on a full ring (its ring_full counter)."""
    status, result = peer.call("info", {"section": "counters"})
    assert status == protocol.STATUS_OK, result
    return result["counters"]["ring_full"] > 0


# -- the gateway node's heap soak ------------------------------------------------------------

SOAK_GATEWAY = "soak-gw"


def soak_toml(
    line_path: str, cobs_path: str, broker_port: int, udp_port: int, steps: bool = False
) -> str:
    """2 UART sources (a CSV line device and a COBS sensor node) and 2 sinks (MQTT, UDP);
    with steps, the preset scales and renames (the step library is loaded too)."""
    step_list = (
        'steps = [{ op = "scale", field = "t", factor = 0.1 }, '
        '{ op = "rename", map = { h = "humidity" } }]'
        if steps
        else ""
    )
    return f"""
[gateway]
id = "{SOAK_GATEWAY}"

[[sources]]
name = "lines-1"
port = "{line_path}"
format = "csv"
fields = ["t", "h"]
stream = "env"
preset = "soak"

[[sources]]
name = "cobs-1"
port = "{cobs_path}"
framing = "cobs"
preset = "soak"

[presets.soak]
extends = "basic"
{step_list}
routes = [{{ sink = "mqtt" }}, {{ sink = "udp" }}]

[sinks.mqtt]
type = "mqtt"
url = "mqtt://127.0.0.1:{broker_port}"

[sinks.udp]
type = "udp"
targets = ["127.0.0.1:{udp_port}"]
"""


def run_soak(
    workdir: str,
    seconds: float,
    status_every: float,
    rate: float = 20.0,
    heap: str = gateway_node.DEFAULT_HEAP,
    steps: bool = False,
) -> dict[str, Any]:
    """Run the gateway node under `heap` for `seconds`: a line device writing `rate` lines/s
    and a sensor node sampling at `rate`, to a real Mosquitto and a UDP receiver. Returns
    the free heap of each status line, the readings offered and received, the node's log."""
    broker = Broker().start()
    subscriber = Subscriber(broker.port, f"gw/{SOAK_GATEWAY}/+/+")
    udp = UdpCollector()
    line_device, cobs_device = VirtualSerialDevice(), VirtualSerialDevice()
    processes: list[Any] = []
    written = 0
    try:
        toml = soak_toml(line_device.path, cobs_device.path, broker.port, udp.port, steps)
        board = {"status_ms": int(status_every * 1000)}
        gateway = start_gateway_node(toml, workdir, board, heap)
        processes.append(gateway)
        sensor = start_node(node_config("node-1", rate=rate), "micropython", workdir, cobs_device)
        processes.append(sensor)
        wait_until(lambda: "sink mqtt: connected" in gateway.output(), 30, "MQTT connection")
        started = time.monotonic()
        while time.monotonic() - started < seconds and gateway.running:
            line_device.write(b"%d.5,%d\n" % (written, written % 100))
            written += 1
            delay = started + written / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)  # pacing the writer
        time.sleep(1)  # the last readings on their way (nothing to await across processes)
        alive = gateway.running
    finally:
        for process in reversed(processes):
            process.stop()
        subscriber.close()
        udp.close()
        line_device.close()
        cobs_device.close()
        broker.close()
    statuses = node_statuses(gateway)
    mqtt = [json.loads(payload) for _topic, payload, _at in subscriber.messages]
    return {
        "heap": heap,
        "seconds": seconds,
        "alive": alive,
        "mem_free": [status["mem_free"] for status in statuses],
        "restarts": statuses[-1]["restarts"] if statuses else None,
        "main_errors": statuses[-1]["main_errors"] if statuses else None,
        "lines_written": written,
        "mqtt_lines": sum(1 for reading in mqtt if reading["device"] == "lines-1"),
        "missing_lines": sorted(
            set(range(written)) - {r["seq"] for r in mqtt if r["device"] == "lines-1"}
        )[:20],
        "first_line": next((r["data"] for r in mqtt if r["device"] == "lines-1"), None),
        "mqtt_cobs": sum(1 for reading in mqtt if reading["device"] == "node-1"),
        "udp": len(udp.readings),
        "log": gateway.output(),
    }
