"""Durations as written in config and on the command line; the back-off policy."""

import random

import pytest

from jobd.durations import format_duration, parse_duration
from jobd.retry import RetryPolicy


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500ms", 0.5),
        ("30s", 30),
        ("5m", 300),
        ("1h30m", 5400),
        ("7d", 604800),
        ("2.5", 2.5),
        (12, 12),
        (0.25, 0.25),
        ("1m30s", 90),
        ("0s", 0),
    ],
)
def test_parse_duration(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "bad", ["", "5 minutes", "1x", "s", "-1", -3, True, None, [1], "1h-5m", "nan", "inf"]
)
def test_bad_durations_are_refused_with_a_reason(bad: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(bad)


@pytest.mark.parametrize("seconds", [0, 0.5, 1, 59, 60, 90, 3600, 5400, 86400 * 7, 1.25, 0.001])
def test_format_duration_round_trips(seconds: float) -> None:
    assert parse_duration(format_duration(seconds)) == pytest.approx(seconds)


def test_format_duration_is_readable() -> None:
    assert format_duration(5400) == "1h30m"
    assert format_duration(0.5) == "500ms"
    assert format_duration(604800) == "7d"


def test_backoff_is_exponential_and_capped_without_jitter() -> None:
    policy = RetryPolicy(base_delay=1, max_delay=60, jitter=False)
    assert [policy.delay(n) for n in range(1, 9)] == [1, 2, 4, 8, 16, 32, 60, 60]
    assert policy.delay(10_000) == 60


def test_jitter_stays_in_the_upper_half_of_the_delay() -> None:
    policy = RetryPolicy(base_delay=2, max_delay=100, jitter=True)
    rng = random.Random(7)
    delays = [policy.delay(3, rng) for _ in range(500)]
    assert all(4 <= d <= 8 for d in delays)
    assert len({round(d, 6) for d in delays}) > 400  # really spread, not constant
