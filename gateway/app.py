"""Wiring: builds sinks, sources and their ingest paths from a validated config and runs them."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from gateway import sinks as sink_registry
from gateway.api.server import ApiServer
from gateway.config import presets
from gateway.core.breaker import OPEN
from gateway.ingest import Ingest, resolve_routes
from gateway.sinks.base import Sink
from gateway.sources.cobs_link import CobsHandler, CobsLink
from gateway.sources.serial import SerialSource
from gateway.sources.simulator import SimulatedDevice
from gateway.store.queues import BufferStore, strongest
from gateway.store.sequences import SequenceStore

log = logging.getLogger("gateway.app")


class Gateway:
    """The running gateway: one task per sink and per source, an API listener, clean stop."""

    def __init__(self, config: dict[str, Any]):
        self.config = config
        self.gateway_id = config["gateway"]["id"]
        self.data_dir = config["gateway"]["data_dir"]
        self.api = ApiServer(api=config["api"])
        self.sinks: dict[str, Sink] = {
            name: sink_registry.create(name, options, self.gateway_id, self.api)
            for name, options in config["sinks"].items()
        }
        self.sequences = SequenceStore.in_directory(self.data_dir)
        self.simulated: list[SimulatedDevice] = []
        self.sources: list[SerialSource] = []
        self.ingests: list[Ingest] = []
        self._policies: dict[str, str] = {}  # sink → strongest buffer policy routed to it
        # framing "cobs": per device id its boot and last accepted seq, shared by all ports
        self.device_sessions: dict[str, list] = {}
        for source in config["sources"]:
            if source.get("enabled", True):
                self._add_source(source)
        self.buffers = _buffer_store(config["gateway"])
        self.buffers.attach(self.sinks, self._policies)
        self.api.add_http("GET", "/api/v1/health", self._health_response)
        self._tasks: list[asyncio.Task] = []
        self._sink_locks: dict[str, asyncio.Lock] = {}

    def _add_source(self, source: dict[str, Any]) -> None:
        preset = presets.resolve(self.config, source["preset"])
        routes = resolve_routes(preset, self.sinks)
        if not routes:
            log.warning(
                "source %s: preset %s routes to no configured sink", source["name"], preset["name"]
            )
        for sink, _route in routes:
            policies = (self._policies.get(sink.name, "none"), preset["buffer"])
            self._policies[sink.name] = strongest(policies)
        ingest = Ingest(_ingest_options(source), preset, routes, self.gateway_id, self.sequences)
        if source.get("simulate"):
            device = SimulatedDevice(source["simulate"]["profile"], source["simulate"]["rate"])
            self.simulated.append(device)
            source = {**source, "port": device.path}
        self.ingests.append(ingest)
        on_event = self._discovery(source, preset, routes)
        self.sources.append(_serial_source(source, ingest, self.device_sessions, on_event))

    def _discovery(self, source: dict[str, Any], preset: dict[str, Any], routes: list) -> Any:
        """discovery = true: the MQTT sinks announce the device to Home Assistant and publish
        its status, which follows the source's link (the returned event handler)."""
        if not preset.get("discovery"):
            return None
        watchers = [sink for sink, _route in routes if hasattr(sink, "watch_device")]
        model = f"{source.get('framing', 'lines')} device on a serial port"
        for sink in dict.fromkeys(watchers):
            sink.watch_device(source["name"], model, self.data_dir)

        def on_event(state: str, detail: dict[str, Any]) -> None:
            for sink in watchers:
                sink.device_link(source["name"], state == "connected")

        return on_event if watchers else None

    async def run(self, stop: asyncio.Event) -> None:
        """Run until `stop` is set, then shut down in order: sources, pipelines, sinks."""
        await self.api.start()
        log.info(
            "gateway %s running: %d sources, %d sinks, API on http://%s:%d",
            self.gateway_id,
            len(self.sources),
            len(self.sinks),
            self.api.host,
            self.api.port,
        )
        self._tasks = [
            asyncio.create_task(sink.run(), name=f"sink-{sink.name}")
            for sink in self.sinks.values()
        ]
        for device in self.simulated:
            await device.start()
        self._tasks += [
            asyncio.create_task(source.run(), name=f"source-{source.name}")
            for source in self.sources
        ]
        await stop.wait()
        await self.shutdown()

    async def set_sink_enabled(self, name: str, enabled: bool) -> None:
        """Disable a sink (it keeps buffering) or enable it again (it drains its buffer)."""
        sink = self.sinks[name]
        # One change at a time per sink: an enable during a disable would start a second sender.
        lock = self._sink_locks.setdefault(name, asyncio.Lock())
        async with lock:
            if not enabled:
                await sink.disable()
                return
            task = sink.enable()
            if task is not None:
                self._tasks.append(task)

    async def shutdown(self) -> None:
        log.info("gateway %s stopping", self.gateway_id)
        for source in self.sources:
            await source.stop()
        for device in self.simulated:
            await device.stop()
        for ingest in self.ingests:
            ingest.flush()
        await asyncio.gather(*(sink.stop() for sink in self.sinks.values()), return_exceptions=True)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.buffers.close()
        self.sequences.close()
        await self.api.stop()
        log.info("gateway %s stopped: %s", self.gateway_id, json.dumps(self.stats()["totals"]))

    def stats(self) -> dict[str, Any]:
        sources = {}
        for source, ingest in zip(self.sources, self.ingests):
            sources[source.name] = {**source.stats(), **ingest.counters}
        sinks = {name: sink.stats() for name, sink in self.sinks.items()}
        totals = {
            # From the sources' counters above: one snapshot of each ingest's counts.
            "readings": sum(counters.get("readings", 0) for counters in sources.values()),
            "parse_errors": sum(counters.get("parse_errors", 0) for counters in sources.values()),
            "dropped_lines": _dropped_lines(sources.values()),
            "delivered": {name: sink.counters["delivered"] for name, sink in self.sinks.items()},
        }
        return {
            "gateway": self.gateway_id,
            "sources": sources,
            "sinks": sinks,
            "store": self.buffers.stats(),
            "sequences": self.sequences.stats(),
            "totals": totals,
        }

    def health(self) -> dict[str, Any]:
        """`status` is "ok", "degraded" (something needs a look: a source waiting for its
        device, a sink disconnected or its breaker open, a buffer past BUFFER_WARN of its
        bound, the disk store failed) or "failing" (nothing can be delivered: no enabled
        sink is connected, or no reading can be numbered). `reasons` says why, per
        component that is not fine; `ready` is every source and sink connected."""
        components: dict[str, str] = {}
        reasons: dict[str, str] = {}
        for source in self.sources:
            key = f"source:{source.name}"
            components[key] = source.state
            if source.state != "connected" and source.state != "stopped":
                reasons[key] = source.follow_hint or "waiting for its device"
        for name, sink in self.sinks.items():
            key = f"sink:{name}"
            components[key], reason = _sink_health(sink)
            if reason:
                reasons[key] = reason
        ready = all(state == "connected" for state in components.values())
        store = self.buffers.health()
        if store is not None:  # the disk buffer degrades durability, not readiness
            components["store"] = store
            if store != "ok":
                reasons["store"] = store
        components["sequences"] = self.sequences.health()
        if components["sequences"] != "ok":
            reasons["sequences"] = components["sequences"] + " (sources pause: no numbers)"
        return {
            "status": self._status(reasons),
            "ready": ready,
            "components": components,
            "reasons": reasons,
        }

    def _status(self, reasons: dict[str, str]) -> str:
        enabled = [sink for sink in self.sinks.values() if sink.enabled]
        if "sequences" in reasons or (enabled and not any(s.connected for s in enabled)):
            return "failing"
        return "degraded" if reasons else "ok"

    def _health_response(self, request: Any) -> tuple[int, dict[str, str], bytes]:
        body = json.dumps({**self.health(), "stats": self.stats()}).encode()
        return 200, {"Content-Type": "application/json"}, body


