"""When a schedule ticks: a cron expression read in a time zone, or a fixed interval.

Pure arithmetic on aware datetimes; every tick it returns is in UTC.

Cron follows Debian cron's rules across clock changes (cronsim implements them): an
expression whose minute and hour fields are fixed runs a local time that a change skips
once, at the first instant after the change, and a local time that happens twice once,
at its first occurrence; one whose minute or hour field starts with `*` (`0 * * * *`,
`*/5 2 * * *`) follows real time. `every` ticks at whole multiples of its interval since
the Unix epoch and ignores zones.
"""

from __future__ import annotations

import collections
import zoneinfo
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from cronsim import CronSim, CronSimError

from jobd.durations import format_duration

NICKNAMES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
MIN_EVERY = 1.0  # seconds: a finer schedule is a job for a loop, not a scheduler
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
# Walking back from the end of a long gap (see `Recurrence.ticks_between`) may land up to
# one clock change away from where walking forward would; start this much earlier.
_CLOCK_CHANGE_MARGIN = timedelta(hours=3)


def parse_cron(text: str) -> str:
    """The five fields `text` stands for (a nickname such as @daily is expanded);
    ValueError saying what is wrong otherwise."""
    expression = NICKNAMES.get(text.strip().lower(), text.strip())
    if expression.startswith("@"):
        raise ValueError(f"unknown nickname {text!r} (known: {', '.join(NICKNAMES)})")
    if len(expression.split()) != 5:
        raise ValueError(
            f"expected five fields (minute hour day-of-month month day-of-week) or a nickname "
            f"such as @daily, got {text!r}"
        )
    try:
        # The next tick after some instant proves the expression can match at all.
        next(iter(CronSim(expression, _EPOCH)))
    except CronSimError as error:
        raise ValueError(f"{error} in {text!r}") from None
    except StopIteration:
        raise ValueError(f"{text!r} never matches a date") from None
    return expression


def parse_zone(name: str) -> zoneinfo.ZoneInfo:
    """The IANA time zone `name` ("Europe/Berlin", "UTC"); ValueError if there is none."""
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(f"unknown time zone {name!r} (an IANA name such as 'Europe/Berlin')") from None


@dataclass(frozen=True, slots=True)
class Recurrence:
    """A schedule's ticks: `cron` (as written) in `timezone`, or `every` seconds."""

    cron: str | None
    every: float | None
    timezone: str = "UTC"
    _expression: str = field(init=False, repr=False, compare=False)  # the five fields of `cron`
    _zone: zoneinfo.ZoneInfo = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if (self.cron is None) == (self.every is None):
            raise ValueError("a recurrence has a cron expression or an interval, not both or neither")
        if self.every is not None and self.every < MIN_EVERY:
            raise ValueError(f"every must be at least {MIN_EVERY:g}s")
        object.__setattr__(self, "_zone", parse_zone(self.timezone))
        object.__setattr__(self, "_expression", "" if self.cron is None else parse_cron(self.cron))

    @property
    def key(self) -> str:
        """What decides the ticks, as text: when a schedule's key changes, its earlier
        ticks are no longer its own (the store starts counting again)."""
        if self.cron is not None:
            return f"cron {self._expression} {self.timezone}"
        return f"every {self._step}us"

    def describe(self) -> str:
        """For people: the cron expression as written, or "every 15m"."""
        return self.cron if self.cron is not None else f"every {format_duration(self.every or 0.0)}"

    def next_after(self, instant: datetime) -> datetime:
        """The first tick strictly after `instant`."""
        if self.cron is None:
            return _time((_micros(instant) // self._step + 1) * self._step)
        return next(self._forward(instant))

    def ticks_between(self, after: datetime, until: datetime, limit: int) -> list[datetime]:
        """The last `limit` ticks t with after < t <= until, oldest first."""
        if limit <= 0 or until <= after:
            return []
        if self.cron is None:
            last = _micros(until) // self._step
            first = max(_micros(after) // self._step + 1, last - limit + 1)
            return [_time(k * self._step) for k in range(first, last + 1)]
        start = max(after, self._back_from(until, limit, after) - _CLOCK_CHANGE_MARGIN)
        found: collections.deque[datetime] = collections.deque(maxlen=limit)
        for tick in self._forward(start):
            if tick > until:
                break
            if tick > after:
                found.append(tick)
        return list(found)

    @property
    def _step(self) -> int:
        return round((self.every or 0.0) * 1_000_000)

    def _forward(self, instant: datetime) -> Iterator[datetime]:
        """Every tick after `instant`, in order. cronsim, started inside a repeated hour,
        may give the same local time's first occurrence, which is earlier: skip it."""
        for local in CronSim(self._expression, instant.astimezone(self._zone)):
            tick = local.astimezone(UTC)
            if tick > instant:
                yield tick

    def _back_from(self, until: datetime, count: int, after: datetime) -> datetime:
        """An instant at or before the `count`-th tick before `until`, or `after` if that
        comes first (walking backwards, a long gap costs `count` steps, not one per tick)."""
        earliest = until
        walked = CronSim(self._expression, until.astimezone(self._zone), reverse=True)
        for _, local in zip(range(count), walked, strict=False):
            earliest = min(earliest, local.astimezone(UTC))
            if earliest <= after:
                break
        return earliest


def _micros(value: datetime) -> int:
    return (value - _EPOCH) // _MICROSECOND


def _time(micros: int) -> datetime:
    return _EPOCH + micros * _MICROSECOND
