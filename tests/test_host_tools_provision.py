"""`host-tools provision` against a MicroPython unix-port "board" (the real REPL on a pty).

The board is tests/support/unix_board.py: the micropython binary's own REPL, raw REPL and
raw-paste mode, reached through mpremote's transport exactly as a USB board would be.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.sources.simulator import VirtualSerialDevice
from tests.support.broker import free_port
from tests.support.udp import UdpCollector
from tests.support.unix_board import UnixBoard
from tests.support.waiting import wait_until

HOST_TOOLS = str(Path(sys.executable).parent / "host-tools")
DEVICE_TOML = """\
device = "prov-1"

[[streams]]
name = "synthetic"
type = "synthetic"
rate = {rate}
"""
APP_FILES = [
    "config.json",
    "config.py",
    "gateway/__init__.py",
    "gateway/core/__init__.py",
    "gateway/core/cobs.py",
    "gateway/core/compat.py",
    "gateway/core/device_protocol.py",
    "link.py",
    "link_board.py",
    "link_host.py",
    "main.py",
    "node.py",
    "node_commands.py",
    "ring.py",
    "sensors.py",
    "sensors_adc.py",
    "sensors_i2c.py",
]


def provision(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [HOST_TOOLS, "provision", *args], capture_output=True, text=True, timeout=timeout
    )


def board_files(root: Path) -> list[str]:
    return sorted(str(path.relative_to(root)) for path in root.rglob("*") if path.is_file())


@pytest.fixture
def board(tmp_path):
    with UnixBoard(tmp_path / "flash") as running:
        yield running


def write_toml(tmp_path: Path, rate: float = 10, name: str = "device.toml") -> str:
    path = tmp_path / name
    path.write_text(DEVICE_TOML.format(rate=rate))
    return str(path)


def gateway_toml(board_path: str, api_port: int, udp_port: int) -> str:
    return f"""
[gateway]
id = "provision-test"
data_dir = "./var"

[api]
listen = "127.0.0.1:{api_port}"

[[sources]]
name = "board"
port = "{board_path}"
framing = "cobs"
preset = "to_udp"

[presets.to_udp]
extends = "basic"
routes = [{{ sink = "udp" }}]

