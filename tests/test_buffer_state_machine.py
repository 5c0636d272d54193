"""The SQLite sink buffer against a plain list model: contents, order and drop counters agree.

Hypothesis drives one sink's buffer through appends, deliveries (take + ack), failed
deliveries (take + fail: the rows must come back first, in order), overflow under each
policy, expiry with an injected clock, purges, clean reopens, rolled-back transactions (what
a full or failing disk causes) and crashes. A crash is simulated the way kill -9 leaves
things: the database files are copied while a transaction is still open, and the copy is
opened instead; only what was committed may survive. A rollback inside the running process
must not hand out again what was already confirmed delivered.
"""

from __future__ import annotations

import copy
import os
import shutil
import tempfile

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from gateway.store.buffer import BufferDatabase, encode_reading

ROUTES = ({"topic": "a/{device}"}, {"topic": "b/{device}", "qos": 0})
MAX_AGE = 10.0
REASONS = ("max_bytes", "max_age", "blocked_overflow", "purged")


class Clock:
    def __init__(self) -> None:
        self.now = 1_764_236_400.0

    def __call__(self) -> float:
        return self.now


class Row:
    """The model's view of one stored reading."""

    def __init__(self, reading: dict, route: dict, enqueued: float):
        self.reading = reading
        self.route = route
        self.size = len(encode_reading(reading))
        self.enqueued = enqueued
        self.committed = False


class BufferMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.directory = tempfile.mkdtemp(prefix="buffer-sm-")
        self.clock = Clock()
        self.counter = 0

    @initialize(
        overflow=st.sampled_from(["drop_oldest", "drop_newest", "block"]),
        max_bytes=st.sampled_from([300, 900, 4000]),
    )
    def open_buffer(self, overflow: str, max_bytes: int) -> None:
        self.overflow = overflow
        self.max_bytes = max_bytes
        self.path = os.path.join(self.directory, "buffer.db")
        self._open()
        self.rows: list[Row] = []  # every stored row, oldest first; in flight = a prefix
        self.in_flight = 0
        self.drops = dict.fromkeys(REASONS, 0)
        self.committed = ([], dict(self.drops))  # what a crash leaves
        self.acked: list[Row] = []  # delivered since the last commit

    def _open(self) -> None:
        self.db = BufferDatabase(self.path, fsync="off", clock=self.clock)
        self.buffer = self.db.buffer("sink", self.max_bytes, MAX_AGE, self.overflow)

    def teardown(self) -> None:
        try:
            self.db.close()
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)

    # -- the model's rules, written from the documented behaviour ------------------------------
    def _total(self) -> int:
        return sum(row.size for row in self.rows)

    def _model_append(self, new: list[Row]) -> None:
        if self.overflow == "drop_oldest":
            for row in new:
                if row.size > self.max_bytes:
                    self.drops["max_bytes"] += 1
                else:
                    self.rows.append(row)
            # The oldest rows that are not being sent go first, then the oldest new ones.
            while self._total() > self.max_bytes and len(self.rows) > self.in_flight:
                del self.rows[self.in_flight]
                self.drops["max_bytes"] += 1
            return
        reason = "max_bytes" if self.overflow == "drop_newest" else "blocked_overflow"
        for row in new:
            if self._total() + row.size > self.max_bytes:
                self.drops[reason] += 1
            else:
                self.rows.append(row)

    # -- rules ------------------------------------------------------------------------------
    @rule(pads=st.lists(st.integers(0, 120), min_size=1, max_size=6), commit=st.booleans())
    def append(self, pads: list[int], commit: bool) -> None:
        items, new = [], []
        for pad in pads:
            self.counter += 1
            reading = {"device": "d", "seq": self.counter, "data": {"pad": "x" * pad}}
            route = ROUTES[self.counter % 2]
            items.append((reading, route))
            new.append(Row(reading, route, self.clock.now))
        kept = self.buffer.append(items)
        before = len(self.rows)
        self._model_append(new)
        if self.overflow != "drop_oldest":
            assert kept == len(self.rows) - before
        if commit:
            self.commit()

    @rule()
    def commit(self) -> None:
        self.db.commit()
        self._committed()

    def _committed(self) -> None:
        for row in self.rows:
            row.committed = True
        self.committed = (copy.copy(self.rows), dict(self.drops))
        self.acked = []

    @rule(count=st.integers(1, 8))
    def take(self, count: int) -> None:
        taken = self.buffer.take(count)
        waiting = self.rows[self.in_flight :]
        expected = []
        for row in waiting[:count]:
            if not row.committed:
                break  # only committed rows leave the buffer
            expected.append(row)
        assert [item for _row_id, item in taken] == [(r.reading, r.route) for r in expected]
        self.in_flight += len(expected)

    @rule(count=st.integers(1, 8))
    def take_and_deliver(self, count: int) -> None:
        self.take(count)
        self.deliver()

    @rule()
    def deliver(self) -> None:
        """The sink confirmed everything in flight."""
        assert self.buffer.ack() == self.in_flight
        self.acked.extend(self.rows[: self.in_flight])
        del self.rows[: self.in_flight]
        self.in_flight = 0

    @rule()
    def fail(self) -> None:
        """The sink failed: what was in flight must come first again."""
        assert self.buffer.fail() == self.in_flight
        self.in_flight = 0

    @rule(seconds=st.sampled_from([0.25, 0.5, 3.0, 9.5, 10.0, 10.5]))
    def time_passes_and_old_rows_expire(self, seconds: float) -> None:
        self.clock.now += seconds
        expired = self.buffer.expire()
        cutoff = self.clock.now - MAX_AGE
        count = 0
        while len(self.rows) > self.in_flight and self.rows[self.in_flight].enqueued < cutoff:
            del self.rows[self.in_flight]
            count += 1
        self.drops["max_age"] += count
        assert expired == count

    @rule()
    def transaction_fails(self) -> None:
        """A write failed (a full disk): everything since the last commit is undone, except
        what went out: rows up to the last one delivered or in flight are never sent (again);
        later rows dropped since the commit wait again. Drop counters never go back."""
        self.db.rollback()
        rows, _drops = self.committed
        in_flight = self.rows[: self.in_flight]
        marks = [row.reading["seq"] for row in self.acked + in_flight]
        boundary = max(marks, default=-1)
        kept = {id(row) for row in in_flight}
        self.rows = [row for row in rows if row.reading["seq"] > boundary or id(row) in kept]
        # Rows in flight were committed ones (only those are handed out): still in flight.

    @rule()
    def purge(self) -> None:
        assert self.buffer.purge() == len(self.rows)
        self.drops["purged"] += len(self.rows)
        self.rows = []
        self.in_flight = 0

    @rule()
    def close_and_reopen(self) -> None:
        self.db.close()  # a clean stop commits
        self._open()
        self.in_flight = 0  # nothing is in flight in a new process
        self._committed()

    @rule()
    def crash_and_restart(self) -> None:
        crashed = os.path.join(self.directory, "crashed")
        os.makedirs(crashed, exist_ok=True)
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(self.path + suffix):
                shutil.copyfile(self.path + suffix, os.path.join(crashed, "buffer.db" + suffix))
        self.db.connection.close()  # the open transaction dies with the "process"
        self.db._unlock()
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(self.path + suffix):
                os.remove(self.path + suffix)
            copied = os.path.join(crashed, "buffer.db" + suffix)
            if os.path.exists(copied):
                os.replace(copied, self.path + suffix)
        self._open()
        rows, drops = self.committed
        self.rows = list(rows)  # deliveries since the commit are sent again: at least once
        self.drops = dict(drops)
        self.in_flight = 0
        self._committed()

    # -- what must always hold ----------------------------------------------------------------
    @invariant()
    def contents_order_and_counters_agree(self) -> None:
        if not hasattr(self, "buffer"):
            return
        assert self.buffer.rows == len(self.rows)
        assert self.buffer.bytes == self._total()
        assert len(self.buffer.in_flight) == self.in_flight
        waiting = self.buffer.peek(len(self.rows) + 1)
        assert [item for _id, item in waiting] == [
            (row.reading, row.route) for row in self.rows[self.in_flight :]
        ]
        ids = [row_id for row_id, _item in waiting]
        assert ids == sorted(ids)
        assert {reason: self.buffer.drops.get(reason, 0) for reason in REASONS} == self.drops


# SM_EXAMPLES=1000 for a longer hunt; 100 keeps the suite at a few seconds.
BufferMachine.TestCase.settings = settings(
    max_examples=int(os.environ.get("SM_EXAMPLES", "100")),
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_buffer_matches_the_list_model = BufferMachine.TestCase
