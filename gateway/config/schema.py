"""Validate a parsed gateway.toml and normalise it: every error collected, defaults applied."""

from __future__ import annotations

import difflib
import hashlib
import ipaddress
import json
import os
import re
import socket
from typing import Any, Callable, Iterable, Mapping
from urllib.parse import urlsplit

from gateway.config.units import DURATION_EXPECTED, SIZE_EXPECTED, parse_duration, parse_size
from gateway.core.bounds import DEFAULT_QUEUE_SIZE
from gateway.core.nmea import SENTENCES
from gateway.core.pipeline import STEP_CHOICES, STEP_PARAMETERS, check_step


class ConfigError(Exception):
    """Invalid configuration; `.errors` holds one "key.path: expected …, got …" per problem."""

    def __init__(self, errors: Iterable[str], source: str = "<string>"):
        self.errors = list(errors)
        self.source = source
        super().__init__(self.errors)

    def __str__(self) -> str:
        count = len(self.errors)
        heading = f"{self.source}: {count} configuration error{'s' if count != 1 else ''}"
        return "\n  ".join([heading, *self.errors])


MISSING: Any = object()

TOP_KEYS = ("gateway", "api", "sources", "presets", "sinks")
GATEWAY_KEYS = ("id", "data_dir", "fsync", "commit_interval")
FSYNC_CHOICES = ("always", "batch", "off")
API_KEYS = ("listen", "tokens", "tls", "allow_insecure", "rate_limit")
RATE_LIMIT_KEYS = ("token", "address")
# Requests a second and burst: per token (a dashboard polls a few endpoints a second), and
# per client address, which counts every request, failed logins too.
RATE_LIMIT_DEFAULTS = {"token": {"rate": 10.0, "burst": 20}, "address": {"rate": 20.0, "burst": 40}}
PLACEHOLDERS = ("gateway", "device", "stream")
DEFAULT_TOPIC = "gw/{gateway}/{device}/{stream}"
ROLES = ("admin", "operator", "viewer")
FRAMINGS = ("lines", "cobs")
FORMATS = ("json", "csv", "kv", "nmea", "regex")
# What each simulated profile writes, so the source parses it without being told. Mirrors
# gateway.sources.simulator.PROFILE_FORMATS (a test keeps them equal; config must not import
# sources).
PROFILE_FORMATS = {
    "env": {"format": "json"},
    "csv": {"format": "csv", "fields": ["temperature", "humidity", "pressure"]},
    "kv": {"format": "kv"},
    "nmea": {"format": "nmea"},
    "counter": {"format": "json"},
}
SINK_TYPES = ("mqtt", "udp", "websocket", "sse", "webhook", "recorder")
ENCODINGS = ("json", "msgpack", "cbor")
OVERFLOW_POLICIES = ("drop_oldest", "drop_newest", "block")
SLOW_CONSUMER_POLICIES = ("drop_oldest", "disconnect")
BUFFER_POLICIES = ("write_ahead", "spill", "none")
MAX_UDP_PAYLOAD = 65507

COMMON_SINK_KEYS = (
    "type",
    "enabled",
    "buffer",
    "breaker",
    "retry",
    "queue_size",
    "max_batch",
    "send_timeout",
)
LIVE_SINK_KEYS = ("topic", "queue", "slow_consumer", "path", "batch")
SINK_KEYS = {
    "mqtt": (
        "url",
        "client_id",
        "qos",
        "retain",
        "topic",
        "username",
        "password",
        "ca",
        "cert",
        "key",
        "keepalive",
        "max_inflight",
        "availability",
        "discovery_prefix",
        "device_timeout",
        "encoding",
        "batch",
    ),
    "udp": ("targets", "encoding", "max_datagram", "batch", "ttl", "broadcast"),
    "websocket": LIVE_SINK_KEYS,
    "sse": LIVE_SINK_KEYS + ("replay", "replay_age", "client_retry", "heartbeat", "cors_origins"),
    "webhook": ("url", "timeout", "encoding", "batch", "headers", "verify", "ca", "cert", "key"),
    "recorder": ("path", "format", "rotate_bytes", "rotate_every", "gzip", "fsync_every", "name"),
}
SOURCE_KEYS = (
    "name",
    "port",
    "match",
    "simulate",
    "baud",
    "framing",
    "format",
    "fields",
    "pattern",
    "delimiter",
    "sentences",
    "header",
    "decimal",
    "stream",
    "preset",
    "max_line",
    "enabled",
)
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
    "batch": ("mqtt", "udp", "websocket", "sse", "webhook"),
}

_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_HOSTNAME = re.compile(r"(?=.{1,253}$)[A-Za-z0-9_]([A-Za-z0-9_-]{0,62})(\.[A-Za-z0-9_-]{1,63})*")
_HOST_PORT = re.compile(r"\[([0-9A-Fa-f:.]+)\]:(\d{1,5})|([^:\[\]\s/]+):(\d{1,5})")
_HEX4 = re.compile(r"[0-9A-Fa-f]{4}")
_SHA256 = re.compile(r"[0-9A-Fa-f]{64}")


