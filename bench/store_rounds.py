"""Benchmark: what a store alone costs a job, without the daemon's engine around it.

    .venv/bin/python bench/store_rounds.py --store sqlite
    .venv/bin/python bench/store_rounds.py --store postgres --postgres-url postgresql://postgres@127.0.0.1/jobd_bench
    .venv/bin/python bench/store_rounds.py --store memory --jobs 50000 --round 50 --repeat 5

In this process, through the `Store` protocol the daemon uses: inserts `--jobs` pending
no-op jobs (1,000 per call, timed apart), then drains them as a dispatcher lane does, in
rounds that record the outcomes of the jobs the round before claimed and claim
`--round` more in one call (`complete_and_claim_jobs`), until none is left. Prints, for
each of `--repeat` fresh stores and their median: the rounds' jobs/s and CPU per job of
this process (the loop and, on SQLite, the store's thread) and of the PostgreSQL server
(every `postgres` process, from /proc); and the CPU per job of the inserts.

A change to a store's SQL or its Python shows here without the engine's noise; whether
it also shows in a daemon's drain is `bench/drain.py`'s to say: on SQLite, work done in
SQL runs with the interpreter let go, so a daemon, which shares the interpreter with
its store's thread, may gain less than this shows, or lose. To compare two versions,
run them alternately, several times each.
This is a benchmark, not a test: it asserts nothing beyond every job completing once.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import trio
from drain import cpu_seconds, fresh_store, postgres_pids, store_parser

from jobd.config import StoreConfig
from jobd.job import new_job_id
from jobd.store import ClaimRequest, Completion, NewJob, Outcome, QueueSlots, Store
from jobd.store.factory import create_store

OWNER = "bench-store-rounds"
LEASE = timedelta(minutes=10)


def new_jobs(count: int, now: datetime) -> list[NewJob]:
    return [
        NewJob(
            id=new_job_id(),
            type="jobd.noop",
            queue="default",
            payload=index,
            priority=0,
            run_at=now,
            max_attempts=3,
            timeout=None,
            key=None,
            created_at=now,
        )
        for index in range(count)
    ]


async def insert_all(store: Store, jobs: int) -> None:
    now = datetime.now(UTC)
    for start in range(0, jobs, 1000):
        await store.insert_jobs(new_jobs(min(1000, jobs - start), now))


async def rounds(store: Store, round_size: int) -> int:
    """Rounds of complete-and-claim until nothing is left; the number of jobs completed."""
    slots = [QueueSlots("default", round_size)]
    done: list[Completion] = []
    completed = 0
    while True:
        now = datetime.now(UTC)
        claim = ClaimRequest(OWNER, slots, round_size, now + LEASE)
        exchanged = await store.complete_and_claim_jobs(done, claim, now)
        completed += sum(exchanged.applied)
        if not exchanged.claimed:
            return completed
        done = [Completion(job.id, OWNER, job.attempts, Outcome.COMPLETED) for job in exchanged.claimed]


class Meter:
    """Wall time, this process's CPU and the PostgreSQL server's, from one reading to the next."""

    def __init__(self, server_pids: list[int]) -> None:
        self._server_pids = server_pids
        self._last = self._read()

    def _read(self) -> tuple[float, float, float]:
        return time.perf_counter(), time.process_time(), cpu_seconds(self._server_pids)

    def lap(self) -> tuple[float, float, float]:
        now = self._read()
        wall, cpu, server = (after - before for after, before in zip(now, self._last, strict=True))
        self._last = now
        return wall, cpu, server


async def measure(url: str, jobs: int, round_size: int, postgres: bool) -> dict[str, float]:
    store = create_store(StoreConfig(url=url))
    await store.open()
    try:
        meter = Meter(postgres_pids() if postgres else [])
        await insert_all(store, jobs)
        _, insert_cpu, insert_server = meter.lap()
        completed = await rounds(store, round_size)
        seconds, cpu, server = meter.lap()
    finally:
        await store.close()
    if completed != jobs:
        raise SystemExit(f"{completed} of {jobs} jobs completed: a store that loses or repeats jobs")
    return {
        "rounds_jobs_per_s": jobs / seconds,
        "rounds_cpu_us_per_job": cpu / jobs * 1e6,
        "rounds_server_cpu_us_per_job": server / jobs * 1e6,
        "insert_cpu_us_per_job": insert_cpu / jobs * 1e6,
        "insert_server_cpu_us_per_job": insert_server / jobs * 1e6,
    }


def main() -> None:
    parser = store_parser(__doc__, ["memory", "sqlite", "postgres"], "sqlite")
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--round", type=int, default=100, help="jobs claimed (and completed) per round")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    postgres = args.store == "postgres"
    rows: list[dict[str, float]] = []
    for _ in range(args.repeat):
        directory = Path(tempfile.mkdtemp(prefix="jobd-bench-", dir="/tmp"))
        url = fresh_store(args.store, directory, args.postgres_url)
        row = trio.run(measure, url, args.jobs, args.round, postgres)
        rows.append(row)
        print("  ".join(f"{key} {value:,.1f}" for key, value in row.items()), flush=True)
    print(f"median of {args.repeat}, {args.jobs} jobs in rounds of {args.round} ({args.store}):")
    for key in rows[0]:
        print(f"{key:<30} {statistics.median(row[key] for row in rows):,.1f}")


if __name__ == "__main__":
    main()
