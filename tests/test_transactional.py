"""`jobd.submit`: a job inserted inside the application's own PostgreSQL transaction."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import trio

from jobd.config import parse_config
from jobd.daemon import Daemon
from jobd.errors import InvalidJob
from jobd.job import JobState
from jobd.plugins import PluginHost
from jobd.service import JobService
from jobd.store import QueueSlots
from jobd.store.postgres import PostgresStore
from jobd.transactional import submit

pytestmark = pytest.mark.postgres


@pytest.fixture
async def store(fresh_postgres_url: str) -> AsyncIterator[PostgresStore]:
    opened = PostgresStore(fresh_postgres_url)
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
def connection(fresh_postgres_url: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(fresh_postgres_url) as conn:
        yield conn


async def expect_wakes(received: trio.MemoryReceiveChannel[str], *wanted: str) -> None:
    missing = set(wanted)
    with trio.fail_after(20):
        while missing:
            missing.discard(await received.receive())


async def test_a_rolled_back_job_does_not_exist(
    store: PostgresStore, connection: psycopg.Connection[Any]
) -> None:
    job_id = submit(connection, "report.build", {"month": 3})
    connection.rollback()
    assert await store.get_job(job_id) is None


async def test_a_committed_job_is_visible_and_claimable(
    store: PostgresStore, connection: psycopg.Connection[Any]
) -> None:
    job_id = submit(
        connection, "report.build", {"month": 3}, queue="reports", priority=5, max_attempts=2, timeout=9
    )
    assert await store.get_job(job_id) is None  # not before the commit
    connection.commit()
    job = await store.get_job(job_id)
    assert job is not None
    assert (job.type, job.payload, job.queue, job.priority) == ("report.build", {"month": 3}, "reports", 5)
    assert (job.state, job.max_attempts, job.timeout, job.attempts) == (JobState.PENDING, 2, 9.0, 0)
    now = datetime.now(UTC)
    lease_until = now + timedelta(seconds=30)
    [claimed] = await store.claim_jobs("owner", [QueueSlots("reports", 10)], 10, now, lease_until)
    assert claimed.id == job_id


async def test_a_delayed_job_is_scheduled(store: PostgresStore, connection: psycopg.Connection[Any]) -> None:
    job_id = submit(connection, "report.build", delay=3600)
    connection.commit()
    job = await store.get_job(job_id)
    assert job is not None and job.state == JobState.SCHEDULED
    assert job.run_at - job.created_at == timedelta(seconds=3600)


async def test_a_live_key_returns_the_same_job(
    store: PostgresStore, connection: psycopg.Connection[Any]
) -> None:
    first = submit(connection, "report.build", key="march")
    assert submit(connection, "report.build", key="march") == first
    connection.commit()
    assert (await store.count_jobs())["default"][JobState.PENDING] == 1


async def test_a_job_may_wait_for_one_submitted_in_the_same_transaction(
    store: PostgresStore, connection: psycopg.Connection[Any]
) -> None:
    parent = submit(connection, "report.extract")
    child = submit(connection, "report.build", after=[parent], on_parent_failure="run")
    again = submit(connection, "report.mail", key="report:3", unique_for=600)
    connection.commit()
    waiting = await store.get_job(child)
    assert waiting is not None and waiting.state == JobState.WAITING and waiting.after == (parent,)
    assert submit(connection, "report.mail", key="report:3", unique_for=600) == again
    with pytest.raises(InvalidJob) as refused:
        submit(connection, "report.build", after=[uuid.uuid4()])
    assert refused.value.field == "after"
    connection.rollback()


async def test_the_listener_is_woken_at_commit(
    store: PostgresStore, connection: psycopg.Connection[Any]
) -> None:
    wake, woken = trio.open_memory_channel[str](1000)
    async with trio.open_nursery() as nursery:
        await nursery.start(store.listen, wake.send_nowait)
        await expect_wakes(woken, "jobs", "cancel")  # the look after connecting
        submit(connection, "report.build")
        connection.commit()
        await expect_wakes(woken, "jobs")
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("arguments", "field"),
    [
        ({"type": ""}, "type"),
        ({"queue": " "}, "queue"),
        ({"priority": 1.5}, "priority"),
        ({"max_attempts": 0}, "max_attempts"),
        ({"timeout": -1}, "timeout"),
        ({"timeout": float("nan")}, "timeout"),
        ({"key": ""}, "key"),
        ({"payload": {"when": datetime.now(UTC)}}, "payload"),
        ({"payload": float("inf")}, "payload"),
        ({"delay": -5}, "delay"),
        ({"delay": 1, "run_at": datetime.now(UTC)}, "delay"),
        ({"run_at": datetime(2030, 1, 1)}, "run_at"),
    ],
)
def test_bad_arguments_name_their_field(
    connection: psycopg.Connection[Any], arguments: dict[str, Any], field: str
) -> None:
    options = {"type": "report.build", **arguments}
    with pytest.raises(InvalidJob) as raised:
        submit(connection, **options)
    assert raised.value.field == field
    assert field in raised.value.message
    # Nothing reached the server: the caller's transaction is untouched.
    assert connection.info.transaction_status == psycopg.pq.TransactionStatus.IDLE


@pytest.fixture
def api_service(tmp_path: Path) -> JobService:
    """The control API's job service, as a daemon builds it; submits are checked before the store."""
    raw = {
        "store": {"url": "memory:"},
        "api": {"socket": str(tmp_path / "s")},
        "metrics": {"listen": ""},
        "queues": {"reports": {}},
    }
    host = PluginHost()
    host.load([])
    return Daemon(parse_config(raw, env={}), host, None).service


