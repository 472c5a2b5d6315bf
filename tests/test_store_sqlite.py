"""What only the SQLite store promises: its file, lock, schema, PRAGMAs, errors and cancellation."""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import stat
import sys
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import trio
import trio.testing

from jobd.config import StoreConfig
from jobd.errors import InvalidJob, StoreUnavailable
from jobd.job import JobState
from jobd.store import ClaimRequest, Completion, JobFilter, NewJob, Outcome, QueueSlots
from jobd.store.factory import create_store, describe
from jobd.store.sqlfiles import load_migrations
from jobd.store.sqlite import _Q, JOB_COLUMNS, SQLiteStore

T0 = datetime(2030, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


def new_job(**options: Any) -> NewJob:
    fields: dict[str, Any] = {
        "id": uuid.uuid4(),
        "type": "test.job",
        "queue": "default",
        "payload": None,
        "priority": 0,
        "run_at": T0,
        "max_attempts": 3,
        "timeout": None,
        "key": None,
        "created_at": T0,
    }
    fields.update(options)
    return NewJob(**fields)


@pytest.fixture
def db_path(tmp_path: Path) -> str:
    return str(tmp_path / "jobd.db")


@pytest.fixture
async def store(db_path: str) -> AsyncIterator[SQLiteStore]:
    opened = SQLiteStore(db_path)
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()


async def pragma(store: SQLiteStore, name: str) -> Any:
    return await store._read(lambda conn: conn.execute(f"PRAGMA {name}").fetchone()[0])


def rows(db_path: str, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db_path) as conn:
        return conn.execute(sql).fetchall()


async def test_jobs_survive_close_and_reopen(db_path: str) -> None:
    first = SQLiteStore(db_path)
    await first.open()
    keyed = new_job(key="k", payload={"a": [1, "ü"]})
    scheduled = new_job(run_at=T0 + timedelta(hours=1))
    await first.insert_jobs([keyed, scheduled, new_job()])
    [claimed] = await first.claim_jobs("d1", [QueueSlots("default", 1)], 1, T0, T0 + timedelta(seconds=30))
    await first.set_queue_paused("mail", True)
    before = [await first.get_job(job.id) for job in (keyed, scheduled)]
    await first.close()

    second = SQLiteStore(db_path)
    await second.open()
    try:
        assert [await second.get_job(job.id) for job in (keyed, scheduled)] == before
        assert await second.paused_queues() == {"mail"}
        assert not (await second.insert_jobs([new_job(key="k")]))[0].created
        # The running job from before the restart is rescued, as at a daemon's start.
        [rescued] = await second.rescue_jobs(T0, all_running=True)
        assert (rescued.job.id, rescued.owner) == (claimed.id, "d1")
        page = await second.list_jobs(JobFilter(), 10, None)
        assert len(page.jobs) == 3
    finally:
        await second.close()


async def test_a_second_store_on_the_same_file_is_refused(db_path: str, store: SQLiteStore) -> None:
    other = SQLiteStore(db_path)
    with pytest.raises(StoreUnavailable) as caught:
        await other.open()
    assert "in use by another jobd" in caught.value.message
    assert f"pid {os.getpid()}" in caught.value.message
    assert db_path in caught.value.message
    assert Path(f"{db_path}.lock").read_text().strip() == str(os.getpid())  # noqa: ASYNC240
    with pytest.raises(StoreUnavailable, match="not open"):
        await other.ping()
    await store.close()
    await other.open()  # the lock went with the first store
    await other.close()


async def test_migrations_are_recorded_and_run_once(db_path: str) -> None:
    for _ in range(2):
        opened = SQLiteStore(db_path)
        await opened.open()
        await opened.insert_jobs([new_job()])
        await opened.close()
    assert [row[:2] for row in rows(db_path, "SELECT version, name FROM schema_migrations")] == [
        (1, "initial"),
        (2, "schedules"),
        (3, "flow_control"),
        (4, "rate_limits"),
        (5, "traceparent"),
        (6, "top"),
        (7, "counted_inserts"),
        (8, "counted_moves"),
    ]
    assert rows(db_path, "SELECT count(*) FROM jobs") == [(2,)]
    assert rows(db_path, "PRAGMA user_version") == [(8,)]


async def test_jobs_are_read_by_the_column_order_of_the_schema(store: SQLiteStore, db_path: str) -> None:
    # Rows are unpacked by position: a migration that adds or moves a column of `jobs`
    # must change JOB_COLUMNS with it.
    assert tuple(row[1] for row in rows(db_path, "PRAGMA table_info(jobs)")) == JOB_COLUMNS


async def test_a_schema_newer_than_this_jobd_is_refused(db_path: str) -> None:
    opened = SQLiteStore(db_path)
    await opened.open()
    await opened.close()
    with sqlite3.connect(db_path) as conn:
        conn.execute("INSERT INTO schema_migrations VALUES (999, 'future', 0)")
    with pytest.raises(StoreUnavailable, match="schema version 999"):
        await SQLiteStore(db_path).open()


@pytest.mark.parametrize(("synchronous", "level"), [("full", 2), ("normal", 1)])
async def test_pragmas_in_force(tmp_path: Path, synchronous: str, level: int) -> None:
    config = StoreConfig(url=f"sqlite://{tmp_path}/jobd.db", sqlite_synchronous=synchronous)  # type: ignore[arg-type]
    opened = create_store(config)
    assert isinstance(opened, SQLiteStore)
    await opened.open()
    try:
        assert await pragma(opened, "journal_mode") == "wal"
        assert await pragma(opened, "synchronous") == level
        assert await pragma(opened, "busy_timeout") > 0
        assert await pragma(opened, "temp_store") == 2  # memory
    finally:
        await opened.close()


def written_syscalls() -> int:
    with open("/proc/self/io") as counters:
        return next(int(line.split()[1]) for line in counters if line.startswith("syscw"))


@pytest.mark.skipif(not os.path.exists("/proc/self/io"), reason="needs Linux's /proc/self/io")
async def test_statement_journals_stay_in_memory(store: SQLiteStore) -> None:
    # A claim or a completion changes many rows and could fail part-way (a constraint),
    # so SQLite keeps a statement journal for each: in a temporary file, that is a
    # write() for every page changed.
    async def writes_to_run(jobs: int) -> int:
        await store.insert_jobs([new_job() for _ in range(jobs)])
        before = written_syscalls()
        done: list[Completion] = []
        for _ in range(jobs // 100):
            claim = ClaimRequest("me", [QueueSlots("default", 100)], 100, T0 + timedelta(hours=1))
            claimed = (await store.complete_and_claim_jobs(done, claim, T0)).claimed
            done = [Completion(job.id, "me", job.attempts, Outcome.COMPLETED) for job in claimed]
        await store.complete_jobs(done, T0)
        return written_syscalls() - before

    in_memory = await writes_to_run(1000)
    await store._read(lambda conn: conn.execute("PRAGMA temp_store = FILE"))
    in_files = await writes_to_run(1000)
    assert in_memory < 0.8 * in_files  # measured: 500 against 768


def test_bad_synchronous_value() -> None:
    with pytest.raises(ValueError, match="synchronous"):
        SQLiteStore("/tmp/x.db", synchronous="off")


async def test_missing_directories_are_created_private(tmp_path: Path) -> None:
    path = tmp_path / "state" / "jobd" / "jobd.db"
    opened = SQLiteStore(str(path))
    await opened.open()
    await opened.close()
    assert path.exists()
    for directory in (tmp_path / "state", tmp_path / "state" / "jobd"):
        assert stat.S_IMODE(directory.stat().st_mode) & 0o077 == 0


OPEN_WITHOUT_OVERRIDE = """
import sys, trio
from jobd.errors import StoreUnavailable
from jobd.store.sqlite import SQLiteStore

async def main():
    try:
        await SQLiteStore(sys.argv[1]).open()
    except StoreUnavailable as error:
        print(error.message)
    else:
        print("OPENED")

trio.run(main)
"""


async def open_error(path: str) -> str:
    """The StoreUnavailable message of opening `path`, without root's power to write anywhere."""
    if os.geteuid() != 0:
        with pytest.raises(StoreUnavailable) as caught:
            await SQLiteStore(path).open()
        return caught.value.message
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: cannot drop the right to write anywhere")
    no_override = "-dac_override,-dac_read_search"
    command = ["setpriv", f"--inh-caps={no_override}", f"--bounding-set={no_override}", "--"]
    command += [sys.executable, "-c", OPEN_WITHOUT_OVERRIDE, path]
    done = await trio.run_process(command, capture_stdout=True, capture_stderr=True, check=False)
    assert done.returncode == 0, done.stderr.decode()
    return str(done.stdout.decode().strip())


async def test_unwritable_directory_names_the_path(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    message = await open_error(str(locked / "jobd.db"))
    assert str(locked / "jobd.db") in message
    assert "ermission denied" in message


async def test_existing_database_in_a_read_only_directory(tmp_path: Path) -> None:
    path = tmp_path / "db" / "jobd.db"
    opened = SQLiteStore(str(path))
    await opened.open()
    await opened.close()
    (tmp_path / "db").chmod(0o555)
    message = await open_error(str(path))
    assert str(path) in message


async def test_read_only_database_file_is_refused_at_open(tmp_path: Path) -> None:
    path = tmp_path / "jobd.db"
    opened = SQLiteStore(str(path))
    await opened.open()
    await opened.close()
    path.chmod(0o444)
    message = await open_error(str(path))
    assert str(path) in message
    assert "read-only" in message


async def test_parent_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    path = str(tmp_path / "file" / "jobd.db")
    with pytest.raises(StoreUnavailable) as caught:
        await SQLiteStore(path).open()
    assert path in caught.value.message
    assert "Not a directory" in caught.value.message


async def test_corrupt_file_gives_a_clear_error(db_path: str) -> None:
    Path(db_path).write_bytes(b"\x00garbage, not a database\xff" * 400)  # noqa: ASYNC240
    for _ in range(2):  # a failed open releases its lock: the second attempt says the same
        with pytest.raises(StoreUnavailable) as caught:
            await SQLiteStore(db_path).open()
        assert db_path in caught.value.message
        assert "not a SQLite database" in caught.value.message


async def one_job_and_room_for(store: SQLiteStore, pages: int) -> None:
    """One job inserted, then the database file held to `pages` pages more than it has."""
    await store.insert_jobs([new_job()])
    held = await pragma(store, "page_count") + pages
    await store._read(lambda conn: conn.execute(f"PRAGMA max_page_count = {held}"))


async def test_full_disk_is_store_unavailable_and_rolls_back(store: SQLiteStore) -> None:
    await one_job_and_room_for(store, 0)
    with pytest.raises(StoreUnavailable) as caught:
        await store.insert_jobs([new_job(payload="x" * 5000) for _ in range(50)])
    assert "the disk is full" in caught.value.message
    assert store.path in caught.value.message
    assert sum((await store.count_jobs())["default"].values()) == 1
    await store.ping()


class Held(NamedTuple):
    release: threading.Event  # set: the thread goes on (at the block's end, if not before)
    released: list[bool]  # True once released, False if it waited 10 s in vain


@contextlib.asynccontextmanager
async def occupied(store: SQLiteStore) -> AsyncIterator[Held]:
    """The store's thread held by a call of the test's until the block ends, or until the
    block sets `release`."""
    held, entered = Held(threading.Event(), []), threading.Event()

    def occupy_the_thread() -> None:
        entered.set()
        held.released.append(held.release.wait(10))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(store._run, occupy_the_thread)
        assert await trio.to_thread.run_sync(entered.wait, 10)
        try:
            yield held
        finally:
            held.release.set()


async def full_disk_beside_an_insert(
    store: SQLiteStore, filling: Callable[[], Awaitable[object]]
) -> list[str]:
    """Queue a one-job insert and then `filling` so that they share one transaction, with
    room for a few pages more in the file; the messages of the writes that failed."""
    await one_job_and_room_for(store, 2)
    failures: list[str] = []

    async def write(call: Callable[[], Awaitable[object]]) -> None:
        try:
            await call()
        except StoreUnavailable as error:
            failures.append(error.message)

    # The writes queue up while the thread is held, and are let go together.
    async with trio.open_nursery() as nursery, occupied(store):
        nursery.start_soon(write, lambda: store.insert_jobs([new_job()]))
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(write, filling)
        await trio.testing.wait_all_tasks_blocked()
    assert all("the disk is full" in message for message in failures)
    return failures


async def test_a_full_disk_that_undoes_the_transaction_fails_every_write_of_its_group(
    store: SQLiteStore,
) -> None:
    # A one-row insert with no trigger keeps no statement journal: a full disk makes
    # SQLite undo the whole transaction, so the write before it is undone too, and must
    # fail, not report success.
    def one_large_row(conn: sqlite3.Connection) -> None:
        conn.execute(
            "INSERT INTO jobs (id, type, queue, payload, state, priority, max_attempts, run_at, "
            "created_at, updated_at) VALUES (?, 'noop', 'default', ?, 'pending', 0, 1, 0, 0, 0)",
            (str(uuid.uuid4()), '"' + "x" * 250_000 + '"'),
        )

    failures = await full_disk_beside_an_insert(store, lambda: store._write(one_large_row))
    assert len(failures) == 2
    assert await store.count_jobs() == {"default": {JobState.PENDING: 1}}
    assert rows(store.path, "SELECT count(*) FROM jobs") == [(1,)]
    await store.insert_jobs([new_job()])  # the store goes on once there is room


async def test_a_batch_that_fills_the_disk_fails_alone_and_the_write_beside_it_is_kept(
    store: SQLiteStore,
) -> None:
    # A batch is one statement over many rows, with a statement journal: SQLite undoes
    # that statement alone.
    large = [new_job(payload="x" * 5000) for _ in range(50)]
    failures = await full_disk_beside_an_insert(store, lambda: store.insert_jobs(large))
    assert len(failures) == 1
    assert await store.count_jobs() == {"default": {JobState.PENDING: 2}}
    assert rows(store.path, "SELECT count(*) FROM jobs") == [(2,)]


async def test_payload_that_is_not_json(store: SQLiteStore) -> None:
    with pytest.raises(InvalidJob) as caught:
        await store.insert_jobs([new_job(), new_job(payload={1, 2})])
    assert (caught.value.field, caught.value.index) == ("payload", 1)
    assert await store.count_jobs() == {}


async def test_a_payload_that_is_not_json_in_a_later_chunk_is_named_by_its_batch_index(
    store: SQLiteStore,
) -> None:
    chunks = [[new_job(), new_job()], [new_job(), new_job(payload={1, 2})]]
    with pytest.raises(InvalidJob, match="payload is not JSON") as caught:
        await store.insert_job_chunks(iter(chunks))
    assert (caught.value.field, caught.value.index) == ("payload", 3)
    assert await store.count_jobs() == {}


def traced(
    store: SQLiteStore, statements: list[str], seen: threading.Event, wanted: str
) -> Awaitable[object]:
    """Record each statement the store's thread runs; set `seen` once one holds `wanted`."""

    def trace(statement: str) -> None:
        statements.append(statement)
        if wanted in statement:
            seen.set()

    return store._read(lambda conn: conn.set_trace_callback(trace))


async def test_the_next_chunk_is_made_while_the_thread_inserts_the_one_before(store: SQLiteStore) -> None:
    first, second = [new_job() for _ in range(3)], [new_job() for _ in range(2)]
    inserting = threading.Event()
    await traced(store, [], inserting, "json_each(")
    seen: list[bool] = []

    def chunks() -> Iterator[list[NewJob]]:
        yield first
        # Asked for the second chunk, on the loop, which waits here: the thread has the
        # first one and inserts it meanwhile.
        seen.append(inserting.wait(10))
        yield second

    inserted = await store.insert_job_chunks(chunks())
    assert seen == [True]
    assert [item.job.id for item in inserted] == [new.id for new in first + second]
    assert (await store.count_jobs())["default"] == {JobState.PENDING: 5}


async def test_a_batch_that_fails_once_its_first_chunk_is_inserting_is_undone(
    store: SQLiteStore, db_path: str
) -> None:
    first = [new_job() for _ in range(3)]
    inserting = threading.Event()
    statements: list[str] = []
    await traced(store, statements, inserting, "json_each(")

    def chunks() -> Iterator[list[NewJob]]:
        yield first
        assert inserting.wait(10)  # the thread inserts the first chunk
        raise InvalidJob("type refused", field="type", index=3)

    with pytest.raises(InvalidJob, match="type refused"):
        await store.insert_job_chunks(chunks())
    assert "ROLLBACK TO call" in statements  # undone by the thread before the error was raised
    assert [await store.get_job(new.id) for new in first] == [None, None, None]
    assert await store.count_jobs() == {}
    with sqlite3.connect(db_path, timeout=0) as other:  # the write lock is free
        other.execute("BEGIN IMMEDIATE")
        other.rollback()
    assert (await store.insert_jobs([new_job()]))[0].created


async def test_a_batch_that_fails_before_the_thread_takes_it_returns_at_once(store: SQLiteStore) -> None:
    statements: list[str] = []
    await traced(store, statements, threading.Event(), "")

    def chunks() -> Iterator[list[NewJob]]:
        yield [new_job()]
        raise InvalidJob("type refused", field="type", index=1)

    async with occupied(store) as held:
        with pytest.raises(InvalidJob, match="type refused"):
            await store.insert_job_chunks(chunks())  # its call, still queued, is dropped
    assert held.released == [True]  # the batch did not wait for the thread
    assert not any("json_each(" in statement or "SAVEPOINT" in statement for statement in statements)
    assert await store.count_jobs() == {}


async def test_a_chunked_batch_cancelled_while_queued_is_dropped_and_while_running_kept_whole(
    store: SQLiteStore,
) -> None:
    queued = [new_job() for _ in range(3)]
    async with occupied(store):
        with trio.CancelScope() as scope:
            scope.cancel()  # seen where the batch waits for its call, still queued
            await store.insert_job_chunks(iter([queued[:2], queued[2:]]))
    assert scope.cancelled_caught
    assert await store.count_jobs() == {}

    running = [new_job() for _ in range(3)]
    inserting = threading.Event()
    await traced(store, [], inserting, "json_each(")

    def chunks() -> Iterator[list[NewJob]]:
        yield running[:2]
        assert inserting.wait(10)  # the thread has begun the batch
        scope.cancel()
        yield running[2:]

    with trio.CancelScope() as scope:
        inserted = await store.insert_job_chunks(chunks())  # a call begun runs to its end
        await trio.lowlevel.checkpoint()  # where the cancellation is seen
    assert scope.cancelled_caught
    assert [item.job.id for item in inserted] == [new.id for new in running]
    assert await store.count_jobs() == {"default": {JobState.PENDING: 3}}


async def test_a_chunked_batch_is_checked_where_no_keyboard_interrupt_can_break_in(
    store: SQLiteStore,
) -> None:
    # One would leave the thread waiting for the batch's end; it waits for the next
    # checkpoint instead, where the call is dropped or awaited.
    protected: list[bool] = []

    def chunks() -> Iterator[list[NewJob]]:
        protected.append(trio.lowlevel.currently_ki_protected())
        yield [new_job()]

    await store.insert_job_chunks(chunks())
    assert protected == [True]


async def test_a_batch_stops_asking_for_chunks_once_its_insert_has_failed(store: SQLiteStore) -> None:
    taken = (await store.insert_jobs([new_job()]))[0].job
    undone = threading.Event()
    await traced(store, [], undone, "ROLLBACK TO call")
    asked: list[int] = []

    def chunks() -> Iterator[list[NewJob]]:
        yield [new_job(), new_job(id=taken.id)]
        assert undone.wait(10)  # the thread refused the first chunk, and undid the batch
        asked.append(2)
        yield [new_job()]
        asked.append(3)
        yield [new_job()]

    with pytest.raises(InvalidJob, match="already exists") as caught:
        await store.insert_job_chunks(chunks())
    assert caught.value.index == 1
    assert asked == [2]
    assert await store.count_jobs() == {"default": {JobState.PENDING: 1}}


async def test_a_write_sharing_the_transaction_of_a_batch_that_fails_is_kept(store: SQLiteStore) -> None:
    beside, batch = new_job(), [new_job() for _ in range(2)]
    inserts, both_inserted = [0], threading.Event()

    def trace(statement: str) -> None:
        if "json_each(" in statement:
            inserts[0] += 1
            if inserts[0] == 2:  # the write beside, then the batch's first chunk
                both_inserted.set()

    await store._read(lambda conn: conn.set_trace_callback(trace))

    async with trio.open_nursery() as nursery, occupied(store) as held:

        def chunks() -> Iterator[list[NewJob]]:
            yield batch[:1]
            # Both calls are queued now: let the thread go, and it takes them as one group.
            held.release.set()
            assert both_inserted.wait(10)
            raise InvalidJob("type refused", field="type", index=1)

        nursery.start_soon(store.insert_jobs, [beside])
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(InvalidJob, match="type refused"):
            await store.insert_job_chunks(chunks())
    assert held.released == [True]
    assert await store.get_job(beside.id) is not None
    assert await store.get_job(batch[0].id) is None
    assert await store.count_jobs() == {"default": {JobState.PENDING: 1}}


async def test_a_chunked_batch_that_fills_the_disk_is_undone(store: SQLiteStore) -> None:
    await one_job_and_room_for(store, 2)
    large = [new_job(payload="x" * 5000) for _ in range(50)]
    with pytest.raises(StoreUnavailable, match="the disk is full"):
        await store.insert_job_chunks(iter([large[:25], large[25:]]))
    assert await store.count_jobs() == {"default": {JobState.PENDING: 1}}
    await store._read(lambda conn: conn.execute("PRAGMA max_page_count = 1073741823"))
    assert (await store.insert_job_chunks(iter([large[:25], large[25:]])))[49].created


async def test_closed_store_is_unavailable(store: SQLiteStore) -> None:
    await store.close()
    with pytest.raises(StoreUnavailable, match="not open"):
        await store.get_job(uuid.uuid4())


async def test_cancelled_while_queued_never_runs(store: SQLiteStore) -> None:
    entered, release = threading.Event(), threading.Event()

    def occupy_the_thread() -> None:
        entered.set()
        release.wait(30)

    batch = [new_job() for _ in range(100)]
    finished: list[bool] = []
    scope = trio.CancelScope()

    async def insert() -> None:
        with scope:
            await store.insert_jobs(batch)
            finished.append(True)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(store._run, occupy_the_thread)
        assert await trio.to_thread.run_sync(entered.wait, 30)
        nursery.start_soon(insert)
        await trio.testing.wait_all_tasks_blocked()
        scope.cancel()
        await trio.testing.wait_all_tasks_blocked()
        assert scope.cancelled_caught  # cancelled at once: it never started
        release.set()
    assert finished == []
    assert await store.count_jobs() == {}


async def test_cancelled_while_running_completes_the_transaction(store: SQLiteStore) -> None:
    inside, proceed = threading.Event(), threading.Event()
    blocked_once: list[bool] = []

    def trace(statement: str) -> None:
        if statement.startswith("INSERT INTO jobs") and not blocked_once:
            blocked_once.append(True)
            inside.set()
            proceed.wait(30)

    await store._read(lambda conn: conn.set_trace_callback(trace))
    batch = [new_job(payload=i) for i in range(100)]
    scope = trio.CancelScope()
    results: list[Any] = []

    async def insert() -> None:
        with scope:
            results.extend(await store.insert_jobs(batch))
            await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(insert)
        assert await trio.to_thread.run_sync(inside.wait, 30)
        scope.cancel()
        await trio.testing.wait_all_tasks_blocked()
        assert results == []  # still waiting: a started transaction is not abandoned
        proceed.set()
    assert len(results) == 100
    assert scope.cancelled_caught
    assert (await store.count_jobs())["default"][JobState.PENDING] == 100


async def test_claims_and_lookups_use_their_indexes(store: SQLiteStore) -> None:
    async def explain(name: str, **values: Any) -> str:
        sql = f"EXPLAIN QUERY PLAN {_Q[name]}"
        found = await store._read(lambda conn: conn.execute(sql, values).fetchall())
        return " ".join(str(row[3]) for row in found)

    assert "jobs_claim" in await explain("claimable_jobs", queue="q", limit=10)
    assert "jobs_live_key" in await explain("live_job_with_key", key="k")
    assert "jobs_finished" in await explain("prune_jobs", state="completed", before=0, limit=10, now=0)
    assert "jobs_scheduled" in await explain("next_scheduled")
    assert "jobs_scheduled" in await explain("promote_due_jobs", state="pending", now=0)
    assert "jobs_list_state" in await explain("running_in_queue", queue="q")
    assert "jobs_list_state" in await explain("cancel_requests", owner="d")
    # Batched claims and completions reach each row by its key, never by scanning a state.
    claim_plan = await explain("claim_jobs", state="running", now=0, owner="d", lease_until=0, seqs="[]")
    assert "INTEGER PRIMARY KEY" in claim_plan and "SCAN jobs" not in claim_plan
    complete_plan = await explain("complete_jobs", now=0, batch="[]")
    assert "USING INDEX sqlite_autoindex_jobs_1 (id=?)" in complete_plan
    assert "jobs_list_state" not in complete_plan


async def test_completion_round_trip_after_reopen(db_path: str) -> None:
    opened = SQLiteStore(db_path)
    await opened.open()
    await opened.insert_jobs([new_job()])
    [job] = await opened.claim_jobs("d1", [QueueSlots("default", 1)], 1, T0, T0 + timedelta(seconds=30))
    await opened.close()
    reopened = SQLiteStore(db_path)
    await reopened.open()
    try:
        done = Completion(job.id, "d1", 1, Outcome.COMPLETED, result={"n": 1})
        assert await reopened.complete_jobs([done], T0 + timedelta(seconds=1)) == [True]
        finished = await reopened.get_job(job.id)
        assert finished is not None and finished.result == {"n": 1}
    finally:
        await reopened.close()


def test_describe_hides_passwords() -> None:
    assert (
        describe("postgresql://jobd:s3cret@db.example:5432/jobs")
        == "postgresql://jobd:***@db.example:5432/jobs"
    )
    assert "s3cret" not in describe("postgresql://db/jobs?user=jobd&password=s3cret&sslmode=require")
    assert "sslmode=require" in describe("postgresql://db/jobs?user=jobd&password=s3cret&sslmode=require")
    assert describe("postgresql://jobd@db/jobs") == "postgresql://jobd@db/jobs"
    assert describe("sqlite:///var/lib/jobd/jobd.db") == "sqlite:///var/lib/jobd/jobd.db"
    assert describe("memory:") == "memory:"


async def test_queued_writes_share_a_transaction_yet_fail_alone(store: SQLiteStore) -> None:
    """Group commit: writes queued behind a busy thread commit together; one that fails
    is rolled back to its savepoint without taking the others with it."""
    entered, release = threading.Event(), threading.Event()

    def occupy_the_thread() -> None:
        entered.set()
        release.wait(30)

    good = [new_job() for _ in range(20)]
    outcomes: dict[int, object] = {}

    async def insert(index: int, job: NewJob) -> None:
        try:
            outcomes[index] = (await store.insert_jobs([job]))[0].created
        except InvalidJob as error:
            outcomes[index] = error

    async with trio.open_nursery() as nursery:
        nursery.start_soon(store._run, occupy_the_thread)
        assert await trio.to_thread.run_sync(entered.wait, 30)
        for index, job in enumerate(good[:10]):
            nursery.start_soon(insert, index, job)
        nursery.start_soon(insert, 10, new_job(payload={1, 2}))  # not JSON: refused
        for index, job in enumerate(good[10:], start=11):
            nursery.start_soon(insert, index, job)
        await trio.testing.wait_all_tasks_blocked()
        release.set()
    assert isinstance(outcomes.pop(10), InvalidJob)
    assert set(outcomes.values()) == {True} and len(outcomes) == 20
    for job in good:
        assert await store.get_job(job.id) is not None
    assert sum((await store.count_jobs())["default"].values()) == 20


async def test_a_database_of_release_0_1_upgrades_with_every_job_as_it_was(db_path: str) -> None:
    """Jobs written by the 0.1 schema (migration 1 alone), in every state, read back the
    same after the upgrade to every later migration, are counted, and keep working."""
    [initial] = [migration for migration in load_migrations("sqlite") if migration.version == 1]
    ids = {state: uuid.uuid4() for state in JobState if state != JobState.WAITING}  # new in 0.2
    with sqlite3.connect(db_path) as conn:
        conn.executescript(initial.sql)
        conn.execute(
            "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL,"
            " applied_at INTEGER NOT NULL)"
        )
        conn.execute("INSERT INTO schema_migrations VALUES (1, 'initial', 0)")
        micros = 1_900_000_000_000_000
        for state, job_id in ids.items():
            finished = state in (JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED)
            conn.execute(
                "INSERT INTO jobs (id, type, queue, payload, state, priority, attempts, max_attempts,"
                " run_at, created_at, updated_at, finished_at, last_error, result, key, owner, lease_until)"
                " VALUES (?, 'test.job', 'default', ?, ?, 2, 1, 3, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    str(job_id),
                    f'{{"state": "{state.value}"}}',
                    state.value,
                    micros,
                    micros,
                    micros,
                    micros if finished else None,
                    "boom" if state == JobState.FAILED else None,
                    "[1, 2]" if state == JobState.COMPLETED else None,
                    f"key-{state.value}",
                    "old-daemon" if state == JobState.RUNNING else None,
                    micros if state == JobState.RUNNING else None,
                ),
            )
    store = SQLiteStore(db_path)
    await store.open()
    try:
        for state, job_id in ids.items():
            job = await store.get_job(job_id)
            assert job is not None, state
            expected = (state, {"state": state.value}, f"key-{state.value}", 2)
            assert (job.state, job.payload, job.key, job.priority) == expected
        completed = await store.get_job(ids[JobState.COMPLETED])
        assert completed is not None and completed.result == [1, 2]
        assert await store.count_jobs() == {"default": {state: 1 for state in ids}}
        page = await store.list_jobs(JobFilter(), 10, None)
        assert {job.id for job in page.jobs} == set(ids.values())
        # The rebuilt table numbers on from the old one: a new job lists first.
        [newest] = await store.insert_jobs([new_job()])
        assert (await store.list_jobs(JobFilter(), 1, None)).jobs[0].id == newest.job.id
        done = Completion(ids[JobState.RUNNING], "old-daemon", 1, Outcome.COMPLETED, "ok")
        assert await store.complete_jobs([done], T0) == [True]
        # The recent-outcome ring counts it (the trigger of migration 6).
        activity = await store.queue_activity(["default"], T0 + timedelta(seconds=1))
        assert activity["default"].ended[Outcome.COMPLETED] == 1
        assert (await store.retry_job(ids[JobState.FAILED], T0)).state == JobState.PENDING
        # The counts the triggers kept until migration 8 go on from where they were.
        counts = (await store.count_jobs())["default"]
        assert {state: n for state, n in counts.items() if n} == {
            JobState.SCHEDULED: 1,
            JobState.PENDING: 3,
            JobState.COMPLETED: 2,
            JobState.CANCELLED: 1,
        }
    finally:
        await store.close()
    applied = rows(db_path, "SELECT version FROM schema_migrations ORDER BY version")
    assert applied == [(migration.version,) for migration in load_migrations("sqlite")]
