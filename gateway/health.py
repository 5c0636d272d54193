"""What GET /api/v1/health says: each source's and sink's state, why it needs a look, the
gateway's status."""

from __future__ import annotations

from typing import Any

from gateway.core.breaker import OPEN
from gateway.sinks.base import Sink

# A sink's buffer this full (of its queue_size in memory, or of its max_bytes on disk) makes
# the gateway "degraded": it is behind, and at the bound its overflow policy acts.
BUFFER_WARN = 0.8


def of(gateway: Any) -> dict[str, Any]:
    """`status` is "ok", "degraded" (something needs a look: a source waiting for its
    device, a sink disconnected or its breaker open, a buffer past BUFFER_WARN of its
    bound, the disk store failed) or "failing" (nothing can be delivered: no enabled
    sink is connected, or no reading can be numbered). `reasons` says why, per
    component that is not fine; `ready` is every source and sink connected."""
    components: dict[str, str] = {}
    reasons: dict[str, str] = {}
    for source in gateway.sources:
        key = f"source:{source.name}"
        components[key] = source.state
        if source.state != "connected" and source.state != "stopped":
            reasons[key] = source.follow_hint or "waiting for its device"
    for name, sink in gateway.sinks.items():
        key = f"sink:{name}"
        components[key], reason = _sink_health(sink)
        if reason:
            reasons[key] = reason
    ready = all(state == "connected" for state in components.values())
    store = gateway.buffers.health()
    if store is not None:  # the disk buffer degrades durability, not readiness
        components["store"] = store
        if store != "ok":
            reasons["store"] = store
    components["sequences"] = gateway.sequences.health()
    if components["sequences"] != "ok":
        reasons["sequences"] = components["sequences"] + " (sources pause: no numbers)"
    return {
        "status": _status(gateway.sinks.values(), reasons),
        "ready": ready,
        "components": components,
        "reasons": reasons,
    }


def _status(sinks: Any, reasons: dict[str, str]) -> str:
    enabled = [sink for sink in sinks if sink.enabled]
    if "sequences" in reasons or (enabled and not any(s.connected for s in enabled)):
        return "failing"
    return "degraded" if reasons else "ok"


def _sink_health(sink: Sink) -> tuple[str, str | None]:
    """(state, reason when it needs a look) of one sink."""
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