@pytest.mark.parametrize(
    ("arguments", "field"),
    [
        ({"priority": 2**31}, "priority"),
        ({"priority": -(2**31)}, "priority"),
        ({"max_attempts": 1001}, "max_attempts"),
        ({"key": "k" * 256}, "key"),
        ({"key": "k\x00"}, "key"),
        ({"key": "\ud800"}, "key"),
        ({"type": "jobd.noop\x00"}, "type"),
        ({"queue": "reports\x00"}, "queue"),
        ({"payload": {"k": "a\x00"}}, "payload"),
        ({"payload": "\ud800"}, "payload"),
        ({"delay": 1e12}, "delay"),
        ({"timeout": 0.0}, "timeout"),
    ],
)
async def test_jobd_submit_refuses_what_the_api_refuses(
    connection: psycopg.Connection[Any], api_service: JobService, arguments: dict[str, Any], field: str
) -> None:
    """jobd.submit once skipped the API's bounds (priority, attempts, key length, NULs)."""
    options = {"type": "jobd.noop", "queue": "reports", **arguments}
    with pytest.raises(InvalidJob) as by_api:
        await api_service.submit(options)
    with pytest.raises(InvalidJob) as by_submit:
        submit(connection, **options)
    assert by_api.value.field == by_submit.value.field == field
    assert by_api.value.message == by_submit.value.message
    assert connection.info.transaction_status == psycopg.pq.TransactionStatus.IDLE


def test_importing_the_module_does_not_import_psycopg() -> None:
    code = "import sys, jobd.transactional; print('psycopg' in sys.modules)"
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert found.stdout.strip() == "False"


async def test_the_returned_id_is_the_jobs(store: PostgresStore, connection: psycopg.Connection[Any]) -> None:
    job_id = submit(connection, "report.build")
    connection.commit()
    assert isinstance(job_id, uuid.UUID)
    job = await store.get_job(job_id)
    assert job is not None and job.id == job_id


async def test_a_job_submitted_inside_a_span_carries_its_trace(
    store: PostgresStore, connection: psycopg.Connection[Any]
) -> None:
    from opentelemetry.sdk.trace import TracerProvider

    with TracerProvider().get_tracer("app").start_as_current_span("order") as span:
        traced = submit(connection, "report.build")
    untraced = submit(connection, "report.build")
    connection.commit()
    context = span.get_span_context()
    flags = int(context.trace_flags)
    job = await store.get_job(traced)
    assert job is not None
    assert job.traceparent == f"00-{context.trace_id:032x}-{context.span_id:016x}-{flags:02x}"
    job = await store.get_job(untraced)
    assert job is not None and job.traceparent is None
