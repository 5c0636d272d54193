"""systemd: sd_notify over $NOTIFY_SOCKET (READY, WATCHDOG, STATUS, STOPPING) and the unit file."""

from __future__ import annotations

import asyncio
import logging
import os
import shlex
import socket
import struct
import sys
from typing import Any, Mapping

log = logging.getLogger("gateway.systemd")

WATCHDOG_SEC = 30  # the unit's WatchdogSec: a loop stalled this long gets the gateway restarted
READY_TIMEOUT = 10.0  # READY waits at most this long for every source and sink to settle
STATUS_INTERVAL = 5.0  # without a watchdog, STATUS is refreshed this often
SETTLE_POLL = 0.02  # how often READY looks at the sources' and sinks' states meanwhile


def notify_address(value: str | None) -> str | bytes | None:
    """The socket address in $NOTIFY_SOCKET: a path, or "@name" in the abstract namespace."""
    if not value:
        return None
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    log.warning("NOTIFY_SOCKET=%r is neither a path nor @abstract; not notifying systemd", value)
    return None


def watchdog_interval(environ: Mapping[str, str], pid: int | None = None) -> float | None:
    """Seconds between WATCHDOG pings: half of $WATCHDOG_USEC (sd_watchdog_enabled(3)), or
    None when systemd watches no process, or another one ($WATCHDOG_PID)."""
    try:
        usec = int(environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    owner = environ.get("WATCHDOG_PID")
    if usec <= 0 or (owner and owner != str(pid if pid is not None else os.getpid())):
        return None
    return usec / 1e6 / 2


class Notifier:
    """sd_notify(3) by hand: one datagram per message; does nothing outside systemd."""

    def __init__(self, environ: Mapping[str, str] | None = None):
        environ = os.environ if environ is None else environ
        self.address = notify_address(environ.get("NOTIFY_SOCKET"))
        self.watchdog_interval = watchdog_interval(environ) if self.address else None
        self.sent = 0
        self._socket: socket.socket | None = None
        self._failing = False

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *assignments: str) -> bool:
        """Send "KEY=value" lines as one message; False (logged once) when it cannot."""
        if self.address is None:
            return False
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._socket.setblocking(False)  # a datagram or nothing: never stall the loop
            self._socket.sendto("\n".join(assignments).encode(), self.address)
        except OSError as error:
            if not self._failing:
                log.warning("cannot notify systemd at NOTIFY_SOCKET: %s", error)
            self._failing = True
            return False
        self._failing = False
        self.sent += 1
        return True

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def status_line(gateway: Any) -> str:
    """The headline counters for `systemctl status`: sources, readings, deliveries."""
    totals = gateway.stats()["totals"]
    connected = sum(source.state == "connected" for source in gateway.sources)
    delivered = " ".join(f"{name}={count}" for name, count in totals["delivered"].items())
    return (
        f"{connected}/{len(gateway.sources)} sources connected; {totals['readings']} readings, "
        f"{totals['parse_errors']} parse errors; delivered {delivered or 'nowhere'}"
    )


class Supervisor:
    """What the gateway tells systemd, driven from its event loop.

    READY once every source made its first attempt at its device (open, or waiting for it)
    and every enabled sink connected or failed once (a broker down at boot does not hold
    the start up: the gateway buffers), at most READY_TIMEOUT after the start. Then a
    WATCHDOG ping every half of WatchdogSec, sent by a task of the loop: a loop that
    stalls sends none, and systemd restarts the gateway. Each message carries STATUS.
    """

    def __init__(self, gateway: Any, notifier: Notifier | None = None):
        self.gateway = gateway
        self.notifier = notifier or Notifier()

    async def run(self) -> None:
        if not self.notifier.enabled:
            return
        await self._settled()
        self.notifier.send("READY=1", f"STATUS={status_line(self.gateway)}")
        log.info("told systemd the gateway is ready")
        interval = self.notifier.watchdog_interval
        while True:
            await asyncio.sleep(interval or STATUS_INTERVAL)
            status = f"STATUS={status_line(self.gateway)}"
            self.notifier.send(*(("WATCHDOG=1", status) if interval else (status,)))

    def stopping(self) -> None:
        self.notifier.send("STOPPING=1", "STATUS=stopping")

    async def _settled(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + READY_TIMEOUT
        while not self._all_settled() and loop.time() < deadline:
            await asyncio.sleep(SETTLE_POLL)  # states without an event of their own

    def _all_settled(self) -> bool:
        sources = all(source.state != "stopped" for source in self.gateway.sources)
        sinks = all(
            not sink.enabled or sink.connected or sink.counters["failures"]
            for sink in self.gateway.sinks.values()
        )
        return sources and sinks


# -- journald -------------------------------------------------------------------------------

JOURNAL_SOCKET = "/run/systemd/journal/socket"
# logging level → syslog priority (journald's PRIORITY field)
PRIORITIES = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6))


