"""Overload benchmark: pty devices written as fast as they accept → gateway process → receivers.

Shaped like the comparison in DESIGN §11 (Node-RED: serial in → json → mqtt out, QoS 1): each
device is a pty written by its own process from bytes made before the clock starts, in 64 KiB
writes, as fast as the pty takes them (the time spent waiting for a full pty is
backpressure_seconds, not loss). The gateway runs as its own process, Mosquitto on a free
port, and each sink is counted by a receiver process that never limits the rate:
mosquitto_sub (C) for MQTT, a UDP socket (kernel receive timestamps), a WebSocket client.

    python bench/overload.py --scenario one-mqtt
    python bench/overload.py --scenario slow-link --readings 100000 --lift-after 5
    python bench/overload.py --scenario latency            # paced 1,000 readings/s for 10 s
    python bench/overload.py --scenario four-basic --rate 20000 --readings 200000
    python bench/overload.py --all                         # the set `make bench` runs

Every run prints one JSON object on one line; the exit status is non-zero when a run could
not complete (a writer or a receiver timed out, or no progress for --stall seconds), and the
JSON then reports what arrived ("complete": false). The fields:

  readings_offered      lines written into the ptys, all devices (each carries its index n)
  sinks.KIND            per sink kind (mqtt, udp, websocket), counted at its receiver:
    delivered           unique (device, n) readings; lost = offered - delivered
    duplicates          readings that arrived again (same device and n)
    messages            MQTT messages / datagrams / WebSocket frames carrying readings
    readings_per_second delivered / (last arrival - first write of the run)
    latency_ms_*        arrival - write time of the line (p50, p99, max over first arrivals)
    order_kept          every device's n increasing in first-arrival order
  write_seconds         the slowest writer's time from first to last write
  backpressure_seconds  time the writers (summed) waited for a full pty: the gateway not
                        reading; backpressure_fraction is its share of the writers' time
  peak_rss_mb           the gateway's VmHWM read just before it is stopped (its life's peak);
                        peak_rss_mb_before_first_write the same when the writers started
  rss_mb_samples        VmRSS sampled every 0.1 s, thinned to 12; rss_mb_sampled_max its peak
  sink_queue_peaks      per sink, the largest buffer depth / in memory / on disk seen in the
                        health API once a second; api_health_ms_max its slowest answer
  cpu_us_per_reading    gateway user+system CPU from the first write to the end, / offered
  gateway               the preset and routes used; the gateway's own totals at the end
  slow_link             with --slow-link: the proxy's rate and the bytes it forwarded

Receivers count readings (duplicates included); the run ends once each has as many as offered.

Latency: each writer records, per write, the wall-clock time just before it and the last
line the write completed, so a reading's latency is its arrival time at a receiver minus the
time of the write that completed its line. Under overload that includes the time the line
waited in the pty and in the gateway's queues.
"""

from __future__ import annotations

import argparse
import array
import json
import multiprocessing
import os
import queue
import select
import shutil
import socket
import struct
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, replace

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.e2e import bench_routes, inline_table  # noqa: E402
from tests.support.broker import Broker, free_port  # noqa: E402
from tests.support.e2e import (  # noqa: E402
    GatewayProcess,
    count_readings,
    decode_payload,
    free_udp_port,
    percentile,
)
from tests.support.throttle import DOWN, UP, ThrottledProxy  # noqa: E402

CHUNK = 64 * 1024  # bytes per write into a pty master when not paced
SINK_NAMES = {"mqtt": "mqtt", "udp": "udp", "websocket": "live"}  # kind → [sinks.NAME]
KINDS = {name: kind for kind, name in SINK_NAMES.items()}
MQTT_TOPIC = "gw/bench/#"

# -- scenarios ------------------------------------------------------------------------------

MQTT_ONE = {"sink": "mqtt", "qos": 1, "batch": {"max_readings": 1}}


