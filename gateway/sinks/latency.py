"""How long readings take from their receipt to a sink's confirmation: a fixed-bucket histogram."""

from __future__ import annotations

import bisect
import time

# Upper bounds in seconds: a LAN send takes a millisecond, an outage drained from disk hours.
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BUCKETS += (60.0, 300.0, 3600.0)


class LatencyHistogram:
    """Observed once per confirmed batch, with the age of its oldest reading (its `ts` is
    when the gateway received it): cheap enough for every batch, and the worst of each."""

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)  # the last one: above every bound
        self.sum = 0.0
        self.count = 0

    def observe_since(self, received: float | None) -> None:
        if received is None:
            return
        seconds = max(0.0, time.time() - received)
        self.counts[bisect.bisect_left(BUCKETS, seconds)] += 1
        self.sum += seconds
        self.count += 1

    def cumulative(self) -> list[tuple[str, int]]:
        """(upper bound, observations at or below it), the Prometheus way, "+Inf" last."""
        total = 0
        buckets = []
        for bound, count in zip((*BUCKETS, float("inf")), self.counts):
            total += count
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), total))
        return buckets
