"""The PostgreSQL store: shared by every daemon that points at the same database.

psycopg's async API does not run under Trio. The hot paths (insert, claim, complete)
are one statement each, sent alone (one round trip, one commit) on a sync connection
that Trio's own I/O drives (`jobd.store.pgtrio`). Every other call is one hop to a
worker thread that runs its statements, inside BEGIN … COMMIT, on a connection of the
same small pool; `pool_size` bounds both the connections and the threads. SQL lives
in `sql/postgres/`: numbered migrations and the named queries.

Cancelling a call cancels its query on the server (`cancel_safe`) and waits for its
end, so a connection never goes back to the pool mid-statement. A call
cancelled after its transaction committed still raises `Cancelled`; what it
claimed is rescued when its lease expires.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import psycopg
import psycopg.errors
import trio
import trio.lowlevel
from outcome import Outcome as Captured
from outcome import Value as CapturedValue
from psycopg.rows import tuple_row
from psycopg.types.json import Jsonb, set_json_loads
from psycopg.waiting import Wait

from jobd import jsoncodec
from jobd.backoff import StoreOutage
from jobd.errors import ConfigError, InvalidJob, JobNotFound, KeyInUse, StoreUnavailable
from jobd.job import (
    FINISHED_STATES,
    JSON,
    STATE_OF,
    Action,
    Job,
    JobState,
    ParentFailure,
    Progress,
    next_state,
)
from jobd.store import (
    TOKEN,
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
    joined_chunks,
    paused_record,
    pgtrio,
    plan_fire,
    queue_activities,
    rate_window,
    refill_per_microsecond,
    rescue_decision,
    standing_alone,
    synced_record,
)
from jobd.store.sqlfiles import load_migrations, load_queries

T = TypeVar("T")
Connection = psycopg.Connection[Any]
log = logging.getLogger("jobd.store")

NOTIFY_CHANNEL = "jobd"
LOCK_NAMESPACE = 0x6A6F6264  # "jobd": the first key of every advisory lock jobd takes
_MIGRATION_LOCK = 0  # second key of the migration lock; queue locks use hashtext(queue)
_LISTEN_BACKOFF_MAX = 5.0
_PROBE = "probe "  # a NOTIFY payload for no one: the listener's check that it hears what is sent
# Whatever the database's default: the claim of a globally limited queue counts the
# running jobs after taking the queue's lock, which needs a snapshot per statement.
_BEGIN = "BEGIN ISOLATION LEVEL READ COMMITTED"
_CANCEL_REPEAT = 0.1  # seconds between cancel requests while a cancelled query still runs
_NO_CURSOR = 2**63 - 1

_LIST_FILTERS = ("state", "type", "queue")


# The columns of a job, in the order `_job` reads them.
COLUMNS = (
    "id", "type", "queue", "payload", "state", "priority", "attempts", "max_attempts", "timeout",
    "run_at", "created_at", "updated_at", "started_at", "finished_at", "last_error", "result",
    "progress", "key", "schedule", "scheduled_for", "parents", "on_parent_failure", "traceparent",
)  # fmt: skip


# A queue its rate held back, as a row of `complete_and_claim_jobs`: the queue, and the
# time its next token is due in the place of run_at.
_HELD_COLUMNS = {"queue": "queue", "run_at": "due"}


def _expand(query: str) -> str:
    return (
        query.replace("{columns}", ", ".join(COLUMNS))
        .replace("{j_columns}", ", ".join(f"j.{name}" for name in COLUMNS))
        .replace("{nulls}", ", ".join(["NULL"] * len(COLUMNS)))
        .replace("{held_columns}", ", ".join(_HELD_COLUMNS.get(name, "NULL") for name in COLUMNS))
    )


# Parts that more than one query has, written once in queries.sql: `{name}` in a query.
_PARTS = (
    "new_jobs",
    "free_slots",
    "ready_in_slot",
    "record_outcomes",
    "claim_chosen",
    "claimed_and_recorded",
)


def _queries() -> dict[str, str]:
    loaded = load_queries("postgres")
    parts = {name: loaded.pop(name) for name in _PARTS}
    for name, part in parts.items():
        loaded = {query_name: query.replace(f"{{{name}}}", part) for query_name, query in loaded.items()}
    return {name: _expand(query) for name, query in loaded.items()}


QUERIES = _queries()
MIGRATIONS = load_migrations("postgres")


_JSON_DECODER = json.JSONDecoder()


def _json_loads(data: str | bytes) -> JSON:
    """jsonb as psycopg hands it over (UTF-8 bytes), decoded at less than half the cost of
    `json.loads` on bytes, which first guesses their encoding: 1.5 µs a claimed job."""
    return _JSON_DECODER.decode(data if isinstance(data, str) else str(data, "utf-8"))


@dataclass(frozen=True, slots=True)
class _Positional:
    """A named query in PostgreSQL's own `$n` placeholders, run through a RawCursor.
    psycopg parses a query's `%(name)s` placeholders again on every call once its text
    is over 4 kB (past its cache): 0.17 ms of the GIL for complete_and_claim_jobs, the
    statement of every dispatcher round."""

    text: str
    names: tuple[str, ...]  # the parameter of each `$n`, in order

    @classmethod
    def of(cls, query: str) -> _Positional:
        names: list[str] = []

        def number(match: re.Match[str]) -> str:
            if match[1] not in names:
                names.append(match[1])
            return f"${names.index(match[1]) + 1}"

        return cls(re.sub(r"%\((\w+)\)s", number, query).replace("%%", "%"), tuple(names))

    def execute(self, conn: Connection, params: Mapping[str, Any]) -> psycopg.Cursor[tuple[Any, ...]]:
        return psycopg.RawCursor(conn).execute(self.text, [params[name] for name in self.names])


_COMPLETE_AND_CLAIM = _Positional.of(QUERIES["complete_and_claim_jobs"])
_COMPLETE_AND_CLAIM_UNLIMITED = _Positional.of(QUERIES["complete_and_claim_unlimited"])
_PING = _Positional.of("SELECT 1")
_INSERT_JOBS = _Positional.of(QUERIES["insert_jobs"])
_INSERT_AND_CLAIM = _Positional.of(QUERIES["insert_and_claim_jobs"])
_LOCK_QUEUE = _Positional.of(QUERIES["lock_queue"])
_NOTIFY_UNCLAIMED = _Positional.of(QUERIES["notify_unclaimed"])


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

    @property
    def chunked_inserts(self) -> bool:
        return pgtrio.AVAILABLE  # on Trio's I/O: a thread would hold the GIL against the check

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 4,
        connect_timeout: float = 5.0,
        statement_timeout: float = 30.0,
        listen_url: str | None = None,
        transaction_pooling: bool = False,
    ) -> None:
        if pool_size < 1:
            raise ValueError("pool_size must be at least 1")
        self._url = url
        self._listen_url = listen_url
        self._transaction_pooling = transaction_pooling
        self._connect_timeout = connect_timeout
        self._statement_timeout = statement_timeout
        self._idle: list[Connection] = []
        self._limiter = trio.CapacityLimiter(pool_size)  # calls in flight = connections in use
        self._closed = False

    # -- connections, and the way each call reaches one -----------------------------------

    def _connect(self, *, listener: bool = False) -> Connection:
        """A connection for the pool, to `store.url`; or for LISTEN, to `store.listen_url`
        when set. LISTEN needs no session settings: the listener sends none, so that a
        listen_url that goes through a pooler is found by `_hears_notify`, not refused."""
        session: dict[str, Any] = {}
        if self._transaction_pooling:
            # Each transaction may run in another server session: a statement prepared in
            # one is missing in the next, and PgBouncer refuses session settings (`options`).
            session = {"prepare_threshold": None}
        elif not listener:
            # A backstop for a query nothing cancels, and times read back in UTC.
            timeout_ms = int(self._statement_timeout * 1000)
            session = {"options": f"-c statement_timeout={timeout_ms} -c timezone=UTC"}
        try:
            conn = psycopg.connect(
                (self._listen_url or self._url) if listener else self._url,
                autocommit=True,  # a lone statement is its own transaction; others say BEGIN
                connect_timeout=max(1, math.ceil(self._connect_timeout)),
                application_name="jobd",
                **session,
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
            reason = _reason(error)
            if "unsupported startup parameter" in reason:  # PgBouncer's answer to `options`
                reason += " (a pooler in transaction mode? set store.transaction_pooling = true)"
            raise StoreUnavailable(f"cannot connect to PostgreSQL: {reason}") from error
        set_json_loads(_json_loads, conn)
        return conn

    @contextlib.asynccontextmanager
    async def _checkout(self) -> AsyncIterator[_Checkout]:
        """A pooled connection (or none yet: the call connects), back to the pool after."""
        if self._closed:
            raise StoreUnavailable("the PostgreSQL store is closed")
        async with self._limiter:
            checkout = _Checkout(self._idle.pop() if self._idle else None)
            try:
                yield checkout
            finally:
                if checkout.conn is not None:
                    # Never pooled mid-statement or mid-transaction, whatever went wrong.
                    if self._closed or _in_use(checkout.conn):
                        checkout.conn.close()
                    else:
                        self._idle.append(checkout.conn)

    async def _run(self, work: Callable[[Connection], T], *, transaction: bool = True) -> T:
        """Run `work` on a pooled connection, in one thread hop: inside BEGIN … COMMIT, or,
        for work that is one statement, alone (one round trip, no BEGIN or COMMIT)."""
        async with self._checkout() as checkout:
            return await self._run_cancellable(checkout, work, transaction)

    async def _statement(
        self,
        query: _Positional,
        params: Mapping[str, Any],
        errors: Callable[[psycopg.Error], Exception] = lambda error: _translate(error),
    ) -> list[tuple[Any, ...]]:
        """The rows of one statement sent alone (its own transaction)."""
        return (await self._statements([(query, params)], errors))[0]

    async def _statement_and(
        self,
        query: _Positional,
        params: Mapping[str, Any],
        make: Callable[[], T],
        errors: Callable[[psycopg.Error], Exception] = lambda error: _translate(error),
    ) -> tuple[list[tuple[Any, ...]], T]:
        """`_statement`, and what `make()` returns: work that needs neither the rows nor
        the database, done while the server runs the statement (on Trio's I/O; in a
        worker thread's stead, once the statement has ended). An error of `make` is
        raised once the statement has ended: the statement may have committed."""
        made: list[T] = []
        rows = await self._statements([(query, params)], errors, meanwhile=lambda: made.append(make()))
        return rows[0], made[0]

    async def _statements(
        self,
        steps: Sequence[tuple[_Positional, Mapping[str, Any]]],
        errors: Callable[[psycopg.Error], Exception] = lambda error: _translate(error),
        *,
        meanwhile: Callable[[], None] | None = None,
    ) -> list[list[tuple[Any, ...]]]:
        """The rows of each statement of `steps`, run in order on one connection, in one
        transaction, and `meanwhile` called (see `_statement_and`). A statement alone
        runs on Trio's own I/O when psycopg allows it (`jobd.store.pgtrio`): no thread
        hop. Several go in a worker thread, inside BEGIN … COMMIT and pipelined: one
        round trip, where Trio would need one per statement."""
        if len(steps) > 1 or not pgtrio.AVAILABLE:
            rows = await self._run(lambda conn: _pipelined(conn, steps, errors), transaction=False)
            if meanwhile is not None:
                meanwhile()
            return rows
        [(query, params)] = steps
        async with self._checkout() as checkout:
            cursor = await self._trio_cursor(checkout)
            try:
                await pgtrio.execute(
                    cursor,
                    query.text,
                    [params[name] for name in query.names],
                    on_cancel=lambda: self._keep_cancelling(checkout),
                    meanwhile=meanwhile,
                )
            except psycopg.Error as error:
                _roll_back(checkout)  # no I/O: a statement alone leaves no transaction open
                raise errors(error) from error
            return [cursor.fetchall() if cursor.description is not None else []]

    async def _trio_cursor(self, checkout: _Checkout) -> psycopg.RawCursor[tuple[Any, ...]]:
        """A cursor on the checkout's connection, for statements on Trio's I/O. Connecting
        blocks: in a thread, and to its end, as in `_call`."""
        conn = checkout.conn
        if conn is None or _dead(conn):
            conn = await trio.to_thread.run_sync(self._usable_connection, checkout)
        return psycopg.RawCursor(conn)

    def _keep_cancelling(
        self, checkout: _Checkout, ended: threading.Event | None = None
    ) -> Callable[[], Awaitable[None]]:
        """Ask the server to cancel the checkout's query, from a thread of its own and
        again every `_CANCEL_REPEAT` seconds, until `ended` is set. The function returned
        sets it and waits for that thread: a cancel request still on its way once the
        connection is back in the pool would cancel the next call's statement."""
        ended = ended or threading.Event()
        stopped = trio.Event()
        token = trio.lowlevel.current_trio_token()
        trio.lowlevel.start_thread_soon(
            lambda: self._cancel_until(checkout, ended), lambda _: token.run_sync_soon(stopped.set)
        )

        async def stop() -> None:
            ended.set()
            await stopped.wait()

        return stop

    async def _run_cancellable(
        self, checkout: _Checkout, work: Callable[[Connection], T], transaction: bool
    ) -> T:
        """Run the call in a worker thread and wait for it to end, even when cancelled, so
        that a connection never goes back to the pool mid-statement: a cancellation sends
        the server a cancel request instead (from a thread of its own, again every
        `_CANCEL_REPEAT` seconds until the call ends), then raises `Cancelled` once the
        call has ended. No task or nursery per call: this is every store call's path."""
        task = trio.lowlevel.current_task()
        token = trio.lowlevel.current_trio_token()
        ended = threading.Event()

        def deliver(result: Captured[T]) -> None:  # in the worker thread
            ended.set()
            # Wrapped: the call's own error must not pass before a cancellation does.
            token.run_sync_soon(trio.lowlevel.reschedule, task, CapturedValue(result))

        cancelling: list[Callable[[], Awaitable[None]]] = []

        def abort(_: trio.lowlevel.RaiseCancelT) -> trio.lowlevel.Abort:
            if not cancelling:
                cancelling.append(self._keep_cancelling(checkout, ended))
            return trio.lowlevel.Abort.FAILED  # keep waiting: the thread still holds the connection

        trio.lowlevel.start_thread_soon(lambda: self._call(checkout, work, transaction), deliver)
        result: Captured[T] = await trio.lowlevel.wait_task_rescheduled(abort)
        if cancelling:
            with trio.CancelScope(shield=True):
                await cancelling[0]()
        await trio.lowlevel.checkpoint_if_cancelled()  # a call cancelled meanwhile raises here
        return result.unwrap()

    def _cancel_until(self, checkout: _Checkout, ended: threading.Event) -> None:
        while not ended.is_set():
            checkout.cancel(self._connect_timeout)
            ended.wait(_CANCEL_REPEAT)

    def _call(self, checkout: _Checkout, work: Callable[[Connection], T], transaction: bool) -> T:
        conn = self._usable_connection(checkout)
        try:
            if checkout.cancelled:
                raise StoreUnavailable("the call was cancelled")
            if not transaction:
                return work(conn)
            conn.execute(_BEGIN)
            result = work(conn)
            conn.execute("COMMIT")
            return result
        except psycopg.Error as error:
            _roll_back(checkout)
            raise _translate(error) from error
        except Exception:
            _roll_back(checkout)
            raise

    def _usable_connection(self, checkout: _Checkout) -> Connection:
        """The checked-out connection, or a new one in place of one that died while idle.

        An idle connection has nothing to say: one that can be read from was closed by
        the server (restarted, or its backend terminated). Nothing was sent on it, so a
        new connection may safely run the call.
        """
        if checkout.conn is not None and _dead(checkout.conn):
            _discard(checkout)
        if checkout.conn is None:
            checkout.conn = self._connect()
        return checkout.conn

    # -- lifecycle -----------------------------------------------------------------------

    async def open(self) -> None:
        self._closed = False
        await self._run(_migrate)
        if not pgtrio.AVAILABLE:
            log.warning(
                "psycopg %s is not a release jobd runs statements with on its event loop (%s): "
                "every statement runs in a worker thread, a little slower",
                psycopg.__version__,
                pgtrio.KNOWN,
            )

    async def close(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        if idle:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(_close_all, idle)

    async def ping(self) -> None:
        await self._statement(_PING, {})

    # -- jobs ----------------------------------------------------------------------------

    async def insert_jobs(self, jobs: Sequence[NewJob]) -> list[Inserted]:
        if not jobs:
            return []
        # Without keys or parents the insert is one statement; a key held by a job that
        # finishes meanwhile needs a second look, in the same transaction.
        if not all(new.stands_alone for new in jobs):
            return await self._run(lambda conn: insert_jobs_on(conn, jobs))
        # One statement, and every job is created: only a key could make it give way.
        _, created = await self._statement_and(
            _INSERT_JOBS, _insert_params(jobs), lambda: all_created(jobs), _refusal(jobs)
        )
        return created

    async def insert_job_chunks(self, chunks: Iterator[Sequence[NewJob]]) -> list[Inserted]:
        if not self.chunked_inserts:
            return await self.insert_jobs(joined_chunks(chunks))
        # BEGIN, an insert a chunk, COMMIT, on Trio's I/O. While the server works, the
        # next chunk is checked (`next(chunks)`) and the answer for the one it inserts is
        # made: a 1,000-job batch took a quarter less time than checked, then inserted.
        inserted: list[Inserted] = []
        taken = (standing_alone(chunk) for chunk in chunks if chunk)  # an empty chunk adds nothing
        following: list[Sequence[NewJob] | None] = [None]  # the next chunk; None: no more

        def take_next() -> None:
            following[0] = next(taken, None)

        def answer_and_take_next(sent: Sequence[NewJob]) -> None:
            inserted.extend(all_created(sent))
            take_next()

        async with self._checkout() as checkout:
            cursor = await self._trio_cursor(checkout)

            def stop_cancelling() -> Callable[[], Awaitable[None]]:
                return self._keep_cancelling(checkout)

            try:
                await pgtrio.execute(cursor, _BEGIN, [], on_cancel=stop_cancelling, meanwhile=take_next)
                offset = 0  # the batch index of the chunk's first job
                while (sent := following[0]) is not None:
                    try:
                        params = _insert_params(sent)
                    except InvalidJob as error:
                        if error.index is not None:  # within the chunk: in the batch
                            error.index += offset
                        raise
                    try:
                        await pgtrio.execute(
                            cursor,
                            _INSERT_JOBS.text,
                            [params[name] for name in _INSERT_JOBS.names],
                            on_cancel=stop_cancelling,
                            meanwhile=functools.partial(answer_and_take_next, sent),
                        )
                    except psycopg.Error as error:
                        raise _refusal(sent, offset=offset)(error) from error
                    offset += len(sent)
                await pgtrio.execute(cursor, "COMMIT", [], on_cancel=stop_cancelling)
            except Exception as error:
                # Failing that, the connection, still in the transaction, is closed, not
                # pooled (`_checkout`): the server rolls back.
                with contextlib.suppress(psycopg.Error):
                    await pgtrio.execute(cursor, "ROLLBACK", [], on_cancel=stop_cancelling)
                if isinstance(error, psycopg.Error):  # BEGIN's or COMMIT's
                    raise _translate(error) from error
                raise
        return inserted

    async def insert_and_claim_jobs(
        self, jobs: Sequence[NewJob], claim: ClaimRequest, now: datetime
    ) -> InsertedAndClaimed:
        if not all(new.stands_alone for new in jobs):
            # A held key or a parent is looked up before the claim can go: two calls.
            inserted = await self.insert_jobs(jobs)
            claimed = await self._exchange([], claim, now)
            return InsertedAndClaimed(inserted, claimed.claimed, claimed.rate_held)
        wanted = _wanted(claim)
        if not _limited_queues(wanted):
            # One statement, on Trio's I/O (a single submit to a daemon with room).
            params = {**_insert_params(jobs), **_exchange_params([], wanted, claim, now)}
            rows, created = await self._statement_and(
                _INSERT_AND_CLAIM, params, lambda: all_created(jobs), _refusal(jobs)
            )
            return InsertedAndClaimed(created, _claimed_jobs(rows), {})
        # A queue's lock first, then the insert and the claim, in one transaction: the
        # claim, a statement of its own after the insert, sees the rows just inserted.
        exchanged = await self._exchange([], claim, now, inserting=jobs)
        return InsertedAndClaimed(all_created(jobs), exchanged.claimed, exchanged.rate_held)

    async def get_job(self, job_id: uuid.UUID) -> Job | None:
        row = await self._run(lambda conn: _fetch_one(conn, "get_job", {"id": job_id}), transaction=False)
        return _job(row) if row else None

    async def job_results(self, job_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, JSON]:
        if not job_ids:
            return {}
        rows = await self._run(
            lambda conn: conn.execute(QUERIES["job_results"], {"ids": list(job_ids)}).fetchall(),
            transaction=False,
        )
        return {row[0]: row[1] for row in rows}

    async def list_jobs(self, wanted: JobFilter, limit: int, after: str | None) -> JobPage:
        below = _parse_cursor(after)
        params: dict[str, Any] = {"below": below, "limit": limit + 1}
        terms = []
        for name in _LIST_FILTERS:
            value = getattr(wanted, name)
            if value is not None:
                params[name] = str(value)
                terms.append(f"AND {name} = %({name})s")
        name = "list_jobs"
        if wanted.state is not None:
            name = "list_finished_jobs" if wanted.state.finished else "list_live_jobs"
        query = QUERIES[name].replace("{filters}", " ".join(terms))
        rows = await self._run(lambda conn: conn.execute(query, params).fetchall(), transaction=False)
        page = [_job(row) for row in rows[:limit]]
        more = len(rows) > limit and page
        return JobPage(page, str(rows[limit - 1][len(COLUMNS)]) if more else None)

    async def claim_jobs(
        self, owner: str, slots: Sequence[QueueSlots], limit: int, now: datetime, lease_until: datetime
    ) -> list[Job]:
        if limit <= 0 or not any(slot.free > 0 for slot in slots):
            return []
        claim = ClaimRequest(owner, slots, limit, lease_until)
        return (await self.complete_and_claim_jobs([], claim, now)).claimed

    async def complete_jobs(self, completions: Sequence[Completion], now: datetime) -> list[bool]:
        if not completions:
            return []
        return (await self._exchange(completions, None, now)).applied

    async def complete_and_claim_jobs(
        self, completions: Sequence[Completion], claim: ClaimRequest, now: datetime
    ) -> CompletedAndClaimed:
        return await self._exchange(completions, claim, now)

    async def _exchange(
        self,
        completions: Sequence[Completion],
        claim: ClaimRequest | None,
        now: datetime,
        *,
        inserting: Sequence[NewJob] = (),
    ) -> CompletedAndClaimed:
        """Record `completions` and make `claim` (after inserting `inserting`, jobs whose
        keys the caller has ruled out) in one transaction."""
        wanted = _wanted(claim)
        # The first completion of each job goes in the statement that claims; a job named
        # again (two runs of it ended together) has each later completion applied after
        # it, as if it came alone: whichever still holds the fence applies.
        firsts: dict[uuid.UUID, int] = {}
        repeats: list[int] = []
        for index, completion in enumerate(completions):
            if completion.job_id in firsts:
                repeats.append(index)
            else:
                firsts[completion.job_id] = index
        first = [completions[index] for index in firsts.values()]
        statements = [_exchange_params(first, wanted, claim, now)]
        statements += [_exchange_params([completions[index]], [], None, now) for index in repeats]
        # SKIP LOCKED keeps two claimers off the same rows, but it cannot bound a count:
        # two daemons would each see the same running total (or the same tokens) and
        # both fill the remaining room. Holding a per-queue lock until commit makes the
        # "count running (or read the bucket), then claim" of one daemon finish before
        # the next starts. Locks are taken in name order so two daemons never deadlock.
        limited = _limited_queues(wanted)

        # Whether other daemons must hear of the insert is known after the claim only when
        # the claim could take every job it inserts; otherwise the insert notifies itself,
        # without a look at each of a large batch's rows.
        decide_after_claim = (
            claim is not None
            and 0 < len(inserting) <= claim.limit
            and all(new.state == JobState.PENDING for new in inserting)
        )
        insert = _insert_params(inserting, notify=not decide_after_claim) if inserting else None

        steps: list[tuple[_Positional, Mapping[str, Any]]] = []
        if insert is not None:
            steps.append((_INSERT_JOBS, insert))
        steps += [(_LOCK_QUEUE, {"namespace": LOCK_NAMESPACE, "queue": queue}) for queue in limited]
        # No global limit or rate among the claim's queues (a completion alone claims
        # nothing): the statement without the counting and the buckets.
        exchange = _COMPLETE_AND_CLAIM if limited else _COMPLETE_AND_CLAIM_UNLIMITED
        claims = slice(len(steps), len(steps) + len(statements))
        steps += [(exchange, statements[0])]
        steps += [(_COMPLETE_AND_CLAIM_UNLIMITED, params) for params in statements[1:]]
        if decide_after_claim:
            steps.append((_NOTIFY_UNCLAIMED, {"ids": [new.id for new in inserting]}))

        results = (await self._statements(steps, _refusal(inserting)))[claims]
        applied_ids = [{row[1] for row in rows if row[0] is False} for rows in results]
        applied = [False] * len(completions)
        for index in firsts.values():
            applied[index] = completions[index].job_id in applied_ids[0]
        for statement, index in enumerate(repeats, start=1):
            applied[index] = completions[index].job_id in applied_ids[statement]
        rate_held = {row[_QUEUE]: row[_RUN_AT] for row in results[0] if row[0] is None}
        return CompletedAndClaimed(applied, _claimed_jobs(results[0]), rate_held)

    async def renew_leases(
        self, owner: str, job_ids: Sequence[uuid.UUID], lease_until: datetime
    ) -> set[uuid.UUID]:
        if not job_ids:
            return set()
        params = {"ids": list(job_ids), "owner": owner, "lease_until": lease_until}
        rows = await self._run(
            lambda conn: conn.execute(QUERIES["renew_leases"], params).fetchall(), transaction=False
        )
        return {row[0] for row in rows}

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
        return await self._run(
            lambda conn: conn.execute(QUERIES["set_progress"], params).rowcount == 1, transaction=False
        )

    async def cancel_job(self, job_id: uuid.UUID, now: datetime) -> Job:
        def cancel(conn: Connection) -> tuple[Any, ...]:
            row = _fetch_one(conn, "lock_live_job", {"id": job_id})
            if row is None:
                finished = _fetch_one(conn, "lock_finished_job", {"id": job_id})
                if finished is None:
                    raise JobNotFound(str(job_id))
                next_state(job_id, JobState(finished[4]), Action.CANCEL)  # raises: it is finished
            assert row is not None
            state = next_state(job_id, JobState(row[4]), Action.CANCEL)
            if row[4] == JobState.RUNNING:
                _notify(conn, "cancel")
                return _require(_fetch_one(conn, "request_cancel", {"id": job_id}))
            params = {"id": job_id, "state": state.value, "now": now, "error": "cancelled before it ran"}
            return _require(_fetch_one(conn, "finish_live_job", params))

        return _job(await self._run(cancel))

    async def cancel_requests(self, owner: str) -> set[uuid.UUID]:
        rows = await self._run(
            lambda conn: conn.execute(QUERIES["cancel_requests"], {"owner": owner}).fetchall(),
            transaction=False,
        )
        return {row[0] for row in rows}

    async def retry_job(self, job_id: uuid.UUID, now: datetime) -> Job:
        def retry(conn: Connection) -> tuple[Any, ...]:
            row = _fetch_one(conn, "lock_finished_job", {"id": job_id})
            if row is None:
                live = _fetch_one(conn, "get_job", {"id": job_id})
                if live is None:
                    raise JobNotFound(str(job_id))
                next_state(job_id, JobState(live[4]), Action.RETRY)  # raises: it is not finished
            assert row is not None
            state = next_state(job_id, JobState(row[4]), Action.RETRY)
            key = row[17]
            try:
                # A savepoint, so that a key in use leaves the transaction usable.
                with conn.transaction():
                    retried = _fetch_one(conn, "retry_job", {"id": job_id, "state": state.value, "now": now})
            except psycopg.errors.UniqueViolation:
                raise KeyInUse(str(job_id), key) from None
            _notify(conn, "jobs")
            return _require(retried)

        return _job(await self._run(retry))

    async def promote_due_jobs(self, now: datetime) -> datetime | None:
        params = {"state": JobState.PENDING.value, "now": now}
        row = await self._run(
            lambda conn: conn.execute(QUERIES["promote_due_jobs"], params).fetchone(), transaction=False
        )
        earliest: datetime | None = row[0] if row else None
        return earliest

    async def rescue_jobs(self, now: datetime, *, all_running: bool = False) -> list[Rescued]:
        def rescue(conn: Connection) -> list[Rescued]:
            expired = conn.execute(QUERIES["expired_leases"], {"now": now, "all_running": all_running})
            rescued = []
            for row in expired.fetchall():
                job, owner, cancel_requested = _job(row), row[len(COLUMNS)], row[len(COLUMNS) + 1]
                decision = rescue_decision(job, owner, cancel_requested=cancel_requested)
                params = {"id": job.id, "state": decision.state.value, "error": decision.error, "now": now}
                query = "finish_live_job" if decision.state in FINISHED_STATES else "requeue_rescued"
                rescued.append(Rescued(_job(_require(_fetch_one(conn, query, params))), owner))
            if any(item.job.state == JobState.PENDING for item in rescued):
                _notify(conn, "jobs")
            return rescued

        return await self._run(rescue)

    async def prune_jobs(self, before: Mapping[JobState, datetime], limit: int, now: datetime) -> int:
        def prune(conn: Connection) -> int:
            conn.execute(QUERIES["forget_closed_windows"], {"now": now})
            deleted = 0
            for state, cutoff in before.items():
                params = {"state": state.value, "before": cutoff, "limit": limit, "now": now}
                deleted += _require(_fetch_one(conn, "prune_jobs", params))[0]
            return deleted

        return await self._run(prune) if before and limit > 0 else 0

    async def count_jobs(self) -> QueueCounts:
        rows = await self._run(lambda conn: conn.execute(QUERIES["count_jobs"]).fetchall(), transaction=False)
        counts: dict[str, dict[JobState, int]] = {}
        for queue, state, count in rows:
            if count:
                counts.setdefault(queue, {})[JobState(state)] = int(count)
        return counts

    async def queue_activity(self, queues: Sequence[str], now: datetime) -> dict[str, QueueActivity]:
        first, last = rate_window(now)
        params = {"queues": list(queues), "first": first, "last": last}
        rows = await self._run(
            lambda conn: conn.execute(QUERIES["queue_activity"], params).fetchall(), transaction=False
        )
        oldest: dict[str, datetime] = {}
        ended: dict[tuple[str, Outcome], int] = {}
        for queue, outcome, jobs, run_at in rows:
            if outcome is None:
                oldest[queue] = run_at
            else:
                ended[(queue, Outcome(outcome))] = int(jobs)
        return queue_activities(queues, oldest, ended)

    async def set_queue_paused(self, queue: str, paused: bool) -> None:
        name = "pause_queue" if paused else "resume_queue"
        await self._run(lambda conn: conn.execute(QUERIES[name], {"queue": queue}), transaction=False)

    async def paused_queues(self) -> frozenset[str]:
        rows = await self._run(
            lambda conn: conn.execute(QUERIES["paused_queues"]).fetchall(), transaction=False
        )
        return frozenset(row[0] for row in rows)

    # -- schedules -------------------------------------------------------------------------

    async def sync_schedules(self, timings: Mapping[str, str], now: datetime) -> dict[str, ScheduleRecord]:
        names = list(timings)

        def sync(conn: Connection) -> dict[str, ScheduleRecord]:
            stored = _lock_schedules(conn, timings, now)
            records = {name: synced_record(stored.get(name), name, timings[name], now) for name in names}
            changed = [record for name, record in records.items() if record != stored.get(name)]
            _put_schedules(conn, changed, now)
            return records

        return await self._run(sync) if names else {}

    async def schedule_records(self, names: Sequence[str]) -> dict[str, ScheduleRecord]:
        rows = await self._run(
            lambda conn: conn.execute(QUERIES["schedule_records"], {"names": list(names)}).fetchall(),
            transaction=False,
        )
        return {row[0]: _schedule(row) for row in rows}

    async def set_schedule_paused(
        self, name: str, timing: str, paused: bool, now: datetime
    ) -> ScheduleRecord:
        def set_paused(conn: Connection) -> ScheduleRecord:
            stored = _lock_schedules(conn, {name: timing}, now)
            record = paused_record(synced_record(stored.get(name), name, timing, now), paused, now)
            _put_schedules(conn, [record], now)
            return record

        return await self._run(set_paused)

    async def fire_schedules(self, fires: Sequence[ScheduleFire], now: datetime) -> list[Fired]:
        def fire(conn: Connection) -> list[Fired]:
            # The row locks make daemons firing the same schedule take turns: the second
            # reads the ticks the first recorded, and `plan_fire` leaves them out.
            names = [item.name for item in fires]
            locked = conn.execute(QUERIES["lock_schedules"], {"names": names})
            records = {row[0]: _schedule(row) for row in locked}
            overlapping = [item.name for item in fires if item.skip_overlap and item.name in records]
            unfinished: set[str] = set()
            if overlapping:
                busy = conn.execute(QUERIES["schedules_with_unfinished_jobs"], {"names": overlapping})
                unfinished = {row[0] for row in busy}
            plans = {
                item.name: plan_fire(item, records[item.name], item.name in unfinished)
                for item in fires
                if item.name in records
            }
            new_jobs = [job for plan in plans.values() for job in plan.jobs]
            made = iter([inserted.job for inserted in insert_jobs_on(conn, new_jobs)] if new_jobs else [])
            results, changed = [], []
            for item in fires:
                plan = plans.get(item.name)
                if plan is None:
                    results.append(Fired(item.name, None, [], []))
                    continue
                jobs = [next(made) for _ in plan.jobs]
                record = after_fire(records[item.name], plan, jobs)
                if plan.ticks:
                    changed.append(record)
                results.append(Fired(item.name, record, plan.ticks, jobs))
            _put_schedules(conn, changed, now)
            return results

        return await self._run(fire) if fires else []

    # -- notifications -------------------------------------------------------------------

    async def listen(
        self, wake: WakeCallback, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        delay = 0.1
        started = False
        outage = StoreOutage(log, "LISTEN for wake-ups from other daemons")
        thread = trio.CapacityLimiter(1)  # this listener's own: it holds a thread for as long as it runs
        while True:
            try:
                conn = await trio.to_thread.run_sync(self._connect_listener, limiter=thread)
            except StoreUnavailable as error:
                await trio.sleep(outage.failed(error))
                continue
            listening_since = trio.current_time()
            try:
                if not await self._hears_notify(conn, wake, thread):
                    deaf = ConfigError(
                        f"LISTEN on {'store.listen_url' if self._listen_url else 'store.url'} heard no "
                        f"NOTIFY within {self._connect_timeout:g}s: that connection goes through a pooler in "
                        "transaction mode (such as PgBouncer), which lends its server session to other "
                        "clients; set store.listen_url to a direct connection to PostgreSQL",
                        key="store.listen_url",
                    )
                    if not started:
                        raise deaf
                    raise StoreUnavailable(str(deaf))
                outage.succeeded()
                if not started:
                    task_status.started()
                    started = True
                wake("connected")
                # Whatever was sent while we were not listening is lost: look once.
                wake("jobs")
                wake("cancel")
                await trio.to_thread.run_sync(_receive_notifications, conn, wake, limiter=thread)
            except StoreUnavailable as error:
                await trio.sleep(outage.failed(error))
                continue
            finally:
                conn.close()  # also when cancelled before the thread started; closing twice is harmless
            wake("disconnected")
            # A connection that drops at once again and again must not spin: back off
            # unless it lasted.
            if trio.current_time() - listening_since > _LISTEN_BACKOFF_MAX:
                delay = 0.1
            else:
                await trio.sleep(delay)
                delay = min(delay * 2, _LISTEN_BACKOFF_MAX)

    async def _hears_notify(self, conn: Connection, wake: WakeCallback, thread: trio.CapacityLimiter) -> bool:
        """Whether `conn` hears a NOTIFY sent through the pool. Through a pooler in
        transaction mode LISTEN runs in a server session the pooler then lends to other
        clients: it is accepted, and nothing is ever heard."""
        probe = f"{_PROBE}{uuid.uuid4().hex}"
        await self._run(lambda pooled: _notify(pooled, probe), transaction=False)
        return await trio.to_thread.run_sync(
            _await_probe, conn, probe, self._connect_timeout, wake, limiter=thread
        )

    def _connect_listener(self) -> Connection:
        conn = self._connect(listener=True)
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
                if not notification.payload.startswith(_PROBE):  # another daemon's check
                    trio.from_thread.run_sync(wake, notification.payload)
            trio.from_thread.check_cancelled()
    except psycopg.Error:
        return
    finally:
        conn.close()


def _await_probe(conn: Connection, probe: str, timeout: float, wake: WakeCallback) -> bool:
    """Whether `probe` arrives on `conn` within `timeout` seconds; notifications arriving
    meanwhile are handed on. A dropped connection raises `StoreUnavailable`, a cancelled
    listening task `Cancelled`."""
    deadline = time.monotonic() + timeout
    try:
        while (left := deadline - time.monotonic()) > 0:
            for notification in conn.notifies(timeout=min(left, 0.5)):
                if notification.payload == probe:
                    return True
                if not notification.payload.startswith(_PROBE):
                    trio.from_thread.run_sync(wake, notification.payload)
            trio.from_thread.check_cancelled()
        return False
    except psycopg.Error as error:
        raise _translate(error) from error


# -- work run in the worker thread ------------------------------------------------------------


def insert_jobs_on(conn: Connection, jobs: Sequence[NewJob]) -> list[Inserted]:
    """Insert `jobs` in order on `conn`, inside whatever transaction it is in (or, in
    autocommit mode, as one statement). An item whose key a live job holds gets that job
    instead (created=False). Shared by the store and `jobd.transactional`."""
    if any(new.after or new.unique_for is not None for new in jobs):
        with conn.transaction():  # several statements: a savepoint, or a transaction of its own
            return _insert_flow(conn, jobs)
    return _insert_plain(conn, jobs)


def _insert_plain(conn: Connection, jobs: Sequence[NewJob]) -> list[Inserted]:
    params = _insert_params(jobs)
    try:
        # A cursor of our own: the caller's connection may make rows of another kind.
        rows = conn.cursor(row_factory=tuple_row).execute(QUERIES["insert_jobs"], params).fetchall()
    except psycopg.errors.UniqueViolation as error:
        if error.diag.constraint_name == "live_jobs_pkey":
            raise _taken_id(jobs, error) from None
        raise
    created = {row[0] for row in rows if row[0] is not None}
    results = []
    for new in jobs:
        if new.id in created:
            results.append(Inserted(new.inserted(), created=True))
        else:
            results.append(_key_holder(conn, new))
    return results


def _insert_flow(conn: Connection, jobs: Sequence[NewJob]) -> list[Inserted]:
    """Insert jobs with parents or key windows (see `Store.insert_jobs`), in the caller's
    transaction: lock the parents still live, check that every parent exists, take the
    key windows, insert, then record and settle the dependants."""
    cursor = conn.cursor(row_factory=tuple_row)
    batch = {new.id for new in jobs}
    outside = list(dict.fromkeys(parent for new in jobs for parent in new.after if parent not in batch))
    if outside:
        cursor.execute(QUERIES["lock_parents"], {"ids": outside})
        # Read after the lock: a parent that finished meanwhile is found in finished_jobs.
        known = {row[0] for row in cursor.execute(QUERIES["known_jobs"], {"ids": outside})}
        for index, new in enumerate(jobs):
            missing = next(
                (parent for parent in new.after if parent not in batch and parent not in known), None
            )
            if missing is not None:
                raise InvalidJob(
                    f"after names job {missing}, which does not exist", field="after", index=index
                )
    held = _take_windows(cursor, jobs)
    results: list[Inserted | None] = [held.get(new.id) for new in jobs]
    fresh = [index for index, new in enumerate(jobs) if new.id not in held]
    inserted_fresh = _insert_plain(conn, [jobs[index] for index in fresh]) if fresh else []
    for index, inserted in zip(fresh, inserted_fresh, strict=True):
        new = jobs[index]
        results[index] = inserted
        if not inserted.created and new.unique_for is not None:
            # A live job holds the key: it answers for it, not the window just taken.
            cursor.execute(QUERIES["drop_window"], {"key": new.key, "id": new.id})
    done = [result for result in results if result is not None]
    stands_for = {new.id: item.job.id for new, item in zip(jobs, done, strict=True) if not item.created}
    waiting = [item.job for item in done if item.created and item.job.after]
    if not waiting:
        return done
    edges: dict[str, list[uuid.UUID]] = {"parents": [], "children": []}
    for job in waiting:
        parents = tuple(dict.fromkeys(stands_for.get(parent, parent) for parent in job.after))
        if parents != job.after:  # a parent of the batch was answered by another job
            cursor.execute(QUERIES["set_parents"], {"id": job.id, "parents": list(parents)})
        edges["parents"] += parents
        edges["children"] += [job.id] * len(parents)
    cursor.execute(QUERIES["add_dependants"], edges)
    ids = [job.id for job in waiting]
    cursor.execute(QUERIES["settle_waiting"], {"ids": ids, "now": waiting[0].created_at})
    settled = {job.id: job for job in map(_job, cursor.execute(QUERIES["jobs_by_id"], {"ids": ids}))}
    return [Inserted(settled[item.job.id], True) if item.job.id in settled else item for item in done]


def _take_windows(
    cursor: psycopg.Cursor[tuple[Any, ...]], jobs: Sequence[NewJob]
) -> dict[uuid.UUID, Inserted]:
    """Take the key window of each job that asks for one (`unique_for`); return, for each
    job whose key a job made within its window holds, that job (created=False)."""
    asking: dict[str, NewJob] = {}
    for new in jobs:
        if new.unique_for is not None and new.key is not None:
            asking.setdefault(new.key, new)  # a later item with the same key: the insert answers it
    if not asking:
        return {}
    # A live job answers for its key first: it is the newest made with it.
    held: dict[uuid.UUID, Inserted] = {}
    for row in cursor.execute(QUERIES["live_jobs_with_keys"], {"keys": list(asking)}):
        new = asking.pop(row[0])
        held[new.id] = Inserted(_job(row[1:]), created=False)
    if not asking:
        return held
    windows = [
        {
            "key": key,
            "id": str(new.id),
            "created_at": new.created_at.isoformat(),
            "unique_for": new.unique_for,
        }
        for key, new in asking.items()
    ]
    taken = {row[0] for row in cursor.execute(QUERIES["take_windows"], {"windows": json.dumps(windows)})}
    lost = [key for key in asking if key not in taken]
    if not lost:
        return held
    holders = {row[0]: _job(row[1:]) for row in cursor.execute(QUERIES["window_holders"], {"keys": lost})}
    for key in lost:
        new = asking[key]
        holder = holders.get(key)
        if holder is None:  # its job is gone (a longer window than the one it was made with)
            params = {"key": key, "id": new.id, "created_at": new.created_at, "unique_for": new.unique_for}
            cursor.execute(QUERIES["take_window"], params)
        else:
            held[new.id] = Inserted(holder, created=False)
    return held


def _insert_params(jobs: Sequence[NewJob], *, notify: bool = True) -> dict[str, Any]:
    times = _TimeTexts()
    items = [
        {
            "id": new.id,  # orjson writes a UUID as its text
            "type": new.type,
            "queue": new.queue,
            "payload": new.payload,
            "state": new.state.value,
            "priority": new.priority,
            "max_attempts": new.max_attempts,
            "timeout": new.timeout,
            "run_at": times.text(new.run_at),
            "created_at": times.text(new.created_at),
            "key": new.key,
        }
        for new in jobs
    ]
    for item, new in zip(items, jobs, strict=True):
        # Left out otherwise: json_to_recordset reads a missing key as NULL.
        if new.schedule is not None:
            item["schedule"] = new.schedule
            item["scheduled_for"] = times.text(new.scheduled_for)
        if new.after:
            item["parents"] = list(new.after)
            item["on_parent_failure"] = new.on_parent_failure.value
        if new.traceparent is not None:
            item["traceparent"] = new.traceparent
    return {"jobs": _json_text(items, jobs), "notify": notify}


def _key_holder(conn: Connection, new: NewJob) -> Inserted:
    """The live job holding `new.key`; or, if it finished meanwhile, `new` inserted now."""
    while True:
        live = _fetch_one(conn, "live_job_with_key", {"key": new.key})
        if live is not None:
            return Inserted(_job(live), created=False)
        [inserted] = insert_jobs_on(conn, [new])
        if inserted.created:
            return inserted


def _json_text(items: list[dict[str, Any]], jobs: Sequence[NewJob]) -> str:
    try:
        return jsoncodec.dumps_text(items)
    except (TypeError, ValueError) as error:
        for index, new in enumerate(jobs):  # which item: the rare path may take its time
            try:
                json.dumps(new.payload, allow_nan=False)
            except (TypeError, ValueError):
                raise InvalidJob(f"payload is not JSON: {error}", field="payload", index=index) from None
        raise InvalidJob(f"a job is not JSON: {error}") from None


class _TimeTexts:
    """Times as PostgreSQL reads them, each distinct one formatted once per call: the
    times of one batch are mostly the same instant."""

    def __init__(self) -> None:
        self._texts: dict[datetime, str] = {}

    def text(self, value: datetime | None) -> str | None:
        if value is None:
            return None
        text = self._texts.get(value)
        if text is None:
            text = self._texts[value] = value.isoformat()
        return text


def _wanted(claim: ClaimRequest | None) -> list[QueueSlots]:
    """The slots a claim may fill: none if it may take no job."""
    return [slot for slot in claim.slots if slot.free > 0] if claim and claim.limit > 0 else []


def _limited_queues(wanted: Sequence[QueueSlots]) -> list[str]:
    """The queues among `wanted` whose claims must hold the queue's lock (a global limit
    or a rate), in name order."""
    return sorted({slot.queue for slot in wanted if slot.global_limit is not None or slot.rate is not None})


def _refusal(jobs: Sequence[NewJob], *, offset: int = 0) -> Callable[[psycopg.Error], Exception]:
    """What an error of a statement that inserts `jobs` means to the caller; `offset`
    is the index in the whole batch of the first of `jobs`."""

    def refused(error: psycopg.Error) -> Exception:
        taken_id = error.diag.constraint_name == "live_jobs_pkey"
        if taken_id and isinstance(error, psycopg.errors.UniqueViolation):
            return _taken_id(jobs, error, offset)
        return _translate(error)

    return refused


def _taken_id(jobs: Sequence[NewJob], error: psycopg.errors.UniqueViolation, offset: int = 0) -> InvalidJob:
    """The batch item whose id is taken (by a stored job, or by an earlier item)."""
    detail = error.diag.message_detail or ""
    seen: set[uuid.UUID] = set()
    for index, new in enumerate(jobs, start=offset):
        if new.id in seen or str(new.id) in detail:
            return InvalidJob(f"a job with id {new.id} already exists", field="id", index=index)
        seen.add(new.id)
    return InvalidJob(f"a job id is already taken: {detail}", field="id")


def _exchange_params(
    completions: Sequence[Completion], slots: Sequence[QueueSlots], claim: ClaimRequest | None, now: datetime
) -> dict[str, Any]:
    times = _TimeTexts()
    done = []
    for c in completions:
        state = next_state(c.job_id, JobState.RUNNING, c.outcome.action)
        done.append(
            {
                "id": c.job_id,
                "owner": c.owner,
                "attempt": c.attempt,
                "outcome": c.outcome.value,
                "state": state.value,
                "final": state in FINISHED_STATES,
                "result": c.result if c.outcome == Outcome.COMPLETED else None,
                "error": c.error,
                "run_at": times.text(c.run_at),
            }
        )
    try:
        completions_text = jsoncodec.dumps_text(done)
    except (TypeError, ValueError) as error:
        raise InvalidJob(f"a result is not JSON: {error}") from None
    return {
        "now": now,
        "completions": completions_text,
        "queues": [slot.queue for slot in slots],
        "free": [slot.free for slot in slots],
        "global_limits": [slot.global_limit for slot in slots],
        "rates": [refill_per_microsecond(slot.rate) if slot.rate else None for slot in slots],
        "bursts": [slot.rate.burst if slot.rate else None for slot in slots],
        "token": TOKEN,
        "limit": claim.limit if claim else 0,
        "owner": claim.owner if claim else None,
        "lease_until": claim.lease_until if claim else None,
    }


_PRIORITY, _RUN_AT, _SEQ = 1 + COLUMNS.index("priority"), 1 + COLUMNS.index("run_at"), 1 + len(COLUMNS)
_QUEUE = 1 + COLUMNS.index("queue")


def _claimed_jobs(rows: list[tuple[Any, ...]]) -> list[Job]:
    """The claimed jobs among the rows of `complete_and_claim_jobs` (a flag, the columns,
    seq), in claim order: UNION ALL keeps none."""
    claimed = sorted(
        (row for row in rows if row[0]), key=lambda row: (-row[_PRIORITY], row[_RUN_AT], row[_SEQ])
    )
    return [_job(row[1:]) for row in claimed]


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
    newest = MIGRATIONS[-1].version
    if applied and max(applied) > newest:
        raise StoreUnavailable(
            f"the database's jobd schema is at version {max(applied)}, newer than this jobd knows ({newest})"
        )
    for migration in MIGRATIONS:
        if migration.version not in applied:
            conn.execute(
                migration.sql
            )  # several statements: psycopg runs them as one query without parameters
            conn.execute(
                "INSERT INTO jobd.migrations (version, name) VALUES (%s, %s)",
                (migration.version, migration.name),
            )


def _schedule(row: Sequence[Any]) -> ScheduleRecord:
    name, timing, since, last_tick, last_job_id, paused = row
    return ScheduleRecord(name, timing, since, last_tick, last_job_id, paused)


def _lock_schedules(conn: Connection, timings: Mapping[str, str], now: datetime) -> dict[str, ScheduleRecord]:
    """The records of these schedules, locked until commit; one not stored yet is created
    first (a new schedule counts its ticks from `now`)."""
    names, values = list(timings), list(timings.values())
    conn.execute(QUERIES["create_schedules"], {"names": names, "timings": values, "now": now})
    return {row[0]: _schedule(row) for row in conn.execute(QUERIES["lock_schedules"], {"names": names})}


def _put_schedules(conn: Connection, records: Sequence[ScheduleRecord], now: datetime) -> None:
    if not records:
        return
    params = {
        "names": [record.name for record in records],
        "timings": [record.timing for record in records],
        "since": [record.since for record in records],
        "last_ticks": [record.last_tick for record in records],
        "last_job_ids": [record.last_job_id for record in records],
        "paused": [record.paused for record in records],
        "now": now,
    }
    conn.execute(QUERIES["put_schedules"], params)


def _notify(conn: Connection, payload: str) -> None:
    conn.execute(QUERIES["notify"], {"payload": payload})


def _fetch_one(conn: Connection, name: str, params: Mapping[str, Any]) -> tuple[Any, ...] | None:
    return conn.cursor(row_factory=tuple_row).execute(QUERIES[name], params).fetchone()


def _require(row: tuple[Any, ...] | None) -> tuple[Any, ...]:
    if row is None:  # every caller asks for a row this transaction holds locked
        raise StoreUnavailable("PostgreSQL returned no row where one was certain")
    return row


def _pipelined(
    conn: Connection,
    steps: Sequence[tuple[_Positional, Mapping[str, Any]]],
    errors: Callable[[psycopg.Error], Exception],
) -> list[list[tuple[Any, ...]]]:
    """`PostgresStore._statements` in a worker thread: the steps in one round trip, and
    several inside BEGIN … COMMIT."""
    try:
        if len(steps) == 1:
            cursors = [steps[0][0].execute(conn, steps[0][1])]
        else:
            with conn.pipeline():
                conn.execute(_BEGIN)
                cursors = [query.execute(conn, params) for query, params in steps]
                conn.execute("COMMIT")
        return [cursor.fetchall() if cursor.description is not None else [] for cursor in cursors]
    except psycopg.Error as error:
        raise errors(error) from error


def _dead(conn: Connection) -> bool:
    """Whether a pooled connection must be replaced before a call may use it."""
    return conn.closed or conn.broken or _has_input(conn)


def _in_use(conn: Connection) -> bool:
    return conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE


def _has_input(conn: Connection) -> bool:
    """Whether an idle connection's socket can be read: the server has closed it."""
    try:
        return bool(pgtrio.poll(conn.fileno(), Wait.R))
    except (OSError, ValueError, psycopg.Error):
        return True


def _roll_back(checkout: _Checkout) -> None:
    """End a failed transaction; a connection that cannot is dropped, not pooled."""
    conn = checkout.conn
    if conn is None or conn.broken or conn.closed:
        _discard(checkout)
        return
    if conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
        return  # a lone statement failed: nothing to end
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


def _job(row: Sequence[Any]) -> Job:
    """A job from a row whose first columns are `COLUMNS`."""
    (
        job_id, job_type, queue, payload, state, priority, attempts, max_attempts, timeout,
        run_at, created_at, updated_at, started_at, finished_at, last_error, result, progress, key,
        schedule, scheduled_for, parents, on_parent_failure, traceparent,
    ) = row[: len(COLUMNS)]  # fmt: skip
    return Job(
        id=job_id,
        type=job_type,
        queue=queue,
        payload=payload,
        state=STATE_OF[state],
        priority=priority,
        attempts=attempts,
        max_attempts=max_attempts,
        timeout=timeout,
        run_at=run_at,
        created_at=created_at,
        updated_at=updated_at,
        started_at=started_at,
        finished_at=finished_at,
        last_error=last_error,
        result=result,
        progress=Progress(progress["fraction"], progress.get("message")) if progress else None,
        key=key,
        schedule=schedule,
        scheduled_for=scheduled_for,
        after=tuple(parents) if parents else (),
        on_parent_failure=ParentFailure(on_parent_failure) if on_parent_failure else ParentFailure.CANCEL,
        traceparent=traceparent,
    )


def _parse_cursor(after: str | None) -> int:
    if after is None:
        return _NO_CURSOR
    if not after.isdigit() or int(after) > _NO_CURSOR:
        raise ValueError(f"not a cursor from this store: {after!r}")
    return int(after)
