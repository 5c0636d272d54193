"""The control plane: the /api/v1 endpoints over a running Gateway, and their OpenAPI document.

Each endpoint is declared once in ENDPOINTS (method, path, role, handler, response schema);
install() registers exactly those and openapi() documents exactly those.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

from gateway import __version__
from gateway.api.security import ROLES, ApiError
from gateway.api.server import HttpRequest, json_response
from gateway.app import Gateway
from gateway.config import ConfigError, presets, validate_session, validate_sink
from gateway.core.protocol import COMMANDS
from gateway.sessions import SessionConflict
from gateway.sources.cobs_link import COMMAND_TIMEOUT
from gateway.sources.commands import CommandError, CommandTimeout

PREFIX = "/api/v1"
SINK_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")  # as [sinks.NAME] takes
NAME_EXPECTED = 'a name of letters, digits, "_", "-" and "." (at most 64)'
MAX_COMMAND_TIMEOUT = 60.0


def _obj(required: dict[str, Any], **more: Any) -> dict[str, Any]:
    """An object schema whose listed properties are all required."""
    return {"type": "object", "required": list(required), "properties": required, **more}


_COUNTS = {"type": "object", "additionalProperties": {"type": ["integer", "number"]}}
_COUNT_TABLE = {"type": "object", "additionalProperties": {"type": "integer"}}
# A source's counters, and two tables of them: validate's failed checks by reason and
# field, and lines skipped by design by kind.
_SOURCE_COUNTS = {
    **_COUNTS,
    "properties": {"invalid": _COUNT_TABLE, "skipped_kinds": _COUNT_TABLE},
}
_BREAKER = _obj(
    {"state": {"enum": ["closed", "open", "half_open"]}, "failures": {"type": "integer"}}
)
_SINK = _obj(
    {
        "name": {"type": "string"},
        "type": {"type": "string"},
        "connected": {"type": "boolean"},
        "queue_depth": {"type": "integer"},
        "breaker": _BREAKER,
        "buffer": _obj({"policy": {"type": "string"}, "depth": {"type": "integer"}}),
    }
)
# What a source reports besides its counters, when it has it: how a plain device path could
# follow a replug (while waiting), and a COBS device's link and what it said of itself.
SOURCE_DETAILS = ("hint", "link", "remote")
_SOURCE = _obj(
    {
        "name": {"type": "string"},
        "state": {"type": "string"},
        "framing": {"enum": ["lines", "cobs"]},
        "preset": {"type": "string"},
        "counters": _SOURCE_COUNTS,
    },
    additionalProperties=False,
)
_SOURCE["properties"].update(
    {
        "device": {"type": ["string", "null"]},
        "hint": {"type": "string"},
        "link": {"type": "object"},
        "remote": {"type": "object"},
    }
)
SCHEMAS: dict[str, Any] = {
    "Error": _obj({"error": _obj({"code": {"type": "string"}, "message": {"type": "string"}})}),
    "Health": _obj(
        {
            "status": {"enum": ["ok", "degraded", "failing"]},
            "ready": {"type": "boolean"},
            "components": {"type": "object", "additionalProperties": {"type": "string"}},
            "reasons": {"type": "object", "additionalProperties": {"type": "string"}},
        }
    ),
    "Live": _obj({"status": {"const": "alive"}}),
    "Ready": _obj({"ready": {"type": "boolean"}, "components": {"type": "object"}}),
    "Status": _obj(
        {
            "gateway": {"type": "string"},
            "version": {"type": "string"},
            "uptime_seconds": {"type": "number"},
            "sources": {"type": "integer"},
            "sinks": {"type": "integer"},
            "totals": _obj(
                {
                    "readings": {"type": "integer"},
                    "parse_errors": {"type": "integer"},
                    "delivered": _COUNTS,
                }
            ),
        }
    ),
    "Stats": _obj(
        {
            "gateway": {"type": "string"},
            "sources": {"type": "object"},
            "sinks": {"type": "object", "additionalProperties": _SINK},
            "store": {},
            "totals": {"type": "object"},
        }
    ),
    "Sources": _obj({"sources": {"type": "array", "items": _SOURCE}}),
    "Sink": _SINK,
    "CommandResult": _obj(
        {"device": {"type": "string"}, "command": {"type": "string"}, "result": {}}
    ),
    "Sinks": _obj({"sinks": {"type": "array", "items": _SINK}}),
    "Presets": _obj(
        {
            "presets": {
                "type": "array",
                "items": _obj(
                    {
                        "name": {"type": "string"},
                        "description": {"type": "string"},
                        "builtin": {"type": "boolean"},
                    }
                ),
            }
        }
    ),
}

_SESSION = _obj(
    {
        "id": {"type": "string"},
        "name": {"type": "string"},
        "state": {"enum": ["running", "ended"]},
        "started_at": {"type": "number"},
        "ends_at": {"type": ["number", "null"]},
        "ended_at": {"type": ["number", "null"]},
        "end_reason": {"enum": ["duration", "readings", "deleted", "failed", None]},
        "select": {"type": "array", "items": {"type": "string"}},
        "steps": {"type": "array", "items": {"type": "object"}},
        "sinks": {"type": "object", "additionalProperties": {"type": "string"}},
        "routes": {"type": "array", "items": {"type": "object"}},
        "duration": {"type": ["number", "null"]},
        "max_readings": {"type": ["integer", "null"]},
        "counters": _obj(
            {
                "readings": {"type": "integer"},
                "pipeline_errors": {"type": "integer"},
                "routes": {"type": "array", "items": {"type": "object"}},
                "sinks": {"type": "object"},
            }
        ),
    }
)
_ANNOUNCED = _obj(
    {
        "device": {"type": "string"},
        "model": {"type": "string"},
        "link": {"type": "boolean"},
        "status": {"type": ["string", "null"]},
        "configs": {"type": "array", "items": {"type": "string"}},
    }
)
SCHEMAS.update(
    {
        "Discovery": _obj(
            {
                "sinks": {
                    "type": "array",
                    "items": _obj(
                        {
                            "sink": {"type": "string"},
                            "prefix": {"type": "string"},
                            "devices": {"type": "array", "items": _ANNOUNCED},
                            "counters": _COUNT_TABLE,
                        }
                    ),
                }
            }
        ),
        "Session": _SESSION,
        "Sessions": _obj({"sessions": {"type": "array", "items": _SESSION}}),
        "SinkRemoved": _obj({"name": {"type": "string"}, "purged": {"type": "integer"}}),
        "Reloaded": _obj(
            {
                "sinks": _obj(
                    {key: {"type": "array"} for key in ("added", "removed", "reconfigured")}
                ),
                "sources": _obj(
                    {key: {"type": "array"} for key in ("added", "removed", "restarted")}
                ),
                "api": {"type": "boolean"},
            }
        ),
    }
)

# A sink's table as in [sinks.NAME]: its keys are checked by the config's own validator.
_SINK_TABLE = {"type": "object", "additionalProperties": True}
# What a request may carry. Bodies mirror the TOML (DESIGN §8).
REQUEST_BODIES = {
    ("PATCH", "/sinks/{name}"): {
        **_SINK_TABLE,
        "description": '{"enabled": false} (operator), or any keys of [sinks.NAME] (admin)',
        "minProperties": 1,
        "properties": {"enabled": {"type": "boolean"}},
    },
    ("POST", "/sinks"): {
        **_SINK_TABLE,
        "required": ["name", "type"],
        "properties": {"name": {"type": "string"}, "type": {"type": "string"}},
    },
    ("POST", "/sessions"): {
        "type": "object",
        "required": ["name", "routes"],
        "properties": {
            "name": {"type": "string"},
            "select": {"type": "array", "items": {"type": "string"}},
            "steps": {"type": "array", "items": {"type": "object"}},
            "sinks": {"type": "object", "additionalProperties": _SINK_TABLE},
            "routes": {"type": "array", "items": {"type": "object"}, "minItems": 1},
            "duration": {"type": ["string", "number"]},
            "max_readings": {"type": "integer", "minimum": 1},
        },
        "additionalProperties": False,
    },
    ("POST", "/devices/{id}/commands"): {
        "type": "object",
        "required": ["command"],
        "properties": {
            "command": {"enum": list(COMMANDS)},
            "args": {"type": "object"},
            "timeout": {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_COMMAND_TIMEOUT},
        },
        "additionalProperties": False,
    },
}

# (method, path, least role, handler method, summary, response schema | media type)
ENDPOINTS = [
    ("GET", "/health", "viewer", "_health", "Health per component, with the stats", "Health"),
    ("GET", "/health/live", "viewer", "_live", "The process answers", "Live"),
    (
        "GET",
        "/health/ready",
        "viewer",
        "_ready",
        "Every source and sink connected (503 if not)",
        "Ready",
    ),
    ("GET", "/status", "viewer", "_status", "Gateway id, version, uptime, totals", "Status"),
    (
        "GET",
        "/stats",
        "viewer",
        "_stats",
        "Every counter of every source, sink and the store",
        "Stats",
    ),
    ("GET", "/sources", "viewer", "_sources", "Sources with link state and counters", "Sources"),
    ("GET", "/sinks", "viewer", "_sinks", "Sinks with breaker state, buffer and counters", "Sinks"),
    ("POST", "/sinks", "admin", "_post_sink", "Add a sink (keys of [sinks.NAME])", "Sink"),
    ("GET", "/sinks/{name}", "viewer", "_sink", "One sink", "Sink"),
    (
        "PATCH",
        "/sinks/{name}",
        "operator",
        "_patch_sink",
        "Enable or disable a sink (operator); reconfigure it, keeping its buffer (admin)",
        "Sink",
    ),
    (
        "DELETE",
        "/sinks/{name}",
        "admin",
        "_delete_sink",
        "Remove a sink; its buffer is kept unless ?purge=true",
        "SinkRemoved",
    ),
    (
        "POST",
        "/config/reload",
        "admin",
        "_reload",
        "Apply the changed config file as a whole, or refuse it with every error",
        "Reloaded",
    ),
    ("GET", "/sessions", "viewer", "_sessions", "Sessions, running and ended", "Sessions"),
    ("POST", "/sessions", "operator", "_post_session", "Start a session", "Session"),
    ("GET", "/sessions/{id}", "viewer", "_session", "One session", "Session"),
    (
        "DELETE",
        "/sessions/{id}",
        "operator",
        "_delete_session",
        "End a session (its own sinks deliver what they hold) and forget it",
        "Session",
    ),
    ("GET", "/presets", "viewer", "_presets", "Built-in and configured presets", "Presets"),
    (
        "GET",
        "/discovery",
        "viewer",
        "_discovery",
        "Home Assistant discovery: per MQTT sink the devices announced and their status",
        "Discovery",
    ),
    (
        "POST",
        "/devices/{id}/commands",
        "operator",
        "_command",
        "Send a protocol command to a COBS device and answer with its RESP",
        "CommandResult",
    ),
    ("GET", "/metrics", "viewer", "_metrics", "Prometheus text format", "text/plain"),
    ("GET", "/openapi.json", "viewer", "_openapi", "This document (OpenAPI 3.1)", "OpenAPI"),
]


class ControlPlane:
    """Serves ENDPOINTS on the gateway's listener; install() before Gateway.run()."""

    def __init__(self, gateway: Gateway):
        self.gateway = gateway
        self.metrics: Any = None  # built at the first scrape (see _metrics)
        self.started = time.monotonic()

    def install(self) -> None:
        for method, path, role, handler, *_ in ENDPOINTS:
            self.gateway.api.add_http(method, PREFIX + path, getattr(self, handler), role=role)

    # -- handlers ------------------------------------------------------------------------
    def _health(self, request: HttpRequest) -> tuple:
        # As the bare Gateway answers it: Gateway.health() and, beside it, the stats.
        return json_response(200, {**self.gateway.health(), "stats": self.gateway.stats()})

    def _live(self, request: HttpRequest) -> tuple:
        return json_response(200, {"status": "alive"})

    def _ready(self, request: HttpRequest) -> tuple:
        health = self.gateway.health()
        body = {"ready": health["ready"], "components": health["components"]}
        return json_response(200 if health["ready"] else 503, body)

    def _status(self, request: HttpRequest) -> tuple:
        gateway = self.gateway
        return json_response(
            200,
            {
                "gateway": gateway.gateway_id,
                "version": __version__,
                "uptime_seconds": round(time.monotonic() - self.started, 3),
                "sources": len(gateway.sources),
                "sinks": len(gateway.sinks),
                "totals": gateway.stats()["totals"],
            },
        )

    def _stats(self, request: HttpRequest) -> tuple:
        return json_response(200, self.gateway.stats())

    def _sources(self, request: HttpRequest) -> tuple:
        stats = self.gateway.stats()["sources"]
        configured = {source["name"]: source for source in self.gateway.config["sources"]}
        listed = []
        for name, counters in stats.items():
            source = configured.get(name, {})
            counters = dict(counters)
            entry = {
                "name": name,
                "state": counters.pop("state", "unknown"),
                "device": counters.pop("device", None),
                "framing": source.get("framing", "lines"),
                "preset": source.get("preset", ""),
            }
            for key in SOURCE_DETAILS:  # not counters: a hint, a COBS link's state
                if key in counters:
                    entry[key] = counters.pop(key)
            entry["counters"] = {k: v for k, v in counters.items() if k != "name"}
            listed.append(entry)
        return json_response(200, {"sources": listed})

    def _sinks(self, request: HttpRequest) -> tuple:
        return json_response(200, {"sinks": [s.stats() for s in self.gateway.sinks.values()]})

    def _sink(self, request: HttpRequest) -> tuple:
        return json_response(200, self._named_sink(request).stats())

    async def _patch_sink(self, request: HttpRequest) -> tuple:
        sink = self._named_sink(request)
        body = _object(request.json())
        if set(body) == {"enabled"}:
            await self.gateway.set_sink_enabled(sink.name, _enabled_field(body))
            return json_response(200, sink.stats())
        try:
            self.gateway.api.security.authorize(request.principal, "admin")
        except ApiError as error:
            key = next(key for key in body if key != "enabled")
            message = f"{key}: reconfiguring a sink {error.message}"
            raise ApiError(403, error.code, message) from None
        if "type" in body and body["type"] != sink.options["type"]:
            message = f"type: a {sink.options['type']} sink stays one; DELETE it and POST another"
            raise ApiError(400, "invalid_field", message)
        merged = {**sink.options, **body}  # null in the body: back to the default
        options = self._valid_sink(sink.name, merged)
        return json_response(
            200, (await self._built(self.gateway.reconfigure_sink, sink.name, options)).stats()
        )

    async def _post_sink(self, request: HttpRequest) -> tuple:
        body = dict(_object(request.json()))
        name = body.pop("name", None)
        if not isinstance(name, str) or not SINK_NAME.fullmatch(name):
            got = json.dumps(name)
            raise ApiError(400, "invalid_field", f"name: expected {NAME_EXPECTED}, got {got}")
        if name in self.gateway.sinks or self.gateway.sessions.owns_sink(name):
            raise ApiError(409, "conflict", f"name: a sink named {name!r} exists already")
        options = self._valid_sink(name, body)
        sink = await self._built(self.gateway.add_sink, name, options)
        return json_response(201, sink.stats())

    async def _delete_sink(self, request: HttpRequest) -> tuple:
        sink = self._named_sink(request)
        purge = request.query_values("purge")
        if purge not in ([], ["true"], ["false"]):
            raise ApiError(400, "invalid_field", "purge: expected true or false")
        purged = await self.gateway.remove_sink(sink.name, purge == ["true"])
        return json_response(200, {"name": sink.name, "purged": purged})

    def _valid_sink(self, name: str, table: dict[str, Any]) -> dict[str, Any]:
        try:
            return validate_sink(name, table, self.gateway.config["gateway"])
        except ConfigError as error:
            raise ApiError(400, "invalid_field", _paths(error.errors, f"sinks.{name}.")) from None

    async def _built(self, change: Any, name: str, options: dict[str, Any]) -> Any:
        try:
            return await change(name, options)
        except ValueError as error:  # the sink's own refusal (a file it cannot open, ...)
            raise ApiError(400, "invalid_field", str(error)) from None

    async def _reload(self, request: HttpRequest) -> tuple:
        if self.gateway.config_path is None:
            message = "this gateway runs on embedded defaults: there is no file to reload"
            raise ApiError(409, "no_config_file", message)
        try:
            summary = await self.gateway.reload_file()
        except ConfigError as error:
            raise ApiError(400, "invalid_config", "; ".join(error.errors)) from None
        except ValueError as error:
            raise ApiError(400, "invalid_config", str(error)) from None
        return json_response(200, summary)

    # -- sessions --------------------------------------------------------------------------
    def _sessions(self, request: HttpRequest) -> tuple:
        listed = [session.describe() for session in self.gateway.sessions.sessions.values()]
        return json_response(200, {"sessions": listed})

    def _session(self, request: HttpRequest) -> tuple:
        return json_response(200, self._named_session(request).describe())

    async def _post_session(self, request: HttpRequest) -> tuple:
        body = _object(request.json())
        gateway = self.gateway
        try:
            spec = validate_session(body, gateway.config["sinks"], gateway.config["gateway"])
        except ConfigError as error:
            raise ApiError(400, "invalid_field", "; ".join(error.errors)) from None
        try:
            session = await gateway.sessions.create(spec)
        except SessionConflict as error:
            raise ApiError(409, "conflict", str(error)) from None
        except ValueError as error:  # a sink of its own refused its options
            raise ApiError(400, "invalid_field", str(error)) from None
        return json_response(201, session.describe())

    async def _delete_session(self, request: HttpRequest) -> tuple:
        session = self._named_session(request)
        await self.gateway.sessions.delete(session.id)
        return json_response(200, session.describe())

    def _named_session(self, request: HttpRequest) -> Any:
        session = self.gateway.sessions.sessions.get(request.params["id"])
        if session is None:
            raise ApiError(404, "not_found", f"id: no session {request.params['id']!r}")
        return session

    def _named_sink(self, request: HttpRequest) -> Any:
        name = request.params["name"]
        sink = self.gateway.sinks.get(name)
        if sink is None:
            raise ApiError(404, "not_found", f"name: no sink named {name!r}")
        return sink

    async def _command(self, request: HttpRequest) -> tuple:
        device = request.params["id"]
        name, args, timeout = _command_fields(request.json())
        handler = self._device_handler(device)
        try:
            result = await handler.command(name, args, timeout)
        except CommandTimeout as error:
            raise ApiError(504, "device_timeout", str(error)) from None
        except CommandError as error:
            if error.code is not None:
                raise ApiError(502, "device_refused", str(error)) from None
            raise ApiError(400, "invalid_field", f"args: {error}") from None
        return json_response(200, {"device": device, "command": name, "result": result})

    def _device_handler(self, device: str) -> Any:
        """The COBS link that greeted `device`; 404 when none did, 409 while it is away."""
        known = [
            source.handler
            for source in self.gateway.sources
            if source.handler is not None and source.handler.link.device == device
        ]
        if not known:
            raise ApiError(404, "not_found", f"id: no COBS device {device!r} has said HELLO")
        for handler in known:
            if handler.link.greeted:
                return handler
        raise ApiError(409, "not_connected", f"id: device {device!r} is not connected now")

    def _discovery(self, request: HttpRequest) -> tuple:
        announced = [
            {"sink": name, **sink.announcer.describe()}
            for name, sink in self.gateway.sinks.items()
            if getattr(sink, "announcer", None) is not None
        ]
        return json_response(200, {"sinks": announced})

    def _presets(self, request: HttpRequest) -> tuple:
        return json_response(200, {"presets": presets.available(self.gateway.config)})

    def _metrics(self, request: HttpRequest) -> tuple:
        if self.metrics is None:
            # prometheus-client costs ≈ 1 MB of RSS: loaded when something scrapes, not before.
            from gateway.api.metrics import CONTENT_TYPE, Metrics

            self.metrics = Metrics(self.gateway, CONTENT_TYPE)
        return 200, {"Content-Type": self.metrics.content_type}, self.metrics.render()

    def _openapi(self, request: HttpRequest) -> tuple:
        return json_response(200, openapi())


