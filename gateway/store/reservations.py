"""The sequence reservation file: two checksummed slots, pre-allocated, overwritten in place."""

from __future__ import annotations

import binascii
import contextlib
import errno
import json
import os
import struct

try:
    import fcntl
except ImportError:  # not POSIX: no lock, one gateway per data directory is then on the user
    fcntl = None  # type: ignore[assignment]

from gateway.store.buffer import StoreLocked

MAGIC = b"GWSQ"
VERSION = 1
# magic, version, capacity (bytes per slot), generation, step, payload length, CRC-32
HEADER = struct.Struct("<4sHIQQII")
DEFAULT_CAPACITY = 32 * 1024
# Above this share of a slot the file is grown (written anew) while there is still room.
GROW_AT = 0.75
UNWRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM)


class SequenceStateError(OSError):
    """Where numbering stood cannot be known: the gateway must not start.

    An OSError, so `gateway run` reports it as one "cannot start: …" line and exits 1.
    """


class Reservation:
    """One slot's content: no number at or above `values[key]` (or `default` for a key not
    listed) was handed out; the next write raises no number by more than `step`."""

    __slots__ = ("default", "generation", "step", "values")

    def __init__(self, values: dict[str, int], default: int, step: int, generation: int = 0):
        self.values = values
        self.default = default
        self.step = step
        self.generation = generation

    def bumped(self) -> Reservation:
        """What is safe when only this slot survived: the other one may have been newer, and
        a write raises nothing by more than `step`."""
        values = {key: value + self.step for key, value in self.values.items()}
        return Reservation(values, self.default + self.step, self.step, self.generation)


def encode(reservation: Reservation, capacity: int) -> bytes:
    payload = json.dumps(
        {"default": reservation.default, "values": reservation.values},
        separators=(",", ":"),
        sort_keys=True,
    ).encode()
    fields = (MAGIC, VERSION, capacity, reservation.generation, reservation.step, len(payload))
    crc = binascii.crc32(HEADER.pack(*fields, 0)[:-4] + payload)
    return HEADER.pack(*fields, crc) + payload


