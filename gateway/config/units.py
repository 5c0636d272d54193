"""Parse human-friendly durations ("250ms", "1h30m") into seconds and sizes ("64MB") into bytes."""

from __future__ import annotations

import re

DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}

# Sizes are 1024-based whatever the spelling: "64MB" and "64MiB" are the same 67108864 bytes,
# because buffers and files are sized against memory and disks, not marketing gigabytes.
SIZE_UNITS = {
    "b": 1,
    "k": 1024,
    "kb": 1024,
    "kib": 1024,
    "m": 1024**2,
    "mb": 1024**2,
    "mib": 1024**2,
    "g": 1024**3,
    "gb": 1024**3,
    "gib": 1024**3,
    "t": 1024**4,
    "tb": 1024**4,
    "tib": 1024**4,
}

DURATION_EXPECTED = 'a duration like "250ms", "30s", "5m", "2h", "7d" or a number of seconds'
SIZE_EXPECTED = 'a size like "512B", "64KB", "64MB", "1GB" or a number of bytes'

_DURATION_PART = re.compile(r"\s*(\d+(?:\.\d+)?|\.\d+)\s*(ms|s|m|h|d)", re.IGNORECASE)
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?|\.\d+)\s*([a-z]*)\s*", re.IGNORECASE)


def _is_number(value: object) -> bool:
    # bool is an int subclass, but `true` is never meant as a quantity.
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def parse_duration(value: object) -> float:
    """Return seconds as a float; raise ValueError for anything that is not a duration.

    Accepts a non-negative number (seconds) or a string of one or more number+unit parts
    ("250ms", "1h30m", "1.5s"); units are ms, s, m, h, d in any letter case.
    """
    if _is_number(value):
        seconds = float(value)
    elif isinstance(value, str):
        seconds = _parse_duration_text(value)
    else:
        raise ValueError(DURATION_EXPECTED)
    if seconds < 0 or seconds != seconds or seconds == float("inf"):
        raise ValueError(DURATION_EXPECTED)
    return seconds


def _parse_duration_text(text: str) -> float:
    stripped = text.strip()
    if not stripped:
        raise ValueError(DURATION_EXPECTED)
    try:
        return float(stripped)
    except ValueError:
        pass
    total = 0.0
    position = 0
    while position < len(text):
        if text[position:].strip() == "":
            break
        match = _DURATION_PART.match(text, position)
        if match is None:
            raise ValueError(DURATION_EXPECTED)
        total += float(match.group(1)) * DURATION_UNITS[match.group(2).lower()]
        position = match.end()
    return total


def parse_size(value: object) -> int:
    """Return bytes as an int; raise ValueError for anything that is not a size.

    Accepts a non-negative integer (bytes) or a string like "512B", "64KB", "1.5MB", "1GiB";
    units are case-insensitive and all 1024-based.
    """
    if _is_number(value):
        if isinstance(value, float) and not value.is_integer():
            raise ValueError(SIZE_EXPECTED)
        size = int(value)
    elif isinstance(value, str):
        size = _parse_size_text(value)
    else:
        raise ValueError(SIZE_EXPECTED)
    if size < 0:
        raise ValueError(SIZE_EXPECTED)
    return size


def _parse_size_text(text: str) -> int:
    match = _SIZE.fullmatch(text)
    if match is None:
        raise ValueError(SIZE_EXPECTED)
    number, unit = match.groups()
    multiplier = SIZE_UNITS.get(unit.lower() or "b")
    if multiplier is None:
        raise ValueError(SIZE_EXPECTED)
    count = float(number) * multiplier
    if multiplier == 1 and not count.is_integer():
        raise ValueError(SIZE_EXPECTED)  # there is no half a byte
    return int(round(count))
