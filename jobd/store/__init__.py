"""The storage boundary: the `Store` protocol every store implements, and its values.

The engine knows only this protocol; `create_store` in `jobd.store.factory` picks an
implementation from the config's URL. Every method is one round trip to the store
(one thread hop, one transaction), whatever the number of rows it touches.

Rules every implementation keeps (the conformance suite in tests/ checks them):
- Claim order: priority descending, then run_at ascending, then submission order.
- A job's state changes only as `jobd.job.TRANSITIONS` allows.
- Completions are fenced: a completion applies only while the job is `running`
  under the same `owner` and `attempts` as the claim that produced it.
- A waiting job is settled (`settle_waiting`) in the transaction that finishes its
  last parent, or one of them badly; a job cancelled so settles its own dependants.
- No psycopg or sqlite3 exception crosses this boundary: a store that cannot be
  reached raises `StoreUnavailable`.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import math
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence, Set
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

import trio

from jobd.job import FINISHED_STATES, JSON, Action, Job, JobState, ParentFailure, Progress, next_state
from jobd.rates import RateLimit

WakeCallback = Callable[[str], None]
"""Called by a shared store's listener: "jobs" (new work may be claimable) or "cancel"; and
of the listener itself: "connected" (after every (re)connect, before a "jobs" and a
"cancel" that make up for what it missed) or "disconnected" (its connection dropped)."""


@dataclass(frozen=True, slots=True)
class NewJob:
    """A job to insert; every option already resolved by the engine."""

    id: uuid.UUID
    type: str
    queue: str
    payload: JSON
    priority: int
    run_at: datetime
    max_attempts: int
    timeout: float | None
    key: str | None
    created_at: datetime
    schedule: str | None = None
    scheduled_for: datetime | None = None
    after: tuple[uuid.UUID, ...] = ()  # parents, each named once
    on_parent_failure: ParentFailure = ParentFailure.CANCEL
    unique_for: float | None = None  # seconds: `key` returns any job it made this recently
    traceparent: str | None = None

    @property
    def state(self) -> JobState:
        """`waiting` when it has parents (the store settles it at once against those that
        finished already), else `scheduled` when run_at is after created_at, else `pending`."""
        if self.after:
            return JobState.WAITING
        return JobState.SCHEDULED if self.run_at > self.created_at else JobState.PENDING

    @property
    def stands_alone(self) -> bool:
        """Neither a key (a job holding it may be returned instead) nor parents (which may
        settle it at once): once inserted, the job is `inserted()`, whatever the store holds."""
        return self.key is None and not self.after and self.unique_for is None

    def inserted(self) -> Job:
        """The job as a store keeps it once inserted."""
        return Job(
            id=self.id,
            type=self.type,
            queue=self.queue,
            payload=self.payload,
            state=self.state,
            priority=self.priority,
            attempts=0,
            max_attempts=self.max_attempts,
            timeout=self.timeout,
            run_at=self.run_at,
            created_at=self.created_at,
            updated_at=self.created_at,
            key=self.key,
            schedule=self.schedule,
            scheduled_for=self.scheduled_for,
            after=self.after,
            on_parent_failure=self.on_parent_failure,
            traceparent=self.traceparent,
        )


@dataclass(frozen=True, slots=True)
class Inserted:
    job: Job
    created: bool  # False: a live job with the same key was returned instead


def standing_alone(chunk: Sequence[NewJob]) -> Sequence[NewJob]:
    """`chunk`, whose jobs must each stand alone (`Store.insert_job_chunks`)."""
    for new in chunk:
        if not new.stands_alone:
            raise ValueError(f"job {new.id} has a key or parents: insert it with insert_jobs")
    return chunk


def all_created(jobs: Sequence[NewJob]) -> list[Inserted]:
    """The answer for jobs that each stand alone, all inserted: for 1,000 jobs a few
    milliseconds of the daemon's, which a store makes while its database inserts them."""
    return [Inserted(new.inserted(), created=True) for new in jobs]


def joined_chunks(chunks: Iterator[Sequence[NewJob]]) -> list[NewJob]:
    """Every job of `chunks`, for a store that inserts them in one call (no overlap)."""
    return [new for chunk in chunks for new in standing_alone(chunk)]