@dataclass(frozen=True)
class Scenario:
    name: str
    devices: int
    readings: int  # offered, all devices together
    extends: str  # the preset the bench preset extends
    routes: tuple[dict, ...]
    rate: float | None = None  # readings/s for the whole run, paced; None: as fast as possible
    slow_link: float | None = None  # bytes/s between the gateway and the broker
    lift_after: float | None = None  # seconds after the first write, the slow link is lifted
    buffer: str | None = None  # the bench preset's buffer policy, when not its parent's
    mqtt_options: str = ""  # extra [sinks.mqtt] lines

    @property
    def binary_mqtt(self) -> bool:
        return any(
            KINDS[route["sink"]] == "mqtt" and route.get("encoding", "json") != "json"
            for route in self.routes
        )

    @property
    def kinds(self) -> list[str]:
        return [KINDS[route["sink"]] for route in self.routes]


SCENARIOS = {
    scenario.name: scenario
    for scenario in (
        Scenario("one-mqtt", 1, 300_000, "basic", (MQTT_ONE,)),
        # The same in memory only, pushing back on the device instead of spilling to disk
        # (lossless for a flow-controlled USB CDC device or a pty): Node-RED's shape.
        Scenario(
            "one-mqtt-block",
            1,
            300_000,
            "basic",
            (MQTT_ONE,),
            buffer="none",
            mqtt_options='buffer = { overflow = "block" }\n',
        ),
        Scenario(
            "one-mqtt-batched",
            1,
            1_000_000,
            "basic",
            ({"sink": "mqtt", "qos": 1, "batch": {"max_readings": 200}},),
        ),
        Scenario("four-basic", 4, 200_000, "basic", tuple(bench_routes("basic"))),
        Scenario(
            "four-high-throughput",
            4,
            800_000,
            "high_throughput",
            tuple(bench_routes("high_throughput")),
        ),
        Scenario(
            "latency",
            1,
            10_000,
            "realtime",
            ({"sink": "udp", "batch": {"max_readings": 1}}, MQTT_ONE),
            rate=1000,
        ),
        # The Node-RED comparison's paced load: 1,000 readings/s, one MQTT message each.
        Scenario("paced-mqtt", 1, 10_000, "basic", (MQTT_ONE,), rate=1000),
        # one-mqtt behind a 1 MB/s link for 10 s, then unthrottled until everything drained.
        Scenario("slow-link", 1, 300_000, "basic", (MQTT_ONE,), slow_link=1e6, lift_after=10),
    )
}
ALL = list(SCENARIOS)


def gateway_config(
    scenario: Scenario, paths: list[str], mqtt_port: int, udp_port: int, api_port: int
) -> str:
    sources = "".join(
        f'\n[[sources]]\nname = "dev-{i}"\nport = "{path}"\nstream = "bench"\npreset = "bench"\n'
        for i, path in enumerate(paths)
    )
    routes = ",\n  ".join(inline_table(route) for route in scenario.routes)
    sinks = {
        "mqtt": f'type = "mqtt"\nurl = "mqtt://127.0.0.1:{mqtt_port}"\nqos = 1\n'
        + scenario.mqtt_options,
        "udp": f'type = "udp"\ntargets = ["127.0.0.1:{udp_port}"]\n',
        "websocket": 'type = "websocket"\nqueue = 1000000\n',
    }
    sink_tables = "".join(f"\n[sinks.{SINK_NAMES[kind]}]\n{sinks[kind]}" for kind in scenario.kinds)
    return f"""[gateway]
id = "bench"
data_dir = "./var"

[api]
listen = "127.0.0.1:{api_port}"
{sources}
[presets.bench]
extends = "{scenario.extends}"
{f'buffer = "{scenario.buffer}"' if scenario.buffer else ""}
routes = [
  {routes},
]
{sink_tables}"""


# -- writers: one process per device ----------------------------------------------------------


def make_lines(count: int) -> bytes:
    """`count` JSON lines of about 70 bytes, n = 0 … count-1."""
    return b"".join(
        b'{"n":%d,"temperature":%.1f,"humidity":%.2f,"pressure":%.1f}\n'
        % (n, 18 + n % 97 / 10, 35 + n % 1000 / 100, 1000 + n % 250 / 10)
        for n in range(count)
    )


def _writer(link: str, count: int, rate: float | None, stall: float, pipe) -> None:
    """Writer process body: make the pty and the bytes, then write them when told to."""
    from gateway.sources.simulator import VirtualSerialDevice

    device = VirtualSerialDevice(link)
    data = make_lines(count)
    pipe.send(("ready", device.path, len(data)))
    try:
        if pipe.recv() != "go":
            return
        pipe.send(("done", write_device(device.master, data, count, rate, stall)))
        pipe.recv()  # "close": only after the gateway stopped, so no unread byte is thrown away
    except EOFError:
        pass  # the benchmark went away
    finally:
        device.close()


