"""One sink's store-and-forward buffer: a RAM ring in front of append-only flash segments.

Entries (bytes) are delivered oldest first: flash segments, then the RAM ring. New entries
go to RAM; what is still undelivered moves to flash in batches (flush), so a reset or power
cut loses at most what RAM held since the last flush. Flash is never rewritten in place
(littlefs wears evenly only then): segments are appended to and deleted when delivered;
the delivery cursor is an append-only log of (segment, offset) records, compacted by
writing a new file and renaming it. Delivery is at least once: after a reset up to
CURSOR_EVERY entries delivered since the last cursor record are sent again.

On flash a record is: u16 length, body, u32 CRC-32 of the body. A segment ends at its first
torn or corrupt record (the write a power cut interrupted); after a boot writing always
starts in a new segment, so a torn tail is never appended to.
"""

import os
import struct
from binascii import crc32

CURSOR_EVERY = 16  # entries delivered between cursor records
CURSOR_LOG_MAX = 512  # bytes of cursor log before it is compacted
HEAD = 2
TAIL = 4
MAX_BODY = 0xFFFF
# With overflow "block" a source checks room() before a read (a line source) or a frame (a
# COBS source); RAM takes the records of that one read or frame beyond its bound.
BLOCK_SLACK = 64


def _listdir(path):
    try:
        return os.listdir(path)
    except OSError:
        return []


def _size(path):
    try:
        return os.stat(path)[6]
    except OSError:
        return 0


def makedirs(path):
    """os.makedirs (MicroPython has none): every missing folder on the way."""
    built = "/" if path.startswith("/") else ""
    for part in path.split("/"):
        if not part or part in (".", ".."):
            built += part + "/" if part else ""
            continue
        built += part
        try:
            os.mkdir(built)
        except OSError:
            pass  # exists
        built += "/"


class Segment:
    """A segment file's number, size in bytes, records and records already delivered."""

    def __init__(self, number, size=0, records=0):
        self.number = number
        self.size = size
        self.records = records
        self.delivered = 0


