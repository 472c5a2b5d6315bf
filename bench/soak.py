"""Soak: push many jobs through one daemon and record, every interval, what must stay flat.

    .venv/bin/pip install -e '.[bench]'        # matplotlib, for the plots
    .venv/bin/python bench/soak.py                                   # 2,000,000 jobs, SQLite then PostgreSQL
    .venv/bin/python bench/soak.py --store sqlite --jobs 30000 --rate 500 --interval 2
    .venv/bin/python bench/soak.py --store postgres --postgres-url postgresql://postgres@127.0.0.1/jobd_soak

For each store it starts the real `jobd` program (bench/drain.py's `Daemon`) with
`[retention] completed = "1m"`, so that pruning has to keep the store's size level, and
submits `jobd.noop` jobs through `POST /v1/jobs/batch` at a steady `--rate` (a batch every
100 ms) until `--jobs` were submitted and completed. `--rate 0` submits as fast as the
daemon drains instead, holding about two batches' worth waiting. Every `--interval`
seconds it records:

- `rss_mib`, `fds`, `threads`: the daemon's resident memory, open file descriptors and
  threads, from /proc;
- `store_mib`: the store on disk: the SQLite file with its -wal and -shm files, or
  `pg_total_relation_size` of every table in the `jobd` schema (indexes and TOAST
  included);
- `stored_jobs`: the jobs the store holds (`GET /v1/stats`), which retention should level;
- `submitted_per_s`, `drained_per_s`: jobs submitted, and completed
  (`jobd_jobs_finished_total`), per second over the interval;
- `wait_p50_ms`, `wait_p99_ms`, `wait_mean_ms`: enqueue→start over the interval, from the
  daemon's `jobd_job_wait_seconds` histogram (ready → started): the quantiles interpolated
  within its buckets (1, 2.5, 5, 10, 25, 50, 100 ms, …) as Prometheus's
  `histogram_quantile` does, the mean exact.

It writes `soak-STORE.csv`, `soak-STORE.json` (the series and the run's settings) and
`soak-STORE.png` (one panel per figure against time) into `--out`. This is a benchmark,
not a test: it asserts nothing. The PostgreSQL run empties the `jobd` schema of the
database it is given first.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import httpx
from drain import Daemon, store_parser
from prometheus_client.parser import text_string_to_metric_families

BATCH_PERIOD = 0.1  # seconds between submitted batches
MAX_BATCH = 1000  # jobs per POST /v1/jobs/batch
STORED_STATES = ("pending", "scheduled", "running", "completed")  # a no-op job is in one of these


@dataclass(frozen=True)
class Sample:
    elapsed_s: float
    rss_mib: float
    fds: int
    threads: int
    store_mib: float
    stored_jobs: int
    submitted: int
    completed: int
    submitted_per_s: float
    drained_per_s: float
    wait_p50_ms: float
    wait_p99_ms: float
    wait_mean_ms: float


@dataclass(frozen=True)
class WaitHistogram:
    """The cumulative counts of `jobd_job_wait_seconds` (every queue), by upper bound."""

    buckets: dict[float, float]
    total: float
    seconds: float

    def since(self, earlier: WaitHistogram) -> WaitHistogram:
        return WaitHistogram(
            {bound: count - earlier.buckets.get(bound, 0.0) for bound, count in self.buckets.items()},
            self.total - earlier.total,
            self.seconds - earlier.seconds,
        )

    def quantile(self, fraction: float) -> float:
        """Prometheus's histogram_quantile: linear within the bucket the rank falls in."""
        if self.total <= 0:
            return math.nan
        rank = fraction * self.total
        lower, below = 0.0, 0.0
        for bound in sorted(self.buckets):
            count = self.buckets[bound]
            if count >= rank:
                if math.isinf(bound):
                    return lower
                return lower + (bound - lower) * (rank - below) / max(count - below, 1e-12)
            lower, below = bound, count
        return lower

    def mean(self) -> float:
        return self.seconds / self.total if self.total > 0 else math.nan


@dataclass(frozen=True)
class Scrape:
    completed: float
    wait: WaitHistogram


def scrape(client: httpx.Client) -> Scrape:
    text = client.get("/metrics").raise_for_status().text
    completed = 0.0
    buckets: dict[float, float] = {}
    total = seconds = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "jobd_jobs_finished_total" and sample.labels.get("outcome") == "completed":
                completed += sample.value
            elif sample.name == "jobd_job_wait_seconds_bucket":
                bound = float(sample.labels["le"])
                buckets[bound] = buckets.get(bound, 0.0) + sample.value
            elif sample.name == "jobd_job_wait_seconds_count":
                total += sample.value
            elif sample.name == "jobd_job_wait_seconds_sum":
                seconds += sample.value
    return Scrape(completed, WaitHistogram(buckets, total, seconds))