def write_device(fd: int, data: bytes, count: int, rate: float | None, stall: float) -> dict:
    """Write `data` into a non-blocking pty master; returns the write log and the waits.

    Unpaced: 64 KiB writes as fast as the pty takes them. Paced at `rate` lines/s: the lines
    due by now in one write, so at 1,000/s about one line per write.
    """
    times, last_n = array.array("d"), array.array("q")  # per write completing a line
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    view = memoryview(data)
    position, lines, waited, writes = 0, 0, 0.0, 0
    ends = line_ends(data) if rate else None
    started = time.perf_counter()
    while position < len(data):
        if rate:
            due = min(count, int((time.perf_counter() - started) * rate) + 1)
            limit = ends[due - 1]
            if position >= limit:  # all due lines are out: sleep until the next one is due
                time.sleep(max(0.0, started + due / rate - time.perf_counter()))
                continue
        else:
            limit = min(len(data), position + CHUNK)
        at = time.time()
        try:
            written = os.write(fd, view[position:limit])
        except BlockingIOError:
            before = time.perf_counter()
            if not poller.poll(stall * 1000):
                break  # nobody has read the pty for `stall` seconds: give up, report it
            waited += time.perf_counter() - before
            continue
        writes += 1
        completed = data.count(b"\n", position, position + written)
        position += written
        if completed:
            lines += completed
            times.append(at)
            last_n.append(lines - 1)
    return {
        "times": times,
        "last_n": last_n,
        "lines": lines,
        "writes": writes,
        "backpressure_seconds": waited,
        "seconds": time.perf_counter() - started,
    }


def line_ends(data: bytes) -> array.array:
    """Offset just after each line's newline."""
    ends, at = array.array("q"), data.find(b"\n")
    while at >= 0:
        ends.append(at + 1)
        at = data.find(b"\n", at + 1)
    return ends


class Writers:
    """One writer process per device; the ptys exist (and stay) until close()."""

    def __init__(
        self, context, directory: str, per_device: list[int], rate: float | None, stall: float
    ):
        self.pipes, self.processes, self.paths = [], [], []
        self.bytes = 0
        for i in range(len(per_device)):
            ours, theirs = context.Pipe()
            link = os.path.join(directory, f"tty-device-{i}")
            process = context.Process(
                target=_writer, args=(link, per_device[i], rate, stall, theirs), daemon=True
            )
            process.start()
            self.pipes.append(ours)
            self.processes.append(process)
        for pipe in self.pipes:
            if not pipe.poll(120):
                raise TimeoutError("a writer did not make its pty and lines")
            _ready, path, size = pipe.recv()
            self.paths.append(path)
            self.bytes += size

    def go(self) -> None:
        for pipe in self.pipes:
            pipe.send("go")

    def results(self, timeout: float) -> list[dict | None]:
        """Each writer's log, or None for one that has not finished within `timeout`."""
        deadline = time.monotonic() + timeout
        logs = []
        for pipe in self.pipes:
            ready = pipe.poll(max(0.0, deadline - time.monotonic()))
            logs.append(pipe.recv()[1] if ready else None)
        return logs

    def close(self) -> None:
        for pipe in self.pipes:
            try:
                pipe.send("close")
            except OSError:
                pass
        for process in self.processes:
            process.join(10)
            if process.is_alive():
                process.kill()


# -- receivers: one process per sink ---------------------------------------------------------


def _receiver(kind: str, settings: dict, ready, complete, stop, count, results) -> None:
    """Receiver process body: (payload, arrival time) until told to stop; then decoded."""
    received: list[tuple[bytes, float]] = []

    def add(payload: bytes, at: float) -> None:
        received.append((payload, at))
        count.value += count_readings(payload)
        if count.value >= settings["expected"]:
            complete.set()

    if kind == "udp":
        _receive_udp(settings, ready, stop, add)
    elif kind == "websocket":
        _receive_websocket(settings, ready, stop, add)
    else:
        _receive_mqtt(settings, ready, stop, add)
    results.put((kind, reduce(received)))


