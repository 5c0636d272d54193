"""Per-(device, stream) sequence numbers that only ever grow, never handed out twice."""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

from gateway.store.reservations import (
    Reservation,
    ReservationFile,
    SequenceStateError,
    resume_point,
)

log = logging.getLogger("gateway.store")

RESERVATION_NAME = "sequences.reservation"
LEGACY_NAME = "sequences.json"  # the format before issue 8; also the operator's override
DEFAULT_BLOCK = 10_000
RETRY_INTERVAL = 1.0  # seconds between reservation writes while they fail

__all__ = ["SequenceStateError", "SequenceStore", "SequenceUnavailable"]


class SequenceUnavailable(Exception):
    """No durably reserved number is left for a key; the reading must not be numbered."""


class SequenceStore:
    """Hands out `seq` values; a number is handed out only below a durable reservation.

    Numbers are reserved in blocks in a small pre-allocated file (reservations.py): one
    fsynced in-place write per block, renewed a quarter block before the block runs out.
    When a renewal fails (an I/O error, a read-only file system) numbering goes on inside
    the reservation already on disk while room() says 0, so sources pause; numbering never
    passes it (next() raises SequenceUnavailable) and the write is retried every second.
    After a crash numbering resumes at the reservation (a gap, never a repeat); after a
    clean close() the file holds the exact next numbers. A file that cannot be read raises
    SequenceStateError: the store will not guess.
    """

    file_type = ReservationFile

    def __init__(self, path: str, block: int = DEFAULT_BLOCK, legacy: str | None = None):
        self.path = path
        self.block = block
        self.margin = block // 4  # renew this many numbers before the block ends
        self.grant = max(1, self.margin // 2)  # room() while healthy: less than the margin
        self.legacy = legacy
        self.retry_interval = RETRY_INTERVAL
        self.error: str | None = None
        self.counters = {"writes": 0, "write_failures": 0, "unavailable": 0}
        self._file = self.file_type(path)
        self._next: dict[str, int] = {}
        self._mark: dict[str, int] = {}  # next() takes its slow path from this number on
        self._wanted: dict[str, int] = {}  # renewals not yet on disk
        self._retry_at = 0.0
        self._closed = False
        self._announced = False  # this run's start is in both slots
        start = self._load()
        self._durable, self._default = start.values, start.default
        self._flush()

    @classmethod
    def in_directory(cls, data_dir: str) -> SequenceStore:
        """The gateway's store: data_dir/sequences.reservation, importing sequences.json."""
        path = os.path.join(data_dir, RESERVATION_NAME)
        return cls(path, legacy=os.path.join(data_dir, LEGACY_NAME))

    # -- numbering ---------------------------------------------------------------------------

    def next(self, device: str, stream: str) -> int:
        """The next number of (device, stream); SequenceUnavailable when none is reserved."""
        key = device + "/" + stream
        number = self._next.get(key)
        if number is None or number >= self._mark[key]:
            return self._next_slow(key, number)
        self._next[key] = number + 1
        return number

    def room(self) -> int:
        """Readings that may be numbered for sure before asking again; 0 while the reservation
        cannot be written (a source pauses). Less than the renewal margin, so numbers run out
        only for readings a source had in hand when a renewal failed."""
        if self.error is not None:
            self._retry()
            if self.error is not None:
                return 0
        return self.grant

    def health(self) -> str:
        """Either "ok" or "failed: <what and why>"."""
        return "ok" if self.error is None else f"failed: {self.error}"

    def stats(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "state": self.health(),
            "keys": len(self._next),
            "pending": len(self._wanted),
            **self.counters,
        }

    def close(self) -> None:
        """Record the exact next numbers so a clean restart continues without a gap."""
        if self._closed:
            return
        if not self._announced:  # the slot read at start may not be durable: write nothing
            self.abandon()
            return
        exact = {**self._durable, **self._next}
        try:
            self._file.write(Reservation(exact, self._default, self.block))
        except OSError as error:  # the reservation on disk stands: a gap, no repeat
            log.error("cannot record the next sequence numbers in %s: %s", self.path, error)
        self.abandon()

    def abandon(self) -> None:
        """Let go of the file without writing, as a crash would."""
        self._closed = True
        self._next = {}  # every next() now takes the slow path, which refuses
        self._file.close()

    # -- internals: numbering ----------------------------------------------------------------

    def _next_slow(self, key: str, number: int | None) -> int:
        if self._closed:
            raise SequenceUnavailable(f"sequence store {self.path} is closed")
        new = number is None
        if new:
            number = self._durable.get(key, self._default)
        limit = self._limit(key)
        if limit - number <= self.margin:
            self._wanted.setdefault(key, limit + self.block)
            if new or self.error is None or self._retry_due():
                self._flush()
        if number >= self._limit(key):
            if new:
                self._wanted.pop(key, None)  # nothing was numbered: nothing to reserve
            self.counters["unavailable"] += 1
            raise SequenceUnavailable(
                f"no sequence number reserved for {key} at {number}: {self.error}"
            )
        self._next[key] = number + 1
        self._set_mark(key)
        return number

    def _limit(self, key: str) -> int:
        return self._durable.get(key, self._default)

    def _set_mark(self, key: str) -> None:
        limit = self._limit(key)
        self._mark[key] = limit if key in self._wanted else limit - self.margin

    # -- internals: the file -----------------------------------------------------------------

    def _flush(self) -> bool:
        """Write the durable numbers with every wanted renewal; True once on disk."""
        target = {**self._durable, **self._wanted}
        try:
            if not self._announced:
                self._announce()
            if self._wanted:
                self._file.write(Reservation(target, self._default, self.block))
        except OSError as error:
            self._failed(error)
            return False
        self.counters["writes"] += bool(self._wanted)
        self._durable = target
        renewed, self._wanted = self._wanted, {}
        for key in renewed:
            if key in self._next:
                self._set_mark(key)
        if self.error is not None:
            log.warning("sequence reservations are written to %s again", self.path)
            self.error = None
        return True

    def _announce(self) -> None:
        """Put this run's start and block in both slots before any number is raised: the
        rule "a write raises no number by more than the step of the slot before" then holds
        across runs with different blocks, and after a damaged file."""
        start = Reservation(dict(self._durable), self._default, self.block)
        if not self._file.whole:
            self._file.rewrite(start)
        else:
            self._file.write_both(start)
        self._announced = True
        self._retire_legacy()

    def _failed(self, error: OSError) -> None:
        self.counters["write_failures"] += 1
        self._retry_at = time.monotonic() + self.retry_interval
        reason = f"cannot write sequence reservations to {self.path}: {error.strerror or error}"
        if self.error is None:
            log.error("%s; numbering stops at the reservation on disk until a write works", reason)
        self.error = reason

    def _retry_due(self) -> bool:
        return time.monotonic() >= self._retry_at

    def _retry(self) -> None:
        if self._retry_due():
            self._flush()

    # -- internals: where numbering stood ----------------------------------------------------

    def _load(self) -> Reservation:
        if self._file.exists():
            return self._resume()
        if self.legacy and os.path.exists(self.legacy):
            if os.path.exists(self.legacy + ".tmp"):
                raise SequenceStateError(
                    f"{self.legacy}.tmp exists: the last write of {self.legacy} failed or was "
                    "cut short, so numbers above those in it may have been handed out. "
                    + _override_hint(self.legacy)
                )
            values, default = self._read_legacy()
            log.info("sequence numbers imported from %s into %s", self.legacy, self.path)
            return Reservation(values, default, self.block)
        return Reservation({}, 0, self.block)

    def _resume(self) -> Reservation:
        found = self._file.load()
        start = resume_point(found)
        if start is None:
            raise SequenceStateError(_unreadable_message(self.path, self.legacy))
        if len(found) < 2:
            log.warning(
                "sequence reservation file %s has one intact slot of two (a write torn by a "
                "crash, or damage): numbering resumes %d above it",
                self.path,
                start.step,
            )
        if self.legacy and os.path.exists(self.legacy):
            # Beside the reservation file it can only raise numbers (an import cut short by
            # a crash, or an operator's higher numbers): safe either way, as nothing is
            # handed out before this start is in both slots.
            start = _raised(start, *self._read_legacy())
        return Reservation(start.values, start.default, self.block, start.generation)

    def _read_legacy(self) -> tuple[dict[str, int], int]:
        assert self.legacy is not None
        try:
            with open(self.legacy) as file:
                stored = json.load(file)
            values = {str(key): int(value) for key, value in stored.items()}
        except (OSError, ValueError, TypeError, AttributeError) as error:
            raise SequenceStateError(
                f"{self.legacy} cannot be read ({error}). " + _override_hint(self.legacy)
            ) from None
        return values, values.pop("*", 0)

    def _retire_legacy(self) -> None:
        """A legacy file beside the reservation file was imported: move it out of the way,
        so a lost reservation file can never bring back its older numbers."""
        if self.legacy and os.path.exists(self.legacy):
            try:
                os.replace(self.legacy, self.legacy + ".imported")
            except OSError as error:
                log.warning("cannot rename %s after importing it: %s", self.legacy, error)


def _raised(start: Reservation, floors: dict[str, int], floor: int) -> Reservation:
    """`start` with no number below the floors (per key, and `floor` for any other)."""
    keys = set(start.values) | set(floors)
    values = {
        key: max(start.values.get(key, start.default), floors.get(key, floor)) for key in keys
    }
    return Reservation(values, max(start.default, floor), start.step, start.generation)


def _override_hint(legacy: str | None) -> str:
    floor = int(time.time() * 1_000_000)
    target = legacy or "sequences.json"
    return (
        "The gateway will not guess where numbering stood. To start, write the first numbers "
        f"to use into {target} as JSON, above every seq consumers have seen: "
        '{"device/stream": N, ...} and "*": N for any other (the time in microseconds, '
        f"{floor}, is above every number if the clock is right and no stream ever exceeded a "
        f"million readings a second); remove {target}.tmp if present; then start again."
    )


def _unreadable_message(path: str, legacy: str | None) -> str:
    return (
        f"sequence reservation file {path} is unreadable (empty, truncated, zeroed or "
        "overwritten: no intact slot). "
        + _override_hint(legacy).replace("To start, ", f"To start, move {path} away, ")
    )
