"""A UDP receiver on a thread of its own: every datagram it gets, decoded as JSON, in order."""

from __future__ import annotations

import json
import socket
import threading
import time


class UdpCollector:
    """Binds 127.0.0.1 on a free port; `readings` grows as datagrams come (JSON readings)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.1)  # how often the thread looks whether it should end
        self.port = self.sock.getsockname()[1]
        self.readings: list[dict] = []
        self.arrivals: list[float] = []  # time.time() at which each reading was received
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._closing.is_set():
            try:
                payload = self.sock.recv(65536)
            except socket.timeout:
                continue
            decoded = json.loads(payload)
            readings = decoded if isinstance(decoded, list) else [decoded]
            self.arrivals.extend([time.time()] * len(readings))
            self.readings.extend(readings)

    def close(self) -> None:
        self._closing.set()
        self._thread.join(5)
        self.sock.close()
