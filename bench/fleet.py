"""Fleet benchmark: many gateway processes with simulated devices into a 3-node NATS cluster.

Each gateway (`gateway run`, a process of its own) owns its topic namespace gw/<id>/…,
reads `--devices` simulated devices (ptys through the real serial path, `simulate` in its
config) and publishes at QoS 1 through one MQTT sink whose `urls` list the three nodes,
starting at a different node per gateway so the fleet spreads over the cluster.
Consumers (mosquitto_sub, persistent QoS 1 sessions) on the nodes split the namespaces
between them — NATS has no MQTT shared subscriptions — and every reading is counted.

Prints one JSON object: readings made, acknowledged and received (unique, duplicates),
readings/s, per-gateway peak RSS and CPU, and the NATS nodes' peak RSS.

    python bench/fleet.py                       # 20 gateways x 4 devices x 50 lines/s, 20 s
    python bench/fleet.py --gateways 5 --seconds 10
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.support.broker import free_port  # noqa: E402
from tests.support.e2e import GatewayProcess  # noqa: E402
from tests.support.nats_cluster import NatsCluster  # noqa: E402
from tests.support.waiting import wait_until  # noqa: E402

READY_TOPIC = "fleet/ready"


def gateway_id(index: int) -> str:
    return f"fleet-{index:02d}"


def fleet_config(
    index: int, urls: list[str], devices: int, rate: float, api_port: int, inflight: int
) -> str:
    rotated = urls[index % len(urls) :] + urls[: index % len(urls)]
    sources = "".join(
        f'\n[[sources]]\nname = "dev-{device}"\n'
        f'simulate = {{ profile = "counter", rate = {rate} }}\npreset = "fleet"\n'
        for device in range(devices)
    )
    return f"""
[gateway]
id = "{gateway_id(index)}"
data_dir = "./var"

[api]
listen = "127.0.0.1:{api_port}"
{sources}
[presets.fleet]
extends = "basic"
buffer = "spill"

[sinks.mqtt]
type = "mqtt"
urls = [{", ".join(json.dumps(url) for url in rotated)}]
qos = 1
max_inflight = {inflight}
"""


class Consumer:
    """mosquitto_sub on one node with a persistent session, for some gateways' namespaces."""

    def __init__(self, port: int, name: str, topics: list[str], directory: str):
        subprocess.run(
            ["mosquitto_pub", "-p", str(port), "-t", READY_TOPIC, "-m", "1", "-r", "-q", "1"],
            check=True,
        )
        self.path = os.path.join(directory, f"{name}.txt")
        self._output = open(self.path, "wb")  # noqa: SIM115 - the child writes until close()
        command = ["mosquitto_sub", "-p", str(port), "-c", "-i", name, "-q", "1"]
        for topic in [READY_TOPIC, *topics]:
            command += ["-t", topic]
        self.process = subprocess.Popen(
            command + ["-F", "%t %p"], stdout=self._output, stderr=subprocess.DEVNULL
        )
        # The retained READY message comes right after the SUBACK: then the session exists.
        wait_until(lambda: os.path.getsize(self.path) > 0, 20, f"{name} subscribed")

    def readings(self) -> list[tuple[str, str, int]]:
        """(gateway, device, seq) of every reading received, in arrival order."""
        found = []
        with open(self.path, "rb") as lines:
            for line in lines:
                topic, _, payload = line.rstrip(b"\n").partition(b" ")
                if topic == READY_TOPIC.encode() or topic.endswith(b"/status"):
                    continue
                reading = json.loads(payload)
                found.append((reading["gateway"], reading["device"], reading["seq"]))
        return found

    def close(self) -> None:
        self.process.kill()
        self.process.wait()
        self._output.close()


def caught_up(gateways: list[GatewayProcess], made: list[int]) -> bool:
    delivered = [gateway.health()["stats"]["totals"]["delivered"]["mqtt"] for gateway in gateways]
    return all(done >= wanted for done, wanted in zip(delivered, made))


def peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        kb = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    return round(kb / 1024, 1)


def final_totals(gateway: GatewayProcess) -> dict:
    """The totals line `gateway run` prints at its stop (the last JSON line of its log)."""
    with open(gateway.log_path, errors="replace") as log:
        lines = [line for line in log if line.startswith("{")]
    return json.loads(lines[-1])


