"""Distribution sessions: named, temporary routes from chosen readings to sinks, kept on disk."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
import uuid
from typing import Any

from gateway import sinks as sink_registry
from gateway.core.pipeline import Pipeline
from gateway.core.routing import TopicFilter
from gateway.ingest import Ingest
from gateway.sinks.base import Sink
from gateway.throttled_log import ThrottledLog

log = logging.getLogger("gateway.sessions")

SESSIONS_FILE = "sessions.json"
MAX_ENDED = 50  # ended sessions listed until deleted; beyond this the oldest are forgotten
SAVE_INTERVAL = 5.0  # how often a running session's reading count is written while it changes
DRAIN_SECONDS = 2.0  # what an ending session gives its own sinks to deliver what they hold
RUNNING, ENDED = "running", "ended"


class SessionConflict(ValueError):
    """A session's name or one of its sinks' names is taken."""


class Session:
    """One session: its filter, its steps, its own sinks and its routes, and its counters.

    `spec` is the validated request (gateway.config.validate_session). Readings reach
    offer() after the source's preset, numbered and already routed to the configured sinks:
    a session only adds deliveries, so ending it never touches anything else.
    """

    def __init__(self, spec: dict[str, Any], record: dict[str, Any] | None = None):
        record = record or {}
        self.spec = spec
        self.id = record.get("id") or uuid.uuid4().hex[:12]
        self.name = spec["name"]
        self.started_at = record.get("started_at") or time.time()
        duration = spec.get("duration")
        self.ends_at = self.started_at + duration if duration else None
        self.max_readings = spec.get("max_readings")
        self.state = record.get("state", RUNNING)
        self.ended_at = record.get("ended_at")
        self.end_reason = record.get("end_reason")
        self.counters: dict[str, Any] = record.get("counters") or {
            "readings": 0,
            "pipeline_errors": 0,
        }
        self.select = TopicFilter(spec.get("select") or [])
        self.pipeline = Pipeline(spec.get("steps") or [])
        self.owned: dict[str, Sink] = {}
        self.routes: list[tuple[Sink, dict[str, Any], dict[str, int]]] = []
        # Per route, what was offered: kept over restarts, as the reading count is.
        self.route_counts: list[dict[str, int]] = record.get("route_counts") or [
            {"offered": 0, "refused": 0} for _ in spec["routes"]
        ]
        self.owned_final: dict[str, Any] = record.get("sinks") or {}
        self._problems = ThrottledLog(log)
        self.on_full: Any = None  # called once max_readings are routed

    @property
    def running(self) -> bool:
        return self.state == RUNNING

    def build_sinks(self, gateway_id: str) -> None:
        for name, options in self.spec["sinks"].items():
            self.owned[name] = sink_registry.create(name, options, gateway_id)

    def resolve(self, configured: dict[str, Sink]) -> None:
        """Point the routes at the sinks as they are now (a configured sink can be rebuilt or
        removed at runtime; a route to a removed one offers nothing until it is back)."""
        routes = []
        for route, counts in zip(self.spec["routes"], self.route_counts):
            sink = self.owned.get(route["sink"]) or configured.get(route["sink"])
            if sink is not None:
                options = {key: value for key, value in route.items() if key != "sink"}
                routes.append((sink, options, counts))
        self.routes = routes

    def offer(self, reading: dict[str, Any]) -> None:
        if not self.select.matches(f"{reading['device']}/{reading['stream']}"):
            return
        for result in self._steps(reading):
            self.counters["readings"] += 1
            for sink, route, counts in self.routes:
                if sink.offer(result, route):
                    counts["offered"] += 1
                else:
                    counts["refused"] += 1
            if self.max_readings and self.counters["readings"] >= self.max_readings:
                if self.on_full is not None:
                    self.on_full(self)
                return

    def _steps(self, reading: dict[str, Any]) -> list[dict[str, Any]]:
        if not self.pipeline.steps:
            return [reading]  # shared with the configured routes: sinks never change readings
        copy = {**reading, "data": dict(reading["data"])}  # steps change what they are given
        try:
            return self.pipeline.process(copy)
        except Exception as error:  # a step failing on odd data must not stop the source
            self.counters["pipeline_errors"] += 1
            self._problems.warning("steps", "session %s: steps failed: %s", self.name, error)
            return []

    def describe(self) -> dict[str, Any]:
        """What the API answers about it."""
        sinks = {name: _sink_counts(sink) for name, sink in self.owned.items()}
        return {
            "id": self.id,
            "name": self.name,
            "state": self.state,
            "started_at": round(self.started_at, 3),
            "ends_at": round(self.ends_at, 3) if self.ends_at else None,
            "ended_at": round(self.ended_at, 3) if self.ended_at else None,
            "end_reason": self.end_reason,
            "select": self.spec.get("select") or [],
            "steps": self.spec.get("steps") or [],
            "sinks": {name: options["type"] for name, options in self.spec["sinks"].items()},
            "routes": self.spec["routes"],
            "duration": self.spec.get("duration"),
            "max_readings": self.max_readings,
            "counters": {
                **self.counters,
                "routes": [
                    {"sink": route["sink"], **counts}
                    for route, counts in zip(self.spec["routes"], self.route_counts)
                ],
                "sinks": sinks or self.owned_final,
            },
        }

    def record(self) -> dict[str, Any]:
        """What sessions.json keeps of it."""
        return {
            "id": self.id,
            "spec": self.spec,
            "started_at": self.started_at,
            "state": self.state,
            "ended_at": self.ended_at,
            "end_reason": self.end_reason,
            "counters": self.counters,
            "route_counts": self.route_counts,
            "sinks": {name: _sink_counts(s) for name, s in self.owned.items()} or self.owned_final,
        }


def _sink_counts(sink: Sink) -> dict[str, Any]:
    stats = sink.stats()
    return {
        "type": sink.kind,
        "connected": stats["connected"],
        "delivered": stats.get("delivered", 0),
        "failures": stats.get("failures", 0),
        "queue_depth": stats["queue_depth"],
        "dropped": sum((stats["buffer"].get("drops") or {}).values()),
        "last_error": stats["last_error"],
    }


class Sessions:
    """The gateway's sessions: create, end, delete, resume after a restart.

    The list lives in data_dir/sessions.json, rewritten atomically at every change (and
    every SAVE_INTERVAL while readings are counted), so a restart resumes the running ones
    where they were: same id, same end time, counts as of the last save.
    """

    def __init__(
        self,
        data_dir: str,
        gateway_id: str,
        configured: dict[str, Sink],
        ingests: list[Ingest],
    ):
        self.path = os.path.join(data_dir, SESSIONS_FILE)
        self.gateway_id = gateway_id
        self.configured = configured  # the gateway's own dict: sinks added later are seen
        self.ingests = ingests
        self.sessions: dict[str, Session] = {}
        self._running: list[Session] = []
        self._offers: tuple = ()
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task] = set()
        self._saver: asyncio.Task | None = None
        self._started = False
        self._saved_readings = -1

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        """Resume what sessions.json holds (the gateway is running)."""
        self._started = True
        for record in _load(self.path):
            session = Session(record["spec"], record)
            self.sessions[session.id] = session
            if not session.running:
                continue
            try:
                self._launch(session)
            except (ValueError, OSError) as error:  # its sink cannot be built any more
                log.error("session %s (%s) cannot resume: %s", session.name, session.id, error)
                session.state, session.ended_at, session.end_reason = ENDED, time.time(), "failed"
        self._prune()
        self._saver = asyncio.create_task(self._save_while_counting(), name="sessions-save")

    async def stop(self) -> None:
        """At the gateway's stop: the running sessions' sinks stop, the sessions stay
        running in sessions.json for the next start."""
        if self._saver is not None:
            self._saver.cancel()
        for handle in self._timers.values():
            handle.cancel()
        for session in self._running:
            await _stop_sinks(session)
        self._save()

    # -- called by the control plane --------------------------------------------------------
    def owns_sink(self, name: str) -> bool:
        return any(name in session.owned for session in self._running)

    async def create(self, spec: dict[str, Any]) -> Session:
        """Start a session from a validated spec; SessionConflict names a clash, ValueError
        a sink that cannot be built."""
        for session in self._running:
            if session.name == spec["name"]:
                raise SessionConflict(f"name: a running session is named {spec['name']!r}")
        for name in spec["sinks"]:
            if name in self.configured or self.owns_sink(name):
                raise SessionConflict(f"sinks.{name}: a sink of that name exists already")
        for index, route in enumerate(spec["routes"]):
            if route["sink"] not in spec["sinks"] and route["sink"] not in self.configured:
                raise SessionConflict(f"routes[{index}].sink: no sink named {route['sink']!r}")
        session = Session(_with_recorder_names(spec))
        self._launch(session)  # a sink that cannot be built raises before it is listed
        self.sessions[session.id] = session
        self._prune()
        self._save()
        log.info("session %s (%s) started", session.name, session.id)
        return session

    async def delete(self, session_id: str) -> Session:
        """End it if it runs (its sinks deliver what they hold first), and forget it."""
        session = self.sessions[session_id]
        if session.running:
            await self.end(session, "deleted")
        del self.sessions[session_id]
        self._save()
        return session

    async def end(self, session: Session, reason: str) -> None:
        if not session.running:
            return
        session.state, session.ended_at, session.end_reason = ENDED, time.time(), reason
        if session in self._running:
            self._running.remove(session)
            self._set_taps()
        handle = self._timers.pop(session.id, None)
        if handle is not None:
            handle.cancel()
        await _stop_sinks(session, DRAIN_SECONDS)
        session.owned_final = {name: _sink_counts(s) for name, s in session.owned.items()}
        session.owned = {}
        session.routes = []
        self._save()
        log.info(
            "session %s (%s) ended (%s): %d readings",
            session.name,
            session.id,
            reason,
            session.counters["readings"],
        )

    def reroute(self) -> None:
        """The configured sinks or the sources changed: point every running session at the
        sinks as they are now, and let every ingest (new ones too) feed the sessions."""
        for session in self._running:
            session.resolve(self.configured)
        self._set_taps()

    def tap(self, reading: dict[str, Any]) -> None:
        for offer in self._offers:  # a tuple: a session ending meanwhile replaces it
            offer(reading)

    # -- internals ---------------------------------------------------------------------------
    def _launch(self, session: Session) -> None:
        loop = asyncio.get_running_loop()
        if session.ends_at is not None and session.ends_at <= time.time():
            session.state, session.ended_at, session.end_reason = ENDED, time.time(), "duration"
            return
        if session.max_readings and session.counters["readings"] >= session.max_readings:
            session.state, session.ended_at, session.end_reason = ENDED, time.time(), "readings"
            return
        session.build_sinks(self.gateway_id)  # ValueError before anything runs
        session.resolve(self.configured)
        session.on_full = self._full
        for sink in session.owned.values():
            self._spawn(sink.run(), f"session-{session.id}-{sink.name}")
        if session.ends_at is not None:
            delay = session.ends_at - time.time()
            self._timers[session.id] = loop.call_later(delay, self._ended_by_time, session)
        self._running.append(session)
        self._set_taps()

    def _ended_by_time(self, session: Session) -> None:
        self._timers.pop(session.id, None)
        self._spawn(self.end(session, "duration"), f"session-{session.id}-end")

    def _full(self, session: Session) -> None:
        """max_readings routed: from the next reading on it gets nothing, then it ends."""
        session.on_full = None
        if session in self._running:
            self._running.remove(session)
            self._set_taps()
        self._spawn(self.end(session, "readings"), f"session-{session.id}-end")

    def _spawn(self, awaitable: Any, name: str) -> None:
        task = asyncio.get_running_loop().create_task(awaitable, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _set_taps(self) -> None:
        self._offers = tuple(session.offer for session in self._running)
        tap = self.tap if self._running else None  # no session: no cost per reading
        for ingest in self.ingests:
            ingest.tap = tap

    def _prune(self) -> None:
        ended = [s for s in self.sessions.values() if not s.running]
        for session in sorted(ended, key=lambda s: s.ended_at or 0)[:-MAX_ENDED]:
            del self.sessions[session.id]

    async def _save_while_counting(self) -> None:
        while True:
            await asyncio.sleep(SAVE_INTERVAL)
            readings = sum(s.counters["readings"] for s in self._running)
            if readings != self._saved_readings:
                self._save()

    def _save(self) -> None:
        if not self._started:
            return
        self._saved_readings = sum(s.counters["readings"] for s in self._running)
        records = [session.record() for session in self.sessions.values()]
        try:
            _write_atomically(self.path, json.dumps({"version": 1, "sessions": records}))
        except OSError as error:  # the sessions go on; a restart would not resume them
            log.error("sessions: cannot save %s: %s", self.path, error)


async def _stop_sinks(session: Session, drain: float = DRAIN_SECONDS) -> None:
    stops = [sink.stop(drain) for sink in session.owned.values()]
    await asyncio.gather(*stops, return_exceptions=True)


def _with_recorder_names(spec: dict[str, Any]) -> dict[str, Any]:
    """A recorder the session owns names its files after the session (and the sink)."""
    sinks = {}
    for name, options in spec["sinks"].items():
        if options["type"] == "recorder" and not options.get("name"):
            options = {**options, "name": f"{spec['name']}-{name}"}
        sinks[name] = options
    return {**spec, "sinks": sinks}


def _load(path: str) -> list[dict[str, Any]]:
    try:
        with open(path, encoding="utf-8") as handle:
            document = json.load(handle)
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as error:
        log.error("sessions: cannot read %s (%s); no session is resumed", path, error)
        return []
    if not isinstance(document, dict) or document.get("version") != 1:
        log.error("sessions: %s is not a version 1 sessions file; no session is resumed", path)
        return []
    return [record for record in document.get("sessions", []) if "spec" in record]


def _write_atomically(path: str, text: str) -> None:
    temporary = path + ".tmp"
    with open(temporary, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