def process_figures(pid: int) -> tuple[float, int, int]:
    """The daemon's resident memory (MiB), open descriptors and threads."""
    status = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line
    )
    rss_kib = int(status["VmRSS"].split()[0])
    return rss_kib / 1024, len(os.listdir(f"/proc/{pid}/fd")), int(status["Threads"])


class StoreSize:
    """Bytes the store takes on disk."""

    def __init__(self, store: str, url: str) -> None:
        self._store = store
        self._url = url

    def mib(self) -> float:
        if self._store == "sqlite":
            path = self._url.removeprefix("sqlite://")
            files = [Path(path + suffix) for suffix in ("", "-wal", "-shm")]
            return sum(file.stat().st_size for file in files if file.exists()) / 2**20
        import psycopg

        with psycopg.connect(self._url, autocommit=True) as conn:
            row = conn.execute(
                "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c"
                " JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE n.nspname = 'jobd' AND c.relkind IN ('r', 'p')"
            ).fetchone()
        return float(row[0] if row else 0) / 2**20


class Submitter(threading.Thread):
    """Submits `jobs` no-op jobs: `rate` per second in a batch every BATCH_PERIOD, or with
    `rate` 0 as fast as the daemon drains (keeping about two batches waiting)."""

    def __init__(self, daemon: Daemon, jobs: int, rate: int) -> None:
        super().__init__(daemon=True)
        self._daemon = daemon
        self._jobs = jobs
        self._rate = rate
        self.submitted = 0
        self.error: Exception | None = None
        self._halt = threading.Event()

    def stop(self) -> None:
        self._halt.set()

    def run(self) -> None:
        try:
            with self._daemon.client() as client:
                self._submit(client)
        except Exception as error:  # reported by the main thread, which stops the run
            self.error = error

    def _submit(self, client: httpx.Client) -> None:
        per_batch = min(MAX_BATCH, max(1, round(self._rate * BATCH_PERIOD))) if self._rate else MAX_BATCH
        started = time.monotonic()
        batches = 0
        while self.submitted < self._jobs and not self._halt.is_set():
            if self._rate:
                due = started + batches * per_batch / self._rate
                self._halt.wait(max(0.0, due - time.monotonic()))
            else:
                while self._waiting(client) > 2 * MAX_BATCH and not self._halt.is_set():
                    self._halt.wait(BATCH_PERIOD)
            count = min(per_batch, self._jobs - self.submitted)
            jobs = [{"type": "jobd.noop", "payload": self.submitted + i} for i in range(count)]
            client.post("/v1/jobs/batch", json={"jobs": jobs}).raise_for_status()
            self.submitted += count
            batches += 1

    @staticmethod
    def _waiting(client: httpx.Client) -> int:
        queue = client.get("/v1/stats").raise_for_status().json()["queues"]["default"]
        return int(queue["pending"] + queue["scheduled"])


def soak(store: str, url: str, args: argparse.Namespace, directory: Path) -> list[Sample]:
    if store == "postgres":
        import psycopg

        with psycopg.connect(url, autocommit=True) as conn:  # start from an empty store
            conn.execute("DROP SCHEMA IF EXISTS jobd CASCADE")
    retention = {"retention": {"completed": args.retention}}
    daemon = Daemon(directory, url, args.concurrency, f"soak-{store}", sections=retention)
    pid = daemon.process.pid
    size = StoreSize(store, url)
    samples: list[Sample] = []
    submitter = Submitter(daemon, args.jobs, args.rate)
    try:
        with daemon.client() as client:
            started = time.monotonic()
            before = scrape(client)
            submitted_before = 0
            last = started
            submitter.start()
            done = False
            while not done:
                time.sleep(max(0.0, last + args.interval - time.monotonic()))
                if submitter.error is not None:
                    raise SystemExit(f"submitting failed: {submitter.error!r}")
                now = time.monotonic()
                current = scrape(client)
                submitted = submitter.submitted
                stats = client.get("/v1/stats").raise_for_status().json()["queues"]["default"]
                rss, fds, threads = process_figures(pid)
                wait = current.wait.since(before.wait)
                sample = Sample(
                    elapsed_s=round(now - started, 1),
                    rss_mib=round(rss, 1),
                    fds=fds,
                    threads=threads,
                    store_mib=round(size.mib(), 2),
                    stored_jobs=sum(int(stats[state]) for state in STORED_STATES),
                    submitted=submitted,
                    completed=int(current.completed),
                    submitted_per_s=round((submitted - submitted_before) / (now - last), 1),
                    drained_per_s=round((current.completed - before.completed) / (now - last), 1),
                    wait_p50_ms=round(wait.quantile(0.5) * 1000, 2),
                    wait_p99_ms=round(wait.quantile(0.99) * 1000, 2),
                    wait_mean_ms=round(wait.mean() * 1000, 2),
                )
                samples.append(sample)
                figures = " ".join(f"{key}={value}" for key, value in asdict(sample).items())
                print(f"{store:8} {figures}", flush=True)
                before, submitted_before, last = current, submitted, now
                done = sample.completed >= args.jobs
    finally:
        submitter.stop()
        submitter.join(30)
        daemon.stop()
    return samples


