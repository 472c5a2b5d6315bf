"""Every exception jobd raises, in one tree.

    JobdError                    base of everything below; `code` is the API's error code
    ├── ConfigError              a bad config value or file (.key, .file)
    ├── PluginError              a plugin failed to load or clashes with another (.plugin)
    ├── JobNotFound              no job has that id (.job_id)                      404
    ├── QueueNotFound            no queue has that name (.queue)                   404
    ├── ScheduleNotFound         no schedule has that name (.schedule)             404
    ├── IllegalTransition        the job's state forbids the action (.job_id, .state, .action)  409
    ├── KeyInUse                 a retry would give a second unfinished job the same key        409
    ├── InvalidJob               a submitted job is wrong (.field, .index)         422
    │   └── PayloadTooLarge      its payload is over `api.max_payload_bytes`       413
    ├── BadRequest               a malformed request: bad JSON, bad query (.field) 400
    ├── StoreUnavailable         the store cannot be reached right now             503
    ├── ShuttingDown             the daemon is stopping                            503
    ├── Overloaded               no room for the request now: retry later          503
    └── ApiError                 the client side: the daemon answered with an error (.status)
        └── DaemonUnreachable    the client could not reach the daemon at all

`jobd.Client` translates an error answer into the specific error above that it stands
for, as a class that is both that error and an `ApiError`: a caller catches
`jobd.JobNotFound` (with its `.job_id`), or `ApiError` for any answer; `.code`,
`.status` and `.details()` are the daemon's.

    HandlerSignal                raised by a handler to choose its job's outcome
    ├── Retry                    try again after `delay` (spends an attempt)
    └── Fail                     fail now, no more attempts

Handler signals are not errors of jobd and are not `JobdError`s.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any


class JobdError(Exception):
    code = "error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def details(self) -> dict[str, Any]:
        """Machine-readable facts about the error, for the API's `details`."""
        return {}


class ConfigError(JobdError):
    code = "config_error"

    def __init__(self, message: str, *, key: str | None = None, file: str | None = None) -> None:
        where = ", ".join(part for part in (file and f"in {file}", key and f"key {key!r}") if part)
        super().__init__(f"{where}: {message}" if where else message)
        self.key = key
        self.file = file
        self.reason = message


class PluginError(JobdError):
    code = "plugin_error"

    def __init__(self, plugin: str, message: str) -> None:
        super().__init__(f"plugin {plugin!r}: {message}")
        self.plugin = plugin


class JobNotFound(JobdError):
    code = "not_found"

    def __init__(self, job_id: str) -> None:
        super().__init__(f"no job with id {job_id!r}")
        self.job_id = job_id


class QueueNotFound(JobdError):
    code = "not_found"

    def __init__(self, queue: str) -> None:
        super().__init__(f"no queue named {queue!r}")
        self.queue = queue


class ScheduleNotFound(JobdError):
    code = "not_found"

    def __init__(self, schedule: str) -> None:
        super().__init__(f"no schedule named {schedule!r}")
        self.schedule = schedule


class IllegalTransition(JobdError):
    code = "conflict"

    def __init__(self, job_id: str, state: str, action: str) -> None:
        super().__init__(f"job {job_id} is {state}: cannot {action} it")
        self.job_id = job_id
        self.state = state
        self.action = action

    def details(self) -> dict[str, Any]:
        return {"job_id": self.job_id, "state": self.state}


class KeyInUse(JobdError):
    code = "conflict"

    def __init__(self, job_id: str, key: str) -> None:
        super().__init__(f"cannot retry job {job_id}: another unfinished job holds its key {key!r}")
        self.job_id = job_id
        self.key = key

    def details(self) -> dict[str, Any]:
        return {"job_id": self.job_id, "key": self.key}


class InvalidJob(JobdError):
    code = "invalid_job"

    def __init__(self, message: str, *, field: str | None = None, index: int | None = None) -> None:
        super().__init__(message)
        self.field = field
        self.index = index

    def at_index(self, index: int) -> InvalidJob:
        """The same error, for item `index` of a batch."""
        error = type(self).__new__(type(self))
        error.__dict__.update(self.__dict__)
        error.args = (f"jobs[{index}]: {self.message}",)
        error.message = error.args[0]
        error.index = index
        return error

    def details(self) -> dict[str, Any]:
        found = {"field": self.field, "index": self.index}
        return {name: value for name, value in found.items() if value is not None}


class PayloadTooLarge(InvalidJob):
    code = "payload_too_large"


class BadRequest(JobdError):
    code = "bad_request"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field

    def details(self) -> dict[str, Any]:
        return {"field": self.field} if self.field else {}


class StoreUnavailable(JobdError):
    code = "store_unavailable"


class ShuttingDown(JobdError):
    code = "shutting_down"


class Overloaded(JobdError):
    """Too many connections, or too many long polls, at once; `details` say the limit."""

    code = "overloaded"

    def __init__(self, message: str, *, limit: int | None = None) -> None:
        super().__init__(message)
        self.limit = limit

    def details(self) -> dict[str, Any]:
        return {} if self.limit is None else {"limit": self.limit}


class ApiError(JobdError):
    def __init__(
        self, status: int, code: str, message: str, details: Mapping[str, Any] | None = None
    ) -> None:
        # Not super(): in the client's translations the next class is the specific error,
        # whose __init__ takes that error's data rather than the daemon's answer.
        JobdError.__init__(self, message)
        self.status = status
        self.code = code
        self._details = dict(details or {})

    def details(self) -> dict[str, Any]:
        return dict(self._details)


class DaemonUnreachable(ApiError):
    def __init__(self, socket: str, reason: str) -> None:
        super().__init__(0, "unreachable", f"cannot reach jobd at {socket}: {reason}")
        self.socket = socket
        self.reason = reason


class HandlerSignal(Exception):
    """Raised by a handler to choose its job's outcome."""


class Retry(HandlerSignal):
    """Try the job again, after `delay` seconds or the normal back-off when None.

    Spends an attempt: when this was the last one, the job ends `failed`.
    """

    def __init__(self, delay: float | None = None, reason: str = "") -> None:
        super().__init__(reason or "retry requested")
        if delay is not None and not (isinstance(delay, int | float) and math.isfinite(delay) and delay >= 0):
            raise ValueError(f"Retry delay must be a finite number of seconds >= 0, got {delay!r}")
        self.delay = delay
        self.reason = reason


class Fail(HandlerSignal):
    """Fail the job at once, whatever attempts are left."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
