"""Benchmark: how closely jobd drains a rate-limited queue at its configured rate.

    .venv/bin/python bench/rate_limit.py --store sqlite --rates 100/s,1000/s
    .venv/bin/python bench/rate_limit.py --store postgres --daemons 3 --rates 100/s,1000/s \\
        --postgres-url postgresql://postgres@127.0.0.1/jobd_bench

For each rate: fresh daemon(s) whose `default` queue has that `rate` (and its default
burst), jobs enough for the burst plus `--seconds` of the rate submitted into the paused
queue, then resumed. Read from the jobs' `started_at` (the daemons' own clocks):
- achieved: starts per second after the burst, (starts - burst) / (last start - first start);
- busiest: the most starts within any one second, against the bound burst + rate x 1 s.
PostgreSQL: the database's `jobd` schema is dropped first: use a dedicated database.
This is a benchmark, not a test: it asserts nothing and prints figures.
"""

from __future__ import annotations

import argparse
import bisect
import shutil
import sqlite3
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from drain import Daemon, fresh_store, store_parser

from jobd.rates import RateLimit, parse_rate


def start_times(store: str, url: str) -> list[float]:
    """Every job's start, in seconds since the epoch, earliest first."""
    if store == "sqlite":
        with sqlite3.connect(url.removeprefix("sqlite://")) as conn:
            micros = [row[0] for row in conn.execute("SELECT started_at FROM jobs ORDER BY started_at")]
        epoch = datetime(1970, 1, 1, tzinfo=UTC)
        return [(epoch + timedelta(microseconds=value)).timestamp() for value in micros]
    import psycopg

    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT started_at FROM jobd.jobs ORDER BY started_at").fetchall()
    return [row[0].timestamp() for row in rows]


def run(args: argparse.Namespace, rate: RateLimit) -> dict[str, float]:
    directory = Path(tempfile.mkdtemp(prefix="jobd-bench-rate-", dir="/tmp"))
    try:
        url = fresh_store(args.store, directory, args.postgres_url)
        jobs = rate.burst + round(rate.per_second * args.seconds)
        queue = {"rate": rate.text}
        daemons = [Daemon(directory, url, args.concurrency, f"d{i}", queue) for i in range(args.daemons)]
        try:
            with daemons[0].client() as client:
                client.post("/v1/queues/default/pause").raise_for_status()
                for offset in range(0, jobs, 1000):
                    batch = [{"type": "jobd.noop"}] * min(1000, jobs - offset)
                    client.post("/v1/jobs/batch", json={"jobs": batch}).raise_for_status()
                client.post("/v1/queues/default/resume").raise_for_status()
                while client.get("/v1/stats").json()["queues"]["default"]["completed"] < jobs:
                    time.sleep(0.2)
        finally:
            for daemon in daemons:
                daemon.stop()
        starts = start_times(args.store, url)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    took = starts[-1] - starts[0]
    busiest = max(bisect.bisect_right(starts, start + 1.0) - first for first, start in enumerate(starts))
    return {
        "jobs": jobs,
        "configured_per_s": rate.per_second,
        "achieved_per_s": (len(starts) - rate.burst) / took if took else float("inf"),
        "busiest_second": busiest,
        "bound": rate.burst + rate.per_second,
    }


def main() -> None:
    parser = store_parser(__doc__, ["sqlite", "postgres"], "sqlite")
    parser.add_argument("--rates", default="100/s,1000/s", help="comma-separated rates, as in the config")
    parser.add_argument("--seconds", type=float, default=10.0, help="of the rate's jobs after the burst")
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--daemons", type=int, default=1)
    args = parser.parse_args()
    if args.store == "sqlite" and args.daemons != 1:
        raise SystemExit("an SQLite store serves one daemon only")
    print(f"store {args.store}, {args.daemons} daemon(s), concurrency {args.concurrency}")
    print(f"{'rate':>8} {'jobs':>7} {'achieved/s':>11} {'busiest 1 s':>12} {'bound':>7}")
    for text in args.rates.split(","):
        rate = parse_rate(text)
        result = run(args, rate)
        print(
            f"{rate.text:>8} {result['jobs']:>7} {result['achieved_per_s']:>11.1f}"
            f" {result['busiest_second']:>12} {result['bound']:>7.0f}"
        )


if __name__ == "__main__":
    main()
