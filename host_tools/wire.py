"""A serial port speaking wire protocol v1 from the host: frames in with their raw bytes, out.

Synchronous and small: `host-tools monitor`, `send` and the conformance suites drive it.
Every received frame keeps the bytes it came in (Received.raw), so a report can show the
frame in hex; frame errors (bad COBS, CRC, size) are items in the stream like frames.
"""

from __future__ import annotations

import os
import select
import time
from typing import Any, Callable

import serial

from gateway.core import cobs, protocol

# Frames longer than the protocol allows are still cut out whole (up to this size), so a
# report can show what a device sent; decode_frame() then refuses them as too_large.
SPLIT_LIMIT = 8192
WRITE_TIMEOUT = 3.0


class WireError(Exception):
    """The port cannot be opened or written."""


class Received:
    """One item from the port: a Frame or a ProtocolError, the encoded bytes, arrival time."""

    def __init__(self, raw: bytes, at: float, frame: Any = None, error: Any = None):
        self.raw = raw
        self.at = at
        self.frame: protocol.Frame | None = frame
        self.error: protocol.ProtocolError | None = error

    def is_type(self, kind: int) -> bool:
        return self.frame is not None and self.frame.type == kind

    def hex(self, limit: int = 96) -> str:
        return hex_bytes(self.raw + cobs.DELIMITER, limit)

    def __repr__(self) -> str:
        what = describe_frame(self.frame) if self.frame is not None else f"error {self.error}"
        return f"<{what}: {self.hex(32)}>"


def hex_bytes(data: bytes, limit: int = 96) -> str:
    """Space-separated hex, cut after limit bytes with the total length named."""
    shown = " ".join(f"{byte:02x}" for byte in data[:limit])
    return shown if len(data) <= limit else f"{shown} … ({len(data)} bytes)"


def describe_frame(frame: protocol.Frame) -> str:
    name = protocol.TYPE_NAMES.get(frame.type, f"0x{frame.type:02x}")
    flags = []
    if frame.flags & protocol.FLAG_RETRANSMIT:
        flags.append("RETRANSMIT")
    if frame.flags & protocol.FLAG_FRESH:
        flags.append("FRESH")
    return f"{name} seq {frame.seq}" + (f" [{','.join(flags)}]" if flags else "")


class Splitter:
    """Bytes in, Received items out (frames and frame errors, raw bytes kept)."""

    def __init__(self) -> None:
        self._splitter = cobs.FrameSplitter(SPLIT_LIMIT, mark_oversize=True)
        self.counters: dict[str, int] = {"frames": 0, **dict.fromkeys(protocol.FRAME_ERRORS, 0)}

    def feed(self, chunk: bytes, at: float) -> list[Received]:
        items = []
        for encoded in self._splitter.feed(chunk):
            if encoded is None:
                error = protocol.ProtocolError(
                    "too_large", f"more than {SPLIT_LIMIT} bytes before a 0x00"
                )
                items.append(Received(b"", at, error=error))
                self.counters["too_large"] += 1
                continue
            try:
                frame = protocol.decode_frame(encoded)
            except protocol.ProtocolError as error:
                self.counters[error.code] += 1
                items.append(Received(bytes(encoded), at, frame=error.frame, error=error))
                continue
            self.counters["frames"] += 1
            items.append(Received(bytes(encoded), at, frame=frame))
        return items


