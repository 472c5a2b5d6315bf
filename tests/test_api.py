"""The control API's routes, against a fake job service that keeps jobs in a dict."""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import httpx
import pytest
import trio

from jobd.api import ControlApi, Operations, make_handler
from jobd.errors import (
    BadRequest,
    IllegalTransition,
    InvalidJob,
    JobNotFound,
    KeyInUse,
    PayloadTooLarge,
    QueueNotFound,
    ScheduleNotFound,
    ShuttingDown,
    StoreUnavailable,
)
from jobd.http import Limits, Peer, Request, bind_unix_socket, serve
from jobd.job import Job, JobState
from jobd.metrics import Exposition
from jobd.schedules import ScheduleStatus
from jobd.service import Health
from jobd.store import Inserted, JobPage

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
FINISHED = {JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED}
PEER = Peer(pid=4242, uid=1000, gid=1000)


class FakeService:
    """Follows the job service's interface (`Operations`), with just enough behaviour to
    drive every answer."""

    def __init__(self) -> None:
        self.jobs: dict[str, Job] = {}
        self.queues = {"default": False, "email": False}  # name -> paused
        self.store_down = False
        self.shutting_down = False
        self.broken = False
        self.key_held = False
        self.waited: list[tuple[str, str | None]] = []
        self.listed: list[dict[str, str]] = []
        self.traceparents: list[str | None] = []  # each submit's traceparent header, as the API read it
        self.parsed: list[bool] = []  # each submit's word that its body came from JSON text
        self.schedule_states = {
            "nightly": ScheduleStatus(
                "nightly",
                "30 2 * * *",
                None,
                "Europe/Berlin",
                "jobd.noop",
                "default",
                True,
                False,
                NOW,
                None,
                None,
            ),
            "often": ScheduleStatus(
                "often", None, 900.0, "UTC", "jobd.noop", "default", True, False, NOW, NOW, uuid.uuid4()
            ),
        }

    def _check(self) -> None:
        if self.shutting_down:
            raise ShuttingDown("jobd is shutting down")
        if self.store_down:
            raise StoreUnavailable("the store cannot be reached")

    def _new(self, body: object) -> Inserted:
        if not isinstance(body, dict) or not isinstance(body.get("type"), str):
            raise InvalidJob("type must be a string", field="type")
        if body["type"] == "unknown.type":
            raise InvalidJob("no handler for type 'unknown.type'", field="type")
        if len(json.dumps(body.get("payload"))) > 100:
            raise PayloadTooLarge("payload is over 100 bytes", field="payload")
        key = body.get("key")
        for job in self.jobs.values():
            if key is not None and job.key == key and job.state not in FINISHED:
                return Inserted(job, created=False)
        job = Job(
            id=uuid.uuid4(),
            type=body["type"],
            queue="default",
            payload=body.get("payload"),
            state=JobState.PENDING,
            priority=0,
            attempts=0,
            max_attempts=3,
            timeout=None,
            run_at=NOW,
            created_at=NOW,
            updated_at=NOW,
            key=key,
        )
        self.jobs[str(job.id)] = job
        return Inserted(job, created=True)

    async def submit(self, body: object, traceparent: str | None = None, *, parsed: bool = False) -> Inserted:
        self._check()
        self.traceparents.append(traceparent)
        self.parsed.append(parsed)
        await trio.lowlevel.checkpoint()
        return self._new(body)

    async def submit_batch(
        self, body: object, traceparent: str | None = None, *, parsed: bool = False
    ) -> list[Inserted]:
        self._check()
        self.traceparents.append(traceparent)
        self.parsed.append(parsed)
        if not isinstance(body, dict) or not isinstance(body.get("jobs"), list):
            raise InvalidJob("jobs must be a list", field="jobs")
        results = []
        for index, item in enumerate(body["jobs"]):
            try:
                results.append(self._new(item))
            except InvalidJob as error:
                raise error.at_index(index) from None
        return results

    def _find(self, job_id: str) -> Job:
        self._check()
        try:
            return self.jobs[str(uuid.UUID(job_id))]
        except (ValueError, KeyError):
            raise JobNotFound(job_id) from None

    async def get(self, job_id: str) -> Job:
        return self._find(job_id)

    async def list_jobs(self, query: Mapping[str, str]) -> JobPage:
        self._check()
        self.listed.append(dict(query))
        limit = query.get("limit", "100")
        if not limit.isdigit() or not 1 <= int(limit) <= 1000:
            raise BadRequest("limit must be a whole number from 1 to 1000", field="limit")
        jobs = list(self.jobs.values())
        return JobPage(jobs[: int(limit)], "cursor-2" if len(jobs) > int(limit) else None)

    async def cancel(self, job_id: str) -> Job:
        job = self._find(job_id)
        if job.state in FINISHED:
            raise IllegalTransition(job_id, job.state.value, "cancel")
        self.jobs[job_id] = replace(job, state=JobState.CANCELLED)
        return self.jobs[job_id]

    async def retry(self, job_id: str) -> Job:
        job = self._find(job_id)
        if job.state not in (JobState.FAILED, JobState.CANCELLED):
            raise IllegalTransition(job_id, job.state.value, "retry")
        if self.key_held:
            raise KeyInUse(job_id, job.key or "")
        self.jobs[job_id] = replace(job, state=JobState.PENDING)
        return self.jobs[job_id]

    async def wait(self, job_id: str, timeout: str | None) -> Job:
        if timeout is not None and not timeout.replace(".", "", 1).isdigit():
            raise BadRequest(f"timeout must be a number of seconds, got {timeout!r}", field="timeout")
        self.waited.append((job_id, timeout))
        return self._find(job_id)

    async def stats(self) -> dict[str, Any]:
        if self.broken:
            raise RuntimeError("secret internals")
        self._check()
        queues = {
            name: {"pending": 0, "paused": paused, "concurrency": 10} for name, paused in self.queues.items()
        }
        return {"queues": queues, "workers": {"busy": 0, "capacity": 10}}

    def handlers(self) -> dict[str, Any]:
        return {
            "handlers": [
                {
                    "type": "jobd.noop",
                    "plugin": "jobd",
                    "queue": "default",
                    "timeout": None,
                    "max_attempts": 3,
                }
            ]
        }

    async def _set_paused(self, queue: str, paused: bool) -> dict[str, Any]:
        self._check()
        if queue not in self.queues:
            raise QueueNotFound(queue)
        self.queues[queue] = paused
        return {"queue": queue, "paused": paused, "pending": 0, "concurrency": 10}

    async def pause(self, queue: str) -> dict[str, Any]:
        return await self._set_paused(queue, True)

    async def resume(self, queue: str) -> dict[str, Any]:
        return await self._set_paused(queue, False)

    async def schedules(self) -> list[ScheduleStatus]:
        self._check()
        return [self.schedule_states[name] for name in sorted(self.schedule_states)]

    async def schedule(self, name: str) -> ScheduleStatus:
        self._check()
        if name not in self.schedule_states:
            raise ScheduleNotFound(name)
        return self.schedule_states[name]

    async def pause_schedule(self, name: str) -> ScheduleStatus:
        status = await self.schedule(name)
        self.schedule_states[name] = replace(status, paused=True, next_run=None)
        return self.schedule_states[name]

    async def resume_schedule(self, name: str) -> ScheduleStatus:
        status = await self.schedule(name)
        self.schedule_states[name] = replace(status, paused=False, next_run=NOW)
        return self.schedule_states[name]

    async def trigger_schedule(self, name: str) -> Job:
        status = await self.schedule(name)
        inserted = self._new({"type": status.type, "payload": None})
        job = replace(inserted.job, schedule=name, scheduled_for=NOW)
        self.jobs[str(job.id)] = job
        return job

    async def health(self) -> Health:
        if self.store_down:
            return Health(False, {"status": "degraded", "version": "1.0", "store": "unreachable"})
        return Health(True, {"status": "ok", "version": "1.0", "store": "ok"})

    def metrics(self) -> Exposition:
        return Exposition(
            b"# HELP jobd_workers_busy x\njobd_workers_busy 0\n",
            "text/plain; version=0.0.4; charset=utf-8",
        )

    max_request_bytes = 1 << 20


