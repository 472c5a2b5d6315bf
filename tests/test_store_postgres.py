"""The PostgreSQL store against a real server: schema, concurrency between daemons,
notifications, lost connections and cancellation. Behaviour every store shares is in
test_store_conformance.py."""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
import trio
import trio.lowlevel

from jobd.errors import InvalidJob, StoreUnavailable
from jobd.job import Job, JobState
from jobd.store import ClaimRequest, Completion, JobFilter, NewJob, Outcome, QueueSlots, pgtrio
from jobd.store.postgres import MIGRATIONS, PostgresStore

pytestmark = pytest.mark.postgres

NOW = datetime(2030, 1, 1, tzinfo=UTC)
LEASE = NOW + timedelta(seconds=30)
DEADLINE = 20  # seconds: generous, the machine is shared


def new_job(queue: str = "default", *, payload: object = None) -> NewJob:
    return NewJob(
        id=uuid.uuid4(),
        type="test.job",
        queue=queue,
        payload=payload,
        priority=0,
        run_at=NOW,
        max_attempts=3,
        timeout=None,
        key=None,
        created_at=NOW,
    )


@asynccontextmanager
async def opened(url: str, **options: float) -> AsyncIterator[PostgresStore]:
    store = PostgresStore(url, **options)  # type: ignore[arg-type]
    await store.open()
    try:
        yield store
    finally:
        await store.close()


