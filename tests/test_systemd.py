"""systemd: sd_notify against a notify socket of the test's own, journald fields, the unit.

No systemd runs here (a container): the gateway is run with NOTIFY_SOCKET and
WATCHDOG_USEC pointing at a datagram socket this test reads, as systemd would set them.
"""

from __future__ import annotations

import asyncio
import getpass
import logging
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

import pytest

from gateway.app import Gateway
from gateway.config import loads
from gateway.sources.simulator import VirtualSerialDevice
from gateway.systemd import (
    JournalHandler,
    journal_handler,
    stderr_is_journal,
    watchdog_interval,
)
from tests.support.broker import free_port
from tests.support.config import gateway_toml, line_source
from tests.support.e2e import REPO_ROOT
from tests.support.waiting import eventually, wait_until

PING_USEC = 200_000  # WATCHDOG_USEC: a ping every 0.1 s
BLOCK = 1.0  # seconds the test holds the gateway's event loop


class NotifySocket:
    """A datagram socket standing in for systemd's: every message with its arrival time."""

    def __init__(self, path: str):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.settimeout(0.1)
        self.messages: list[tuple[float, str]] = []
        self._changed = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._closed:
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                return
            with self._changed:
                self.messages.append((time.monotonic(), data.decode()))
                self._changed.notify_all()

    def wait_for(self, key: str, timeout: float = 20.0) -> str:
        """The first message with the line `key` (READY=1, STOPPING=1), once it came."""

        def found() -> str | None:
            return next((text for _, text in self.messages if key in text.split("\n")), None)

        with self._changed:
            assert self._changed.wait_for(found, timeout), f"no {key}: {self.messages}"
            return found()

    def pings(self) -> list[float]:
        return [at for at, text in self.messages if "WATCHDOG=1" in text.split("\n")]

    def close(self) -> None:
        self._closed = True
        self._thread.join()
        self.sock.close()


@pytest.fixture
def notify(tmp_path, monkeypatch):
    receiver = NotifySocket(str(tmp_path / "notify"))
    monkeypatch.setenv("NOTIFY_SOCKET", receiver.path)
    monkeypatch.setenv("WATCHDOG_USEC", str(PING_USEC))
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    yield receiver
    receiver.close()


def line_gateway(tmp_path, device_path: str, broker_port: int) -> str:
    sources = [line_source("dev", device_path)]
    return gateway_toml("sd", free_port(), broker_port, sources, "none").replace(
        'data_dir = "./var"', f'data_dir = "{tmp_path / "var"}"'
    )


def test_ready_after_the_sources_open_then_pings_that_a_blocked_loop_stops(
    notify, broker, tmp_path
):
    device = VirtualSerialDevice(str(tmp_path / "tty-dev"))
    config = loads(line_gateway(tmp_path, device.path, broker.port))

    async def scenario() -> tuple[str, float, float]:
        gateway = Gateway(config)
        stop = asyncio.Event()
        task = asyncio.create_task(gateway.run(stop))
        ready = await asyncio.to_thread(notify.wait_for, "READY=1")
        before = len(notify.pings())
        await eventually(lambda: len(notify.pings()) >= before + 5, what="watchdog pings")
        blocked_at = time.monotonic()
        time.sleep(BLOCK)  # the point: the event loop stalls
        unblocked_at = time.monotonic()
        after = len(notify.pings())
        await eventually(lambda: len(notify.pings()) >= after + 3, what="pings again")
        stop.set()
        await task
        return ready, blocked_at, unblocked_at

    try:
        ready, blocked_at, unblocked_at = asyncio.run(scenario())
        notify.wait_for("STOPPING=1")
    finally:
        device.close()
    # READY says what was up when it was sent: the source had opened its device.
    assert "STATUS=1/1 sources connected" in ready, ready
    pings = notify.pings()
    # The thread receiving them may see a ping sent just before the stall a moment late.
    during = [at for at in pings if blocked_at + 0.05 < at < unblocked_at]
    assert during == [], f"{len(during)} pings while the loop was blocked"
    gaps = [later - earlier for earlier, later in zip(pings, pings[1:])]
    assert max(gaps) >= BLOCK * 0.9, gaps
    steady = sorted(gaps)[len(gaps) // 2]
    assert 0.05 <= steady <= 0.2, f"median gap {steady:.3f}s, expected about 0.1s"
    assert all("STATUS=" in text for _, text in notify.messages), notify.messages


def test_gateway_run_notifies_ready_and_stopping(notify, broker, tmp_path):
    device = VirtualSerialDevice(str(tmp_path / "tty-dev"))
    path = tmp_path / "gateway.toml"
    path.write_text(line_gateway(tmp_path, device.path, broker.port))
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "run", "-c", str(path)],
        env={**os.environ, "PYTHONPATH": REPO_ROOT},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        ready = notify.wait_for("READY=1")
        wait_until(lambda: len(notify.pings()) >= 3, 10, "watchdog pings")
        process.send_signal(signal.SIGTERM)
        assert process.wait(20) == 0, process.stderr.read().decode()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        device.close()
    assert "1/1 sources connected" in ready
    stopping = notify.wait_for("STOPPING=1")
    assert "STATUS=stopping" in stopping


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "nonsense"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "4242"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),  # meant for another
    ],
)
def test_watchdog_interval_is_half_of_watchdog_usec_for_this_process(environ, expected):
    assert watchdog_interval(environ, pid=4242) == expected


