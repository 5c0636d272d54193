"""Durable per-sink buffer: one SQLite database in WAL mode per gateway, one table per sink."""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import sqlite3
import time
from typing import Any, Callable, Iterable, Iterator

import msgpack
import orjson

from gateway import json_bytes
from gateway.clock import StoreTime

log = logging.getLogger("gateway.store")

DATABASE_NAME = "buffer.db"
# The layout of buffer.db. A database of an older version is migrated when opened (see
# MIGRATIONS), one of a newer version (a downgrade) is refused, never misread.
SCHEMA_VERSION = 1
# version → the statements that bring a database of that version to the next one.
MIGRATIONS: dict[int, tuple[str, ...]] = {}
# gateway.fsync → PRAGMA synchronous. In WAL mode FULL syncs the log at every commit, NORMAL
# only at checkpoints (the caller checkpoints once a second), OFF never.
FSYNC_MODES = {"always": "FULL", "batch": "NORMAL", "off": "OFF"}
OVERFLOW_POLICIES = ("drop_oldest", "drop_newest", "block")
# Why rows left a buffer without being delivered. Counted per sink, persisted with the rows.
DROP_REASONS = ("max_bytes", "max_age", "blocked_overflow", "unencodable", "purged")

_LOWEST_ID = -(2**63)
_SCAN_CHUNK = 512  # rows read at a time when looking for the oldest rows to evict or expire

Item = tuple  # (reading, route), as the sinks take them


class StoreError(Exception):
    """The buffer database cannot be used; the message says why in one line."""


class StoreLocked(StoreError):
    """Another process (a running gateway) holds the database."""


class StoreIncompatible(StoreError):
    """The database has a layout this gateway does not read (written by a newer one)."""


class EncodeError(StoreError):
    """A reading that no encoding can store (bytes inside, say)."""


# -- readings ↔ rows ---------------------------------------------------------------------------
# orjson is ≈ 3x faster than MessagePack both ways here. It cannot carry integers beyond 64
# bits (and would read them back as floats) or bytes, so those rare readings fall back to the
# standard json module ("J" prefix) or MessagePack ("M" prefix). A reading is a dict, so orjson
# output always starts with "{".


