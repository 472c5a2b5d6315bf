"""Benchmark: what dependencies cost. A DAG of 10,000 no-op jobs submitted in one batch
is drained by one daemon, beside the same number of independent jobs, and a chain is run
link by link.

    .venv/bin/python bench/dag.py --store sqlite
    .venv/bin/python bench/dag.py --store postgres --postgres-url postgresql://postgres@127.0.0.1/jobd_bench

Shapes (each submitted to a paused queue, then resumed and timed until all completed):
- flat:  10,000 independent jobs: the baseline;
- dag:   100 layers of 100 jobs, each waiting on 2 jobs of the layer before (`"#INDEX"`);
- chain: 1,000 jobs, each waiting on the one before: one release per round trip.
It prints the submit time of the batch, the drain rate, the daemon's CPU per job, and for
the DAG the extra cost per job over the flat baseline: the price of its releases.
This is a benchmark, not a test: it asserts nothing and prints figures.
"""

from __future__ import annotations

import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from drain import Daemon, cpu_seconds, fresh_store, postgres_pids, store_parser


def shape(name: str, jobs: int, rng: random.Random) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    for index in range(jobs):
        item: dict[str, Any] = {"type": "jobd.noop", "payload": index}
        if name == "dag" and index >= 100:
            layer_start = index // 100 * 100
            item["after"] = [f"#{parent}" for parent in rng.sample(range(layer_start - 100, layer_start), 2)]
        elif name == "chain" and index:
            item["after"] = [f"#{index - 1}"]
        items.append(item)
    return items


def run(daemon: Daemon, items: list[dict[str, Any]], postgres: bool) -> dict[str, float]:
    with daemon.client() as client:
        client.post("/v1/queues/default/pause").raise_for_status()
        baseline = client.get("/v1/stats").json()["queues"]["default"]["completed"]
        started = time.perf_counter()
        client.post("/v1/jobs/batch", json={"jobs": items}).raise_for_status()
        submit_seconds = time.perf_counter() - started
        pids = [daemon.process.pid]
        server = postgres_pids() if postgres else []
        daemon_cpu, server_cpu = cpu_seconds(pids), cpu_seconds(server)
        started = time.perf_counter()
        client.post("/v1/queues/default/resume").raise_for_status()
        while client.get("/v1/stats").json()["queues"]["default"]["completed"] - baseline < len(items):
            time.sleep(0.05)
        seconds = time.perf_counter() - started
        return {
            "submit_s": submit_seconds,
            "drain_s": seconds,
            "jobs_per_s": len(items) / seconds,
            "daemon_cpu_us_per_job": (cpu_seconds(pids) - daemon_cpu) / len(items) * 1e6,
            "server_cpu_us_per_job": (cpu_seconds(server) - server_cpu) / len(items) * 1e6,
        }


def main() -> None:
    parser = store_parser(__doc__, ["memory", "sqlite", "postgres"], "sqlite")
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--chain", type=int, default=1_000)
    parser.add_argument("--concurrency", type=int, default=100)
    args = parser.parse_args()
    directory = Path(tempfile.mkdtemp(prefix="jobd-bench-", dir="/tmp"))
    url = fresh_store(args.store, directory, args.postgres_url)
    daemon = Daemon(directory, url, args.concurrency, "d0")
    rng = random.Random(10)
    try:
        results = {
            "flat": run(daemon, shape("flat", args.jobs, rng), args.store == "postgres"),
            "dag": run(daemon, shape("dag", args.jobs, rng), args.store == "postgres"),
            "chain": run(daemon, shape("chain", args.chain, rng), args.store == "postgres"),
        }
    finally:
        daemon.stop()
        shutil.rmtree(directory, ignore_errors=True)
    print(f"store {args.store}, {args.jobs} jobs (chain {args.chain}), concurrency {args.concurrency}")
    for name, figures in results.items():
        print(f"{name:6}", "  ".join(f"{key} {value:.2f}" for key, value in figures.items()))
    extra = results["dag"]["drain_s"] - results["flat"]["drain_s"]
    print(f"release cost per DAG job over flat: {extra / args.jobs * 1e6:.0f} us of wall time")
    print(f"chain: {results['chain']['drain_s'] / args.chain * 1e3:.2f} ms per link")


if __name__ == "__main__":
    main()
