"""Benchmark: how fast a jobd daemon drains no-op jobs, how soon it starts one, and what
each job costs in CPU.

    .venv/bin/python bench/drain.py --store sqlite --jobs 20000 --concurrency 100
    .venv/bin/python bench/drain.py --store postgres --postgres-url postgresql://postgres@127.0.0.1/jobd_bench
    .venv/bin/python bench/drain.py --store postgres --daemons 3 --postgres-url …
    .venv/bin/python bench/drain.py --store postgres --history 5000000 --postgres-url …

Runs the real `jobd` program(s) on a private socket and measures from the client side:
- submit: jobs/s through `POST /v1/jobs/batch` (1,000 per request) into a paused queue,
  and the latency of single `POST /v1/jobs` requests on an idle daemon, through httpx
  and through a plain socket (the daemon's share alone);
- drain: jobs/s from `resume` until every job is completed (polling `GET /v1/stats`);
- CPU: microseconds of CPU per drained job, of the daemon(s) and of the PostgreSQL
  server (every `postgres` process: backends, WAL writer, checkpointer), from /proc;
- enqueue->start: the job's `started_at` minus the moment the client sent its submit, on
  an idle daemon (same host, same clock), p50/p99;
- stats: how long `GET /v1/stats` takes, p50/max of 50 requests.
`--history N` first fills the store with N completed jobs (straight into the database,
as if the daemon had run them), so a run shows what a store that kept its history costs.
This is a benchmark, not a test: it asserts nothing and prints figures.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import tomli_w

BIN = Path(sys.executable).parent
TICKS = os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(len(ordered) * fraction), len(ordered) - 1)]


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU of the given processes so far."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        total += int(fields[11]) + int(fields[12])
    return total / TICKS


def postgres_pids() -> list[int]:
    """Every process of the PostgreSQL server on this machine."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() in ("postgres", "postmaster"):
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


