"""The API listener on aiohttp: HTTP routes (/api/v1/...) and WebSocket paths (/ws) on one port.

It knows nothing of the gateway: routes and WebSocket paths are registered by whoever serves
them (the control plane, the WebSocket sink). Every request passes the same gate first:
rate limit per client address, bearer token, role, rate limit per token (gateway.api.security).
Pages (the dashboard at /, gateway.api.dashboard) pass it without a token.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
from typing import Any, Awaitable, Callable, Mapping, Optional, Union
from urllib.parse import parse_qs, unquote

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from gateway.api import dashboard
from gateway.api.security import ApiError, Principal, Security

log = logging.getLogger("gateway.api")

MAX_BODY = 64 * 1024  # a control-plane request body (a sink's keys, a session) is small
MAX_WS_MESSAGE = 2**16  # clients of /ws have nothing to say beyond control frames
STOP_TIMEOUT = 2.0  # handlers still running this long after stop() are cancelled
WS_CLOSE_TIMEOUT = 2.0  # a client that will not answer a close frame is cut off after this

# (status, headers, body), or an aiohttp response for a handler that streams.
HttpResponse = Union[tuple, web.StreamResponse]
HttpHandler = Callable[["HttpRequest"], Union[HttpResponse, Awaitable[HttpResponse]]]
WebSocketHandler = Callable[[web.WebSocketResponse, "HttpRequest"], Awaitable[None]]
# Called before a WebSocket handshake is accepted: None accepts, an HttpResponse refuses.
WebSocketCheck = Callable[["HttpRequest"], Optional[tuple]]
PageHandler = Callable[["HttpRequest"], tuple]


class HttpRequest:
    """What a handler sees of a request: method, path split from its query, headers, params."""

    def __init__(
        self,
        method: str,
        target: str,
        headers: Mapping[str, str],
        params: dict | None = None,
        body: bytes = b"",
        remote: str = "",
    ):
        self.method = method
        self.target = target
        path, _, query = target.partition("?")
        self.raw_path = path
        self.path = unquote(path)
        self.raw_query = query
        self.headers = headers
        self.params: dict[str, str] = params or {}
        self.body = body
        self.remote = remote
        self.principal: Principal | None = None
        self.native: web.Request | None = None  # for handlers that stream

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

    def json(self) -> Any:
        """The body as a JSON object; a 400 naming the problem otherwise."""
        try:
            value = json.loads(self.body or b"null")
        except ValueError as error:
            raise ApiError(400, "invalid_json", f"body: expected JSON, {error}") from None
        if not isinstance(value, dict):
            raise ApiError(400, "invalid_body", "body: expected a JSON object")
        return value


def json_response(status: int, value: Any, headers: dict[str, str] | None = None) -> tuple:
    body = json.dumps(value, separators=(",", ":")).encode()
    return status, {"Content-Type": "application/json", **(headers or {})}, body


def error_response(status: int, code: str, message: str, **headers: str) -> tuple:
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

    def __init__(self, method: str, pattern: str, handler: HttpHandler, role: str):
        self.method = method.upper()
        self.pattern = pattern
        self.segments = pattern.strip("/").split("/")
        self.handler = handler
        self.role = role

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


class _WebSocketPath:
    def __init__(self, handler: WebSocketHandler, check: WebSocketCheck | None):
        self.handler = handler
        self.check = check


class ApiServer:
    """Serves registered HTTP routes and WebSocket paths on one aiohttp listener.

    `api` is the validated [api] table (listen, tokens, tls, allow_insecure, rate_limit); a
    bare `listen` string serves localhost clients only, with default rate limits.
    """

    def __init__(self, listen: str = "127.0.0.1:8080", api: Mapping[str, Any] | None = None):
        api = api or {"listen": listen}
        self.host, self.port = parse_listen(api.get("listen", listen))
        self.security = Security(api)
        self._routes: list[_Route] = []
        self._websockets: dict[str, _WebSocketPath] = {}
        self._open_websockets: set[web.WebSocketResponse] = set()
        self._query_token_paths: set[str] = set()
        self._pages: dict[str, PageHandler] = {}
        self._runner: web.AppRunner | None = None
        self.add_http("GET", "/api/v1/health", lambda request: json_response(200, {"status": "ok"}))
        dashboard.install(self)

    def use_security(self, security: Security) -> None:
        """New tokens and rate limits (a config reload); the listener and TLS stay."""
        self.security = security

    @property
    def scheme(self) -> str:
        return "https" if self.security.tls else "http"

    # -- registration --------------------------------------------------------------------
    def add_http(self, method: str, path: str, handler: HttpHandler, role: str = "viewer") -> None:
        """Serve `method path` with handler(request) to callers of at least `role`; replaces."""
        self._routes = [r for r in self._routes if (r.method, r.pattern) != (method.upper(), path)]
        self._routes.append(_Route(method, path, handler, role))

    def routes(self) -> list[tuple[str, str, str]]:
        """(method, path pattern, role) of every HTTP route, in registration order."""
        return [(route.method, route.pattern, route.role) for route in self._routes]

    def add_websocket(
        self, path: str, handler: WebSocketHandler, check: WebSocketCheck | None = None
    ) -> None:
        """Serve WebSocket clients of `path` (viewer role) with the async handler(ws, request)."""
        if path in self._websockets:
            raise ValueError(f"WebSocket path {path!r} is already served")
        self._websockets[path] = _WebSocketPath(handler, check)

    def remove_websocket(self, path: str) -> None:
        self._websockets.pop(path, None)

    def add_page(self, path: str, handler: PageHandler) -> None:
        """Serve GET `path` with handler(request) to anyone this listener serves at all: no
        token needed (the address's rate limit and local-only still apply). Not an API route."""
        self._pages[path] = handler

    def live_paths(self) -> dict[str, list[str]]:
        """The live feeds served here: event streams (GET routes that take ?access_token=)
        and WebSocket paths."""
        streams = {r.pattern for r in self._routes if r.method == "GET"} & self._query_token_paths
        return {"sse": sorted(streams), "websocket": sorted(self._websockets)}

    def allow_query_token(self, path: str) -> None:
        """Let callers of `path` present their token as ?access_token= (EventSource at /sse
        cannot set headers, as a browser's WebSocket cannot)."""
        self._query_token_paths.add(path)

    # -- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        application = web.Application(client_max_size=MAX_BODY)
        # One route for every path (a newline, %0A, in it too): ours does the routing.
        application.router.add_route("*", r"/{tail:[\s\S]*}", self._handle)
        self._runner = web.AppRunner(
            application,
            access_log=access_log,
            access_log_class=_AccessLog,
            handle_signals=False,
            shutdown_timeout=STOP_TIMEOUT,
        )
        await self._runner.setup()
        site = web.TCPSite(
            self._runner, self.host, self.port, ssl_context=self.security.ssl_context()
        )
        await site.start()
        self.port = self._runner.addresses[0][1]
        log.info("API listening on %s://%s:%d", self.scheme, self.host, self.port)
        for warning in self.security.warnings(self.host):
            log.warning("API: %s", warning)

    async def stop(self) -> None:
        if self._runner is None:
            return
        closing = [_close_quietly(ws, 1001, "server stopping") for ws in self._open_websockets]
        await asyncio.gather(*closing)
        await self._runner.cleanup()
        self._runner = None

    # -- request handling ----------------------------------------------------------------
    async def _handle(self, native: web.Request) -> web.StreamResponse:
        request = HttpRequest(
            native.method.upper(),
            native.raw_path,  # the request target as sent: path and query, still encoded
            native.headers,
            remote=native.remote or "",
        )
        request.native = native
        page = self._pages.get(request.path)
        websocket = self._websockets.get(request.path)
        try:
            if page is not None:
                return _to_response(self._serve_page(page, request))
            # Who is asking comes first: a body is read only for a caller let in.
            query_token = websocket is not None or request.path in self._query_token_paths
            request.principal = self.security.admit(request, query_token)
            if websocket is not None:
                return await self._serve_websocket(websocket, request, native)
            request.body = await _read_body(native)
            return _to_response(await self._answer_http(request))
        except ApiError as error:
            return _to_response(_error(error))

    def _serve_page(self, page: PageHandler, request: HttpRequest) -> tuple:
        # The browser fetches a page before it can hold a token: a 401 does not stop it.
        # What the page then asks of the API is gated as every request is.
        try:
            self.security.admit(request)
        except ApiError as error:
            if error.status != 401:
                raise
        if request.method not in ("GET", "HEAD"):
            message = f"{request.method} is not allowed on {request.path}"
            return error_response(405, "method_not_allowed", message, Allow="GET, HEAD")
        return page(request)

    async def _answer_http(self, request: HttpRequest) -> HttpResponse:
        allowed = []
        for route in self._routes:
            params = route.match(request.raw_path)
            if params is None:
                continue
            if route.method != request.method:
                allowed.append(route.method)
                continue
            self.security.authorize(request.principal, route.role)
            request.params = params
            return await _call(route.handler, request)
        if allowed:
            message = f"{request.method} is not allowed on {request.path}"
            return error_response(405, "method_not_allowed", message, Allow=", ".join(allowed))
        return error_response(404, "not_found", f"no such path: {request.path}")

    async def _serve_websocket(
        self, entry: _WebSocketPath, request: HttpRequest, native: web.Request
    ) -> web.StreamResponse:
        self.security.authorize(request.principal, "viewer")
        if request.method != "GET":
            message = f"{request.method} is not allowed on {request.path}"
            return _to_response(error_response(405, "method_not_allowed", message, Allow="GET"))
        if "websocket" not in native.headers.get("Upgrade", "").lower():
            message = f"{request.path} is a WebSocket endpoint"
            return _to_response(error_response(426, "upgrade_required", message))
        refusal = entry.check(request) if entry.check else None
        if refusal:
            return _to_response(refusal)
        # Live feeds are small JSON frames fanned out to several clients: per-frame deflate
        # would cost more CPU than the bytes it saves on a LAN.
        websocket = web.WebSocketResponse(
            compress=False, max_msg_size=MAX_WS_MESSAGE, timeout=WS_CLOSE_TIMEOUT
        )
        await websocket.prepare(native)
        self._open_websockets.add(websocket)
        try:
            await entry.handler(websocket, request)
        finally:
            self._open_websockets.discard(websocket)
        return websocket


async def _call(handler: HttpHandler, request: HttpRequest) -> HttpResponse:
    try:
        result = handler(request)
        if inspect.isawaitable(result):
            result = await result
        return result
    except (asyncio.CancelledError, ApiError):
        raise
    except Exception as error:
        log.exception("HTTP handler for %s %s failed", request.method, request.path)
        return error_response(500, "internal", f"{type(error).__name__}: {error}")


async def _read_body(native: web.Request) -> bytes:
    if not native.can_read_body:
        return b""
    try:
        return await native.read()
    except web.HTTPRequestEntityTooLarge:
        raise ApiError(413, "too_large", f"body: larger than {MAX_BODY} bytes") from None


async def _close_quietly(websocket: web.WebSocketResponse, code: int, reason: str) -> None:
    try:
        await asyncio.wait_for(
            websocket.close(code=code, message=reason.encode()), WS_CLOSE_TIMEOUT
        )
    except Exception:  # closing is best effort at shutdown: the runner cuts what is left
        pass


def _error(error: ApiError) -> tuple:
    return error_response(error.status, error.code, error.message, **error.headers)


def _to_response(answer: HttpResponse) -> web.StreamResponse:
    if isinstance(answer, web.StreamResponse):
        return answer
    status, headers, body = answer
    return web.Response(status=status, headers=headers, body=body)


access_log = logging.getLogger("gateway.api.access")


class _AccessLog(AbstractAccessLogger):
    """One DEBUG line per request: client, method, path, status, time. The path only, never
    the query: a WebSocket URL may carry ?access_token=, which must never be logged."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.debug(
            "%s %s %s %d %.1f ms",
            request.remote,
            request.method,
            request.path,
            response.status,
            time * 1000,
        )

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.DEBUG)
