"""The `gateway` command: run, check, presets, buffer, demo.

Exit codes: 0 success; 1 runtime failure; 2 invalid configuration or usage; 3 a question
answered "no" (`gateway buffer purge`), nothing changed.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import signal
import sys
import time
from importlib import resources
from typing import Any

from gateway import __version__
from gateway.config import ConfigError, check_file, load, loads, presets

EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_INVALID = 2
EXIT_DECLINED = 3
GC_THRESHOLD = 50_000  # container allocations between cyclic collections (default 700)

log = logging.getLogger("gateway.cli")


class JsonLogFormatter(logging.Formatter):
    """One JSON object per log line, for journald and log shippers."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": round(record.created, 6),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def setup_logging(level: str, log_format: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonLogFormatter())
    else:
        handler.setFormatter(
            logging.Formatter(
                "%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S"
            )
        )
    logging.basicConfig(level=getattr(logging, level.upper()), handlers=[handler], force=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gateway", description="Edge gateway for serial IoT devices."
    )
    parser.add_argument("--version", action="version", version=f"gateway {__version__}")
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    parser.add_argument("--log-format", default="text", choices=["text", "json"])
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the gateway")
    run.add_argument(
        "-c", "--config", default="gateway.toml", help="config file (default gateway.toml)"
    )

    check = commands.add_parser("check", help="validate a config file; exit 0 valid, 2 invalid")
    check.add_argument("-c", "--config", default="gateway.toml")

    listing = commands.add_parser("presets", help="list built-in presets, or print one as TOML")
    listing.add_argument("name", nargs="?")

    _add_buffer_parser(commands)

    demo = commands.add_parser(
        "demo", help="simulated devices on ptys through the real serial path"
    )
    demo.add_argument(
        "--seconds", type=float, default=0, help="stop after this long (0: until Ctrl-C)"
    )
    demo.add_argument("--listen", help="API/WebSocket listener (default from the demo config)")
    demo.add_argument("--mqtt", help="broker URL (default mqtt://127.0.0.1:1883)")
    return parser


def main(argv: list[str] | None = None) -> int:
    arguments = build_parser().parse_args(argv)
    setup_logging(arguments.log_level, arguments.log_format)
    handlers = {
        "run": command_run,
        "check": command_check,
        "presets": command_presets,
        "buffer": command_buffer,
        "demo": command_demo,
    }
    try:
        return handlers[arguments.command](arguments)
    except KeyboardInterrupt:
        return EXIT_OK


def command_check(arguments: argparse.Namespace) -> int:
    errors = check_file(arguments.config)
    for error in errors:
        print(error)
    if errors:
        print(f"{arguments.config}: {len(errors)} error(s)", file=sys.stderr)
        return EXIT_INVALID
    print(f"{arguments.config}: valid")
    return EXIT_OK


def command_presets(arguments: argparse.Namespace) -> int:
    if arguments.name is None:
        for preset in presets.available():
            print(f"{preset['name']:16} {preset['description']}")
        return EXIT_OK
    if arguments.name not in presets.BUILTIN_NAMES:
        known = ", ".join(presets.BUILTIN_NAMES)
        print(f"unknown preset {arguments.name!r}; built-in presets: {known}", file=sys.stderr)
        return EXIT_INVALID
    print(presets.builtin_text(arguments.name), end="")
    return EXIT_OK


def command_run(arguments: argparse.Namespace) -> int:
    try:
        config = load(arguments.config)
    except ConfigError as error:
        for line in error.errors:
            print(line, file=sys.stderr)
        if not os.path.exists(arguments.config):
            hint = "start from docs/examples/gateway.toml, or try `gateway demo`"
        else:
            hint = f"`gateway check -c {arguments.config}` lists every problem"
        print(f"hint: {hint}", file=sys.stderr)
        return EXIT_INVALID
    return run_gateway(config)


def demo_config(arguments: argparse.Namespace) -> dict[str, Any]:
    text = resources.files("gateway").joinpath("demo.toml").read_text()
    config = loads(text, source="gateway/demo.toml")
    if arguments.listen:
        config["api"]["listen"] = arguments.listen
    if arguments.mqtt:
        for sink in config["sinks"].values():
            if sink["type"] == "mqtt":
                sink["url"] = arguments.mqtt
    return config


