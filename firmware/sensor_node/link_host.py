"""Byte transports to the gateway on a host: an inherited fd (a pty master) or a tty by path.

The MicroPython unix port and CPython each get their own link; link.make_link imports this
module only for the "fd" and "path" link types, so a board never loads it.
"""

import sys

from link import CHUNK, LinkClosed

from gateway.core import compat


def FdLink(fd, path=None):
    """An inherited file descriptor (the master end of a pty) or a tty opened by path."""
    if compat.MICROPYTHON:
        return MicroFdLink(fd, path)
    return PosixFdLink(fd, path)


class MicroFdLink:
    """The MicroPython unix port: a FileIO on the fd, driven by asyncio's poll-based streams.

    FileIO.read(n) loops until n bytes arrive on a blocking descriptor. An inherited pty master
    is non-blocking already (read returns what is there); a tty opened by path is made raw with
    VMIN=0 and VTIME=0, so a read after poll() said "readable" returns what is waiting. There is
    no fcntl to set O_NONBLOCK, termios is what the port offers.
    """

    def __init__(self, fd, path):
        self.fd = fd
        self.path = path
        self.reopens = path is not None
        self.file = None
        self.reader = None
        self.writer = None

    async def open(self):
        import asyncio

        if self.path is None:
            self.file = open(self.fd, "r+b")  # noqa: SIM115 - held open for the link's life
        else:
            self.file = _open_raw_tty(self.path)
        self.reader = asyncio.StreamReader(self.file)
        self.writer = asyncio.StreamWriter(self.file, {})

    async def read(self):
        try:
            data = await self.reader.read(CHUNK)
        except OSError as error:  # EIO: the other end of the pty is gone
            raise LinkClosed(str(error)) from None
        if not data:  # readable with nothing to read: hangup
            raise LinkClosed("end of file")
        return data

    async def write(self, data):
        try:
            self.writer.write(data)
            await self.writer.drain()
        except OSError as error:
            raise LinkClosed(str(error)) from None

    def close(self):
        if self.file is not None and self.path is not None:
            self.file.close()
        self.file = None


# Linux termios bits (the unix port's termios module names none of them): what cfmakeraw()
# clears in the input, output and local modes, and sets in the control modes.
_RAW_IFLAG_OFF = 0o1 | 0o2 | 0o10 | 0o40 | 0o100 | 0o200 | 0o400 | 0o2000
_RAW_OFLAG_OFF = 0o1  # OPOST
_RAW_LFLAG_OFF = 0o10 | 0o100 | 0o2 | 0o1 | 0o100000  # ECHO ECHONL ICANON ISIG IEXTEN
_RAW_CFLAG_OFF = 0o60 | 0o400  # CSIZE PARENB
_RAW_CFLAG_ON = 0o60  # CS8


def _open_raw_tty(path):
    import termios

    handle = open(path, "r+b")  # noqa: SIM115 - the caller keeps it
    fd = handle.fileno()
    if sys.platform != "linux":
        termios.setraw(fd)  # flushes input waiting in the tty (TCSAFLUSH)
    attributes = termios.tcgetattr(fd)
    if sys.platform == "linux":
        # Raw mode set with TCSANOW: what the device wrote before the port was opened stays
        # (termios.setraw would discard it, unlike the Pi gateway's pyserial).
        attributes[0] &= ~_RAW_IFLAG_OFF
        attributes[1] &= ~_RAW_OFLAG_OFF
        attributes[2] = (attributes[2] & ~_RAW_CFLAG_OFF) | _RAW_CFLAG_ON
        attributes[3] &= ~_RAW_LFLAG_OFF
    attributes[6][5] = 0  # VTIME
    attributes[6][6] = 0  # VMIN: read() returns at once with what is there
    termios.tcsetattr(fd, termios.TCSANOW, attributes)
    return handle


class PosixFdLink:
    """CPython: a non-blocking descriptor watched with the event loop's add_reader/add_writer."""

    def __init__(self, fd, path):
        self.fd = fd
        self.path = path
        self.reopens = path is not None

    async def open(self):
        import os

        if self.path is not None:
            self.fd = os.open(self.path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
            if os.isatty(self.fd):
                import tty

                tty.setraw(self.fd)
        os.set_blocking(self.fd, False)

    async def read(self):
        import os

        while True:
            await self._ready(True)
            try:
                data = os.read(self.fd, CHUNK)
            except BlockingIOError:
                continue
            except OSError as error:
                raise LinkClosed(str(error)) from None
            if not data:
                raise LinkClosed("end of file")
            return data

    async def write(self, data):
        import os

        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self.fd, view) :]
                continue
            except BlockingIOError:
                pass
            except OSError as error:
                raise LinkClosed(str(error)) from None
            await self._ready(False)

    async def _ready(self, readable):
        import asyncio

        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        watch, unwatch = (
            (loop.add_reader, loop.remove_reader)
            if readable
            else (loop.add_writer, loop.remove_writer)
        )
        watch(self.fd, _resolve, waiter)
        try:
            await waiter
        finally:
            unwatch(self.fd)

    def close(self):
        import os

        if self.path is not None and self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _resolve(waiter):
    if not waiter.done():
        waiter.set_result(None)
