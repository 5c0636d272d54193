"""Simulated serial devices: real ptys that the gateway opens through its normal serial path."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import random
import select
import time
import tty
from typing import Any

log = logging.getLogger("gateway.sources")

PROFILES = ("env", "csv", "kv", "nmea", "counter")

# How a line source reading each profile is configured (the `format` and `fields` keys).
PROFILE_FORMATS: dict[str, dict[str, Any]] = {
    "env": {"format": "json"},
    "csv": {"format": "csv", "fields": ["temperature", "humidity", "pressure"]},
    "kv": {"format": "kv"},
    "nmea": {"format": "nmea"},
    "counter": {"format": "json"},
}


class DeviceUnplugged(OSError):
    """The virtual device is unplugged; `written` bytes of the interrupted write got out."""

    def __init__(self, message: str, written: int = 0):
        super().__init__(message)
        self.written = written


class VirtualSerialDevice:
    """A device at the master end of a pty; the gateway opens the slave end as its serial port.

    `path` is a stable symlink (like a udev /dev/serial/by-id link) when one is given, else
    the slave's /dev/pts/N name. unplug() closes both ends and removes the link, so a reader
    sees a hangup (end of file or EIO) as with a pulled USB cable; replug() makes a fresh pty
    behind the same link.
    """

    def __init__(self, path: str | None = None):
        self.link = path
        self.master: int | None = None
        self.slave: int | None = None
        self.slave_name: str | None = None
        self._generation = 0  # bumped by every unplug, so a pending write notices
        self._writable: asyncio.Future | None = None
        self._plug()

    @property
    def path(self) -> str:
        return self.link or self.slave_name or ""

    @property
    def plugged(self) -> bool:
        return self.master is not None

    @property
    def write_pending(self) -> bool:
        """True while write_async() waits for the gateway to make room in the pty."""
        return self._writable is not None

    def _plug(self) -> None:
        master, slave = os.openpty()
        # Raw before anyone opens it: bytes written before the gateway configures the port
        # must not be echoed back or have CR turned into LF by the default line discipline.
        tty.setraw(slave)
        os.set_blocking(master, False)
        self.master, self.slave = master, slave
        self.slave_name = os.ttyname(slave)
        if self.link:
            _replace_symlink(self.slave_name, self.link)

    def unplug(self) -> None:
        """Pull the cable: close both pty ends and remove the link."""
        self._generation += 1
        if self._writable is not None and self.master is not None:
            self._writable.get_loop().remove_writer(self.master)
            _resolve(self._writable)
        if self.link:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.link)
        for fd in (self.master, self.slave):
            if fd is not None:
                os.close(fd)
        self.master = self.slave = None

    def replug(self) -> None:
        """Plug back in: a new pty, the link (if any) recreated at the same path."""
        if self.plugged:
            self.unplug()
        self._plug()

    def close(self) -> None:
        if self.plugged:
            self.unplug()

    def __enter__(self) -> VirtualSerialDevice:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def _master_fd(self) -> int:
        if self.master is None:
            raise DeviceUnplugged(f"virtual device {self.path} is unplugged")
        return self.master

    def write(self, data: bytes, timeout: float | None = None) -> None:
        """Write all of `data` to the gateway, blocking while the pty buffer is full.

        Raises TimeoutError when `timeout` seconds pass first (the gateway is not reading).
        """
        fd, generation = self._master_fd(), self._generation
        view = memoryview(data)
        deadline = math.inf if timeout is None else time.monotonic() + timeout
        while view:
            if generation != self._generation:  # unplugged by another thread meanwhile
                raise self._unplugged_during(data, view)
            try:
                view = view[os.write(fd, view) :]
                continue
            except BlockingIOError:
                pass
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"pty {self.path}: {len(view)} bytes not taken in time")
            # Short waits, because select() does not notice an fd closed by another thread.
            select.select([], [fd], [], min(remaining, 0.1))

    async def write_async(self, data: bytes) -> None:
        """Write all of `data` without ever blocking the event loop.

        Raises DeviceUnplugged if the device is unplugged meanwhile (call unplug() from the
        event loop's thread then, so the pending wait is woken before the fd closes).
        """
        loop = asyncio.get_running_loop()
        fd, generation = self._master_fd(), self._generation
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(fd, view) :]
                continue
            except BlockingIOError:
                pass
            self._writable = loop.create_future()
            loop.add_writer(fd, _resolve, self._writable)
            try:
                await self._writable
            finally:
                self._writable = None
                if generation == self._generation:
                    loop.remove_writer(fd)
            if generation != self._generation:
                raise self._unplugged_during(data, view)

    def _unplugged_during(self, data: bytes, unwritten: memoryview) -> DeviceUnplugged:
        written = len(data) - len(unwritten)
        return DeviceUnplugged(f"virtual device {self.path} was unplugged", written)

    def read(self, timeout: float = 0.0, size: int = 65536) -> bytes:
        """What the gateway wrote to the device; b"" when nothing arrives within `timeout`."""
        fd = self._master_fd()
        ready, _, _ = select.select([fd], [], [], timeout)
        if not ready:
            return b""
        try:
            return os.read(fd, size)
        except BlockingIOError:
            return b""


def _resolve(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)


def _replace_symlink(target: str, link: str) -> None:
    # Atomic like udev's own link updates: a reader never sees the link missing or half made.
    temporary = f"{link}.{os.getpid()}.tmp"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(temporary)
    os.symlink(target, temporary)
    os.replace(temporary, link)


# -- device profiles ----------------------------------------------------------------------


def make_line(profile: str, index: int) -> bytes:
    """Line number `index` of a simulated device of this profile, ending in a newline.

    Values drift smoothly with the index, deterministically, so a test can regenerate them.
    """
    try:
        maker = _MAKERS[profile]
    except KeyError:
        expected = ", ".join(PROFILES)
        raise ValueError(
            f"unknown simulator profile {profile!r}; expected one of {expected}"
        ) from None
    return maker(index)


def _drift(index: int, base: float, spread: float, phase: float) -> float:
    """A value wandering around `base` within about ±spread, with a little per-line noise."""
    slow = math.sin(index * 0.0131 + phase) + 0.5 * math.sin(index * 0.00517 + 2.3 * phase)
    noise = random.Random(index * 7919 + int(phase * 1000)).uniform(-0.1, 0.1)
    return base + spread * (slow / 1.5 + noise)


def _environment(index: int) -> tuple[float, float, float]:
    return (
        round(_drift(index, 21.5, 2.0, 0.0), 2),
        round(_drift(index, 40.0, 8.0, 1.0), 1),
        round(_drift(index, 1013.2, 4.0, 2.0), 1),
    )


def _env_line(index: int) -> bytes:
    temperature, humidity, pressure = _environment(index)
    record = {"temperature": temperature, "humidity": humidity, "pressure": pressure}
    return json.dumps(record).encode() + b"\n"


def _csv_line(index: int) -> bytes:
    temperature, humidity, pressure = _environment(index)
    return f"{temperature},{humidity},{pressure}\n".encode()


def _kv_line(index: int) -> bytes:
    temperature, humidity, pressure = _environment(index)
    return f"t={temperature} h={humidity} p={pressure}\n".encode()


def _counter_line(index: int) -> bytes:
    return b'{"n": %d}\n' % index


def nmea_checksum(body: str) -> str:
    """The two hex digits after '*': XOR of every character between '$' and '*'."""
    value = 0
    for char in body.encode("ascii"):
        value ^= char
    return f"{value:02X}"


# What a GPS module prints once a second: GGA, GSA, GSV x 3, RMC, VTG (a u-blox or MediaTek
# receiver's default set, without GLL). One line of the burst per index.
NMEA_BURST = ("GGA", "GSA", "GSV", "GSV", "GSV", "RMC", "VTG")
# Satellites in view: PRN, elevation and azimuth; the first eight are used in the fix.
_SATELLITES = (
    (2, 36, 309),
    (3, 16, 92),
    (5, 4, 285),
    (6, 76, 255),
    (7, 38, 144),
    (9, 71, 44),
    (17, 9, 203),
    (19, 22, 220),
    (23, 40, 51),
    (30, 16, 173),
    (33, 43, 190),
)
_SPEED_KNOTS = 4.7
_COURSE = 56.3


def _nmea_line(index: int) -> bytes:
    # One burst per fix, one fix a second, the receiver driving a circle of about a
    # kilometre, so the position stays valid however long the simulation runs.
    fix, slot = divmod(index, len(NMEA_BURST))
    kind = NMEA_BURST[slot]
    if kind == "GSV":
        body = _gsv_body(fix, slot - NMEA_BURST.index("GSV") + 1)
    elif kind == "GSA":
        used = ",".join(f"{prn:02d}" for prn, _, _ in _SATELLITES[:8])
        body = f"GPGSA,A,3,{used},,,,,1.6,0.9,1.3"
    elif kind == "VTG":
        kmh = _SPEED_KNOTS * 1.852
        body = f"GPVTG,{_COURSE:.1f},T,,M,{_SPEED_KNOTS:.1f},N,{kmh:.1f},K,A"
    else:
        body = _fix_body(fix, kind)
    return (f"${body}*{nmea_checksum(body)}\r\n").encode("ascii")


def _fix_body(fix: int, kind: str) -> str:
    angle = fix * 0.002
    latitude = 48.1173 + 0.01 * math.sin(angle)
    longitude = 11.5167 + 0.015 * (1 - math.cos(angle))
    seconds = (12 * 3600 + fix) % 86400
    clock = f"{seconds // 3600:02d}{seconds // 60 % 60:02d}{seconds % 60:02d}.00"
    position = f"{_nmea_angle(latitude, 2)},N,{_nmea_angle(longitude, 3)},E"
    if kind == "GGA":
        altitude = _drift(fix, 545.4, 1.5, 3.0)
        return f"GPGGA,{clock},{position},1,08,0.9,{altitude:.1f},M,46.9,M,,"
    return f"GPRMC,{clock},A,{position},{_SPEED_KNOTS},{_COURSE},271125,,,A"


def _gsv_body(fix: int, part: int) -> str:
    """Part `part` of 3 of the satellites-in-view group, four satellites a sentence."""
    blocks = []
    for prn, elevation, azimuth in _SATELLITES[(part - 1) * 4 : part * 4]:
        snr = round(_drift(fix, 20 + elevation / 3, 3.0, prn * 0.1))
        blocks.append(f"{prn:02d},{elevation:02d},{azimuth:03d},{snr:02d}")
    return f"GPGSV,3,{part},{len(_SATELLITES):02d}," + ",".join(blocks)


def _nmea_angle(degrees: float, width: int) -> str:
    total_minutes = round(degrees * 60, 4)  # rounded first, so 59.99996' cannot print as 60'
    whole = int(total_minutes // 60)
    minutes = total_minutes - whole * 60
    return f"{whole:0{width}d}{minutes:07.4f}"


_MAKERS = {
    "env": _env_line,
    "csv": _csv_line,
    "kv": _kv_line,
    "nmea": _nmea_line,
    "counter": _counter_line,
}


class SimulatedDevice:
    """A virtual device writing `profile` lines at `rate` lines/s (0 or None: as fast as it can).

    The writer is an asyncio task; writes wait for the pty with loop.add_writer, so a gateway
    that stops reading never blocks the event loop. Lines due together are written together,
    which keeps high rates exact without a timer per line.
    """

    max_batch = 512  # lines per write when behind schedule or unpaced
    min_pause = 0.001  # seconds between writes when paced

    def __init__(self, profile: str, rate: float | None, path: str | None = None):
        make_line(profile, 0)  # an unknown profile fails here, not later in the task
        self.profile = profile
        self.rate = float(rate) if rate else 0.0
        self.device = VirtualSerialDevice(path)
        self.lines_written = 0  # complete lines handed to the pty
        self.next_index = 0  # the device's own line counter; lines lost in an unplug count too
        self._task: asyncio.Task | None = None

    @property
    def path(self) -> str:
        return self.device.path

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._write_lines())

    async def stop(self) -> None:
        """Stop writing and remove the pty (and its link)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.device.close()

    async def _write_lines(self) -> None:
        started, first_index = time.monotonic(), self.next_index
        while True:
            if not self.device.plugged:
                # An unplugged device produces nothing; the schedule restarts at replug.
                await asyncio.sleep(0.05)
                started, first_index = time.monotonic(), self.next_index
                continue
            due = self._due(time.monotonic() - started, self.next_index - first_index)
            if due:
                await self._write_batch(due)
            await asyncio.sleep(self._pause(started, first_index))

    def _due(self, elapsed: float, written: int) -> int:
        if not self.rate:
            return self.max_batch
        return max(0, min(self.max_batch, int(elapsed * self.rate) + 1 - written))

    def _pause(self, started: float, first_index: int) -> float:
        if not self.rate:
            return 0
        next_line_at = started + (self.next_index - first_index) / self.rate
        # At most a thousand wake-ups a second: faster rates go out in batches of due lines.
        return max(self.min_pause, next_line_at - time.monotonic())

    async def _write_batch(self, count: int) -> None:
        first, self.next_index = self.next_index, self.next_index + count
        data = b"".join(make_line(self.profile, index) for index in range(first, first + count))
        try:
            await self.device.write_async(data)
        except OSError as error:  # unplugged: the rest of the batch is lost, as on a real cable
            self.lines_written += data[: getattr(error, "written", 0)].count(b"\n")
            log.debug("simulated device %s: unplugged during a write", self.path)
            return
        self.lines_written += count
