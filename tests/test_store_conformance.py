"""One behavioural suite for every store: what the `Store` protocol promises, checked the same way
on the memory, SQLite and PostgreSQL stores. Times are fixed datetimes; nothing sleeps."""

from __future__ import annotations

import itertools
import random
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import trio

from jobd.config import StoreConfig
from jobd.errors import IllegalTransition, InvalidJob, JobdError, JobNotFound, KeyInUse
from jobd.job import TRANSITIONS, Action, Job, JobState, Progress
from jobd.rates import RateLimit, parse_rate
from jobd.store import (
    Bucket,
    ClaimRequest,
    CompletedAndClaimed,
    Completion,
    Fired,
    JobFilter,
    NewJob,
    Outcome,
    QueueSlots,
    ScheduleFire,
    ScheduleRecord,
    Store,
    refill_bucket,
)
from jobd.store.factory import create_store
from jobd.store.memory import MemoryStore
from jobd.store.postgres import PostgresStore
from jobd.store.sqlite import SQLiteStore

T0 = datetime(2030, 5, 17, 12, 30, 15, 123456, tzinfo=UTC)
LEASE = timedelta(seconds=30)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def make_store(request: pytest.FixtureRequest, tmp_path: Any) -> Callable[[], Store]:
    if request.param == "memory":
        return MemoryStore
    if request.param == "sqlite":
        url = f"sqlite://{tmp_path}/jobd.db"
    else:
        url = request.getfixturevalue("fresh_postgres_url")
    return lambda: create_store(StoreConfig(url=url))


@pytest.fixture
async def store(make_store: Callable[[], Store]) -> AsyncIterator[Store]:
    opened = make_store()
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()


# -- helpers -----------------------------------------------------------------------------


def new_job(
    *,
    type: str = "test.job",
    queue: str = "default",
    payload: Any = None,
    priority: int = 0,
    run_at: datetime | None = None,
    created_at: datetime = T0,
    max_attempts: int = 3,
    timeout: float | None = None,
    key: str | None = None,
    id: uuid.UUID | None = None,
) -> NewJob:
    return NewJob(
        id=id or uuid.uuid4(),
        type=type,
        queue=queue,
        payload=payload,
        priority=priority,
        run_at=run_at or created_at,
        max_attempts=max_attempts,
        timeout=timeout,
        key=key,
        created_at=created_at,
    )


async def insert(store: Store, **options: Any) -> Job:
    [inserted] = await store.insert_jobs([new_job(**options)])
    assert inserted.created
    return inserted.job


async def claim(
    store: Store,
    queue: str = "default",
    *,
    owner: str = "daemon-1",
    free: int = 100,
    limit: int = 1000,
    now: datetime = T0,
) -> list[Job]:
    return await store.claim_jobs(owner, [QueueSlots(queue, free)], limit, now, now + LEASE)


async def running(store: Store, *, owner: str = "daemon-1", now: datetime = T0, **options: Any) -> Job:
    job = await insert(store, **options)
    claimed = await claim(store, job.queue, owner=owner, now=now)
    [mine] = [found for found in claimed if found.id == job.id]
    return mine


def completion(job: Job, outcome: Outcome, *, owner: str = "daemon-1", **fields: Any) -> Completion:
    return Completion(job.id, owner, job.attempts, outcome, **fields)


async def finish(store: Store, job: Job, outcome: Outcome, now: datetime = T0, **fields: Any) -> Job:
    assert await store.complete_jobs([completion(job, outcome, **fields)], now) == [True]
    return await current(store, job)


async def current(store: Store, job: Job) -> Job:
    found = await store.get_job(job.id)
    assert found is not None
    return found


async def reach(store: Store, state: JobState, **options: Any) -> Job:
    """A new job in `state`, by the ordinary road."""
    if state == JobState.SCHEDULED:
        return await insert(store, run_at=at(3600), **options)
    if state == JobState.PENDING:
        return await insert(store, **options)
    if state == JobState.WAITING:  # on a pending parent; due an hour after T0
        parent = await insert(store)
        child = replace(new_job(run_at=at(3600), **options), after=(parent.id,))
        [inserted] = await store.insert_jobs([child])
        return inserted.job
    job = await running(store, **options)
    outcome = {
        JobState.RUNNING: None,
        JobState.COMPLETED: Outcome.COMPLETED,
        JobState.FAILED: Outcome.FAILED,
        JobState.CANCELLED: Outcome.CANCELLED,
    }[state]
    return job if outcome is None else await finish(store, job, outcome, error="boom")


def nonzero(counts: Any) -> dict[str, dict[JobState, int]]:
    out = {queue: {state: n for state, n in per.items() if n} for queue, per in counts.items()}
    return {queue: per for queue, per in out.items() if per}


# -- insert and get ----------------------------------------------------------------------


async def test_insert_one_job_and_get_it(store: Store) -> None:
    new = new_job(type="mail.send", queue="mail", payload={"to": "a@b"}, priority=3, timeout=12.5, key="k1")
    [inserted] = await store.insert_jobs([new])
    job = inserted.job
    assert inserted.created
    assert (job.id, job.type, job.queue, job.payload) == (new.id, "mail.send", "mail", {"to": "a@b"})
    assert (job.priority, job.timeout, job.key, job.max_attempts) == (3, 12.5, "k1", 3)
    assert job.state == JobState.PENDING
    assert job.attempts == 0
    assert job.run_at == job.created_at == job.updated_at == T0
    assert job.started_at is job.finished_at is job.last_error is job.result is job.progress is None
    assert await store.get_job(new.id) == job


async def test_get_unknown_job_is_none(store: Store) -> None:
    assert await store.get_job(uuid.uuid4()) is None


async def test_insert_scheduled_only_when_run_at_is_later(store: Store) -> None:
    later = await insert(store, run_at=at(1))
    same = await insert(store, run_at=T0)
    earlier = await insert(store, run_at=at(-60))
    assert later.state == JobState.SCHEDULED
    assert same.state == earlier.state == JobState.PENDING
    assert earlier.run_at == at(-60)


async def test_insert_batch_keeps_order(store: Store) -> None:
    batch = [new_job(payload=i) for i in range(20)]
    inserted = await store.insert_jobs(batch)
    assert [result.job.id for result in inserted] == [new.id for new in batch]
    assert [result.job.payload for result in inserted] == list(range(20))
    assert all(result.created for result in inserted)


async def test_insert_empty_batch(store: Store) -> None:
    assert await store.insert_jobs([]) == []


async def test_insert_batch_is_all_or_nothing(store: Store) -> None:
    existing = await insert(store, payload="old")
    first, second = new_job(key="fresh"), new_job()
    with pytest.raises(JobdError):
        # The third item reuses an id: nothing of the batch may remain.
        await store.insert_jobs([first, second, new_job(id=first.id)])
    with pytest.raises(JobdError):
        await store.insert_jobs([new_job(), new_job(id=existing.id, payload="new")])
    assert await store.get_job(first.id) is None
    assert await store.get_job(second.id) is None
    assert await current(store, existing) == existing
    assert nonzero(await store.count_jobs()) == {"default": {JobState.PENDING: 1}}
    # The key of the rolled-back item was never taken.
    assert (await store.insert_jobs([new_job(key="fresh")]))[0].created


PAYLOADS = [
    None,
    True,
    False,
    0,
    -17,
    2**53 + 1,
    3.25,
    -1.5e-300,
    "",
    "plain",
    'héllo ✓ 日本語 🎉 "quoted" \\ back\nslash',
    [],
    {},
    [1, "two", None, [3.5, {"four": [True]}]],
    {"nested": {"deeper": {"list": [1, 2, {"k": "v"}], "empty": {}}}, "ünï": "cödé", "n": None},
]


@pytest.mark.parametrize("payload", PAYLOADS, ids=[f"payload{i}" for i in range(len(PAYLOADS))])
async def test_json_payload_and_result_round_trip(store: Store, payload: Any) -> None:
    job = await insert(store, payload=payload)
    assert (await current(store, job)).payload == payload
    claimed = await running(store, payload=payload)
    done = await finish(store, claimed, Outcome.COMPLETED, result=payload)
    assert done.result == payload
    assert (await current(store, done)).result == payload


async def test_timestamps_round_trip_exactly(store: Store) -> None:
    created = datetime(2031, 2, 3, 4, 5, 6, 999999, tzinfo=UTC)
    run_at = datetime(2031, 2, 3, 4, 5, 7, 1, tzinfo=UTC)
    job = await insert(store, created_at=created, run_at=run_at)
    stored = await current(store, job)
    assert (stored.created_at, stored.updated_at, stored.run_at) == (created, created, run_at)
    assert stored.run_at.utcoffset() == timedelta(0)
    assert stored.run_at.microsecond == 1
    old = await insert(store, created_at=datetime(1970, 1, 1, 0, 0, 0, 1, tzinfo=UTC))
    assert (await current(store, old)).created_at == datetime(1970, 1, 1, 0, 0, 0, 1, tzinfo=UTC)
    start = datetime(2031, 2, 3, 4, 5, 8, 424242, tzinfo=UTC)
    [claimed] = await claim(store, now=start)
    assert claimed.started_at == start
    assert (await current(store, claimed)).started_at == start


# -- idempotency keys --------------------------------------------------------------------


async def test_live_key_returns_the_existing_job(store: Store) -> None:
    claimed = await running(store, key="busy")
    first = await insert(store, key="once", payload=1)
    [again] = await store.insert_jobs([new_job(key="once", payload=2)])
    assert not again.created
    assert again.job == first
    scheduled = await insert(store, key="later", run_at=at(60))
    assert not (await store.insert_jobs([new_job(key="later")]))[0].created
    [busy] = await store.insert_jobs([new_job(key="busy")])
    assert (busy.created, busy.job.id, busy.job.state) == (False, claimed.id, JobState.RUNNING)
    assert nonzero(await store.count_jobs()) == {
        "default": {JobState.PENDING: 1, JobState.SCHEDULED: 1, JobState.RUNNING: 1}
    }
    assert scheduled.key == "later"


async def test_key_repeated_within_one_batch(store: Store) -> None:
    one, two, other = new_job(key="dup", payload=1), new_job(key="dup", payload=2), new_job(key="other")
    results = await store.insert_jobs([one, two, other])
    assert [result.created for result in results] == [True, False, True]
    assert results[1].job.id == one.id
    assert await store.get_job(two.id) is None


