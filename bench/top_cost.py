"""Benchmark: what a `jobd-ctl top` refresh costs the daemon, with a store that kept
many finished jobs.

    .venv/bin/python bench/top_cost.py --store postgres --history 1000000
    .venv/bin/python bench/top_cost.py --store sqlite --history 1000000

Fills the store with `--history` completed jobs straight into the
database, starts the real `jobd` on it with some jobs running, then makes `--refreshes`
refreshes of the requests `jobd-ctl top` makes (`GET /v1/health`, `GET /v1/stats`,
`GET /v1/jobs?state=running&limit=1000`, `GET /v1/jobs?state=failed&limit=20`) and prints
the time of a refresh (p50, max) and the CPU it took the daemon and the PostgreSQL server.
This is a benchmark, not a test: it asserts nothing and prints figures.
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import tomli_w
from drain import BIN, Daemon, cpu_seconds, fill_history, fresh_store, postgres_pids, store_parser

REQUESTS = (
    ("/v1/health", {}),
    ("/v1/stats", {}),
    ("/v1/jobs", {"state": "running", "limit": "1000"}),
    ("/v1/jobs", {"state": "failed", "limit": "20"}),
)


def main() -> None:
    parser = store_parser(__doc__, ["sqlite", "postgres"], "postgres")
    parser.add_argument("--history", type=int, default=1_000_000)
    parser.add_argument("--refreshes", type=int, default=100)
    args = parser.parse_args()
    directory = Path(tempfile.mkdtemp(prefix="jobd-bench-", dir="/tmp"))
    url = fresh_store(args.store, directory, args.postgres_url)
    config = directory / "migrate.toml"
    config.write_text(tomli_w.dumps({"store": {"url": url}, "api": {"socket": str(directory / "m.sock")}}))
    subprocess.run([str(BIN / "jobd"), "migrate", "--config", str(config)], check=True)
    filled = fill_history(args.store, url, args.history)
    daemon = Daemon(directory, url, 20, "d0")
    try:
        with daemon.client() as client:
            jobs = [{"type": "jobd.sleep", "payload": {"seconds": 600}} for _ in range(20)]
            client.post("/v1/jobs/batch", json={"jobs": jobs}).raise_for_status()
            time.sleep(1)  # the sleepers are claimed: top lists 20 running jobs
            pids, server = [daemon.process.pid], postgres_pids() if args.store == "postgres" else []
            daemon_cpu, server_cpu = cpu_seconds(pids), cpu_seconds(server)
            took = []
            for _ in range(args.refreshes):
                started = time.perf_counter()
                for path, params in REQUESTS:
                    client.get(path, params=params).raise_for_status()
                took.append((time.perf_counter() - started) * 1000)
            daemon_ms = (cpu_seconds(pids) - daemon_cpu) / args.refreshes * 1000
            server_ms = (cpu_seconds(server) - server_cpu) / args.refreshes * 1000
    finally:
        daemon.stop()
        shutil.rmtree(directory, ignore_errors=True)
    print(f"store {args.store}, {args.history} finished jobs kept (filled in {filled:.0f} s)")
    print(f"refresh: p50 {statistics.median(took):.1f} ms, max {max(took):.1f} ms")
    print(f"CPU per refresh: daemon {daemon_ms:.2f} ms, PostgreSQL server {server_ms:.2f} ms")


if __name__ == "__main__":
    main()
