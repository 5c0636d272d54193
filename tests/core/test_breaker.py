"""breaker: closed → open after N failures → half-open probe after the reset time."""

from gateway.core import compat
from gateway.core.breaker import CLOSED, HALF_OPEN, OPEN, Breaker


class Clock:
    """Milliseconds that move only when the test says so (wrapping like ticks_ms)."""

    def __init__(self, start=0):
        self.now = start

    def __call__(self):
        return self.now

    def advance(self, seconds):
        self.now = compat.ticks_add(self.now, int(seconds * 1000))


def _breaker(failures=3, reset_after=10.0, start=0):
    clock = Clock(start)
    changes = []
    breaker = Breaker(failures, reset_after, clock=clock, on_change=lambda a, b: changes.append(b))
    return breaker, clock, changes


def test_opens_after_exactly_n_consecutive_failures():
    breaker, _clock, changes = _breaker(failures=3)
    for _ in range(2):
        breaker.failure()
        assert breaker.state == CLOSED and breaker.allow()
    breaker.failure()
    assert breaker.state == OPEN and not breaker.allow()
    assert breaker.failures == 3 and breaker.opened == 1
    assert changes == [OPEN]


def test_a_success_clears_the_count():
    breaker, _clock, _changes = _breaker(failures=3)
    breaker.failure()
    breaker.failure()
    breaker.success()
    breaker.failure()
    breaker.failure()
    assert breaker.state == CLOSED and breaker.failures == 2


def test_half_open_after_reset_time_lets_one_probe_through():
    breaker, clock, changes = _breaker(failures=1, reset_after=10.0)
    breaker.failure()
    assert breaker.remaining() == 10.0
    clock.advance(9.999)
    assert breaker.state == OPEN and not breaker.allow()
    assert abs(breaker.remaining() - 0.001) < 1e-9
    clock.advance(0.001)
    assert breaker.state == HALF_OPEN and breaker.remaining() == 0.0
    assert breaker.allow()  # the probe
    assert not breaker.allow()  # nobody else while it is out
    assert changes == [OPEN, HALF_OPEN]


def test_probe_success_closes_and_probe_failure_reopens_for_the_full_time():
    breaker, clock, changes = _breaker(failures=2, reset_after=5.0)
    breaker.failure()
    breaker.failure()
    clock.advance(5)
    assert breaker.allow()
    breaker.failure()
    assert breaker.state == OPEN and breaker.opened == 2
    assert breaker.remaining() == 5.0
    clock.advance(5)
    assert breaker.allow()
    breaker.success()
    assert breaker.state == CLOSED and breaker.failures == 0 and breaker.allow()
    assert changes == [OPEN, HALF_OPEN, OPEN, HALF_OPEN, CLOSED]


def test_timing_is_right_across_the_ticks_wrap():
    start = compat.ticks_add(0, -2000)  # two seconds before the counter wraps
    breaker, clock, _changes = _breaker(failures=1, reset_after=3.0, start=start)
    breaker.failure()
    clock.advance(2.5)  # now past the wrap
    assert breaker.state == OPEN
    assert abs(breaker.remaining() - 0.5) < 1e-9
    clock.advance(0.5)
    assert breaker.state == HALF_OPEN


def test_no_threshold_never_opens_but_counts():
    breaker, _clock, changes = _breaker(failures=None)
    for _ in range(100):
        breaker.failure()
    assert breaker.state == CLOSED and breaker.allow() and breaker.failures == 100
    assert changes == []


def test_reset_closes_an_open_breaker():
    breaker, _clock, _changes = _breaker(failures=1)
    breaker.failure()
    breaker.reset()
    assert breaker.state == CLOSED and breaker.allow() and breaker.failures == 0


def test_default_clock_is_ticks_ms():
    breaker = Breaker(1, 0.0)
    breaker.failure()
    assert breaker.state == HALF_OPEN  # zero reset time: probe at once
    assert breaker.allow()
