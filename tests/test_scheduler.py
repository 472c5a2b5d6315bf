"""Schedules on a virtual clock: when ticks fire (cron, every, zones, clock changes), what a
gap makes (catch_up), overlap, jitter, pause, resume, trigger, reload, and what it costs.

The engine is the daemon's own (`build_engine`) on the memory store, in one Trio run on
`MockClock(autojump_threshold=0)`: days of ticks take milliseconds and nothing depends on
luck. The wall clock the engine reads is `start + trio.current_time()`.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import pytest
import trio
import trio.testing

import jobd
from jobd import builtins
from jobd.clock import Clock
from jobd.config import parse_config
from jobd.daemon import Engine, build_engine
from jobd.errors import ConfigError, ScheduleNotFound
from jobd.handlers import JobContext
from jobd.job import Job, JobState, new_job_id
from jobd.metrics import Metrics
from jobd.plugins import Registry
from jobd.schedules import MAX_CATCH_UP
from jobd.settings import LiveSettings, Settings, build_settings
from jobd.store import Fired, JobFilter, NewJob, ScheduleFire, ScheduleRecord
from jobd.store.memory import MemoryStore


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)  # type: ignore[misc]


@dataclass(frozen=True)
class Run:
    """One run of the `t.record` handler."""

    schedule: str | None
    scheduled_for: datetime | None
    started: datetime
    job_id: Any


@dataclass
class Daemon:
    engine: Engine
    clock: Clock
    runs: list[Run] = field(default_factory=list)

    @property
    def store(self) -> Any:
        return self.engine.store

    async def jobs(self) -> list[Job]:
        page = await self.store.list_jobs(JobFilter(), 1000, None)
        return sorted(page.jobs, key=lambda job: (job.scheduled_for or job.created_at, job.created_at))

    def ticks(self, schedule: str | None = None) -> list[datetime | None]:
        """The ticks whose jobs ran, in the order they ran."""
        return [run.scheduled_for for run in self.runs if schedule is None or run.schedule == schedule]

    async def made(self, schedule: str) -> list[datetime | None]:
        """The ticks the schedule's jobs were made for, oldest first."""
        return [job.scheduled_for for job in await self.jobs() if job.schedule == schedule]

    async def until(self, instant: datetime) -> None:
        """Let virtual time run to `instant` (and the work due then finish)."""
        await trio.sleep((instant - self.clock()).total_seconds())
        await trio.testing.wait_all_tasks_blocked()


def settings_of(schedules: dict[str, dict[str, Any]], **sections: Any) -> Settings:
    # Nothing polls: the scheduler wakes the workers, and days of virtual time stay cheap.
    workers = {"poll_interval": "1h", **sections.pop("workers", {})}
    raw = {"store": {"url": "memory:"}, "schedules": schedules, "workers": workers, **sections}
    return build_settings(parse_config(raw, env={}, uid=1000), registry())


def registry() -> Registry:
    handlers = [*builtins.jobd_handlers(), record_handler, slow_handler]
    return Registry({handler.type: handler.with_plugin("tests") for handler in handlers})


RUNS: list[Run] = []  # the current daemon's list; one Trio run at a time


@jobd.handler("t.record")
async def record_handler(job: JobContext) -> None:
    RUNS.append(Run(job.schedule, job.scheduled_for, CLOCKS[-1](), job.id))


@jobd.handler("t.slow")
async def slow_handler(job: JobContext) -> None:
    RUNS.append(Run(job.schedule, job.scheduled_for, CLOCKS[-1](), job.id))
    await trio.sleep(job.payload["seconds"])


CLOCKS: list[Clock] = []


