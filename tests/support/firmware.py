"""Sensor-node firmware in tests: start a node on a pty, and a minimal gateway peer to talk to it.

    device = VirtualSerialDevice()
    node = start_node(node_config("bench-1", rate=20), "micropython", str(tmp_path), device)
    ...the gateway (or Peer) opens device.path...
    node.stop()

A pulled USB cable powers a board down, so "unplug" with a firmware node is node.stop() plus
device.unplug(); "replug" is device.replug() plus a fresh start_node() (a new boot).
"""

from __future__ import annotations

import os
import select
import time
import tty
from typing import Any, Callable

from gateway.core import protocol
from gateway.sources.simulator import VirtualSerialDevice
from host_tools.simulate import RUNTIMES, NodeProcess, find_micropython, node_config

__all__ = ["RUNTIMES", "NodeProcess", "Peer", "find_micropython", "node_config", "start_node"]


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
