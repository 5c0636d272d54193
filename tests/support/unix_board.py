"""A MicroPython "board" for provisioning tests: the unix port's REPL behind a USB-like port.

    host tools (board.path)  ⇄  pty A  ⇄  relay thread  ⇄  pty B  ⇄  micropython (stdio)

The unix port speaks the real REPL, raw REPL and raw-paste mode on a tty, which is all
mpremote needs. What a board adds around it is emulated here, and only that: a flash
filesystem (the `root` folder, the process's working directory and import path), running
main.py at power-up and dropping to the REPL when it ends, power cycles (when the process
exits, by machine.soft_reset() on the unix port or a crash, it is started again, like a
board after machine.reset(); the port stays, as a USB CDC port does), and the USB stdin's
interrupt character: on a board a Ctrl-C byte raises KeyboardInterrupt in a running
program unless it turned that off with micropython.kbd_intr(-1). The unix port catches
SIGINT exactly while Ctrl-C is on (kbd_intr(-1) and the REPL leave it at its default), so a
0x03 from the host becomes SIGINT then and is passed on as data otherwise.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import threading
import tty
from pathlib import Path

from host_tools.simulate import find_micropython

# What a board's firmware does at power-up: run main.py if there is one; whatever it raises,
# even SystemExit (our firmware's way out on a host), ends in the REPL, not in power-off.
BOOT = (
    "import os\n"
    "if 'main.py' in os.listdir():\n"
    "    try:\n"
    "        exec(open('main.py').read(), {'__name__': '__main__'})\n"
    "    except SystemExit:\n"
    "        pass\n"
    "    except BaseException as error:\n"
    "        import sys\n"
    "        sys.print_exception(error)\n"
)


class UnixBoard:
    """A board whose flash is `root`; `path` is its serial port; boots counts power-ups."""

    def __init__(self, root: str | os.PathLike, heap: str = "2M"):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.heap = heap
        micropython = find_micropython()
        if micropython is None:
            raise RuntimeError("the micropython unix port is not installed")
        self.micropython = micropython
        self.board_master, self.board_slave = os.openpty()
        self.host_master, self.host_slave = os.openpty()
        for fd in (self.board_slave, self.host_slave):
            tty.setraw(fd)
        self.path = os.ttyname(self.host_slave)
        self.boots = 0
        self.exit_codes: list[int] = []
        self.process: subprocess.Popen | None = None
        self._stopping = threading.Event()
        self._log = open(self.root.parent / f"{self.root.name}.console.log", "ab")  # noqa: SIM115
        self._relay = threading.Thread(target=self._relay_bytes, daemon=True)
        self._power = threading.Thread(target=self._power_cycles, daemon=True)

    def start(self) -> UnixBoard:
        self._relay.start()
        self._boot()
        self._power.start()
        return self

    def _boot(self) -> None:
        self.boots += 1
        env = {
            **os.environ,
            # The board's import path: its filesystem root and /lib, as on a real board.
            "MICROPYPATH": os.pathsep.join([".frozen", str(self.root), str(self.root / "lib")]),
        }
        self.process = subprocess.Popen(
            [self.micropython, "-X", f"heapsize={self.heap}", "-i", "-c", BOOT],
            cwd=self.root,
            stdin=self.board_slave,
            stdout=self.board_slave,
            stderr=self.board_slave,
            env=env,
        )

    def _power_cycles(self) -> None:
        while not self._stopping.is_set():
            process = self.process
            code = process.wait()
            if self._stopping.is_set():
                return
            self.exit_codes.append(code)
            self._boot()

    def _relay_bytes(self) -> None:
        """Copy bytes both ways between the board's pty and the host's, like a USB cable."""
        ends = {self.board_master: self.host_master, self.host_master: self.board_master}
        while not self._stopping.is_set():
            try:
                ready, _, _ = select.select(list(ends), [], [], 0.1)
            except (OSError, ValueError):
                return
            for fd in ready:
                try:
                    data = os.read(fd, 65536)
                except OSError:
                    continue  # the other side is not open (yet): nothing to carry
                if fd == self.board_master:
                    self._log.write(data)
                    self._log.flush()
                elif b"\x03" in data and self._interrupts_on():
                    data = self._interrupt(data)
                try:
                    os.write(ends[fd], data)
                except OSError:
                    pass

    def _interrupts_on(self) -> bool:
        """True while the running program has Ctrl-C on (it catches SIGINT)."""
        process = self.process
        if process is None or process.poll() is not None:
            return False
        try:
            with open(f"/proc/{process.pid}/status") as status:
                caught = next(line for line in status if line.startswith("SigCgt:"))
        except (OSError, StopIteration):
            return False
        return bool(int(caught.split()[1], 16) & (1 << (signal.SIGINT - 1)))

    def _interrupt(self, data: bytes) -> bytes:
        """Each 0x03 interrupts the program (as the board's USB stdin would); the rest goes on."""
        os.kill(self.process.pid, signal.SIGINT)
        return data.replace(b"\x03", b"")

    def console(self) -> str:
        """Everything the board wrote (the REPL, tracebacks, frames), for failure messages."""
        return (
            (self.root.parent / f"{self.root.name}.console.log")
            .read_bytes()
            .decode("utf-8", "replace")
        )

    def stop(self) -> None:
        self._stopping.set()
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._relay.join(2)
        self._power.join(2)
        for fd in (self.board_master, self.board_slave, self.host_master, self.host_slave):
            os.close(fd)
        self._log.close()

    def __enter__(self) -> UnixBoard:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()
