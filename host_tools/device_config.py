"""A sensor node's device TOML → the config.json its firmware reads, refused with key paths.

The TOML (${ENV} references substituted, as in gateway.toml) holds the keys of the
firmware's config.json (docs/host-tools.md lists them):
`device`, `[[streams]]`, `[link]`, `ring`, ... and optionally `role`. It is checked by the
firmware's own validation (firmware/sensor_node/config.py, loaded from the packaged app), so
what provisioning accepts is exactly what the board runs, with the same "key.path: expected
…, got …" messages; a board link must be USB (stdio) or a UART.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from typing import Any

from gateway.config import ConfigError
from host_tools.resources import firmware_dir

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on Python < 3.11
    import tomli as tomllib

ROLES = ("sensor_node", "gateway_node")
BOARD_LINKS = ("stdio", "uart")  # fd and path are for nodes on a host
# The options each stream type's driver reads (firmware/sensor_node/sensors*.py, README table):
# the firmware ignores other keys, so a misspelt option would silently take its default.
STREAM_OPTIONS = {
    "synthetic": ("period", "amplitude", "offset"),
    "rp2040_temp": (),
    "adc": ("pin", "vref"),
    "sht3x": ("i2c", "address"),
    "aht20": ("i2c", "address"),
}
STREAM_KEYS = ("name", "type", "rate")
# Keys whose values are never printed (dry runs, summaries, errors).
SECRET_WORDS = ("password", "secret", "token", "psk", "key")


def firmware_config_module() -> Any:
    """firmware/sensor_node/config.py, the firmware's schema, loaded from the package data."""
    path = firmware_dir("sensor_node") / "config.py"
    spec = importlib.util.spec_from_file_location("_sensor_node_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def read_toml(path: str) -> dict[str, Any]:
    """A TOML file with ${ENV} references substituted first (as gateway.toml is), so secrets
    can stay in the environment instead of the file."""
    from gateway.config.substitution import substitute

    try:
        with open(path, "rb") as handle:
            text = handle.read().decode("utf-8")
    except OSError as error:
        raise ConfigError([f"{path}: cannot read: {error.strerror or error}"], path) from None
    except UnicodeDecodeError as error:
        raise ConfigError([f"{path}: byte {error.start}: expected UTF-8 text"], path) from None
    text, errors = substitute(text)
    if errors:
        raise ConfigError(errors, path)
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError([f"{path}: not valid TOML: {error}"], path) from None


def sensor_node_config(
    raw: dict[str, Any], source: str, device_id: str | None = None
) -> dict[str, Any]:
    """The config.json object for a sensor node; raises ConfigError naming every bad key."""
    given = {key: value for key, value in raw.items() if key != "role"}
    errors = []
    role = raw.get("role", "sensor_node")
    if role != "sensor_node":
        errors.append(f'role: expected "sensor_node" (provision --role), got {json.dumps(role)}')
    if device_id is not None:
        given["device"] = device_id
    if "device" not in given:
        errors.append('device: expected the device id (e.g. device = "bench-1"), got nothing')
    firmware = firmware_config_module()
    merged = firmware.merge(firmware.DEFAULTS, given)
    errors += firmware.validate(merged)
    errors += _stream_option_errors(merged.get("streams"))
    kind = merged["link"].get("type") if isinstance(merged.get("link"), dict) else None
    if kind in firmware.LINK_TYPES and kind not in BOARD_LINKS:
        errors.append(f'link.type: expected "stdio" (USB) or "uart" on a board, got "{kind}"')
    if errors:
        raise ConfigError(errors, source)
    return given


def _stream_option_errors(streams: Any) -> list[str]:
    if not isinstance(streams, list):
        return []
    errors = []
    for index, stream in enumerate(streams):
        if not isinstance(stream, dict) or stream.get("type") not in STREAM_OPTIONS:
            continue  # the firmware's validation has said what is wrong with it
        allowed = STREAM_KEYS + STREAM_OPTIONS[stream["type"]]
        for key in stream:
            if key not in allowed:
                errors.append(
                    f"streams[{index}].{key}: unknown key for a {stream['type']} stream "
                    f"(expected one of {', '.join(allowed)})"
                )
    return errors


def config_bytes(config: dict[str, Any]) -> bytes:
    """Deterministic JSON (sorted keys, no spaces): the same config gives the same file, so an
    unchanged config is never copied again."""
    return json.dumps(config, sort_keys=True, separators=(",", ":")).encode("utf-8")


def masked(config: Any, path: str = "") -> Any:
    """config with every secret-looking value replaced by "***" (for printing)."""
    if isinstance(config, dict):
        return {
            key: "***" if _is_secret(key) and value is not None else masked(value, key)
            for key, value in config.items()
        }
    if isinstance(config, list):
        return [masked(value, path) for value in config]
    return config


def _is_secret(key: str) -> bool:
    return any(word in key.lower() for word in SECRET_WORDS)


def secret_values(config: Any) -> list[str]:
    """Every secret string in config (so output can be checked never to contain one)."""
    found = []
    if isinstance(config, dict):
        for key, value in config.items():
            if _is_secret(key) and isinstance(value, str) and value:
                found.append(value)
            else:
                found += secret_values(value)
    elif isinstance(config, list):
        for value in config:
            found += secret_values(value)
    return found