def _receive_udp(settings: dict, ready, stop, add) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:  # SO_RCVBUFFORCE (33; Python has no name for it) lets root exceed rmem_max
        sock.setsockopt(socket.SOL_SOCKET, 33, 64 * 1024 * 1024)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024 * 1024)
    # SO_TIMESTAMPNS (35): the kernel's arrival time, so a busy receiver adds no latency.
    sock.setsockopt(socket.SOL_SOCKET, 35, 1)
    sock.bind(("127.0.0.1", settings["port"]))
    sock.settimeout(0.1)
    ready.set()
    while not stop.is_set():
        try:
            payload, ancillary, _flags, _address = sock.recvmsg(65536, 64)
        except socket.timeout:
            continue
        at = time.time()
        for level, kind, value in ancillary:
            if level == socket.SOL_SOCKET and kind == 35:
                seconds, nanoseconds = struct.unpack("qq", value[:16])
                at = seconds + nanoseconds / 1e9
        add(payload, at)


def _receive_websocket(settings: dict, ready, stop, add) -> None:
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    with connect(settings["url"], max_size=None, open_timeout=10) as connection:
        ready.set()
        while not stop.is_set():
            try:
                message = connection.recv(timeout=0.1)
            except TimeoutError:
                continue
            except ConnectionClosed:
                return  # the gateway closed it (stopping, or a slow-consumer disconnect)
            add(message.encode() if isinstance(message, str) else message, time.time())


def _receive_mqtt(settings: dict, ready, stop, add) -> None:
    """mosquitto_sub (C, its own process) writes `<arrival time> <topic> <payload>` lines
    (the payload in hex when binary) to a file, which never blocks it; this process follows
    the file."""
    import subprocess

    port = str(settings["port"])
    hexed = settings["hex"]
    ready_topic = f"overload-ready/{os.getpid()}"
    subprocess.run(
        ["mosquitto_pub", "-p", port, "-t", ready_topic, "-m", "ready", "-r", "-q", "1"],
        check=True,
    )
    command = ["mosquitto_sub", "-p", port, "-q", "1", "-t", ready_topic, "-t", MQTT_TOPIC]
    with tempfile.NamedTemporaryFile(prefix="overload-sub-") as output:
        process = subprocess.Popen(
            [*command, "-F", "%U %t %x" if hexed else "%U %t %p"],
            stdout=output,
            stderr=subprocess.DEVNULL,
        )
        try:
            with open(output.name, "rb") as lines:  # our own offset, not the child's
                pending = b""
                while True:
                    chunk = lines.read()
                    if not chunk:
                        if stop.is_set():
                            break
                        time.sleep(0.02)  # another process's output file: polling is all there is
                        continue
                    *complete_lines, pending = (pending + chunk).split(b"\n")
                    for line in complete_lines:
                        at, topic, payload = line.split(b" ", 2)
                        if topic.decode() == ready_topic:
                            ready.set()
                        else:
                            add(bytes.fromhex(payload.decode()) if hexed else payload, float(at))
        finally:
            process.kill()
            process.wait()


def reduce(received: list[tuple[bytes, float]]) -> dict:
    """Per device: n and arrival time of every reading, in arrival order (compact arrays)."""
    devices: dict[str, tuple[array.array, array.array]] = {}
    messages = 0
    for payload, at in received:
        if not count_readings(payload):
            continue  # not a reading: the retained availability status, for one
        messages += 1
        for reading in decode_payload(payload):
            numbers, times = devices.setdefault(
                reading["device"], (array.array("q"), array.array("d"))
            )
            numbers.append(reading["data"]["n"])
            times.append(at)
    return {"messages": messages, "devices": devices}