def command_demo(arguments: argparse.Namespace) -> int:
    config = demo_config(arguments)
    listen = config["api"]["listen"]
    udp_targets = [
        target
        for sink in config["sinks"].values()
        if sink["type"] == "udp"
        for target in sink["targets"]
    ]
    mqtt_urls = [sink["url"] for sink in config["sinks"].values() if sink["type"] == "mqtt"]
    print("gateway demo: simulated devices on ptys, read through the real serial path")
    print(f"  WebSocket:  ws://{listen}/ws   (health: http://{listen}/api/v1/health)")
    print(f"  UDP:        {', '.join(udp_targets)}")
    print(f"  MQTT:       {', '.join(mqtt_urls)}  topic gw/{config['gateway']['id']}/#")
    print(
        "  stop with Ctrl-C" if not arguments.seconds else f"  stops after {arguments.seconds:g} s"
    )
    return run_gateway(config, seconds=arguments.seconds, report_every=5.0)


def run_gateway(config: dict[str, Any], seconds: float = 0, report_every: float = 0) -> int:
    try:
        return asyncio.run(_run(config, seconds, report_every))
    except OSError as error:
        log.error("cannot start: %s", error)
        return EXIT_RUNTIME


def _tune_garbage_collector() -> None:
    """Readings are acyclic and freed by reference counting, so the cyclic collector need
    not run every 700 allocations; and what start-up built (modules, config) never becomes
    garbage, so it is frozen out of every scan. ≈ 11 % less CPU per reading on the ingest
    path (bench: 8.7 → 7.7 µs)."""
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, 20, 100)


async def _run(config: dict[str, Any], seconds: float, report_every: float) -> int:
    from gateway.app import Gateway
    from gateway.store.buffer import StoreLocked

    try:
        gateway = Gateway(config)
    except ValueError as error:
        print(error, file=sys.stderr)
        return EXIT_INVALID
    except StoreLocked as error:
        print(f"{error}; stop it, or give this gateway its own gateway.data_dir", file=sys.stderr)
        return EXIT_RUNTIME
    _tune_garbage_collector()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for number in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(number, stop.set)
    helpers = []
    if seconds:
        helpers.append(loop.call_later(seconds, stop.set))
    reporter = asyncio.create_task(_report(gateway, report_every)) if report_every else None
    await gateway.run(stop)
    for handle in helpers:
        handle.cancel()
    if reporter:
        reporter.cancel()
    print(json.dumps(gateway.stats()["totals"]))
    return EXIT_OK


# -- gateway buffer -------------------------------------------------------------------------


def _add_buffer_parser(commands: Any) -> None:
    buffer = commands.add_parser(
        "buffer",
        help="look into or empty the sinks' disk buffers (works while the gateway is stopped)",
        description="Exit codes: 0 done; 1 the buffer cannot be read, or purge while the "
        "gateway runs; 2 invalid config or unknown sink; 3 purge answered no.",
    )
    buffer.add_argument("-c", "--config", default="gateway.toml")
    actions = buffer.add_subparsers(dest="action", required=True)
    stats = actions.add_parser("stats", help="depth, bytes, oldest age and drops per sink")
    stats.add_argument("sink", nargs="?")
    stats.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    inspect = actions.add_parser("inspect", help="print the next readings as JSON lines")
    inspect.add_argument("sink")
    inspect.add_argument("--limit", type=int, default=10, help="how many (default 10)")
    purge = actions.add_parser("purge", help="delete every buffered reading of a sink")
    purge.add_argument("sink")
    purge.add_argument("--yes", action="store_true", help="do not ask")


