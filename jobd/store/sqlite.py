"""The embedded store: one SQLite file, for one daemon.

All database work runs on one dedicated thread that owns the connection. A Trio task
queues a call and parks; the thread runs the call as one transaction and hands the
result back with `run_sync_soon`, which does not wait for the event loop, so calls
pipeline instead of paying a thread hop each. A call still queued when its task is
cancelled is dropped; one already running runs to its end, so the database is never
left half-written (the task sees the cancellation at its next checkpoint).

One call waits on the event loop: a chunked batch (`insert_job_chunks`), whose task
hands the thread each chunk as it is checked and always ends the feed, with its last
chunk or with word to undo the batch; it is protected from KeyboardInterrupt, which
waits for its next checkpoint, so that no interruption leaves the thread waiting.

Only one daemon may use a database file: `open()` takes an exclusive `flock` on
`<db>.lock` beside it. SQL lives in `sql/sqlite/`: numbered migrations and `queries.sql`.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import enum
import fcntl
import json
import os
import queue
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, NamedTuple, TypeVar, cast

import trio
from outcome import Error as CapturedError
from outcome import Outcome as Captured
from outcome import capture

from jobd import jsoncodec
from jobd.errors import InvalidJob, JobNotFound, KeyInUse, StoreUnavailable
from jobd.job import JSON, STATE_OF, Action, Job, JobState, ParentFailure, Progress, next_state
from jobd.rates import RateLimit
from jobd.store import (
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
    all_created,
    paused_record,
    plan_fire,
    queue_activities,
    rate_window,
    refill_bucket,
    rescue_decision,
    settle_waiting,
    spend_tokens,
    standing_alone,
    synced_record,
    within_window,
)
from jobd.store.sqlfiles import load_migrations, load_queries

T = TypeVar("T")

_MIN_SQLITE = (3, 35, 0)  # RETURNING
_BUSY_TIMEOUT_MS = 5000
_GROUP_LIMIT = 64  # writes sharing one transaction at most
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_LIST_FILTERS = ("state", "type", "queue")
_MAX_CURSOR_DIGITS = 18  # keeps a cursor within SQLite's 64-bit integers

# Primary SQLite result codes a user can do something about, in plain words.
_REASONS = {
    sqlite3.SQLITE_FULL: "the disk is full",
    sqlite3.SQLITE_READONLY: "the database is read-only",
    sqlite3.SQLITE_CANTOPEN: "the file cannot be opened",
    sqlite3.SQLITE_PERM: "permission denied",
    sqlite3.SQLITE_CORRUPT: "the file is corrupt",
    sqlite3.SQLITE_NOTADB: "the file is not a SQLite database (corrupt?)",
    sqlite3.SQLITE_IOERR: "an I/O error",
    sqlite3.SQLITE_BUSY: "the database is locked by another process",
}


_Q = load_queries("sqlite")


# -- values to and from columns ---------------------------------------------------------


def _micros(value: datetime) -> int:
    return (value - _EPOCH) // _MICROSECOND


def _time(value: int) -> datetime:
    return _EPOCH + value * _MICROSECOND


def _optional_time(value: int | None) -> datetime | None:
    return None if value is None else _time(value)


def _dump(value: JSON) -> str | None:
    return None if value is None else jsoncodec.dumps_text(value)


def _load(text: str | None) -> JSON:
    return None if text is None else json.loads(text)


# The columns of `jobs` in table order, as `SELECT *` and `RETURNING *` give them
# (tests/test_store_sqlite.py holds this to the schema). `_job` unpacks a row by
# position: by name, sqlite3.Row looks each column up among the names, and a claimed
# row cost 18 µs to read instead of 9.
JOB_COLUMNS = (
    "seq", "id", "type", "queue", "payload", "state", "priority", "attempts", "max_attempts",
    "timeout", "run_at", "created_at", "updated_at", "started_at", "finished_at", "last_error",
    "result", "progress", "key", "owner", "lease_until", "cancel_requested", "schedule",
    "scheduled_for", "parents", "on_parent_failure", "traceparent",
)  # fmt: skip


def _job(row: sqlite3.Row) -> Job:
    """A job from a row whose first columns are `JOB_COLUMNS`."""
    (
        _, job_id, job_type, queue, payload, state, priority, attempts, max_attempts, timeout,
        run_at, created_at, updated_at, started_at, finished_at, last_error, result, progress,
        key, _, _, _, schedule, scheduled_for, parents, on_parent_failure, traceparent,
    ) = row[: len(JOB_COLUMNS)]  # fmt: skip
    progress = _load(progress)
    return Job(
        id=uuid.UUID(job_id),
        type=job_type,
        queue=queue,
        payload=_load(payload),
        state=STATE_OF[state],
        priority=priority,
        attempts=attempts,
        max_attempts=max_attempts,
        timeout=timeout,
        run_at=_time(run_at),
        created_at=_time(created_at),
        updated_at=_time(updated_at),
        started_at=_optional_time(started_at),
        finished_at=_optional_time(finished_at),
        last_error=last_error,
        result=_load(result),
        progress=Progress(progress["fraction"], progress["message"]) if progress else None,
        key=key,
        schedule=schedule,
        scheduled_for=_optional_time(scheduled_for),
        after=tuple(uuid.UUID(parent) for parent in json.loads(parents)) if parents else (),
        on_parent_failure=ParentFailure(on_parent_failure) if on_parent_failure else ParentFailure.CANCEL,
        traceparent=traceparent,
    )


def _parse_cursor(after: str | None) -> int | None:
    if after is None:
        return None
    if not (after.isascii() and after.isdigit() and len(after) <= _MAX_CURSOR_DIGITS):
        raise ValueError(f"not a cursor from this store: {after!r}")
    return int(after)


# -- the work of each call, run on the database thread ------------------------------------


def _in_transaction(conn: sqlite3.Connection, work: Callable[[sqlite3.Connection], T]) -> T:
    # IMMEDIATE takes the write lock up front: no SQLITE_BUSY on a later lock upgrade.
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = work(conn)
        conn.execute("COMMIT")
    except Exception:
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        raise
    return result


def _live_job_with_key(conn: sqlite3.Connection, key: str) -> sqlite3.Row | None:
    return cast(sqlite3.Row | None, conn.execute(_Q["live_job_with_key"], {"key": key}).fetchone())


def _row_of(conn: sqlite3.Connection, job_id: uuid.UUID) -> sqlite3.Row:
    row = conn.execute(_Q["get_job"], {"id": str(job_id)}).fetchone()
    if row is None:
        raise JobNotFound(str(job_id))
    return cast(sqlite3.Row, row)


# A new job's values in the order of `insert_jobs`' columns (see its query).
_JobRow = tuple[
    str, str, str, str | None, str, int, int, float | None, int, int,
    str | None, str | None, int | None, str | None, str | None, str | None,
]  # fmt: skip


def _job_row(new: NewJob, parents: tuple[uuid.UUID, ...], index: int) -> _JobRow:
    """`new` as a row of `jobs`, with `parents` (its `after`, with an item of the batch
    that gave way to a job holding its key named by that job)."""
    try:
        payload = _dump(new.payload)
    except (TypeError, ValueError) as error:
        raise InvalidJob(f"payload is not JSON: {error}", field="payload", index=index) from None
    return (
        str(new.id),
        new.type,
        new.queue,
        payload,
        new.state.value,
        new.priority,
        new.max_attempts,
        new.timeout,
        _micros(new.run_at),
        _micros(new.created_at),
        new.key,
        new.schedule,
        None if new.scheduled_for is None else _micros(new.scheduled_for),
        json.dumps([str(parent) for parent in parents]) if parents else None,
        new.on_parent_failure.value if parents else None,
        new.traceparent,
    )


def _insert_rows(
    conn: sqlite3.Connection, rows: Sequence[_JobRow], text: str, positions: Sequence[int]
) -> None:
    """Insert `rows` (`text`: them as one JSON array) in one statement; a taken id
    raises `InvalidJob` naming its row's position (its index in the batch)."""
    try:
        conn.execute(_Q["insert_jobs"], (text,))  # a row refused undoes the statement
    except sqlite3.IntegrityError:
        # Which row was refused: one at a time (the caller undoes those inserted).
        for position, row in zip(positions, rows, strict=True):
            try:
                conn.execute(_Q["insert_jobs"], (jsoncodec.dumps_text([row]),))
            except sqlite3.IntegrityError:
                raise InvalidJob(
                    f"a job with id {row[0]} already exists", field="id", index=position
                ) from None
        raise


