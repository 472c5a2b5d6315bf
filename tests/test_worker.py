"""The engine on a virtual clock: claiming, limits, retries, timeouts, cancels, shutdown, leases.

Everything runs in one Trio run on `MockClock(autojump_threshold=0)` against the memory
store, so seconds of back-off and timeouts take microseconds and nothing depends on luck.
"""

from __future__ import annotations

import gc
import itertools
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import trio
import trio.testing

import jobd
from jobd import builtins
from jobd.completer import CANCELLED_AT_SHUTDOWN
from jobd.config import parse_config
from jobd.daemon import build_engine
from jobd.errors import InvalidJob
from jobd.handlers import Handler, JobContext
from jobd.job import Job, JobState
from jobd.maintenance import Maintenance
from jobd.metrics import Metrics
from jobd.plugins import Registry
from jobd.service import CHECK_CHUNK, JobService
from jobd.settings import LiveSettings, build_settings
from jobd.store import CompletedAndClaimed, Completion, Inserted, InsertedAndClaimed, NewJob, Outcome
from jobd.store.memory import MemoryStore
from jobd.tracing import AttemptTracer
from jobd.worker import WorkerPool

EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


def virtual_now() -> datetime:
    return EPOCH + timedelta(seconds=trio.current_time())


@dataclass
class Engine:
    store: MemoryStore
    live: LiveSettings
    pool: WorkerPool
    service: JobService
    maintenance: Maintenance
    metrics: Metrics
    started: list[str] = field(default_factory=list)

    async def submit(self, job_type: str, payload: Any = None, **options: Any) -> Job:
        inserted = await self.service.submit({"type": job_type, "payload": payload, **options})
        return inserted.job

    async def wait(self, job: Job, timeout: float = 3600) -> Job:
        return await self.service.wait(str(job.id), str(timeout))


def make_registry(*handlers: Handler) -> Registry:
    found = {h.type: h.with_plugin("tests") for h in (*builtins.jobd_handlers(), *handlers)}
    return Registry(found)


@asynccontextmanager
async def running_engine(
    *handlers: Handler,
    config: dict[str, Any] | None = None,
    store: MemoryStore | None = None,
    tracer: AttemptTracer | None = None,
) -> AsyncIterator[Engine]:
    raw = {"store": {"url": "memory:"}, "retry": {"jitter": False}, **(config or {})}
    settings = build_settings(parse_config(raw, env={}, uid=1000), make_registry(*handlers))
    live = LiveSettings(settings)
    store = store or MemoryStore()
    metrics = Metrics("test")
    built = build_engine(store, live, metrics, owner="test-owner", clock=virtual_now, tracer=tracer)
    pool, maintenance, service = built.pool, built.maintenance, built.service
    service.mark_store_ready()
    engine = Engine(store, live, pool, service, maintenance, metrics)
    await maintenance.rescue_orphans()
    async with trio.open_nursery() as nursery:
        await nursery.start(maintenance.run)
        async with trio.open_nursery() as workers:
            await workers.start(lambda task_status: pool.run(grace=lambda: 5.0, task_status=task_status))
            yield engine
            pool.request_stop()
        # pool.run has returned: every job ended and its outcome is committed. Stop maintenance.
        nursery.cancel_scope.cancel()


def handler_of(job_type: str, function: Callable[[JobContext], Awaitable[Any]], **options: Any) -> Handler:
    return jobd.handler(job_type, **options)(function)


@pytest.fixture
def autojump(autojump_clock: trio.testing.MockClock) -> trio.testing.MockClock:
    return autojump_clock


async def test_a_submitted_job_runs_and_completes(autojump: object) -> None:
    async with running_engine() as engine:
        job = await engine.submit("jobd.noop", {"hello": ["world", 1]})
        assert job.state == JobState.PENDING
        done = await engine.wait(job)
        assert done.state == JobState.COMPLETED
        assert done.result == {"hello": ["world", 1]}
        assert done.attempts == 1
        assert done.started_at is not None and done.finished_at is not None


async def test_a_woken_worker_starts_a_job_without_waiting_for_a_poll(autojump: object) -> None:
    started: list[float] = []

    async def record(job: JobContext) -> None:
        started.append(trio.current_time())

    async with running_engine(
        handler_of("t.record", record), config={"workers": {"poll_interval": "1h"}}
    ) as engine:
        await trio.testing.wait_all_tasks_blocked()
        submitted_at = trio.current_time()
        await engine.wait(await engine.submit("t.record"))
        assert started and started[0] - submitted_at < 0.001


class ClaimOnInsertStore(MemoryStore):
    """Records which jobs were claimed in the same call that inserted a submit."""

    def __init__(self) -> None:
        super().__init__()
        self.claimed_on_insert: list[uuid.UUID] = []

    async def insert_and_claim_jobs(self, *args: Any, **kwargs: Any) -> Any:
        result = await super().insert_and_claim_jobs(*args, **kwargs)
        self.claimed_on_insert += [job.id for job in result.claimed]
        return result


async def test_a_job_submitted_to_an_idle_daemon_is_claimed_by_its_insert(autojump: object) -> None:
    store = ClaimOnInsertStore()
    async with running_engine(store=store, config={"workers": {"poll_interval": "1h"}}) as engine:
        await trio.testing.wait_all_tasks_blocked()
        job = await engine.submit("jobd.noop", "now")
        assert store.claimed_on_insert == [job.id]  # no second store call, no wake-up needed
        assert (await engine.wait(job)).state == JobState.COMPLETED
        # A paused queue: the insert claims nothing, and a lane claims it after the resume.
        await engine.service.pause("default")
        held = await engine.submit("jobd.noop", "held")
        assert store.claimed_on_insert == [job.id]
        await engine.service.resume("default")
        assert (await engine.wait(held)).state == JobState.COMPLETED


async def test_global_and_queue_concurrency_are_never_exceeded(autojump: object) -> None:
    running: dict[str, int] = {"all": 0, "slow": 0}
    peak: dict[str, int] = {"all": 0, "slow": 0}

    async def work(job: JobContext) -> None:
        keys = ["all", "slow"] if job.queue == "slow" else ["all"]
        for key in keys:
            running[key] += 1
            peak[key] = max(peak[key], running[key])
        await trio.sleep(1 + (hash(job.id) % 7) / 10)
        for key in keys:
            running[key] -= 1

    config = {"workers": {"concurrency": 5}, "queues": {"slow": {"concurrency": 2}}}
    async with running_engine(handler_of("t.work", work), config=config) as engine:
        jobs = [await engine.submit("t.work", queue="slow" if i % 2 else "default") for i in range(60)]
        for job in jobs:
            assert (await engine.wait(job)).state == JobState.COMPLETED
    assert peak == {"all": 5, "slow": 2}


async def test_claim_order_is_priority_then_run_at_then_submission(autojump: object) -> None:
    order: list[str] = []

    async def record(job: JobContext) -> None:
        order.append(job.payload)

    async with running_engine(handler_of("t.rec", record), config={"workers": {"concurrency": 1}}) as engine:
        await engine.service.pause("default")
        jobs = [
            await engine.submit("t.rec", "low-1", priority=-1),
            await engine.submit("t.rec", "mid-1"),
            await engine.submit("t.rec", "high", priority=5),
            await engine.submit("t.rec", "mid-2"),
            await engine.submit("t.rec", "low-2", priority=-1),
        ]
        await trio.sleep(5)
        assert order == []  # paused: accepted, not started
        await engine.service.resume("default")
        for job in jobs:
            await engine.wait(job)
    assert order == ["high", "mid-1", "mid-2", "low-1", "low-2"]


