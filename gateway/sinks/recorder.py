"""Recorder sink: readings to JSON-lines or CSV files, rotated by size and time; their reader."""

from __future__ import annotations

import asyncio
import csv
import datetime
import gzip
import io
import logging
import os
import shutil
import time
from typing import Any, Iterator

import orjson

from gateway.sinks.base import Item, Sink, SinkError

log = logging.getLogger("gateway.sinks.recorder")

FORMATS = ("jsonl", "csv")
# The envelope's optional fields get a column each, so a CSV recording replays whole:
# `unsynced` is "true" or empty, `invalid` the failed checks as JSON or empty.
CSV_COLUMNS = ("gateway", "device", "stream", "seq", "ts", "dts", "data", "invalid", "unsynced")
SUFFIXES = tuple(f".{fmt}{gz}" for fmt in FORMATS for gz in ("", ".gz"))


def file_name(gateway_id: str, name: str, started: float, fmt: str) -> str:
    """`<gateway>_<name>_<UTC start, to the microsecond>.<fmt>`: names sort by start time."""
    stamp = datetime.datetime.fromtimestamp(started, datetime.timezone.utc)
    return f"{gateway_id}_{name}_{stamp:%Y%m%dT%H%M%S.%fZ}.{fmt}"


class RecorderSink(Sink):
    """Appends each batch to the current file with one write() of whole lines.

    A batch is confirmed once the kernel has it (it survives the process, `kill -9`
    included); fsync makes it survive a power cut: every `fsync_every`, at rotation and at
    stop. A write that fails part-way (a full disk) is cut back to the last whole line and
    fails the send, so a file never holds a partial line except after a power cut; readers
    skip a partial last line. Rotated files are compressed in a thread when `gzip` is on.
    """

    kind = "recorder"

    def __init__(self, name: str, options: dict[str, Any], gateway_id: str):
        super().__init__(name, options, gateway_id)
        where = f"sinks.{name}"
        self.directory = str(options.get("path") or "recordings")
        self.format = options.get("format", "jsonl")
        if self.format not in FORMATS:
            raise ValueError(f"{where}.format: expected jsonl or csv, got {self.format!r}")
        self.rotate_bytes = int(options.get("rotate_bytes", 100 * 1024**2))
        self.rotate_every = float(options.get("rotate_every", 0.0))
        self.gzip = bool(options.get("gzip", False))
        self.fsync_every = float(options.get("fsync_every", 1.0))
        self.label = options.get("name") or name
        self.path: str | None = None  # the file being written
        self.files: list[str] = []  # every file this sink started, in order
        self._fd: int | None = None
        self._size = 0
        self._empty_size = 0  # the size of a file with nothing recorded (CSV: its header)
        self._started = 0.0
        self._synced = 0.0
        self._compressing: set[asyncio.Task] = set()

    # -- files ---------------------------------------------------------------------------
    async def open(self) -> None:
        os.makedirs(self.directory, exist_ok=True)
        if self._fd is None:
            self._start_file()

    async def close(self) -> None:
        await self._finish_file()
        if self._compressing:
            await asyncio.gather(*self._compressing, return_exceptions=True)

    def stats(self) -> dict[str, Any]:
        return {**super().stats(), "file": self.path, "file_bytes": self._size}

    def _start_file(self) -> None:
        started = time.time()
        while True:
            path = os.path.join(
                self.directory, file_name(self.gateway_id, self.label, started, self.format)
            )
            try:
                self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
                break
            except FileExistsError:  # started within the same microsecond as the last one
                started += 1e-6
        self.path, self._size, self._started, self._synced = path, 0, started, time.monotonic()
        self.files.append(path)
        self.counters["files"] += 1
        if self.format == "csv":
            self._write(_csv_lines([CSV_COLUMNS]))
        self._empty_size = self._size
        log.info("sink %s: recording to %s", self.name, path)

    async def _finish_file(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            await asyncio.to_thread(os.fsync, fd)
        finally:
            os.close(fd)
        if self._size <= self._empty_size:  # nothing recorded (a failure, a stop): no file
            self._discard(self.path)
            return
        if self.gzip and self.path:
            task = asyncio.create_task(asyncio.to_thread(compress, self.path))
            self._compressing.add(task)
            task.add_done_callback(self._compressed)

    def _discard(self, path: str) -> None:
        try:
            os.unlink(path)
        except OSError:
            return
        self.files.remove(path)
        self.counters["files"] -= 1

    def _compressed(self, task: asyncio.Task) -> None:
        self._compressing.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("sink %s: compressing failed: %s", self.name, task.exception())

    async def _rotate(self) -> None:
        await self._finish_file()
        self.counters["rotations"] += 1
        self._start_file()

    # -- delivery ------------------------------------------------------------------------
    async def send(self, items: list[Item]) -> None:
        if self._fd is None:
            raise SinkError("recorder is not open")
        if self.format == "jsonl":
            data = b"".join([orjson.dumps(reading) + b"\n" for reading, _route in items])
        else:
            data = _csv_lines(_csv_row(reading) for reading, _route in items)
        self._write(data)
        self.counters["lines"] += len(items)
        now = time.monotonic()
        if self._size >= self.rotate_bytes or (
            self.rotate_every and time.time() - self._started >= self.rotate_every
        ):
            await self._rotate()
        elif self.fsync_every and now - self._synced >= self.fsync_every:
            self._synced = now
            await asyncio.to_thread(os.fsync, self._fd)

    def _write(self, data: bytes) -> None:
        """Write all of data or none of it: a short write is cut back to the last whole line."""
        view = memoryview(data)
        written = 0
        try:
            while written < len(data):
                written += os.write(self._fd, view[written:])
        except OSError as error:
            if written:
                os.ftruncate(self._fd, self._size)
            raise SinkError(f"{self.path}: {error.strerror or error}") from None
        self._size += written


def _csv_row(reading: dict) -> list:
    row = [reading.get(column, "") for column in CSV_COLUMNS[:6]]
    row.append(orjson.dumps(reading.get("data", {})).decode())
    invalid = reading.get("invalid")
    row.append(orjson.dumps(invalid).decode() if invalid is not None else "")
    row.append("true" if reading.get("unsynced") else "")
    return row


def _csv_lines(rows) -> bytes:
    text = io.StringIO()
    csv.writer(text, lineterminator="\n").writerows(rows)
    return text.getvalue().encode()


def compress(path: str) -> str:
    """path → path.gz, synced, then the original removed; a crash leaves the original intact."""
    target = path + ".gz"
    partial = target + ".part"
    with open(path, "rb") as source, open(partial, "wb") as raw:
        with gzip.GzipFile(fileobj=raw, mode="wb") as packed:
            shutil.copyfileobj(source, packed, 1 << 20)
        raw.flush()
        os.fsync(raw.fileno())
    os.replace(partial, target)
    os.unlink(path)
    return target


# -- reading recordings back ----------------------------------------------------------------


def recording_files(paths: list[str]) -> list[str]:
    """The recording files named (directories: their recordings, by name = by start time).

    A file also present compressed is read once: a crash between compressing and removing
    the original leaves both, and the original is whole.
    """
    found = []
    for path in paths:
        if not os.path.isdir(path):
            found.append(path)
            continue
        names = sorted(name for name in os.listdir(path) if name.endswith(SUFFIXES))
        present = set(names)
        found += [
            os.path.join(path, name)
            for name in names
            if not (name.endswith(".gz") and name[:-3] in present)
        ]
    return found


class Recording:
    """Iterates the readings of recording files in order; `skipped` counts lines left out
    (a partial last line after a crash, or a line that does not parse)."""

    def __init__(self, paths: list[str]):
        self.paths = recording_files(paths)
        self.skipped = 0

    def __iter__(self) -> Iterator[dict]:
        for path in self.paths:
            yield from self._read(path)

    def _read(self, path: str) -> Iterator[dict]:
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rb") as lines:
            is_csv = path.endswith((".csv", ".csv.gz"))
            header = None
            for number, line in enumerate(lines, 1):
                if not line.endswith(b"\n"):
                    self._skip(path, number, "partial last line")
                    continue
                try:
                    if not is_csv:
                        yield orjson.loads(line)
                    elif header is None:
                        header = _parse_csv(line)
                    else:
                        yield _csv_reading(header, _parse_csv(line))
                except (ValueError, IndexError) as error:
                    self._skip(path, number, str(error))

    def _skip(self, path: str, number: int, why: str) -> None:
        self.skipped += 1
        log.warning("%s:%d: skipped: %s", path, number, why)


def _parse_csv(line: bytes) -> list[str]:
    return next(csv.reader([line.decode()]))


def _csv_reading(header: list[str], row: list[str]) -> dict:
    values = dict(zip(header, row))
    reading = {key: values[key] for key in ("gateway", "device", "stream")}
    reading["seq"] = int(values["seq"])
    reading["ts"] = float(values["ts"])
    if values.get("dts"):
        dts = values["dts"]
        reading["dts"] = float(dts) if "." in dts else int(dts)
    reading["data"] = orjson.loads(values["data"])
    if values.get("invalid"):  # columns a recording from an older version does not have
        reading["invalid"] = orjson.loads(values["invalid"])
    if values.get("unsynced") == "true":
        reading["unsynced"] = True
    return reading
