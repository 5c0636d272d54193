"""The API listener: one port serving WebSocket paths (/ws) and plain HTTP routes (/api/v1/...)."""

from __future__ import annotations

import asyncio
import email.utils
import http
import inspect
import json
import logging
from typing import Any, Awaitable, Callable, Optional, Union
from urllib.parse import parse_qs, unquote

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

log = logging.getLogger("gateway.api")

# (status, headers, body) — what an HTTP handler returns.
HttpResponse = tuple
HttpHandler = Callable[["HttpRequest"], Union[HttpResponse, Awaitable[HttpResponse]]]
WebSocketHandler = Callable[[ServerConnection], Awaitable[None]]
# Called before a WebSocket handshake is accepted: None accepts, an HttpResponse refuses.
WebSocketCheck = Callable[["HttpRequest"], Optional[HttpResponse]]


class HttpRequest:
    """What a handler sees of a request: method, path split from its query, headers, path params."""

    def __init__(self, method: str, target: str, headers: Headers, params: dict | None = None):
        self.method = method
        self.target = target
        path, _, query = target.partition("?")
        self.raw_path = path
        self.path = unquote(path)
        self.raw_query = query
        self.headers = headers
        self.params: dict[str, str] = params or {}

    @property
    def query(self) -> dict[str, list[str]]:
        """Decoded query parameters ('+' becomes a space here; use raw_query to keep it)."""
        return parse_qs(self.raw_query, keep_blank_values=True)

    def query_values(self, name: str) -> list[str]:
        """Percent-decoded values of one query parameter, keeping '+' literal (MQTT wildcards)."""
        values = []
        for part in self.raw_query.split("&"):
            key, _, value = part.partition("=")
            if unquote(key) == name:
                values.append(unquote(value))
        return values


def json_response(status: int, value: Any, headers: dict[str, str] | None = None) -> HttpResponse:
    body = json.dumps(value, separators=(",", ":")).encode()
    return status, {"Content-Type": "application/json", **(headers or {})}, body


def error_response(status: int, code: str, message: str, **headers: str) -> HttpResponse:
    """The control plane's error shape: {"error": {"code", "message"}}."""
    return json_response(status, {"error": {"code": code, "message": message}}, headers)


def parse_listen(listen: str) -> tuple[str, int]:
    """'host:port' or '[v6]:port' → (host, port); port 0 picks a free one."""
    host, separator, port = listen.rpartition(":")
    if not separator or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"api.listen: expected 'host:port', got {listen!r}")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    return host or "127.0.0.1", int(port)


class _Route:
    """One HTTP route; '{name}' segments match one path segment and become request.params."""

    def __init__(self, method: str, pattern: str, handler: HttpHandler):
        self.method = method.upper()
        self.pattern = pattern
        self.segments = pattern.strip("/").split("/")
        self.handler = handler

    def match(self, raw_path: str) -> dict[str, str] | None:
        # Split before decoding, so an encoded '/' (%2F) stays inside its segment.
        segments = [unquote(segment) for segment in raw_path.strip("/").split("/")]
        if len(segments) != len(self.segments):
            return None
        params = {}
        for wanted, actual in zip(self.segments, segments):
            if wanted.startswith("{") and wanted.endswith("}"):
                if not actual:
                    return None
                params[wanted[1:-1]] = actual
            elif wanted != actual:
                return None
        return params


