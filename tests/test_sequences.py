"""Sequence numbers: consecutive while running, never handed out twice, whatever the disk does."""

from __future__ import annotations

import json
import os
import random
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.store.buffer import StoreLocked
from gateway.store.reservations import DEFAULT_CAPACITY, peek, read_slots
from gateway.store.sequences import SequenceStateError, SequenceStore, SequenceUnavailable
from tests.support.faulty_disk import Crash, Disk
from tests.support.tmpfs import fill, tmpfs

BLOCK = 12  # renewed when 3 are left


def issue(store: SequenceStore, count: int, key=("a", "env")) -> list[int]:
    return [store.next(*key) for _ in range(count)]


def test_numbers_are_consecutive_per_device_and_stream(tmp_path):
    store = SequenceStore(str(tmp_path / "seq"), block=BLOCK)
    assert issue(store, 40) == list(range(40))
    assert issue(store, 3, ("b", "env")) == [0, 1, 2]
    assert issue(store, 2, ("a", "gps")) == [0, 1]


def test_clean_close_continues_without_a_gap(tmp_path):
    path = str(tmp_path / "seq")
    store = SequenceStore(path, block=BLOCK)
    issue(store, 13)
    store.close()
    assert SequenceStore(path, block=BLOCK).next("a", "env") == 13


def test_after_a_crash_numbering_resumes_above_every_number_within_a_block_and_a_quarter(
    tmp_path,
):
    path = str(tmp_path / "seq")
    store = SequenceStore(path, block=BLOCK)
    issued = issue(store, 17)
    store.abandon()  # no close(): the process died; the file holds only the reservation
    after_crash = SequenceStore(path, block=BLOCK).next("a", "env")
    assert max(issued) < after_crash <= max(issued) + BLOCK + BLOCK // 4


def test_a_reservation_is_written_once_per_block_ahead_of_use(tmp_path):
    path = str(tmp_path / "seq")
    store = SequenceStore(path, block=100)
    issue(store, 75)
    assert store.counters["writes"] == 1 and peek(path).values == {"a/env": 100}
    issue(store, 1)  # number 75: a quarter block left, the next block is reserved now
    assert store.counters["writes"] == 2 and peek(path).values == {"a/env": 200}


def test_a_full_disk_does_not_stop_reservations(tmp_path):
    """The file's blocks were written at start: renewals overwrite them in place."""
    data_dir = tmp_path / "small"
    with tmpfs(data_dir, "1m"):
        store = SequenceStore(str(data_dir / "seq"), block=BLOCK)
        issue(store, 1)
        assert fill(data_dir) > 0
        with pytest.raises(OSError, match="No space left"):
            (data_dir / "more").write_bytes(b"x")
        numbers = issue(store, 10 * BLOCK)
        assert store.health() == "ok" and store.counters["write_failures"] == 0
        store.abandon()
        assert SequenceStore(str(data_dir / "seq"), block=BLOCK).next("a", "env") > max(numbers)


def failing_store(tmp_path, seed: int = 1) -> tuple[Disk, SequenceStore]:
    disk = Disk(random.Random(seed))
    store = disk.store_type()(str(tmp_path / "seq"), block=BLOCK)
    store.retry_interval = 0  # retry at every chance: the test decides when the disk heals
    return disk, store


def test_a_failing_disk_stops_numbering_at_the_reservation_on_disk_then_recovers(tmp_path):
    disk, store = failing_store(tmp_path)
    assert issue(store, 5) == list(range(5)) and store.room() > 0
    disk.fail_rate = 1.0
    numbers = []
    with pytest.raises(SequenceUnavailable, match="a/env"):
        while True:
            numbers.append(store.next("a", "env"))
    assert numbers == list(range(5, BLOCK))  # the renewal at 9 failed; 12 is not reserved
    assert disk.durable_start(store.path).values == {"a/env": BLOCK}
    assert store.room() == 0
    assert store.health().startswith("failed: cannot write sequence reservations to ")
    assert store.stats()["unavailable"] == 1 and store.stats()["write_failures"] >= 2
    disk.fail_rate = 0.0
    assert store.room() > 0 and store.health() == "ok"
    assert store.next("a", "env") == BLOCK


def test_a_new_stream_while_the_disk_fails_is_refused_and_later_numbered(tmp_path):
    disk, store = failing_store(tmp_path)
    issue(store, 1)
    disk.fail_rate = 1.0
    with pytest.raises(SequenceUnavailable, match="b/env"):
        store.next("b", "env")
    disk.fail_rate = 0.0
    assert store.next("b", "env") == 0 and store.next("a", "env") == 1


