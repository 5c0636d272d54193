"""Sinks: where readings go. `create` builds one from its validated config."""

from __future__ import annotations

from typing import Any

from gateway.sinks.base import Sink, SinkError

IMPLEMENTED_TYPES = ("mqtt", "udp", "websocket", "sse", "webhook", "recorder")


def create(name: str, options: dict[str, Any], gateway_id: str, api: Any = None) -> Sink:
    """Build the sink of options["type"]; raises ValueError for a type not available yet."""
    kind = options["type"]
    if kind == "mqtt":
        from gateway.sinks.mqtt import MqttSink

        return MqttSink(name, options, gateway_id)
    if kind == "udp":
        from gateway.sinks.udp import UdpSink

        return UdpSink(name, options, gateway_id)
    if kind == "websocket":
        from gateway.sinks.websocket import WebSocketSink

        return WebSocketSink(name, options, gateway_id, api)
    if kind == "sse":
        from gateway.sinks.sse import SseSink

        return SseSink(name, options, gateway_id, api)
    if kind == "webhook":
        from gateway.sinks.webhook import WebhookSink

        return WebhookSink(name, options, gateway_id)
    if kind == "recorder":
        from gateway.sinks.recorder import RecorderSink

        return RecorderSink(name, options, gateway_id)
    raise ValueError(
        f"sinks.{name}.type: {kind!r} is not available in this version "
        f"(available: {', '.join(IMPLEMENTED_TYPES)})"
    )


__all__ = ["Sink", "SinkError", "create", "IMPLEMENTED_TYPES"]
