"""The `host-tools` command: list serial ports and simulate sensor nodes.

flash, provision, monitor and conformance join as further subcommands (one module each,
registered in COMMANDS). Exit codes: 0 success; 1 failure; 2 usage.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Callable

from gateway import __version__
from host_tools import simulate

EXIT_OK = 0
EXIT_FAILURE = 1


def ports_command(args: argparse.Namespace) -> int:
    """Print the serial ports present with their USB ids, as a table or JSON."""
    from gateway.sources.ports import list_ports

    found = list_ports()
    if args.json:
        print(json.dumps(found, indent=2))
        return EXIT_OK
    if not found:
        print("no serial ports found", file=sys.stderr)
        print("hint: is the board plugged in, and are you in the dialout group?", file=sys.stderr)
        return EXIT_OK
    print(format_ports(found))
    return EXIT_OK


def format_ports(found: list[dict[str, Any]]) -> str:
    """One aligned line per port: device, vid:pid, serial number, description; under it the
    port's /dev/serial/by-id/ path when udev made one (it follows the device on a replug)."""
    rows = [("DEVICE", "VID:PID", "SERIAL", "DESCRIPTION")]
    for port in found:
        ids = f"{port['vid']}:{port['pid']}" if port.get("vid") else "-"
        rows.append(
            (port["device"], ids, port.get("serial_number") or "-", port.get("description") or "-")
        )
    widths = [max(len(row[column]) for row in rows) for column in range(3)]
    lines = []
    for index, row in enumerate(rows):
        cells = [cell.ljust(width) for cell, width in zip(row[:3], widths)]
        lines.append("  ".join([*cells, row[3]]).rstrip())
        by_id = found[index - 1].get("by_id") if index else None
        if by_id:
            lines.append(f"  by-id: {by_id}")
    return "\n".join(lines)


def _add_ports(commands: Any) -> None:
    parser = commands.add_parser("ports", help="list serial ports with USB vid/pid/serial")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(run=ports_command)


def _add_simulate(commands: Any) -> None:
    parser = commands.add_parser(
        "simulate",
        help="run sensor-node firmware on ptys; prints the ports for the gateway",
        description="Start sensor nodes (the real firmware) each on its own pty, print the "
        "device paths to use as the gateway's `port` and a gateway.toml snippet, and run "
        "until Ctrl-C.",
    )
    simulate.add_arguments(parser)
    parser.set_defaults(run=simulate.command)


COMMANDS: list[Callable[[Any], None]] = [_add_ports, _add_simulate]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="host-tools",
        description="Tools for the people flashing and running sensor nodes.",
        epilog="Exit codes: 0 success, 1 failure, 2 usage.",
    )
    parser.add_argument("--version", action="version", version=f"host-tools {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
