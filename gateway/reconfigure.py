"""What a changed configuration changes in a running gateway, or why it needs a restart."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gateway.config import presets
from gateway.ingest import resolve_routes
from gateway.store.queues import strongest

# What the running process was built around: changing these takes a restart.
RESTART_KEYS = {
    "gateway": ("id", "data_dir", "fsync", "commit_interval"),
    "api": ("listen", "tls", "allow_insecure"),
}


@dataclass
class Plan:
    """The differences between the running config and a new one, by name."""

    errors: list[str] = field(default_factory=list)
    sinks_added: list[str] = field(default_factory=list)
    sinks_removed: list[str] = field(default_factory=list)
    sinks_changed: list[str] = field(default_factory=list)
    sources_added: list[str] = field(default_factory=list)
    sources_removed: list[str] = field(default_factory=list)
    sources_changed: list[str] = field(default_factory=list)
    api_changed: bool = False

    def summary(self) -> dict[str, Any]:
        return {
            "sinks": {
                "added": self.sinks_added,
                "removed": self.sinks_removed,
                "reconfigured": self.sinks_changed,
            },
            "sources": {
                "added": self.sources_added,
                "removed": self.sources_removed,
                "restarted": self.sources_changed,
            },
            "api": self.api_changed,
        }


def plan(old: dict[str, Any], new: dict[str, Any]) -> Plan:
    """Compare two validated configs. A source is restarted when its table or its resolved
    preset changed; a sink is rebuilt when its options changed (see Gateway.reload)."""
    result = Plan()
    for section, keys in RESTART_KEYS.items():
        for key in keys:
            if old[section].get(key) != new[section].get(key):
                result.errors.append(f"{section}.{key}: changed; this takes a restart")
    result.api_changed = old["api"] != new["api"] and not result.errors
    _sinks(result, old["sinks"], new["sinks"])
    _sources(result, old, new)
    _policies(result, old, new)
    return result


def _sinks(result: Plan, old: dict[str, Any], new: dict[str, Any]) -> None:
    result.sinks_added = [name for name in new if name not in old]
    result.sinks_removed = [name for name in old if name not in new]
    result.sinks_changed = [name for name in new if name in old and new[name] != old[name]]
    for name in result.sinks_changed:
        if new[name]["type"] != old[name]["type"]:
            result.errors.append(
                f"sinks.{name}.type: changed from {old[name]['type']} to {new[name]['type']}; "
                "remove the sink and add one under another name, or restart"
            )


def _sources(result: Plan, old: dict[str, Any], new: dict[str, Any]) -> None:
    before = {source["name"]: source for source in old["sources"] if _enabled(source)}
    after = {source["name"]: source for source in new["sources"] if _enabled(source)}
    result.sources_added = [name for name in after if name not in before]
    result.sources_removed = [name for name in before if name not in after]
    for name in after:
        if name not in before:
            continue
        same_table = before[name] == after[name]
        if not same_table or _preset(old, before[name]) != _preset(new, after[name]):
            result.sources_changed.append(name)


def _policies(result: Plan, old: dict[str, Any], new: dict[str, Any]) -> None:
    """A sink's buffer (memory, spill, write-ahead) is built once: a reload that would
    change the policy of a sink that stays is refused."""
    before, after = sink_policies(old), sink_policies(new)
    for name in new["sinks"]:
        if name in old["sinks"] and before.get(name, "none") != after.get(name, "none"):
            result.errors.append(
                f"sinks.{name}: its buffer policy would change from {before.get(name, 'none')} "
                f"to {after.get(name, 'none')} (the presets routing to it); this takes a restart"
            )


def sink_policies(config: dict[str, Any]) -> dict[str, str]:
    """Per sink, the strongest buffer policy among the presets of the sources routing to it."""
    names = {name: _Named(name, options["type"]) for name, options in config["sinks"].items()}
    policies: dict[str, list[str]] = {}
    for source in config["sources"]:
        if not _enabled(source):
            continue
        preset = _preset(config, source)
        for sink, _route in resolve_routes(preset, names):
            policies.setdefault(sink.name, []).append(preset["buffer"])
    return {name: strongest(found) for name, found in policies.items()}


class _Named:
    """What resolve_routes needs of a sink: its name and type."""

    def __init__(self, name: str, kind: str):
        self.name = name
        self.kind = kind


def _preset(config: dict[str, Any], source: dict[str, Any]) -> dict[str, Any]:
    return presets.resolve(config, source["preset"])


def _enabled(source: dict[str, Any]) -> bool:
    return source.get("enabled", True)