@asynccontextmanager
async def daemon(
    schedules: dict[str, dict[str, Any]],
    start: datetime,
    *,
    store: MemoryStore | None = None,
    seed: int = 7,
    run_jobs: bool = True,
    **sections: Any,
) -> AsyncIterator[Daemon]:
    """A daemon whose wall clock reads `start` now, running the schedules given; without
    `run_jobs` only the scheduler runs (the workers' own timers would make days of
    virtual time slow)."""
    offset = trio.current_time()

    def clock() -> datetime:
        return start + timedelta(seconds=trio.current_time() - offset)

    CLOCKS.append(clock)
    RUNS.clear()
    live = LiveSettings(settings_of(schedules, **sections))
    engine = build_engine(store or MemoryStore(), live, Metrics("test"), owner="test", clock=clock)
    engine.scheduler._rng = random.Random(seed)  # a fixed draw of jitter: the bounds are the test
    engine.service.mark_store_ready()
    await engine.store.open()
    async with trio.open_nursery() as nursery:
        await nursery.start(engine.scheduler.run)
        if run_jobs:
            await nursery.start(engine.maintenance.run)
            await nursery.start(partial(engine.pool.run, grace=lambda: 0.0))
        await trio.testing.wait_all_tasks_blocked()
        yield Daemon(engine, clock, RUNS)
        nursery.cancel_scope.cancel()


@pytest.fixture
def virtual(autojump_clock: trio.testing.MockClock) -> trio.testing.MockClock:
    """Trio's virtual clock, jumping ahead whenever every task waits."""
    return autojump_clock


def every(seconds: str, **options: Any) -> dict[str, Any]:
    return {"every": seconds, "type": "t.record", **options}


def cron(expression: str, timezone: str = "UTC", **options: Any) -> dict[str, Any]:
    return {"cron": expression, "timezone": timezone, "type": "t.record", **options}


# -- when ticks fire ---------------------------------------------------------------------


async def test_every_ticks_at_whole_multiples_since_the_epoch_and_runs_at_the_tick(virtual: object) -> None:
    async with daemon({"s": every("15s")}, utc(2026, 1, 1, 0, 0, 7)) as d:
        await d.until(utc(2026, 1, 1, 0, 1, 1))
    assert d.ticks("s") == [
        utc(2026, 1, 1, 0, 0, 15),
        utc(2026, 1, 1, 0, 0, 30),
        utc(2026, 1, 1, 0, 0, 45),
        utc(2026, 1, 1, 0, 1),
    ]
    # Each job starts at its tick: the scheduler woke for it, nothing polled.
    assert [run.started for run in d.runs] == d.ticks("s")
    assert all(run.schedule == "s" for run in d.runs)


async def test_a_cron_in_utc_and_a_nickname(virtual: object) -> None:
    schedules = {"quarter": cron("*/15 9-10 * * MON-FRI"), "daily": cron("@daily")}
    async with daemon(schedules, utc(2026, 1, 2, 8), run_jobs=False) as d:  # a Friday
        await d.until(utc(2026, 1, 5, 9, 20))
        quarter, daily = await d.made("quarter"), await d.made("daily")
    assert quarter == [utc(2026, 1, 2, 9, m) for m in (0, 15, 30, 45)] + [
        utc(2026, 1, 2, 10, m) for m in (0, 15, 30, 45)
    ] + [utc(2026, 1, 5, 9, 0), utc(2026, 1, 5, 9, 15)]
    assert daily == [utc(2026, 1, 3), utc(2026, 1, 4), utc(2026, 1, 5)]


@pytest.mark.parametrize(
    ("timezone", "expression", "start", "end", "expected"),
    [
        # Spring: 02:30 does not exist on the day of the change; it runs once, at 03:00 local.
        (
            "Europe/Berlin",
            "30 2 * * *",
            utc(2026, 3, 27, 12),
            utc(2026, 3, 31),
            [utc(2026, 3, 28, 1, 30), utc(2026, 3, 29, 1), utc(2026, 3, 30, 0, 30)],
        ),
        # Autumn: 02:30 happens twice; it runs once, at the first.
        (
            "Europe/Berlin",
            "30 2 * * *",
            utc(2026, 10, 23, 12),
            utc(2026, 10, 27),
            [utc(2026, 10, 24, 0, 30), utc(2026, 10, 25, 0, 30), utc(2026, 10, 26, 1, 30)],
        ),
        (
            "America/New_York",
            "30 2 * * *",
            utc(2026, 3, 7, 12),
            utc(2026, 3, 10),
            [utc(2026, 3, 8, 7), utc(2026, 3, 9, 6, 30)],
        ),
        (
            "America/New_York",
            "30 1 * * *",
            utc(2026, 10, 31, 12),
            utc(2026, 11, 3),
            [utc(2026, 11, 1, 5, 30), utc(2026, 11, 2, 6, 30)],
        ),
    ],
    ids=["berlin-spring", "berlin-autumn", "new-york-spring", "new-york-autumn"],
)
async def test_a_fixed_hour_runs_once_across_either_clock_change(
    virtual: object, timezone: str, expression: str, start: datetime, end: datetime, expected: list[datetime]
) -> None:
    async with daemon({"s": cron(expression, timezone)}, start, run_jobs=False) as d:
        await d.until(end)
        assert await d.made("s") == expected


