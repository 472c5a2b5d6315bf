"""The control API: each path of the contract's table → one call of the job service → JSON.

Errors leave in the one shape `{"error": {"code", "message", "details"}}`; a `JobdError`'s
status follows from its class. Anything else is a bug: 500 `internal`, with the traceback
in the log and none in the answer.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, NoReturn, Protocol, runtime_checkable

from jobd.errors import (
    BadRequest,
    IllegalTransition,
    InvalidJob,
    JobdError,
    JobNotFound,
    KeyInUse,
    Overloaded,
    PayloadTooLarge,
    QueueNotFound,
    ScheduleNotFound,
    ShuttingDown,
    StoreUnavailable,
)
from jobd.http import Handler, Request, Response, error_response, json_response
from jobd.job import Job
from jobd.metrics import Exposition
from jobd.schedules import ScheduleStatus
from jobd.service import Health
from jobd.store import Inserted, JobPage
from jobd.traceparent import parse_traceparent

log = logging.getLogger("jobd.api")

# First match wins: a subclass comes before its base.
_STATUS_OF_ERROR: tuple[tuple[type[JobdError], int], ...] = (
    (BadRequest, 400),
    (JobNotFound, 404),
    (QueueNotFound, 404),
    (ScheduleNotFound, 404),
    (IllegalTransition, 409),
    (KeyInUse, 409),
    (PayloadTooLarge, 413),
    (InvalidJob, 422),
    (StoreUnavailable, 503),
    (ShuttingDown, 503),
    (Overloaded, 503),
)


@runtime_checkable
class Operations(Protocol):
    """What the routes need of the job service (`jobd.service.JobService` provides it)."""

    async def submit(
        self, body: object, traceparent: str | None = None, *, parsed: bool = False
    ) -> Inserted: ...

    async def submit_batch(
        self, body: object, traceparent: str | None = None, *, parsed: bool = False
    ) -> Sequence[Inserted]: ...

    async def get(self, job_id: str) -> Job: ...

    async def list_jobs(self, query: Mapping[str, str]) -> JobPage: ...

    async def cancel(self, job_id: str) -> Job: ...

    async def retry(self, job_id: str) -> Job: ...

    async def wait(self, job_id: str, timeout: str | None) -> Job: ...

    async def stats(self) -> dict[str, Any]: ...

    def handlers(self) -> dict[str, Any]: ...

    async def pause(self, queue: str) -> dict[str, Any]: ...

    async def resume(self, queue: str) -> dict[str, Any]: ...

    async def schedules(self) -> Sequence[ScheduleStatus]: ...

    async def schedule(self, name: str) -> ScheduleStatus: ...

    async def pause_schedule(self, name: str) -> ScheduleStatus: ...

    async def resume_schedule(self, name: str) -> ScheduleStatus: ...

    async def trigger_schedule(self, name: str) -> Job: ...

    async def health(self) -> Health: ...

    def metrics(self) -> Exposition: ...


Endpoint = Callable[[Request, tuple[str, ...]], Awaitable[Response]]
"""Called with the request and the path segments captured by the route's "{}" parts."""


def make_handler(service: Operations) -> Handler:
    return ControlApi(service)


