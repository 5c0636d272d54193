"""The durable buffer: SQLite rows per sink, and the memory / spill / write-ahead queues."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import sqlite3

import pytest

from gateway.store.buffer import (
    BufferDatabase,
    StoreLocked,
    decode_reading,
    encode_reading,
)
from gateway.store.queues import (
    BufferStore,
    BufferWriter,
    DiskQueue,
    MemoryQueue,
    SpillQueue,
    strongest,
)

ROUTE = {"topic": "t/{device}"}


def reading(seq: int, pad: int = 0) -> dict:
    return {
        "gateway": "g",
        "device": "d",
        "stream": "s",
        "seq": seq,
        "ts": 1.5,
        "data": {"p": "x" * pad},
    }


def seqs(items) -> list[int]:
    return [item[0]["seq"] for item in items]


class Clock:
    def __init__(self, now: float = 1_764_236_400.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def db(tmp_path):
    database = BufferDatabase(str(tmp_path / "buffer.db"))
    yield database
    database.close()


# -- encoding -----------------------------------------------------------------------------------


def test_readings_come_back_exactly_including_what_json_cannot_carry():
    ordinary = {
        "seq": 1,
        "ts": 1764236400.123456,
        "data": {"t": 21.5, "name": "Zürich", "ok": True},
    }
    huge = {"seq": 2, "data": {"count": 2**70}}  # beyond 64 bits: the json fallback keeps it
    raw = {"seq": 3, "data": {"blob": b"\x00\x01"}}  # bytes: the MessagePack fallback
    for value in (ordinary, huge, raw):
        assert decode_reading(encode_reading(value)) == value
    assert encode_reading(ordinary).startswith(b"{")
    assert encode_reading(huge).startswith(b"J") and encode_reading(raw).startswith(b"M")


# -- one sink's rows ------------------------------------------------------------------------------


def test_rows_leave_in_order_only_when_acked_and_a_failure_puts_them_back_in_front(db):
    buffer = db.buffer("mqtt")
    buffer.append([(reading(i), ROUTE) for i in range(10)])
    db.commit()
    first = buffer.take(4)
    assert [item[0]["seq"] for _id, item in first] == [0, 1, 2, 3]
    assert seqs(item for _id, item in buffer.take(3)) == [4, 5, 6]  # continues after in flight
    assert buffer.fail() == 7
    assert seqs(item for _id, item in buffer.take(5)) == [0, 1, 2, 3, 4]
    assert buffer.ack() == 5
    assert buffer.depth == 5 and seqs(item for _id, item in buffer.peek(10)) == [5, 6, 7, 8, 9]


def test_only_committed_rows_are_handed_out(db):
    buffer = db.buffer("mqtt")
    buffer.append([(reading(1), ROUTE)])
    assert buffer.take(10) == []
    db.commit()
    buffer.append([(reading(2), ROUTE)])
    assert seqs(item for _id, item in buffer.take(10)) == [1]
    assert buffer.peek(10, committed_only=False)[0][1][0]["seq"] == 2


def test_routes_are_stored_once_and_shared_by_their_rows(db, tmp_path):
    buffer = db.buffer("mqtt")
    other = {"topic": "other", "qos": 0}
    buffer.append([(reading(i), ROUTE if i % 2 else other) for i in range(4)])
    db.close()
    reopened = BufferDatabase(str(tmp_path / "buffer.db"))
    try:
        rows = reopened.buffer("mqtt").peek(4)
        routes = [item[1] for _id, item in rows]
        assert routes == [other, ROUTE, other, ROUTE]
        assert routes[0] is routes[2] and routes[1] is routes[3]
    finally:
        reopened.close()


def test_drop_oldest_evicts_the_oldest_rows_not_in_flight_and_counts_them(db):
    size = len(encode_reading(reading(0)))
    buffer = db.buffer("mqtt", max_bytes=size * 5)
    buffer.append([(reading(i), ROUTE) for i in range(5)])
    db.commit()
    buffer.take(2)  # 0 and 1 are being sent: they must survive
    buffer.append([(reading(i), ROUTE) for i in range(5, 8)])
    assert buffer.drops["max_bytes"] == 3 and buffer.bytes == size * 5
    assert seqs(item for _id, item in buffer.peek(10, committed_only=False)) == [5, 6, 7]
    buffer.ack()
    assert buffer.depth == 3


def test_drop_newest_and_block_refuse_what_does_not_fit_and_count_by_reason(tmp_path):
    size = len(encode_reading(reading(0)))
    for overflow, reason in (("drop_newest", "max_bytes"), ("block", "blocked_overflow")):
        db = BufferDatabase(str(tmp_path / f"{overflow}.db"))
        buffer = db.buffer("s", max_bytes=size * 3, overflow=overflow)
        assert buffer.append([(reading(i), ROUTE) for i in range(5)]) == 3
        assert buffer.drops[reason] == 2
        assert seqs(item for _id, item in buffer.peek(10, committed_only=False)) == [0, 1, 2]
        db.close()


def test_rows_older_than_max_age_expire_oldest_first(tmp_path):
    clock = Clock()
    db = BufferDatabase(str(tmp_path / "buffer.db"), clock=clock)
    buffer = db.buffer("s", max_age=60.0)
    buffer.append([(reading(1), ROUTE), (reading(2), ROUTE)])
    clock.now += 30
    buffer.append([(reading(3), ROUTE)])
    clock.now += 30
    assert buffer.expire() == 0  # exactly max_age old: kept
    assert buffer.oldest_age() == 60.0
    clock.now += 0.001
    assert buffer.expire() == 2 and buffer.drops["max_age"] == 2
    assert seqs(item for _id, item in buffer.peek(5, committed_only=False)) == [3]
    db.close()


def test_rows_counters_and_ids_survive_a_restart_and_ids_are_never_reused(db, tmp_path):
    buffer = db.buffer("s", max_bytes=10**6, overflow="drop_newest")
    buffer.append([(reading(i), ROUTE) for i in range(3)])
    buffer.count_drop("max_bytes", 7)
    db.close()
    reopened = BufferDatabase(str(tmp_path / "buffer.db"))
    buffer = reopened.buffer("s")
    assert buffer.depth == 3 and buffer.drops["max_bytes"] == 7
    reopened.commit()
    taken = buffer.take(3)
    assert buffer.purge() == 3 and buffer.drops["purged"] == 3
    buffer.append([(reading(10), ROUTE)])
    assert buffer.ack(row_id for row_id, _item in taken) == 0  # a late ack cannot hit the new row
    assert buffer.depth == 1
    reopened.close()


def test_a_second_process_on_the_same_database_is_refused(tmp_path):
    path = str(tmp_path / "buffer.db")
    first = BufferDatabase(path)
    try:
        with pytest.raises(
            StoreLocked, match=f"in use by another gateway process \\(pid {os.getpid()}\\)"
        ):
            BufferDatabase(path)
    finally:
        first.close()
    BufferDatabase(path).close()  # free again once the first closed


def test_a_reader_sees_committed_rows_while_the_writer_has_the_database_open(db, tmp_path):
    buffer = db.buffer("s")
    buffer.append([(reading(i), ROUTE) for i in range(3)])
    db.commit()
    buffer.append([(reading(3), ROUTE)])  # not committed: invisible to others
    reader = BufferDatabase(str(tmp_path / "buffer.db"), readonly=True)
    try:
        assert reader.buffer("s").depth == 3
        assert seqs(item for _id, item in reader.buffer("s").peek(10)) == [0, 1, 2]
    finally:
        reader.close()


def test_a_damaged_database_is_moved_aside_and_a_new_one_started(tmp_path, caplog):
    path = tmp_path / "buffer.db"
    path.write_bytes(b"this is not an SQLite database" * 100)
    with caplog.at_level(logging.ERROR, logger="gateway.store"):
        db = BufferDatabase(str(path))
    try:
        assert db.buffer("s").depth == 0
        aside = [name for name in os.listdir(tmp_path) if name.startswith("buffer.db.corrupt-")]
        assert aside and "is damaged; moved aside" in caplog.text
    finally:
        db.close()


@pytest.mark.parametrize(("fsync", "level"), [("always", 2), ("batch", 1), ("off", 0)])
def test_fsync_setting_chooses_sqlite_synchronous(tmp_path, fsync, level):
    db = BufferDatabase(str(tmp_path / "buffer.db"), fsync=fsync)
    try:
        assert db.connection.execute("PRAGMA synchronous").fetchone()[0] == level
        assert db.connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        db.close()


# -- queues ---------------------------------------------------------------------------------------


async def deliver_all(queue, expected: int, batch: int = 100, timeout: float = 10.0) -> list:
    """Take and confirm until `expected` items came out (waiting for commits as needed)."""
    out: list = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while len(out) < expected:
        assert loop.time() < deadline, f"only {len(out)} of {expected} came out"
        if not queue.ready:
            await asyncio.sleep(0.005)  # the writer's commit callback flips `ready`
            continue
        items = await queue.take(batch)
        out.extend(items)
        queue.release(True)
    return out


def test_memory_queue_overflow_policies():
    oldest = MemoryQueue(3, "drop_oldest")
    for i in range(5):
        assert oldest.put((reading(i), ROUTE))
    assert seqs(oldest.take_now(10)) == [2, 3, 4] and oldest.drops["queue_full"] == 2
    newest = MemoryQueue(3, "drop_newest")
    assert [newest.put((reading(i), ROUTE)) for i in range(5)] == [True] * 3 + [False] * 2
    block = MemoryQueue(3, "block")
    for i in range(3):
        block.put((reading(i), ROUTE))
    assert not block.accepting and not block.put((reading(9), ROUTE))
    assert block.drops["blocked_overflow"] == 1
    block.take_now(1)
    block.release(True)
    assert block.accepting


def test_write_ahead_hands_a_reading_to_the_sink_only_once_committed(tmp_path):
    async def scenario():
        db = BufferDatabase(str(tmp_path / "buffer.db"))
        writer = BufferWriter(db, commit_interval=0.05)
        queue = DiskQueue(writer, db.buffer("s"))
        for i in range(5):
            assert queue.put((reading(i), ROUTE))
        assert not queue.ready  # nothing committed yet
        assert await queue.settled()
        await asyncio.sleep(0)  # the commit's report reaches the queue
        assert queue.ready
        out = await deliver_all(queue, 5)
        assert seqs(out) == [0, 1, 2, 3, 4]
        await writer.close()
        reopened = BufferDatabase(str(tmp_path / "buffer.db"))
        assert reopened.buffer("s").depth == 0  # the acks were committed at close
        reopened.close()

    asyncio.run(scenario())


def test_commits_are_batched_at_most_one_per_interval(tmp_path):
    async def scenario():
        db = BufferDatabase(str(tmp_path / "buffer.db"))
        writer = BufferWriter(db, commit_interval=0.05)
        queue = DiskQueue(writer, db.buffer("s"))
        loop = asyncio.get_running_loop()
        started = loop.time()
        for i in range(2000):
            queue.put((reading(i), ROUTE))
            if i % 20 == 0:
                await asyncio.sleep(0.003)  # readings arrive over ≈ 0.3 s
        await queue.settled()
        elapsed = loop.time() - started
        assert db.commits <= elapsed / 0.05 + 2, (db.commits, elapsed)
        assert db.commits >= 2
        await writer.close()

    asyncio.run(scenario())


def test_spill_keeps_memory_while_healthy_and_moves_everything_to_disk_on_failure(tmp_path):
    async def scenario():
        db = BufferDatabase(str(tmp_path / "buffer.db"))
        writer = BufferWriter(db)
        queue = SpillQueue(DiskQueue(writer, db.buffer("s")), capacity=1000)
        for i in range(3):
            queue.put((reading(i), ROUTE))
        assert queue.disk.depth == 0 and queue.memory.depth == 3
        batch = await queue.take(2)
        queue.release(False)  # the send failed...
        queue.sink_failed()  # ...and the sink is down: memory goes to disk, in order
        assert queue.memory.depth == 0 and seqs(batch) == [0, 1]
        for i in range(3, 6):
            queue.put((reading(i), ROUTE))  # behind what is on disk
        await writer.sync()
        assert db.buffer("s").depth == 6
        queue.sink_recovered()
        queue.put((reading(6), ROUTE))  # the disk part is not empty yet: still to disk
        out = await deliver_all(queue, 7, batch=3)
        assert seqs(out) == list(range(7))
        await asyncio.sleep(0.2)  # the last ack's report arrives: the disk part is empty
        queue.put((reading(7), ROUTE))
        assert queue.memory.depth == 1  # back to memory
        await writer.close()

    asyncio.run(scenario())


def test_spill_past_the_memory_threshold_keeps_order_with_a_batch_in_flight(tmp_path):
    async def scenario():
        db = BufferDatabase(str(tmp_path / "buffer.db"))
        writer = BufferWriter(db)
        queue = SpillQueue(DiskQueue(writer, db.buffer("s")), capacity=4)
        for i in range(4):
            queue.put((reading(i), ROUTE))
        batch = await queue.take(2)  # 0 and 1 are being sent
        for i in range(4, 8):
            queue.put((reading(i), ROUTE))  # memory is full: 2, 3 and then these spill
        queue.release(False)  # the batch in flight failed: it must still come first
        assert queue.memory.depth == 0 and queue.spilled == 6 and seqs(batch) == [0, 1]
        out = await deliver_all(queue, 8, batch=3)
        assert seqs(out) == list(range(8))
        await writer.close()

    asyncio.run(scenario())


def test_spill_writes_memory_to_disk_at_a_clean_stop(tmp_path):
    async def scenario():
        db = BufferDatabase(str(tmp_path / "buffer.db"))
        writer = BufferWriter(db)
        queue = SpillQueue(DiskQueue(writer, db.buffer("s")))
        for i in range(5):
            queue.put((reading(i), ROUTE))
        await queue.close()
        await writer.close()

    asyncio.run(scenario())
    db = BufferDatabase(str(tmp_path / "buffer.db"))
    assert seqs(item for _id, item in db.buffer("s").peek(10)) == [0, 1, 2, 3, 4]
    db.close()


def test_write_ahead_queue_bounds_by_bytes_with_drop_newest(tmp_path):
    size = len(encode_reading(reading(0)))

    async def scenario():
        db = BufferDatabase(str(tmp_path / "buffer.db"))
        writer = BufferWriter(db)
        queue = DiskQueue(writer, db.buffer("s", max_bytes=size * 3, overflow="drop_newest"))
        accepted = [queue.put((reading(i), ROUTE)) for i in range(5)]
        await writer.sync()
        await asyncio.sleep(0)
        stats = queue.stats()
        await writer.close()
        return accepted, stats

    accepted, stats = asyncio.run(scenario())
    assert accepted == [True, True, True, False, False]
    assert stats["depth"] == 3 and stats["bytes"] == size * 3
    assert stats["drops"] == {"max_bytes": 2}


# -- which queue each sink gets ---------------------------------------------------------------


class FakeSink:
    """What BufferStore.attach needs of a sink: name, options, capacity, use_queue()."""

    def __init__(self, name: str):
        self.name = name
        self.options = {
            "buffer": {"max_bytes": 1 << 20, "max_age": 3600.0, "overflow": "drop_oldest"}
        }
        self.capacity = 100
        self.queue = None

    def use_queue(self, queue) -> None:
        self.queue = queue


def test_each_sink_gets_its_strongest_policy_and_old_rows_are_replayed_first(tmp_path, caplog):
    assert strongest(["none", "write_ahead", "spill"]) == "write_ahead"
    assert strongest([]) == "none"
    earlier = BufferDatabase(str(tmp_path / "buffer.db"))
    earlier.buffer("old").append([(reading(1), ROUTE)])
    earlier.buffer("gone").append([(reading(2), ROUTE)])
    earlier.close()
    sinks = {name: FakeSink(name) for name in ("wal", "spill", "none", "old")}
    store = BufferStore(str(tmp_path))
    with caplog.at_level(logging.INFO, logger="gateway.store"):
        store.attach(sinks, {"wal": "write_ahead", "spill": "spill"})
    assert isinstance(sinks["wal"].queue, DiskQueue)
    assert isinstance(sinks["spill"].queue, SpillQueue)
    assert isinstance(sinks["none"].queue, MemoryQueue)
    assert isinstance(sinks["old"].queue, SpillQueue)  # policy none, but it has rows to send
    assert "readings for sink 'gone', which is not configured" in caplog.text
    assert store.health() == "ok"
    asyncio.run(store.close())


def test_no_database_is_created_when_no_sink_needs_one(tmp_path):
    store = BufferStore(str(tmp_path / "var"))
    sinks = {"udp": FakeSink("udp")}
    store.attach(sinks, {"udp": "none"})
    assert store.health() is None and not (tmp_path / "var").exists()


def test_an_unopenable_store_leaves_the_sinks_in_memory_and_says_why(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the data directory should be")
    store = BufferStore(str(blocker / "var"))
    sinks = {"mqtt": FakeSink("mqtt")}
    store.attach(sinks, {"mqtt": "write_ahead"})
    assert store.health().startswith("failed: cannot create the data directory")
    queue = sinks["mqtt"].queue
    assert isinstance(queue, MemoryQueue) and queue.policy == "write_ahead"
    assert queue.put((reading(1), ROUTE)) and queue.stats()["memory_fallback"] == 1
    assert not asyncio.run(queue.settled())  # not durable: a device must not be acknowledged


def test_the_database_files_are_plain_sqlite(tmp_path, db):
    db.buffer("s").append([(reading(1), ROUTE)])
    db.commit()
    copy = tmp_path / "copy.db"
    shutil.copyfile(tmp_path / "buffer.db", copy)
    for suffix in ("-wal",):
        if (tmp_path / ("buffer.db" + suffix)).exists():
            shutil.copyfile(tmp_path / ("buffer.db" + suffix), str(copy) + suffix)
    connection = sqlite3.connect(copy)
    assert connection.execute('SELECT count(*) FROM "q:s"').fetchone()[0] == 1
    connection.close()


# -- several takes outstanding: confirm a prefix, give back the rest ----------------------------

# memory: MemoryQueue; write_ahead: DiskQueue; spill: SpillQueue with everything in memory;
# spill_on_disk: SpillQueue whose sink failed first, so every reading waits on disk.
QUEUE_KINDS = ["memory", "write_ahead", "spill", "spill_on_disk"]
ON_DISK = {"memory": False, "write_ahead": True, "spill": False, "spill_on_disk": True}


class QueueRig:
    """One queue of a kind, its writer (None for memory) and a look at what is committed."""

    def __init__(self, kind: str, tmp_path):
        self.path = str(tmp_path / "buffer.db")
        self.writer: BufferWriter | None = None
        if kind == "memory":
            self.queue = MemoryQueue(1000)
            return
        db = BufferDatabase(self.path)
        self.writer = BufferWriter(db)
        disk = DiskQueue(self.writer, db.buffer("s"))
        if kind == "write_ahead":
            self.queue = disk
            return
        self.queue = SpillQueue(disk, capacity=1000)
        if kind == "spill_on_disk":
            self.queue.sink_failed()

    def put(self, numbers) -> None:
        for i in numbers:
            assert self.queue.put((reading(i), ROUTE))

    async def sync(self) -> None:
        """Everything put and confirmed is committed and reported back (memory: nothing to do)."""
        if self.writer is not None:
            assert await self.writer.sync()

    def stored(self) -> list[int]:
        """The seqs of the committed rows, oldest first, read by a second connection."""
        if self.writer is None:
            return []
        reader = BufferDatabase(self.path, readonly=True)
        try:
            return seqs(item for _id, item in reader.buffer("s").peek(1000))
        finally:
            reader.close()

    async def close(self) -> None:
        if self.writer is not None:
            await self.writer.close()


@pytest.mark.parametrize("kind", QUEUE_KINDS)
def test_confirming_a_prefix_then_giving_back_returns_exactly_the_undelivered_in_order(
    tmp_path, kind
):
    async def scenario():
        rig = QueueRig(kind, tmp_path)
        queue = rig.queue
        try:
            rig.put(range(10))
            await rig.sync()  # a disk row is handed out only once committed
            assert seqs(await queue.take(3)) == [0, 1, 2]
            assert seqs(await queue.take(4)) == [3, 4, 5, 6]  # a second take, none confirmed
            assert queue.out == 7
            queue.confirm(2)  # 0 and 1 are delivered
            assert queue.out == 5
            await rig.sync()
            assert queue.depth == 8
            assert rig.stored() == (list(range(2, 10)) if ON_DISK[kind] else [])
            # Out now: 2, 3, 4, 5, 6; positions 1 and 3 (3 and 5) were delivered too.
            queue.give_back(delivered={1, 3})
            assert queue.out == 0
            assert seqs(await queue.take(10)) == [2, 4, 6, 7, 8, 9]
            assert queue.out == 6
            await rig.sync()
            assert queue.depth == 6
            assert rig.stored() == ([2, 4, 6, 7, 8, 9] if ON_DISK[kind] else [])
            queue.release(True)
            await rig.sync()
            assert queue.depth == 0 and queue.out == 0 and not queue.ready
            assert rig.stored() == []
        finally:
            await rig.close()

    asyncio.run(scenario())


@pytest.mark.parametrize("kind", QUEUE_KINDS)
def test_release_false_gives_back_every_take_and_release_true_confirms_them_all(tmp_path, kind):
    async def scenario():
        rig = QueueRig(kind, tmp_path)
        queue = rig.queue
        try:
            rig.put(range(6))
            await rig.sync()
            assert seqs(await queue.take(2)) == [0, 1]
            assert seqs(await queue.take(2)) == [2, 3]
            queue.release(False)  # both takes come first again, in order
            assert queue.out == 0
            assert seqs(await queue.take(3)) == [0, 1, 2]
            queue.release(True)
            assert queue.out == 0
            await rig.sync()
            assert queue.depth == 3
            assert rig.stored() == ([3, 4, 5] if ON_DISK[kind] else [])
            assert seqs(await queue.take(10)) == [3, 4, 5]
            queue.release(True)
            await rig.sync()
            assert queue.depth == 0 and queue.out == 0 and not queue.ready
            assert rig.stored() == []
        finally:
            await rig.close()

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("delivered", "expected"),
    [((), [1, 2, 3, 4, 5]), ({1}, [1, 3, 4, 5])],
    ids=["give_back_all", "give_back_but_one"],
)
def test_a_spill_adopts_what_memory_handed_out_and_its_outcome_applies_to_the_disk_rows(
    tmp_path, delivered, expected
):
    async def scenario():
        rig = QueueRig("spill", tmp_path)
        queue = rig.queue
        try:
            rig.put(range(6))
            assert seqs(await queue.take(2)) == [0, 1]
            assert seqs(await queue.take(2)) == [2, 3]  # two takes out from memory
            queue.sink_failed()  # spill: the four out become disk rows in flight
            assert queue.memory.depth == 0 and queue.memory.out == 0
            assert queue.spilled == 6 and queue.out == 4 and queue.disk.out == 4
            await rig.sync()
            assert rig.stored() == [0, 1, 2, 3, 4, 5]
            assert len(queue.disk.buffer.in_flight) == 4  # the writer is idle after the sync
            queue.confirm(1)  # 0 is delivered
            queue.give_back(delivered)  # positions over what is still out: 1, 2, 3
            assert queue.out == 0
            out = await deliver_all(queue, len(expected), batch=2)
            assert seqs(out) == expected  # from disk, in order, none twice
            assert queue.memory.depth == 0  # nothing came back through memory
            await rig.sync()
            assert queue.depth == 0 and queue.out == 0 and await queue.take(10) == []
            assert rig.stored() == []
        finally:
            await rig.close()

    asyncio.run(scenario())


@pytest.mark.parametrize("wait", ["writer_sync", "queue_settled"])
def test_a_write_backlog_at_its_limit_stops_accepting_until_the_commit(tmp_path, wait):
    async def scenario():
        rig = QueueRig("write_ahead", tmp_path)
        queue = rig.queue
        queue.backlog_limit = 5
        try:
            rig.put(range(4))
            assert queue.accepting  # 4 waiting for the disk: below the limit
            rig.put([4])
            assert not queue.accepting  # 5 put, none committed
            if wait == "writer_sync":
                assert await rig.writer.sync()
            else:
                assert await queue.settled()
            assert queue.accepting
            rig.put(range(5, 9))
            assert queue.accepting  # a fresh backlog of 4
            rig.put([9])
            assert not queue.accepting
            await rig.sync()
            assert queue.accepting
            assert rig.stored() == list(range(10))
        finally:
            await rig.close()

    asyncio.run(scenario())


@pytest.mark.parametrize("kind", ["write_ahead", "spill_on_disk"])
def test_a_sync_right_after_a_confirm_commits_the_deletion(tmp_path, kind):
    # A confirm is posted to the writer from a call_soon (one deletion per loop step), so
    # BufferWriter.sync() must post pending confirmations itself; otherwise its commit would
    # miss a confirm made just before, and the delivered rows be sent again after a crash.
    async def scenario():
        rig = QueueRig(kind, tmp_path)
        queue = rig.queue
        try:
            rig.put(range(5))
            assert await rig.writer.sync()
            assert seqs(await queue.take(3)) == [0, 1, 2]
            queue.confirm(2)
            assert await rig.writer.sync()  # one sync, as "everything so far is committed"
            return rig.stored(), queue.depth
        finally:
            await rig.close()

    stored, depth = asyncio.run(scenario())
    assert stored == [2, 3, 4], "writer.sync() did not commit the deletion of confirmed rows"
    assert depth == 3
