"""One source's path from a received line to readings offered to its routed sinks."""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

from gateway.config.schema import ROUTE_KEYS
from gateway.core.parsers import ParseError, make_parser
from gateway.core.pipeline import Pipeline
from gateway.sinks.base import Sink
from gateway.store.queues import UNBOUNDED
from gateway.store.sequences import SequenceStore
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
            delimiter=source.get("delimiter", ","),
        )
        self.pipeline = Pipeline(preset.get("steps", []))
        self.keep_device_time = preset.get("device_time", True)
        self.routes = routes
        self.sequences = sequences
        self.counters: Counter = Counter()
        self._problems = ThrottledLog(log)
        # Each routed sink once, for settle(); a refusal by a "block" sink since the last one.
        self._sinks = list({id(sink): sink for sink, _route in routes}.values())
        self._refused = False
        self._ts = self._rounded_ts = None  # lines of one chunk share their receive time

    def on_line(self, text: str, ts: float) -> None:
        """A line from a line-framed source: parse it, then on to on_data."""
        try:
            data = self.parse(text)
        except ParseError as error:
            self.counters["parse_errors"] += 1
            self._problems.warning("parse", "source %s: bad line dropped: %s", self.device, error)
            return
        self.counters["parsed"] += 1  # "lines" is the source's count of lines received
        stream = data.pop("stream", None)
        device_time = data.pop("dts", None)
        self.on_data(data, ts, stream=stream, device_time=device_time)

    def on_data(
        self,
        data: dict[str, Any],
        ts: float,
        stream: str | None = None,
        device_time: Any = None,
        device: str | None = None,
    ) -> None:
        """One record of named values (a parsed line, or a reading from a COBS frame)."""
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
        try:
            readings = self.pipeline.process(reading)
        except Exception as error:  # a step bug must not stop the source; say which record
            self.counters["pipeline_errors"] += 1
            self._problems.warning(
                "pipeline", "source %s: pipeline failed on %r: %s", self.device, data, error
            )
            return
        self._emit(readings)

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
        return min((sink.room for sink in self._sinks), default=UNBOUNDED)

    def flush(self) -> None:
        """Emit what stateful steps (windows) still hold; called at shutdown."""
        self._emit(self.pipeline.flush())

    def _emit(self, readings: list[dict]) -> None:
        for reading in readings:
            reading["seq"] = self.sequences.next(reading["device"], reading["stream"])
            self.counters["readings"] += 1
            for sink, route in self.routes:
                if not sink.offer(reading, route) and sink.overflow == "block":
                    self.counters["refused"] += 1
                    self._refused = True