class Receivers:
    """A receiver process per sink kind; start() returns once each listens."""

    def __init__(self, context, kinds: list[str], expected: int, ports: dict):
        self.results = context.Queue()
        self.stop = context.Event()
        self.receivers = {}
        for kind in kinds:
            ready, complete = context.Event(), context.Event()
            count = context.Value("q", 0, lock=False)  # one writer: the receiver
            settings = {"expected": expected, **ports[kind]}
            process = context.Process(
                target=_receiver,
                args=(kind, settings, ready, complete, self.stop, count, self.results),
                daemon=True,
            )
            process.start()
            if not ready.wait(30):
                raise TimeoutError(f"the {kind} receiver did not start")
            self.receivers[kind] = (process, complete, count)

    def counts(self) -> dict[str, int]:
        return {kind: count.value for kind, (_p, _c, count) in self.receivers.items()}

    def wait(self, timeout: float, stall: float) -> bool:
        """Wait until every receiver has all it expects; False after `timeout` in all, or
        when no receiver got anything for `stall` seconds.
        """
        deadline = time.monotonic() + timeout
        last, moved = self.counts(), time.monotonic()
        for _process, complete, _count in self.receivers.values():
            while not complete.wait(1.0):  # checks progress once a second meanwhile
                now, counts = time.monotonic(), self.counts()
                if counts != last:
                    last, moved = counts, now
                if now > deadline or now - moved > stall:
                    return False
        return True

    def finish(self) -> dict[str, dict]:
        self.stop.set()
        gathered = {}
        for _ in self.receivers:
            try:
                kind, reduced = self.results.get(timeout=120)
            except queue.Empty:  # a receiver died: its sink is reported as missing
                break
            gathered[kind] = reduced
        for process, _complete, _count in self.receivers.values():
            process.join(10)
        return gathered


# -- one run ---------------------------------------------------------------------------------


class Sampler(threading.Thread):
    """Every 0.1 s the gateway's resident memory (from /proc, costing it nothing); once a
    second its sinks' queue depths from the health API, timing how long the API takes."""

    def __init__(self, gateway: GatewayProcess):
        super().__init__(daemon=True)
        self.gateway = gateway
        self.rss_mb: list[float] = []
        self.rss_at: list[float] = []  # seconds since the sampler started
        self.health_ms: list[float] = []
        self.health_failures = 0  # no answer within 2 s (or an error): the API is stalled
        self.queues: dict[str, dict[str, int]] = {}
        self.stopped = threading.Event()

    def run(self) -> None:
        tick, started = 0, time.monotonic()
        while True:
            try:
                self.rss_mb.append(proc_status_mb(self.gateway.process.pid, "VmRSS"))
                self.rss_at.append(time.monotonic() - started)
                if tick % 10 == 0:
                    self._sample_queues()
            except OSError:
                return  # the gateway has gone; the run reports it
            tick += 1
            if self.stopped.wait(0.1):
                return

    def rss_peak(self) -> dict:
        if not self.rss_mb:
            return {}
        peak = max(range(len(self.rss_mb)), key=self.rss_mb.__getitem__)
        return {
            "rss_mb_sampled_max": self.rss_mb[peak],
            "rss_sampled_max_at_s": round(self.rss_at[peak], 1),
        }

    def _sample_queues(self) -> None:
        asked = time.perf_counter()
        try:
            sinks = self.gateway.health()["stats"]["sinks"]
        except OSError:
            self.health_failures += 1
            return
        self.health_ms.append((time.perf_counter() - asked) * 1000)
        for name, sink in sinks.items():
            peaks = self.queues.setdefault(name, {"depth": 0, "memory": 0, "disk": 0})
            for key in peaks:
                peaks[key] = max(peaks[key], sink["buffer"].get(key) or 0)


