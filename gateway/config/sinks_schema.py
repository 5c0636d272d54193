"""The [sinks.NAME] tables: common delivery options and each sink type's own."""

from __future__ import annotations

import ipaddress
import os
import re
from typing import Any, Callable, Mapping

from gateway.config.checks import (
    POSITIVE_INT,
    any_text,
    boolean,
    choice,
    duration,
    expects,
    host_port,
    integer,
    name,
    size,
    string_list,
    string_map,
    text,
    topic_template,
    url,
)
from gateway.config.report import MISSING, Invalid, Report, Section, join
from gateway.config.units import parse_duration
from gateway.core.bounds import DEFAULT_QUEUE_SIZE

DEFAULT_TOPIC = "gw/{gateway}/{device}/{stream}"
SINK_TYPES = ("mqtt", "udp", "websocket", "sse", "webhook", "recorder")
ENCODINGS = ("json", "msgpack", "cbor")
OVERFLOW_POLICIES = ("drop_oldest", "drop_newest", "block")
SLOW_CONSUMER_POLICIES = ("drop_oldest", "disconnect")
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
BUFFER_KEYS = ("max_bytes", "max_age", "overflow")
BREAKER_KEYS = ("failures", "reset_after")
RETRY_KEYS = ("base", "cap")
LIVE_SINK_KEYS = ("topic", "queue", "slow_consumer", "path", "batch")
SINK_KEYS = {
    "mqtt": (
        "url",
        "urls",
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
    "udp": ("targets", "encoding", "max_datagram", "batch", "ttl", "broadcast", "interface"),
    "websocket": LIVE_SINK_KEYS,
    "sse": LIVE_SINK_KEYS
    + ("replay", "replay_age", "replay_dir", "replay_fsync", "client_retry", "heartbeat")
    + ("cors_origins",),
    "webhook": ("url", "timeout", "encoding", "batch", "headers", "verify", "ca", "cert", "key"),
    "recorder": ("path", "format", "rotate_bytes", "rotate_every", "gzip", "fsync_every", "name"),
}


def sink_tables(report: Report, raw: Any, gateway: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
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
        "buffer": _buffer(section.table("buffer", BUFFER_KEYS)),
        "breaker": _breaker(section.table("breaker", BREAKER_KEYS)),
        "retry": _retry(section.table("retry", RETRY_KEYS)),
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


def batch_options(section: Section, max_readings: int = 1) -> dict[str, Any]:
    # No max_delay: batches form from what is waiting when a sender takes (decisions.md).
    return {"max_readings": section.get("max_readings", POSITIVE_INT, max_readings)}


BATCH_KEYS = ("max_readings",)


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
        "batch": batch_options(section.table("batch", BATCH_KEYS)),
    }
    report = section.report
    if section.has("urls"):  # failover, in order of preference: see MqttSink.open()
        options["urls"] = section.get_list("urls", url_check)
        if section.has("url"):
            report.add(section.at("urls"), "given with url: set one of url and urls")
        options["url"] = (options["urls"] or [options["url"]])[0]
    if options["password"] is not None and options["username"] is None:
        report.expected(section.at("username"), "a user name (MQTT sends a password only with one)")
    if section.has("cert") != section.has("key"):
        missing = "key" if section.has("cert") else "cert"
        report.expected(section.at(missing), "a file path (cert and key go together)")
    tls_keys = [key for key in ("ca", "cert", "key") if section.has(key)]
    if tls_keys and all(u.startswith("mqtt://") for u in options.get("urls") or [options["url"]]):
        report.add(section.at(tls_keys[0]), 'not used with an "mqtt://" URL (use "mqtts://")')
    return options


QOS = choice((0, 1), hints={2: " (QoS 2 is not supported)"})
MAX_INFLIGHT = integer(1, 65535)
KEEPALIVE_EXPECTED = "a duration from 1s to 18h12m15s (65535 s)"


@expects(KEEPALIVE_EXPECTED)
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
        "batch": batch_options(section.table("batch", BATCH_KEYS)),
        "ttl": section.get("ttl", integer(0, 255), 1),
        # None means "auto": the sink enables SO_BROADCAST only for broadcast targets.
        "broadcast": section.get("broadcast", _broadcast, None),
        # None: the kernel's route decides which interface multicast leaves through.
        "interface": section.get("interface", _ipv4_address, None),
    }


_IPV4_EXPECTED = 'the IPv4 address of a local interface, like "192.168.1.10"'


@expects(_IPV4_EXPECTED)
def _ipv4_address(value: Any) -> str:
    try:
        return str(ipaddress.IPv4Address(value if isinstance(value, str) else ""))
    except ValueError:
        raise Invalid(_IPV4_EXPECTED) from None


@expects('true, false or "auto"')
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
            "batch": batch_options(section.table("batch", BATCH_KEYS)),
        }

    return options


def _sse(section: Section, gateway: Mapping[str, Any]) -> dict[str, Any]:
    origins = string_list('a list of origins like "https://dash.example" (or ["*"])', True)
    return {
        **_live("/sse")(section, gateway),
        "replay": section.get("replay", integer(0, 1_000_000), 10_000),  # readings kept
        "replay_age": section.get("replay_age", duration(positive=True), 600.0),
        # The window on disk, in replay_dir/NAME/, synced as gateway.fsync unless told.
        "replay_dir": section.get(
            "replay_dir", text("a directory path"), os.path.join(gateway["data_dir"], "sse")
        ),
        "replay_fsync": section.get(
            "replay_fsync", choice(("always", "batch", "off")), gateway.get("fsync", "always")
        ),
        "client_retry": section.get("client_retry", duration(positive=True), 2.0),
        "heartbeat": section.get("heartbeat", duration(positive=True), 15.0),
        "cors_origins": section.get("cors_origins", origins, []),
    }


_HTTP_PATH_EXPECTED = 'a URL path like "/ws", outside "/api/"'


@expects(_HTTP_PATH_EXPECTED)
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
        "batch": batch_options(section.table("batch", BATCH_KEYS), 500),
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