def test_the_fake_offers_every_operation_the_routes_use() -> None:
    assert isinstance(FakeService(), Operations)


@pytest.fixture
def service() -> FakeService:
    return FakeService()


@pytest.fixture
def api(service: FakeService) -> ControlApi:
    return ControlApi(service)


class Answer:
    def __init__(
        self, status: int, headers: tuple[tuple[str, str], ...], body: bytes, content_type: str
    ) -> None:
        self.status = status
        self.headers = dict(headers)
        self.body = body
        self.content_type = content_type

    def json(self) -> Any:
        return json.loads(self.body)

    def error(self) -> dict[str, Any]:
        """The error, checked against the one shape."""
        body = self.json()
        assert set(body) == {"error"}
        assert set(body["error"]) == {"code", "message", "details"}
        assert isinstance(body["error"]["message"], str) and body["error"]["message"]
        return dict(body["error"])


async def call(
    api: ControlApi,
    method: str,
    target: str,
    body: bytes | object = b"",
    headers: tuple[tuple[str, str], ...] = (),
) -> Answer:
    """Hand the API a request as the HTTP server would build it."""
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    parts = urlsplit(target)
    request = Request(
        method=method,
        target=target,
        path=unquote(parts.path),
        query=MappingProxyType(dict(parse_qsl(parts.query, keep_blank_values=True))),
        headers=(("host", "jobd"), *headers),
        body=raw,
        peer=PEER,
    )
    response = await api(request)
    return Answer(response.status, response.headers, response.body, response.content_type)


