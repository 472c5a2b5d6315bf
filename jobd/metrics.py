"""Prometheus collectors on a private registry.

The registry is private so that nothing else in the process (a plugin, a library that
registers on the global default registry) leaks into `/metrics`, and so that tests can
make as many `Metrics` as they like. Every method is cheap and never touches the store:
`render()` runs on the event loop, and the queue gauges are refreshed from counts the
caller fetched in one batch (see `set_queue_counts`).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Literal, TypeVar

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

from jobd.job import JobState

_Labelled = TypeVar("_Labelled", Counter, Histogram)


def _child(cache: dict[tuple[str, ...], _Labelled], metric: _Labelled, *values: str) -> _Labelled:
    """`metric`'s child for the label `values` (in the metric's label order), made once."""
    child = cache.get(values)
    if child is None:
        child = cache[values] = metric.labels(*values)
    return child


# The `*_created` series double the exposition and no dashboard uses them.
disable_created_metrics()  # type: ignore[no-untyped-call]

OUTCOMES = frozenset({"completed", "failed", "retried", "cancelled"})

# Jobs run from milliseconds (a webhook) to hours (a backup); waits in a backed-up or
# paused queue can last a day. Buckets span both ends so quantiles stay meaningful.
TIME_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0,
    3600.0, 7200.0, 21600.0, 86400.0,
)  # fmt: skip


# A store call takes a fraction of a millisecond on a local SQLite file and up to the
# statement timeout on a PostgreSQL server in trouble.
STORE_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip

StoreOperation = Literal["claim", "complete", "insert"]
STORE_OPERATIONS: tuple[StoreOperation, ...] = ("claim", "complete", "insert")


class StoreCallTimer:
    """Times one store call into `jobd_store_call_duration_seconds`, however it ends."""

    __slots__ = ("_histogram", "_started")

    def __init__(self, histogram: Histogram) -> None:
        self._histogram = histogram
        self._started = 0.0

    def __enter__(self) -> None:
        self._started = time.perf_counter()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._histogram.observe(time.perf_counter() - self._started)


@dataclass(frozen=True, slots=True)
class Exposition:
    """The metrics as `GET /metrics` answers them."""

    body: bytes
    content_type: str


class Metrics:
    """Prometheus collectors on a private CollectorRegistry."""

    def __init__(self, version: str) -> None:
        self.registry = CollectorRegistry()
        self._submitted = Counter(
            "jobd_jobs_submitted",
            "Jobs accepted by this daemon.",
            ["queue", "type"],
            registry=self.registry,
        )
        self._finished = Counter(
            "jobd_jobs_finished",
            "Attempts and jobs that ended, by outcome (completed, failed, retried, cancelled).",
            ["queue", "type", "outcome"],
            registry=self.registry,
        )
        self._duration = Histogram(
            "jobd_job_duration_seconds",
            "Time one attempt of a job ran, from start to its outcome.",
            ["queue", "type"],
            buckets=TIME_BUCKETS,
            registry=self.registry,
        )
        self._wait = Histogram(
            "jobd_job_wait_seconds",
            "Time a job waited from ready (pending) to started.",
            ["queue"],
            buckets=TIME_BUCKETS,
            registry=self.registry,
        )
        self._jobs = Gauge(
            "jobd_jobs",
            "Jobs in the store by queue and state, as of the last refresh.",
            ["queue", "state"],
            registry=self.registry,
        )
        self._busy = Gauge("jobd_workers_busy", "Jobs running in this daemon now.", registry=self.registry)
        self._capacity = Gauge(
            "jobd_workers_capacity", "Jobs this daemon may run at once.", registry=self.registry
        )
        build_info = Gauge(
            "jobd_build_info", "Always 1; the label carries the version.", ["version"], registry=self.registry
        )
        build_info.labels(version=version).set(1)
        self._schedule_ticks = Counter(
            "jobd_schedule_ticks",
            "Ticks of a schedule this daemon recorded in the store (a tick made a job, or none "
            "because the schedule's previous job was unfinished).",
            ["schedule"],
            registry=self.registry,
        )
        self._schedule_jobs = Counter(
            "jobd_schedule_jobs",
            "Jobs a schedule's ticks and triggers made through this daemon.",
            ["schedule"],
            registry=self.registry,
        )
        self._schedule_next_run = Gauge(
            "jobd_schedule_next_run_timestamp_seconds",
            "When a schedule next ticks, in seconds since the Unix epoch; absent while it is "
            "disabled or paused.",
            ["schedule"],
            registry=self.registry,
        )
        self._rate_limited = Counter(
            "jobd_queue_rate_limited",
            "Claims of this daemon that a queue's rate held back: it had jobs ready, room to "
            "start them, and no token left for them.",
            ["queue"],
            registry=self.registry,
        )
        self._oldest_pending = Gauge(
            "jobd_oldest_pending_job_age_seconds",
            "Seconds the oldest pending job of a queue has waited since it became ready (0 when "
            "none waits), in the whole store, as of the last refresh.",
            ["queue"],
            registry=self.registry,
        )
        self._rescued = Counter(
            "jobd_jobs_rescued",
            "Running jobs this daemon rescued because their daemon stopped renewing the lease "
            "(put back to pending, or failed or cancelled).",
            ["queue"],
            registry=self.registry,
        )
        self._discarded = Counter(
            "jobd_completions_discarded",
            "Outcomes of attempts the store's fence refused: the job was no longer this daemon's "
            "(its lease expired and it was rescued, or it was cancelled meanwhile).",
            ["queue"],
            registry=self.registry,
        )
        store_calls = Histogram(
            "jobd_store_call_duration_seconds",
            "Time of one store call of the engine's hot paths, by operation: claim (a claim "
            "alone), complete (outcomes recorded, with the next claim when there is room), "
            "insert (a submit, with a claim when there is room).",
            ["operation"],
            buckets=STORE_BUCKETS,
            registry=self.registry,
        )
        self._store_calls = {operation: store_calls.labels(operation) for operation in STORE_OPERATIONS}
        # Registered at the first report: only a store with a listener has them.
        self._listener_connected = Gauge(
            "jobd_store_listener_connected",
            "1 while this daemon's PostgreSQL notification listener is connected, else 0.",
            registry=None,
        )
        self._listener_connect_time = Gauge(
            "jobd_store_listener_last_connect_timestamp_seconds",
            "When this daemon's PostgreSQL notification listener last (re)connected, in seconds "
            "since the Unix epoch.",
            registry=None,
        )
        self._listener_registered = False
        self._loop_blocked = Counter(
            "jobd_event_loop_blocked",
            "Times the event loop was blocked for 0.5 s or more, by the type of the job that "
            "blocked it (empty: no job did).",
            ["type"],
            registry=self.registry,
        )
        self._loop_blocked_seconds = Counter(
            "jobd_event_loop_blocked_seconds",
            "Seconds the event loop spent blocked (blocks of 0.5 s or more), by the type of the "
            "job that blocked it (empty: no job did).",
            ["type"],
            registry=self.registry,
        )
        self._queues_seen: set[str] = set()
        # Each labelled child, looked up once: `labels()` costs more than the update itself.
        self._submitted_by: dict[tuple[str, ...], Counter] = {}
        self._finished_by: dict[tuple[str, ...], Counter] = {}
        self._duration_by: dict[tuple[str, ...], Histogram] = {}
        self._wait_by: dict[tuple[str, ...], Histogram] = {}
        self._rate_limited_by: dict[tuple[str, ...], Counter] = {}

    def job_submitted(self, queue: str, job_type: str, count: int = 1) -> None:
        """`count` jobs of `job_type` were accepted into `queue`."""
        _child(self._submitted_by, self._submitted, queue, job_type).inc(count)

    def job_started(self, queue: str, wait_seconds: float) -> None:
        """A ready job was claimed; `wait_seconds` is ready -> started."""
        _child(self._wait_by, self._wait, queue).observe(max(wait_seconds, 0.0))

    def queue_rate_limited(self, queue: str) -> None:
        """A claim had jobs of `queue` ready and room for them, but not the tokens."""
        _child(self._rate_limited_by, self._rate_limited, queue).inc()

    def job_finished(self, queue: str, job_type: str, outcome: str, duration: float | None) -> None:
        """An attempt ended (or a waiting job was cancelled: `duration` None)."""
        if (queue, job_type, outcome) not in self._finished_by and outcome not in OUTCOMES:
            raise ValueError(f"unknown outcome {outcome!r} (known: {', '.join(sorted(OUTCOMES))})")
        _child(self._finished_by, self._finished, queue, job_type, outcome).inc()
        if duration is not None:
            _child(self._duration_by, self._duration, queue, job_type).observe(max(duration, 0.0))

    def set_queue_counts(self, counts: Mapping[str, Mapping[str, int]]) -> None:
        """Replace the `jobd_jobs` gauge from queue -> state -> count.

        Every state of every queue ever seen is set, missing ones to 0, so a count that
        drops to zero reads 0 instead of keeping its last value or vanishing. A queue's
        rescue and fence counters read 0 from when it is first seen, not nothing.
        """
        for queue in counts.keys() - self._queues_seen:
            self._rescued.labels(queue)
            self._discarded.labels(queue)
        self._queues_seen.update(counts)
        for queue in self._queues_seen:
            by_state = counts.get(queue, {})
            for state in JobState:
                self._jobs.labels(queue=queue, state=state.value).set(by_state.get(state.value, 0))

    def set_oldest_pending(self, ages: Mapping[str, float]) -> None:
        """Replace `jobd_oldest_pending_job_age_seconds` from queue -> seconds; every queue
        seen by `set_queue_counts` that is missing reads 0 (nothing waits)."""
        for queue in self._queues_seen | ages.keys():
            self._oldest_pending.labels(queue).set(max(ages.get(queue, 0.0), 0.0))

    def job_rescued(self, queue: str) -> None:
        self._rescued.labels(queue).inc()

    def completion_discarded(self, queue: str) -> None:
        self._discarded.labels(queue).inc()

    def store_call(self, operation: StoreOperation) -> StoreCallTimer:
        """`with metrics.store_call("claim"): await store...`: one observation per call."""
        return StoreCallTimer(self._store_calls[operation])

    def set_listener(self, connected: bool, when: datetime | None = None) -> None:
        """The store's listener connected (at `when`) or lost its connection."""
        if not self._listener_registered:
            self.registry.register(self._listener_connected)
            self.registry.register(self._listener_connect_time)
            self._listener_registered = True
        self._listener_connected.set(1 if connected else 0)
        if when is not None:
            self._listener_connect_time.set(when.timestamp())

    def schedule_seen(self, schedule: str) -> None:
        """A schedule in force: its counters read 0 before its first tick, not nothing."""
        self._schedule_ticks.labels(schedule=schedule)
        self._schedule_jobs.labels(schedule=schedule)

    def schedule_fired(self, schedule: str, ticks: int, jobs: int) -> None:
        self._schedule_ticks.labels(schedule=schedule).inc(ticks)
        self._schedule_jobs.labels(schedule=schedule).inc(jobs)

    def set_schedule_next_run(self, schedule: str, when: datetime | None) -> None:
        if when is not None:
            self._schedule_next_run.labels(schedule=schedule).set(when.timestamp())
        else:
            with contextlib.suppress(KeyError):  # it had no next run
                self._schedule_next_run.remove(schedule)

    def loop_blocked(self, job_type: str, seconds: float) -> None:
        """Something (a job of `job_type`, or "" for none) blocked the event loop for `seconds`."""
        self._loop_blocked.labels(type=job_type).inc()
        self._loop_blocked_seconds.labels(type=job_type).inc(seconds)

    def set_workers(self, busy: int, capacity: int) -> None:
        self._busy.set(busy)
        self._capacity.set(capacity)

    def render(self) -> Exposition:
        return Exposition(generate_latest(self.registry), CONTENT_TYPE_LATEST)