@pytest.mark.parametrize("outcome", [Outcome.COMPLETED, Outcome.FAILED, Outcome.CANCELLED])
async def test_key_is_free_again_once_its_job_finished(store: Store, outcome: Outcome) -> None:
    first = await running(store, key="reuse")
    await finish(store, first, outcome)
    [second] = await store.insert_jobs([new_job(key="reuse")])
    assert second.created
    assert second.job.id != first.id


async def test_key_is_free_after_a_waiting_job_is_cancelled(store: Store) -> None:
    first = await insert(store, key="reuse")
    await store.cancel_job(first.id, at(1))
    assert (await store.insert_jobs([new_job(key="reuse")]))[0].created


# -- claim -------------------------------------------------------------------------------


async def test_claim_order_is_priority_then_run_at_then_submission(store: Store) -> None:
    created = at(100)  # every run_at is due, so all start pending
    low_early = await insert(store, priority=0, run_at=at(1), created_at=created)
    high_late = await insert(store, priority=5, run_at=at(50), created_at=created)
    high_early = await insert(store, priority=5, run_at=at(10), created_at=created)
    negative = await insert(store, priority=-3, run_at=at(0), created_at=created)
    low_late = await insert(store, priority=0, run_at=at(20), created_at=created)
    claimed = await claim(store, now=at(100))
    assert [job.id for job in claimed] == [
        job.id for job in (high_early, high_late, low_early, low_late, negative)
    ]


async def test_equal_jobs_come_out_in_submission_order(store: Store) -> None:
    batches = [[new_job(payload=i * 40 + j) for j in range(40)] for i in range(3)]
    for batch in batches:
        await store.insert_jobs(batch)
    claimed: list[Job] = []
    while taken := await claim(store, free=7):
        claimed.extend(taken)
    assert [job.payload for job in claimed] == list(range(120))


async def test_claim_sets_attempt_start_and_owner(store: Store) -> None:
    job = await insert(store, run_at=at(-5))
    [claimed] = await claim(store, owner="daemon-9", now=at(2))
    assert claimed.id == job.id
    assert claimed.state == JobState.RUNNING
    assert claimed.attempts == 1
    assert claimed.started_at == claimed.updated_at == at(2)
    assert claimed.run_at == at(-5)
    assert await current(store, claimed) == claimed
    assert await store.renew_leases("daemon-9", [job.id], at(60)) == {job.id}
    assert await store.renew_leases("daemon-1", [job.id], at(60)) == set()


async def test_claim_takes_only_pending_jobs_of_the_named_queues(store: Store) -> None:
    await insert(store, run_at=at(60))  # scheduled
    await reach(store, JobState.COMPLETED)
    await reach(store, JobState.FAILED)
    other = await insert(store, queue="other")
    mine = await insert(store)
    claimed = await claim(store, now=at(1))
    assert [job.id for job in claimed] == [mine.id]
    assert (await current(store, other)).state == JobState.PENDING
    assert await store.claim_jobs("daemon-1", [], 10, T0, at(30)) == []
    assert await claim(store, "nowhere") == []


async def test_claim_honours_free_slots_per_queue(store: Store) -> None:
    for _ in range(5):
        await insert(store, queue="a")
        await insert(store, queue="b")
    slots = [QueueSlots("a", 2), QueueSlots("b", 0)]
    claimed = await store.claim_jobs("daemon-1", slots, 10, T0, at(30))
    assert [job.queue for job in claimed] == ["a", "a"]
    claimed = await store.claim_jobs("daemon-1", [QueueSlots("a", 1), QueueSlots("b", 3)], 10, T0, at(30))
    assert sorted(job.queue for job in claimed) == ["a", "b", "b", "b"]


async def test_claim_limit_takes_the_first_in_claim_order_across_queues(store: Store) -> None:
    low = await insert(store, queue="a", priority=1)
    high = await insert(store, queue="b", priority=9)
    middle = await insert(store, queue="a", priority=5)
    slots = [QueueSlots("a", 10), QueueSlots("b", 10)]
    assert [job.id for job in await store.claim_jobs("d", slots, 2, T0, at(30))] == [high.id, middle.id]
    assert await store.claim_jobs("d", slots, 0, T0, at(30)) == []
    assert [job.id for job in await store.claim_jobs("d", slots, 5, T0, at(30))] == [low.id]


async def test_claim_order_across_queues(store: Store) -> None:
    a_old = await insert(store, queue="a", created_at=at(-10))
    b_high = await insert(store, queue="b", priority=2)
    a_new = await insert(store, queue="a")
    slots = [QueueSlots("a", 10), QueueSlots("b", 10)]
    claimed = await store.claim_jobs("d", slots, 10, T0, at(30))
    assert [job.id for job in claimed] == [b_high.id, a_old.id, a_new.id]


async def test_claim_honours_global_limit(store: Store) -> None:
    for _ in range(6):
        await insert(store, queue="limited")
    await claim(store, "limited", owner="daemon-2", free=2)
    slot = QueueSlots("limited", free=5, global_limit=3)
    claimed = await store.claim_jobs("daemon-1", [slot], 10, T0, at(30))
    assert len(claimed) == 1
    assert await store.claim_jobs("daemon-1", [slot], 10, T0, at(30)) == []
    full = QueueSlots("limited", free=5, global_limit=2)
    assert await store.claim_jobs("daemon-3", [full], 10, T0, at(30)) == []


async def test_paused_queue_is_skipped_until_resumed(store: Store) -> None:
    await insert(store, queue="held")
    await insert(store, queue="open")
    await store.set_queue_paused("held", True)
    slots = [QueueSlots("held", 10), QueueSlots("open", 10)]
    assert [job.queue for job in await store.claim_jobs("d", slots, 10, T0, at(30))] == ["open"]
    assert await store.claim_jobs("d", slots, 10, T0, at(30)) == []
    await store.set_queue_paused("held", False)
    assert [job.queue for job in await store.claim_jobs("d", slots, 10, T0, at(30))] == ["held"]


async def test_paused_queues_round_trip(store: Store) -> None:
    assert await store.paused_queues() == frozenset()
    await store.set_queue_paused("a", True)
    await store.set_queue_paused("b", True)
    await store.set_queue_paused("a", True)
    assert await store.paused_queues() == {"a", "b"}
    await store.set_queue_paused("a", False)
    await store.set_queue_paused("never-paused", False)
    assert await store.paused_queues() == {"b"}


async def test_claim_clears_progress_of_an_earlier_attempt(store: Store) -> None:
    job = await running(store)
    assert await store.set_progress(job.id, "daemon-1", 1, Progress(0.5, "half"), at(1))
    await finish(store, job, Outcome.REQUEUED, now=at(2))
    [again] = await claim(store, now=at(3))
    assert again.progress is None
    assert again.attempts == 1


# -- complete ----------------------------------------------------------------------------


async def test_complete_with_result(store: Store) -> None:
    job = await running(store)
    done = await finish(store, job, Outcome.COMPLETED, now=at(5), result={"ok": [1, 2]})
    assert done.state == JobState.COMPLETED
    assert done.result == {"ok": [1, 2]}
    assert done.finished_at == done.updated_at == at(5)
    assert done.started_at == T0
    assert done.attempts == 1
    assert await current(store, job) == done


async def test_retried_goes_back_to_scheduled(store: Store) -> None:
    job = await running(store)
    retried = await finish(store, job, Outcome.RETRIED, now=at(5), error="flaky", run_at=at(65))
    assert retried.state == JobState.SCHEDULED
    assert (retried.run_at, retried.last_error, retried.attempts) == (at(65), "flaky", 1)
    assert retried.finished_at is None
    assert await current(store, job) == retried
    assert await store.promote_due_jobs(at(64)) == at(65)
    assert await store.promote_due_jobs(at(65)) is None
    [again] = await claim(store, now=at(66))
    assert (again.id, again.attempts) == (job.id, 2)


@pytest.mark.parametrize(
    ("outcome", "state"), [(Outcome.FAILED, JobState.FAILED), (Outcome.CANCELLED, JobState.CANCELLED)]
)
async def test_failed_and_cancelled_are_final(store: Store, outcome: Outcome, state: JobState) -> None:
    job = await running(store)
    done = await finish(store, job, outcome, now=at(5), error="it broke")
    assert done.state == state
    assert (done.last_error, done.finished_at, done.updated_at) == ("it broke", at(5), at(5))
    assert await current(store, job) == done
    assert await claim(store, now=at(6)) == []


async def test_requeued_gives_the_attempt_back(store: Store) -> None:
    job = await running(store)
    requeued = await finish(store, job, Outcome.REQUEUED, now=at(5))
    assert requeued.state == JobState.PENDING
    assert requeued.attempts == 0
    assert requeued.run_at == at(5)
    assert requeued.finished_at is None
    [again] = await claim(store, now=at(6))
    assert again.attempts == 1


async def test_completions_are_batched_and_independent(store: Store) -> None:
    a, b = await running(store), await running(store)
    stranger = await running(store, owner="daemon-2")
    results = await store.complete_jobs(
        [
            completion(a, Outcome.COMPLETED, result=1),
            completion(stranger, Outcome.COMPLETED),  # not ours
            completion(b, Outcome.FAILED, error="no"),
            completion(a, Outcome.FAILED),  # already completed above
        ],
        at(1),
    )
    assert results == [True, False, True, False]
    assert (await current(store, a)).state == JobState.COMPLETED
    assert (await current(store, b)).state == JobState.FAILED
    assert (await current(store, stranger)).state == JobState.RUNNING
    assert await store.complete_jobs([], at(1)) == []