async def submitted(api: ControlApi, **fields: object) -> dict[str, Any]:
    answer = await call(api, "POST", "/v1/jobs", {"type": "jobd.noop", "payload": {"n": 1}, **fields})
    assert answer.status == 201
    return dict(answer.json())


# --- each route ---------------------------------------------------------------------------


async def test_health_ok_and_degraded(api: ControlApi, service: FakeService) -> None:
    answer = await call(api, "GET", "/v1/health")
    assert (answer.status, answer.json()["status"]) == (200, "ok")
    service.store_down = True
    answer = await call(api, "GET", "/v1/health")
    assert (answer.status, answer.json()["status"]) == (503, "degraded")


async def test_submit_creates_201_then_same_key_200(api: ControlApi) -> None:
    first = await submitted(api, key="k1")
    assert first["type"] == "jobd.noop" and first["state"] == "pending" and first["key"] == "k1"
    uuid.UUID(first["id"])
    again = await call(api, "POST", "/v1/jobs", {"type": "jobd.noop", "key": "k1"})
    assert again.status == 200
    assert again.json()["id"] == first["id"]


TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.mark.parametrize("path", ["/v1/jobs", "/v1/jobs/batch"])
async def test_a_submit_hands_on_its_traceparent_header_and_ignores_a_bad_one(
    api: ControlApi, service: FakeService, path: str
) -> None:
    job = {"type": "jobd.noop"}
    body = {"jobs": [job]} if path.endswith("batch") else job
    for header in (
        TRACEPARENT,
        f" {TRACEPARENT} ",
        "00-nonsense",
        TRACEPARENT.upper(),
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
    ):
        assert (await call(api, "POST", path, body, headers=(("traceparent", header),))).status == 201
    assert (await call(api, "POST", path, body)).status == 201
    assert service.traceparents == [TRACEPARENT, TRACEPARENT, None, None, None, None]
    # The body came from JSON text: the service may size payloads by orjson's pass alone.
    assert service.parsed == [True] * 6


