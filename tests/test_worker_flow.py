"""Dependencies and unique windows through the engine (service, workers, memory store)
on a virtual clock: what a submit may name, what a handler sees of its parents, and how
a DAG runs."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import pytest
import trio

import jobd
from jobd.handlers import JobContext
from jobd.job import JobState
from jobd.store.memory import MemoryStore
from tests.test_worker import autojump, handler_of, running_engine

__all__ = ["autojump"]


async def test_a_report_runs_after_its_three_extracts_with_their_results(autojump: object) -> None:
    order: list[str] = []

    async def extract(job: JobContext) -> Any:
        await trio.sleep(job.payload["seconds"])
        order.append(job.payload["table"])
        return {"rows": len(job.payload["table"])}

    async def report(job: JobContext) -> Any:
        order.append("report")
        return sorted(result["rows"] for result in job.parents.values())

    handlers = (handler_of("t.extract", extract), handler_of("t.report", report))
    async with running_engine(*handlers, config={"workers": {"poll_interval": "1h"}}) as engine:
        items = [
            {"type": "t.extract", "payload": {"table": t, "seconds": s}}
            for t, s in (("ab", 3), ("c", 1), ("def", 2))
        ]
        batch = await engine.service.submit_batch(
            {"jobs": [*items, {"type": "t.report", "after": ["#0", "#1", "#2"]}]}
        )
        report_job = batch[3].job
        assert report_job.state == JobState.WAITING
        assert report_job.after == tuple(item.job.id for item in batch[:3])
        assert (await engine.service.stats())["queues"]["default"]["waiting"] == 1
        done = await engine.wait(report_job)
        assert done.state == JobState.COMPLETED and done.result == [1, 2, 3]
        assert order == ["c", "def", "ab", "report"]


async def test_a_failed_parent_cancels_the_waiting_job_with_its_reason(autojump: object) -> None:
    async def fail(job: JobContext) -> None:
        raise jobd.Fail("no data")

    async with running_engine(handler_of("t.fail", fail)) as engine:
        parent = await engine.submit("t.fail")
        child = await engine.submit("jobd.noop", after=[str(parent.id)])
        tolerant = await engine.submit("jobd.noop", after=[str(parent.id)], on_parent_failure="run")
        assert (await engine.wait(child)).last_error == f"parent {parent.id} failed"
        assert (await engine.wait(tolerant)).state == JobState.COMPLETED


async def test_a_unique_window_returns_the_finished_job(autojump: object) -> None:
    async with running_engine() as engine:
        first = await engine.service.submit({"type": "jobd.noop", "key": "signup:7", "unique_for": "10m"})
        await engine.wait(first.job)
        await trio.sleep(599)
        again = await engine.service.submit({"type": "jobd.noop", "key": "signup:7", "unique_for": "10m"})
        assert not again.created and again.job.id == first.job.id
        await trio.sleep(2)
        later = await engine.service.submit({"type": "jobd.noop", "key": "signup:7", "unique_for": "10m"})
        assert later.created


@pytest.mark.parametrize(
    ("items", "field", "index", "fragment"),
    [
        ([{"type": "jobd.noop", "after": ["#0"]}], "after", 0, "not an earlier item"),
        ([{"type": "jobd.noop"}, {"type": "jobd.noop", "after": ["#2"]}], "after", 1, "not an earlier item"),
        ([{"type": "jobd.noop", "after": ["nope"]}], "after", 0, "not a job id or #INDEX"),
        ([{"type": "jobd.noop", "after": "#0"}], "after", 0, "must be a list"),
        (
            [{"type": "jobd.noop", "after": ["0190c2b4-0000-7000-8000-000000000000"]}],
            "after",
            0,
            "does not exist",
        ),
        ([{"type": "jobd.noop", "after": [f"#{n}" for n in range(101)]}], "after", 0, "at most 100"),
        ([{"type": "jobd.noop", "on_parent_failure": "ignore"}], "on_parent_failure", 0, '"cancel" or "run"'),
        ([{"type": "jobd.noop", "unique_for": "10m"}], "unique_for", 0, "needs a key"),
        ([{"type": "jobd.noop", "key": "k", "unique_for": "0s"}], "unique_for", 0, "above 0"),
    ],
)
async def test_bad_flow_fields_are_refused_naming_field_and_item(
    autojump: object, items: list[dict[str, Any]], field: str, index: int, fragment: str
) -> None:
    async with running_engine() as engine:
        with pytest.raises(jobd.InvalidJob) as refused:
            await engine.service.submit_batch({"jobs": items})
        assert (refused.value.field, refused.value.index) == (field, index)
        assert fragment in str(refused.value)
        assert (await engine.service.stats())["queues"]["default"]["pending"] == 0


async def test_a_single_submit_cannot_name_a_batch_item(autojump: object) -> None:
    async with running_engine() as engine:
        with pytest.raises(jobd.InvalidJob, match="no batch"):
            await engine.submit("jobd.noop", after=["#0"])


async def test_a_dag_of_ten_thousand_jobs_runs_in_dependency_order(autojump: object) -> None:
    completed: set[int] = set()
    early: list[int] = []
    parents_of: dict[int, list[int]] = {}
    all_done = trio.Event()

    async def node(job: JobContext) -> int:
        index = job.payload
        if not all(parent in completed for parent in parents_of[index]):
            early.append(index)
        completed.add(index)
        if len(completed) == len(parents_of):
            all_done.set()
        return int(index)

    items: list[dict[str, Any]] = []
    for index in range(10_000):
        layer_start = index // 100 * 100
        parents = [] if index < 100 else [layer_start - 100 + (index * 7 + k * 31) % 100 for k in range(3)]
        parents_of[index] = parents
        items.append({"type": "t.node", "payload": index, "after": [f"#{p}" for p in dict.fromkeys(parents)]})
    async with running_engine(handler_of("t.node", node), config={"workers": {"concurrency": 50}}) as engine:
        batch = await engine.service.submit_batch({"jobs": items})
        assert sum(item.job.state == JobState.WAITING for item in batch) == 9_900
        with trio.fail_after(3600):
            await all_done.wait()
    assert early == []


class CountingStore(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.result_reads = 0

    async def job_results(self, job_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, Any]:
        self.result_reads += 1
        return await super().job_results(job_ids)


async def test_the_jobs_of_one_claim_read_their_parents_results_in_one_call(autojump: object) -> None:
    seen: dict[int, Any] = {}

    async def child(job: JobContext) -> None:
        seen[job.payload] = sorted(job.parents.values())

    store = CountingStore()
    async with running_engine(handler_of("t.child", child), store=store) as engine:
        parents = [await engine.submit("jobd.noop", n) for n in range(3)]
        for parent in parents:
            await engine.wait(parent)
        ids = [str(parent.id) for parent in parents]
        await engine.service.pause("default")  # the children wait, ready, for one claim
        children = [await engine.submit("t.child", n, after=ids[: n + 1]) for n in range(3)]
        await engine.service.resume("default")
        for job in children:
            assert (await engine.wait(job)).state == JobState.COMPLETED
    assert seen == {0: [0], 1: [0, 1], 2: [0, 1, 2]}
    assert store.result_reads == 1  # one claim took the three children
