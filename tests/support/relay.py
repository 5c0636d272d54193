"""A damaged cable for tests: relays frames between two ptys, corrupting some, and counts them.

    device pty (CobsTestDevice)  ⇄  CorruptingRelay  ⇄  gateway pty (relay.path)

The relay cuts each direction at the 0x00 delimiters and, with the given probability per
frame, either flips one byte (never into 0x00, so the frame stays one frame) or truncates
the frame (keeping at least one byte and its delimiter). Every damaged frame is counted, so a
test can check that the far end counted exactly as many bad frames. hold(direction) swallows
whole frames in one direction until release(direction) (a cable that stops carrying ACKs), and
`tap` sees every whole frame as its sender wrote it.
"""

from __future__ import annotations

import asyncio
import collections
import os
import random
import tty
from typing import Callable

from gateway.sources.simulator import VirtualSerialDevice

TO_GATEWAY = "to_gateway"
TO_DEVICE = "to_device"


class _Writer:
    """Non-blocking writes to one fd, the rest kept until the fd is writable again."""

    def __init__(self, fd: int):
        self.fd = fd
        self.pending = bytearray()
        self._waiting = False

    def write(self, data: bytes) -> None:
        self.pending += data
        self._flush()

    def _flush(self) -> None:
        try:
            written = os.write(self.fd, self.pending)
        except BlockingIOError:
            written = 0
        del self.pending[:written]
        loop = asyncio.get_running_loop()
        if self.pending and not self._waiting:
            loop.add_writer(self.fd, self._flush)
            self._waiting = True
        elif not self.pending and self._waiting:
            loop.remove_writer(self.fd)
            self._waiting = False

    def close(self) -> None:
        if self._waiting:
            asyncio.get_running_loop().remove_writer(self.fd)
            self._waiting = False


class CorruptingRelay:
    """Relays between the device's pty (its slave end, at `device_path`) and a new pty whose
    slave end (`path`) the gateway opens; damages frames with probability `to_gateway` and
    `to_device` per direction."""

    def __init__(
        self,
        device_path: str,
        to_gateway: float = 0.0,
        to_device: float = 0.0,
        seed: int = 1,
        path: str | None = None,
    ):
        # `path`: a stable link to the gateway side, like VirtualSerialDevice's own.
        self.gateway_side = VirtualSerialDevice(path)
        self.probability = {TO_GATEWAY: to_gateway, TO_DEVICE: to_device}
        self.frames: collections.Counter = collections.Counter()  # relayed, per direction
        self.corrupted: collections.Counter = collections.Counter()  # per direction
        self.kinds: collections.Counter = collections.Counter()  # "flip", "truncate"
        self.holding: set[str] = set()  # directions whose frames are swallowed
        self.held: collections.Counter = collections.Counter()  # frames swallowed, per direction
        # Called with (direction, frame without its 0x00) for every frame, before any damage.
        self.tap: Callable[[str, bytes], None] | None = None
        self._rng = random.Random(seed)
        self._device_fd = os.open(device_path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        tty.setraw(self._device_fd)
        gateway_fd = self.gateway_side.master
        assert gateway_fd is not None
        self._ends = {
            TO_GATEWAY: (self._device_fd, _Writer(gateway_fd)),
            TO_DEVICE: (gateway_fd, _Writer(self._device_fd)),
        }
        self._partial = {TO_GATEWAY: b"", TO_DEVICE: b""}

    @property
    def path(self) -> str:
        return self.gateway_side.path

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        for direction, (source, _writer) in self._ends.items():
            loop.add_reader(source, self._relay, direction)

    def hold(self, direction: str) -> None:
        """Swallow every frame going `direction` (whole frames only) until release()."""
        self.holding.add(direction)

    def release(self, direction: str) -> None:
        self.holding.discard(direction)

    def close(self) -> None:
        loop = asyncio.get_running_loop()
        for source, writer in self._ends.values():
            loop.remove_reader(source)
            writer.close()
        os.close(self._device_fd)
        self.gateway_side.close()

    def _relay(self, direction: str) -> None:
        source, writer = self._ends[direction]
        try:
            chunk = os.read(source, 65536)
        except (BlockingIOError, OSError):
            return
        *frames, self._partial[direction] = (self._partial[direction] + chunk).split(b"\x00")
        out = []
        for frame in frames:
            if frame:
                self.frames[direction] += 1
                if self.tap is not None:
                    self.tap(direction, frame)
                if direction in self.holding:
                    self.held[direction] += 1
                    continue
                if self._rng.random() < self.probability[direction]:
                    frame = self._damage(frame, direction)
            out.append(frame + b"\x00")
        if out:
            writer.write(b"".join(out))

    def _damage(self, frame: bytes, direction: str) -> bytes:
        self.corrupted[direction] += 1
        rng = self._rng
        if len(frame) > 1 and rng.random() < 0.5:
            self.kinds["truncate"] += 1
            return frame[: rng.randrange(1, len(frame))]
        self.kinds["flip"] += 1
        damaged = bytearray(frame)
        position = rng.randrange(len(damaged))
        # XOR with anything but the byte itself: the result is never 0x00 (a delimiter).
        mask = rng.choice([value for value in range(1, 256) if value != damaged[position]])
        damaged[position] ^= mask
        return bytes(damaged)