def query(url: str, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        cursor = conn.execute(sql, params)
        return cursor.fetchall() if cursor.description else []


def jobd_backends(url: str) -> list[int]:
    """The process ids of the store's server connections."""
    rows = query(
        url,
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'jobd'",
    )
    return sorted(int(str(row[0])) for row in rows)


def terminate_backends(url: str, condition: str) -> int:
    rows = query(
        url,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        f" WHERE datname = current_database() AND pid <> pg_backend_pid() AND {condition}",
    )
    return len(rows)


async def wait_for_database(url: str, sql: str) -> None:
    with trio.fail_after(DEADLINE):
        while not query(url, sql):  # noqa: ASYNC110 - another process's state: nothing to wait on but polling
            await trio.sleep(0.01)


@contextmanager
def live_rows_locked(url: str) -> Iterator[None]:
    """Another session holds every live job's row lock until the block ends."""
    with psycopg.connect(url) as blocker:
        blocker.execute("SELECT 1 FROM jobd.live_jobs FOR UPDATE")
        yield
        blocker.rollback()


async def kill_once_waiting_on_a_lock(url: str) -> None:
    """Terminate the store's backends once one of them waits for a lock."""
    await wait_for_database(
        url,
        "SELECT 1 FROM pg_stat_activity WHERE datname = current_database()"
        " AND application_name = 'jobd' AND wait_event_type = 'Lock'",
    )
    terminate_backends(url, "application_name = 'jobd'")


async def expect_wakes(received: trio.MemoryReceiveChannel[str], *wanted: str) -> None:
    """Receive wake-ups until each of `wanted` came (others may come too)."""
    missing = set(wanted)
    with trio.fail_after(DEADLINE):
        while missing:
            missing.discard(await received.receive())


def drain(received: trio.MemoryReceiveChannel[str]) -> None:
    while True:
        try:
            received.receive_nowait()
        except trio.WouldBlock:
            return


async def test_open_migrates_an_empty_database(fresh_postgres_url: str) -> None:
    async with opened(fresh_postgres_url):
        pass
    tables = query(fresh_postgres_url, "SELECT tablename FROM pg_tables WHERE schemaname = 'jobd'")
    assert {row[0] for row in tables} == {
        "live_jobs",
        "finished_jobs",
        "finished_counts",
        "paused_queues",
        "migrations",
        "schedules",
        "job_dependants",
        "key_windows",
        "rate_buckets",
        "recent_outcomes",
    }
    views = query(fresh_postgres_url, "SELECT viewname FROM pg_views WHERE schemaname = 'jobd'")
    assert views == [("jobs",)]
    found = query(fresh_postgres_url, "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'jobd'")
    indexes = {str(name): str(definition) for name, definition in found}
    claim = indexes["live_jobs_claim"]
    assert "(queue, priority DESC, run_at, seq)" in claim
    assert "WHERE (state = 'pending'::text)" in claim
    assert "WHERE (state = 'scheduled'::text)" in indexes["live_jobs_scheduled"]
    assert "WHERE (state = 'running'::text)" in indexes["live_jobs_running"]
    assert indexes["live_jobs_key"].startswith("CREATE UNIQUE INDEX")
    # The hot table's indexes hold no finished job; the finished table's serve listings.
    assert not any("finished_at" in definition for name, definition in indexes.items() if "live_" in name)
    assert "USING brin (finished_at)" in indexes["finished_jobs_finished_at"]
    assert "WHERE (schedule IS NOT NULL)" in indexes["live_jobs_schedule"]
    columns = query(
        fresh_postgres_url,
        "SELECT column_name FROM information_schema.columns"
        " WHERE table_schema = 'jobd' AND table_name = 'jobs' ORDER BY ordinal_position",
    )
    names = [row[0] for row in columns]
    assert names[-5:] == ["schedule", "scheduled_for", "traceparent", "parents", "on_parent_failure"]
    migrations = query(fresh_postgres_url, "SELECT version, name FROM jobd.migrations ORDER BY version")
    assert migrations == [(migration.version, migration.name) for migration in MIGRATIONS]
    assert migrations[:2] == [(1, "initial"), (2, "live_and_finished")]


async def test_a_database_of_release_0_1_upgrades_with_every_job_as_it_was(fresh_postgres_url: str) -> None:
    """Jobs written by the 0.1 schema (migration 1 alone), in every state, read back the
    same after the upgrade, are counted, listed, and keep working."""
    [initial] = [migration for migration in MIGRATIONS if migration.version == 1]
    with psycopg.connect(fresh_postgres_url, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA jobd")
        conn.execute(
            "CREATE TABLE jobd.migrations (version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        conn.execute(initial.sql)
        conn.execute("INSERT INTO jobd.migrations (version, name) VALUES (1, 'initial')")
        ids = {state: uuid.uuid4() for state in JobState if state != JobState.WAITING}  # new in 0.2
        for state, job_id in ids.items():
            finished = state in (JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED)
            conn.execute(
                "INSERT INTO jobd.jobs (id, type, queue, payload, state, priority, attempts, max_attempts,"
                " run_at, created_at, updated_at, started_at, finished_at, last_error, result, key, owner,"
                " lease_until) VALUES (%s, 'test.job', 'default', %s, %s, 2, 1, 3,"
                " %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (
                    job_id,
                    psycopg.types.json.Jsonb({"state": state.value}),
                    state.value,
                    NOW,
                    NOW,
                    NOW,
                    NOW if state != JobState.PENDING else None,
                    NOW if finished else None,
                    "boom" if state == JobState.FAILED else None,
                    psycopg.types.json.Jsonb([1, 2]) if state == JobState.COMPLETED else None,
                    f"key-{state.value}",
                    "old-daemon" if state == JobState.RUNNING else None,
                    LEASE if state == JobState.RUNNING else None,
                ),
            )
    async with opened(fresh_postgres_url) as store:
        for state, job_id in ids.items():
            job = await store.get_job(job_id)
            assert job is not None, state
            assert (job.state, job.payload, job.key, job.priority) == (
                state,
                {"state": state.value},
                f"key-{state.value}",
                2,
            )
        failed = await store.get_job(ids[JobState.FAILED])
        completed = await store.get_job(ids[JobState.COMPLETED])
        assert failed is not None and failed.last_error == "boom"
        assert completed is not None and completed.result == [1, 2]
        counts = await store.count_jobs()
        assert counts == {"default": {state: 1 for state in ids}}
        page = await store.list_jobs(JobFilter(), 10, None)
        assert {job.id for job in page.jobs} == set(ids.values())
        # The upgraded jobs move on as any other: the running one completes, the failed one retries.
        done = Completion(ids[JobState.RUNNING], "old-daemon", 1, Outcome.COMPLETED, "ok")
        assert await store.complete_jobs([done], NOW) == [True]
        retried = await store.retry_job(ids[JobState.FAILED], NOW)
        assert retried.state == JobState.PENDING
        counts = await store.count_jobs()
        assert counts["default"][JobState.COMPLETED] == 2 and JobState.FAILED not in counts["default"]
    live = query(fresh_postgres_url, "SELECT state FROM jobd.live_jobs ORDER BY state")
    assert live == [("pending",), ("pending",), ("scheduled",)]  # the retried one is pending again


async def test_ten_daemons_opening_together_migrate_once(fresh_postgres_url: str) -> None:
    stores = [PostgresStore(fresh_postgres_url, pool_size=1) for _ in range(10)]
    async with trio.open_nursery() as nursery:
        for store in stores:
            nursery.start_soon(store.open)
    for store in stores:
        await store.ping()
        await store.close()
    count = query(fresh_postgres_url, "SELECT count(*) FROM jobd.migrations")
    assert count == [(len(MIGRATIONS),)]


async def test_a_schema_newer_than_the_code_is_refused(fresh_postgres_url: str) -> None:
    async with opened(fresh_postgres_url):
        pass
    query(fresh_postgres_url, "INSERT INTO jobd.migrations (version, name) VALUES (9999, 'future')")
    with pytest.raises(StoreUnavailable, match="version 9999"):
        await PostgresStore(fresh_postgres_url).open()


async def test_an_unreachable_server_raises_store_unavailable() -> None:
    with pytest.raises(StoreUnavailable, match="cannot connect"):
        await PostgresStore("postgresql://postgres@127.0.0.1:1/none", connect_timeout=2).open()


async def test_global_limit_holds_across_daemons(fresh_postgres_url: str) -> None:
    limit = 3
    async with opened(fresh_postgres_url) as first:
        await first.insert_jobs([new_job("limited") for _ in range(60)])
    running: set[uuid.UUID] = set()
    most = 0
    finished = 0

    async def daemon(owner: str) -> None:
        nonlocal most, finished
        async with opened(fresh_postgres_url, pool_size=2) as store:
            while finished < 60:
                claimed = await store.claim_jobs(owner, [QueueSlots("limited", 5, limit)], 5, NOW, LEASE)
                running.update(job.id for job in claimed)
                # Every job in `running` is still running in the database, so this
                # bounds what all four daemons hold at once.
                most = max(most, len(running))
                assert len(running) <= limit
                await trio.lowlevel.checkpoint()  # let the other daemons claim meanwhile
                for job in claimed:
                    running.discard(job.id)
                done = await store.complete_jobs(
                    [Completion(job.id, owner, job.attempts, Outcome.COMPLETED) for job in claimed], NOW
                )
                finished += sum(1 for job in done if job is not None)

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for number in range(4):
                nursery.start_soon(daemon, f"daemon-{number}")
    assert most == limit
    assert query(fresh_postgres_url, "SELECT count(*) FROM jobd.finished_jobs WHERE state = 'completed'") == [
        (60,)
    ]


async def test_two_daemons_never_claim_the_same_job(fresh_postgres_url: str) -> None:
    async with opened(fresh_postgres_url) as first, opened(fresh_postgres_url) as second:
        await first.insert_jobs([new_job() for _ in range(300)])
        claims: dict[str, list[uuid.UUID]] = {"a": [], "b": []}

        async def claim_all(store: PostgresStore, owner: str) -> None:
            while batch := await store.claim_jobs(owner, [QueueSlots("default", 7)], 7, NOW, LEASE):
                claims[owner].extend(job.id for job in batch)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(claim_all, first, "a")
            nursery.start_soon(claim_all, second, "b")
    every = claims["a"] + claims["b"]
    assert len(every) == len(set(every)) == 300
    assert claims["a"] and claims["b"]


async def test_listener_wakes_on_changes_and_survives_a_killed_backend(fresh_postgres_url: str) -> None:
    async with opened(fresh_postgres_url) as listening, opened(fresh_postgres_url) as other:
        wake, woken = trio.open_memory_channel[str](1000)
        async with trio.open_nursery() as nursery:
            await nursery.start(listening.listen, wake.send_nowait)
            await expect_wakes(woken, "connected", "jobs", "cancel")  # the look after connecting
            drain(woken)

            [inserted] = await other.insert_jobs([new_job()])
            await expect_wakes(woken, "jobs")
            await other.claim_jobs("owner", [QueueSlots("default", 1)], 1, NOW, LEASE)
            await other.cancel_job(inserted.job.id, NOW)
            await expect_wakes(woken, "cancel")

            assert terminate_backends(fresh_postgres_url, "query = 'LISTEN jobd'") == 1
            # Lost, reconnected, and looked again.
            await expect_wakes(woken, "disconnected", "connected", "jobs", "cancel")
            listening_again = "SELECT 1 FROM pg_stat_activity WHERE query = 'LISTEN jobd'"
            await wait_for_database(fresh_postgres_url, listening_again)
            drain(woken)
            await other.insert_jobs([new_job()])
            await expect_wakes(woken, "jobs")

            started = time.monotonic()
            nursery.cancel_scope.cancel()
        assert time.monotonic() - started < 5


async def test_a_listener_hands_on_no_other_listeners_check(fresh_postgres_url: str) -> None:
    """Each listener sends itself a NOTIFY through the pool when it connects (to find a
    pooler that loses its LISTEN); the other daemons hear it too, and wake for nothing."""
    async with opened(fresh_postgres_url) as first, opened(fresh_postgres_url) as second:
        wake, woken = trio.open_memory_channel[str](1000)
        async with trio.open_nursery() as nursery:
            await nursery.start(first.listen, wake.send_nowait)
            await expect_wakes(woken, "jobs", "cancel")
            drain(woken)
            await nursery.start(second.listen, lambda _: None)  # its check was heard, so it was sent
            await second.insert_jobs([new_job()])  # a NOTIFY after the check: one connection keeps order
            assert await woken.receive() == "jobs"
            nursery.cancel_scope.cancel()


async def test_killed_pool_connections_are_replaced(fresh_postgres_url: str) -> None:
    async with opened(fresh_postgres_url, pool_size=2) as store:
        await store.insert_jobs([new_job()])
        assert terminate_backends(fresh_postgres_url, "application_name = 'jobd'") >= 1
        # Only the idle connections died: the first call runs on a new one.
        counts = await store.count_jobs()
        assert counts["default"][JobState.PENDING] == 1
        await store.insert_jobs([new_job()])
        assert (await store.count_jobs())["default"][JobState.PENDING] == 2


async def test_a_connection_killed_mid_query_raises_store_unavailable(fresh_postgres_url: str) -> None:
    async with opened(fresh_postgres_url, pool_size=1) as store:
        [inserted] = await store.insert_jobs([new_job()])
        with live_rows_locked(fresh_postgres_url):  # cancel_job now waits for this lock
            async with trio.open_nursery() as nursery:
                nursery.start_soon(kill_once_waiting_on_a_lock, fresh_postgres_url)
                with pytest.raises(StoreUnavailable, match="connection lost"):
                    await store.cancel_job(inserted.job.id, NOW)
        assert (await store.cancel_job(inserted.job.id, NOW)).state == JobState.CANCELLED


async def test_a_cancelled_call_cancels_its_query_and_keeps_the_connection(fresh_postgres_url: str) -> None:
    async with opened(fresh_postgres_url, pool_size=1) as store:
        [inserted] = await store.insert_jobs([new_job()])
        with live_rows_locked(fresh_postgres_url):
            started = time.monotonic()
            with trio.move_on_after(0.5) as scope:
                await store.cancel_job(inserted.job.id, NOW)
            assert scope.cancelled_caught
            assert time.monotonic() - started < 10  # the statement timeout is 30 s
        # The single pooled connection was rolled back and kept, not wedged.
        assert (await store.get_job(inserted.job.id)).state == JobState.PENDING  # type: ignore[union-attr]
        assert (await store.cancel_job(inserted.job.id, NOW)).state == JobState.CANCELLED


async def test_the_statement_timeout_ends_a_stuck_call(fresh_postgres_url: str) -> None:
    async with opened(fresh_postgres_url, statement_timeout=0.3) as store:
        [inserted] = await store.insert_jobs([new_job()])
        with live_rows_locked(fresh_postgres_url), pytest.raises(StoreUnavailable, match="cancel"):
            await store.cancel_job(inserted.job.id, NOW)
        await store.ping()


async def test_a_value_postgres_refuses_is_an_invalid_job(fresh_postgres_url: str, statement_io: str) -> None:
    async with opened(fresh_postgres_url) as store:
        with pytest.raises(InvalidJob, match="refused"):
            await store.insert_jobs([new_job(payload={"text": "nul \u0000 byte"})])
        assert await store.count_jobs() == {}


async def test_completion_is_fenced_across_daemons(fresh_postgres_url: str) -> None:
    async with opened(fresh_postgres_url) as first, opened(fresh_postgres_url) as second:
        await first.insert_jobs([new_job()])
        short_lease = NOW + timedelta(seconds=1)
        [claimed] = await first.claim_jobs("a", [QueueSlots("default", 1)], 1, NOW, short_lease)
        later = NOW + timedelta(seconds=2)
        [rescued] = await second.rescue_jobs(later)
        assert (rescued.owner, rescued.job.state) == ("a", JobState.PENDING)
        [reclaimed] = await second.claim_jobs("b", [QueueSlots("default", 1)], 1, later, LEASE)
        assert reclaimed.attempts == 2

        stale = await first.complete_jobs([Completion(claimed.id, "a", 1, Outcome.COMPLETED, "a")], later)
        assert stale == [False]
        valid = await second.complete_jobs([Completion(claimed.id, "b", 2, Outcome.COMPLETED, "b")], later)
        assert valid == [True]
        done = await first.get_job(claimed.id)
        assert done is not None and (done.state, done.result) == (JobState.COMPLETED, "b")


async def test_an_id_already_taken_is_an_invalid_job(fresh_postgres_url: str, statement_io: str) -> None:
    async with opened(fresh_postgres_url) as store:
        [first] = await store.insert_jobs([new_job()])
        again = dataclasses.replace(new_job(), id=first.job.id)
        with pytest.raises(InvalidJob, match="already exists") as raised:
            await store.insert_jobs([new_job(), again])
        assert (raised.value.field, raised.value.index) == ("id", 1)
        assert (await store.count_jobs())["default"] == {JobState.PENDING: 1}


async def test_a_database_of_the_previous_schema_gains_schedules_and_keeps_its_jobs(
    fresh_postgres_url: str,
) -> None:
    live, finished = uuid.uuid4(), uuid.uuid4()
    with psycopg.connect(fresh_postgres_url, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA jobd")
        conn.execute(
            "CREATE TABLE jobd.migrations (version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        for migration in MIGRATIONS[:2]:
            conn.execute(migration.sql)
            conn.execute(
                "INSERT INTO jobd.migrations (version, name) VALUES (%s, %s)",
                (migration.version, migration.name),
            )
        columns = "(id, type, queue, state, max_attempts, run_at, created_at, updated_at)"
        conn.execute(
            f"INSERT INTO jobd.live_jobs {columns} VALUES (%s, 'old', 'default', 'pending', 3,"
            " now(), now(), now())",
            (live,),
        )
        conn.execute(
            f"INSERT INTO jobd.finished_jobs {columns[:-1]}, seq, finished_at) VALUES (%s, 'old',"
            " 'default', 'completed', 3, now(), now(), now(), 1000, now())",
            (finished,),
        )
    async with opened(fresh_postgres_url) as store:
        for job_id in (live, finished):
            job = await store.get_job(job_id)
            assert job is not None
            assert (job.type, job.schedule, job.scheduled_for, job.traceparent) == ("old", None, None, None)
        assert await store.sync_schedules({"s": "every 1000000us"}, datetime.now(UTC))
    versions = query(fresh_postgres_url, "SELECT version FROM jobd.migrations ORDER BY 1")
    assert [row[0] for row in versions] == [migration.version for migration in MIGRATIONS]


def _plan_nodes(node: dict[str, object]) -> list[dict[str, object]]:
    children = node.get("Plans", [])
    assert isinstance(children, list)
    return [node, *(found for child in children for found in _plan_nodes(child))]


async def test_completions_find_their_rows_by_id_not_by_the_running_index(fresh_postgres_url: str) -> None:
    """Until vacuum, live_jobs_running keeps an entry for every row version that ever ran;
    a completion or lease renewal that scanned it would cost more with every job run."""
    from jobd.store.postgres import QUERIES, _exchange_params  # the statements as the store sends them

    async with opened(fresh_postgres_url) as store:
        for _ in range(4):  # dead versions of running rows, left behind by jobs that ended
            await store.insert_jobs([new_job() for _ in range(500)])
            claimed = await store.claim_jobs("a", [QueueSlots("default", 500)], 500, NOW, LEASE)
            completions = [Completion(job.id, "a", 1, Outcome.COMPLETED) for job in claimed]
            assert all(await store.complete_jobs(completions, NOW))
        await store.insert_jobs([new_job() for _ in range(100)])
        running = await store.claim_jobs("a", [QueueSlots("default", 100)], 100, NOW, LEASE)
        ended = [Completion(job.id, "a", 1, Outcome.COMPLETED) for job in running[:50]]
        ended += [
            Completion(job.id, "a", 1, Outcome.RETRIED, error="x", run_at=LEASE) for job in running[50:]
        ]
        statements = {
            "complete_and_claim_jobs": _exchange_params(ended, [QueueSlots("default", 10)], None, NOW),
            "renew_leases": {"ids": [job.id for job in running], "owner": "a", "lease_until": LEASE},
        }
        for analyzed in (False, True):
            if analyzed:
                query(fresh_postgres_url, "ANALYZE jobd.live_jobs")
            for name, params in statements.items():
                with psycopg.connect(fresh_postgres_url) as conn:  # rolled back: a plan, not a change
                    [[plan]] = conn.execute("EXPLAIN (FORMAT JSON) " + QUERIES[name], params).fetchall()
                writes = [node for node in _plan_nodes(plan[0]["Plan"]) if node["Node Type"] == "ModifyTable"]
                assert writes, name
                for write in writes:
                    used = {node.get("Index Name") for node in _plan_nodes(write)}
                    assert "live_jobs_running" not in used, (name, analyzed, write["Operation"])


async def test_a_submit_that_claims_all_it_inserted_wakes_no_other_daemon(fresh_postgres_url: str) -> None:
    """Every daemon woken by a job its submitter already started would make a claim for
    nothing. The wake-ups arrive in commit order, so a marker notified after the submit
    comes first when the submit notified nobody."""
    async with opened(fresh_postgres_url) as listening, opened(fresh_postgres_url) as submitting:
        wake, woken = trio.open_memory_channel[str](1000)

        async def next_after(marker: str) -> str:
            query(fresh_postgres_url, "SELECT pg_notify('jobd', %s)", (marker,))
            with trio.fail_after(DEADLINE):
                return await woken.receive()

        async with trio.open_nursery() as nursery:
            await nursery.start(listening.listen, wake.send_nowait)
            await expect_wakes(woken, "connected", "jobs", "cancel")
            drain(woken)

            room = ClaimRequest("a", [QueueSlots("default", 5)], 5, LEASE)
            taken = await submitting.insert_and_claim_jobs([new_job()], room, NOW)
            assert len(taken.claimed) == 1
            assert await next_after("cancel") == "cancel"

            # A job the claim could have taken but did not (its queue had no room here).
            await submitting.insert_and_claim_jobs([new_job("elsewhere")], room, NOW)
            assert await next_after("cancel") == "jobs"
            await expect_wakes(woken, "cancel")  # the marker, behind it

            # One job more than the claim takes: the one left is work for the others.
            left = await submitting.insert_and_claim_jobs([new_job() for _ in range(6)], room, NOW)
            assert len(left.claimed) == 5
            assert await next_after("cancel") == "jobs"
            await expect_wakes(woken, "cancel")  # the marker, behind it

            # A job for a later time is news for the others' promotion, claimed or not.
            later = dataclasses.replace(new_job(), run_at=NOW + timedelta(hours=1))
            await submitting.insert_and_claim_jobs([later], room, NOW)
            assert await next_after("cancel") == "jobs"
            nursery.cancel_scope.cancel()


# -- a statement alone, on Trio's own I/O (jobd.store.pgtrio) or in a worker thread ------------


@pytest.fixture(params=["trio", "thread"])
def statement_io(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each test that takes this runs twice: a statement alone on Trio's I/O, as with the
    psycopg releases pgtrio knows, and in a worker thread, as with any other."""
    if request.param == "thread":
        monkeypatch.setattr(pgtrio, "AVAILABLE", False)
    return str(request.param)


async def claim_one(store: PostgresStore) -> Completion:
    """Submit and claim a job; the completion that would end it."""
    await store.insert_jobs([new_job()])
    [claimed] = await store.claim_jobs("a", [QueueSlots("default", 1)], 1, NOW, LEASE)
    return Completion(claimed.id, "a", 1, Outcome.COMPLETED)


def test_the_installed_psycopg_runs_statements_on_trio() -> None:
    # A psycopg release pgtrio was not tested with falls back to threads, silently: this
    # says so when the pin moves, so that pgtrio is read against the new release first.
    assert pgtrio.AVAILABLE, f"psycopg {psycopg.__version__}: see jobd/store/pgtrio.py"


async def test_a_psycopg_jobd_does_not_know_runs_in_threads_and_says_so(
    fresh_postgres_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(pgtrio, "AVAILABLE", False)
    async with opened(fresh_postgres_url) as store:
        await store.insert_jobs([new_job()])
        assert len(await store.claim_jobs("a", [QueueSlots("default", 1)], 1, NOW, LEASE)) == 1
    [warning] = [record for record in caplog.records if record.levelname == "WARNING"]
    assert f"psycopg {psycopg.__version__} is not a release" in warning.getMessage()
    assert "worker thread" in warning.getMessage()


async def test_submits_claims_and_completions_make_no_thread_hop(
    fresh_postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with opened(fresh_postgres_url) as store:
        [inserted] = await store.insert_jobs([new_job()])

        def no_thread(*args: object, **kwargs: object) -> None:
            raise AssertionError("a worker thread was started")

        monkeypatch.setattr(trio.lowlevel, "start_thread_soon", no_thread)
        monkeypatch.setattr(trio.to_thread, "run_sync", no_thread)
        await store.insert_jobs([new_job()])
        [claimed] = await store.claim_jobs("a", [QueueSlots("default", 1)], 1, NOW, LEASE)
        assert claimed.id == inserted.job.id
        done = Completion(claimed.id, "a", 1, Outcome.COMPLETED, {"ok": True})
        assert await store.complete_jobs([done], NOW) == [True]
        room = ClaimRequest("a", [QueueSlots("default", 5)], 5, LEASE)
        fresh = new_job()
        submitted = await store.insert_and_claim_jobs([fresh], room, NOW)
        assert [item.job.id for item in submitted.inserted] == [fresh.id]
        assert len(submitted.claimed) == 2  # the one left pending, and the new one
        await store.ping()
        monkeypatch.undo()  # closing the pool is a thread's work


@pytest.mark.skipif(not pgtrio.AVAILABLE, reason="in a worker thread the answer is made after the statement")
async def test_a_batch_answer_is_made_while_the_server_inserts_it(
    fresh_postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The insert waits for a table lock another session holds; the store turns the batch
    # into its answer meanwhile, and only that releases the lock. Made before the
    # statement was sent, the answer would find no insert waiting; made after its rows
    # came back, it would never come (the deadline cancels the statement).
    seen_waiting: list[bool] = []
    inserted_of = NewJob.inserted
    async with opened(fresh_postgres_url, pool_size=1) as store:
        await store.ping()
        with psycopg.connect(fresh_postgres_url) as blocker:
            blocker.execute("LOCK TABLE jobd.live_jobs IN SHARE MODE")

            def inserted_while_waiting(new: NewJob) -> Job:
                if not seen_waiting:
                    seen_waiting.append(waits_for(fresh_postgres_url, blocker.info.backend_pid))
                    blocker.rollback()
                return inserted_of(new)

            monkeypatch.setattr(NewJob, "inserted", inserted_while_waiting)
            jobs = [new_job() for _ in range(3)]
            with trio.fail_after(DEADLINE):
                inserted = await store.insert_jobs(jobs)
        assert seen_waiting == [True]
        assert [item.job.id for item in inserted] == [job.id for job in jobs]
        assert all(item.created and item.job.state == JobState.PENDING for item in inserted)


async def test_an_error_of_the_answer_made_meanwhile_comes_after_the_statement_ended(
    fresh_postgres_url: str, monkeypatch: pytest.MonkeyPatch, statement_io: str
) -> None:
    def broken(new: NewJob) -> Job:
        raise RuntimeError(f"no answer for {new.id}")

    async with opened(fresh_postgres_url, pool_size=1) as store:
        await store.ping()
        before = jobd_backends(fresh_postgres_url)
        monkeypatch.setattr(NewJob, "inserted", broken)
        with pytest.raises(RuntimeError, match="no answer for"):
            await store.insert_jobs([new_job(), new_job()])
        monkeypatch.undo()
        # The statement was followed to its end: committed, and its connection idle.
        await store.ping()
        assert jobd_backends(fresh_postgres_url) == before
        assert (await store.count_jobs())["default"][JobState.PENDING] == 2


def waits_for(url: str, blocker_pid: int) -> bool:
    """Whether a backend of the store waits for a lock `blocker_pid` holds, within
    DEADLINE seconds."""
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        if query(
            url,
            "SELECT 1 FROM pg_stat_activity WHERE datname = current_database()"
            " AND application_name = 'jobd' AND %s = ANY(pg_blocking_pids(pid))",
            (blocker_pid,),
        ):
            return True
        time.sleep(0.01)
    return False


async def test_a_statement_larger_than_the_socket_buffers_goes_through(
    fresh_postgres_url: str, statement_io: str
) -> None:
    # About 12 MB in one statement: the send waits for the socket to be writable again.
    jobs = [new_job(payload={"text": "x" * 4000, "n": n}) for n in range(3000)]
    async with opened(fresh_postgres_url) as store:
        inserted = await store.insert_jobs(jobs)
        assert [item.job.id for item in inserted] == [job.id for job in jobs]
        claimed = await store.claim_jobs("a", [QueueSlots("default", 3000)], 3000, NOW, LEASE)
        assert sorted(job.payload["n"] for job in claimed) == list(range(3000))  # type: ignore[index]


async def test_a_cancelled_statement_is_cancelled_on_the_server_and_keeps_the_connection(
    fresh_postgres_url: str, statement_io: str
) -> None:
    async with opened(fresh_postgres_url, pool_size=1) as store:
        done = await claim_one(store)
        before = jobd_backends(fresh_postgres_url)
        with live_rows_locked(fresh_postgres_url):  # the completion waits for this
            started = time.monotonic()
            with trio.move_on_after(0.5) as scope:
                await store.complete_jobs([done], NOW)
            assert scope.cancelled_caught
            assert time.monotonic() - started < 10  # the statement timeout is 30 s
            # Nothing of the cancelled statement is left running on the server.
            assert not query(
                fresh_postgres_url,
                "SELECT 1 FROM pg_stat_activity WHERE datname = current_database()"
                " AND application_name = 'jobd' AND state = 'active'",
            )
        # The single pooled connection came back idle: the completion was not applied.
        assert (await store.get_job(done.job_id)).state == JobState.RUNNING  # type: ignore[union-attr]
        assert await store.complete_jobs([done], NOW) == [True]
        assert jobd_backends(fresh_postgres_url) == before  # the same connection all along


async def test_a_statement_cancelled_while_it_is_sent_ends_before_the_connection_is_reused(
    fresh_postgres_url: str, statement_io: str
) -> None:
    # About 40 MB: the cancellation lands while the statement is still being written.
    jobs = [new_job(payload={"text": "x" * 10_000, "n": n}) for n in range(4000)]
    async with opened(fresh_postgres_url, pool_size=1) as store:
        await store.ping()
        before = jobd_backends(fresh_postgres_url)
        with trio.move_on_after(0.005) as scope:
            await store.insert_jobs(jobs)
        assert scope.cancelled_caught
        assert jobd_backends(fresh_postgres_url) == before
        await store.ping()  # on the same connection, idle: not "another command is in progress"
        pending = (await store.count_jobs()).get("default", {}).get(JobState.PENDING, 0)
        assert pending in (0, len(jobs))  # all of the statement or nothing


async def test_a_connection_killed_mid_statement_raises_store_unavailable(
    fresh_postgres_url: str, statement_io: str
) -> None:
    async with opened(fresh_postgres_url, pool_size=1) as store:
        done = await claim_one(store)
        with live_rows_locked(fresh_postgres_url):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(kill_once_waiting_on_a_lock, fresh_postgres_url)
                with pytest.raises(StoreUnavailable, match="connection lost"):
                    await store.complete_jobs([done], NOW)
        assert await store.complete_jobs([done], NOW) == [True]  # on a new connection


async def test_the_statement_timeout_ends_a_stuck_statement(
    fresh_postgres_url: str, statement_io: str
) -> None:
    async with opened(fresh_postgres_url, statement_timeout=0.3) as store:
        done = await claim_one(store)
        with live_rows_locked(fresh_postgres_url), pytest.raises(StoreUnavailable, match="cancel"):
            await store.complete_jobs([done], NOW)
        assert await store.complete_jobs([done], NOW) == [True]


def inserts_waiting_on_a_lock(url: str) -> int:
    rows = query(
        url,
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND application_name = 'jobd' AND wait_event_type = 'Lock'"
        " AND position('INSERT INTO jobd.live_jobs' in query) > 0",
    )
    return int(str(rows[0][0]))


async def test_the_next_chunk_is_made_while_the_server_inserts_the_one_before(
    fresh_postgres_url: str,
) -> None:
    first, second = [new_job() for _ in range(3)], [new_job() for _ in range(2)]
    seen_waiting: list[int] = []
    async with opened(fresh_postgres_url) as store:
        await store.ping()  # the schema exists: it can be locked
        with psycopg.connect(fresh_postgres_url) as blocker:
            # Inserts wait while another session holds the table in SHARE mode.
            blocker.execute("LOCK TABLE jobd.live_jobs IN SHARE MODE")

            def chunks() -> Iterator[list[NewJob]]:
                yield first
                # Asked for the second chunk: the first one's INSERT is at the server.
                deadline = time.monotonic() + 10
                while not inserts_waiting_on_a_lock(fresh_postgres_url) and time.monotonic() < deadline:
                    time.sleep(0.01)
                seen_waiting.append(inserts_waiting_on_a_lock(fresh_postgres_url))
                blocker.rollback()
                yield second

            inserted = await store.insert_job_chunks(chunks())
        assert seen_waiting == [1]
        assert [item.job.id for item in inserted] == [new.id for new in first + second]
        assert (await store.count_jobs())["default"] == {JobState.PENDING: 5}


async def test_a_batch_cancelled_between_its_chunks_leaves_nothing_and_a_usable_store(
    fresh_postgres_url: str,
) -> None:
    first, second = [new_job() for _ in range(3)], [new_job() for _ in range(2)]
    scope = trio.CancelScope()

    def chunks() -> Iterator[list[NewJob]]:
        yield first
        yield second  # asked for once the first chunk's INSERT is sent, inside the transaction
        scope.cancel()  # asked for a third while the second's INSERT runs

    async with opened(fresh_postgres_url, pool_size=1) as store:
        with scope:
            await store.insert_job_chunks(chunks())
        assert scope.cancelled_caught
        assert [await store.get_job(new.id) for new in first + second] == [None] * 5
        assert not query(
            fresh_postgres_url,
            "SELECT 1 FROM pg_stat_activity WHERE datname = current_database()"
            " AND application_name = 'jobd' AND state LIKE 'idle in transaction%%'",
        )
        [after] = await store.insert_jobs([new_job()])  # on a new connection: that one was closed
        assert after.created and (await store.count_jobs())["default"] == {JobState.PENDING: 1}


async def test_a_commit_that_fails_is_store_unavailable_and_keeps_nothing(
    fresh_postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    execute = pgtrio.execute

    async def lost_at_commit(cursor: Any, query_text: str, params: Any, **options: Any) -> None:
        if query_text == "COMMIT":
            raise psycopg.OperationalError("server closed the connection unexpectedly")
        await execute(cursor, query_text, params, **options)

    jobs = [new_job() for _ in range(3)]
    async with opened(fresh_postgres_url) as store:
        monkeypatch.setattr(pgtrio, "execute", lost_at_commit)
        with pytest.raises(StoreUnavailable, match="PostgreSQL connection lost"):
            await store.insert_job_chunks(iter([jobs[:2], jobs[2:]]))
        monkeypatch.setattr(pgtrio, "execute", execute)
        assert await store.count_jobs() == {}
        assert (await store.insert_jobs([new_job()]))[0].created


async def test_a_payload_that_is_not_json_in_a_later_chunk_is_named_by_its_batch_index(
    fresh_postgres_url: str,
) -> None:
    async with opened(fresh_postgres_url) as store:
        chunks = [[new_job(), new_job()], [new_job(), new_job(payload={1, 2})]]
        with pytest.raises(InvalidJob, match="payload is not JSON") as raised:
            await store.insert_job_chunks(iter(chunks))
        assert (raised.value.field, raised.value.index) == ("payload", 3)
        assert await store.count_jobs() == {}