def test_a_second_store_on_the_same_file_is_refused(tmp_path):
    path = str(tmp_path / "seq")
    first = SequenceStore(path, block=BLOCK)
    with pytest.raises(StoreLocked, match="in use by another gateway process"):
        SequenceStore(path, block=BLOCK)
    first.close()
    assert SequenceStore(path, block=BLOCK).next("a", "env") == 0


def test_many_streams_grow_the_file_and_all_survive_a_crash(tmp_path):
    path = str(tmp_path / "seq")
    store = SequenceStore(path, block=BLOCK)
    keys = [(f"device-{i:04}-with-a-long-name", "stream") for i in range(1200)]
    last = {key: store.next(*key) for key in keys}
    assert os.path.getsize(path) > 2 * DEFAULT_CAPACITY
    store.abandon()
    restarted = SequenceStore(path, block=BLOCK)
    assert all(restarted.next(*key) > last[key] for key in keys)


# -- a damaged file ------------------------------------------------------------------------


def crashed_store_file(data_dir, count: int = 30) -> tuple[str, int]:
    """The gateway's reservation file in `data_dir` after a crash, and the highest number."""
    store = SequenceStore.in_directory(str(data_dir))
    highest = max(issue(store, count))
    store.abandon()
    return store.path, highest


def zero(path: str, start: int = 0, end: int | None = None) -> None:
    end = os.path.getsize(path) if end is None else end
    with open(path, "r+b") as file:
        file.seek(start)
        file.write(b"\0" * (end - start))


def zero_slot(path: str, newest: bool) -> None:
    """Zero the slot holding the newest reservation (so only an older one is left), or the
    other one."""
    with open(path, "rb") as file:
        found, capacity = read_slots(file.read())
    ordered = sorted(found, key=lambda item: item[1].generation)
    index = ordered[-1 if newest else 0][0]
    zero(path, index * capacity, (index + 1) * capacity)


def overwrite(path: str) -> None:
    with open(path, "wb") as file:
        file.write(random.Random(8).randbytes(5000))


@pytest.mark.parametrize(
    "damage",
    [zero, lambda path: os.truncate(path, 0), lambda path: os.truncate(path, 20), overwrite],
    ids=["zeroed", "emptied", "truncated-into-the-header", "overwritten"],
)
def test_a_file_with_no_intact_slot_refuses_to_start_and_says_what_to_do(tmp_path, damage):
    path, _highest = crashed_store_file(tmp_path)
    damage(path)
    with pytest.raises(SequenceStateError) as refused:
        SequenceStore.in_directory(str(tmp_path))
    message = str(refused.value)
    assert f"sequence reservation file {path} is unreadable" in message
    assert "will not guess" in message and f"move {path} away" in message
    assert str(tmp_path / "sequences.json") in message


