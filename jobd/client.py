"""`Client`: the synchronous, typed client of the control API, over the daemon's Unix socket.

Applications and `jobd-ctl` both use it. No httpx exception leaves this module: an error
answer becomes the specific exported error it stands for (`JobNotFound`,
`IllegalTransition`, `InvalidJob`, …), which is also an `ApiError` carrying the API's
`code`, and a daemon that cannot be reached at all becomes `DaemonUnreachable`. Like
`jobd-ctl`, it imports neither trio nor a database driver, so it stays cheap to import.
"""

from __future__ import annotations

import builtins
import errno
import os
import stat
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any
from urllib.parse import quote

import httpx

from jobd import errors
from jobd.errors import ApiError, DaemonUnreachable
from jobd.job import JSON, Job, JobState, format_time
from jobd.schedules import ScheduleStatus
from jobd.traceparent import current_traceparent

DEFAULT_TIMEOUT = 30.0
SYSTEM_SOCKET = "/run/jobd/jobd.sock"
LONGEST_POLL = 600.0  # well within what the daemon accepts for one long poll (an hour)

_CONNECT_REASONS = {
    errno.ENOENT: "the socket file does not exist",
    errno.ECONNREFUSED: "connection refused: nothing listens on the socket",
    errno.EACCES: "permission denied on the socket",
    errno.ENOTSOCK: "the path is not a socket",
}


def resolve_socket(socket: str | None = None) -> str:
    """`socket`, else `$JOBD_SOCKET`, else the socket the daemon's config names.

    The last step reads the config exactly as the daemon does (`$JOBD_CONFIG`,
    /etc/jobd/jobd.toml, `JOBD_API_SOCKET`, the zero-config default) and so may raise
    `ConfigError`; when that socket does not exist but the system daemon's
    /run/jobd/jobd.sock does, it is that one.
    """
    if socket:
        return socket
    if os.environ.get("JOBD_SOCKET"):
        return os.environ["JOBD_SOCKET"]
    # Imported here: only this fallback needs the config module.
    from jobd.config import load_config

    configured = load_config().api.socket
    # A user's own default socket is absent but a system daemon listens (a packaged
    # host, where jobd runs under systemd): talk to that one, as its group allows.
    if not os.path.exists(configured) and os.path.exists(SYSTEM_SOCKET):
        return SYSTEM_SOCKET
    return configured


@dataclass(frozen=True, slots=True)
class Submitted:
    """What a submit did: the job, and whether it was created (False: a live job with the same key)."""

    job: Job
    created: bool


@dataclass(frozen=True, slots=True)
class JobPage:
    """One page of a job listing; `next` is the cursor for the following page, None at the end."""

    jobs: tuple[Job, ...]
    next: str | None


