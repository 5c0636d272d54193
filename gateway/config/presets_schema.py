"""Preset tables: their steps (judged by the pipeline's own rules) and their routes."""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from gateway.config.checks import (
    any_text,
    boolean,
    choice,
    choice_list,
    duration,
    integer,
    name,
    number,
    string_list,
    string_map,
    table,
    text,
    topic_template,
)
from gateway.config.report import MISSING, Check, Got, Invalid, Report, Section, item, join
from gateway.config.sinks_schema import BATCH_KEYS, ENCODINGS, QOS, SINK_TYPES, batch_options
from gateway.core.pipeline import STEP_CHOICES, STEP_PARAMETERS, check_step

BUILTIN_NAMES = ("basic", "realtime", "iot", "research", "high_throughput")
BUFFER_POLICIES = ("write_ahead", "spill", "none")
PRESET_KEYS = (
    "description",
    "extends",
    "steps",
    "append_steps",
    "routes",
    "buffer",
    "device_time",
    "discovery",
)
ROUTE_KEYS = ("sink", "type", "topic", "qos", "retain", "encoding", "batch")
# Which sink types honour each route option; a route option on any other type is an error.
ROUTE_OPTION_TYPES = {
    "topic": ("mqtt", "websocket", "sse"),
    "qos": ("mqtt",),
    "retain": ("mqtt",),
    "encoding": ("mqtt", "udp", "webhook"),
    # SSE clients share one replay window of the sink's own batches: a route's is not used.
    "batch": ("mqtt", "udp", "websocket", "webhook"),
}


def user_presets(
    report: Report, raw: Any, sinks: Mapping[str, Mapping[str, Any]]
) -> dict[str, dict[str, Any]]:
    if raw is MISSING:
        return {}
    if not isinstance(raw, dict):
        report.expected("presets", "a table of presets ([presets.NAME])", raw)
        return {}

    presets = {}
    for preset_name, entry in raw.items():
        path = join("presets", preset_name)
        if preset_name in BUILTIN_NAMES:
            report.expected(
                path,
                "a name that is not a built-in preset (extend it instead)",
                preset_name,
            )
            continue
        try:
            name(preset_name)
        except Invalid as bad:
            report.expected(path, "a preset " + bad.expected[2:], preset_name)
        presets[preset_name] = preset(report, path, entry, sinks)
    return presets


def preset(
    report: Report, path: str, raw: Any, sinks: Mapping[str, Mapping[str, Any]] | None
) -> dict[str, Any]:
    """Normalise one preset table; None values mean "inherit from the extended preset".

    `sinks` is the configured sinks for a user preset, or None for a built-in one, which
    may route only by sink type.
    """
    section = Section(report, path, raw, PRESET_KEYS)
    result = {
        "description": section.get("description", any_text()),
        "extends": section.get("extends", name),
        "steps": steps_list(section, "steps"),
        "append_steps": steps_list(section, "append_steps"),
        "routes": _routes(section, sinks),
        "buffer": section.get("buffer", choice(BUFFER_POLICIES)),
        "device_time": section.get("device_time", boolean),
        "discovery": section.get("discovery", boolean),
    }
    if section.has("steps") and section.has("append_steps"):
        report.expected(section.at("append_steps"), "either steps or append_steps", Got("both"))
    return result


def steps_list(section: Section, key: str) -> list[dict[str, Any]] | None:
    if not section.has(key):
        return None
    raw = section.raw[key]
    if not isinstance(raw, list):
        section.report.expected(section.at(key), "an array of steps", raw)
        return []
    path = section.at(key)
    return [_step(section.report, item(path, index), entry) for index, entry in enumerate(raw)]