def stderr_is_journal(environ: Mapping[str, str], fd: int) -> bool:
    """$JOURNAL_STREAM names the stream systemd connected to the journal ("dev:inode"); it
    is ours only if `fd` is that stream (a child whose stderr was redirected inherits the
    variable too)."""
    value = environ.get("JOURNAL_STREAM", "")
    try:
        device, inode = (int(part) for part in value.split(":"))
        status = os.fstat(fd)
    except (ValueError, OSError):
        return False
    return (status.st_dev, status.st_ino) == (device, inode)


def journal_handler(
    environ: Mapping[str, str] | None = None, fd: int | None = None, path: str = JOURNAL_SOCKET
) -> logging.Handler | None:
    """A JournalHandler when stderr goes to the journal and its socket is there, else None."""
    environ = os.environ if environ is None else environ
    if "JOURNAL_STREAM" not in environ:
        return None
    try:
        fd = sys.stderr.fileno() if fd is None else fd
    except (AttributeError, ValueError, OSError):  # stderr replaced by something without one
        return None
    if not stderr_is_journal(environ, fd) or not os.path.exists(path):
        return None
    return JournalHandler(path)


def journal_field(name: str, value: str) -> bytes:
    """One field of journald's native protocol: NAME=value, or NAME, length, value when the
    value spans lines (a traceback)."""
    data = value.encode("utf-8", "replace")
    if b"\n" not in data:
        return name.encode() + b"=" + data + b"\n"
    return name.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"


class JournalHandler(logging.Handler):
    """Log records as journald entries with fields of their own (the native protocol over
    the standard library's socket): PRIORITY, SYSLOG_IDENTIFIER, LOGGER, CODE_FILE,
    CODE_LINE, CODE_FUNC; `journalctl -u gateway LOGGER=gateway.sinks.mqtt` filters by
    them. A record the socket refuses (too large for one datagram) goes to stderr."""

    def __init__(self, path: str = JOURNAL_SOCKET, identifier: str = "gateway"):
        super().__init__()
        self.path = path
        self.identifier = identifier
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.setFormatter(logging.Formatter("%(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            fields = {
                "MESSAGE": self.format(record),
                "PRIORITY": str(_priority(record.levelno)),
                "SYSLOG_IDENTIFIER": self.identifier,
                "LOGGER": record.name,
                "CODE_FILE": record.pathname,
                "CODE_LINE": str(record.lineno),
                "CODE_FUNC": record.funcName,
            }
            message = b"".join(journal_field(name, value) for name, value in fields.items())
            self.socket.sendto(message, self.path)
        except OSError:
            sys.stderr.write(self.format(record) + "\n")
        except Exception:
            self.handleError(record)

    def close(self) -> None:
        self.socket.close()
        super().close()


def _priority(level: int) -> int:
    for threshold, priority in PRIORITIES:
        if level >= threshold:
            return priority
    return 7  # debug


# -- gateway install-service ----------------------------------------------------------------


def unit_file(
    command: list[str],
    config_path: str,
    data_dir: str,
    user: str,
    watchdog_sec: int = WATCHDOG_SEC,
) -> str:
    """The text of a systemd service unit running `command` (absolute paths) as `user`."""
    working = os.path.dirname(config_path)
    writable = data_dir if os.path.isabs(data_dir) else os.path.join(working, data_dir)
    return f"""\
# Written by `gateway install-service`; see hardware.md ("Running under systemd").
[Unit]
Description=Edge gateway: serial devices to MQTT and more ({config_path})
After=network-online.target
Wants=network-online.target

[Service]
Type=notify
NotifyAccess=main
ExecStart={shlex.join(command)}
WorkingDirectory={working}
User={user}
# Serial ports (/dev/ttyACM*, /dev/ttyUSB*, /dev/ttyAMA*) belong to the dialout group.
SupplementaryGroups=dialout
Restart=on-failure
RestartSec=2s
WatchdogSec={watchdog_sec}s
TimeoutStartSec=60s
TimeoutStopSec=30s
# Hardening: a read-only system but for the data directory, no privilege gain. (No
# ProtectClock: its filter also denies the read-only adjtimex() that tells whether the
# clock is synchronised, see gateway.clock.)
NoNewPrivileges=yes
ProtectSystem=strict
ReadWritePaths={writable}
ProtectHome=read-only
PrivateTmp=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectHostname=yes
RestrictSUIDSGID=yes
RestrictRealtime=yes
RestrictNamespaces=yes
LockPersonality=yes
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK
SystemCallArchitectures=native
UMask=0027

[Install]
WantedBy=multi-user.target
"""