async def test_submit_invalid_job_is_422_with_field(api: ControlApi) -> None:
    answer = await call(api, "POST", "/v1/jobs", {"type": "unknown.type"})
    assert answer.status == 422
    assert answer.error() == {
        "code": "invalid_job",
        "message": "no handler for type 'unknown.type'",
        "details": {"field": "type"},
    }


async def test_submit_payload_too_large_is_413(api: ControlApi) -> None:
    answer = await call(api, "POST", "/v1/jobs", {"type": "jobd.noop", "payload": "x" * 200})
    assert answer.status == 413
    assert answer.error()["code"] == "payload_too_large"
    assert answer.error()["details"] == {"field": "payload"}


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b'{"type": ', "malformed JSON"),
        (b"", "empty"),
        (b"   ", "empty"),
        (b'{"type": NaN}', "NaN"),
        (b"\xff\xfe{}", "not UTF-8"),
        (b"[" * 100_000 + b"]" * 100_000, "malformed JSON"),
    ],
)
async def test_malformed_body_is_400(api: ControlApi, body: bytes, fragment: str) -> None:
    answer = await call(api, "POST", "/v1/jobs", body)
    assert answer.status == 400
    error = answer.error()
    assert error["code"] == "bad_request"
    assert fragment in error["message"]


@pytest.mark.parametrize(
    ("body", "kind"),
    [
        (b"[1, 2]", "an array"),
        (b'"text"', "a string"),
        (b"3", "a number"),
        (b"null", "null"),
        (b"true", "a boolean"),
    ],
)
@pytest.mark.parametrize("target", ["/v1/jobs", "/v1/jobs/batch"])
async def test_body_that_is_not_an_object_is_400(
    api: ControlApi, body: bytes, kind: str, target: str
) -> None:
    answer = await call(api, "POST", target, body)
    assert answer.status == 400
    assert answer.error()["message"] == f"the request body must be a JSON object, not {kind}"


async def test_batch_201_and_all_or_nothing_422_naming_the_index(
    api: ControlApi, service: FakeService
) -> None:
    answer = await call(
        api, "POST", "/v1/jobs/batch", {"jobs": [{"type": "jobd.noop"}, {"type": "jobd.sleep"}]}
    )
    assert answer.status == 201
    assert [job["type"] for job in answer.json()["jobs"]] == ["jobd.noop", "jobd.sleep"]
    answer = await call(
        api, "POST", "/v1/jobs/batch", {"jobs": [{"type": "jobd.noop"}, {"type": "unknown.type"}]}
    )
    assert answer.status == 422
    assert answer.error()["details"] == {"field": "type", "index": 1}


async def test_get_job_200_and_404(api: ControlApi) -> None:
    job = await submitted(api)
    answer = await call(api, "GET", f"/v1/jobs/{job['id']}")
    assert answer.status == 200
    assert answer.json() == job
    answer = await call(api, "GET", f"/v1/jobs/{uuid.uuid4()}")
    assert answer.status == 404
    assert answer.error()["code"] == "not_found"


@pytest.mark.parametrize("job_id", ["not-a-uuid", "123", "%20"])
async def test_job_id_that_is_not_a_uuid_is_404(api: ControlApi, job_id: str) -> None:
    for method, suffix in [("GET", ""), ("GET", "/wait"), ("POST", "/cancel"), ("POST", "/retry")]:
        answer = await call(api, method, f"/v1/jobs/{job_id}{suffix}")
        assert answer.status == 404, (method, suffix)
        assert answer.error()["code"] == "not_found"


async def test_list_passes_the_query_and_returns_jobs_and_next(api: ControlApi, service: FakeService) -> None:
    for _ in range(3):
        await submitted(api)
    answer = await call(api, "GET", "/v1/jobs?state=pending&type=jobd.noop&queue=default&limit=2&after=")
    assert answer.status == 200
    assert len(answer.json()["jobs"]) == 2
    assert answer.json()["next"] == "cursor-2"
    assert service.listed[-1] == {
        "state": "pending",
        "type": "jobd.noop",
        "queue": "default",
        "limit": "2",
        "after": "",
    }
    answer = await call(api, "GET", "/v1/jobs")
    assert answer.json()["next"] is None
    assert len(answer.json()["jobs"]) == 3


