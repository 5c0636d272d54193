"""ratelimit: a token bucket refills at its rate up to its burst; buckets per key stay bounded."""

from gateway.core.ratelimit import Buckets, TokenBucket


def _raises_value_error(build):
    try:
        build()
    except ValueError:
        return True
    return False


def test_a_full_bucket_allows_its_burst_then_says_how_long_to_wait():
    bucket = TokenBucket(rate=2.0, burst=3, now=100.0)
    assert [bucket.take(100.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(100.0) == 0.5  # one token at 2 per second


def test_tokens_come_back_at_the_rate_never_beyond_the_burst():
    bucket = TokenBucket(rate=10.0, burst=2, now=0.0)
    bucket.take(0.0)
    bucket.take(0.0)
    assert bucket.take(0.05) > 0  # half a token back
    assert bucket.take(0.1) == 0.0
    assert bucket.full(60.0) and bucket.tokens == 2.0


def test_a_clock_stepping_back_refills_nothing_and_drains_nothing():
    bucket = TokenBucket(rate=1.0, burst=1, now=50.0)
    assert bucket.take(50.0) == 0.0
    assert bucket.take(10.0) == 1.0
    assert bucket.take(51.0) == 0.0


def test_invalid_rate_or_burst_is_refused():
    assert _raises_value_error(lambda: TokenBucket(0, 1))
    assert _raises_value_error(lambda: TokenBucket(1.0, 0))


def test_each_key_has_its_own_bucket():
    buckets = Buckets(rate=1.0, burst=2)
    assert [buckets.take("a", 0.0) for _ in range(3)] == [0.0, 0.0, 1.0]
    assert buckets.take("b", 0.0) == 0.0


def test_at_the_bound_refilled_buckets_go_first_then_the_oldest():
    buckets = Buckets(rate=1.0, burst=1, max_keys=2)
    buckets.take("old", 0.0)
    buckets.take("busy", 0.5)
    buckets.take("new", 1.0)  # "old" has refilled by now, "busy" has not
    assert len(buckets) == 2
    assert buckets.take("busy", 1.0) > 0  # still limited: its bucket was kept
    buckets.take("newer", 1.0)  # none refilled: the oldest ("busy") goes
    assert len(buckets) == 2
    assert buckets.take("busy", 1.0) == 0.0