# ---------------------------------------------------------------------------------------------
# Reporting


class Got(str):
    """A hand-written description for the "got" part of a message, printed as is."""


def describe(value: Any) -> str:
    """Show a TOML value the way the user wrote it: strings quoted, tables and arrays named."""
    if value is MISSING:
        return "nothing"
    if isinstance(value, Got):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        shown = value if len(value) <= 60 else value[:57] + "..."
        return json.dumps(shown, ensure_ascii=False)
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    if value is None:
        return "null"
    return f"a {type(value).__name__} ({value})"


def closest(word: Any, options: Iterable[Any]) -> str | None:
    """The option a typo most likely meant, if any is close enough."""
    if not isinstance(word, str):
        return None
    close = difflib.get_close_matches(word, [str(option) for option in options], n=1, cutoff=0.6)
    return close[0] if close else None


def did_you_mean(word: Any, options: Iterable[Any]) -> str:
    guess = closest(word, options)
    return f' (did you mean "{guess}"?)' if guess else ""


def alternatives(options: Iterable[Any]) -> str:
    """ "0 or 1", "json, msgpack or cbor", "one of rename, scale, convert, …"."""
    names = [str(option) for option in options]
    if len(names) == 1:
        return names[0]
    if len(names) <= 3:
        return ", ".join(names[:-1]) + " or " + names[-1]
    return "one of " + ", ".join(names)


def join(path: str, key: str) -> str:
    shown = key if _BARE_KEY.fullmatch(key) else json.dumps(key, ensure_ascii=False)
    return f"{path}.{shown}" if path else shown


def item(path: str, index: int) -> str:
    return f"{path}[{index}]"


