"""Circuit breaker: stop calling a failing destination, then probe it once in a while."""

from gateway.core import compat

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half_open"


class Breaker:
    """closed → open after `failures` consecutive failures → half-open after `reset_after`.

    Closed: calls go ahead; a success clears the failure count. Open: calls are refused until
    `reset_after` seconds have passed since it opened. Half-open: one call (the probe) goes
    ahead; its success closes the breaker, its failure opens it again for `reset_after`.
    `failures` of None or 0 makes a breaker that never opens (only counts).

    `clock` returns milliseconds as compat.ticks_ms does (wrapping, compared with
    ticks_diff); tests inject their own. `on_change(old, new)` is called on every change of
    state, for logging.
    """

    def __init__(self, failures=5, reset_after=30.0, clock=None, on_change=None):
        if reset_after < 0:
            raise ValueError(f"reset_after must not be negative, got {reset_after!r}")
        self.threshold = failures or 0
        self.reset_after = reset_after
        self.clock = clock or compat.ticks_ms
        self.on_change = on_change
        self.failures = 0  # consecutive, since the last success
        self.opened = 0  # how many times it opened, for stats
        self._state = CLOSED
        self._opened_at = 0
        self._probing = False

    @property
    def state(self):
        """The current state; an open breaker whose time is up reads as half-open."""
        if self._state == OPEN and self._waited_ms() >= self._reset_ms():
            self._change(HALF_OPEN)
        return self._state

    def allow(self):
        """True when a call may go ahead now; in half-open only the one probe may."""
        state = self.state
        if state == CLOSED:
            return True
        if state == HALF_OPEN and not self._probing:
            self._probing = True
            return True
        return False

    def remaining(self):
        """Seconds until an open breaker lets a probe through (0 unless open)."""
        if self.state != OPEN:
            return 0.0
        return max(0, self._reset_ms() - self._waited_ms()) / 1000

    def success(self):
        self.failures = 0
        self._probing = False
        if self._state != CLOSED:
            self._change(CLOSED)

    def failure(self):
        self.failures += 1
        self._probing = False
        state = self.state
        if state == HALF_OPEN or (state == CLOSED and 0 < self.threshold <= self.failures):
            self._open()
        elif state == OPEN:
            self._opened_at = self.clock()  # a call went ahead anyway: wait the full time

    def reset(self):
        """Forget every failure and close (a reconfiguration, for one)."""
        self.success()

    def _open(self):
        self._opened_at = self.clock()
        self.opened += 1
        self._change(OPEN)

    def _reset_ms(self):
        return int(self.reset_after * 1000)

    def _waited_ms(self):
        return compat.ticks_diff(self.clock(), self._opened_at)

    def _change(self, new):
        old = self._state
        self._state = new
        if new != HALF_OPEN:
            self._probing = False
        if self.on_change is not None:
            self.on_change(old, new)