def decode(data: bytes, capacity: int | None = None) -> Reservation | None:
    """The slot at the start of `data`, or None when it is not a whole, intact slot."""
    if len(data) < HEADER.size:
        return None
    magic, version, slot_capacity, generation, step, length, crc = HEADER.unpack_from(data)
    if magic != MAGIC or version != VERSION or HEADER.size + length > len(data):
        return None
    if capacity is not None and slot_capacity != capacity:
        return None
    payload = data[HEADER.size : HEADER.size + length]
    if binascii.crc32(data[: HEADER.size - 4] + payload) != crc:
        return None
    try:
        content = json.loads(payload)
        values = {str(key): int(value) for key, value in content["values"].items()}
        return Reservation(values, int(content["default"]), step, generation)
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def read_slots(data: bytes) -> tuple[list[tuple[int, Reservation]], int]:
    """The intact slots in a file's bytes as (index, reservation), and the slot capacity."""
    first = decode(data)
    found = [] if first is None else [(0, first)]
    # Slot 1 starts one capacity in: as slot 0 says, or (slot 0 lost) at half the file.
    offsets = [HEADER.unpack_from(data)[2]] if first is not None else []
    for offset in [*offsets, len(data) // 2]:
        second = decode(data[offset:], offset) if offset > 0 else None
        if second is not None:
            found.append((1, second))
            return found, offset
    return found, offsets[0] if offsets else 0


def resume_point(found: list[tuple[int, Reservation]]) -> Reservation | None:
    """Where numbering resumes: the newest of two intact slots; one alone, bumped by its step
    (the lost one may have been newer); None when no slot is intact."""
    if not found:
        return None
    newest = max((reservation for _index, reservation in found), key=_generation)
    return newest if len(found) == 2 else newest.bumped()


def peek(path: str) -> Reservation | None:
    """Where a store on `path` would resume, read without a lock (tools and tests)."""
    with open(path, "rb") as file:
        return resume_point(read_slots(file.read())[0])


def _generation(reservation: Reservation) -> int:
    return reservation.generation


class ReservationFile:
    """Reads and writes the file; the caller decides what to write.

    The file is two slots of `capacity` bytes, written in full when the file is created, so
    later writes overwrite blocks the file system already gave it: a full disk cannot stop
    them (on a copy-on-write file system such as btrfs it still can). Each write goes to the
    slot not holding the newest reservation and is fsynced, so a write torn by a crash
    leaves the other slot intact. The file is locked (flock) while a store uses it.
    """

    def __init__(self, path: str, capacity: int = DEFAULT_CAPACITY):
        self.path = path
        self.capacity = capacity
        self.fd: int | None = None
        self.writable = False
        self.generation = 0  # the newest generation on disk
        self.slot = 0  # where the next write goes
        self.grow_error: str | None = None
        self.whole = True  # the file is two slots long (not truncated, nothing appended)

    def exists(self) -> bool:
        return os.path.exists(self.path)

    def load(self) -> list[tuple[int, Reservation]]:
        """The intact slots as (index, reservation); [] when none is (or the file is empty)."""
        self._open_existing()
        data = self._read_all()
        found, capacity = read_slots(data)
        if found:
            self.capacity = capacity
            self.whole = len(data) == 2 * capacity
            index, newest = max(found, key=lambda item: item[1].generation)
            self.generation, self.slot = newest.generation, 1 - index
        return found

    def write(self, reservation: Reservation) -> None:
        """Make `reservation` durable in the slot after the newest one; OSError if not.

        After a failure the same slot is written again next time: what it holds is unknown,
        the other slot still holds the newest durable reservation.
        """
        self._ensure_writable(reservation)
        data = self._encoded(reservation, self.generation + 1)
        if len(data) > self.capacity * GROW_AT:
            with contextlib.suppress(OSError):  # grow_error says why; in place if it fits
                self._grow(reservation)
                return
            if len(data) > self.capacity:
                raise OSError(
                    errno.ENOSPC, f"reservation file full, cannot grow: {self.grow_error}"
                )
        self._pwrite(self.fd, data, self.slot * self.capacity)
        self._fsync(self.fd)
        self.generation += 1
        self.slot = 1 - self.slot

    def write_both(self, reservation: Reservation) -> None:
        """Both slots get `reservation`, one after the other (each write fsynced).

        What was read is fsynced first: a write an earlier process could not fsync may be
        in the page cache only, and overwriting the other slot must not leave both at risk.
        """
        if not self.exists():
            self._create(reservation)  # both slots at once
            return
        self._ensure_writable(reservation)
        self._fsync(self.fd)
        self.write(reservation)
        self.write(reservation)

    def rewrite(self, reservation: Reservation) -> None:
        """A new file holding `reservation` in both slots, put in place by a rename: for a
        damaged file, whose size may no longer hold two slots."""
        self._create(reservation)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
            self.writable = False

    def __del__(self) -> None:
        # A store dropped without close() (a Gateway never run) must not hold the lock for
        # the rest of the process, as the buffer's lock file object does not either.
        with contextlib.suppress(Exception):  # late in interpreter shutdown os may be gone
            self.close()

    # -- file operations (a test injects crashes and errors here) --------------------------

    def _pwrite(self, fd: int, data: bytes, offset: int) -> None:
        view = memoryview(data)
        while view:
            written = os.pwrite(fd, view, offset)
            view, offset = view[written:], offset + written

    def _fsync(self, fd: int) -> None:
        os.fsync(fd)

    # -- internals -------------------------------------------------------------------------

    def _encoded(self, reservation: Reservation, generation: int) -> bytes:
        reservation.generation = generation
        return encode(reservation, self.capacity)

    def _open_existing(self) -> None:
        self.close()
        try:
            fd = os.open(self.path, os.O_RDWR)
            writable = True
        except OSError as error:
            if error.errno not in UNWRITABLE:
                raise
            fd, writable = os.open(self.path, os.O_RDONLY), False
        try:
            self._lock(fd)
        except BaseException:
            os.close(fd)
            raise
        self.fd, self.writable = fd, writable

    def _read_all(self) -> bytes:
        size = os.fstat(self.fd).st_size
        return os.pread(self.fd, size, 0) if size else b""

    def _ensure_writable(self, reservation: Reservation) -> None:
        if self.writable:
            return
        if not self.exists():
            self._create(reservation)
            return
        self._open_existing()  # a read-only data directory may have become writable
        if not self.writable:
            raise OSError(errno.EROFS, f"cannot open {self.path} for writing")

    def _create(self, reservation: Reservation) -> None:
        """A new file with both slots holding `reservation`, put in place by a rename."""
        directory = os.path.dirname(self.path) or "."
        os.makedirs(directory, exist_ok=True)
        temporary = self.path + ".tmp"
        fd = os.open(temporary, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            self._lock(fd)
            first = self._encoded(reservation, self.generation + 1).ljust(self.capacity, b"\0")
            second = self._encoded(reservation, self.generation + 2).ljust(self.capacity, b"\0")
            self._pwrite(fd, first + second, 0)
            self._fsync(fd)
            os.replace(temporary, self.path)
            _fsync_directory(directory)
        except BaseException:
            os.close(fd)
            raise
        self.close()
        self.fd, self.writable, self.whole = fd, True, True
        self.generation += 2
        self.slot = 0  # slot 1 holds the newest

    def _grow(self, reservation: Reservation) -> None:
        old_capacity = self.capacity
        needed = len(self._encoded(reservation, self.generation + 1))
        while self.capacity * GROW_AT < needed:
            self.capacity *= 2
        try:
            self._create(reservation)
            self.grow_error = None
        except OSError as error:
            self.capacity = old_capacity
            self.grow_error = f"{self.path}: {error.strerror or error}"
            raise

    def _lock(self, fd: int) -> None:
        if fcntl is None:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StoreLocked(f"{self.path} is in use by another gateway process") from None


def _fsync_directory(directory: str) -> None:
    """Make a rename in `directory` durable (POSIX; elsewhere the rename has to do)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
