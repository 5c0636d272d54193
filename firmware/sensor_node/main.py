"""Sensor node entry point: load config.json, open the link, run the node, reboot on request.

On a board this file runs at power-up with no arguments: config.json beside it, USB CDC
(stdio) unless the config names a UART. On a host (MicroPython unix port or CPython):
    micropython main.py --config node.json    (MICROPYPATH=.frozen:<repo root>:<this folder>)
with the link in the config, normally {"type": "fd", "fd": N}: the master end of a pty the
launcher (host-tools simulate, tests/support/firmware.py) passes down. Exit codes on a host:
0 stopped (SIGINT or the REPL escape), 1 crashed, 2 bad arguments, 3 link lost for good.
"""

import gc
import sys

# MicroPython collects only when an allocation fails unless told otherwise: the garbage of
# loading the modules below then lies between the objects they keep, and the heap a full ring
# leaves is in crumbs (at 104k, 12 KB of holes too small for a frame). Collecting every 8 KB
# allocated keeps what stays packed together, here and while the node runs.
GC_THRESHOLD = 8192
if hasattr(gc, "threshold"):  # MicroPython (CPython's gc has no such call)
    gc.threshold(GC_THRESHOLD)

from link import LinkClosed, make_link  # noqa: E402 - after the threshold, on purpose
from node import ConfigError, Node, print_error  # noqa: E402

from gateway.core import compat  # noqa: E402

HOST = sys.platform in ("linux", "darwin", "win32", "cygwin")
EXIT_CODES = {"stopped": 0, "repl": 0, "crashed": 1, "usage": 2, "link_lost": 3}


def parse_args(argv):
    """{"config": path} from ["--config", path]; a board has no arguments at all."""
    options = {"config": "config.json"}
    index = 0
    while index < len(argv):
        if argv[index] == "--config" and index + 1 < len(argv):
            options["config"] = argv[index + 1]
            index += 2
            continue
        raise ValueError(f"unknown argument {argv[index]!r} (usage: main.py [--config FILE])")
    return options


def echo(text):
    print(text, file=sys.stderr)


async def open_link(config):
    link = make_link(config["link"])
    if config["link"]["type"] == "stdio":
        # Ctrl-C still works for this long after boot, before the link disables it.
        await compat.sleep_ms(config["repl_grace_ms"])
    while True:
        try:
            await link.open()
            break
        except OSError:
            if not link.reopens:
                raise
            await compat.sleep_ms(200)  # the tty is not there (yet): a cable not plugged in
    await say_hello_to_the_line(link)
    return link


async def say_hello_to_the_line(link):
    """A lone 0x00 ends whatever partial frame the gateway holds (docs/protocol.md §2)."""
    try:
        await link.write(b"\x00")
    except LinkClosed:
        pass  # the node's reader finds out and acts


def load_config(config_path):
    """(config, errors) from the file. The config module is let go again afterwards (it is
    loaded when a set_config needs it): about 7 KB of heap a small board runs without."""
    import config as node_config

    try:
        return node_config.load(config_path)
    finally:
        release_config()


def fallback_config(config):
    """The defaults to run on when config cannot (config.fallback), config.py let go again:
    a name bound to the module in run() would keep its 7 KB for as long as the node runs."""
    import config as node_config

    try:
        return node_config.fallback(config)
    finally:
        release_config()


def release_config():
    sys.modules.pop("config", None)


async def run(config_path):
    """Boot after boot until the link is lost or the REPL is asked for; returns the outcome."""
    config, errors = load_config(config_path)
    link = await open_link(config)
    fallback = None
    try:
        while True:
            try:
                node = Node(config, link, config_path, echo if HOST else None, errors)
            except ConfigError as error:
                if fallback is not None:
                    raise  # not even the defaults run (a heap too small for their ring)
                config = fallback = fallback_config(config)
                errors = error.errors
                continue
            fallback = None
            outcome = await node.run()
            node = None  # its ring goes before the next boot allocates one
            if outcome != "reboot":
                return outcome
            if not HOST:
                import machine

                machine.reset()
            # On a host a reboot is simulated: a fresh Node (new boot id, seq 0, uptime 0,
            # empty ring) on the same link, with the config read again from its file.
            config, errors = load_config(config_path)
    finally:
        link.close()


def main(argv=None):
    try:
        options = parse_args(sys.argv[1:] if argv is None else argv)
    except ValueError as error:
        echo(str(error))
        return exit_with("usage")
    stop_on_sigint()
    try:
        outcome = compat.run(run(options["config"]))
    except KeyboardInterrupt:
        outcome = "stopped"
    except Exception as error:  # noqa: BLE001 - a board must come back, a host must say why
        print_error(error)
        if not HOST:
            import time

            import machine

            time.sleep(1)
            machine.reset()
        outcome = "crashed"
    if outcome == "repl" and not HOST:
        return None  # leaving main.py starts the REPL
    return exit_with(outcome)


def stop_on_sigint():
    """On CPython, SIGINT stops the node however it was started. A shell starts background
    jobs with SIGINT ignored, CPython then keeps it ignored, and the node would run on after
    host-tools asked it to stop. (The MicroPython unix port always catches SIGINT.)"""
    if sys.implementation.name != "cpython":
        return
    import signal

    signal.signal(signal.SIGINT, signal.default_int_handler)


def exit_with(outcome):
    if HOST:
        if outcome != "stopped":
            echo("sensor node: " + outcome)
        sys.exit(EXIT_CODES[outcome])


if __name__ == "__main__":
    main()
