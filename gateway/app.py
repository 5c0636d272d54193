"""Wiring: builds sinks, sources and their ingest paths from a validated config and runs them."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from typing import Any

from gateway import sinks as sink_registry
from gateway.api.server import ApiServer
from gateway.config import presets
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
        self.api = ApiServer(config["api"]["listen"])
        self.sinks: dict[str, Sink] = {
            name: sink_registry.create(name, options, self.gateway_id, self.api)
            for name, options in config["sinks"].items()
        }
        self.sequences = SequenceStore(os.path.join(self.data_dir, "sequences.json"))
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
        self.sources.append(_serial_source(source, ingest, self.device_sessions))

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
            "readings": sum(ingest.counters["readings"] for ingest in self.ingests),
            "parse_errors": sum(ingest.counters["parse_errors"] for ingest in self.ingests),
            "delivered": {name: sink.counters["delivered"] for name, sink in self.sinks.items()},
        }
        return {
            "gateway": self.gateway_id,
            "sources": sources,
            "sinks": sinks,
            "store": self.buffers.stats(),
            "totals": totals,
        }

    def health(self) -> dict[str, Any]:
        components = {f"source:{source.name}": source.state for source in self.sources}
        components.update(
            {
                f"sink:{name}": "connected" if sink.connected else "disconnected"
                for name, sink in self.sinks.items()
            }
        )
        ready = all(state in ("connected",) for state in components.values())
        store = self.buffers.health()
        if store is not None:  # the disk buffer degrades durability, not readiness
            components["store"] = store
        status = "degraded" if store and store != "ok" else "ok"
        return {"status": status, "ready": ready, "components": components}

    def _health_response(self, request: Any) -> tuple[int, dict[str, str], bytes]:
        body = json.dumps({**self.health(), "stats": self.stats()}).encode()
        return 200, {"Content-Type": "application/json"}, body


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
    source: dict[str, Any], ingest: Ingest, sessions: dict[str, list]
) -> SerialSource:
    if source.get("framing") != "cobs":
        return SerialSource(source, ingest.on_line, room=ingest.room)
    link = CobsLink(source["name"], memory=sessions, accepting=ingest.accepting)
    handler = CobsHandler(link, ingest.on_data, ingest.settle)
    return SerialSource(source, ingest.on_line, handler=handler)
