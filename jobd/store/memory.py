"""An in-memory store: for tests, demos and benchmarks. Keeps nothing across restarts.

Every row keeps the store's indexes current whenever its job changes (`_Row.job`'s
setter): ready heaps per queue, a heap of scheduled rows, counts per queue and state,
the live keys, and the finished rows in the order they finished. So a claim, a
promotion, a count or a prune never walks the whole table, however many finished
jobs it keeps.
"""

from __future__ import annotations

import collections
import dataclasses
import heapq
import itertools
import math
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import trio

from jobd.errors import InvalidJob, JobNotFound, KeyInUse
from jobd.job import FINISHED_STATES, JSON, Action, Job, JobState, Progress, next_state
from jobd.rates import RateLimit
from jobd.store import (
    RATED_OUTCOMES,
    Bucket,
    ClaimRequest,
    CompletedAndClaimed,
    Completion,
    Fired,
    Inserted,
    InsertedAndClaimed,
    JobFilter,
    JobPage,
    NewJob,
    Outcome,
    QueueActivity,
    QueueCounts,
    QueueSlots,
    Rescued,
    ScheduleFire,
    ScheduleRecord,
    WakeCallback,
    after_fire,
    joined_chunks,
    paused_record,
    plan_fire,
    queue_activities,
    rate_window,
    refill_bucket,
    rescue_decision,
    settle_waiting,
    spend_tokens,
    synced_record,
    within_window,
)

_entries = itertools.count()  # ties between heap entries never compare rows
_RING = 16  # one-second slots kept per queue and outcome, as the SQL stores keep them
# A running job's next state -> the outcome of RATED_OUTCOMES it counts as.
_ENDED_AS: Mapping[JobState, Outcome] = {outcome.state: outcome for outcome in RATED_OUTCOMES}


class _Indexes:
    """What the store keeps besides the rows, updated as each row's job changes."""

    def __init__(self) -> None:
        self.ready: dict[str, list[tuple[tuple[int, datetime, int], int, _Row]]] = {}
        # Per queue, the pending rows by run_at alone: the oldest one is the first.
        self.ready_since: dict[str, list[tuple[datetime, int, _Row]]] = {}
        self.scheduled: list[tuple[datetime, int, _Row]] = []
        self.counts: collections.Counter[tuple[str, JobState]] = collections.Counter()
        self.live_keys: dict[str, _Row] = {}
        self.running: dict[uuid.UUID, _Row] = {}
        self.finished: dict[JobState, list[tuple[datetime, int, _Row]]] = {
            state: [] for state in FINISHED_STATES
        }
        # (queue, outcome, slot) -> (the second the slot counts, attempts ended in it)
        self.ended: dict[tuple[str, Outcome, int], tuple[int, int]] = {}

    def enter(self, row: _Row) -> None:
        job = row.job
        self.counts[(job.queue, job.state)] += 1
        if job.state == JobState.PENDING:
            key = row.sort_key()
            heapq.heappush(self.ready.setdefault(job.queue, []), (key, next(_entries), row))
            self._enter_ready_since(row)
        elif job.state == JobState.SCHEDULED:
            heapq.heappush(self.scheduled, (job.run_at, next(_entries), row))
        elif job.state == JobState.RUNNING:
            self.running[job.id] = row
        elif job.finished_at is not None:
            heapq.heappush(self.finished[job.state], (job.finished_at, next(_entries), row))
        if job.key is not None and job.state not in FINISHED_STATES:
            self.live_keys[job.key] = row

    def _enter_ready_since(self, row: _Row) -> None:
        job = row.job
        heap = self.ready_since.setdefault(job.queue, [])
        heapq.heappush(heap, (job.run_at, next(_entries), row))
        # Claims leave stale entries behind everywhere in this heap, not only at its top
        # (a job that waits long keeps them below it): rebuild it when they dominate.
        if len(heap) > 2 * self.counts[(job.queue, JobState.PENDING)] + 64:
            live = {id(entry[2]): entry for entry in heap if _pending_since(entry)}
            heap[:] = live.values()
            heapq.heapify(heap)

    def oldest_pending(self, queue: str) -> datetime | None:
        heap = self.ready_since.get(queue, [])
        while heap and not _pending_since(heap[0]):
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def count_end(self, before: Job, after: Job) -> None:
        """Count an attempt that ended, in the ring slot of its second (see sql/sqlite/0006_top.sql)."""
        outcome = _ENDED_AS.get(after.state)
        if before.state != JobState.RUNNING or outcome is None:
            return
        second = math.floor(after.updated_at.timestamp())
        slot = (after.queue, outcome, second % _RING)
        held, jobs = self.ended.get(slot, (second, 0))
        if held <= second:
            self.ended[slot] = (second, jobs + 1 if held == second else 1)

    def leave(self, row: _Row) -> None:
        """Undo `enter` where it is cheap; heap entries go stale instead, and their
        readers check them against the row."""
        job = row.job
        self.counts[(job.queue, job.state)] -= 1
        self.running.pop(job.id, None)
        if job.key is not None and self.live_keys.get(job.key) is row:
            del self.live_keys[job.key]