def _count_inserted(conn: sqlite3.Connection, rows: Iterable[_JobRow]) -> None:
    _count_moves(conn, ((row[2], None, row[4]) for row in rows))  # each row's queue and state


def _insert_jobs(conn: sqlite3.Connection, jobs: Sequence[NewJob]) -> list[Inserted]:
    _check_parents(conn, jobs)
    results: list[Inserted] = []
    rows: list[_JobRow] = []  # to insert, in order
    positions: list[int] = []  # the batch index of each row
    stands_for: dict[uuid.UUID, uuid.UUID] = {}  # an item not inserted -> the job returned instead
    for index, new in enumerate(jobs):
        if new.key is not None:
            # A key held by an earlier item of this batch, a live job, or a job made
            # within the window asked for.
            holder = next((item.job for item in results if item.created and item.job.key == new.key), None)
            if holder is None:
                existing = _live_job_with_key(conn, new.key)
                holder = None if existing is None else _job(existing)
            if holder is None:
                holder = _window_holder(conn, new)
            if holder is not None:
                results.append(Inserted(holder, created=False))
                stands_for[new.id] = holder.id
                continue
        job = new.inserted()
        if any(parent in stands_for for parent in new.after):
            parents = tuple(dict.fromkeys(stands_for.get(parent, parent) for parent in new.after))
            job = dataclasses.replace(job, after=parents)
        rows.append(_job_row(new, job.after, index))
        positions.append(index)
        results.append(Inserted(job, created=True))
    _insert_rows(conn, rows, jsoncodec.dumps_text(rows), positions)
    _count_inserted(conn, rows)
    return _after_insert(conn, jobs, results)


def _check_parents(conn: sqlite3.Connection, jobs: Sequence[NewJob]) -> None:
    """Every parent named is a stored job or an item of the batch; `InvalidJob` otherwise."""
    batch = {new.id for new in jobs}
    outside = list(dict.fromkeys(str(parent) for new in jobs for parent in new.after if parent not in batch))
    if not outside:
        return
    known = {row[0] for row in conn.execute(_Q["known_jobs"], {"ids": json.dumps(outside)})}
    for index, new in enumerate(jobs):
        for parent in new.after:
            if parent not in batch and str(parent) not in known:
                raise InvalidJob(
                    f"after names job {parent}, which does not exist", field="after", index=index
                )


def _window_holder(conn: sqlite3.Connection, new: NewJob) -> Job | None:
    """The job made with `new.key` within `new.unique_for`, if any."""
    if new.unique_for is None:
        return None
    row = conn.execute(_Q["window_holder"], {"key": new.key}).fetchone()
    if row is None or not within_window(_time(row["window_created_at"]), new.unique_for, new.created_at):
        return None
    return _job(row)


def _after_insert(
    conn: sqlite3.Connection, jobs: Sequence[NewJob], results: list[Inserted]
) -> list[Inserted]:
    """Record the key windows and dependants of the jobs just inserted, and settle those
    that wait; the results, with each settled job as it now stands."""
    waiting: list[Job] = []
    edges: list[dict[str, str]] = []
    for new, item in zip(jobs, results, strict=True):
        if not item.created:
            continue
        if new.unique_for is not None:
            window = {
                "key": new.key,
                "id": str(new.id),
                "created_at": _micros(new.created_at),
                "expires_at": _micros(new.created_at + timedelta(seconds=new.unique_for)),
            }
            conn.execute(_Q["put_window"], window)
        if item.job.after:
            edges += [{"parent": str(parent), "child": str(new.id)} for parent in item.job.after]
            waiting.append(item.job)
    if not waiting:
        return results
    conn.executemany(_Q["add_dependant"], edges)
    # All at once: one that a parent cancels passes the cancel on to its dependants in turn.
    _settle(conn, [job.id for job in waiting], waiting[0].created_at)
    ids = json.dumps([str(job.id) for job in waiting])
    settled = {job.id: job for job in map(_job, conn.execute(_Q["jobs_by_id"], {"ids": ids}))}
    return [Inserted(settled[item.job.id], True) if item.job.id in settled else item for item in results]


