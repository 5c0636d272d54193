"""Reading sequence numbers per (device, stream) that never repeat across resets.

Numbers are reserved in blocks: before handing out a number at or past the reservation,
the next limit is appended to a small log file (append-only; compacted into a new file and
renamed when it grows). After a reset numbering resumes at the last reservation: a gap,
never a repeat, as on the Pi.
"""

import os

BLOCK = 1000
LOG_MAX = 2048  # bytes of log before it is compacted


class Sequences:
    def __init__(self, path, block=BLOCK):
        self.path = path
        self.block = block
        self.next_numbers = {}
        self.limits = {}
        self.errors = 0
        self._load()

    def _load(self):
        try:
            with open(self.path) as handle:
                lines = handle.read().split("\n")
        except OSError:
            return
        for line in lines:
            key, _, limit = line.rpartition("\t")
            if not key or not limit.isdigit():
                continue  # a torn last line
            self.limits[key] = int(limit)
        for key in self.limits:
            self.next_numbers[key] = self.limits[key]

    def next(self, device, stream):
        """The next number; None when the reservation cannot be written (do not number)."""
        key = device + "/" + stream
        number = self.next_numbers.get(key, 0)
        if number >= self.limits.get(key, 0) and not self._reserve(key, number + self.block):
            return None
        self.next_numbers[key] = number + 1
        return number

    def _reserve(self, key, limit):
        line = key + "\t" + str(limit) + "\n"
        self.limits[key] = limit
        try:
            if _size(self.path) + len(line) > LOG_MAX:
                with open(self.path + ".new", "w") as handle:
                    for other in self.limits:
                        handle.write(other + "\t" + str(self.limits[other]) + "\n")
                os.rename(self.path + ".new", self.path)
            else:
                with open(self.path, "a") as handle:
                    handle.write(line)
        except OSError:
            self.errors += 1
            self.limits[key] = self.next_numbers.get(key, 0)
            return False
        return True


def _size(path):
    try:
        return os.stat(path)[6]
    except OSError:
        return 0