async def test_completions_and_a_claim_share_one_call_and_the_fence_still_holds(store: Store) -> None:
    mine, theirs = await running(store), await running(store, owner="daemon-2")
    later = await insert(store, payload="later")
    first = await insert(store, payload="first", priority=5)
    request = ClaimRequest("daemon-1", [QueueSlots("default", 5)], 1, at(1) + LEASE)
    result = await store.complete_and_claim_jobs(
        [
            completion(mine, Outcome.COMPLETED, result="done"),
            completion(theirs, Outcome.COMPLETED, result="not mine to finish"),
        ],
        request,
        at(1),
    )
    assert result.applied == [True, False]
    assert [job.id for job in result.claimed] == [first.id]  # the best pending job, within the limit
    [claimed] = result.claimed
    assert (claimed.state, claimed.attempts, claimed.started_at) == (JobState.RUNNING, 1, at(1))
    done = await current(store, mine)
    assert (done.state, done.result, done.finished_at) == (JobState.COMPLETED, "done", at(1))
    assert (await current(store, theirs)).state == JobState.RUNNING
    assert (await current(store, later)).state == JobState.PENDING
    # A late completion of the job just claimed is fenced out too, in the same kind of call.
    stale = Completion(claimed.id, "daemon-1", claimed.attempts + 1, Outcome.COMPLETED)
    result = await store.complete_and_claim_jobs([stale], request, at(2))
    assert result.applied == [False]
    assert [job.id for job in result.claimed] == [later.id]


async def test_insert_and_claim_inserts_then_claims_the_best_pending_jobs(store: Store) -> None:
    older = await insert(store, priority=5)
    new = new_job(payload="new")
    request = ClaimRequest("daemon-1", [QueueSlots("default", 5)], 1, at(1) + LEASE)
    result = await store.insert_and_claim_jobs([new], request, at(1))
    assert [(item.job.id, item.created, item.job.state) for item in result.inserted] == [
        (new.id, True, JobState.PENDING)
    ]
    assert [job.id for job in result.claimed] == [older.id]  # claim order, not the newest
    assert (await current(store, older)).state == JobState.RUNNING
    stored = await store.get_job(new.id)
    assert stored is not None and stored.state == JobState.PENDING
    # Next time the new job is the best one, claimed in the same call as its successor.
    result = await store.insert_and_claim_jobs([new_job()], request, at(2))
    assert [job.id for job in result.claimed] == [new.id]


async def test_insert_and_claim_ranks_new_jobs_with_those_already_pending(store: Store) -> None:
    # At equal priority and run_at the job already there goes first, then the batch in
    # its order; a queue's free slots bound what is taken of it.
    there = await insert(store)
    batch = [new_job(payload=n) for n in range(3)]
    urgent, later = new_job(queue="other", priority=9), new_job(run_at=at(3600))
    slots = [QueueSlots("default", 2), QueueSlots("other", 5)]
    request = ClaimRequest("daemon-1", slots, 5, at(1) + LEASE)
    result = await store.insert_and_claim_jobs([*batch, urgent, later], request, at(1))
    assert [job.id for job in result.claimed] == [urgent.id, there.id, batch[0].id]
    states = {job.id: (await current(store, job)).state for job in [there, *batch, urgent, later]}
    assert states == {
        there.id: JobState.RUNNING,
        batch[0].id: JobState.RUNNING,
        batch[1].id: JobState.PENDING,
        batch[2].id: JobState.PENDING,
        urgent.id: JobState.RUNNING,
        later.id: JobState.SCHEDULED,
    }
    # The claim's limit bounds the whole: the jobs already there, in submission order,
    # before a new batch.
    more = [new_job(payload=n) for n in range(3, 5)]
    request = ClaimRequest("daemon-1", [QueueSlots("default", 5)], 2, at(2) + LEASE)
    result = await store.insert_and_claim_jobs(more, request, at(2))
    assert [job.id for job in result.claimed] == [batch[1].id, batch[2].id]
    assert [job.id for job in await claim(store, now=at(3))] == [more[0].id, more[1].id]


async def test_a_new_job_the_submit_claims_is_running_as_any_claim_leaves_it(store: Store) -> None:
    new = new_job(payload={"n": 1})
    request = ClaimRequest("daemon-1", [QueueSlots("default", 5)], 5, at(1) + LEASE)
    [claimed] = (await store.insert_and_claim_jobs([new], request, at(1))).claimed
    stored = await store.get_job(new.id)
    assert stored == claimed
    assert (claimed.id, claimed.state, claimed.attempts, claimed.payload) == (
        new.id,
        JobState.RUNNING,
        1,
        {"n": 1},
    )
    assert (claimed.started_at, claimed.updated_at, claimed.created_at) == (at(1), at(1), T0)
    # Its lease and its fence are the claim's: another owner's outcome is refused, and
    # once the lease has run out the rescue puts it back.
    stale = Completion(new.id, "daemon-2", 1, Outcome.COMPLETED)
    assert await store.complete_jobs([stale], at(2)) == [False]
    [rescued] = await store.rescue_jobs(at(1) + LEASE + timedelta(seconds=1))
    assert (rescued.job.id, rescued.owner, rescued.job.state) == (new.id, "daemon-1", JobState.PENDING)
    [again] = await claim(store, owner="daemon-2", now=at(40))
    assert (again.id, again.attempts) == (new.id, 2)
    assert await store.complete_jobs(
        [Completion(new.id, "daemon-2", 2, Outcome.COMPLETED, "ok")], at(41)
    ) == [True]


async def test_insert_and_claim_claims_nothing_from_a_paused_queue_or_past_its_limit(store: Store) -> None:
    await store.set_queue_paused("held", True)
    request = ClaimRequest("daemon-1", [QueueSlots("held", 5)], 5, at(1) + LEASE)
    result = await store.insert_and_claim_jobs([new_job(queue="held")], request, at(1))
    assert result.claimed == [] and result.inserted[0].created
    limited = ClaimRequest("daemon-1", [QueueSlots("capped", 5, global_limit=1)], 5, at(1) + LEASE)
    two = [new_job(queue="capped"), new_job(queue="capped")]
    result = await store.insert_and_claim_jobs(two, limited, at(1))
    assert len(result.claimed) == 1
    assert nonzero(await store.count_jobs())["capped"] == {JobState.RUNNING: 1, JobState.PENDING: 1}


async def test_an_id_already_taken_fails_the_whole_batch_naming_its_index(store: Store) -> None:
    taken = await insert(store)
    batch = [new_job(payload=0), new_job(payload=1), new_job(id=taken.id), new_job(payload=3)]
    with pytest.raises(InvalidJob, match=f"a job with id {taken.id} already exists") as raised:
        await store.insert_jobs(batch)
    assert (raised.value.field, raised.value.index) == ("id", 2)
    assert [await store.get_job(new.id) for new in batch[:2] + batch[3:]] == [None, None, None]
    assert nonzero(await store.count_jobs()) == {"default": {JobState.PENDING: 1}}


async def test_chunks_are_inserted_in_order_and_answered_as_insert_jobs_answers(store: Store) -> None:
    first = [new_job(payload=i, priority=i) for i in range(3)]
    second = [new_job(payload=3, run_at=at(60)), new_job(payload=4)]
    inserted = await store.insert_job_chunks(iter([first, [], second]))  # an empty chunk adds nothing
    assert [item.job.id for item in inserted] == [new.id for new in first + second]
    assert all(item.created for item in inserted)
    assert [item.job for item in inserted] == [await store.get_job(new.id) for new in first + second]
    assert nonzero(await store.count_jobs())["default"] == {JobState.PENDING: 4, JobState.SCHEDULED: 1}
    assert await store.insert_job_chunks(iter([])) == []


async def test_every_value_of_a_chunked_job_comes_back_as_it_went_in(store: Store) -> None:
    odd = 'q "quoted" \\ back\tslash\u0001 ✓ 日本語 🎉'
    jobs = [
        replace(
            new_job(type=odd, queue=odd, payload=payload, priority=-(2**31) + 1, timeout=1e-05),
            schedule=odd,
            scheduled_for=datetime(2031, 2, 3, 4, 5, 6, 999999, tzinfo=UTC),
            traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )
        for payload in PAYLOADS
    ]
    inserted = await store.insert_job_chunks(iter([jobs[:3], jobs[3:]]))
    assert [item.job for item in inserted] == [new.inserted() for new in jobs]
    assert [await store.get_job(new.id) for new in jobs] == [new.inserted() for new in jobs]


async def test_an_error_while_the_chunks_are_made_leaves_none_of_them(store: Store) -> None:
    first = [new_job(payload=i) for i in range(3)]

    def chunks() -> Iterator[list[NewJob]]:
        yield first
        raise InvalidJob("payload refused", field="payload", index=4)

    with pytest.raises(InvalidJob, match="payload refused") as raised:
        await store.insert_job_chunks(chunks())
    assert raised.value.index == 4
    assert [await store.get_job(new.id) for new in first] == [None, None, None]
    assert nonzero(await store.count_jobs()) == {}
    assert (await insert(store)).state == JobState.PENDING  # the store is as usable as before


async def test_a_taken_id_in_a_later_chunk_is_named_by_its_index_in_the_batch(store: Store) -> None:
    taken = await insert(store)
    chunks = [[new_job(), new_job()], [new_job(), new_job(id=taken.id)]]
    with pytest.raises(InvalidJob, match=f"a job with id {taken.id} already exists") as raised:
        await store.insert_job_chunks(iter(chunks))
    assert (raised.value.field, raised.value.index) == ("id", 3)
    assert nonzero(await store.count_jobs()) == {"default": {JobState.PENDING: 1}}


async def test_chunks_take_only_jobs_that_stand_alone(store: Store) -> None:
    plain = new_job()
    for other in (new_job(key="k"), replace(new_job(), after=(plain.id,))):
        with pytest.raises(ValueError, match="has a key or parents"):
            await store.insert_job_chunks(iter([[plain], [other]]))
    assert nonzero(await store.count_jobs()) == {}


async def test_insert_and_claim_is_all_or_nothing_and_keeps_keys(store: Store) -> None:
    existing = await insert(store, key="held")
    request = ClaimRequest("daemon-1", [QueueSlots("default", 5)], 5, at(1) + LEASE)
    fresh = new_job()
    with pytest.raises(InvalidJob, match="already exists"):
        await store.insert_and_claim_jobs([fresh, new_job(id=existing.id)], request, at(1))
    assert await store.get_job(fresh.id) is None
    assert (await current(store, existing)).state == JobState.PENDING  # the failed call claimed nothing
    result = await store.insert_and_claim_jobs([new_job(key="held")], request, at(1))
    assert (result.inserted[0].created, result.inserted[0].job.id) == (False, existing.id)