def _settle(conn: sqlite3.Connection, job_ids: Sequence[uuid.UUID], now: datetime) -> bool:
    """Settle the waiting jobs among `job_ids` (`settle_waiting`), and in turn the
    dependants of those it cancels; whether any job was released."""
    released = False
    frontier = [str(job_id) for job_id in job_ids]
    while frontier:
        cancelled: list[str] = []
        for row in conn.execute(_Q["waiting_jobs"], {"ids": json.dumps(frontier)}).fetchall():
            job = _job(row)
            parents = json.dumps([str(parent) for parent in job.after])
            states = {
                uuid.UUID(found[0]): JobState(found[1])
                for found in conn.execute(_Q["job_states"], {"ids": parents})
            }
            settled = settle_waiting(job, states, now)
            if settled.state == JobState.WAITING:
                continue
            values = {
                "id": str(job.id),
                "state": settled.state.value,
                "run_at": _micros(settled.run_at),
                "now": _micros(now),
                "finished_at": _micros(now) if settled.state.finished else None,
                "error": settled.error,
            }
            conn.execute(_Q["settle_job"], values)
            _count_moves(conn, [(job.queue, JobState.WAITING, settled.state)])
            if settled.state.finished:
                cancelled.append(str(job.id))
            else:
                released = True
        frontier = (
            [row[0] for row in conn.execute(_Q["dependants"], {"ids": json.dumps(cancelled)})]
            if cancelled
            else []
        )
    return released


def _settle_dependants(conn: sqlite3.Connection, finished: Sequence[uuid.UUID], now: datetime) -> bool:
    """Settle the jobs waiting on the jobs just `finished`; whether any was released."""
    if not finished:
        return False
    ids = json.dumps([str(job_id) for job_id in finished])
    dependants = [uuid.UUID(row[0]) for row in conn.execute(_Q["dependants"], {"ids": ids})]
    return _settle(conn, dependants, now) if dependants else False


def _list_jobs(conn: sqlite3.Connection, wanted: JobFilter, limit: int, below: int | None) -> JobPage:
    values: dict[str, Any] = {"below": 2**63 - 1 if below is None else below, "limit": limit + 1}
    for name in _LIST_FILTERS:
        value = getattr(wanted, name)
        if value is not None:
            values[name] = str(value)
    # Only the fixed names above are spliced in; the values stay parameters.
    terms = "".join(f" AND {name} = :{name}" for name in _LIST_FILTERS if name in values)
    rows = conn.execute(_Q["list_jobs"].format(filters=terms), values).fetchall()
    page = rows[:limit]
    more = len(rows) > limit and page
    return JobPage([_job(row) for row in page], str(page[-1]["seq"]) if more else None)


def _claim_jobs(
    conn: sqlite3.Connection,
    owner: str,
    slots: Sequence[QueueSlots],
    limit: int,
    now: datetime,
    lease_until: datetime,
) -> CompletedAndClaimed:
    """The claim of `claim_jobs`, with the queues its rate held back (nothing applied)."""
    paused = {row[0] for row in conn.execute(_Q["paused_queues"])}
    candidates: list[sqlite3.Row] = []
    buckets: dict[str, tuple[Bucket, RateLimit]] = {}  # each rate-limited queue's, refilled
    held: set[str] = set()
    for slot in slots:
        if slot.queue in paused:
            continue
        allowed = slot.free
        if slot.global_limit is not None:
            running = conn.execute(_Q["running_in_queue"], {"queue": slot.queue}).fetchone()[0]
            allowed = min(allowed, slot.global_limit - running)
        if allowed > 0 and slot.rate is not None:
            bucket = refill_bucket(_rate_bucket(conn, slot.queue), slot.rate, now)
            buckets[slot.queue] = (bucket, slot.rate)
            # One job past the tokens tells whether the rate held any back.
            values = {"queue": slot.queue, "limit": max(min(allowed, limit, bucket.tokens + 1), 0)}
            ready = conn.execute(_Q["claimable_jobs"], values).fetchall()
            if len(ready) > bucket.tokens:
                held.add(slot.queue)
            candidates.extend(ready[: bucket.tokens])
        elif allowed > 0:
            values = {"queue": slot.queue, "limit": allowed}
            candidates.extend(conn.execute(_Q["claimable_jobs"], values).fetchall())
    # Each queue's candidates come in claim order; merge them and keep the first `limit`.
    candidates.sort(key=lambda row: (-row["priority"], row["run_at"], row["seq"]))
    chosen = [row["seq"] for row in candidates[: max(limit, 0)]]
    claimed = _claim_rows(conn, chosen, owner, now, lease_until) if chosen else []
    spent = spend_tokens(buckets, held, claimed)
    for queue_name, bucket in spent.buckets.items():
        values = {"queue": queue_name, "level": bucket.level, "updated_at": _micros(bucket.updated_at)}
        conn.execute(_Q["put_rate_bucket"], values)
    return CompletedAndClaimed([], claimed, spent.rate_held)


def _rate_bucket(conn: sqlite3.Connection, queue_name: str) -> Bucket | None:
    row = conn.execute(_Q["rate_bucket"], {"queue": queue_name}).fetchone()
    return None if row is None else Bucket(row["level"], _time(row["updated_at"]))


def _claim_rows(
    conn: sqlite3.Connection, chosen: list[int], owner: str, now: datetime, lease_until: datetime
) -> list[Job]:
    state = next_state("pending jobs", JobState.PENDING, Action.CLAIM)
    values = {
        "state": state.value,
        "now": _micros(now),
        "owner": owner,
        "lease_until": _micros(lease_until),
        "seqs": jsoncodec.dumps_text(chosen),
    }
    rows = conn.execute(_Q["claim_jobs"], values).fetchall()
    _count_moves(conn, ((row["queue"], JobState.PENDING, state) for row in rows))
    # RETURNING gives no order: put the batch back in claim order.
    rows.sort(key=lambda row: (-row["priority"], row["run_at"], row["seq"]))
    return [_job(row) for row in rows]