async def test_an_hourly_cron_follows_real_time_across_both_changes(virtual: object) -> None:
    start, end = utc(2026, 11, 1, 3, 30), utc(2026, 11, 2, 4, 30)  # the local day of the change: 25 hours
    async with daemon({"s": cron("0 * * * *", "America/New_York")}, start, run_jobs=False) as d:
        await d.until(end)
        assert await d.made("s") == [utc(2026, 11, 1, 4) + timedelta(hours=n) for n in range(25)]
    start, end = utc(2026, 3, 28, 22, 30), utc(2026, 3, 29, 21, 30)  # that day: 23 hours
    async with daemon({"s": cron("0 * * * *", "Europe/Berlin")}, start, run_jobs=False) as d:
        await d.until(end)
        assert await d.made("s") == [utc(2026, 3, 28, 23) + timedelta(hours=n) for n in range(23)]


async def test_a_daemon_started_inside_the_repeated_hour_does_not_run_its_time_again(virtual: object) -> None:
    # Berlin, 2026-10-25: 02:30 CEST (00:30Z) ran; the daemon starts at 02:10 CET (01:10Z),
    # inside the repeated hour, before the second 02:30 (01:30Z).
    store = MemoryStore()
    timing = "cron 30 2 * * * Europe/Berlin"
    await store.sync_schedules({"s": timing}, utc(2026, 10, 20))
    await fire(store, "s", utc(2026, 10, 25, 0, 30))
    berlin = cron("30 2 * * *", "Europe/Berlin")
    async with daemon({"s": berlin}, utc(2026, 10, 25, 1, 10), store=store, run_jobs=False) as d:
        await d.until(utc(2026, 10, 27))
        assert await d.made("s") == [utc(2026, 10, 25, 0, 30), utc(2026, 10, 26, 1, 30)]
    # And a new schedule first seen inside the repeated hour waits for the next day too.
    async with daemon({"n": berlin}, utc(2026, 10, 25, 1, 10), run_jobs=False) as d:
        await d.until(utc(2026, 10, 26, 12))
        assert await d.made("n") == [utc(2026, 10, 26, 1, 30)]


async def fire(store: MemoryStore, name: str, *ticks: datetime) -> Fired:
    jobs = [
        NewJob(
            id=new_job_id(),
            type="t.record",
            queue="default",
            payload=None,
            priority=0,
            run_at=tick,
            max_attempts=3,
            timeout=None,
            key=None,
            created_at=tick,
            schedule=name,
            scheduled_for=tick,
        )
        for tick in ticks
    ]
    [record] = (await store.schedule_records([name])).values()
    [fired] = await store.fire_schedules([ScheduleFire(name, record.timing, jobs, False)], ticks[-1])
    return fired


# -- after a gap -------------------------------------------------------------------------


async def gap_store(last_tick: datetime, timing: str = "every 60000000us") -> MemoryStore:
    """A store whose schedule "s" last fired at `last_tick`, as all daemons stopped."""
    store = MemoryStore()
    await store.sync_schedules({"s": timing}, last_tick - timedelta(hours=1))
    await fire(store, "s", last_tick)
    return store