def _object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict) or not body:
        raise ApiError(400, "invalid_field", "body: expected a JSON object with keys")
    return body


def _paths(errors: list[str], prefix: str) -> str:
    """Config errors in the body's terms: "targets: …" rather than "sinks.x.targets: …"."""
    return "; ".join(error.removeprefix(prefix) for error in errors)


def _enabled_field(body: dict[str, Any]) -> bool:
    """PATCH /sinks/{name} with only `enabled`: a 400 when it is not true or false."""
    if not isinstance(body["enabled"], bool):
        got = json.dumps(body["enabled"])
        raise ApiError(400, "invalid_field", f"enabled: expected true or false, got {got}")
    return body["enabled"]


def _command_fields(body: dict[str, Any]) -> tuple[str, dict[str, Any], float]:
    """command, args and timeout of POST /devices/{id}/commands; a 400 naming the field."""
    for key in body:
        if key not in ("command", "args", "timeout"):
            raise ApiError(400, "invalid_field", f"{key}: unknown (command, args, timeout)")
    name = body.get("command")
    if name not in COMMANDS:
        expected = ", ".join(COMMANDS)
        got = json.dumps(name)
        raise ApiError(400, "invalid_field", f"command: expected one of {expected}, got {got}")
    args = body.get("args", {})
    if not isinstance(args, dict):
        raise ApiError(400, "invalid_field", f"args: expected an object, got {json.dumps(args)}")
    timeout = body.get("timeout", COMMAND_TIMEOUT)
    number = isinstance(timeout, (int, float)) and not isinstance(timeout, bool)
    if not number or not 0 < timeout <= MAX_COMMAND_TIMEOUT:
        expected = f"seconds above 0, at most {MAX_COMMAND_TIMEOUT:g}"
        raise ApiError(
            400, "invalid_field", f"timeout: expected {expected}, got {json.dumps(timeout)}"
        )
    return name, args, float(timeout)


