"""An SSE sink's replay window on disk: append-only segment files, written in batches.

A directory per sink holds segments named by their first event id. Each starts with a
header (magic, version, first id, the unwritten bound) and holds records, one per write:
body length and CRC-32, then entries (kind, id, wall time, topic, the reading's JSON). One
checksum per write keeps the per-event cost to a struct.pack. A run always writes a new
segment (a crash may have torn the last record of the one before: the loader stops at the
first record that does not check out), ends it with a stop record when closed cleanly, and
deletes a segment once the window has moved past all of it. So the files hold the window
plus at most about one segment, whatever the stream's length.

A crash loses what was not yet written; the writer never lets more than `unwritten` event
ids out ahead of the file (send() waits), so after a crash the next run's ids start that
far past the last one on disk and no id is ever handed out twice.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import errno
import fcntl
import logging
import os
import struct
import time
import zlib
from dataclasses import dataclass, field
from typing import Callable

log = logging.getLogger("gateway.store")

MAGIC = b"GWRL"
VERSION = 1
HEADER = struct.Struct("<4sBqI")  # magic, version, first id, unwritten bound
FRAME = struct.Struct("<II")  # body length, CRC-32 of the body: one record per write
ENTRY = struct.Struct("<BqdHI")  # kind, event id, wall time, topic length, JSON length
EVENT, STOP = 0, 1
SUFFIX = ".seg"
TOPIC_CACHE = 4096  # encoded topics kept (cleared when full)
LOCK_NAME = "lock"  # held (flock) while a sink uses the directory: one writer at a time
FSYNC_MODES = ("always", "batch", "off")
FLUSH_INTERVAL = 0.05  # a batch is written at most this long after its first event
SYNC_INTERVAL = 1.0  # fsync = "batch": written data is synced at most this long after
RETRY_INTERVAL = 1.0  # a failed write is tried again after this long
UNWRITTEN = 4096  # event ids handed out ahead of the file at most (at least 2 × max_batch)

Event = tuple  # (id, wall time, topic, JSON bytes)


@dataclass
class Loaded:
    """What the files hold: events in id order (ids may jump where some were lost) and the
    id the next run starts at (None: no files, a first run)."""

    events: collections.deque = field(default_factory=collections.deque)
    next_id: int | None = None
    clean: bool = True  # the last run ended with a stop record
    damaged: int = 0  # segments with a bad record before their end (not just a torn last one)


class SegmentFiles:
    """The files themselves; blocking calls, run on a worker thread one at a time."""

    def __init__(self, directory: str, fsync: str = "always", segment_events: int = 8192):
        if fsync not in FSYNC_MODES:
            raise ValueError(f"fsync: expected one of {', '.join(FSYNC_MODES)}, got {fsync!r}")
        self.directory = directory
        self.fsync = fsync
        self.segment_events = max(1, segment_events)
        self.sizes: dict[int, int] = {}  # first id → bytes, every segment on disk
        self.fd: int | None = None
        self.lock_fd: int | None = None
        self.current: int | None = None  # first id of the segment being written
        self.in_current = 0
        self.unsynced = False
        self.synced_at = 0.0
        self.topics: dict[str, bytes] = {}

    @property
    def disk_bytes(self) -> int:
        return sum(self.sizes.values())

    # -- reading -------------------------------------------------------------------------
    def load(self, limit: int, max_age: float, now: float) -> Loaded:
        """The newest `limit` events not older than max_age (wall clock), and where ids go on."""
        os.makedirs(self.directory, exist_ok=True)
        loaded = Loaded(events=collections.deque(maxlen=max(1, limit)))
        expected, bound = None, 0
        segment_ids = self._segment_ids()
        for first_id in segment_ids:
            path = self._path(first_id)
            with open(path, "rb") as file:
                data = file.read()
            self.sizes[first_id] = len(data)
            header = _header(data)
            if header is None:  # torn at creation: nothing was written to it
                loaded.clean = False
                continue
            expected = first_id if expected is None else max(expected, first_id)
            bound = header
            expected, loaded.clean, whole = _read_records(data, expected, loaded.events)
            if not whole and first_id != segment_ids[-1]:  # a torn last record is expected
                loaded.damaged += 1
        if expected is None:
            return loaded
        loaded.next_id = expected if loaded.clean else expected + bound
        oldest = now - max_age
        while loaded.events and loaded.events[0][1] < oldest:
            loaded.events.popleft()
        return loaded

    def _segment_ids(self) -> list[int]:
        found = []
        for name in os.listdir(self.directory):
            stem, suffix = os.path.splitext(name)
            if suffix == SUFFIX and stem.isdigit():
                found.append(int(stem))
        return sorted(found)

    def _path(self, first_id: int) -> str:
        return os.path.join(self.directory, f"{first_id:020d}{SUFFIX}")

    # -- writing -------------------------------------------------------------------------
    def begin(self, first_id: int, unwritten: int) -> None:
        """Start a new segment at first_id (a run never appends to an older one)."""
        self.lock()
        self._close_segment()
        self.unwritten = unwritten
        path = self._path(first_id)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644)
        try:
            os.write(fd, HEADER.pack(MAGIC, VERSION, first_id, unwritten))  # 24 bytes: whole
            if self.fsync != "off":  # the new name too: a segment must not vanish after a sync
                os.fsync(fd)
                _fsync_directory(self.directory)
                self.synced_at = time.monotonic()
        except OSError:  # no segment without its header: the next write begins it again
            os.close(fd)
            os.unlink(path)
            raise
        self.fd, self.current, self.in_current = fd, first_id, 0
        self.sizes[first_id] = HEADER.size

    def write(self, events: list[Event], keep_from: int) -> None:
        """Append events; sync as `fsync` says; drop segments wholly before keep_from."""
        while events:
            if self.fd is None or self.in_current >= self.segment_events:
                self.begin(events[0][0], self.unwritten)
            room = self.segment_events - self.in_current
            part, events = events[:room], events[room:]
            self._write(_record(part, self.topics))
            self.in_current += len(part)
            self.unsynced = True
        if self.fsync == "always" or (
            self.fsync == "batch" and time.monotonic() - self.synced_at >= SYNC_INTERVAL
        ):
            self.sync()
        self._drop_before(keep_from)

    def sync(self) -> None:
        if self.fd is not None and self.unsynced and self.fsync != "off":
            os.fsync(self.fd)
        self.unsynced = False
        self.synced_at = time.monotonic()

    def end(self, next_id: int) -> None:
        """A clean stop: the stop record says ids go on at next_id, with nothing lost."""
        if self.fd is None:
            return
        body = ENTRY.pack(STOP, next_id, time.time(), 0, 0)
        self._write(FRAME.pack(len(body), zlib.crc32(body)) + body)
        self.unsynced = True
        self.sync()
        self.close()

    def lock(self) -> None:
        """Take the directory for this sink; OSError (EBUSY) when another one has it."""
        if self.lock_fd is not None:
            return
        os.makedirs(self.directory, exist_ok=True)
        fd = os.open(os.path.join(self.directory, LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise OSError(errno.EBUSY, "in use by another sink or process") from None
        self.lock_fd = fd

    def _write(self, data: bytes) -> None:
        """All of data, or nothing: a write cut short (a full disk) is cut back off."""
        size = self.sizes[self.current]
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self.fd, view) :]
        except OSError:
            os.ftruncate(self.fd, size)
            raise
        self.sizes[self.current] = size + len(data)

    def _drop_before(self, keep_from: int) -> None:
        ids = sorted(self.sizes)
        for first_id, following in zip(ids, ids[1:]):
            if following > keep_from:
                return
            os.unlink(self._path(first_id))
            del self.sizes[first_id]

    def _close_segment(self) -> None:
        if self.fd is not None:
            if self.fsync != "off" and self.unsynced:  # at rotation, as the recorder does
                os.fsync(self.fd)
            os.close(self.fd)
        self.fd, self.current, self.unsynced = None, None, False

    def close(self) -> None:
        self._close_segment()
        if self.lock_fd is not None:
            os.close(self.lock_fd)  # and with it the lock
            self.lock_fd = None


def _record(events: list[Event], topics: dict[str, bytes]) -> bytes:
    """One record holding events: FRAME, then per event ENTRY, topic, JSON."""
    parts: list[bytes] = []
    add, pack = parts.extend, ENTRY.pack
    for event_id, wall, topic, frame in events:
        name = topics.get(topic)
        if name is None:
            if len(topics) >= TOPIC_CACHE:
                topics.clear()
            name = topics[topic] = topic.encode()
        add((pack(EVENT, event_id, wall, len(name), len(frame)), name, frame))
    body = b"".join(parts)
    return FRAME.pack(len(body), zlib.crc32(body)) + body


def _header(data: bytes) -> int | None:
    """The unwritten bound of a segment, or None when its header is torn or foreign."""
    if len(data) < HEADER.size:
        return None
    magic, version, _first_id, bound = HEADER.unpack_from(data)
    return bound if magic == MAGIC and version == VERSION else None


def _read_records(data: bytes, expected: int, into: collections.deque) -> tuple[int, bool, bool]:
    """Append the segment's events from id `expected` on to `into`; returns the next
    expected id, whether the segment ended with a stop record, and whether every byte of
    it was a good record (False: it was torn or damaged there, the rest is skipped)."""
    offset, clean, end = HEADER.size, False, len(data)
    while offset + FRAME.size <= end:
        length, crc = FRAME.unpack_from(data, offset)
        start, stop = offset + FRAME.size, offset + FRAME.size + length
        if stop > end or zlib.crc32(data[start:stop]) != crc:
            return expected, clean, False
        entries = _entries(data, start, stop)
        if entries is None:
            return expected, clean, False
        offset = stop
        for kind, event_id, wall, topic, frame in entries:
            if kind == STOP:
                expected, clean = max(expected, event_id), True
            elif event_id >= expected:  # never an id twice, nor one going back
                into.append((event_id, wall, topic, frame))
                expected, clean = event_id + 1, False
    return expected, clean, offset == end


def _entries(data: bytes, offset: int, stop: int) -> list[tuple] | None:
    """The entries of one record's body, or None when they do not fill it exactly."""
    found = []
    while offset < stop:
        if offset + ENTRY.size > stop:
            return None
        kind, event_id, wall, topic_length, frame_length = ENTRY.unpack_from(data, offset)
        text = offset + ENTRY.size
        offset = text + topic_length + frame_length
        if offset > stop or kind not in (EVENT, STOP):
            return None
        topic = data[text : text + topic_length].decode()
        found.append((kind, event_id, wall, topic, data[text + topic_length : offset]))
    return found


