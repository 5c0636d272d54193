"""The last log lines in RAM, readable over the REPL: `import logring; logring.show()`."""

import json

from gateway.core import compat

DEBUG = 10
INFO = 20
WARNING = 30
ERROR = 40
NAMES = {DEBUG: "debug", INFO: "info", WARNING: "warning", ERROR: "error"}

_lines = []
_limit = [32]
_echo = [None]  # a host writes each line to a stream too (on a board stdout may be a UART)
_status = [None]  # the latest "node" status line, kept apart: status comes often
MAX_LINE = 160  # characters of a line kept in the ring (the echo gets all of it)


def configure(limit, echo=None):
    """Keep `limit` lines; echo, a stream (sys.stderr on a host), gets every line too."""
    _limit[0] = max(1, limit)
    _echo[0] = echo
    del _lines[: max(0, len(_lines) - _limit[0])]


def log(level, text):
    line = f"{compat.ticks_ms()} {NAMES.get(level, level)} {text}"
    if _echo[0] is not None:
        _echo[0].write(line)
        _echo[0].write("\n")
    if len(_lines) >= _limit[0]:
        _lines.pop(0)
    _lines.append(line[:MAX_LINE])


def status(what, counters):
    """A status line "<ms> info status <what> <counters as JSON>", echoed in pieces: json.dump
    writes as it goes, so no long string is needed from a fragmented heap. The latest "node"
    line (free heap, restarts: short) is kept whole for show()."""
    head = f"{compat.ticks_ms()} info status {what} "
    if what == "node":
        _status[0] = head + json.dumps(counters)
    echo = _echo[0]
    if echo is None:
        return
    echo.write(head)
    json.dump(counters, echo)
    echo.write("\n")


def lines():
    return list(_lines)


def show():
    for line in _lines:
        print(line)
    if _status[0] is not None:
        print(_status[0])