async def test_a_delayed_job_starts_when_due_and_not_before(autojump: object) -> None:
    started: list[float] = []

    async def record(job: JobContext) -> None:
        started.append(trio.current_time())

    async with running_engine(handler_of("t.rec", record)) as engine:
        t0 = trio.current_time()
        job = await engine.submit("t.rec", delay="90s")
        assert job.state == JobState.SCHEDULED
        await trio.sleep(89)
        assert started == []
        assert (await engine.store.get_job(job.id)).state == JobState.SCHEDULED  # type: ignore[union-attr]
        done = await engine.wait(job)
        assert done.state == JobState.COMPLETED
        assert 90 <= started[0] - t0 < 90.01


async def test_failures_back_off_exponentially_then_succeed(autojump: object) -> None:
    attempts: list[tuple[int, float]] = []

    async def flaky(job: JobContext) -> str:
        attempts.append((job.attempt, trio.current_time()))
        if job.attempt < 4:
            raise RuntimeError(f"boom {job.attempt}")
        return "ok"

    config = {"retry": {"base_delay": "2s", "max_delay": "5s", "jitter": False}}
    async with running_engine(handler_of("t.flaky", flaky, max_attempts=5), config=config) as engine:
        done = await engine.wait(await engine.submit("t.flaky"))
    assert done.state == JobState.COMPLETED and done.result == "ok" and done.attempts == 4
    assert done.last_error == "RuntimeError: boom 3"
    gaps = [round(b[1] - a[1], 3) for a, b in itertools.pairwise(attempts)]
    assert [n for n, _ in attempts] == [1, 2, 3, 4]
    assert gaps == [2.0, 4.0, 5.0]  # 2s, 4s, then capped at 5s


async def test_retry_fail_and_exhaustion(autojump: object) -> None:
    async def asks_retry(job: JobContext) -> None:
        raise jobd.Retry(delay=30, reason="not yet")

    async def gives_up(job: JobContext) -> None:
        raise jobd.Fail("bad input")

    handlers = (handler_of("t.retry", asks_retry, max_attempts=2), handler_of("t.fail", gives_up))
    async with running_engine(*handlers) as engine:
        t0 = trio.current_time()
        retried = await engine.wait(await engine.submit("t.retry"))
        assert retried.state == JobState.FAILED
        assert retried.attempts == 2
        assert "not yet" in (retried.last_error or "") and "no more left" in (retried.last_error or "")
        assert trio.current_time() - t0 >= 30  # the asked-for delay was honoured
        failed = await engine.wait(await engine.submit("t.fail"))
        assert failed.state == JobState.FAILED and failed.attempts == 1
        assert failed.last_error == "failed: bad input"


async def test_a_job_past_its_timeout_is_cancelled_and_retried(autojump: object) -> None:
    async def slow(job: JobContext) -> None:
        await trio.sleep(100)

    async with running_engine(handler_of("t.slow", slow, timeout="10s")) as engine:
        t0 = trio.current_time()
        job = await engine.submit("t.slow", max_attempts=2)
        assert job.timeout == 10
        done = await engine.wait(job)
        assert done.state == JobState.FAILED
        assert "timed out after 10s" in (done.last_error or "")
        assert trio.current_time() - t0 < 100  # never ran the full 100 s


async def test_request_options_win_over_config_and_decorator(autojump: object) -> None:
    async def noop(job: JobContext) -> None:
        return None

    config = {"handlers": {"t.opts": {"queue": "special", "max_attempts": 7}}}
    async with running_engine(
        handler_of("t.opts", noop, queue="other", timeout=3, max_attempts=2), config=config
    ) as e:
        from_config = await e.submit("t.opts")
        assert (from_config.queue, from_config.max_attempts, from_config.timeout) == ("special", 7, 3)
        from_request = await e.submit("t.opts", queue="default", max_attempts=1, timeout=9)
        assert (from_request.queue, from_request.max_attempts, from_request.timeout) == ("default", 1, 9)


async def test_cancel_a_waiting_job_finalises_it_at_once(autojump: object) -> None:
    async with running_engine() as engine:
        job = await engine.submit("jobd.noop", delay=60)
        cancelled = await engine.service.cancel(str(job.id))
        assert cancelled.state == JobState.CANCELLED and cancelled.finished_at is not None
        await trio.sleep(120)
        assert (await engine.service.get(str(job.id))).state == JobState.CANCELLED
        with pytest.raises(jobd.IllegalTransition):
            await engine.service.cancel(str(job.id))


async def test_cancel_a_running_job_cancels_its_handler_within_a_second(autojump: object) -> None:
    handler_started, handler_cancelled = trio.Event(), trio.Event()

    async def long(job: JobContext) -> None:
        handler_started.set()
        try:
            await trio.sleep(3600)
        finally:
            handler_cancelled.set()

    async with running_engine(handler_of("t.long", long)) as engine:
        job = await engine.submit("t.long")
        await handler_started.wait()
        t0 = trio.current_time()
        answer = await engine.service.cancel(str(job.id))
        assert answer.state in (JobState.RUNNING, JobState.CANCELLED)
        done = await engine.wait(job)
        assert handler_cancelled.is_set()
        assert done.state == JobState.CANCELLED
        assert done.last_error == "cancelled while running"
        assert trio.current_time() - t0 < 1


async def test_graceful_shutdown_finishes_short_jobs_and_requeues_long_ones(autojump: object) -> None:
    store = MemoryStore()

    async def sleeps(job: JobContext) -> None:
        await trio.sleep(job.payload)

    handler = handler_of("t.sleep", sleeps)
    async with running_engine(handler, store=store) as engine:
        short = await engine.submit("t.sleep", 2)
        long = await engine.submit("t.sleep", 60)
        await trio.sleep(0.5)
        assert engine.pool.busy == 2
    # running_engine stopped the pool with a 5 s grace
    short_job = await store.get_job(short.id)
    long_job = await store.get_job(long.id)
    assert short_job is not None and short_job.state == JobState.COMPLETED
    assert long_job is not None and long_job.state == JobState.PENDING
    assert long_job.attempts == 0  # the interrupted attempt was given back
    assert "shutdown" in (long_job.last_error or "")


class CancelLandsBeforeRequeueStore(MemoryStore):
    """Another daemon's cancel lands after this one stopped the handler for its shutdown and
    before the requeue reaches the store."""

    async def complete_jobs(self, completions: Sequence[Completion], now: datetime) -> list[bool]:
        for completion in completions:
            if completion.outcome == Outcome.REQUEUED:
                await self.cancel_job(completion.job_id, now)
        return await super().complete_jobs(completions, now)