async def test_catch_up_latest_makes_one_job_for_the_last_missed_tick_at_start(virtual: object) -> None:
    store = await gap_store(utc(2026, 1, 1, 0, 0))
    async with daemon({"s": every("1m")}, utc(2026, 1, 1, 0, 5, 30), store=store) as d:
        await d.until(utc(2026, 1, 1, 0, 7, 30))
    # The job left from before the gap (0:00) runs too, beside the one for 0:05.
    assert sorted(d.ticks("s")) == [
        utc(2026, 1, 1, 0, 0),
        utc(2026, 1, 1, 0, 5),
        utc(2026, 1, 1, 0, 6),
        utc(2026, 1, 1, 0, 7),
    ]
    [caught_up] = [run for run in d.runs if run.scheduled_for == utc(2026, 1, 1, 0, 5)]
    assert caught_up.started == utc(2026, 1, 1, 0, 5, 30)  # at once, not at the next tick


async def test_catch_up_all_makes_one_job_per_missed_tick_oldest_first(virtual: object) -> None:
    store = await gap_store(utc(2026, 1, 1, 0, 0))
    async with daemon(
        {"s": every("1m", catch_up="all")}, utc(2026, 1, 1, 0, 5, 30), store=store, workers={"concurrency": 1}
    ) as d:
        await d.until(utc(2026, 1, 1, 0, 6, 30))
    assert d.ticks("s") == [utc(2026, 1, 1, 0, m) for m in range(7)]


async def test_catch_up_all_makes_at_most_the_last_hundred(virtual: object) -> None:
    store = await gap_store(utc(2026, 1, 1, 0, 0))
    async with daemon({"s": every("1m", catch_up="all")}, utc(2026, 1, 1, 5, 0, 30), store=store) as d:
        await d.until(utc(2026, 1, 1, 5, 0, 40))
        jobs = [job for job in await d.jobs() if job.schedule == "s"]
    missed = [utc(2026, 1, 1, 5) - timedelta(minutes=n) for n in range(MAX_CATCH_UP)][::-1]
    assert [job.scheduled_for for job in jobs] == [utc(2026, 1, 1, 0, 0), *missed]


async def test_catch_up_none_skips_to_the_next_tick(virtual: object) -> None:
    store = await gap_store(utc(2026, 1, 1, 0, 0))
    async with daemon({"s": every("1m", catch_up="none")}, utc(2026, 1, 1, 0, 5, 30), store=store) as d:
        await d.until(utc(2026, 1, 1, 0, 7, 30))
    assert d.ticks("s") == [utc(2026, 1, 1, 0, 0), utc(2026, 1, 1, 0, 6), utc(2026, 1, 1, 0, 7)]


async def test_a_tick_that_comes_due_while_the_store_is_away_fires_when_it_is_back(virtual: object) -> None:
    store = FlakyStore()
    async with daemon({"s": every("1m", catch_up="none")}, utc(2026, 1, 1, 0, 0, 30), store=store) as d:
        store.down = True
        await d.until(utc(2026, 1, 1, 0, 1, 20))
        store.down = False
        await d.until(utc(2026, 1, 1, 0, 1, 40))
    assert d.ticks("s") == [utc(2026, 1, 1, 0, 1)]


class FlakyStore(MemoryStore):
    down = False

    async def fire_schedules(self, fires: Sequence[ScheduleFire], now: datetime) -> list[Fired]:
        if self.down:
            raise jobd.StoreUnavailable("down for the test")
        return await super().fire_schedules(fires, now)


# -- overlap and jitter ------------------------------------------------------------------


async def test_overlap_skip_makes_no_job_while_the_last_is_unfinished(virtual: object) -> None:
    slow = {"every": "1m", "type": "t.slow", "payload": {"seconds": 150}, "overlap": "skip"}
    allowed = {**slow, "overlap": "allow"}
    async with daemon({"skip": slow, "allow": allowed}, utc(2026, 1, 1, 0, 0, 30)) as d:
        await d.until(utc(2026, 1, 1, 0, 7, 30))
        metrics = d.engine.metrics
        ticks = metric(metrics, "jobd_schedule_ticks_total", "skip")
        made = metric(metrics, "jobd_schedule_jobs_total", "skip")
    # 0:01 runs to 0:03:30, so 0:02 and 0:03 make none; 0:04 runs to 0:06:30...
    assert d.ticks("skip") == [utc(2026, 1, 1, 0, 1), utc(2026, 1, 1, 0, 4), utc(2026, 1, 1, 0, 7)]
    assert d.ticks("allow") == [utc(2026, 1, 1, 0, m) for m in range(1, 8)]
    assert (ticks, made) == (7, 3)