def command_buffer(arguments: argparse.Namespace) -> int:
    from gateway.store.buffer import DATABASE_NAME, BufferDatabase, StoreError, StoreLocked

    try:
        config = load(arguments.config)
    except ConfigError as error:
        for line in error.errors:
            print(line, file=sys.stderr)
        return EXIT_INVALID
    path = os.path.join(config["gateway"]["data_dir"], DATABASE_NAME)
    configured = list(config["sinks"])
    if not os.path.exists(path):
        if arguments.sink and arguments.sink not in configured:
            return _unknown_sink(arguments.sink, configured, [])
        print(f"no buffer at {path}: nothing is buffered")
        return EXIT_OK
    purging = arguments.action == "purge"
    try:
        # Reading works beside a running gateway (WAL); purging needs the gateway's lock.
        db = BufferDatabase(path, readonly=not purging, lock=purging)
    except StoreLocked as error:
        print(f"{error}; stop the gateway before purging its buffer", file=sys.stderr)
        return EXIT_RUNTIME
    except StoreError as error:
        print(error, file=sys.stderr)
        return EXIT_RUNTIME
    try:
        buffered = db.sinks()
        if arguments.sink and arguments.sink not in configured + buffered:
            return _unknown_sink(arguments.sink, configured, buffered)
        if arguments.action == "stats":
            return _buffer_stats(db, arguments, configured, buffered)
        if arguments.action == "inspect":
            return _buffer_inspect(db, arguments.sink, arguments.limit)
        return _buffer_purge(db, arguments.sink, arguments.yes)
    except StoreError as error:
        print(f"{path}: {error}", file=sys.stderr)
        return EXIT_RUNTIME
    finally:
        db.close()


def _unknown_sink(sink: str, configured: list[str], buffered: list[str]) -> int:
    known = ", ".join(dict.fromkeys(configured + buffered)) or "none"
    print(f"unknown sink {sink!r}; known sinks: {known}", file=sys.stderr)
    return EXIT_INVALID


def _buffer_stats(db: Any, arguments: argparse.Namespace, configured, buffered) -> int:
    names = [arguments.sink] if arguments.sink else list(dict.fromkeys(configured + buffered))
    stats = {name: db.buffer(name).stats() for name in names}
    if arguments.json:
        print(json.dumps(stats))
        return EXIT_OK
    print(f"{'sink':16} {'readings':>10} {'bytes':>10} {'oldest':>8}  drops")
    for name, entry in stats.items():
        drops = " ".join(f"{reason}={count}" for reason, count in entry["drops"].items() if count)
        print(
            f"{name:16} {entry['depth']:>10} {_size(entry['bytes']):>10} "
            f"{_age(entry['oldest_age']):>8}  {drops or '-'}"
        )
    return EXIT_OK


def _buffer_inspect(db: Any, sink: str, limit: int) -> int:
    for _row_id, (reading, _route) in db.buffer(sink).peek(max(0, limit)):
        print(json.dumps(reading))
    return EXIT_OK


def _buffer_purge(db: Any, sink: str, yes: bool) -> int:
    buffer = db.buffer(sink)
    count = buffer.depth
    if not count:
        print(f"{sink}: nothing buffered")
        return EXIT_OK
    if not yes:
        try:
            answer = input(f"purge {count} readings from {sink}? [y/N] ")
        except EOFError:
            answer = ""
        if answer.strip().lower() not in ("y", "yes"):
            print("nothing purged")
            return EXIT_DECLINED
    purged = buffer.purge()
    db.commit()
    print(f"{sink}: purged {purged} readings")
    return EXIT_OK


def _size(count: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if count < 1024 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return str(count)


def _age(seconds: float) -> str:
    if not seconds:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    if seconds < 86400:
        return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"
    return f"{int(seconds // 86400)}d{int(seconds % 86400 // 3600):02d}h"


async def _report(gateway: Any, every: float) -> None:
    """Print a one-line progress summary periodically (demo)."""
    started = time.monotonic()
    while True:
        await asyncio.sleep(every)
        totals = gateway.stats()["totals"]
        delivered = " ".join(f"{name}={count}" for name, count in totals["delivered"].items())
        elapsed = time.monotonic() - started
        print(
            f"[{elapsed:5.0f}s] readings {totals['readings']}  delivered {delivered}",
            flush=True,
        )


if __name__ == "__main__":
    sys.exit(main())
