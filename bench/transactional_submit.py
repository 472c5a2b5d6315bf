"""Benchmark: `jobd.submit` throughput on one psycopg connection, no daemon running.

    .venv/bin/python bench/transactional_submit.py --postgres-url postgresql://postgres@127.0.0.1/jobd_bench

The database's `jobd` schema is dropped and migrated afresh first: use a dedicated
database. Each round commits `per-transaction` submits at a time, as an application
would inside its own transactions (every commit is durable: one fsync each).
This is a benchmark, not a test: it asserts nothing and prints figures.
"""

from __future__ import annotations

import argparse
import os
import time

import psycopg
import trio

import jobd
from jobd.store.postgres import PostgresStore


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("JOBD_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"),
    )
    parser.add_argument("--jobs", type=int, default=3000, help="jobs per round")
    args = parser.parse_args()
    with psycopg.connect(args.postgres_url, autocommit=True) as conn:
        conn.execute("DROP SCHEMA IF EXISTS jobd CASCADE")
    store = PostgresStore(args.postgres_url)
    trio.run(store.open)
    trio.run(store.close)
    with psycopg.connect(args.postgres_url) as conn:
        for per_transaction in (1, 10, 100):
            transactions = max(args.jobs // per_transaction, 1)
            started = time.perf_counter()
            for _ in range(transactions):
                for n in range(per_transaction):
                    jobd.submit(conn, "jobd.noop", {"n": n})
                conn.commit()
            seconds = time.perf_counter() - started
            jobs = transactions * per_transaction
            print(
                f"{per_transaction:4} per transaction: {jobs / seconds:8.0f} jobs/s, "
                f"{transactions / seconds:6.0f} commits/s"
            )


if __name__ == "__main__":
    main()
