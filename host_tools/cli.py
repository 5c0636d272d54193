"""The `host-tools` command: ports, flash, provision, simulate, monitor, send, conformance.

Each subcommand lives in a module of its own and is registered in COMMANDS.
Exit codes: 0 success; 1 failure; 2 usage.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Callable

from gateway import __version__
from host_tools import simulate
from host_tools.conformance import add_conformance
from host_tools.flash import add_flash
from host_tools.monitor import add_monitor, add_send
from host_tools.ports import add_ports, format_ports
from host_tools.provision import add_provision
from host_tools.udev import add_udev_rule

EXIT_OK = 0
EXIT_FAILURE = 1


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


COMMANDS: list[Callable[[Any], None]] = [
    add_ports,
    add_flash,
    add_provision,
    _add_simulate,
    add_monitor,
    add_send,
    add_udev_rule,
    add_conformance,
]
__all__ = ["COMMANDS", "build_parser", "format_ports", "main"]


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
