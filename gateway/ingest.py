"""One source's path from a received line to readings offered to its routed sinks."""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any, Callable

from gateway.config.presets_schema import ROUTE_KEYS
from gateway.core.parsers import ParseError, Skipped, make_parser
from gateway.core.pipeline import Pipeline, declared_types
from gateway.sinks.base import Sink
from gateway.store.queues import UNBOUNDED
from gateway.store.sequences import SequenceStore, SequenceUnavailable
from gateway.throttled_log import ThrottledLog

log = logging.getLogger("gateway.ingest")

# What a route says about how its sink sends: every route key but the sink it names.
ROUTE_OPTION_KEYS = tuple(key for key in ROUTE_KEYS if key not in ("sink", "type"))


def resolve_routes(preset: dict[str, Any], sinks: dict[str, Sink]) -> list[tuple[Sink, dict]]:
    """Turn a preset's routes into (sink, route options) pairs; a route by type fans out."""
    resolved = []
    for route in preset.get("routes", []):
        options = {key: route[key] for key in ROUTE_OPTION_KEYS if key in route}
        if "sink" in route:
            targets = [sinks[route["sink"]]] if route["sink"] in sinks else []
        else:
            targets = [sink for sink in sinks.values() if sink.kind == route.get("type")]
        resolved.extend((sink, options) for sink in targets)
    return resolved