class Client:
    """A connection to a jobd daemon's control socket.

    `timeout` bounds every request (seconds). `wait` long-polls in slices no longer than
    `timeout`, so waiting for a long job never trips it. Use it as a context manager, or
    call `close()`.
    """

    def __init__(self, socket: str | None = None, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout!r}")
        self.socket = resolve_socket(socket)
        self.timeout = timeout
        self._http = httpx.Client(
            transport=httpx.HTTPTransport(uds=self.socket),
            base_url="http://jobd",
            timeout=timeout,
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # -- jobs ---------------------------------------------------------------------------

    def submit(
        self,
        type: str,
        payload: JSON = None,
        *,
        queue: str | None = None,
        priority: int | None = None,
        delay: float | None = None,
        run_at: datetime | None = None,
        max_attempts: int | None = None,
        timeout: float | None = None,
        key: str | None = None,
        after: Sequence[uuid.UUID | str] = (),
        on_parent_failure: str | None = None,
        unique_for: float | None = None,
    ) -> Job:
        """Submit one job; with a `key` already held by an unfinished job (or, with
        `unique_for` seconds, by any job made with it that recently), that job is returned.
        `after` lists the jobs that must complete first."""
        return self.submit_result(
            type,
            payload,
            queue=queue,
            priority=priority,
            delay=delay,
            run_at=run_at,
            max_attempts=max_attempts,
            timeout=timeout,
            key=key,
            after=after,
            on_parent_failure=on_parent_failure,
            unique_for=unique_for,
        ).job

    def submit_result(
        self,
        type: str,
        payload: JSON = None,
        *,
        queue: str | None = None,
        priority: int | None = None,
        delay: float | None = None,
        run_at: datetime | None = None,
        max_attempts: int | None = None,
        timeout: float | None = None,
        key: str | None = None,
        after: Sequence[uuid.UUID | str] = (),
        on_parent_failure: str | None = None,
        unique_for: float | None = None,
    ) -> Submitted:
        """Like `submit`, and also tells whether the job was created (201) or found by its key (200)."""
        options: dict[str, JSON] = {
            "queue": queue,
            "priority": priority,
            "delay": delay,
            "run_at": format_time(run_at),
            "max_attempts": max_attempts,
            "timeout": timeout,
            "key": key,
            "after": [str(parent) for parent in after] or None,
            "on_parent_failure": on_parent_failure,
            "unique_for": unique_for,
        }
        body = {"type": type, "payload": payload}
        body.update({name: value for name, value in options.items() if value is not None})
        response = self._request("POST", "/v1/jobs", body=body, headers=_trace_headers())
        return Submitted(_job(_json(response)), created=response.status_code == 201)

    def submit_many(self, items: Sequence[Mapping[str, JSON]]) -> builtins.list[Job]:
        """Submit jobs all or nothing; each item is a `POST /v1/jobs` body (`run_at` as RFC 3339)."""
        body = {"jobs": [dict(item) for item in items]}
        response = self._request("POST", "/v1/jobs/batch", body=body, headers=_trace_headers())
        return _jobs(_json(response))

    def get(self, id: uuid.UUID | str) -> Job:
        job_id = _job_id(id)
        return _job(_json(self._request("GET", f"/v1/jobs/{job_id}", about=_Subject(job_id))))

    def list(
        self,
        *,
        state: JobState | str | None = None,
        type: str | None = None,
        queue: str | None = None,
        limit: int | None = None,
        after: str | None = None,
    ) -> builtins.list[Job]:
        """One page of jobs, newest first; `list_page` also gives the cursor of the next page."""
        return builtins.list(
            self.list_page(state=state, type=type, queue=queue, limit=limit, after=after).jobs
        )

    def list_page(
        self,
        *,
        state: JobState | str | None = None,
        type: str | None = None,
        queue: str | None = None,
        limit: int | None = None,
        after: str | None = None,
    ) -> JobPage:
        filters = {"state": state, "type": type, "queue": queue, "limit": limit, "after": after}
        params = {name: str(value) for name, value in filters.items() if value is not None}
        body = _json(self._request("GET", "/v1/jobs", params=params))
        cursor = body.get("next")
        return JobPage(jobs=tuple(_jobs(body)), next=None if cursor is None else str(cursor))

    def cancel(self, id: uuid.UUID | str) -> Job:
        job_id = _job_id(id)
        about = _Subject(job_id, action="cancel")
        return _job(_json(self._request("POST", f"/v1/jobs/{job_id}/cancel", about=about)))

    def retry(self, id: uuid.UUID | str) -> Job:
        job_id = _job_id(id)
        about = _Subject(job_id, action="retry")
        return _job(_json(self._request("POST", f"/v1/jobs/{job_id}/retry", about=about)))

    def wait(self, id: uuid.UUID | str, timeout: float | None = None) -> Job:
        """The job once finished, or as it stands when `timeout` seconds ran out (None: no limit).

        Check `job.state.finished` to tell the two apart.
        """
        if timeout is not None and timeout < 0:
            raise ValueError(f"timeout must not be negative, got {timeout!r}")
        job_id = _job_id(id)
        path = f"/v1/jobs/{job_id}/wait"
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = self.timeout if deadline is None else max(0.0, deadline - time.monotonic())
            # Each long poll lasts at most `self.timeout`; the HTTP timeout gets as much again
            # on top, so a daemon answering a little late is not taken for a dead one.
            poll = min(remaining, self.timeout, LONGEST_POLL)
            response = self._request(
                "GET",
                path,
                params={"timeout": _seconds(poll)},
                timeout=poll + self.timeout,
                about=_Subject(job_id),
            )
            job = _job(_json(response))
            if job.state.finished or (deadline is not None and time.monotonic() >= deadline):
                return job

    # -- the daemon -----------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Per-queue counts, pause flags and concurrency, and the workers' load."""
        return _json(self._request("GET", "/v1/stats"))

    def handlers(self) -> dict[str, Any]:
        """`{"handlers": [{"type", "plugin", "queue", "timeout", "max_attempts"}, ...]}`."""
        return _json(self._request("GET", "/v1/handlers"))

    def health(self) -> dict[str, Any]:
        """The daemon's health; a degraded daemon (503 with a `status`) is an answer, not an error."""
        return _json(self._request("GET", "/v1/health", accept_degraded=True))

    def pause(self, queue: str) -> dict[str, Any]:
        """Stop starting jobs of `queue`, on every daemon sharing the store; returns its stats."""
        path = f"/v1/queues/{quote(queue, safe='')}/pause"
        return _json(self._request("POST", path, about=_Subject(queue=queue)))

    def resume(self, queue: str) -> dict[str, Any]:
        path = f"/v1/queues/{quote(queue, safe='')}/resume"
        return _json(self._request("POST", path, about=_Subject(queue=queue)))

    # -- schedules ------------------------------------------------------------------------

    def schedules(self) -> builtins.list[ScheduleStatus]:
        """Every schedule of the daemon's config, by name, with its next and last run."""
        items = _json(self._request("GET", "/v1/schedules")).get("schedules")
        if not isinstance(items, builtins.list):
            raise ApiError(0, "invalid_response", "the daemon's answer has no list of schedules")
        return [_schedule_status(item) for item in items]

    def schedule(self, name: str) -> ScheduleStatus:
        return self._schedule_request("GET", name, "")

    def pause_schedule(self, name: str) -> ScheduleStatus:
        """Stop the schedule's ticks, on every daemon sharing the store, until resumed."""
        return self._schedule_request("POST", name, "/pause")

    def resume_schedule(self, name: str) -> ScheduleStatus:
        """Tick again from the next tick on; the ticks missed while paused make no job."""
        return self._schedule_request("POST", name, "/resume")

    def trigger_schedule(self, name: str) -> Job:
        """Make the schedule's job now (its `scheduled_for` is now); its ticks are unchanged."""
        path = f"/v1/schedules/{quote(name, safe='')}/trigger"
        return _job(_json(self._request("POST", path, about=_Subject(schedule=name))))

    def _schedule_request(self, method: str, name: str, action: str) -> ScheduleStatus:
        path = f"/v1/schedules/{quote(name, safe='')}{action}"
        return _schedule_status(_json(self._request(method, path, about=_Subject(schedule=name))))

    # -- transport ------------------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: JSON = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
        accept_degraded: bool = False,
        about: _Subject | None = None,
    ) -> httpx.Response:
        request_timeout = self.timeout if timeout is None else timeout
        try:
            response = self._http.request(
                method,
                path,
                params=params,
                json=body,
                headers=headers,
                timeout=request_timeout,
            )
        except httpx.TimeoutException as error:
            raise DaemonUnreachable(self.socket, f"no answer within {_seconds(request_timeout)}s") from error
        except httpx.TransportError as error:
            raise DaemonUnreachable(self.socket, _connect_reason(error, self.socket)) from error
        except httpx.HTTPError as error:
            raise ApiError(0, "client_error", f"{method} {path}: {error}") from error
        if response.is_success:
            return response
        if accept_degraded and response.status_code == 503 and _is_status_body(response):
            return response
        raise _api_error(response, about or _Subject())


