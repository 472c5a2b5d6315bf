"""The PostgreSQL store: shared by every daemon that points at the same database.

psycopg's async API does not run under Trio, so each protocol call is one hop to a
worker thread that runs BEGIN … statements … COMMIT on a sync connection from a
small pool of our own; `pool_size` bounds both the connections and the threads.
SQL lives in `sql/postgres/`: numbered migrations and the named queries.

Cancelling a call cancels its query on the server (`cancel_safe`) and waits for
the thread, so a connection never goes back to the pool mid-statement. A call
cancelled after its transaction committed still raises `Cancelled`; what it
claimed is rescued when its lease expires.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from typing import Any, TypeVar

import psycopg
import psycopg.errors
import trio
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from jobd.errors import InvalidJob, JobNotFound, KeyInUse, StoreUnavailable
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

T = TypeVar("T")
Connection = psycopg.Connection[Any]
Row = dict[str, Any]

NOTIFY_CHANNEL = "jobd"
LOCK_NAMESPACE = 0x6A6F6264  # "jobd": the first key of every advisory lock jobd takes
_MIGRATION_LOCK = 0  # second key of the migration lock; queue locks use hashtext(queue)
_LISTEN_BACKOFF_MAX = 5.0
# Whatever the database's default: the claim of a globally limited queue counts the
# running jobs after taking the queue's lock, which needs a snapshot per statement.
_BEGIN = "BEGIN ISOLATION LEVEL READ COMMITTED"
_CANCEL_REPEAT = 0.1  # seconds between cancel requests while a cancelled query still runs
_NO_CURSOR = 2**63 - 1

_LIST_FILTERS = ("state", "type", "queue")


def _load_sql() -> tuple[dict[str, str], list[tuple[int, str, str]]]:
    """The named queries, and the migrations as (version, name, sql) in order."""
    folder = resources.files("jobd.store") / "sql" / "postgres"
    queries: dict[str, str] = {}
    for block in re.split(r"^-- name: ", folder.joinpath("queries.sql").read_text(), flags=re.M)[1:]:
        name, _, body = block.partition("\n")
        # Comments go: psycopg would read a %(placeholder)s in one as a parameter.
        lines = [line for line in body.splitlines() if not line.lstrip().startswith("--")]
        queries[name.strip()] = "\n".join(lines).strip()
    migrations = []
    for entry in folder.iterdir():
        found = re.fullmatch(r"(\d{4})_(\w+)\.sql", entry.name)
        if found:
            migrations.append((int(found[1]), found[2], entry.read_text()))
    return queries, sorted(migrations)


QUERIES, MIGRATIONS = _load_sql()


@dataclass(slots=True)
class _Checkout:
    """The connection one call uses, shared with the task that may cancel its query."""

    conn: Connection | None
    cancelled: bool = False

    def cancel(self, timeout: float) -> None:
        self.cancelled = True
        if self.conn is not None and not self.conn.closed:
            with contextlib.suppress(psycopg.Error):  # the statement_timeout still ends the query
                self.conn.cancel_safe(timeout=timeout)


class PostgresStore:
    shared = True

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 4,
        connect_timeout: float = 5.0,
        statement_timeout: float = 30.0,
    ) -> None:
        if pool_size < 1:
            raise ValueError("pool_size must be at least 1")
        self._url = url
        self._connect_timeout = connect_timeout
        self._statement_timeout = statement_timeout
        self._idle: list[Connection] = []
        self._limiter = trio.CapacityLimiter(pool_size)  # calls in flight = connections in use
        # Threads for those calls, plus one per call for sending its cancel request.
        self._threads = trio.CapacityLimiter(2 * pool_size)
        self._closed = False

    # -- connections and the one thread hop per call -------------------------------------

    def _connect(self) -> Connection:
        try:
            return psycopg.connect(
                self._url,
                autocommit=True,  # transactions are explicit: BEGIN … COMMIT in one hop
                connect_timeout=max(1, math.ceil(self._connect_timeout)),
                application_name="jobd",
                # A backstop for a query nothing cancels, and times read back in UTC.
                options=f"-c statement_timeout={int(self._statement_timeout * 1000)} -c timezone=UTC",
                # Notice a server that vanished without closing the socket.
                keepalives=1,
                keepalives_idle=10,
                keepalives_interval=5,
                keepalives_count=3,
                # ...and one that vanished while a statement was in flight (packets dropped):
                # without this the kernel retransmits for about 15 minutes.
                tcp_user_timeout=int((self._connect_timeout + self._statement_timeout) * 1000),
            )
        except psycopg.Error as error:
            raise StoreUnavailable(f"cannot connect to PostgreSQL: {_reason(error)}") from error

    async def _run(self, work: Callable[[Connection], T]) -> T:
        """Run `work` in one transaction on a pooled connection, in one thread hop."""
        if self._closed:
            raise StoreUnavailable("the PostgreSQL store is closed")
        async with self._limiter:
            checkout = _Checkout(self._idle.pop() if self._idle else None)
            try:
                return await self._run_cancellable(checkout, work)
            finally:
                if checkout.conn is not None:
                    if self._closed:
                        checkout.conn.close()
                    else:
                        self._idle.append(checkout.conn)

    async def _run_cancellable(self, checkout: _Checkout, work: Callable[[Connection], T]) -> T:
        # The thread runs shielded, so the connection is never abandoned mid-query; a
        # watcher turns our cancellation into a cancel request to the server.
        finished = False
        outcome: list[T] = []
        failure: list[Exception] = []

        async def cancel_query_when_cancelled() -> None:
            try:
                await trio.sleep_forever()
            finally:
                with trio.CancelScope(shield=True):
                    while not finished:
                        await trio.to_thread.run_sync(
                            checkout.cancel, self._connect_timeout, limiter=self._threads
                        )
                        await trio.sleep(_CANCEL_REPEAT)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(cancel_query_when_cancelled)
            with trio.CancelScope(shield=True):
                try:
                    outcome.append(
                        await trio.to_thread.run_sync(self._transact, checkout, work, limiter=self._threads)
                    )
                except Exception as error:
                    failure.append(error)
                finally:
                    finished = True
            nursery.cancel_scope.cancel()
        if failure:
            raise failure[0]
        return outcome[0]

    def _transact(self, checkout: _Checkout, work: Callable[[Connection], T]) -> T:
        conn = self._begin(checkout)
        try:
            if checkout.cancelled:
                raise StoreUnavailable("the call was cancelled")
            result = work(conn)
            conn.execute("COMMIT")
            return result
        except psycopg.Error as error:
            _roll_back(checkout)
            raise _translate(error) from error
        except Exception:
            _roll_back(checkout)
            raise

    def _begin(self, checkout: _Checkout) -> Connection:
        if checkout.conn is not None:
            try:
                checkout.conn.execute(_BEGIN)
                return checkout.conn
            except psycopg.Error:
                # A pooled connection died while idle (server restart, terminated
                # backend): nothing ran yet, so a new connection may safely try again.
                _discard(checkout)
        checkout.conn = self._connect()
        try:
            checkout.conn.execute(_BEGIN)
        except psycopg.Error as error:
            _discard(checkout)
            raise StoreUnavailable(f"PostgreSQL connection lost: {_reason(error)}") from error
        return checkout.conn

    # -- lifecycle -----------------------------------------------------------------------

    async def open(self) -> None:
        self._closed = False
        await self._run(_migrate)

    async def close(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        if idle:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(_close_all, idle, limiter=self._threads)

    async def ping(self) -> None:
        await self._run(lambda conn: conn.execute("SELECT 1").fetchone())

    # -- jobs ----------------------------------------------------------------------------

    async def insert_jobs(self, jobs: Sequence[NewJob]) -> list[Inserted]:
        if not jobs:
            return []
        rows = await self._run(lambda conn: insert_job_rows(conn, jobs))
        return [Inserted(_job(row), created) for row, created in rows]

    async def get_job(self, job_id: uuid.UUID) -> Job | None:
        row = await self._run(lambda conn: _fetch_one(conn, "get_job", {"id": job_id}))
        return _job(row) if row else None

    async def list_jobs(self, filter: JobFilter, limit: int, after: str | None) -> JobPage:
        below = _parse_cursor(after)
        params: dict[str, Any] = {"below": below, "limit": limit + 1}
        terms = []
        for name in _LIST_FILTERS:
            value = getattr(filter, name)
            if value is not None:
                params[name] = str(value)
                terms.append(f"AND {name} = %({name})s")
        query = QUERIES["list_jobs"].replace("{filters}", " ".join(terms))
        rows = await self._run(lambda conn: _fetch_all(conn, query, params))
        page = [_job(row) for row in rows[:limit]]
        more = len(rows) > limit and page
        return JobPage(page, str(rows[limit - 1]["seq"]) if more else None)

    async def claim_jobs(
        self, owner: str, slots: Sequence[QueueSlots], limit: int, now: datetime, lease_until: datetime
    ) -> list[Job]:
        wanted = [slot for slot in slots if slot.free > 0]
        if not wanted or limit <= 0:
            return []
        params = {
            "limit": limit,
            "queues": [slot.queue for slot in wanted],
            "free": [slot.free for slot in wanted],
            "global_limits": [slot.global_limit for slot in wanted],
            "state": JobState.RUNNING.value,
            "now": now,
            "owner": owner,
            "lease_until": lease_until,
        }
        limited = sorted({slot.queue for slot in wanted if slot.global_limit is not None})

        def claim(conn: Connection) -> list[Row]:
            cursor = conn.cursor(row_factory=dict_row)
            # SKIP LOCKED keeps two claimers off the same rows, but it cannot bound a
            # count: two daemons would each see the same running total and both fill
            # the remaining room. Holding a per-queue lock until commit makes the
            # "count running, then claim" of one daemon finish before the next
            # starts. Locks are taken in name order so two daemons never deadlock.
            for queue in limited:
                cursor.execute(QUERIES["lock_queue"], {"namespace": LOCK_NAMESPACE, "queue": queue})
            cursor.execute(QUERIES["claim_jobs"], params)
            return cursor.fetchall()

        return [_job(row) for row in await self._run(claim)]

    async def complete_jobs(self, completions: Sequence[Completion], now: datetime) -> list[Job | None]:
        if not completions:
            return []
        # The first completion of each job goes in one statement; a job named again
        # (two runs of it ended together) has its later completions applied one by one
        # after it, as if each came alone: whichever still holds the fence applies.
        firsts: dict[uuid.UUID, int] = {}
        repeats: list[int] = []
        for index, completion in enumerate(completions):
            if completion.job_id in firsts:
                repeats.append(index)
            else:
                firsts[completion.job_id] = index
        groups = [list(firsts.values()), *([index] for index in repeats)]
        statements = [_completion_params([completions[i] for i in group], now) for group in groups]
        # A job back to pending or scheduled is work for any daemon: tell them.
        wakes = any(c.outcome in (Outcome.RETRIED, Outcome.REQUEUED) for c in completions)

        def complete(conn: Connection) -> list[list[Row]]:
            found = [_fetch_all(conn, QUERIES["complete_jobs"], params) for params in statements]
            if wakes and any(found):
                _notify(conn, "jobs")
            return found

        results: list[Job | None] = [None] * len(completions)
        for group, rows in zip(groups, await self._run(complete), strict=True):
            changed = {row["id"]: row for row in rows}
            for index in group:
                row = changed.get(completions[index].job_id)
                results[index] = None if row is None else _job(row)
        return results

    async def renew_leases(
        self, owner: str, job_ids: Sequence[uuid.UUID], lease_until: datetime
    ) -> set[uuid.UUID]:
        if not job_ids:
            return set()
        params = {"ids": list(job_ids), "owner": owner, "lease_until": lease_until}
        rows = await self._run(lambda conn: _fetch_all(conn, QUERIES["renew_leases"], params))
        return {row["id"] for row in rows}

    async def set_progress(
        self, job_id: uuid.UUID, owner: str, attempt: int, progress: Progress, now: datetime
    ) -> bool:
        params = {
            "id": job_id,
            "owner": owner,
            "attempt": attempt,
            "progress": Jsonb(progress.to_json()),
            "now": now,
        }
        return await self._run(lambda conn: conn.execute(QUERIES["set_progress"], params).rowcount == 1)

    async def cancel_job(self, job_id: uuid.UUID, now: datetime) -> Job:
        def cancel(conn: Connection) -> Row:
            row = _fetch_one(conn, "lock_job", {"id": job_id})
            if row is None:
                raise JobNotFound(str(job_id))
            state = next_state(job_id, JobState(row["state"]), Action.CANCEL)
            if row["state"] == JobState.RUNNING:
                _notify(conn, "cancel")
                return _require(_fetch_one(conn, "request_cancel", {"id": job_id}))
            params = {"id": job_id, "state": state.value, "now": now}
            return _require(_fetch_one(conn, "cancel_waiting_job", params))

        return _job(await self._run(cancel))

    async def cancel_requests(self, owner: str) -> set[uuid.UUID]:
        rows = await self._run(lambda conn: _fetch_all(conn, QUERIES["cancel_requests"], {"owner": owner}))
        return {row["id"] for row in rows}

    async def retry_job(self, job_id: uuid.UUID, now: datetime) -> Job:
        def retry(conn: Connection) -> Row:
            row = _fetch_one(conn, "lock_job", {"id": job_id})
            if row is None:
                raise JobNotFound(str(job_id))
            state = next_state(job_id, JobState(row["state"]), Action.RETRY)
            key = row["key"]
            if key is not None and _require(_fetch_one(conn, "live_key_exists", {"key": key}))["exists"]:
                raise KeyInUse(str(job_id), key)
            try:
                retried = _fetch_one(conn, "retry_job", {"id": job_id, "state": state.value, "now": now})
            except psycopg.errors.UniqueViolation:
                # Another transaction gave the key to a new job since our check.
                raise KeyInUse(str(job_id), key) from None
            _notify(conn, "jobs")
            return _require(retried)

        return _job(await self._run(retry))

    async def promote_due_jobs(self, now: datetime) -> datetime | None:
        def promote(conn: Connection) -> datetime | None:
            promoted = conn.execute(
                QUERIES["promote_due_jobs"], {"state": JobState.PENDING.value, "now": now}
            ).rowcount
            if promoted:
                _notify(conn, "jobs")
            earliest = conn.execute(QUERIES["earliest_scheduled"]).fetchone()
            return earliest[0] if earliest else None

        return await self._run(promote)

    async def rescue_jobs(self, now: datetime, *, all_running: bool = False) -> list[Rescued]:
        params = {
            "now": now,
            "all_running": all_running,
            "cancelled": next_state("", JobState.RUNNING, Action.CANCEL).value,
            "failed": next_state("", JobState.RUNNING, Action.FAIL).value,
            "pending": next_state("", JobState.RUNNING, Action.REQUEUE).value,
        }

        def rescue(conn: Connection) -> list[Row]:
            rows = _fetch_all(conn, QUERIES["rescue_jobs"], params)
            if any(row["state"] == JobState.PENDING for row in rows):
                _notify(conn, "jobs")
            return rows

        return [Rescued(_job(row), row["expired_owner"]) for row in await self._run(rescue)]

    async def prune_jobs(self, before: Mapping[JobState, datetime], limit: int) -> int:
        def prune(conn: Connection) -> int:
            return sum(
                conn.execute(
                    QUERIES["prune_jobs"], {"state": state.value, "before": cutoff, "limit": limit}
                ).rowcount
                for state, cutoff in before.items()
            )

        return await self._run(prune) if before and limit > 0 else 0

    async def count_jobs(self) -> QueueCounts:
        rows = await self._run(lambda conn: conn.execute(QUERIES["count_jobs"]).fetchall())
        counts: dict[str, dict[JobState, int]] = {}
        for queue, state, count in rows:
            counts.setdefault(queue, {})[JobState(state)] = count
        return counts

    async def set_queue_paused(self, queue: str, paused: bool) -> None:
        def pause(conn: Connection) -> None:
            if paused:
                conn.execute(QUERIES["pause_queue"], {"queue": queue})
            elif conn.execute(QUERIES["resume_queue"], {"queue": queue}).rowcount:
                _notify(conn, "jobs")

        await self._run(pause)

    async def paused_queues(self) -> frozenset[str]:
        rows = await self._run(lambda conn: conn.execute(QUERIES["paused_queues"]).fetchall())
        return frozenset(row[0] for row in rows)

    # -- notifications -------------------------------------------------------------------

    async def listen(
        self, wake: WakeCallback, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        delay = 0.1
        started = False
        thread = trio.CapacityLimiter(1)  # this listener's own: it holds a thread for as long as it runs
        while True:
            try:
                conn = await trio.to_thread.run_sync(self._connect_listener, limiter=thread)
            except StoreUnavailable:
                await trio.sleep(delay)
                delay = min(delay * 2, _LISTEN_BACKOFF_MAX)
                continue
            if not started:
                task_status.started()
                started = True
            # Whatever was sent while we were not listening is lost: look once.
            wake("jobs")
            wake("cancel")
            listening_since = trio.current_time()
            try:
                await trio.to_thread.run_sync(_receive_notifications, conn, wake, limiter=thread)
            finally:
                conn.close()  # also when cancelled before the thread started; closing twice is harmless
            # A connection that drops at once again and again must not spin: back off
            # unless it lasted.
            if trio.current_time() - listening_since > _LISTEN_BACKOFF_MAX:
                delay = 0.1
            else:
                await trio.sleep(delay)
                delay = min(delay * 2, _LISTEN_BACKOFF_MAX)

    def _connect_listener(self) -> Connection:
        conn = self._connect()
        try:
            conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
        except psycopg.Error as error:
            conn.close()
            raise StoreUnavailable(f"cannot listen on PostgreSQL: {_reason(error)}") from error
        return conn


def _receive_notifications(conn: Connection, wake: WakeCallback) -> None:
    """Hand each notification to Trio until the connection drops (then return) or the
    listening task is cancelled (then raise `Cancelled`)."""
    try:
        while True:
            for notification in conn.notifies(timeout=0.5):
                trio.from_thread.run_sync(wake, notification.payload)
            trio.from_thread.check_cancelled()
    except psycopg.Error:
        return
    finally:
        conn.close()


# -- work run inside a transaction, in the worker thread -------------------------------------


def insert_job_rows(conn: Connection, jobs: Sequence[NewJob]) -> list[tuple[Row, bool]]:
    """Insert `jobs` in order on `conn`, inside whatever transaction it is in.

    Returns each job's row and whether it was created; an item whose key a live job
    holds gets that job's row instead. Shared by the store and `jobd.transactional`.
    """
    cursor = conn.cursor(row_factory=dict_row)
    params = [_insert_params(new) for new in jobs]
    # One pipelined batch; each insert returns its row, or none when its key is held.
    try:
        cursor.executemany(QUERIES["insert_job"], params, returning=True)
    except psycopg.errors.UniqueViolation as error:
        if error.diag.constraint_name == "jobs_pkey":
            raise _taken_id(jobs, error) from None
        raise
    inserted: list[Row | None] = []
    while True:
        inserted.append(cursor.fetchone())
        if not cursor.nextset():
            break
    results = [
        (row, True) if row is not None else _find_key_holder(cursor, new)
        for new, row in zip(jobs, inserted, strict=True)
    ]
    if any(created for _row, created in results):
        _notify(conn, "jobs")
    return results


def _taken_id(jobs: Sequence[NewJob], error: psycopg.errors.UniqueViolation) -> InvalidJob:
    """The batch item whose id is taken (by a stored job, or by an earlier item)."""
    detail = error.diag.message_detail or ""
    seen: set[uuid.UUID] = set()
    for index, new in enumerate(jobs):
        if new.id in seen or str(new.id) in detail:
            return InvalidJob(f"a job with id {new.id} already exists", field="id", index=index)
        seen.add(new.id)
    return InvalidJob(f"a job id is already taken: {detail}", field="id")


def _find_key_holder(cursor: psycopg.Cursor[Row], new: NewJob) -> tuple[Row, bool]:
    while True:
        live = cursor.execute(QUERIES["live_job_with_key"], {"key": new.key}).fetchone()
        if live is not None:
            return live, False
        # The holder finished before we could read it: the key is free again.
        row = cursor.execute(QUERIES["insert_job"], _insert_params(new)).fetchone()
        if row is not None:
            return row, True


def _completion_params(batch: Sequence[Completion], now: datetime) -> dict[str, Any]:
    states = [next_state(c.job_id, JobState.RUNNING, c.outcome.action) for c in batch]
    return {
        "now": now,
        "ids": [c.job_id for c in batch],
        "owners": [c.owner for c in batch],
        "attempts": [c.attempt for c in batch],
        "outcomes": [c.outcome.value for c in batch],
        "states": [state.value for state in states],
        "finals": [state in FINISHED_STATES for state in states],
        "results": [json.dumps(c.result) if c.outcome == Outcome.COMPLETED else None for c in batch],
        "errors": [c.error for c in batch],
        "run_ats": [c.run_at for c in batch],
    }


def _insert_params(new: NewJob) -> dict[str, Any]:
    return {
        "id": new.id,
        "type": new.type,
        "queue": new.queue,
        "payload": Jsonb(new.payload),
        "state": new.state.value,
        "priority": new.priority,
        "max_attempts": new.max_attempts,
        "timeout": new.timeout,
        "run_at": new.run_at,
        "created_at": new.created_at,
        "key": new.key,
    }


def _migrate(conn: Connection) -> None:
    # The lock is taken by its own statement, so every later statement of this
    # transaction sees what an earlier holder committed: ten daemons, one migration.
    conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (LOCK_NAMESPACE, _MIGRATION_LOCK))
    conn.execute("CREATE SCHEMA IF NOT EXISTS jobd")
    conn.execute(
        "CREATE TABLE IF NOT EXISTS jobd.migrations ("
        " version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
    )
    applied = {row[0] for row in conn.execute("SELECT version FROM jobd.migrations")}
    newest = MIGRATIONS[-1][0]
    if applied and max(applied) > newest:
        raise StoreUnavailable(
            f"the database's jobd schema is at version {max(applied)}, newer than this jobd knows ({newest})"
        )
    for version, name, sql in MIGRATIONS:
        if version not in applied:
            conn.execute(sql)  # several statements: psycopg runs them as one query without parameters
            conn.execute("INSERT INTO jobd.migrations (version, name) VALUES (%s, %s)", (version, name))


def _notify(conn: Connection, payload: str) -> None:
    conn.execute(QUERIES["notify"], {"payload": payload})


def _fetch_one(conn: Connection, name: str, params: Mapping[str, Any]) -> Row | None:
    return conn.cursor(row_factory=dict_row).execute(QUERIES[name], params).fetchone()


def _fetch_all(conn: Connection, query: str, params: Mapping[str, Any]) -> list[Row]:
    return conn.cursor(row_factory=dict_row).execute(query, params).fetchall()


def _require(row: Row | None) -> Row:
    if row is None:  # every caller asks for a row this transaction holds locked
        raise StoreUnavailable("PostgreSQL returned no row where one was certain")
    return row


def _roll_back(checkout: _Checkout) -> None:
    """End a failed transaction; a connection that cannot is dropped, not pooled."""
    conn = checkout.conn
    if conn is None or conn.broken or conn.closed:
        _discard(checkout)
        return
    try:
        conn.execute("ROLLBACK")
    except psycopg.Error:
        _discard(checkout)


def _discard(checkout: _Checkout) -> None:
    if checkout.conn is not None:
        checkout.conn.close()
        checkout.conn = None


def _close_all(connections: Sequence[Connection]) -> None:
    for conn in connections:
        conn.close()


# -- translation at the boundary -------------------------------------------------------------


def _reason(error: psycopg.Error) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _translate(error: psycopg.Error) -> Exception:
    if isinstance(error, psycopg.errors.QueryCanceled):
        return StoreUnavailable(f"PostgreSQL query cancelled: {_reason(error)}")
    if isinstance(error, psycopg.DataError):
        return InvalidJob(f"PostgreSQL refused a value: {_reason(error)}")
    if isinstance(error, psycopg.OperationalError | psycopg.InterfaceError):
        return StoreUnavailable(f"PostgreSQL connection lost: {_reason(error)}")
    return StoreUnavailable(f"PostgreSQL error: {_reason(error)}")


def _job(row: Row) -> Job:
    progress = row["progress"]
    return Job(
        id=row["id"],
        type=row["type"],
        queue=row["queue"],
        payload=row["payload"],
        state=JobState(row["state"]),
        priority=row["priority"],
        attempts=row["attempts"],
        max_attempts=row["max_attempts"],
        timeout=row["timeout"],
        run_at=row["run_at"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        last_error=row["last_error"],
        result=row["result"],
        progress=Progress(progress["fraction"], progress.get("message")) if progress else None,
        key=row["key"],
    )


def _parse_cursor(after: str | None) -> int:
    if after is None:
        return _NO_CURSOR
    if not after.isdigit() or int(after) > _NO_CURSOR:
        raise ValueError(f"not a cursor from this store: {after!r}")
    return int(after)
