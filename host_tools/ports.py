"""`host-tools ports`: the serial ports present, which gateway source selects each, plug events."""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from typing import Any, Callable, TextIO

from serial.tools import list_ports as pyserial_ports

from gateway.sources import ports as gateway_ports

EXIT_OK = 0
EXIT_FAILURE = 1
WATCH_INTERVAL = 0.5  # seconds between listings while watching


def list_ports() -> list[dict[str, Any]]:
    """Every port as gateway.sources.ports describes it, plus the USB product string."""
    found = []
    for info in pyserial_ports.comports():
        found.append({**gateway_ports.port_info(info), "product": info.product})
    return sorted(found, key=lambda port: port["device"])


def load_sources(config_path: str) -> list[dict[str, Any]]:
    """The [[sources]] of a gateway.toml (validated by the gateway's own loader)."""
    from gateway.config import load

    return load(config_path)["sources"]


def assign_sources(found: list[dict[str, Any]], sources: list[dict[str, Any]]) -> None:
    """Set port["source"] to the name of the source that would open it, else None.

    A source with `match` selects what gateway.sources.ports.find selects (the same rule as
    `gateway run`); one with `port` selects the port its path leads to.
    """
    for port in found:
        port["source"] = None
    for source in sources:
        device = _selected(source, found)
        for port in found:
            if port["device"] == device and port["source"] is None:
                port["source"] = source["name"]


def _selected(source: dict[str, Any], found: list[dict[str, Any]]) -> str | None:
    if source.get("match"):
        return gateway_ports.find(source["match"], found)
    path = source.get("port")
    if not path:
        return None
    target = os.path.realpath(path)
    for port in found:
        if os.path.realpath(port["device"]) == target:
            return port["device"]
    return None


def format_ports(found: list[dict[str, Any]]) -> str:
    """One aligned line per port: device, vid:pid, serial number, description; under it the
    port's by-id path, maker and product, and the source selecting it, when known."""
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
        if index:
            lines.extend(_details(found[index - 1]))
    return "\n".join(lines)


def _details(port: dict[str, Any]) -> list[str]:
    lines = []
    if port.get("by_id"):
        lines.append(f"  by-id: {port['by_id']}")
    made = ", ".join(filter(None, (port.get("manufacturer"), port.get("product"))))
    if made:
        lines.append(f"  usb: {made}")
    if "source" in port:
        lines.append(f"  source: {port['source'] or 'none'}")
    return lines


def plug_events(
    before: list[dict[str, Any]], after: list[dict[str, Any]]
) -> list[tuple[str, dict[str, Any]]]:
    """("plug", port) and ("unplug", port) for what differs between two listings."""
    old = {port["device"]: port for port in before}
    new = {port["device"]: port for port in after}
    events = [("unplug", old[device]) for device in sorted(old) if device not in new]
    events += [("plug", new[device]) for device in sorted(new) if device not in old]
    return events


def event_line(event: str, port: dict[str, Any]) -> str:
    ids = f"{port['vid']}:{port['pid']}" if port.get("vid") else "-"
    sign = "+" if event == "plug" else "-"
    text = f"{sign} {port['device']}  {ids}  {port.get('serial_number') or '-'}"
    text += f"  {port.get('description') or '-'}"
    if port.get("source"):
        text += f"  → source {port['source']}"
    return text


def watch(
    lister: Callable[[], list[dict[str, Any]]],
    out: TextIO,
    stop: threading.Event,
    as_json: bool = False,
    interval: float = WATCH_INTERVAL,
) -> None:
    """Print plug and unplug events until stop is set (the ports present first count as
    plugged in, so the output starts with what is there)."""
    current: list[dict[str, Any]] = []
    while True:
        listing = lister()
        for event, port in plug_events(current, listing):
            if as_json:
                print(json.dumps({"event": event, "time": time.time(), **port}), file=out)
            else:
                print(time.strftime("%H:%M:%S ") + event_line(event, port), file=out)
            out.flush()
        current = listing
        if stop.wait(interval):
            return


def ports_command(args: argparse.Namespace) -> int:
    sources: list[dict[str, Any]] | None = None
    if args.config:
        from gateway.config import ConfigError

        try:
            sources = load_sources(args.config)
        except ConfigError as error:
            print(f"host-tools ports: {error}", file=sys.stderr)
            return EXIT_FAILURE

    def lister() -> list[dict[str, Any]]:
        found = list_ports()
        if sources is not None:
            assign_sources(found, sources)
        return found

    if args.watch:
        return _watch(lister, args.json)
    found = lister()
    if args.json:
        print(json.dumps(found, indent=2))
        return EXIT_OK
    if not found:
        print("no serial ports found", file=sys.stderr)
        print("hint: is the board plugged in, and are you in the dialout group?", file=sys.stderr)
        return EXIT_OK
    print(format_ports(found))
    return EXIT_OK


def _watch(lister: Callable[[], list[dict[str, Any]]], as_json: bool) -> int:
    from host_tools.stop_signals import on_stop_signals

    stop = threading.Event()
    with on_stop_signals(stop.set):
        watch(lister, sys.stdout, stop, as_json)
    return EXIT_OK


def add_ports(commands: Any) -> None:
    parser = commands.add_parser(
        "ports",
        help="list serial ports with USB vid/pid/serial and the gateway source using each",
        description="List the serial ports present: device, USB vid:pid, serial number, "
        "maker and product, and with -c which [[sources]] entry of that gateway.toml selects "
        "the port (by its match or port). --watch prints plug and unplug events as they happen.",
    )
    parser.add_argument("-c", "--config", help="a gateway.toml whose sources to match")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument(
        "--watch", action="store_true", help="print plug/unplug events until Ctrl-C"
    )
    parser.set_defaults(run=ports_command)
