"""Gateway node entry point: load config.json (compiled by host-tools), run until stopped.

On a board this runs at power-up: config.json beside it, UARTs as it names them, a crash
resets the board. On a host (MicroPython unix port, as `host-tools simulate --gateway-node`
runs it):
    micropython main.py --config node.json
with MICROPYPATH=.frozen:<staged modules>. Exit codes on a host: 0 stopped (SIGINT),
1 crashed, 2 bad arguments or config.
"""

import json
import sys

from gateway.core import compat

HOST = sys.platform in ("linux", "darwin")
FORMAT_VERSION = 1


def echo(text):
    print(text, file=sys.stderr)


def parse_args(argv):
    if not argv:
        return "config.json"
    if len(argv) == 2 and argv[0] == "--config":
        return argv[1]
    raise ValueError("usage: main.py [--config FILE]")


def load(path):
    with open(path) as handle:
        config = json.load(handle)
    if config.get("version") != FORMAT_VERSION:
        raise ValueError(
            f"{path}: version {config.get('version')!r}, this firmware reads"
            f" {FORMAT_VERSION} (compile it again with host-tools)"
        )
    return config


def main(argv=None):
    try:
        config = load(parse_args(sys.argv[1:] if argv is None else argv))
    except (OSError, ValueError) as error:
        echo(f"gateway node: {error}")
        return finish(2)
    from gwnode import GatewayNode

    node = None
    try:
        node = GatewayNode(config, sys.stderr if HOST else None)
        compat.run(node.run())
    except KeyboardInterrupt:
        if node is not None:
            node.close()
        return finish(0)
    except Exception as error:  # noqa: BLE001 - a board must come back, a host must say why
        sys.print_exception(error)
        if not HOST:
            import time

            import machine

            time.sleep(1)
            machine.reset()
        return finish(1)
    return finish(0)


def finish(code):
    if HOST:
        sys.exit(code)


if __name__ == "__main__":
    main()
