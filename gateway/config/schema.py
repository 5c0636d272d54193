"""Validate a parsed gateway.toml and normalise it: every error collected, defaults applied."""

from __future__ import annotations

import re
import socket
from typing import Any, Mapping

from gateway.config.api_schema import API_KEYS, api_table
from gateway.config.checks import choice, duration, name, text
from gateway.config.presets_schema import user_presets
from gateway.config.report import MISSING, Report, Section
from gateway.config.sinks_schema import sink_tables
from gateway.config.sources_schema import source_tables

TOP_KEYS = ("gateway", "api", "sources", "presets", "sinks")
GATEWAY_KEYS = ("id", "data_dir", "fsync", "commit_interval")
FSYNC_CHOICES = ("always", "batch", "off")


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
    sinks = sink_tables(reports["sinks"], top.raw.get("sinks", MISSING), gateway)
    config = {
        "gateway": gateway,
        "api": api_table(Section(reports["api"], "api", raw.get("api"), API_KEYS)),
        "sources": source_tables(reports["sources"], top.raw.get("sources", MISSING)),
        "presets": user_presets(reports["presets"], top.raw.get("presets", MISSING), sinks),
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
