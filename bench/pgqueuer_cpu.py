"""Benchmark: what a PgQueuer drain costs in CPU, split between its process and the
PostgreSQL server, to set beside `bench/drain.py --store postgres` (daemon / server).

    ~/.cache/jobd-peers/venv/bin/python bench/pgqueuer_cpu.py --postgres-url postgresql://postgres@127.0.0.1/jobd_bench

Runs with the Python of the shared harness's venv (`../shared/bench-peers`), which has
PgQueuer 1.6, asyncpg and uvloop; jobd's own venv has none of them. Configured as the
harness runs PgQueuer: asyncpg, uvloop, one consumer, dequeue batches of 500. It installs
PgQueuer's tables in the database given, enqueues `--jobs` no-op jobs, then times the
drain from the consumer's start until PgQueuer's table is empty (every job logged done),
and removes its tables. This is a benchmark, not a test: it prints figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import time
from datetime import timedelta

import asyncpg
import uvloop
from drain import cpu_seconds, postgres_pids  # the harness's venv has jobd and httpx too
from pgqueuer import PgQueuer
from pgqueuer.db import AsyncpgDriver
from pgqueuer.models import Job
from pgqueuer.queries import Queries


async def drain(url: str, jobs: int) -> None:
    admin = await asyncpg.connect(url)
    queries = Queries(AsyncpgDriver(admin))
    with contextlib.suppress(Exception):  # left over from an interrupted run
        await queries.uninstall()
    await queries.install()
    try:
        for offset in range(0, jobs, 1000):
            count = min(1000, jobs - offset)
            payloads = [json.dumps({"i": i}).encode() for i in range(offset, offset + count)]
            await queries.enqueue(["noop"] * count, payloads, [0] * count)
        worker = PgQueuer(AsyncpgDriver(await asyncpg.connect(url)))
        ran = 0
        all_ran = asyncio.Event()

        @worker.entrypoint("noop")
        async def noop(job: Job) -> None:
            nonlocal ran
            json.loads(job.payload or b"null")
            ran += 1
            if ran >= jobs:
                all_ran.set()

        server = postgres_pids()
        mine, theirs, started = cpu_seconds([os.getpid()]), cpu_seconds(server), time.perf_counter()
        running = asyncio.create_task(worker.run(batch_size=500, dequeue_timeout=timedelta(seconds=30)))
        await all_ran.wait()
        while await admin.fetchval("SELECT count(*) FROM pgqueuer"):  # noqa: ASYNC110 (the database is polled)
            await asyncio.sleep(0.01)
        seconds = time.perf_counter() - started
        mine, theirs = cpu_seconds([os.getpid()]) - mine, cpu_seconds(server) - theirs
        worker.shutdown.set()
        await running
        print(f"drain_jobs_per_s           {jobs / seconds:.2f}")
        print(f"client_cpu_us_per_job      {mine / jobs * 1e6:.2f}")
        print(f"server_cpu_us_per_job      {theirs / jobs * 1e6:.2f}")
    finally:
        await queries.uninstall()
        await admin.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--postgres-url", default="postgresql://postgres@127.0.0.1:5432/jobd_bench")
    parser.add_argument("--jobs", type=int, default=20_000)
    args = parser.parse_args()
    uvloop.run(drain(args.postgres_url, args.jobs))


if __name__ == "__main__":
    main()
