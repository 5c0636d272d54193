"""Flashing an RP2040 / RP2350: copy a UF2 file to the board's BOOTSEL drive, wait for its port.

In BOOTSEL mode the board shows up as a USB drive labelled RPI-RP2 (RP2040) or RP2350,
holding INFO_UF2.TXT. Copying a .uf2 file there flashes it; the board then restarts and
(with MicroPython) comes back as a USB serial port.
"""

from __future__ import annotations

import os
import struct
import time
from pathlib import Path
from typing import Any, Callable

LABELS = ("RPI-RP2", "RP2350")
INFO_FILE = "INFO_UF2.TXT"
BLOCK = 512
MAGIC_START0, MAGIC_START1, MAGIC_END = 0x0A324655, 0x9E5D5157, 0x0AB16F30
FLAG_FAMILY = 0x00002000
# UF2 family ids (github.com/microsoft/uf2 families) for the boards each drive flashes.
FAMILIES = {
    0xE48BFF56: ("RP2040", "RPI-RP2"),
    0xE48BFF57: ("RP2XXX absolute", None),
    0xE48BFF58: ("RP2XXX data", None),
    0xE48BFF59: ("RP2350 ARM secure", "RP2350"),
    0xE48BFF5A: ("RP2350 RISC-V", "RP2350"),
    0xE48BFF5B: ("RP2350 ARM non-secure", "RP2350"),
}
COPY_CHUNK = 64 * 1024
RASPBERRY_PI_VID = "2e8a"


class Uf2Error(Exception):
    """No drive, a file that is not UF2, or one for another chip."""


def check_image(data: bytes) -> dict[str, Any]:
    """Blocks and family of a UF2 image; raises Uf2Error naming the first bad block."""
    if not data or len(data) % BLOCK:
        raise Uf2Error(f"not a UF2 file: {len(data)} bytes is not a multiple of {BLOCK}")
    families = set()
    count = len(data) // BLOCK
    for index in range(count):
        block = data[index * BLOCK : (index + 1) * BLOCK]
        start0, start1, flags, _, _, number, total, family = struct.unpack_from("<8I", block)
        end = struct.unpack_from("<I", block, BLOCK - 4)[0]
        if (start0, start1, end) != (MAGIC_START0, MAGIC_START1, MAGIC_END):
            raise Uf2Error(f"not a UF2 file: block {index} has no UF2 magic numbers")
        if flags & FLAG_FAMILY:
            families.add(family)
    return {"blocks": count, "families": sorted(families)}


def family_names(families: list[int]) -> str:
    return ", ".join(FAMILIES.get(family, (f"0x{family:08x}", None))[0] for family in families)


def default_search_dirs() -> list[str]:
    """Where desktops mount removable drives, plus every mount point the kernel lists."""
    user = os.environ.get("USER") or os.environ.get("LOGNAME") or ""
    dirs = [f"/media/{user}", f"/run/media/{user}", "/media", "/Volumes", "/mnt"]
    try:
        with open("/proc/mounts") as mounts:
            dirs += [line.split()[1].replace("\\040", " ") for line in mounts]
    except OSError:
        pass
    return dirs


def find_drives(search: list[str]) -> list[dict[str, str]]:
    """BOOTSEL drives: folders named RPI-RP2 / RP2350 (or under a search dir) with INFO_UF2.TXT.

    A drive's label is its folder's name (what udisks and macOS mount it as) or the
    Board-ID line in INFO_UF2.TXT."""
    found: dict[str, dict[str, str]] = {}
    for directory in search:
        for candidate in [Path(directory), *_children(Path(directory))]:
            info = candidate / INFO_FILE
            if not info.is_file():
                continue
            text = info.read_text(errors="replace")
            label = candidate.name if candidate.name in LABELS else _board_id(text)
            if label in LABELS:
                found[str(candidate.resolve())] = {"path": str(candidate), "label": label}
    return list(found.values())


def _children(directory: Path) -> list[Path]:
    try:
        return [child for child in directory.iterdir() if child.is_dir()]
    except OSError:
        return []


def _board_id(info: str) -> str | None:
    for line in info.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() == "board-id":
            value = value.strip()
            return (
                "RPI-RP2" if value.startswith("RPI-RP2") else "RP2350" if "2350" in value else value
            )
    return None


def choose_drive(drives: list[dict[str, str]], data: bytes, image: str) -> dict[str, str]:
    """The one drive this image is for; refuses none, several, or a chip mismatch."""
    if not drives:
        raise Uf2Error(
            "no RPI-RP2 or RP2350 drive is mounted: hold BOOTSEL while plugging the board in "
            "(or name the drive with --drive)"
        )
    if len(drives) > 1:
        names = ", ".join(drive["path"] for drive in drives)
        raise Uf2Error(f"{len(drives)} BOOTSEL drives mounted ({names}): choose one with --drive")
    drive = drives[0]
    info = check_image(data)
    wanted = {FAMILIES.get(family, ("", None))[1] for family in info["families"]} - {None}
    if wanted and drive["label"] not in wanted:
        raise Uf2Error(
            f"{image} is for {family_names(info['families'])}, but the drive at {drive['path']} "
            f"is {drive['label']}"
        )
    return drive


def copy_image(
    data: bytes, name: str, drive: dict[str, str], progress: Callable[[int], None] | None
) -> str:
    """Write the image to the drive in chunks (the board flashes as blocks arrive), synced."""
    target = os.path.join(drive["path"], name)
    with open(target, "wb") as handle:
        for start in range(0, len(data), COPY_CHUNK):
            chunk = data[start : start + COPY_CHUNK]
            handle.write(chunk)
            if progress is not None:
                progress(len(chunk))
        handle.flush()
        os.fsync(handle.fileno())
    return target


def wait_for_port(
    lister: Callable[[], list[dict[str, Any]]],
    before: list[dict[str, Any]],
    timeout: float,
    interval: float = 0.25,
) -> dict[str, Any] | None:
    """A Raspberry Pi USB serial port that was not there before, within timeout seconds."""
    known = {port["device"] for port in before}
    deadline = time.monotonic() + timeout
    while True:
        for port in lister():
            if port["device"] not in known and port.get("vid") == RASPBERRY_PI_VID:
                return port
        if time.monotonic() >= deadline:
            return None
        time.sleep(interval)  # a port appearing has no event we could wait on here