async def test_list_bad_query_is_400_naming_the_field(api: ControlApi) -> None:
    answer = await call(api, "GET", "/v1/jobs?limit=5000")
    assert answer.status == 400
    assert answer.error()["details"] == {"field": "limit"}


async def test_wait_passes_the_timeout(api: ControlApi, service: FakeService) -> None:
    job = await submitted(api)
    answer = await call(api, "GET", f"/v1/jobs/{job['id']}/wait?timeout=2.5")
    assert answer.status == 200
    assert answer.json()["id"] == job["id"]
    await call(api, "GET", f"/v1/jobs/{job['id']}/wait")
    assert service.waited == [(job["id"], "2.5"), (job["id"], None)]
    answer = await call(api, "GET", f"/v1/jobs/{job['id']}/wait?timeout=soon")
    assert answer.status == 400
    assert answer.error()["details"] == {"field": "timeout"}


async def test_cancel_200_then_409(api: ControlApi) -> None:
    job = await submitted(api)
    answer = await call(api, "POST", f"/v1/jobs/{job['id']}/cancel")
    assert (answer.status, answer.json()["state"]) == (200, "cancelled")
    answer = await call(api, "POST", f"/v1/jobs/{job['id']}/cancel")
    assert answer.status == 409
    assert answer.error() == {
        "code": "conflict",
        "message": f"job {job['id']} is cancelled: cannot cancel it",
        "details": {"job_id": job["id"], "state": "cancelled"},
    }


async def test_retry_409_unless_finished_badly_then_200_and_key_in_use(
    api: ControlApi, service: FakeService
) -> None:
    job = await submitted(api, key="k")
    assert (await call(api, "POST", f"/v1/jobs/{job['id']}/retry")).status == 409
    await call(api, "POST", f"/v1/jobs/{job['id']}/cancel")
    service.key_held = True
    answer = await call(api, "POST", f"/v1/jobs/{job['id']}/retry")
    assert (answer.status, answer.error()["code"]) == (409, "conflict")
    assert answer.error()["details"] == {"job_id": job["id"], "key": "k"}  # tells it from a state conflict
    service.key_held = False
    answer = await call(api, "POST", f"/v1/jobs/{job['id']}/retry")
    assert (answer.status, answer.json()["state"]) == (200, "pending")


async def test_stats_and_handlers(api: ControlApi) -> None:
    stats = await call(api, "GET", "/v1/stats")
    assert stats.status == 200
    assert stats.json()["workers"] == {"busy": 0, "capacity": 10}
    handlers = await call(api, "GET", "/v1/handlers")
    assert handlers.status == 200
    assert handlers.json()["handlers"][0]["plugin"] == "jobd"


async def test_pause_resume_and_unknown_queue(api: ControlApi, service: FakeService) -> None:
    answer = await call(api, "POST", "/v1/queues/email/pause")
    assert answer.status == 200
    assert answer.json()["queue"] == "email" and answer.json()["paused"] is True
    assert service.queues["email"] is True
    answer = await call(api, "POST", "/v1/queues/email/resume")
    assert answer.status == 200 and answer.json()["paused"] is False
    answer = await call(api, "POST", "/v1/queues/nope/pause")
    assert answer.status == 404
    assert answer.error()["message"] == "no queue named 'nope'"


