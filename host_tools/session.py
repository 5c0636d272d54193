"""The host acting as the device's gateway: a Channel driven by the gateway's own CobsLink.

`monitor` and `send` need the device to keep talking while they watch or ask: its HELLO
acknowledged, its DATA acknowledged in order, gaps NACKed. The gateway's protocol state
machine (gateway.sources.cobs_link.CobsLink, sans-I/O) decides every answer; this module
only moves bytes between it and the port.
"""

from __future__ import annotations

import time

from gateway.sources.cobs_link import CobsLink
from host_tools.wire import Channel, Received


class Session:
    """pump(timeout) reads what arrives, answers it like a gateway, returns the items seen.

    With answer=False the session only listens (a passive tap: nothing is written).
    """

    def __init__(self, channel: Channel, answer: bool = True):
        self.channel = channel
        self.answer = answer
        self.link = CobsLink(channel.path or "port")
        self.link.connected(channel.path or "port")
        if answer:
            self._flush()
        else:
            self.link.data_to_send()

    def pump(self, timeout: float) -> list[Received]:
        delay = self.link.ack_delay(time.monotonic())
        if delay is not None:
            timeout = max(0.0, min(timeout, delay))
        return self.feed(self.channel.read_raw(timeout))

    def feed(self, data: bytes) -> list[Received]:
        """Take bytes read from the port: decode them for the caller, answer the device."""
        items: list[Received] = []
        if data:
            now = time.monotonic()
            items = self.channel.splitter.feed(data, now)
            self.link.receive(data, time.time(), now)
            self.link.readings.clear()  # nothing is delivered anywhere: the host only looks
        self._answer()
        return items

    def _answer(self) -> None:
        if not self.answer:
            self.link.data_to_send()
            return
        self._flush()
        delay = self.link.ack_delay(time.monotonic())
        if delay is not None and delay <= 0:
            ack = self.link.take_ack()
            if ack:
                self.channel.write(ack)
            self.link.ack_sent()

    def _flush(self) -> None:
        data = self.link.data_to_send()
        if data:
            self.channel.write(data)

    def command(self, request_id: int, name: str, args: dict) -> None:
        """Queue a CMD through the link (checked against the device's max_frame) and send it."""
        self.link.command(request_id, name, args)
        self._flush()

    def response(self, request_id: int, timeout: float) -> tuple[int, object] | None:
        """(status, result) of the RESP to request_id, pumping meanwhile; None on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            for index, (answered, status, result) in enumerate(self.link.responses):
                if answered == request_id:
                    del self.link.responses[index]
                    return status, result
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self.pump(min(remaining, 0.1))