def metric(metrics: Metrics, name: str, schedule: str) -> float | None:
    return metrics.registry.get_sample_value(name, {"schedule": schedule})


async def test_jitter_delays_each_job_by_at_most_the_jitter(virtual: object) -> None:
    async with daemon({"s": every("1m", jitter="20s")}, utc(2026, 1, 1)) as d:
        await d.until(utc(2026, 1, 1, 0, 30, 30))
        jobs = await d.jobs()
    delays = [(job.run_at - job.scheduled_for).total_seconds() for job in jobs if job.scheduled_for]
    assert len(delays) == 30
    assert all(0 <= delay <= 20 for delay in delays)
    assert len(set(delays)) > 25  # drawn, not fixed
    assert all(run.started == job.run_at for run, job in zip(d.runs, jobs, strict=True))


# -- pause, resume, trigger, reload -------------------------------------------------------


async def test_a_paused_schedule_skips_its_ticks_and_resumes_without_catching_up(virtual: object) -> None:
    async with daemon({"s": every("1m", catch_up="all")}, utc(2026, 1, 1, 0, 0, 30)) as d:
        service = d.engine.service
        await d.until(utc(2026, 1, 1, 0, 1, 30))
        paused = await service.pause_schedule("s")
        assert paused.paused and paused.next_run is None
        await d.until(utc(2026, 1, 1, 0, 4, 30))
        resumed = await service.resume_schedule("s")
        assert not resumed.paused and resumed.next_run == utc(2026, 1, 1, 0, 5)
        await d.until(utc(2026, 1, 1, 0, 5, 30))
        shown = await service.schedule("s")
    assert d.ticks("s") == [utc(2026, 1, 1, 0, 1), utc(2026, 1, 1, 0, 5)]
    assert shown.last_tick == utc(2026, 1, 1, 0, 5) and shown.last_job_id == d.runs[-1].job_id


async def test_a_trigger_makes_a_job_now_and_leaves_the_ticks_alone(virtual: object) -> None:
    async with daemon({"s": every("1h")}, utc(2026, 1, 1, 0, 10)) as d:
        job = await d.engine.service.trigger_schedule("s")
        assert (job.schedule, job.scheduled_for, job.run_at) == ("s", utc(2026, 1, 1, 0, 10), job.created_at)
        await d.until(utc(2026, 1, 1, 1, 0, 1))
        shown = await d.engine.service.schedule("s")
        with pytest.raises(ScheduleNotFound):
            await d.engine.service.trigger_schedule("nope")
    assert d.ticks("s") == [utc(2026, 1, 1, 0, 10), utc(2026, 1, 1, 1)]
    assert shown.last_tick == utc(2026, 1, 1, 1)


async def test_a_reload_that_changes_the_cron_takes_effect_at_the_next_tick(virtual: object) -> None:
    async with daemon({"s": cron("0 * * * *", catch_up="all")}, utc(2026, 1, 1, 0, 30)) as d:
        await d.until(utc(2026, 1, 1, 1, 20))
        d.engine.live.current = settings_of({"s": cron("*/10 * * * *", catch_up="all")})
        d.engine.scheduler.reload()
        await d.until(utc(2026, 1, 1, 1, 45))
        # A change back to the first cron counts anew too: 2:00 is the next tick, not 1:00 again.
        d.engine.live.current = settings_of({"s": cron("0 * * * *", catch_up="all")})
        d.engine.scheduler.reload()
        await d.until(utc(2026, 1, 1, 2, 5))
    assert d.ticks("s") == [
        utc(2026, 1, 1, 1),
        utc(2026, 1, 1, 1, 30),
        utc(2026, 1, 1, 1, 40),
        utc(2026, 1, 1, 2),
    ]