def _step(report: Report, path: str, raw: Any) -> dict[str, Any]:
    op = raw.get("op") if isinstance(raw, dict) else None
    known = isinstance(op, str) and op in STEP_PARAMETERS
    parameters = STEP_PARAMETERS[op] if known else {}
    # Parameters of an unknown op cannot be judged, so only the op itself is reported.
    allowed = ("op", *parameters) if known else tuple(raw) if isinstance(raw, dict) else ()
    section = Section(report, path, raw, allowed)
    step = {"op": section.get("op", choice(STEP_PARAMETERS), required=section.valid)}
    if not known:
        return step
    errors_before = len(report.errors)
    for parameter, (kind, required) in parameters.items():
        check = _parameter_check(kind, STEP_CHOICES.get(op, {}).get(parameter))
        value = section.get(parameter, check, MISSING, required=required)
        if value is not MISSING:
            step[parameter] = value
    if len(report.errors) == errors_before:
        # The pipeline's own rules across parameters (exactly one of every or count, units
        # that convert, ...) judge the normalised spec, exactly as the pipeline will see it.
        for parameter, message in check_step(step):
            report.add(path if parameter is None else join(path, parameter), message)
    return step


_STEP_TYPE_CHECKS = {
    "string": text(),
    "number": number(),
    "integer": integer(),
    "duration": duration(positive=True),
    "list of strings": string_list("a non-empty array of strings"),
    "map of strings": string_map("a table of non-empty strings"),
    "table": table("a non-empty table"),
}


def _parameter_check(kind: str, choices: Iterable[str] | None) -> Check:
    """The check for a step parameter of one STEP_PARAMETERS type (and closed set, if any)."""
    if choices is None:
        return _STEP_TYPE_CHECKS.get(kind, text())
    if kind == "list of strings":
        return choice_list(choices)
    return choice(choices)


def _routes(section: Section, sinks: Mapping[str, Mapping[str, Any]] | None) -> list | None:
    if not section.has("routes"):
        return None
    raw = section.raw["routes"]
    if not isinstance(raw, list):
        section.report.expected(section.at("routes"), "an array of routes", raw)
        return []
    path = section.at("routes")
    return [route_table(section.report, item(path, i), entry, sinks) for i, entry in enumerate(raw)]


def route_table(
    report: Report, path: str, raw: Any, sinks: Mapping[str, Mapping[str, Any]] | None
) -> dict[str, Any]:
    section = Section(report, path, raw, ROUTE_KEYS)
    route: dict[str, Any] = {}
    if section.valid and section.has("sink") == section.has("type"):
        got = Got("both" if section.has("sink") else "neither")
        report.expected(path, "exactly one of sink (a name) or type (every sink of a type)", got)
    target_type = None
    if section.has("sink"):
        if sinks is None:
            report.add(section.at("sink"), "not allowed in a built-in preset (route by type)")
        else:
            configured = tuple(sinks)
            listed = ", ".join(configured) if configured else "none are configured"
            check = choice(configured, expected=f"one of the configured sinks ({listed})")
            route["sink"] = section.get("sink", check)
            target_type = (sinks.get(route["sink"]) or {}).get("type")
    if section.has("type"):
        route["type"] = section.get("type", choice(SINK_TYPES))
        target_type = route["type"]
    _route_options(section, route, target_type)
    return route


def _route_options(section: Section, route: dict[str, Any], target_type: str | None) -> None:
    checks = {
        "topic": topic_template,
        "qos": QOS,
        "retain": boolean,
        "encoding": choice(ENCODINGS),
    }
    for key, check in checks.items():
        if section.has(key):
            route[key] = section.get(key, check)
    if section.has("batch"):
        route["batch"] = batch_options(section.table("batch", BATCH_KEYS))
    for key in ROUTE_OPTION_TYPES:
        if target_type and section.has(key) and target_type not in ROUTE_OPTION_TYPES[key]:
            sink_types = ", ".join(ROUTE_OPTION_TYPES[key])
            message = f"not used by {target_type} sinks (only {sink_types})"
            section.report.add(section.at(key), message)
    for key in [key for key, value in route.items() if value is None]:
        del route[key]
