"""End-to-end harness: a gateway process fed by pty devices, counted at real receivers.

Shared by the end-to-end tests and `bench/e2e.py`. Each receiver (MQTT subscriber, UDP
socket, WebSocket client) runs in its own process so that counting does not compete with
the device writers for one interpreter.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from typing import Any

import msgpack

from gateway.sources.simulator import VirtualSerialDevice
from tests.support.broker import free_port

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# One received reading, reduced to what the checks need:
# (device, stream, seq, data, ts, received_at)
Received = tuple


def decode_payload(payload: bytes) -> list[dict]:
    """A payload is one reading or a batch (array), as JSON or MessagePack."""
    try:
        value = json.loads(payload)
    except (UnicodeDecodeError, ValueError):
        value = msgpack.unpackb(payload, raw=False)
    return value if isinstance(value, list) else [value]


def _reduce(payload: bytes, received_at: float) -> list[Received]:
    if not count_readings(payload):
        return []  # not a reading: the retained availability status, for one
    return [
        (r["device"], r["stream"], r["seq"], r["data"], r["ts"], received_at, r)
        for r in decode_payload(payload)
    ]


def count_readings(payload: bytes) -> int:
    """Readings in a payload without decoding it (JSON or MessagePack key "seq")."""
    return payload.count(b'"seq":') or payload.count(b"\xa3seq")


class _Tally:
    """Payloads with their arrival times; done once the expected readings are in or on stop."""

    def __init__(self, expected: int, stop):
        self.payloads: list[tuple[bytes, float]] = []
        self.expected = expected
        self.readings = 0
        self.stop = stop
        self.complete = threading.Event()

    def add(self, payload: bytes, received_at: float | None = None) -> None:
        self.payloads.append((payload, received_at or time.time()))
        self.readings += count_readings(payload)
        if self.expected and self.readings >= self.expected:
            self.complete.set()

    @property
    def done(self) -> bool:
        return self.complete.is_set() or self.stop.is_set()


def _collect_mqtt(settings: dict, tally: _Tally, ready) -> None:
    """Count MQTT messages with mosquitto_sub: a C client in its own process, so the counting
    side never limits the gateway (a Python subscriber tops out near 5,000 QoS 1 msg/s).

    Each line is `<unix time> <topic> <payload hex>`; the time is when mosquitto_sub got the
    message, so reading its output a little later does not add to the measured latency.
    """
    port = str(settings["port"])
    ready_topic = f"e2e-ready/{os.getpid()}"
    subprocess.run(
        ["mosquitto_pub", "-p", port, "-t", ready_topic, "-m", "ready", "-r", "-q", "1"],
        check=True,
    )
    command = ["mosquitto_sub", "-p", port, "-q", str(settings.get("qos", 1))]
    command += ["-t", ready_topic, "-t", settings["topic"], "-F", "%U %t %x"]
    if settings.get("session"):
        command += ["-c", "-i", settings["session"]]
    # Read through a file description of our own: sharing the child's would share its offset.
    with (
        tempfile.NamedTemporaryFile(prefix="mqtt-sub-") as output,
        open(output.name, "rb") as lines,
    ):
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.DEVNULL)
        try:
            _follow(lines, ready_topic.encode(), tally, ready)
        finally:
            process.kill()
            process.wait()


def _follow(output, ready_topic: bytes, tally: _Tally, ready) -> None:
    pending = b""
    while not tally.done:
        chunk = output.read()
        if not chunk:
            time.sleep(0.02)  # another process's output file: polling is all there is
            continue
        *lines, pending = (pending + chunk).split(b"\n")
        for line in lines:
            received_at, topic, payload = line.split(b" ", 2)
            if topic == ready_topic:
                ready.set()
                continue
            tally.add(bytes.fromhex(payload.decode()), float(received_at))


def _collect(kind: str, settings: dict, ready, stop, results) -> None:
    """Receiver process body: gather payloads until all expected arrived or `stop` is set."""
    tally = _Tally(settings.get("expected", 0), stop)
    if kind == "udp":
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        # SO_RCVBUFFORCE (33 on Linux; Python has no name for it) lets root exceed rmem_max.
        try:
            sock.setsockopt(socket.SOL_SOCKET, 33, 64 * 1024 * 1024)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024 * 1024)
        sock.bind(("127.0.0.1", settings["port"]))
        sock.settimeout(0.1)
        ready.set()
        while not tally.done:
            try:
                tally.add(sock.recv(65536))
            except socket.timeout:
                continue
    elif kind == "websocket":
        from websockets.sync.client import connect

        with connect(settings["url"], max_size=None, open_timeout=10) as connection:
            ready.set()
            while not tally.done:
                try:
                    message = connection.recv(timeout=0.1)
                except TimeoutError:
                    continue
                tally.add(message.encode() if isinstance(message, str) else message)
    elif kind == "mqtt":
        _collect_mqtt(settings, tally, ready)
    readings = [reading for payload, at in tally.payloads for reading in _reduce(payload, at)]
    results.put((kind, readings))


@dataclass
class Receivers:
    """Receiver processes for the sinks under test; start() returns once all listen."""

    udp_port: int | None = None
    websocket_url: str | None = None
    mqtt_port: int | None = None
    mqtt_topic: str = "#"
    mqtt_qos: int = 1
    mqtt_session: str | None = None  # a client id: a persistent session that survives outages
    expected: int = 0  # each receiver stops by itself once it has this many readings
    _processes: list = field(default_factory=list)

    def start(self) -> None:
        context = multiprocessing.get_context("spawn")
        self._stop = context.Event()
        self._results = context.Queue()
        wanted = []
        if self.udp_port:
            wanted.append(("udp", {"port": self.udp_port}))
        if self.websocket_url:
            wanted.append(("websocket", {"url": self.websocket_url}))
        if self.mqtt_port:
            mqtt = {"port": self.mqtt_port, "topic": self.mqtt_topic, "qos": self.mqtt_qos}
            wanted.append(("mqtt", {**mqtt, "session": self.mqtt_session}))
        for kind, settings in wanted:
            settings["expected"] = self.expected
            ready = context.Event()
            process = context.Process(
                target=_collect, args=(kind, settings, ready, self._stop, self._results)
            )
            process.start()
            if not ready.wait(20):
                raise TimeoutError(f"{kind} receiver did not start")
            self._processes.append(process)

    def finish(self, timeout: float = 30) -> dict[str, list[Received]]:
        """Wait up to `timeout` for every receiver to get all expected readings, then stop them.

        Returns what each receiver got, by kind.
        """
        gathered = {}
        deadline = time.monotonic() + timeout
        while len(gathered) < len(self._processes) and time.monotonic() < deadline:
            try:
                kind, readings = self._results.get(timeout=max(0.01, deadline - time.monotonic()))
            except Exception:  # queue.Empty: the deadline passed
                break
            gathered[kind] = readings
        self._stop.set()
        while len(gathered) < len(self._processes):
            kind, readings = self._results.get(timeout=60)
            gathered[kind] = readings
        for process in self._processes:
            process.join(timeout=10)
        return gathered


class GatewayProcess:
    """`python -m gateway run -c FILE` as a child process, with readiness and resource use."""

    def __init__(self, config_text: str, directory: str | None = None):
        self.directory = directory or tempfile.mkdtemp(prefix="gateway-e2e-")
        self.config_path = os.path.join(self.directory, "gateway.toml")
        with open(self.config_path, "w") as file:
            file.write(config_text)
        self.log_path = os.path.join(self.directory, "gateway.log")
        self.process: subprocess.Popen | None = None

    def start(self, api_port: int, timeout: float = 30) -> None:
        self.api_port = api_port
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - the child writes to it until stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", "-c", self.config_path],
            cwd=self.directory,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": REPO_ROOT},
        )
        self.wait_ready(timeout)

    def health(self) -> dict[str, Any]:
        url = f"http://127.0.0.1:{self.api_port}/api/v1/health"
        with urllib.request.urlopen(url, timeout=2) as response:
            return json.load(response)

    def wait_ready(self, timeout: float = 30) -> dict[str, Any]:
        """Poll the health endpoint (another process: no event to await) until all is connected."""
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"gateway exited with {self.process.returncode}:\n{self.log()}")
            try:
                health = self.health()
                if health["ready"]:
                    return health
            except OSError:
                health = None
            if time.monotonic() > deadline:
                raise TimeoutError(f"gateway not ready: {health}\n{self.log()}")
            time.sleep(0.05)

    def wait_for(self, predicate, timeout: float = 60) -> dict[str, Any]:
        """Poll the gateway's stats until predicate(stats) holds."""
        deadline = time.monotonic() + timeout
        while True:
            stats = self.health()["stats"]
            if predicate(stats):
                return stats
            if time.monotonic() > deadline:
                raise TimeoutError(f"condition not reached; stats: {json.dumps(stats)}")
            time.sleep(0.05)

    def resources(self) -> dict[str, float]:
        """Peak resident memory (MB) and CPU seconds used so far."""
        with open(f"/proc/{self.process.pid}/status") as status:
            peak_kb = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
        with open(f"/proc/{self.process.pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        return {
            "peak_rss_mb": round(peak_kb / 1024, 1),
            "cpu_seconds": (int(fields[11]) + int(fields[12])) / ticks,
        }

    def stop(self, timeout: float = 30) -> int:
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout)
        self._log.close()
        return code

    def kill(self) -> None:
        """Make sure the child is gone (test teardown after a failure)."""
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def log(self) -> str:
        with open(self.log_path, errors="replace") as file:
            return file.read()[-5000:]