async def test_completing_and_claiming_together_never_exceeds_a_global_limit(store: Store) -> None:
    first = await running(store, queue="limited")
    waiting = [await insert(store, queue="limited") for _ in range(3)]
    request = ClaimRequest("daemon-1", [QueueSlots("limited", 10, global_limit=1)], 10, at(1) + LEASE)
    result = await store.complete_and_claim_jobs([completion(first, Outcome.COMPLETED)], request, at(1))
    assert result.applied == [True]
    # The claim may not yet see the room the completion made, but never takes more.
    assert len(result.claimed) <= 1
    if not result.claimed:
        result = await store.complete_and_claim_jobs([], request, at(1))
    assert len(result.claimed) == 1 and result.claimed[0].id == waiting[0].id
    assert nonzero(await store.count_jobs())["limited"][JobState.RUNNING] == 1
    assert (await store.complete_and_claim_jobs([], request, at(2))).claimed == []


async def test_a_call_with_nothing_to_complete_or_claim_changes_nothing(store: Store) -> None:
    job = await insert(store)
    result = await store.complete_and_claim_jobs([], ClaimRequest("daemon-1", [], 10, at(1) + LEASE), at(1))
    assert (result.applied, result.claimed) == ([], [])
    assert await current(store, job) == job


async def test_completion_is_fenced_by_owner_and_attempt(store: Store) -> None:
    job = await running(store)
    before = await current(store, job)
    wrong_owner = Completion(job.id, "daemon-2", job.attempts, Outcome.COMPLETED)
    wrong_attempt = Completion(job.id, "daemon-1", job.attempts + 1, Outcome.COMPLETED)
    unknown = Completion(uuid.uuid4(), "daemon-1", 1, Outcome.COMPLETED)
    assert await store.complete_jobs([wrong_owner, wrong_attempt, unknown], at(1)) == [False, False, False]
    assert await current(store, job) == before
    assert not await store.set_progress(job.id, "daemon-2", job.attempts, Progress(0.1), at(1))
    assert not await store.set_progress(job.id, "daemon-1", job.attempts + 1, Progress(0.1), at(1))
    assert await current(store, job) == before


async def test_completion_after_rescue_and_reclaim_is_refused(store: Store) -> None:
    job = await running(store, owner="daemon-1", now=T0)
    [rescued] = await store.rescue_jobs(T0 + LEASE + timedelta(seconds=1))
    assert rescued.owner == "daemon-1"
    [reclaimed] = await claim(store, owner="daemon-2", now=at(40))
    assert (reclaimed.id, reclaimed.attempts) == (job.id, 2)
    late = Completion(job.id, "daemon-1", 1, Outcome.COMPLETED, result="stale")
    same_attempt_number = Completion(job.id, "daemon-1", 2, Outcome.COMPLETED, result="stale")
    assert await store.complete_jobs([late, same_attempt_number], at(41)) == [False, False]
    assert not await store.set_progress(job.id, "daemon-1", 1, Progress(0.9), at(41))
    assert await current(store, job) == reclaimed
    done = await finish(store, reclaimed, Outcome.COMPLETED, owner="daemon-2", now=at(42), result="fresh")
    assert done.result == "fresh"


# -- leases, progress, rescue ------------------------------------------------------------


async def test_renew_leases_keeps_only_our_running_jobs(store: Store) -> None:
    mine = [await running(store) for _ in range(2)]
    theirs = await running(store, owner="daemon-2")
    done = await reach(store, JobState.COMPLETED)
    ids = [job.id for job in mine] + [theirs.id, done.id, uuid.uuid4()]
    assert await store.renew_leases("daemon-1", ids, at(120)) == {job.id for job in mine}
    assert await store.renew_leases("daemon-1", [], at(120)) == set()
    # The renewed leases outlive the first one; the other owner's did not get renewed.
    rescued = await store.rescue_jobs(at(60))
    assert [(r.job.id, r.owner) for r in rescued] == [(theirs.id, "daemon-2")]
    assert {r.job.id for r in await store.rescue_jobs(at(121))} == {job.id for job in mine}


async def test_set_progress_while_fenced_in(store: Store) -> None:
    job = await running(store)
    assert await store.set_progress(job.id, "daemon-1", 1, Progress(0.25, "a quarter ✓"), at(3))
    stored = await current(store, job)
    assert stored.progress == Progress(0.25, "a quarter ✓")
    assert stored.updated_at == at(3)
    assert await store.set_progress(job.id, "daemon-1", 1, Progress(1.0), at(4))
    assert (await current(store, job)).progress == Progress(1.0, None)
    await finish(store, job, Outcome.COMPLETED)
    assert not await store.set_progress(job.id, "daemon-1", 1, Progress(0.5), at(5))
    assert not await store.set_progress(uuid.uuid4(), "daemon-1", 1, Progress(0.5), at(5))


async def test_rescue_expired_lease_requeues_with_an_error_naming_the_owner(store: Store) -> None:
    job = await running(store, owner="host-a:123", max_attempts=3)
    [rescued] = await store.rescue_jobs(at(31))
    assert rescued.owner == "host-a:123"
    assert rescued.job.id == job.id
    assert rescued.job.state == JobState.PENDING
    assert rescued.job.attempts == 1
    assert rescued.job.run_at == rescued.job.updated_at == at(31)
    assert rescued.job.finished_at is None
    assert rescued.job.last_error is not None and "host-a:123" in rescued.job.last_error
    assert await current(store, job) == rescued.job
    assert await store.renew_leases("host-a:123", [job.id], at(90)) == set()


async def test_rescue_of_the_last_attempt_fails_the_job(store: Store) -> None:
    job = await running(store, max_attempts=1)
    [rescued] = await store.rescue_jobs(at(31))
    assert rescued.job.state == JobState.FAILED
    assert rescued.job.finished_at == at(31)
    assert "daemon-1" in (rescued.job.last_error or "")
    assert (await current(store, job)).state == JobState.FAILED


async def test_rescue_of_a_cancel_requested_job_cancels_it(store: Store) -> None:
    job = await running(store)
    await store.cancel_job(job.id, at(1))
    [rescued] = await store.rescue_jobs(at(31))
    assert rescued.job.state == JobState.CANCELLED
    assert rescued.job.finished_at == at(31)
    assert await store.cancel_requests("daemon-1") == set()


async def test_rescue_leaves_unexpired_leases_alone(store: Store) -> None:
    job = await running(store)  # lease until T0 + 30s
    waiting = await insert(store)
    assert await store.rescue_jobs(at(29)) == []
    assert await store.rescue_jobs(at(30)) == []  # expires only once the lease is over
    assert (await current(store, job)).state == JobState.RUNNING
    assert (await current(store, waiting)).state == JobState.PENDING
    assert len(await store.rescue_jobs(at(30.5))) == 1


async def test_rescue_all_running_takes_every_running_job(store: Store) -> None:
    ids = {(await running(store, owner=owner)).id for owner in ("daemon-1", "daemon-2")}
    await insert(store)
    await store.renew_leases("daemon-1", list(ids), at(3600))
    rescued = await store.rescue_jobs(at(1), all_running=True)
    assert {r.job.id for r in rescued} == ids
    assert {r.owner for r in rescued} == {"daemon-1", "daemon-2"}
    assert all(r.job.state == JobState.PENDING for r in rescued)


# -- cancel and retry --------------------------------------------------------------------


@pytest.mark.parametrize("state", [JobState.PENDING, JobState.SCHEDULED])
async def test_cancel_waiting_job_is_immediate(store: Store, state: JobState) -> None:
    job = await reach(store, state)
    cancelled = await store.cancel_job(job.id, at(7))
    assert cancelled.state == JobState.CANCELLED
    assert cancelled.finished_at == cancelled.updated_at == at(7)
    assert await current(store, job) == cancelled
    assert await claim(store, now=at(3600)) == []


async def test_cancel_running_job_is_requested_then_finished_by_its_owner(store: Store) -> None:
    job = await running(store)
    other = await running(store, owner="daemon-2")
    requested = await store.cancel_job(job.id, at(3))
    assert requested.state == JobState.RUNNING
    assert requested.finished_at is None
    assert await store.cancel_requests("daemon-1") == {job.id}
    assert await store.cancel_requests("daemon-2") == set()
    assert (await store.cancel_job(job.id, at(4))).state == JobState.RUNNING  # asking twice is harmless
    done = await finish(store, job, Outcome.CANCELLED, now=at(5), error="cancelled by request")
    assert done.state == JobState.CANCELLED
    assert done.finished_at == at(5)
    assert await store.cancel_requests("daemon-1") == set()
    assert (await current(store, other)).state == JobState.RUNNING


async def test_a_requeue_is_refused_while_a_cancel_is_requested(store: Store) -> None:
    job = await running(store)
    other = await running(store)
    await store.cancel_job(job.id, at(1))  # e.g. through another daemon, during this one's shutdown
    both = [completion(job, Outcome.REQUEUED), completion(other, Outcome.REQUEUED)]
    assert await store.complete_jobs(both, at(2)) == [False, True]
    refused = await current(store, job)
    assert (refused.state, refused.attempts) == (JobState.RUNNING, 1)
    assert await store.cancel_requests("daemon-1") == {job.id}
    assert await claim(store, now=at(3)) == [await current(store, other)]  # only the requeued one
    done = await finish(store, job, Outcome.CANCELLED, now=at(4), error="cancelled")
    assert (done.state, done.finished_at) == (JobState.CANCELLED, at(4))
    assert await store.cancel_requests("daemon-1") == set()


async def test_a_requeue_is_refused_while_a_cancel_is_requested_in_a_claiming_call(store: Store) -> None:
    job = await running(store)
    await store.cancel_job(job.id, at(1))
    claim_request = ClaimRequest("daemon-1", [QueueSlots("default", 10)], 10, at(32))
    exchange = await store.complete_and_claim_jobs([completion(job, Outcome.REQUEUED)], claim_request, at(2))
    assert (exchange.applied, exchange.claimed) == ([False], [])
    assert (await current(store, job)).state == JobState.RUNNING


@pytest.mark.parametrize("state", [JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED])
async def test_cancel_finished_job_is_illegal(store: Store, state: JobState) -> None:
    job = await reach(store, state)
    with pytest.raises(IllegalTransition) as caught:
        await store.cancel_job(job.id, at(9))
    assert (caught.value.job_id, caught.value.state) == (str(job.id), state.value)
    assert await current(store, job) == job