def _complete_jobs(conn: sqlite3.Connection, completions: Sequence[Completion], now: datetime) -> list[bool]:
    batch = [
        {
            "id": str(completion.job_id),
            "owner": completion.owner,
            "attempt": completion.attempt,
            "outcome": completion.outcome.value,
            "state": next_state(completion.job_id, JobState.RUNNING, completion.outcome.action),
            "result": _dump(completion.result),
            "error": completion.error,
            "run_at": _micros(completion.run_at or now),
        }
        for completion in completions
    ]
    # One statement for the batch; a job named twice gets its later completions applied
    # one by one afterwards, as if each came alone (the first one usually fences them out).
    firsts: dict[str, int] = {}
    repeats: list[int] = []
    for index, item in enumerate(batch):
        if item["id"] in firsts:
            repeats.append(index)
        else:
            firsts[str(item["id"])] = index
    results = [False] * len(batch)
    for indexes in (list(firsts.values()), *([index] for index in repeats)):
        values = {"now": _micros(now), "batch": jsoncodec.dumps_text([batch[index] for index in indexes])}
        moved = conn.execute(_Q["complete_jobs"], values).fetchall()
        _count_moves(conn, ((queue, JobState.RUNNING, state) for _, queue, state in moved))
        changed = {row[0] for row in moved}
        for index in indexes:
            results[index] = batch[index]["id"] in changed
    return results


def _finished(completions: Sequence[Completion], applied: Sequence[bool]) -> list[uuid.UUID]:
    """The jobs the applied completions among `completions` finished."""
    return [
        completion.job_id
        for completion, done in zip(completions, applied, strict=True)
        if done and completion.outcome.state.finished
    ]


def _renew_leases(
    conn: sqlite3.Connection, owner: str, job_ids: Sequence[uuid.UUID], lease_until: datetime
) -> set[uuid.UUID]:
    kept = set()
    for job_id in job_ids:
        values = {"id": str(job_id), "owner": owner, "lease_until": _micros(lease_until)}
        if conn.execute(_Q["renew_lease"], values).fetchone() is not None:
            kept.add(job_id)
    return kept


def _cancel_job(conn: sqlite3.Connection, job_id: uuid.UUID, now: datetime) -> Job:
    row = _row_of(conn, job_id)
    state = next_state(job_id, JobState(row["state"]), Action.CANCEL)
    if row["state"] == JobState.RUNNING:
        # Its owner sees the request and finishes the cancel itself.
        return _job(conn.execute(_Q["request_cancel"], {"id": str(job_id)}).fetchone())
    values = {
        "id": str(job_id),
        "state": state.value,
        "now": _micros(now),
        "error": "cancelled before it ran",
    }
    _count_moves(conn, [(row["queue"], row["state"], state)])
    return _job(conn.execute(_Q["cancel_waiting_job"], values).fetchone())


def _retry_job(conn: sqlite3.Connection, job_id: uuid.UUID, now: datetime) -> Job:
    row = _row_of(conn, job_id)
    state = next_state(job_id, JobState(row["state"]), Action.RETRY)
    key = row["key"]
    if key is not None and _live_job_with_key(conn, key) is not None:
        raise KeyInUse(str(job_id), key)
    values = {"id": str(job_id), "state": state.value, "now": _micros(now)}
    _count_moves(conn, [(row["queue"], row["state"], state)])
    return _job(conn.execute(_Q["retry_job"], values).fetchone())


def _promote_due_jobs(conn: sqlite3.Connection, now: datetime) -> datetime | None:
    state = next_state("scheduled jobs", JobState.SCHEDULED, Action.PROMOTE)
    promoted = conn.execute(_Q["promote_due_jobs"], {"state": state.value, "now": _micros(now)})
    _count_moves(conn, ((queue, JobState.SCHEDULED, state) for (queue,) in promoted))
    return _optional_time(conn.execute(_Q["next_scheduled"]).fetchone()[0])


def _rescue_jobs(conn: sqlite3.Connection, now: datetime, all_running: bool) -> list[Rescued]:
    rescued = []
    rows = conn.execute(_Q["rescuable_jobs"], {"all_running": all_running, "now": _micros(now)}).fetchall()
    for row in rows:
        owner = row["owner"]
        decision = rescue_decision(_job(row), owner, cancel_requested=bool(row["cancel_requested"]))
        state = decision.state
        values = {
            "id": row["id"],
            "state": state.value,
            "error": decision.error,
            "now": _micros(now),
            "finished_at": _micros(now) if state.finished else None,
        }
        rescued.append(Rescued(_job(conn.execute(_Q["rescue_job"], values).fetchone()), owner))
        _count_moves(conn, [(row["queue"], JobState.RUNNING, state)])
    return rescued


def _prune_jobs(
    conn: sqlite3.Connection, before: Mapping[JobState, datetime], limit: int, now: datetime
) -> int:
    conn.execute(_Q["forget_closed_windows"], {"now": _micros(now)})
    deleted = 0
    for state, cutoff in before.items():
        values = {"state": state.value, "before": _micros(cutoff), "limit": limit, "now": _micros(now)}
        pruned = conn.execute(_Q["prune_jobs"], values).fetchall()
        _count_moves(conn, ((queue, state, None) for (queue,) in pruned))
        deleted += len(pruned)
    return deleted


def _count_moves(conn: sqlite3.Connection, moves: Iterable[tuple[str, str | None, str | None]]) -> None:
    """Keep job_counts, which no trigger keeps: each move takes a job of a queue out of
    a state (None: it is new) into another (None: it is deleted). One upsert per queue
    and state whose count changes, however many jobs moved."""
    changes: collections.Counter[tuple[str, str]] = collections.Counter()
    for queue_name, before, after in moves:
        if before != after:
            if before is not None:
                changes[queue_name, before] -= 1
            if after is not None:
                changes[queue_name, after] += 1
    conn.executemany(
        _Q["count_moved"],
        (
            {"queue": queue, "state": str(state), "jobs": jobs}
            for (queue, state), jobs in changes.items()
            if jobs
        ),
    )


