"""A board without a real-time clock: wall-clock jumps, restarts across them, sync status.

The wall clock, the monotonic clock and the boot id are injected, so a jump of days costs
no time; the buffer is the real SQLite one.
"""

from __future__ import annotations

import logging

import pytest

from gateway.clock import ClockWatch, StoreTime, kernel_clock_synced
from gateway.store.buffer import BufferDatabase

DAY = 86400.0
MAX_AGE = 7 * DAY
ROUTE = {"topic": "t"}


class Clocks:
    """A settable wall clock, a monotonic clock that only the test advances, a boot id."""

    def __init__(self, wall: float = 1_764_000_000.0):
        self.now_wall = wall
        self.now_mono = 1000.0
        self.boot_id = "boot-1"

    def wall(self) -> float:
        return self.now_wall

    def monotonic(self) -> float:
        return self.now_mono

    def boot(self) -> str:
        return self.boot_id

    def elapse(self, seconds: float) -> None:
        """Time passes: both clocks move."""
        self.now_wall += seconds
        self.now_mono += seconds

    def jump(self, seconds: float) -> None:
        """NTP (or a person) sets the wall clock; no time passes."""
        self.now_wall += seconds

    def reboot(self) -> None:
        self.boot_id += "+"
        self.now_mono = 5.0

    def store_time(self) -> StoreTime:
        return StoreTime(wall=self.wall, monotonic=self.monotonic, boot=self.boot)


def reading(seq: int) -> dict:
    return {"device": "d", "stream": "s", "seq": seq, "ts": 0.0, "data": {"n": seq}}


def open_buffer(tmp_path, clocks: Clocks):
    db = BufferDatabase(str(tmp_path / "buffer.db"), fsync="off", clock=clocks.store_time())
    return db, db.buffer("mqtt", max_age=MAX_AGE)


@pytest.mark.parametrize("jump", [MAX_AGE + DAY, -3600.0], ids=["forward 8d", "back 1h"])
def test_a_wall_clock_jump_neither_expires_rows_early_nor_keeps_them_late(tmp_path, jump):
    clocks = Clocks()
    db, buffer = open_buffer(tmp_path, clocks)
    buffer.append([(reading(seq), ROUTE) for seq in range(100)])
    clocks.elapse(60)
    clocks.jump(jump)
    assert buffer.expire() == 0
    assert buffer.oldest_age() == pytest.approx(60.0)
    clocks.elapse(MAX_AGE - 60)  # exactly max_age since they were stored: kept
    assert buffer.expire() == 0 and buffer.depth == 100
    clocks.elapse(1)
    assert buffer.expire() == 100  # and not an hour later after the jump back
    assert buffer.drops["max_age"] == 100
    db.close()


@pytest.mark.parametrize(
    ("between", "age"),
    [
        # Restarted on the same boot after NTP set the clock 8 days on: the monotonic clock
        # says 30 s went by, and it is right.
        (lambda c: (c.elapse(30), c.jump(MAX_AGE + DAY)), 90.0),
        # ... or set it an hour back: still 30 s.
        (lambda c: (c.elapse(30), c.jump(-3600)), 90.0),
        # Rebooted after 2 hours off with a correct clock: the wall clock says how long.
        (lambda c: (c.elapse(7200), c.reboot()), 7260.0),
        # Rebooted with the clock set back (fake-hwclock behind): no time counted, no loss.
        (lambda c: (c.reboot(), c.jump(-DAY)), 60.0),
    ],
    ids=["same boot, jumped forward", "same boot, jumped back", "reboot", "reboot, clock back"],
)
def test_ages_continue_across_a_restart_whatever_the_wall_clock_did(tmp_path, between, age):
    clocks = Clocks()
    db, buffer = open_buffer(tmp_path, clocks)
    buffer.append([(reading(seq), ROUTE) for seq in range(10)])
    clocks.elapse(60)
    db.close()  # saves where the store clock is
    between(clocks)
    db, buffer = open_buffer(tmp_path, clocks)
    assert buffer.depth == 10
    assert buffer.oldest_age() == pytest.approx(age)
    assert buffer.expire() == 0  # nothing lost to the jump
    clocks.elapse(MAX_AGE - age + 1)
    assert buffer.expire() == 10  # expired when their time is up, not before, not after
    db.close()


def test_a_database_without_a_saved_clock_reads_its_rows_as_wall_times(tmp_path):
    """A data directory from before the store clock: its rows hold Unix times."""
    clocks = Clocks()
    db = BufferDatabase(str(tmp_path / "buffer.db"), fsync="off", clock=clocks.wall)
    db.buffer("mqtt", max_age=MAX_AGE).append([(reading(1), ROUTE)])
    db.close()
    clocks.elapse(120)
    db, buffer = open_buffer(tmp_path, clocks)
    assert buffer.oldest_age() == pytest.approx(120.0)
    db.close()


def test_a_jump_is_logged_once_with_its_size_and_sync_status_is_followed(caplog):
    clocks = Clocks()
    status = {"synced": False}
    with caplog.at_level(logging.INFO, logger="gateway.clock"):
        watch = ClockWatch(clocks.wall, clocks.monotonic, lambda: status["synced"])
        assert watch.unsynced
        clocks.elapse(1)
        watch.check()
        clocks.jump(3 * DAY + 3600)
        watch.check()
        clocks.elapse(1)
        watch.check()  # no new jump: nothing more said
        status["synced"] = True
        watch.check()
        assert not watch.unsynced
        status["synced"] = False
        watch.check()
        assert watch.unsynced
    jumps = [r.getMessage() for r in caplog.records if "jumped" in r.getMessage()]
    assert jumps == [
        "the wall clock jumped forward by 3d 1h 0.0s; buffer ages and timers are unaffected"
    ]
    assert watch.jumps == 1 and watch.last_jump == pytest.approx(3 * DAY + 3600)
    said = [r.getMessage() for r in caplog.records]
    assert "the system clock is synchronised" in said
    assert "the system clock is not synchronised" in said


def test_a_jump_back_is_logged_as_such(caplog):
    clocks = Clocks()
    watch = ClockWatch(clocks.wall, clocks.monotonic, lambda: None)
    clocks.jump(-3600)
    with caplog.at_level(logging.WARNING, logger="gateway.clock"):
        watch.check()
    assert "jumped back by 1h 0.0s" in caplog.text
    assert watch.synced is None and not watch.unsynced  # cannot tell: no flag


def test_the_kernel_is_asked_for_its_sync_status():
    # Linux answers adjtimex(2) without privileges: synchronised or not, never "unknown".
    assert kernel_clock_synced() in (True, False)
