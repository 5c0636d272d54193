"""`host-tools ports` (sources matched, plug events) and `host-tools udev-rule`.

No USB device is plugged into this machine, so the listings are pyserial-shaped dicts such
as a Pico and an FTDI adapter give; the commands themselves run for real where they can.
"""

from __future__ import annotations

import argparse
import io
import json
import queue
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from host_tools import ports, udev

HOST_TOOLS = str(Path(sys.executable).parent / "host-tools")
PICO = {
    "device": "/dev/ttyACM0",
    "description": "Board in FS mode",
    "vid": "2e8a",
    "pid": "0005",
    "serial_number": "E6614C311B7A1234",
    "manufacturer": "MicroPython",
    "product": "Board in FS mode",
    "by_id": None,
}
FTDI = {
    **PICO,
    "device": "/dev/ttyUSB0",
    "vid": "0403",
    "pid": "6001",
    "serial_number": "A50285BI",
    "manufacturer": "FTDI",
    "product": "FT232R USB UART",
}
UART = {
    **PICO,
    "device": "/dev/ttyAMA0",
    "vid": None,
    "pid": None,
    "serial_number": None,
    "manufacturer": None,
    "product": None,
}


def test_each_port_names_the_source_whose_match_or_port_selects_it():
    found = [dict(port) for port in (PICO, FTDI, UART)]
    sources = [
        {"name": "bench", "match": {"vid": "2E8A", "serial": "e6614c311b7a1234"}},
        {"name": "gps", "port": "/dev/ttyAMA0"},
        {"name": "absent", "match": {"vid": "1a86"}},
    ]
    ports.assign_sources(found, sources)
    assert [port["source"] for port in found] == ["bench", None, "gps"]
    table = ports.format_ports(found)
    assert "  source: bench" in table and "  source: none" in table
    assert "  usb: MicroPython, Board in FS mode" in table


def test_ports_with_a_gateway_config_prints_each_port_with_its_source(tmp_path):
    config = tmp_path / "gateway.toml"
    config.write_text('[[sources]]\nname = "serial0"\nport = "/dev/ttyS0"\nformat = "json"\n')
    done = subprocess.run(
        [HOST_TOOLS, "ports", "--json", "-c", str(config)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    listed = json.loads(done.stdout)
    assert listed == [
        {**port, "source": "serial0" if port["device"] == "/dev/ttyS0" else None}
        for port in ports.list_ports()
    ]


def test_ports_refuses_a_broken_gateway_config_naming_the_key(tmp_path):
    config = tmp_path / "gateway.toml"
    config.write_text('[[sources]]\nname = "x"\nport = "/dev/ttyS0"\nbaud = "fast"\n')
    done = subprocess.run([HOST_TOOLS, "ports", "-c", str(config)], capture_output=True, text=True)
    assert done.returncode == 1
    assert "sources[0].baud" in done.stderr


def test_watch_prints_plug_and_unplug_events_as_the_listing_changes():
    listings: queue.Queue = queue.Queue()
    for listing in ([PICO], [PICO, FTDI], [FTDI], [FTDI]):
        listings.put([dict(port) for port in listing])
    stop = threading.Event()
    out = io.StringIO()

    def lister():
        try:
            return listings.get_nowait()
        except queue.Empty:
            stop.set()
            return [dict(FTDI)]

    ports.watch(lister, out, stop, as_json=True, interval=0.001)
    events = [
        (line["event"], line["device"]) for line in map(json.loads, out.getvalue().split("\n")[:-1])
    ]
    assert events == [
        ("plug", "/dev/ttyACM0"),
        ("plug", "/dev/ttyUSB0"),
        ("unplug", "/dev/ttyACM0"),
    ]


def run_udev(tmp_path, port, name="pico-bench", dry_run=False, listing=(PICO, FTDI)):
    args = argparse.Namespace(port=port, name=name, rules_dir=str(tmp_path), dry_run=dry_run)
    return udev.udev_rule_command(args, lambda: [dict(entry) for entry in listing])


def test_udev_rule_matches_the_ports_usb_ids_and_serial_number(tmp_path, capsys):
    assert run_udev(tmp_path, "/dev/ttyACM0") == 0
    rule = (tmp_path / "99-edge-gateway-pico-bench.rules").read_text()
    line = [text for text in rule.splitlines() if not text.startswith("#")]
    assert line == [
        'SUBSYSTEM=="tty", ATTRS{idVendor}=="2e8a", ATTRS{idProduct}=="0005", '
        'ATTRS{serial}=="E6614C311B7A1234", SYMLINK+="pico-bench", GROUP="dialout", MODE="0660"'
    ]
    assert "udevadm control --reload-rules" in capsys.readouterr().out


def test_udev_rule_dry_run_prints_the_rule_and_writes_nothing(tmp_path, capsys):
    assert run_udev(tmp_path, "/dev/ttyUSB0", name="ftdi", dry_run=True) == 0
    printed = capsys.readouterr().out
    assert f"# would write {tmp_path}/99-edge-gateway-ftdi.rules" in printed
    assert 'ATTRS{serial}=="A50285BI", SYMLINK+="ftdi"' in printed
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "port, name, error",
    [
        ("/dev/ttyAMA0", "gps", "is not a USB device"),
        ("/dev/ttyACM9", "pico", "no serial port /dev/ttyACM9"),
        ("/dev/ttyACM0", "tty-pico", "not tty* or serial*"),
        ("/dev/ttyACM0", "../etc/x", "--name '../etc/x': expected"),
    ],
)
def test_udev_rule_refuses_clearly(tmp_path, capsys, port, name, error):
    assert run_udev(tmp_path, port, name, listing=(PICO, FTDI, UART)) == 1
    assert error in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_udev_rule_refuses_a_usb_device_without_a_serial_number(tmp_path, capsys):
    anonymous = {**PICO, "serial_number": None}
    assert run_udev(tmp_path, "/dev/ttyACM0", listing=(anonymous,)) == 1
    assert "reports no USB serial number" in capsys.readouterr().err


def test_udev_rule_command_on_this_machines_ports(tmp_path):
    done = subprocess.run(
        [
            HOST_TOOLS,
            "udev-rule",
            "--port",
            "/dev/ttyNONE",
            "--name",
            "x",
            "--rules-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 1
    assert "no serial port /dev/ttyNONE" in done.stderr