def encode_reading(reading: dict) -> bytes:
    try:
        return json_bytes.dumps(reading)
    except TypeError:
        pass
    try:
        return b"J" + json.dumps(reading, allow_nan=True).encode()
    except (TypeError, ValueError):
        pass
    try:
        return b"M" + msgpack.packb(reading, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as error:
        raise EncodeError(f"reading cannot be stored: {error}") from None


def decode_reading(body: bytes) -> dict:
    first = body[:1]
    if first == b"J":
        return json.loads(body[1:])
    if first == b"M":
        return msgpack.unpackb(body[1:], raw=False)
    return orjson.loads(body)


def _route_key(route: dict | None) -> bytes:
    return orjson.dumps(route or {}, option=orjson.OPT_SORT_KEYS)


def _table(sink: str) -> str:
    return '"q:' + sink.replace('"', '""') + '"'


def describe_error(error: BaseException) -> str:
    """One line for an SQLite or OS error, naming the usual causes."""
    text = str(error) or type(error).__name__
    lowered = text.lower()
    if "readonly" in lowered or "read-only" in lowered:
        return f"{text} (the data directory or database file is read-only)"
    if "full" in lowered or "no space" in lowered:
        return f"{text} (the disk holding the data directory is full)"
    return text


class BufferDatabase:
    """The gateway's buffer database (data_dir/buffer.db) and its per-sink tables.

    Single-threaded: whichever thread uses it must be the only one. Writes gather in one open
    transaction until commit(); readers on this connection see them at once. `clock` gives the
    seconds stored with each row (for max_age and oldest_age): by default a StoreTime
    (gateway.clock), which moves with elapsed time only and continues across restarts from
    what the database saved (save_clock(), now and then and at the close), so a wall-clock
    jump neither expires rows early nor keeps them too long. A clock with resume() is
    resumed from that; tests inject their own. `lock` takes an exclusive lock file beside the
    database, so two gateways cannot share a data directory; `readonly` opens without
    writing anything (the `gateway buffer` command while the gateway runs).
    """

    def __init__(
        self,
        path: str,
        fsync: str = "always",
        clock: Callable[[], float] | None = None,
        readonly: bool = False,
        lock: bool = True,
    ):
        if fsync not in FSYNC_MODES:
            raise ValueError(f"fsync: expected one of {', '.join(FSYNC_MODES)}, got {fsync!r}")
        self.path = path
        self.fsync = fsync
        self.clock: Callable[[], float] = clock or StoreTime()
        self.readonly = readonly
        self.buffers: dict[str, SinkBuffer] = {}
        self.closed = False
        self.commits = 0  # transactions that wrote something
        self._lock_file = None
        self._route_ids: dict[bytes, int] = {}
        self._routes: dict[int, dict] = {}
        self._routes_by_object: dict[int, tuple[dict, int]] = {}
        if not readonly:
            self._prepare_directory()
            if lock:
                self._lock()
        try:
            self.connection = self._connect()
            resume = getattr(self.clock, "resume", None)
            if resume is not None:
                resume(self._meta("clock"))
        except BaseException:
            self._unlock()
            raise

    # -- opening ------------------------------------------------------------------------------
    def _prepare_directory(self) -> None:
        directory = os.path.dirname(os.path.abspath(self.path))
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError as error:
            raise StoreError(
                f"cannot create the data directory {directory}: {describe_error(error)}"
            ) from None

    def _lock(self) -> None:
        lock_path = self.path + ".lock"
        try:
            handle = open(lock_path, "a+")  # noqa: SIM115 - held for the database's lifetime
        except OSError as error:
            raise StoreError(f"cannot open {lock_path}: {describe_error(error)}") from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise StoreLocked(
                f"{self.path} is in use by another gateway process (pid {holder})"
            ) from None
        with contextlib.suppress(OSError):  # the pid is informative only
            handle.truncate(0)
            handle.write(str(os.getpid()))
            handle.flush()
        self._lock_file = handle

    def _unlock(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    def _connect(self) -> sqlite3.Connection:
        try:
            return self._open_connection()
        except sqlite3.DatabaseError as error:
            if self.readonly or isinstance(error, sqlite3.OperationalError):
                raise StoreError(f"cannot open {self.path}: {describe_error(error)}") from None
        # Not a database, or damaged beyond use (a power cut with fsync = "off"): keep the
        # file for inspection and start afresh rather than refuse to run.
        aside = f"{self.path}.corrupt-{int(time.time())}"
        log.error("buffer database %s is damaged; moved aside to %s", self.path, aside)
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.replace(self.path + suffix, aside + suffix)
        try:
            return self._open_connection()
        except sqlite3.Error as error:
            raise StoreError(f"cannot open {self.path}: {describe_error(error)}") from None

    def _open_connection(self) -> sqlite3.Connection:
        if self.readonly:
            uri = "file:" + os.path.abspath(self.path) + "?mode=ro"
            connection = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=5)
            connection.execute("SELECT count(*) FROM sqlite_master").fetchone()
            try:
                self._check_schema(connection)
            except BaseException:
                connection.close()
                raise
            self._load_routes(connection)
            return connection
        connection = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=5
        )
        try:
            mode = connection.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise StoreError(f"cannot use WAL mode on {self.path} (got {mode})")
            connection.execute(f"PRAGMA synchronous={FSYNC_MODES[self.fsync]}")
            connection.execute("PRAGMA temp_store=MEMORY")
            connection.executescript(
                """
                CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
                CREATE TABLE IF NOT EXISTS routes (id INTEGER PRIMARY KEY, body BLOB UNIQUE);
                CREATE TABLE IF NOT EXISTS counters (
                    sink TEXT, reason TEXT, count INTEGER, PRIMARY KEY (sink, reason));
                """
            )
            connection.execute(
                "INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),)
            )
            self._check_schema(connection)
            self._load_routes(connection)
        except BaseException:
            connection.close()
            raise
        return connection

    def _check_schema(self, connection: sqlite3.Connection) -> None:
        """Migrate a database of an older layout; refuse a newer or an unknown one."""
        try:
            row = connection.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
        except sqlite3.OperationalError:
            row = None  # a read-only view of a database nothing was written to yet
        if row is None:
            return
        (value,) = row
        try:
            version = int(value)
        except (TypeError, ValueError):
            version = None
        if version is None or version > SCHEMA_VERSION or version < 1:
            found = f"version {value}" if version is not None else f"an unknown version {value!r}"
            raise StoreIncompatible(
                f"{self.path} has buffer layout {found}; this gateway reads version "
                f"{SCHEMA_VERSION} and older. It was written by a newer gateway: run that "
                "version again to deliver what it holds, or move the file aside to start "
                "with an empty buffer"
            )
        if version < SCHEMA_VERSION and self.readonly:
            raise StoreIncompatible(
                f"{self.path} has the older buffer layout {version}: start the gateway once "
                "to migrate it"
            )
        while version < SCHEMA_VERSION:
            log.info(
                "buffer database %s: migrating layout %d to %d", self.path, version, version + 1
            )
            connection.execute("BEGIN")
            for statement in MIGRATIONS[version]:
                connection.execute(statement)
            version += 1
            connection.execute("UPDATE meta SET value = ? WHERE key = 'schema'", (str(version),))
            connection.execute("COMMIT")

    def _meta(self, key: str) -> Any:
        """A JSON value kept in the meta table, or None."""
        try:
            row = self.connection.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
            return json.loads(row[0]) if row else None
        except (sqlite3.Error, ValueError, TypeError):
            return None  # an older database, or a damaged value: start afresh

    def save_clock(self) -> None:
        """Keep where the StoreTime is, for the next run to continue from (see StoreTime)."""
        saved = getattr(self.clock, "saved", None)
        if saved is None or self.readonly:
            return
        with self.writing() as connection:
            connection.execute(
                "INSERT OR REPLACE INTO meta VALUES ('clock', ?)", (json.dumps(saved()),)
            )

    def _load_routes(self, connection: sqlite3.Connection) -> None:
        try:
            rows = connection.execute("SELECT id, body FROM routes").fetchall()
        except sqlite3.OperationalError:
            rows = []  # a read-only view of a database that has no routes table yet
        for route_id, body in rows:
            self._route_ids[bytes(body)] = route_id
            self._routes[route_id] = orjson.loads(body)

    # -- transactions ---------------------------------------------------------------------------
    @property
    def in_transaction(self) -> bool:
        return self.connection.in_transaction

    @contextlib.contextmanager
    def writing(self) -> Iterator[sqlite3.Connection]:
        """Run writes inside the open transaction (begun if need be); errors → StoreError.

        On any error the whole open transaction is rolled back and every buffer reloads what
        is really on disk, so memory and database never disagree.
        """
        if self.readonly:
            raise StoreError(f"{self.path} is open read-only")
        try:
            if not self.connection.in_transaction:
                self.connection.execute("BEGIN")
            yield self.connection
        except (sqlite3.Error, OSError) as error:
            self.rollback()
            raise StoreError(describe_error(error)) from None

    def commit(self) -> None:
        """Make every write so far durable (as far as fsync allows); at most one fsync."""
        for buffer in self.buffers.values():
            buffer._delete_delivered()
            buffer._save_drops()
        if not self.connection.in_transaction:
            return
        try:
            self.connection.execute("COMMIT")
        except (sqlite3.Error, OSError) as error:
            self.rollback()
            raise StoreError(describe_error(error)) from None
        self.commits += 1
        for buffer in self.buffers.values():
            buffer._committed()

    def rollback(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            if self.connection.in_transaction:
                self.connection.execute("ROLLBACK")
        with contextlib.suppress(sqlite3.Error):
            self._route_ids.clear()
            self._routes_by_object.clear()
            self._load_routes(self.connection)  # a route added in the lost transaction is gone
            for buffer in self.buffers.values():
                buffer._reload()

    def checkpoint(self) -> None:
        """Copy the log into the database file, syncing both (fsync = "batch" does this)."""
        try:
            self.connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except (sqlite3.Error, OSError) as error:
            raise StoreError(describe_error(error)) from None

    def probe(self) -> None:
        """A small committed write: raises StoreError while the disk cannot take one."""
        with self.writing() as connection:
            connection.execute(
                "INSERT OR REPLACE INTO meta VALUES ('last_write', ?)", (repr(self.clock()),)
            )
        self.commit()

    def close(self) -> None:
        """Commit what is open and release the database; closing twice is harmless."""
        if self.closed:
            return
        self.closed = True
        try:
            if not self.readonly:
                with contextlib.suppress(StoreError):
                    self.save_clock()
                self.commit()
        finally:
            with contextlib.suppress(sqlite3.Error):
                self.connection.close()
            self._unlock()

    # -- sinks and routes -------------------------------------------------------------------------
    def sinks(self) -> list[str]:
        """Names of the sinks that have a table (configured now or in an earlier run)."""
        rows = self.connection.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE 'q:%' ORDER BY name"
        ).fetchall()
        return [name[2:] for (name,) in rows]

    def has_sink(self, sink: str) -> bool:
        return sink in self.sinks()

    def stored(self, sink: str) -> int:
        """Rows in a sink's table, without opening its buffer (0 when it has none)."""
        if not self.has_sink(sink):
            return 0
        return self.connection.execute(f"SELECT count(*) FROM {_table(sink)}").fetchone()[0]

    def buffer(
        self,
        sink: str,
        max_bytes: int = 64 * 1024**2,
        max_age: float = 7 * 86400.0,
        overflow: str = "drop_oldest",
    ) -> SinkBuffer:
        """The buffer of one sink (its table is created when missing)."""
        if sink not in self.buffers:
            self.buffers[sink] = SinkBuffer(self, sink, max_bytes, max_age, overflow)
        return self.buffers[sink]

    def route_id(self, route: dict | None) -> int:
        """The stored id of a route (its options), adding it inside the open transaction."""
        known = self._routes_by_object.get(id(route))
        if known is not None and known[0] is route:
            return known[1]
        key = _route_key(route)
        route_id = self._route_ids.get(key)
        if route_id is None:
            route_id = len(self._route_ids) + 1
            with self.writing() as connection:
                connection.execute("INSERT INTO routes VALUES (?, ?)", (route_id, key))
            self._route_ids[key] = route_id
            self._routes[route_id] = orjson.loads(key)
        if route is not None:
            self._routes_by_object[id(route)] = (route, route_id)
        return route_id

    def route(self, route_id: int) -> dict:
        """The route object for a stored id; the same object for every row that uses it."""
        return self._routes.get(route_id) or {}

    def counters(self, sink: str) -> dict[str, int]:
        try:
            rows = self.connection.execute(
                "SELECT reason, count FROM counters WHERE sink = ?", (sink,)
            ).fetchall()
        except sqlite3.OperationalError:
            rows = []
        return dict(rows)


