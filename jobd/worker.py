"""The worker pool: claim -> run under the job's timeout -> outcome -> record.

One `WorkerPool` per daemon. Its nursery owns every running job. The dispatcher talks
to the store for the pool: each round records the attempts that ended since the last
round (held by the `Completer`) and claims jobs for the free slots, in one store call.
It runs in two lanes, so that while one lane's call is with the store, the jobs the
other lane claimed run: the store and the handlers work at the same time. A lease
keeper renews the leases of running jobs and stops any job this daemon no longer owns;
a cancel watcher stops jobs cancelled elsewhere.
"""

from __future__ import annotations

import collections
import enum
import logging
import math
import random
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import trio
import trio.lowlevel

from jobd.backoff import StoreOutage
from jobd.clock import Clock, utc_now
from jobd.completer import Completer, FinishedAttempt, job_log_fields
from jobd.errors import Fail, InvalidJob, Retry, StoreUnavailable
from jobd.handlers import ATTEMPT_ERRORS, JobContext, check_result, clean_text
from jobd.job import JSON, Job, JobState, Progress
from jobd.metrics import Metrics
from jobd.settings import LiveSettings
from jobd.store import ClaimRequest, Completion, Inserted, NewJob, Outcome, QueueSlots, RateHeld, Store
from jobd.tracing import AttemptTracer
from jobd.watch import JobWatch

COMPLETION_BATCH = 500
MAX_RETRY_DELAY = 365 * 86400.0  # a longer back-off is a mistake: cap it
# Seconds past the grace period a shutdown keeps trying to record outcomes, and waits for
# handlers that ignore their cancellation: then the daemon exits without them.
SHUTDOWN_MARGIN = 10.0
CANCEL_POLL_INTERVAL = 0.5
LANES = 2  # store calls of the dispatcher in flight at once; each claims at most its share

log = logging.getLogger("jobd.worker")


class StopReason(enum.Enum):
    """Why this daemon stopped a running handler."""

    CANCELLED = "cancelled while running"
    SHUTDOWN = "interrupted by a shutdown; requeued"
    LEASE_LOST = "its lease was lost: the job was rescued or cancelled elsewhere"


@dataclass(eq=False, slots=True)
class _Running:
    job: Job
    scope: trio.CancelScope
    parents: _ParentResults | None = None  # for a job with parents: where to read their results
    stop_reason: StopReason | None = None
    task: trio.lowlevel.Task | None = None  # once it runs

    def stop(self, reason: StopReason) -> None:
        # A user's cancel wins over a shutdown: the job must not come back as pending.
        if self.stop_reason is None or reason == StopReason.CANCELLED:
            self.stop_reason = reason
        self.scope.cancel()


@dataclass(frozen=True, slots=True)
class AttemptEnd:
    """What became of one attempt; `outcome` None: the job is no longer this daemon's."""

    outcome: Outcome | None
    result: JSON = None
    error: str | None = None
    run_at: datetime | None = None  # when a retry is due


_LOST = AttemptEnd(None)


class _ParentResults:
    """The results of the parents of the jobs one claim took: read in one store call by
    whichever of those jobs starts first, and shared with the others."""

    def __init__(self, store: Store, job_ids: Sequence[uuid.UUID]) -> None:
        self._store = store
        self._job_ids = job_ids
        self._read: trio.Event | None = None
        self._results: dict[uuid.UUID, JSON] | None = None

    async def of(self, job: Job) -> dict[uuid.UUID, JSON]:
        """Each of `job`'s parents and its result; a parent pruned since it completed has None."""
        if self._read is None:
            self._read = trio.Event()
            try:
                self._results = await self._store.job_results(self._job_ids)
            finally:
                self._read.set()
        else:
            await self._read.wait()
        # The first reader failed or was cancelled: this job reads its own.
        results = self._results if self._results is not None else await self._store.job_results(job.after)
        return {parent: results.get(parent) for parent in job.after}


