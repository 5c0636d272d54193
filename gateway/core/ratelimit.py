"""Token buckets for rate limiting, sans-I/O: the caller passes the time in, seconds as a float."""


class TokenBucket:
    """`rate` tokens a second refill a bucket of `burst`; each request takes one token."""

    def __init__(self, rate, burst, now=0.0):
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be above 0 and burst at least 1")
        self.rate = float(rate)
        self.burst = float(burst)
        self.tokens = float(burst)
        self.stamp = now

    def _refill(self, now):
        # A clock that steps back (a restored VM) must not drain the bucket: only forward
        # time counts.
        if now > self.stamp:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now

    def take(self, now):
        """Take one token: 0.0 when allowed, else the seconds until one is available."""
        self._refill(now)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate

    def full(self, now):
        self._refill(now)
        return self.tokens >= self.burst


class Buckets:
    """One TokenBucket per key (a token name, a client address), at most `max_keys` of them.

    At the bound, buckets that have refilled completely are forgotten first (they carry no
    state a fresh bucket would not); when none has, the oldest key goes, so a flood of new
    addresses cannot grow memory without end.
    """

    def __init__(self, rate, burst, max_keys=4096):
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self._buckets = {}  # key -> (first-seen number, bucket); MicroPython dicts keep no order
        self._seen = 0

    def take(self, key, now):
        """Seconds to wait before `key` may make a request; 0.0 when it may now."""
        entry = self._buckets.get(key)
        if entry is None:
            if len(self._buckets) >= self.max_keys:
                self._evict(now)
            self._seen += 1
            entry = (self._seen, TokenBucket(self.rate, self.burst, now))
            self._buckets[key] = entry
        return entry[1].take(now)

    def _evict(self, now):
        idle = [key for key, (_, bucket) in self._buckets.items() if bucket.full(now)]
        for key in idle:
            del self._buckets[key]
        if not idle:
            oldest = min(self._buckets, key=lambda key: self._buckets[key][0])
            del self._buckets[oldest]

    def __len__(self):
        return len(self._buckets)