async def test_a_disabled_schedule_never_ticks_and_shows_so(virtual: object) -> None:
    async with daemon({"off": every("1m", enabled=False), "on": every("1m")}, utc(2026, 1, 1)) as d:
        await d.until(utc(2026, 1, 1, 0, 3, 30))
        statuses = {status.name: status for status in await d.engine.service.schedules()}
    assert d.ticks("off") == [] and len(d.ticks("on")) == 3
    assert (statuses["off"].enabled, statuses["off"].next_run) == (False, None)
    assert statuses["on"].next_run == utc(2026, 1, 1, 0, 4)


# -- cost --------------------------------------------------------------------------------


class CountingStore(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.schedule_calls: list[tuple[str, datetime, int]] = []

    async def sync_schedules(self, timings: Any, now: datetime) -> dict[str, ScheduleRecord]:
        self.schedule_calls.append(("sync", now, len(timings)))
        return await super().sync_schedules(timings, now)

    async def fire_schedules(self, fires: Sequence[ScheduleFire], now: datetime) -> list[Fired]:
        self.schedule_calls.append(("fire", now, len(fires)))
        return await super().fire_schedules(fires, now)


async def test_a_thousand_schedules_cost_no_store_call_between_their_ticks(virtual: object) -> None:
    store = CountingStore()
    schedules = {f"s{n:04}": {"cron": "0 * * * *", "type": "jobd.noop", "payload": n} for n in range(1000)}
    async with daemon(schedules, utc(2026, 1, 1, 0, 0, 1), store=store, run_jobs=False) as d:
        await d.until(utc(2026, 1, 1, 2, 59, 59))
        made = sum((await d.store.count_jobs())["default"].values())
    assert store.schedule_calls == [
        ("sync", utc(2026, 1, 1, 0, 0, 1), 1000),
        ("fire", utc(2026, 1, 1, 1), 1000),
        ("fire", utc(2026, 1, 1, 2), 1000),
    ]
    assert made == 2000


# -- config --------------------------------------------------------------------------------


def test_schedule_jobs_take_their_options_as_a_submit_does() -> None:
    settings = settings_of(
        {
            "plain": every("1m"),
            "full": every("1m", queue="reports", priority=5, max_attempts=2, timeout="30s"),
        },
        queues={"reports": {}},
        handlers={"t.record": {"max_attempts": 7, "timeout": "1m"}},
    )
    plain, full = settings.schedules["plain"], settings.schedules["full"]
    assert (plain.queue, plain.priority, plain.max_attempts, plain.timeout) == ("default", 0, 7, 60.0)
    assert (full.queue, full.priority, full.max_attempts, full.timeout) == ("reports", 5, 2, 30.0)


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ({"every": "1m", "type": "no.such.type"}, "type"),
        ({"every": "1m", "type": "t.record", "queue": "undeclared"}, "queue"),
        ({"every": "1m", "type": "jobd.sleep", "payload": {"seconds": "soon"}}, "payload"),
    ],
)
def test_what_needs_the_handlers_is_checked_with_them(table: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        settings_of({"bad": table})
    assert caught.value.key is not None and caught.value.key.startswith(f"schedules.bad.{key}")


def test_an_unknown_type_is_accepted_where_the_api_accepts_it() -> None:
    unknown = {"every": "1m", "type": "elsewhere.job"}
    settings = settings_of({"s": unknown}, api={"accept_unknown_types": True})
    assert settings.schedules["s"].type == "elsewhere.job"


async def test_jobs_of_a_schedule_are_pending_at_their_tick_and_keep_their_fields(virtual: object) -> None:
    async with daemon({"s": every("1m", jitter="30s")}, utc(2026, 1, 1, 0, 0, 30)) as d:
        await d.until(utc(2026, 1, 1, 0, 1, 45))
        [job] = await d.jobs()
    assert job.state == JobState.COMPLETED
    assert (job.schedule, job.scheduled_for) == ("s", utc(2026, 1, 1, 0, 1))
    assert job.to_json()["scheduled_for"] == "2026-01-01T00:01:00Z"
