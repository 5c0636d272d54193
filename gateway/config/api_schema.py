"""The [api] table: listener address, tokens, TLS, rate limits, and who may reach it."""

from __future__ import annotations

import hashlib
import ipaddress
import re
from typing import Any, Mapping

from gateway.config.checks import (
    POSITIVE_INT,
    boolean,
    choice,
    expects,
    host_port,
    name,
    number,
    text,
)
from gateway.config.report import Got, Invalid, Section, item, join

API_KEYS = ("listen", "tokens", "tls", "allow_insecure", "rate_limit")
RATE_LIMIT_KEYS = ("token", "address")
LIMIT_KEYS = ("rate", "burst")
TOKEN_KEYS = ("name", "role", "sha256", "token")
TLS_KEYS = ("cert", "key")
# Requests a second and burst: per token (a dashboard polls a few endpoints a second), and
# per client address, which counts every request, failed logins too.
RATE_LIMIT_DEFAULTS = {"token": {"rate": 10.0, "burst": 20}, "address": {"rate": 20.0, "burst": 40}}
ROLES = ("admin", "operator", "viewer")
_SHA256 = re.compile(r"[0-9A-Fa-f]{64}")


def api_table(section: Section) -> dict[str, Any]:
    listen = section.get("listen", host_port(port_low=0), "127.0.0.1:8080")
    api = {
        "listen": listen,
        "tokens": _tokens(section),
        "tls": _tls(section.table("tls", TLS_KEYS)) if section.has("tls") else None,
        "allow_insecure": section.get("allow_insecure", boolean, False),
        "rate_limit": _rate_limits(section.table("rate_limit", RATE_LIMIT_KEYS)),
    }
    problem = exposure_problem(api) if section.valid else None
    if problem:
        section.report.add(section.at("listen"), problem)
    return api


def is_loopback(host: str) -> bool:
    """True for addresses only this machine reaches: 127.0.0.0/8, ::1, "localhost"."""
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    # A dual-stack listener sees IPv4 clients as ::ffff:a.b.c.d.
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


def exposure_problem(api: Mapping[str, Any]) -> str | None:
    """What is wrong with a listener other hosts can reach without tokens and TLS, unless
    allow_insecure says so; None when nothing is."""
    listen = api.get("listen") or "127.0.0.1:0"
    host = listen.rpartition(":")[0] or "127.0.0.1"
    locked = bool(api.get("tokens")) and bool(api.get("tls"))
    if is_loopback(host) or locked or api.get("allow_insecure"):
        return None
    return (
        f"{listen} is reachable from other hosts, which needs tokens and tls "
        "(or allow_insecure = true)"
    )


def _tokens(section: Section) -> list[dict[str, Any]]:
    tokens = []
    raw_tokens = section.raw.get("tokens", [])
    if not isinstance(raw_tokens, list):
        section.report.expected(section.at("tokens"), "an array of tables", raw_tokens)
        raw_tokens = []
    seen: dict[str, int] = {}
    for index, raw in enumerate(raw_tokens):
        path = item(section.at("tokens"), index)
        token = _token(Section(section.report, path, raw, TOKEN_KEYS))
        if token["name"] in seen:
            section.report.expected(
                join(path, "name"),
                "a name no other token uses",
                token["name"],
                f" (tokens[{seen[token['name']]}] has it)",
            )
        elif token["name"]:
            seen[token["name"]] = index
        tokens.append(token)
    return tokens


def _tls(section: Section) -> dict[str, Any]:
    return {
        "cert": section.get("cert", text("a PEM certificate file path"), required=True),
        "key": section.get("key", text("a PEM private key file path"), required=True),
    }


def _rate_limits(section: Section) -> dict[str, Any]:
    limits = {}
    for key, default in RATE_LIMIT_DEFAULTS.items():
        table = section.table(key, LIMIT_KEYS)
        limits[key] = {
            "rate": table.get("rate", number(above=0), default["rate"]),
            "burst": table.get("burst", POSITIVE_INT, default["burst"]),
        }
    return limits


def _token(section: Section) -> dict[str, Any]:
    digest = section.get("sha256", _sha256)
    secret = section.get("token", text("the token itself (usually from ${ENV})"))
    if section.valid and section.has("sha256") == section.has("token"):
        given = "both" if section.has("sha256") else "neither"
        section.report.expected(section.path, "exactly one of sha256 or token", Got(given))
    if secret is not None and digest is None:
        # A plain token (normally substituted from the environment) is kept only as its hash.
        digest = hashlib.sha256(secret.encode()).hexdigest()
    return {
        "name": section.get("name", name, required=True),
        "role": section.get("role", choice(ROLES), required=True),
        "sha256": digest,
    }


@expects("a SHA-256 digest of 64 hex digits")
def _sha256(value: Any) -> str:
    if not isinstance(value, str) or not _SHA256.fullmatch(value):
        raise Invalid(_sha256.expected)  # type: ignore[attr-defined]
    return value.lower()
