"""The one module that drives esptool (pinned in pyproject.toml), used as a library.

Flashing an ESP32-family or ESP8266 board: connect to its ROM bootloader (resetting it into
download mode over DTR/RTS, or not), detect the chip, load esptool's flasher stub, optionally
erase, write the MicroPython image at the chip's address, verify it, and reset the chip.
"""

from __future__ import annotations

from typing import Any, Callable

from esptool.cmds import (
    attach_flash,
    detect_chip,
    erase_flash,
    reset_chip,
    run_stub,
    verify_flash,
    write_flash,
)
from esptool.logger import TemplateLogger, log
from esptool.util import FatalError

ROM_BAUD = 115200
# Where MicroPython's image goes (micropython.org/download): after the second-stage
# bootloader's reserved first 4 KB on the ESP32, at 0 on the ESP8266 and the newer chips.
IMAGE_ADDRESS = {"ESP32": 0x1000, "ESP8266": 0x0}
CONNECT_MODES = ("default-reset", "usb-reset", "no-reset", "no-reset-no-sync")


class EspError(Exception):
    """No chip answered, or esptool refused (the message says why)."""


class _Logger(TemplateLogger):
    """esptool's output: lines to a callable, progress to a callback (a progress bar)."""

    def __init__(self, say: Callable[[str], None], progress: Callable[[int, int], None] | None):
        self.say = say
        self.progress = progress

    def print(self, *args: Any, **kwargs: Any) -> None:
        text = " ".join(str(arg) for arg in args).strip()
        if text:
            self.say(text)

    def note(self, message: str) -> None:
        self.say(f"note: {message}")

    def warning(self, message: str) -> None:
        self.say(f"warning: {message}")

    def error(self, message: str) -> None:
        self.say(f"error: {message}")

    def stage(self, finish: bool = False) -> None:
        pass

    def progress_bar(
        self, cur_iter: int, total_iters: int, prefix: str = "", suffix: str = "", bar_length=30
    ) -> None:
        if self.progress is not None:
            self.progress(cur_iter, total_iters)

    def set_verbosity(self, verbosity: str) -> None:
        pass


def flash(
    port: str,
    image: bytes,
    chip: str = "auto",
    address: int | None = None,
    erase: bool = False,
    baud: int = 460800,
    connect_mode: str = "default-reset",
    stub: bool = True,
    say: Callable[[str], None] = print,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Write image to the chip on port and verify it; what was done, as a dict."""
    log.set_logger(_Logger(say, progress))
    try:
        esp = detect_chip(port, ROM_BAUD, connect_mode, connect_attempts=3)
    except (FatalError, OSError) as error:
        raise EspError(f"no ESP chip answered on {port}: {_first_line(error)}") from None
    try:
        name = esp.CHIP_NAME
        if chip != "auto" and name.replace("-", "").lower() != chip.replace("-", "").lower():
            raise EspError(f"{port} has an {name}, not an {chip}")
        if stub:
            esp = run_stub(esp)
        if baud != ROM_BAUD:
            esp.change_baud(baud)
        attach_flash(esp)
        if erase:
            erase_flash(esp)
        where = IMAGE_ADDRESS.get(name, 0x0) if address is None else address
        write_flash(esp, [(where, image)])
        verify_flash(esp, [(where, image)])
        reset_chip(esp, "hard-reset")
        return {"chip": name, "address": where, "bytes": len(image), "erased": erase}
    except FatalError as error:
        raise EspError(f"{port}: {_first_line(error)}") from None
    finally:
        esp._port.close()


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
