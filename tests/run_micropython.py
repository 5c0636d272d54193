"""Run every tests/core/test_*.py under the real MicroPython unix port and report the results."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORE_TESTS = ROOT / "tests" / "core"
FILE_TIMEOUT = 120  # seconds for one test file; a hang is a failure, not a stuck run

# Runs inside MicroPython: import one test module, call each test_* function, and report
# on stdout with @@ markers the parent parses (tracebacks go between the markers).
DRIVER = """
import sys
name = sys.argv[-1]
passed = 0
failed = 0
try:
    module = __import__(name)
    for part in name.split(".")[1:]:
        module = getattr(module, part)
    tests = [n for n in sorted(dir(module)) if n.startswith("test_")]
except BaseException as error:
    print("@@FAIL (import)")
    sys.print_exception(error)
    tests = []
    failed = 1
for test in tests:
    function = getattr(module, test)
    if not callable(function):
        continue
    try:
        function()
    except BaseException as error:
        failed += 1
        print("@@FAIL " + test)
        sys.print_exception(error)
        continue
    passed += 1
    print("@@PASS " + test)
print("@@RESULT %d %d" % (passed, failed))
"""


def find_micropython() -> str:
    beside = Path(sys.executable).parent / "micropython"
    if beside.exists():
        return str(beside)
    found = shutil.which("micropython")
    if found:
        return found
    raise SystemExit(f"micropython not found next to {sys.executable} or on PATH")


def run_file(micropython: str, path: Path) -> tuple[int, list[tuple[str, str]]]:
    """(passed, [(test id, traceback)]) for one test file."""
    search = [".frozen", str(ROOT)]
    try:
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    except ValueError:  # a file outside the repository is imported from its own folder
        module = path.stem
        search.insert(1, str(path.parent))
    env = dict(os.environ, MICROPYPATH=os.pathsep.join(search))
    try:
        done = subprocess.run(
            [micropython, "-c", DRIVER, module],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=FILE_TIMEOUT,
        )
    except subprocess.TimeoutExpired:
        return 0, [(module, f"timed out after {FILE_TIMEOUT} s")]
    return parse_output(module, done.stdout, done.stderr, done.returncode)


def parse_output(module: str, stdout: str, stderr: str, code: int):
    """(passed, [(test id, traceback)]) from the driver's @@ markers and the exit code."""
    passed = 0
    failed: list[tuple[str, list[str]]] = []
    trace: list[str] | None = None
    finished = False
    for line in stdout.splitlines():
        if line.startswith("@@"):
            trace = None
        if line.startswith("@@PASS "):
            passed += 1
        elif line.startswith("@@FAIL "):
            trace = []
            failed.append((module + "::" + line[7:], trace))
        elif line.startswith("@@RESULT "):
            finished = True
        elif trace is not None:
            trace.append(line)
    failures = [(test, "\n".join(lines)) for test, lines in failed]
    if not finished or code != 0:
        output = (stdout[-2000:] + stderr[-2000:]).strip()
        failures.append((module, f"micropython exited with {code}:\n{output}"))
    return passed, failures


def main(argv: list[str]) -> int:
    """Run the given test files, or every tests/core/test_*.py when none are given."""
    micropython = find_micropython()
    paths = [Path(arg).resolve() for arg in argv] or sorted(CORE_TESTS.glob("test_*.py"))
    passed = 0
    failures: list[tuple[str, str]] = []
    for path in paths:
        file_passed, file_failures = run_file(micropython, path)
        passed += file_passed
        failures.extend(file_failures)
    for test, trace in failures:
        indented = trace.replace("\n", "\n    ")
        print(f"FAIL {test}\n    {indented}")
    print(f"micropython: {passed} passed, {len(failures)} failed")
    return 1 if failures or passed == 0 else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