def _count_jobs(conn: sqlite3.Connection) -> QueueCounts:
    counts: dict[str, dict[JobState, int]] = {}
    for queue_name, state, jobs in conn.execute(_Q["count_jobs"]):
        counts.setdefault(queue_name, {})[JobState(state)] = jobs
    return counts


def _queue_activity(
    conn: sqlite3.Connection, queues: Sequence[str], now: datetime
) -> dict[str, QueueActivity]:
    first, last = rate_window(now)
    oldest: dict[str, datetime] = {}
    ended: dict[tuple[str, Outcome], int] = {}
    values = {"queues": json.dumps(list(queues)), "first": first, "last": last}
    for queue_name, outcome, jobs, run_at in conn.execute(_Q["queue_activity"], values):
        if outcome is None:
            oldest[queue_name] = _time(run_at)
        else:
            ended[(queue_name, Outcome(outcome))] = jobs
    return queue_activities(queues, oldest, ended)


def _set_queue_paused(conn: sqlite3.Connection, queue_name: str, paused: bool) -> None:
    if paused:
        conn.execute(_Q["pause_queue"], {"queue": queue_name, "now": _micros(datetime.now(UTC))})
    else:
        conn.execute(_Q["resume_queue"], {"queue": queue_name})


def _schedule(row: sqlite3.Row) -> ScheduleRecord:
    return ScheduleRecord(
        name=row["name"],
        timing=row["timing"],
        since=_time(row["since"]),
        last_tick=_optional_time(row["last_tick"]),
        last_job_id=None if row["last_job_id"] is None else uuid.UUID(row["last_job_id"]),
        paused=bool(row["paused"]),
    )


def _get_schedule(conn: sqlite3.Connection, name: str) -> ScheduleRecord | None:
    row = conn.execute(_Q["get_schedule"], {"name": name}).fetchone()
    return None if row is None else _schedule(row)


def _put_schedule(conn: sqlite3.Connection, record: ScheduleRecord, now: datetime) -> ScheduleRecord:
    values = {
        "name": record.name,
        "timing": record.timing,
        "since": _micros(record.since),
        "last_tick": None if record.last_tick is None else _micros(record.last_tick),
        "last_job_id": None if record.last_job_id is None else str(record.last_job_id),
        "paused": record.paused,
        "now": _micros(now),
    }
    conn.execute(_Q["put_schedule"], values)
    return record


def _sync_schedules(
    conn: sqlite3.Connection, timings: Mapping[str, str], now: datetime
) -> dict[str, ScheduleRecord]:
    records = {}
    for name, timing in timings.items():
        stored = _get_schedule(conn, name)
        record = synced_record(stored, name, timing, now)
        records[name] = record if record == stored else _put_schedule(conn, record, now)
    return records


def _set_schedule_paused(
    conn: sqlite3.Connection, name: str, timing: str, paused: bool, now: datetime
) -> ScheduleRecord:
    record = paused_record(synced_record(_get_schedule(conn, name), name, timing, now), paused, now)
    return _put_schedule(conn, record, now)


def _fire_schedules(conn: sqlite3.Connection, fires: Sequence[ScheduleFire], now: datetime) -> list[Fired]:
    results = []
    for fire in fires:
        record = _get_schedule(conn, fire.name)
        if record is None:
            results.append(Fired(fire.name, None, [], []))
            continue
        unfinished = fire.skip_overlap and bool(
            conn.execute(_Q["schedule_has_unfinished_job"], {"schedule": fire.name}).fetchone()
        )
        plan = plan_fire(fire, record, unfinished)
        made = [item.job for item in _insert_jobs(conn, plan.jobs)] if plan.jobs else []
        record = after_fire(record, plan, made)
        if plan.ticks:
            _put_schedule(conn, record, now)
        results.append(Fired(fire.name, record, plan.ticks, made))
    return results


# -- the database thread ----------------------------------------------------------------


class _ChunkRows(NamedTuple):
    """A chunk of a batch on its way to the thread (`SQLiteStore.insert_job_chunks`)."""

    rows: list[_JobRow]
    text: str  # `rows` as one JSON array, made on the loop


class _BatchEnd(enum.Enum):
    COMPLETE = "complete"  # every chunk was handed over: keep them
    ABANDONED = "abandoned"  # making a chunk failed: undo the batch


class _Abandoned(Exception):
    """Ends the thread's part of a batch whose caller failed to make a chunk."""


@dataclass(eq=False)
class _Call:
    """One queued call and the Trio task that awaits its result (`SQLiteStore._outcome`).

    A call holds either `work` (run as it is: opening, closing, reads) or
    `transaction` (a write, run inside a transaction the thread manages).
    """

    task: trio.lowlevel.Task
    token: trio.lowlevel.TrioToken
    work: Callable[[], object] | None = None
    transaction: Callable[[sqlite3.Connection], object] | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    status: Literal["queued", "running", "abandoned"] = "queued"

    def abandon(self) -> bool:
        """Drop the call if it has not started (its task was cancelled, or its batch
        failed its check)."""
        with self.lock:
            if self.status == "queued":
                self.status = "abandoned"
            return self.status == "abandoned"

    def start(self) -> bool:
        with self.lock:
            if self.status == "abandoned":
                return False
            self.status = "running"
            return True

    def finish(self, result: Captured[object]) -> None:
        # The loop may be gone already (a run that ended without closing the store).
        with contextlib.suppress(trio.RunFinishedError):
            self.token.run_sync_soon(trio.lowlevel.reschedule, self.task, result)


