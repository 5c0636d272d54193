"""Where the firmware apps and the portable core live, in a checkout and in an installed wheel.

Both ship inside the distribution (pyproject.toml: the `firmware` packages and gateway.core),
so they are found through importlib.resources, never next to a source tree that a wheel
install does not have.
"""

from __future__ import annotations

import ast
import importlib.resources
import importlib.util
from pathlib import Path

APPS = ("sensor_node", "gateway_node")
CORE_PACKAGE = "gateway.core"


class ResourceMissing(Exception):
    """A firmware app or the core is not in this installation."""


def _package_dir(package: str) -> Path:
    """The directory of an importable (regular or namespace) package, as a real path."""
    try:
        spec = importlib.util.find_spec(package)
    except ModuleNotFoundError:
        spec = None
    if spec is None:
        raise ResourceMissing(f"package {package} is not installed")
    locations = list(spec.submodule_search_locations or [])
    if not locations:
        raise ResourceMissing(f"{package} is not a package")
    if spec.origin is None:  # a namespace package (the firmware folders have no __init__.py)
        return Path(locations[0])
    # An installed wheel and a checkout are plain directories (no zip imports here).
    return Path(str(importlib.resources.files(package)))


def firmware_dir(app: str = "sensor_node") -> Path:
    """The directory of a firmware app (main.py and its modules)."""
    if app not in APPS:
        raise ResourceMissing(f"unknown firmware app {app!r}; expected one of {', '.join(APPS)}")
    directory = _package_dir(f"firmware.{app}")
    if not (directory / "main.py").is_file():
        raise ResourceMissing(f"firmware app {app} has no main.py in {directory}")
    return directory


def import_root() -> Path:
    """The directory holding the `gateway` package: what MICROPYPATH / PYTHONPATH name."""
    return core_dir().parent.parent


def core_dir() -> Path:
    """gateway/core, the portable core a board carries."""
    return _package_dir(CORE_PACKAGE)


def app_files(app: str) -> dict[str, Path]:
    """Board path → local file of every module of the app (its folder's .py files)."""
    directory = firmware_dir(app)
    return {path.name: path for path in sorted(directory.glob("*.py"))}


def core_files(app: str) -> dict[str, Path]:
    """Board path → local file of the gateway.core modules the app imports, transitively.

    A board has little flash: it gets the core modules the app really uses (found by reading
    the imports), plus the package __init__ files, not the whole core.
    """
    core = core_dir()
    wanted: list[str] = []
    pending = list(app_files(app).values())
    seen: set[Path] = set()
    while pending:
        path = pending.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in _core_imports(path):
            module = core / f"{name}.py"
            if module.is_file() and name not in wanted:
                wanted.append(name)
                pending.append(module)
    files = {
        "gateway/__init__.py": core.parent / "__init__.py",
        "gateway/core/__init__.py": core / "__init__.py",
    }
    for name in sorted(wanted):
        files[f"gateway/core/{name}.py"] = core / f"{name}.py"
    return files


def _core_imports(path: Path) -> list[str]:
    """Names of gateway.core modules a file imports (`from gateway.core import x`, ...)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == CORE_PACKAGE:
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("gateway.core."):
            names.append(node.module.split(".")[2])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("gateway.core."):
                    names.append(alias.name.split(".")[2])
    return names