async def test_a_cancel_landing_during_the_shutdown_ends_the_job_cancelled(autojump: object) -> None:
    store = CancelLandsBeforeRequeueStore()

    async def long(job: JobContext) -> None:
        await trio.sleep(3600)

    async with running_engine(handler_of("t.long", long), store=store) as engine:
        job = await engine.submit("t.long")
        await trio.sleep(0.5)
        assert engine.pool.busy == 1
    left = await store.get_job(job.id)
    assert left is not None
    assert (left.state, left.last_error) == (JobState.CANCELLED, CANCELLED_AT_SHUTDOWN)
    assert (
        engine.metrics.registry.get_sample_value(
            "jobd_jobs_finished_total", {"queue": "default", "type": "t.long", "outcome": "cancelled"}
        )
        == 1
    )


async def test_long_polls_take_at_most_half_the_connections(autojump: object) -> None:
    async def long(job: JobContext) -> None:
        await trio.sleep(3600)

    config = {"api": {"max_connections": 5}}  # two long polls at once
    engine_running = running_engine(handler_of("t.long", long), config=config)
    async with engine_running as engine, trio.open_nursery() as polls:
        job = await engine.submit("t.long")
        done = await engine.wait(await engine.submit("jobd.noop"))
        answers: list[Job] = []

        async def poll() -> None:
            answers.append(await engine.wait(job, timeout=60))

        polls.start_soon(poll)
        polls.start_soon(poll)
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(jobd.Overloaded) as caught:
            await engine.wait(job, timeout=60)
        assert caught.value.limit == 2
        assert await engine.wait(done) == done  # a finished job's answer takes no share
        assert (await engine.wait(job, timeout=0)).state == JobState.RUNNING  # neither does a timeout of 0
        await engine.service.cancel(str(job.id))
        await trio.testing.wait_all_tasks_blocked()
        assert [answer.state for answer in answers] == [JobState.CANCELLED] * 2
        assert (await engine.wait(job, timeout=60)).state == JobState.CANCELLED


def frames_here() -> frozenset[int]:
    """The ids of the frames on this thread's stack, as the loop watch reads them."""
    frame, ids = sys._getframe(), set()
    while frame is not None:
        ids.add(id(frame))
        frame = frame.f_back
    return frozenset(ids)


async def test_the_job_on_the_event_loops_stack_is_found_in_its_tasks_children_too(autojump: object) -> None:
    found: list[Job | None] = []

    async def nested(job: JobContext) -> None:
        found.append(pool.job_on_stack(frames_here()))  # in the handler's own task
        async with trio.open_nursery() as nursery:  # and in a task the handler started

            async def child() -> None:
                found.append(pool.job_on_stack(frames_here()))

            nursery.start_soon(child)

    async with running_engine(handler_of("t.nested", nested)) as engine:
        pool = engine.pool
        job = await engine.submit("t.nested")
        await engine.wait(job)
        assert pool.job_on_stack(frames_here()) is None  # the test's own task runs no job
    assert [each.id if each else None for each in found] == [job.id, job.id]


async def test_a_handler_exception_never_stops_the_pool(autojump: object) -> None:
    async def explode(job: JobContext) -> None:
        raise ZeroDivisionError("x")

    async def bad_result(job: JobContext) -> object:
        return object()

    handlers = (
        handler_of("t.explode", explode, max_attempts=1),
        handler_of("t.bad", bad_result, max_attempts=1),
    )
    async with running_engine(*handlers) as engine:
        assert (await engine.wait(await engine.submit("t.explode"))).state == JobState.FAILED
        bad = await engine.wait(await engine.submit("t.bad"))
        assert bad.state == JobState.FAILED and "not JSON" in (bad.last_error or "")
        assert (await engine.wait(await engine.submit("jobd.noop", 1))).result == 1


async def test_progress_is_stored_on_the_job(autojump: object) -> None:
    seen = trio.Event()
    go_on = trio.Event()

    async def reports(job: JobContext) -> str:
        await job.progress(0.25, "a quarter")
        seen.set()
        await go_on.wait()
        return "done"

    async with running_engine(handler_of("t.progress", reports)) as engine:
        job = await engine.submit("t.progress")
        await seen.wait()
        during = await engine.service.get(str(job.id))
        assert during.progress is not None and during.progress.fraction == 0.25
        assert during.progress.message == "a quarter"
        go_on.set()
        assert (await engine.wait(job)).result == "done"


async def test_a_job_whose_lease_is_lost_is_stopped_and_its_outcome_discarded(autojump: object) -> None:
    started, stopped = trio.Event(), trio.Event()

    async def long(job: JobContext) -> None:
        started.set()
        try:
            await trio.sleep(3600)
        finally:
            stopped.set()

    async with running_engine(handler_of("t.long", long), config={"workers": {"lease": "30s"}}) as engine:
        job = await engine.submit("t.long", max_attempts=1)
        await started.wait()
        # Another daemon decides this one is dead and takes the job over.
        rescued = await engine.store.rescue_jobs(virtual_now(), all_running=True)
        assert [r.job.state for r in rescued] == [JobState.FAILED]
        with trio.fail_after(30):
            await stopped.wait()  # the lease keeper noticed within a renewal period
        await trio.sleep(1)
        final = await engine.store.get_job(job.id)
        assert final is not None and final.state == JobState.FAILED
        assert "lease expired" in (final.last_error or "")


async def test_orphans_of_a_killed_daemon_are_rescued_at_start(autojump: object) -> None:
    store = MemoryStore()
    now = virtual_now()
    new = NewJob(uuid.uuid4(), "jobd.noop", "default", 1, 0, now, 3, None, None, now)
    last = NewJob(uuid.uuid4(), "jobd.noop", "default", 2, 0, now, 1, None, None, now)
    await store.insert_jobs([new, last])
    from jobd.store import QueueSlots

    await store.claim_jobs("dead-daemon", [QueueSlots("default", 10)], 10, now, now + timedelta(hours=1))
    async with running_engine(store=store) as engine:
        assert (await engine.wait(await engine.service.get(str(new.id)))).state == JobState.COMPLETED
        again = await engine.service.get(str(new.id))
        assert again.attempts == 2  # the killed attempt counted, then it ran again
        lost = await engine.service.get(str(last.id))
        assert lost.state == JobState.FAILED and "dead-daemon" in (lost.last_error or "")


async def test_retry_of_a_failed_job_runs_it_again(autojump: object) -> None:
    calls: list[int] = []

    async def once_bad(job: JobContext) -> None:
        calls.append(job.attempt)
        if len(calls) == 1:
            raise jobd.Fail("first time")

    async with running_engine(handler_of("t.once", once_bad)) as engine:
        failed = await engine.wait(await engine.submit("t.once"))
        assert failed.state == JobState.FAILED
        again = await engine.service.retry(str(failed.id))
        assert again.state == JobState.PENDING and again.attempts == 0
        done = await engine.wait(again)
        assert done.state == JobState.COMPLETED and done.attempts == 1
        with pytest.raises(jobd.IllegalTransition):
            await engine.service.retry(str(failed.id))


async def test_a_retry_starts_when_its_back_off_ends_not_at_the_next_poll(autojump: object) -> None:
    starts: list[float] = []

    async def twice(job: JobContext) -> None:
        starts.append(trio.current_time())
        if job.attempt == 1:
            raise jobd.Retry(delay=0.3)

    hour_poll = {"workers": {"poll_interval": "1h"}}
    async with running_engine(handler_of("t.twice", twice), config=hour_poll) as engine:
        done = await engine.wait(await engine.submit("t.twice"))
    assert done.state == JobState.COMPLETED and done.attempts == 2
    assert 0.3 <= starts[1] - starts[0] < 0.31