async def test_schedules_list_show_pause_resume_and_trigger(api: ControlApi, service: FakeService) -> None:
    listed = await call(api, "GET", "/v1/schedules")
    assert listed.status == 200
    [nightly, often] = listed.json()["schedules"]
    assert nightly == {
        "name": "nightly",
        "cron": "30 2 * * *",
        "timezone": "Europe/Berlin",
        "type": "jobd.noop",
        "queue": "default",
        "enabled": True,
        "paused": False,
        "next_run": "2024-05-01T12:00:00Z",
        "last_tick": None,
        "last_job_id": None,
    }
    assert "cron" not in often and often["every"] == 900.0 and often["last_tick"] == "2024-05-01T12:00:00Z"
    shown = await call(api, "GET", "/v1/schedules/often")
    assert shown.status == 200 and shown.json() == often
    paused = await call(api, "POST", "/v1/schedules/nightly/pause")
    assert paused.status == 200 and paused.json()["paused"] is True and paused.json()["next_run"] is None
    resumed = await call(api, "POST", "/v1/schedules/nightly/resume")
    assert resumed.status == 200 and resumed.json()["paused"] is False
    triggered = await call(api, "POST", "/v1/schedules/nightly/trigger")
    assert triggered.status == 201
    job = triggered.json()
    assert (job["schedule"], job["scheduled_for"]) == ("nightly", "2024-05-01T12:00:00Z")
    plain = await submitted(api)
    assert (plain["schedule"], plain["scheduled_for"]) == (None, None)


@pytest.mark.parametrize(
    ("method", "action"), [("GET", ""), ("POST", "/pause"), ("POST", "/resume"), ("POST", "/trigger")]
)
async def test_an_unknown_schedule_is_404(api: ControlApi, method: str, action: str) -> None:
    answer = await call(api, method, f"/v1/schedules/nope{action}")
    assert answer.status == 404
    assert answer.error()["code"] == "not_found" and "nope" in answer.error()["message"]


async def test_queue_name_with_an_encoded_slash_stays_one_segment(api: ControlApi) -> None:
    answer = await call(api, "POST", "/v1/queues/a%2Fb/pause")
    assert answer.status == 404
    assert answer.error()["message"] == "no queue named 'a/b'"


async def test_metrics_are_passed_through(api: ControlApi) -> None:
    answer = await call(api, "GET", "/metrics")
    assert answer.status == 200
    assert answer.content_type == "text/plain; version=0.0.4; charset=utf-8"
    assert answer.body == b"# HELP jobd_workers_busy x\njobd_workers_busy 0\n"


# --- errors -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "target",
    [
        "/",
        "/v1",
        "/v1/jobs/",
        "/v2/jobs",
        "/v1/queues/default",
        "/metrics/x",
        "/v1/jobs/00000000-0000-0000-0000-000000000000/nope",
    ],
)
async def test_unknown_path_is_404(api: ControlApi, target: str) -> None:
    answer = await call(api, "GET", target)
    assert answer.status == 404
    assert answer.error()["code"] == "not_found"


@pytest.mark.parametrize(
    ("method", "target", "allow"),
    [
        ("DELETE", "/v1/jobs", "GET, POST"),
        ("GET", "/v1/jobs/batch", "POST"),
        ("POST", "/v1/health", "GET"),
        ("POST", f"/v1/jobs/{uuid.UUID(int=1)}", "GET"),
        ("GET", f"/v1/jobs/{uuid.UUID(int=1)}/cancel", "POST"),
        ("PUT", f"/v1/jobs/{uuid.UUID(int=1)}/wait", "GET"),
        ("GET", "/v1/queues/default/pause", "POST"),
        ("POST", "/metrics", "GET"),
        ("HEAD", "/v1/stats", "GET"),
    ],
)
async def test_wrong_method_is_405_with_allow(api: ControlApi, method: str, target: str, allow: str) -> None:
    answer = await call(api, method, target)
    assert answer.status == 405
    assert answer.headers["allow"] == allow
    assert answer.error()["code"] == "method_not_allowed"


@pytest.mark.parametrize(
    ("flag", "code"), [("store_down", "store_unavailable"), ("shutting_down", "shutting_down")]
)
async def test_store_down_and_shutting_down_are_503(
    api: ControlApi, service: FakeService, flag: str, code: str
) -> None:
    setattr(service, flag, True)
    for method, target, body in [
        ("POST", "/v1/jobs", {"type": "jobd.noop"}),
        ("GET", "/v1/jobs", b""),
        ("GET", "/v1/stats", b""),
        ("POST", "/v1/queues/default/pause", b""),
    ]:
        answer = await call(api, method, target, body)
        assert answer.status == 503, target
        assert answer.error()["code"] == code


