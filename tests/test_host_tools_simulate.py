"""`host-tools simulate` and `host-tools ports`, run as the real console script."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateway.config import loads
from gateway.core import protocol
from host_tools.cli import format_ports
from host_tools.ports import list_ports
from tests.support.firmware import Peer

HOST_TOOLS = str(Path(sys.executable).parent / "host-tools")


def start(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [HOST_TOOLS, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=False
    )


def read_output(process: subprocess.Popen, done, timeout: float = 10.0) -> str:
    """stdout until done(text) is true; fails with what came (and stderr) at the deadline."""
    text = b""
    deadline = time.monotonic() + timeout
    fd = process.stdout.fileno()
    while not done(text.decode()):
        remaining = deadline - time.monotonic()
        ready, _, _ = select.select([fd], [], [], max(0.0, remaining))
        chunk = os.read(fd, 65536) if ready else b""
        if not chunk:
            process.kill()
            raise AssertionError(f"output so far: {text!r}; stderr: {process.stderr.read()!r}")
        text += chunk
    return text.decode()


def hangs_up(fd: int, timeout: float) -> bool:
    """True once reading fd fails (EIO) or ends, after whatever was still buffered."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            return False
        try:
            if not os.read(fd, 65536):
                return True
        except BlockingIOError:
            continue
        except OSError:
            return True
    return False


def stop(process: subprocess.Popen) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
    try:
        return process.wait(10)
    finally:
        if process.poll() is None:
            process.kill()


@pytest.mark.parametrize(
    ("runtime_flag", "count"), [(["--micropython"], 2), ([], 1)], ids=["micropython", "cpython"]
)
def test_simulate_prints_one_port_per_node_each_speaking_the_protocol(runtime_flag, count):
    process = start(
        "simulate", *runtime_flag, "--count", str(count), "--rate", "20", "--device-prefix", "sim"
    )
    peers = []
    try:
        output = read_output(process, lambda text: text.count("framing") == count)
        paths = output.splitlines()[:count]
        sources = loads(output.split("# gateway.toml", 1)[1])["sources"]  # a valid config
        assert [source["port"] for source in sources] == paths
        assert [source["name"] for source in sources] == [f"sim-{n}" for n in range(1, count + 1)]
        assert {source["framing"] for source in sources} == {"cobs"}
        for index, path in enumerate(paths, start=1):
            peer = Peer(path)
            peers.append(peer)
            hello = peer.handshake()
            assert hello["device"] == f"sim-{index}"
            assert hello["streams"][0]["rate"] == 20.0
            frame = peer.expect(protocol.DATA)
            assert frame.seq == 0 and protocol.parse_data(frame.payload)[0][2][0] == 0

        assert stop(process) == 0
        for peer in peers:
            # Every node held the master end of its pty: only with all of them gone does the
            # gateway's end hang up.
            assert hangs_up(peer.fd, 5.0)
    finally:
        stop(process)
        for peer in peers:
            peer.close()


def test_simulate_rejects_bad_arguments_with_usage_exit_code():
    done = subprocess.run(
        [HOST_TOOLS, "simulate", "--count", "0"], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 2
    assert "--count: expected a whole number >= 1, got '0'" in done.stderr


def test_ports_lists_what_pyserial_finds_as_json():
    done = subprocess.run(
        [HOST_TOOLS, "ports", "--json"], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0
    assert json.loads(done.stdout) == list_ports()


def test_ports_table_aligns_columns_and_marks_missing_ids():
    table = format_ports(
        [
            {
                "device": "/dev/ttyACM0",
                "vid": "2e8a",
                "pid": "0005",
                "serial_number": "E661",
                "description": "Board in FS mode",
                "by_id": "/dev/serial/by-id/usb-Raspberry_Pi_Pico_E661-if00",
            },
            {
                "device": "/dev/ttyAMA0",
                "vid": None,
                "pid": None,
                "serial_number": None,
                "description": "ttyAMA0",
            },
        ]
    )
    lines = table.splitlines()
    assert lines[0].split() == ["DEVICE", "VID:PID", "SERIAL", "DESCRIPTION"]
    assert lines[1].split(None, 3) == ["/dev/ttyACM0", "2e8a:0005", "E661", "Board in FS mode"]
    assert lines[2] == "  by-id: /dev/serial/by-id/usb-Raspberry_Pi_Pico_E661-if00"
    assert lines[3].split() == ["/dev/ttyAMA0", "-", "-", "ttyAMA0"]
    rows = [line for line in lines if not line.startswith(" ")]
    assert len({line.index(line.split()[1]) for line in rows}) == 1  # one column start
