"""Prometheus collectors on a private registry.

The registry is private so that nothing else in the process (a plugin, a library that
registers on the global default registry) leaks into `/metrics`, and so that tests can
make as many `Metrics` as they like. Every method is cheap and never touches the store:
`render()` runs on the event loop, and the queue gauges are refreshed from counts the
caller fetched in one batch (see `set_queue_counts`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

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

    def job_submitted(self, queue: str, job_type: str) -> None:
        _child(self._submitted_by, self._submitted, queue, job_type).inc()

    def job_started(self, queue: str, wait_seconds: float) -> None:
        """A ready job was claimed; `wait_seconds` is ready -> started."""
        _child(self._wait_by, self._wait, queue).observe(max(wait_seconds, 0.0))

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
        drops to zero reads 0 instead of keeping its last value or vanishing.
        """
        self._queues_seen.update(counts)
        for queue in self._queues_seen:
            by_state = counts.get(queue, {})
            for state in JobState:
                self._jobs.labels(queue=queue, state=state.value).set(by_state.get(state.value, 0))

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
