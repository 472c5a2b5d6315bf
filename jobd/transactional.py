"""Submit a job inside the application's own PostgreSQL transaction.

The job exists if and only if the application's transaction commits, and the daemons
sharing the database are woken at that commit (NOTIFY is transactional). Its fields meet
the same rules as a job submitted through the control API (`jobd.submission`), but this
cannot see the daemon's handler config: `queue`, `max_attempts` and `timeout` are stored
exactly as given, and a queue no daemon serves is not refused, its jobs simply wait.

psycopg is imported only when `submit` is called, so `import jobd` never loads it.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from jobd.config import DEFAULT_QUEUE
from jobd.job import new_job_id
from jobd.store import NewJob
from jobd.submission import check_submission
from jobd.traceparent import current_traceparent

if TYPE_CHECKING:
    import psycopg

DEFAULT_MAX_ATTEMPTS = 3


def submit(
    conn: psycopg.Connection[Any],
    type: str,  # the public name, as in Client.submit
    payload: Any = None,
    *,
    queue: str = DEFAULT_QUEUE,
    priority: int = 0,
    delay: float | None = None,
    run_at: datetime | None = None,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    timeout: float | None = None,
    key: str | None = None,
    after: Sequence[uuid.UUID | str] = (),
    on_parent_failure: str | None = None,
    unique_for: float | None = None,
) -> uuid.UUID:
    """Insert a job through `conn`, in its current transaction, and return the job's id.

    Nothing is committed here: the job appears when the caller commits and vanishes if
    it rolls back (on a connection in autocommit mode it is committed at once). `delay`
    (seconds from now) and `run_at` (an aware datetime) are exclusive. When an unfinished
    job already holds `key` (or, with `unique_for` seconds, any job made with it that
    recently), no job is inserted and that job's id is returned. `after` names jobs that
    must complete first (`on_parent_failure`: "cancel", the default, or "run"); the
    parents it names are locked until the caller's transaction ends. When the
    caller traces with OpenTelemetry, the job carries its current span's `traceparent`.
    Raises `jobd.InvalidJob` naming the wrong argument, before touching `conn`, for
    anything the control API would refuse too; an error from the database is psycopg's
    own, as for any statement on `conn`.
    """
    from jobd.store.postgres import insert_jobs_on

    now = datetime.now(UTC)
    asked = check_submission(
        job_type=type,
        payload=payload,
        now=now,
        queue=queue,
        priority=priority,
        delay=delay,
        run_at=run_at,
        max_attempts=max_attempts,
        timeout=timeout,
        key=key,
        after=list(after) or None,
        on_parent_failure=on_parent_failure,
        unique_for=unique_for,
        traceparent=current_traceparent(),
    )
    job = NewJob(
        id=new_job_id(),
        type=asked.job_type,
        queue=asked.queue or DEFAULT_QUEUE,
        payload=asked.payload,
        priority=asked.priority,
        run_at=asked.run_at,
        max_attempts=asked.max_attempts or DEFAULT_MAX_ATTEMPTS,
        timeout=asked.timeout,
        key=asked.key,
        created_at=now,
        after=asked.parents(()),
        on_parent_failure=asked.on_parent_failure,
        unique_for=asked.unique_for,
        traceparent=asked.traceparent,
    )
    [inserted] = insert_jobs_on(conn, [job])
    return inserted.job.id
