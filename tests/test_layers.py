"""Imports flow one way (docs/architecture.md): a checker over the ast of every gateway module."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Lowest first; a module may import its own layer and those below. The longest prefix that
# names a module places it.
LAYERS = {
    "gateway.core": 0,
    "gateway": 1,  # the package itself: __version__
    "gateway.json_bytes": 1,
    "gateway.throttled_log": 1,
    "gateway.config": 1,
    "gateway.sources": 1,
    "gateway.sinks": 1,
    "gateway.store": 1,
    "gateway.api": 1,  # the package
    "gateway.api.server": 1,  # the listener: the app and the WebSocket sink serve on it
    "gateway.api.security": 1,
    "gateway.ingest": 2,
    "gateway.app": 2,
    "gateway.api.control": 3,  # the control plane, over a Gateway
    "gateway.api.metrics": 3,
    "gateway.cli": 3,
    "gateway.demo": 3,  # `gateway demo`'s own receivers and broker
    "gateway.__main__": 3,
}
NAMES = ("core", "config, sources, sinks, store, api.server", "app", "cli, api")


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


# Packages whose modules are placed one by one: a new module there must be placed too.
EXACT = ("gateway", "gateway.api")


def layer(module: str) -> int | None:
    for prefix in sorted(LAYERS, key=len, reverse=True):
        below = module.startswith(prefix + ".") and prefix not in EXACT
        if module == prefix or below:
            return LAYERS[prefix]
    return None


def imported(tree: ast.AST, module: str, is_package: bool, root: Path) -> list[tuple[int, str]]:
    """(line, module) of every gateway module imported; `from a import b` is a.b when b is a
    module, else a."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node, module, is_package)
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.append((node.lineno, candidate if existing(candidate, root) else base))
    return [(line, name) for line, name in found if name.split(".")[0] == "gateway"]


def _absolute(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    package = module.split(".") if is_package else module.split(".")[:-1]
    base = package[: len(package) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def existing(name: str, root: Path) -> bool:
    path = root.joinpath(*name.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def violations(path: Path, root: Path = ROOT) -> list[str]:
    module = module_name(path, root)
    own = layer(module)
    if own is None:
        return [f"{module}: in no layer; place it in LAYERS (and docs/architecture.md)"]
    found = []
    tree = ast.parse(path.read_text(), str(path))
    for line, name in imported(tree, module, path.name == "__init__.py", root):
        target = layer(name)
        if own == 0 and not name.startswith("gateway.core"):
            found.append(f"{module}:{line} imports {name}: core imports only core")
        elif target is not None and target > own:
            found.append(
                f"{module}:{line} imports {name} ({NAMES[own]} may not import {NAMES[target]})"
            )
    return found


MODULES = sorted((ROOT / "gateway").rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=[module_name(path) for path in MODULES])
def test_imports_flow_one_way(path):
    assert violations(path) == []


def test_the_checker_catches_an_upward_import(tmp_path):
    # A sink that imports the app and a core module that imports a sink, as files.
    sink = tmp_path / "gateway" / "sinks" / "bad.py"
    sink.parent.mkdir(parents=True)
    (tmp_path / "gateway" / "app.py").write_text("")
    (tmp_path / "gateway" / "core").mkdir()
    (tmp_path / "gateway" / "core" / "x.py").write_text("from ..sinks import bad\nimport os\n")
    sink.write_text('"""A sink."""\nfrom gateway import app\n')
    assert violations(sink, tmp_path) == [
        "gateway.sinks.bad:2 imports gateway.app "
        "(config, sources, sinks, store, api.server may not import app)"
    ]
    core = tmp_path / "gateway" / "core" / "x.py"
    assert violations(core, tmp_path) == [
        "gateway.core.x:1 imports gateway.sinks.bad: core imports only core"
    ]


def test_a_module_in_no_layer_is_named(tmp_path):
    stray = tmp_path / "gateway" / "api" / "dashboard.py"
    stray.parent.mkdir(parents=True)
    stray.write_text('"""A page."""\n')
    assert violations(stray, tmp_path) == [
        "gateway.api.dashboard: in no layer; place it in LAYERS (and docs/architecture.md)"
    ]
