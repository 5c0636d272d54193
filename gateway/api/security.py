"""Who may call the API: bearer tokens kept as SHA-256, roles, rate limits, TLS, local-only."""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
import ssl
import time
from typing import Any, Callable, Mapping

from gateway.config.api_schema import RATE_LIMIT_DEFAULTS, exposure_problem, is_loopback
from gateway.core.ratelimit import Buckets

ROLES = ("viewer", "operator", "admin")  # each may do everything the roles before it may
RANK = {role: rank for rank, role in enumerate(ROLES)}
TOKEN_BYTES = 32


class ApiError(Exception):
    """Raised by the gate or a handler to answer {"error": {"code", "message"}} with `status`."""

    def __init__(self, status: int, code: str, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


class Principal:
    """The caller of one request: a token's name and role, or a local caller when none is set."""

    def __init__(self, name: str | None, role: str):
        self.name = name
        self.role = role

    def __repr__(self) -> str:
        return f"Principal({self.name!r}, {self.role!r})"


LOCAL = Principal(None, "admin")  # no tokens configured: every local caller may do anything


def new_token() -> tuple[str, str]:
    """A fresh random token and its SHA-256 (hex), the only form the config keeps."""
    token = secrets.token_urlsafe(TOKEN_BYTES)
    return token, hashlib.sha256(token.encode()).hexdigest()


def retry_after(seconds: float) -> dict[str, str]:
    """A Retry-After header: whole seconds, at least 1 (the header has no fractions)."""
    return {"Retry-After": str(max(1, math.ceil(seconds)))}


class Security:
    """The gate every request passes; built from the validated [api] table."""

    def __init__(self, api: Mapping[str, Any], clock: Callable[[], float] = time.monotonic):
        self.tokens = [
            (bytes.fromhex(token["sha256"]), Principal(token["name"], token["role"]))
            for token in api.get("tokens") or []
        ]
        self.tls = api.get("tls")
        self.allow_insecure = bool(api.get("allow_insecure"))
        problem = exposure_problem(api)
        if problem:
            raise ValueError(f"api.listen: {problem}")
        limits = api.get("rate_limit") or RATE_LIMIT_DEFAULTS
        self.by_token = Buckets(limits["token"]["rate"], limits["token"]["burst"])
        self.by_address = Buckets(limits["address"]["rate"], limits["address"]["burst"])
        self.clock = clock
        self._ssl = self._load_tls()

    def ssl_context(self) -> ssl.SSLContext | None:
        return self._ssl

    def _load_tls(self) -> ssl.SSLContext | None:
        if not self.tls:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(self.tls["cert"], self.tls["key"])
        except (OSError, ssl.SSLError) as error:
            raise ValueError(f"api.tls: cannot load {self.tls['cert']}: {error}") from None
        return context

    def warnings(self, host: str) -> list[str]:
        """What to say at every start about a listener that is not locked down."""
        said = []
        if not is_loopback(host) and (not self.tokens or not self.tls):
            missing = " and ".join(
                what
                for what, present in (("tokens", self.tokens), ("TLS", self.tls))
                if not present
            )
            said.append(f"allow_insecure = true: listening on {host} without {missing}")
        if not self.tokens and not is_loopback(host):
            said.append("no tokens configured: only clients on this machine are served")
        return said

    # -- the gate ------------------------------------------------------------------------
    def admit(self, request: Any, websocket: bool = False) -> Principal:
        """Rate limit by address, then identify the caller; raises ApiError (401/403/429)."""
        self._limit(self.by_address, request.remote, "this client address")
        if not self.tokens:
            if not is_loopback(request.remote):
                message = "no API tokens are configured: only clients on this machine are served"
                raise ApiError(403, "local_only", message)
            return LOCAL
        presented = _presented_token(request, websocket)
        if presented is None:
            message = "a bearer token is required (header Authorization: Bearer TOKEN)"
            raise ApiError(401, "unauthorized", message, {"WWW-Authenticate": "Bearer"})
        principal = self._match(presented)
        if principal is None:
            challenge = {"WWW-Authenticate": 'Bearer error="invalid_token"'}
            raise ApiError(401, "invalid_token", "the bearer token is not valid", challenge)
        self._limit(self.by_token, principal.name, f"token {principal.name}")
        return principal

    def authorize(self, principal: Principal | None, role: str) -> None:
        if principal is None or RANK[principal.role] < RANK[role]:
            who = f"token {principal.name}" if principal and principal.name else "this caller"
            has = principal.role if principal else "none"
            raise ApiError(403, "forbidden", f"needs the {role} role; {who} has {has}")

    def _match(self, presented: str) -> Principal | None:
        # Every configured digest is compared, in constant time each, whatever matches: the
        # time taken says nothing about which token, or how much of one, was right.
        digest = hashlib.sha256(presented.encode()).digest()
        found = None
        for stored, principal in self.tokens:
            if hmac.compare_digest(digest, stored):
                found = principal
        return found

    def _limit(self, buckets: Buckets, key: Any, who: str) -> None:
        wait = buckets.take(key, self.clock())
        if wait > 0:
            message = f"too many requests from {who}: retry after {wait:.2f} s"
            raise ApiError(429, "rate_limited", message, retry_after(wait))


def _presented_token(request: Any, websocket: bool) -> str | None:
    header = request.headers.get("Authorization")
    if header is not None:
        scheme, _, token = header.partition(" ")
        return token.strip() if scheme.lower() == "bearer" else ""
    if websocket:
        # Browsers cannot set headers on a WebSocket: the token may come in the query.
        values = request.query_values("access_token")
        if values:
            return values[0]
    return None