class ApiServer:
    """Serves registered WebSocket paths and HTTP routes on one listener (websockets' server).

    HTTP requests are answered from process_request, before any WebSocket handshake, so plain
    HTTP and WebSocket share the port; every answer closes its connection. Limits inherited
    from websockets' HTTP parser: a request with a body (Content-Length > 0) is dropped
    without an answer, and a response cannot stream (SSE); the control plane's POST/PATCH
    routes and /sse will need a front parser for those.
    """

    def __init__(self, listen: str = "127.0.0.1:8080"):
        self.host, self.port = parse_listen(listen)
        self._routes: list[_Route] = []
        self._websockets: dict[str, tuple[WebSocketHandler, WebSocketCheck | None]] = {}
        self._server: Server | None = None
        self.add_http("GET", "/api/v1/health", lambda request: json_response(200, {"status": "ok"}))

    # -- registration --------------------------------------------------------------------
    def add_http(self, method: str, path: str, handler: HttpHandler) -> None:
        """Serve `method path` with handler(request) -> (status, headers, body); replaces any."""
        self._routes = [r for r in self._routes if (r.method, r.pattern) != (method.upper(), path)]
        self._routes.append(_Route(method, path, handler))

    def add_websocket(
        self, path: str, handler: WebSocketHandler, check: WebSocketCheck | None = None
    ) -> None:
        """Serve WebSocket clients of `path` with the async handler(connection)."""
        if path in self._websockets:
            raise ValueError(f"WebSocket path {path!r} is already served")
        self._websockets[path] = (handler, check)

    def remove_websocket(self, path: str) -> None:
        self._websockets.pop(path, None)

    # -- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        self._server = await serve(
            self._serve_websocket,
            self.host,
            self.port,
            process_request=self._process_request,
            # Live feeds are small JSON frames fanned out to several clients: per-frame
            # deflate would cost more CPU than the bytes it saves on a LAN.
            compression=None,
            max_size=2**16,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("API listening on http://%s:%d", self.host, self.port)

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        await self._server.wait_closed()
        self._server = None

    # -- request handling ----------------------------------------------------------------
    async def _process_request(
        self, connection: ServerConnection, request: Request
    ) -> Response | None:
        http_request = HttpRequest(_method(request), request.path, request.headers)
        entry = self._websockets.get(http_request.path)
        if entry is not None and _wants_upgrade(request):
            check = entry[1]
            refusal = check(http_request) if check else None
            return _to_response(refusal) if refusal else None
        return _to_response(await self._answer_http(http_request))

    async def _answer_http(self, request: HttpRequest) -> HttpResponse:
        allowed = []
        for route in self._routes:
            params = route.match(request.raw_path)
            if params is None:
                continue
            if route.method != request.method:
                allowed.append(route.method)
                continue
            request.params = params
            return await _call(route.handler, request)
        if request.path in self._websockets:
            message = f"{request.path} is a WebSocket endpoint"
            return error_response(426, "upgrade_required", message)
        if allowed:
            message = f"{request.method} is not allowed on {request.path}"
            return error_response(405, "method_not_allowed", message, Allow=", ".join(allowed))
        return error_response(404, "not_found", f"no such path: {request.path}")

    async def _serve_websocket(self, connection: ServerConnection) -> None:
        path = unquote(connection.request.path.partition("?")[0])
        entry = self._websockets.get(path)
        if entry is None:  # unregistered between handshake and now
            await connection.close(1001, "endpoint removed")
            return
        await entry[0](connection)


async def _call(handler: HttpHandler, request: HttpRequest) -> HttpResponse:
    try:
        result = handler(request)
        if inspect.isawaitable(result):
            result = await result
        return result
    except asyncio.CancelledError:
        raise
    except Exception as error:
        log.exception("HTTP handler for %s %s failed", request.method, request.path)
        return error_response(500, "internal", f"{type(error).__name__}: {error}")


def _method(request: Request) -> str:
    # websockets' Request records the method from version 14 on; older ones only parse GET.
    return getattr(request, "method", "GET").upper()


def _wants_upgrade(request: Request) -> bool:
    return "websocket" in request.headers.get("Upgrade", "").lower()


def _to_response(answer: HttpResponse) -> Response:
    status, headers, body = answer
    status = http.HTTPStatus(status)
    response_headers = Headers(
        [
            ("Date", email.utils.formatdate(usegmt=True)),
            ("Connection", "close"),
            ("Content-Length", str(len(body))),
        ]
    )
    for key, value in headers.items():
        response_headers[key] = value
    return Response(status.value, status.phrase, response_headers, body)