def write_series(samples: list[Sample], store: str, args: argparse.Namespace, out: Path) -> None:
    names = [field.name for field in fields(Sample)]
    with (out / f"soak-{store}.csv").open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(names)
        writer.writerows([getattr(sample, name) for name in names] for sample in samples)
    settings = {
        "store": store,
        "jobs": args.jobs,
        "rate": args.rate,
        "interval": args.interval,
        "concurrency": args.concurrency,
        "retention_completed": args.retention,
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
    }
    # An interval in which no job started has no wait figures: null in JSON, nan in the CSV.
    series = [{key: _finite_or_none(value) for key, value in asdict(sample).items()} for sample in samples]
    document = {"settings": settings, "samples": series}
    (out / f"soak-{store}.json").write_text(json.dumps(document, indent=1, allow_nan=False))


def _finite_or_none(value: float) -> float | None:
    return None if math.isnan(value) else value


def plot(samples: list[Sample], store: str, args: argparse.Namespace, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    minutes = [sample.elapsed_s / 60 for sample in samples]
    panels: list[tuple[str, list[tuple[str, str]]]] = [
        ("resident memory, MiB", [("rss_mib", "RSS")]),
        ("open descriptors / threads", [("fds", "descriptors"), ("threads", "threads")]),
        ("store on disk, MiB", [("store_mib", "store")]),
        ("jobs in the store", [("stored_jobs", "stored")]),
        ("jobs/s", [("submitted_per_s", "submitted"), ("drained_per_s", "drained")]),
        ("enqueue→start, ms", [("wait_p99_ms", "p99"), ("wait_p50_ms", "p50"), ("wait_mean_ms", "mean")]),
    ]
    figure, axes = plt.subplots(len(panels), 1, figsize=(9, 2.2 * len(panels)), sharex=True)
    for axis, (title, series) in zip(axes, panels, strict=True):
        for name, label in series:
            axis.plot(minutes, [getattr(sample, name) for sample in samples], label=label, linewidth=1)
        axis.set_ylabel(title, fontsize=8)
        axis.set_ylim(bottom=0)
        axis.grid(alpha=0.3)
        if len(series) > 1:
            axis.legend(fontsize=7, loc="upper right")
    axes[-1].set_xlabel("minutes")
    rate = f"{args.rate} jobs/s" if args.rate else "as fast as it drains"
    figure.suptitle(
        f"jobd soak, {store}: {args.jobs:,} no-op jobs at {rate}, concurrency {args.concurrency}, "
        f"completed jobs pruned after {args.retention}",
        fontsize=9,
    )
    figure.tight_layout()
    figure.savefig(out / f"soak-{store}.png", dpi=110)
    plt.close(figure)


def main() -> None:
    parser = store_parser(
        __doc__, ["sqlite", "postgres", "both"], "both", "a database whose jobd schema the soak may drop"
    )
    parser.add_argument("--jobs", type=int, default=2_000_000)
    parser.add_argument(
        "--rate", type=int, default=2000, help="jobs submitted per second; 0: as fast as drained"
    )
    parser.add_argument("--interval", type=float, default=10.0, help="seconds between samples")
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--retention", default="1m", help="[retention] completed")
    parser.add_argument(
        "--out", type=Path, help="where the series and plots go (default: a new directory in /tmp)"
    )
    parser.add_argument("--no-plot", action="store_true", help="write the series only (no matplotlib needed)")
    args = parser.parse_args()
    if args.jobs < 1 or args.rate < 0 or args.interval <= 0:
        parser.error("--jobs must be at least 1, --rate at least 0 and --interval above 0")
    out = args.out or Path(tempfile.mkdtemp(prefix="jobd-soak-out-", dir="/tmp"))
    out.mkdir(parents=True, exist_ok=True)
    stores = ["sqlite", "postgres"] if args.store == "both" else [args.store]
    for store in stores:
        directory = Path(tempfile.mkdtemp(prefix="jobd-soak-", dir="/tmp"))
        try:
            url = f"sqlite://{directory}/jobd.db" if store == "sqlite" else args.postgres_url
            samples = soak(store, url, args, directory)
        finally:
            shutil.rmtree(directory, ignore_errors=True)
        write_series(samples, store, args, out)
        if not args.no_plot:
            plot(samples, store, args, out)
    print(f"series and plots in {out}")


if __name__ == "__main__":
    main()