@pytest.mark.parametrize(
    "damage",
    [
        lambda path: os.truncate(path, os.path.getsize(path) // 2),
        lambda path: os.truncate(path, os.path.getsize(path) - 1),
        lambda path: zero_slot(path, newest=True),
        lambda path: zero_slot(path, newest=False),
    ],
    ids=["half-truncated", "last-byte-cut", "newest-slot-zeroed", "older-slot-zeroed"],
)
def test_a_damaged_file_with_an_intact_slot_resumes_above_every_number(tmp_path, damage):
    path, highest = crashed_store_file(tmp_path)
    damage(path)
    restarted = SequenceStore.in_directory(str(tmp_path))
    first = restarted.next("a", "env")
    assert first > highest
    restarted.abandon()
    assert os.path.getsize(path) == 2 * DEFAULT_CAPACITY  # written whole again
    assert SequenceStore.in_directory(str(tmp_path)).next("a", "env") > first


def test_after_a_refusal_the_operator_sets_the_numbers_and_numbering_resumes_there(tmp_path):
    store = SequenceStore.in_directory(str(tmp_path))
    issue(store, 30)
    store.abandon()
    zero(store.path)
    with pytest.raises(SequenceStateError):
        SequenceStore.in_directory(str(tmp_path))
    os.replace(store.path, store.path + ".damaged")
    (tmp_path / "sequences.json").write_text(json.dumps({"a/env": 5000, "*": 7000}))
    resumed = SequenceStore.in_directory(str(tmp_path))
    assert resumed.next("a", "env") == 5000 and resumed.next("new", "env") == 7000


# -- sequences.json, the format before the reservation file ----------------------------------


def test_sequences_json_is_imported_once_then_moved_aside(tmp_path):
    (tmp_path / "sequences.json").write_text(json.dumps({"a/env": 13}))
    store = SequenceStore.in_directory(str(tmp_path))
    assert store.next("a", "env") == 13 and store.next("b", "env") == 0
    assert not (tmp_path / "sequences.json").exists()
    assert (tmp_path / "sequences.json.imported").exists()
    store.abandon()
    assert SequenceStore.in_directory(str(tmp_path)).next("a", "env") > 13


def test_sequences_json_beside_the_reservation_file_only_raises_numbers(tmp_path):
    _path, highest = crashed_store_file(tmp_path)
    floors = {"a/env": 5, "b/env": 100, "*": 50}  # lower for a/env: ignored there
    (tmp_path / "sequences.json").write_text(json.dumps(floors))
    store = SequenceStore.in_directory(str(tmp_path))
    assert store.next("a", "env") > highest
    assert store.next("b", "env") == 100 and store.next("c", "env") == 50
    assert (tmp_path / "sequences.json.imported").exists()


def test_sequences_json_whose_last_write_failed_refuses_to_start(tmp_path):
    """The bug of issue 8 left sequences.json below numbers already published, and its
    failed write left sequences.json.tmp: the only trace, so it is not imported."""
    (tmp_path / "sequences.json").write_text(json.dumps({"a/env": 10000}))
    (tmp_path / "sequences.json.tmp").write_text("")
    with pytest.raises(SequenceStateError, match=r"sequences.json.tmp exists.*will not guess"):
        SequenceStore.in_directory(str(tmp_path))


def test_unreadable_sequences_json_refuses_to_start(tmp_path):
    (tmp_path / "sequences.json").write_text("{not json")
    with pytest.raises(SequenceStateError, match=r"sequences.json cannot be read"):
        SequenceStore.in_directory(str(tmp_path))


# -- random crashes and failures -------------------------------------------------------------

KEYS = [("a", "env"), ("a", "gps"), ("b", "env")]
OPERATIONS = st.lists(
    st.one_of(
        st.tuples(st.just("next"), st.integers(0, len(KEYS) - 1)),
        st.tuples(st.just("room"), st.just(0)),
        st.tuples(st.just("crash"), st.booleans()),  # True: a power cut, False: kill -9
        st.tuples(st.just("restart"), st.integers(1, 20)),  # clean close, then a new block
        st.tuples(st.just("disk"), st.integers(0, 2)),  # healthy, failing, crashing
    ),
    max_size=150,
)


class Lifetimes:
    """One store after another on the same file; every number handed out is checked."""

    def __init__(self, path: str, disk: Disk):
        self.path, self.disk = path, disk
        self.block = 4
        self.published: dict[tuple[str, str], int] = {}  # the highest number, all lifetimes
        self.this_run: dict[tuple[str, str], int] = {}
        self.store = self.start()

    def start(self) -> SequenceStore:
        self.this_run = {}
        while True:
            try:
                store = self.disk.store_type()(self.path, block=self.block)
            except Crash:
                self.disk.crashed(power_cut=self.disk.rng.random() < 0.5)
                continue
            store.retry_interval = 0
            return store

    def crash(self, power_cut: bool) -> None:
        self.disk.crashed(power_cut)
        self.store = self.start()

    def apply(self, operation: str, argument: int) -> None:
        try:
            if operation == "next":
                self.next(KEYS[argument])
            elif operation == "room":
                self.store.room()
            elif operation == "crash":
                self.crash(bool(argument))
            elif operation == "restart":
                self.store.close()
                self.block = argument
                self.store = self.start()
            else:
                self.disk.fail_rate, self.disk.crash_rate = [(0, 0), (0.5, 0), (0.2, 0.1)][argument]
        except Crash:
            self.crash(self.disk.rng.random() < 0.5)

    def next(self, key: tuple[str, str]) -> None:
        try:
            number = self.store.next(*key)
        except SequenceUnavailable:
            return
        assert number > self.published.get(key, -1), f"{key}: {number} handed out again"
        if key in self.this_run:
            assert number == self.this_run[key] + 1, f"{key}: not consecutive while running"
        durable = self.disk.durable_start(self.path)
        assert durable.values.get("/".join(key), durable.default) > number, "not reserved"
        self.published[key] = self.this_run[key] = number


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(operations=OPERATIONS, seed=st.integers(0, 2**32 - 1))
def test_random_crashes_and_disk_failures_never_reuse_a_number(operations, seed):
    with tempfile.TemporaryDirectory() as directory:
        disk = Disk(random.Random(seed))
        lifetimes = Lifetimes(os.path.join(directory, "seq"), disk)
        for operation, argument in operations:
            lifetimes.apply(operation, argument)
        disk.fail_rate = disk.crash_rate = 0.0
        lifetimes.crash(power_cut=True)  # and once more at the end, after the worst
        for key in KEYS:
            lifetimes.next(key)
        assert all(key in lifetimes.this_run for key in KEYS)  # numbering goes on
        disk.crashed(power_cut=False)