async def test_metrics_move_as_jobs_submit_finish_retry_and_cancel(autojump: object) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    async def flaky(job: JobContext) -> None:
        if job.attempt == 1:
            raise RuntimeError("first attempt fails")

    async def hopeless(job: JobContext) -> None:
        raise jobd.Fail("never")

    handlers = (handler_of("t.flaky", flaky), handler_of("t.hopeless", hopeless))
    async with running_engine(*handlers) as engine:
        await engine.wait(await engine.submit("t.flaky"))
        await engine.wait(await engine.submit("t.hopeless"))
        waiting = await engine.submit("jobd.noop", delay=60)
        await engine.service.cancel(str(waiting.id))
        await engine.maintenance.refresh_gauges()
        exposition = engine.service.metrics()
    assert exposition.content_type.startswith("text/plain")
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(exposition.body.decode())
        for sample in family.samples
    }

    def value(name: str, **labels: str) -> float:
        return samples.get((name, tuple(sorted(labels.items()))), 0.0)

    assert value("jobd_jobs_submitted_total", queue="default", type="t.flaky") == 1
    assert value("jobd_jobs_finished_total", queue="default", type="t.flaky", outcome="retried") == 1
    assert value("jobd_jobs_finished_total", queue="default", type="t.flaky", outcome="completed") == 1
    assert value("jobd_jobs_finished_total", queue="default", type="t.hopeless", outcome="failed") == 1
    assert value("jobd_jobs_finished_total", queue="default", type="jobd.noop", outcome="cancelled") == 1
    assert value("jobd_job_duration_seconds_count", queue="default", type="t.flaky") == 2
    assert value("jobd_job_wait_seconds_count", queue="default") == 3
    assert value("jobd_jobs", queue="default", state="completed") == 1
    assert value("jobd_jobs", queue="default", state="cancelled") == 1
    assert value("jobd_workers_capacity") == 10


def sample_values(engine: Engine) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(engine.service.metrics().body.decode())
        for sample in family.samples
    }


def metric(engine: Engine, name: str, **labels: str) -> float | None:
    return sample_values(engine).get((name, tuple(sorted(labels.items()))))


async def test_oldest_pending_age_is_the_wait_of_the_queue_s_oldest_ready_job(autojump: object) -> None:
    async with running_engine(config={"queues": {"slow": {}}}) as engine:
        await engine.maintenance.refresh_gauges()
        assert metric(engine, "jobd_oldest_pending_job_age_seconds", queue="default") == 0
        await engine.service.pause("default")
        await engine.submit("jobd.noop")
        await trio.sleep(30)
        await engine.submit("jobd.noop")
        await engine.submit("jobd.noop", delay=5)  # scheduled, then pending from its run_at on
        await trio.sleep(12)
        await engine.maintenance.refresh_gauges()
        assert metric(engine, "jobd_oldest_pending_job_age_seconds", queue="default") == pytest.approx(42)
        assert metric(engine, "jobd_oldest_pending_job_age_seconds", queue="slow") == 0
        await engine.service.resume("default")
        await trio.sleep(1)
        await engine.maintenance.refresh_gauges()
        assert metric(engine, "jobd_oldest_pending_job_age_seconds", queue="default") == 0


async def test_store_calls_are_timed_once_per_call_not_per_job(autojump: object) -> None:
    async with running_engine() as engine:

        def calls(operation: str) -> float:
            return metric(engine, "jobd_store_call_duration_seconds_count", operation=operation) or 0

        before = {operation: calls(operation) for operation in ("complete", "insert")}
        inserted = await engine.service.submit_batch({"jobs": [{"type": "jobd.noop"} for _ in range(50)]})
        assert calls("insert") == before["insert"] + 1
        for item in inserted:
            await engine.wait(item.job)
        # 50 outcomes recorded in batches: far fewer calls than jobs.
        assert before["complete"] < calls("complete") < before["complete"] + 50


async def test_a_batch_counts_each_queue_and_type_it_created_jobs_of(autojump: object) -> None:
    config = {"queues": {"default": {}, "mail": {}}}
    async with running_engine(config=config) as engine:
        await engine.service.submit({"type": "jobd.noop", "key": "held", "delay": 60})
        batch = [
            *({"type": "jobd.noop", "delay": 60} for _ in range(3)),
            {"type": "jobd.noop", "queue": "mail", "delay": 60},
            {"type": "jobd.sleep", "queue": "mail", "payload": {"seconds": 0}, "delay": 60},
            {"type": "jobd.sleep", "queue": "mail", "payload": {"seconds": 0}, "delay": 60},
            {"type": "jobd.noop", "key": "held", "delay": 60},  # returns the job that holds it
        ]
        await engine.service.submit_batch({"jobs": batch})

        def submitted(queue: str, job_type: str) -> float | None:
            return metric(engine, "jobd_jobs_submitted_total", queue=queue, type=job_type)

        assert (submitted("default", "jobd.noop"), submitted("mail", "jobd.noop")) == (4, 1)
        assert (submitted("mail", "jobd.sleep"), submitted("default", "jobd.sleep")) == (2, None)


class ChunkedMemoryStore(MemoryStore):
    """A memory store that counts its chunked inserts, and asks for them as PostgreSQL's
    does unless `chunked` is false (as the memory store itself: nothing to overlap)."""

    def __init__(self, *, chunked: bool = True) -> None:
        super().__init__()
        self.chunked_inserts = chunked  # type: ignore[misc]
        self.chunked_calls = 0

    async def insert_job_chunks(self, chunks: Iterator[Sequence[NewJob]]) -> list[Inserted]:
        self.chunked_calls += 1
        return await super().insert_job_chunks(chunks)


async def test_a_batch_larger_than_a_chunk_is_inserted_whole_in_order_by_one_store_call(
    autojump: object,
) -> None:
    size = CHECK_CHUNK * 2 + 100
    store = ChunkedMemoryStore()
    # No poll that would find the jobs: only the insert's wake-up starts them.
    async with running_engine(store=store, config={"workers": {"poll_interval": "1h"}}) as engine:
        batch = [{"type": "jobd.noop", "payload": n} for n in range(size)]
        inserted = await engine.service.submit_batch({"jobs": batch})
        assert [item.job.payload for item in inserted] == list(range(size))
        assert store.chunked_calls == 1
        with trio.fail_after(60):
            for item in inserted:
                assert (await engine.wait(item.job)).state == JobState.COMPLETED


async def test_a_bad_item_in_a_later_chunk_refuses_the_whole_batch_naming_it(autojump: object) -> None:
    items: list[dict[str, Any]] = [{"type": "jobd.noop"} for _ in range(CHECK_CHUNK * 2 + 100)]
    items[CHECK_CHUNK * 2 + 50] = {"type": "jobd.noop", "priority": "high"}
    store = ChunkedMemoryStore()
    async with running_engine(store=store) as engine:
        with pytest.raises(InvalidJob, match="priority must be a whole number") as raised:
            await engine.service.submit_batch({"jobs": items})
        assert raised.value.index == CHECK_CHUNK * 2 + 50
        assert store.chunked_calls == 1
        assert await engine.store.count_jobs() == {}