def proc_status_mb(pid: int, key: str) -> float:
    with open(f"/proc/{pid}/status") as status:
        kb = next(int(line.split()[1]) for line in status if line.startswith(key + ":"))
    return round(kb / 1024, 1)


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(scenario: Scenario, timeout: float, stall: float, keep: bool) -> tuple[dict, bool]:
    """One run of `scenario`; returns (report, completed). `keep`: leave its directory."""
    context = multiprocessing.get_context("spawn")
    directory = tempfile.mkdtemp(prefix="bench-overload-")
    per_device = [
        scenario.readings // scenario.devices + (i < scenario.readings % scenario.devices)
        for i in range(scenario.devices)
    ]
    offered = sum(per_device)
    per_device_rate = scenario.rate / scenario.devices if scenario.rate else None
    broker = proxy = writers = gateway = receivers = lift = None
    try:
        udp_port, api_port = free_udp_port(), free_port()
        mqtt_port = 0
        if "mqtt" in scenario.kinds:
            broker = Broker().start()
            mqtt_port = broker.port
            if scenario.slow_link:
                proxy = ThrottledProxy(broker.port, scenario.slow_link).start()
                mqtt_port = proxy.port
        writers = Writers(context, directory, per_device, per_device_rate, stall)
        config = gateway_config(scenario, writers.paths, mqtt_port, udp_port, api_port)
        gateway = GatewayProcess(config, directory)
        gateway.start(api_port)
        ports = {
            # The subscriber is never throttled; binary payloads come as hex, JSON as it is
            # (hex doubles what mosquitto_sub writes and this process decodes).
            "mqtt": {"port": broker.port if broker else 0, "hex": scenario.binary_mqtt},
            "udp": {"port": udp_port},
            "websocket": {"url": f"ws://127.0.0.1:{api_port}/ws"},
        }
        receivers = Receivers(context, scenario.kinds, offered, ports)
        pid = gateway.process.pid
        sampler = Sampler(gateway)
        sampler.start()
        cpu_before = cpu_seconds(pid)
        idle_rss = proc_status_mb(pid, "VmHWM")
        writers.go()
        if proxy and scenario.lift_after is not None:
            lift = threading.Timer(scenario.lift_after, proxy.set_rate, (None,))
            lift.start()
        write_budget = (offered / scenario.rate if scenario.rate else 0) + timeout
        logs = writers.results(write_budget)
        wrote_all = all(log and log["lines"] == n for log, n in zip(logs, per_device))
        received_all = wrote_all and receivers.wait(timeout, stall)
        sampler.stopped.set()
        # Resources just before the gateway stops (VmHWM: the peak over its whole life).
        peak_rss = proc_status_mb(pid, "VmHWM")
        rss_end = proc_status_mb(pid, "VmRSS")
        gateway_cpu = cpu_seconds(pid) - cpu_before
        try:
            stats = gateway.health()["stats"]
        except OSError:
            stats = None
        results = receivers.finish()  # before the gateway stops: it would close the WebSocket
        gateway.stop()
    finally:
        if lift:
            lift.cancel()
        if gateway:
            gateway.kill()
        if writers:
            writers.close()
        if proxy:
            proxy.close()
        if broker:
            broker.close()
        if not keep:
            shutil.rmtree(directory, ignore_errors=True)
    report = {
        "scenario": scenario.name,
        "devices": scenario.devices,
        "readings_offered": offered,
        "mode": f"paced {scenario.rate:g}/s" if scenario.rate else "as fast as the pty accepts",
        "complete": bool(received_all),
        **({"directory": directory} if keep else {}),
        "sinks": {},
    }
    written_at = [expand(log, count) for log, count in zip(logs, per_device)]
    first_write = min((log["times"][0] for log in logs if log and log["times"]), default=0.0)
    for kind in scenario.kinds:
        report["sinks"][kind] = summarise(results.get(kind), written_at, per_device, first_write)
    finished = [log for log in logs if log]
    backpressure = sum(log["backpressure_seconds"] for log in finished)
    writing = sum(log["seconds"] for log in finished)
    report.update(
        {
            "written": sum(log["lines"] for log in finished),
            "line_bytes_mean": round(writers.bytes / offered, 1),
            "write_seconds": round(max((log["seconds"] for log in finished), default=0), 3),
            "backpressure_seconds": round(backpressure, 3),
            "backpressure_fraction": round(backpressure / max(1e-9, writing), 3),
            "writes": sum(log["writes"] for log in finished),
            "peak_rss_mb": peak_rss,
            "peak_rss_mb_before_first_write": idle_rss,
            "rss_mb_at_end": rss_end,
            "rss_mb_samples": thin(sampler.rss_mb, 12),
            **sampler.rss_peak(),
            "sink_queue_peaks": sampler.queues,
            "api_health_ms_max": rounded(max(sampler.health_ms, default=None), 1),
            "api_health_failures": sampler.health_failures,
            "cpu_us_per_reading": round(gateway_cpu * 1e6 / offered, 2),
            "gateway_cpu_seconds": round(gateway_cpu, 2),
            "gateway": config_summary(scenario, stats),
        }
    )
    if proxy:
        report["slow_link"] = {
            "bytes_per_s": scenario.slow_link,
            "lift_after_s": scenario.lift_after,
            "bytes_to_broker": proxy.forwarded[UP],
            "bytes_from_broker": proxy.forwarded[DOWN],
        }
    return report, bool(received_all)