async def test_cancel_and_retry_unknown_job(store: Store) -> None:
    missing = uuid.uuid4()
    with pytest.raises(JobNotFound) as caught:
        await store.cancel_job(missing, T0)
    assert caught.value.job_id == str(missing)
    with pytest.raises(JobNotFound):
        await store.retry_job(missing, T0)


@pytest.mark.parametrize("state", [JobState.FAILED, JobState.CANCELLED])
async def test_retry_dead_job(store: Store, state: JobState) -> None:
    job = await reach(store, state)
    retried = await store.retry_job(job.id, at(100))
    assert retried.state == JobState.PENDING
    assert retried.attempts == 0
    assert retried.run_at == retried.updated_at == at(100)
    assert retried.started_at is retried.finished_at is None
    assert await current(store, job) == retried
    [again] = await claim(store, now=at(101))
    assert (again.id, again.attempts) == (job.id, 1)


@pytest.mark.parametrize(
    "state", [JobState.SCHEDULED, JobState.PENDING, JobState.RUNNING, JobState.COMPLETED]
)
async def test_retry_is_illegal_unless_dead(store: Store, state: JobState) -> None:
    job = await reach(store, state)
    with pytest.raises(IllegalTransition) as caught:
        await store.retry_job(job.id, at(9))
    assert caught.value.state == state.value
    assert await current(store, job) == job


async def test_retry_refused_while_another_live_job_holds_the_key(store: Store) -> None:
    dead = await reach(store, JobState.FAILED, key="shared")
    holder = await insert(store, key="shared")
    with pytest.raises(KeyInUse) as caught:
        await store.retry_job(dead.id, at(1))
    assert (caught.value.job_id, caught.value.key) == (str(dead.id), "shared")
    assert await current(store, dead) == dead
    await store.cancel_job(holder.id, at(2))
    assert (await store.retry_job(dead.id, at(3))).state == JobState.PENDING
    [duplicate] = await store.insert_jobs([new_job(key="shared")])
    assert (duplicate.created, duplicate.job.id) == (False, dead.id)


# -- promote -----------------------------------------------------------------------------


async def test_promote_due_jobs_returns_the_next_run_at(store: Store) -> None:
    assert await store.promote_due_jobs(T0) is None
    jobs = [await insert(store, run_at=at(seconds)) for seconds in (30, 10, 20)]
    assert await store.promote_due_jobs(at(5)) == at(10)
    assert await store.promote_due_jobs(at(20)) == at(30)  # run_at == now is due
    states = [(await current(store, job)).state for job in jobs]
    assert states == [JobState.SCHEDULED, JobState.PENDING, JobState.PENDING]
    promoted = await current(store, jobs[1])
    assert promoted.updated_at == at(20)
    assert promoted.run_at == at(10)
    assert await store.promote_due_jobs(at(40)) is None
    assert [job.payload for job in await claim(store, now=at(41))] == [None] * 3


# -- list, count, prune ------------------------------------------------------------------


async def test_list_jobs_newest_first_with_filters(store: Store) -> None:
    specs = [("a", "q1"), ("b", "q1"), ("a", "q2"), ("b", "q2"), ("a", "q1")]
    jobs = [await insert(store, type=type_, queue=queue) for type_, queue in specs]
    await claim(store, "q2", free=1)  # jobs[2] runs

    async def ids(filter: JobFilter, limit: int = 50) -> list[uuid.UUID]:
        return [job.id for job in (await store.list_jobs(filter, limit, None)).jobs]

    assert await ids(JobFilter()) == [job.id for job in reversed(jobs)]
    assert await ids(JobFilter(type="a")) == [jobs[4].id, jobs[2].id, jobs[0].id]
    assert await ids(JobFilter(queue="q2")) == [jobs[3].id, jobs[2].id]
    assert await ids(JobFilter(state=JobState.RUNNING)) == [jobs[2].id]
    assert await ids(JobFilter(state=JobState.PENDING, queue="q1", type="a")) == [jobs[4].id, jobs[0].id]
    assert await ids(JobFilter(type="nothing")) == []
    assert await ids(JobFilter(), limit=2) == [jobs[4].id, jobs[3].id]
    page = await store.list_jobs(JobFilter(state=JobState.RUNNING), 10, None)
    assert page.jobs[0] == await current(store, jobs[2])
    assert page.next is None


@pytest.mark.parametrize(("total", "limit"), [(25, 7), (21, 7), (3, 10), (0, 5)])
async def test_list_jobs_cursor_pages_through_every_row_once(store: Store, total: int, limit: int) -> None:
    inserted = [result.job for result in await store.insert_jobs([new_job(payload=i) for i in range(total)])]
    seen: list[uuid.UUID] = []
    cursor: str | None = None
    for _ in range(total + 2):
        page = await store.list_jobs(JobFilter(), limit, cursor)
        assert len(page.jobs) <= limit
        seen.extend(job.id for job in page.jobs)
        cursor = page.next
        if cursor is None:
            break
        assert isinstance(cursor, str)
    assert cursor is None
    assert seen == [job.id for job in reversed(inserted)]


async def test_list_jobs_cursor_survives_new_and_deleted_rows(store: Store) -> None:
    jobs = [await running(store) for _ in range(4)]
    page = await store.list_jobs(JobFilter(), 2, None)
    assert page.next is not None
    await insert(store)  # newer than the cursor: not on later pages
    await finish(store, jobs[1], Outcome.COMPLETED, now=at(1))
    assert await store.prune_jobs({JobState.COMPLETED: at(2)}, 10, T0) == 1
    rest = await store.list_jobs(JobFilter(), 10, page.next)
    assert [job.id for job in rest.jobs] == [jobs[0].id]


@pytest.mark.parametrize("cursor", ["nope", "-1", "", "1.5", " 3", "0x10"])
async def test_list_jobs_bad_cursor(store: Store, cursor: str) -> None:
    await insert(store)
    with pytest.raises(ValueError):
        await store.list_jobs(JobFilter(), 10, cursor)


async def test_count_jobs_per_queue_and_state(store: Store) -> None:
    assert nonzero(await store.count_jobs()) == {}
    await reach(store, JobState.SCHEDULED, queue="a")
    await reach(store, JobState.PENDING, queue="a")
    await reach(store, JobState.PENDING, queue="a")
    await reach(store, JobState.RUNNING, queue="b")
    await reach(store, JobState.COMPLETED, queue="b")
    cancelled = await reach(store, JobState.PENDING, queue="b")
    await store.cancel_job(cancelled.id, T0)
    assert nonzero(await store.count_jobs()) == {
        "a": {JobState.SCHEDULED: 1, JobState.PENDING: 2},
        "b": {JobState.RUNNING: 1, JobState.COMPLETED: 1, JobState.CANCELLED: 1},
    }
    await store.prune_jobs({JobState.COMPLETED: at(1), JobState.CANCELLED: at(1)}, 10, T0)
    assert nonzero(await store.count_jobs()) == {
        "a": {JobState.SCHEDULED: 1, JobState.PENDING: 2},
        "b": {JobState.RUNNING: 1},
    }


async def listed_counts(store: Store) -> dict[str, dict[JobState, int]]:
    """Every stored job counted by queue and state, by listing them all."""
    counts: dict[str, dict[JobState, int]] = {}
    after = None
    while True:
        page = await store.list_jobs(JobFilter(), 1000, after)
        for job in page.jobs:
            per = counts.setdefault(job.queue, {})
            per[job.state] = per.get(job.state, 0) + 1
        if page.next is None:
            return counts
        after = page.next


async def listed_jobs(store: Store) -> list[Job]:
    return list((await store.list_jobs(JobFilter(), 1000, None)).jobs)


async def test_counts_follow_every_move_a_job_makes(store: Store) -> None:
    """count_jobs against the jobs themselves after each kind of write: insert, claim,
    each outcome, cancel, retry, promotion, rescue, a parent's end settling its
    children, and pruning."""

    async def check() -> None:
        assert nonzero(await store.count_jobs()) == await listed_counts(store)

    parent = await insert(store, queue="a")
    children = [replace(new_job(queue="b"), after=(parent.id,)) for _ in range(3)]
    await store.insert_jobs(children)
    for _ in range(4):
        await insert(store, queue="a", run_at=at(10))
    for _ in range(6):
        await insert(store, queue="b")
    await check()
    claimed = await claim(store, "a") + await claim(store, "b", free=5)
    await check()
    by_id = {job.id: job for job in claimed}
    outcomes = [Outcome.COMPLETED, Outcome.FAILED, Outcome.RETRIED, Outcome.CANCELLED, Outcome.REQUEUED]
    completions = [
        completion(job, outcome, error="e", run_at=at(5) if outcome == Outcome.RETRIED else None)
        for job, outcome in zip([by_id[parent.id], *claimed[1:]], outcomes, strict=False)
    ]
    assert all(await store.complete_jobs(completions, at(1)))
    await check()  # the parent completed: its children are pending now
    failed = [job for job in claimed if (await current(store, job)).state == JobState.FAILED]
    await store.retry_job(failed[0].id, at(2))
    await check()
    pending = [job for job in (await listed_jobs(store)) if job.state == JobState.PENDING]
    await store.cancel_job(pending[0].id, at(2))
    await check()
    await store.promote_due_jobs(at(20))
    await check()
    await claim(store, "a", now=at(21))
    await store.rescue_jobs(at(21) + LEASE * 2)
    await check()
    await store.prune_jobs(
        {JobState.COMPLETED: at(100), JobState.FAILED: at(100), JobState.CANCELLED: at(100)}, 100, at(100)
    )
    await check()
    assert JobState.COMPLETED not in (await listed_counts(store)).get("a", {})


TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


async def test_a_job_keeps_its_traceparent_through_its_life(store: Store) -> None:
    traced = replace(new_job(), traceparent=TRACEPARENT)
    [inserted] = await store.insert_jobs([traced])
    assert inserted.job.traceparent == TRACEPARENT
    assert (await current(store, inserted.job)).traceparent == TRACEPARENT
    [claimed] = await claim(store)
    assert claimed.traceparent == TRACEPARENT
    failed = await finish(store, claimed, Outcome.FAILED, error="boom")
    assert failed.traceparent == TRACEPARENT
    assert (await store.retry_job(failed.id, at(1))).traceparent == TRACEPARENT
    assert (await insert(store)).traceparent is None


