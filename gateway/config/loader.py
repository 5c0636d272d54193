"""Read gateway.toml: substitute the environment, parse TOML, validate, normalise."""

from __future__ import annotations

import os
import re
import sys
from typing import Any, Mapping

from gateway.config import presets
from gateway.config.report import ConfigError, Report, join
from gateway.config.schema import normalize
from gateway.config.sinks_schema import sink_options
from gateway.config.substitution import substitute

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on Python < 3.11
    import tomli as tomllib

_POSITION = re.compile(r"\s*\(at line (\d+), column (\d+)\)\s*$")


def load(path: str | os.PathLike, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Load and validate a configuration file; raise ConfigError listing every problem."""
    source = os.fspath(path)
    try:
        with open(source, "rb") as handle:
            data = handle.read()
    except OSError as error:
        raise ConfigError([f"{source}: cannot read: {error.strerror or error}"], source) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        message = f"byte {error.start}: expected UTF-8 text, got byte {data[error.start]:#04x}"
        raise ConfigError([message], source) from None
    return loads(text, environ, source)


def loads(
    text: str, environ: Mapping[str, str] | None = None, source: str = "<string>"
) -> dict[str, Any]:
    """Validate configuration text; `source` names it in error messages."""
    text, errors = substitute(text, environ)
    if errors:
        # Parsing text with holes in it would only add confusing errors.
        raise ConfigError(errors, source)
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError([_syntax_error(error, text)], source) from None
    config, errors = normalize(raw)
    errors.extend(presets.check_references(config))
    if errors:
        raise ConfigError(errors, source)
    return config


_ASSIGNMENT = re.compile(r"^\s*([A-Za-z0-9_.\-\"']+)\s*=\s*(.*?)\s*$")
# How a TOML value can start; anything else on the right of `=` is a bare word or path.
_VALUE_START = re.compile(r"""^["'\[{0-9+\-]|^(true|false|inf|nan)\b""")


def _syntax_error(error: Exception, text: str = "") -> str:
    message = str(error)
    match = _POSITION.search(message)
    if match is None:
        return f"invalid TOML: {message}"
    detail = message[: match.start()]
    line = int(match.group(1))
    hint = _syntax_hint(text.splitlines()[line - 1] if 0 < line <= text.count("\n") + 1 else "")
    return f"line {line}, column {match.group(2)}: invalid TOML: {detail}{hint}"


def _syntax_hint(line: str) -> str:
    """What to do about the usual slips: a string or a path without quotes, a Windows path
    in double quotes (its backslashes are escapes there)."""
    assignment = _ASSIGNMENT.match(line)
    if assignment is None:
        return ""
    key, value = assignment.groups()
    value = value.split(" #")[0].strip()
    if value and not _VALUE_START.match(value):
        return f'; text needs quotes: {key} = "{value}"'
    if value.startswith('"') and "\\" in value:
        return f"; backslashes are escapes in double quotes: {key} = '{value.strip(chr(34))}'"
    return ""


def check_file(path: str | os.PathLike, environ: Mapping[str, str] | None = None) -> list[str]:
    """Every problem `gateway check` reports (empty when the file is good).

    Beyond load(): each source's preset resolves, and TLS files named by MQTT sinks exist
    (relative paths are taken from the working directory, as `gateway run` does).
    """
    try:
        config = load(path, environ)
    except ConfigError as error:
        return error.errors
    errors = []
    for index, source in enumerate(config["sources"]):
        try:
            presets.resolve(config, source["preset"])
        except ConfigError as error:
            errors.extend(f"sources[{index}].preset: {line}" for line in error.errors)
    for name, options in config["sinks"].items():
        for key in ("ca", "cert", "key"):
            file_path = options.get(key)
            if file_path and not os.path.isfile(file_path):
                errors.append(
                    f"{join(join('sinks', name), key)}: expected an existing file,"
                    f' got "{file_path}" (not found)'
                )
    return errors


def validate_sink(
    name: str, options: Mapping[str, Any], gateway: Mapping[str, Any]
) -> dict[str, Any]:
    """Normalise one sink's options (for runtime reconfiguration); raise ConfigError.

    `gateway` is the running gateway's validated [gateway] table: a sink's defaults (its
    client id, where its files go, how they are synced) come from it as at start.
    """
    report = Report()
    normalised = sink_options(report, join("sinks", name), dict(options), gateway)
    if report.errors:
        raise ConfigError(report.errors, join("sinks", name))
    return normalised