[sinks.udp]
type = "udp"
targets = ["127.0.0.1:{udp_port}"]
"""


def test_provisioned_node_boots_and_reaches_a_gateway_then_reruns_copy_only_changes(
    board, tmp_path, gateway_process
):
    device = write_toml(tmp_path)
    first = provision("--port", board.path, "-c", device)
    assert first.returncode == 0, first.stdout + first.stderr + board.console()[-2000:]
    assert f"{len(APP_FILES)} written, 0 removed, 0 unchanged; board reset" in first.stdout
    assert board_files(board.root) == APP_FILES
    # Every file is byte for byte what the package holds (verified on the board as written).
    assert (board.root / "node.py").read_bytes() == (
        Path(__file__).parent.parent / "firmware" / "sensor_node" / "node.py"
    ).read_bytes()
    assert (board.root / "config.json").read_text() == (
        '{"device":"prov-1","streams":[{"name":"synthetic","rate":10,"type":"synthetic"}]}'
    )

    # The board boots main.py from its flash; a real gateway reads it on the board's port.
    receiver = UdpCollector()
    api_port = free_port()
    gateway = gateway_process(gateway_toml(board.path, api_port, receiver.port))
    try:
        gateway.start(api_port)
        wait_until(lambda: len(receiver.readings) >= 10, 30, "readings from the board")
        assert {reading["device"] for reading in receiver.readings} == {"prov-1"}
        counts = [int(reading["data"]["n"]) for reading in receiver.readings[:10]]
        assert counts == list(range(counts[0], counts[0] + 10))
        gateway.stop()
    finally:
        receiver.close()

    second = provision("--port", board.path, "-c", device)
    assert second.returncode == 0, second.stdout + second.stderr
    assert f"0 written, 0 removed, {len(APP_FILES)} unchanged; board reset" in second.stdout

    changed = provision("--port", board.path, "-c", write_toml(tmp_path, rate=5))
    assert changed.returncode == 0, changed.stdout + changed.stderr
    assert f"1 written, 0 removed, {len(APP_FILES) - 1} unchanged" in changed.stdout
    assert "wrote config.json (changed" in changed.stdout
    assert '"rate":5' in (board.root / "config.json").read_text()


@pytest.mark.parametrize(
    "toml, error",
    [
        (
            DEVICE_TOML.format(rate=-5),
            "streams[0].rate: expected a number 0..1000 (0 pauses), got -5",
        ),
        ("rign = 8\n" + DEVICE_TOML.format(rate=1), "rign: unknown key"),
        (
            DEVICE_TOML.format(rate=1) + "perod = 8\n",
            "streams[0].perod: unknown key for a synthetic stream",
        ),
        (
            DEVICE_TOML.format(rate=1) + '[link]\ntype = "fd"\nfd = 3\n',
            'link.type: expected "stdio" (USB) or "uart" on a board, got "fd"',
        ),
        (
            '[[streams]]\nname = "s"\ntype = "synthetic"\nrate = 1\n',
            "device: expected the device id",
        ),
        ('device = "x"\nrole = "gateway_node"\n', 'role: expected "sensor_node"'),
        ("device = \n", "not valid TOML"),
    ],
)
def test_a_wrong_device_toml_is_refused_with_the_key_path_before_anything_is_written(
    board, tmp_path, toml, error
):
    path = tmp_path / "bad.toml"
    path.write_text(toml)
    done = provision("--port", board.path, "-c", str(path))
    assert done.returncode == 1
    assert error in done.stderr, done.stderr
    assert "nothing written" in done.stderr
    assert board_files(board.root) == []
    assert "raw REPL" not in board.console()  # the board was never even asked


def test_dry_run_lists_what_would_change_and_writes_nothing(board, tmp_path):
    done = provision("--port", board.path, "-c", write_toml(tmp_path), "--dry-run")
    assert done.returncode == 0, done.stdout + done.stderr
    would = [line.split()[2] for line in done.stdout.splitlines() if "would write" in line]
    assert sorted(would) == APP_FILES
    assert f"dry run: {len(APP_FILES)} file(s) would change, nothing written" in done.stdout
    assert board_files(board.root) == []


def test_compiled_modules_replace_their_sources_and_back(board, tmp_path):
    device = write_toml(tmp_path)
    compiled = provision("--port", board.path, "-c", device, "--mpy")
    assert compiled.returncode == 0, compiled.stdout + compiled.stderr
    files = board_files(board.root)
    assert "node.mpy" in files and "gateway/core/device_protocol.mpy" in files
    assert "main.py" in files  # the boot script stays source
    assert not [name for name in files if name.endswith(".py") and name != "main.py"]
    # The node runs from the .mpy files: its HELLO comes out of the board's port.
    wait_until(lambda: b'"device":"prov-1"' in board.console().encode(), 20, "a HELLO")
    back = provision("--port", board.path, "-c", device)
    assert back.returncode == 0, back.stdout + back.stderr
    assert board_files(board.root) == APP_FILES
    assert "removed node.mpy" in back.stdout


def test_a_fleet_inventory_provisions_each_board_with_a_summary(tmp_path):
    write_toml(tmp_path, name="node.toml")
    with UnixBoard(tmp_path / "a") as first, UnixBoard(tmp_path / "b") as second:
        inventory = tmp_path / "fleet.csv"
        inventory.write_text(
            "port,config,device_id\n"
            f"{first.path},node.toml,bench-a\n"
            f"{second.path},node.toml,bench-b\n"
        )
        done = provision("--inventory", str(inventory))
        assert done.returncode == 0, done.stdout + done.stderr
        table = done.stdout[done.stdout.index("PORT") :].splitlines()
        assert table[0].split() == ["PORT", "DEVICE", "WRITTEN", "REMOVED", "UNCHANGED", "RESULT"]
        written = str(len(APP_FILES))
        assert table[1].split() == [first.path, "bench-a", written, "0", "0", "ok"]
        assert table[2].split() == [second.path, "bench-b", written, "0", "0", "ok"]
        assert '"device":"bench-b"' in (tmp_path / "b" / "config.json").read_text()


def test_no_board_on_the_port_fails_clearly(tmp_path):
    done = provision("--port", str(tmp_path / "ttyNONE"), "-c", write_toml(tmp_path))
    assert done.returncode == 1
    assert f"cannot open {tmp_path / 'ttyNONE'}" in done.stderr


GATEWAY_NODE_TOML = """
[gateway]
id = "board-gw"