async def oldest_pending(store: Store, queues: list[str]) -> dict[str, datetime]:
    """The oldest pending job's run_at of each queue that has one (`queue_activity`)."""
    activity = await store.queue_activity(queues, at(10_000))
    return {queue: flow.oldest_pending for queue, flow in activity.items() if flow.oldest_pending is not None}


async def test_oldest_pending_is_the_earliest_ready_time_per_queue(store: Store) -> None:
    assert await oldest_pending(store, ["a", "b"]) == {}
    await insert(store, queue="a", run_at=at(5), created_at=at(5), priority=9)
    await insert(store, queue="a", run_at=at(2), created_at=at(2))  # lower priority, waiting longer
    await insert(store, queue="a", run_at=at(3600))  # scheduled: not ready yet
    await running(store, queue="b")  # nothing pending in b
    await insert(store, queue="c", run_at=at(7), created_at=at(7))
    assert await oldest_pending(store, ["a", "b", "c"]) == {"a": at(2), "c": at(7)}
    assert await oldest_pending(store, ["c"]) == {"c": at(7)}
    assert await oldest_pending(store, []) == {}

    [first] = await claim(store, "a", limit=1)  # the higher priority goes first
    assert first.run_at == at(5)
    assert await oldest_pending(store, ["a"]) == {"a": at(2)}
    await claim(store, "a", limit=1)
    assert await oldest_pending(store, ["a"]) == {}


async def test_oldest_pending_follows_promotion_requeue_and_cancel(store: Store) -> None:
    due = await insert(store, run_at=at(10))
    await store.promote_due_jobs(at(20))
    assert await oldest_pending(store, ["default"]) == {"default": at(10)}  # ready since its run_at
    [job] = await claim(store, now=at(20))
    assert job.id == due.id
    await finish(store, job, Outcome.REQUEUED, now=at(30), error="shutdown")
    assert await oldest_pending(store, ["default"]) == {"default": at(30)}
    await store.cancel_job(job.id, at(31))
    assert await oldest_pending(store, ["default"]) == {}


async def test_oldest_pending_stays_on_a_job_that_waits_while_others_come_and_go(store: Store) -> None:
    await insert(store, run_at=at(1), created_at=at(1), priority=-1)
    for round in range(3):
        await store.insert_jobs([new_job(created_at=at(100 + round), priority=5) for _ in range(100)])
        assert len(await claim(store, limit=100, now=at(200))) == 100
    assert await oldest_pending(store, ["default"]) == {"default": at(1)}


async def test_queue_activity_finds_the_earliest_run_at_across_priorities(store: Store) -> None:
    for priority, seconds in [(5, 3), (0, 1), (0, 2), (-3, 5), (-3, 4), (7, 6)]:
        await insert(store, queue="a", priority=priority, run_at=at(seconds), created_at=at(seconds))
    await insert(store, queue="b", run_at=at(100))  # scheduled: not pending
    await running(store, queue="c")
    activity = await store.queue_activity(["a", "b", "c", "nowhere"], at(10))
    assert {name: found.oldest_pending for name, found in activity.items()} == {
        "a": at(1),
        "b": None,
        "c": None,
        "nowhere": None,
    }
    await claim(store, "a", limit=3)  # priorities 7, 5 and the earlier of the two 0s
    assert (await store.queue_activity(["a"], at(10)))["a"].oldest_pending == at(2)


async def test_queue_activity_counts_attempt_ends_of_the_ten_whole_seconds_before_now(store: Store) -> None:
    now = at(0)  # 12:30:15.123456: the window is 12:30:05 up to 12:30:15
    ends = [
        (Outcome.COMPLETED, at(-1)),
        (Outcome.COMPLETED, at(-10)),
        (Outcome.COMPLETED, at(-11)),
        (Outcome.COMPLETED, at(0.5)),
        (Outcome.FAILED, at(-2)),
        (Outcome.RETRIED, at(-3)),
        (Outcome.RETRIED, at(-3)),
        (Outcome.CANCELLED, at(-2)),
        (Outcome.REQUEUED, at(-2)),
    ]
    for outcome, when in ends:
        await finish(store, await running(store, queue="q"), outcome, when, run_at=when)
    rescued = await running(store, queue="q", max_attempts=1, now=at(-40))
    await store.rescue_jobs(at(-5))  # its last attempt: the job fails
    assert (await current(store, rescued)).state == JobState.FAILED
    other = await running(store, queue="other")
    await finish(store, other, Outcome.COMPLETED, at(-1))
    activity = await store.queue_activity(["q", "quiet"], now)
    assert dict(activity["q"].ended) == {Outcome.COMPLETED: 2, Outcome.FAILED: 2, Outcome.RETRIED: 2}
    assert sum(activity["quiet"].ended.values()) == 0


async def test_queue_activity_keeps_sixteen_seconds_in_a_ring(store: Store) -> None:
    for when in (at(-20), at(-20), at(-4), at(-20)):  # :55 and :11 share a slot; the late :55 is dropped
        await finish(store, await running(store), Outcome.COMPLETED, when)
    assert (await store.queue_activity(["default"], at(0)))["default"].ended[Outcome.COMPLETED] == 1
    assert (await store.queue_activity(["default"], at(-10)))["default"].ended[Outcome.COMPLETED] == 0


async def test_queue_activity_counts_each_queue_and_outcome_of_one_write(store: Store) -> None:
    """One completion batch ends attempts of two queues with every outcome, and one rescue
    two more (one fails, one goes back to pending): each end of a rated outcome counts
    under its queue; a later write of two in the same second adds both, one in a newer
    second starts the slot again from its own count, and a late one for an older second
    is dropped."""
    jobs_a = [await running(store, queue="a") for _ in range(13)]
    jobs_b = [await running(store, queue="b") for _ in range(2)]
    ends = [*[Outcome.COMPLETED] * 3, Outcome.FAILED, Outcome.RETRIED, Outcome.RETRIED]
    ends += [Outcome.CANCELLED, Outcome.REQUEUED]
    batch = [
        completion(job, outcome, **({"run_at": at(60)} if outcome == Outcome.RETRIED else {}))
        for job, outcome in zip(jobs_a, ends, strict=False)
    ]
    batch += [completion(job, Outcome.COMPLETED) for job in jobs_b]
    assert await store.complete_jobs(batch, at(-3)) == [True] * 10
    later = [completion(job, Outcome.COMPLETED) for job in jobs_a[8:10]]
    assert await store.complete_jobs(later, at(-3)) == [True, True]
    lapsed = [await running(store, queue="b", max_attempts=attempts, now=at(-40)) for attempts in (1, 3)]
    assert {rescued.job.id for rescued in await store.rescue_jobs(at(-3))} == {job.id for job in lapsed}
    activity = await store.queue_activity(["a", "b"], at(0))
    assert dict(activity["a"].ended) == {Outcome.COMPLETED: 5, Outcome.FAILED: 1, Outcome.RETRIED: 2}
    assert dict(activity["b"].ended) == {Outcome.COMPLETED: 2, Outcome.FAILED: 1, Outcome.RETRIED: 0}
    # at(13) is 16 s after at(-3), at(-19) 16 s before it: all three share a slot.
    newer = [completion(job, Outcome.COMPLETED) for job in jobs_a[10:12]]
    assert await store.complete_jobs(newer, at(13)) == [True, True]
    assert await store.complete_jobs([completion(jobs_a[12], Outcome.COMPLETED)], at(-19)) == [True]
    assert (await store.queue_activity(["a"], at(14)))["a"].ended[Outcome.COMPLETED] == 2


async def test_prune_jobs_by_state_cutoff_and_limit(store: Store) -> None:
    async def finished(outcome: Outcome, when: float) -> Job:
        return await finish(store, await running(store), outcome, now=at(when))

    old_done = [await finished(Outcome.COMPLETED, seconds) for seconds in (1, 2, 3)]
    new_done = await finished(Outcome.COMPLETED, 100)
    old_failed = await finished(Outcome.FAILED, 1)
    old_cancelled = await finished(Outcome.CANCELLED, 1)
    alive = await insert(store)
    assert await store.prune_jobs({JobState.COMPLETED: at(50)}, 2, T0) == 2
    assert await store.prune_jobs({JobState.COMPLETED: at(50), JobState.FAILED: at(1)}, 2, T0) == 1
    remaining = {job.id for job in (await store.list_jobs(JobFilter(), 100, None)).jobs}
    assert remaining == {new_done.id, old_failed.id, old_cancelled.id, alive.id}
    assert not remaining & {job.id for job in old_done}
    assert await store.prune_jobs({JobState.FAILED: at(1.5), JobState.CANCELLED: at(0)}, 10, T0) == 1
    assert await store.get_job(old_failed.id) is None
    assert await store.prune_jobs({}, 10, T0) == 0


# -- every legal transition, and the illegal user actions -------------------------------


async def act(store: Store, job: Job, action: Action) -> Job:
    """Make `action` happen to `job` through the store; return the job afterwards."""
    if action == Action.PROMOTE:
        await store.promote_due_jobs(job.run_at)
    elif action == Action.CLAIM:
        await claim(store, now=at(1))
    elif action == Action.RETRY:
        await store.retry_job(job.id, at(1))
    elif action == Action.CANCEL and job.state != JobState.RUNNING:
        await store.cancel_job(job.id, at(1))
    elif action in (Action.RELEASE, Action.RELEASE_LATER):  # its parent completes, at or before run_at
        [parent] = await claim(store, now=at(1))
        assert parent.id in job.after
        await finish(store, parent, Outcome.COMPLETED, now=job.run_at if action == Action.RELEASE else at(2))
    else:
        outcome = {
            Action.COMPLETE: Outcome.COMPLETED,
            Action.BACK_OFF: Outcome.RETRIED,
            Action.FAIL: Outcome.FAILED,
            Action.REQUEUE: Outcome.REQUEUED,
            Action.CANCEL: Outcome.CANCELLED,
        }[action]
        await finish(store, job, outcome, now=at(1), run_at=at(60) if action == Action.BACK_OFF else None)
    return await current(store, job)


