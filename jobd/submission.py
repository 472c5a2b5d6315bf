"""The rules every new job meets, however it is submitted.

The control API (`jobd.service`) and `jobd.submit` inside an application's own
transaction (`jobd.transactional`) both read a submit through `check_submission`, so a
job refused by one is refused by the other. It knows nothing of a daemon's config:
whether the type has a handler, whether the queue exists, the payload size limit and
the defaults for what the submit leaves out are the API's to add.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from jobd.errors import InvalidJob
from jobd.handlers import clean_text, storable_json_size
from jobd.job import JSON
from jobd.traceparent import parse_traceparent

MAX_PRIORITY = 2**31 - 1  # either way: what a PostgreSQL integer holds
MAX_ATTEMPTS = 1000
MAX_KEY_LENGTH = 255
MAX_DELAY = 10 * 366 * 86400.0  # ten years: a longer one is a mistake


@dataclass(frozen=True, slots=True)
class Submission:
    """What a submit asks for, checked; None where it leaves the choice to the defaults."""

    job_type: str
    payload: JSON
    payload_size: int  # bytes of the payload as UTF-8 JSON
    queue: str | None
    priority: int
    run_at: datetime  # UTC, never before `now`
    max_attempts: int | None
    timeout: float | None  # seconds
    key: str | None
    traceparent: str | None = None  # W3C trace context, version 00


def check_submission(
    *,
    job_type: object,
    payload: JSON,
    now: datetime,
    queue: object = None,
    priority: object = None,
    delay: object = None,
    run_at: object = None,
    max_attempts: object = None,
    timeout: object = None,
    key: object = None,
    traceparent: object = None,
) -> Submission:
    """Check each field of a submit; raise `InvalidJob` naming the first one at fault.

    `delay` is seconds from `now`, `run_at` an aware datetime; they exclude each other.
    """
    return Submission(
        job_type=_name("type", job_type, required=True) or "",
        payload=payload,
        payload_size=_payload_size(payload),
        queue=_name("queue", queue),
        priority=_whole("priority", priority, -MAX_PRIORITY, MAX_PRIORITY) or 0,
        run_at=_run_at(delay, run_at, now),
        max_attempts=_whole("max_attempts", max_attempts, 1, MAX_ATTEMPTS),
        timeout=_timeout(timeout),
        key=_key(key),
        traceparent=_traceparent(traceparent),
    )


def storable(text: str) -> bool:
    """Whether every store can keep `text`: no NUL, valid UTF-8 (no lone surrogates)."""
    return clean_text(text) == text


def _name(field: str, value: object, *, required: bool = False) -> str | None:
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip():
        raise InvalidJob(f"{field} must be a non-empty string, got {value!r}", field=field)
    if not _storable_name(value):
        raise InvalidJob(f"{field} holds a NUL character or a lone surrogate", field=field)
    return value


@functools.lru_cache(maxsize=1024)
def _storable_name(name: str) -> bool:
    return storable(name)  # cached: every job of a batch names the same few types and queues


def _payload_size(payload: JSON) -> int:
    try:
        return storable_json_size(payload)
    except TypeError as error:
        raise InvalidJob(str(error).replace("the handler's result", "payload"), field="payload") from None


def _whole(field: str, value: object, lowest: int, highest: int) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidJob(f"{field} must be a whole number, got {value!r}", field=field)
    if not lowest <= value <= highest:
        raise InvalidJob(f"{field} must be between {lowest} and {highest}, got {value}", field=field)
    return value


def _seconds(value: object) -> float | None:
    """`value` as seconds when it is a finite number, else None."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _timeout(value: object) -> float | None:
    if value is None:
        return None
    seconds = _seconds(value)
    if seconds is None or seconds <= 0:
        raise InvalidJob(f"timeout must be a number of seconds above 0, got {value!r}", field="timeout")
    return seconds


def _key(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not 0 < len(value) <= MAX_KEY_LENGTH:
        raise InvalidJob(f"key must be a string of 1 to {MAX_KEY_LENGTH} characters", field="key")
    if not storable(value):
        raise InvalidJob("key holds a NUL character or a lone surrogate", field="key")
    return value


def _traceparent(value: object) -> str | None:
    if value is None:
        return None
    parsed = parse_traceparent(value) if isinstance(value, str) else None
    if parsed is None:
        raise InvalidJob(
            "traceparent must be a W3C trace context of version 00: 00-<32 hex trace id>-<16 hex "
            f"span id>-<2 hex flags>, neither id all zeros; got {value!r}",
            field="traceparent",
        )
    return parsed


def _run_at(delay: object, run_at: object, now: datetime) -> datetime:
    if delay is not None and run_at is not None:
        raise InvalidJob("give run_at or delay, not both", field="delay")
    if delay is not None:
        seconds = _seconds(delay)
        if seconds is None or not 0 <= seconds <= MAX_DELAY:
            message = f"delay must be a number of seconds from 0 to {MAX_DELAY:g} (10 years), got {delay!r}"
            raise InvalidJob(message, field="delay")
        return now + timedelta(seconds=seconds)
    if run_at is None:
        return now
    if not isinstance(run_at, datetime) or run_at.tzinfo is None:
        raise InvalidJob(f"run_at must be a time with a time zone, got {run_at!r}", field="run_at")
    try:
        return max(run_at.astimezone(UTC), now)
    except OverflowError:  # within a day of year 1 or year 9999
        raise InvalidJob(f"run_at is out of range: {run_at!r}", field="run_at") from None
