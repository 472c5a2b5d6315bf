"""An in-memory store: for tests, demos and benchmarks. Keeps nothing across restarts."""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime

import trio

from jobd.errors import InvalidJob, JobNotFound, KeyInUse
from jobd.job import FINISHED_STATES, Action, Job, JobState, Progress, next_state
from jobd.store import (
    Completion,
    Inserted,
    JobFilter,
    JobPage,
    NewJob,
    Outcome,
    QueueCounts,
    QueueSlots,
    Rescued,
    WakeCallback,
)

ReadyHeaps = dict[str, list[tuple[tuple[int, datetime, int], int, "_Row"]]]
_entries = itertools.count()  # ties between heap entries never compare rows


class _Row:
    """One stored job and its lease. Whenever it becomes `pending` it enters its queue's
    heap of ready rows, so a claim pops the best rows instead of sorting the table."""

    __slots__ = ("_job", "_ready", "cancel_requested", "lease_until", "owner", "sequence")

    def __init__(self, job: Job, sequence: int, ready: ReadyHeaps) -> None:
        self.sequence = sequence
        self.owner: str | None = None
        self.lease_until: datetime | None = None
        self.cancel_requested = False
        self._ready = ready
        self.job = job

    @property
    def job(self) -> Job:
        return self._job

    @job.setter
    def job(self, job: Job) -> None:
        self._job = job
        if job.state == JobState.PENDING:
            heapq.heappush(self._ready.setdefault(job.queue, []), (self.sort_key(), next(_entries), self))

    def sort_key(self) -> tuple[int, datetime, int]:
        return (-self._job.priority, self._job.run_at, self.sequence)

    def ready_with(self, key: tuple[int, datetime, int]) -> bool:
        """Whether a heap entry made with `key` still stands for this row."""
        return self._job.state == JobState.PENDING and key == self.sort_key()