def counter_line(n: int) -> bytes:
    """The n-th counter line, stamped with when it is written (latency is measured from it)."""
    return b'{"n":%d,"t":%d,"sent":%.6f}\n' % (n, n, time.time())


class DeviceWriters:
    """Writes counter lines `{"n": i, "t": ..., "sent": time}` into pty devices at a paced rate."""

    def __init__(self, count: int, directory: str):
        self.devices = [
            VirtualSerialDevice(os.path.join(directory, f"tty-device-{i}")) for i in range(count)
        ]

    @property
    def paths(self) -> list[str]:
        return [device.path for device in self.devices]

    def run(self, per_device: int, rate_per_device: float, line_for=None) -> float:
        """Write per_device lines to every device; returns the seconds it took."""
        line_for = line_for or counter_line
        errors: list[BaseException] = []

        def write(device) -> None:
            try:
                self._write_paced(device, per_device, rate_per_device, line_for)
            except BaseException as error:  # re-raised in the caller's thread below
                errors.append(error)

        threads = [threading.Thread(target=write, args=(device,)) for device in self.devices]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise errors[0]
        return time.perf_counter() - started

    @staticmethod
    def _write_paced(device, count: int, rate: float, line_for) -> None:
        # Lines due by now are written together; at low rates that is one line per write,
        # which keeps the latency measurement honest.
        started = time.perf_counter()
        index = 0
        while index < count:
            elapsed = time.perf_counter() - started
            due = min(count, int(elapsed * rate) + 1)
            if due <= index:
                time.sleep(max(0.0, min(0.0005, (index + 1) / rate - elapsed)))
                continue
            device.write(b"".join(line_for(i) for i in range(index, due)))
            index = due

    def close(self) -> None:
        for device in self.devices:
            device.close()


