"""The completer: the end of every attempt, held until the worker pool records a batch of
them in the store (together with its next claim), then reported in logs, metrics and to
the long polls waiting on those jobs."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from jobd.errors import InvalidJob, StoreUnavailable
from jobd.job import Job
from jobd.metrics import Metrics
from jobd.store import Completion, Outcome, Store
from jobd.watch import JobWatch

log = logging.getLogger("jobd.worker")

CANCELLED_AT_SHUTDOWN = "cancelled while it was being requeued by a shutdown"


@dataclass(frozen=True, slots=True)
class FinishedAttempt:
    completion: Completion
    job: Job  # as it was claimed
    duration: float  # seconds the handler ran


class Completer:
    def __init__(self, metrics: Metrics, watch: JobWatch, *, on_retry_scheduled: Callable[[], None]) -> None:
        self._metrics = metrics
        self._watch = watch
        self._on_retry_scheduled = on_retry_scheduled  # a retry's back-off may end before the next poll
        self._waiting: list[FinishedAttempt] = []

    @property
    def waiting(self) -> int:
        """Attempts that ended and are not yet recorded in the store."""
        return len(self._waiting)

    def add(self, attempt: FinishedAttempt) -> None:
        self._waiting.append(attempt)

    def take(self, limit: int) -> list[FinishedAttempt]:
        """The oldest `limit` waiting attempts, handed over to be recorded."""
        batch, self._waiting = self._waiting[:limit], self._waiting[limit:]
        return batch

    def put_back(self, batch: Sequence[FinishedAttempt]) -> None:
        """A batch that could not be recorded waits again, ahead of the others."""
        self._waiting[:0] = batch

    async def record_one_by_one(self, store: Store, batch: Sequence[FinishedAttempt], now: datetime) -> None:
        """After the store refused a value of the batch: record each attempt on its own, so
        that one bad item holds up no other; an unstorable result fails its attempt."""
        for index, attempt in enumerate(batch):
            try:
                try:
                    with self._metrics.store_call("complete"):
                        [applied] = await store.complete_jobs([attempt.completion], now)
                except InvalidJob as error:
                    attempt = _unstorable(attempt, error)
                    with self._metrics.store_call("complete"):
                        [applied] = await store.complete_jobs([attempt.completion], now)
            except StoreUnavailable:
                self.put_back(batch[index:])
                raise
            self.report([attempt], [applied])

    def report(self, batch: Sequence[FinishedAttempt], applied: Sequence[bool]) -> None:
        for attempt, recorded in zip(batch, applied, strict=True):
            if not recorded and attempt.completion.outcome == Outcome.REQUEUED:
                # The store refuses a requeue while a cancel is requested (one that landed
                # during the shutdown): record the attempt cancelled instead. Refused for
                # a job no longer ours, the cancel is refused by the same fence, and says so.
                self._waiting.append(_cancelled_instead(attempt))
                continue
            self._report(attempt, recorded)

    def _report(self, attempt: FinishedAttempt, recorded: bool) -> None:
        job, completion = attempt.job, attempt.completion
        if not recorded:
            self._metrics.completion_discarded(job.queue)
            log.warning(
                "job %s: outcome %s of attempt %d discarded, the job is no longer this daemon's",
                job.id,
                completion.outcome,
                completion.attempt,
                extra=job_log_fields(job, "fenced", attempt.duration),
            )
            return
        self._watch.changed(job.id)
        outcome = completion.outcome
        if outcome == Outcome.REQUEUED:
            log.info(
                "job %s requeued by shutdown", job.id, extra=job_log_fields(job, "requeued", attempt.duration)
            )
            return
        if outcome == Outcome.RETRIED:
            self._on_retry_scheduled()
        self._metrics.job_finished(job.queue, job.type, outcome.value, attempt.duration)
        level = logging.INFO if outcome == Outcome.COMPLETED else logging.WARNING
        if log.isEnabledFor(level):  # most jobs complete: build no log record for nothing
            message = "job %s %s" + (": %s" if completion.error else "")
            args = (job.id, outcome.value, *((completion.error,) if completion.error else ()))
            log.log(level, message, *args, extra=job_log_fields(job, outcome.value, attempt.duration))


def _cancelled_instead(attempt: FinishedAttempt) -> FinishedAttempt:
    completion = dataclasses.replace(
        attempt.completion, outcome=Outcome.CANCELLED, error=CANCELLED_AT_SHUTDOWN
    )
    return dataclasses.replace(attempt, completion=completion)


def _unstorable(attempt: FinishedAttempt, error: InvalidJob) -> FinishedAttempt:
    completion = attempt.completion
    if completion.outcome != Outcome.COMPLETED or completion.result is None:
        # Nothing but the error text can be at fault: keep the outcome, drop the text.
        changed = dataclasses.replace(completion, error="(the error text could not be stored)")
    else:
        changed = dataclasses.replace(
            completion,
            outcome=Outcome.FAILED,
            result=None,
            error=f"the handler's result could not be stored: {error.message}",
        )
    return dataclasses.replace(attempt, completion=changed)


def job_log_fields(job: Job, outcome: str, duration: float | None) -> dict[str, object]:
    fields: dict[str, object] = {
        "job_id": str(job.id),
        "type": job.type,
        "queue": job.queue,
        "attempt": job.attempts,
        "outcome": outcome,
    }
    if duration is not None:
        fields["duration"] = round(duration, 6)
    return fields
