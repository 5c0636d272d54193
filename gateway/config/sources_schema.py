"""The [[sources]] tables: the device, its framing and its line format."""

from __future__ import annotations

from typing import Any

from gateway.config.checks import (
    POSITIVE_INT,
    boolean,
    choice,
    expects,
    name,
    number,
    regex,
    size,
    string_list,
    text,
    usb_id,
)
from gateway.config.report import MISSING, Got, Invalid, Report, Section, did_you_mean, item, join
from gateway.core.nmea import SENTENCES

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
MATCH_KEYS = ("vid", "pid", "serial")
SIMULATE_KEYS = ("profile", "rate")
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


def source_tables(report: Report, raw: Any) -> list[dict[str, Any]]:
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
        simulate = _simulate(section.table("simulate", SIMULATE_KEYS))
    framing = section.get("framing", choice(FRAMINGS), "lines")
    source = {
        "name": section.get("name", name, required=True),
        "port": section.get("port", text('a serial device path like "/dev/ttyACM0"')),
        "match": _match(section.table("match", MATCH_KEYS)) if section.has("match") else None,
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


@expects("a non-empty string")
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


@expects("a sentence type: " + ", ".join(SENTENCES))
def _sentence(value: Any) -> str:
    kind = value.upper() if isinstance(value, str) else value
    if kind not in SENTENCES:
        raise Invalid(_sentence.expected, did_you_mean(kind, SENTENCES))  # type: ignore
    return kind