# A sink's buffer this full (of its queue_size in memory, or of its max_bytes on disk) makes
# the gateway "degraded": it is behind, and at the bound its overflow policy acts.
BUFFER_WARN = 0.8


def _sink_health(sink: Sink) -> tuple[str, str | None]:
    """(state, reason when it needs a look) of one sink for health()."""
    if not sink.enabled:
        return "disabled", None  # asked for (PATCH /sinks): not a fault
    if sink.breaker.state == OPEN:
        retry = round(sink.breaker.remaining(), 3)
        reason = (
            f"breaker open after repeated failures ({sink.last_error}); next try in {retry:g} s"
        )
        return "breaker open", reason
    if not sink.connected:
        return "disconnected", f"disconnected ({sink.last_error or 'not connected yet'})"
    return "connected", _buffer_reason(sink, sink.queue.stats())


def _buffer_reason(sink: Sink, buffer: dict[str, Any]) -> str | None:
    memory = buffer.get("memory", 0) / max(1, sink.capacity)
    max_bytes = (sink.options.get("buffer") or {}).get("max_bytes") or 0
    disk = buffer.get("bytes", 0) / max_bytes if max_bytes and buffer.get("disk") else 0.0
    fill = max(memory, disk)
    if fill < BUFFER_WARN:
        return None
    where = "on disk, of max_bytes" if disk >= memory else "in memory, of queue_size"
    return f"buffer {fill:.0%} full ({where}); behind its sources"


# Why a line or record never became a reading: the source's rejects, then the ingest's.
DROPPED_LINE_REASONS = (
    "oversize",
    "invalid_utf8",
    "partial_at_disconnect",
    "parse_errors",
    "pipeline_errors",
    "skipped",
    "unnumbered",
)


def _dropped_lines(sources: Any) -> dict[str, int]:
    """Every line dropped by all sources, by reason (what the stop summary adds up)."""
    totals = dict.fromkeys(DROPPED_LINE_REASONS, 0)
    for counters in sources:
        for reason in DROPPED_LINE_REASONS:
            totals[reason] += counters.get(reason, 0)
    return totals


def _buffer_store(gateway: dict[str, Any]) -> BufferStore:
    return BufferStore(
        gateway["data_dir"],
        fsync=gateway.get("fsync", "always"),
        commit_interval=gateway.get("commit_interval", 0.05),
    )


# -- framing = "cobs": our wire protocol ----------------------------------------------------


def _ingest_options(source: dict[str, Any]) -> dict[str, Any]:
    # A cobs device sends structured records (Ingest.on_data), never lines: the line parser
    # Ingest builds is unused, but it must be buildable.
    if source.get("framing") == "cobs":
        return {**source, "format": "json"}
    return source


def _serial_source(
    source: dict[str, Any], ingest: Ingest, sessions: dict[str, list], on_event: Any = None
) -> SerialSource:
    if source.get("framing") != "cobs":
        return SerialSource(source, ingest.on_line, on_event, room=ingest.room)
    link = CobsLink(source["name"], memory=sessions, accepting=ingest.accepting)
    handler = CobsHandler(link, ingest.on_data, ingest.settle)
    return SerialSource(source, ingest.on_line, on_event, handler=handler)
