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
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from jobd.errors import InvalidJob
from jobd.handlers import clean_text, parsed_json_size, storable_json_size
from jobd.job import JSON, ParentFailure
from jobd.traceparent import parse_traceparent

MAX_PRIORITY = 2**31 - 1  # either way: what a PostgreSQL integer holds
MAX_ATTEMPTS = 1000
MAX_KEY_LENGTH = 255
MAX_DELAY = 10 * 366 * 86400.0  # ten years: a longer one is a mistake
MAX_PARENTS = 100


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
    after: tuple[uuid.UUID | int, ...] = ()  # job ids, or indexes of earlier items of the batch
    on_parent_failure: ParentFailure = ParentFailure.CANCEL
    unique_for: float | None = None  # seconds
    traceparent: str | None = None  # W3C trace context, version 00

    def parents(self, earlier: Sequence[uuid.UUID]) -> tuple[uuid.UUID, ...]:
        """`after` as job ids, `earlier` being the ids of the batch's items before this one."""
        if not self.after:
            return ()
        return tuple(
            dict.fromkeys(earlier[parent] if isinstance(parent, int) else parent for parent in self.after)
        )


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
    after: object = None,
    on_parent_failure: object = None,
    unique_for: object = None,
    index: int | None = None,
    traceparent: object = None,
    parsed: bool = False,
) -> Submission:
    """Check each field of a submit; raise `InvalidJob` naming the first one at fault.

    `delay` is seconds from `now`, `run_at` an aware datetime; they exclude each other.
    `after` lists job ids (strings or UUIDs) and, for the item at `index` of a batch,
    `"#N"` for an earlier item N. `unique_for` is seconds, and needs a `key`. `parsed`
    says the payload was parsed from JSON text (see `parsed_json_size`).
    """
    checked_key = _key(key)
    return Submission(
        job_type=_name("type", job_type, required=True) or "",
        payload=payload,
        payload_size=_payload_size(payload, parsed),
        queue=_name("queue", queue),
        priority=_whole("priority", priority, -MAX_PRIORITY, MAX_PRIORITY) or 0,
        run_at=_run_at(delay, run_at, now),
        max_attempts=_whole("max_attempts", max_attempts, 1, MAX_ATTEMPTS),
        timeout=_timeout(timeout),
        key=checked_key,
        after=_after(after, index),
        on_parent_failure=_parent_failure(on_parent_failure),
        unique_for=_unique_for(unique_for, checked_key),
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


def _payload_size(payload: JSON, parsed: bool) -> int:
    try:
        if parsed:
            return parsed_json_size(payload)
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


def _after(value: object, index: int | None) -> tuple[uuid.UUID | int, ...]:
    if value is None:
        return ()
    if not isinstance(value, list | tuple):
        raise InvalidJob("after must be a list of job ids", field="after")
    if len(value) > MAX_PARENTS:
        raise InvalidJob(f"after names at most {MAX_PARENTS} jobs, got {len(value)}", field="after")
    return tuple(_parent(item, index) for item in value)


def _parent(item: object, index: int | None) -> uuid.UUID | int:
    if isinstance(item, uuid.UUID):
        return item
    if isinstance(item, str) and item.startswith("#"):
        if index is None:
            raise InvalidJob(f"after: {item!r} names an item of a batch, and this is no batch", field="after")
        number = item[1:]
        if not (number.isascii() and number.isdigit()) or int(number) >= index:
            raise InvalidJob(
                f"after: {item!r} is not an earlier item of the batch (this is item #{index})", field="after"
            )
        return int(number)
    try:
        if isinstance(item, str):
            return uuid.UUID(item)
    except ValueError:
        pass
    raise InvalidJob(f"after: {item!r} is not a job id or #INDEX", field="after")


def _parent_failure(value: object) -> ParentFailure:
    if value is None:
        return ParentFailure.CANCEL
    if isinstance(value, str) and value in set(ParentFailure):
        return ParentFailure(value)
    message = f'on_parent_failure must be "cancel" or "run", got {value!r}'
    raise InvalidJob(message, field="on_parent_failure")


def _unique_for(value: object, key: str | None) -> float | None:
    if value is None:
        return None
    seconds = _seconds(value)
    if seconds is None or not 0 < seconds <= MAX_DELAY:
        message = f"unique_for must be a duration above 0 and up to 10 years, got {value!r}"
        raise InvalidJob(message, field="unique_for")
    if key is None:
        raise InvalidJob("unique_for needs a key: the window is that key's", field="unique_for")
    return seconds
