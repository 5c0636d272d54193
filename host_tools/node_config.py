"""Compile a gateway.toml into the gateway node's config.json, refusing what a board cannot run.

The TOML is loaded and validated by gateway.config first (so `gateway check` and the board
agree on what is valid); then each source's preset is resolved and flattened into the
source, and the sinks are cut down to what firmware/gateway_node implements. Anything the
board cannot do is an error naming the key path, e.g.
`sinks.live.type: the board build has no "websocket" sink (it runs mqtt and udp)`.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping
from urllib.parse import urlsplit

from gateway.config import ConfigError, load, loads
from gateway.config import presets as preset_tables

FORMAT_VERSION = 1
BOARD_SINKS = ("mqtt", "udp")
# The file system share all flash buffers together may use (littlefs needs free blocks to
# wear evenly, so the buffers never take the whole partition).
DEFAULT_FS_SHARE = 256 * 1024
SEGMENT_BYTES = 4096  # one littlefs block on ESP32 and RP2040 flash
MIN_SINK_SHARE = 2 * SEGMENT_BYTES  # a buffer needs a segment to fill and one to drain
BOARD_DEFAULTS: dict[str, Any] = {
    "data_dir": "data",
    "fs_share": DEFAULT_FS_SHARE,
    "ram": 16,  # readings per sink held in RAM in front of the flash buffer
    "batch": 8,  # readings written to flash in one append
    "flush_ms": 1000,  # undelivered readings older than this go to flash
    "wifi": None,  # {"ssid", "password"}; None on a host (the unix port has no WLAN)
    "ntp": "pool.ntp.org",
    "wdt_ms": 8000,  # 0 turns the watchdog off
    "log_ring": 16,
    "status_ms": 60000,  # a status line (free heap, counters) in the log this often; 0: none
    "uarts": {},  # source name -> {"id", "baud", "tx", "rx"} on a board
}
UNSUPPORTED_MQTT = {
    "ca": "TLS is not in the board build",
    "cert": "TLS is not in the board build",
    "key": "TLS is not in the board build",
}


def compile_file(path: str | os.PathLike, board: Mapping[str, Any] | None = None) -> dict:
    """The board config for a gateway.toml file; raises ConfigError listing every problem."""
    return compile_config(load(path), board)


def compile_text(text: str, board: Mapping[str, Any] | None = None) -> dict:
    return compile_config(loads(text), board)


def compile_config(config: Mapping[str, Any], board: Mapping[str, Any] | None = None) -> dict:
    """The board config for a validated gateway config (gateway.config.load's result).

    `board` holds what the TOML does not say: Wi-Fi, NTP server, UART pins per source, the
    file system share for the buffers. Without "uarts" the sources' `port` paths are used,
    which is how the unix port (host-tools simulate) runs it.
    """
    errors: list[str] = []
    settings = _board_settings(board or {}, errors)
    sinks = _sinks(config, settings, errors)
    sources = []
    for index, source in enumerate(config.get("sources", [])):
        if source.get("enabled", True):
            sources.append(_source(config, index, source, sinks, settings, errors))
    if not sources:
        errors.append("sources: expected at least one enabled source for the board")
    used = {route["sink"] for source in sources for route in source["routes"]}
    _share_flash(sinks, used, settings, errors)
    if errors:
        raise ConfigError(errors)
    return {
        "version": FORMAT_VERSION,
        "gateway": config["gateway"]["id"],
        "data_dir": settings["data_dir"],
        "buffer": {key: settings[key] for key in ("ram", "batch", "flush_ms")},
        "segment_bytes": SEGMENT_BYTES,
        "wifi": settings["wifi"],
        "ntp": settings["ntp"],
        "wdt_ms": settings["wdt_ms"],
        "log_ring": settings["log_ring"],
        "status_ms": settings["status_ms"],
        "sources": sources,
        "sinks": {name: sinks[name] for name in sinks if name in used},
    }


def write(config: Mapping[str, Any], path: str | os.PathLike) -> None:
    """The compiled config as the board's config.json."""
    with open(path, "w") as handle:
        json.dump(config, handle, separators=(",", ":"))


# -- board settings -----------------------------------------------------------------------


def _board_settings(board: Mapping[str, Any], errors: list[str]) -> dict[str, Any]:
    unknown = sorted(set(board) - set(BOARD_DEFAULTS))
    errors.extend(
        f"board.{key}: unknown setting, expected one of {', '.join(BOARD_DEFAULTS)}"
        for key in unknown
    )
    settings = {**BOARD_DEFAULTS, **{key: board[key] for key in board if key in BOARD_DEFAULTS}}
    lows = (
        ("fs_share", MIN_SINK_SHARE),
        ("ram", 4),
        ("batch", 1),
        ("flush_ms", 10),
        ("wdt_ms", 0),
        ("log_ring", 1),
        ("status_ms", 0),
    )
    for key, low in lows:
        value = settings[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            errors.append(f"board.{key}: expected a whole number >= {low}, got {value!r}")
    ram, batch = settings["ram"], settings["batch"]
    if isinstance(ram, int) and isinstance(batch, int) and batch > ram:
        errors.append(f"board.batch: expected at most board.ram ({ram})")
    wifi = settings["wifi"]
    if wifi is not None and not (isinstance(wifi, dict) and isinstance(wifi.get("ssid"), str)):
        errors.append('board.wifi: expected {"ssid": "...", "password": "..."} or null')
    return settings


# -- sinks --------------------------------------------------------------------------------


def _sinks(
    config: Mapping[str, Any], settings: Mapping[str, Any], errors: list[str]
) -> dict[str, dict]:
    sinks = {}
    for name, options in config.get("sinks", {}).items():
        path = f"sinks.{name}"
        kind = options["type"]
        if kind not in BOARD_SINKS:
            errors.append(
                f'{path}.type: the board build has no "{kind}" sink'
                f" (it runs {' and '.join(BOARD_SINKS)})"
            )
            continue
        if not options.get("enabled", True):
            continue
        if options.get("encoding", "json") != "json":
            errors.append(f"{path}.encoding: the board build sends json only")
        if options["batch"]["max_readings"] != 1:
            errors.append(f"{path}.batch.max_readings: the board build sends one reading each")
        common = {
            "type": kind,
            "overflow": options["buffer"]["overflow"],
            "max_bytes": options["buffer"]["max_bytes"],
            "breaker": dict(options["breaker"]),
            "retry": dict(options["retry"]),
        }
        if kind == "mqtt":
            common.update(_mqtt(path, options, errors))
        else:
            common["targets"] = [_host_port(target) for target in options["targets"]]
            common["max_datagram"] = options["max_datagram"]
        sinks[name] = common
    return sinks


def _mqtt(path: str, options: Mapping[str, Any], errors: list[str]) -> dict[str, Any]:
    for key, why in UNSUPPORTED_MQTT.items():
        if options.get(key):
            errors.append(f"{path}.{key}: {why}")
    parts = urlsplit(options["url"])
    if parts.scheme == "mqtts":
        errors.append(f"{path}.url: TLS (mqtts://) is not in the board build")
    return {
        "host": parts.hostname,
        "port": parts.port or 1883,
        "user": options.get("username"),
        "password": options.get("password"),
        "client_id": options["client_id"],
        "qos": options["qos"],
        "retain": options["retain"],
        "topic": options["topic"],
        "keepalive": int(options["keepalive"]),
        "availability": options["availability"],
    }


def _host_port(target: str) -> list[Any]:
    host, _, port = target.rpartition(":")
    return [host.strip("[]"), int(port)]


def _share_flash(
    sinks: dict[str, dict], used: set[str], settings: Mapping[str, Any], errors: list[str]
) -> None:
    """Split the file system share among the flash-buffered sinks, each at most its max_bytes."""
    flashed = sorted(name for name in used if sinks[name]["flash"])
    if not flashed or not isinstance(settings["fs_share"], int):
        return
    share = settings["fs_share"] // len(flashed)
    if share < MIN_SINK_SHARE:
        errors.append(
            f"board.fs_share: {settings['fs_share']} bytes for {len(flashed)} buffered sinks,"
            f" expected at least {MIN_SINK_SHARE * len(flashed)}"
        )
    for name in flashed:
        limit = min(sinks[name].pop("max_bytes"), share)
        sinks[name]["max_bytes"] = max(MIN_SINK_SHARE, limit - limit % SEGMENT_BYTES)
    for name in used:
        sinks[name].setdefault("max_bytes", 0)
        if not sinks[name]["flash"]:
            sinks[name]["max_bytes"] = 0


# -- sources ------------------------------------------------------------------------------


def _source(
    config: Mapping[str, Any],
    index: int,
    source: Mapping[str, Any],
    sinks: dict[str, dict],
    settings: Mapping[str, Any],
    errors: list[str],
) -> dict[str, Any]:
    path = f"sources[{index}]"
    name = source["name"]
    compiled: dict[str, Any] = {"name": name, "framing": source["framing"]}
    uart = settings["uarts"].get(name) if isinstance(settings["uarts"], dict) else None
    if uart is not None:
        compiled["uart"] = {"baud": source["baud"], **uart}
    elif source.get("port"):
        compiled["port"] = source["port"]
    else:
        errors.append(
            f"{path}: the board needs a port (a tty on a host) or board.uarts.{name}"
            " (match and simulate need USB and a host)"
        )
    if source["framing"] == "lines":
        for key in ("format", "fields", "pattern", "delimiter", "sentences", "header", "decimal"):
            compiled[key] = source.get(key)
        compiled["stream"] = source.get("stream") or "default"
        compiled["max_line"] = source["max_line"]
    try:
        preset = preset_tables.resolve(config, source["preset"])
    except ConfigError as error:
        errors.extend(f"{path}.preset: {line}" for line in error.errors)
        compiled["routes"] = []
        return compiled
    where = f"presets.{preset['name']}"
    if preset["discovery"]:
        errors.append(
            f"{where}.discovery: the board build publishes no Home Assistant discovery"
            f" (used by {path}; extend the preset with discovery = false)"
        )
    compiled["steps"] = preset["steps"]
    compiled["device_time"] = preset["device_time"]
    compiled["routes"] = _routes(where, preset, sinks, config, errors)
    for route in compiled["routes"]:
        sink = sinks[route["sink"]]
        sink["flash"] = sink.get("flash", False) or preset["buffer"] != "none"
    return compiled


def _routes(
    where: str,
    preset: Mapping[str, Any],
    sinks: dict[str, dict],
    config: Mapping[str, Any],
    errors: list[str],
) -> list[dict[str, Any]]:
    configured = config.get("sinks", {})
    routes = []
    for index, route in enumerate(preset["routes"]):
        path = f"{where}.routes[{index}]"
        if "sink" in route:
            targets = [route["sink"]] if route["sink"] in configured else []
        else:
            targets = [name for name, sink in configured.items() if sink["type"] == route["type"]]
        for key in ("encoding", "batch"):
            if key in route and not _default_route_option(key, route[key]):
                errors.append(f"{path}.{key}: the board build sends one json reading each")
        for name in targets:
            if name not in sinks:
                continue  # refused or disabled above
            compiled = {"sink": name}
            for key in ("topic", "qos", "retain"):
                if key in route:
                    compiled[key] = route[key]
            routes.append(compiled)
    return routes


def _default_route_option(key: str, value: Any) -> bool:
    if key == "encoding":
        return value == "json"
    return value.get("max_readings", 1) == 1
