"""Ctrl-C and SIGTERM for the host-tools commands that run until told to stop."""

from __future__ import annotations

import contextlib
import signal
from typing import Callable, Iterator

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def on_stop_signals(callback: Callable[[], None]) -> Iterator[None]:
    """SIGINT and SIGTERM call callback while the block runs; the handlers before come back
    after it."""
    previous = {sig: signal.signal(sig, lambda *_: callback()) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