class SQLiteStore:
    shared = False
    chunked_inserts = True

    def __init__(self, path: str, *, synchronous: str = "full") -> None:
        if synchronous not in ("full", "normal"):
            raise ValueError(f"synchronous must be 'full' or 'normal', got {synchronous!r}")
        self.path = path
        self.synchronous = synchronous
        self._calls: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._conn: sqlite3.Connection | None = None
        self._lock_file: int | None = None
        self._join_limiter = trio.CapacityLimiter(1)
        self._wake: WakeCallback | None = None

    # -- lifecycle -------------------------------------------------------------------

    async def open(self) -> None:
        if sqlite3.sqlite_version_info < _MIN_SQLITE:
            raise StoreUnavailable(f"SQLite {sqlite3.sqlite_version} is too old: jobd needs 3.35 or newer")
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._serve, name=f"jobd-sqlite {self.path}", daemon=True)
        self._thread.start()
        opened = False
        try:
            await self._run(self._open_database)
            opened = True
        finally:
            if not opened:
                await self._stop_thread()

    async def close(self) -> None:
        if self._thread is None:
            return
        # Shielded: a close that is cancelled must still release the file and its lock.
        with trio.CancelScope(shield=True):
            try:
                await self._run(self._close_database)
            finally:
                await self._stop_thread()

    async def _stop_thread(self) -> None:
        thread, self._thread = self._thread, None
        if thread is not None:
            self._calls.put(None)
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(thread.join, limiter=self._join_limiter)

    def _serve(self) -> None:
        held: collections.deque[_Call | None] = collections.deque()
        while True:
            call = held.popleft() if held else self._calls.get()
            if call is None:
                return
            if call.transaction is None:
                if call.start():
                    call.finish(capture(self._guarded, cast(Callable[[], object], call.work)))
                continue
            # Group commit: the writes that queued up while the last transaction was
            # being made durable share the next one, so one fsync serves them all.
            group = [call]
            while len(group) < _GROUP_LIMIT and not held:
                try:
                    following = self._calls.get_nowait()
                except queue.Empty:
                    break
                if following is not None and following.transaction is not None:
                    group.append(following)
                else:
                    held.append(following)
            self._commit_group([member for member in group if member.start()])

    def _commit_group(self, calls: list[_Call]) -> None:
        """Run each write in its own savepoint of one transaction: a write that fails
        is rolled back alone; the results are handed out only once all are committed."""
        if not calls:
            return
        results: list[Captured[object]] = []
        try:
            conn = self._connection()
            # IMMEDIATE takes the write lock up front: no SQLITE_BUSY on a later lock upgrade.
            conn.execute("BEGIN IMMEDIATE")
            for call in calls:
                transaction = cast(Callable[[sqlite3.Connection], object], call.transaction)
                conn.execute("SAVEPOINT call")
                result: Captured[object] = capture(self._guarded, transaction, conn)
                if isinstance(result, CapturedError):
                    if not conn.in_transaction:
                        # SQLite undid the whole transaction (a full disk, an I/O error in
                        # a statement with no statement journal): the calls before this
                        # one are undone too, and all fail with its error.
                        error = result.error
                        if isinstance(error, StoreUnavailable):
                            raise error
                        raise StoreUnavailable(
                            f"SQLite database {self.path}: the transaction was undone ({error})"
                        )
                    conn.execute("ROLLBACK TO call")
                conn.execute("RELEASE call")
                results.append(result)
            conn.execute("COMMIT")
        except (sqlite3.Error, StoreUnavailable) as error:
            if self._conn is not None and self._conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    self._conn.execute("ROLLBACK")
            failure = error if isinstance(error, StoreUnavailable) else self._unavailable(error)
            # One exception object per task: each raise rewrites its traceback.
            results = [CapturedError(StoreUnavailable(failure.message)) for _ in calls]
        for call, result in zip(calls, results, strict=True):
            call.finish(result)

    def _guarded(self, work: Callable[..., T], *args: object) -> T:
        """Run `work`; no sqlite3 or OS error leaves the store."""
        try:
            return work(*args)
        except sqlite3.Error as error:
            raise self._unavailable(error) from error

    def _unavailable(self, error: sqlite3.Error) -> StoreUnavailable:
        code = getattr(error, "sqlite_errorcode", None)
        reason = _REASONS.get(code & 0xFF) if code is not None else None
        detail = f"{reason} ({error})" if reason else str(error)
        return StoreUnavailable(f"SQLite database {self.path}: {detail}")

    async def _run(self, work: Callable[[], T]) -> T:
        return cast(T, await self._submit(work=work))

    @trio.lowlevel.enable_ki_protection  # queued, the call must be awaited: see `_Call.finish`
    async def _submit(
        self,
        *,
        work: Callable[[], object] | None = None,
        transaction: Callable[[sqlite3.Connection], object] | None = None,
    ) -> object:
        return await self._outcome(self._queue(work=work, transaction=transaction))

    def _queue(
        self,
        *,
        work: Callable[[], object] | None = None,
        transaction: Callable[[sqlite3.Connection], object] | None = None,
    ) -> _Call:
        """Hand a call to the thread; the task that queues it awaits its `_outcome`."""
        if self._thread is None:
            raise StoreUnavailable(f"SQLite database {self.path}: the store is not open")
        call = _Call(trio.lowlevel.current_task(), trio.lowlevel.current_trio_token(), work, transaction)
        self._calls.put(call)
        return call

    async def _outcome(self, call: _Call) -> object:
        def abort(_: object) -> trio.lowlevel.Abort:
            return trio.lowlevel.Abort.SUCCEEDED if call.abandon() else trio.lowlevel.Abort.FAILED

        return await trio.lowlevel.wait_task_rescheduled(abort)

    async def _read(self, work: Callable[[sqlite3.Connection], T]) -> T:
        return await self._run(lambda: work(self._connection()))

    async def _write(self, work: Callable[[sqlite3.Connection], T]) -> T:
        return cast(T, await self._submit(transaction=work))

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreUnavailable(f"SQLite database {self.path}: the store is not open")
        return self._conn

    def _open_database(self) -> None:
        path = Path(self.path)
        lock_path = f"{self.path}.lock"
        try:
            _make_directories(path.parent)
            self._lock_file = _lock(lock_path, self.path)
            self._conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._conn.row_factory = sqlite3.Row
            self._configure(self._conn)
            self._migrate(self._conn)
        except OSError as error:
            self._close_database()
            raise StoreUnavailable(f"cannot open SQLite database {self.path}: {_os_reason(error)}") from error
        except Exception:
            self._close_database()
            raise

    def _configure(self, conn: sqlite3.Connection) -> None:
        conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode != "wal":
            raise StoreUnavailable(
                f"SQLite database {self.path}: cannot use write-ahead logging (journal mode stays {mode!r})"
            )
        conn.execute(f"PRAGMA synchronous = {self.synchronous.upper()}")
        # A statement that fires a trigger (a completion: the recent-outcome ring) keeps
        # a statement journal, a copy of each page it changes, so that it can be undone
        # alone. In a temporary file that is a write() per page; in memory a round's
        # claim and completion cost 20 % less. It is never the durable journal: that
        # stays the WAL.
        conn.execute("PRAGMA temp_store = MEMORY")

    def _migrate(self, conn: sqlite3.Connection) -> None:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations "
            "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL)"
        )
        applied = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
        known = load_migrations("sqlite")
        newest = known[-1].version
        if applied and max(applied) > newest:
            raise StoreUnavailable(
                f"SQLite database {self.path} has schema version {max(applied)}, newer than this jobd "
                f"knows ({newest}): run a newer jobd"
            )
        for migration in known:
            version, name, sql = migration.version, migration.name, migration.sql
            if version in applied:
                continue
            # executescript commits any open transaction first, so the script carries its own.
            record = (
                f"INSERT INTO schema_migrations VALUES ({version}, '{name}', {_micros(datetime.now(UTC))});"
            )
            try:
                conn.executescript(f"BEGIN IMMEDIATE;\n{sql}\n{record}\nCOMMIT;")
            except Exception:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        # Mirrors the version for other tools, and proves the file writable now: SQLite opens
        # a read-only file without complaint and would fail only at the first write.
        _in_transaction(conn, lambda conn: conn.execute(f"PRAGMA user_version = {newest}"))

    def _close_database(self) -> None:
        conn, self._conn = self._conn, None
        lock_file, self._lock_file = self._lock_file, None
        try:
            if conn is not None:
                conn.close()
        finally:
            if lock_file is not None:
                os.close(lock_file)  # closing the descriptor releases the flock

    # -- the protocol ----------------------------------------------------------------

    async def ping(self) -> None:
        await self._read(lambda conn: conn.execute("SELECT 1").fetchone())

    async def insert_jobs(self, jobs: Sequence[NewJob]) -> list[Inserted]:
        return await self._write(lambda conn: _insert_jobs(conn, jobs))

    @trio.lowlevel.enable_ki_protection  # the thread must be told the batch's end
    async def insert_job_chunks(self, chunks: Iterator[Sequence[NewJob]]) -> list[Inserted]:
        # The loop makes a chunk's rows and hands them to the store's thread, whose
        # insert of them runs in SQLite's C with the interpreter let go; meanwhile the
        # loop checks the next chunk (`next(chunks)`) and makes the answers.
        feed: queue.SimpleQueue[_ChunkRows | _BatchEnd] = queue.SimpleQueue()
        stopped = threading.Event()  # the thread is done with the batch, or failed

        def insert_fed(conn: sqlite3.Connection) -> None:
            try:
                inserted: list[_JobRow] = []
                while isinstance(chunk := feed.get(), _ChunkRows):
                    first = len(inserted)  # the batch index of the chunk's first job
                    _insert_rows(conn, chunk.rows, chunk.text, range(first, first + len(chunk.rows)))
                    inserted += chunk.rows
                if chunk is _BatchEnd.ABANDONED:
                    raise _Abandoned  # the batch's savepoint is rolled back
                _count_inserted(conn, inserted)
            finally:
                stopped.set()

        call = self._queue(transaction=insert_fed)
        answers: list[Inserted] = []
        end = _BatchEnd.ABANDONED
        try:
            # Once the insert has failed, its error is the answer: no more chunks.
            while not stopped.is_set() and (chunk := next(chunks, None)) is not None:
                if not chunk:
                    continue
                rows = [_job_row(new, (), len(answers) + at) for at, new in enumerate(standing_alone(chunk))]
                feed.put(_ChunkRows(rows, jsoncodec.dumps_text(rows)))
                answers += all_created(chunk)
            end = _BatchEnd.COMPLETE
        finally:
            feed.put(end)
            if end is _BatchEnd.ABANDONED and not call.abandon():
                # The batch's own error is the answer. The thread has begun it: wait,
                # shielded, for it to undo what it inserted before this task moves on.
                with trio.CancelScope(shield=True), contextlib.suppress(Exception):
                    await self._outcome(call)
        await self._outcome(call)
        return answers

    async def insert_and_claim_jobs(
        self, jobs: Sequence[NewJob], claim: ClaimRequest, now: datetime
    ) -> InsertedAndClaimed:
        def insert_and_claim(conn: sqlite3.Connection) -> InsertedAndClaimed:
            inserted = _insert_jobs(conn, jobs)
            claimed = _claim_jobs(conn, claim.owner, claim.slots, claim.limit, now, claim.lease_until)
            return InsertedAndClaimed(inserted, claimed.claimed, claimed.rate_held)

        return await self._write(insert_and_claim)

    async def get_job(self, job_id: uuid.UUID) -> Job | None:
        row = await self._read(lambda conn: conn.execute(_Q["get_job"], {"id": str(job_id)}).fetchone())
        return _job(row) if row is not None else None

    async def job_results(self, job_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, JSON]:
        ids = json.dumps([str(job_id) for job_id in job_ids])
        rows = await self._read(lambda conn: conn.execute(_Q["job_results"], {"ids": ids}).fetchall())
        return {uuid.UUID(row[0]): _load(row[1]) for row in rows}

    async def list_jobs(self, wanted: JobFilter, limit: int, after: str | None) -> JobPage:
        below = _parse_cursor(after)
        return await self._read(lambda conn: _list_jobs(conn, wanted, limit, below))

    async def claim_jobs(
        self, owner: str, slots: Sequence[QueueSlots], limit: int, now: datetime, lease_until: datetime
    ) -> list[Job]:
        claimed = await self._write(lambda conn: _claim_jobs(conn, owner, slots, limit, now, lease_until))
        return claimed.claimed

    async def complete_jobs(self, completions: Sequence[Completion], now: datetime) -> list[bool]:
        def complete(conn: sqlite3.Connection) -> tuple[list[bool], bool]:
            applied = _complete_jobs(conn, completions, now)
            return applied, _settle_dependants(conn, _finished(completions, applied), now)

        applied, released = await self._write(complete)
        self._after_release(released)
        return applied

    async def complete_and_claim_jobs(
        self, completions: Sequence[Completion], claim: ClaimRequest, now: datetime
    ) -> CompletedAndClaimed:
        def exchange(conn: sqlite3.Connection) -> tuple[CompletedAndClaimed, bool]:
            applied = _complete_jobs(conn, completions, now) if completions else []
            released = _settle_dependants(conn, _finished(completions, applied), now)
            # The claim comes after: it takes the jobs just released too.
            claimed = _claim_jobs(conn, claim.owner, claim.slots, claim.limit, now, claim.lease_until)
            return CompletedAndClaimed(applied, claimed.claimed, claimed.rate_held), released

        exchanged, released = await self._write(exchange)
        self._after_release(released)
        return exchanged

    def _after_release(self, released: bool) -> None:
        """Jobs a completion or cancel released are work for this daemon's workers."""
        if released and self._wake is not None:
            self._wake("jobs")

    async def renew_leases(
        self, owner: str, job_ids: Sequence[uuid.UUID], lease_until: datetime
    ) -> set[uuid.UUID]:
        return await self._write(lambda conn: _renew_leases(conn, owner, job_ids, lease_until))

    async def set_progress(
        self, job_id: uuid.UUID, owner: str, attempt: int, progress: Progress, now: datetime
    ) -> bool:
        values = {
            "id": str(job_id),
            "owner": owner,
            "attempt": attempt,
            "progress": _dump(progress.to_json()),
            "now": _micros(now),
        }
        changed = await self._write(lambda conn: conn.execute(_Q["set_progress"], values).rowcount)
        return changed == 1

    async def cancel_job(self, job_id: uuid.UUID, now: datetime) -> Job:
        def cancel(conn: sqlite3.Connection) -> tuple[Job, bool]:
            job = _cancel_job(conn, job_id, now)
            return job, _settle_dependants(conn, [job.id] if job.state.finished else [], now)

        job, released = await self._write(cancel)
        self._after_release(released)
        return job

    async def cancel_requests(self, owner: str) -> set[uuid.UUID]:
        rows = await self._read(lambda conn: conn.execute(_Q["cancel_requests"], {"owner": owner}).fetchall())
        return {uuid.UUID(row[0]) for row in rows}

    async def retry_job(self, job_id: uuid.UUID, now: datetime) -> Job:
        return await self._write(lambda conn: _retry_job(conn, job_id, now))

    async def promote_due_jobs(self, now: datetime) -> datetime | None:
        return await self._write(lambda conn: _promote_due_jobs(conn, now))

    async def rescue_jobs(self, now: datetime, *, all_running: bool = False) -> list[Rescued]:
        def rescue(conn: sqlite3.Connection) -> tuple[list[Rescued], bool]:
            rescued = _rescue_jobs(conn, now, all_running)
            ended = [item.job.id for item in rescued if item.job.state.finished]
            return rescued, _settle_dependants(conn, ended, now)

        rescued, released = await self._write(rescue)
        self._after_release(released)
        return rescued

    async def prune_jobs(self, before: Mapping[JobState, datetime], limit: int, now: datetime) -> int:
        if limit <= 0:  # SQLite reads LIMIT -1 as "no limit"
            return 0
        return await self._write(lambda conn: _prune_jobs(conn, before, limit, now))

    async def count_jobs(self) -> QueueCounts:
        return await self._read(_count_jobs)

    async def queue_activity(self, queues: Sequence[str], now: datetime) -> dict[str, QueueActivity]:
        return await self._read(lambda conn: _queue_activity(conn, queues, now))

    async def set_queue_paused(self, queue: str, paused: bool) -> None:
        await self._write(lambda conn: _set_queue_paused(conn, queue, paused))

    async def paused_queues(self) -> frozenset[str]:
        rows = await self._read(lambda conn: conn.execute(_Q["paused_queues"]).fetchall())
        return frozenset(row[0] for row in rows)

    async def sync_schedules(self, timings: Mapping[str, str], now: datetime) -> dict[str, ScheduleRecord]:
        return await self._write(lambda conn: _sync_schedules(conn, timings, now))

    async def schedule_records(self, names: Sequence[str]) -> dict[str, ScheduleRecord]:
        def read(conn: sqlite3.Connection) -> dict[str, ScheduleRecord]:
            found = {name: _get_schedule(conn, name) for name in names}
            return {name: record for name, record in found.items() if record is not None}

        return await self._read(read)

    async def set_schedule_paused(
        self, name: str, timing: str, paused: bool, now: datetime
    ) -> ScheduleRecord:
        return await self._write(lambda conn: _set_schedule_paused(conn, name, timing, paused, now))

    async def fire_schedules(self, fires: Sequence[ScheduleFire], now: datetime) -> list[Fired]:
        return await self._write(lambda conn: _fire_schedules(conn, fires, now))

    async def listen(
        self, wake: WakeCallback, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        # This daemon is the only writer: nothing to listen to. The store itself calls
        # `wake` when a completion or cancel released waiting jobs.
        self._wake = wake
        task_status.started()
        try:
            await trio.sleep_forever()
        finally:
            self._wake = None


# -- files --------------------------------------------------------------------------------


def _make_directories(directory: Path) -> None:
    """Create `directory` and any missing parents, each private to this user (0700)."""
    missing = []
    while not directory.exists():
        missing.append(directory)
        directory = directory.parent
    for created in reversed(missing):
        created.mkdir(mode=0o700, exist_ok=True)


def _lock(lock_path: str, db_path: str) -> int:
    """Hold an exclusive lock on `lock_path` (and write our pid in it), or refuse."""
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise StoreUnavailable(
            f"SQLite database {db_path} is in use by another jobd (pid {holder})"
        ) from None
    except OSError:
        os.close(fd)
        raise
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError:
        os.close(fd)
        raise
    return fd


def _os_reason(error: OSError) -> str:
    where = f" ({error.filename})" if error.filename else ""
    return f"{error.strerror or error}{where}"