class ControlApi:
    """The request handler of the control socket."""

    def __init__(self, service: Operations) -> None:
        self._service = service
        self._routes: tuple[tuple[tuple[str, ...], dict[str, Endpoint]], ...] = (
            (("v1", "health"), {"GET": self._health}),
            (("v1", "jobs"), {"GET": self._list, "POST": self._submit}),
            (("v1", "jobs", "batch"), {"POST": self._submit_batch}),  # before "{}": a literal wins
            (("v1", "jobs", "{}"), {"GET": self._get}),
            (("v1", "jobs", "{}", "wait"), {"GET": self._wait}),
            (("v1", "jobs", "{}", "cancel"), {"POST": self._cancel}),
            (("v1", "jobs", "{}", "retry"), {"POST": self._retry}),
            (("v1", "stats"), {"GET": self._stats}),
            (("v1", "handlers"), {"GET": self._handlers}),
            (("v1", "queues", "{}", "pause"), {"POST": self._pause}),
            (("v1", "queues", "{}", "resume"), {"POST": self._resume}),
            (("v1", "schedules"), {"GET": self._schedules}),
            (("v1", "schedules", "{}"), {"GET": self._schedule}),
            (("v1", "schedules", "{}", "pause"), {"POST": self._pause_schedule}),
            (("v1", "schedules", "{}", "resume"), {"POST": self._resume_schedule}),
            (("v1", "schedules", "{}", "trigger"), {"POST": self._trigger_schedule}),
            (("metrics",), {"GET": self._metrics}),
        )

    async def __call__(self, request: Request) -> Response:
        started = time.monotonic()
        response = await self._respond(request)
        duration = time.monotonic() - started
        peer = request.peer
        # Every change is logged with who made it; reads only at debug level.
        log.log(
            logging.INFO if request.method == "POST" else logging.DEBUG,
            "%s %s %d",
            request.method,
            request.path,
            response.status,
            extra={
                "method": request.method,
                "path": request.path,
                "status": response.status,
                "duration": round(duration, 6),
                "peer_pid": peer.pid if peer else None,
                "peer_uid": peer.uid if peer else None,
            },
        )
        return response

    async def _respond(self, request: Request) -> Response:
        try:
            segments = request.segments()
            for pattern, methods in self._routes:
                captured = _match(pattern, segments)
                if captured is None:
                    continue
                endpoint = methods.get(request.method)
                if endpoint is None:
                    allowed = ", ".join(methods)
                    return error_response(
                        405,
                        "method_not_allowed",
                        f"{request.path} accepts only {allowed}",
                        {"allow": list(methods)},
                        headers=(("allow", allowed),),
                    )
                return await endpoint(request, captured)
            return error_response(404, "not_found", f"no such path: {request.path}")
        except JobdError as error:
            status = next((status for kind, status in _STATUS_OF_ERROR if isinstance(error, kind)), None)
            if status is not None:
                return error_response(status, error.code, error.message, error.details())
            log.exception("unexpected error on %s %s", request.method, request.path)
        except Exception:
            log.exception("unexpected error on %s %s", request.method, request.path)
        return error_response(500, "internal", "internal error; the daemon's log has the details")

    async def _health(self, request: Request, captured: tuple[str, ...]) -> Response:
        health = await self._service.health()
        return json_response(200 if health.ok else 503, health.body)

    async def _submit(self, request: Request, captured: tuple[str, ...]) -> Response:
        inserted = await self._service.submit(_json_object(request), _traceparent(request), parsed=True)
        return json_response(201 if inserted.created else 200, inserted.job)

    async def _submit_batch(self, request: Request, captured: tuple[str, ...]) -> Response:
        inserted = await self._service.submit_batch(_json_object(request), _traceparent(request), parsed=True)
        return json_response(201, {"jobs": [item.job for item in inserted]})

    async def _list(self, request: Request, captured: tuple[str, ...]) -> Response:
        page = await self._service.list_jobs(request.query)
        return json_response(200, {"jobs": page.jobs, "next": page.next})

    async def _get(self, request: Request, captured: tuple[str, ...]) -> Response:
        return json_response(200, await self._service.get(_job_id(captured)))

    async def _wait(self, request: Request, captured: tuple[str, ...]) -> Response:
        job = await self._service.wait(_job_id(captured), request.query.get("timeout"))
        return json_response(200, job)

    async def _cancel(self, request: Request, captured: tuple[str, ...]) -> Response:
        return json_response(200, await self._service.cancel(_job_id(captured)))

    async def _retry(self, request: Request, captured: tuple[str, ...]) -> Response:
        return json_response(200, await self._service.retry(_job_id(captured)))

    async def _stats(self, request: Request, captured: tuple[str, ...]) -> Response:
        return json_response(200, await self._service.stats())

    async def _handlers(self, request: Request, captured: tuple[str, ...]) -> Response:
        return json_response(200, self._service.handlers())

    async def _pause(self, request: Request, captured: tuple[str, ...]) -> Response:
        return json_response(200, await self._service.pause(captured[0]))

    async def _resume(self, request: Request, captured: tuple[str, ...]) -> Response:
        return json_response(200, await self._service.resume(captured[0]))

    async def _schedules(self, request: Request, captured: tuple[str, ...]) -> Response:
        statuses = await self._service.schedules()
        return json_response(200, {"schedules": [status.to_json() for status in statuses]})

    async def _schedule(self, request: Request, captured: tuple[str, ...]) -> Response:
        return json_response(200, (await self._service.schedule(captured[0])).to_json())

    async def _pause_schedule(self, request: Request, captured: tuple[str, ...]) -> Response:
        return json_response(200, (await self._service.pause_schedule(captured[0])).to_json())

    async def _resume_schedule(self, request: Request, captured: tuple[str, ...]) -> Response:
        return json_response(200, (await self._service.resume_schedule(captured[0])).to_json())

    async def _trigger_schedule(self, request: Request, captured: tuple[str, ...]) -> Response:
        return json_response(201, (await self._service.trigger_schedule(captured[0])).to_json())

    async def _metrics(self, request: Request, captured: tuple[str, ...]) -> Response:
        exposition = self._service.metrics()
        return Response(200, exposition.body, exposition.content_type)


def _match(pattern: tuple[str, ...], segments: tuple[str, ...]) -> tuple[str, ...] | None:
    """The segments captured by the pattern's "{}" parts, or None when it does not match."""
    if len(pattern) != len(segments):
        return None
    captured = []
    for part, segment in zip(pattern, segments, strict=True):
        if part == "{}":
            if not segment:
                return None
            captured.append(segment)
        elif part != segment:
            return None
    return tuple(captured)


def _job_id(captured: tuple[str, ...]) -> str:
    """The job id of the path; one that is not a UUID names no job."""
    try:
        uuid.UUID(captured[0])
    except ValueError:
        raise JobNotFound(captured[0]) from None
    return captured[0]


def _traceparent(request: Request) -> str | None:
    """The request's `traceparent` header; one that is not valid is ignored, as the W3C
    Trace Context says (the job is then traced from a new root), rather than refusing the job."""
    header = request.header("traceparent")
    return None if header is None else parse_traceparent(header.strip())


def _json_object(request: Request) -> dict[str, Any]:
    """The body, which must be a JSON object."""
    try:
        text = request.body.decode("utf-8")
    except UnicodeDecodeError as error:
        raise BadRequest(f"the request body is not UTF-8 (byte {error.start})") from None
    if not text.strip():
        raise BadRequest("the request body is empty; a JSON object is required")
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as error:
        raise BadRequest(f"malformed JSON: {error.msg} at line {error.lineno} column {error.colno}") from None
    except ValueError as error:  # e.g. an integer of more digits than Python converts
        raise BadRequest(f"malformed JSON: {error}") from None
    except RecursionError:
        raise BadRequest("malformed JSON: nested too deeply") from None
    if not isinstance(value, dict):
        raise BadRequest(f"the request body must be a JSON object, not {_json_kind(value)}")
    return value


def _reject_constant(name: str) -> NoReturn:
    raise BadRequest(f"malformed JSON: {name} is not a JSON number")


def _json_kind(value: object) -> str:
    kinds = {list: "an array", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return "null" if value is None else kinds.get(type(value), type(value).__name__)