class Outcome(enum.StrEnum):
    COMPLETED = "completed"  # -> completed, with `result`
    RETRIED = "retried"  # -> scheduled at `run_at`, with `error`
    FAILED = "failed"  # -> failed, with `error`
    CANCELLED = "cancelled"  # -> cancelled, with `error`
    REQUEUED = "requeued"  # -> pending, the attempt given back (attempts - 1): graceful shutdown

    @property
    def action(self) -> Action:
        """What this outcome does to a running job, for `jobd.job.next_state`."""
        return _OUTCOME_ACTIONS[self]

    @property
    def state(self) -> JobState:
        """The state a running job is in after this outcome."""
        return next_state("a running job", JobState.RUNNING, self.action)


_OUTCOME_ACTIONS = {
    Outcome.COMPLETED: Action.COMPLETE,
    Outcome.RETRIED: Action.BACK_OFF,
    Outcome.FAILED: Action.FAIL,
    Outcome.CANCELLED: Action.CANCEL,
    Outcome.REQUEUED: Action.REQUEUE,
}


@dataclass(frozen=True, slots=True)
class Completion:
    """The end of one attempt, fenced by the claim's owner and attempt number."""

    job_id: uuid.UUID
    owner: str
    attempt: int
    outcome: Outcome
    result: JSON = None
    error: str | None = None
    run_at: datetime | None = None  # for RETRIED


@dataclass(frozen=True, slots=True)
class QueueSlots:
    """How many jobs of `queue` a claim may take."""

    queue: str
    free: int  # this daemon's free slots for the queue
    global_limit: int | None = None  # running jobs allowed across all daemons (shared stores)
    rate: RateLimit | None = None  # starts allowed across all daemons, through the queue's `Bucket`


@dataclass(frozen=True, slots=True)
class ClaimRequest:
    """What a claim may take: see `Store.claim_jobs`."""

    owner: str
    slots: Sequence[QueueSlots]
    limit: int
    lease_until: datetime


RateHeld = Mapping[str, datetime]
"""Each queue whose rate held back jobs a claim would otherwise have started -> when
its next token is due."""


@dataclass(frozen=True, slots=True)
class CompletedAndClaimed:
    applied: list[bool]  # one per completion: False where the fence refused it
    claimed: list[Job]  # in claim order
    rate_held: RateHeld = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class InsertedAndClaimed:
    inserted: list[Inserted]  # one per job to insert
    claimed: list[Job]  # in claim order
    rate_held: RateHeld = field(default_factory=dict)


TOKEN = 3_600_000_000
"""A bucket's level counts tokens in these units: a rate of N/s, N/m or N/h adds a whole
number of them per microsecond (3600 N, 60 N, N), so every store computes the same
level, in integers, to the microsecond."""


