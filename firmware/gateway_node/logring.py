"""The last log lines in RAM, readable over the REPL: `import logring; logring.show()`."""

from gateway.core import compat

DEBUG = 10
INFO = 20
WARNING = 30
ERROR = 40
NAMES = {DEBUG: "debug", INFO: "info", WARNING: "warning", ERROR: "error"}

_lines = []
_limit = [32]
_echo = [None]  # a host prints each line too (on a board stdout may be a UART)
_status = [None]  # the latest status line, kept apart: it is long and comes often
MAX_LINE = 160  # characters of a line kept in the ring (the echo gets all of it)


def configure(limit, echo=None):
    _limit[0] = max(1, limit)
    _echo[0] = echo
    del _lines[: max(0, len(_lines) - _limit[0])]


def log(level, text):
    line = f"{compat.ticks_ms()} {NAMES.get(level, level)} {text}"
    if _echo[0] is not None:
        _echo[0](line)
    if len(_lines) >= _limit[0]:
        _lines.pop(0)
    _lines.append(line[:MAX_LINE])


def status(text):
    """A status line: echoed; the latest "node" one is kept (show() prints it)."""
    line = f"{compat.ticks_ms()} info status {text}"
    if text.startswith("node "):
        _status[0] = line
    if _echo[0] is not None:
        _echo[0](line)


def lines():
    return list(_lines)


def show():
    for line in _lines:
        print(line)
    if _status[0] is not None:
        print(_status[0])
