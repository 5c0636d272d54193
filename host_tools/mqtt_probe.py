"""A small synchronous MQTT 3.1.1 subscriber for the gateway suite, on gateway.core.mqtt's codec.

It connects, subscribes, and collects what the broker delivers (retained messages flagged);
with another client's id it takes that client's session over, which makes the broker close
the other connection as if it had died, and so publish its last will.
"""

from __future__ import annotations

import select
import socket
import time
from urllib.parse import urlsplit

from gateway.core import mqtt

CONNECT_TIMEOUT = 5.0
KEEPALIVE = 30


class MqttProbeError(Exception):
    """The broker cannot be reached or refused us."""


class Message:
    def __init__(self, topic: str, payload: bytes, retain: bool, at: float):
        self.topic = topic
        self.payload = payload
        self.retain = retain
        self.at = at

    def __repr__(self) -> str:
        return f"<{self.topic} retain={self.retain} {self.payload[:40]!r}>"


def broker_address(url: str) -> tuple[str, int, str | None, str | None]:
    """(host, port, username, password) of an mqtt://[user:password@]host[:port] URL."""
    parts = urlsplit(url)
    if parts.scheme != "mqtt" or not parts.hostname:
        raise MqttProbeError(f"--mqtt {url!r}: expected mqtt://host[:port] (TLS is not probed)")
    return parts.hostname, parts.port or 1883, parts.username, parts.password


class MqttProbe:
    def __init__(self, url: str, client_id: str):
        host, port, username, password = broker_address(url)
        try:
            self.sock = socket.create_connection((host, port), timeout=CONNECT_TIMEOUT)
        except OSError as error:
            raise MqttProbeError(f"cannot reach the broker at {host}:{port}: {error}") from None
        self.reader = mqtt.PacketReader()
        self.pending: list = []
        self.next_id = 1
        self.sock.sendall(mqtt.connect(client_id, KEEPALIVE, True, username, password or None))
        connack = self._wait(mqtt.CONNACK, CONNECT_TIMEOUT)
        if connack is None or connack.return_code != 0:
            code = None if connack is None else connack.return_code
            raise MqttProbeError(f"the broker refused the connection (CONNACK {code})")

    def _read(self, timeout: float) -> None:
        ready, _, _ = select.select([self.sock], [], [], max(0.0, timeout))
        if not ready:
            return
        data = self.sock.recv(65536)
        if not data:
            raise MqttProbeError("the broker closed the connection")
        self.pending.extend(self.reader.feed(data))

    def _wait(self, kind: int, timeout: float):
        deadline = time.monotonic() + timeout
        while True:
            for index, packet in enumerate(self.pending):
                if packet.type == kind:
                    return self.pending.pop(index)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self._read(remaining)

    def subscribe(self, filters: list[str], qos: int = 1) -> None:
        packet_id, self.next_id = self.next_id, self.next_id + 1
        self.sock.sendall(mqtt.subscribe(packet_id, [(topic, qos) for topic in filters]))
        if self._wait(mqtt.SUBACK, CONNECT_TIMEOUT) is None:
            raise MqttProbeError(f"no SUBACK for {filters}")

    def messages(self, duration: float, until=None) -> list[Message]:
        """Every PUBLISH within duration seconds (or until until(messages) holds)."""
        found: list[Message] = []
        deadline = time.monotonic() + duration
        while time.monotonic() < deadline:
            self._read(min(0.1, deadline - time.monotonic()))
            rest = []
            for packet in self.pending:
                if packet.type != mqtt.PUBLISH:
                    rest.append(packet)
                    continue
                if packet.qos == 1:
                    self.sock.sendall(mqtt.puback(packet.packet_id))
                found.append(Message(packet.topic, packet.payload, packet.retain, time.time()))
            self.pending = rest
            if until is not None and until(found):
                break
        return found

    def close(self) -> None:
        try:
            self.sock.sendall(mqtt.disconnect())
        except OSError:
            pass
        self.sock.close()


def take_over(url: str, client_id: str) -> None:
    """Connect with client_id and leave cleanly: the broker drops the client that had it."""
    MqttProbe(url, client_id).close()
