"""Durations and sizes: every accepted spelling, and what is refused."""

import pytest

from gateway.config.units import parse_duration, parse_size


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("250ms", 0.25),
        ("30s", 30.0),
        ("5m", 300.0),
        ("2h", 7200.0),
        ("7d", 604800.0),
        ("1.5s", 1.5),
        ("1h30m", 5400.0),
        ("1m 30s", 90.0),
        ("30S", 30.0),
        ("20MS", 0.02),
        ("0s", 0.0),
        ("12", 12.0),
        (12, 12.0),
        (0.5, 0.5),
    ],
)
def test_durations_become_float_seconds(text, seconds):
    result = parse_duration(text)
    assert result == pytest.approx(seconds)
    assert isinstance(result, float)


@pytest.mark.parametrize(
    "text", ["", "fast", "10 fortnights", "5mss", "-1s", -3, True, "s", "1e999", "nan", [1]]
)
def test_bad_durations_are_refused(text):
    with pytest.raises(ValueError, match="a duration like"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("512B", 512),
        ("64KB", 64 * 1024),
        ("64MB", 64 * 1024**2),
        ("1GB", 1024**3),
        ("64mb", 64 * 1024**2),
        ("1.5KB", 1536),
        ("2MiB", 2 * 1024**2),
        ("4096", 4096),
        ("1 kb", 1024),
        (4096, 4096),
        (4096.0, 4096),
    ],
)
def test_sizes_become_int_bytes_1024_based(text, size):
    result = parse_size(text)
    assert result == size
    assert isinstance(result, int)


@pytest.mark.parametrize("text", ["", "big", "64 megs", "1.5", 1.5, -1, False, "64XB", {}])
def test_bad_sizes_are_refused(text):
    with pytest.raises(ValueError, match="a size like"):
        parse_size(text)