async def test_a_large_batch_goes_whole_with_a_key_or_to_a_store_that_does_not_chunk(
    autojump: object,
) -> None:
    items: list[dict[str, Any]] = [{"type": "jobd.noop", "delay": 60} for _ in range(CHECK_CHUNK + 1)]
    chunking = ChunkedMemoryStore()
    async with running_engine(store=chunking) as engine:
        held = await engine.service.submit({"type": "jobd.noop", "key": "held", "delay": 60})
        inserted = await engine.service.submit_batch({"jobs": [*items, {"type": "jobd.noop", "key": "held"}]})
        assert (inserted[-1].created, inserted[-1].job.id) == (False, held.job.id)
        assert sum(item.created for item in inserted) == CHECK_CHUNK + 1
        assert chunking.chunked_calls == 0
    plain = ChunkedMemoryStore(chunked=False)
    async with running_engine(store=plain) as engine:
        assert len(await engine.service.submit_batch({"jobs": items})) == CHECK_CHUNK + 1
        assert plain.chunked_calls == 0


async def test_rescues_and_fenced_outcomes_are_counted(autojump: object) -> None:
    store = MemoryStore()
    now = virtual_now()
    orphan = NewJob(uuid.uuid4(), "jobd.noop", "default", 1, 0, now, 3, None, None, now)
    await store.insert_jobs([orphan])
    from jobd.store import QueueSlots

    await store.claim_jobs("dead-daemon", [QueueSlots("default", 10)], 10, now, now + timedelta(hours=1))
    started, finish = trio.Event(), trio.Event()

    async def waits(job: JobContext) -> None:
        started.set()
        await finish.wait()

    async with running_engine(handler_of("t.waits", waits), store=store) as engine:
        await engine.maintenance.refresh_gauges()
        assert metric(engine, "jobd_jobs_rescued_total", queue="default") == 1  # the orphan, at start
        assert metric(engine, "jobd_completions_discarded_total", queue="default") == 0
        await engine.wait(await engine.service.get(str(orphan.id)))
        job = await engine.submit("t.waits")
        await started.wait()
        # Another daemon takes the job over; the handler ends before this one notices.
        await engine.store.rescue_jobs(virtual_now(), all_running=True)
        finish.set()
        await trio.sleep(1)
        assert metric(engine, "jobd_completions_discarded_total", queue="default") == 1
        assert (await engine.service.get(str(job.id))).attempts == 2  # claimed again after its rescue


async def test_stats_show_each_queue_s_limits_oldest_pending_job_and_rates(autojump: object) -> None:
    async def flaky(job: JobContext) -> None:
        if job.attempt == 1:
            raise jobd.Retry(delay=0.5)

    async def hopeless(job: JobContext) -> None:
        raise jobd.Fail("never")

    handlers = (handler_of("t.flaky", flaky), handler_of("t.hopeless", hopeless))
    config = {"queues": {"email": {"concurrency": 2, "global_concurrency": 4}}}
    async with running_engine(*handlers, config=config) as engine:
        await engine.service.pause("email")
        await engine.submit("jobd.noop", queue="email")
        first_submitted = trio.current_time()
        await trio.sleep(3.25)
        await engine.submit("jobd.noop", queue="email")
        for job_type in ("jobd.noop", "jobd.noop", "t.flaky", "t.hopeless"):
            await engine.wait(await engine.submit(job_type))
        await trio.sleep(1)  # the seconds those jobs ended in are over: inside the window now
        before = (await engine.service.stats())["queues"]
        waited = trio.current_time() - first_submitted
        await trio.sleep(10)
        after = (await engine.service.stats())["queues"]
    assert before["email"]["oldest_pending_age"] == pytest.approx(waited, abs=0.001)
    assert after["email"]["oldest_pending_age"] == pytest.approx(waited + 10, abs=0.001)
    assert (before["email"]["concurrency"], before["email"]["global_concurrency"]) == (2, 4)
    assert (before["default"]["concurrency"], before["default"]["global_concurrency"]) == (10, None)
    assert before["default"]["oldest_pending_age"] is None
    assert before["default"]["rates"] == {"completed": 0.3, "failed": 0.1, "retried": 0.1}
    assert before["email"]["rates"] == {"completed": 0.0, "failed": 0.0, "retried": 0.0}
    assert after["default"]["rates"] == {"completed": 0.0, "failed": 0.0, "retried": 0.0}


async def test_unstorable_results_and_bad_signals_fail_the_attempt_not_the_daemon(autojump: object) -> None:
    bad_results = {"nul": {"text": "a\x00b"}, "inf": float("inf"), "surrogate": "\ud800"}

    async def returns(job: JobContext) -> object:
        return bad_results[job.payload]

    async def bad_retry(job: JobContext) -> None:
        raise jobd.Retry(delay=float("nan"))

    async def huge_retry(job: JobContext) -> None:
        raise jobd.Retry(delay=1e12)

    async def exits(job: JobContext) -> None:
        raise SystemExit(3)

    handlers = (
        handler_of("t.returns", returns, max_attempts=1),
        handler_of("t.bad_retry", bad_retry, max_attempts=1),
        handler_of("t.huge_retry", huge_retry, max_attempts=2),
        handler_of("t.exits", exits, max_attempts=1),
    )
    async with running_engine(*handlers) as engine:
        for give, reason in (("nul", "NUL"), ("inf", "Out of range"), ("surrogate", "surrogates")):
            failed = await engine.wait(await engine.submit("t.returns", give))
            assert failed.state == JobState.FAILED and reason in (failed.last_error or ""), failed.last_error
        nan = await engine.wait(await engine.submit("t.bad_retry"))
        assert nan.state == JobState.FAILED and "ValueError" in (nan.last_error or "")
        huge = await engine.store.get_job((await engine.submit("t.huge_retry")).id)
        while huge is not None and huge.state != JobState.SCHEDULED:
            await trio.sleep(0.01)
            huge = await engine.store.get_job(huge.id)
        assert huge is not None and huge.run_at < virtual_now() + timedelta(days=366)  # capped
        exited = await engine.wait(await engine.submit("t.exits"))
        assert exited.state == JobState.FAILED and "SystemExit" in (exited.last_error or "")
        assert (await engine.wait(await engine.submit("jobd.noop", 5))).result == 5


async def test_submits_that_would_overflow_are_refused_by_field(autojump: object) -> None:
    async with running_engine() as engine:
        for options, field in (
            ({"delay": 1e12}, "delay"),
            ({"run_at": "0001-01-01T00:00:00+01:00"}, "run_at"),
            ({"payload": "\ud800"}, "payload"),
            ({"payload": {"k": "a\x00"}}, "payload"),
            ({"payload": {"k": [None, float("inf")]}}, "payload"),  # JSON's 1e999 parses as inf
            ({"payload": [2**70, float("-inf")]}, "payload"),
            ({"payload": {"at": datetime(2030, 1, 1, tzinfo=UTC)}}, "payload"),  # orjson would write these
            ({"payload": [uuid.uuid4()]}, "payload"),
            ({"key": "k\x00"}, "key"),
            ({"key": "\ud800"}, "key"),
            ({"queue": "q\x00"}, "queue"),
        ):
            with pytest.raises(jobd.InvalidJob) as caught:
                await engine.service.submit({"type": "jobd.noop", **options})
            assert caught.value.field == field
        with pytest.raises(jobd.errors.BadRequest) as bad:
            await engine.service.list_jobs({"type": "a\x00"})
        assert bad.value.field == "type"