def _trace_headers() -> dict[str, str] | None:
    """The caller's current trace context (when it traces with OpenTelemetry), for a submit:
    the job's attempts are then traced as children of the caller's span."""
    traceparent = current_traceparent()
    return None if traceparent is None else {"traceparent": traceparent}


def _job_id(value: uuid.UUID | str) -> str:
    """The id as it goes into a path; a malformed one is refused before any request."""
    try:
        return str(value if isinstance(value, uuid.UUID) else uuid.UUID(str(value)))
    except ValueError:
        raise ValueError(f"not a job id (a UUID): {value!r}") from None


def _seconds(value: float) -> str:
    """Seconds for a query string or a message: milliseconds kept, no float noise."""
    return format(round(value, 3), "g")


def _connect_reason(error: httpx.TransportError, path: str) -> str:
    number = os_errno(error)
    if number == errno.ECONNREFUSED and not _is_socket(path):
        # Connecting to a file that is not a socket is refused too: say what is wrong.
        number = errno.ENOTSOCK
    if number in _CONNECT_REASONS:
        return _CONNECT_REASONS[number]
    return str(error) or type(error).__name__


def os_errno(error: BaseException) -> int | None:
    """The errno of the operating-system error behind `error`, if there is one."""
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, OSError) and cause.errno is not None:
            return cause.errno
        cause = cause.__cause__ or cause.__context__
    return None


def _is_socket(path: str) -> bool:
    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return False


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise ApiError(
            response.status_code,
            "invalid_response",
            f"{response.request.method} {response.request.url.path}: the answer is not a JSON object",
        )
    return body


