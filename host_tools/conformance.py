"""`host-tools conformance`: the device suite (a port, or our firmware on a pty) and the gateway
suite (a running gateway and its broker); a results table, JUnit XML, exit 1 on any failure."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from typing import Any

from host_tools.report import CheckResult, print_table, write_junit
from host_tools.wire import Channel, WireError

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


def run_device_suite(
    port: str, soak_seconds: float, baud: int = 115200, only: list[str] | None = None
) -> list[CheckResult]:
    from host_tools.conformance_device import DeviceSuite

    with Channel(port, baud) as channel:
        return DeviceSuite(channel, soak_seconds, log=_progress, only=only).run()


def _progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def device_command(args: argparse.Namespace) -> tuple[list[CheckResult], str]:
    if args.port:
        return run_device_suite(args.port, args.soak_seconds, args.baud, args.only), args.port
    from host_tools.simulate import NodeProcess, SimulateError, node_config

    runtime = "micropython" if args.micropython else "cpython"
    with tempfile.TemporaryDirectory(prefix="host-tools-conformance-") as workdir:
        try:
            node = NodeProcess(node_config("conformance-1", 20.0), runtime, workdir).start()
        except SimulateError as error:
            raise WireError(str(error)) from None
        try:
            results = run_device_suite(node.path, args.soak_seconds, only=args.only)
        finally:
            code = node.stop()
        if code not in (0, None):
            raise WireError(f"the {runtime} node exited with code {code}:\n{node.output()[-2000:]}")
    return results, f"{runtime} firmware"


def conformance_command(args: argparse.Namespace) -> int:
    targets = [bool(args.port), args.micropython, args.sim, bool(args.gateway)]
    if sum(targets) != 1:
        print(
            "host-tools conformance: give exactly one of --port, --micropython, --sim "
            "(device suite) or --gateway (gateway suite)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    suite = "gateway" if args.gateway else "device"
    unknown = [name for name in args.only or [] if name not in _check_names(suite)]
    if unknown:
        known = ", ".join(_check_names(suite))
        print(
            f"host-tools conformance: unknown check {unknown[0]!r}; known: {known}", file=sys.stderr
        )
        return EXIT_USAGE
    try:
        if args.gateway:
            from host_tools.conformance_gateway import run_gateway_suite

            if not args.mqtt:
                print("host-tools conformance: --gateway needs --mqtt URL", file=sys.stderr)
                return EXIT_USAGE
            results = run_gateway_suite(
                args.gateway,
                args.mqtt,
                args.token,
                log=_progress,
                seconds=args.seconds,
                client_id=args.client_id,
                topic=args.topic,
                only=args.only,
            )
            target = args.gateway
        else:
            results, target = device_command(args)
    except WireError as error:
        print(f"host-tools conformance: {error}", file=sys.stderr)
        return EXIT_FAILURE
    return report(results, suite, target, args.junit, args.json)


def _check_names(suite: str) -> list[str]:
    if suite == "gateway":
        from host_tools.conformance_gateway import CHECKS

        return list(CHECKS)
    from host_tools.conformance_device import DeviceSuite

    return DeviceSuite.names()


def report(results: list[CheckResult], suite: str, target: str, junit: str, as_json: bool) -> int:
    if as_json:
        print(json.dumps([result.as_dict() for result in results], indent=2))
    else:
        print_table(results, sys.stdout, f"{suite} conformance: {target}")
    path = junit or f"conformance-{suite}.xml"
    write_junit(results, path, suite, target)
    print(f"JUnit XML: {path}", file=sys.stderr)
    return EXIT_OK if all(result.passed for result in results) else EXIT_FAILURE


def add_conformance(commands: Any) -> None:
    parser = commands.add_parser(
        "conformance",
        help="check a device or a gateway against the contracts (table + JUnit XML)",
        description="Device suite (--port, --micropython, --sim): framing, HELLO, DATA order, "
        "go-back-N resends after lost ACKs, OUT_OF_ORDER and NEED_HELLO, every command and "
        "its RESP, corrupt and truncated input, reboot and the boot id, and a soak with zero "
        "loss. Gateway suite (--gateway URL --mqtt URL): topics and the payload envelope, "
        "availability and the will, seq continuity, API health and metrics. Exit 1 when a "
        "check fails.",
    )
    target = parser.add_argument_group("device suite")
    target.add_argument("--port", help="the device's serial port")
    target.add_argument("--baud", type=int, default=115200)
    target.add_argument(
        "--micropython", action="store_true", help="our firmware under the MicroPython unix port"
    )
    target.add_argument("--sim", action="store_true", help="our firmware's CPython twin")
    target.add_argument(
        "--soak-seconds", type=float, default=60.0, help="length of the soak (default 60)"
    )
    gateway = parser.add_argument_group("gateway suite")
    gateway.add_argument("--gateway", metavar="URL", help="the API, e.g. http://127.0.0.1:8080")
    gateway.add_argument("--mqtt", metavar="URL", help="its broker, e.g. mqtt://127.0.0.1:1883")
    gateway.add_argument("--token", help="an API token (when the API asks for one)")
    gateway.add_argument(
        "--seconds", type=float, default=5.0, help="how long to collect readings (default 5)"
    )
    gateway.add_argument(
        "--client-id",
        default="gw-{gateway}",
        help="the gateway's MQTT client id, taken over once to see its will (default gw-{gateway})",
    )
    gateway.add_argument(
        "--topic",
        default="gw/{gateway}/{device}/{stream}",
        help="the topic template readings must be on (default DESIGN's)",
    )
    parser.add_argument(
        "--only", action="append", metavar="CHECK", help="run this check (repeatable); default all"
    )
    parser.add_argument("--junit", metavar="FILE", help="default conformance-SUITE.xml")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.set_defaults(run=conformance_command)
