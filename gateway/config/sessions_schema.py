"""A distribution session's request body (POST /api/v1/sessions), checked like the TOML."""

from __future__ import annotations

from typing import Any, Mapping

from gateway.config.checks import POSITIVE_INT, duration, name, string_list
from gateway.config.presets_schema import route_table, steps_list
from gateway.config.report import ConfigError, Got, Invalid, Report, Section, item, join
from gateway.config.sinks_schema import sink_options
from gateway.core.routing import check_filter

SESSION_KEYS = ("name", "select", "steps", "sinks", "routes", "duration", "max_readings")
# What a session can own: sinks that write where the session says and serve nothing on the
# gateway's listener (WebSocket and SSE paths belong to the configured sinks).
SESSION_SINK_TYPES = ("udp", "recorder", "webhook")


def validate_session(
    raw: Any, configured: Mapping[str, Mapping[str, Any]], gateway: Mapping[str, Any]
) -> dict[str, Any]:
    """The normalised session, or ConfigError with every problem by its key path."""
    report = Report()
    section = Section(report, "", raw, SESSION_KEYS)
    spec: dict[str, Any] = {
        "name": section.get("name", name, required=section.valid),
        "select": _select(section),
        "steps": steps_list(section, "steps") or [],
        "sinks": _sinks(section, gateway),
        "duration": section.get("duration", duration(positive=True)),
        "max_readings": section.get("max_readings", POSITIVE_INT),
    }
    targets = {**configured, **spec["sinks"]}
    spec["routes"] = _routes(section, targets)
    if report.errors:
        raise ConfigError(report.errors, "session")
    return spec


def _select(section: Section) -> list[str]:
    filters = section.get("select", string_list("an array of device/stream topic filters")) or []
    for index, topic_filter in enumerate(filters):
        try:
            check_filter(topic_filter)
        except ValueError as error:
            section.report.add(item(section.at("select"), index), str(error))
    return filters


def _sinks(section: Section, gateway: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    raw = section.raw.get("sinks", {})
    if not isinstance(raw, dict):
        section.report.expected("sinks", "a table of sinks by name", raw)
        return {}
    owned = {}
    for sink_name, table in raw.items():
        path = join("sinks", sink_name)
        try:
            name(sink_name)
        except Invalid:
            section.report.expected(path, "a sink name of letters, digits, _, - and .")
            continue
        kind = table.get("type") if isinstance(table, dict) else None
        if kind is not None and kind not in SESSION_SINK_TYPES:
            expected = "one of " + ", ".join(SESSION_SINK_TYPES) + " (a session's own sinks)"
            section.report.expected(join(path, "type"), expected, kind)
            continue
        owned[sink_name] = sink_options(section.report, path, table, gateway)
    return owned


def _routes(section: Section, targets: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    raw = section.raw.get("routes")
    if not isinstance(raw, list) or not raw:
        section.report.expected("routes", "a non-empty array of routes", raw or Got("nothing"))
        return []
    routes = []
    for index, entry in enumerate(raw):
        path = item("routes", index)
        if isinstance(entry, dict) and "type" in entry:
            section.report.add(join(path, "type"), "a session routes to sinks by name (sink)")
            continue
        routes.append(route_table(section.report, path, entry, targets))
    return routes