@pytest.mark.parametrize(
    ("state", "action"), sorted(TRANSITIONS), ids=[f"{s.value}-{a.value}" for s, a in sorted(TRANSITIONS)]
)
async def test_every_legal_transition(store: Store, state: JobState, action: Action) -> None:
    job = await reach(store, state)
    assert (await act(store, job, action)).state == TRANSITIONS[(state, action)]


USER_ACTIONS = [
    (state, action)
    for state, action in itertools.product(JobState, (Action.CANCEL, Action.RETRY))
    if (state, action) not in TRANSITIONS
]


@pytest.mark.parametrize(
    ("state", "action"), USER_ACTIONS, ids=[f"{s.value}-{a.value}" for s, a in USER_ACTIONS]
)
async def test_illegal_user_actions(store: Store, state: JobState, action: Action) -> None:
    job = await reach(store, state)
    with pytest.raises(IllegalTransition):
        await act(store, job, action)
    assert await current(store, job) == job


# -- life cycle --------------------------------------------------------------------------


async def test_ping_and_listen(store: Store) -> None:
    await store.ping()
    woken: list[str] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(store.listen, woken.append)
        nursery.cancel_scope.cancel()


async def test_close_twice_is_safe(make_store: Callable[[], Store]) -> None:
    store = make_store()
    await store.open()
    job = await insert(store)
    assert await store.get_job(job.id) == job
    await store.close()
    await store.close()


async def test_a_valid_completion_after_a_fenced_one_of_the_same_job_applies(store: Store) -> None:
    """Two runs of one job may end in one batch (rescued, then claimed back while the old
    run unwound): the stale one is fenced out, the current one still applies."""
    job = await running(store)
    stale = completion(job, Outcome.COMPLETED, owner="daemon-gone", result="old")
    valid = completion(job, Outcome.COMPLETED, result="new")
    assert await store.complete_jobs([stale, valid], at(1)) == [False, True]
    done = await current(store, job)
    assert (done.state, done.result) == (JobState.COMPLETED, "new")


async def test_prune_with_no_room_deletes_nothing(store: Store) -> None:
    job = await running(store)
    await finish(store, job, Outcome.COMPLETED)
    assert await store.prune_jobs({JobState.COMPLETED: at(10)}, 0, T0) == 0
    assert await store.get_job(job.id) is not None


# -- schedules ---------------------------------------------------------------------------

TIMING = "every 60000000us"


def tick_job(schedule: str, tick: datetime, *, created_at: datetime = T0, payload: Any = None) -> NewJob:
    job = new_job(created_at=created_at, payload=payload, run_at=max(tick, created_at))
    return replace(job, schedule=schedule, scheduled_for=tick)


def fire_of(schedule: str, *ticks: datetime, skip_overlap: bool = False) -> ScheduleFire:
    jobs = [tick_job(schedule, tick, payload=n) for n, tick in enumerate(ticks)]
    return ScheduleFire(schedule, TIMING, jobs, skip_overlap)


async def fire(
    store: Store, schedule: str, *ticks: datetime, skip_overlap: bool = False, now: datetime = T0
) -> Fired:
    [fired] = await store.fire_schedules([fire_of(schedule, *ticks, skip_overlap=skip_overlap)], now)
    return fired


async def test_sync_creates_a_record_counting_from_now_and_keeps_it_while_the_timing_stays(
    store: Store,
) -> None:
    records = await store.sync_schedules({"hourly": TIMING, "daily": "cron 0 0 * * * UTC"}, at(0))
    assert records["hourly"] == ScheduleRecord("hourly", TIMING, at(0), None, None, False)
    assert records["daily"].since == at(0)
    [job] = (await fire(store, "hourly", at(60))).jobs
    again = await store.sync_schedules({"hourly": TIMING}, at(100))
    assert (again["hourly"].since, again["hourly"].last_tick) == (at(0), at(60))
    changed = await store.sync_schedules({"hourly": "every 1000000us"}, at(200))
    assert changed["hourly"] == ScheduleRecord("hourly", "every 1000000us", at(200), at(60), job.id, False)
    assert await store.schedule_records(["hourly", "daily", "unknown"]) == {
        "hourly": changed["hourly"],
        "daily": records["daily"],
    }


async def test_a_fired_tick_makes_one_job_carrying_the_schedule(store: Store) -> None:
    await store.sync_schedules({"s": TIMING}, at(0))
    fired = await fire(store, "s", at(60))
    [job] = fired.jobs
    assert fired.ticks == [at(60)]
    assert (job.schedule, job.scheduled_for, job.state) == ("s", at(60), JobState.SCHEDULED)
    assert fired.record == ScheduleRecord("s", TIMING, at(0), at(60), job.id, False)
    assert await current(store, job) == job
    assert (await store.list_jobs(JobFilter(), 10, None)).jobs == [job]
    assert await store.schedule_records(["s"]) == {"s": fired.record}
    # The same tick again, or an older one: the store's record says no.
    for ticks in ([at(60)], [at(30)], [at(-60), at(0)]):
        repeated = await fire(store, "s", *ticks, now=at(61))
        assert (repeated.ticks, repeated.jobs, repeated.record) == ([], [], fired.record)
    assert nonzero(await store.count_jobs()) == {"default": {JobState.SCHEDULED: 1}}


async def test_only_the_ticks_the_record_has_not_seen_fire_oldest_first(store: Store) -> None:
    await store.sync_schedules({"s": TIMING}, at(0))
    await fire(store, "s", at(60))
    fired = await fire(store, "s", at(0), at(60), at(120), at(180), now=at(200))
    assert fired.ticks == [at(120), at(180)]
    assert [job.scheduled_for for job in fired.jobs] == [at(120), at(180)]
    assert fired.record is not None and fired.record.last_tick == at(180)
    assert fired.record.last_job_id == fired.jobs[-1].id


async def test_a_schedule_the_store_does_not_know_fires_nothing(store: Store) -> None:
    fired = await fire(store, "nobody-synced-me", at(60))
    assert fired == Fired("nobody-synced-me", None, [], [])
    assert nonzero(await store.count_jobs()) == {}


async def test_a_paused_schedule_fires_nothing_and_misses_its_ticks_for_good(store: Store) -> None:
    await store.sync_schedules({"s": TIMING}, at(0))
    paused = await store.set_schedule_paused("s", TIMING, True, at(10))
    assert paused.paused and paused.since == at(0)
    assert (await fire(store, "s", at(60), now=at(61))).ticks == []
    resumed = await store.set_schedule_paused("s", TIMING, False, at(100))
    assert not resumed.paused and resumed.since == at(100)
    # A tick missed while paused is not caught up; the next one fires.
    assert (await fire(store, "s", at(60), now=at(101))).ticks == []
    assert (await fire(store, "s", at(60), at(120), now=at(121))).ticks == [at(120)]
    # Resuming what is not paused moves nothing.
    assert (await store.set_schedule_paused("s", TIMING, False, at(500))).since == at(100)


async def test_pausing_a_schedule_not_yet_recorded_creates_it(store: Store) -> None:
    record = await store.set_schedule_paused("new", TIMING, True, at(5))
    assert record == ScheduleRecord("new", TIMING, at(5), None, None, True)
    assert await store.schedule_records(["new"]) == {"new": record}


async def test_overlap_skip_records_the_tick_but_makes_no_job_while_one_is_unfinished(store: Store) -> None:
    await store.sync_schedules({"s": TIMING, "other": TIMING}, at(0))
    first = await fire(store, "s", at(60), skip_overlap=True)
    [job] = first.jobs
    skipped = await fire(store, "s", at(120), skip_overlap=True, now=at(120))
    assert (skipped.ticks, skipped.jobs) == ([at(120)], [])
    assert skipped.record is not None and skipped.record.last_job_id == job.id
    # Another schedule's job does not count; with overlap allowed nothing is skipped either.
    assert len((await fire(store, "other", at(60), skip_overlap=True)).jobs) == 1
    assert len((await fire(store, "s", at(180), now=at(180))).jobs) == 1
    claimed = await claim_all(store, at(300))
    [promoted] = [j for j in claimed if (j.schedule, j.scheduled_for) == ("s", at(60))]
    await finish(store, promoted, Outcome.COMPLETED)
    # One of its jobs (at 180) is still unfinished.
    assert (await fire(store, "s", at(240), skip_overlap=True, now=at(300))).jobs == []


async def test_overlap_skip_makes_only_the_oldest_of_several_ticks_a_job(store: Store) -> None:
    await store.sync_schedules({"s": TIMING}, at(0))
    fired = await fire(store, "s", at(60), at(120), at(180), skip_overlap=True, now=at(200))
    assert fired.ticks == [at(60), at(120), at(180)]
    assert [job.scheduled_for for job in fired.jobs] == [at(60)]
    assert fired.record is not None and fired.record.last_tick == at(180)


async def claim_all(store: Store, now: datetime) -> list[Job]:
    await store.promote_due_jobs(now)
    return await claim(store, now=now)


async def test_a_tick_job_keeps_its_schedule_through_its_whole_life(store: Store) -> None:
    await store.sync_schedules({"s": TIMING}, at(-10))
    [job] = (await fire(store, "s", at(-5))).jobs
    assert job.state == JobState.PENDING
    [claimed] = await claim(store)
    assert (claimed.schedule, claimed.scheduled_for) == ("s", at(-5))
    failed = await finish(store, claimed, Outcome.FAILED, error="boom")
    assert (failed.state, failed.schedule, failed.scheduled_for) == (JobState.FAILED, "s", at(-5))
    retried = await store.retry_job(job.id, at(1))
    assert (retried.schedule, retried.scheduled_for) == ("s", at(-5))
    plain = await insert(store)
    assert (plain.schedule, plain.scheduled_for) == (None, None)
    assert (await current(store, plain)).schedule is None