class Report:
    """Collects every error so the user sees them all in one run."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    def expected(self, path: str, expected: str, got: Any = MISSING, hint: str = "") -> None:
        self.errors.append(f"{path}: expected {expected}, got {describe(got)}{hint}")

    def add(self, path: str, message: str) -> None:
        self.errors.append(f"{path}: {message}")

    def unknown_key(self, path: str, key: str, allowed: Iterable[str]) -> None:
        hint = did_you_mean(key, allowed)
        if hint:
            self.add(path, "unknown key" + hint)
        else:
            self.add(path, "unknown key (expected one of: " + ", ".join(allowed) + ")")


class Invalid(Exception):
    """Raised by a value check; the caller reports it against the key path."""

    def __init__(self, expected: str, hint: str = ""):
        super().__init__(expected)
        self.expected = expected
        self.hint = hint


Check = Callable[[Any], Any]


class Section:
    """One TOML table under validation: flags unknown keys, reads keys through checks."""

    def __init__(self, report: Report, path: str, raw: Any, allowed: Iterable[str]):
        self.report = report
        self.path = path
        self.allowed = tuple(allowed)
        self.valid = True
        if raw is MISSING or raw is None:
            raw = {}
        elif not isinstance(raw, dict):
            report.expected(path, "a table", raw)
            raw = {}
            self.valid = False
        # None stands for "not given", so a normalised config validates again unchanged.
        self.raw = {key: value for key, value in raw.items() if value is not None}
        for key in self.raw:
            if key not in self.allowed:
                report.unknown_key(join(path, key), key, self.allowed)

    def at(self, key: str) -> str:
        return join(self.path, key)

    def has(self, key: str) -> bool:
        return key in self.raw

    def get(self, key: str, check: Check, default: Any = None, required: bool = False) -> Any:
        if key not in self.raw:
            if required:
                self.report.expected(self.at(key), check.expected)  # type: ignore[attr-defined]
            return default
        value = self.raw[key]
        try:
            return check(value)
        except Invalid as bad:
            self.report.expected(self.at(key), bad.expected, value, bad.hint)
            return default

    def get_list(self, key: str, check: Check, required: bool = False) -> list[Any]:
        """A non-empty array whose entries each pass `check`, reported as key[index]."""
        expected = "a non-empty array of " + check.expected[2:]  # type: ignore[attr-defined]
        entries = self.raw.get(key, MISSING)
        if entries is MISSING or not isinstance(entries, list) or not entries:
            if entries is not MISSING or required:
                self.report.expected(self.at(key), expected, entries)
            return []
        accepted = []
        for index, entry in enumerate(entries):
            try:
                accepted.append(check(entry))
            except Invalid as bad:
                self.report.expected(item(self.at(key), index), bad.expected, entry, bad.hint)
        return accepted

    def table(self, key: str, allowed: Iterable[str]) -> Section:
        return Section(self.report, self.at(key), self.raw.get(key, MISSING), allowed)


# ---------------------------------------------------------------------------------------------
# Value checks: each takes the raw value, returns the normalised one or raises Invalid.


def _expects(expected: str) -> Callable[[Check], Check]:
    def attach(check: Check) -> Check:
        check.expected = expected  # type: ignore[attr-defined]
        return check

    return attach


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def text(expected: str = "a non-empty string") -> Check:
    @_expects(expected)
    def check(value: Any) -> str:
        if not isinstance(value, str) or not value.strip():
            raise Invalid(expected)
        return value

    return check


def any_text(expected: str = "a string") -> Check:
    @_expects(expected)
    def check(value: Any) -> str:
        if not isinstance(value, str):
            raise Invalid(expected)
        return value

    return check


@_expects("true or false")
def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise Invalid("true or false")
    return value


def integer(low: int | None = None, high: int | None = None, expected: str = "") -> Check:
    if not expected:
        expected = _range_text("an integer", low, high)

    @_expects(expected)
    def check(value: Any) -> int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool):
            raise Invalid(expected)
        if (low is not None and value < low) or (high is not None and value > high):
            raise Invalid(expected)
        return value

    return check


POSITIVE_INT = integer(1, expected="a positive integer")


def number(low: float | None = None, above: float | None = None, expected: str = "") -> Check:
    if not expected:
        expected = "a number" if low is None else f"a number of at least {low:g}"
        if above is not None:
            expected = f"a number greater than {above:g}"

    @_expects(expected)
    def check(value: Any) -> float | int:
        if not _is_number(value) or value != value:
            raise Invalid(expected)
        if (low is not None and value < low) or (above is not None and value <= above):
            raise Invalid(expected)
        return value

    return check


def _range_text(what: str, low: int | None, high: int | None) -> str:
    if low is not None and high is not None:
        return f"{what} from {low} to {high}"
    if low is not None:
        return f"{what} of at least {low}"
    return what


def choice(options: Iterable[Any], expected: str = "", hints: Mapping[Any, str] | None = None):
    options = tuple(options)
    expected = expected or alternatives(options)

    @_expects(expected)
    def check(value: Any) -> Any:
        if isinstance(value, bool) or value not in options:
            hint = (hints or {}).get(value, "") if not isinstance(value, (dict, list)) else ""
            raise Invalid(expected, hint or did_you_mean(value, options))
        return value

    return check


def duration(positive: bool = False) -> Check:
    expected = DURATION_EXPECTED + (" greater than 0" if positive else "")

    @_expects(expected)
    def check(value: Any) -> float:
        try:
            seconds = parse_duration(value)
        except ValueError:
            raise Invalid(expected) from None
        if positive and seconds <= 0:
            raise Invalid(expected)
        return seconds

    return check


def size(positive: bool = True) -> Check:
    expected = SIZE_EXPECTED + (" greater than 0" if positive else "")

    @_expects(expected)
    def check(value: Any) -> int:
        try:
            count = parse_size(value)
        except ValueError:
            raise Invalid(expected) from None
        if positive and count <= 0:
            raise Invalid(expected)
        return count

    return check


NAME_EXPECTED = 'a name of letters, digits, "_", "-" and "." (at most 64)'


@_expects(NAME_EXPECTED)
def name(value: Any) -> str:
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise Invalid(NAME_EXPECTED)
    return value


def string_list(expected: str, allow_empty: bool = False) -> Check:
    @_expects(expected)
    def check(value: Any) -> list[str]:
        if not isinstance(value, list) or (not value and not allow_empty):
            raise Invalid(expected)
        if not all(isinstance(entry, str) and entry for entry in value):
            raise Invalid(expected)
        if len(set(value)) != len(value):
            raise Invalid(expected, " (an entry is repeated)")
        return list(value)

    return check


def string_map(expected: str) -> Check:
    @_expects(expected)
    def check(value: Any) -> dict[str, str]:
        if not isinstance(value, dict):
            raise Invalid(expected)
        if not all(isinstance(v, str) and k and v for k, v in value.items()):
            raise Invalid(expected)
        return dict(value)

    return check


def table(expected: str) -> Check:
    """A non-empty table, kept as it is: its owner checks the inside (validate's fields)."""

    @_expects(expected)
    def check(value: Any) -> dict[str, Any]:
        if not isinstance(value, dict) or not value:
            raise Invalid(expected)
        return dict(value)

    return check


TEMPLATE_EXPECTED = "a topic template using only {gateway}, {device} and {stream}"


@_expects(TEMPLATE_EXPECTED)
def topic_template(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise Invalid(TEMPLATE_EXPECTED)
    for placeholder in _PLACEHOLDER.findall(value):
        if placeholder not in PLACEHOLDERS:
            guess = closest(placeholder, PLACEHOLDERS)
            hint = f"; did you mean {{{guess}}}?" if guess else ""
            raise Invalid(TEMPLATE_EXPECTED, f" ({{{placeholder}}} is not one of them{hint})")
    leftover = _PLACEHOLDER.sub("", value)
    if "{" in leftover or "}" in leftover:
        raise Invalid(TEMPLATE_EXPECTED, " (a brace is not closed)")
    if "+" in value or "#" in value or "\0" in value:
        raise Invalid(TEMPLATE_EXPECTED, " (+ and # are subscription wildcards, not topic text)")
    return value


def host_port(port_low: int = 1) -> Check:
    expected = 'a "host:port" address (IPv6 as "[::1]:port")'

    @_expects(expected)
    def check(value: Any) -> str:
        if not isinstance(value, str):
            raise Invalid(expected)
        match = _HOST_PORT.fullmatch(value)
        if match is None:
            raise Invalid(expected)
        host, port = (match.group(1), match.group(2)) if match.group(1) else match.group(3, 4)
        if not _valid_host(host, ipv6=bool(match.group(1))):
            raise Invalid(expected, " (the host is not a valid address or name)")
        if not port_low <= int(port) <= 65535:
            raise Invalid(expected, f" (the port must be from {port_low} to 65535)")
        return value

    return check


def _valid_host(host: str, ipv6: bool = False) -> bool:
    if ipv6 or ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return False
        return True
    if re.fullmatch(r"[\d.]+", host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            return False
        return True
    return bool(_HOSTNAME.fullmatch(host))


def url(schemes: tuple[str, ...], example: str, allow_path: bool = True) -> Check:
    expected = f'an {alternatives(s + "://" for s in schemes)} URL like "{example}"'

    @_expects(expected)
    def check(value: Any) -> str:
        if not isinstance(value, str):
            raise Invalid(expected)
        parts = urlsplit(value)
        if parts.scheme not in schemes:
            raise Invalid(expected)
        try:
            parts.port  # noqa: B018 - raises for a port that is not a number in range
        except ValueError:
            raise Invalid(expected, " (the port is not valid)") from None
        if not parts.hostname or not _valid_host(parts.hostname):
            raise Invalid(expected, " (the host is missing or not valid)")
        if parts.username is not None:
            raise Invalid(expected, " (give credentials with the username and password keys)")
        if not allow_path and (parts.path not in ("", "/") or parts.query or parts.fragment):
            raise Invalid(expected, " (it takes no path or query)")
        return value

    return check


def mqtt_address(value: str) -> tuple[str, int, bool]:
    """Split a validated MQTT URL into (host, port, tls); 1883 and 8883 are the default ports."""
    parts = urlsplit(value)
    tls = parts.scheme == "mqtts"
    return parts.hostname or "", parts.port or (8883 if tls else 1883), tls


@_expects('a USB id of 4 hex digits like "2e8a"')
def usb_id(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 0xFFFF:
        return f"{value:04x}"
    if isinstance(value, str) and _HEX4.fullmatch(value):
        return value.lower()
    raise Invalid(usb_id.expected)  # type: ignore[attr-defined]


def _regex(value: Any) -> str:
    expected = "a regular expression with at least one named group (?P<name>…)"
    if not isinstance(value, str):
        raise Invalid(expected)
    try:
        compiled = re.compile(value)
    except re.error as error:
        raise Invalid(expected, f" ({error})") from None
    if not compiled.groupindex:
        raise Invalid(expected, " (it has no named group)")
    return value


regex = _expects("a regular expression with at least one named group (?P<name>…)")(_regex)


# ---------------------------------------------------------------------------------------------
# The configuration


def normalize(raw: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Validate a parsed TOML document; return (normalised config, errors).

    Cross-references between presets (extends chains, source presets) are checked by
    gateway.config.presets.check_references, which needs this result.
    """
    top = Section(Report(), "", raw, TOP_KEYS)
    # One report per top-level key so the errors come out in the order of the file, even
    # though sinks must be read before the presets that route to them.
    reports = {key: Report() for key in TOP_KEYS}
    gateway = _gateway(Section(reports["gateway"], "gateway", raw.get("gateway"), GATEWAY_KEYS))
    sinks = _sinks(reports["sinks"], top.raw.get("sinks", MISSING), gateway)
    config = {
        "gateway": gateway,
        "api": _api(Section(reports["api"], "api", raw.get("api"), API_KEYS)),
        "sources": _sources(reports["sources"], top.raw.get("sources", MISSING)),
        "presets": _user_presets(reports["presets"], top.raw.get("presets", MISSING), sinks),
        "sinks": sinks,
    }
    order = [key for key in raw if key in reports] + [key for key in TOP_KEYS if key not in raw]
    errors = top.report.errors + [line for key in order for line in reports[key].errors]
    return config, errors


def default_gateway_id() -> str:
    host = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname())[:64].strip(".-")
    return host or "gateway"


def _gateway(section: Section) -> dict[str, Any]:
    gateway = {
        "id": section.get("id", name, default_gateway_id()),
        "data_dir": section.get("data_dir", text("a directory path"), "./var"),
    }
    # Buffer store tuning: present only when given (the store's defaults: "always", 50 ms).
    if section.has("fsync"):
        gateway["fsync"] = section.get("fsync", choice(FSYNC_CHOICES), "always")
    if section.has("commit_interval"):
        gateway["commit_interval"] = section.get("commit_interval", duration(), 0.05)
    return gateway


def _api(section: Section) -> dict[str, Any]:
    listen = section.get("listen", host_port(port_low=0), "127.0.0.1:8080")
    api = {
        "listen": listen,
        "tokens": _tokens(section),
        "tls": _tls(section.table("tls", ("cert", "key"))) if section.has("tls") else None,
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
        token = _token(Section(section.report, path, raw, ("name", "role", "sha256", "token")))
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
        table = section.table(key, ("rate", "burst"))
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


@_expects("a SHA-256 digest of 64 hex digits")
def _sha256(value: Any) -> str:
    if not isinstance(value, str) or not _SHA256.fullmatch(value):
        raise Invalid(_sha256.expected)  # type: ignore[attr-defined]
    return value.lower()


# -- sources ----------------------------------------------------------------------------------


def _sources(report: Report, raw: Any) -> list[dict[str, Any]]:
    if raw is MISSING:
        return []
    if not isinstance(raw, list):
        report.expected("sources", "an array of tables ([[sources]])", raw)
        return []
    sources = []
    seen: dict[str, int] = {}
    for index, entry in enumerate(raw):
        path = item("sources", index)
        source = _source(Section(report, path, entry, SOURCE_KEYS))
        source_name = source["name"]
        if source_name in seen:
            report.expected(
                join(path, "name"),
                "a name no other source uses",
                source_name,
                f" (sources[{seen[source_name]}] has it)",
            )
        elif source_name:
            seen[source_name] = index
        sources.append(source)
    return sources


def _source(section: Section) -> dict[str, Any]:
    simulate = None
    if section.has("simulate"):
        simulate = _simulate(section.table("simulate", ("profile", "rate")))
    framing = section.get("framing", choice(FRAMINGS), "lines")
    source = {
        "name": section.get("name", name, required=True),
        "port": section.get("port", text('a serial device path like "/dev/ttyACM0"')),
        "match": _match(section.table("match", ("vid", "pid", "serial")))
        if section.has("match")
        else None,
        "simulate": simulate,
        "baud": section.get("baud", POSITIVE_INT, 115200),
        "framing": framing,
        # None: the format's own default (csv "," or ";" with decimal ","; kv "," and ";")
        "delimiter": section.get("delimiter", _delimiter),
        "stream": section.get("stream", name, "default"),
        "preset": section.get("preset", name, "basic"),
        "max_line": section.get("max_line", size(), 4096),
        "enabled": section.get("enabled", boolean, True),
    }
    _check_device(section)
    source.update(_line_format(section, framing, simulate))
    return source


@_expects("a non-empty string")
def _delimiter(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise Invalid("a non-empty string")
    return value


def _check_device(section: Section) -> None:
    given = [key for key in ("port", "match", "simulate") if section.has(key)]
    if section.valid and len(given) != 1:
        got = Got(" and ".join(given) if given else "none of them")
        section.report.expected(section.path, "exactly one of port, match or simulate", got)


def _match(section: Section) -> dict[str, Any]:
    return {
        "vid": section.get("vid", usb_id, required=True),
        "pid": section.get("pid", usb_id, required=True),
        "serial": section.get("serial", text("a USB serial number")),
    }


def _simulate(section: Section) -> dict[str, Any]:
    return {
        "profile": section.get("profile", choice(PROFILE_FORMATS), required=True),
        "rate": section.get("rate", number(above=0), 10.0),
    }


def _line_format(section: Section, framing: str, simulate: dict | None) -> dict[str, Any]:
    report = section.report
    if framing == "cobs":
        for key in LINE_FORMAT_KEYS + ("simulate",):
            if section.has(key):
                report.add(section.at(key), 'not used with framing "cobs" (only with "lines")')
        return {"format": None, "fields": None, "pattern": None, **_NO_FORMAT_OPTIONS}
    profile = PROFILE_FORMATS.get((simulate or {}).get("profile"), {})
    line_format = section.get("format", choice(FORMATS), profile.get("format", "json"))
    if profile and line_format != profile["format"]:
        wanted = f'"{profile["format"]}" for simulate profile "{simulate["profile"]}"'  # type: ignore
        report.expected(section.at("format"), wanted, line_format)
    fields = section.get("fields", string_list("a non-empty array of column names"))
    pattern = section.get("pattern", regex)
    if fields is None and "fields" in profile:
        fields = list(profile["fields"])
    elif line_format == "csv" and not (section.has("fields") or section.raw.get("header") is True):
        report.expected(
            section.at("fields"), 'an array of column names (format "csv", or header = true)'
        )
    if line_format == "regex" and not section.has("pattern"):
        report.expected(section.at("pattern"), regex.expected)  # type: ignore[attr-defined]
    if line_format != "csv" and section.has("fields"):
        report.add(section.at("fields"), f'not used with format "{line_format}" (only "csv")')
    if line_format != "regex" and section.has("pattern"):
        report.add(section.at("pattern"), f'not used with format "{line_format}" (only "regex")')
    options = _format_options(section, line_format)
    return {"format": line_format, "fields": fields, "pattern": pattern, **options}


# Line-format keys, and the formats each of the newer ones applies to.
LINE_FORMAT_KEYS = ("format", "fields", "pattern", "delimiter", "sentences", "header", "decimal")
_FORMAT_OPTION_FORMATS = {
    "delimiter": ("csv", "kv"),
    "sentences": ("nmea",),
    "header": ("csv",),
    "decimal": ("csv",),
}
# None where a key does not apply, so that a normalised config validates again unchanged
_NO_FORMAT_OPTIONS = {"sentences": None, "header": None, "decimal": None}


def _format_options(section: Section, line_format: str) -> dict[str, Any]:
    """sentences (nmea), header and decimal (csv), each an error with another format."""
    for key, formats in _FORMAT_OPTION_FORMATS.items():
        if section.has(key) and line_format not in formats:
            only = " or ".join(f'"{kind}"' for kind in formats)
            message = f'not used with format "{line_format}" (only {only})'
            section.report.add(section.at(key), message)
    options = dict(_NO_FORMAT_OPTIONS)
    if section.has("sentences"):
        options["sentences"] = list(dict.fromkeys(section.get_list("sentences", _sentence)))
    if line_format == "csv":
        options["header"] = section.get("header", boolean, False)
        options["decimal"] = section.get("decimal", choice((".", ","), '"." or ","'), ".")
    delimiter = section.raw.get("delimiter")
    if options["decimal"] == "," and isinstance(delimiter, str) and "," in delimiter:
        section.report.add(
            section.at("decimal"), 'a decimal "," needs another delimiter (the default is ";")'
        )
    return options


@_expects("a sentence type: " + ", ".join(SENTENCES))
def _sentence(value: Any) -> str:
    kind = value.upper() if isinstance(value, str) else value
    if kind not in SENTENCES:
        raise Invalid(_sentence.expected, did_you_mean(kind, SENTENCES))  # type: ignore
    return kind


# -- sinks ------------------------------------------------------------------------------------


def _sinks(report: Report, raw: Any, gateway: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    if raw is MISSING:
        return {}
    if not isinstance(raw, dict):
        report.expected("sinks", "a table of sinks ([sinks.NAME])", raw)
        return {}
    sinks = {}
    for sink_name, entry in raw.items():
        path = join("sinks", sink_name)
        try:
            name(sink_name)
        except Invalid as bad:
            report.expected(path, "a sink " + bad.expected[2:], sink_name)
        sinks[sink_name] = sink_options(report, path, entry, gateway)
    _check_live_paths(report, sinks)
    return sinks


def sink_options(report: Report, path: str, raw: Any, gateway: Mapping[str, Any]) -> dict[str, Any]:
    """Normalise one [sinks.NAME] table (also used to reconfigure a sink at runtime)."""
    sink_type = raw.get("type") if isinstance(raw, dict) else None
    known = sink_type in SINK_TYPES
    type_keys = SINK_KEYS[sink_type] if known else _ALL_SINK_KEYS
    section = Section(report, path, raw, COMMON_SINK_KEYS + type_keys)
    options = {
        "type": section.get("type", choice(SINK_TYPES), required=section.valid),
        "enabled": section.get("enabled", boolean, True),
        "buffer": _buffer(section.table("buffer", ("max_bytes", "max_age", "overflow"))),
        "breaker": _breaker(section.table("breaker", ("failures", "reset_after"))),
        "retry": _retry(section.table("retry", ("base", "cap"))),
        "queue_size": section.get("queue_size", POSITIVE_INT, DEFAULT_QUEUE_SIZE),
        "max_batch": section.get("max_batch", POSITIVE_INT, 500),
    }
    if section.has("send_timeout"):  # present only when given (the sink's default: 10 s)
        options["send_timeout"] = section.get("send_timeout", duration(positive=True), 10.0)
    if known:
        options.update(_SINK_TYPE_OPTIONS[sink_type](section, gateway))
    return options


def _buffer(section: Section) -> dict[str, Any]:
    return {
        "max_bytes": section.get("max_bytes", size(), 64 * 1024**2),
        "max_age": section.get("max_age", duration(positive=True), 7 * 86400.0),
        "overflow": section.get("overflow", choice(OVERFLOW_POLICIES), "drop_oldest"),
    }


def _breaker(section: Section) -> dict[str, Any]:
    return {
        "failures": section.get("failures", POSITIVE_INT, 5),
        "reset_after": section.get("reset_after", duration(positive=True), 30.0),
    }


def _retry(section: Section) -> dict[str, Any]:
    base = section.get("base", duration(positive=True), 0.5)
    cap = section.get("cap", duration(positive=True), 60.0)
    if cap < base:
        given = section.raw.get("cap")
        section.report.expected(section.at("cap"), f"at least retry.base ({base:g}s)", given)
        cap = base
    return {"base": base, "cap": cap}


def _batch(section: Section, max_readings: int = 1) -> dict[str, Any]:
    return {
        "max_readings": section.get("max_readings", POSITIVE_INT, max_readings),
        "max_delay": section.get("max_delay", duration(), 0.0),
    }


BATCH_KEYS = ("max_readings", "max_delay")


def _mqtt(section: Section, gateway: Mapping[str, Any]) -> dict[str, Any]:
    url_check = url(("mqtt", "mqtts"), "mqtt://127.0.0.1:1883", allow_path=False)
    options = {
        "url": section.get("url", url_check, "mqtt://127.0.0.1:1883"),
        "client_id": section.get("client_id", text(), f"gw-{gateway['id']}"),
        "qos": section.get("qos", QOS, 1),
        "retain": section.get("retain", boolean, False),
        "topic": section.get("topic", topic_template, DEFAULT_TOPIC),
        "username": section.get("username", text()),
        "password": section.get("password", any_text()),
        "ca": section.get("ca", text("a file path")),
        "cert": section.get("cert", text("a file path")),
        "key": section.get("key", text("a file path")),
        "keepalive": section.get("keepalive", _keepalive, 30.0),
        "max_inflight": section.get("max_inflight", MAX_INFLIGHT, 1000),
        "availability": section.get("availability", boolean, True),
        "discovery_prefix": section.get("discovery_prefix", text(), "homeassistant"),
        # A discovered device silent this long is "offline" (0: only its link decides).
        "device_timeout": section.get("device_timeout", duration(), 60.0),
        "encoding": section.get("encoding", choice(ENCODINGS), "json"),
        "batch": _batch(section.table("batch", BATCH_KEYS)),
    }
    report = section.report
    if options["password"] is not None and options["username"] is None:
        report.expected(section.at("username"), "a user name (MQTT sends a password only with one)")
    if section.has("cert") != section.has("key"):
        missing = "key" if section.has("cert") else "cert"
        report.expected(section.at(missing), "a file path (cert and key go together)")
    tls_keys = [key for key in ("ca", "cert", "key") if section.has(key)]
    if tls_keys and options["url"].startswith("mqtt://"):
        report.add(section.at(tls_keys[0]), 'not used with an "mqtt://" URL (use "mqtts://")')
    return options


QOS = choice((0, 1), hints={2: " (QoS 2 is not supported)"})
MAX_INFLIGHT = integer(1, 65535)
KEEPALIVE_EXPECTED = "a duration from 1s to 18h12m15s (65535 s)"


@_expects(KEEPALIVE_EXPECTED)
def _keepalive(value: Any) -> float:
    try:
        seconds = parse_duration(value)
    except ValueError:
        raise Invalid(KEEPALIVE_EXPECTED) from None
    if not 1 <= seconds <= 65535:
        raise Invalid(KEEPALIVE_EXPECTED)
    return seconds


def _udp(section: Section, gateway: Mapping[str, Any]) -> dict[str, Any]:
    targets = section.get_list("targets", host_port(), required=section.valid)
    return {
        "targets": targets,
        "encoding": section.get("encoding", choice(ENCODINGS), "json"),
        "max_datagram": section.get("max_datagram", integer(64, MAX_UDP_PAYLOAD), 1472),
        "batch": _batch(section.table("batch", BATCH_KEYS)),
        "ttl": section.get("ttl", integer(0, 255), 1),
        # None means "auto": the sink enables SO_BROADCAST only for broadcast targets.
        "broadcast": section.get("broadcast", _broadcast, None),
    }


@_expects('true, false or "auto"')
def _broadcast(value: Any) -> bool | None:
    if value == "auto":
        return None
    if isinstance(value, bool):
        return value
    raise Invalid('true, false or "auto"')


def _live(default_path: str) -> Callable[[Section, Mapping[str, Any]], dict[str, Any]]:
    def options(section: Section, gateway: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "topic": section.get("topic", topic_template, DEFAULT_TOPIC),
            "queue": section.get("queue", POSITIVE_INT, 1000),
            "slow_consumer": section.get(
                "slow_consumer", choice(SLOW_CONSUMER_POLICIES), "drop_oldest"
            ),
            "path": section.get("path", _http_path, default_path),
            "batch": _batch(section.table("batch", BATCH_KEYS)),
        }

    return options


def _sse(section: Section, gateway: Mapping[str, Any]) -> dict[str, Any]:
    origins = string_list('a list of origins like "https://dash.example" (or ["*"])', True)
    return {
        **_live("/sse")(section, gateway),
        "replay": section.get("replay", integer(0, 1_000_000), 10_000),  # readings kept
        "replay_age": section.get("replay_age", duration(positive=True), 600.0),
        "client_retry": section.get("client_retry", duration(positive=True), 2.0),
        "heartbeat": section.get("heartbeat", duration(positive=True), 15.0),
        "cors_origins": section.get("cors_origins", origins, []),
    }


_HTTP_PATH_EXPECTED = 'a URL path like "/ws", outside "/api/"'


@_expects(_HTTP_PATH_EXPECTED)
def _http_path(value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"/[A-Za-z0-9._~/-]+", value):
        raise Invalid(_HTTP_PATH_EXPECTED)
    if value == "/api" or value.startswith("/api/"):
        raise Invalid(_HTTP_PATH_EXPECTED)
    return value


def _check_live_paths(report: Report, sinks: Mapping[str, Mapping[str, Any]]) -> None:
    owners: dict[str, str] = {}
    for sink_name, options in sinks.items():
        path = options.get("path") if options.get("type") in ("websocket", "sse") else None
        if path is None:
            continue
        if path in owners:
            report.expected(
                join(join("sinks", sink_name), "path"),
                "a path no other sink serves",
                path,
                f" (sinks.{owners[path]} serves it)",
            )
        else:
            owners[path] = sink_name


def _webhook(section: Section, gateway: Mapping[str, Any]) -> dict[str, Any]:
    url_check = url(("http", "https"), "https://example.com/ingest")
    options = {
        "url": section.get("url", url_check, required=section.valid),
        "timeout": section.get("timeout", duration(positive=True), 10.0),
        "encoding": section.get("encoding", choice(ENCODINGS), "json"),
        # One POST carries a batch: 500 readings unless told otherwise.
        "batch": _batch(section.table("batch", BATCH_KEYS), 500),
        "headers": section.get("headers", string_map("a table of header name = value"), {}),
        "verify": section.get("verify", boolean, True),
        "ca": section.get("ca", text("a file path")),
        "cert": section.get("cert", text("a file path")),
        "key": section.get("key", text("a file path")),
    }
    if section.has("key") and not section.has("cert"):
        section.report.expected(section.at("cert"), "a file path (a key goes with a cert)")
    tls_keys = [key for key in ("verify", "ca", "cert", "key") if section.has(key)]
    if tls_keys and str(options["url"] or "").startswith("http://"):
        section.report.add(section.at(tls_keys[0]), 'not used with an "http://" URL')
    return options


def _recorder(section: Section, gateway: Mapping[str, Any]) -> dict[str, Any]:
    default_path = os.path.join(gateway["data_dir"], "recordings")
    return {
        "path": section.get("path", text("a directory path"), default_path),
        "format": section.get("format", choice(("jsonl", "csv")), "jsonl"),
        "rotate_bytes": section.get("rotate_bytes", size(), 100 * 1024**2),
        "rotate_every": section.get("rotate_every", duration(), 0.0),  # 0: by size only
        "gzip": section.get("gzip", boolean, False),
        "fsync_every": section.get("fsync_every", duration(), 1.0),  # 0: at rotation and stop
        "name": section.get("name", name),  # in file names; default the sink's name
    }


_ALL_SINK_KEYS = tuple(dict.fromkeys(key for keys in SINK_KEYS.values() for key in keys))

_SINK_TYPE_OPTIONS = {
    "mqtt": _mqtt,
    "udp": _udp,
    "websocket": _live("/ws"),
    "sse": _sse,
    "webhook": _webhook,
    "recorder": _recorder,
}


# -- presets ----------------------------------------------------------------------------------


def _user_presets(
    report: Report, raw: Any, sinks: Mapping[str, Mapping[str, Any]]
) -> dict[str, dict[str, Any]]:
    if raw is MISSING:
        return {}
    if not isinstance(raw, dict):
        report.expected("presets", "a table of presets ([presets.NAME])", raw)
        return {}
    from gateway.config.presets import BUILTIN_NAMES

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
        "steps": _steps(section, "steps"),
        "append_steps": _steps(section, "append_steps"),
        "routes": _routes(section, sinks),
        "buffer": section.get("buffer", choice(BUFFER_POLICIES)),
        "device_time": section.get("device_time", boolean),
        "discovery": section.get("discovery", boolean),
    }
    if section.has("steps") and section.has("append_steps"):
        report.expected(section.at("append_steps"), "either steps or append_steps", Got("both"))
    return result


def _steps(section: Section, key: str) -> list[dict[str, Any]] | None:
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


def choice_list(options: Iterable[str]) -> Check:
    options = tuple(options)
    expected = "a non-empty array of names among " + ", ".join(options)

    @_expects(expected)
    def check(value: Any) -> list[str]:
        if not isinstance(value, list) or not value:
            raise Invalid(expected)
        for entry in value:
            if isinstance(entry, (dict, list)) or entry not in options:
                guess = closest(entry, options)
                hint = f'; did you mean "{guess}"?' if guess else ""
                raise Invalid(expected, f" ({describe(entry)} is not one of them{hint})")
        return list(value)

    return check


def _routes(section: Section, sinks: Mapping[str, Mapping[str, Any]] | None) -> list | None:
    if not section.has("routes"):
        return None
    raw = section.raw["routes"]
    if not isinstance(raw, list):
        section.report.expected(section.at("routes"), "an array of routes", raw)
        return []
    path = section.at("routes")
    return [_route(section.report, item(path, i), entry, sinks) for i, entry in enumerate(raw)]


def _route(
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
        route["batch"] = _batch(section.table("batch", BATCH_KEYS))
    for key in ROUTE_OPTION_TYPES:
        if target_type and section.has(key) and target_type not in ROUTE_OPTION_TYPES[key]:
            sink_types = ", ".join(ROUTE_OPTION_TYPES[key])
            message = f"not used by {target_type} sinks (only {sink_types})"
            section.report.add(section.at(key), message)
    for key in [key for key, value in route.items() if value is None]:
        del route[key]
