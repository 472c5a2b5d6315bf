"""Periodic jobs as values: a schedule as the daemon runs it, the ticks it fires after a
gap, and a schedule as the API shows it.

The arithmetic of ticks is `jobd.recurrence`'s; the record of which ticks have fired is
the store's (`jobd.store.ScheduleRecord`); the service that fires them is
`jobd.scheduler`. This module imports neither Trio nor a store, so the client can use
`ScheduleStatus`.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from jobd.durations import format_duration
from jobd.job import JSON, format_time, parse_optional_time
from jobd.recurrence import Recurrence

MAX_CATCH_UP = 100  # jobs one schedule makes at once for the ticks it missed (catch_up = "all")
DISABLED_TIMING = "disabled"  # the store's timing of a disabled schedule: enabling it counts anew


class CatchUp(enum.StrEnum):
    """What a schedule does about the ticks it missed while no daemon could fire them."""

    LATEST = "latest"  # one job, for the most recent missed tick
    ALL = "all"  # one job per missed tick: the last MAX_CATCH_UP of them, oldest first
    NONE = "none"  # none: on to the next tick


@dataclass(frozen=True, slots=True)
class Schedule:
    """A `[schedules.NAME]` table, checked and resolved against the handlers in force:
    the job each tick makes is fully decided (queue, attempts and timeout as at submit)."""

    name: str
    recurrence: Recurrence
    type: str
    payload: JSON
    queue: str
    priority: int
    max_attempts: int
    timeout: float | None
    catch_up: CatchUp
    skip_overlap: bool  # overlap = "skip"
    jitter: float  # seconds: each tick's job runs at the tick plus a random 0..jitter
    enabled: bool

    @property
    def timing(self) -> str:
        """What the store counts this schedule's ticks by (see `ScheduleRecord.timing`)."""
        return self.recurrence.key if self.enabled else DISABLED_TIMING

    def ticks_to_fire(
        self, counted_from: datetime, now: datetime, watching_since: datetime
    ) -> list[datetime]:
        """The ticks to fire at `now`, oldest first, for a schedule whose ticks up to
        `counted_from` are done, watched by this daemon since `watching_since` (its start,
        or the reload that took the schedule up).

        A tick that came due while this daemon was watching fires whatever the policy;
        ticks before that were missed while no daemon ran, and `catch_up` decides:
        `latest` fires the most recent of them, `all` the last `MAX_CATCH_UP`, `none` none.
        """
        ticks = self.recurrence.ticks_between
        if self.catch_up is CatchUp.ALL:
            return ticks(counted_from, now, MAX_CATCH_UP)
        if self.catch_up is CatchUp.LATEST:
            return ticks(counted_from, now, 1)
        return ticks(max(counted_from, watching_since), now, 1)

    def next_run(self, counted_from: datetime, now: datetime) -> datetime:
        """The next tick after `now` that is still to fire."""
        return self.recurrence.next_after(max(counted_from, now))


@dataclass(frozen=True, slots=True)
class ScheduleStatus:
    """A schedule as `GET /v1/schedules/{name}` shows it. `every` is in seconds;
    `next_run` is None while the schedule is disabled or paused."""

    name: str
    cron: str | None
    every: float | None
    timezone: str
    type: str
    queue: str
    enabled: bool
    paused: bool
    next_run: datetime | None
    last_tick: datetime | None
    last_job_id: uuid.UUID | None

    def to_json(self) -> dict[str, JSON]:
        when: dict[str, JSON] = {"cron": self.cron} if self.cron is not None else {"every": self.every}
        return {
            "name": self.name,
            **when,
            "timezone": self.timezone,
            "type": self.type,
            "queue": self.queue,
            "enabled": self.enabled,
            "paused": self.paused,
            "next_run": format_time(self.next_run),
            "last_tick": format_time(self.last_tick),
            "last_job_id": None if self.last_job_id is None else str(self.last_job_id),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, JSON]) -> ScheduleStatus:
        every, last_job_id = data.get("every"), data.get("last_job_id")
        return cls(
            name=str(data["name"]),
            cron=data.get("cron"),
            every=None if every is None else float(every),
            timezone=str(data["timezone"]),
            type=str(data["type"]),
            queue=str(data["queue"]),
            enabled=bool(data["enabled"]),
            paused=bool(data["paused"]),
            next_run=parse_optional_time(data.get("next_run")),
            last_tick=parse_optional_time(data.get("last_tick")),
            last_job_id=None if last_job_id is None else uuid.UUID(last_job_id),
        )

    def describe(self) -> str:
        """The schedule for people: the cron expression, or "every 15m"."""
        return f"every {format_duration(self.every)}" if self.every is not None else self.cron or ""
