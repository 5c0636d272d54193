"""A reservation file on a disk that fails or dies on cue, for SequenceStore tests.

Writes and fsyncs are the real ones on a real file; the disk only decides, per call, to
fail it (OSError, part of the bytes written, as a full or failing disk does) or to crash
the process there (Crash). A power cut then puts back what was not fsynced: per write all
of it, none of it, or a torn part, as a disk without power-loss protection may.
"""

from __future__ import annotations

import errno
import os
import random
from typing import Any

from gateway.store.reservations import ReservationFile, read_slots, resume_point
from gateway.store.sequences import SequenceStore


class Crash(BaseException):
    """The process died here (a BaseException: the store's `except OSError` must not see it)."""


class Disk:
    """Decides the fate of each write and fsync; remembers what a power cut may undo."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.crash_rate = 0.0
        self.fail_rate = 0.0
        self.calls = 0
        self.files: list[ReservationFile] = []  # every file opened, to close at a crash
        # (path, offset, bytes there before, file size before) of writes not yet fsynced
        self.unsynced: list[tuple[str, int, bytes, int]] = []

    def store_type(self) -> type[SequenceStore]:
        """A SequenceStore whose reservation file lives on this disk."""
        disk = self

        class FaultyFile(ReservationFile):
            def __init__(self, path: str):
                super().__init__(path)
                disk.files.append(self)

            def _pwrite(self, fd: int, data: bytes, offset: int) -> None:
                disk.pwrite(fd, data, offset)

            def _fsync(self, fd: int) -> None:
                disk.fsync(fd)

        class FaultyStore(SequenceStore):
            file_type = FaultyFile

        return FaultyStore

    def pwrite(self, fd: int, data: bytes, offset: int) -> None:
        self.calls += 1
        path = os.readlink(f"/proc/self/fd/{fd}")
        size = os.fstat(fd).st_size
        self.unsynced.append((path, offset, os.pread(fd, len(data), offset), size))
        fate = self._fate()
        if fate == "ok":
            os.pwrite(fd, data, offset)
            return
        os.pwrite(fd, data[: self.rng.randrange(len(data) + 1)], offset)  # a part got there
        if fate == "crash":
            raise Crash("during a reservation write")
        raise OSError(self.rng.choice((errno.ENOSPC, errno.EIO)), "injected write failure")

    def fsync(self, fd: int) -> None:
        self.calls += 1
        fate = self._fate()
        if fate == "crash":
            raise Crash("before an fsync")
        if fate == "fail":
            raise OSError(errno.EIO, "injected fsync failure")
        os.fsync(fd)
        path = os.readlink(f"/proc/self/fd/{fd}")
        self.unsynced = [entry for entry in self.unsynced if entry[0] != path]

    def crashed(self, power_cut: bool) -> None:
        """The process died: its files close (their locks go); with `power_cut` what was not
        fsynced may be undone, without it (kill -9) the kernel still writes it."""
        for file in self.files:
            file.close()
        self.files = []
        if power_cut:
            self.power_cut()
        self.unsynced = []

    def power_cut(self) -> None:
        """Undo unsynced writes, newest first: each kept whole, lost, or torn at random."""
        for path, offset, before, size in reversed(self.unsynced):
            keep = self.rng.choice((0, len(before), self.rng.randrange(len(before) + 1)))
            if keep < len(before):
                _restore(path, offset, keep, before, size)
        self.unsynced = []

    def durable_start(self, path: str) -> Any:
        """Where a store would resume after the worst power cut now (every unsynced write
        lost): what "durably reserved" means."""
        with open(path, "rb") as file:
            data = bytearray(file.read())
        for entry_path, offset, before, size in reversed(self.unsynced):
            if os.path.realpath(entry_path) == os.path.realpath(path):
                data[offset : offset + len(before)] = before
                del data[size:]
        return resume_point(read_slots(bytes(data))[0])

    def _fate(self) -> str:
        roll = self.rng.random()
        if roll < self.crash_rate:
            return "crash"
        return "fail" if roll < self.crash_rate + self.fail_rate else "ok"


def _restore(path: str, offset: int, keep: int, before: bytes, size: int) -> None:
    """Put `before` back from `keep` bytes into a write on; cut what it appended."""
    if not os.path.exists(path):  # a temporary file renamed away or never renamed
        return
    fd = os.open(path, os.O_RDWR)
    try:
        os.pwrite(fd, before[keep:], offset + keep)
        end = max(size, offset + keep)
        if os.fstat(fd).st_size > end:
            os.ftruncate(fd, end)
    finally:
        os.close(fd)


__all__ = ["Crash", "Disk"]