def _pending_since(entry: tuple[datetime, int, _Row]) -> bool:
    """Whether a `ready_since` entry still stands for its row: pending since that run_at."""
    run_at, _, row = entry
    return not row.deleted and row.job.state == JobState.PENDING and row.job.run_at == run_at


class _Row:
    """One stored job and its lease."""

    __slots__ = ("_indexes", "_job", "cancel_requested", "deleted", "lease_until", "owner", "sequence")

    def __init__(self, job: Job, sequence: int, indexes: _Indexes) -> None:
        self.sequence = sequence
        self.owner: str | None = None
        self.lease_until: datetime | None = None
        self.cancel_requested = False
        self.deleted = False
        self._indexes = indexes
        self._job = job
        indexes.enter(self)

    @property
    def job(self) -> Job:
        return self._job

    @job.setter
    def job(self, job: Job) -> None:
        before = self._job
        self._indexes.leave(self)
        self._job = job
        self._indexes.enter(self)
        self._indexes.count_end(before, job)

    def sort_key(self) -> tuple[int, datetime, int]:
        return (-self._job.priority, self._job.run_at, self.sequence)

    def ready_with(self, key: tuple[int, datetime, int]) -> bool:
        """Whether a ready-heap entry made with `key` still stands for this row."""
        return not self.deleted and self._job.state == JobState.PENDING and key == self.sort_key()