async def test_a_submit_that_starts_its_jobs_answers_once_their_handlers_began(autojump: object) -> None:
    began: list[uuid.UUID] = []

    async def record(job: JobContext) -> None:
        began.append(job.id)
        await trio.sleep(60)

    config = {"workers": {"concurrency": 2}}
    async with running_engine(handler_of("t.record", record), config=config) as engine:
        job = await engine.submit("t.record")
        assert began == [job.id]  # no scheduler pass between the answer and this line
        batch = await engine.service.submit_batch({"jobs": [{"type": "t.record"} for _ in range(3)]})
        # One slot was left: its job began before the answer. No job of the queue has
        # ended yet, so none is claimed ahead: the other two stay pending in the store.
        assert began == [job.id, batch[0].job.id]
        engine.pool.request_stop()


async def test_a_null_timeout_means_the_default(autojump: object) -> None:
    async def quick(job: JobContext) -> None:
        return None

    async with running_engine(handler_of("t.quick", quick, timeout=7)) as engine:
        assert (await engine.submit("t.quick", timeout=None)).timeout == 7


class SlowClaimStore(MemoryStore):
    """Claims take a second to come back, as a busy store's would; submits only insert."""

    async def insert_and_claim_jobs(self, jobs: Any, claim: Any, now: Any) -> InsertedAndClaimed:
        return InsertedAndClaimed(await self.insert_jobs(jobs), [])

    async def complete_and_claim_jobs(self, *args: Any, **kwargs: Any) -> CompletedAndClaimed:
        exchanged = await super().complete_and_claim_jobs(*args, **kwargs)
        if exchanged.claimed:
            await trio.sleep(1)
        return exchanged


async def test_a_cancel_during_the_claim_still_stops_the_job_soon(autojump: object) -> None:
    async def long(job: JobContext) -> None:
        await trio.sleep(3600)

    async with running_engine(handler_of("t.long", long), store=SlowClaimStore()) as engine:
        job = await engine.submit("t.long")
        await trio.sleep(0.5)  # claimed in the store, the claim not yet back
        assert (await engine.service.get(str(job.id))).state == JobState.RUNNING
        assert engine.pool.busy == 0
        await engine.service.cancel(str(job.id))
        t0 = trio.current_time()
        done = await engine.wait(job)
        assert done.state == JobState.CANCELLED
        assert trio.current_time() - t0 < 2


async def test_a_shutdown_with_the_store_down_gives_up_instead_of_hanging(autojump: object) -> None:
    from jobd.errors import StoreUnavailable

    class DownStore(MemoryStore):
        down = False

        async def complete_jobs(self, *args: Any, **kwargs: Any) -> list[bool]:
            if self.down:
                raise StoreUnavailable("the store is down")
            return await super().complete_jobs(*args, **kwargs)

    store = DownStore()
    started = trio.Event()

    async def long(job: JobContext) -> None:
        started.set()
        await trio.sleep(3600)

    t0 = 0.0
    async with running_engine(handler_of("t.long", long), store=store) as engine:
        job = await engine.submit("t.long")
        await started.wait()
        store.down = True
        t0 = trio.current_time()
    # 5 s of grace, then the outcome could not be written: given up after 10 s more.
    assert trio.current_time() - t0 < 30
    left = await store.get_job(job.id)
    assert left is not None and left.state == JobState.RUNNING  # rescued at the next start


async def test_jobs_in_a_queue_no_longer_served_are_reported(
    autojump: object, caplog: pytest.LogCaptureFixture
) -> None:
    store = MemoryStore()
    now = virtual_now()
    await store.insert_jobs([NewJob(uuid.uuid4(), "jobd.noop", "gone", None, 0, now, 3, None, None, now)])
    async with running_engine(store=store) as engine:
        await engine.maintenance.refresh_gauges()
        await engine.maintenance.refresh_gauges()
    warnings = [r.getMessage() for r in caplog.records if "does not serve" in r.getMessage()]
    assert len(warnings) == 1 and "'gone'" in warnings[0]


async def test_a_rate_limited_queue_starts_each_job_when_its_token_is_due_not_at_the_poll(
    autojump: object,
) -> None:
    started: list[float] = []

    async def record(job: JobContext) -> None:
        started.append(trio.current_time())

    config = {
        "workers": {"poll_interval": "1h"},
        "queues": {"webhooks": {"rate": "4/s", "burst": 2}},
    }
    async with running_engine(handler_of("t.hook", record, queue="webhooks"), config=config) as engine:
        await trio.testing.wait_all_tasks_blocked()
        t0 = trio.current_time()
        jobs = [await engine.submit("t.hook", n) for n in range(6)]
        for job in jobs:
            assert (await engine.wait(job)).state == JobState.COMPLETED
        rate_limited = engine.metrics.registry.get_sample_value(
            "jobd_queue_rate_limited_total", {"queue": "webhooks"}
        )
        queues = (await engine.service.stats())["queues"]
        assert (queues["webhooks"]["rate"], queues["webhooks"]["burst"]) == ("4/s", 2)
        assert (queues["default"]["rate"], queues["default"]["burst"]) == (None, None)
    # The burst at once, then one start per quarter second: each at its token's time, not
    # an hour later at the next poll.
    assert [round(at - t0, 6) for at in started] == [0, 0, 0.25, 0.5, 0.75, 1.0]
    assert rate_limited is not None and rate_limited >= 4


async def test_a_reloaded_rate_applies_from_the_next_claim(autojump: object) -> None:
    started: list[float] = []

    async def record(job: JobContext) -> None:
        started.append(trio.current_time())

    handler = handler_of("t.hook", record, queue="webhooks")
    config = {"workers": {"poll_interval": "1h"}, "queues": {"webhooks": {"rate": "1/m"}}}
    async with running_engine(handler, config=config) as engine:
        await trio.testing.wait_all_tasks_blocked()
        t0 = trio.current_time()
        jobs = [await engine.submit("t.hook", n) for n in range(3)]
        await trio.sleep(1)
        assert len(started) == 1  # one a minute
        faster = {**config, "queues": {"webhooks": {"rate": "10/s", "burst": 1}}}
        raw = {"store": {"url": "memory:"}, **faster}
        registry = engine.live.current.registry
        engine.live.current = build_settings(parse_config(raw, env={}, uid=1000), registry)
        engine.pool.wake()  # what a reload does
        for job in jobs:
            await engine.wait(job)
    # The new rate counts from the bucket's last change: at 10/s the second at once (the
    # bucket holds one token at most), the third a tenth of a second later.
    assert [round(at - t0, 6) for at in started] == [0, 1.0, 1.1]