def openapi() -> dict[str, Any]:
    """The OpenAPI 3.1 document of ENDPOINTS: nothing more, nothing less."""
    paths: dict[str, Any] = {}
    for method, path, role, _handler, summary, response in ENDPOINTS:
        operation = {
            "summary": summary,
            "operationId": _operation_id(method, path),
            "x-required-role": role,
            "security": [{"bearer": []}, {}],
            "responses": _responses(method, path, response),
        }
        body = REQUEST_BODIES.get((method, path))
        if body is not None:
            operation["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": body}},
            }
        parameters = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in re.findall(r"\{(\w+)\}", path)
        ] + QUERY_PARAMETERS.get((method, path), [])
        if parameters:
            operation["parameters"] = parameters
        paths.setdefault(PREFIX + path, {})[method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "Edge gateway control plane", "version": __version__},
        "paths": paths,
        "components": {
            "schemas": {**SCHEMAS, "OpenAPI": {"type": "object", "required": ["openapi"]}},
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A token of [api] tokens; roles: "
                    + " < ".join(ROLES)
                    + ". With no tokens configured, local clients need none.",
                }
            },
        },
    }


CREATED = {("POST", "/sinks"), ("POST", "/sessions")}
QUERY_PARAMETERS = {
    ("DELETE", "/sinks/{name}"): [
        {"name": "purge", "in": "query", "required": False, "schema": {"enum": ["true", "false"]}}
    ],
}
_ERROR = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
_EXTRA_ANSWERS = {
    ("POST", "/sinks"): {
        "409": {"description": "A sink of that name exists", "content": _ERROR},
    },
    ("POST", "/sessions"): {
        "409": {"description": "A running session or a sink has that name", "content": _ERROR},
    },
    ("DELETE", "/sinks/{name}"): {
        "400": {"description": "purge is neither true nor false", "content": _ERROR},
    },
    ("POST", "/config/reload"): {
        "400": {"description": "The file is refused, with every error", "content": _ERROR},
        "409": {"description": "The gateway was started without a file", "content": _ERROR},
    },
}