class WorkerPool:
    def __init__(
        self,
        store: Store,
        live: LiveSettings,
        metrics: Metrics,
        completer: Completer,
        watch: JobWatch,
        *,
        owner: str,
        clock: Clock = utc_now,
        rng: random.Random | None = None,
        tracer: AttemptTracer | None = None,
    ) -> None:
        self._store = store
        self._live = live
        self._metrics = metrics
        self._completer = completer
        self._watch = watch
        self.owner = owner
        self._clock = clock
        self._rng = rng or random.Random()
        self._tracer = tracer  # None: tracing is off, and costs one test per attempt
        self._running: dict[uuid.UUID, _Running] = {}
        self._busy_by_queue: collections.Counter[str] = collections.Counter()
        # Slots that claims in flight may fill: no lane claims them again meanwhile.
        self._claiming_by_queue: collections.Counter[str] = collections.Counter()
        self._claiming = 0
        self._wakeups = [trio.Event() for _ in range(LANES)]  # each lane's: it has something to do
        self._claimable = True  # new work may be waiting: the next round claims
        self._token_due = math.inf  # Trio time a rate-limited queue's next token is due, if one held us back
        self._stopping = False
        self._immediately = False
        self._drain_deadline = self._give_up_at = math.inf
        self._jobs: trio.Nursery | None = None  # the nursery the running jobs belong to, while it is open
        self._cancel_check = trio.Event()

    # -- what others may ask of the pool ------------------------------------------------

    @property
    def busy(self) -> int:
        return len(self._running)

    @property
    def capacity(self) -> int:
        return self._live.current.config.workers.concurrency

    def wake(self) -> None:
        """Something may be claimable: look now rather than at the next poll."""
        self._claimable = True
        self._wake_lanes()

    def check_cancels(self) -> None:
        """A cancel may have been requested for a job this daemon runs (another daemon's API)."""
        self._cancel_check.set()

    def cancel_running(self, job_id: uuid.UUID) -> bool:
        """Cancel the handler of `job_id` if it runs here; its job ends `cancelled`."""
        running = self._running.get(job_id)
        if running is None:
            return False
        running.stop(StopReason.CANCELLED)
        return True

    async def insert_jobs(self, jobs: Sequence[NewJob]) -> list[Inserted]:
        """Insert `jobs`, and in the same store call claim jobs for this daemon's free
        slots: a job submitted to a daemon with room starts without another round trip."""
        pending = any(new.state == JobState.PENDING for new in jobs)
        claim = self._claim_request() if pending and self._jobs is not None and not self._stopping else None
        if claim is None:
            with self._metrics.store_call("insert"):
                inserted = await self._store.insert_jobs(jobs)
            if any(item.created and item.job.state == JobState.PENDING for item in inserted):
                self.wake()
            return inserted
        now = self._clock()
        self._reserve(claim, 1)
        try:
            with self._metrics.store_call("insert"):
                result = await self._store.insert_and_claim_jobs(jobs, claim, now)
        finally:
            self._reserve(claim, -1)
            self._wake_lanes()  # a lane may wait for the slots this claim held
        # The claim saw every pending job, these included. One that came back with some
        # but not full took all there was: a lane that looked again would claim nothing.
        # Full, it may have left jobs behind; empty, something kept it from them (a paused
        # queue, another daemon's claim): a lane looks, as after any wake-up.
        if not result.claimed or len(result.claimed) >= claim.limit:
            self._claimable = True
        self._held_back_by_rate(result.rate_held)
        if self._jobs is not None:
            self._start_all(self._jobs, result.claimed, now)
        return result.inserted

    def job_on_stack(self, frame_ids: frozenset[int]) -> Job | None:
        """The running job whose task, or a task it started, has a frame among `frame_ids`
        (the event loop thread's stack). Called from another thread while the loop is
        blocked, so it only reads."""
        for running in list(self._running.values()):
            if running.task is not None and _runs_on(running.task, frame_ids):
                return running.job
        return None

    def abandon(self) -> list[Job]:
        """The end of a shutdown that could not wait any longer: log each job whose handler
        still runs although it was cancelled (it stays `running` in the store, for the
        lease rescue) and give up on outcomes not yet recorded. Returns those jobs."""
        stuck = [running.job for running in self._running.values()]
        for job in stuck:
            log.error(
                "job %s (%s) did not stop when cancelled by the shutdown; it is left running in the "
                "store, and the lease rescue requeues it once its lease expires",
                job.id,
                job.type,
                extra=job_log_fields(job, "abandoned", None),
            )
        self._give_up()
        return stuck

    def request_stop(self, *, immediately: bool = False) -> None:
        """Stop claiming; `run` then lets running jobs finish for the grace period,
        or, `immediately`, cancels and requeues them now."""
        self._stopping = True
        self._immediately = self._immediately or immediately
        self._wake_lanes()

    def _wake_lanes(self) -> None:
        for wakeup in self._wakeups:
            wakeup.set()

    # -- the pool's life ----------------------------------------------------------------

    async def run(
        self, *, grace: Callable[[], float], task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve until `request_stop`, then drain: running jobs get `grace()` seconds to
        finish, the rest are cancelled and requeued, and every outcome is recorded."""
        async with trio.open_nursery() as services:
            services.start_soon(self._keep_leases)
            # Also for a store only this daemon uses: a cancel that lands while the job's
            # claim is still on its way finds no running handler to stop at once.
            services.start_soon(self._watch_cancels)
            async with trio.open_nursery() as jobs:
                self._jobs = jobs
                task_status.started()
                async with trio.open_nursery() as lanes:
                    for lane in range(LANES):
                        lanes.start_soon(self._dispatch, jobs, grace, lane)
                self._jobs = None
            services.cancel_scope.cancel()

    # -- the dispatcher: record what ended, claim what fits ------------------------------

    async def _dispatch(self, jobs: trio.Nursery, grace: Callable[[], float], lane: int) -> None:
        """One lane: until stopped and drained, record what ended and claim what fits."""
        outage = StoreOutage(log, "record outcomes and claim jobs")
        while True:
            wakeup = self._wakeups[lane] = trio.Event()
            if self._stopping:
                self._drain(grace)
                # Done when nothing runs, nothing waits to be recorded, and no claim is in
                # flight (a submit's may still bring jobs to run).
                if not self._running and not self._completer.waiting and not self._claiming:
                    return
            if trio.current_time() >= self._token_due:  # the tokens a queue waited for are there
                self._token_due = math.inf
                self._claimable = True
            batch = self._completer.take(COMPLETION_BATCH)
            claim = None if self._stopping or not self._claimable else self._claim_request()
            if not batch and claim is None:
                wait_until = trio.current_time() + self._live.current.config.workers.poll_interval
                wait_until = min(wait_until, self._token_due)
                if self._drain_deadline > trio.current_time():
                    wait_until = min(wait_until, self._drain_deadline)
                with trio.move_on_at(wait_until) as waited:
                    await wakeup.wait()
                if waited.cancelled_caught:
                    self._claimable = True  # nothing told us of new work: look anyway
                # Let every job that can run to its end now do so before the next round,
                # so that the round records them all, not only the one that woke us.
                await trio.lowlevel.checkpoint()
                continue
            now = self._clock()
            self._reserve(claim, 1)
            try:
                claimed = await self._record_and_claim(batch, claim, now)
            except StoreUnavailable as error:
                delay = outage.failed(error)
                if self._stopping and trio.current_time() >= self._give_up_at:
                    self._give_up()
                else:
                    await trio.sleep(delay)
                continue
            finally:
                self._reserve(claim, -1)
            outage.succeeded()
            self._start_all(jobs, claimed, now)

    def _drain(self, grace: Callable[[], float]) -> None:
        """While stopping: fix the deadline once, and at it stop whatever still runs."""
        if self._drain_deadline == math.inf:
            self._drain_deadline = trio.current_time() + grace()
            self._give_up_at = self._drain_deadline + SHUTDOWN_MARGIN
        if self._immediately:
            self._drain_deadline = self._give_up_at = min(self._give_up_at, trio.current_time())
        if trio.current_time() >= self._drain_deadline:
            for running in list(self._running.values()):
                running.stop(StopReason.SHUTDOWN)

    def _claim_request(self) -> ClaimRequest | None:
        """Free slots, less those a claim in flight may fill; at most a lane's share."""
        settings = self._live.current
        capacity = settings.config.workers.concurrency
        limit = min(capacity - len(self._running) - self._claiming, math.ceil(capacity / LANES))
        slots = []
        for name, limits in settings.queues.items():
            free = limits.concurrency - self._busy_by_queue[name] - self._claiming_by_queue[name]
            if free > 0:
                slots.append(QueueSlots(name, free, limits.global_concurrency, limits.rate))
        if not slots or limit <= 0:
            return None
        lease_until = self._clock() + timedelta(seconds=settings.config.workers.lease)
        return ClaimRequest(self.owner, slots, limit, lease_until)

    def _reserve(self, claim: ClaimRequest | None, sign: int) -> None:
        """Hold (+1) or release (-1) the slots `claim` may fill while it is in flight."""
        if claim is not None:
            self._claiming += sign * claim.limit
            for slot in claim.slots:
                self._claiming_by_queue[slot.queue] += sign * min(slot.free, claim.limit)

    async def _record_and_claim(
        self, batch: list[FinishedAttempt], claim: ClaimRequest | None, now: datetime
    ) -> list[Job]:
        """One store call: record `batch` and make `claim`. Raises `StoreUnavailable`
        with the batch put back to wait for the next round."""
        completions = [attempt.completion for attempt in batch]
        if claim is not None:
            self._claimable = False  # until this claim comes back full, or a wake-up says otherwise
        rate_held: RateHeld = {}
        try:
            with self._metrics.store_call("complete" if completions else "claim"):
                if claim is None:
                    applied, claimed = await self._store.complete_jobs(completions, now), []
                else:
                    exchange = await self._store.complete_and_claim_jobs(completions, claim, now)
                    applied, claimed, rate_held = exchange.applied, exchange.claimed, exchange.rate_held
        except InvalidJob:
            # A value the store cannot keep (a result PostgreSQL's jsonb refuses...).
            self._claimable = True
            await self._completer.record_one_by_one(self._store, batch, now)
            return []
        except StoreUnavailable:
            self._completer.put_back(batch)
            raise
        self._completer.report(batch, applied)
        self._held_back_by_rate(rate_held)
        # Room under a global limit shows in the store only once these outcomes are
        # committed, after the claim that came with them counted: claim again at once.
        limited = {name for name, limits in self._live.current.queues.items() if limits.global_concurrency}
        if self._may_claim_more(claim, claimed, rate_held) or any(
            done and attempt.job.queue in limited for attempt, done in zip(batch, applied, strict=True)
        ):
            self._claimable = True
        return claimed

    @staticmethod
    def _may_claim_more(claim: ClaimRequest | None, claimed: list[Job], rate_held: RateHeld) -> bool:
        """Whether a claim that came back with jobs may have left more to claim now: it
        came back full, or with jobs of a queue whose rate did not hold it back (a queue
        out of tokens has nothing to give until its next token: `_held_back_by_rate`)."""
        if claim is None or not claimed:
            return False
        return len(claimed) >= claim.limit or any(job.queue not in rate_held for job in claimed)

    def _held_back_by_rate(self, rate_held: RateHeld) -> None:
        """Count the queues a claim's rate held back, and wake up when the first of their
        next tokens is due, rather than at the next poll."""
        if not rate_held:
            return
        for queue in rate_held:
            self._metrics.queue_rate_limited(queue)
        wait = (min(rate_held.values()) - self._clock()).total_seconds()
        self._token_due = min(self._token_due, trio.current_time() + max(wait, 0.0))

    def _give_up(self) -> None:
        """A shutdown that cannot reach the store stops trying to record outcomes."""
        abandoned = self._completer.take(self._completer.waiting)
        if abandoned:
            log.error(
                "shutting down without recording the outcomes of jobs %s; they stay running "
                "in the store and are rescued when their lease expires",
                ", ".join(str(attempt.job.id) for attempt in abandoned),
            )

    def _start_all(self, jobs: trio.Nursery, claimed: Sequence[Job], now: datetime) -> None:
        parents = list(dict.fromkeys(parent for job in claimed for parent in job.after))
        results = _ParentResults(self._store, parents) if parents else None
        for job in claimed:
            self._start(jobs, job, now, results if job.after else None)

    def _start(self, jobs: trio.Nursery, job: Job, now: datetime, parents: _ParentResults | None) -> None:
        running = _Running(job, trio.CancelScope(), parents)
        self._running[job.id] = running
        self._busy_by_queue[job.queue] += 1
        self._metrics.job_started(job.queue, (now - job.run_at).total_seconds())
        jobs.start_soon(self._run_job, running, name=job.type)

    # -- running one job ----------------------------------------------------------------

    async def _run_job(self, running: _Running) -> None:
        job = running.job
        running.task = trio.lowlevel.current_task()
        started = trio.current_time()
        span = None if self._tracer is None else self._tracer.start(job)
        end = _LOST
        try:
            end = await self._attempt(running)
        finally:
            if span is not None:
                span.finish(end.outcome.value if end.outcome else "lost", end.error)
            # The same job may run here twice (rescued elsewhere, then claimed back while
            # its old handler still unwinds): remove only this run's entry.
            if self._running.get(job.id) is running:
                del self._running[job.id]
            self._busy_by_queue[job.queue] -= 1
            self.wake()  # a slot is free, and this outcome waits to be recorded
        duration = trio.current_time() - started
        if end.outcome is None:
            reason = running.stop_reason.value if running.stop_reason else "unknown"
            log.warning("job %s stopped: %s", job.id, reason, extra=job_log_fields(job, "lost", duration))
            return
        completion = Completion(
            job.id, self.owner, job.attempts, end.outcome, end.result, end.error, end.run_at
        )
        self._completer.add(FinishedAttempt(completion, job, duration))

    async def _attempt(self, running: _Running) -> AttemptEnd:
        """Run the handler once; say what became of the attempt."""
        job = running.job
        handler = self._live.current.handler(job.type)
        scope = running.scope  # the job's timeout, and this daemon's stop
        if job.timeout is not None:
            scope.deadline = trio.current_time() + job.timeout
        try:
            with scope:
                if handler is None:
                    raise LookupError(f"no handler for job type {job.type!r} on this daemon")
                parents = await running.parents.of(job) if running.parents is not None else None
                context = JobContext(
                    job_id=job.id,
                    job_type=job.type,
                    queue=job.queue,
                    payload=job.payload,
                    attempt=job.attempts,
                    max_attempts=job.max_attempts,
                    created_at=job.created_at,
                    progress=lambda progress: self._record_progress(job, progress),
                    settings=handler.settings,
                    schedule=job.schedule,
                    scheduled_for=job.scheduled_for,
                    parents=parents,
                )
                result = await handler(context)
                # A handler that returns is done, unless its deadline passed meanwhile.
                if running.stop_reason is not None or not scope.cancel_called:
                    return AttemptEnd(Outcome.COMPLETED, check_result(result))
        except Retry as signal:
            if running.stop_reason:
                return self._after_stop(running)
            reason = f"retry requested: {signal.reason}" if signal.reason else "retry requested"
            return self._after_failure(job, reason, signal.delay)
        except Fail as signal:
            if running.stop_reason:
                return self._after_stop(running)
            return AttemptEnd(Outcome.FAILED, error=clean_text(f"failed: {signal.reason}"))
        except ATTEMPT_ERRORS as error:
            if running.stop_reason:
                return self._after_stop(running)
            log.warning(
                "job %s attempt %d raised %r",
                job.id,
                job.attempts,
                error,
                exc_info=True,
                extra=job_log_fields(job, "error", None),
            )
            return self._after_failure(job, f"{type(error).__name__}: {error}", None)
        if running.stop_reason is None:  # only the deadline cancels without a reason
            return self._after_failure(job, f"timed out after {job.timeout:g}s", None)
        return self._after_stop(running)

    def _after_stop(self, running: _Running) -> AttemptEnd:
        """The outcome of a handler this daemon stopped, however the handler ended."""
        if running.stop_reason == StopReason.CANCELLED:
            return AttemptEnd(Outcome.CANCELLED, error=StopReason.CANCELLED.value)
        if running.stop_reason == StopReason.SHUTDOWN:
            return AttemptEnd(Outcome.REQUEUED, error=StopReason.SHUTDOWN.value)
        return _LOST

    def _after_failure(self, job: Job, error: str, delay: float | None) -> AttemptEnd:
        if job.attempts >= job.max_attempts:
            text = f"{error} (attempt {job.attempts} of {job.max_attempts}, no more left)"
            return AttemptEnd(Outcome.FAILED, error=clean_text(text))
        if delay is None:
            delay = self._live.current.type_defaults(job.type).retry.delay(job.attempts, self._rng)
        run_at = self._clock() + timedelta(seconds=min(delay, MAX_RETRY_DELAY))
        return AttemptEnd(Outcome.RETRIED, error=clean_text(error), run_at=run_at)

    async def _record_progress(self, job: Job, progress: Progress) -> None:
        try:
            await self._store.set_progress(job.id, self.owner, job.attempts, progress, self._clock())
        except (StoreUnavailable, InvalidJob) as error:  # progress is advisory: the job goes on
            log.warning("could not record progress of job %s: %s", job.id, error)
        self._watch.changed(job.id)

    # -- leases and remote cancels --------------------------------------------------------

    async def _keep_leases(self) -> None:
        while True:
            lease = self._live.current.config.workers.lease
            await trio.sleep(lease / 3)
            ids = list(self._running)
            if not ids:
                continue
            try:
                kept = await self._store.renew_leases(
                    self.owner, ids, self._clock() + timedelta(seconds=lease)
                )
            except StoreUnavailable as error:
                log.warning("cannot renew the leases of %d running jobs: %s", len(ids), error)
                continue
            for job_id in set(ids) - kept:
                running = self._running.get(job_id)
                if running is not None:
                    running.stop(StopReason.LEASE_LOST)

    async def _watch_cancels(self) -> None:
        while True:
            with trio.move_on_after(CANCEL_POLL_INTERVAL):
                await self._cancel_check.wait()
            self._cancel_check = trio.Event()
            if not self._running:
                continue
            try:
                requested = await self._store.cancel_requests(self.owner)
            except StoreUnavailable:
                continue
            for job_id in requested:
                self.cancel_running(job_id)


def _runs_on(task: trio.lowlevel.Task, frame_ids: frozenset[int]) -> bool:
    """Whether `task` or a task it started has its coroutine's frame among `frame_ids`."""
    frame = getattr(task.coro, "cr_frame", None)
    if frame is not None and id(frame) in frame_ids:
        return True
    children = (child for nursery in task.child_nurseries for child in nursery.child_tasks)
    return any(_runs_on(child, frame_ids) for child in children)