@dataclass(frozen=True, slots=True)
class Bucket:
    """The token bucket of a rate-limited queue, one per queue, shared by every daemon
    using the store. A claim refills it (`refill_bucket`), starts at most `tokens` jobs
    of the queue and takes one token per job started (`spend`)."""

    level: int  # in units of 1/TOKEN of a token
    updated_at: datetime

    @property
    def tokens(self) -> int:
        """Whole tokens: the starts allowed now."""
        return self.level // TOKEN

    def spend(self, taken: int) -> Bucket:
        return dataclasses.replace(self, level=self.level - taken * TOKEN)

    def next_token_at(self, rate: RateLimit) -> datetime:
        """When the bucket next holds a whole token (`updated_at` if it holds one now)."""
        missing = max(TOKEN - self.level, 0)
        return self.updated_at + timedelta(microseconds=-(-missing // refill_per_microsecond(rate)))


def refill_bucket(bucket: Bucket | None, rate: RateLimit, now: datetime) -> Bucket:
    """`bucket` as it stands at `now`: refilled by the time elapsed times the rate, up to
    `burst` tokens. A queue without a bucket yet has a full one. A `now` before the
    bucket's last change (another daemon's clock running a little ahead) adds nothing
    and never moves the bucket back. Every store's claim goes through this rule and
    `spend_tokens`; PostgreSQL's does the same in SQL (`complete_and_claim_jobs` in
    sql/postgres/queries.sql), and the conformance suite holds all three to it."""
    full = rate.burst * TOKEN
    if bucket is None:
        return Bucket(full, now)
    elapsed = max((now - bucket.updated_at) // timedelta(microseconds=1), 0)
    level = min(full, bucket.level + elapsed * refill_per_microsecond(rate))
    return Bucket(level, max(bucket.updated_at, now))


@dataclass(frozen=True, slots=True)
class SpentTokens:
    buckets: dict[str, Bucket]  # to write: those of the queues that started jobs
    rate_held: dict[str, datetime]


def spend_tokens(
    refilled: Mapping[str, tuple[Bucket, RateLimit]], held: Set[str], claimed: Sequence[Job]
) -> SpentTokens:
    """After a claim: each rate-limited queue's bucket (`refilled` for the claim) less a
    token per job of the queue `claimed`, and when the next token is due for each queue
    the rate `held` back."""
    taken = collections.Counter(job.queue for job in claimed)
    buckets, rate_held = {}, {}
    for queue, (bucket, rate) in refilled.items():
        spent = bucket.spend(taken[queue])
        if taken[queue]:
            buckets[queue] = spent
        if queue in held:
            rate_held[queue] = spent.next_token_at(rate)
    return SpentTokens(buckets, rate_held)


def refill_per_microsecond(rate: RateLimit) -> int:
    """The units of `TOKEN` that `rate` adds to a bucket per microsecond."""
    return rate.count * (TOKEN // (rate.period * 1_000_000))


@dataclass(frozen=True, slots=True)
class JobPage:
    jobs: Sequence[Job]
    next: str | None  # cursor for the following page, None at the end


@dataclass(frozen=True, slots=True)
class JobFilter:
    state: JobState | None = None
    type: str | None = None
    queue: str | None = None


@dataclass(frozen=True, slots=True)
class Rescued:
    job: Job  # as it is after the rescue
    owner: str  # the owner whose lease expired


@dataclass(frozen=True, slots=True)
class RescueDecision:
    state: JobState
    error: str


def rescue_decision(job: Job, owner: str, *, cancel_requested: bool) -> RescueDecision:
    """What becomes of a running job whose lease expired, and what its `last_error` says:
    `cancelled` if a cancel was requested, `failed` if that attempt was its last, else
    `pending` again. Every store rescues through this one rule."""
    error = f"lease expired: daemon {owner} stopped renewing attempt {job.attempts}"
    if cancel_requested:
        action, error = Action.CANCEL, "cancelled; " + error
    elif job.attempts >= job.max_attempts:
        action = Action.FAIL
    else:
        action = Action.REQUEUE
    return RescueDecision(next_state(job.id, job.state, action), error)


@dataclass(frozen=True, slots=True)
class Settled:
    """What becomes of a waiting job, as its parents stand."""

    state: JobState  # `waiting` (no change), `pending`, `scheduled` or `cancelled`
    run_at: datetime
    error: str | None = None  # for `cancelled`: which parent, and how it ended


def settle_waiting(job: Job, parents: Mapping[uuid.UUID, JobState], now: datetime) -> Settled:
    """The one rule for a waiting job, every store settles by it. `parents` holds the
    state of each parent the store still has: one it no longer has was pruned after it
    finished, and counts as completed. With `on_parent_failure = cancel`, a parent that
    ended failed or cancelled cancels the job; otherwise the job waits while a parent is
    unfinished, then is released: `pending` from `now`, or `scheduled` if its run_at is
    still ahead."""
    if job.on_parent_failure == ParentFailure.CANCEL:
        for parent in job.after:
            ended = parents.get(parent)
            if ended in (JobState.FAILED, JobState.CANCELLED):
                state = next_state(job.id, job.state, Action.CANCEL)
                return Settled(state, job.run_at, f"parent {parent} {ended}")
    if any(parents.get(parent, JobState.COMPLETED) not in FINISHED_STATES for parent in job.after):
        return Settled(JobState.WAITING, job.run_at)
    if job.run_at > now:
        return Settled(next_state(job.id, job.state, Action.RELEASE_LATER), job.run_at)
    return Settled(next_state(job.id, job.state, Action.RELEASE), now)


def within_window(created_at: datetime, unique_for: float, now: datetime) -> bool:
    """Whether a job made at `created_at` still holds its key for a submit at `now` that
    asks for `unique_for` seconds of uniqueness."""
    return (now - created_at).total_seconds() < unique_for


@dataclass(frozen=True, slots=True)
class ScheduleRecord:
    """What the store keeps of one schedule, shared by every daemon: the one judge of
    which of its ticks have fired."""

    name: str
    timing: str  # the recurrence's key the ticks are counted by (`jobd.recurrence.Recurrence.key`)
    since: datetime  # no tick at or before this fires: first seen, timing changed, or resumed
    last_tick: datetime | None  # the latest tick recorded (with its job, or skipped for overlap)
    last_job_id: uuid.UUID | None  # the job the latest tick that made one made
    paused: bool

    @property
    def counted_from(self) -> datetime:
        """Ticks after this are still to fire."""
        return self.since if self.last_tick is None else max(self.since, self.last_tick)


@dataclass(frozen=True, slots=True)
class ScheduleFire:
    """A daemon's request to fire some ticks of a schedule: one job per tick, oldest first,
    each job's `scheduled_for` its tick. The store keeps only the ticks its record has not
    seen (see `plan_fire`)."""

    name: str
    timing: str  # the ticks' definition in the asking daemon's config
    jobs: Sequence[NewJob]
    skip_overlap: bool  # overlap = "skip": no job while one of this schedule's is unfinished


@dataclass(frozen=True, slots=True)
class FirePlan:
    ticks: list[datetime]  # to record
    jobs: list[NewJob]  # to insert


@dataclass(frozen=True, slots=True)
class Fired:
    """What `fire_schedules` did for one schedule."""

    name: str
    record: ScheduleRecord | None  # as it stands now; None: the store knows no such schedule
    ticks: list[datetime]  # the ticks this call recorded
    jobs: list[Job]  # the jobs it made


def plan_fire(fire: ScheduleFire, record: ScheduleRecord, unfinished: bool) -> FirePlan:
    """Which ticks of `fire` the store records, and which jobs it makes, judged by its own
    record: none while paused, nor for a daemon that defines the schedule's ticks
    otherwise than the record (its config is not the one the store last synced); only
    ticks after `record.counted_from`; with `skip_overlap`, no job while the schedule has
    an `unfinished` job, else only the oldest tick's (the later ones would overlap it).
    Every store fires through this rule."""
    if record.paused or record.timing != fire.timing:
        return FirePlan([], [])
    after = record.counted_from
    fresh = [job for job in fire.jobs if job.scheduled_for is not None and job.scheduled_for > after]
    ticks = [job.scheduled_for for job in fresh if job.scheduled_for is not None]
    if fire.skip_overlap:
        fresh = [] if unfinished else fresh[:1]
    return FirePlan(ticks, fresh)


def after_fire(record: ScheduleRecord, plan: FirePlan, made: Sequence[Job]) -> ScheduleRecord:
    """The record once `plan` is carried out."""
    if not plan.ticks:
        return record
    last_job_id = made[-1].id if made else record.last_job_id
    return dataclasses.replace(record, last_tick=max(plan.ticks), last_job_id=last_job_id)


def synced_record(record: ScheduleRecord | None, name: str, timing: str, now: datetime) -> ScheduleRecord:
    """A schedule as a daemon starts (or reloads) with it: a new one, or one whose timing
    changed, counts its ticks from `now`; one the store knows with the same timing goes on
    where it was (its missed ticks are caught up)."""
    if record is None:
        return ScheduleRecord(name, timing, now, None, None, False)
    if record.timing != timing:
        return dataclasses.replace(record, timing=timing, since=now)
    return record


def paused_record(record: ScheduleRecord, paused: bool, now: datetime) -> ScheduleRecord:
    """Pause, or resume: a resumed schedule counts its ticks from `now`, so the ticks it
    missed while paused are never caught up."""
    if paused:
        return dataclasses.replace(record, paused=True)
    if record.paused:
        return dataclasses.replace(record, paused=False, since=max(record.since, now))
    return record


RATE_WINDOW = 10
"""Seconds: `Store.queue_activity` counts the attempts that ended in the RATE_WINDOW whole
seconds before the current one."""

RATED_OUTCOMES = (Outcome.COMPLETED, Outcome.FAILED, Outcome.RETRIED)
"""The ends of attempts that `Store.queue_activity` counts."""


@dataclass(frozen=True, slots=True)
class QueueActivity:
    """How work flows through one queue (see `Store.queue_activity`)."""

    oldest_pending: datetime | None  # the earliest run_at of its pending jobs; None: none pending
    ended: Mapping[Outcome, int]  # attempts ended per outcome of RATED_OUTCOMES in the window


def queue_activities(
    queues: Sequence[str], oldest: Mapping[str, datetime], ended: Mapping[tuple[str, Outcome], int]
) -> dict[str, QueueActivity]:
    """`Store.queue_activity`'s answer: every queue asked, every outcome counted (0 when none)."""
    return {
        queue: QueueActivity(
            oldest.get(queue), {outcome: ended.get((queue, outcome), 0) for outcome in RATED_OUTCOMES}
        )
        for queue in queues
    }


def rate_window(now: datetime) -> tuple[int, int]:
    """The Unix seconds `first <= second < last` whose ends `queue_activity` counts at `now`:
    the RATE_WINDOW whole seconds before now's, so a partly elapsed second never reads low."""
    last = math.floor(now.timestamp())
    return last - RATE_WINDOW, last


QueueCounts = Mapping[str, Mapping[JobState, int]]
"""Jobs per queue per state; a queue with no jobs may be absent, a state with none may be 0 or absent."""


class Store(Protocol):
    """Durable job storage."""

    shared: bool
    """True when several daemons may use the store at once (their leases matter)."""

    @property
    def chunked_inserts(self) -> bool:
        """True when `insert_job_chunks` takes a chunk while the database inserts the one
        before: only then does a batch gain from being checked chunk by chunk."""

    async def open(self) -> None:
        """Connect and bring the schema up to date. Raises `StoreUnavailable`."""

    async def close(self) -> None:
        """Release every connection and thread. Safe to call twice."""

    async def ping(self) -> None:
        """Return when the store answers; raise `StoreUnavailable` otherwise."""

    async def insert_jobs(self, jobs: Sequence[NewJob]) -> list[Inserted]:
        """Insert all, or none on error, in order; one result per item.

        An item whose `key` matches a job that is not finished (including an earlier
        item of the same batch), or, with `unique_for`, a job made with that key within
        the window (`within_window`), in any state, is not inserted: its result holds
        that job, created=False. An item's `after` names jobs the store holds or earlier
        items of the batch (an item not inserted stands for the job returned in its
        place); a job with parents is settled at once against those already finished.
        An unknown parent raises `InvalidJob` naming `after` and the item's index.
        """

    async def insert_job_chunks(self, chunks: Iterator[Sequence[NewJob]]) -> list[Inserted]:
        """`insert_jobs` of every job that `chunks` yields, in order, in one transaction:
        all or none, whatever `next(chunks)` raises. Every job stands alone
        (`NewJob.stands_alone`; `ValueError` otherwise). A store may take the next chunk
        while the database inserts the one before: the caller checks a batch chunk by
        chunk, and the checking overlaps the inserting."""

    async def insert_and_claim_jobs(
        self, jobs: Sequence[NewJob], claim: ClaimRequest, now: datetime
    ) -> InsertedAndClaimed:
        """`insert_jobs` then `claim_jobs`, in one transaction where the store can: a job
        submitted to a daemon with free slots starts without another round trip. The
        claim takes the best pending jobs, new or not, as any claim does."""

    async def get_job(self, job_id: uuid.UUID) -> Job | None: ...

    async def job_results(self, job_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, JSON]:
        """The result of each of those jobs the store still holds (a handler's parents)."""

    async def list_jobs(self, wanted: JobFilter, limit: int, after: str | None) -> JobPage:
        """Newest submitted first. `after` is a cursor from an earlier page; a cursor that
        is not one raises ValueError."""

    async def claim_jobs(
        self, owner: str, slots: Sequence[QueueSlots], limit: int, now: datetime, lease_until: datetime
    ) -> list[Job]:
        """Move pending jobs of the given queues to `running`, in claim order.

        Takes at most `limit` jobs in all, the first in claim order across the queues;
        at most `slot.free` of each queue; where `global_limit` is set, only as many
        as keep that queue's running jobs (all owners) within it; and, where `rate` is
        set, at most the whole tokens of the queue's bucket (`refill_bucket`), taking
        one per job claimed, the bucket written once per call. Skips paused queues.
        Each claimed job: attempts + 1, started_at = now, owned by `owner` until
        `lease_until`, progress cleared. Returns them in claim order.

        The rate held a queue back (`rate_held` of the calls that claim with others)
        when it has more pending jobs than whole tokens while its other limits would
        have let it start more: then the call reports when its next token is due.
        """

    async def complete_jobs(self, completions: Sequence[Completion], now: datetime) -> list[bool]:
        """Apply each completion that is still fenced-in; False for one that was not
        (the job was rescued, re-claimed or is gone). Sets finished_at on final states.

        A `REQUEUED` completion is also refused while a cancel is requested on the job:
        a cancel that lands during a shutdown must not send the job back to `pending`.
        The owner then records the attempt `CANCELLED` (see `jobd.completer`)."""

    async def complete_and_claim_jobs(
        self, completions: Sequence[Completion], claim: ClaimRequest, now: datetime
    ) -> CompletedAndClaimed:
        """`complete_jobs` then `claim_jobs`, in one transaction and one round trip.

        The claim may not see the room the completions make under a global limit
        (its count may be taken before they apply); it never takes more than the limit.
        """

    async def renew_leases(
        self, owner: str, job_ids: Sequence[uuid.UUID], lease_until: datetime
    ) -> set[uuid.UUID]:
        """Extend the leases of `owner`'s running jobs; return the ids still owned."""

    async def set_progress(
        self, job_id: uuid.UUID, owner: str, attempt: int, progress: Progress, now: datetime
    ) -> bool:
        """Record progress while the attempt is still fenced-in; False otherwise."""

    async def cancel_job(self, job_id: uuid.UUID, now: datetime) -> Job:
        """Cancel: a job not yet running becomes `cancelled` at once (and its dependants
        are settled); a running one is marked cancel-requested and returned still
        `running` (its owner finishes the cancel).
        Raises `JobNotFound`, or `IllegalTransition` for a finished job."""

    async def cancel_requests(self, owner: str) -> set[uuid.UUID]:
        """Ids of `owner`'s running jobs on which a cancel was requested."""

    async def retry_job(self, job_id: uuid.UUID, now: datetime) -> Job:
        """A `failed` or `cancelled` job back to `pending`, attempts 0, run_at now.
        Raises `JobNotFound` or `IllegalTransition`."""

    async def promote_due_jobs(self, now: datetime) -> datetime | None:
        """`scheduled` jobs whose run_at <= now become `pending`; returns the earliest
        run_at still scheduled, or None."""

    async def rescue_jobs(self, now: datetime, *, all_running: bool = False) -> list[Rescued]:
        """Running jobs whose lease expired before `now` (every running job, with
        `all_running`, for a store only this daemon uses, at start) are rescued: to
        `cancelled` if a cancel was requested, `failed` if that attempt was the last,
        else `pending`. `last_error` says the lease expired and whose it was."""

    async def prune_jobs(self, before: Mapping[JobState, datetime], limit: int, now: datetime) -> int:
        """Delete up to `limit` jobs in each given finished state that finished before its
        time, but none whose key window (`unique_for`) is still open at `now`, and forget
        the windows that closed; return how many jobs were deleted."""

    async def count_jobs(self) -> QueueCounts:
        """Jobs per queue and state."""

    async def queue_activity(self, queues: Sequence[str], now: datetime) -> dict[str, QueueActivity]:
        """For each of `queues`: the earliest `run_at` of its pending jobs, and how many
        attempts of its jobs ended `completed`, `failed` (a rescue that ends a job too) or
        `retried` in the seconds of `rate_window(now)`, by every daemon sharing the store, each at the
        time its daemon recorded it. Read from the claim index and a small ring of
        per-second counters, never from the finished jobs."""

    async def set_queue_paused(self, queue: str, paused: bool) -> None: ...

    async def paused_queues(self) -> frozenset[str]: ...

    async def sync_schedules(self, timings: Mapping[str, str], now: datetime) -> dict[str, ScheduleRecord]:
        """For each schedule name -> its timing: create the record of a new one, and start
        counting again from `now` for one whose timing changed (`synced_record`); return
        the records of them all."""

    async def schedule_records(self, names: Sequence[str]) -> dict[str, ScheduleRecord]:
        """The records of those of `names` the store knows."""

    async def set_schedule_paused(
        self, name: str, timing: str, paused: bool, now: datetime
    ) -> ScheduleRecord:
        """Pause or resume (`paused_record`); a schedule the store does not know yet is
        created with `timing` first. Returns the record."""

    async def fire_schedules(self, fires: Sequence[ScheduleFire], now: datetime) -> list[Fired]:
        """For each schedule, in one transaction with the jobs it makes: lock its record,
        carry out `plan_fire` (inserting its jobs as `insert_jobs` does) and record the
        ticks. However many daemons fire the same tick at once, it makes one job."""

    async def listen(
        self, wake: WakeCallback, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Run until cancelled, calling `wake` when another daemon changed something.

        A store only one daemon uses reports started and sleeps forever.
        """