def _responses(method: str, path: str, response: str) -> dict[str, Any]:
    error = _ERROR
    if response in SCHEMAS or response == "OpenAPI":
        content = {"application/json": {"schema": {"$ref": f"#/components/schemas/{response}"}}}
    else:
        content = {response.split(";")[0]: {"schema": {"type": "string"}}}
    success = "201" if (method, path) in CREATED else "200"
    responses = {
        success: {"description": "Created" if success == "201" else "OK", "content": content},
        "401": {"description": "No token, or not a valid one", "content": error},
        "403": {
            "description": "The role is too low, or a remote caller while no token is set",
            "content": error,
        },
        "429": {
            "description": "Rate limited; Retry-After says when to try again",
            "headers": {"Retry-After": {"schema": {"type": "integer"}}},
            "content": error,
        },
    }
    if path == "/health/ready":
        responses["503"] = {"description": "Not ready", "content": content}
    if "{name}" in path:
        responses["404"] = {"description": "No such sink", "content": error}
    responses.update(_EXTRA_ANSWERS.get((method, path), {}))
    if path.startswith("/sessions/"):
        responses["404"] = {"description": "No session of that id", "content": error}
    if path.startswith("/devices/"):
        responses.update(
            {
                "404": {"description": "No COBS device of that id", "content": error},
                "409": {"description": "The device is not connected now", "content": error},
                "502": {"description": "The device refused the command", "content": error},
                "504": {"description": "The device did not answer in time", "content": error},
            }
        )
    if (method, path) in REQUEST_BODIES:
        responses["400"] = {"description": "The body, naming the field at fault", "content": error}
    return responses


def _operation_id(method: str, path: str) -> str:
    words = [part.strip("{}").replace(".", "_") for part in path.strip("/").split("/")]
    return method.lower() + "_" + "_".join(words)
