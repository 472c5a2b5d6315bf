"""The service that fires schedules: it sleeps until the next tick of any schedule, then
asks the store to fire the ticks that are due, in one call for all of them.

Every daemon sharing a store runs one. None of them leads: each fires each tick it sees
come due, and the store's record of every schedule (`jobd.store.plan_fire`) keeps all
but the first of them from making a job. Between ticks a daemon does nothing at all: no
store call, no wake-up but one a minute to notice a wall clock that jumped.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import trio

from jobd.backoff import StoreOutage
from jobd.clock import Clock
from jobd.errors import StoreUnavailable
from jobd.job import Job, JobState, new_job_id
from jobd.metrics import Metrics
from jobd.schedules import Schedule
from jobd.settings import LiveSettings
from jobd.store import Fired, NewJob, ScheduleFire, ScheduleRecord, Store

# Sleep at most this long between looks at the wall clock: a tick must not be missed
# because the clock was stepped while the scheduler slept on the monotonic one.
MAX_SLEEP = 60.0

log = logging.getLogger("jobd.scheduler")


def tick_job(schedule: Schedule, tick: datetime, now: datetime, delay: float = 0.0) -> NewJob:
    """The job `schedule` makes for `tick` (or for a trigger: `tick` is now), to run
    `delay` seconds after the tick."""
    return NewJob(
        id=new_job_id(),
        type=schedule.type,
        queue=schedule.queue,
        payload=schedule.payload,
        priority=schedule.priority,
        run_at=tick + timedelta(seconds=delay),
        max_attempts=schedule.max_attempts,
        timeout=schedule.timeout,
        key=None,
        created_at=now,
        schedule=schedule.name,
        scheduled_for=tick,
    )


@dataclass(slots=True)
class _Watch:
    """One enabled schedule as this daemon follows it."""

    schedule: Schedule
    record: ScheduleRecord  # as the store last told us
    watching_since: datetime  # ticks before this were missed while no daemon watched
    looked_until: datetime | None = None  # the last time we looked for due ticks
    next_run: datetime | None = None  # when to look again
    warned: bool = False  # that another daemon defines this schedule otherwise

    def plan(self) -> None:
        start = self.record.counted_from
        if self.looked_until is not None:
            start = max(start, self.looked_until)
        self.next_run = self.schedule.recurrence.next_after(start)


class Scheduler:
    def __init__(
        self,
        store: Store,
        live: LiveSettings,
        metrics: Metrics,
        clock: Clock,
        *,
        wake_workers: Callable[[], None],
        schedule_changed: Callable[[], None],
        rng: random.Random | None = None,
    ) -> None:
        self._store = store
        self._live = live
        self._metrics = metrics
        self._clock = clock
        self._wake_workers = wake_workers  # jobs became claimable
        self._schedule_changed = schedule_changed  # jobs were scheduled for later (jitter)
        self._rng = rng or random.Random()
        self._watches: dict[str, _Watch] = {}
        self._synced: object = None  # the settings generation the watches follow
        self._wakeup = trio.Event()

    def reload(self) -> None:
        """The settings changed: take up new and changed schedules before the next tick."""
        self._wakeup.set()

    def record_changed(self, record: ScheduleRecord) -> None:
        """This daemon paused or resumed a schedule: plan with the store's new record."""
        watch = self._watches.get(record.name)
        if watch is not None:
            watch.record = record
            watch.plan()
            self._report_next_run(watch)
            self._wakeup.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        outage = StoreOutage(log, "fire schedules")
        while True:
            self._wakeup = trio.Event()
            try:
                if self._synced is not self._live.current:
                    await self._sync()
                await self._fire_due()
                outage.succeeded()
                wait = self._until_next_run()
            except StoreUnavailable as error:
                wait = outage.failed(error)
            with trio.move_on_after(wait):
                await self._wakeup.wait()

    async def _sync(self) -> None:
        """Follow the schedules of the settings in force: the store creates the records of
        new ones and counts changed ones anew (`jobd.store.synced_record`)."""
        settings = self._live.current
        schedules = settings.schedules
        now = self._clock()
        records = await self._store.sync_schedules(
            {name: schedule.timing for name, schedule in schedules.items()}, now
        )
        watches = {}
        for name, schedule in schedules.items():
            self._metrics.schedule_seen(name)
            if not schedule.enabled:
                self._metrics.set_schedule_next_run(name, None)
                continue
            watch = self._watches.get(name)
            if watch is None or watch.schedule.timing != schedule.timing:
                watch = _Watch(schedule, records[name], now)
            else:
                watch.schedule, watch.record = schedule, records[name]
            watch.plan()
            self._report_next_run(watch)
            watches[name] = watch
        for name in set(self._watches) - set(schedules):
            self._metrics.set_schedule_next_run(name, None)
        self._watches = watches
        self._synced = settings

    async def _fire_due(self) -> None:
        now = self._clock()
        fires: list[ScheduleFire] = []
        looked: list[_Watch] = []
        for watch in self._watches.values():
            if watch.next_run is None or watch.next_run > now:
                continue
            schedule = watch.schedule
            if watch.looked_until is None and not watch.record.paused:
                self._report_missed(watch)
            ticks = schedule.ticks_to_fire(watch.record.counted_from, now, watch.watching_since)
            if ticks:
                jitter = schedule.jitter
                jobs = [tick_job(schedule, tick, now, self._rng.uniform(0.0, jitter)) for tick in ticks]
                fires.append(ScheduleFire(schedule.name, schedule.timing, jobs, schedule.skip_overlap))
            looked.append(watch)
        fired = await self._store.fire_schedules(fires, now) if fires else []
        for result in fired:
            self._report(result)
        for watch in looked:
            watch.looked_until = now
            watch.plan()
            self._report_next_run(watch)

    def _report_missed(self, watch: _Watch) -> None:
        """Say so when a schedule missed ticks while no daemon ran: `catch_up` decides now."""
        schedule, counted_from = watch.schedule, watch.record.counted_from
        missed = schedule.recurrence.ticks_between(counted_from, watch.watching_since, 1)
        if missed:
            log.info(
                "schedule %s missed ticks while no daemon ran, the last at %s; catch_up = %s",
                schedule.name,
                missed[-1].isoformat(),
                schedule.catch_up.value,
                extra={
                    "schedule": schedule.name,
                    "counted_from": counted_from.isoformat(),
                    "watching_since": watch.watching_since.isoformat(),
                    "catch_up": schedule.catch_up.value,
                },
            )

    def _report(self, fired: Fired) -> None:
        watch = self._watches[fired.name]
        if fired.record is None:  # the store lost the record (a wiped database): make it again
            log.warning("schedule %s has no record in the store; recreating it", fired.name)
            self._synced = None
            return
        watch.record = fired.record
        if fired.record.timing != watch.schedule.timing and not watch.warned:
            watch.warned = True
            log.warning(
                "schedule %s is defined otherwise by another daemon sharing the store (%s, here %s); "
                "this daemon fires none of its ticks until it restarts or reloads with the same definition",
                fired.name,
                fired.record.timing,
                watch.schedule.timing,
            )
        self._metrics.schedule_fired(fired.name, len(fired.ticks), len(fired.jobs))
        for job in fired.jobs:
            self._metrics.job_submitted(job.queue, job.type)
            log.info(
                "schedule %s: tick %s made job %s",
                fired.name,
                job.scheduled_for.isoformat() if job.scheduled_for else "?",
                job.id,
                extra={"schedule": fired.name, "job_id": str(job.id), "type": job.type, "queue": job.queue},
            )
        skipped = len(fired.ticks) - len(fired.jobs)
        if skipped and watch.schedule.skip_overlap:
            log.info("schedule %s: %d tick(s) made no job: its last is unfinished", fired.name, skipped)
        self._jobs_added(fired.jobs)

    def _jobs_added(self, jobs: Sequence[Job]) -> None:
        if any(job.state == JobState.PENDING for job in jobs):
            self._wake_workers()
        if any(job.state == JobState.SCHEDULED for job in jobs):
            self._schedule_changed()

    def _report_next_run(self, watch: _Watch) -> None:
        paused = watch.record.paused
        self._metrics.set_schedule_next_run(watch.schedule.name, None if paused else watch.next_run)

    def _until_next_run(self) -> float:
        runs = [watch.next_run for watch in self._watches.values() if watch.next_run is not None]
        if not runs:
            return math.inf
        return min(max((min(runs) - self._clock()).total_seconds(), 0.0), MAX_SLEEP)
