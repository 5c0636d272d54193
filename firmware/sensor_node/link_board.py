"""Byte transports to the gateway on a board: USB CDC through stdio, or a machine.UART.

link.make_link imports this module only for the "stdio" and "uart" link types.
"""

import sys

from link import CHUNK


class StdioLink:
    """USB CDC through sys.stdin/sys.stdout, with Ctrl-C disabled so data bytes stay data.

    stdin.read(n) blocks until n bytes came, so one byte is awaited and then whatever else is
    already waiting is taken without blocking (polled with a zero timeout).
    """

    reopens = False

    def __init__(self):
        self.reader = None
        self.writer = None
        self.poller = None

    async def open(self):
        import asyncio
        import select

        import micropython

        micropython.kbd_intr(-1)  # 0x03 inside a frame must not raise KeyboardInterrupt
        self.reader = asyncio.StreamReader(sys.stdin.buffer)
        self.writer = asyncio.StreamWriter(sys.stdout.buffer, {})
        self.poller = select.poll()
        self.poller.register(sys.stdin, select.POLLIN)

    async def read(self):
        data = await self.reader.read(1)
        more = []
        count = 1
        while count < CHUNK and self.poller.poll(0):
            more.append(sys.stdin.buffer.read(1))
            count += 1
        return data + b"".join(more) if more else data

    async def write(self, data):
        self.writer.write(data)
        await self.writer.drain()

    def close(self):
        import micropython

        micropython.kbd_intr(3)


class UartLink:
    """A machine.UART (e.g. to a Raspberry Pi's GPIO UART or a USB-serial adapter)."""

    reopens = False

    def __init__(self, spec):
        self.spec = spec
        self.reader = None
        self.writer = None

    async def open(self):
        import asyncio

        import machine

        keywords = {"baudrate": self.spec.get("baud", 115200), "timeout": 0}
        for pin in ("tx", "rx"):
            if pin in self.spec:
                keywords[pin] = machine.Pin(self.spec[pin])
        uart = machine.UART(self.spec.get("id", 0), **keywords)
        self.reader = asyncio.StreamReader(uart)
        self.writer = asyncio.StreamWriter(uart, {})

    async def read(self):
        while True:
            data = await self.reader.read(CHUNK)
            if data:
                return data

    async def write(self, data):
        self.writer.write(data)
        await self.writer.drain()

    def close(self):
        pass