class Channel:
    """A port (a tty path opened with pyserial, or an open descriptor) carrying frames."""

    def __init__(self, path: str | None = None, baud: int = 115200, fd: int | None = None):
        self.path = path
        self._serial: serial.Serial | None = None
        if fd is None:
            if path is None:
                raise WireError("a port path or a descriptor is needed")
            try:
                self._serial = serial.Serial(path, baud, timeout=0, exclusive=True)
            except (serial.SerialException, OSError, ValueError) as error:
                raise WireError(f"cannot open {path}: {error}") from None
            fd = self._serial.fileno()
        os.set_blocking(fd, False)
        self.fd = fd
        self.splitter = Splitter()
        self.backlog: list[Received] = []
        self.history: list[Received] = []  # everything taken, for reports (bounded)
        self.sent: list[bytes] = []  # every frame written (bounded)
        self.next_request = 1
        self.closed = False

    HISTORY = 4096  # items kept for reports; older ones are dropped

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._serial is not None:
            self._serial.close()

    def __enter__(self) -> Channel:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    # -- receiving ---------------------------------------------------------------------------

    def read_raw(self, timeout: float) -> bytes:
        """Whatever bytes arrive within timeout (b"" when none); raises WireError on hangup."""
        ready, _, _ = select.select([self.fd], [], [], max(0.0, timeout))
        if not ready:
            return b""
        try:
            data = os.read(self.fd, 65536)
        except BlockingIOError:
            return b""
        except OSError as error:
            raise WireError(f"{self.path or 'port'}: {error.strerror or error}") from None
        if not data:
            raise WireError(f"{self.path or 'port'}: the device hung up")
        return data

    def _pump(self, timeout: float) -> None:
        data = self.read_raw(timeout)
        if data:
            self.backlog.extend(self.splitter.feed(data, time.monotonic()))

    def take(self, timeout: float) -> Received | None:
        """The next item, or None when nothing comes within timeout."""
        deadline = time.monotonic() + timeout
        while not self.backlog:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self._pump(remaining)
        item = self.backlog.pop(0)
        self.history.append(item)
        if len(self.history) > self.HISTORY:
            del self.history[: len(self.history) - self.HISTORY]
        return item

    def expect(
        self,
        predicate: Callable[[Received], bool],
        timeout: float,
        on_other: Callable[[Received], None] | None = None,
    ) -> Received | None:
        """The first item matching predicate within timeout (None if none); others go to
        on_other (so a caller can keep ACKing DATA while it waits for a RESP)."""
        deadline = time.monotonic() + timeout
        while True:
            item = self.take(deadline - time.monotonic())
            if item is None:
                return None
            if predicate(item):
                return item
            if on_other is not None:
                on_other(item)

    def collect(self, duration: float, on_item: Callable[[Received], None]) -> None:
        """Hand every item arriving within duration seconds to on_item."""
        deadline = time.monotonic() + duration
        while True:
            item = self.take(deadline - time.monotonic())
            if item is None:
                return
            on_item(item)

    def drain(self, quiet: float = 0.05) -> list[Received]:
        items = []
        while (item := self.take(quiet)) is not None:
            items.append(item)
        return items

    # -- sending -----------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        deadline = time.monotonic() + WRITE_TIMEOUT
        while view:
            try:
                view = view[os.write(self.fd, view) :]
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise WireError(f"{self.path or 'port'}: the device does not read") from None
                select.select([], [self.fd], [], 0.05)
            except OSError as error:
                raise WireError(f"{self.path or 'port'}: {error.strerror or error}") from None

    def send(self, kind: int, seq: int = 0, payload: bytes = b"", flags: int = 0) -> bytes:
        """Write one frame; returns its bytes on the wire."""
        data = protocol.encode_frame(kind, seq, payload, flags)
        self.write(data)
        self.sent.append(data)
        if len(self.sent) > self.HISTORY:
            del self.sent[0]
        return data

    def ack(self, seq: int) -> bytes:
        return self.send(protocol.ACK, seq)

    def ack_fresh(self) -> bytes:
        return self.send(protocol.ACK, protocol.FRESH_SEQ, flags=protocol.FLAG_FRESH)

    def nack(self, code: int, expected: int = 0, reason: str = "") -> bytes:
        return self.send(protocol.NACK, payload=protocol.nack_payload(code, expected, reason))

    def command(self, name: str, args: dict[str, Any] | None = None) -> tuple[int, bytes]:
        """Send a CMD with the next request id; (request id, bytes on the wire)."""
        request_id = self.next_request
        self.next_request = protocol.seq_add(request_id, 1) or 1
        payload = protocol.cmd_payload(request_id, name, args or {})
        return request_id, self.send(protocol.CMD, payload=payload)


def resp_for(request_id: int) -> Callable[[Received], bool]:
    """A predicate: a RESP (that parses) answering request_id."""

    def answers(item: Received) -> bool:
        if not item.is_type(protocol.RESP):
            return False
        try:
            return protocol.parse_resp(item.frame.payload)[0] == request_id
        except protocol.ProtocolError:
            return False

    return answers