def run(arguments: argparse.Namespace) -> dict:
    directory = tempfile.mkdtemp(prefix="fleet-")
    cluster = NatsCluster().start()
    consumers: list[Consumer] = []
    gateways: list[GatewayProcess] = []
    try:
        ids = [gateway_id(index) for index in range(arguments.gateways)]
        for number in range(arguments.consumers):
            node = cluster.nodes[(number + 1) % len(cluster.nodes)]
            mine = [f"gw/{name}/#" for name in ids[number :: arguments.consumers]]
            consumers.append(Consumer(node.mqtt_port, f"consumer-{number}", mine, directory))
        ports = [free_port() for _ in ids]
        for index, port in enumerate(ports):
            settings = (arguments.devices, arguments.rate, port, arguments.inflight)
            text = fleet_config(index, cluster.mqtt_urls, *settings)
            os.makedirs(os.path.join(directory, ids[index]))
            gateways.append(GatewayProcess(text, os.path.join(directory, ids[index])))
        started = time.monotonic()
        with ThreadPoolExecutor(len(gateways)) as pool:
            list(pool.map(lambda pair: pair[0].start(pair[1], 120), zip(gateways, ports)))
        ready_after = time.monotonic() - started
        began = time.monotonic()
        at_start = [gateway.resources() for gateway in gateways]
        made_before = sum(gateway.health()["stats"]["totals"]["readings"] for gateway in gateways)
        time.sleep(arguments.seconds)  # the measured run
        resources = [gateway.resources() for gateway in gateways]
        made_by_end = [gateway.health()["stats"]["totals"]["readings"] for gateway in gateways]
        made_during = sum(made_by_end) - made_before
        elapsed = time.monotonic() - began
        # Before the stop: until each gateway has delivered what it made in the run.
        ended = time.monotonic()
        try:
            wait_until(lambda: caught_up(gateways, made_by_end), 60, "the backlog", 0.5)
        except AssertionError:
            pass  # reported below as buffered at the stop
        catch_up = time.monotonic() - ended
        for entry, start in zip(resources, at_start):
            entry["cpu_seconds"] -= start["cpu_seconds"]  # the run's, not the start-up's
        with ThreadPoolExecutor(len(gateways)) as pool:
            codes = list(pool.map(lambda gateway: gateway.stop(60), gateways))
        totals = [final_totals(gateway) for gateway in gateways]
        readings = sum(total["readings"] for total in totals)
        delivered = sum(total["delivered"]["mqtt"] for total in totals)

        def received() -> list[tuple[str, str, int]]:
            return [entry for consumer in consumers for entry in consumer.readings()]

        try:
            wait_until(lambda: len(set(received())) >= delivered, 60, "every reading", 0.5)
        except AssertionError:
            pass  # reported below as missing
        arrived = received()
        unique = len(set(arrived))
        nats_rss = [peak_rss_mb(node.process.pid) for node in cluster.nodes]
    finally:
        for gateway in gateways:
            gateway.kill()
        for consumer in consumers:
            consumer.close()
        cluster.close()
        shutil.rmtree(directory, ignore_errors=True)
    rss = [entry["peak_rss_mb"] for entry in resources]
    cpu = [entry["cpu_seconds"] / elapsed * 100 for entry in resources]
    return {
        "bench": "fleet",
        "gateways": arguments.gateways,
        "devices_per_gateway": arguments.devices,
        "rate_per_device": arguments.rate,
        "max_inflight": arguments.inflight,
        "offered_per_s": arguments.gateways * arguments.devices * arguments.rate,
        "seconds": round(elapsed, 1),
        "fleet_ready_s": round(ready_after, 1),
        "exit_codes_ok": all(code == 0 for code in codes),
        "readings": readings,
        "delivered": delivered,
        "received_unique": unique,
        "duplicates": len(arrived) - unique,
        # Acknowledged by the cluster but never received: must be 0.
        "lost": max(0, delivered - unique),
        # Made but not yet acknowledged at the stop: on the gateways' disks for their next run.
        "buffered_at_stop": readings - delivered,
        "catch_up_s": round(catch_up, 1),
        "readings_per_s": round(made_during / elapsed),  # the measured run's
        "gateway_peak_rss_mb": {"max": max(rss), "mean": round(sum(rss) / len(rss), 1)},
        # CPU during the run (start-up excluded), as % of one core per gateway.
        "gateway_cpu_percent": {
            "max": round(max(cpu), 1),
            "mean": round(sum(cpu) / len(cpu), 1),
        },
        "cpu_us_per_reading": round(
            sum(entry["cpu_seconds"] for entry in resources) / max(1, made_during) * 1e6, 1
        ),
        "nats_peak_rss_mb": nats_rss,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--gateways", type=int, default=20)
    parser.add_argument("--devices", type=int, default=4, help="simulated devices per gateway")
    parser.add_argument("--rate", type=float, default=50.0, help="lines/s per device")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--consumers", type=int, default=2)
    parser.add_argument("--inflight", type=int, default=200, help="max_inflight per gateway")
    result = run(parser.parse_args())
    print(json.dumps(result))
    return 0 if result["lost"] == 0 and result["exit_codes_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
