"""backoff: capped exponential delays with full jitter, deterministic under an injected random."""

from gateway.core.backoff import Backoff


def _fixed(value):
    return lambda: value


def _raises_value_error(function, *args):
    try:
        function(*args)
    except ValueError as error:
        return str(error)
    raise AssertionError(f"expected ValueError for {args!r}")


def test_ceilings_double_from_base_up_to_the_cap():
    backoff = Backoff(0.5, 6.0, random=_fixed(0.999999))
    delays = [backoff.next() for _ in range(7)]
    ceilings = [0.5, 1.0, 2.0, 4.0, 6.0, 6.0, 6.0]
    for delay, ceiling in zip(delays, ceilings):
        assert ceiling * 0.999 <= delay < ceiling, (delay, ceiling)
    assert backoff.attempt == 7


def test_full_jitter_scales_the_whole_interval():
    backoff = Backoff(1.0, 100.0, random=_fixed(0.0))
    assert [backoff.next() for _ in range(3)] == [0.0, 0.0, 0.0]
    halves = Backoff(1.0, 100.0, random=_fixed(0.5))
    assert [halves.next() for _ in range(4)] == [0.5, 1.0, 2.0, 4.0]


def test_each_delay_uses_one_random_draw_in_order():
    draws = [0.25, 0.75, 0.1, 0.9]
    backoff = Backoff(2.0, 60.0, random=lambda: draws.pop(0))
    assert [backoff.next() for _ in range(4)] == [0.5, 3.0, 0.8, 14.4]
    assert draws == []


def test_reset_starts_again_from_base():
    backoff = Backoff(0.5, 60.0, random=_fixed(0.5))
    for _ in range(5):
        backoff.next()
    assert backoff.ceiling() == 16.0
    backoff.reset()
    assert backoff.attempt == 0 and backoff.ceiling() == 0.5
    assert backoff.next() == 0.25


def test_many_attempts_stay_at_the_cap_without_overflow():
    backoff = Backoff(0.001, 30.0, random=_fixed(0.5))
    for _ in range(5000):
        delay = backoff.next()
    assert delay == 15.0 and backoff.ceiling() == 30.0


def test_default_random_stays_within_the_interval():
    backoff = Backoff(0.01, 0.08)
    for _ in range(200):
        ceiling = backoff.ceiling()
        delay = backoff.next()
        assert 0 <= delay <= ceiling <= 0.08


def test_invalid_settings_are_refused_with_the_reason():
    assert "base" in _raises_value_error(Backoff, 0, 1.0)
    assert "cap" in _raises_value_error(Backoff, 2.0, 1.0)
