"""Serial port discovery: list the ports present and pick one by USB vid/pid/serial number."""

from __future__ import annotations

import logging
import os
from typing import Any

from serial.tools import list_ports as _pyserial_ports

log = logging.getLogger("gateway.sources")

MATCH_KEYS = ("vid", "pid", "serial")


def list_ports() -> list[dict[str, Any]]:
    """The serial ports present, sorted by device path; USB ids as 4-digit lowercase hex."""
    found = [port_info(info) for info in _pyserial_ports.comports()]
    return sorted(found, key=lambda port: port["device"])


def port_info(info: Any) -> dict[str, Any]:
    """One pyserial ListPortInfo as a plain dict."""
    return {
        "device": info.device,
        "description": info.description,
        "vid": _hex4(info.vid),
        "pid": _hex4(info.pid),
        "serial_number": info.serial_number,
        "manufacturer": info.manufacturer,
        "by_id": by_id_path(info.device),
    }


BY_ID_DIRECTORY = "/dev/serial/by-id"
# Paths that name a device rather than whichever device the kernel numbered first.
STABLE_PREFIXES = ("/dev/serial/by-id/", "/dev/serial/by-path/")


def by_id_path(device: str) -> str | None:
    """The /dev/serial/by-id/ link (udev: named from the USB serial number) to `device`."""
    try:
        names = sorted(os.listdir(BY_ID_DIRECTORY))
    except OSError:
        return None
    target = os.path.realpath(device)
    for name in names:
        link = os.path.join(BY_ID_DIRECTORY, name)
        if os.path.realpath(link) == target:
            return link
    return None


def follow_hint(device: str, ports: list[dict[str, Any]] | None = None) -> str:
    """How a source could follow this device across a replug: a `match` on its USB ids, or
    its by-id path, from what the port says while present; generic when it says nothing."""
    present = list_ports() if ports is None else ports
    port = next((port for port in present if port["device"] == device), None)
    ways = []
    if port is not None and port.get("serial_number") and port.get("vid"):
        ways.append(
            f'match = {{ vid = "{port["vid"]}", pid = "{port["pid"]}", '
            f'serial = "{port["serial_number"]}" }}'
        )
    if port is not None and port.get("by_id"):
        ways.append(f'port = "{port["by_id"]}"')
    if not ways:
        ways.append('match = { serial = "…" } or a /dev/serial/by-id/ path')
    return (
        f"{device} names a port, not a device: after a replug the device may come back under "
        f"another name; {' or '.join(ways)} would follow it (`host-tools ports` lists them)"
    )


def _hex4(number: int | None) -> str | None:
    return None if number is None else f"{number:04x}"


def normalise_id(value: Any) -> str:
    """A USB vid/pid as 4-digit lowercase hex: 0x2E8A, "2E8A", "0x2e8a" and 11914 all agree."""
    if isinstance(value, int):
        return f"{value:04x}"
    text = str(value).strip().lower()
    if text.startswith("0x"):
        text = text[2:]
    try:
        return f"{int(text, 16):04x}"
    except ValueError:
        raise ValueError(f"expected a USB id in hex such as 2e8a, got {value!r}") from None


def find(match: dict[str, Any], ports: list[dict[str, Any]] | None = None) -> str | None:
    """The device path of the port matching every given key of `match`, or None.

    `match` holds any of vid, pid, serial. When several ports match (two identical boards
    without serial numbers), the first by device path wins and a warning says so.
    """
    wanted = {key: match[key] for key in MATCH_KEYS if match.get(key) not in (None, "")}
    if not wanted:
        raise ValueError(f"match needs at least one of vid, pid, serial; got {match!r}")
    for key in ("vid", "pid"):
        if key in wanted:
            wanted[key] = normalise_id(wanted[key])
    candidates = list_ports() if ports is None else ports
    hits = sorted(
        (port for port in candidates if _matches(port, wanted)), key=lambda port: port["device"]
    )
    if not hits:
        return None
    if len(hits) > 1:
        log.warning(
            "%d ports match %s: %s; using %s (add a serial number to the match to choose)",
            len(hits),
            describe_match(wanted),
            ", ".join(port["device"] for port in hits),
            hits[0]["device"],
        )
    return hits[0]["device"]


def _matches(port: dict[str, Any], wanted: dict[str, Any]) -> bool:
    for key in ("vid", "pid"):
        if key not in wanted:
            continue
        if port.get(key) is None or normalise_id(port[key]) != wanted[key]:
            return False
    if "serial" in wanted:
        serial = port.get("serial_number")
        if serial is None or str(serial).lower() != str(wanted["serial"]).lower():
            return False
    return True


def describe_match(match: dict[str, Any]) -> str:
    """`vid=2e8a pid=0005 serial=E661` for log lines."""
    return " ".join(f"{key}={match[key]}" for key in MATCH_KEYS if match.get(key) is not None)
