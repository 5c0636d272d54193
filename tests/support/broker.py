"""A real Mosquitto process on a free loopback port that tests can stop and restart."""

from __future__ import annotations

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