class MemoryStore:
    shared = False
    chunked_inserts = False  # nothing to overlap: the store works on the loop

    def __init__(self) -> None:
        self._rows: dict[uuid.UUID, _Row] = {}
        self._sequence = itertools.count(1)
        self._paused: set[str] = set()
        self._indexes = _Indexes()
        self._schedules: dict[str, ScheduleRecord] = {}
        self._schedule_jobs: dict[str, list[_Row]] = {}  # each schedule's jobs that may be unfinished
        self._dependants: dict[uuid.UUID, list[uuid.UUID]] = {}  # parent -> the jobs naming it in `after`
        self._windows: dict[str, _Window] = {}  # key -> the latest job made with it and `unique_for`
        self._wake: WakeCallback | None = None  # the listener's: released jobs are work
        self._buckets: dict[str, Bucket] = {}  # each rate-limited queue's, once it started a job

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def ping(self) -> None:
        pass

    async def insert_jobs(self, jobs: Sequence[NewJob]) -> list[Inserted]:
        live_keys = self._indexes.live_keys
        batch_keys: dict[str, Job] = {}
        new_ids: set[uuid.UUID] = set()
        stands_for: dict[uuid.UUID, uuid.UUID] = {}  # an item not inserted -> the job returned instead
        results: list[Inserted] = []
        for index, new in enumerate(jobs):
            if new.key is not None:
                holder = (
                    batch_keys.get(new.key)
                    or (live_keys[new.key].job if new.key in live_keys else None)
                    or self._window_holder(new)
                )
                if holder is not None:
                    results.append(Inserted(holder, created=False))
                    stands_for[new.id] = holder.id
                    continue
            if new.id in self._rows or new.id in new_ids:
                raise InvalidJob(f"a job with id {new.id} already exists", field="id", index=index)
            for parent in new.after:
                if parent not in self._rows and parent not in new_ids and parent not in stands_for:
                    raise InvalidJob(
                        f"after names job {parent}, which does not exist", field="after", index=index
                    )
            job = new.inserted()
            if any(parent in stands_for for parent in new.after):
                job = dataclasses.replace(
                    job, after=_unique(stands_for.get(parent, parent) for parent in new.after)
                )
            if new.key is not None:
                batch_keys[new.key] = job
            new_ids.add(new.id)
            results.append(Inserted(job, created=True))
        for new, result in zip(jobs, results, strict=True):
            if result.created:
                job = result.job
                row = self._rows[job.id] = _Row(job, next(self._sequence), self._indexes)
                if job.schedule is not None:
                    self._schedule_jobs.setdefault(job.schedule, []).append(row)
                if new.unique_for is not None and job.key is not None:
                    self._windows[job.key] = _Window(job.id, job.created_at, new.unique_for)
                for parent in job.after:
                    self._dependants.setdefault(parent, []).append(job.id)
        waiting = [result.job for result in results if result.created and result.job.after]
        if not waiting:
            return results
        # All at once: one that a parent cancels passes the cancel on to its dependants in turn.
        self._settle([job.id for job in waiting], waiting[0].created_at)
        return [Inserted(self._rows[r.job.id].job, True) if r.job.after and r.created else r for r in results]

    def _window_holder(self, new: NewJob) -> Job | None:
        """The job that made `new.key` within `new.unique_for`, if any."""
        window = self._windows.get(new.key) if new.unique_for is not None and new.key is not None else None
        if (
            window is None
            or new.unique_for is None
            or not within_window(window.created_at, new.unique_for, new.created_at)
        ):
            return None
        row = self._rows.get(window.job_id)
        return row.job if row else None

    def _settle(self, job_ids: Sequence[uuid.UUID], now: datetime) -> None:
        """Settle the waiting jobs among `job_ids` (`settle_waiting`), and in turn the
        dependants of those it cancels; wake the workers if it released any."""
        released = False
        frontier = list(job_ids)
        while frontier:
            cancelled: list[uuid.UUID] = []
            for job_id in frontier:
                row = self._rows.get(job_id)
                if row is None or row.job.state != JobState.WAITING:
                    continue
                parents = {
                    parent: self._rows[parent].job.state for parent in row.job.after if parent in self._rows
                }
                settled = settle_waiting(row.job, parents, now)
                if settled.state == JobState.WAITING:
                    continue
                row.job = _changed(
                    row.job,
                    state=settled.state,
                    run_at=settled.run_at,
                    updated_at=now,
                    finished_at=now if settled.state.finished else None,
                    last_error=settled.error if settled.error is not None else row.job.last_error,
                )
                if settled.state.finished:
                    cancelled.extend(self._dependants.get(job_id, ()))
                else:
                    released = True
            frontier = cancelled
        if released and self._wake is not None:
            self._wake("jobs")

    def _finished(self, job: Job, now: datetime) -> None:
        """`job` just finished: settle the jobs waiting on it."""
        dependants = self._dependants.get(job.id)
        if dependants:
            self._settle(dependants, now)

    async def insert_job_chunks(self, chunks: Iterator[Sequence[NewJob]]) -> list[Inserted]:
        return await self.insert_jobs(joined_chunks(chunks))

    async def insert_and_claim_jobs(
        self, jobs: Sequence[NewJob], claim: ClaimRequest, now: datetime
    ) -> InsertedAndClaimed:
        inserted = await self.insert_jobs(jobs)
        claimed = self._claim(claim.owner, claim.slots, claim.limit, now, claim.lease_until)
        return InsertedAndClaimed(inserted, claimed.claimed, claimed.rate_held)

    async def get_job(self, job_id: uuid.UUID) -> Job | None:
        row = self._rows.get(job_id)
        return row.job if row else None

    async def job_results(self, job_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, JSON]:
        return {job_id: self._rows[job_id].job.result for job_id in job_ids if job_id in self._rows}

    async def list_jobs(self, wanted: JobFilter, limit: int, after: str | None) -> JobPage:
        below = _parse_cursor(after)
        page: list[_Row] = []
        # Rows are kept in submission order: walk them newest first and stop at a full page.
        for row in reversed(self._rows.values()):
            if below is not None and row.sequence >= below:
                continue
            job = row.job
            if (
                (wanted.state is None or job.state == wanted.state)
                and (wanted.type is None or job.type == wanted.type)
                and (wanted.queue is None or job.queue == wanted.queue)
            ):
                page.append(row)
                if len(page) > limit:
                    break
        more = len(page) > limit
        page = page[:limit]
        return JobPage([row.job for row in page], str(page[-1].sequence) if more and page else None)

    async def claim_jobs(
        self, owner: str, slots: Sequence[QueueSlots], limit: int, now: datetime, lease_until: datetime
    ) -> list[Job]:
        return self._claim(owner, slots, limit, now, lease_until).claimed

    def _claim(
        self, owner: str, slots: Sequence[QueueSlots], limit: int, now: datetime, lease_until: datetime
    ) -> CompletedAndClaimed:
        """The claim of `claim_jobs`, with the queues its rate held back (nothing applied)."""
        candidates: list[_Row] = []
        counts = self._indexes.counts
        buckets: dict[str, tuple[Bucket, RateLimit]] = {}  # each rate-limited queue's, refilled
        held: set[str] = set()
        for slot in slots:
            if slot.queue in self._paused:
                continue
            allowed = slot.free
            if slot.global_limit is not None:
                allowed = min(allowed, slot.global_limit - counts[(slot.queue, JobState.RUNNING)])
            if allowed > 0 and slot.rate is not None:
                bucket = refill_bucket(self._buckets.get(slot.queue), slot.rate, now)
                buckets[slot.queue] = (bucket, slot.rate)
                # One job past the tokens tells whether the rate held any back.
                ready = self._pop_ready(slot.queue, min(allowed, limit, bucket.tokens + 1))
                if len(ready) > bucket.tokens:
                    held.add(slot.queue)
                    self._push_ready(ready[bucket.tokens :])
                candidates.extend(ready[: bucket.tokens])
            elif allowed > 0:
                candidates.extend(self._pop_ready(slot.queue, min(allowed, limit)))
        candidates.sort(key=_Row.sort_key)
        self._push_ready(candidates[max(limit, 0) :])  # not taken after all: ready again
        claimed: list[Job] = []
        state = next_state("", JobState.PENDING, Action.CLAIM)
        for row in candidates[: max(limit, 0)]:
            row.job = _changed(
                row.job,
                state=state,
                attempts=row.job.attempts + 1,
                started_at=now,
                updated_at=now,
                progress=None,
            )
            row.owner, row.lease_until, row.cancel_requested = owner, lease_until, False
            claimed.append(row.job)
        spent = spend_tokens(buckets, held, claimed)
        self._buckets.update(spent.buckets)
        return CompletedAndClaimed([], claimed, spent.rate_held)

    def _push_ready(self, rows: Sequence[_Row]) -> None:
        for row in rows:
            heapq.heappush(self._indexes.ready[row.job.queue], (row.sort_key(), next(_entries), row))

    def _pop_ready(self, queue: str, count: int) -> list[_Row]:
        """The best `count` ready rows of `queue`, taken off its heap (stale entries dropped)."""
        heap = self._indexes.ready.get(queue, [])
        taken: list[_Row] = []
        while heap and len(taken) < count:
            key, _, row = heapq.heappop(heap)
            if row.ready_with(key) and row not in taken:
                taken.append(row)
        return taken

    def _fenced(self, job_id: uuid.UUID, owner: str, attempt: int) -> _Row | None:
        row = self._indexes.running.get(job_id)
        if row is None or row.owner != owner or row.job.attempts != attempt:
            return None
        return row

    async def complete_jobs(self, completions: Sequence[Completion], now: datetime) -> list[bool]:
        return [self._complete(completion, now) for completion in completions]

    def _complete(self, completion: Completion, now: datetime) -> bool:
        row = self._fenced(completion.job_id, completion.owner, completion.attempt)
        if row is None or (completion.outcome == Outcome.REQUEUED and row.cancel_requested):
            return False
        job = row.job
        state = next_state(job.id, job.state, completion.outcome.action)
        if completion.outcome == Outcome.COMPLETED:
            job = _changed(job, state=state, updated_at=now, result=completion.result, finished_at=now)
        elif completion.outcome == Outcome.RETRIED:
            job = _changed(
                job, state=state, updated_at=now, last_error=completion.error, run_at=completion.run_at or now
            )
        elif completion.outcome == Outcome.REQUEUED:
            job = _changed(
                job,
                state=state,
                updated_at=now,
                attempts=job.attempts - 1,
                run_at=now,
                last_error=completion.error,
            )
        else:
            job = _changed(job, state=state, updated_at=now, last_error=completion.error, finished_at=now)
        row.owner, row.lease_until, row.cancel_requested = None, None, False
        row.job = job
        if state.finished:
            self._finished(job, now)
        return True

    async def complete_and_claim_jobs(
        self, completions: Sequence[Completion], claim: ClaimRequest, now: datetime
    ) -> CompletedAndClaimed:
        applied = await self.complete_jobs(completions, now)
        claimed = self._claim(claim.owner, claim.slots, claim.limit, now, claim.lease_until)
        return CompletedAndClaimed(applied, claimed.claimed, claimed.rate_held)

    async def renew_leases(
        self, owner: str, job_ids: Sequence[uuid.UUID], lease_until: datetime
    ) -> set[uuid.UUID]:
        kept: set[uuid.UUID] = set()
        for job_id in job_ids:
            row = self._indexes.running.get(job_id)
            if row is not None and row.owner == owner:
                row.lease_until = lease_until
                kept.add(job_id)
        return kept

    async def set_progress(
        self, job_id: uuid.UUID, owner: str, attempt: int, progress: Progress, now: datetime
    ) -> bool:
        row = self._fenced(job_id, owner, attempt)
        if row is None:
            return False
        row.job = _changed(row.job, progress=progress, updated_at=now)
        return True

    async def cancel_job(self, job_id: uuid.UUID, now: datetime) -> Job:
        row = self._rows.get(job_id)
        if row is None:
            raise JobNotFound(str(job_id))
        state = next_state(job_id, row.job.state, Action.CANCEL)
        if row.job.state == JobState.RUNNING:
            row.cancel_requested = True
            return row.job
        row.job = _changed(
            row.job, state=state, updated_at=now, finished_at=now, last_error="cancelled before it ran"
        )
        self._finished(row.job, now)
        return row.job

    async def cancel_requests(self, owner: str) -> set[uuid.UUID]:
        return {
            job_id
            for job_id, row in self._indexes.running.items()
            if row.cancel_requested and row.owner == owner
        }

    async def retry_job(self, job_id: uuid.UUID, now: datetime) -> Job:
        row = self._rows.get(job_id)
        if row is None:
            raise JobNotFound(str(job_id))
        state = next_state(job_id, row.job.state, Action.RETRY)
        key = row.job.key
        if key is not None and key in self._indexes.live_keys:
            raise KeyInUse(str(job_id), key)
        row.job = _changed(
            row.job,
            state=state,
            attempts=0,
            run_at=now,
            updated_at=now,
            started_at=None,
            finished_at=None,
            result=None,
            progress=None,
        )
        if row.job.schedule is not None:  # unfinished again: it counts for the overlap rule
            self._schedule_jobs.setdefault(row.job.schedule, []).append(row)
        return row.job

    async def promote_due_jobs(self, now: datetime) -> datetime | None:
        heap = self._indexes.scheduled
        state = next_state("", JobState.SCHEDULED, Action.PROMOTE)
        while heap:
            run_at, _, row = heap[0]
            if row.deleted or row.job.state != JobState.SCHEDULED or row.job.run_at != run_at:
                heapq.heappop(heap)  # stale: the row changed since
            elif run_at <= now:
                heapq.heappop(heap)
                row.job = _changed(row.job, state=state, updated_at=now)
            else:
                return run_at
        return None

    async def rescue_jobs(self, now: datetime, *, all_running: bool = False) -> list[Rescued]:
        rescued: list[Rescued] = []
        for row in list(self._indexes.running.values()):
            if row.owner is None:
                continue
            if not all_running and row.lease_until is not None and row.lease_until >= now:
                continue
            owner = row.owner
            decision = rescue_decision(row.job, owner, cancel_requested=row.cancel_requested)
            row.owner, row.lease_until, row.cancel_requested = None, None, False
            row.job = _changed(
                row.job,
                state=decision.state,
                last_error=decision.error,
                updated_at=now,
                run_at=now if decision.state == JobState.PENDING else row.job.run_at,
                finished_at=now if decision.state in FINISHED_STATES else None,
            )
            rescued.append(Rescued(row.job, owner))
            if decision.state.finished:
                self._finished(row.job, now)
        return rescued

    async def prune_jobs(self, before: Mapping[JobState, datetime], limit: int, now: datetime) -> int:
        if limit <= 0:
            return 0
        self._windows = {key: window for key, window in self._windows.items() if window.open_at(now)}
        kept_for_window = {window.job_id for window in self._windows.values()}
        deleted = 0
        for state, cutoff in before.items():
            finished = self._indexes.finished[state]
            kept: list[tuple[datetime, int, _Row]] = []
            count = 0
            while finished and count < limit:
                finished_at, _, row = finished[0]
                if row.deleted or row.job.state != state or row.job.finished_at != finished_at:
                    heapq.heappop(finished)  # stale: retried or deleted since
                elif finished_at < cutoff:
                    entry = heapq.heappop(finished)
                    if row.job.id in kept_for_window:
                        kept.append(entry)
                        continue
                    self._indexes.leave(row)
                    row.deleted = True
                    del self._rows[row.job.id]
                    self._dependants.pop(row.job.id, None)
                    count += 1
                else:
                    break
            for entry in kept:
                heapq.heappush(finished, entry)
            deleted += count
        return deleted

    async def count_jobs(self) -> QueueCounts:
        counts: dict[str, dict[JobState, int]] = {}
        for (queue, state), jobs in self._indexes.counts.items():
            if jobs:
                counts.setdefault(queue, {})[state] = jobs
        return counts

    async def queue_activity(self, queues: Sequence[str], now: datetime) -> dict[str, QueueActivity]:
        first, last = rate_window(now)
        ended: dict[tuple[str, Outcome], int] = collections.Counter()
        for (queue, outcome, _), (second, jobs) in self._indexes.ended.items():
            if first <= second < last:
                ended[(queue, outcome)] += jobs
        oldest = {queue: self._indexes.oldest_pending(queue) for queue in queues}
        return queue_activities(queues, {queue: at for queue, at in oldest.items() if at is not None}, ended)

    async def set_queue_paused(self, queue: str, paused: bool) -> None:
        if paused:
            self._paused.add(queue)
        else:
            self._paused.discard(queue)

    async def paused_queues(self) -> frozenset[str]:
        return frozenset(self._paused)

    async def sync_schedules(self, timings: Mapping[str, str], now: datetime) -> dict[str, ScheduleRecord]:
        for name, timing in timings.items():
            self._schedules[name] = synced_record(self._schedules.get(name), name, timing, now)
        return {name: self._schedules[name] for name in timings}

    async def schedule_records(self, names: Sequence[str]) -> dict[str, ScheduleRecord]:
        return {name: self._schedules[name] for name in names if name in self._schedules}

    async def set_schedule_paused(
        self, name: str, timing: str, paused: bool, now: datetime
    ) -> ScheduleRecord:
        record = synced_record(self._schedules.get(name), name, timing, now)
        self._schedules[name] = record = paused_record(record, paused, now)
        return record

    async def fire_schedules(self, fires: Sequence[ScheduleFire], now: datetime) -> list[Fired]:
        results = []
        for fire in fires:
            record = self._schedules.get(fire.name)
            if record is None:
                results.append(Fired(fire.name, None, [], []))
                continue
            plan = plan_fire(fire, record, self._has_unfinished(fire.name))
            made = [item.job for item in await self.insert_jobs(plan.jobs)]
            self._schedules[fire.name] = record = after_fire(record, plan, made)
            results.append(Fired(fire.name, record, plan.ticks, made))
        return results

    def _has_unfinished(self, schedule: str) -> bool:
        # Finished rows leave the list; a retry puts its row back.
        rows = self._schedule_jobs.get(schedule, [])
        rows[:] = [row for row in rows if not row.deleted and not row.job.state.finished]
        return bool(rows)

    async def listen(
        self, wake: WakeCallback, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        # Nothing to listen to; the store itself calls `wake` when it releases waiting jobs.
        self._wake = wake
        task_status.started()
        try:
            await trio.sleep_forever()
        finally:
            self._wake = None


_KEEP: Any = object()


def _changed(
    job: Job,
    *,
    state: JobState = _KEEP,
    attempts: int = _KEEP,
    run_at: datetime = _KEEP,
    updated_at: datetime = _KEEP,
    started_at: datetime | None = _KEEP,
    finished_at: datetime | None = _KEEP,
    last_error: str | None = _KEEP,
    result: JSON = _KEEP,
    progress: Progress | None = _KEEP,
) -> Job:
    """`dataclasses.replace` for the fields a store changes, at less than half its cost:
    every claim and completion of this store makes a new `Job`."""
    return Job(
        job.id,
        job.type,
        job.queue,
        job.payload,
        job.state if state is _KEEP else state,
        job.priority,
        job.attempts if attempts is _KEEP else attempts,
        job.max_attempts,
        job.timeout,
        job.run_at if run_at is _KEEP else run_at,
        job.created_at,
        job.updated_at if updated_at is _KEEP else updated_at,
        job.started_at if started_at is _KEEP else started_at,
        job.finished_at if finished_at is _KEEP else finished_at,
        job.last_error if last_error is _KEEP else last_error,
        job.result if result is _KEEP else result,
        job.progress if progress is _KEEP else progress,
        job.key,
        job.schedule,
        job.scheduled_for,
        job.after,
        job.on_parent_failure,
        job.traceparent,
    )


@dataclass(frozen=True, slots=True)
class _Window:
    """The latest job made with a key and `unique_for`."""

    job_id: uuid.UUID
    created_at: datetime
    unique_for: float

    def open_at(self, now: datetime) -> bool:
        return within_window(self.created_at, self.unique_for, now)


def _unique(ids: Iterable[uuid.UUID]) -> tuple[uuid.UUID, ...]:
    return tuple(dict.fromkeys(ids))


def _parse_cursor(after: str | None) -> int | None:
    if after is None:
        return None
    if not after.isdigit():
        raise ValueError(f"not a cursor from this store: {after!r}")
    return int(after)