class MemoryStore:
    shared = False

    def __init__(self) -> None:
        self._rows: dict[uuid.UUID, _Row] = {}
        self._sequence = itertools.count(1)
        self._paused: set[str] = set()
        self._ready: ReadyHeaps = {}

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def ping(self) -> None:
        pass

    async def insert_jobs(self, jobs: Sequence[NewJob]) -> list[Inserted]:
        results: list[Inserted] = []
        live_keys = (
            {
                row.job.key: row.job
                for row in self._rows.values()
                if row.job.key and row.job.state not in FINISHED_STATES
            }
            if any(new.key is not None for new in jobs)
            else {}
        )
        new_ids: set[uuid.UUID] = set()
        for index, new in enumerate(jobs):
            if new.key is not None and new.key in live_keys:
                results.append(Inserted(live_keys[new.key], created=False))
                continue
            if new.id in self._rows or new.id in new_ids:
                raise InvalidJob(f"a job with id {new.id} already exists", field="id", index=index)
            job = Job(
                id=new.id,
                type=new.type,
                queue=new.queue,
                payload=new.payload,
                state=new.state,
                priority=new.priority,
                attempts=0,
                max_attempts=new.max_attempts,
                timeout=new.timeout,
                run_at=new.run_at,
                created_at=new.created_at,
                updated_at=new.created_at,
                key=new.key,
            )
            if new.key is not None:
                live_keys[new.key] = job
            new_ids.add(new.id)
            results.append(Inserted(job, created=True))
        for result in results:
            if result.created:
                self._rows[result.job.id] = _Row(result.job, next(self._sequence), self._ready)
        return results

    async def get_job(self, job_id: uuid.UUID) -> Job | None:
        row = self._rows.get(job_id)
        return row.job if row else None

    async def list_jobs(self, filter: JobFilter, limit: int, after: str | None) -> JobPage:
        below = _parse_cursor(after)
        rows = sorted(
            (
                row
                for row in self._rows.values()
                if (below is None or row.sequence < below)
                and (filter.state is None or row.job.state == filter.state)
                and (filter.type is None or row.job.type == filter.type)
                and (filter.queue is None or row.job.queue == filter.queue)
            ),
            key=lambda row: -row.sequence,
        )
        page = rows[:limit]
        more = len(rows) > limit
        return JobPage([row.job for row in page], str(page[-1].sequence) if more and page else None)

    async def claim_jobs(
        self, owner: str, slots: Sequence[QueueSlots], limit: int, now: datetime, lease_until: datetime
    ) -> list[Job]:
        # Counting running jobs scans every row: only a global limit needs it.
        running = self._running_per_queue() if any(slot.global_limit is not None for slot in slots) else {}
        candidates: list[_Row] = []
        for slot in slots:
            if slot.queue in self._paused:
                continue
            allowed = slot.free
            if slot.global_limit is not None:
                allowed = min(allowed, slot.global_limit - running.get(slot.queue, 0))
            if allowed <= 0:
                continue
            candidates.extend(self._pop_ready(slot.queue, allowed))
        candidates.sort(key=_Row.sort_key)
        for row in candidates[max(limit, 0) :]:  # not taken after all: ready again
            heapq.heappush(self._ready[row.job.queue], (row.sort_key(), next(_entries), row))
        claimed: list[Job] = []
        for row in candidates[: max(limit, 0)]:
            row.job = dataclasses.replace(
                row.job,
                state=next_state(row.job.id, row.job.state, Action.CLAIM),
                attempts=row.job.attempts + 1,
                started_at=now,
                updated_at=now,
                progress=None,
            )
            row.owner, row.lease_until, row.cancel_requested = owner, lease_until, False
            claimed.append(row.job)
        return claimed

    def _pop_ready(self, queue: str, count: int) -> list[_Row]:
        """The best `count` ready rows of `queue`, taken off its heap (stale entries dropped)."""
        heap = self._ready.get(queue, [])
        taken: list[_Row] = []
        while heap and len(taken) < count:
            key, _, row = heapq.heappop(heap)
            if row.ready_with(key) and self._rows.get(row.job.id) is row and row not in taken:
                taken.append(row)
        return taken

    def _running_per_queue(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for row in self._rows.values():
            if row.job.state == JobState.RUNNING:
                counts[row.job.queue] = counts.get(row.job.queue, 0) + 1
        return counts

    def _fenced(self, job_id: uuid.UUID, owner: str, attempt: int) -> _Row | None:
        row = self._rows.get(job_id)
        if (
            row is None
            or row.job.state != JobState.RUNNING
            or row.owner != owner
            or row.job.attempts != attempt
        ):
            return None
        return row

    async def complete_jobs(self, completions: Sequence[Completion], now: datetime) -> list[Job | None]:
        results: list[Job | None] = []
        for completion in completions:
            row = self._fenced(completion.job_id, completion.owner, completion.attempt)
            if row is None:
                results.append(None)
                continue
            state = next_state(row.job.id, row.job.state, completion.outcome.action)
            job = dataclasses.replace(row.job, state=state, updated_at=now)
            if completion.outcome == Outcome.COMPLETED:
                job = dataclasses.replace(job, result=completion.result, finished_at=now)
            elif completion.outcome == Outcome.RETRIED:
                job = dataclasses.replace(job, last_error=completion.error, run_at=completion.run_at or now)
            elif completion.outcome == Outcome.REQUEUED:
                job = dataclasses.replace(
                    job, attempts=job.attempts - 1, run_at=now, last_error=completion.error
                )
            else:
                job = dataclasses.replace(job, last_error=completion.error, finished_at=now)
            row.job, row.owner, row.lease_until, row.cancel_requested = job, None, None, False
            results.append(job)
        return results

    async def renew_leases(
        self, owner: str, job_ids: Sequence[uuid.UUID], lease_until: datetime
    ) -> set[uuid.UUID]:
        kept: set[uuid.UUID] = set()
        for job_id in job_ids:
            row = self._rows.get(job_id)
            if row is not None and row.job.state == JobState.RUNNING and row.owner == owner:
                row.lease_until = lease_until
                kept.add(job_id)
        return kept

    async def set_progress(
        self, job_id: uuid.UUID, owner: str, attempt: int, progress: Progress, now: datetime
    ) -> bool:
        row = self._fenced(job_id, owner, attempt)
        if row is None:
            return False
        row.job = dataclasses.replace(row.job, progress=progress, updated_at=now)
        return True

    async def cancel_job(self, job_id: uuid.UUID, now: datetime) -> Job:
        row = self._rows.get(job_id)
        if row is None:
            raise JobNotFound(str(job_id))
        state = next_state(job_id, row.job.state, Action.CANCEL)
        if row.job.state == JobState.RUNNING:
            row.cancel_requested = True
            return row.job
        row.job = dataclasses.replace(
            row.job, state=state, updated_at=now, finished_at=now, last_error="cancelled before it ran"
        )
        return row.job

    async def cancel_requests(self, owner: str) -> set[uuid.UUID]:
        return {
            job_id
            for job_id, row in self._rows.items()
            if row.cancel_requested and row.owner == owner and row.job.state == JobState.RUNNING
        }

    async def retry_job(self, job_id: uuid.UUID, now: datetime) -> Job:
        row = self._rows.get(job_id)
        if row is None:
            raise JobNotFound(str(job_id))
        state = next_state(job_id, row.job.state, Action.RETRY)
        key = row.job.key
        if key is not None and any(
            other.job.key == key and other.job.state not in FINISHED_STATES for other in self._rows.values()
        ):
            raise KeyInUse(str(job_id), key)
        row.job = dataclasses.replace(
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
        return row.job

    async def promote_due_jobs(self, now: datetime) -> datetime | None:
        earliest: datetime | None = None
        for row in self._rows.values():
            if row.job.state != JobState.SCHEDULED:
                continue
            if row.job.run_at <= now:
                row.job = dataclasses.replace(
                    row.job, state=next_state(row.job.id, row.job.state, Action.PROMOTE), updated_at=now
                )
            elif earliest is None or row.job.run_at < earliest:
                earliest = row.job.run_at
        return earliest

    async def rescue_jobs(self, now: datetime, *, all_running: bool = False) -> list[Rescued]:
        rescued: list[Rescued] = []
        for row in self._rows.values():
            if row.job.state != JobState.RUNNING or row.owner is None:
                continue
            if not all_running and row.lease_until is not None and row.lease_until >= now:
                continue
            owner = row.owner
            error = f"lease expired: daemon {owner} stopped renewing attempt {row.job.attempts}"
            if row.cancel_requested:
                action, error = Action.CANCEL, "cancelled; " + error
            elif row.job.attempts >= row.job.max_attempts:
                action = Action.FAIL
            else:
                action = Action.REQUEUE
            state = next_state(row.job.id, row.job.state, action)
            row.job = dataclasses.replace(
                row.job,
                state=state,
                last_error=error,
                updated_at=now,
                run_at=now if state == JobState.PENDING else row.job.run_at,
                finished_at=now if state in FINISHED_STATES else None,
            )
            row.owner, row.lease_until, row.cancel_requested = None, None, False
            rescued.append(Rescued(row.job, owner))
        return rescued

    async def prune_jobs(self, before: Mapping[JobState, datetime], limit: int) -> int:
        if limit <= 0:
            return 0
        deleted = 0
        for state, cutoff in before.items():
            doomed = [
                job_id
                for job_id, row in self._rows.items()
                if row.job.state == state and row.job.finished_at is not None and row.job.finished_at < cutoff
            ][:limit]
            for job_id in doomed:
                del self._rows[job_id]
            deleted += len(doomed)
        return deleted

    async def count_jobs(self) -> QueueCounts:
        counts: dict[str, dict[JobState, int]] = {}
        for row in self._rows.values():
            per_state = counts.setdefault(row.job.queue, {})
            per_state[row.job.state] = per_state.get(row.job.state, 0) + 1
        return counts

    async def set_queue_paused(self, queue: str, paused: bool) -> None:
        if paused:
            self._paused.add(queue)
        else:
            self._paused.discard(queue)

    async def paused_queues(self) -> frozenset[str]:
        return frozenset(self._paused)

    async def listen(
        self, wake: WakeCallback, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started()
        await trio.sleep_forever()


def _parse_cursor(after: str | None) -> int | None:
    if after is None:
        return None
    if not after.isdigit():
        raise ValueError(f"not a cursor from this store: {after!r}")
    return int(after)