class RoundTripStore(MemoryStore):
    """Each round takes `ROUND` seconds, as a store over a network would; records how many
    jobs each round asked for, and the most jobs the store showed running."""

    ROUND = 0.01

    def __init__(self) -> None:
        super().__init__()
        self.limits: list[int] = []
        self.most_running = 0

    async def complete_and_claim_jobs(self, completions: Any, claim: Any, now: Any) -> CompletedAndClaimed:
        await trio.sleep(self.ROUND)
        self.limits.append(claim.limit)
        exchanged = await super().complete_and_claim_jobs(completions, claim, now)
        running = sum(counts.get(JobState.RUNNING, 0) for counts in (await self.count_jobs()).values())
        self.most_running = max(self.most_running, running)
        return exchanged


async def drain_timed(engine: Engine, jobs: Sequence[Job]) -> float:
    """Resume the paused default queue; the virtual seconds until every job completed."""
    began = trio.current_time()
    await engine.service.resume("default")
    for job in jobs:
        assert (await engine.wait(job)).state == JobState.COMPLETED
    return trio.current_time() - began


async def test_short_jobs_are_claimed_ahead_and_start_as_slots_free_never_more_at_once(
    autojump: object,
) -> None:
    busy: list[int] = []
    order: list[int] = []

    async def short(job: JobContext) -> None:
        busy.append(engine.pool.busy)
        order.append(job.payload)
        await trio.sleep(0.001)

    store = RoundTripStore()
    config = {"workers": {"concurrency": 4}}
    async with running_engine(handler_of("t.short", short), config=config, store=store) as engine:
        await engine.service.pause("default")
        warm = [await engine.submit("t.short", -1) for _ in range(8)]  # the pool learns run times
        await drain_timed(engine, warm)
        await engine.service.pause("default")
        jobs = [await engine.submit("t.short", i, priority=i % 3) for i in range(120)]
        claims_before = len(store.limits)
        elapsed = await drain_timed(engine, jobs)
    assert max(store.limits[claims_before:]) > 4 and store.most_running > 4  # claimed ahead
    assert max(busy) == 4  # ... and started only as slots freed
    # 120 jobs of 1 ms on 4 slots and 10 ms rounds: 0.35 s when no job is claimed ahead (a
    # slot waits a round trip to be refilled), 0.18 s with them.
    assert elapsed < 0.25
    # Claims take the highest priority first, and jobs held ahead start in that order (up
    # to the order Trio runs the tasks of one batch of freed slots in).
    position = {payload: index for index, payload in enumerate(order[8:])}
    assert sorted(position) == list(range(120))
    highest = [position[i] for i in range(120) if i % 3 == 2]
    lowest = [position[i] for i in range(120) if i % 3 == 0]
    assert max(highest) < min(lowest)


async def test_long_jobs_are_not_claimed_ahead(autojump: object) -> None:
    async def slow(job: JobContext) -> None:
        await trio.sleep(0.5)

    store = RoundTripStore()
    async with running_engine(
        handler_of("t.slow", slow), config={"workers": {"concurrency": 4}}, store=store
    ) as engine:
        jobs = [await engine.submit("t.slow") for _ in range(24)]
        for job in jobs:
            assert (await engine.wait(job)).state == JobState.COMPLETED
    # A round (10 ms) frees a slot of 500 ms jobs far less than once: no job waits ahead.
    assert store.most_running == 4
    assert max(store.limits) <= 4


async def test_a_rate_limited_queue_is_not_claimed_ahead(autojump: object) -> None:
    async def short(job: JobContext) -> None:
        await trio.sleep(0.001)

    store = RoundTripStore()
    config = {"workers": {"concurrency": 4}, "queues": {"default": {"concurrency": 4, "rate": "1000/s"}}}
    async with running_engine(handler_of("t.short", short), config=config, store=store) as engine:
        jobs = [await engine.submit("t.short") for _ in range(60)]
        for job in jobs:
            assert (await engine.wait(job)).state == JobState.COMPLETED
    # Its starts are counted where they are claimed: jobs held ahead would start late.
    assert store.most_running == 4


@asynccontextmanager
async def one_slot_engine(store: MemoryStore, ran: list[float]) -> AsyncIterator[Engine]:
    """Concurrency 1; a `t.job` sleeps its payload's seconds, and `ran` lists its runs."""

    async def sleep_for(job: JobContext) -> None:
        ran.append(job.payload)
        await trio.sleep(job.payload)

    config = {"workers": {"concurrency": 1}}
    async with running_engine(handler_of("t.job", sleep_for), config=config, store=store) as engine:
        yield engine


async def warm_and_block(engine: Engine, blocker_seconds: float) -> tuple[Job, Job]:
    """With concurrency 1: teach the pool that jobs are short, then claim a long job and a
    short one behind it in one round: the short one waits ahead for the slot."""
    await engine.service.pause("default")
    warm = [await engine.submit("t.job", 0.001) for _ in range(4)]
    await drain_timed(engine, warm)
    await engine.service.pause("default")
    blocker = await engine.submit("t.job", blocker_seconds, priority=1)
    behind = await engine.submit("t.job", 0.001)
    await engine.service.resume("default")
    await trio.sleep(1)
    assert engine.pool.busy == 1
    assert (await engine.service.get(str(blocker.id))).state == JobState.RUNNING
    assert (await engine.service.get(str(behind.id))).state == JobState.RUNNING  # claimed ahead
    return blocker, behind


async def test_a_job_cancelled_while_it_waits_ahead_ends_cancelled_without_running(
    autojump: object,
) -> None:
    ran: list[float] = []
    async with one_slot_engine(RoundTripStore(), ran) as engine:
        blocker, behind = await warm_and_block(engine, 60.0)
        t0 = trio.current_time()
        await engine.service.cancel(str(behind.id))
        done = await engine.wait(behind)
        assert done.state == JobState.CANCELLED
        assert trio.current_time() - t0 < 1
        assert ran == [0.001] * 4 + [60.0]  # its handler never ran
        await engine.service.cancel(str(blocker.id))
        assert (await engine.wait(blocker)).state == JobState.CANCELLED


async def test_a_shutdown_requeues_jobs_waiting_ahead_at_once_and_keeps_their_attempt(
    autojump: object,
) -> None:
    ran: list[float] = []
    store = RoundTripStore()
    async with one_slot_engine(store, ran) as engine:
        blocker, behind = await warm_and_block(engine, 3.0)
        engine.pool.request_stop()
        await trio.sleep(1)
        # The running job has its grace (5 s); the one that never started is back in the
        # queue at once.
        requeued = await engine.service.get(str(behind.id))
        assert requeued.state == JobState.PENDING
        assert requeued.attempts == 0
        assert (await engine.service.get(str(blocker.id))).state == JobState.RUNNING
    assert ran == [0.001] * 4 + [3.0]
    finished = await store.get_job(blocker.id)
    assert finished is not None and finished.state == JobState.COMPLETED