class SinkBuffer:
    """One sink's rows, oldest first, bounded by max_bytes and max_age.

    take(n) hands out the next rows and marks them in flight; ack() deletes rows once the
    sink confirmed them, fail() puts the rows in flight back in front. Rows in flight are
    always the oldest rows, are never evicted or expired, and are not handed out twice.
    Ids grow and are never reused while the database is open, so a late ack cannot hit a
    newer row. `bytes` counts the stored (encoded) readings, not SQLite's own overhead.
    """

    def __init__(self, db: BufferDatabase, sink: str, max_bytes: int, max_age: float, overflow):
        if overflow not in OVERFLOW_POLICIES:
            raise ValueError(f"overflow: expected one of {', '.join(OVERFLOW_POLICIES)}")
        self.db = db
        self.sink = sink
        self.max_bytes = max_bytes
        self.max_age = max_age
        self.overflow = overflow
        self.table = _table(sink)
        self.rows = 0
        self.bytes = 0
        self.drops = dict.fromkeys(DROP_REASONS, 0)
        self.in_flight: list[tuple[int, int]] = []  # (id, size), oldest first
        # Rows deleted since the last commit, and rows confirmed delivered whose deletion a
        # rollback undid: those stay in the table but are never handed out again.
        self._acked: list[tuple[int, int]] = []
        self.delivered: list[tuple[int, int]] = []
        self._unsaved_drops: dict[str, int] = {}
        if not db.readonly:
            with db.writing() as connection:
                connection.execute(
                    f"CREATE TABLE IF NOT EXISTS {self.table} (id INTEGER PRIMARY KEY, "
                    "route INTEGER, body BLOB, size INTEGER, enqueued REAL)"
                )
            db.commit()
        self.drops.update(db.counters(sink))
        self._reload()
        self.next_id = self._max_id() + 1
        self.committed_id = self.next_id - 1

    # -- state ------------------------------------------------------------------------------------
    def _exists(self) -> bool:
        return self.db.has_sink(self.sink)

    def _max_id(self) -> int:
        if self.db.readonly and not self._exists():
            return 0
        (highest,) = self.db.connection.execute(f"SELECT max(id) FROM {self.table}").fetchone()
        return highest or 0

    def _reload(self) -> None:
        """Counts from what the database really holds (at start, and after a rollback).

        After a rollback the rows deleted since the last commit are back. Those up to the
        last row delivered or in flight were delivered, or dropped (and counted) before a
        newer row went out: they stay hidden, never handed out, and are deleted with the
        next commit. Later rows that were dropped simply wait again (their drop stays
        counted: drop counters never go back).
        """
        if self.db.readonly and not self._exists():
            self.rows = self.bytes = 0
            self.in_flight = []
            return
        rows, size = self.db.connection.execute(
            f"SELECT count(*), coalesce(sum(size), 0) FROM {self.table}"
        ).fetchone()
        marks = [entry[0] for entry in self.delivered + self._acked + self.in_flight[-1:]]
        self._acked = []
        in_flight = {row_id for row_id, _ in self.in_flight}
        if marks:
            below = self.db.connection.execute(
                f"SELECT id, size FROM {self.table} WHERE id <= ? ORDER BY id", (max(marks),)
            ).fetchall()
            self.in_flight = [entry for entry in below if entry[0] in in_flight]
            self.delivered = [entry for entry in below if entry[0] not in in_flight]
        self.rows = rows - len(self.delivered)
        self.bytes = size - sum(size for _, size in self.delivered)

    def _committed(self) -> None:
        self.committed_id = self.next_id - 1
        self._acked = []
        self._unsaved_drops = {}

    @property
    def depth(self) -> int:
        return self.rows

    @property
    def available(self) -> int:
        """Rows that take() can hand out now (not in flight)."""
        return self.rows - len(self.in_flight)

    def oldest_age(self, now: float | None = None) -> float:
        """Seconds since the oldest row was stored; 0 when empty."""
        if not self.rows:
            return 0.0
        row = self.db.connection.execute(
            f"SELECT enqueued FROM {self.table} ORDER BY id LIMIT 1"
        ).fetchone()
        if row is None:
            return 0.0
        now = self.db.clock() if now is None else now
        return max(0.0, now - row[0])

    def stats(self, now: float | None = None) -> dict[str, Any]:
        return {
            "depth": self.rows,
            "bytes": self.bytes,
            "oldest_age": round(self.oldest_age(now), 3),
            "in_flight": len(self.in_flight),
            "drops": dict(self.drops),
        }

    def _after_in_flight(self) -> int:
        """The id after which rows wait to be handed out (in flight and delivered come first)."""
        if self.in_flight:
            return self.in_flight[-1][0]
        return self.delivered[-1][0] if self.delivered else _LOWEST_ID

    # -- writing ---------------------------------------------------------------------------------
    def append(self, items: Iterable[Item], enqueued: float | None = None) -> int:
        """Store readings (with their routes) in order; returns how many were kept.

        The bound applies as configured: drop_oldest evicts the oldest rows not in flight
        (then the oldest of these new ones); drop_newest and block refuse what does not fit.
        Every drop is counted by reason. Unencodable readings are dropped and counted.
        """
        entries = []
        for reading, route in items:
            try:
                entries.append((encode_reading(reading), route))
            except EncodeError as error:
                log.warning("sink %s: %s; dropped", self.sink, error)
                self.count_drop("unencodable")
        return self.append_encoded(entries, enqueued)

    def append_encoded(
        self, entries: list[tuple[bytes, dict]], enqueued: float | None = None, in_flight=False
    ) -> int:
        """append() for readings already encoded with encode_reading: [(body, route)].

        in_flight=True stores rows that a sink is sending right now (a memory batch that
        must become durable); allowed only while every stored row is in flight.
        """
        if in_flight and self.available:
            raise ValueError("rows can be added in flight only while no other row waits")
        enqueued = self.db.clock() if enqueued is None else enqueued
        kept = self._fit(entries) if not in_flight else entries
        if not kept:
            return 0
        next_id = self.next_id
        rows = []
        with self.db.writing() as connection:
            for body, route in kept:
                rows.append((next_id, self.db.route_id(route), body, len(body), enqueued))
                next_id += 1
            connection.executemany(f"INSERT INTO {self.table} VALUES (?, ?, ?, ?, ?)", rows)
        self.next_id = next_id
        self.rows += len(rows)
        self.bytes += sum(row[3] for row in rows)
        if in_flight:
            self.in_flight.extend((row[0], row[3]) for row in rows)
        if self.overflow == "drop_oldest" and self.bytes > self.max_bytes:
            self._evict(self.bytes - self.max_bytes)
        return len(rows)

    def _fit(self, entries: list[tuple[bytes, dict]]) -> list[tuple[bytes, dict]]:
        """The entries the bound lets in (drop_newest, block); drop_oldest keeps all here."""
        if self.overflow == "drop_oldest":
            kept = [entry for entry in entries if len(entry[0]) <= self.max_bytes]
            if len(kept) < len(entries):
                self.count_drop("max_bytes", len(entries) - len(kept))
            return kept
        reason = "max_bytes" if self.overflow == "drop_newest" else "blocked_overflow"
        kept = []
        size = self.bytes
        for entry in entries:
            if size + len(entry[0]) > self.max_bytes:
                continue
            size += len(entry[0])
            kept.append(entry)
        if len(kept) < len(entries):
            self.count_drop(reason, len(entries) - len(kept))
        return kept

    def _evict(self, excess: int) -> None:
        """Delete the oldest rows not in flight until `excess` bytes are freed."""
        last, count, freed = self._scan_oldest(lambda size, enqueued, freed: freed < excess)
        if count:
            self._delete_after_in_flight(last, count, freed, "max_bytes")

    def expire(self, now: float | None = None) -> int:
        """Drop rows older than max_age (not in flight); returns how many."""
        if not self.available:
            return 0
        cutoff = (self.db.clock() if now is None else now) - self.max_age
        last, count, freed = self._scan_oldest(lambda size, enqueued, freed: enqueued < cutoff)
        if count:
            self._delete_after_in_flight(last, count, freed, "max_age")
        return count

    def _scan_oldest(self, wanted) -> tuple[int, int, int]:
        """(last id, count, bytes) of the leading rows after those in flight that `wanted`."""
        after = self._after_in_flight()
        count = freed = 0
        last = after
        while True:
            rows = self.db.connection.execute(
                f"SELECT id, size, enqueued FROM {self.table} WHERE id > ? ORDER BY id LIMIT ?",
                (last, _SCAN_CHUNK),
            ).fetchall()
            for row_id, size, enqueued in rows:
                if not wanted(size, enqueued, freed):
                    return last, count, freed
                last, count, freed = row_id, count + 1, freed + size
            if len(rows) < _SCAN_CHUNK:
                return last, count, freed

    def _delete_after_in_flight(self, last: int, count: int, freed: int, reason: str) -> None:
        with self.db.writing() as connection:
            connection.execute(
                f"DELETE FROM {self.table} WHERE id > ? AND id <= ?",
                (self._after_in_flight(), last),
            )
        self.rows -= count
        self.bytes -= freed
        self.count_drop(reason, count)

    def count_drop(self, reason: str, count: int = 1) -> None:
        """Count readings dropped for `reason` (persisted with the next commit that works)."""
        if count <= 0:
            return
        self.drops[reason] = self.drops.get(reason, 0) + count
        self._unsaved_drops[reason] = self._unsaved_drops.get(reason, 0) + count

    def _save_drops(self) -> None:
        if not self._unsaved_drops:
            return
        with self.db.writing() as connection:
            connection.executemany(
                "INSERT INTO counters VALUES (?, ?, ?) "
                "ON CONFLICT (sink, reason) DO UPDATE SET count = count + excluded.count",
                [(self.sink, reason, count) for reason, count in self._unsaved_drops.items()],
            )

    # -- reading and delivering -----------------------------------------------------------------
    def peek(self, count: int, committed_only: bool = False) -> list[tuple[int, Item]]:
        """The next `count` rows after those in flight, as (row id, (reading, route))."""
        return [(row_id, item) for row_id, item, _size in self._read(count, committed_only)]

    def take(self, count: int, committed_only: bool = True) -> list[tuple[int, Item]]:
        """peek(), and mark the rows in flight until ack() or fail().

        committed_only (the default) hands out only rows whose transaction committed, so a
        reading leaves a write-ahead buffer only once it is on disk.
        """
        rows = self._read(count, committed_only)
        self.in_flight.extend((row_id, size) for row_id, _item, size in rows)
        return [(row_id, item) for row_id, item, _size in rows]

    def _read(self, count: int, committed_only: bool) -> list[tuple[int, Item, int]]:
        if count <= 0 or not self.available:
            return []
        upper = self.committed_id if committed_only else self.next_id
        rows = self.db.connection.execute(
            f"SELECT id, route, body, size FROM {self.table} WHERE id > ? AND id <= ? "
            "ORDER BY id LIMIT ?",
            (self._after_in_flight(), upper, count),
        ).fetchall()
        route = self.db.route
        return [
            (row_id, (decode_reading(body), route(route_id)), size)
            for row_id, route_id, body, size in rows
        ]

    def ack(self, row_ids: Iterable[int] | None = None) -> int:
        """Delete delivered rows (by default: every row in flight); returns how many."""
        if row_ids is None:
            return self._ack_in_flight()
        wanted = sorted(set(row_ids))
        if not wanted:
            return 0
        if self.in_flight and wanted == [row_id for row_id, _ in self.in_flight]:
            return self._ack_in_flight()
        placeholders = ",".join("?" * len(wanted))
        with self.db.writing() as connection:
            found = connection.execute(
                f"SELECT id, size FROM {self.table} WHERE id IN ({placeholders})", wanted
            ).fetchall()
            connection.execute(f"DELETE FROM {self.table} WHERE id IN ({placeholders})", wanted)
        gone = set(wanted)
        self.in_flight = [entry for entry in self.in_flight if entry[0] not in gone]
        already = [entry for entry in self.delivered if entry[0] in gone]
        self.delivered = [entry for entry in self.delivered if entry[0] not in gone]
        fresh = [entry for entry in found if entry not in already]
        self._acked.extend(found)
        self.rows -= len(fresh)
        self.bytes -= sum(size for _, size in fresh)
        return len(fresh)

    def ack_first(self, count: int) -> int:
        """Delete the oldest `count` rows in flight: delivered, in the order taken."""
        if count >= len(self.in_flight):
            return self._ack_in_flight()
        if count <= 0:
            return 0
        done, self.in_flight = self.in_flight[:count], self.in_flight[count:]
        with self.db.writing() as connection:
            # Below the last of them are only delivered rows and these: takes go in id order.
            connection.execute(f"DELETE FROM {self.table} WHERE id <= ?", (done[-1][0],))
        self.rows -= count
        self.bytes -= sum(size for _, size in done)
        self._acked.extend(self.delivered + done)
        self.delivered = []
        return count

    def settle_in_flight(self, delivered: Iterable[int]) -> int:
        """The rows in flight at the `delivered` positions are delivered (deleted); the
        others come first again, in order. Returns how many were deleted."""
        ids = [self.in_flight[index][0] for index in delivered if index < len(self.in_flight)]
        deleted = self.ack(ids) if ids else 0
        self.fail()
        return deleted

    def _ack_in_flight(self) -> int:
        if not self.in_flight:
            return 0
        with self.db.writing() as connection:
            # Rows in flight (and delivered ones) are exactly the rows up to the last of them.
            connection.execute(f"DELETE FROM {self.table} WHERE id <= ?", (self.in_flight[-1][0],))
        count = len(self.in_flight)
        self.rows -= count
        self.bytes -= sum(size for _, size in self.in_flight)
        self._acked.extend(self.delivered + self.in_flight)
        self.delivered = []
        self.in_flight = []
        return count

    def _delete_delivered(self) -> None:
        """Delete again what a rollback brought back although it was delivered."""
        if not self.delivered:
            return
        with self.db.writing() as connection:
            # Delivered rows are the oldest: nothing else has an id up to the last of them.
            connection.execute(f"DELETE FROM {self.table} WHERE id <= ?", (self.delivered[-1][0],))
        self._acked.extend(self.delivered)
        self.delivered = []

    def fail(self) -> int:
        """The sink could not deliver the rows in flight: they come first again, in order."""
        count = len(self.in_flight)
        self.in_flight = []
        return count

    def purge(self) -> int:
        """Delete every row (in flight too), counted as "purged"; returns how many."""
        count = self.rows
        with self.db.writing() as connection:
            connection.execute(f"DELETE FROM {self.table}")
        self.rows = self.bytes = 0
        self.in_flight = []
        self._acked.extend(self.delivered)  # a rollback must not resurrect them as new
        self.delivered = []
        self.count_drop("purged", count)
        return count