async def test_unexpected_exception_is_500_internal_and_logged(
    api: ControlApi, service: FakeService, caplog: pytest.LogCaptureFixture
) -> None:
    service.broken = True
    with caplog.at_level(logging.ERROR, logger="jobd.api"):
        answer = await call(api, "GET", "/v1/stats")
    assert answer.status == 500
    assert answer.error()["code"] == "internal"
    assert "secret internals" not in answer.body.decode()
    [record] = [record for record in caplog.records if record.levelno == logging.ERROR]
    assert record.exc_info is not None and "secret internals" in str(record.exc_info[1])


async def test_changes_are_logged_with_the_peer(api: ControlApi, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="jobd.api"):
        await call(api, "POST", "/v1/jobs", {"type": "unknown.type"})
        await call(api, "GET", "/v1/stats")
    [record] = [record for record in caplog.records if record.name == "jobd.api"]  # the GET stays at debug
    fields = {name: getattr(record, name) for name in ("method", "path", "status", "peer_pid", "peer_uid")}
    assert fields == {"method": "POST", "path": "/v1/jobs", "status": 422, "peer_pid": 4242, "peer_uid": 1000}
    duration = record.__dict__["duration"]  # set through `extra`
    assert isinstance(duration, float) and duration >= 0


# --- through the real server --------------------------------------------------------------


@pytest.fixture
def socket_path() -> Iterator[Path]:
    directory = Path(tempfile.mkdtemp(prefix="jobd-api-", dir="/tmp"))  # AF_UNIX paths are short
    yield directory / "jobd.sock"
    shutil.rmtree(directory, ignore_errors=True)


async def test_a_flood_of_concurrent_requests_is_all_answered(
    nursery: trio.Nursery, service: FakeService, socket_path: Path
) -> None:
    listener = bind_unix_socket(str(socket_path), 0o600, "")
    await nursery.start(partial(serve, [listener], make_handler(service), limits=Limits(max_connections=100)))
    statuses: list[int] = []

    async def one(index: int) -> None:
        stream = await trio.open_unix_socket(str(socket_path))
        async with stream:
            body = json.dumps({"type": "jobd.noop", "payload": index}).encode()
            await stream.send_all(
                b"POST /v1/jobs HTTP/1.1\r\nHost: jobd\r\nConnection: close\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
            )
            received = b""
            while data := await stream.receive_some(65536):
                received += data
        statuses.append(int(received.split(b" ", 2)[1]))

    with trio.fail_after(120):  # generous: a loaded 2-core machine
        async with trio.open_nursery() as flood:
            for index in range(1000):
                flood.start_soon(one, index)
    assert statuses == [201] * 1000
    assert sorted(job.payload for job in service.jobs.values()) == list(range(1000))


async def test_end_to_end_with_httpx(nursery: trio.Nursery, service: FakeService, socket_path: Path) -> None:
    listener = bind_unix_socket(str(socket_path), 0o600, "")
    await nursery.start(partial(serve, [listener], make_handler(service), limits=Limits()))

    def talk() -> tuple[httpx.Response, httpx.Response, httpx.Response]:
        with httpx.Client(
            transport=httpx.HTTPTransport(uds=str(socket_path)), base_url="http://jobd"
        ) as client:
            created = client.post("/v1/jobs", json={"type": "jobd.noop", "payload": [1]})
            shown = client.get(f"/v1/jobs/{created.json()['id']}")
            return created, shown, client.post("/v1/jobs", content=b"{oops")

    created, shown, bad = await trio.to_thread.run_sync(talk)
    assert created.status_code == 201
    assert shown.json() == created.json()
    assert bad.status_code == 400
    assert bad.json()["error"]["code"] == "bad_request"
