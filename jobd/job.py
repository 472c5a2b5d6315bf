"""Pure values: a job, its states, and the one table of legal state changes.

Every store and the engine ask `next_state` before changing a job's state, so the
state machine of the contract lives here and nowhere else.
"""

from __future__ import annotations

import enum
import functools
import os
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from jobd.errors import IllegalTransition

JSON = Any
"""Any value that `json.dumps` accepts."""


class JobState(enum.StrEnum):
    WAITING = "waiting"  # for its parents (`after`) to complete
    SCHEDULED = "scheduled"
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in FINISHED_STATES


FINISHED_STATES = frozenset({JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED})
STATE_OF: Mapping[str, JobState] = {state.value: state for state in JobState}
"""A state by its text: what `JobState(text)` gives, as a dict lookup instead of 1 µs
of the enum's call. The stores read one for every row."""


class Action(enum.StrEnum):
    """Everything that can happen to a job."""

    PROMOTE = "promote"  # its run_at came
    CLAIM = "claim"  # a worker took it
    COMPLETE = "complete"  # the handler returned
    BACK_OFF = "back_off"  # the attempt failed and another is due later
    FAIL = "fail"  # attempts exhausted or a permanent error
    CANCEL = "cancel"  # a user cancelled it
    RETRY = "retry"  # a user asked to run a dead job again
    REQUEUE = "requeue"  # graceful shutdown, or a rescue with attempts left and no delay
    RELEASE = "release"  # its last parent completed
    RELEASE_LATER = "release_later"  # its last parent completed and its run_at is still ahead


_S = JobState
_A = Action
TRANSITIONS: Mapping[tuple[JobState, Action], JobState] = {
    (_S.WAITING, _A.RELEASE): _S.PENDING,
    (_S.WAITING, _A.RELEASE_LATER): _S.SCHEDULED,
    (_S.WAITING, _A.CANCEL): _S.CANCELLED,
    (_S.SCHEDULED, _A.PROMOTE): _S.PENDING,
    (_S.PENDING, _A.CLAIM): _S.RUNNING,
    (_S.RUNNING, _A.COMPLETE): _S.COMPLETED,
    (_S.RUNNING, _A.BACK_OFF): _S.SCHEDULED,
    (_S.RUNNING, _A.FAIL): _S.FAILED,
    (_S.RUNNING, _A.REQUEUE): _S.PENDING,
    (_S.PENDING, _A.CANCEL): _S.CANCELLED,
    (_S.SCHEDULED, _A.CANCEL): _S.CANCELLED,
    (_S.RUNNING, _A.CANCEL): _S.CANCELLED,
    (_S.FAILED, _A.RETRY): _S.PENDING,
    (_S.CANCELLED, _A.RETRY): _S.PENDING,
}
"""The legal state changes: (from, action) -> to. Anything else is illegal."""


def next_state(job_id: uuid.UUID | str, state: JobState, action: Action) -> JobState:
    """The state `action` leads to from `state`, or `IllegalTransition`."""
    try:
        return TRANSITIONS[(state, action)]
    except KeyError:
        raise IllegalTransition(str(job_id), state.value, action.value) from None


class ParentFailure(enum.StrEnum):
    """What becomes of a waiting job when one of its parents ends failed or cancelled."""

    CANCEL = "cancel"  # it ends cancelled too, and so do the jobs waiting on it
    RUN = "run"  # it is released as if that parent had completed


@dataclass(frozen=True, slots=True)
class Progress:
    fraction: float
    message: str | None = None

    def to_json(self) -> dict[str, JSON]:
        return {"fraction": self.fraction, "message": self.message}


@dataclass(frozen=True, slots=True)
class Job:
    """A job as stored and as the API returns it."""

    id: uuid.UUID
    type: str
    queue: str
    payload: JSON
    state: JobState
    priority: int
    attempts: int
    max_attempts: int
    timeout: float | None
    run_at: datetime
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    last_error: str | None = None
    result: JSON = None
    progress: Progress | None = None
    key: str | None = None
    schedule: str | None = None  # the schedule whose tick (or trigger) made the job
    scheduled_for: datetime | None = None  # that tick
    after: tuple[uuid.UUID, ...] = ()  # the parents that must complete first
    on_parent_failure: ParentFailure = ParentFailure.CANCEL
    traceparent: str | None = None  # the W3C trace context the job was submitted in, if any

    def to_json(self) -> dict[str, JSON]:
        return {
            "id": str(self.id),
            "type": self.type,
            "queue": self.queue,
            "payload": self.payload,
            "state": self.state.value,
            "priority": self.priority,
            "attempts": self.attempts,
            "max_attempts": self.max_attempts,
            "timeout": self.timeout,
            "run_at": format_time(self.run_at),
            "created_at": format_time(self.created_at),
            "updated_at": format_time(self.updated_at),
            "started_at": format_time(self.started_at),
            "finished_at": format_time(self.finished_at),
            "last_error": self.last_error,
            "result": self.result,
            "progress": self.progress.to_json() if self.progress else None,
            "key": self.key,
            "schedule": self.schedule,
            "scheduled_for": format_time(self.scheduled_for),
            "after": [str(parent) for parent in self.after],
            "on_parent_failure": self.on_parent_failure.value,
            "traceparent": self.traceparent,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, JSON]) -> Job:
        progress = data.get("progress")
        return cls(
            id=uuid.UUID(data["id"]),
            type=data["type"],
            queue=data["queue"],
            payload=data.get("payload"),
            state=JobState(data["state"]),
            priority=int(data["priority"]),
            attempts=int(data["attempts"]),
            max_attempts=int(data["max_attempts"]),
            timeout=None if data.get("timeout") is None else float(data["timeout"]),
            run_at=parse_time(data["run_at"]),
            created_at=parse_time(data["created_at"]),
            updated_at=parse_time(data["updated_at"]),
            started_at=parse_optional_time(data.get("started_at")),
            finished_at=parse_optional_time(data.get("finished_at")),
            last_error=data.get("last_error"),
            result=data.get("result"),
            progress=Progress(float(progress["fraction"]), progress.get("message")) if progress else None,
            key=data.get("key"),
            schedule=data.get("schedule"),
            scheduled_for=parse_optional_time(data.get("scheduled_for")),
            after=tuple(uuid.UUID(parent) for parent in data.get("after") or ()),
            on_parent_failure=ParentFailure(data.get("on_parent_failure") or ParentFailure.CANCEL),
            traceparent=data.get("traceparent"),
        )


def new_job_id() -> uuid.UUID:
    """A new job id: a UUIDv7 (RFC 9562), time-ordered, so that ids made one after the
    other sit side by side in the stores' primary-key indexes instead of all over them."""
    millis = time.time_ns() // 1_000_000
    rest = int.from_bytes(os.urandom(10))  # 80 random bits, of which 74 are kept
    value = (millis & (2**48 - 1)) << 80 | 0x7 << 76 | (rest >> 68) << 64 | 0b10 << 62 | (rest & (2**62 - 1))
    return uuid.UUID(int=value)


def format_time(value: datetime | None) -> str | None:
    """RFC 3339 in UTC with a `Z`, microseconds kept."""
    return None if value is None else _format_time(value)


@functools.lru_cache(maxsize=4096)
def _format_time(value: datetime) -> str:
    # Cached: the jobs of one answer mostly share their times (a batch's created_at).
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def parse_time(text: str) -> datetime:
    """Parse an RFC 3339 time; one without an offset is taken as UTC."""
    value = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def parse_optional_time(text: str | None) -> datetime | None:
    return None if text is None else parse_time(text)