async def test_a_job_stopped_while_it_waits_ahead_never_gets_the_slot_that_frees_with_it(
    autojump: object,
) -> None:
    ran: list[float] = []
    release = trio.Event()
    cancel_when_released: list[uuid.UUID] = []

    async def job_of(job: JobContext) -> None:
        ran.append(job.payload)
        if job.payload == 60.0:
            await release.wait()
            # The cancel lands in the very step in which this handler ends and frees its slot.
            engine.pool.cancel_running(cancel_when_released[0])
        else:
            await trio.sleep(job.payload)

    config = {"workers": {"concurrency": 1}}
    async with running_engine(handler_of("t.job", job_of), config=config, store=RoundTripStore()) as engine:
        blocker, behind = await warm_and_block(engine, 60.0)
        cancel_when_released.append(behind.id)
        release.set()
        assert (await engine.wait(behind)).state == JobState.CANCELLED
        assert (await engine.wait(blocker)).state == JobState.COMPLETED
    assert ran == [0.001] * 4 + [60.0]


@asynccontextmanager
async def short_and_rate_limited(release: trio.Event, finished: list[str]) -> AsyncIterator[Engine]:
    """Two workers; `t.short` jobs of the default queue (known to be short once the engine is
    up: they may be claimed ahead) block until `release` when their payload is "block";
    `t.limited` jobs go to a queue with a rate (never claimed ahead)."""

    async def short(job: JobContext) -> None:
        if job.payload == "block":
            await release.wait()
        else:
            await trio.sleep(0.001)
        finished.append(job.payload or "warm")

    async def limited(job: JobContext) -> None:
        finished.append("limited")

    config = {
        "workers": {"concurrency": 2},
        "queues": {"default": {"concurrency": 2}, "limited": {"concurrency": 2, "rate": "100/s"}},
    }
    handlers = (handler_of("t.short", short), handler_of("t.limited", limited, queue="limited"))
    async with running_engine(*handlers, config=config, store=RoundTripStore()) as engine:
        await engine.service.pause("default")
        await drain_timed(engine, [await engine.submit("t.short") for _ in range(4)])
        yield engine


async def test_a_queue_never_claimed_ahead_is_never_claimed_beyond_free_workers(autojump: object) -> None:
    release = trio.Event()
    async with short_and_rate_limited(release, []) as engine:
        blockers = [await engine.submit("t.short", "block") for _ in range(2)]
        await trio.sleep(0.5)
        assert engine.pool.busy == 2  # every worker busy; default would take more ahead
        held_back = await engine.submit("t.limited")
        await trio.sleep(0.5)
        # No worker free: it stays pending, for another daemon, and spends no token here.
        assert (await engine.service.get(str(held_back.id))).state == JobState.PENDING
        release.set()
        for job in [*blockers, held_back]:
            assert (await engine.wait(job)).state == JobState.COMPLETED


async def test_jobs_waiting_ahead_start_when_a_reload_adds_slots(autojump: object) -> None:
    ran: list[float] = []
    async with one_slot_engine(RoundTripStore(), ran) as engine:
        blocker, behind = await warm_and_block(engine, 60.0)
        raw = {"store": {"url": "memory:"}, "workers": {"concurrency": 2}}
        engine.live.current = build_settings(
            parse_config(raw, env={}, uid=1000), engine.live.current.registry
        )
        engine.pool.wake()  # what a reload does
        done = await engine.wait(behind, timeout=1)
        assert done.state == JobState.COMPLETED  # not 60 s later, when the blocker ends
        assert engine.pool.busy == 1
        await engine.service.cancel(str(blocker.id))


async def test_a_job_claimed_again_while_its_old_attempt_waits_ahead_runs_once(autojump: object) -> None:
    release = trio.Event()
    attempts: list[int] = []

    async def job_of(job: JobContext) -> None:
        if job.payload == "block":
            await release.wait()
        elif job.payload == "behind":
            attempts.append(job.attempt)
        else:
            await trio.sleep(0.001)

    store = RoundTripStore()
    config = {"workers": {"concurrency": 2}}
    async with running_engine(handler_of("t.job", job_of), config=config, store=store) as engine:
        await engine.service.pause("default")
        await drain_timed(engine, [await engine.submit("t.job") for _ in range(4)])
        await engine.service.pause("default")
        blockers = [await engine.submit("t.job", "block", priority=1) for _ in range(2)]
        behind = await engine.submit("t.job", "behind")
        await engine.service.resume("default")
        await trio.sleep(0.5)
        assert engine.pool.busy == 2 and (await engine.service.get(str(behind.id))).state == JobState.RUNNING
        # Its lease runs out (the store was out of reach, say) and it is rescued, then
        # claimed again by this daemon as attempt 2 while attempt 1 still waits here.
        store._indexes.running[behind.id].lease_until = virtual_now() - timedelta(seconds=1)
        await store.rescue_jobs(virtual_now())
        engine.pool.wake()
        await trio.sleep(0.5)
        assert (await engine.service.get(str(behind.id))).attempts == 2
        release.set()
        for job in [*blockers, behind]:
            assert (await engine.wait(job)).state == JobState.COMPLETED
    assert attempts == [2]  # attempt 1, which the store gave up, never ran


async def test_a_claim_gives_its_free_workers_to_the_queues_never_claimed_ahead_first(
    autojump: object,
) -> None:
    release = trio.Event()
    finished: list[str] = []
    async with short_and_rate_limited(release, finished) as engine:
        blocker = await engine.submit("t.short", "block")
        await trio.sleep(0.5)
        assert engine.pool.busy == 1  # one worker free
        await engine.service.pause("default")
        await engine.service.pause("limited")
        # One claim takes both: the default queue's jobs first by priority, the limited
        # queue's job for the free worker.
        urgent = [await engine.submit("t.short", "block", priority=5) for _ in range(2)]
        held_back = await engine.submit("t.limited")
        await engine.service.resume("limited")
        await engine.service.resume("default")
        await trio.sleep(0.5)
        assert "limited" in finished  # it took the free worker; the urgent jobs wait ahead
        assert (await engine.service.get(str(held_back.id))).state == JobState.COMPLETED
        release.set()
        for job in [blocker, *urgent]:
            assert (await engine.wait(job)).state == JobState.COMPLETED


async def test_no_end_of_a_job_leaves_reference_cycles(autojump: object) -> None:
    """A ready daemon runs the cyclic collector only every 20,000 new objects
    (`settle_interpreter`): that costs nothing only while a job's own path leaves no
    cycles for it to free, whether the job completes, fails, times out or is retried."""

    async def fail(job: JobContext) -> None:
        raise ValueError("boom")

    async def hang(job: JobContext) -> None:
        await trio.sleep_forever()

    async def retry_once(job: JobContext) -> None:
        if job.attempt == 1:
            raise jobd.Retry("once", delay=1.0)

    handlers = (
        handler_of("t.fail", fail, max_attempts=1),
        handler_of("t.hang", hang, max_attempts=1, timeout=1.0),
        handler_of("t.retry", retry_once, max_attempts=2),
    )
    async with running_engine(*handlers) as engine:
        gc.collect()
        gc.disable()
        try:
            jobs = [
                await engine.submit(job_type, {"i": i})
                for job_type in ("jobd.noop", "t.fail", "t.hang", "t.retry")
                for i in range(50)
            ]
            ends = [(await engine.wait(job)).state for job in jobs]
            in_cycles = gc.collect()
        finally:
            gc.enable()
    assert ends == [JobState.COMPLETED] * 50 + [JobState.FAILED] * 100 + [JobState.COMPLETED] * 50
    assert in_cycles == 0
