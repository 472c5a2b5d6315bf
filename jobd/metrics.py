"""Prometheus collectors on a private registry.

The registry is private so that nothing else in the process (a plugin, a library that
registers on the global default registry) leaks into `/metrics`, and so that tests can
make as many `Metrics` as they like. Every method is cheap and never touches the store:
`render()` runs on the event loop, and the queue gauges are refreshed from counts the
caller fetched in one batch (see `set_queue_counts`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

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
        self._queues_seen: set[str] = set()
        # Each labelled child, looked up once: `labels()` costs more than the update itself.
        self._submitted_by: dict[tuple[str, str], Counter] = {}
        self._finished_by: dict[tuple[str, str, str], Counter] = {}
        self._duration_by: dict[tuple[str, str], Histogram] = {}
        self._wait_by: dict[str, Histogram] = {}

    def job_submitted(self, queue: str, job_type: str) -> None:
        child = self._submitted_by.get((queue, job_type))
        if child is None:
            child = self._submitted_by[(queue, job_type)] = self._submitted.labels(queue=queue, type=job_type)
        child.inc()

    def job_started(self, queue: str, wait_seconds: float) -> None:
        """A ready job was claimed; `wait_seconds` is ready -> started."""
        child = self._wait_by.get(queue)
        if child is None:
            child = self._wait_by[queue] = self._wait.labels(queue=queue)
        child.observe(max(wait_seconds, 0.0))

    def job_finished(self, queue: str, job_type: str, outcome: str, duration: float | None) -> None:
        """An attempt ended (or a waiting job was cancelled: `duration` None)."""
        child = self._finished_by.get((queue, job_type, outcome))
        if child is None:
            if outcome not in OUTCOMES:
                raise ValueError(f"unknown outcome {outcome!r} (known: {', '.join(sorted(OUTCOMES))})")
            child = self._finished_by[(queue, job_type, outcome)] = self._finished.labels(
                queue=queue, type=job_type, outcome=outcome
            )
        child.inc()
        if duration is not None:
            timer = self._duration_by.get((queue, job_type))
            if timer is None:
                timer = self._duration_by[(queue, job_type)] = self._duration.labels(
                    queue=queue, type=job_type
                )
            timer.observe(max(duration, 0.0))

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

    def set_workers(self, busy: int, capacity: int) -> None:
        self._busy.set(busy)
        self._capacity.set(capacity)

    def render(self) -> Exposition:
        return Exposition(generate_latest(self.registry), CONTENT_TYPE_LATEST)
