"""JSON encoding through orjson, with results the process can keep without heap waste."""

from __future__ import annotations

from typing import Any

import orjson


def dumps(value: Any, option: int | None = None) -> bytes:
    """orjson.dumps, copied into an object of its own size.

    orjson writes into a buffer of several KiB and shrinks it in place, so a result that is
    kept (queued for the disk, waiting for an MQTT window, in a client's queue) strands
    about 4 KiB of C heap: 100,000 kept readings of 157 bytes took 393 MB of RSS, copied
    21 MB. The copy costs about 0.1 µs.
    """
    encoded = orjson.dumps(value) if option is None else orjson.dumps(value, option=option)
    return bytes(memoryview(encoded))
