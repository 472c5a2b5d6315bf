"""The worker pool: claim -> run under the job's timeout -> outcome -> batched completion.

One `WorkerPool` per daemon. Its nursery owns every running job; a dispatcher claims
jobs in batches whenever there are free slots and something may be waiting; one
completer commits outcomes in batches; a lease keeper renews the leases of running
jobs and cancels any job this daemon no longer owns.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import math
import random
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import trio

from jobd.errors import Fail, InvalidJob, Retry, StoreUnavailable
from jobd.handlers import ATTEMPT_ERRORS, JobContext, check_result, clean_text
from jobd.job import JSON, Job, Progress
from jobd.metrics import Metrics
from jobd.settings import LiveSettings
from jobd.store import Completion, Outcome, QueueSlots, Store

Clock = Callable[[], datetime]
COMPLETION_BATCH = 500
MAX_RETRY_DELAY = 365 * 86400.0  # a longer back-off is a mistake: cap it
DRAIN_GIVE_UP = 10.0  # seconds past the grace period a shutdown keeps trying to record outcomes
CANCELLED, SHUTDOWN = "cancelled", "shutdown"
CANCEL_POLL_INTERVAL = 0.5
STORE_RETRY_DELAYS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0)

log = logging.getLogger("jobd.worker")


def utc_now() -> datetime:
    return datetime.now(UTC)


class JobWatch:
    """Wakes the tasks waiting for a given job to change (the API's long poll)."""

    def __init__(self) -> None:
        self._events: dict[uuid.UUID, tuple[trio.Event, int]] = {}

    def changed(self, job_id: uuid.UUID) -> None:
        entry = self._events.pop(job_id, None)
        if entry is not None:
            entry[0].set()

    @contextlib.contextmanager
    def watching(self, job_id: uuid.UUID) -> Iterator[trio.Event]:
        """An event set at the next change of `job_id`. Take it *before* reading the job,
        so that a change between the read and the wait is not missed."""
        event, waiters = self._events.get(job_id, (trio.Event(), 0))
        self._events[job_id] = (event, waiters + 1)
        try:
            yield event
        finally:
            current = self._events.get(job_id)
            if current is not None and current[0] is event:
                if current[1] > 1:
                    self._events[job_id] = (event, current[1] - 1)
                else:
                    del self._events[job_id]


@dataclass(eq=False)
class _Running:
    job: Job
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    stop_reason: str | None = None  # why this daemon stopped the handler, if it did

    def stop(self, reason: str) -> None:
        # A user's cancel wins over a shutdown: the job must not come back as pending.
        if self.stop_reason is None or reason == CANCELLED:
            self.stop_reason = reason
        self.scope.cancel()


@dataclass(frozen=True, slots=True)
class _Finished:
    completion: Completion
    job: Job
    duration: float


class WorkerPool:
    def __init__(
        self,
        store: Store,
        live: LiveSettings,
        metrics: Metrics,
        watch: JobWatch,
        *,
        owner: str,
        clock: Clock = utc_now,
        rng: random.Random | None = None,
    ) -> None:
        self._store = store
        self._live = live
        self._metrics = metrics
        self._watch = watch
        self.owner = owner
        self._clock = clock
        self._rng = rng or random.Random()
        self._running: dict[uuid.UUID, _Running] = {}
        self._busy_by_queue: collections.Counter[str] = collections.Counter()
        self._changed = trio.Event()
        self._stopping = False
        self._grace_scope = trio.CancelScope()
        self._give_up_at = math.inf  # when a shutdown stops waiting for the store to record outcomes
        self._cancel_check = trio.Event()
        send, receive = trio.open_memory_channel[_Finished](math.inf)
        self._finished_send, self._finished_receive = send, receive
        self.on_scheduled: Callable[[], None] = lambda: None  # a retry was scheduled for later

    # -- what others may ask of the pool ------------------------------------------------

    @property
    def busy(self) -> int:
        return len(self._running)

    @property
    def capacity(self) -> int:
        return self._live.current.config.workers.concurrency

    def wake(self) -> None:
        """Something may be claimable: look now rather than at the next poll."""
        self._changed.set()
        self._changed = trio.Event()

    def check_cancels(self) -> None:
        """A cancel may have been requested for a job this daemon runs (another daemon's API)."""
        self._cancel_check.set()

    def cancel_running(self, job_id: uuid.UUID) -> bool:
        """Cancel the handler of `job_id` if it runs here; its job ends `cancelled`."""
        running = self._running.get(job_id)
        if running is None:
            return False
        running.stop(CANCELLED)
        return True

    def request_stop(self, *, immediately: bool = False) -> None:
        """Stop claiming; `run` then lets running jobs finish for the grace period,
        or, `immediately`, cancels and requeues them now."""
        self._stopping = True
        if immediately:
            self._grace_scope.cancel()
            self._give_up_at = trio.current_time()
        self.wake()

    # -- the pool's life ----------------------------------------------------------------

    async def run(
        self, *, grace: Callable[[], float], task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve until `request_stop`, then drain: running jobs get `grace()` seconds to
        finish, the rest are cancelled and requeued, and every outcome is committed."""
        async with trio.open_nursery() as services:
            services.start_soon(self._keep_leases)
            # Also for a store only this daemon uses: a cancel that lands while the job's
            # claim is still on its way finds no running handler to stop at once.
            services.start_soon(self._watch_cancels)
            async with trio.open_nursery() as completer:
                completer.start_soon(self._complete_batches)
                async with trio.open_nursery() as jobs:
                    task_status.started()
                    await self._dispatch(jobs)
                    self._grace_scope.deadline = trio.current_time() + grace()
                    self._give_up_at = min(self._give_up_at, self._grace_scope.deadline + DRAIN_GIVE_UP)
                    with self._grace_scope:
                        await self._wait_idle()
                    for running in list(self._running.values()):
                        running.stop(SHUTDOWN)
                # Every job has ended: the completer commits what is left, then returns.
                await self._finished_send.aclose()
            services.cancel_scope.cancel()

    async def _wait_idle(self) -> None:
        while self._running:
            event = self._changed
            await event.wait()

    # -- claiming -----------------------------------------------------------------------

    def _free_slots(self) -> tuple[list[QueueSlots], int]:
        settings = self._live.current
        limit = settings.config.workers.concurrency - len(self._running)
        slots = [
            QueueSlots(name, limits.concurrency - self._busy_by_queue[name], limits.global_concurrency)
            for name, limits in settings.queues.items()
            if limits.concurrency > self._busy_by_queue[name]
        ]
        return slots, limit

    async def _dispatch(self, jobs: trio.Nursery) -> None:
        failures = 0
        while not self._stopping:
            event = self._changed
            slots, limit = self._free_slots()
            if slots and limit > 0:
                now = self._clock()
                lease_until = now + timedelta(seconds=self._live.current.config.workers.lease)
                try:
                    claimed = await self._store.claim_jobs(self.owner, slots, limit, now, lease_until)
                except StoreUnavailable as error:
                    failures += 1
                    delay = _store_retry_delay(failures)
                    if failures == 1:
                        log.warning("cannot claim jobs, the store is unavailable: %s", error)
                    await trio.sleep(delay)
                    continue
                if failures:
                    log.info("the store is back; claiming again")
                    failures = 0
                for job in claimed:
                    self._start(jobs, job, now)
                if claimed:
                    continue
            with trio.move_on_after(self._live.current.config.workers.poll_interval):
                await event.wait()

    def _start(self, jobs: trio.Nursery, job: Job, now: datetime) -> None:
        running = _Running(job)
        self._running[job.id] = running
        self._busy_by_queue[job.queue] += 1
        self._metrics.job_started(job.queue, max((now - job.run_at).total_seconds(), 0.0))
        jobs.start_soon(self._run_job, running, name=f"job {job.type} {job.id}")

    # -- running one job ----------------------------------------------------------------

    async def _run_job(self, running: _Running) -> None:
        job = running.job
        started = trio.current_time()
        try:
            outcome, result, error, run_at = await self._attempt(running)
        finally:
            # The same job may run here twice (rescued elsewhere, then claimed back while
            # its old handler still unwinds): remove only this run's entry.
            if self._running.get(job.id) is running:
                del self._running[job.id]
            self._busy_by_queue[job.queue] -= 1
            self.wake()
        duration = trio.current_time() - started
        if outcome is None:  # the lease was lost: another daemon owns the job now
            log.warning(
                "job %s stopped: %s", job.id, running.stop_reason, extra=_job_fields(job, "lost", duration)
            )
            return
        completion = Completion(job.id, self.owner, job.attempts, outcome, result, error, run_at)
        self._finished_send.send_nowait(_Finished(completion, job, duration))

    async def _attempt(self, running: _Running) -> tuple[Outcome | None, JSON, str | None, datetime | None]:
        """Run the handler once; say what became of the attempt."""
        job = running.job
        settings = self._live.current
        handler = settings.handler(job.type)
        timed_out = False
        try:
            with running.scope:
                if handler is None:
                    raise LookupError(f"no handler for job type {job.type!r} on this daemon")
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
                )
                with trio.move_on_after(math.inf if job.timeout is None else job.timeout) as deadline:
                    result = await handler(context)
                timed_out = deadline.cancel_called
                if not timed_out:
                    return Outcome.COMPLETED, check_result(result), None, None
        except Retry as signal:
            if running.stop_reason:
                return self._after_stop(running)
            return self._after_failure(
                job, f"retry requested: {signal.reason}" if signal.reason else "retry requested", signal.delay
            )
        except Fail as signal:
            if running.stop_reason:
                return self._after_stop(running)
            return Outcome.FAILED, None, clean_text(f"failed: {signal.reason}"), None
        except ATTEMPT_ERRORS as error:
            if running.stop_reason:
                return self._after_stop(running)
            log.warning(
                "job %s attempt %d raised %r",
                job.id,
                job.attempts,
                error,
                exc_info=True,
                extra=_job_fields(job, "error", None),
            )
            return self._after_failure(job, f"{type(error).__name__}: {error}", None)
        if timed_out:
            return self._after_failure(job, f"timed out after {job.timeout:g}s", None)
        return self._after_stop(running)

    def _after_stop(self, running: _Running) -> tuple[Outcome | None, JSON, str | None, datetime | None]:
        """The outcome of a handler this daemon stopped, however the handler ended."""
        if running.stop_reason == CANCELLED:
            return Outcome.CANCELLED, None, "cancelled while running", None
        if running.stop_reason == SHUTDOWN:
            return Outcome.REQUEUED, None, "interrupted by a shutdown; requeued", None
        return None, None, None, None

    def _after_failure(
        self, job: Job, error: str, delay: float | None
    ) -> tuple[Outcome, JSON, str, datetime | None]:
        if job.attempts >= job.max_attempts:
            return (
                Outcome.FAILED,
                None,
                clean_text(f"{error} (attempt {job.attempts} of {job.max_attempts}, no more left)"),
                None,
            )
        if delay is None:
            delay = self._live.current.type_defaults(job.type).retry.delay(job.attempts, self._rng)
        run_at = self._clock() + timedelta(seconds=min(delay, MAX_RETRY_DELAY))
        return Outcome.RETRIED, None, clean_text(error), run_at

    async def _record_progress(self, job: Job, progress: Progress) -> None:
        try:
            await self._store.set_progress(job.id, self.owner, job.attempts, progress, self._clock())
        except (StoreUnavailable, InvalidJob) as error:  # progress is advisory: the job goes on
            log.warning("could not record progress of job %s: %s", job.id, error)
        self._watch.changed(job.id)

    # -- completing ---------------------------------------------------------------------

    async def _complete_batches(self) -> None:
        async with self._finished_receive as receive:
            async for first in receive:
                batch = [first]
                while len(batch) < COMPLETION_BATCH:
                    try:
                        batch.append(receive.receive_nowait())
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                await self._commit(batch)

    async def _commit(self, batch: list[_Finished]) -> None:
        failures = 0
        while True:
            try:
                stored = await self._store.complete_jobs([item.completion for item in batch], self._clock())
                break
            except InvalidJob as error:
                # A value the store cannot keep (a result PostgreSQL's jsonb refuses...):
                # record each outcome on its own, so that one bad item holds up no other.
                if len(batch) > 1:
                    for item in batch:
                        await self._commit([item])
                    return
                batch = [self._unstorable(batch[0], error)]
            except StoreUnavailable as error:
                # The outcomes stay in memory until the store is back; if this daemon
                # dies meanwhile, the expired leases get the jobs run again.
                failures += 1
                if failures == 1:
                    log.warning(
                        "cannot record %d job outcomes yet, the store is unavailable: %s", len(batch), error
                    )
                if trio.current_time() >= self._give_up_at:
                    log.error(
                        "shutting down without recording the outcomes of jobs %s; they stay running "
                        "in the store and are rescued when their lease expires",
                        ", ".join(str(item.job.id) for item in batch),
                    )
                    return
                await trio.sleep(_store_retry_delay(failures))
        for item, job in zip(batch, stored, strict=True):
            self._report(item, job)
        # Room under a global limit shows in the store only now: the claim made when the
        # slot was freed still counted these jobs as running. Claim again without waiting
        # for the next poll.
        queues = self._live.current.queues
        limited = {name for name, limits in queues.items() if limits.global_concurrency is not None}
        if any(item.job.queue in limited for item in batch):
            self.wake()

    @staticmethod
    def _unstorable(item: _Finished, error: InvalidJob) -> _Finished:
        if item.completion.outcome != Outcome.COMPLETED or item.completion.result is None:
            # Nothing but the error text can be at fault: keep the outcome, drop the text.
            completion = dataclasses.replace(item.completion, error="(the error text could not be stored)")
        else:
            completion = dataclasses.replace(
                item.completion,
                outcome=Outcome.FAILED,
                result=None,
                error=f"the handler's result could not be stored: {error.message}",
            )
        return dataclasses.replace(item, completion=completion)

    def _report(self, item: _Finished, stored: Job | None) -> None:
        job, completion = item.job, item.completion
        if stored is None:
            log.warning(
                "job %s: outcome %s of attempt %d discarded, the job is no longer this daemon's",
                job.id,
                completion.outcome,
                completion.attempt,
                extra=_job_fields(job, "fenced", item.duration),
            )
            return
        self._watch.changed(job.id)
        if completion.outcome == Outcome.RETRIED:
            self.on_scheduled()
        if completion.outcome == Outcome.REQUEUED:
            log.info("job %s requeued by shutdown", job.id, extra=_job_fields(job, "requeued", item.duration))
            return
        self._metrics.job_finished(job.queue, job.type, completion.outcome.value, item.duration)
        level = logging.INFO if completion.outcome == Outcome.COMPLETED else logging.WARNING
        message = "job %s %s" + (": %s" if completion.error else "")
        args = (job.id, completion.outcome.value, *((completion.error,) if completion.error else ()))
        log.log(level, message, *args, extra=_job_fields(job, completion.outcome.value, item.duration))

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
                    running.stop("its lease was lost: the job was rescued or cancelled elsewhere")

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


def _store_retry_delay(failures: int) -> float:
    """How long to wait before asking an unavailable store again, after `failures` tries."""
    return STORE_RETRY_DELAYS[min(failures, len(STORE_RETRY_DELAYS)) - 1]


def _job_fields(job: Job, outcome: str, duration: float | None) -> dict[str, object]:
    fields: dict[str, object] = {
        "job_id": str(job.id),
        "type": job.type,
        "queue": job.queue,
        "attempt": job.attempts,
        "outcome": outcome,
    }
    if duration is not None:
        fields["duration"] = round(duration, 6)
    return fields
