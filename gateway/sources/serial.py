"""Serial source: reads a port in chunks, splits lines (or hands frames on), reconnects."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import select
import time
from typing import Any, Callable, Protocol

import aioserial
import serial

from gateway.sources import ports
from gateway.sources.commands import CommandError
from gateway.throttled_log import ThrottledLog

log = logging.getLogger("gateway.sources")

DEFAULT_BAUD = 115200
DEFAULT_MAX_LINE = 4096
DEFAULT_RECONNECT_INTERVAL = 0.5
READ_SIZE = 65536
# While paused for backpressure, how often to look whether the sinks take readings again.
# A poll rather than a wake-up from every queue: a paused source costs 500 checks a second.
RESUME_POLL = 0.002
# Bytes for the device (ACKs, commands) held while it does not read; beyond this they are
# dropped and counted: ACKs are cumulative and commands time out, so nothing stalls.
MAX_WRITE_BACKLOG = 65536
COUNTERS = (
    "lines",
    "bytes",
    "oversize",
    "invalid_utf8",
    "partial_at_disconnect",
    "reconnects",
    "callback_errors",
    "paused",
)

OnLine = Callable[[str, float], None]
OnEvent = Callable[[str, dict], None]


class FrameHandler(Protocol):
    """What a framed (non-line) protocol plugs into SerialSource: cobs_link.CobsHandler."""

    def connected(self, port: str, write: Callable[[bytes], bool]) -> None: ...

    def receive(self, chunk: bytes, ts: float) -> None: ...

    def disconnected(self) -> None: ...

    def stats(self) -> dict[str, Any]: ...

    def state(self) -> dict[str, Any]: ...

    async def command(
        self, name: str, args: dict[str, Any] | None = None, timeout: float = 2.0
    ) -> Any: ...


def _hung_up(fd: int) -> bool:
    """Whether the device behind fd went away (hang-up or error), without reading it."""
    poller = select.poll()
    poller.register(fd, 0)  # no events asked: POLLHUP, POLLERR and POLLNVAL come anyway
    return bool(poller.poll(0))


class LineFramer:
    """Turns chunks of a byte stream into complete lines.

    Splits on LF and strips one trailing CR; empty lines are skipped. A line longer than
    `max_line` bytes is reported to `on_reject("oversize", size)` and discarded up to the next
    LF, so the lines around it survive. A COBS framer can later offer the same feed()/reset().
    """

    def __init__(self, max_line: int, on_reject: Callable[[str, int], None]):
        self.max_line = max_line
        self.on_reject = on_reject
        self._pending = b""
        self._discarding = False

    def feed(self, chunk: bytes) -> list[bytes]:
        pieces = chunk.split(b"\n")
        if self._discarding:
            if len(pieces) == 1:
                return []
            pieces[0] = b""  # the end of the oversize line, already reported
            self._discarding = False
        elif self._pending:
            pieces[0] = self._pending + pieces[0]
        self._keep_tail(pieces.pop())
        lines = []
        for line in pieces:
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line:
                continue
            if len(line) > self.max_line:
                self.on_reject("oversize", len(line))
                continue
            lines.append(line)
        return lines

    def _keep_tail(self, tail: bytes) -> None:
        # One byte of slack: the tail may end in the CR of a CRLF whose LF is yet to come.
        if len(tail) > self.max_line + 1:
            self.on_reject("oversize", len(tail))
            self._pending = b""
            self._discarding = True
            return
        self._pending = tail

    def reset(self) -> int:
        """Forget the unfinished line (the device went away); returns its size in bytes."""
        size = len(self._pending)
        self._pending = b""
        self._discarding = False
        return size


class SerialSource:
    """One serial device read as lines: on_line(text, ts) for every good line.

    `options` is the normalised source config: name, port or match {vid, pid, serial}, baud,
    max_line, framing ("lines" or "cobs"), reconnect_interval. `ts` is time.time() when the
    chunk holding the line arrived. `state` is "connected", "waiting" (device absent) or
    "stopped"; on_event(name, detail) hears "connected", "waiting" and "stopped".

    framing = "cobs" needs a `handler` (cobs_link.CobsHandler): it gets the raw chunks instead
    of on_line, and write() to talk back to the device.

    `room()` is backpressure (Ingest.room: how many more lines the sinks take for sure;
    `accepting()`, a yes or no, will do too): when it says none, the source holds the rest
    of the chunk and stops reading the port until there is room again. The device (a USB
    CDC port, a pty) then waits in its own write; nothing is read that could not be kept.
    `paused` counts the pauses and `paused_seconds` their length.
    """

    def __init__(
        self,
        options: dict[str, Any],
        on_line: OnLine,
        on_event: OnEvent | None = None,
        *,
        list_ports: Callable[[], list[dict[str, Any]]] | None = None,
        handler: FrameHandler | None = None,
        accepting: Callable[[], bool] | None = None,
        room: Callable[[], int] | None = None,
    ):
        self.name = options.get("name") or options.get("port") or "serial"
        self.port: str | None = options.get("port")
        self.match: dict[str, Any] | None = options.get("match")
        if not self.port and not self.match:
            raise ValueError(f"source {self.name}: needs a port or a match")
        if self.match:
            ports.find(self.match, [])  # a malformed match fails now, not on every attempt
        self.framing = options.get("framing") or "lines"
        if self.framing not in ("lines", "cobs"):
            raise ValueError(f"source {self.name}: framing {self.framing!r} is not supported")
        if (self.framing == "cobs") != (handler is not None):
            needs = "needs a frame handler" if handler is None else "takes no frame handler"
            raise ValueError(f"source {self.name}: framing {self.framing!r} {needs}")
        self.baud = int(options.get("baud") or DEFAULT_BAUD)
        self.max_line = int(options.get("max_line") or DEFAULT_MAX_LINE)
        self.reconnect_interval = float(
            options.get("reconnect_interval") or DEFAULT_RECONNECT_INTERVAL
        )
        self.on_line = on_line
        self.on_event = on_event
        if room is None and accepting is not None:
            room = lambda: 1 if accepting() else 0  # noqa: E731 - asked before every line
        self.room = room  # None: no backpressure
        self.paused_seconds = 0.0
        self._paused_since: float | None = None
        self._held: tuple[list[bytes], int, float] | None = None  # lines not yet taken
        # "fd": non-blocking reads from the event loop (POSIX); "thread": aioserial.read_async.
        self.read_mode = "fd" if os.name == "posix" else "thread"
        self.state = "stopped"
        self.device: str | None = None  # the path open right now
        self.counters = dict.fromkeys(COUNTERS, 0)
        self.handler = handler
        if handler is not None:
            self.counters["write_overflow"] = 0
            self._receive = self._receive_frames  # type: ignore[method-assign]
        self._list_ports = list_ports
        # For a plain device path: how `match` or a by-id path would follow a replug.
        self.follow_hint: str | None = None
        self._hinted = False
        self._framer = LineFramer(self.max_line, self._reject)
        self._throttle = ThrottledLog(log)
        self._serial: aioserial.AioSerial | None = None
        self._stopping = False
        self._stop_event: asyncio.Event | None = None
        self._finished: asyncio.Event | None = None
        self._gone: asyncio.Future | None = None
        self._task: asyncio.Task | None = None
        self._fd: int | None = None  # the port's fd while read_mode "fd" reads it
        self._out = bytearray()  # bytes for the device not yet taken by the port
        self._awaiting_writable = False
        self._writer_task: asyncio.Task | None = None

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> asyncio.Task:
        """Run in a task of its own; stop() ends it."""
        if self._task is None or self._task.done():
            self._stopping = False
            self._task = asyncio.get_running_loop().create_task(self.run())
        return self._task

    async def stop(self) -> None:
        """Stop reading and close the port; returns once run() has returned."""
        self._stopping = True
        if self._stop_event is not None:
            self._stop_event.set()
        self._device_gone(None)
        if self._serial is not None and self.read_mode == "thread":
            self._serial.cancel_read()  # wakes the blocked reader thread
        if self._finished is not None:
            await self._finished.wait()

    def stats(self) -> dict[str, Any]:
        stats = {"name": self.name, "state": self.state, "device": self.device, **self.counters}
        if self.follow_hint is not None and self.state == "waiting":
            stats["hint"] = self.follow_hint
        paused = self.paused_seconds
        if self._paused_since is not None:  # the pause under way counts too
            paused += time.monotonic() - self._paused_since
        stats["paused_seconds"] = round(paused, 3)
        if self.handler is not None:
            stats["link"] = self.handler.stats()
            stats["remote"] = self.handler.state()
        return stats

    async def command(
        self, name: str, args: dict[str, Any] | None = None, timeout: float = 2.0
    ) -> Any:
        """Run a device command (framing "cobs"); see cobs_link.CobsHandler.command.

        The default timeout is the protocol's CMD_TIMEOUT_MS."""
        if self.handler is None:
            raise CommandError(f"source {self.name}: a line device takes no commands")
        return await self.handler.command(name, args, timeout)

    async def run(self) -> None:
        """Open the port, read it, and reopen it whenever the device comes back, until stop()."""
        self._stop_event = asyncio.Event()
        self._finished = asyncio.Event()
        try:
            await self._connect_and_read_until_stopped()
        finally:
            self._finished.set()
            self._set_state("stopped", {})

    async def _connect_and_read_until_stopped(self) -> None:
        was_connected = False
        outage_reported = False
        while not self._stopping:
            port, problem = self._resolve_port()
            serial_port = None
            if port is not None:
                serial_port, problem = self._open(port)
            if serial_port is None:
                if not outage_reported:
                    self._report_absent(port, problem)
                    outage_reported = True
                await self._pause(self.reconnect_interval)
                continue
            self._report_connected(port, was_connected)
            was_connected, outage_reported = True, False
            reason = await self._read_until_gone(serial_port)
            if reason is None:
                return
            self._report_gone(port, reason)
            outage_reported = True
            await self._pause(self.reconnect_interval)

    # -- connecting ----------------------------------------------------------------------

    def _resolve_port(self) -> tuple[str | None, str]:
        if not self.match:
            return self.port, ""
        listing = self._list_ports() if self._list_ports is not None else None
        found = ports.find(self.match, listing)
        if found is None:
            return None, f"no serial port matches {ports.describe_match(self.match)}"
        return found, ""

    def _open(self, port: str) -> tuple[aioserial.AioSerial | None, str]:
        try:
            # exclusive: a second reader on the same port would silently steal half the lines
            opened = aioserial.AioSerial(port=port, baudrate=self.baud, exclusive=True)
        except (serial.SerialException, OSError, ValueError) as error:
            return None, str(error)
        return opened, ""

    def _report_absent(self, port: str | None, problem: str) -> None:
        if port is None:  # a match found nothing; the problem says what was looked for
            log.warning("source %s: %s; waiting for it", self.name, problem)
        else:
            log.warning(
                "source %s: device %s not available (%s); waiting for it", self.name, port, problem
            )
        self._set_state("waiting", {"port": port, "reason": problem})

    def _report_connected(self, port: str, again: bool) -> None:
        self.device = port
        if self.follow_hint is None and self._names_a_port():
            # Asked while the device is present: its USB ids and by-id link say the most.
            self.follow_hint = ports.follow_hint(port, self._ports())
        if again:
            self.counters["reconnects"] += 1
            log.info("source %s: reconnected to %s", self.name, port)
        else:
            log.info("source %s: reading %s at %d baud", self.name, port, self.baud)
        self._set_state("connected", {"port": port, "reconnect": again})

    def _report_gone(self, port: str, reason: str) -> None:
        log.warning(
            "source %s: device %s gone (%s); waiting for it to return", self.name, port, reason
        )
        if self.follow_hint is not None and not self._hinted:
            self._hinted = True  # once: the hint does not change while it waits
            log.warning("source %s: %s", self.name, self.follow_hint)
        self.device = None
        detail = {"port": port, "reason": reason}
        if self.follow_hint is not None:
            detail["hint"] = self.follow_hint
        self._set_state("waiting", detail)

    def _names_a_port(self) -> bool:
        """A plain device path (/dev/ttyACM0) that a replug may give to another device."""
        return (
            bool(self.port) and not self.match and not self.port.startswith(ports.STABLE_PREFIXES)
        )

    def _ports(self) -> list[dict[str, Any]]:
        try:
            return self._list_ports() if self._list_ports else ports.list_ports()
        except Exception:  # listing is a courtesy here; the hint then stays generic
            return []

    def _set_state(self, state: str, detail: dict[str, Any]) -> None:
        self.state = state
        if self.on_event is None:
            return
        try:
            self.on_event(state, detail)
        except Exception:  # the app's hook failing must not take the source down
            log.exception("source %s: event handler failed on %s", self.name, state)

    async def _pause(self, seconds: float) -> None:
        assert self._stop_event is not None
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._stop_event.wait(), seconds)

    # -- reading -------------------------------------------------------------------------

    async def _read_until_gone(self, serial_port: aioserial.AioSerial) -> str | None:
        """Read until the device goes away (returns why) or stop() (returns None)."""
        self._serial = serial_port
        try:
            if self.handler is not None:
                self.handler.connected(self.device or "", self.write)
            if self.read_mode == "fd":
                return await self._read_with_fd(serial_port)
            return await self._read_with_thread(serial_port)
        finally:
            self._serial = None
            self._out.clear()
            if self.handler is not None:
                self.handler.disconnected()
            serial_port.close()
            self._deliver_held(force=True)
            self._discard_partial_line()

    async def _read_with_fd(self, serial_port: aioserial.AioSerial) -> str | None:
        # Non-blocking reads straight from the loop: ~3x the lines/s of aioserial's
        # thread-per-read on a pty, no thread hop on the latency path, and nothing to unblock
        # at stop.
        if self._stopping:
            return None
        loop = asyncio.get_running_loop()
        fd = serial_port.fileno()
        os.set_blocking(fd, False)
        self._gone = loop.create_future()
        self._fd = fd
        self._write_fd()
        room = self.room
        resume: list[asyncio.TimerHandle] = []  # the pending look while paused

        def readable() -> None:
            try:
                chunk = os.read(fd, READ_SIZE)
            except BlockingIOError:
                return
            except OSError as error:
                self._device_gone(f"read failed: {error}")
                return
            if not chunk:
                self._device_gone("end of file")
                return
            self._receive(chunk, time.time())
            if room is not None and (self._held is not None or room() <= 0):
                loop.remove_reader(fd)
                self._pause_started()
                resume.append(loop.call_later(RESUME_POLL, look))

        def look() -> None:
            resume.clear()
            if self._gone is None or self._gone.done():
                return
            if room() <= 0 or not self._deliver_held() or room() <= 0:
                if _hung_up(fd):  # not read while paused: an unplug shows only here
                    self._device_gone("hung up while paused")
                    return
                resume.append(loop.call_later(RESUME_POLL, look))
                return
            self._pause_ended()
            loop.add_reader(fd, readable)

        loop.add_reader(fd, readable)
        try:
            return await self._gone
        finally:
            for handle in resume:
                handle.cancel()
            self._pause_ended()
            loop.remove_reader(fd)
            if self._awaiting_writable:
                loop.remove_writer(fd)
                self._awaiting_writable = False
            self._fd = None
            self._gone = None

    async def _read_with_thread(self, serial_port: aioserial.AioSerial) -> str | None:
        while not self._stopping:
            try:
                chunk = await serial_port.read_async(max(1, serial_port.in_waiting))
            except (serial.SerialException, OSError) as error:
                return str(error)
            if chunk:  # empty after cancel_read() from stop()
                self._receive(chunk, time.time())
            await self._wait_until_accepting()
        return None

    async def _wait_until_accepting(self) -> None:
        room = self.room
        if room is None or (self._held is None and room() > 0):
            return
        self._pause_started()
        fd = self._serial.fileno() if self._serial is not None else None
        try:
            while not self._stopping and not (room() > 0 and self._deliver_held()):
                if fd is not None and _hung_up(fd):
                    return  # the next read fails and reports the device gone
                await asyncio.sleep(RESUME_POLL)
        finally:
            self._pause_ended()

    def _pause_started(self) -> None:
        self.counters["paused"] += 1
        self._paused_since = time.monotonic()

    def _pause_ended(self) -> None:
        if self._paused_since is not None:
            self.paused_seconds += time.monotonic() - self._paused_since
            self._paused_since = None

    def _device_gone(self, reason: str | None) -> None:
        if self._gone is not None and not self._gone.done():
            self._gone.set_result(reason)

    def _receive(self, chunk: bytes, ts: float) -> None:
        if self._stopping:
            return
        self.counters["bytes"] += len(chunk)
        self._deliver(self._framer.feed(chunk), 0, ts)

    def _deliver(self, lines: list[bytes], start: int, ts: float, force: bool = False) -> None:
        """Hand lines on from `start`; when the sinks have no room, hold the rest.

        Looked at before every line (room() says how many may pass before the next look),
        so a "block" queue is never offered more than it takes and nothing read from the
        port is refused. `force` hands everything on (the sinks' overflow policies decide).
        """
        checked = self.room is not None and not force
        room = 0
        on_line = self.on_line
        for index in range(start, len(lines)):
            if checked and room <= 0:
                room = self.room()
                if room <= 0:
                    self._held = (lines, index, ts)
                    return
            room -= 1
            raw = lines[index]
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                self._reject("invalid_utf8", len(raw), f"{error.reason} in {raw[:40]!r}")
                continue
            self.counters["lines"] += 1
            try:
                on_line(text, ts)
            except Exception:  # a consumer bug must not stop the source or lose the next lines
                self.counters["callback_errors"] += 1
                self._throttle.warning(
                    "callback",
                    "source %s: line handler failed on %r",
                    self.name,
                    text[:80],
                    exc_info=True,
                )

    def _deliver_held(self, force: bool = False) -> bool:
        """Hand on the lines held back; True when none are left. `force` ignores room
        (the port is closing: the sinks' overflow policies decide)."""
        held, self._held = self._held, None
        if held is None:
            return True
        lines, start, ts = held
        self._deliver(lines, start, ts, force)
        return self._held is None

    def _receive_frames(self, chunk: bytes, ts: float) -> None:
        if self._stopping:
            return
        self.counters["bytes"] += len(chunk)
        assert self.handler is not None
        try:
            self.handler.receive(chunk, ts)
        except Exception:  # a handler bug must not stop the source or lose the next frames
            self.counters["callback_errors"] += 1
            self._throttle.warning(
                "callback", "source %s: frame handler failed", self.name, exc_info=True
            )

    # -- writing (framed protocols talk back) --------------------------------------------

    def write(self, data: bytes) -> bool:
        """Queue bytes for the device without blocking; False when they cannot go out."""
        if self._serial is None:
            return False
        if len(self._out) + len(data) > MAX_WRITE_BACKLOG:
            self.counters["write_overflow"] += 1
            self._throttle.warning(
                "write_overflow",
                "source %s: device is not reading; dropped %d bytes for it (write_overflow)",
                self.name,
                len(data),
            )
            return False
        self._out += data
        if self.read_mode == "fd":
            self._write_fd()  # before the reader took the fd, it waits there for _read_with_fd
        elif self._writer_task is None:
            loop = asyncio.get_running_loop()
            self._writer_task = loop.create_task(self._write_with_thread(self._serial))
        return True

    def _write_fd(self) -> None:
        fd = self._fd
        if fd is None or not self._out:
            return
        try:
            written = os.write(fd, self._out)
        except BlockingIOError:
            written = 0
        except OSError as error:
            self._out.clear()
            self._device_gone(f"write failed: {error}")
            return
        del self._out[:written]
        wants_writable = bool(self._out)
        if wants_writable != self._awaiting_writable:
            loop = asyncio.get_running_loop()
            if wants_writable:
                loop.add_writer(fd, self._write_fd)
            else:
                loop.remove_writer(fd)
            self._awaiting_writable = wants_writable

    async def _write_with_thread(self, serial_port: aioserial.AioSerial) -> None:
        try:
            while self._out and self._serial is serial_port:
                data = bytes(self._out)
                self._out.clear()
                await serial_port.write_async(data)
        except (serial.SerialException, OSError) as error:
            log.warning("source %s: write failed: %s", self.name, error)
        finally:
            self._writer_task = None

    def _reject(self, reason: str, size: int, detail: str = "") -> None:
        self.counters[reason] += 1
        if reason == "oversize":
            self._throttle.warning(
                reason,
                "source %s: dropped a line of %d+ bytes, longer than max_line = %d (oversize)",
                self.name,
                size,
                self.max_line,
            )
        else:
            self._throttle.warning(
                reason, "source %s: dropped a line that is not valid UTF-8 (%s)", self.name, detail
            )

    def _discard_partial_line(self) -> None:
        size = self._framer.reset()
        if size:
            self.counters["partial_at_disconnect"] += 1
            log.warning(
                "source %s: discarded %d bytes of an unfinished line when the port "
                "closed (partial_at_disconnect)",
                self.name,
                size,
            )
