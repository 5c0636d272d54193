"""Per-(device, stream) sequence numbers that only ever grow, persisted across restarts."""

from __future__ import annotations

import json
import logging
import os
import time

log = logging.getLogger("gateway.store")


class SequenceStore:
    """Hands out `seq` values and keeps them monotonic across restarts, crashes included.

    Writing every number to disk would cost one write per reading, so numbers are reserved
    in blocks: the file holds, per key, a value no number has reached yet. After a crash the
    next number starts at that reservation (a gap of less than one block, never a repeat);
    after a clean close() the file holds the exact next numbers, so there is no gap at all.
    """

    def __init__(self, path: str, block: int = 10_000):
        self.path = path
        self.block = block
        self._next: dict[str, int] = {}
        # Where a key with no stored reservation starts. After the file was lost or damaged
        # earlier numbers are unknown, so start above any plausible one: milliseconds since
        # the epoch (a jump consumers can see, rather than a repeat they cannot).
        self._floor = 0
        self._reserved: dict[str, int] = self._load()

    def _load(self) -> dict[str, int]:
        try:
            with open(self.path) as file:
                stored = json.load(file)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as error:
            self._floor = int(time.time() * 1000)
            log.error(
                "sequence file %s unreadable (%s); numbering restarts at %d",
                self.path,
                error,
                self._floor,
            )
            return {}
        return {key: int(value) for key, value in stored.items()}

    @staticmethod
    def key(device: str, stream: str) -> str:
        return device + "/" + stream

    def next(self, device: str, stream: str) -> int:
        key = device + "/" + stream
        number = self._next.get(key)
        if number is None:
            number = self._reserved.get(key, self._floor)
        if number >= self._reserved.get(key, self._floor):
            self._reserved[key] = number + self.block
            self._write_or_log(self._reserved)
        self._next[key] = number + 1
        return number

    def close(self) -> None:
        """Record the exact next numbers so a clean restart continues without a gap."""
        exact = dict(self._reserved)
        exact.update(self._next)
        self._write_or_log(exact)

    def _write_or_log(self, values: dict[str, int]) -> None:
        # Numbers stay monotonic in memory; only a restart after this failure could repeat.
        try:
            self._write(values)
        except OSError as error:
            log.error("cannot persist sequence numbers to %s: %s", self.path, error)

    def _write(self, values: dict[str, int]) -> None:
        directory = os.path.dirname(self.path) or "."
        os.makedirs(directory, exist_ok=True)
        temporary = self.path + ".tmp"
        with open(temporary, "w") as file:
            json.dump(values, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, self.path)
