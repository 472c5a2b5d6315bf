"""The worker pool: claim -> run under the job's timeout -> outcome -> record.

One `WorkerPool` per daemon. Its nursery owns every running job. The dispatcher talks
to the store for the pool: each round records the attempts that ended since the last
round (held by the `Completer`) and claims jobs for the free slots, in one store call.
It runs in two lanes, so that while one lane's call is with the store, the jobs the
other lane claimed run: the store and the handlers work at the same time.

When jobs end faster than a store call returns, a free slot would sit idle for the
round trip that refills it. So a queue whose jobs run shorter than a round may have a
few more jobs claimed than slots: those wait in the pool, in claim order, and each
starts the moment a slot frees. How many is what one round's time lets that queue's
slots turn over (`_ahead_for`, at most `MAX_AHEAD` times its slots), so that a job
claimed ahead waits about one round; none for queues with long jobs, a global limit or a
rate. A lease keeper renews the leases of the jobs the pool holds and stops any this
daemon no longer owns; a cancel watcher stops jobs cancelled elsewhere.
"""

from __future__ import annotations

import collections
import enum
import logging
import math
import random
import uuid
from collections.abc import Callable, Iterator, Sequence
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
from jobd.settings import LiveSettings, QueueLimits
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
# Jobs claimed ahead are at most this many times the slots: rounds of more jobs cost less
# per job in the store, and the pool runs through them while the next round is out.
MAX_AHEAD = 2
# Weight of the newest sample in the moving averages of round and run times.
AVERAGE_WEIGHT = 0.1

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
    slot: trio.Event | None = None  # claimed ahead: set when a slot is free for it, or when stopped
    executing: bool = False  # it holds a slot: its handler runs, or is about to
    began: trio.Event | None = None  # set when its task first runs, for a submit that waits for it

    def stop(self, reason: StopReason) -> None:
        # A user's cancel wins over a shutdown: the job must not come back as pending.
        if self.stop_reason is None or reason == StopReason.CANCELLED:
            self.stop_reason = reason
        self.scope.cancel()
        if self.slot is not None:
            self.slot.set()  # a job still waiting for its slot ends without starting


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
        self._running: dict[uuid.UUID, _Running] = {}  # every job the pool holds, started or not
        self._held_by_queue: collections.Counter[str] = collections.Counter()
        self._executing = 0  # jobs holding a slot
        self._executing_by_queue: collections.Counter[str] = collections.Counter()
        self._waiting: list[_Running] = []  # claimed ahead, in the order they start
        self._round_time = 0.0  # moving average of a round's store call, seconds
        self._run_time: dict[str, float] = {}  # moving average of a handler's run, per queue
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
        """Jobs whose handlers run (not those claimed ahead, still waiting for a slot)."""
        return self._executing

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
            return self._woken_for(inserted)
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
            await self._handlers_begun(result.claimed)
        return result.inserted

    async def insert_job_chunks(self, chunks: Iterator[Sequence[NewJob]]) -> list[Inserted]:
        """Insert a batch checked chunk by chunk (`Store.insert_job_chunks`), its checking
        overlapping the store's work: claimed by the lanes once woken, not in the call."""
        with self._metrics.store_call("insert"):
            inserted = await self._store.insert_job_chunks(chunks)
        return self._woken_for(inserted)

    def _woken_for(self, inserted: list[Inserted]) -> list[Inserted]:
        """`inserted`, once the lanes are woken for any pending job it created."""
        if any(item.created and item.job.state == JobState.PENDING for item in inserted):
            self.wake()
        return inserted

    async def _handlers_begun(self, claimed: Sequence[Job]) -> None:
        """Wait until the jobs of `claimed` that took a slot have begun: a submit that
        started its own jobs answers after their handlers have started, not before.
        They are committed already, and their start is what a submitter waits for; the
        answer waits one scheduler pass. Shielded: the insert is done, whatever comes."""
        begun = []
        for job in claimed:
            running = self._running.get(job.id)
            if running is not None and running.executing and running.task is None:
                running.began = trio.Event()
                begun.append(running.began)
        with trio.CancelScope(shield=True):
            for event in begun:
                await event.wait()

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
            self._hand_slots()  # a reload may have added slots
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
            began = trio.current_time()
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
            self._round_time += AVERAGE_WEIGHT * (trio.current_time() - began - self._round_time)
            self._start_all(jobs, claimed, now)

    def _drain(self, grace: Callable[[], float]) -> None:
        """While stopping: fix the deadline once, and at it stop whatever still runs."""
        if self._drain_deadline == math.inf:
            self._drain_deadline = trio.current_time() + grace()
            self._give_up_at = self._drain_deadline + SHUTDOWN_MARGIN
        if self._immediately:
            self._drain_deadline = self._give_up_at = min(self._give_up_at, trio.current_time())
        for waiting in self._waiting:  # not started: back to the queue at once
            waiting.stop(StopReason.SHUTDOWN)
        if trio.current_time() >= self._drain_deadline:
            for running in list(self._running.values()):
                running.stop(StopReason.SHUTDOWN)

    def _claim_request(self) -> ClaimRequest | None:
        """Free slots and room ahead, less what the pool holds and what a claim in flight
        may fill; at most a lane's share."""
        settings = self._live.current
        capacity = settings.config.workers.concurrency
        slots = []
        ahead = 0
        unheld = capacity - len(self._running) - self._claiming  # workers no job holds
        for name, limits in settings.queues.items():
            queue_ahead = self._ahead_for(name, limits)
            ahead += queue_ahead
            held = self._held_by_queue[name] + self._claiming_by_queue[name]
            free = limits.concurrency + queue_ahead - held
            if queue_ahead == 0:  # never claimed beyond a free worker
                free = min(free, unheld)
            if free > 0:
                slots.append(QueueSlots(name, free, limits.global_concurrency, limits.rate))
        room = capacity + min(ahead, MAX_AHEAD * capacity)
        limit = min(room - len(self._running) - self._claiming, math.ceil(room / LANES))
        if not slots or limit <= 0:
            return None
        lease_until = self._clock() + timedelta(seconds=settings.config.workers.lease)
        return ClaimRequest(self.owner, slots, limit, lease_until)

    def _ahead_for(self, queue: str, limits: QueueLimits) -> int:
        """How many of `queue`'s jobs may be claimed beyond its slots: as many as its
        slots free during one round, at its jobs' average run time. None before a job of
        it has ended here, and none for a queue whose claims are counted across daemons
        (a global limit, a rate): jobs held ahead would count as running there."""
        run_time = self._run_time.get(queue)
        counted = limits.global_concurrency is not None or limits.rate is not None
        if counted or run_time is None or self._round_time <= 0.0:
            return 0
        most = MAX_AHEAD * limits.concurrency
        if run_time <= 0.0:
            return most
        return min(most, int(limits.concurrency * self._round_time / run_time))

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
        # Jobs of queues never claimed ahead were claimed for free workers only: they take
        # them first, so that none of them waits here, counted as running, while another
        # daemon could run it.
        queues = self._live.current.queues
        ahead = {
            queue: queue in queues and self._ahead_for(queue, queues[queue]) > 0
            for queue in {job.queue for job in claimed}
        }
        if len(set(ahead.values())) > 1:
            claimed = sorted(claimed, key=lambda job: ahead[job.queue])
        for job in claimed:
            self._start(jobs, job, now, results if job.after else None)

    def _start(self, jobs: trio.Nursery, job: Job, now: datetime, parents: _ParentResults | None) -> None:
        running = _Running(job, trio.CancelScope(), parents)
        old = self._running.get(job.id)
        if old is not None:  # claimed again: the store gave its old attempt up
            old.stop(StopReason.LEASE_LOST)
        self._running[job.id] = running
        self._held_by_queue[job.queue] += 1
        if self._has_slot(job.queue):
            self._take_slot(running, now)
        else:
            running.slot = trio.Event()
            self._waiting.append(running)
            # A later claim may bring a job that goes first: keep the claim order.
            if len(self._waiting) > 1 and _claim_order(self._waiting[-2].job) > _claim_order(job):
                self._waiting.sort(key=lambda waiting: _claim_order(waiting.job))
        jobs.start_soon(self._run_job, running, name=job.type)

    def _has_slot(self, queue: str) -> bool:
        limits = self._live.current.queues.get(queue)
        return self._executing < self.capacity and (
            limits is None or self._executing_by_queue[queue] < limits.concurrency
        )

    def _take_slot(self, running: _Running, now: datetime) -> None:
        job = running.job
        running.executing = True
        self._executing += 1
        self._executing_by_queue[job.queue] += 1
        self._metrics.job_started(job.queue, (now - job.run_at).total_seconds())

    def _free_slot(self, queue: str) -> None:
        """A handler ended: its slot goes to the first job waiting that may take it."""
        self._executing -= 1
        self._executing_by_queue[queue] -= 1
        self._hand_slots()

    def _hand_slots(self) -> None:
        """Free slots go to the jobs waiting ahead that may take them, in their order
        (not to one stopped meanwhile: it ends without running)."""
        if not self._waiting or self._stopping:
            return
        now = self._clock()
        for waiting in list(self._waiting):
            if self._executing >= self.capacity:
                break
            if waiting.stop_reason is None and self._has_slot(waiting.job.queue):
                self._waiting.remove(waiting)
                self._take_slot(waiting, now)
                assert waiting.slot is not None
                waiting.slot.set()

    # -- running one job ----------------------------------------------------------------

    async def _run_job(self, running: _Running) -> None:
        job = running.job
        running.task = trio.lowlevel.current_task()
        if running.began is not None:
            running.began.set()  # the submit waiting for it runs once this step yields
        span = None
        end = _LOST
        started = trio.current_time()
        try:
            if running.slot is not None:
                await running.slot.wait()
                started = trio.current_time()
            if running.executing:
                span = None if self._tracer is None else self._tracer.start(job)
                end = await self._attempt(running)
            else:  # stopped while it waited for a slot: its handler never ran
                end = self._after_stop(running)
        finally:
            if span is not None:
                span.finish(end.outcome.value if end.outcome else "lost", end.error)
            # The same job may run here twice (rescued elsewhere, then claimed back while
            # its old handler still unwinds): remove only this run's entry.
            if self._running.get(job.id) is running:
                del self._running[job.id]
            self._held_by_queue[job.queue] -= 1
            if running.executing:
                self._free_slot(job.queue)
            elif running in self._waiting:
                self._waiting.remove(running)
            self.wake()  # a slot is free, and this outcome waits to be recorded
        duration = trio.current_time() - started
        if running.executing:
            average = self._run_time.get(job.queue, duration)
            self._run_time[job.queue] = average + AVERAGE_WEIGHT * (duration - average)
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


def _claim_order(job: Job) -> tuple[int, datetime]:
    """The order claims take jobs in (a claim's own jobs come in it; ties keep it)."""
    return (-job.priority, job.run_at)


def _runs_on(task: trio.lowlevel.Task, frame_ids: frozenset[int]) -> bool:
    """Whether `task` or a task it started has its coroutine's frame among `frame_ids`."""
    frame = getattr(task.coro, "cr_frame", None)
    if frame is not None and id(frame) in frame_ids:
        return True
    children = (child for nursery in task.child_nurseries for child in nursery.child_tasks)
    return any(_runs_on(child, frame_ids) for child in children)