# -- journald ----------------------------------------------------------------------------------


def parse_journal(data: bytes) -> dict[str, str]:
    """journald's native protocol, read back (NAME=value lines; NAME, length, value)."""
    fields = {}
    while data:
        line, newline, rest = data.partition(b"\n")
        if b"=" in line:
            name, _, value = line.partition(b"=")
            fields[name.decode()] = value.decode()
            data = rest
            continue
        (length,) = struct.unpack("<Q", rest[:8])
        fields[line.decode()] = rest[8 : 8 + length].decode()
        data = rest[8 + length + 1 :]
    return fields


def test_journal_handler_sends_fields_and_multiline_messages(tmp_path):
    journal = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    journal.bind(str(tmp_path / "journal"))
    journal.settimeout(5)
    handler = JournalHandler(str(tmp_path / "journal"))
    logger = logging.getLogger("gateway.sinks.mqtt.test")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("sink %s: lost the broker", "mqtt")
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("it failed")
        first, second = parse_journal(journal.recv(65536)), parse_journal(journal.recv(65536))
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
        handler.close()
        journal.close()
    assert first["MESSAGE"] == "sink mqtt: lost the broker"
    assert first["PRIORITY"] == "4"
    assert first["LOGGER"] == "gateway.sinks.mqtt.test"
    assert first["SYSLOG_IDENTIFIER"] == "gateway"
    assert first["CODE_FUNC"] == "test_journal_handler_sends_fields_and_multiline_messages"
    assert second["PRIORITY"] == "3"
    assert second["MESSAGE"].startswith("it failed\nTraceback")
    assert "ValueError: boom" in second["MESSAGE"]


def test_the_journal_is_used_only_when_stderr_is_the_stream_systemd_named(tmp_path):
    path = tmp_path / "journal"
    journal = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    journal.bind(str(path))
    with open(tmp_path / "stream", "w") as stream, open(tmp_path / "other", "w") as other:
        status = os.fstat(stream.fileno())
        environ = {"JOURNAL_STREAM": f"{status.st_dev}:{status.st_ino}"}
        assert stderr_is_journal(environ, stream.fileno())
        assert not stderr_is_journal(environ, other.fileno())  # redirected: not ours
        assert not stderr_is_journal({}, stream.fileno())
        assert not stderr_is_journal({"JOURNAL_STREAM": "x"}, stream.fileno())
        handler = journal_handler(environ, stream.fileno(), str(path))
        assert isinstance(handler, JournalHandler)
        handler.close()
        assert journal_handler(environ, stream.fileno(), str(tmp_path / "none")) is None
    journal.close()


# -- gateway install-service --------------------------------------------------------------------


def install(tmp_path, *arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "install-service", *arguments],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": REPO_ROOT},
        capture_output=True,
        text=True,
    )


def minimal_config(tmp_path) -> str:
    path = tmp_path / "gateway.toml"
    path.write_text('[gateway]\nid = "pi"\ndata_dir = "./var"\n')
    return str(path)


def test_install_service_writes_a_unit_that_systemd_analyze_verifies(tmp_path):
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing: `make system-deps` installs systemd"
    unit = tmp_path / "gateway.service"
    user = getpass.getuser()
    result = install(tmp_path, "-c", minimal_config(tmp_path), "--user", user, "--output", unit)
    assert result.returncode == 0, result.stderr
    text = unit.read_text()
    for line in (
        "Type=notify",
        "WatchdogSec=30s",
        "Restart=on-failure",
        "SupplementaryGroups=dialout",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        f"ReadWritePaths={tmp_path / 'var'}",
        f"User={user}",
        f"ExecStart={sys.executable} -m gateway run -c {tmp_path / 'gateway.toml'}",
    ):
        assert line in text.splitlines(), line
    assert (tmp_path / "var").is_dir()  # the one writable place exists before the start
    verified = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True)
    assert verified.returncode == 0, verified.stderr
    assert str(unit) not in verified.stderr, verified.stderr  # not even a warning


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--user", "no-such-user-here"], "--user: no user named 'no-such-user-here'"),
        (["-c", "missing.toml"], "missing.toml"),
    ],
)
def test_install_service_refuses_bad_input_with_exit_2(tmp_path, arguments, message):
    config = ["-c", minimal_config(tmp_path)] if "-c" not in arguments else []
    result = install(tmp_path, *config, *arguments, "--output", str(tmp_path / "x.service"))
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert not (tmp_path / "x.service").exists()
