"""GET /api/v1/metrics: the gateway's counters in the Prometheus text format (prometheus-client).

Nothing is counted twice: the collector reads the counters the sources, ingests and sinks
keep anyway, at scrape time, so metrics cost nothing per reading.
"""

from __future__ import annotations

from typing import Any, Iterator

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from gateway.core.breaker import CLOSED, HALF_OPEN, OPEN

BREAKER_STATES = (CLOSED, OPEN, HALF_OPEN)
# Line-level losses a source counts itself, beside the lines its parser refused.
SOURCE_REJECTS = ("oversize", "invalid_utf8")
CONTENT_TYPE = CONTENT_TYPE_LATEST


class GatewayCollector:
    """Turns Gateway.stats() into metric families at each scrape."""

    def __init__(self, gateway: Any):
        self.gateway = gateway

    def collect(self) -> Iterator[Metric]:
        stats = self.gateway.stats()
        yield from _source_metrics(stats["sources"])
        yield from _sink_metrics(stats["sinks"])
        yield _latency_metric(self.gateway.sinks)
        yield from _state_metrics(stats["store"], stats["sequences"])


def _state_metrics(store: dict[str, Any], sequences: dict[str, Any]) -> Iterator[Metric]:
    """Whether the disk store and the sequence reservation work: 1 ok, 0 failed (a full
    disk shows here first); the store is absent when no sink uses the disk."""
    healthy = GaugeMetricFamily(
        "gateway_component_ok",
        "1 while the component works, 0 while it fails (the reason is in /health)",
        labels=["component"],
    )
    states = {"store": store["state"], "sequences": sequences["state"]}
    for component, state in states.items():
        if state != "unused":
            healthy.add_metric([component], 1 if state == "ok" else 0)
    failures = CounterMetricFamily(
        "gateway_sequence_reservation_write_failures",
        "Writes of the sequence reservation file that failed",
    )
    failures.add_metric([], sequences.get("write_failures", 0))
    return healthy, failures


def _source_metrics(sources: dict[str, dict[str, Any]]) -> Iterator[Metric]:
    readings = CounterMetricFamily(
        "gateway_readings",
        "Readings out of a source's pipeline, toward its sinks",
        labels=["source"],
    )
    errors = CounterMetricFamily(
        "gateway_parse_errors",
        "Lines or records of a source dropped before becoming readings, by reason",
        labels=["source", "reason"],
    )
    invalid = CounterMetricFamily(
        "gateway_invalid_readings",
        "Failed checks of validate steps (a reading may fail several), by reason and field",
        labels=["source", "reason", "field"],
    )
    connected = GaugeMetricFamily(
        "gateway_source_connected", "1 while the source's port is open", labels=["source"]
    )
    for name, source in sources.items():
        for check, count in source.get("invalid", {}).items():
            reason, _, field = check.partition(":")
            invalid.add_metric([name, reason, field], count)
        readings.add_metric([name], source.get("readings", 0))
        errors.add_metric([name, "unparsable"], source.get("parse_errors", 0))
        errors.add_metric([name, "pipeline"], source.get("pipeline_errors", 0))
        for reason in SOURCE_REJECTS:
            errors.add_metric([name, reason], source.get(reason, 0))
        connected.add_metric([name], 1 if source.get("state") == "connected" else 0)
    return readings, errors, invalid, connected


def _sink_metrics(sinks: dict[str, dict[str, Any]]) -> Iterator[Metric]:
    delivered = CounterMetricFamily(
        "gateway_sink_delivered", "Readings a sink confirmed delivered", labels=["sink"]
    )
    dropped = CounterMetricFamily(
        "gateway_sink_dropped",
        "Readings a sink or its buffer dropped, by reason",
        labels=["sink", "reason"],
    )
    depth = GaugeMetricFamily(
        "gateway_sink_buffer_readings", "Readings waiting in a sink's buffer", labels=["sink"]
    )
    size = GaugeMetricFamily(
        "gateway_sink_buffer_bytes", "Bytes a sink's buffer holds on disk", labels=["sink"]
    )
    breaker = GaugeMetricFamily(
        "gateway_sink_breaker_state",
        "1 for the state a sink's circuit breaker is in, 0 for the others",
        labels=["sink", "state"],
    )
    connected = GaugeMetricFamily(
        "gateway_sink_connected", "1 while the sink is connected", labels=["sink"]
    )
    for name, sink in sinks.items():
        delivered.add_metric([name], sink.get("delivered", 0))
        for reason, count in sorted(_drops(sink).items()):
            dropped.add_metric([name, reason], count)
        buffer = sink.get("buffer") or {}
        depth.add_metric([name], buffer.get("depth", sink.get("queue_depth", 0)))
        size.add_metric([name], buffer.get("bytes", 0))
        for state in BREAKER_STATES:
            breaker.add_metric([name, state], 1 if sink["breaker"]["state"] == state else 0)
        connected.add_metric([name], 1 if sink.get("connected") else 0)
    return delivered, dropped, depth, size, breaker, connected


def _latency_metric(sinks: dict[str, Any]) -> Metric:
    latency = HistogramMetricFamily(
        "gateway_sink_delivery_latency_seconds",
        "From a reading's receipt to its sink confirming it, observed once per confirmed "
        "batch with its oldest reading",
        labels=["sink"],
    )
    for name, sink in sinks.items():
        histogram = sink.latency
        latency.add_metric([name], histogram.cumulative(), histogram.sum)
    return latency


def _drops(sink: dict[str, Any]) -> dict[str, int]:
    """The buffer's drops by reason, and the sink's own dropped_* counters."""
    drops = dict((sink.get("buffer") or {}).get("drops") or {})
    for key, value in sink.items():
        if key.startswith("dropped_") and isinstance(value, int):
            reason = key[len("dropped_") :]
            drops[reason] = drops.get(reason, 0) + value
    return drops


class Metrics:
    """A registry of its own (not the process-global one): this gateway's metrics and the
    process's RSS and CPU seconds."""

    def __init__(self, gateway: Any, content_type: str = CONTENT_TYPE):
        self.content_type = content_type
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(GatewayCollector(gateway))
        ProcessCollector(registry=self.registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)