def _job(body: Mapping[str, Any]) -> Job:
    try:
        return Job.from_json(body)
    except (KeyError, TypeError, ValueError) as error:
        raise ApiError(0, "invalid_response", f"the daemon's answer is not a job: {error!r}") from error


def _schedule_status(body: Any) -> ScheduleStatus:
    try:
        return ScheduleStatus.from_json(body)
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise ApiError(0, "invalid_response", f"the daemon's answer is not a schedule: {error!r}") from error


def _jobs(body: Mapping[str, Any]) -> builtins.list[Job]:
    items = body.get("jobs")
    if not isinstance(items, builtins.list):
        raise ApiError(0, "invalid_response", "the daemon's answer has no list of jobs")
    return [_job(item) for item in items]


def _is_status_body(response: httpx.Response) -> bool:
    try:
        body = response.json()
    except ValueError:
        return False
    return isinstance(body, dict) and "status" in body


@dataclass(frozen=True, slots=True)
class _Subject:
    """What a request is about, for the error its answer may be."""

    job_id: str | None = None
    queue: str | None = None
    schedule: str | None = None
    action: str = ""  # what it asks of the job: "cancel", "retry"


def _api_error(response: httpx.Response, about: _Subject) -> ApiError:
    """The contract's `{"error": {"code", "message", "details"}}`, or the best reading of another body."""
    status = response.status_code
    try:
        body = response.json()
    except ValueError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        code = error.get("code")
        message = error.get("message")
        details = error.get("details")
        return _specific(
            status,
            code if isinstance(code, str) and code else f"http_{status}",
            message if isinstance(message, str) and message else response.reason_phrase,
            details if isinstance(details, dict) else {},
            about,
        )
    text = response.text.strip()
    message = f"HTTP {status} {response.reason_phrase}" + (f": {text[:200]}" if text else "")
    return ApiError(status, f"http_{status}", message)


# The daemon's errors as the client raises them: each the specific error and an ApiError.
class _JobNotFound(ApiError, errors.JobNotFound):
    pass


class _QueueNotFound(ApiError, errors.QueueNotFound):
    pass


class _ScheduleNotFound(ApiError, errors.ScheduleNotFound):
    pass


class _IllegalTransition(ApiError, errors.IllegalTransition):
    pass


class _KeyInUse(ApiError, errors.KeyInUse):
    pass


class _InvalidJob(ApiError, errors.InvalidJob):
    pass


class _PayloadTooLarge(ApiError, errors.PayloadTooLarge):
    pass


class _BadRequest(ApiError, errors.BadRequest):
    pass


class _StoreUnavailable(ApiError, errors.StoreUnavailable):
    pass


class _ShuttingDown(ApiError, errors.ShuttingDown):
    pass


class _Overloaded(ApiError, errors.Overloaded):
    pass


def _specific(status: int, code: str, message: str, details: dict[str, Any], about: _Subject) -> ApiError:
    """The most specific exported error an answer stands for, its data filled in from the
    answer's details and what the request was about; a plain ApiError for anything else."""
    answer = (status, code, message, details)
    if code == "not_found" and about.job_id is not None:
        missing = _JobNotFound(*answer)
        missing.job_id = about.job_id
        return missing
    if code == "not_found" and about.queue is not None:
        no_queue = _QueueNotFound(*answer)
        no_queue.queue = about.queue
        return no_queue
    if code == "not_found" and about.schedule is not None:
        no_schedule = _ScheduleNotFound(*answer)
        no_schedule.schedule = about.schedule
        return no_schedule
    if code == "conflict" and "key" in details:
        held = _KeyInUse(*answer)
        held.job_id, held.key = str(details.get("job_id", about.job_id)), str(details["key"])
        return held
    if code == "conflict":
        illegal = _IllegalTransition(*answer)
        illegal.job_id = str(details.get("job_id", about.job_id))
        illegal.state, illegal.action = str(details.get("state", "")), about.action
        return illegal
    if code in ("invalid_job", "payload_too_large"):
        invalid = (_PayloadTooLarge if code == "payload_too_large" else _InvalidJob)(*answer)
        invalid.field, invalid.index = details.get("field"), details.get("index")
        return invalid
    if code == "bad_request":
        bad = _BadRequest(*answer)
        bad.field = details.get("field")
        return bad
    if code == "store_unavailable":
        return _StoreUnavailable(*answer)
    if code == "shutting_down":
        return _ShuttingDown(*answer)
    if code == "overloaded":
        overloaded = _Overloaded(*answer)
        limit = details.get("limit")
        overloaded.limit = limit if isinstance(limit, int) else None
        return overloaded
    return ApiError(*answer)
