"""An ESP32 in download mode, on a pty: the serial side of its ROM bootloader and flasher stub.

No chip is attached to this machine, so `host-tools flash` is tested against this: it answers
esptool's SLIP commands the way the ESP32 ROM does (docs.espressif.com, "Serial Protocol"):
SYNC, register reads (the chip-detect magic, eFuses) and writes (the SPI flash peripheral:
RDID), memory download of the stub (after which it answers as the stub: two status bytes,
ERASE_FLASH), compressed and plain flash writes into a 4 MB flash image, and the flash MD5
that esptool verifies against. `commands` lists every command received, in order.
"""

from __future__ import annotations

import hashlib
import os
import select
import struct
import threading
import tty
import zlib

MAGIC_ESP32 = 0x00F01D83
CHIP_DETECT_MAGIC_REG = 0x40001000
SPI_BASE = 0x3FF42000  # ESP32 SPI1, the flash controller
SPI_CMD_REG, SPI_USR2_REG, SPI_W0_REG = SPI_BASE, SPI_BASE + 0x24, SPI_BASE + 0x80
SPI_CMD_USR = 1 << 18
EFUSE_BASE = 0x3FF5A000
FLASH_ID = 0x164020  # manufacturer 0x20, 4 MB (0x16)
FLASH_SIZE = 4 * 1024 * 1024
NAMES = {
    0x02: "FLASH_BEGIN",
    0x03: "FLASH_DATA",
    0x04: "FLASH_END",
    0x05: "MEM_BEGIN",
    0x06: "MEM_END",
    0x07: "MEM_DATA",
    0x08: "SYNC",
    0x09: "WRITE_REG",
    0x0A: "READ_REG",
    0x0B: "SPI_SET_PARAMS",
    0x0D: "SPI_ATTACH",
    0x0F: "CHANGE_BAUDRATE",
    0x10: "FLASH_DEFL_BEGIN",
    0x11: "FLASH_DEFL_DATA",
    0x12: "FLASH_DEFL_END",
    0x13: "SPI_FLASH_MD5",
    0x14: "GET_SECURITY_INFO",
    0xD0: "ERASE_FLASH",
    0xD1: "ERASE_REGION",
}


def slip(data: bytes) -> bytes:
    return b"\xc0" + data.replace(b"\xdb", b"\xdb\xdd").replace(b"\xc0", b"\xdb\xdc") + b"\xc0"


def unslip(data: bytes) -> bytes:
    return data.replace(b"\xdb\xdc", b"\xc0").replace(b"\xdb\xdd", b"\xdb")


