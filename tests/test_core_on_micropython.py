"""The portable core's tests pass under the real MicroPython unix port, not only CPython."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent / "run_micropython.py"
SUMMARY = re.compile(r"^micropython: (\d+) passed, (\d+) failed$", re.MULTILINE)


def run_script(*args: str) -> tuple[int, str, int, int]:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=600
    )
    summary = SUMMARY.search(done.stdout)
    assert summary, done.stdout + done.stderr
    return done.returncode, done.stdout, int(summary.group(1)), int(summary.group(2))


def test_core_tests_pass_on_micropython():
    code, output, passed, failed = run_script()
    assert code == 0, output
    assert passed > 0 and failed == 0, output


def test_harness_reports_failures_and_micropython_only_errors(tmp_path):
    sample = tmp_path / "test_sample.py"
    sample.write_text(
        "import sys\n"
        "def test_passes():\n"
        "    assert sys.implementation.name == 'micropython'\n"
        "def test_fails():\n"
        "    assert 1 == 2, 'one is not two'\n"
        "def test_uses_what_micropython_lacks():\n"
        "    import typing\n"
        "def helper_is_not_a_test():\n"
        "    raise RuntimeError\n"
    )
    code, output, passed, failed = run_script(str(sample))
    assert code != 0
    assert (passed, failed) == (1, 2)
    assert "FAIL test_sample::test_fails" in output and "one is not two" in output
    assert "FAIL test_sample::test_uses_what_micropython_lacks" in output


def test_harness_fails_when_a_module_does_not_import(tmp_path):
    broken = tmp_path / "test_broken.py"
    broken.write_text("from __future__ import annotations\nx: int = (\n")
    code, output, passed, failed = run_script(str(broken))
    assert code != 0 and passed == 0 and failed >= 1, output
