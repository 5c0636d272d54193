"""Wiring: builds sinks, sources and their ingest paths from a validated config and runs them."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from gateway import health, reconfigure, systemd
from gateway import sinks as sink_registry
from gateway.api.security import Security
from gateway.api.server import ApiServer
from gateway.clock import ClockWatch
from gateway.config import ConfigError, check_file, load, presets
from gateway.ingest import Ingest, resolve_routes
from gateway.sessions import Sessions
from gateway.sinks.base import Sink
from gateway.sources.cobs_link import CobsHandler, CobsLink
from gateway.sources.serial import SerialSource
from gateway.sources.simulator import SimulatedDevice
from gateway.store.queues import BufferStore
from gateway.store.sequences import SequenceStore

log = logging.getLogger("gateway.app")


class Gateway:
    """The running gateway: one task per sink and per source, an API listener, clean stop."""

    def __init__(self, config: dict[str, Any], config_path: str | None = None):
        self.config = config
        self.config_path = config_path  # what reload_file() reads; None: embedded defaults
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
        self._presets: list[dict[str, Any]] = []  # per ingest, its resolved preset
        self._models: dict[str, str] = {}  # per source, its model (for Home Assistant)
        self._discover: dict[str, bool] = {}  # per source, whether its preset says discovery
        self._devices: dict[str, SimulatedDevice] = {}  # per simulated source, its device
        # framing "cobs": per device id its boot and last accepted seq, shared by all ports
        self.device_sessions: dict[str, list] = {}
        # Logs wall-clock jumps; while the kernel says the clock is not synchronised, the
        # ingests mark their readings (see _clock_status).
        self.clock = ClockWatch(on_change=self._clock_status)
        for source in config["sources"]:
            if source.get("enabled", True):
                self._add_source(source)
        self.buffers = _buffer_store(config["gateway"])
        # Per sink, the strongest buffer policy among the presets routing to it.
        self.buffers.attach(self.sinks, reconfigure.sink_policies(config))
        self.api.add_http("GET", "/api/v1/health", self._health_response)
        self._tasks: list[asyncio.Task] = []
        self._sink_lock = asyncio.Lock()  # one runtime change of the sinks at a time
        self.sessions = Sessions(self.data_dir, self.gateway_id, self.sinks, self.ingests)
        self._running = False
        self.systemd = systemd.Supervisor(self)  # sd_notify, when systemd runs the gateway

    def _add_source(self, source: dict[str, Any]) -> None:
        preset = presets.resolve(self.config, source["preset"])
        routes = resolve_routes(preset, self.sinks)
        if not routes:
            log.warning(
                "source %s: preset %s routes to no configured sink", source["name"], preset["name"]
            )
        ingest = Ingest(_ingest_options(source), preset, routes, self.gateway_id, self.sequences)
        ingest.unsynced = self.clock.unsynced
        if source.get("simulate"):
            device = SimulatedDevice(source["simulate"]["profile"], source["simulate"]["rate"])
            self.simulated.append(device)
            self._devices[source["name"]] = device
            source = {**source, "port": device.path}
        self.ingests.append(ingest)
        self._presets.append(preset)
        on_event = self._watch_device(source, preset, ingest)
        self.sources.append(_serial_source(source, ingest, self.device_sessions, on_event))

    def _watch_device(self, source: dict[str, Any], preset: dict[str, Any], ingest: Ingest) -> Any:
        """The MQTT sinks routed to publish the device's status, which follows the source's
        link (the returned event handler), and announce it to Home Assistant when its
        preset says discovery = true. The sinks are looked up in the ingest's routes at each
        event: a sink rebuilt at runtime is announced to again (see _announce)."""
        name = source["name"]
        self._models[name] = f"{source.get('framing', 'lines')} device on a serial port"
        self._discover[name] = bool(preset.get("discovery"))
        self._announce(name, ingest.routes)

        def on_event(state: str, detail: dict[str, Any]) -> None:
            for sink in _watchers(ingest.routes):
                sink.device_link(source["name"], state == "connected")

        return on_event

    def _clock_status(self, unsynced: bool) -> None:
        for ingest in self.ingests:
            ingest.unsynced = unsynced

    def _announce(self, device: str, routes: list) -> None:
        for sink in _watchers(routes):
            sink.watch_device(device, self._models[device], self.data_dir, self._discover[device])

    async def run(self, stop: asyncio.Event) -> None:
        """Run until `stop` is set, then shut down in order: sources, pipelines, sinks."""
        await self.api.start()
        self._running = True
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
        await self.sessions.start()
        self._tasks.append(asyncio.create_task(self.systemd.run(), name="systemd"))
        self._tasks.append(asyncio.create_task(self.clock.run(), name="clock"))
        await stop.wait()
        await self.shutdown()

    # -- runtime changes of the sinks (the control plane's PATCH, POST and DELETE) --------
    async def set_sink_enabled(self, name: str, enabled: bool) -> None:
        """Disable a sink (it keeps buffering) or enable it again (it drains its buffer)."""
        # One change at a time: an enable during a disable would start a second sender.
        async with self._sink_lock:
            await self._set_enabled(self.sinks[name], enabled)

    async def _set_enabled(self, sink: Sink, enabled: bool) -> None:
        if not enabled:
            await sink.disable()
            return
        task = sink.enable()
        if task is not None:
            self._tasks.append(task)

    async def add_sink(self, name: str, options: dict[str, Any]) -> Sink:
        """A new sink from validated options: buffered as the presets routing to it say,
        routed to from the next reading on, started. ValueError when it cannot be built."""
        async with self._sink_lock:
            if name in self.sinks or self.sessions.owns_sink(name):
                raise ValueError(f"name: a sink named {name!r} exists already")
            self._check_path(name, options)
            sink = sink_registry.create(name, options, self.gateway_id, self.api)
            with_it = {**self.config, "sinks": {**self.config["sinks"], name: options}}
            policy = reconfigure.sink_policies(with_it).get(name, "none")
            self.buffers.attach_one(sink, policy)
            self.sinks[name] = sink
            self.config["sinks"][name] = options  # what runs: a reload compares against it
            self._reroute()
            self._start_sink(sink)
            log.info("sink %s added (%s)", name, sink.kind)
            return sink

    async def remove_sink(self, name: str, purge: bool = False) -> int:
        """Stop routing to a sink and stop it; its disk buffer stays for a sink of the same
        name later unless `purge`. Returns the readings purged."""
        async with self._sink_lock:
            sink = self.sinks.pop(name)
            self.config["sinks"].pop(name, None)
            self._reroute()
            await sink.stop()
            purged = await self.buffers.purge(name) if purge else 0
            log.info("sink %s removed; %d buffered readings purged", name, purged)
            return purged

    async def reconfigure_sink(self, name: str, options: dict[str, Any]) -> Sink:
        """Rebuild a sink with new options (a broker URL, credentials, targets) without
        losing what it buffers: the old sender ends and gives back what it had in flight,
        the new sink takes over the same queue, then the routes move to it."""
        async with self._sink_lock:
            old = self.sinks[name]
            self._check_path(name, options)
            enabled = options.get("enabled", True)
            await old.disable()  # ends its sender; readings keep queueing meanwhile
            try:
                new = sink_registry.create(name, options, self.gateway_id, self.api)
            except ValueError:
                await self._set_enabled(old, True)
                raise
            new.take_over(old)
            self.sinks[name] = new
            self.config["sinks"][name] = options
            self._reroute()
            self._reannounce({name: new})
            if enabled:
                self._start_sink(new)
            else:
                new.mark_disabled()
            log.info("sink %s reconfigured; %d readings carried over", name, new.queue.depth)
            return new

    # -- a changed config file (POST /config/reload, SIGHUP) --------------------------------
    async def reload(self, config: dict[str, Any]) -> dict[str, Any]:
        """Apply a validated config as a whole: sinks added, removed or rebuilt (keeping
        what they buffer), sources whose table or preset changed restarted, API tokens and
        rate limits replaced. ConfigError when it changes what takes a restart; ValueError
        when a sink cannot be built: then nothing has changed."""
        change = reconfigure.plan(self.config, config)
        taken = [name for name in change.sinks_added if self.sessions.owns_sink(name)]
        change.errors += [
            f"sinks.{name}: a running session owns a sink of that name" for name in taken
        ]
        if change.errors:
            raise ConfigError(change.errors, "reload")
        # Everything that can refuse is built before anything changes.
        security = Security(config["api"]) if change.api_changed else None  # ValueError
        async with self._sink_lock:
            built = {
                name: sink_registry.create(name, config["sinks"][name], self.gateway_id, self.api)
                for name in change.sinks_added + change.sinks_changed
            }
            if security is not None:
                self.api.use_security(security)
            for name in change.sources_removed + change.sources_changed:
                await self._remove_source(name)
            for name in change.sinks_removed:
                await self.sinks.pop(name).stop()
            for name in change.sinks_changed:
                old = self.sinks[name]
                await old.disable()
                built[name].take_over(old)
                self.sinks[name] = built[name]
            policies = reconfigure.sink_policies(config)
            for name in change.sinks_added:
                self.buffers.attach_one(built[name], policies.get(name, "none"))
                self.sinks[name] = built[name]
            self.config = config
            for source in config["sources"]:
                if source["name"] in change.sources_added + change.sources_changed:
                    self._add_source(source)
                    await self._start_source(len(self.sources) - 1)
            self._reroute()
            self._reannounce(built)
            for name, sink in built.items():
                if config["sinks"][name].get("enabled", True):
                    self._start_sink(sink)
                else:
                    sink.mark_disabled()
        log.info("config reloaded: %s", json.dumps(change.summary()))
        return change.summary()

    async def reload_file(self) -> dict[str, Any]:
        """reload() from the file the gateway was started with, checked as `gateway check`
        checks it; ConfigError with every problem, and then nothing has changed."""
        if self.config_path is None:
            message = "this gateway runs on embedded defaults: there is no file to reload"
            raise ConfigError([message], "reload")
        errors = check_file(self.config_path)
        if errors:
            raise ConfigError(errors, self.config_path)
        return await self.reload(load(self.config_path))

    async def _remove_source(self, name: str) -> None:
        index = [source.name for source in self.sources].index(name)
        source = self.sources.pop(index)
        ingest = self.ingests.pop(index)
        self._presets.pop(index)
        await source.stop()
        device = self._devices.pop(name, None)
        if device is not None:
            self.simulated.remove(device)
            await device.stop()
        ingest.flush()

    async def _start_source(self, index: int) -> None:
        source = self.sources[index]
        device = self._devices.get(source.name)
        if device is not None:
            await device.start()
        self._tasks.append(asyncio.create_task(source.run(), name=f"source-{source.name}"))

    def _reannounce(self, rebuilt: dict[str, Sink]) -> None:
        """Sinks built anew watch (and announce) the devices routed to them again."""
        fresh = {id(sink) for sink in rebuilt.values()}
        for source, ingest in zip(self.sources, self.ingests):
            routes = [(sink, route) for sink, route in ingest.routes if id(sink) in fresh]
            self._announce(source.name, routes)

    def _check_path(self, name: str, options: dict[str, Any]) -> None:
        """A WebSocket or SSE sink added or changed at runtime must not take another's path
        (the config validator checks this across a whole file)."""
        path = options.get("path") if options["type"] in ("websocket", "sse") else None
        for other, sink in self.sinks.items():
            if path and other != name and getattr(sink, "path", None) == path:
                raise ValueError(f"path: {path} is served by sink {other} already")

    def _start_sink(self, sink: Sink) -> None:
        if self._running:
            self._tasks.append(asyncio.create_task(sink.run(), name=f"sink-{sink.name}"))

    def _reroute(self) -> None:
        """Every ingest and session routes to the sinks as they are now."""
        for ingest, preset in zip(self.ingests, self._presets):
            ingest.set_routes(resolve_routes(preset, self.sinks))
        self.sessions.reroute()

    async def shutdown(self) -> None:
        log.info("gateway %s stopping", self.gateway_id)
        self.systemd.stopping()
        for source in self.sources:
            await source.stop()
        for device in self.simulated:
            await device.stop()
        for ingest in self.ingests:
            ingest.flush()
        await self.sessions.stop()
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
        """See gateway.health: the status, readiness and why, per source and sink."""
        return health.of(self)

    def _health_response(self, request: Any) -> tuple[int, dict[str, str], bytes]:
        body = json.dumps({**self.health(), "stats": self.stats()}).encode()
        return 200, {"Content-Type": "application/json"}, body


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


def _watchers(routes: list) -> list:
    """The routed sinks that announce devices to Home Assistant, each once."""
    return list(dict.fromkeys(sink for sink, _route in routes if hasattr(sink, "watch_device")))


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
