"""Tick arithmetic alone: cron fields and nicknames, intervals, zones, and catch-up windows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import cronsim
import pytest

from jobd import recurrence
from jobd.recurrence import Recurrence, parse_cron, parse_zone


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "fields"),
    [
        ("@daily", "0 0 * * *"),
        ("@HOURLY", "0 * * * *"),
        ("@weekly", "0 0 * * 0"),
        ("@monthly", "0 0 1 * *"),
        ("@yearly", "0 0 1 1 *"),
        ("  */5 9-17 * * mon-fri ", "*/5 9-17 * * mon-fri"),
    ],
)
def test_cron_fields_and_nicknames(text: str, fields: str) -> None:
    assert parse_cron(text) == fields


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("* * * *", "five fields"),
        ("0 0 * * * *", "five fields"),
        ("@reboot", "unknown nickname"),
        ("60 * * * *", "Bad minute"),
        ("0 0 31 2 *", "Bad day-of-month"),
        ("", "five fields"),
    ],
)
def test_bad_cron_expressions_say_why(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_cron(text)


def test_zones_are_iana_names() -> None:
    assert str(parse_zone("Europe/Berlin")) == "Europe/Berlin"
    for bad in ("Mars/Base", "../../etc/passwd", ""):
        with pytest.raises(ValueError, match="unknown time zone"):
            parse_zone(bad)


def test_every_ticks_at_multiples_of_the_interval_since_the_epoch() -> None:
    seven_days = Recurrence(None, 7 * 86400.0)
    # 1970-01-01 was a Thursday: a seven-day interval ticks on Thursdays at 00:00 UTC.
    tick = seven_days.next_after(utc(2026, 1, 2))
    assert tick.weekday() == 3 and tick.time() == datetime.min.time()
    quarter = Recurrence(None, 900.0, "Asia/Kolkata")  # zones do not move an interval
    assert quarter.next_after(utc(2026, 1, 1, 0, 14, 59, 999999)) == utc(2026, 1, 1, 0, 15)
    assert quarter.next_after(utc(2026, 1, 1, 0, 15)) == utc(2026, 1, 1, 0, 30)
    assert quarter.ticks_between(utc(2026, 1, 1), utc(2026, 1, 1, 1), 10) == [
        utc(2026, 1, 1, 0, 15),
        utc(2026, 1, 1, 0, 30),
        utc(2026, 1, 1, 0, 45),
        utc(2026, 1, 1, 1),
    ]
    assert quarter.ticks_between(utc(2026, 1, 1), utc(2026, 1, 1, 1), 2) == [
        utc(2026, 1, 1, 0, 45),
        utc(2026, 1, 1, 1),
    ]
    assert quarter.ticks_between(utc(2026, 1, 1, 1), utc(2026, 1, 1, 1), 5) == []


def test_a_recurrence_is_cron_or_every() -> None:
    for cron, every in (("0 * * * *", 60.0), (None, None)):
        with pytest.raises(ValueError):
            Recurrence(cron, every)
    with pytest.raises(ValueError, match="at least 1s"):
        Recurrence(None, 0.5)
    assert Recurrence("@daily", None, "Europe/Berlin").key == "cron 0 0 * * * Europe/Berlin"
    assert Recurrence(None, 1.5).key == "every 1500000us"
    assert Recurrence(None, 5400.0).describe() == "every 1h30m"


def test_a_long_gap_costs_its_last_ticks_only(monkeypatch: pytest.MonkeyPatch) -> None:
    steps = []

    class CountingCronSim(cronsim.CronSim):
        def __next__(self) -> datetime:
            steps.append(1)
            return super().__next__()

    monkeypatch.setattr(recurrence, "CronSim", CountingCronSim)
    minutely = Recurrence("* * * * *", None, "Europe/Berlin")
    # Ten years of minutes, across twenty clock changes: only the last hundred are walked
    # (and the margin before them that covers a clock change), not five million.
    last = minutely.ticks_between(utc(2016, 1, 1), utc(2026, 10, 25, 2, 30), 100)
    assert last == [utc(2026, 10, 25, 2, 30) - timedelta(minutes=n) for n in range(100)][::-1]
    assert len(steps) < 1000


@pytest.mark.parametrize("limit", [1, 3, 100])
def test_the_last_ticks_across_a_clock_change_are_the_ticks_walked_forward(limit: int) -> None:
    for expression, zone in (
        ("30 2 * * *", "Europe/Berlin"),
        ("0 * * * *", "America/New_York"),
        ("*/20 1-3 * * *", "Europe/Berlin"),
    ):
        recurrence = Recurrence(expression, None, zone)
        for after, until in ((utc(2026, 3, 20), utc(2026, 4, 2)), (utc(2026, 10, 20), utc(2026, 11, 3))):
            forward = []
            tick = recurrence.next_after(after)
            while tick <= until:
                forward.append(tick)
                tick = recurrence.next_after(tick)
            assert recurrence.ticks_between(after, until, limit) == forward[-limit:], (expression, zone)
