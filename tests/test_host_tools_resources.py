"""Firmware and core as package data (host_tools.resources), and a child that dies is reported."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from host_tools import resources, simulate

REPO = Path(__file__).resolve().parent.parent


def test_the_firmware_apps_and_core_are_found_as_packages():
    assert resources.firmware_dir("sensor_node") == REPO / "firmware" / "sensor_node"
    assert resources.firmware_dir("sensor_node") == simulate.FIRMWARE_DIR
    assert resources.import_root() == REPO
    assert (resources.core_dir() / "protocol.py").is_file()


def test_a_board_gets_only_the_core_modules_its_app_imports():
    files = resources.core_files("sensor_node")
    assert sorted(files) == [
        "gateway/__init__.py",
        "gateway/core/__init__.py",
        "gateway/core/cobs.py",
        "gateway/core/compat.py",
        "gateway/core/device_protocol.py",
    ]
    assert all(path.is_file() for path in files.values())


def test_an_unknown_app_is_refused():
    with pytest.raises(resources.ResourceMissing, match="unknown firmware app 'sensor'"):
        resources.firmware_dir("sensor")


def test_simulate_says_when_its_node_dies_and_exits_non_zero(tmp_path):
    # The firmware folder of a broken installation: main.py is there, and crashes at once.
    (tmp_path / "main.py").write_text("raise SystemExit(3)\n")
    script = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        from host_tools import cli, simulate
        simulate.FIRMWARE_DIR = Path({str(tmp_path)!r})
        sys.exit(cli.main(["simulate"]))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1
    assert "node sim-node-1 exited with code 3" in done.stderr
