"""Dependencies and unique windows, the same on every store (memory, SQLite, PostgreSQL):
who waits, when a waiting job is released or cancelled, and what a key returns within its
window. Times are fixed datetimes; nothing sleeps."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import pytest
import trio

from jobd.errors import InvalidJob
from jobd.job import Job, JobState, ParentFailure
from jobd.store import Inserted, NewJob, Outcome, Store
from jobd.store.postgres import PostgresStore
from tests.test_store_conformance import (
    T0,
    at,
    claim,
    completion,
    current,
    finish,
    insert,
    make_store,
    new_job,
    running,
    store,
)

__all__ = ["make_store", "store"]  # the fixtures, shared with the conformance suite


def child_of(*parents: Job | uuid.UUID, **options: Any) -> NewJob:
    ids = tuple(parent.id if isinstance(parent, Job) else parent for parent in parents)
    on_failure = options.pop("on_parent_failure", ParentFailure.CANCEL)
    return replace(new_job(**options), after=ids, on_parent_failure=on_failure)


async def submit(store: Store, *jobs: NewJob) -> list[Inserted]:
    return await store.insert_jobs(list(jobs))


async def submit_one(store: Store, job: NewJob) -> Job:
    [inserted] = await submit(store, job)
    assert inserted.created
    return inserted.job


async def state_of(store: Store, job: Job) -> JobState:
    return (await current(store, job)).state


async def complete(store: Store, job: Job, now: Any = None, result: Any = None) -> None:
    claimed = await claim(store, job.queue, now=now or at(1))
    [mine] = [found for found in claimed if found.id == job.id]
    await finish(store, mine, Outcome.COMPLETED, now=now or at(1), result=result)


# -- dependencies --------------------------------------------------------------------


async def test_a_job_waits_for_its_parent_then_is_released(store: Store) -> None:
    parent = await insert(store, queue="extract")
    child = await submit_one(store, child_of(parent, queue="report"))
    assert child.state == JobState.WAITING
    assert child.after == (parent.id,)
    assert (await store.count_jobs())["report"][JobState.WAITING] == 1
    assert await claim(store, "report") == []  # waiting is not pending

    await complete(store, parent, now=at(5), result={"rows": 3})
    released = await current(store, child)
    assert released.state == JobState.PENDING
    assert released.run_at == released.updated_at == at(5)  # ready from its release
    assert await store.job_results([parent.id, uuid.uuid4()]) == {parent.id: {"rows": 3}}


async def test_release_in_the_future_is_scheduled(store: Store) -> None:
    parent = await insert(store)
    child = await submit_one(store, child_of(parent, run_at=at(600)))
    await complete(store, parent, now=at(5))
    released = await current(store, child)
    assert (released.state, released.run_at) == (JobState.SCHEDULED, at(600))


async def test_fan_in_of_a_hundred_parents_releases_on_the_last(store: Store) -> None:
    parents = [job for job in (await submit(store, *[new_job(queue="extract") for _ in range(100)]))]
    child = await submit_one(store, child_of(*[item.job for item in parents], queue="report"))
    claimed = await claim(store, "extract", now=at(1))
    assert len(claimed) == 100
    for job in claimed[:-1]:
        await finish(store, job, Outcome.COMPLETED, now=at(2))
    assert await state_of(store, child) == JobState.WAITING
    await finish(store, claimed[-1], Outcome.COMPLETED, now=at(3))
    assert await state_of(store, child) == JobState.PENDING


async def test_a_batch_names_its_earlier_items(store: Store) -> None:
    first, second = new_job(queue="extract"), new_job(queue="extract")
    report = replace(new_job(queue="report"), after=(first.id, second.id))
    results = await submit(store, first, second, report)
    assert [item.job.state for item in results] == [JobState.PENDING, JobState.PENDING, JobState.WAITING]
    for job in await claim(store, "extract"):
        await finish(store, job, Outcome.COMPLETED, now=at(1))
    assert await state_of(store, results[2].job) == JobState.PENDING


async def test_an_item_answered_by_another_job_stands_for_it(store: Store) -> None:
    holder = await insert(store, key="extract-2026-12")
    again = new_job(key="extract-2026-12")  # not inserted: the holder answers for it
    child = replace(new_job(queue="report"), after=(again.id,))
    results = await submit(store, again, child)
    assert not results[0].created and results[0].job.id == holder.id
    assert results[1].job.after == (holder.id,)
    await complete(store, holder)
    assert await state_of(store, results[1].job) == JobState.PENDING


async def test_a_parent_completed_before_the_submit_counts_as_done(store: Store) -> None:
    parent = await running(store)
    await finish(store, parent, Outcome.COMPLETED)
    child = await submit_one(store, child_of(parent, created_at=at(1)))
    assert (child.state, child.run_at) == (JobState.PENDING, at(1))


async def test_a_parent_failed_before_the_submit_cancels_at_once(store: Store) -> None:
    parent = await finish(store, await running(store), Outcome.FAILED, error="boom")
    child = await submit_one(store, child_of(parent, created_at=at(1)))
    assert child.state == JobState.CANCELLED
    assert child.last_error == f"parent {parent.id} failed"
    runs_anyway = await submit_one(
        store, child_of(parent, created_at=at(1), on_parent_failure=ParentFailure.RUN)
    )
    assert runs_anyway.state == JobState.PENDING


async def test_an_unknown_parent_is_refused_naming_after_and_the_item(store: Store) -> None:
    parent = await insert(store)
    with pytest.raises(InvalidJob) as refused:
        await submit(store, new_job(), child_of(parent, uuid.uuid4()))
    assert (refused.value.field, refused.value.index) == ("after", 1)
    assert (await store.count_jobs())["default"].get(JobState.PENDING) == 1  # all or nothing


async def test_a_failed_parent_cancels_its_dependants_in_turn(store: Store) -> None:
    parent = await running(store)
    child = await submit_one(store, child_of(parent))
    grandchild = await submit_one(store, child_of(child))
    tolerant = await submit_one(store, child_of(child, on_parent_failure=ParentFailure.RUN))
    await finish(store, parent, Outcome.FAILED, now=at(7), error="boom")
    cancelled = await current(store, child)
    assert (cancelled.state, cancelled.finished_at) == (JobState.CANCELLED, at(7))
    assert cancelled.last_error == f"parent {parent.id} failed"
    assert (await current(store, grandchild)).last_error == f"parent {child.id} cancelled"
    assert await state_of(store, tolerant) == JobState.PENDING


async def test_a_job_its_parent_cancels_keeps_its_trace_context(store: Store) -> None:
    parent = await running(store)
    traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    child = await submit_one(store, replace(child_of(parent), traceparent=traceparent))
    await finish(store, parent, Outcome.FAILED, error="boom")
    cancelled = await current(store, child)
    assert (cancelled.state, cancelled.traceparent) == (JobState.CANCELLED, traceparent)


async def test_run_on_parent_failure_releases_as_if_completed(store: Store) -> None:
    parent = await running(store)
    child = await submit_one(store, child_of(parent, on_parent_failure=ParentFailure.RUN))
    await finish(store, parent, Outcome.CANCELLED, error="cancelled")
    assert await state_of(store, child) == JobState.PENDING


async def test_a_retry_after_back_off_does_not_release(store: Store) -> None:
    parent = await running(store)
    child = await submit_one(store, child_of(parent))
    await finish(store, parent, Outcome.RETRIED, error="later", run_at=at(60))
    assert await state_of(store, child) == JobState.WAITING


async def test_cancelling_a_waiting_job_cancels_its_dependants(store: Store) -> None:
    parent = await insert(store)
    child = await submit_one(store, child_of(parent))
    grandchild = await submit_one(store, child_of(child))
    assert (await store.cancel_job(child.id, at(3))).state == JobState.CANCELLED
    assert await state_of(store, grandchild) == JobState.CANCELLED
    assert await state_of(store, parent) == JobState.PENDING


async def test_a_rescue_that_fails_the_parent_cancels_its_dependants(store: Store) -> None:
    parent = await running(store, max_attempts=1)
    child = await submit_one(store, child_of(parent))
    rescued = await store.rescue_jobs(at(3600))
    assert [item.job.state for item in rescued] == [JobState.FAILED]
    assert await state_of(store, child) == JobState.CANCELLED


async def test_a_thousand_deep_chain_is_cancelled_in_one_go(store: Store) -> None:
    chain: list[NewJob] = [new_job()]
    for _ in range(999):
        chain.append(child_of(chain[-1].id))
    results = await submit(store, *chain)
    assert [item.job.state for item in results[:2]] == [JobState.PENDING, JobState.WAITING]
    await store.cancel_job(results[0].job.id, at(1))
    counts = (await store.count_jobs())["default"]
    assert counts.get(JobState.CANCELLED) == 1000
    assert not counts.get(JobState.WAITING)


async def test_a_chain_runs_link_by_link(store: Store) -> None:
    chain: list[NewJob] = [new_job()]
    for _ in range(19):
        chain.append(child_of(chain[-1].id))
    await submit(store, *chain)
    for step, link in enumerate(chain):
        [claimed] = await claim(store, now=at(step))
        assert claimed.id == link.id
        await finish(store, claimed, Outcome.COMPLETED, now=at(step))
    assert (await store.count_jobs())["default"][JobState.COMPLETED] == 20


async def test_a_pruned_parent_counts_as_completed(store: Store) -> None:
    early, late = await running(store), await running(store)
    child = await submit_one(store, child_of(early, late))
    await finish(store, early, Outcome.COMPLETED, now=at(1), result="early")
    assert await store.prune_jobs({JobState.COMPLETED: at(2)}, 10, at(2)) == 1
    await finish(store, late, Outcome.COMPLETED, now=at(3))
    assert await state_of(store, child) == JobState.PENDING
    assert await store.job_results([early.id, late.id]) == {late.id: None}


async def test_one_completion_call_settles_several_dependants(store: Store) -> None:
    first, second = await running(store), await running(store)
    both = await submit_one(store, child_of(first, second))
    only_first = await submit_one(store, child_of(first))
    applied = await store.complete_jobs(
        [completion(first, Outcome.COMPLETED), completion(second, Outcome.FAILED, error="x")], at(1)
    )
    assert applied == [True, True]
    assert await state_of(store, only_first) == JobState.PENDING
    assert await state_of(store, both) == JobState.CANCELLED


# -- unique windows ------------------------------------------------------------------


def keyed(key: str, unique_for: float | None, created_at: Any = T0) -> NewJob:
    return replace(new_job(key=key, created_at=created_at), unique_for=unique_for)


async def test_a_key_within_its_window_returns_the_job_in_any_state(store: Store) -> None:
    [first] = await submit(store, keyed("signup:42", 600))
    done = await finish(store, (await claim(store))[0], Outcome.COMPLETED)
    [again] = await submit(store, keyed("signup:42", 600, at(599)))
    assert not again.created and again.job.id == first.job.id == done.id
    [later] = await submit(store, keyed("signup:42", 600, at(601)))
    assert later.created and later.job.id != first.job.id


async def test_the_window_is_the_asking_submits(store: Store) -> None:
    await submit(store, keyed("k", 60))
    await finish(store, (await claim(store))[0], Outcome.COMPLETED)
    [short] = await submit(store, keyed("k", 10, at(30)))
    assert short.created  # made 30 s ago: outside a 10 s window


async def test_without_unique_for_a_key_holds_only_while_unfinished(store: Store) -> None:
    [first] = await submit(store, keyed("k", 600))
    await finish(store, (await claim(store))[0], Outcome.COMPLETED)
    [plain] = await submit(store, keyed("k", None, at(1)))
    assert plain.created
    [windowed] = await submit(store, keyed("k", 600, at(2)))  # the unfinished one answers
    assert not windowed.created and windowed.job.id == plain.job.id
    assert first.job.id != plain.job.id


async def test_pruning_spares_a_job_whose_window_is_open(store: Store) -> None:
    [first] = await submit(store, keyed("k", 3600))
    await finish(store, (await claim(store))[0], Outcome.COMPLETED, now=at(1))
    assert await store.prune_jobs({JobState.COMPLETED: at(100)}, 10, at(100)) == 0
    [again] = await submit(store, keyed("k", 3600, at(100)))
    assert again.job.id == first.job.id
    assert await store.prune_jobs({JobState.COMPLETED: at(4000)}, 10, at(4000)) == 1
    [fresh] = await submit(store, keyed("k", 3600, at(4000)))
    assert fresh.created


async def test_a_batch_with_one_key_twice_makes_one_job(store: Store) -> None:
    results = await submit(store, keyed("k", 60), keyed("k", 60))
    assert [item.created for item in results] == [True, False]
    assert results[1].job.id == results[0].job.id


# -- across daemons (PostgreSQL) -----------------------------------------------------


@pytest.fixture
async def two_stores(fresh_postgres_url: str) -> Any:
    stores = [PostgresStore(fresh_postgres_url, pool_size=2) for _ in range(2)]
    for opened in stores:
        await opened.open()
    try:
        yield stores
    finally:
        for opened in stores:
            await opened.close()


async def finish_on(where: Store, job: Job, owner: str) -> None:
    assert await where.complete_jobs([completion(job, Outcome.COMPLETED, owner=owner)], at(1)) == [True]


async def submit_on(where: Store, job: NewJob, made: list[Inserted]) -> None:
    made.extend(await where.insert_jobs([job]))


async def test_two_daemons_finishing_the_last_two_parents_at_once_release_once(
    two_stores: Sequence[Store],
) -> None:
    first, second = two_stores
    for round_number in range(20):
        parents = [await running(first, owner="a"), await running(second, owner="b")]
        child = await submit_one(first, child_of(*parents, queue="report"))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(finish_on, first, parents[0], "a")
            nursery.start_soon(finish_on, second, parents[1], "b")
        assert await state_of(first, child) == JobState.PENDING, f"round {round_number}"


async def test_two_daemons_submitting_one_key_at_once_make_one_job(two_stores: Sequence[Store]) -> None:
    first, second = two_stores
    for round_number in range(20):
        made: list[Inserted] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(submit_on, first, keyed(f"once-{round_number}", 600), made)
            nursery.start_soon(submit_on, second, keyed(f"once-{round_number}", 600), made)
        assert sorted(item.created for item in made) == [False, True]
        assert made[0].job.id == made[1].job.id
