"""Background upkeep of the store, each a small loop: promote due jobs, rescue expired
leases, prune finished jobs, refresh the queue gauges."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta

import trio
import trio.lowlevel

from jobd.backoff import StoreOutage
from jobd.clock import Clock
from jobd.errors import StoreUnavailable
from jobd.job import JobState
from jobd.metrics import Metrics
from jobd.settings import LiveSettings
from jobd.store import QueueCounts, Rescued, Store

# Pruning often and in small batches: each batch is one store call that holds SQLite's
# one writer, and a batch of 10,000 held claims back for a quarter of a second.
PRUNE_INTERVAL = 10.0
PRUNE_BATCH = 1_000
GAUGE_INTERVAL = 5.0

log = logging.getLogger("jobd.maintenance")


class Maintenance:
    def __init__(
        self,
        store: Store,
        live: LiveSettings,
        metrics: Metrics,
        clock: Clock,
        *,
        wake_workers: Callable[[], None],
    ) -> None:
        self._store = store
        self._live = live
        self._metrics = metrics
        self._clock = clock
        self._wake_workers = wake_workers  # jobs became claimable
        self._schedule_changed = trio.Event()
        self.counts: QueueCounts = {}
        self._warned_queues: set[str] = set()

    def schedule_changed(self) -> None:
        """A job was scheduled for later: the promoter may need to wake sooner."""
        self._schedule_changed.set()

    async def rescue_orphans(self) -> None:
        """At start: for a store no other daemon uses, every `running` job is an orphan
        of this daemon's previous life (it was killed), so rescue them all now."""
        rescued = await self._store.rescue_jobs(self._clock(), all_running=not self._store.shared)
        self._report_rescued(rescued)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._promote_due)
            if self._store.shared:
                # Only other daemons' jobs can be orphaned while this one runs; a store of
                # this daemon alone is rescued once, at start (a stalled loop must not make
                # it rescue its own live jobs).
                nursery.start_soon(
                    self._every, "rescue expired leases", self._lease_check_interval, self._rescue
                )
            nursery.start_soon(self._every, "prune finished jobs", lambda: PRUNE_INTERVAL, self._prune)
            nursery.start_soon(
                self._every, "refresh queue gauges", lambda: GAUGE_INTERVAL, self.refresh_gauges
            )
            task_status.started()

    def _lease_check_interval(self) -> float:
        return max(self._live.current.config.workers.lease / 2, 0.1)

    async def _every(
        self, what: str, interval: Callable[[], float], step: Callable[[], Awaitable[None]]
    ) -> None:
        outage = StoreOutage(log, what)
        while True:
            try:
                await step()
                outage.succeeded()
            except StoreUnavailable as error:
                outage.failed(error)
            await trio.sleep(interval())

    async def _promote_due(self) -> None:
        outage = StoreOutage(log, "promote due jobs")
        while True:
            self._schedule_changed = event = trio.Event()
            poll = self._live.current.config.workers.poll_interval
            try:
                next_run_at = await self._store.promote_due_jobs(self._clock())
                outage.succeeded()
            except StoreUnavailable as error:
                outage.failed(error)
                next_run_at = None
            self._wake_workers()
            wait = poll
            if next_run_at is not None:
                wait = min(poll, max((next_run_at - self._clock()).total_seconds(), 0.0))
            with trio.move_on_after(wait):
                await event.wait()

    async def _rescue(self) -> None:
        self._report_rescued(await self._store.rescue_jobs(self._clock()))

    def _report_rescued(self, rescued: list[Rescued]) -> None:
        for item in rescued:
            job = item.job
            self._metrics.job_rescued(job.queue)
            log.warning(
                "job %s rescued from %s: now %s",
                job.id,
                item.owner,
                job.state.value,
                extra={
                    "job_id": str(job.id),
                    "type": job.type,
                    "queue": job.queue,
                    "attempt": job.attempts,
                    "outcome": "rescued",
                },
            )
            if job.state.finished:
                self._metrics.job_finished(job.queue, job.type, job.state.value, None)
        if rescued:
            self._wake_workers()

    async def _prune(self) -> None:
        retention = self._live.current.config.retention
        now = self._clock()
        before = {
            JobState.COMPLETED: now - timedelta(seconds=retention.completed),
            JobState.FAILED: now - timedelta(seconds=retention.failed),
            JobState.CANCELLED: now - timedelta(seconds=retention.cancelled),
        }
        while True:
            deleted = await self._store.prune_jobs(before, PRUNE_BATCH, now)
            if deleted:
                log.info("pruned %d finished jobs", deleted)
            if deleted < PRUNE_BATCH:
                return
            await trio.lowlevel.checkpoint()  # let other work in between large batches

    def _warn_of_orphan_queues(self) -> None:
        """Jobs wait in a queue this daemon does not serve (dropped from the config): say so once."""
        served = self._live.current.queues
        for queue, states in self.counts.items():
            waiting = sum(
                states.get(state, 0) for state in (JobState.WAITING, JobState.SCHEDULED, JobState.PENDING)
            )
            if queue not in served and waiting and queue not in self._warned_queues:
                self._warned_queues.add(queue)
                log.warning(
                    "%d jobs wait in queue %r, which this daemon does not serve: declare it under "
                    "[queues.%s] or name it in a handler's settings",
                    waiting,
                    queue,
                    queue,
                )

    async def refresh_gauges(self) -> None:
        """Queue depths for the metrics and the status line, and the age of each queue's
        oldest pending job: two queries, cached."""
        self.counts = await self._store.count_jobs()
        self._warn_of_orphan_queues()
        per_queue: dict[str, dict[str, int]] = {queue: {} for queue in self._live.current.queues}
        for queue, states in self.counts.items():
            per_queue[queue] = {state.value: n for state, n in states.items()}
        waiting = sorted(queue for queue, states in self.counts.items() if states.get(JobState.PENDING))
        now = self._clock()
        activity = await self._store.queue_activity(waiting, now) if waiting else {}
        self._metrics.set_queue_counts(per_queue)  # every served queue, so an empty one reads 0
        self._metrics.set_oldest_pending(
            {
                queue: (now - flow.oldest_pending).total_seconds()
                for queue, flow in activity.items()
                if flow.oldest_pending is not None
            }
        )
