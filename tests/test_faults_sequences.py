"""Sequence numbers across a full disk, SIGKILL and a damaged reservation file, in `gateway run`.

Each test runs the gateway as a child process whose data directory fills up or whose
reservation file is damaged between runs, and reads every `seq` it published from a real
UDP receiver: after a restart each (device, stream) must go on above every number seen
before it, or the gateway must refuse to start, naming the file.
"""

from __future__ import annotations

import collections
import json
import os
import signal
from typing import Any, Callable

import pytest

from gateway.sources.simulator import VirtualSerialDevice
from tests.support.broker import free_port
from tests.support.config import gateway_toml, line_source
from tests.support.e2e import PtyFlood, Receivers, free_udp_port
from tests.support.tmpfs import fill, remount, tmpfs

GATEWAY_ID = "seqfaults"
# Short retries, so the MQTT sink is seen disconnected soon after Mosquitto stops.
SINK_TUNING = (
    'breaker = { failures = 5, reset_after = "1s" }\nretry = { base = "0.1s", cap = "1s" }'
)


def lines(first: int, count: int) -> bytes:
    return b"".join(b'{"n":%d,"pad":"%s"}\n' % (n, b"x" * 60) for n in range(first, first + count))


class Rig:
    """One pty device and the gateway config around it; phases run one gateway each."""

    def __init__(self, tmp_path, gateway_process, broker):
        self.device = VirtualSerialDevice(str(tmp_path / "tty-seq"))  # stable across runs
        self.udp_port, self.api_port = free_udp_port(), free_port()
        sources = [line_source("dev-0", self.device.path)]
        self.config = gateway_toml(
            GATEWAY_ID, self.api_port, broker.port, sources, "spill", SINK_TUNING, self.udp_port
        )
        self.broker = broker
        self.gateway_process = gateway_process
        self.data_dir = tmp_path / "var"
        self.sent = 0

    def run(
        self, count: int, end: Callable[[Any], None], broker_down: bool = False
    ) -> tuple[list[tuple], dict]:
        """Start a gateway, write `count` lines, wait until UDP sent them all, then end(it);
        returns what the UDP receiver got and the health seen once everything was sent.
        `broker_down`: stop Mosquitto first, so the MQTT sink spills every reading to disk."""
        receivers = Receivers(udp_port=self.udp_port, expected=count)
        receivers.start()
        if self.broker.process is None:
            self.broker.start()
        gateway = self.gateway_process(self.config)
        gateway.start(self.api_port)
        if broker_down:
            self.broker.stop()
            gateway.wait_for(lambda stats: not stats["sinks"]["mqtt"]["connected"])
        flood = PtyFlood(self.device, lines(self.sent, count)).start()
        self.sent += count
        gateway.wait_for(lambda stats: stats["totals"]["delivered"]["udp"] >= count, 120)
        flood.join(10)
        health = gateway.health()
        end(gateway)
        return receivers.finish(30)["udp"], health

    def close(self) -> None:
        self.device.close()


def kill(gateway) -> None:
    gateway.process.send_signal(signal.SIGKILL)
    assert gateway.process.wait(10) == -signal.SIGKILL
    gateway._log.close()


def stop(gateway) -> None:
    assert gateway.stop() == 0, gateway.log()


def highest(readings: list[tuple]) -> dict[tuple[str, str], int]:
    top: dict[tuple[str, str], int] = collections.defaultdict(lambda: -1)
    for device, stream, seq, *_rest in readings:
        top[device, stream] = max(top[device, stream], seq)
    return dict(top)


def lowest(readings: list[tuple]) -> dict[tuple[str, str], int]:
    low: dict[tuple[str, str], int] = {}
    for device, stream, seq, *_rest in readings:
        low[device, stream] = min(low.get((device, stream), seq), seq)
    return low


def assert_above(before: list[tuple], after: list[tuple]) -> None:
    """Every seq after the restart is above every seq before it, per device and stream."""
    top, low = highest(before), lowest(after)
    assert set(low) == set(top) == {("dev-0", "counter")}, (set(top), set(low))
    for key, first in low.items():
        assert first > top[key], f"{key}: {first} after the restart, {top[key]} before it"


@pytest.mark.timeout(300)
def test_a_full_disk_then_sigkill_never_repeats_a_number(broker, tmp_path, gateway_process):
    rig = Rig(tmp_path, gateway_process, broker)
    try:
        with tmpfs(rig.data_dir, "3m"):
            # The run: 40,000 readings; the disk is full after about half, and two
            # reservation renewals (every 10,000) happen after that.
            before, full = rig.run(40_000, kill, broker_down=True)
            remount(rig.data_dir, "size=64m")  # room again
            after, _health = rig.run(2_000, stop, broker_down=True)
    finally:
        rig.close()
    assert full["components"]["store"].startswith("failed:"), full["components"]
    assert full["status"] == "degraded" and full["components"]["sequences"] == "ok"
    sequences = full["stats"]["sequences"]
    assert sequences["writes"] >= 4 and sequences["write_failures"] == 0, sequences
    assert len({reading[2] for reading in before}) == 40_000  # UDP got every one
    assert_above(before, after)


@pytest.mark.timeout(300)
def test_a_full_disk_at_start_still_numbers_and_publishes(broker, tmp_path, gateway_process):
    """The reservation file is made at the first start; a later start on a full disk
    overwrites it in place, so numbering (and the live sinks) carry on."""
    rig = Rig(tmp_path, gateway_process, broker)
    try:
        with tmpfs(rig.data_dir, "3m"):
            before, _health = rig.run(1_000, stop)
            assert fill(rig.data_dir) > 0
            after, full = rig.run(1_000, kill, broker_down=True)
    finally:
        rig.close()
    assert full["components"]["store"].startswith("failed:"), full["components"]  # full
    assert full["components"]["sequences"] == "ok", full["components"]
    assert_above(before, after)


def zero(path: str) -> None:
    with open(path, "r+b") as file:
        file.write(b"\0" * os.path.getsize(path))


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    ("damage", "refused"),
    [
        (zero, True),
        (lambda path: os.truncate(path, 0), True),
        (lambda path: os.truncate(path, os.path.getsize(path) // 2), False),
    ],
    ids=["zeroed", "truncated-to-nothing", "truncated-to-half"],
)
def test_a_damaged_reservation_file_resumes_above_every_published_number_or_refuses(
    broker, tmp_path, gateway_process, damage, refused
):
    rig = Rig(tmp_path, gateway_process, broker)
    reservation = str(rig.data_dir / "sequences.reservation")
    configured = "./var/sequences.reservation"  # data_dir as the config names it
    try:
        before, _health = rig.run(3_000, kill)
        damage(reservation)
        if refused:
            gateway = gateway_process(rig.config)
            with pytest.raises(RuntimeError, match="exited with 1") as exited:
                gateway.start(rig.api_port)
            message = str(exited.value)
            assert f"sequence reservation file {configured} is unreadable" in message
            assert "will not guess" in message
            # What the message says to do: move the file away, give the first numbers.
            os.replace(reservation, reservation + ".damaged")
            floor = highest(before)["dev-0", "counter"] + 1
            (rig.data_dir / "sequences.json").write_text(json.dumps({"*": floor}))
        after, _health = rig.run(1_000, stop)
    finally:
        rig.close()
    assert_above(before, after)