def rounded(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def thin(values: list[float], count: int) -> list[float]:
    """At most `count` of `values`, evenly spaced, the last one included."""
    step = max(1, -(-len(values) // count))
    return values[::-1][::step][::-1]


def expand(log: dict | None, count: int) -> array.array:
    """Write time of every line n of one device (0 for a line never written)."""
    written_at = array.array("d", bytes(8 * count))
    if log:
        first = 0
        for at, last in zip(log["times"], log["last_n"]):
            written_at[first : last + 1] = array.array("d", [at]) * (last + 1 - first)
            first = last + 1
    return written_at


def summarise(
    result: dict | None, written_at: list[array.array], per_device: list[int], first_write: float
) -> dict:
    """Unique, lost, duplicated readings, rate, latency and order at one sink."""
    if result is None:
        return {"delivered": 0, "lost": sum(per_device), "error": "receiver reported nothing"}
    unique = duplicates = 0
    order_kept = True
    latencies: list[float] = []
    last_arrival = first_write
    for device, (numbers, times) in result["devices"].items():
        index = int(device.rsplit("-", 1)[1])
        seen = bytearray(per_device[index])
        previous = -1
        for n, at in zip(numbers, times):
            if seen[n]:
                duplicates += 1
                continue
            seen[n] = 1
            unique += 1
            order_kept = order_kept and n > previous
            previous = n
            latencies.append((at - written_at[index][n]) * 1000)
            last_arrival = max(last_arrival, at)
    return {
        "delivered": unique,
        "lost": sum(per_device) - unique,
        "duplicates": duplicates,
        "messages": result["messages"],
        "readings_per_second": round(unique / max(1e-9, last_arrival - first_write)),
        "latency_ms_p50": rounded(percentile(latencies, 0.50) if latencies else None),
        "latency_ms_p99": rounded(percentile(latencies, 0.99) if latencies else None),
        "latency_ms_max": rounded(max(latencies, default=None)),
        "order_kept": order_kept,
    }


def config_summary(scenario: Scenario, stats: dict | None) -> dict:
    summary: dict = {"preset": f"bench (extends {scenario.extends})", "routes": scenario.routes}
    if stats:
        summary["totals"] = stats["totals"]
        summary["sink_buffers_at_end"] = {
            name: {key: sink["buffer"].get(key) for key in ("policy", "depth", "spilled", "drops")}
            for name, sink in stats["sinks"].items()
        }
    return summary


# -- command line ----------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    chosen = parser.add_mutually_exclusive_group(required=True)
    chosen.add_argument("--scenario", choices=ALL)
    chosen.add_argument("--all", action="store_true", help=f"run {', '.join(ALL)}")
    parser.add_argument("--readings", type=int, help="offered, all devices together")
    parser.add_argument("--devices", type=int)
    parser.add_argument("--rate", type=float, help="paced readings/s for the whole run")
    parser.add_argument("--slow-link", type=float, metavar="BYTES_PER_S", help="gateway → broker")
    parser.add_argument("--lift-after", type=float, metavar="SECONDS", help="unthrottle then")
    parser.add_argument(
        "--timeout", type=float, default=120, help="seconds to wait for writers and receivers"
    )
    parser.add_argument(
        "--stall", type=float, default=30, help="give up after this long without progress"
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep each run's directory (config, log, buffers)"
    )
    arguments = parser.parse_args()
    overrides = {
        key: value
        for key, value in (
            ("readings", arguments.readings),
            ("devices", arguments.devices),
            ("rate", arguments.rate),
            ("slow_link", arguments.slow_link),
            ("lift_after", arguments.lift_after),
        )
        if value is not None
    }
    failed = False
    for name in ALL if arguments.all else [arguments.scenario]:
        scenario = replace(SCENARIOS[name], **overrides)
        report, completed = run(scenario, arguments.timeout, arguments.stall, arguments.keep)
        print(json.dumps(report, default=list), flush=True)
        failed = failed or not completed
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
