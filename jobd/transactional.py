"""Submit a job inside the application's own PostgreSQL transaction.

The job exists if and only if the application's transaction commits, and the daemons
sharing the database are woken at that commit (NOTIFY is transactional). Unlike the
control API, this cannot see the daemon's handler config: `queue`, `max_attempts`
and `timeout` are stored exactly as given, and a queue no daemon serves is not
refused, its jobs simply wait.

psycopg is imported only when `submit` is called, so `import jobd` never loads it.
"""

from __future__ import annotations

import json
import math
import uuid
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from jobd.errors import InvalidJob
from jobd.job import new_job_id
from jobd.store import NewJob

if TYPE_CHECKING:
    import psycopg


def submit(
    conn: psycopg.Connection[Any],
    type: str,
    payload: Any = None,
    *,
    queue: str = "default",
    priority: int = 0,
    delay: float | None = None,
    run_at: datetime | None = None,
    max_attempts: int = 3,
    timeout: float | None = None,
    key: str | None = None,
) -> uuid.UUID:
    """Insert a job through `conn`, in its current transaction, and return the job's id.

    Nothing is committed here: the job appears when the caller commits and vanishes if
    it rolls back (on a connection in autocommit mode it is committed at once). `delay`
    (seconds from now) and `run_at` (an aware datetime) are exclusive. When an unfinished
    job already holds `key`, no job is inserted and that job's id is returned.
    Raises `jobd.errors.InvalidJob` naming the wrong argument, before touching `conn`;
    an error from the database is psycopg's own, as for any statement on `conn`.
    """
    from jobd.store.postgres import insert_jobs_on

    _check_name("type", type)
    _check_name("queue", queue)
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise InvalidJob(f"priority must be an integer, not {priority!r}", field="priority")
    if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1:
        raise InvalidJob(
            f"max_attempts must be an integer of at least 1, not {max_attempts!r}", field="max_attempts"
        )
    if timeout is not None and not _positive_seconds(timeout):
        raise InvalidJob(f"timeout must be a positive number of seconds, not {timeout!r}", field="timeout")
    if key is not None and (not isinstance(key, str) or not key):
        raise InvalidJob(f"key must be a non-empty string or None, not {key!r}", field="key")
    try:
        json.dumps(payload, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise InvalidJob(f"payload is not JSON: {error}", field="payload") from None

    now = datetime.now(UTC)
    if delay is not None and run_at is not None:
        raise InvalidJob("give delay or run_at, not both", field="delay")
    if delay is not None:
        if not _positive_seconds(delay, zero_allowed=True):
            raise InvalidJob(f"delay must be a number of seconds of at least 0, not {delay!r}", field="delay")
        run_at = now + timedelta(seconds=delay)
    elif run_at is not None and (not isinstance(run_at, datetime) or run_at.tzinfo is None):
        raise InvalidJob(f"run_at must be a datetime with a time zone, not {run_at!r}", field="run_at")
    job = NewJob(
        id=new_job_id(),
        type=type,
        queue=queue,
        payload=payload,
        priority=priority,
        run_at=run_at.astimezone(UTC) if run_at is not None else now,
        max_attempts=max_attempts,
        timeout=float(timeout) if timeout is not None else None,
        key=key,
        created_at=now,
    )
    [inserted] = insert_jobs_on(conn, [job])
    return inserted.job.id


def _check_name(field: str, value: object) -> None:
    if not isinstance(value, str) or not value.strip():
        raise InvalidJob(f"{field} must be a non-empty string, not {value!r}", field=field)


def _positive_seconds(value: object, *, zero_allowed: bool = False) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return False
    return value >= 0 if zero_allowed else value > 0
