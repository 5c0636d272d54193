"""Built-in presets and `extends` resolution: the steps a source's readings take, and where to."""

from __future__ import annotations

import copy
import functools
import sys
from importlib import resources
from typing import Any, Mapping

from gateway.config.presets_schema import BUILTIN_NAMES, preset
from gateway.config.report import ConfigError, Report, alternatives, did_you_mean, join

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on Python < 3.11
    import tomli as tomllib

# What a preset chain starts from before its root preset applies.
_ROOT = {
    "description": "",
    "steps": [],
    "routes": [],
    "buffer": "spill",
    "device_time": True,
    "discovery": False,
}
_INHERITED = ("buffer", "device_time", "discovery")


def builtin_text(name: str) -> str:
    """The TOML text of a built-in preset, comments included (`gateway presets NAME`)."""
    if name not in BUILTIN_NAMES:
        raise ConfigError([_unknown("preset", name, BUILTIN_NAMES)])
    return resources.files(__package__).joinpath("builtin", name + ".toml").read_text("utf-8")


@functools.cache
def _builtins() -> dict[str, dict[str, Any]]:
    presets = {}
    for name in BUILTIN_NAMES:
        report = Report()
        table = tomllib.loads(builtin_text(name))
        presets[name] = preset(report, join("presets", name), table, None)
        if report.errors:  # a packaging bug, not a user error
            raise RuntimeError(f"built-in preset {name} is invalid: {report.errors}")
    return presets


def builtin(name: str) -> dict[str, Any]:
    """The normalised table of one built-in preset, before resolution."""
    if name not in BUILTIN_NAMES:
        raise ConfigError([_unknown("preset", name, BUILTIN_NAMES)])
    return copy.deepcopy(_builtins()[name])


def names(config: Mapping[str, Any] | None = None) -> list[str]:
    """Built-in names first, then the configuration's own presets."""
    return list(BUILTIN_NAMES) + list(_user(config))


def available(config: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """[{name, description, builtin}] for listings (`gateway presets`, GET /presets)."""
    return [
        {
            "name": name,
            "description": resolve(config, name)["description"],
            "builtin": name in BUILTIN_NAMES,
        }
        for name in names(config)
    ]


def resolve(config: Mapping[str, Any] | None, name: str) -> dict[str, Any]:
    """Merge a preset with everything it extends; raise ConfigError naming the key path.

    Returns {"name", "builtin", "extends" (the chain above it, nearest first), "description",
    "steps", "routes", "buffer", "device_time", "discovery"}. Along the chain a child's
    `steps` replace the parent's, `append_steps` add to them, `routes` replace, and the
    scalar keys override.
    """
    chain = _chain(_user(config), name)
    merged = copy.deepcopy(_ROOT)
    for link in reversed(chain):
        table = _table(config, link)
        if table["steps"] is not None:
            merged["steps"] = copy.deepcopy(table["steps"])
        if table["append_steps"] is not None:
            merged["steps"] = merged["steps"] + copy.deepcopy(table["append_steps"])
        if table["routes"] is not None:
            merged["routes"] = copy.deepcopy(table["routes"])
        for key in _INHERITED:
            if table[key] is not None:
                merged[key] = table[key]
    leaf = _table(config, name)
    description = leaf["description"]
    if description is None:
        description = f'Extends "{chain[1]}".' if len(chain) > 1 else ""
    merged.update(
        name=name,
        builtin=name in BUILTIN_NAMES,
        extends=chain[1:],
        description=description,
    )
    return merged


def check_references(config: Mapping[str, Any]) -> list[str]:
    """Errors in what presets and sources point at: unknown names, extends cycles, no routes."""
    errors: list[str] = []
    for name in _user(config):
        try:
            resolved = resolve(config, name)
        except ConfigError as error:
            errors.extend(line for line in error.errors if line not in errors)
            continue
        if not resolved["routes"]:
            errors.append(
                f"{join(join('presets', name), 'routes')}: expected at least one route"
                " (here or in the preset it extends), got none"
            )
    known = names(config)
    for index, source in enumerate(config.get("sources", [])):
        wanted = source.get("preset")
        if wanted is not None and wanted not in known:
            errors.append(_unknown(f"sources[{index}].preset", wanted, known))
    return errors


def _user(config: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return (config or {}).get("presets") or {}


def _table(config: Mapping[str, Any] | None, name: str) -> dict[str, Any]:
    user = _user(config)
    return user[name] if name in user else _builtins()[name]


def _chain(user: Mapping[str, Any], name: str) -> list[str]:
    known = list(BUILTIN_NAMES) + list(user)
    if name not in known:
        raise ConfigError([_unknown("preset", name, known)])
    chain = [name]
    while True:
        current = chain[-1]
        parent = user[current]["extends"] if current in user else None
        if parent is None:
            return chain
        path = join(join("presets", current), "extends")
        if parent not in known:
            raise ConfigError([_unknown(path, parent, known)])
        if parent in chain:
            # Reported at the requested preset, so every preset caught in a loop gets a line.
            path = join(join("presets", name), "extends")
            cycle = " -> ".join([*chain, parent])
            raise ConfigError([f"{path}: expected an extends chain without a cycle, got {cycle}"])
        chain.append(parent)


def _unknown(path: str, value: Any, known: list[str] | tuple[str, ...]) -> str:
    shown = f'"{value}"' if isinstance(value, str) else repr(value)
    expected = alternatives(known) + " (built-in or [presets.NAME])"
    return f"{path}: expected {expected}, got {shown}{did_you_mean(value, known)}"
