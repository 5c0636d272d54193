"""Imports flow one way (docs/architecture.md): a checker over the ast of every gateway module."""

from __future__ import annotations

import ast
import re
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
    "gateway.systemd": 1,  # sd_notify, journald and the unit file; the app and the cli use it
    "gateway.clock": 1,  # the store clock, clock jumps and sync status (store and app use it)
    "gateway.config": 1,  # the package: load, loads, check_file, validate_sink, ConfigError
    "gateway.config.units": 1,  # durations and sizes
    "gateway.config.substitution": 1,  # ${ENV} in the text
    "gateway.config.report": 1,  # ConfigError, Report, Section: how errors are collected
    "gateway.config.checks": 1,  # value checks
    "gateway.config.api_schema": 1,  # [api]
    "gateway.config.sources_schema": 1,  # [[sources]]
    "gateway.config.sinks_schema": 1,  # [sinks.NAME]
    "gateway.config.presets_schema": 1,  # [presets.NAME]: steps and routes
    "gateway.config.schema": 1,  # the whole document: normalize
    "gateway.config.sessions_schema": 1,  # a session's request body (POST /sessions)
    "gateway.config.presets": 1,  # built-in presets and `extends` resolution
    "gateway.config.loader": 1,  # read, substitute, parse, validate
    "gateway.config.builtin": 1,  # package data: the built-in presets' TOML
    "gateway.sources": 1,
    "gateway.sinks": 1,
    "gateway.store": 1,
    "gateway.api": 1,  # the package
    "gateway.api.server": 1,  # the listener: the app and the WebSocket sink serve on it
    "gateway.api.security": 1,
    "gateway.api.dashboard": 1,  # the page at /, served by the listener
    "gateway.ingest": 2,
    "gateway.reconfigure": 2,  # what a reloaded config changes
    "gateway.app": 2,
    "gateway.health": 2,  # what GET /api/v1/health says about a Gateway
    "gateway.sessions": 2,  # distribution sessions, run by the app
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
EXACT = ("gateway", "gateway.api", "gateway.config")


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


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """Every gateway module and the gateway modules it imports when it runs: at the top or in
    a function, not under `if TYPE_CHECKING:` (annotations only, which break no import)."""
    graph = {}
    for path in sorted((root / "gateway").rglob("*.py")):
        module = module_name(path, root)
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and _is_type_checking(node.test):
                node.body = []
        found = imported(tree, module, path.name == "__init__.py", root)
        graph[module] = {name for _, name in found if name != module}
    return graph


def _is_type_checking(test: ast.expr) -> bool:
    name = test.attr if isinstance(test, ast.Attribute) else getattr(test, "id", None)
    return name == "TYPE_CHECKING"


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Each import cycle once, as the path that closes it (a -> b -> a), found depth first."""
    found: list[list[str]] = []
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        for target in sorted(graph.get(module, ())):
            if target in path:
                cycle = path[path.index(target) :] + [target]
                if not any(set(cycle) == set(known) for known in found):
                    found.append(cycle)
            elif target in graph and target not in done:
                visit(target, path + [target])
        done.add(module)

    for module in sorted(graph):
        if module not in done:
            visit(module, [module])
    return found


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


DOC = ROOT / "docs" / "architecture.md"
_ROW = re.compile(r"^\| (\d) \| (gateway[\w.]*) \| (.+) \|$", re.MULTILINE)


def documented_layers(text: str) -> dict[str, int]:
    """The layer of each module in the table of docs/architecture.md ("(package)": its own)."""
    layers = {}
    for number, package, cells in _ROW.findall(text):
        for entry in cells.split(","):
            entry = entry.strip().strip("`")
            layers[package if entry == "(package)" else f"{package}.{entry}"] = int(number)
    return layers


def test_the_architecture_page_draws_every_module_in_its_layer():
    drawn = documented_layers(DOC.read_text())
    actual = {module_name(path): layer(module_name(path)) for path in MODULES}
    assert {module: drawn.get(module) for module in actual} == actual
    assert sorted(set(drawn) - set(actual)) == []  # no module drawn that is not there


def test_no_module_imports_itself_through_others():
    assert cycles(import_graph()) == []


def test_the_checker_catches_an_import_cycle(tmp_path):
    package = tmp_path / "gateway" / "config"
    package.mkdir(parents=True)
    files = {
        # Two modules that need each other, one of them only inside a function.
        "schema": "def f():\n    from gateway.config.presets import X\n",
        "presets": "from gateway.config import schema\n",
        # A loop closed only by an import for annotations, which breaks nothing at run time.
        "report": "from gateway.config import units\n",
        "units": "from gateway.config import checks\n",
        "checks": "from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n"
        "    from gateway.config import report\n",
    }
    for name, text in files.items():
        (package / f"{name}.py").write_text(text)
    assert cycles(import_graph(tmp_path)) == [
        ["gateway.config.presets", "gateway.config.schema", "gateway.config.presets"]
    ]


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
    stray = tmp_path / "gateway" / "api" / "stray.py"
    stray.parent.mkdir(parents=True)
    stray.write_text('"""A page."""\n')
    assert violations(stray, tmp_path) == [
        "gateway.api.stray: in no layer; place it in LAYERS (and docs/architecture.md)"
    ]
