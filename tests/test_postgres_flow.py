"""Dependencies and unique windows across real `jobd` daemons sharing one PostgreSQL
database: a DAG drained by three daemons while one is SIGKILLed, and one key submitted
to two daemons at once. The truth is read from `jobd.jobs` with psycopg."""

from __future__ import annotations

import random
import threading
from typing import Any

import pytest
from conftest import DaemonProcess, wait_until
from test_postgres_daemons import (
    StartDaemon,
    connect,
    counts_by_state,
    owner_prefix,
    start_jobd,
    store,
    submit_batch,
)

pytestmark = [pytest.mark.process, pytest.mark.postgres]
__all__ = ["start_jobd"]  # the fixture: daemons that must log no error

LAYERS, WIDTH = 8, 40  # 320 jobs, each waiting on up to three of the layer before


def dag(rng: random.Random) -> list[dict[str, Any]]:
    jobs: list[dict[str, Any]] = []
    for layer in range(LAYERS):
        for _ in range(WIDTH):
            job: dict[str, Any] = {"type": "testplugin.gather", "payload": {"seconds": 0.02, "n": len(jobs)}}
            if layer:
                before = range((layer - 1) * WIDTH, layer * WIDTH)
                job["after"] = [f"#{index}" for index in rng.sample(before, rng.randint(1, 3))]
            jobs.append(job)
    return jobs


def test_a_dag_runs_in_dependency_order_through_a_sigkill(
    start_jobd: StartDaemon, fresh_postgres_url: str
) -> None:
    config = {**store(fresh_postgres_url, concurrency=8), "daemon": {"log_level": "warning"}}
    daemons = [start_jobd(config=config, name=f"d{i}") for i in range(3)]
    submitted = submit_batch(daemons[0], dag(random.Random(8)))
    total = len(submitted)
    assert sum(job["state"] == "waiting" for job in submitted) == total - WIDTH
    with connect(fresh_postgres_url) as conn:
        completed = wait_until(
            lambda: (n := counts_by_state(conn).get("completed", 0)) >= total // 3 and n,
            timeout=60,
            what="a third of the DAG to complete",
        )
        victim = daemons[1]
        victim_owner = owner_prefix(victim)
        victim.kill()
        assert completed < total, "the DAG was done before the kill"
        wait_until(
            lambda: counts_by_state(conn) == {"completed": total},
            timeout=120,
            what="the whole DAG to complete after the kill",
        )
        rows = {str(row["id"]): row for row in conn.execute("SELECT * FROM jobd.jobs").fetchall()}
    for job in submitted:
        row = rows[job["id"]]
        parents = [rows[str(parent)] for parent in row["parents"] or []]
        # Released only once every parent had completed: the handler read, as it started,
        # each parent's result, which a parent has only once completed. (The daemons'
        # timestamps cannot show the order: each stamps a round with the time it began.)
        assert row["result"]["parents"] == {str(parent["id"]): parent["result"] for parent in parents}
        assert all(parent["result"] is not None for parent in parents)
        # Run once, or twice only when the kill cut off its first attempt.
        assert row["attempts"] == 1 or row["last_error"].startswith(f"lease expired: daemon {victim_owner}")


def submit_at_once(
    daemon: DaemonProcess, body: dict[str, Any], barrier: threading.Barrier, answers: list[tuple[int, str]]
) -> None:
    with daemon.http() as client:
        barrier.wait()
        answer = client.post("/v1/jobs", json=body)
    answers.append((answer.status_code, answer.json()["id"]))


def test_one_key_submitted_to_two_daemons_at_once_makes_one_job(
    start_jobd: StartDaemon, fresh_postgres_url: str
) -> None:
    config = {**store(fresh_postgres_url), "queues": {"default": {"concurrency": 1}}}
    daemons = [start_jobd(config=config, name=f"d{i}") for i in range(2)]
    for attempt in range(10):
        body = {"type": "jobd.noop", "key": f"signup-mail:{attempt}", "unique_for": "10m"}
        answers: list[tuple[int, str]] = []
        barrier = threading.Barrier(2)
        threads = [
            threading.Thread(target=submit_at_once, args=(daemon, body, barrier, answers))
            for daemon in daemons
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(status for status, _ in answers) == [200, 201], answers
        assert answers[0][1] == answers[1][1]
    with connect(fresh_postgres_url) as conn:
        wait_until(lambda: counts_by_state(conn) == {"completed": 10}, timeout=30, what="the ten jobs")
    # Within the window, a finished job still answers for its key.
    with daemons[1].http() as client:
        again = client.post(
            "/v1/jobs", json={"type": "jobd.noop", "key": "signup-mail:0", "unique_for": "10m"}
        )
    assert again.status_code == 200 and again.json()["state"] == "completed"
