"""The operations the control API offers, on top of the store, the settings and the pool.

Every request body is validated here, field by field, before anything is stored: the
rules every job meets (`jobd.submission`), then this daemon's own (a handler for the
type, the queue, the payload's size and the handler's validation). A bad field is an
`InvalidJob` naming it, so the API can answer 422 precisely.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import math
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import trio

from jobd.clock import Clock
from jobd.durations import parse_duration
from jobd.errors import (
    BadRequest,
    InvalidJob,
    JobNotFound,
    Overloaded,
    QueueNotFound,
    ScheduleNotFound,
    ShuttingDown,
    StoreUnavailable,
)
from jobd.job import FINISHED_STATES, Job, JobState, parse_time
from jobd.maintenance import Maintenance
from jobd.metrics import Exposition, Metrics
from jobd.scheduler import Scheduler, tick_job
from jobd.schedules import Schedule, ScheduleStatus
from jobd.settings import LiveSettings, Settings
from jobd.store import RATE_WINDOW, Inserted, JobFilter, JobPage, NewJob, ScheduleRecord, Store
from jobd.submission import check_submission, storable
from jobd.version import __version__
from jobd.watch import JobWatch
from jobd.worker import WorkerPool

JOB_FIELDS = frozenset(
    {
        "type",
        "payload",
        "queue",
        "priority",
        "run_at",
        "delay",
        "max_attempts",
        "timeout",
        "key",
        "after",
        "on_parent_failure",
        "unique_for",
        "traceparent",
    }
)
MAX_BATCH = 10_000
# A batch's jobs are checked this many at a time, each chunk inserted while the next is
# checked (where the store sets `chunked_inserts`): on PostgreSQL 125 and 250 took the
# same time for 1,000 jobs.
CHECK_CHUNK = 250
# The fields that may make a job other than it was asked for (a key held, parents), the
# ones `NewJob.stands_alone` looks at: a batch with any of them is checked whole, then
# inserted in one call.
_ALONE_UNLESS = frozenset({"key", "after", "unique_for"})
MAX_WAIT = 3600.0
HEALTH_TIMEOUT = 2.0
STORE_OPEN_WAIT = 5.0
REMOTE_WAIT_POLL = 1.0  # how often a long poll re-reads a job another daemon may finish


@dataclass(frozen=True, slots=True)
class Health:
    """The daemon's health: `ok` when its store answers; `body` is `GET /v1/health`'s."""

    ok: bool
    body: dict[str, Any]


class JobService:
    def __init__(
        self,
        store: Store,
        live: LiveSettings,
        pool: WorkerPool,
        maintenance: Maintenance,
        scheduler: Scheduler,
        metrics: Metrics,
        watch: JobWatch,
        clock: Clock,
    ) -> None:
        self._opened_store = store
        self._live = live
        self._pool = pool
        self._maintenance = maintenance
        self._scheduler = scheduler
        self._metrics = metrics
        self._watch = watch
        self._clock = clock
        self.stopping = False
        self._waits = 0  # long polls waiting now
        self._store_ready = trio.Event()  # the daemon opens the store after it starts listening

    def mark_store_ready(self) -> None:
        self._store_ready.set()

    async def _ready_store(self) -> Store:
        """The store, once the daemon has opened it. A request that comes in while it is
        opening (socket activation connects clients early) waits a little for it."""
        if not self._store_ready.is_set():
            with trio.move_on_after(STORE_OPEN_WAIT):
                await self._store_ready.wait()
            if not self._store_ready.is_set():
                raise StoreUnavailable("the store is not open yet")
        return self._opened_store

    @property
    def max_request_bytes(self) -> int:
        return self._live.current.config.api.max_request_bytes

    # -- submitting ---------------------------------------------------------------------

    async def submit(self, body: object, traceparent: str | None = None, *, parsed: bool = False) -> Inserted:
        """`traceparent`: the request's header, for a job whose body names none. `parsed`:
        the body was parsed from JSON text, so it holds JSON's own types only."""
        self._check_running()
        new = self._new_job(body, self._clock(), self._live.current, traceparent, parsed=parsed)
        await self._ready_store()
        [inserted] = await self._pool.insert_jobs([new])
        self._after_insert([inserted])
        return inserted

    async def submit_batch(
        self, body: object, traceparent: str | None = None, *, parsed: bool = False
    ) -> list[Inserted]:
        self._check_running()
        if not isinstance(body, dict) or set(body) != {"jobs"} or not isinstance(body["jobs"], list):
            raise InvalidJob('the body must be {"jobs": [...]}', field="jobs")
        items = body["jobs"]
        if not items:
            raise InvalidJob("the batch holds no jobs", field="jobs")
        if len(items) > MAX_BATCH:
            raise InvalidJob(f"a batch holds at most {MAX_BATCH} jobs, got {len(items)}", field="jobs")
        checked = self._checked_chunks(items, self._clock(), self._live.current, traceparent, parsed=parsed)
        if (
            self._opened_store.chunked_inserts
            and len(items) > CHECK_CHUNK
            and not any(isinstance(item, dict) and not _ALONE_UNLESS.isdisjoint(item) for item in items)
        ):
            # Every job stands alone: the store inserts a chunk while the next is checked.
            # The first is checked before the store is asked for anything.
            first = next(checked)
            await self._ready_store()
            inserted = await self._pool.insert_job_chunks(itertools.chain([first], checked))
        else:
            new_jobs = [new for chunk in checked for new in chunk]
            await self._ready_store()
            inserted = await self._pool.insert_jobs(new_jobs)
        self._after_insert(inserted)
        return inserted

    def _checked_chunks(
        self, items: list[Any], now: datetime, settings: Settings, traceparent: str | None, *, parsed: bool
    ) -> Iterator[list[NewJob]]:
        """The jobs of a batch's `items`, checked `CHECK_CHUNK` at a time as they are
        asked for; `InvalidJob` names the first item at fault."""
        ids: list[uuid.UUID] = []  # of the items before: `after` may name them ("#N")
        for start in range(0, len(items), CHECK_CHUNK):
            chunk: list[NewJob] = []
            for index in range(start, min(start + CHECK_CHUNK, len(items))):
                try:
                    new = self._new_job(
                        items[index], now, settings, traceparent, index=index, earlier=ids, parsed=parsed
                    )
                except InvalidJob as error:
                    raise error.at_index(index) from None
                chunk.append(new)
                ids.append(new.id)
            yield chunk

    def _check_running(self) -> None:
        if self.stopping:
            raise ShuttingDown("jobd is shutting down and accepts no new jobs")

    def _after_insert(self, inserted: Sequence[Inserted]) -> None:
        created = [item.job for item in inserted if item.created]
        # Counted once per queue and type of a batch: an increment costs about 1 µs.
        for (queue, job_type), count in collections.Counter((job.queue, job.type) for job in created).items():
            self._metrics.job_submitted(queue, job_type, count)
        for job in created:
            if job.state == JobState.CANCELLED:  # a parent had failed already
                self._metrics.job_finished(job.queue, job.type, job.state.value, None)
        if any(job.state == JobState.SCHEDULED for job in created):
            self._maintenance.schedule_changed()

    def _new_job(
        self,
        body: object,
        now: datetime,
        settings: Settings,
        traceparent: str | None,
        *,
        index: int | None = None,
        earlier: Sequence[uuid.UUID] = (),
        parsed: bool = False,
    ) -> NewJob:
        if not isinstance(body, dict):
            raise InvalidJob("a job must be a JSON object")
        if not JOB_FIELDS.issuperset(body):
            unknown = sorted(set(body) - JOB_FIELDS)
            raise InvalidJob(
                f"unknown field {unknown[0]!r} (known: {', '.join(sorted(JOB_FIELDS))})", field=unknown[0]
            )
        asked = check_submission(
            job_type=body.get("type"),
            payload=body.get("payload"),
            now=now,
            queue=body.get("queue"),
            priority=body.get("priority"),
            delay=_optional_seconds(body, "delay"),
            run_at=_optional_time(body, "run_at"),
            max_attempts=body.get("max_attempts"),
            timeout=_optional_seconds(body, "timeout"),
            key=body.get("key"),
            after=body.get("after"),
            on_parent_failure=body.get("on_parent_failure"),
            unique_for=_optional_seconds(body, "unique_for"),
            index=index,
            traceparent=body.get("traceparent", traceparent),
            parsed=parsed,
        )
        return settings.new_job(asked, now, earlier=earlier)

    # -- reading ------------------------------------------------------------------------

    async def get(self, job_id: str) -> Job:
        parsed = _parse_id(job_id)
        store = await self._ready_store()
        job = await store.get_job(parsed)
        if job is None:
            raise JobNotFound(job_id)
        return job

    async def list_jobs(self, query: Mapping[str, str]) -> JobPage:
        unknown = sorted(set(query) - {"state", "type", "queue", "limit", "after"})
        if unknown:
            raise BadRequest(f"unknown query parameter {unknown[0]!r}", field=unknown[0])
        state = None
        if query.get("state"):
            try:
                state = JobState(query["state"])
            except ValueError:
                known = ", ".join(s.value for s in JobState)
                raise BadRequest(f"state must be one of {known}", field="state") from None
        limit_text = query.get("limit", "100")
        if not limit_text.isdigit() or not 1 <= int(limit_text) <= 1000:
            raise BadRequest(
                f"limit must be a whole number from 1 to 1000, got {limit_text!r}", field="limit"
            )
        for name, value in query.items():
            if not storable(value):
                raise BadRequest(f"{name} holds a NUL character or a lone surrogate", field=name)
        search = JobFilter(state=state, type=query.get("type") or None, queue=query.get("queue") or None)
        store = await self._ready_store()
        try:
            return await store.list_jobs(search, int(limit_text), query.get("after") or None)
        except ValueError as error:
            raise BadRequest(str(error), field="after") from None

    async def wait(self, job_id: str, timeout: str | None) -> Job:
        """The job once finished, or as it stands at the timeout. A long poll beyond
        `api.max_waiting` at once is refused (`Overloaded`) rather than let waiting
        clients take every connection from the others."""
        seconds = MAX_WAIT if timeout is None else _parse_wait(timeout)
        parsed = _parse_id(job_id)
        deadline = trio.current_time() + seconds
        store = await self._ready_store()
        with contextlib.ExitStack() as share:
            counted = False  # only a poll that does wait takes a share
            while True:
                with self._watch.watching(parsed) as changed:
                    job = await store.get_job(parsed)
                    if job is None:
                        raise JobNotFound(job_id)
                    remaining = deadline - trio.current_time()
                    if job.state in FINISHED_STATES or remaining <= 0:
                        return job
                    if not counted:
                        share.enter_context(self._waiting())
                        counted = True
                    # Jobs run by another daemon sharing the store finish without a local
                    # signal, and so does a waiting job the store settles with its parent.
                    settled_elsewhere = store.shared or job.state == JobState.WAITING
                    poll = REMOTE_WAIT_POLL if settled_elsewhere else remaining
                    with trio.move_on_after(min(remaining, poll)):
                        await changed.wait()

    @contextlib.contextmanager
    def _waiting(self) -> Iterator[None]:
        limit = self._live.current.config.api.max_waiting
        if self._waits >= limit:
            raise Overloaded(f"{limit} clients are waiting for jobs already; try again later", limit=limit)
        self._waits += 1
        try:
            yield
        finally:
            self._waits -= 1

    # -- changing -----------------------------------------------------------------------

    async def cancel(self, job_id: str) -> Job:
        parsed = _parse_id(job_id)
        store = await self._ready_store()
        job = await store.cancel_job(parsed, self._clock())
        if job.state == JobState.CANCELLED:
            self._metrics.job_finished(job.queue, job.type, "cancelled", None)
            self._watch.changed(parsed)
        else:
            self._pool.cancel_running(parsed)
        return job

    async def retry(self, job_id: str) -> Job:
        store = await self._ready_store()
        job = await store.retry_job(_parse_id(job_id), self._clock())
        self._watch.changed(job.id)
        self._pool.wake()
        return job

    async def pause(self, queue: str) -> dict[str, Any]:
        return await self._set_paused(queue, True)

    async def resume(self, queue: str) -> dict[str, Any]:
        return await self._set_paused(queue, False)

    async def _set_paused(self, queue: str, paused: bool) -> dict[str, Any]:
        if queue not in self._live.current.queues:
            raise QueueNotFound(queue)
        store = await self._ready_store()
        await store.set_queue_paused(queue, paused)
        self._pool.wake()
        stats = await self.stats()
        return {"queue": queue, **stats["queues"][queue]}

    # -- schedules ----------------------------------------------------------------------

    async def schedules(self) -> list[ScheduleStatus]:
        schedules = self._live.current.schedules
        store = await self._ready_store()
        records = await store.schedule_records(sorted(schedules))
        now = self._clock()
        return [_status(schedules[name], records.get(name), now) for name in sorted(schedules)]

    async def schedule(self, name: str) -> ScheduleStatus:
        schedule = self._schedule(name)
        store = await self._ready_store()
        records = await store.schedule_records([name])
        return _status(schedule, records.get(name), self._clock())

    async def pause_schedule(self, name: str) -> ScheduleStatus:
        return await self._set_schedule_paused(name, True)

    async def resume_schedule(self, name: str) -> ScheduleStatus:
        return await self._set_schedule_paused(name, False)

    async def _set_schedule_paused(self, name: str, paused: bool) -> ScheduleStatus:
        schedule = self._schedule(name)
        store = await self._ready_store()
        now = self._clock()
        record = await store.set_schedule_paused(name, schedule.timing, paused, now)
        self._scheduler.record_changed(record)
        return _status(schedule, record, now)

    async def trigger_schedule(self, name: str) -> Job:
        """A job of the schedule now, beside its ticks: `scheduled_for` is now, and the
        schedule's record (its ticks, pause and overlap) is neither asked nor changed."""
        self._check_running()
        schedule = self._schedule(name)
        now = self._clock()
        await self._ready_store()
        [inserted] = await self._pool.insert_jobs([tick_job(schedule, now, now)])
        self._metrics.schedule_fired(name, 0, 1)
        self._after_insert([inserted])
        return inserted.job

    def _schedule(self, name: str) -> Schedule:
        schedule = self._live.current.schedules.get(name)
        if schedule is None:
            raise ScheduleNotFound(name)
        return schedule

    # -- observing ----------------------------------------------------------------------

    async def stats(self) -> dict[str, Any]:
        store = await self._ready_store()
        counts = await store.count_jobs()
        paused = await store.paused_queues()
        settings = self._live.current
        names = sorted(set(settings.queues) | set(counts))
        now = self._clock()
        activity = await store.queue_activity(names, now)
        queues: dict[str, Any] = {}
        for name in names:
            per_state = counts.get(name, {})
            limits = settings.queues.get(name)
            flow = activity[name]
            queues[name] = {
                **{state.value: per_state.get(state, 0) for state in JobState},
                "paused": name in paused,
                "concurrency": limits.concurrency if limits else 0,
                "rate": limits.rate.text if limits and limits.rate else None,
                "burst": limits.rate.burst if limits and limits.rate else None,
                "global_concurrency": limits.global_concurrency if limits else None,
                "oldest_pending_age": _waited(flow.oldest_pending, now),
                "rates": {outcome.value: jobs / RATE_WINDOW for outcome, jobs in flow.ended.items()},
            }
        return {"queues": queues, "workers": {"busy": self._pool.busy, "capacity": self._pool.capacity}}

    def handlers(self) -> dict[str, Any]:
        settings = self._live.current
        items = []
        for job_type in sorted(settings.registry.handlers):
            handler = settings.registry.handlers[job_type]
            defaults = settings.type_defaults(job_type)
            items.append(
                {
                    "type": job_type,
                    "plugin": handler.plugin,
                    "queue": defaults.queue,
                    "timeout": defaults.timeout,
                    "max_attempts": defaults.max_attempts,
                }
            )
        return {"handlers": items}

    async def health(self) -> Health:
        store_ok = False
        if self._store_ready.is_set():
            with trio.move_on_after(HEALTH_TIMEOUT):
                try:
                    await self._opened_store.ping()
                    store_ok = True
                except StoreUnavailable:
                    pass
        body = {
            "status": "ok" if store_ok else "degraded",
            "version": __version__,
            "store": "ok" if store_ok else "unavailable",
            "workers": {"busy": self._pool.busy, "capacity": self._pool.capacity},
        }
        return Health(store_ok, body)

    def metrics(self) -> Exposition:
        self._metrics.set_workers(self._pool.busy, self._pool.capacity)
        return self._metrics.render()


