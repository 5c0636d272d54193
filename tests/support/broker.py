"""Real Mosquitto processes on free loopback ports that tests stop and restart, and subscribers."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_port(host: str, port: int, timeout: float = 10.0) -> None:
    """Block until something accepts TCP connections on host:port."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on {host}:{port}") from None
            time.sleep(0.02)  # polling a port: there is no event to await


class Broker:
    """Mosquitto on 127.0.0.1:<port>, restartable on the same port."""

    def __init__(self, port: int | None = None):
        self.binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.port = port or free_port()
        self.directory = tempfile.mkdtemp(prefix="mosquitto-")
        self.config_path = os.path.join(self.directory, "mosquitto.conf")
        with open(self.config_path, "w") as config:
            config.write(
                f"listener {self.port} 127.0.0.1\n"
                "allow_anonymous true\n"
                "persistence false\n"
                "max_queued_messages 1000000\n"
                "max_inflight_messages 0\n"
                "log_dest none\n"
            )
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> Broker:
        self.process = subprocess.Popen(
            [self.binary, "-c", self.config_path],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port("127.0.0.1", self.port)
        return self

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        self.process = None

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


class Subscriber:
    """An independent MQTT client (paho) that records every message on a topic filter."""

    def __init__(self, broker_port: int, topic: str = "#", qos: int = 1):
        import threading

        import paho.mqtt.client as paho

        self.messages: list[tuple[str, bytes, float]] = []
        self._lock = threading.Condition()
        self._subscribed = threading.Event()
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv311)
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *args: self._subscribed.set()
        self.client.on_connect = lambda client, *args: client.subscribe(topic, qos)
        self.client.connect("127.0.0.1", broker_port)
        self.client.loop_start()
        if not self._subscribed.wait(10):
            raise TimeoutError("subscription not acknowledged")

    def _on_message(self, client, userdata, message) -> None:
        with self._lock:
            self.messages.append((message.topic, message.payload, time.time()))
            self._lock.notify_all()

    def wait_for(self, predicate, timeout: float = 30.0) -> bool:
        """Wait until predicate(messages) is true; returns whether it became true."""
        with self._lock:
            return self._lock.wait_for(lambda: predicate(self.messages), timeout)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


class PersistentBroker(Broker):
    """Keeps sessions and queued messages across restarts, so a subscriber misses nothing."""

    def __init__(self, port: int | None = None):
        super().__init__(port)
        # Mosquitto started as root drops to its own user: the database needs a writable place.
        database = os.path.join(self.directory, "db")
        os.mkdir(database)
        os.chmod(self.directory, 0o755)
        os.chmod(database, 0o777)
        with open(self.config_path) as config:
            text = config.read()
        text = text.replace(
            "persistence false\n",
            f"persistence true\npersistence_location {database}/\n"
            # Queued messages go out one per PUBACK; Nagle plus delayed ACKs would make that
            # a 40 ms round trip each for the test subscriber.
            "set_tcp_nodelay true\n",
        )
        with open(self.config_path, "w") as config:
            config.write(text)


class ProcessSubscriber:
    """mosquitto_sub in its own process with a persistent session at QoS 1.

    It keeps up with the sink (no shared GIL) and, with a PersistentBroker, misses nothing
    while either side reconnects.
    """

    READY = "test/ready"

    def __init__(self, port: int, topic: str):
        subprocess.run(
            ["mosquitto_pub", "-p", str(port), "-t", self.READY, "-m", "ready", "-r", "-q", "1"],
            check=True,
        )
        self.output = tempfile.NamedTemporaryFile(prefix="mqtt-sub-", suffix=".txt")  # noqa: SIM115
        self.process = subprocess.Popen(
            ["mosquitto_sub", "-p", str(port), "-c", "-i", f"sub-{port}", "-q", "1"]
            + ["-t", self.READY, "-t", topic, "-F", "%t %p"],
            stdout=self.output,
            stderr=subprocess.DEVNULL,
        )
        # The retained READY message arrives right after SUBACK: then the session exists.
        deadline = time.monotonic() + 10
        while os.path.getsize(self.output.name) == 0:
            assert time.monotonic() < deadline, "mosquitto_sub did not subscribe"
            time.sleep(0.01)  # another process's output: polling is all there is

    def readings(self) -> list[dict]:
        """Every reading received so far, in arrival order (status messages left out)."""
        # One read of what is there: iterating lines would go on past a half-written last
        # line (mosquitto_sub writes through a buffer) and return its rest as a line of its own.
        with open(self.output.name) as output:
            *lines, _partial = output.read().split("\n")
        found = []
        for line in lines:
            topic, _, payload = line.partition(" ")
            if topic == self.READY or topic.endswith("/status"):
                continue
            found.append(json.loads(payload))
        return found

    def seqs(self) -> list[int]:
        return [reading["seq"] for reading in self.readings()]

    async def wait_for_unique(self, count: int, timeout: float = 30.0) -> None:
        """Wait (in an event loop) until count distinct readings arrived."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(set(self.seqs())) < count:
            if loop.time() > deadline:
                raise AssertionError(f"timed out waiting for {count} readings")
            await asyncio.sleep(0.05)  # another process's output: polling is all there is

    def close(self) -> None:
        self.process.kill()
        self.process.wait()
        self.output.close()
