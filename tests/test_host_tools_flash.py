"""`host-tools flash`: esptool against an ESP32 ROM on a pty; UF2 copies to a drive folder."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from host_tools import uf2
from tests.support.esp_rom import EspRom

HOST_TOOLS = str(Path(sys.executable).parent / "host-tools")
RP2040, RP2350_ARM = 0xE48BFF56, 0xE48BFF59
INFO = "UF2 Bootloader v3.0\nModel: Raspberry Pi RP2\nBoard-ID: RPI-RP2\n"


def flash(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [HOST_TOOLS, "flash", *args], capture_output=True, text=True, timeout=timeout
    )


def esp_image(tmp_path: Path, size: int = 60000) -> tuple[Path, bytes]:
    """An image that compresses (so esptool sends it deflated), with the ESP image magic."""
    data = bytes([0xE9]) + bytes(index % 251 // 50 for index in range(size - 1))
    path = tmp_path / "micropython.bin"
    path.write_bytes(data)
    return path, data


def test_esp32_image_is_written_at_0x1000_and_verified(tmp_path):
    path, data = esp_image(tmp_path)
    with EspRom() as rom:
        done = flash(str(path), "--port", rom.path, "--connect-mode", "no-reset", "--erase")
        assert done.returncode == 0, done.stdout + done.stderr
        assert rom.flash[0x1000 : 0x1000 + len(data)] == data
        assert rom.flash[:0x1000] == b"\xff" * 0x1000
        commands = rom.commands
    assert f"wrote and verified {len(data)} bytes at 0x1000 on the ESP32" in done.stdout
    assert "flash erased first" in done.stdout
    # Detected, stub loaded, erased, written compressed, then checked by the flash's MD5.
    for step in ("SYNC", "MEM_END", "ERASE_FLASH", "FLASH_DEFL_DATA", "SPI_FLASH_MD5"):
        assert step in commands
    assert commands.index("ERASE_FLASH") < commands.index("FLASH_DEFL_BEGIN")


def test_esp_address_and_chip_are_honoured_and_a_wrong_chip_refused(tmp_path):
    path, data = esp_image(tmp_path, 5000)
    with EspRom() as rom:
        done = flash(
            str(path), "--port", rom.path, "--connect-mode", "no-reset", "--address", "0x10000"
        )
        assert done.returncode == 0, done.stderr
        assert rom.flash[0x10000 : 0x10000 + len(data)] == data
        wrong = flash(
            str(path), "--port", rom.path, "--connect-mode", "no-reset", "--chip", "esp8266"
        )
    assert wrong.returncode == 1
    assert "has an ESP32, not an esp8266" in wrong.stderr


def test_esp_dry_run_says_what_it_would_do_and_sends_nothing(tmp_path):
    path, data = esp_image(tmp_path, 1000)
    with EspRom() as rom:
        done = flash(str(path), "--port", rom.path, "--dry-run", "--erase")
        assert rom.commands == []
    assert done.returncode == 0
    assert f"would connect to {rom.path}" in done.stdout
    assert (
        "erase the flash, write 1000 bytes at the chip's image address, verify, reset"
        in done.stdout
    )


def test_esp_refuses_clearly_when_no_chip_answers(tmp_path):
    path, _ = esp_image(tmp_path, 1000)
    master, slave = os.openpty()  # a port with nothing in download mode behind it
    try:
        done = flash(str(path), "--port", os.ttyname(slave), "--connect-mode", "no-reset")
    finally:
        os.close(master)
        os.close(slave)
    assert done.returncode == 1
    assert "no ESP chip answered on" in done.stderr
    assert "hint: hold BOOT" in done.stderr


def test_an_esp_image_needs_a_port(tmp_path):
    path, _ = esp_image(tmp_path, 100)
    done = flash(str(path))
    assert done.returncode == 2
    assert "needs --port" in done.stderr


# -- UF2 --------------------------------------------------------------------------------------


def uf2_image(tmp_path: Path, family: int = RP2040, blocks: int = 3) -> Path:
    data = b""
    for number in range(blocks):
        payload = bytes([number]) * 256
        head = struct.pack(
            "<8I",
            uf2.MAGIC_START0,
            uf2.MAGIC_START1,
            uf2.FLAG_FAMILY,
            0x10000000 + 256 * number,
            256,
            number,
            blocks,
            family,
        )
        data += head + payload + b"\x00" * (476 - 256) + struct.pack("<I", uf2.MAGIC_END)
    path = tmp_path / "firmware.uf2"
    path.write_bytes(data)
    return path


def bootsel_drive(tmp_path: Path, label: str = "RPI-RP2") -> Path:
    drive = tmp_path / "media" / label
    drive.mkdir(parents=True)
    (drive / "INFO_UF2.TXT").write_text(INFO.replace("RPI-RP2", label))
    (drive / "INDEX.HTM").write_text("<html></html>")
    return drive


def test_uf2_is_copied_to_the_drive_found_by_its_label(tmp_path):
    image = uf2_image(tmp_path)
    drive = bootsel_drive(tmp_path)
    done = flash(str(image), "--search", str(tmp_path / "media"), "--no-wait")
    assert done.returncode == 0, done.stderr
    assert (drive / "firmware.uf2").read_bytes() == image.read_bytes()
    assert f"copied firmware.uf2 (1536 bytes, RP2040) to {drive}/firmware.uf2" in done.stdout


def test_uf2_dry_run_copies_nothing(tmp_path):
    image = uf2_image(tmp_path)
    drive = bootsel_drive(tmp_path)
    done = flash(str(image), "--drive", str(drive), "--dry-run")
    assert done.returncode == 0, done.stderr
    assert (
        "would copy firmware.uf2 (1536 bytes, 3 UF2 blocks, RP2040) to the RPI-RP2 drive"
        in done.stdout
    )
    assert not (drive / "firmware.uf2").exists()


@pytest.mark.parametrize(
    "setup, error",
    [
        ("no drive", "no RPI-RP2 or RP2350 drive is mounted: hold BOOTSEL"),
        ("rp2350 drive", "is for RP2040, but the drive at"),
        ("not uf2", "not a UF2 file: 1000 bytes is not a multiple of 512"),
        ("two drives", "2 BOOTSEL drives mounted"),
    ],
)
def test_uf2_refuses_clearly(tmp_path, setup, error):
    image = uf2_image(tmp_path)
    (tmp_path / "media").mkdir()
    if setup == "rp2350 drive":
        bootsel_drive(tmp_path, "RP2350")
    if setup == "two drives":
        bootsel_drive(tmp_path)
        bootsel_drive(tmp_path, "RP2350")
        image = uf2_image(tmp_path, family=0xE48BFF57)  # "absolute": either chip takes it
    if setup == "not uf2":
        bootsel_drive(tmp_path)
        image.write_bytes(b"\x00" * 1000)
    done = flash(str(image), "--search", str(tmp_path / "media"), "--no-wait")
    assert done.returncode == 1
    assert error in done.stderr


def test_uf2_copy_waits_for_the_board_and_says_when_it_does_not_come_back(tmp_path):
    image = uf2_image(tmp_path, family=RP2350_ARM)
    drive = bootsel_drive(tmp_path, "RP2350")
    done = flash(str(image), "--drive", str(drive), "--wait", "0.5")
    assert done.returncode == 1
    assert (drive / "firmware.uf2").exists()
    assert "did not come back as a serial port within 0.5 s" in done.stderr


def test_waiting_for_the_port_takes_the_new_raspberry_pi_port():
    listings = iter(
        [
            [{"device": "/dev/ttyS0", "vid": None}],
            [{"device": "/dev/ttyS0", "vid": None}, {"device": "/dev/ttyUSB0", "vid": "0403"}],
            [{"device": "/dev/ttyS0", "vid": None}, {"device": "/dev/ttyACM0", "vid": "2e8a"}],
        ]
    )
    port = uf2.wait_for_port(lambda: next(listings), [{"device": "/dev/ttyS0"}], 5, 0.001)
    assert port == {"device": "/dev/ttyACM0", "vid": "2e8a"}
