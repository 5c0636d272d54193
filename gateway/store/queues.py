"""Per-sink queues behind one interface: in memory, spilling to disk, or written ahead to disk.

A sink's sender task uses a queue as: put() (never blocks), `ready`, `await take(n)` (again
before earlier takes are confirmed, if it likes: what it took is "out", in order),
confirm(count) for the oldest out, give_back(delivered) to return the rest, release(ok) for
one batch at a time, and the hints sink_failed()/sink_recovered(). `room` and `accepting`
are backpressure: how many readings it takes before it pushes back. The disk queues run the
SQLite buffer (gateway.store.buffer) on one writer thread per gateway (BufferWriter), so a
slow disk or an fsync never stalls the event loop, and commit at most once per interval.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import functools
import itertools
import logging
import os
import time
from typing import Any, Callable, Collection

from gateway.core.bounds import DEFAULT_QUEUE_SIZE
from gateway.store.buffer import (
    DATABASE_NAME,
    BufferDatabase,
    EncodeError,
    SinkBuffer,
    StoreError,
    StoreIncompatible,
    StoreLocked,
    encode_reading,
)

log = logging.getLogger("gateway.store")

POLICIES = ("none", "spill", "write_ahead")
UNBOUNDED = 1 << 30  # the room of a queue that never pushes back (it drops, counted)
STRENGTH = {policy: rank for rank, policy in enumerate(POLICIES)}
DEFAULT_COMMIT_INTERVAL = 0.05
CHECKPOINT_INTERVAL = 1.0  # fsync = "batch": the log is synced at most this long after a commit
MAINTENANCE_INTERVAL = 1.0  # expiry by max_age and store probes
# How often the store clock's position is saved (gateway.clock.StoreTime) while readings
# wait on disk: a recent point keeps a wall-clock jump during the run out of the ages a
# run after a reboot computes; an idle gateway writes nothing for it (and saves at a stop).
CLOCK_SAVE_INTERVAL = 60.0
PROBE_INTERVAL = 5.0  # how often a failed store is tried again
# Readings a disk queue holds in memory on their way to a commit. Beyond it the queue stops
# accepting: the sources pause (a line source stops reading its port, a COBS source
# withholds ACKs) until the disk catches up, so a disk slower than the devices never grows
# the process.
WRITE_BACKLOG = 10_000

Item = tuple  # (reading, route)


def strongest(policies) -> str:
    """The strongest buffering policy of several (write_ahead > spill > none)."""
    return max(policies, key=STRENGTH.__getitem__, default="none")


def _reading_age(item: Item, now: float) -> float:
    try:
        return max(0.0, now - float(item[0]["ts"]))
    except (KeyError, TypeError, ValueError):
        return 0.0


# -- the writer thread ------------------------------------------------------------------------


class _Operation:
    __slots__ = ("run", "done", "writes")

    def __init__(self, run: Callable[[BufferDatabase], Any], done, writes: bool):
        self.run = run
        self.done = done
        self.writes = writes


class BufferWriter:
    """Owns a BufferDatabase and runs every operation on it on one thread, in order.

    The event loop posts operations; results come back to the loop through callbacks.
    Writes gather in one transaction that is committed at most once per `commit_interval`
    (the first write after a quiet spell is committed at once). When a write fails (disk
    full, read-only, I/O error) the open transaction is rolled back, the store is marked
    failed, queues fall back to memory, and a small probe write is tried every few seconds
    until the disk takes writes again.
    """

    def __init__(self, db: BufferDatabase, commit_interval: float = DEFAULT_COMMIT_INTERVAL):
        self.db = db
        self.commit_interval = commit_interval
        self.maintenance_interval = MAINTENANCE_INTERVAL
        self.probe_interval = PROBE_INTERVAL
        self.healthy = True
        self.error: str | None = None
        self.commit_failures = 0
        self.queues: list[DiskQueue] = []
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="buffer")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._operations: list[_Operation] = []
        self._running = False
        self._dirty = False
        self._commit_handle: asyncio.TimerHandle | None = None
        self._last_commit = float("-inf")
        self._last_checkpoint = 0.0
        self._checkpointed_at = 0  # db.commits at the last checkpoint
        self._commit_posted = 0  # number of the last commit operation posted
        self._commit_done = 0  # number of the last commit operation finished
        self._waiters: list[tuple[int, asyncio.Future]] = []
        self._maintenance: asyncio.Task | None = None
        self._thread_failed = False  # read and written on the writer thread only
        self._closed = False

    # -- posting ---------------------------------------------------------------------------------
    def _bind(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
            self._maintenance = self._loop.create_task(self._maintain())
        return self._loop

    def post(self, run, done=None, writes: bool = True) -> None:
        """Run `run(db)` on the writer thread after everything posted before it.

        `done(result)` is then called on the event loop, with a StoreError as the result
        when the operation failed (or was skipped because the store had failed).
        """
        if self._closed:
            if done is not None:
                done(StoreError("the buffer store is closed"))
            return
        self._bind()
        self._operations.append(_Operation(run, done, writes))
        if writes:
            self._dirty = True
        self._kick()

    async def call(self, run, writes: bool = False) -> Any:
        """post() and wait for the result; a StoreError result is raised."""
        future = self._bind().create_future()

        def done(result: Any) -> None:
            if not future.done():  # the caller may have been cancelled meanwhile
                future.set_result(result)

        self.post(run, done, writes)
        result = await future
        if isinstance(result, StoreError):
            raise result
        return result

    def _kick(self) -> None:
        if not self._running and self._operations:
            operations, self._operations = self._operations, []
            self._running = True
            future = self._loop.run_in_executor(self._executor, self._execute, operations)
            future.add_done_callback(functools.partial(self._finished, operations))
        self._schedule_commit()

    def _execute(self, operations: list[_Operation]) -> list[Any]:
        """On the writer thread: run each operation; after a failed write skip the others."""
        results = []
        for operation in operations:
            if operation.writes and self._thread_failed:
                results.append(StoreError(self.error or "the buffer store failed"))
                continue
            try:
                results.append(operation.run(self.db))
            except StoreError as error:
                if operation.writes:
                    self._thread_failed = True
                results.append(error)
            except Exception as error:  # a bug must not kill the writer; report it as a failure
                log.exception("buffer writer: operation failed")
                if operation.writes:
                    self.db.rollback()  # memory and database agree again
                    self._thread_failed = True
                results.append(StoreError(f"internal error: {error}"))
        return results

    def _finished(self, operations: list[_Operation], future: asyncio.Future) -> None:
        self._running = False
        try:
            results = future.result()
        except BaseException as error:  # the executor is gone (interpreter exit)
            results = [StoreError(str(error) or type(error).__name__)] * len(operations)
        failure = None
        for operation, result in zip(operations, results):
            if isinstance(result, StoreError) and operation.writes and failure is None:
                failure = result
            if operation.done is not None:
                try:
                    operation.done(result)
                except Exception:
                    log.exception("buffer writer: result handler failed")
        if failure is not None:
            self._failed(str(failure))
        self._kick()

    # -- commits --------------------------------------------------------------------------------
    def _schedule_commit(self) -> None:
        if not self._dirty or self._commit_handle is not None or self._closed:
            return
        if not self.healthy:
            return
        loop = self._loop
        delay = max(0.0, self._last_commit + self.commit_interval - loop.time())
        self._commit_handle = loop.call_later(delay, self._post_commit)

    def _post_commit(self) -> None:
        self._commit_handle = None
        if not self._dirty:
            return
        self._dirty = False
        self._last_commit = self._loop.time()
        self._commit_posted += 1
        number = self._commit_posted
        done = functools.partial(self._committed, number)
        self._operations.append(_Operation(self._commit, done, True))
        self._kick()

    def _commit(self, db: BufferDatabase) -> dict[str, tuple]:
        db.commit()
        self._checkpoint(db)
        return {name: snapshot(buffer) for name, buffer in db.buffers.items()}

    def _checkpoint(self, db: BufferDatabase) -> None:
        """fsync = "batch": sync the log by a checkpoint, at most once a second, when
        something was committed since the last one (the maintenance tick catches the last)."""
        if db.fsync != "batch" or db.commits == self._checkpointed_at:
            return
        if time.monotonic() - self._last_checkpoint < CHECKPOINT_INTERVAL:
            return
        self._last_checkpoint = time.monotonic()
        self._checkpointed_at = db.commits
        db.checkpoint()

    def _committed(self, number: int, result: Any) -> None:
        ok = not isinstance(result, StoreError)
        if ok:
            for queue in self.queues:
                queue._on_commit(result.get(queue.name), number)
        else:
            self.commit_failures += 1
        self._commit_done = number
        still_waiting = []
        for target, future in self._waiters:
            if target <= number:
                if not future.done():
                    future.set_result(ok and self.healthy)
            else:
                still_waiting.append((target, future))
        self._waiters = still_waiting

    @property
    def next_commit(self) -> int:
        """The number of the next commit to be posted: it covers everything posted so far."""
        return self._commit_posted + 1

    async def committed(self) -> bool:
        """Wait for a commit covering everything posted so far; True if it succeeded."""
        if not self.healthy:
            return False
        self._bind()
        if self._dirty or self._running or self._operations:
            self._dirty = True
            self._schedule_commit()
            target = self._commit_posted + 1
        else:
            return True
        future = self._loop.create_future()
        self._waiters.append((target, future))
        return await future

    async def sync(self) -> bool:
        """Commit everything put so far now (ignoring the interval) and wait for it."""
        self._bind()
        for queue in self.queues:
            queue._post_pending()
            queue._post_confirms()
        self._dirty = True
        if self._commit_handle is not None:
            self._commit_handle.cancel()
            self._commit_handle = None
        target = self._commit_posted + 1
        future = self._loop.create_future()
        self._waiters.append((target, future))
        self._post_commit()
        return await future

    # -- failure and recovery -------------------------------------------------------------------
    def _failed(self, reason: str) -> None:
        for _target, future in self._waiters:
            if not future.done():
                future.set_result(False)
        self._waiters = []
        if self._commit_handle is not None:
            self._commit_handle.cancel()
            self._commit_handle = None
        self._dirty = False
        if self.healthy:
            log.error(
                "buffer store %s failed: %s; readings stay in memory until it takes writes "
                "again (retried every %gs)",
                self.db.path,
                reason,
                self.probe_interval,
            )
        self.healthy = False
        self.error = reason
        for queue in self.queues:
            queue._on_store_failed()

    def _probe(self, db: BufferDatabase) -> dict[str, tuple]:
        db.probe()
        self._thread_failed = False
        return {name: snapshot(buffer) for name, buffer in db.buffers.items()}

    def _probed(self, result: Any) -> None:
        if isinstance(result, StoreError):
            self.error = str(result)
            return
        log.warning("buffer store %s takes writes again", self.db.path)
        self.healthy = True
        self.error = None
        for queue in self.queues:
            queue._mirror(result.get(queue.name))

    async def _maintain(self) -> None:
        """Expire old rows, checkpoint in batch mode, probe a failed store, save the clock."""
        last_probe = last_save = self._loop.time()
        while not self._closed:
            await asyncio.sleep(self.maintenance_interval)
            if not self.healthy:
                if self._loop.time() - last_probe >= self.probe_interval:
                    last_probe = self._loop.time()
                    self._operations.append(_Operation(self._probe, self._probed, False))
                    self._kick()
                continue
            self.expire()
            if self.db.fsync == "batch":
                self.post(self._checkpoint, writes=False)
            stored = any(queue.stored_rows for queue in self.queues)
            if stored and self._loop.time() - last_save >= CLOCK_SAVE_INTERVAL:
                last_save = self._loop.time()
                self.post(lambda db: db.save_clock())

    def expire(self, now: float | None = None) -> None:
        """Post an expiry pass over every queue that holds rows."""
        for queue in self.queues:
            if queue.stored_rows:
                queue._expire(now)

    async def close(self) -> None:
        """Commit what is pending, stop the thread and close the database."""
        if self._closed:
            return
        if self._loop is None:  # never used: no thread to stop
            self._closed = True
            self._close_database()
            return
        for queue in self.queues:
            queue._post_pending()
            queue._post_confirms()
        if self.healthy:
            await self.sync()
        if self._maintenance is not None:
            self._maintenance.cancel()
        while self._running or self._operations:
            await self.call(lambda db: None)
        self._closed = True
        if self._commit_handle is not None:
            self._commit_handle.cancel()
        await self._loop.run_in_executor(self._executor, self._close_database)
        self._executor.shutdown(wait=True)

    def _close_database(self) -> None:
        try:
            self.db.close()
        except StoreError as error:
            log.error("buffer store %s: closing: %s", self.db.path, error)


def snapshot(buffer: SinkBuffer) -> tuple:
    """What the event loop mirrors of a buffer: (rows, bytes, ready, oldest, drops)."""
    ready = buffer.available > 0 and (
        buffer.db.connection.execute(
            f"SELECT 1 FROM {buffer.table} WHERE id > ? AND id <= ? LIMIT 1",
            (buffer._after_in_flight(), buffer.committed_id),
        ).fetchone()
        is not None
    )
    oldest = None
    if buffer.rows:
        row = buffer.db.connection.execute(
            f"SELECT enqueued FROM {buffer.table} ORDER BY id LIMIT 1"
        ).fetchone()
        oldest = row[0] if row else None
    return buffer.rows, buffer.bytes, ready, oldest, dict(buffer.drops)


# -- the queues ---------------------------------------------------------------------------------


class MemoryQueue:
    """Memory only (policy "none"): a bounded deque; what does not fit follows `overflow`.

    drop_oldest makes room by dropping the oldest waiting reading, drop_newest drops the
    new one, block refuses it (put() returns False and `accepting` turns False).
    """

    policy = "none"

    def __init__(
        self,
        capacity: int = DEFAULT_QUEUE_SIZE,
        overflow: str = "drop_oldest",
        notify=None,
        fallback_policy: str | None = None,
    ):
        self.capacity = max(1, int(capacity))
        self.overflow = overflow
        self.notify = notify or (lambda: None)
        self.drops: collections.Counter = collections.Counter()
        self.counters: collections.Counter = collections.Counter()
        # A disk policy without a store (it could not be opened): memory, counted as such.
        self.fallback_policy = fallback_policy
        if fallback_policy:
            self.policy = fallback_policy
        self._items: collections.deque = collections.deque()
        self._out: collections.deque = collections.deque()  # taken, not yet confirmed

    def put(self, item: Item) -> bool:
        items = self._items
        if len(items) >= self.capacity:
            if self.overflow == "drop_oldest":
                items.popleft()
                self.drops["queue_full"] += 1
            elif self.overflow == "drop_newest":
                self.drops["queue_full"] += 1
                return False
            else:
                self.drops["blocked_overflow"] += 1
                return False
        items.append(item)
        if self.fallback_policy:
            self.counters["memory_fallback"] += 1
        self.notify()
        return True

    @property
    def ready(self) -> bool:
        return bool(self._items)

    @property
    def accepting(self) -> bool:
        return self.room > 0

    @property
    def room(self) -> int:
        """Readings it takes for sure before it stops accepting (backpressure)."""
        if self.overflow != "block":
            return UNBOUNDED
        return max(0, self.capacity - len(self._items))

    @property
    def depth(self) -> int:
        return len(self._items) + len(self._out)

    @property
    def out(self) -> int:
        """Items taken by the sink and not yet confirmed or given back."""
        return len(self._out)

    def take_now(self, count: int) -> list[Item]:
        items = self._items
        popleft = items.popleft
        batch = [popleft() for _ in range(min(count, len(items)))]
        self._out.extend(batch)
        return batch

    async def take(self, count: int) -> list[Item]:
        return self.take_now(count)

    def confirm(self, count: int) -> None:
        out = self._out
        if count >= len(out):
            out.clear()
        elif count > 64:  # a batch's worth: one copy of the rest beats count poplefts
            self._out = collections.deque(itertools.islice(out, count, None))
        else:
            popleft = out.popleft
            for _ in range(count):
                popleft()

    def give_back(self, delivered: Collection[int] = ()) -> None:
        out, self._out = self._out, collections.deque()
        kept = [item for index, item in enumerate(out) if index not in delivered]
        if kept:
            self._items.extendleft(reversed(kept))
            self.notify()

    def release(self, delivered: bool) -> None:
        if delivered:
            self.confirm(len(self._out))
        else:
            self.give_back()

    def sink_failed(self) -> None:
        """Memory only: nothing to move anywhere."""

    def sink_recovered(self) -> None:
        """Memory only: nothing to do."""

    async def settled(self) -> bool:
        return self.fallback_policy != "write_ahead"

    async def close(self) -> None:
        """What is still in memory is lost with the process (policy "none")."""

    def oldest_age(self, now: float) -> float:
        if self._out:
            return _reading_age(self._out[0], now)
        return _reading_age(self._items[0], now) if self._items else 0.0

    def stats(self) -> dict[str, Any]:
        return {
            "policy": self.policy,
            "depth": self.depth,
            "memory": self.depth,
            "disk": 0,
            "bytes": 0,
            "oldest_age": round(self.oldest_age(time.time()), 3),
            "drops": dict(self.drops),
            **({"memory_fallback": self.counters["memory_fallback"]} if self.counters else {}),
        }


class DiskQueue:
    """Write-ahead (policy "write_ahead"): every reading is stored before the sink sends it.

    put() encodes the reading and posts it to the writer; the row is handed to the sink
    only once its transaction committed, and deleted once send() confirmed it. While the
    store has failed, readings wait in a bounded memory fallback behind the stored ones
    (counted as memory_fallback), so the order per sink holds.
    """

    policy = "write_ahead"

    def __init__(
        self,
        writer: BufferWriter,
        buffer: SinkBuffer,
        capacity: int = DEFAULT_QUEUE_SIZE,
        notify=None,
    ):
        self.writer = writer
        self.buffer = buffer
        self.name = buffer.sink
        self.capacity = max(1, int(capacity))
        self.overflow = buffer.overflow
        self.max_bytes = buffer.max_bytes
        self.notify = notify or (lambda: None)
        self.fallback = MemoryQueue(self.capacity, self.overflow)
        self.counters: collections.Counter = collections.Counter()
        # The loop's view of the table, from the writer's last report, plus what was posted
        # since but not reported yet.
        self._rows = buffer.rows
        self._bytes = buffer.bytes
        self._ready = buffer.available > 0
        self._oldest: float | None = None
        self._drops = dict(buffer.drops)
        self._unreported_rows = 0
        self._unreported_bytes = 0
        self._pending: list[tuple[bytes, dict]] = []  # encoded, not yet posted
        self._pending_items: list[Item] = []
        # Posted but not yet committed: (number of the commit that will cover them, items).
        self._uncommitted: collections.deque = collections.deque()
        self._backlog = 0  # readings put and not yet committed (pending, posted, uncommitted)
        self.backlog_limit = WRITE_BACKLOG
        self._post_scheduled = False
        self._appending = False  # an append of ours is on the writer: later puts gather
        # What the sink has taken and not yet confirmed, oldest first, as runs of
        # ["disk" | "fallback", count]: stored rows in flight come before the fallback's.
        self._out: collections.deque = collections.deque()
        self._out_count = 0
        self._unposted_confirms = 0
        self._confirm_scheduled = False
        writer.queues.append(self)

    # -- state -----------------------------------------------------------------------------------
    @property
    def usable(self) -> bool:
        """The store takes writes and nothing waits in the memory fallback."""
        return self.writer.healthy and not self.fallback.depth

    @property
    def stored_rows(self) -> int:
        return self._rows + self._unreported_rows

    @property
    def depth(self) -> int:
        return self.stored_rows + self.fallback.depth

    @property
    def bytes(self) -> int:
        return self._bytes + self._unreported_bytes

    @property
    def ready(self) -> bool:
        return self._ready or self.fallback.ready

    @property
    def out(self) -> int:
        return self._out_count

    @property
    def accepting(self) -> bool:
        """False while the disk is behind (write backlog) or a "block" buffer is full."""
        return self.room > 0

    @property
    def room(self) -> int:
        if not self.usable:
            return self.fallback.room
        room = max(0, self.backlog_limit - self._backlog)
        if self.overflow == "block" and room:
            return 1 if self.bytes < self.max_bytes else 0  # sizes vary: look at each one
        return room

    def drops(self) -> dict[str, int]:
        merged = collections.Counter(self._drops)
        merged.update(self.fallback.drops)
        return {reason: count for reason, count in merged.items() if count}

    # -- putting ---------------------------------------------------------------------------------
    def put(self, item: Item, bounded: bool = True) -> bool:
        if not self.usable:
            return self._to_fallback(item)
        try:
            body = encode_reading(item[0])
        except EncodeError as error:
            log.warning("sink %s: %s; dropped", self.name, error)
            self._count_drop("unencodable")
            return False
        size = len(body)
        if bounded and self.overflow != "drop_oldest" and self.bytes + size > self.max_bytes:
            self._count_drop("max_bytes" if self.overflow == "drop_newest" else "blocked_overflow")
            return False
        self._pending.append((body, item[1]))
        self._pending_items.append(item)
        self._unreported_rows += 1
        self._unreported_bytes += size
        self._backlog += 1
        if not self._post_scheduled and not self._appending:
            self._post_scheduled = True
            asyncio.get_running_loop().call_soon(self._post_pending)
        return True

    def put_many(self, items: list[Item], in_flight: bool = False) -> None:
        """Store several readings at once, in order (a spill); in_flight: a batch being sent."""
        if in_flight:
            self._post_pending()
        for item in items:
            self.put(item, bounded=not in_flight)  # a batch being sent is never refused
        if in_flight and self._pending:
            self._post_pending(in_flight=True)

    def _to_fallback(self, item: Item) -> bool:
        accepted = self.fallback.put(item)
        if accepted:
            self.counters["memory_fallback"] += 1
            self.notify()
        return accepted

    def _post_pending(self, in_flight: bool = False) -> None:
        """Post what was put since the last post as one append.

        While an append of ours is still on the writer, new puts gather here instead of
        each becoming an operation: under load the batches grow with the backlog, and the
        writer's per-operation cost (a snapshot) is paid per batch, not per chunk read.
        """
        self._post_scheduled = False
        entries, self._pending = self._pending, []
        if not entries:
            return
        self._uncommitted.append((self.writer.next_commit, self._pending_items))
        self._pending_items = []
        buffer = self.buffer
        sizes = sum(len(body) for body, _route in entries)
        count = len(entries)
        self._appending = True

        def append(db: BufferDatabase) -> tuple:
            buffer.append_encoded(entries, in_flight=in_flight)
            return snapshot(buffer)

        def appended(result: Any) -> None:
            self._appending = False
            self._unreported_rows -= count
            self._unreported_bytes -= sizes
            self._mirror(result)
            if self._pending and not self._post_scheduled:
                self._post_pending()

        self.writer.post(append, appended)

    def _count_drop(self, reason: str) -> None:
        self._drops[reason] = self._drops.get(reason, 0) + 1
        buffer = self.buffer
        self.writer.post(lambda db: (buffer.count_drop(reason), snapshot(buffer))[1], self._mirror)

    # -- taking ----------------------------------------------------------------------------------
    async def take(self, count: int) -> list[Item]:
        """Hand out up to `count` readings; may be called again before they are confirmed."""
        if self._ready:
            self._post_confirms()  # the writer must see earlier confirmations first
            buffer = self.buffer

            def take(db: BufferDatabase) -> tuple:
                rows = buffer.take(count)
                return rows, snapshot(buffer)

            try:
                rows, state = await self.writer.call(take)
            except StoreError:
                rows, state = [], None
            self._mirror(state)
            if rows:
                self._taken("disk", len(rows))
                return [item for _row_id, item in rows]
        if self.fallback.ready:
            items = self.fallback.take_now(count)
            self._taken("fallback", len(items))
            return items
        return []

    def _taken(self, origin: str, count: int) -> None:
        if not count:
            return
        if self._out and self._out[-1][0] == origin:
            self._out[-1][1] += count
        else:
            self._out.append([origin, count])
        self._out_count += count

    def confirm(self, count: int) -> None:
        """The oldest `count` readings handed out are delivered."""
        count = min(count, self._out_count)
        self._out_count -= count
        out = self._out
        while count:
            run = out[0]
            done = min(count, run[1])
            if run[0] == "disk":
                self._unposted_confirms += done
            else:
                self.fallback.confirm(done)
            run[1] -= done
            count -= done
            if not run[1]:
                out.popleft()
        if self._unposted_confirms and not self._confirm_scheduled:
            self._confirm_scheduled = True
            asyncio.get_running_loop().call_soon(self._post_confirms)

    def _post_confirms(self) -> None:
        """Post the confirmations gathered in this loop step as one deletion."""
        self._confirm_scheduled = False
        count, self._unposted_confirms = self._unposted_confirms, 0
        if not count:
            return
        buffer = self.buffer
        self.writer.post(lambda db: (buffer.ack_first(count), snapshot(buffer))[1], self._mirror)

    def give_back(self, delivered: Collection[int] = ()) -> None:
        """Every reading handed out comes first again, except those at `delivered` positions."""
        self._post_confirms()
        runs, self._out = self._out, collections.deque()
        self._out_count = 0
        start = 0
        for origin, count in runs:
            local = {index - start for index in delivered if start <= index < start + count}
            start += count
            if origin == "fallback":
                self.fallback.give_back(local)
            else:
                self._settle_rows(sorted(local))
        self.notify()

    def _settle_rows(self, delivered: list[int]) -> None:
        buffer = self.buffer

        def settle(db: BufferDatabase) -> tuple:
            buffer.settle_in_flight(delivered)
            return snapshot(buffer)

        self.writer.post(settle, self._mirror, bool(delivered))

    def release(self, delivered: bool) -> None:
        if delivered:
            self.confirm(self._out_count)
        else:
            self.give_back()

    def adopt_in_flight(self, items: list[Item]) -> None:
        """Store readings a sink took from memory and is sending now, as handed out here."""
        if not items:
            return
        if not self.usable:
            self.fallback._out.extend(items)
            self._taken("fallback", len(items))
            return
        self.put_many(items, in_flight=True)
        self._out.appendleft(["disk", len(items)])  # older than anything stored
        self._out_count += len(items)

    # -- results from the writer -------------------------------------------------------------
    def _mirror(self, state: Any) -> None:
        if not isinstance(state, tuple):
            return
        rows, size, ready, oldest, drops = state
        self._rows, self._bytes, self._oldest = rows, size, oldest
        self._drops = drops
        was_ready, self._ready = self._ready, ready
        if ready and not was_ready:
            self.notify()

    def _on_commit(self, state: Any, number: int) -> None:
        uncommitted = self._uncommitted
        while uncommitted and uncommitted[0][0] <= number:
            self._backlog -= len(uncommitted.popleft()[1])
        self._mirror(state)

    def _on_store_failed(self) -> None:
        # The open transaction was rolled back: what it held is only in memory now. It is
        # newer than every committed row, so it goes to the fallback, in order.
        lost = [item for _commit, items in self._uncommitted for item in items]
        lost += self._pending_items
        self._uncommitted.clear()
        self._pending, self._pending_items = [], []
        self._unreported_rows = self._unreported_bytes = 0
        self._backlog = 0
        for item in lost:
            self._to_fallback(item)
        buffer = self.buffer
        self.writer.post(lambda db: snapshot(buffer), self._mirror, writes=False)

    def _expire(self, now: float | None) -> None:
        buffer = self.buffer

        def expire(db: BufferDatabase) -> tuple:
            buffer.expire(now)
            return snapshot(buffer)

        self.writer.post(expire, self._mirror)

    # -- durability and stats ---------------------------------------------------------------------
    async def settled(self) -> bool:
        """Wait until every reading put so far is committed; False if some could not be."""
        if self._pending:
            self._post_pending()
        if self._uncommitted and not await self.writer.committed():
            return False
        return self.writer.healthy and not self.fallback.depth

    def sink_failed(self) -> None:
        """Everything is on disk already."""

    def sink_recovered(self) -> None:
        """Nothing to do."""

    async def close(self) -> None:
        self._post_pending()

    def oldest_age(self, now: float) -> float:
        if self._oldest is not None and self.stored_rows:
            return max(0.0, self.writer.db.clock() - self._oldest)
        return self.fallback.oldest_age(now)

    def stats(self) -> dict[str, Any]:
        return {
            "policy": self.policy,
            "depth": self.depth,
            "memory": self.fallback.depth,
            "disk": self.stored_rows,
            "bytes": self.bytes,
            "oldest_age": round(self.oldest_age(time.time()), 3),
            "drops": self.drops(),
            "memory_fallback": self.counters["memory_fallback"],
            "store": "ok" if self.writer.healthy else f"failed: {self.writer.error}",
        }


class SpillQueue:
    """Memory first, disk when needed (policy "spill").

    Readings wait in memory while the sink keeps up. They go to disk when the sink fails
    (everything waiting in memory moves with them) or when `capacity` readings wait in
    memory. Once anything is on disk, new readings follow it there until the disk part has
    drained, so the order per sink holds: memory never holds readings newer than disk.
    """

    policy = "spill"

    def __init__(self, disk: DiskQueue, capacity: int = DEFAULT_QUEUE_SIZE, notify=None):
        self.disk = disk
        self.capacity = max(1, int(capacity))
        self.notify = notify or (lambda: None)
        disk.notify = self._notify
        self.memory = MemoryQueue(self.capacity, disk.overflow)
        self.spilled = 0
        self._down = False
        # The hot path's one test: readings go to memory (the disk part is empty and the
        # sink is not failing). Cleared on a spill; set again once the disk part drained.
        self._in_memory = self._disk_empty()

    def _notify(self) -> None:
        self.notify()

    @property
    def depth(self) -> int:
        return self.memory.depth + self.disk.depth

    @property
    def ready(self) -> bool:
        return (self.memory.ready and not self.disk.out) or self.disk.ready

    @property
    def accepting(self) -> bool:
        return self.room > 0

    @property
    def room(self) -> int:
        if self.disk.writer.healthy:
            return self.disk.room
        return self.memory.room

    def _disk_empty(self) -> bool:
        return not self.disk.depth and not self.disk.out

    def put(self, item: Item) -> bool:
        items = self.memory._items
        if self._in_memory and len(items) < self.capacity:
            items.append(item)
            self.notify()
            return True
        return self._put_slowly(item)

    def _put_slowly(self, item: Item) -> bool:
        memory = self.memory
        empty = self._disk_empty()
        if empty and not self._down and len(memory._items) < self.capacity:
            self._in_memory = True  # the disk part drained: back to memory
            memory._items.append(item)
            self.notify()
            return True
        if empty and not self.disk.writer.healthy:
            return memory.put(item)  # nowhere to spill: memory, bounded as configured
        self._spill()
        return self.disk.put(item)

    def _spill(self) -> None:
        """Move what waits in memory (and what the sink is sending from it) to disk, in order."""
        self._in_memory = False
        out = list(self.memory._out)
        if out:
            self.memory._out.clear()  # their outcome now goes to the disk rows
            self.disk.adopt_in_flight(out)
            self.spilled += len(out)
        waiting = list(self.memory._items)
        if waiting:
            self.memory._items.clear()
            self.disk.put_many(waiting)
            self.spilled += len(waiting)

    @property
    def out(self) -> int:
        return self.memory.out + self.disk.out

    # What the sink holds comes from memory or from disk, never from both: memory takes
    # turns only once the disk part (out rows included) is empty, and a spill moves what
    # memory handed out to disk.
    async def take(self, count: int) -> list[Item]:
        if self.memory.ready and not self.disk.out:
            return self.memory.take_now(count)
        return await self.disk.take(count)

    def confirm(self, count: int) -> None:
        if self.memory.out:
            self.memory.confirm(count)
        else:
            self.disk.confirm(count)

    def give_back(self, delivered: Collection[int] = ()) -> None:
        if self.memory.out:
            self.memory.give_back(delivered)
        else:
            self.disk.give_back(delivered)

    def release(self, delivered: bool) -> None:
        if delivered:
            self.confirm(self.out)
        else:
            self.give_back()

    def sink_failed(self) -> None:
        self._down = True
        self._in_memory = False
        if self.memory.depth and self.disk.writer.healthy:
            self._spill()

    def sink_recovered(self) -> None:
        self._down = False

    async def settled(self) -> bool:
        return True

    async def close(self) -> None:
        """At a clean stop what waits in memory goes to disk, so a restart sends it."""
        if self.memory.depth and self.disk.writer.healthy:
            self._spill()
        await self.disk.close()

    def oldest_age(self, now: float) -> float:
        return max(self.memory.oldest_age(now), self.disk.oldest_age(now))

    def stats(self) -> dict[str, Any]:
        disk = self.disk.stats()
        drops = collections.Counter(disk["drops"])
        drops.update(self.memory.drops)
        return {
            **disk,
            "policy": self.policy,
            "depth": self.depth,
            "memory": self.memory.depth + self.disk.fallback.depth,
            "oldest_age": round(self.oldest_age(time.time()), 3),
            "drops": {reason: count for reason, count in drops.items() if count},
            "spilled": self.spilled,
        }


class BufferStore:
    """The gateway's buffers: data_dir/buffer.db, opened when some sink needs the disk.

    attach() gives every sink the queue of its effective policy (the strongest among the
    presets that route to it). A sink whose table still holds readings from an earlier run
    replays them first, whatever its policy now. When the database cannot be opened (a
    read-only or missing data directory), the gateway runs from memory and says so in its
    health; another process holding the database is fatal (StoreLocked).
    """

    def __init__(
        self,
        data_dir: str,
        fsync: str = "always",
        commit_interval: float = DEFAULT_COMMIT_INTERVAL,
        clock: Callable[[], float] | None = None,  # None: the database's StoreTime
    ):
        self.path = os.path.join(data_dir, DATABASE_NAME)
        self.fsync = fsync
        self.commit_interval = commit_interval
        self.clock = clock
        self.writer: BufferWriter | None = None
        self.error: str | None = None
        self.used = False
        self.policies: dict[str, str] = {}

    def attach(self, sinks: dict[str, Any], policies: dict[str, str]) -> None:
        wanted = {name: policies.get(name, "none") for name in sinks}
        self.used = any(policy != "none" for policy in wanted.values()) or os.path.exists(self.path)
        if self.used:
            self._open(list(sinks))
        for name, sink in sinks.items():
            sink.use_queue(self._queue_for(sink, wanted[name]))

    def attach_one(self, sink: Any, policy: str) -> None:
        """The queue for a sink added at runtime (POST /sinks, a config reload)."""
        if policy != "none" and not self.used:
            self.used = True
            self._open([sink.name, *self.policies])
        sink.use_queue(self._queue_for(sink, policy))

    async def purge(self, sink: str) -> int:
        """Delete what the disk holds for a removed sink; returns how many readings."""
        if self.writer is None or not self.writer.db.has_sink(sink):
            return 0
        return await self.writer.call(lambda db: db.buffer(sink).purge(), writes=True)

    def _open(self, configured: list[str]) -> None:
        try:
            db = BufferDatabase(self.path, fsync=self.fsync, clock=self.clock)
        except (StoreLocked, StoreIncompatible):
            raise  # another gateway's, or another version's: running beside it would be wrong
        except StoreError as error:
            self.error = str(error)
            log.error(
                "buffer store unavailable: %s; buffered sinks keep readings in memory only "
                "(restart once the data directory is writable)",
                error,
            )
            return
        self.writer = BufferWriter(db, self.commit_interval)
        for orphan in sorted(set(db.sinks()) - set(configured)):
            count = db.stored(orphan)
            if count:
                log.warning(
                    "buffer holds %d readings for sink %r, which is not configured; "
                    "`gateway buffer purge %s` removes them",
                    count,
                    orphan,
                    orphan,
                )

    def _queue_for(self, sink: Any, policy: str) -> Any:
        options = sink.options.get("buffer") or {}
        overflow = options.get("overflow", "drop_oldest")
        capacity = sink.capacity
        db = self.writer.db if self.writer is not None else None
        if db is not None and policy == "none" and db.stored(sink.name):
            log.info(
                "sink %s: %d readings buffered by an earlier run are sent first",
                sink.name,
                db.stored(sink.name),
            )
            policy = "spill"
        self.policies[sink.name] = policy
        if policy == "none":
            return MemoryQueue(capacity, overflow)
        if db is None:
            return MemoryQueue(capacity, overflow, fallback_policy=policy)
        buffer = db.buffer(
            sink.name,
            max_bytes=int(options.get("max_bytes", 64 * 1024**2)),
            max_age=float(options.get("max_age", 7 * 86400.0)),
            overflow=overflow,
        )
        disk = DiskQueue(self.writer, buffer, capacity)
        if policy == "write_ahead":
            return disk
        return SpillQueue(disk, capacity)

    def health(self) -> str | None:
        """None when no sink uses the disk; "ok"; or "failed: <reason>"."""
        if not self.used:
            return None
        if self.writer is None:
            return f"failed: {self.error}"
        if not self.writer.healthy:
            return f"failed: {self.writer.error}"
        return "ok"

    def stats(self) -> dict[str, Any]:
        writer = self.writer
        return {
            "path": self.path,
            "state": self.health() or "unused",
            "fsync": self.fsync,
            "commits": writer.db.commits if writer else 0,
            "commit_failures": writer.commit_failures if writer else 0,
        }

    async def close(self) -> None:
        if self.writer is not None:
            await self.writer.close()
