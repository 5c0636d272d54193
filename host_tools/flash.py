"""`host-tools flash`: write a MicroPython image to a board.

A .uf2 image goes to an RP2040 / RP2350 in BOOTSEL mode (copied to its drive, then the
board is awaited as a serial port); a .bin image goes to an ESP32-family or ESP8266 chip
through esptool. --dry-run says what would be done and touches nothing.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Callable

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
ESP_CHIPS = ("auto", "esp32", "esp32s2", "esp32s3", "esp32c3", "esp32c6", "esp8266")


class _Bar:
    """A rich progress bar for one transfer (a plain final line when not on a terminal)."""

    def __init__(self, label: str, total: int):
        self.label = label
        self.total = total
        self.bar: Any = None
        self.task: Any = None
        if sys.stderr.isatty():
            from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

            self.bar = Progress(TextColumn(label), BarColumn(), DownloadColumn(), transient=True)
            self.bar.start()
            self.task = self.bar.add_task(label, total=total)

    def advance(self, count: int) -> None:
        if self.bar is not None:
            self.bar.advance(self.task, count)

    def update(self, done: int, total: int) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=done, total=total)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def _err(text: str) -> None:
    print(f"host-tools flash: {text}", file=sys.stderr)


def uf2_command(args: argparse.Namespace, data: bytes) -> int:
    from host_tools import uf2
    from host_tools.ports import list_ports

    try:
        info = uf2.check_image(data)
        if args.drive:
            drives = uf2.find_drives([args.drive])
            if not drives:
                raise uf2.Uf2Error(
                    f"{args.drive} is not an RPI-RP2 / RP2350 drive (no {uf2.INFO_FILE})"
                )
        else:
            drives = uf2.find_drives(args.search or uf2.default_search_dirs())
        drive = uf2.choose_drive(drives, data, args.image)
    except uf2.Uf2Error as error:
        _err(str(error))
        return EXIT_FAILURE
    name = os.path.basename(args.image)
    families = uf2.family_names(info["families"]) or "no family"
    if args.dry_run:
        print(
            f"would copy {name} ({len(data)} bytes, {info['blocks']} UF2 blocks, {families}) "
            f"to the {drive['label']} drive at {drive['path']}, then wait for the board's port"
        )
        return EXIT_OK
    before = list_ports()
    bar = _Bar(f"{name} → {drive['label']}", len(data))
    try:
        target = uf2.copy_image(data, name, drive, bar.advance)
    except OSError as error:
        _err(f"copying to {drive['path']}: {error.strerror or error}")
        return EXIT_FAILURE
    finally:
        bar.close()
    print(f"copied {name} ({len(data)} bytes, {families}) to {target}")
    if args.no_wait:
        return EXIT_OK
    port = uf2.wait_for_port(list_ports, before, args.wait)
    if port is None:
        _err(
            f"the board did not come back as a serial port within {args.wait:g} s "
            "(is the image a MicroPython build with USB serial?)"
        )
        return EXIT_FAILURE
    print(f"board is back on {port['device']} (serial {port.get('serial_number') or '-'})")
    return EXIT_OK


def esp_command(args: argparse.Namespace, data: bytes) -> int:
    if not args.port:
        _err("an ESP image (.bin) needs --port, the board's serial port")
        return EXIT_USAGE
    address = f"0x{args.address:x}" if args.address is not None else "the chip's image address"
    if args.dry_run:
        steps = ["detect the chip"] + (["erase the flash"] if args.erase else [])
        steps += [f"write {len(data)} bytes at {address}", "verify", "reset"]
        print(f"would connect to {args.port} ({args.connect_mode}) and " + ", ".join(steps))
        return EXIT_OK
    from host_tools import esp

    bar = _Bar(f"{os.path.basename(args.image)} → {args.port}", len(data))
    progress: Callable[[int, int], None] = bar.update
    try:
        done = esp.flash(
            args.port,
            data,
            args.chip,
            args.address,
            args.erase,
            args.baud,
            args.connect_mode,
            not args.no_stub,
            say=lambda text: print(text, file=sys.stderr),
            progress=progress,
        )
    except esp.EspError as error:
        _err(str(error))
        print(
            "hint: hold BOOT while pressing RESET, or try --connect-mode usb-reset", file=sys.stderr
        )
        return EXIT_FAILURE
    finally:
        bar.close()
    erased = ", flash erased first" if done["erased"] else ""
    print(
        f"wrote and verified {done['bytes']} bytes at 0x{done['address']:x} on the "
        f"{done['chip']}{erased}; chip reset"
    )
    return EXIT_OK


def flash_command(args: argparse.Namespace) -> int:
    try:
        with open(args.image, "rb") as handle:
            data = handle.read()
    except OSError as error:
        _err(f"cannot read {args.image}: {error.strerror or error}")
        return EXIT_FAILURE
    if args.image.lower().endswith(".uf2"):
        return uf2_command(args, data)
    return esp_command(args, data)


def _address(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a flash address such as 0x1000, got {text!r}")
    return value


def add_flash(commands: Any) -> None:
    parser = commands.add_parser(
        "flash",
        help="write a MicroPython image: .bin to an ESP32/ESP8266, .uf2 to an RP2040/RP2350",
        description="ESP32 family and ESP8266 (a .bin): esptool detects the chip, loads its "
        "flasher stub, optionally erases, writes the image at the chip's address (0x1000 on "
        "the ESP32, 0 on the others) and verifies it. RP2040 / RP2350 (a .uf2): the image is "
        "copied to the board's RPI-RP2 / RP2350 drive (BOOTSEL mode), then the board is "
        "awaited as a serial port.",
    )
    parser.add_argument("image", help="the MicroPython firmware: .bin or .uf2")
    parser.add_argument("--port", help="ESP: the board's serial port")
    parser.add_argument("--chip", choices=ESP_CHIPS, default="auto", help="ESP: default auto")
    parser.add_argument("--address", type=_address, help="ESP: where the image goes")
    parser.add_argument("--erase", action="store_true", help="ESP: erase the whole flash first")
    parser.add_argument("--baud", type=int, default=460800, help="ESP: transfer speed")
    parser.add_argument(
        "--connect-mode",
        default="default-reset",
        choices=("default-reset", "usb-reset", "no-reset", "no-reset-no-sync"),
    )
    parser.add_argument("--no-stub", action="store_true", help="ESP: talk to the ROM only")
    parser.add_argument("--drive", help="UF2: the mounted RPI-RP2 / RP2350 folder")
    parser.add_argument(
        "--search",
        action="append",
        metavar="DIR",
        help="UF2: where drives are mounted (repeatable)",
    )
    parser.add_argument("--wait", type=float, default=30.0, help="UF2: seconds to await the port")
    parser.add_argument("--no-wait", action="store_true", help="UF2: do not await the port")
    parser.add_argument("--dry-run", action="store_true", help="say what would be done")
    parser.set_defaults(run=flash_command)