def _fsync_directory(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ReplayLog:
    """Drives SegmentFiles from the event loop: events gather in `pending` and leave as one
    write per batch (at most FLUSH_INTERVAL after the first, at once when half of
    `unwritten` wait), on a thread of its own (file operations in order); room() holds
    send() back while `unwritten` ids are out ahead of the file."""

    def __init__(
        self,
        directory: str,
        fsync: str = "always",
        unwritten: int = UNWRITTEN,
        segment_events: int = 8192,
        flush_interval: float = FLUSH_INTERVAL,
    ):
        self.files = SegmentFiles(directory, fsync, segment_events)
        self.unwritten = max(2, unwritten)
        self.flush_at = self.unwritten // 2
        self.flush_interval = flush_interval
        self.pending: list[Event] = []
        self.written_id: int | None = None  # the last id written (and synced, fsync = always)
        self.error: str | None = None
        self._keep_from: Callable[[], int] = lambda: 0
        self._task: asyncio.Task | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._wakeup = asyncio.Event()
        self._full = asyncio.Event()
        self._progress = asyncio.Event()
        self._closing = False

    @property
    def running(self) -> bool:
        return self._task is not None

    async def load(self, limit: int, max_age: float) -> Loaded:
        """Take the directory and read what it holds."""
        return await self._io(self._load, limit, max_age)

    def _load(self, limit: int, max_age: float) -> Loaded:
        self.files.lock()
        return self.files.load(limit, max_age, time.time())

    async def start(self, next_id: int, keep_from: Callable[[], int]) -> None:
        """Begin a segment at next_id and the writer; keep_from() is the window's oldest id.
        Events a failed write left pending go first (the segment begins with them)."""
        first_id = self.pending[0][0] if self.pending else next_id
        await self._io(self.files.begin, first_id, self.unwritten)
        self.written_id = first_id - 1
        self._keep_from = keep_from
        self._closing = False
        self.error = None
        self._task = asyncio.create_task(self._writer())

    def add(self, event: Event) -> None:
        """Queue one event for the next write (the hot path: an append)."""
        pending = self.pending
        pending.append(event)
        if len(pending) == 1:
            self._wakeup.set()
        elif len(pending) >= self.flush_at:
            self._full.set()

    async def room(self, count: int, last_id: int) -> None:
        """Wait until `count` more ids keep the ids out ahead of the file within the bound."""
        while last_id + count - self.written_id > self.unwritten and last_id > self.written_id:
            self._full.set()
            self._progress.clear()
            await self._progress.wait()

    async def close(self, next_id: int) -> None:
        """Write what is pending and the stop record; the writer ends."""
        if self._task is None:
            return
        self._closing = True
        self._wakeup.set()
        self._full.set()
        task, self._task = self._task, None
        try:
            await task
            await self._io(self.files.end, next_id)
        finally:
            self._release()  # even after a failed write, or when close() is cut short

    def _release(self) -> None:
        """Close the files (and the lock) after whatever the thread still has to do."""
        if self._executor is not None:
            self._executor.submit(self.files.close)
            self._executor.shutdown(wait=False)
            self._executor = None

    async def abandon(self) -> None:
        """Stop the writer without writing (a sink that failed to open)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        self._release()

    def stats(self) -> dict:
        return {
            "written_id": self.written_id,
            "error": self.error,  # the last write failed: why (events wait to be written)
            "unwritten": len(self.pending),
            "segments": len(self.files.sizes),
            "disk_bytes": self.files.disk_bytes,
        }

    async def _writer(self) -> None:
        try:
            await self._write_batches()
        except Exception as error:  # send() fails from here on, saying why
            self.error = f"its writer stopped: {error!r}"
            log.exception("replay window %s: writer stopped", self.files.directory)
            raise

    async def _write_batches(self) -> None:
        while True:
            if not self.pending:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wait(self._wakeup, self._sync_due())
                if not self.pending:
                    await self._sync_if_due()
                    continue
            if len(self.pending) < self.flush_at and not self._closing:
                self._full.clear()
                await self._wait(self._full, self.flush_interval)
            await self._flush()

    async def _flush(self) -> None:
        batch, self.pending = self.pending, []
        try:
            await self._io(self.files.write, batch, self._keep_from())
        except OSError as error:
            self.pending = batch + self.pending
            if self.error is None:
                log.error("replay window %s: %s", self.files.directory, error)
            self.error = f"cannot write {self.files.directory}: {error.strerror or error}"
            if self._closing:
                raise
            await asyncio.sleep(RETRY_INTERVAL)
            return
        self.error = None
        self.written_id = batch[-1][0]
        self._progress.set()

    def _sync_due(self) -> float | None:
        files = self.files
        if files.fsync != "batch" or not files.unsynced:
            return None
        return max(0.0, files.synced_at + SYNC_INTERVAL - time.monotonic())

    async def _sync_if_due(self) -> None:
        due = self._sync_due()
        if due is not None and due <= 0:
            await self._io(self.files.sync)

    def _io(self, call: Callable, *args) -> asyncio.Future:
        """Run call(*args) on this log's own thread: file operations stay in order."""
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(1, "sse-replay")
        return asyncio.get_running_loop().run_in_executor(self._executor, call, *args)

    @staticmethod
    async def _wait(event: asyncio.Event, timeout: float | None) -> None:
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except asyncio.TimeoutError:
            pass
