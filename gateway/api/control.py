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
from gateway.config import presets
from gateway.core.protocol import COMMANDS
from gateway.sources.cobs_link import COMMAND_TIMEOUT
from gateway.sources.commands import CommandError, CommandTimeout

PREFIX = "/api/v1"
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

# What a request may carry: PATCH /sinks/{name} changes `enabled` and nothing else yet.
REQUEST_BODIES = {
    ("PATCH", "/sinks/{name}"): {
        "type": "object",
        "required": ["enabled"],
        "properties": {"enabled": {"type": "boolean"}},
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
    ("GET", "/sinks/{name}", "viewer", "_sink", "One sink", "Sink"),
    ("PATCH", "/sinks/{name}", "operator", "_patch_sink", "Enable or disable a sink", "Sink"),
    ("GET", "/presets", "viewer", "_presets", "Built-in and configured presets", "Presets"),
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
        enabled = _enabled_field(request.json())
        await self.gateway.set_sink_enabled(sink.name, enabled)
        return json_response(200, sink.stats())

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


def _enabled_field(body: dict[str, Any]) -> bool:
    """The one key PATCH /sinks/{name} takes; a 400 naming any other."""
    for key in body:
        if key != "enabled":
            message = f"{key}: cannot be changed at runtime (only enabled can)"
            raise ApiError(400, "invalid_field", message)
    if "enabled" not in body:
        raise ApiError(400, "invalid_field", "enabled: required, true or false")
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
        parameters = re.findall(r"\{(\w+)\}", path)
        if parameters:
            operation["parameters"] = [
                {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                for name in parameters
            ]
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


def _responses(method: str, path: str, response: str) -> dict[str, Any]:
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    if response in SCHEMAS or response == "OpenAPI":
        content = {"application/json": {"schema": {"$ref": f"#/components/schemas/{response}"}}}
    else:
        content = {response.split(";")[0]: {"schema": {"type": "string"}}}
    responses = {
        "200": {"description": "OK", "content": content},
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
    if "{id}" in path:
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
