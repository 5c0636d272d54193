"""The one module that talks to a MicroPython board: mpremote's serial transport as a library.

Everything provisioning does on a board goes through Board: reach the raw REPL (past our
firmware, which holds the USB port for the wire protocol), ask what MicroPython it runs,
hash files on the board, write files atomically, remove files, reset. mpremote is pinned in
pyproject.toml; its transport API is used nowhere else.
"""

from __future__ import annotations

import ast
import hashlib
import time
from typing import Any, Callable

from mpremote.transport import TransportError, TransportExecError
from mpremote.transport_serial import SerialTransport

# Our firmware turns Ctrl-C off on USB CDC; these bytes (never a valid frame) make it leave
# main.py for the REPL (firmware/sensor_node/README.md, "Getting back to the REPL").
REPL_ESCAPE = b"\x00\x03\x03\x03\x03\x03\x00"
ESCAPE_SETTLE = 0.3  # seconds for a running node to notice the escape and reach the REPL
READ_TIMEOUT = 5.0  # seconds a board may stay silent in the middle of an answer
CHUNK = 512  # bytes per write exec: small enough for a board's RAM, few round trips
ARCHS = (
    None,
    "x86",
    "x64",
    "armv6",
    "armv6m",
    "armv7m",
    "armv7em",
    "armv7emsp",
    "armv7emdp",
    "xtensa",
    "xtensawin",
    "rv32imc",
    "rv64imc",
)

# Runs on the board: the SHA-256 of each path (None when absent), computed there, so nothing
# but 32 bytes per file crosses the wire.
_HASH_CODE = """
import hashlib, binascii
def _h(p):
    try:
        f = open(p, 'rb')
    except OSError:
        return None
    h = hashlib.sha256()
    b = bytearray(512)
    while True:
        n = f.readinto(b)
        if not n:
            break
        h.update(b if n == 512 else b[:n])
    f.close()
    return binascii.hexlify(h.digest()).decode()
print(repr({p: _h(p) for p in %r}))
"""

_INFO_CODE = """
import sys, os
try:
    m = os.uname().machine
except AttributeError:
    m = sys.implementation._machine
print(repr({'version': '.'.join(str(v) for v in sys.implementation.version[:3]),
 'mpy': getattr(sys.implementation, '_mpy', 0), 'platform': sys.platform, 'machine': m}))
"""

_RESET_CODE = """
import machine
if hasattr(machine, 'reset'):
    machine.reset()
else:
    machine.soft_reset()
"""


class BoardError(Exception):
    """The board cannot be reached or refused an operation."""


class Board:
    """A MicroPython board on a serial port, in the raw REPL once connect() returns."""

    def __init__(self, port: str, baud: int = 115200):
        self.port = port
        try:
            # A read timeout: without one a board that stops answering hangs the host forever.
            self.transport = SerialTransport(port, baud, timeout=READ_TIMEOUT)
        except TransportError as error:
            raise BoardError(f"cannot open {port}: {error}") from None
        self.in_repl = False

    def connect(self, attempts: int = 3) -> None:
        """Stop whatever runs (our firmware included) and enter the raw REPL."""
        for attempt in range(attempts):
            self.transport.serial.write(REPL_ESCAPE)
            time.sleep(ESCAPE_SETTLE)
            try:
                self.transport.enter_raw_repl(soft_reset=False, timeout_overall=3)
            except TransportError:
                if attempt == attempts - 1:
                    raise BoardError(
                        f"{self.port}: no MicroPython REPL answered (is it a MicroPython board, "
                        "and is no other program using the port?)"
                    ) from None
                continue
            self.in_repl = True
            return

    def _eval(self, code: str) -> Any:
        try:
            output = self.transport.exec(code)
        except TransportExecError as error:
            raise BoardError(
                f"{self.port}: the board raised {error.error_output.strip()}"
            ) from None
        except TransportError as error:
            raise BoardError(f"{self.port}: {error}") from None
        return ast.literal_eval(output.decode().strip())

    def info(self) -> dict[str, Any]:
        """MicroPython version, .mpy version and architecture, platform."""
        info = self._eval(_INFO_CODE)
        mpy = info["mpy"]
        info["mpy_version"] = mpy & 0xFF
        info["mpy_sub"] = (mpy >> 8) & 3
        arch = mpy >> 10
        info["arch"] = ARCHS[arch] if arch < len(ARCHS) else None
        return info

    def hashes(self, paths: list[str]) -> dict[str, str | None]:
        """SHA-256 (hex) of each path, computed on the board; None for a missing file."""
        if not paths:
            return {}
        try:
            return self._eval(_HASH_CODE % (list(paths),))
        except BoardError as error:
            if "hashlib" in str(error) or "sha256" in str(error):
                raise BoardError(
                    f"{self.port}: this MicroPython has no hashlib.sha256, which provisioning "
                    "needs to verify what it writes"
                ) from None
            raise

    def makedirs(self, path: str) -> None:
        """Create the folders of path on the board (those missing)."""
        parts = path.split("/")[:-1]
        for depth in range(1, len(parts) + 1):
            folder = "/".join(parts[:depth])
            self._eval(f"import os\ntry:\n os.mkdir({folder!r})\nexcept OSError:\n pass\nprint(1)")

    def write(self, path: str, data: bytes, progress: Callable[[int], None] | None = None) -> None:
        """Write data to path through a temporary file renamed over it (a board reset half
        way leaves the old file whole), then check its SHA-256 on the board."""
        self.makedirs(path)
        temporary = path + ".tmp"
        try:
            self.transport.exec(f"f=open({temporary!r},'wb')\nw=f.write")
            for start in range(0, len(data), CHUNK):
                chunk = data[start : start + CHUNK]
                self.transport.exec("w(" + repr(chunk) + ")")
                if progress is not None:
                    progress(len(chunk))
            self.transport.exec(
                f"f.close()\nimport os\ntry:\n os.remove({path!r})\nexcept OSError:\n pass\n"
                f"os.rename({temporary!r},{path!r})"
            )
        except TransportExecError as error:
            raise BoardError(f"{self.port}: writing {path}: {error.error_output.strip()}") from None
        except TransportError as error:
            raise BoardError(f"{self.port}: writing {path}: {error}") from None
        wanted = hashlib.sha256(data).hexdigest()
        got = self.hashes([path])[path]
        if got != wanted:
            raise BoardError(f"{path}: SHA-256 on the board is {got}, expected {wanted}")

    def remove(self, path: str) -> None:
        self._eval(f"import os\ntry:\n os.remove({path!r})\nexcept OSError:\n pass\nprint(1)")

    def reset(self) -> None:
        """Restart the board (machine.reset; the unix port's machine.soft_reset); the REPL
        connection ends with it."""
        try:
            self.transport.exec_raw_no_follow(_RESET_CODE)
        except TransportError as error:
            raise BoardError(f"{self.port}: reset: {error}") from None
        self.in_repl = False

    def close(self) -> None:
        if self.in_repl:
            try:
                self.transport.exit_raw_repl()
            except (TransportError, OSError):
                pass
        try:
            self.transport.close()
        except OSError:
            pass

    def __enter__(self) -> Board:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()
