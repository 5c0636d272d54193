"""`host-tools conformance` device suite: passes our firmware, fails devices broken on purpose."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest

from gateway.sources.simulator import VirtualSerialDevice
from host_tools.simulate import node_config
from tests.support.broken_devices import BrokenNode

HOST_TOOLS = str(Path(sys.executable).parent / "host-tools")


def conformance(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [HOST_TOOLS, "conformance", *args], capture_output=True, text=True, timeout=timeout
    )


def junit_cases(path: Path) -> dict[str, ElementTree.Element]:
    root = ElementTree.parse(path).getroot()
    return {case.get("name"): case for case in root.iter("testcase")}


@pytest.mark.parametrize("target", ["--sim", "--micropython"])
def test_our_firmware_passes_every_check(target, tmp_path):
    junit = tmp_path / "device.xml"
    done = conformance(target, "--soak-seconds", "2", "--junit", str(junit))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "11 passed, 0 failed" in done.stdout
    cases = junit_cases(junit)
    assert sorted(cases) == sorted(
        [
            "framing",
            "hello",
            "hello_repeat",
            "data",
            "go_back_n",
            "out_of_order",
            "need_hello",
            "commands",
            "corrupt_input",
            "reboot",
            "soak",
        ]
    )
    assert not [case for case in cases.values() if case.find("failure") is not None]
    soak = cases["soak"].find("system-out").text
    assert soak.endswith("0 missing") and "ACKs lost on purpose" in soak


# kind → (the check that must fail, words its message must hold, whether it shows a frame)
BROKEN = {
    "never_resends": ("go_back_n", "no resend", False),
    "resends_with_new_seq": ("go_back_n", "under a new number", True),
    "ignores_boot_id": ("reboot", "the same boot id 0b0071d0", True),
    "oversize_frames": ("framing", "too_large", True),
    "wrong_request_id": ("commands", "a RESP to request 2 instead", True),
    "no_hello_after_reboot": ("reboot", "a HELLO within 10 s of the reboot RESP", False),
}


@pytest.mark.parametrize("kind", sorted(BROKEN))
def test_a_device_broken_on_purpose_fails_the_check_naming_it(kind, tmp_path):
    check, words, shows_frame = BROKEN[kind]
    config = tmp_path / "node.json"
    with VirtualSerialDevice() as device:
        # The node writes to the master end it is handed; the suite opens the slave end.
        link = {"type": "fd", "fd": device.master}
        config.write_text(json.dumps(node_config(f"broken-{kind}", 20.0, link=link)))
        node = BrokenNode(kind, str(config), device, str(tmp_path / "node.log"))
        try:
            junit = tmp_path / "device.xml"
            only = [] if check == "framing" else ["--only", check]
            done = conformance(
                "--port", device.path, *only, "--soak-seconds", "1", "--junit", str(junit)
            )
        finally:
            node.stop()
    output = done.stdout + done.stderr + (tmp_path / "node.log").read_text()
    assert done.returncode == 1, output
    failure = junit_cases(junit)[check].find("failure")
    assert failure is not None, output
    message = failure.text
    assert message.startswith(f"{check}: expected "), message
    assert words in message, message
    if shows_frame:
        assert "  frame " in message, message
    assert re.search(rf"^{check} +FAIL ", done.stdout, re.M), done.stdout
    others = [name for name, case in junit_cases(junit).items() if name != check]
    assert all(junit_cases(junit)[name].find("failure") is None for name in others), done.stdout


def test_an_unknown_check_name_is_a_usage_error():
    done = conformance("--sim", "--only", "go_back")
    assert done.returncode == 2
    assert "unknown check 'go_back'" in done.stderr and "go_back_n" in done.stderr


def test_no_target_is_a_usage_error():
    done = conformance()
    assert done.returncode == 2
    assert "exactly one of --port, --micropython, --sim" in done.stderr


def test_a_port_that_is_not_there_fails_clearly(tmp_path):
    done = conformance("--port", str(tmp_path / "ttyNONE"), "--junit", str(tmp_path / "x.xml"))
    assert done.returncode == 1
    assert f"cannot open {tmp_path / 'ttyNONE'}" in done.stderr
    assert os.path.exists(tmp_path / "x.xml") is False
