"""The dashboard at /: one page, its script and style, served from package data.

The files are read once, at the first request for them. The page is public (a browser
fetches it before it can hold a token); everything it shows comes from the API, with the
token the operator gives it (see docs/decisions.md).
"""

from __future__ import annotations

import html
import json
from importlib import resources
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from gateway.api.server import ApiServer, HttpRequest

# path → (file under gateway/api/static, media type)
FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/static/dashboard.js": ("dashboard.js", "text/javascript; charset=utf-8"),
    "/static/dashboard.css": ("dashboard.css", "text/css; charset=utf-8"),
    "/static/favicon.svg": ("favicon.svg", "image/svg+xml"),
}
# Where index.html says what the script needs before its first call: the live feeds this
# listener serves, and whether it wants a token (a 401 would say so, and log an error).
LISTENER_MARK = b"%LISTENER%"
# Same-origin only: no inline script, nothing from elsewhere (the page works offline); the
# live feed's EventSource or WebSocket goes back to this origin.
HEADERS = {
    "Cache-Control": "no-cache",
    "Content-Security-Policy": (
        "default-src 'self'; connect-src 'self'; img-src 'self' data:; "
        "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",  # a feed URL carries ?access_token=
}

_cache: dict[str, bytes] = {}


def install(api: ApiServer) -> None:
    """Serve the dashboard's files on `api` as public pages."""
    for path in FILES:
        api.add_page(path, _page(api, path))


def _page(api: ApiServer, path: str) -> Callable[[HttpRequest], tuple]:
    name, media = FILES[path]

    def answer(request: HttpRequest) -> tuple:
        body = _read(name)
        if name == "index.html":
            listener = {**api.live_paths(), "tokens": bool(api.security.tokens)}
            body = body.replace(LISTENER_MARK, _attribute(listener))
        return 200, {"Content-Type": media, **HEADERS}, body

    return answer


def _read(name: str) -> bytes:
    if name not in _cache:
        _cache[name] = resources.files("gateway.api").joinpath("static", name).read_bytes()
    return _cache[name]


def _attribute(value: dict[str, Any]) -> bytes:
    """`value` as JSON, escaped for an HTML attribute."""
    return html.escape(json.dumps(value, separators=(",", ":")), quote=True).encode()
