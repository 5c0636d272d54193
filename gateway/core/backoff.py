"""Retry delays: exponential growth capped at a maximum, with full jitter."""

import random as _random


def _default_random():
    """A float in [0, 1) from the platform's generator (MicroPython may lack random())."""
    if hasattr(_random, "random"):
        return _random.random()
    return _random.getrandbits(24) / 16777216


class Backoff:
    """Delays for consecutive retries: attempt n waits uniform(0, min(cap, base * 2**n)).

    "Full jitter": spreading retries over the whole interval keeps many gateways that lost
    the same broker from reconnecting in lockstep. The first delay is at most `base`;
    reset() after a success starts again from there. `random` returns a float in [0, 1);
    tests inject a fixed sequence.
    """

    def __init__(self, base=0.5, cap=60.0, random=None):
        if base <= 0:
            raise ValueError(f"backoff base must be greater than 0, got {base!r}")
        if cap < base:
            raise ValueError(f"backoff cap ({cap!r}) must be at least base ({base!r})")
        self.base = base
        self.cap = cap
        self.random = random or _default_random
        self.attempt = 0
        self._ceiling = base

    def ceiling(self):
        """The largest delay the next call to next() can return."""
        return self._ceiling

    def next(self):
        """The delay before the next retry, in seconds; each call widens the interval."""
        ceiling = self._ceiling
        self.attempt += 1
        # Doubling a float and stopping at the cap never overflows, however many attempts.
        if ceiling < self.cap:
            self._ceiling = min(self.cap, ceiling * 2)
        return ceiling * self.random()

    def reset(self):
        self.attempt = 0
        self._ceiling = self.base