class EspRom:
    """The chip's end of a pty; `path` is the serial port esptool opens."""

    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        self.path = os.ttyname(self.slave)
        self.flash = bytearray(b"\xff" * FLASH_SIZE)
        self.registers: dict[int, int] = {CHIP_DETECT_MAGIC_REG: MAGIC_ESP32}
        # eFuse words 1 and 2 hold the MAC (24:0a:c4:12:34:56 here); word 3 the chip version.
        self.registers[EFUSE_BASE + 4] = 0xC4123456
        self.registers[EFUSE_BASE + 8] = 0x0000240A
        self.commands: list[str] = []
        self.stub = False  # after the stub is downloaded and run, it answers instead of the ROM
        self._writing: dict | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def start(self) -> EspRom:
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        os.close(self.master)
        os.close(self.slave)

    def __enter__(self) -> EspRom:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.close()

    # -- the wire ------------------------------------------------------------------------

    def _serve(self) -> None:
        pending = b""
        while not self._stop.is_set():
            ready, _, _ = select.select([self.master], [], [], 0.05)
            if not ready:
                continue
            try:
                pending += os.read(self.master, 65536)
            except OSError:
                continue
            while b"\xc0" in pending:
                head, _, pending = pending.partition(b"\xc0")
                if head:
                    self._packet(unslip(head))

    def _reply(self, op: int, value: int = 0, data: bytes = b"", status: bytes = b"\x00\x00"):
        body = data + status + (b"" if self.stub else b"\x00\x00")  # the ESP32 ROM sends 4
        os.write(self.master, slip(struct.pack("<BBHI", 1, op, len(body), value) + body))

    def _packet(self, packet: bytes) -> None:
        if len(packet) < 8 or packet[0] != 0:
            return
        _, op, size, _ = struct.unpack_from("<BBHI", packet)
        data = packet[8 : 8 + size]
        self.commands.append(NAMES.get(op, f"0x{op:02x}"))
        handler = getattr(self, "_" + NAMES.get(op, "unknown").lower(), None)
        if handler is None:
            self._reply(op, status=b"\x01\x05")  # invalid message: esptool reads "unsupported"
            return
        handler(op, data)

    # -- commands ------------------------------------------------------------------------

    def _sync(self, op: int, data: bytes) -> None:
        for _ in range(8):  # the ROM answers a SYNC eight times
            self._reply(op, 0 if self.stub else 0x20120707)

    def _read_reg(self, op: int, data: bytes) -> None:
        (address,) = struct.unpack_from("<I", data)
        self._reply(op, self.registers.get(address, 0))

    def _write_reg(self, op: int, data: bytes) -> None:
        address, value, mask, _ = struct.unpack_from("<IIII", data)
        old = self.registers.get(address, 0)
        self.registers[address] = (old & ~mask) | (value & mask)
        if address == SPI_CMD_REG and value & SPI_CMD_USR:
            command = self.registers.get(SPI_USR2_REG, 0) & 0xFF
            self.registers[SPI_W0_REG] = FLASH_ID if command == 0x9F else 0
            self.registers[SPI_CMD_REG] = 0  # the command is done at once
        self._reply(op)

    def _get_security_info(self, op: int, data: bytes) -> None:
        self._reply(op, status=b"\x01\x05")  # the ESP32 ROM does not know it

    def _simple(self, op: int, data: bytes) -> None:
        self._reply(op)

    _spi_attach = _spi_set_params = _change_baudrate = _mem_begin = _mem_data = _simple

    def _mem_end(self, op: int, data: bytes) -> None:
        self._reply(op)
        entry = struct.unpack_from("<II", data)[1] if len(data) >= 8 else 0
        if entry:  # the stub runs: it says hello, then answers in its own format
            os.write(self.master, slip(b"OHAI"))
            self.stub = True

    def _flash_begin(self, op: int, data: bytes) -> None:
        size, blocks, block_size, offset = struct.unpack_from("<IIII", data)
        self._writing = {"offset": offset, "size": size, "block": block_size, "written": 0}
        self._reply(op)

    _flash_defl_begin = _flash_begin

    def _flash_data(self, op: int, data: bytes) -> None:
        size, sequence, _, _ = struct.unpack_from("<IIII", data)
        writing = self._writing
        start = writing["offset"] + sequence * writing["block"]
        self.flash[start : start + size] = data[16 : 16 + size]
        self._reply(op)

    def _flash_defl_data(self, op: int, data: bytes) -> None:
        size, _, _, _ = struct.unpack_from("<IIII", data)
        writing = self._writing
        inflater = writing.setdefault("inflater", zlib.decompressobj())
        plain = inflater.decompress(data[16 : 16 + size])
        start = writing["offset"] + writing["written"]
        self.flash[start : start + len(plain)] = plain
        writing["written"] += len(plain)
        self._reply(op)

    def _flash_end(self, op: int, data: bytes) -> None:
        self._reply(op)

    _flash_defl_end = _flash_end

    def _spi_flash_md5(self, op: int, data: bytes) -> None:
        address, size, _, _ = struct.unpack_from("<IIII", data)
        digest = hashlib.md5(self.flash[address : address + size]).digest()
        self._reply(op, data=digest if self.stub else digest.hex().encode())

    def _erase_flash(self, op: int, data: bytes) -> None:
        self.flash[:] = b"\xff" * FLASH_SIZE
        self._reply(op)