class Ingest:
    """Parses a source's lines, runs its preset's pipeline, numbers and routes the readings."""

    def __init__(
        self,
        source: dict[str, Any],
        preset: dict[str, Any],
        routes: list[tuple[Sink, dict]],
        gateway_id: str,
        sequences: SequenceStore,
    ):
        self.device = source["name"]
        self.default_stream = source.get("stream") or "default"
        self.gateway_id = gateway_id
        self.parse = make_parser(
            source.get("format", "json"),
            fields=source.get("fields"),
            pattern=source.get("pattern"),
            delimiter=source.get("delimiter"),  # None: the format's own default
            sentences=source.get("sentences"),
            header=source.get("header") or False,
            decimal=source.get("decimal") or ".",
            # A validate step the preset starts with says how csv/kv/regex fields convert.
            types=declared_types(preset.get("steps")),
        )
        self.pipeline = Pipeline(preset.get("steps", []))
        self.keep_device_time = preset.get("device_time", True)
        self.sequences = sequences
        self._counters: Counter = Counter()
        self._problems = ThrottledLog(log)
        self.set_routes(routes)
        self._refused = False  # a refusal by a "block" sink since the last settle()
        # Set by the app while the kernel says the system clock is not synchronised: the
        # readings' "ts" may be off (a Pi boots with the time it shut down at), and say so.
        self.unsynced = False
        # Called with every numbered reading after the configured routes (the sessions).
        self.tap: Callable[[dict[str, Any]], None] | None = None
        self._ts = self._rounded_ts = None  # lines of one chunk share their receive time
        self._has_steps = bool(self.pipeline.steps)
        # Per-reading counts kept as plain ints (the hot path); `counters` merges them.
        self._parsed = self._readings = 0
        self._skipped: dict[str, int] = {}  # lines skipped by design, by kind (GSV, header)

    def set_routes(self, routes: list[tuple[Sink, dict]]) -> None:
        """Route to these sinks from the next reading on (sinks added, removed or rebuilt
        at runtime); each routed sink once in `_sinks`, for settle() and room()."""
        self.routes = routes
        self._sinks = list({id(sink): sink for sink, _route in routes}.values())

    def on_line(self, text: str, ts: float) -> None:
        """A line from a line-framed source: parse it, then on as on_data does.

        The hot path (tens of thousands of lines a second): the envelope is built here
        rather than through on_data, and a preset without steps skips the pipeline.
        """
        try:
            data = self.parse(text)
        except Skipped as skip:  # before ParseError, its base: skipped by design, no error
            if not skip.held:  # a GSV part waiting for the rest of its group is neither
                self._counters["skipped"] += 1
                self._skipped[skip.kind] = self._skipped.get(skip.kind, 0) + 1
            return
        except ParseError as error:
            self._counters["parse_errors"] += 1
            self._problems.warning("parse", "source %s: bad line dropped: %s", self.device, error)
            return
        self._parsed += 1  # "lines" is the source's count of lines received
        if ts is not self._ts:
            self._ts, self._rounded_ts = ts, round(ts, 6)
        stream = data.pop("stream", None)
        reading = {
            "gateway": self.gateway_id,
            "device": self.device,
            "stream": str(stream or self.default_stream),
            "seq": 0,
            "ts": self._rounded_ts,
        }
        device_time = data.pop("dts", None)
        if device_time is not None and self.keep_device_time:
            reading["dts"] = device_time
        reading["data"] = data
        if self._has_steps:
            self._process(reading, data)
        else:
            self._offer(reading)

    def on_data(
        self,
        data: dict[str, Any],
        ts: float,
        stream: str | None = None,
        device_time: Any = None,
        device: str | None = None,
    ) -> None:
        """One record of named values (a reading from a COBS frame, or a parsed line)."""
        if ts is not self._ts:
            self._ts, self._rounded_ts = ts, round(ts, 6)
        reading = {
            "gateway": self.gateway_id,
            "device": device or self.device,
            "stream": str(stream or self.default_stream),
            "seq": 0,
            "ts": self._rounded_ts,
        }
        if device_time is not None and self.keep_device_time:
            reading["dts"] = device_time
        reading["data"] = data
        self._process(reading, data)

    def _process(self, reading: dict[str, Any], data: dict[str, Any]) -> None:
        try:
            readings = self.pipeline.process(reading)
        except Exception as error:  # a step bug must not stop the source; say which record
            self._counters["pipeline_errors"] += 1
            self._problems.warning(
                "pipeline", "source %s: pipeline failed on %r: %s", self.device, data, error
            )
            return
        for reading in readings:
            self._offer(reading)

    @property
    def counters(self) -> Counter:
        """parsed, readings, parse_errors, pipeline_errors, refused, skipped (a copy); when
        there were any, "invalid": the validate steps' failed checks by reason and field,
        and "skipped_kinds": lines skipped by design (a CSV header, an NMEA sentence type
        not asked for) by kind."""
        counters: Counter = Counter(self._counters)
        counters["parsed"] += self._parsed
        counters["readings"] += self._readings
        invalid = self.pipeline.counters()
        if invalid:
            counters["invalid"] = invalid
        if self._skipped:
            counters["skipped_kinds"] = dict(self._skipped)
        return counters

    async def settle(self) -> bool:
        """Return once every reading offered so far is as safe as its sinks' policy makes it.

        A device acknowledgement is sent only after this returns True, so a reading
        acknowledged to a device is never lost: write-ahead sinks have committed it to disk
        (spill and none promise nothing more than memory, so they return at once). False
        means something since the previous settle() is not safe: a "block" sink refused a
        reading, or the disk store failed and readings wait in memory. Then do not
        acknowledge; the device keeps its ring and sends again (consumers may see
        duplicates, never gaps).
        """
        refused, self._refused = self._refused, False
        safe = True
        for sink in self._sinks:
            if not await sink.settled():
                safe = False
        return safe and not refused

    def accepting(self) -> bool:
        """False while a sink this source routes to pushes back (stop reading devices)."""
        return self.room() > 0

    def room(self) -> int:
        """Records it can take for sure before some sink pushes back: a line source checks
        this once per run of lines instead of accepting() before each."""
        sinks = min((sink.room for sink in self._sinks), default=UNBOUNDED)
        return min(sinks, self.sequences.room())  # 0 while no number can be reserved

    def flush(self) -> None:
        """Emit what stateful steps (windows) still hold; called at shutdown."""
        self._emit(self.pipeline.flush())

    def _emit(self, readings: list[dict]) -> None:
        for reading in readings:
            self._offer(reading)

    def _offer(self, reading: dict[str, Any]) -> None:
        try:
            reading["seq"] = self.sequences.next(reading["device"], reading["stream"])
        except SequenceUnavailable as error:  # never a number that is not durably reserved
            self._unnumbered(error)
            return
        if self.unsynced:
            reading["unsynced"] = True
        self._readings += 1
        for sink, route in self.routes:
            if not sink.offer(reading, route) and sink.overflow == "block":
                self._counters["refused"] += 1
                self._refused = True
        if self.tap is not None:
            self.tap(reading)

    def _unnumbered(self, error: SequenceUnavailable) -> None:
        """A reading no number is reserved for (room() said 0 too late): dropped and counted,
        and settle() says not to acknowledge, so a COBS device sends it again."""
        self._counters["unnumbered"] += 1
        self._refused = True
        self._problems.warning("sequence", "source %s: reading dropped: %s", self.device, error)