class Daemon:
    def __init__(
        self,
        directory: Path,
        store_url: str,
        concurrency: int,
        name: str,
        queue: dict[str, Any] | None = None,
        sections: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        """`jobd run` on a socket in `directory`. `queue` adds keys of [queues.default]
        (bench/rate_limit.py gives it a rate); `sections` adds whole config sections
        (bench/soak.py sets [retention])."""
        self.socket = str(directory / f"{name}.sock")
        config = {
            "store": {"url": store_url},
            "api": {"socket": self.socket},
            "metrics": {"listen": ""},
            "daemon": {"log_level": "warning"},
            "workers": {"concurrency": concurrency},
            "queues": {"default": {"concurrency": concurrency, **(queue or {})}},
            **(sections or {}),
        }
        self.config = directory / f"{name}.toml"
        self.config.write_text(tomli_w.dumps(config))
        self.log = open(directory / f"{name}.log", "wb")  # noqa: SIM115
        self.process = subprocess.Popen(
            [str(BIN / "jobd"), "run", "--config", str(self.config)], stdout=self.log, stderr=self.log
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with self.client() as client:
                    if client.get("/v1/health").status_code == 200:
                        return
            except httpx.TransportError:
                time.sleep(0.05)
        raise SystemExit(f"jobd did not start; see {directory}/{name}.log")

    def client(self) -> httpx.Client:
        return httpx.Client(
            transport=httpx.HTTPTransport(uds=self.socket), base_url="http://jobd", timeout=120
        )

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(60)
        self.log.close()


def store_parser(
    doc: str | None,
    stores: list[str],
    default: str,
    url_help: str = "a scratch database: the benchmark drops its jobd schema first",
) -> argparse.ArgumentParser:
    """The command line every benchmark here starts from: its docstring as the help,
    `--store` among `stores`, and `--postgres-url` ($JOBD_TEST_POSTGRES_URL, else the
    local server's `test` database)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", choices=stores, default=default)
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("JOBD_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"),
        help=url_help,
    )
    return parser


def fresh_store(store: str, directory: Path, postgres_url: str) -> str:
    """The URL of an empty store of the given kind: in `directory` for SQLite; for
    PostgreSQL, `postgres_url` with its jobd schema dropped first."""
    if store == "memory":
        return "memory:"
    if store == "sqlite":
        return f"sqlite://{directory}/jobd.db"
    import psycopg

    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("DROP SCHEMA IF EXISTS jobd CASCADE")
    return postgres_url


def fill_history(store: str, url: str, jobs: int) -> float:
    """`jobs` completed jobs straight into the store; returns the seconds it took."""
    started = time.perf_counter()
    if store == "postgres":
        import psycopg

        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO jobd.finished_jobs (id, type, queue, payload, state, priority, attempts,"
                " max_attempts, run_at, created_at, updated_at, started_at, finished_at)"
                " SELECT gen_random_uuid(), 'jobd.noop', 'default', to_jsonb(n), 'completed', 0, 1, 3,"
                "  now() - interval '1 day', now() - interval '1 day', now() - interval '1 day',"
                "  now() - interval '1 day', now() - interval '1 day'"
                " FROM generate_series(1, %s) AS n",
                (jobs,),
            )
            conn.execute("VACUUM ANALYZE jobd.finished_jobs")
    else:
        path = url.removeprefix("sqlite://")
        with sqlite3.connect(path) as conn:
            conn.execute(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?)"
                " INSERT INTO jobs (id, type, queue, payload, state, priority, attempts, max_attempts,"
                "  run_at, created_at, updated_at, started_at, finished_at)"
                " SELECT lower(hex(randomblob(16))), 'jobd.noop', 'default', i, 'completed', 0, 1, 3,"
                "  t, t, t, t, t FROM n, (SELECT (unixepoch() - 86400) * 1000000 AS t)",
                (jobs,),
            )
            # The store counts the jobs it inserts itself; these bypassed it.
            conn.execute(
                "INSERT INTO job_counts (queue, state, jobs) VALUES ('default', 'completed', ?)"
                " ON CONFLICT (queue, state) DO UPDATE SET jobs = jobs + excluded.jobs",
                (jobs,),
            )
    return time.perf_counter() - started


def drain(daemons: list[Daemon], jobs: int, postgres: bool) -> dict[str, float]:
    with daemons[0].client() as client:
        client.post("/v1/queues/default/pause").raise_for_status()
        started = time.perf_counter()
        for offset in range(0, jobs, 1000):
            batch = [{"type": "jobd.noop", "payload": i} for i in range(offset, min(offset + 1000, jobs))]
            client.post("/v1/jobs/batch", json={"jobs": batch}).raise_for_status()
        submit_seconds = time.perf_counter() - started
        baseline = client.get("/v1/stats").json()["queues"]["default"]["completed"]
        daemon_pids = [daemon.process.pid for daemon in daemons]
        server_pids = postgres_pids() if postgres else []  # now that the daemons' backends exist
        daemon_cpu, server_cpu = cpu_seconds(daemon_pids), cpu_seconds(server_pids)
        started = time.perf_counter()
        client.post("/v1/queues/default/resume").raise_for_status()
        for daemon in daemons[1:]:  # other daemons learn of the resume at their next poll: nudge them
            with daemon.client() as other:
                other.post("/v1/queues/default/resume").raise_for_status()
        while True:
            done = client.get("/v1/stats").json()["queues"]["default"]["completed"] - baseline
            if done >= jobs:
                break
            time.sleep(0.1)  # each poll counts the live jobs: not too often
        drain_seconds = time.perf_counter() - started
        daemon_cpu = cpu_seconds(daemon_pids) - daemon_cpu
        server_cpu = cpu_seconds(server_pids) - server_cpu
    return {
        "submit_jobs_per_s": jobs / submit_seconds,
        "drain_jobs_per_s": jobs / drain_seconds,
        "drain_seconds": drain_seconds,
        "daemon_cpu_us_per_job": daemon_cpu / jobs * 1e6,
        "server_cpu_us_per_job": server_cpu / jobs * 1e6,
    }


def latency(daemon: Daemon, samples: int) -> dict[str, float]:
    submit_ms: list[float] = []
    start_ms: list[float] = []
    with daemon.client() as client:
        ids = []
        for i in range(samples + 20):
            time.sleep(0.01)  # an idle daemon: the previous job has finished
            sent = time.time()
            before = time.perf_counter()
            answer = client.post("/v1/jobs", json={"type": "jobd.noop", "payload": i})
            took = time.perf_counter() - before
            answer.raise_for_status()
            if i >= 20:  # warm-up
                submit_ms.append(took * 1000)
                ids.append((answer.json()["id"], sent))
        for job_id, sent in ids:
            job = client.get(f"/v1/jobs/{job_id}/wait", params={"timeout": "30"}).json()
            started_at = datetime.fromisoformat(job["started_at"].replace("Z", "+00:00")).timestamp()
            start_ms.append((started_at - sent) * 1000)
    return {
        "submit_p50_ms": statistics.median(submit_ms),
        "submit_p99_ms": percentile(submit_ms, 0.99),
        "enqueue_to_start_p50_ms": statistics.median(start_ms),
        "enqueue_to_start_p99_ms": percentile(start_ms, 0.99),
    }


def raw_submit_latency(daemon: Daemon, samples: int) -> dict[str, float]:
    """Single submits over a plain keep-alive socket: the daemon's own share of a submit,
    without the ~0.5 ms the httpx client spends on each request."""
    import json
    import socket

    took: list[float] = []
    with socket.socket(socket.AF_UNIX) as conn:
        conn.connect(daemon.socket)
        for i in range(samples + 20):
            time.sleep(0.01)
            body = json.dumps({"type": "jobd.noop", "payload": i}).encode()
            request = (
                b"POST /v1/jobs HTTP/1.1\r\nhost: jobd\r\ncontent-type: application/json\r\n"
                b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
            )
            before = time.perf_counter()
            conn.sendall(request)
            answer = b""
            while b"\r\n\r\n" not in answer:
                answer += conn.recv(65536)
            head, _, rest = answer.partition(b"\r\n\r\n")
            length = int(
                next(
                    line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")
                ).split(b":")[1]
            )
            while len(rest) < length:
                rest += conn.recv(65536)
            if i >= 20:
                took.append((time.perf_counter() - before) * 1000)
    return {"submit_raw_p50_ms": statistics.median(took), "submit_raw_p99_ms": percentile(took, 0.99)}


def stats_latency(daemon: Daemon) -> dict[str, float]:
    took = []
    with daemon.client() as client:
        for _ in range(50):
            before = time.perf_counter()
            client.get("/v1/stats").raise_for_status()
            took.append((time.perf_counter() - before) * 1000)
    return {"stats_p50_ms": statistics.median(took), "stats_max_ms": max(took)}


def main() -> None:
    parser = store_parser(__doc__, ["memory", "sqlite", "postgres"], "sqlite")
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--daemons", type=int, default=1)
    parser.add_argument("--latency-samples", type=int, default=300)
    parser.add_argument("--history", type=int, default=0, help="completed jobs to keep in the store first")
    parser.add_argument("--keep", action="store_true", help="keep the run directory with the daemons' logs")
    args = parser.parse_args()
    directory = Path(tempfile.mkdtemp(prefix="jobd-bench-", dir="/tmp"))
    if args.store == "memory" and (args.daemons != 1 or args.history):
        raise SystemExit("the memory store serves one daemon only, and keeps no history")
    if args.store == "sqlite" and args.daemons != 1:
        raise SystemExit("an SQLite store serves one daemon only")
    url = fresh_store(args.store, directory, args.postgres_url)
    results: dict[str, Any] = {
        "store": args.store,
        "daemons": args.daemons,
        "jobs": args.jobs,
        "concurrency": args.concurrency,
        "history": args.history,
    }
    if args.history:
        config = directory / "migrate.toml"
        config.write_text(
            tomli_w.dumps({"store": {"url": url}, "api": {"socket": str(directory / "m.sock")}})
        )
        subprocess.run([str(BIN / "jobd"), "migrate", "--config", str(config)], check=True)
        results["history_fill_seconds"] = fill_history(args.store, url, args.history)
    daemons = [Daemon(directory, url, args.concurrency, f"d{i}") for i in range(args.daemons)]
    try:
        results.update(drain(daemons, args.jobs, args.store == "postgres"))
        if args.latency_samples:
            results.update(latency(daemons[0], args.latency_samples))
            results.update(raw_submit_latency(daemons[0], args.latency_samples))
        results.update(stats_latency(daemons[0]))
    finally:
        for daemon in daemons:
            daemon.stop()
        if args.keep:
            print(f"run directory kept: {directory}")
        else:
            shutil.rmtree(directory, ignore_errors=True)
    for key, value in results.items():
        print(f"{key:26} {value:.2f}" if isinstance(value, float) else f"{key:26} {value}")


if __name__ == "__main__":
    main()