class CounterStream:
    """Counter lines on every device of `writers` at `rate` per second, in runs of
    `run_seconds`, from a thread of its own until finish(); line_for(n) is the n-th line."""

    def __init__(self, writers: DeviceWriters, rate: int, line_for=counter_line, run_seconds=1.0):
        self.writers = writers
        self.rate = rate
        self.line_for = line_for
        self.per_run = int(rate * run_seconds)
        self.written = 0  # per device
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="stream")

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                first = self.written
                self.writers.run(self.per_run, self.rate, lambda i, f=first: self.line_for(f + i))
                self.written += self.per_run
        except BaseException as error:  # re-raised by finish()
            self._error = error

    def start(self) -> None:
        self._thread.start()

    def finish(self) -> int:
        """Stop after the current run; returns the lines written per device."""
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join()
        if self._error is not None:
            raise self._error
        return self.written


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def free_udp_port() -> int:
    return free_port(socket.SOCK_DGRAM)


class PtyFlood:
    """Writes pre-made bytes into a pty device as fast as the pty takes them, in a thread.

    `full` is set the first time the pty is full (the gateway stopped reading: backpressure)
    and `full_waits` counts those waits; `done` is set once every byte is written.
    """

    def __init__(self, device: VirtualSerialDevice, data: bytes, chunk: int = 65536):
        self.device = device
        self.data = data
        self.chunk = chunk
        self.written = 0
        self.full_waits = 0
        self.full = threading.Event()
        self.done = threading.Event()
        self._thread = threading.Thread(target=self._write, daemon=True)

    def start(self) -> PtyFlood:
        self._thread.start()
        return self

    def _write(self) -> None:
        fd = self.device.master
        view = memoryview(self.data)
        while self.written < len(view):
            try:
                self.written += os.write(fd, view[self.written : self.written + self.chunk])
            except BlockingIOError:
                self.full_waits += 1
                self.full.set()
                select.select([], [fd], [], 0.5)
        self.done.set()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError(f"only {self.written} of {len(self.data)} bytes taken by the pty")


def counter_lines(count: int) -> bytes:
    """`count` JSON lines `{"n": i, ...}` of about 70 bytes, made before any clock starts."""
    return b"".join(
        b'{"n":%d,"temperature":21.5,"humidity":40.25,"pressure":1013.2}\n' % index
        for index in range(count)
    )