def _waited(since: datetime | None, now: datetime) -> float | None:
    """Seconds a pending job has waited since its run_at (milliseconds kept), None for none.
    Another daemon's clock may be a little ahead of ours: never below 0."""
    return None if since is None else round(max(0.0, (now - since).total_seconds()), 3)


def _status(schedule: Schedule, record: ScheduleRecord | None, now: datetime) -> ScheduleStatus:
    paused = record is not None and record.paused
    next_run = None
    if schedule.enabled and not paused:
        next_run = schedule.next_run(now if record is None else record.counted_from, now)
    recurrence = schedule.recurrence
    return ScheduleStatus(
        name=schedule.name,
        cron=recurrence.cron,
        every=recurrence.every,
        timezone=recurrence.timezone,
        type=schedule.type,
        queue=schedule.queue,
        enabled=schedule.enabled,
        paused=paused,
        next_run=next_run,
        last_tick=None if record is None else record.last_tick,
        last_job_id=None if record is None else record.last_job_id,
    )


def _parse_id(job_id: str) -> uuid.UUID:
    try:
        return uuid.UUID(job_id)
    except ValueError:
        raise JobNotFound(job_id) from None


def _parse_wait(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not math.isfinite(seconds) or not 0 <= seconds <= MAX_WAIT:
        raise BadRequest(
            f"timeout must be a number of seconds from 0 to {MAX_WAIT:g}, got {text!r}", field="timeout"
        )
    return seconds


def _optional_seconds(body: Mapping[str, Any], name: str) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as error:
        raise InvalidJob(f"{name}: {error}", field=name) from None


def _optional_time(body: Mapping[str, Any], name: str) -> datetime | None:
    text = body.get(name)
    if text is None:
        return None
    if not isinstance(text, str):
        raise InvalidJob(f"{name} must be an RFC 3339 time such as 2026-01-31T12:00:00Z", field=name)
    try:
        return parse_time(text)
    except (ValueError, OverflowError):
        raise InvalidJob(f"{name} is not an RFC 3339 time: {text!r}", field=name) from None