async def test_many_daemons_firing_one_tick_at_once_make_one_job(
    make_store: Callable[[], Store], store: Store
) -> None:
    await store.sync_schedules({"s": TIMING}, at(0))
    # PostgreSQL: one store (one connection pool) per "daemon"; the others admit one process.
    stores = [store]
    if store.shared:
        stores += [make_store() for _ in range(3)]
    try:
        for other in stores[1:]:
            await other.open()
        results: list[Fired] = []

        async def fire_from(one: Store) -> None:
            results.append(await fire(one, "s", at(60), at(120), now=at(121)))

        async with trio.open_nursery() as nursery:
            for n in range(8):
                nursery.start_soon(fire_from, stores[n % len(stores)])
    finally:
        for other in stores[1:]:
            await other.close()
    assert sorted(tick for fired in results for tick in fired.ticks) == [at(60), at(120)]
    made = [job for fired in results for job in fired.jobs]
    assert sorted(job.scheduled_for for job in made if job.scheduled_for) == [at(60), at(120)]
    assert nonzero(await store.count_jobs()) == {"default": {JobState.SCHEDULED: 2}}


async def test_a_daemon_that_defines_the_schedule_otherwise_fires_nothing(store: Store) -> None:
    await store.sync_schedules({"s": TIMING}, at(0))
    other = replace(fire_of("s", at(60)), timing="every 1000000us")
    [fired] = await store.fire_schedules([other], at(61))
    assert (fired.ticks, fired.jobs) == ([], [])
    assert fired.record is not None and fired.record.timing == TIMING
    assert len((await fire(store, "s", at(60), now=at(61))).jobs) == 1


# -- rate limits -------------------------------------------------------------------------

TEN_PER_SECOND = parse_rate("10/s", burst=3)


async def insert_many(store: Store, count: int, queue: str = "limited") -> None:
    await store.insert_jobs([new_job(queue=queue) for _ in range(count)])


async def claim_rated(
    store: Store,
    rate: RateLimit,
    now: datetime,
    *,
    queue: str = "limited",
    owner: str = "daemon-1",
    free: int = 100,
    limit: int = 1000,
    global_limit: int | None = None,
) -> CompletedAndClaimed:
    request = ClaimRequest(owner, [QueueSlots(queue, free, global_limit, rate)], limit, now + LEASE)
    return await store.complete_and_claim_jobs([], request, now)


async def stored_buckets(store: Store) -> dict[str, Bucket]:
    """The bucket rows as each store keeps them: no protocol call reads them, only claims."""
    if isinstance(store, MemoryStore):
        return dict(store._buckets)
    query = "SELECT queue, level, updated_at FROM {table} ORDER BY queue"
    if isinstance(store, SQLiteStore):
        rows = await store._read(lambda conn: conn.execute(query.format(table="rate_buckets")).fetchall())
        epoch = datetime(1970, 1, 1, tzinfo=UTC)
        return {row[0]: Bucket(row[1], epoch + timedelta(microseconds=row[2])) for row in rows}
    assert isinstance(store, PostgresStore)
    table = query.format(table="jobd.rate_buckets")
    rows = await store._run(lambda conn: conn.execute(table).fetchall(), transaction=False)
    return {row[0]: Bucket(row[1], row[2]) for row in rows}


async def test_a_rate_starts_a_burst_then_a_job_per_token_and_says_when_the_next_is_due(store: Store) -> None:
    await insert_many(store, 10)
    first = await claim_rated(store, TEN_PER_SECOND, at(0))
    assert len(first.claimed) == 3  # the burst
    assert first.rate_held == {"limited": at(0.1)}
    early = await claim_rated(store, TEN_PER_SECOND, at(0.05))
    assert (early.claimed, early.rate_held) == ([], {"limited": at(0.1)})
    assert len((await claim_rated(store, TEN_PER_SECOND, at(0.1))).claimed) == 1
    # 0.25 s later: 2.5 tokens, two whole ones; the half left is a token at 0.4 s.
    later = await claim_rated(store, TEN_PER_SECOND, at(0.35))
    assert (len(later.claimed), later.rate_held) == (2, {"limited": at(0.4)})
    # Idle long enough to fill up: the burst again, and no more.
    refilled = await claim_rated(store, TEN_PER_SECOND, at(60))
    assert (len(refilled.claimed), refilled.rate_held) == (3, {"limited": at(60.1)})
    # The last job: claimed with a token to spare, nothing held back.
    last = await claim_rated(store, TEN_PER_SECOND, at(61))
    assert (len(last.claimed), last.rate_held) == (1, {})
    assert nonzero(await store.count_jobs())["limited"] == {JobState.RUNNING: 10}


async def test_a_rate_never_allows_more_than_burst_plus_rate_times_t_in_any_window(store: Store) -> None:
    rate = parse_rate("5/s", burst=4)
    await insert_many(store, 200)
    rng = random.Random(7)
    now, starts = 0, []
    model: Bucket | None = None
    for _ in range(80):  # about 15 s: fewer starts than jobs, so only the room and the tokens bound them
        now += rng.choice([0, 1, 30_000, 150_000, 199_999, 200_001, 700_000])  # microseconds
        free, limit = rng.randint(1, 6), rng.randint(1, 6)
        result = await claim_rated(store, rate, at(now / 1e6), free=free, limit=limit)
        starts += [now] * len(result.claimed)
        # Every store claims as the one rule says: refill, take what the room and tokens allow.
        bucket = refill_bucket(model, rate, at(now / 1e6))
        taken = min(free, limit, bucket.tokens)
        assert len(result.claimed) == taken
        held = bucket.tokens < min(free, limit)
        assert result.rate_held == ({"limited": bucket.spend(taken).next_token_at(rate)} if held else {})
        model = bucket.spend(taken) if taken else model
    assert 50 < len(starts) < 200
    for first, second in itertools.combinations(range(len(starts)), 2):
        window = starts[second] - starts[first]  # microseconds
        count = second - first + 1
        # count <= burst + rate * window, in whole numbers
        assert count * rate.period * 1_000_000 <= rate.burst * rate.period * 1_000_000 + rate.count * window


async def test_the_tokens_are_shared_by_every_owner_and_every_connection(
    make_store: Callable[[], Store], store: Store
) -> None:
    await insert_many(store, 100)
    stores = [store]
    if store.shared:  # PostgreSQL: one store (one connection pool) per daemon
        stores += [make_store() for _ in range(3)]
    try:
        for other in stores[1:]:
            await other.open()
        claimed: list[Job] = []

        async def claim_from(number: int) -> None:
            one = stores[number % len(stores)]
            result = await claim_rated(one, TEN_PER_SECOND, at(0), owner=f"daemon-{number}", free=3, limit=3)
            claimed.extend(result.claimed)

        async with trio.open_nursery() as nursery:
            for number in range(8):
                nursery.start_soon(claim_from, number)
        assert len(claimed) == 3  # the burst, all owners together
        second = await claim_rated(stores[-1], TEN_PER_SECOND, at(0.2), owner="daemon-9")
        assert len(second.claimed) == 2
    finally:
        for other in stores[1:]:
            await other.close()


async def test_a_rate_and_a_global_limit_hold_together(store: Store) -> None:
    await insert_many(store, 10)
    rate = parse_rate("10/s", burst=5)
    first = await claim_rated(store, rate, at(0), global_limit=2)
    assert (len(first.claimed), first.rate_held) == (2, {})  # the global limit held it, not the rate
    done = [completion(job, Outcome.COMPLETED) for job in first.claimed]
    assert await store.complete_jobs(done, at(0)) == [True, True]
    second = await claim_rated(store, rate, at(0), global_limit=2)
    assert (len(second.claimed), second.rate_held) == (2, {})
    assert await store.complete_jobs([completion(job, Outcome.COMPLETED) for job in second.claimed], at(0))
    third = await claim_rated(store, rate, at(0), global_limit=2)
    assert (len(third.claimed), third.rate_held) == (1, {"limited": at(0.1)})  # one token left for two slots
    # A retry is a start like any other: it needs a token too.
    [job] = third.claimed
    retried = completion(job, Outcome.RETRIED, error="again", run_at=at(0))
    assert await store.complete_jobs([retried], at(0)) == [True]
    assert (await claim_rated(store, rate, at(0), global_limit=2)).claimed == []


async def test_a_changed_rate_applies_at_the_next_claim(store: Store) -> None:
    await insert_many(store, 20)
    slow = parse_rate("1/s", burst=1)
    first = await claim_rated(store, slow, at(0))
    assert (len(first.claimed), first.rate_held) == (1, {"limited": at(1)})
    faster = parse_rate("10/s", burst=1)
    assert len((await claim_rated(store, faster, at(0.1))).claimed) == 1  # 0.1 s at 10/s: a token
    bigger = parse_rate("10/s", burst=8)
    assert len((await claim_rated(store, bigger, at(10))).claimed) == 8
    smaller = parse_rate("10/s", burst=2)
    assert len((await claim_rated(store, smaller, at(20))).claimed) == 2  # the bucket shrank to 2


async def test_one_bucket_row_per_rate_limited_queue_written_once_per_claim(store: Store) -> None:
    await insert_many(store, 10, queue="a")
    await insert_many(store, 10, queue="b")
    await insert_many(store, 10, queue="free")
    slots = [
        QueueSlots("a", 5, None, TEN_PER_SECOND),
        QueueSlots("b", 5, None, parse_rate("2/s", burst=2)),
        QueueSlots("free", 5),
        QueueSlots("idle", 5, None, TEN_PER_SECOND),
    ]
    request = ClaimRequest("daemon-1", slots, 100, at(1) + LEASE)
    for step in range(3):
        result = await store.complete_and_claim_jobs([], request, at(step))
        assert result.rate_held == {"a": at(step + 0.1), "b": at(step + 0.5)}
    buckets = await stored_buckets(store)
    # A queue whose bucket never gave a token has no row: its bucket is full.
    assert set(buckets) == {"a", "b"}
    assert buckets["a"] == Bucket(0, at(2))
    assert buckets["b"] == Bucket(0, at(2))
    # A paused queue takes no token and is not held back.
    await store.set_queue_paused("a", True)
    assert (await store.complete_and_claim_jobs([], request, at(10))).rate_held == {"b": at(10.5)}
    assert (await stored_buckets(store))["a"] == Bucket(0, at(2))


async def test_insert_and_claim_takes_tokens_and_says_when_the_next_is_due(store: Store) -> None:
    request = ClaimRequest("daemon-1", [QueueSlots("limited", 10, None, TEN_PER_SECOND)], 10, at(1) + LEASE)
    result = await store.insert_and_claim_jobs([new_job(queue="limited") for _ in range(5)], request, at(0))
    assert (len(result.claimed), result.rate_held) == (3, {"limited": at(0.1)})
