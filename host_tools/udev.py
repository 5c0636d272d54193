"""`host-tools udev-rule`: a udev rule giving one USB serial device a stable /dev/NAME link.

The kernel numbers ttyACM*/ttyUSB* in plug-in order, so after a replug or a reboot a board
may come back under another name. A rule keyed on the board's USB serial number makes
/dev/NAME always lead to that board.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from typing import Any, Callable

EXIT_OK = 0
EXIT_FAILURE = 1
RULES_DIR = "/etc/udev/rules.d"
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# udev rule values are double-quoted strings; these characters would end or escape one.
UNSAFE_VALUE = re.compile(r'["\\\n\r]')
RELOAD_HINT = "sudo udevadm control --reload-rules && sudo udevadm trigger --subsystem-match=tty"


class UdevError(Exception):
    """The rule cannot be made (no such port, no serial number, bad name)."""


def find_port(port: str, listing: list[dict[str, Any]]) -> dict[str, Any]:
    """The listed port that `port` names (its device path, or a link to it)."""
    target = os.path.realpath(port)
    for entry in listing:
        if entry["device"] == port or os.path.realpath(entry["device"]) == target:
            return entry
    present = ", ".join(entry["device"] for entry in listing) or "none"
    raise UdevError(f"no serial port {port} (present: {present})")


def rule_text(port: dict[str, Any], name: str) -> str:
    """The rule for port: matched on vid, pid and serial number, linked as /dev/name."""
    if not NAME.fullmatch(name) or name.startswith(("tty", "serial")):
        raise UdevError(
            f"--name {name!r}: expected 1 to 64 letters, digits, '.', '_' or '-', starting with "
            "a letter or digit, not tty* or serial* (the kernel's and udev's own names)"
        )
    if not port.get("vid") or not port.get("pid"):
        raise UdevError(f"{port['device']} is not a USB device (no vendor and product id)")
    serial = port.get("serial_number")
    if not serial:
        raise UdevError(
            f"{port['device']} ({port['vid']}:{port['pid']}) reports no USB serial number, so a "
            "rule could not tell it from another board of the same kind; use its "
            "/dev/serial/by-path/ link (it names the USB socket) instead"
        )
    for label, value in (("serial number", serial), ("vendor id", port["vid"])):
        if UNSAFE_VALUE.search(str(value)):
            raise UdevError(f"{port['device']}: its {label} {value!r} cannot be written in a rule")
    about = ", ".join(filter(None, (port.get("manufacturer"), port.get("product"))))
    return (
        f"# Written by host-tools udev-rule: /dev/{name} is the USB serial device "
        f"{port['vid']}:{port['pid']} with serial number {serial}"
        + (f" ({about})" if about else "")
        + ".\n"
        f'SUBSYSTEM=="tty", ATTRS{{idVendor}}=="{port["vid"]}", '
        f'ATTRS{{idProduct}}=="{port["pid"]}", ATTRS{{serial}}=="{serial}", '
        f'SYMLINK+="{name}", GROUP="dialout", MODE="0660"\n'
    )


def rule_path(name: str, rules_dir: str = RULES_DIR) -> str:
    return os.path.join(rules_dir, f"99-edge-gateway-{name}.rules")


def write_rule(text: str, path: str) -> None:
    """Write the rule atomically (udev may read the directory at any moment)."""
    temporary = f"{path}.{os.getpid()}.tmp"
    with open(temporary, "w") as handle:
        handle.write(text)
    os.replace(temporary, path)


def udev_rule_command(
    args: argparse.Namespace, lister: Callable[[], list[dict[str, Any]]] | None = None
) -> int:
    if lister is None:
        from host_tools.ports import list_ports as lister
    try:
        text = rule_text(find_port(args.port, lister()), args.name)
    except UdevError as error:
        print(f"host-tools udev-rule: {error}", file=sys.stderr)
        return EXIT_FAILURE
    path = rule_path(args.name, args.rules_dir)
    if args.dry_run:
        print(f"# would write {path}")
        print(text, end="")
        return EXIT_OK
    try:
        write_rule(text, path)
    except OSError as error:
        print(f"host-tools udev-rule: cannot write {path}: {error.strerror}", file=sys.stderr)
        print("hint: run it with sudo, or --dry-run to see the rule", file=sys.stderr)
        return EXIT_FAILURE
    print(f"wrote {path}")
    print(f"hint: {RELOAD_HINT}; then replug the board and use /dev/{args.name}")
    return EXIT_OK


def add_udev_rule(commands: Any) -> None:
    parser = commands.add_parser(
        "udev-rule",
        help="write a udev rule giving a board a stable /dev/NAME from its USB serial number",
        description="Look up the port's USB vendor id, product id and serial number and write "
        f"a rule to {RULES_DIR} making /dev/NAME a link to that board whatever ttyACM* or "
        "ttyUSB* number it gets (group dialout, mode 0660).",
    )
    parser.add_argument("--port", required=True, help="the board's port now, e.g. /dev/ttyACM0")
    parser.add_argument("--name", required=True, help="the link to make: /dev/NAME")
    parser.add_argument("--rules-dir", default=RULES_DIR, help=f"default {RULES_DIR}")
    parser.add_argument("--dry-run", action="store_true", help="print the rule, write nothing")
    parser.set_defaults(run=udev_rule_command)
