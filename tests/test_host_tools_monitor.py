"""`host-tools monitor` and `host-tools send` on real ptys: our firmware, raw frames, lines."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.core import protocol
from gateway.sources.simulator import VirtualSerialDevice
from host_tools.simulate import NodeProcess, node_config

HOST_TOOLS = str(Path(sys.executable).parent / "host-tools")


def host_tools(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([HOST_TOOLS, *args], capture_output=True, text=True, timeout=timeout)


def monitor_while_writing(device: VirtualSerialDevice, data: bytes, *args: str) -> tuple:
    """Run monitor on the device's port, write data once it listens; (code, stdout, stderr)."""
    process = subprocess.Popen(
        [HOST_TOOLS, "monitor", "--port", device.path, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    first = process.stderr.readline()  # "monitoring PORT": the port is open (input flushed)
    assert first.startswith("monitoring"), first
    device.write(data)
    out, err = process.communicate(timeout=30)
    return process.returncode, out, first + err


@pytest.fixture
def node(tmp_path):
    running = NodeProcess(node_config("mon-1", 20.0), "cpython", str(tmp_path)).start()
    yield running
    running.stop()


def test_monitor_decodes_the_frames_of_a_running_node_and_answers_it(node):
    done = host_tools("monitor", "--port", node.path, "--json", "--seconds", "1.5")
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in done.stdout.splitlines()]
    hello = next(record for record in records if record.get("type") == "HELLO")
    assert hello["hello"]["device"] == "mon-1"
    data = [record for record in records if record.get("type") == "DATA"]
    readings = [reading for record in data for reading in record["readings"]]
    # Acknowledged as a gateway would, the node streams: 20/s for 1.5 s, in order.
    assert len(readings) >= 15
    assert {reading["stream"] for reading in readings} == {"synthetic"}
    counts = [reading["values"]["n"] for reading in readings]
    assert counts == [float(n) for n in range(len(counts))]
    assert records[-1]["summary"]["bad"] == {}
    assert records[-1]["summary"]["counts"]["DATA"] == len(data)


def test_monitor_counts_bad_frames_by_reason_and_shows_them_in_hex():
    with VirtualSerialDevice() as device:
        good = protocol.encode_frame(protocol.LOG, 0, protocol.log_payload(20, "booted"))
        bad_crc = bytearray(good)
        bad_crc[8] ^= 0x40  # a payload byte (not a COBS code byte): the CRC fails
        data = b"\x00" + good + bytes(bad_crc) + b"\x05\x01\x00" + b"\x02\x01\x00" + good
        code, out, err = monitor_while_writing(device, data, "--passive", "--seconds", "1")
    assert code == 0, err
    lines = out.splitlines()
    assert sum("LOG seq 0" in line and 'text="booted"' in line for line in lines) == 2
    assert any("bad frame (crc:" in line for line in lines)
    assert any("bad frame (cobs:" in line and "05 01 00" in line for line in lines)
    assert any("bad frame (truncated:" in line for line in lines)
    assert "seen: LOG 2; bad: cobs 1, crc 1, truncated 1" in err


def test_monitor_prints_a_line_devices_lines():
    with VirtualSerialDevice() as device:
        data = b'{"t": 21.5}\r\n{"t": 21.6}\nt=1 \xff\n'
        code, out, err = monitor_while_writing(device, data, "--json", "--seconds", "1")
    assert code == 0, err
    records = [json.loads(line) for line in out.splitlines()]
    assert [record["line"] for record in records[:-1]] == [
        '{"t": 21.5}',
        '{"t": 21.6}',
        "t=1 \ufffd",
    ]
    assert records[-1]["summary"] == {"counts": {"lines": 3}, "bad": {"not_utf8": 1}}


def test_send_prints_the_result_of_one_command(node):
    done = host_tools("send", "--port", node.path, "ping")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["pong"] is True
    done = host_tools(
        "send", "--port", node.path, "set_rate", "stream=synthetic", "rate=5", "--json"
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {
        "status": 0,
        "result": {"stream": "synthetic", "rate": 5.0, "saved": True},
    }


@pytest.mark.parametrize(
    "args, status",
    [
        (["no_such_command"], "UNKNOWN_COMMAND"),
        (["set_rate", '{"stream": "nope", "rate": 1}'], "BAD_ARGUMENTS"),
    ],
)
def test_send_exits_1_naming_an_error_status(node, args, status):
    done = host_tools("send", "--port", node.path, *args)
    assert done.returncode == 1
    assert f"the device answered {status}" in done.stderr
    assert "error" in json.loads(done.stdout)


def test_send_refuses_malformed_arguments():
    done = host_tools("send", "--port", "/dev/null", "set_rate", "rate")
    assert done.returncode == 2
    assert "argument 'rate': expected key=value" in done.stderr