[[sources]]
name = "uart0"
port = "{sensor}"
format = "json"
stream = "env"
preset = "plain"

[presets.plain]
extends = "basic"

[sinks.mqtt]
type = "mqtt"
url = "mqtt://127.0.0.1:{broker_port}"
username = "node"
password = "{password}"
"""


def test_a_gateway_node_is_provisioned_with_its_dependencies_and_publishes(tmp_path, broker, board):
    import paho.mqtt.client as paho

    password = "s3cret-mqtt-password"
    with VirtualSerialDevice() as sensor:
        config = tmp_path / "gateway.toml"
        config.write_text(
            GATEWAY_NODE_TOML.format(sensor=sensor.path, broker_port=broker.port, password=password)
        )
        dry = provision(
            "--role", "gateway_node", "--port", board.path, "-c", str(config), "--dry-run"
        )
        assert dry.returncode == 0, dry.stdout + dry.stderr
        assert "would write  umqtt/simple.py" in dry.stdout  # the board's MQTT client
        done = provision("--role", "gateway_node", "--port", board.path, "-c", str(config))
        assert done.returncode == 0, done.stdout + done.stderr
        for output in (dry.stdout + dry.stderr, done.stdout + done.stderr):
            assert password not in output  # secrets are written, never echoed
        assert password in (board.root / "config.json").read_text()
        assert (board.root / "umqtt" / "simple.py").is_file()

        got: list[bytes] = []
        client = paho.Client(paho.CallbackAPIVersion.VERSION2)
        client.on_message = lambda _client, _data, message: got.append(message.payload)
        client.connect("127.0.0.1", broker.port)
        client.subscribe("gw/board-gw/uart0/env", qos=1)
        client.loop_start()
        try:

            def a_reading_arrived() -> bool:
                sensor.write(b'{"temperature": 21.5}\n')  # the board's UART gets a line
                return bool(got)

            wait_until(a_reading_arrived, 60, "a reading from the gateway node", interval=0.2)
        finally:
            client.loop_stop()
            client.disconnect()
    reading = json.loads(got[0])
    assert (reading["gateway"], reading["device"], reading["data"]) == (
        "board-gw",
        "uart0",
        {"temperature": 21.5},
    )
    again = provision("--role", "gateway_node", "--port", board.path, "-c", str(config))
    assert "0 written, 0 removed, 39 unchanged" in again.stdout, again.stdout + again.stderr


@pytest.mark.parametrize(
    "name, text, error",
    [
        ("fleet.csv", "port,config,colour\n/dev/x,node.toml,red\n", "row 2.colour: unknown column"),
        ("fleet.csv", "port,config\n,node.toml\n", "row 2.port: expected a value, got nothing"),
        ("fleet.toml", "[[boards]]\nport = 3\n", "boards[0].config: expected a value"),
        ("fleet.toml", 'boards = "all"\n', "boards: expected an array of tables"),
    ],
)
def test_a_wrong_inventory_is_refused_before_any_board_is_touched(tmp_path, name, text, error):
    write_toml(tmp_path, name="node.toml")
    (tmp_path / name).write_text(text)
    done = provision("--inventory", str(tmp_path / name))
    assert done.returncode == 1
    assert error in done.stderr, done.stderr


def test_the_device_toml_takes_values_from_the_environment(board, tmp_path):
    path = tmp_path / "device.toml"
    path.write_text(DEVICE_TOML.format(rate=1).replace('"prov-1"', '"${NODE_ID}"'))
    done = subprocess.run(
        [HOST_TOOLS, "provision", "--port", board.path, "-c", str(path), "--no-reset"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "NODE_ID": "from-env-7"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert '"device":"from-env-7"' in (board.root / "config.json").read_text()
    assert "left in the REPL" in done.stdout
    missing = provision("--port", board.path, "-c", str(path))
    assert missing.returncode == 1
    assert "NODE_ID" in missing.stderr


def test_a_port_without_a_micropython_repl_fails_clearly(tmp_path):
    with VirtualSerialDevice() as silent:  # a port nothing answers on
        done = provision("--port", silent.path, "-c", write_toml(tmp_path))
    assert done.returncode == 1
    assert "no MicroPython REPL answered" in done.stderr
