"""What a persistent-session subscriber process got: readings in arrival order, counted."""

from __future__ import annotations

from typing import Any

from tests.support.broker import ProcessSubscriber
from tests.support.waiting import wait_until


def wait_for_unique(subscriber: ProcessSubscriber, key, count: int, timeout: float = 60) -> None:
    """Poll the subscriber's output (another process: no event) until `count` distinct keys."""

    def unique() -> int:
        return len({key(reading) for reading in subscriber.readings()})

    wait_until(lambda: unique() >= count, timeout, f"{count} distinct readings", interval=0.2)


class Tally:
    """Per device: first arrivals in order, and duplicates checked against their original."""

    def __init__(self, readings: list[dict[str, Any]], key, same=None):
        self.first: dict[str, list[dict[str, Any]]] = {}
        self.duplicates = 0
        self.duplicate_lag: list[int] = []  # how far behind the newest seen a duplicate came
        originals: dict[tuple, dict[str, Any]] = {}
        newest: dict[str, int] = {}
        for reading in readings:
            identity = (reading["device"], key(reading))
            original = originals.get(identity)
            if original is None:
                originals[identity] = reading
                self.first.setdefault(reading["device"], []).append(reading)
                newest[reading["device"]] = key(reading)
                continue
            agrees = (same or _identical)(reading, original)
            assert agrees, f"duplicate differs: {original} then {reading}"
            self.duplicates += 1
            self.duplicate_lag.append(newest[reading["device"]] - key(reading))

    def counters(self, device: str) -> list[int]:
        return [reading["data"]["n"] for reading in self.first.get(device, [])]

    @property
    def unique(self) -> int:
        return sum(len(items) for items in self.first.values())


def _identical(reading: dict[str, Any], original: dict[str, Any]) -> bool:
    return reading == original


def by_seq(reading: dict[str, Any]) -> int:
    return reading["seq"]


def sink_stats(stats: dict[str, Any]) -> dict[str, Any]:
    return stats["sinks"]["mqtt"]