class Buffer:
    """Bounded: `ram` entries in RAM, `max_bytes` of segments on flash (0: RAM only).

    overflow "drop_oldest" evicts the oldest undelivered entries, "drop_newest" refuses the
    new ones, "block" refuses too but room() says so first, so sources hold back (a line
    source stops reading, a COBS source answers BUSY). Drops are counted in `counters`.
    """

    def __init__(self, directory, max_bytes, overflow, ram, batch, segment_bytes=4096):
        self.directory = directory
        self.max_bytes = max_bytes
        self.overflow = overflow
        self.ram_max = ram
        self.batch = batch
        self.segment_bytes = segment_bytes
        self.ram = []
        self.counters = {"put": 0, "delivered": 0, "dropped": 0, "flushed": 0, "flash_errors": 0}
        self.segments = []  # oldest first; the last one is written to
        self.read_offset = 0  # in segments[0]
        self._next = None  # (body, next offset) of the flash entry at the cursor
        self._reader = None
        self._writer = None
        self._since_cursor = 0
        self.flash_entries = 0
        if max_bytes:
            makedirs(directory)
            self._recover()

    # -- state ----------------------------------------------------------------------------

    def __len__(self):
        return self.flash_entries + len(self.ram)

    def flash_bytes(self):
        return sum([segment.size for segment in self.segments])

    def room(self):
        """False when a new entry would be refused (policy "block" at its bound)."""
        if self.overflow != "block" or len(self.ram) < self.ram_max:
            return True
        if not self.max_bytes:
            return False
        return self.flash_bytes() + self._batch_bytes(self.ram) <= self._flash_limit()

    def stats(self):
        stats = dict(self.counters)
        stats["ram"] = len(self.ram)
        stats["flash"] = self.flash_entries
        stats["flash_bytes"] = self.flash_bytes()
        stats["segments"] = len(self.segments)
        return stats

    # -- in -------------------------------------------------------------------------------

    def put(self, body):
        """Queue an entry; False when it was refused (counted as dropped)."""
        if len(body) > MAX_BODY:
            self.counters["dropped"] += 1
            return False
        if len(self.ram) >= self.ram_max:
            if self.max_bytes:
                self.flush()
            if len(self.ram) >= self.ram_max:
                if self.overflow == "drop_oldest":
                    self.ram.pop(0)
                    self.counters["dropped"] += 1
                elif self.overflow != "block" or len(self.ram) >= self.ram_max + BLOCK_SLACK:
                    self.counters["dropped"] += 1
                    return False
        self.ram.append(body)
        self.counters["put"] += 1
        return True

    def flush(self):
        """Move every undelivered RAM entry to flash in one append (nothing without flash)."""
        if not self.max_bytes or not self.ram:
            return
        entries = self.ram
        self.ram = []
        try:
            kept = self._append(entries)
        except OSError:
            self.counters["flash_errors"] += 1
            self.ram = entries + self.ram  # kept in RAM; the next flush tries again
            self._writer = None
            return
        if kept < len(entries):
            self.ram = entries[kept:] + self.ram  # "block": they wait in RAM for room

    def due(self):
        """True when RAM holds a batch worth writing."""
        return len(self.ram) >= self.batch

    # -- out ------------------------------------------------------------------------------

    def peek(self):
        """The oldest undelivered entry, or None."""
        if self.flash_entries:
            if self._next is None:
                self._next = self._read_at_cursor()
            if self._next is not None:
                return self._next[0]
        return self.ram[0] if self.ram else None

    def pop(self):
        """The entry peek() returned was delivered."""
        self.counters["delivered"] += 1
        if self._next is not None:
            self.read_offset = self._next[1]
            self._next = None
            self.flash_entries -= 1
            head = self.segments[0]
            head.delivered += 1
            if head.delivered >= head.records and len(self.segments) > 1:
                self._drop_segment(head)
                self._write_cursor()
                return
            self._since_cursor += 1
            if self._since_cursor >= CURSOR_EVERY:
                self._write_cursor()
            return
        if self.ram:
            self.ram.pop(0)

    def checkpoint(self):
        """Record the delivery cursor now (at an idle moment, so a reset resends less)."""
        if self._since_cursor:
            self._write_cursor()

    # -- flash: writing -------------------------------------------------------------------

    def _batch_bytes(self, entries):
        return sum([HEAD + len(body) + TAIL for body in entries])

    def _append(self, entries):
        """Write what fits; returns how many of entries were taken (the rest: dropped and
        counted, or with "block" left to the caller)."""
        kept = self._make_room(entries, self._batch_bytes(entries))
        # What did not fit is dropped (counted in _make_room), or with "block" kept in RAM.
        taken = kept if self.overflow == "block" else len(entries)
        entries = entries[:kept]
        if not entries:
            return taken
        size = self._batch_bytes(entries)
        segment = self.segments[-1] if self.segments else None
        if segment is None or (segment.size and segment.size + size > self.segment_bytes):
            segment = self._new_segment()
        if self._writer is None:
            self._writer = open(self._path(segment.number), "ab")  # noqa: SIM115 - kept open
        writer = self._writer
        # Record by record, never one batch-sized buffer: on a small heap a few KB in one
        # piece may not be there even when more is free in total.
        for body in entries:
            writer.write(struct.pack("<H", len(body)))
            writer.write(body)
            writer.write(struct.pack("<I", crc32(body) & 0xFFFFFFFF))
        writer.flush()
        segment.size += size
        segment.records += len(entries)
        self.flash_entries += len(entries)
        self.counters["flushed"] += len(entries)
        return taken

    def _make_room(self, entries, size):
        """How many of entries fit under max_bytes after the overflow policy applied."""
        limit = self._flash_limit()
        if self.flash_bytes() + size <= limit:
            return len(entries)
        if self.overflow == "drop_oldest":
            while self.segments and self.flash_bytes() + size > limit:
                head = self.segments[0]
                lost = head.records - head.delivered
                self.counters["dropped"] += lost
                self.flash_entries -= lost
                self._drop_segment(head)
            self._write_cursor()
        fits = 0
        total = self.flash_bytes()
        for body in entries:
            total += HEAD + len(body) + TAIL
            if total > limit:
                break
            fits += 1
        if self.overflow != "block":
            self.counters["dropped"] += len(entries) - fits
        return fits

    def _flash_limit(self):
        return self.max_bytes - CURSOR_LOG_MAX - 12  # the cursor log shares the folder

    def _new_segment(self):
        number = self.segments[-1].number + 1 if self.segments else 1
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        segment = Segment(number)
        self.segments.append(segment)
        return segment

    def _drop_segment(self, segment):
        if self._reader is not None and segment is self.segments[0]:
            self._reader.close()
            self._reader = None
        if segment is self.segments[-1] and self._writer is not None:
            self._writer.close()
            self._writer = None
        self.segments.remove(segment)
        if segment is not None:
            try:
                os.remove(self._path(segment.number))
            except OSError:
                pass
        self.read_offset = 0
        self._next = None
        self._since_cursor = 0

    def _path(self, number):
        return f"{self.directory}/{number:08d}.seg"

    # -- flash: reading -------------------------------------------------------------------

    def _read_at_cursor(self):
        while self.segments:
            head = self.segments[0]
            if head.delivered < head.records:
                record = self._read_record(head.number, self.read_offset)
                if record is not None:
                    return record
                # Unreadable from here on (should not happen after recovery): skip the rest.
                lost = head.records - head.delivered
                self.counters["flash_errors"] += 1
                self.flash_entries -= lost
                head.delivered = head.records
            if len(self.segments) == 1:
                return None
            self._drop_segment(head)
        return None

    def _read_record(self, number, offset):
        if self._reader is None:
            try:
                self._reader = open(self._path(number), "rb")  # noqa: SIM115 - kept open
            except OSError:
                return None
        reader = self._reader
        reader.seek(offset)
        head = reader.read(HEAD)
        if len(head) < HEAD:
            return None
        (length,) = struct.unpack("<H", head)
        data = reader.read(length + TAIL)
        if len(data) < length + TAIL:
            return None
        body = data[:length]
        (crc,) = struct.unpack("<I", data[length:])
        if crc32(body) & 0xFFFFFFFF != crc:
            return None
        return bytes(body), offset + HEAD + length + TAIL

    # -- flash: recovery and cursor -------------------------------------------------------

    def _recover(self):
        numbers = []
        for name in _listdir(self.directory):
            if name.endswith(".seg"):
                try:
                    numbers.append(int(name[:-4]))
                except ValueError:
                    pass
        numbers.sort()
        cursor = self._read_cursor()
        for number in numbers:
            if cursor is not None and number < cursor[0]:
                self._remove(number)  # delivered; its deletion was interrupted
                continue
            start = cursor[1] if cursor is not None and number == cursor[0] else 0
            records, skipped = self._scan(number, start)
            segment = Segment(number, _size(self._path(number)), records + skipped)
            segment.delivered = skipped
            if segment.records > segment.delivered:
                self.segments.append(segment)
                self.flash_entries += records
                if len(self.segments) == 1:
                    self.read_offset = start
            else:
                self._remove(number)
        # Never append after a possibly torn record: writing starts in a fresh segment.
        last = numbers[-1] if numbers else 0
        self.segments.append(Segment(last + 1))

    def _remove(self, number):
        try:
            os.remove(self._path(number))
        except OSError:
            pass

    def _scan(self, number, start):
        """(records at or after start, records before start) of a segment."""
        records = skipped = 0
        offset = 0
        self._reader = None
        while True:
            record = self._read_record(number, offset)
            if record is None:
                break
            if offset < start:
                skipped += 1
            else:
                records += 1
            offset = record[1]
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        return records, skipped

    def _cursor_path(self):
        return self.directory + "/cursor"

    def _read_cursor(self):
        try:
            with open(self._cursor_path(), "rb") as handle:
                data = handle.read()
        except OSError:
            return None
        usable = len(data) - len(data) % 12
        for end in range(usable, 0, -12):
            number, offset, check = struct.unpack("<III", data[end - 12 : end])
            if check == (number ^ offset ^ 0x5A5A5A5A):
                return number, offset
        return None

    def _write_cursor(self):
        self._since_cursor = 0
        if not self.segments:
            return
        number = self.segments[0].number
        record = struct.pack(
            "<III", number, self.read_offset, number ^ self.read_offset ^ 0x5A5A5A5A
        )
        path = self._cursor_path()
        try:
            if _size(path) + len(record) > CURSOR_LOG_MAX:
                with open(path + ".new", "wb") as handle:
                    handle.write(record)
                os.rename(path + ".new", path)
                return
            with open(path, "ab") as handle:
                handle.write(record)
        except OSError:
            self.counters["flash_errors"] += 1
