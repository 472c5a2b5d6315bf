"""`jobd.Client` against a fake daemon: a tiny HTTP server on a Unix socket with canned answers.

The fake (`FakeDaemon`, fixture `fake`) records every request; `tests/test_ctl_unit.py` uses it too.
"""

from __future__ import annotations

import contextlib
import json
import socket
import socketserver
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest

import jobd
from jobd.client import Client, JobPage, Submitted, resolve_socket
from jobd.errors import ApiError, ConfigError, DaemonUnreachable
from jobd.job import Job, JobState

JOB_ID = "0b8e7f4e-3c1d-4c55-9d3e-6c2f8f1a2b3c"


def job_json(**changes: Any) -> dict[str, Any]:
    """A job as the API returns it."""
    job = {
        "id": JOB_ID,
        "type": "jobd.noop",
        "queue": "default",
        "payload": {"n": 1},
        "state": "pending",
        "priority": 0,
        "attempts": 0,
        "max_attempts": 3,
        "timeout": 30.0,
        "run_at": "2030-01-31T09:00:00Z",
        "created_at": "2030-01-31T09:00:00Z",
        "updated_at": "2030-01-31T09:00:00Z",
        "started_at": None,
        "finished_at": None,
        "last_error": None,
        "result": None,
        "progress": None,
        "key": None,
    }
    job.update(changes)
    return job


def error_json(code: str, message: str, **details: Any) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": details}}


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, str]
    body: Any


@dataclass
class Answer:
    status: int
    body: Any  # JSON, or bytes sent as they are
    delay: float = 0.0


@dataclass
class FakeDaemon:
    socket: str
    requests: list[Request] = field(default_factory=list)
    answers: dict[tuple[str, str], list[Answer]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(self, method: str, path: str, status: int, body: Any, *, delay: float = 0.0) -> None:
        """Queue an answer for `method path`; the last one queued keeps answering."""
        self.answers.setdefault((method, path), []).append(Answer(status, body, delay))

    def respond(self, method: str, raw_path: str, body: bytes) -> Answer:
        parts = urlsplit(raw_path)
        parsed = json.loads(body) if body else None
        with self.lock:
            self.requests.append(Request(method, parts.path, dict(parse_qsl(parts.query)), parsed))
            queued = self.answers.get((method, parts.path))
            if not queued:
                return Answer(404, error_json("not_found", f"no route {method} {parts.path}"))
            return queued.pop(0) if len(queued) > 1 else queued[0]

    @property
    def last(self) -> Request:
        return self.requests[-1]


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        answer = self.server.fake.respond(self.command, self.path, self.rfile.read(length))
        time.sleep(answer.delay)
        data = answer.body if isinstance(answer.body, bytes) else json.dumps(answer.body).encode()
        self.send_response(answer.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = _serve  # noqa: N815 - the names http.server looks up

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the address of a Unix-socket peer is empty anyway."""


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    block_on_close = False
    fake: FakeDaemon


@contextlib.contextmanager
def short_tmp_dir() -> Iterator[Path]:
    """A directory with a short path: a Unix socket path must fit in 108 bytes."""
    with tempfile.TemporaryDirectory(prefix="jobd-") as directory:
        yield Path(directory)


@pytest.fixture
def fake() -> Iterator[FakeDaemon]:
    with short_tmp_dir() as directory:
        daemon = FakeDaemon(str(directory / "jobd.sock"))
        server = _Server(daemon.socket, _Handler)
        server.fake = daemon
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        try:
            yield daemon
        finally:
            server.shutdown()
            server.server_close()
            thread.join()


@pytest.fixture
def dead_socket() -> Iterator[str]:
    """A socket file that no one listens on (a daemon that died without cleaning up)."""
    with short_tmp_dir() as directory:
        path = str(directory / "jobd.sock")
        with socket.socket(socket.AF_UNIX) as sock:
            sock.bind(path)
        yield path


@pytest.fixture
def client(fake: FakeDaemon) -> Iterator[Client]:
    with Client(fake.socket, timeout=5.0) as client:
        yield client


# -- jobs -----------------------------------------------------------------------------------


def test_submit_sends_type_payload_and_only_the_given_options(fake: FakeDaemon, client: Client) -> None:
    fake.answer("POST", "/v1/jobs", 201, job_json())
    job = client.submit("jobd.noop", {"n": 1}, queue="default", priority=5, max_attempts=2, key="k1")
    assert fake.last == Request(
        "POST",
        "/v1/jobs",
        {},
        {
            "type": "jobd.noop",
            "payload": {"n": 1},
            "queue": "default",
            "priority": 5,
            "max_attempts": 2,
            "key": "k1",
        },
    )
    assert isinstance(job, Job)
    assert job.id == uuid.UUID(JOB_ID)
    assert job.state is JobState.PENDING


def test_submit_sends_null_payload_delay_and_timeout_in_seconds(fake: FakeDaemon, client: Client) -> None:
    fake.answer("POST", "/v1/jobs", 201, job_json(state="scheduled"))
    client.submit("jobd.noop", delay=90.0, timeout=1.5)
    assert fake.last.body == {"type": "jobd.noop", "payload": None, "delay": 90.0, "timeout": 1.5}


def test_submit_sends_run_at_as_rfc3339_utc(fake: FakeDaemon, client: Client) -> None:
    fake.answer("POST", "/v1/jobs", 201, job_json(state="scheduled"))
    client.submit("jobd.noop", {}, run_at=datetime(2030, 1, 31, 9, 0, tzinfo=UTC))
    assert fake.last.body["run_at"] == "2030-01-31T09:00:00Z"


def test_submit_result_tells_created_from_found_by_key(fake: FakeDaemon, client: Client) -> None:
    fake.answer("POST", "/v1/jobs", 201, job_json(key="once"))
    fake.answer("POST", "/v1/jobs", 200, job_json(key="once"))
    first = client.submit_result("jobd.noop", {}, key="once")
    second = client.submit_result("jobd.noop", {}, key="once")
    assert isinstance(first, Submitted)
    assert (first.created, second.created) == (True, False)
    assert first.job == second.job


def test_submit_many_posts_a_batch_and_returns_the_jobs(fake: FakeDaemon, client: Client) -> None:
    other = "7d1f3c9a-0a51-4c57-8f38-6a7c1d2e3f40"
    fake.answer("POST", "/v1/jobs/batch", 201, {"jobs": [job_json(), job_json(id=other)]})
    items = [{"type": "jobd.noop", "payload": 1}, {"type": "jobd.noop", "payload": 2, "delay": 5}]
    jobs = client.submit_many(items)
    assert fake.last.body == {"jobs": items}
    assert [str(job.id) for job in jobs] == [JOB_ID, other]


def test_get_cancel_and_retry_use_the_job_paths(fake: FakeDaemon, client: Client) -> None:
    fake.answer("GET", f"/v1/jobs/{JOB_ID}", 200, job_json(state="running"))
    fake.answer("POST", f"/v1/jobs/{JOB_ID}/cancel", 200, job_json(state="cancelled"))
    fake.answer("POST", f"/v1/jobs/{JOB_ID}/retry", 200, job_json(state="pending"))
    assert client.get(JOB_ID).state is JobState.RUNNING
    assert client.cancel(uuid.UUID(JOB_ID)).state is JobState.CANCELLED
    assert client.retry(JOB_ID.upper()).state is JobState.PENDING
    assert [(r.method, r.path) for r in fake.requests] == [
        ("GET", f"/v1/jobs/{JOB_ID}"),
        ("POST", f"/v1/jobs/{JOB_ID}/cancel"),
        ("POST", f"/v1/jobs/{JOB_ID}/retry"),
    ]


def test_a_malformed_job_id_is_refused_before_any_request(fake: FakeDaemon, client: Client) -> None:
    with pytest.raises(ValueError, match="not a job id"):
        client.get("../stats")
    assert fake.requests == []


def test_list_sends_filters_and_list_page_gives_the_cursor(fake: FakeDaemon, client: Client) -> None:
    fake.answer("GET", "/v1/jobs", 200, {"jobs": [job_json(state="failed")], "next": "cursor-1"})
    page = client.list_page(state=JobState.FAILED, type="jobd.noop", queue="default", limit=1, after="c0")
    assert fake.last.query == {
        "state": "failed",
        "type": "jobd.noop",
        "queue": "default",
        "limit": "1",
        "after": "c0",
    }
    assert isinstance(page, JobPage)
    assert page.next == "cursor-1"
    assert [job.state for job in page.jobs] == [JobState.FAILED]
    jobs = client.list()
    assert fake.last.query == {}
    assert [str(job.id) for job in jobs] == [JOB_ID]


# -- wait -------------------------------------------------------------------------------------


def test_wait_without_timeout_polls_until_the_job_is_finished(fake: FakeDaemon) -> None:
    path = f"/v1/jobs/{JOB_ID}/wait"
    fake.answer("GET", path, 200, job_json(state="running"))
    fake.answer("GET", path, 200, job_json(state="running"))
    fake.answer("GET", path, 200, job_json(state="completed", result={"ok": True}))
    with Client(fake.socket, timeout=2.0) as client:
        job = client.wait(JOB_ID)
    assert job.state is JobState.COMPLETED
    assert job.result == {"ok": True}
    # No long poll asks the daemon to hold on longer than the client's own timeout.
    assert [r.query for r in fake.requests] == [{"timeout": "2"}] * 3


def test_wait_with_a_timeout_returns_the_unfinished_job_in_slices(fake: FakeDaemon) -> None:
    fake.answer("GET", f"/v1/jobs/{JOB_ID}/wait", 200, job_json(state="running"), delay=0.05)
    with Client(fake.socket, timeout=0.5) as client:
        started = time.monotonic()
        job = client.wait(JOB_ID, timeout=0.8)
    assert time.monotonic() - started >= 0.8
    assert job.state is JobState.RUNNING
    asked = [float(r.query["timeout"]) for r in fake.requests]
    assert asked[0] == 0.5
    assert all(0 <= seconds <= 0.5 for seconds in asked)


def test_a_long_client_timeout_still_polls_in_bounded_slices(fake: FakeDaemon) -> None:
    fake.answer("GET", f"/v1/jobs/{JOB_ID}/wait", 200, job_json(state="completed"))
    with Client(fake.socket, timeout=7200.0) as client:
        client.wait(JOB_ID)
    assert [r.query for r in fake.requests] == [{"timeout": "600"}]


def test_wait_with_zero_timeout_asks_once(fake: FakeDaemon, client: Client) -> None:
    fake.answer("GET", f"/v1/jobs/{JOB_ID}/wait", 200, job_json(state="scheduled"))
    assert client.wait(JOB_ID, timeout=0).state is JobState.SCHEDULED
    assert [r.query for r in fake.requests] == [{"timeout": "0"}]


# -- the daemon -------------------------------------------------------------------------------


def test_stats_handlers_health_pause_and_resume(fake: FakeDaemon, client: Client) -> None:
    queue = {"scheduled": 0, "pending": 2, "running": 1, "completed": 5, "failed": 0, "cancelled": 0}
    stats = {
        "queues": {"default": {**queue, "paused": False, "concurrency": 10}},
        "workers": {"busy": 1, "capacity": 10},
    }
    handlers = {
        "handlers": [
            {"type": "jobd.noop", "plugin": "jobd", "queue": "default", "timeout": None, "max_attempts": 3}
        ]
    }
    health = {"status": "ok", "version": "0.1.0", "store": "ok"}
    paused = {"queue": "email", **queue, "paused": True, "concurrency": 10}
    fake.answer("GET", "/v1/stats", 200, stats)
    fake.answer("GET", "/v1/handlers", 200, handlers)
    fake.answer("GET", "/v1/health", 200, health)
    fake.answer("POST", "/v1/queues/email/pause", 200, paused)
    fake.answer("POST", "/v1/queues/email/resume", 200, {**paused, "paused": False})
    assert client.stats() == stats
    assert client.handlers() == handlers
    assert client.health() == health
    assert client.pause("email") == paused
    assert client.resume("email")["paused"] is False
    assert [(r.method, r.path) for r in fake.requests][-2:] == [
        ("POST", "/v1/queues/email/pause"),
        ("POST", "/v1/queues/email/resume"),
    ]


def test_health_of_a_degraded_daemon_is_an_answer(fake: FakeDaemon, client: Client) -> None:
    fake.answer("GET", "/v1/health", 503, {"status": "degraded", "version": "0.1.0", "store": "unreachable"})
    assert client.health()["status"] == "degraded"


def test_a_daemon_shutting_down_answers_health_with_an_error(fake: FakeDaemon, client: Client) -> None:
    fake.answer("GET", "/v1/health", 503, error_json("shutting_down", "jobd is stopping"))
    with pytest.raises(ApiError) as caught:
        client.health()
    assert (caught.value.status, caught.value.code) == (503, "shutting_down")


# -- errors -----------------------------------------------------------------------------------


def test_an_error_answer_raises_api_error_with_code_message_and_details(
    fake: FakeDaemon, client: Client
) -> None:
    fake.answer("POST", "/v1/jobs", 422, error_json("invalid_job", "unknown job type 'nope'", field="type"))
    with pytest.raises(ApiError) as caught:
        client.submit("nope", {})
    error = caught.value
    assert not isinstance(error, DaemonUnreachable)
    assert (error.status, error.code, error.message) == (422, "invalid_job", "unknown job type 'nope'")
    assert error.details() == {"field": "type"}


def test_an_unknown_job_raises_not_found(fake: FakeDaemon, client: Client) -> None:
    with pytest.raises(ApiError) as caught:
        client.get(JOB_ID)
    assert (caught.value.status, caught.value.code) == (404, "not_found")


@pytest.mark.parametrize(
    ("call", "method", "path", "status", "code", "details", "expected", "data"),
    [
        ("get", "GET", f"/v1/jobs/{JOB_ID}", 404, "not_found", {}, jobd.JobNotFound, {"job_id": JOB_ID}),
        (
            "wait",
            "GET",
            f"/v1/jobs/{JOB_ID}/wait",
            404,
            "not_found",
            {},
            jobd.JobNotFound,
            {"job_id": JOB_ID},
        ),
        (
            "pause",
            "POST",
            "/v1/queues/mail/pause",
            404,
            "not_found",
            {},
            jobd.QueueNotFound,
            {"queue": "mail"},
        ),
        (
            "cancel",
            "POST",
            f"/v1/jobs/{JOB_ID}/cancel",
            409,
            "conflict",
            {"job_id": JOB_ID, "state": "completed"},
            jobd.IllegalTransition,
            {"job_id": JOB_ID, "state": "completed", "action": "cancel"},
        ),
        (
            "retry",
            "POST",
            f"/v1/jobs/{JOB_ID}/retry",
            409,
            "conflict",
            {"job_id": JOB_ID, "key": "k1"},
            jobd.KeyInUse,
            {"job_id": JOB_ID, "key": "k1"},
        ),
        (
            "submit",
            "POST",
            "/v1/jobs",
            422,
            "invalid_job",
            {"field": "type"},
            jobd.InvalidJob,
            {"field": "type", "index": None},
        ),
        (
            "submit",
            "POST",
            "/v1/jobs",
            413,
            "payload_too_large",
            {"field": "payload"},
            jobd.PayloadTooLarge,
            {"field": "payload"},
        ),
        (
            "list",
            "GET",
            "/v1/jobs",
            400,
            "bad_request",
            {"field": "limit"},
            jobd.BadRequest,
            {"field": "limit"},
        ),
        ("stats", "GET", "/v1/stats", 503, "store_unavailable", {}, jobd.StoreUnavailable, {}),
        ("submit", "POST", "/v1/jobs", 503, "shutting_down", {}, jobd.ShuttingDown, {}),
        (
            "wait",
            "GET",
            f"/v1/jobs/{JOB_ID}/wait",
            503,
            "overloaded",
            {"limit": 128},
            jobd.Overloaded,
            {"limit": 128},
        ),
    ],
)
def test_an_error_answer_raises_the_specific_exported_error(
    fake: FakeDaemon,
    client: Client,
    call: str,
    method: str,
    path: str,
    status: int,
    code: str,
    details: dict[str, Any],
    expected: type[Exception],
    data: dict[str, Any],
) -> None:
    fake.answer(method, path, status, error_json(code, "the daemon says no", **details))
    arguments = {
        "get": (JOB_ID,),
        "wait": (JOB_ID,),
        "cancel": (JOB_ID,),
        "retry": (JOB_ID,),
        "pause": ("mail",),
        "submit": ("jobd.noop",),
    }.get(call, ())
    with pytest.raises(expected) as caught:
        getattr(client, call)(*arguments)
    error = caught.value
    assert isinstance(error, ApiError)  # what jobd-ctl and older callers catch
    assert (error.status, error.code, error.message) == (status, code, "the daemon says no")
    assert error.details() == details
    assert {name: getattr(error, name) for name in data} == data


def test_an_error_answer_that_is_not_json_still_raises_api_error(fake: FakeDaemon, client: Client) -> None:
    fake.answer("GET", "/v1/stats", 502, b"<html>Bad Gateway</html>")
    with pytest.raises(ApiError) as caught:
        client.stats()
    assert (caught.value.status, caught.value.code) == (502, "http_502")
    assert "Bad Gateway" in caught.value.message


def test_a_success_answer_that_is_not_a_job_raises_api_error(fake: FakeDaemon, client: Client) -> None:
    fake.answer("GET", f"/v1/jobs/{JOB_ID}", 200, {"id": JOB_ID})
    fake.answer("GET", "/v1/stats", 200, b"not json")
    with pytest.raises(ApiError, match="not a job") as caught:
        client.get(JOB_ID)
    assert caught.value.code == "invalid_response"
    with pytest.raises(ApiError, match="not a JSON object"):
        client.stats()


def test_a_missing_socket_file_raises_daemon_unreachable() -> None:
    with short_tmp_dir() as directory:
        path = str(directory / "absent.sock")
        with Client(path) as client, pytest.raises(DaemonUnreachable) as caught:
            client.health()
    assert caught.value.socket == path
    assert path in caught.value.message
    assert "does not exist" in caught.value.message
    assert isinstance(caught.value.__cause__, httpx.HTTPError)


def test_a_socket_no_one_listens_on_raises_daemon_unreachable(dead_socket: str) -> None:
    with Client(dead_socket) as client, pytest.raises(DaemonUnreachable, match="connection refused"):
        client.stats()


def test_a_path_that_is_not_a_socket_is_named_so(tmp_path: Path) -> None:
    path = tmp_path / "jobd.toml"
    path.write_text("")
    with Client(str(path)) as client, pytest.raises(DaemonUnreachable, match="the path is not a socket"):
        client.stats()


def test_a_daemon_that_does_not_answer_in_time_is_unreachable(fake: FakeDaemon) -> None:
    fake.answer("GET", "/v1/stats", 200, {}, delay=1.0)
    with (
        Client(fake.socket, timeout=0.2) as client,
        pytest.raises(DaemonUnreachable, match=r"no answer within 0\.2s"),
    ):
        client.stats()


# -- the socket ------------------------------------------------------------------------------


def test_the_socket_is_the_argument_then_jobd_socket_then_the_config(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = tmp_path / "jobd.toml"
    config.write_text('[api]\nsocket = "/srv/jobd/control.sock"\n')
    monkeypatch.setenv("JOBD_CONFIG", str(config))
    monkeypatch.delenv("JOBD_API_SOCKET", raising=False)
    monkeypatch.setenv("JOBD_SOCKET", "/env/jobd.sock")
    assert resolve_socket("/given.sock") == "/given.sock"
    assert resolve_socket() == "/env/jobd.sock"
    monkeypatch.delenv("JOBD_SOCKET")
    assert resolve_socket() == "/srv/jobd/control.sock"
    monkeypatch.setenv("JOBD_API_SOCKET", "/override/jobd.sock")
    assert resolve_socket() == "/override/jobd.sock"


def test_without_a_config_file_the_socket_is_the_zero_config_default(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("JOBD_SOCKET", "JOBD_CONFIG", "JOBD_API_SOCKET"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RUNTIME_DIRECTORY", "/run/elsewhere")
    monkeypatch.setattr("jobd.config.SYSTEM_CONFIG", Path("/nonexistent/jobd.toml"))
    assert Client().socket == "/run/elsewhere/jobd.sock"


def test_a_broken_config_is_reported_only_when_it_is_needed(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = tmp_path / "jobd.toml"
    config.write_text("[api\n")
    monkeypatch.setenv("JOBD_CONFIG", str(config))
    monkeypatch.delenv("JOBD_SOCKET", raising=False)
    with pytest.raises(ConfigError) as caught:
        Client()
    assert caught.value.file == str(config)
    assert Client("/given.sock").socket == "/given.sock"


def test_a_missing_user_socket_falls_back_to_the_system_daemon(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from jobd import client as client_module

    system = tmp_path / "system.sock"
    monkeypatch.setattr(client_module, "SYSTEM_SOCKET", str(system))
    monkeypatch.setenv("JOBD_API_SOCKET", str(tmp_path / "user.sock"))
    monkeypatch.setenv("JOBD_CONFIG", str(tmp_path / "none.toml"))
    (tmp_path / "none.toml").write_text("")
    assert client_module.resolve_socket() == str(tmp_path / "user.sock")  # neither exists: the configured one
    system.touch()
    assert client_module.resolve_socket() == str(system)
    (tmp_path / "user.sock").touch()
    assert client_module.resolve_socket() == str(tmp_path / "user.sock")


# -- schedules ----------------------------------------------------------------------------------

SCHEDULE = {
    "name": "a b/c",
    "every": 60,
    "timezone": "UTC",
    "type": "jobd.noop",
    "queue": "default",
    "enabled": True,
    "paused": False,
    "next_run": "2030-01-31T09:01:00Z",
    "last_tick": None,
    "last_job_id": None,
}


def test_schedules_are_typed_values(fake: FakeDaemon) -> None:
    from jobd.schedules import ScheduleStatus

    fake.answer("GET", "/v1/schedules", 200, {"schedules": [SCHEDULE]})
    fake.answer("POST", "/v1/schedules/a%20b%2Fc/pause", 200, {**SCHEDULE, "paused": True, "next_run": None})
    with Client(fake.socket) as client:
        [status] = client.schedules()
        assert status == ScheduleStatus(
            "a b/c",
            None,
            60.0,
            "UTC",
            "jobd.noop",
            "default",
            True,
            False,
            datetime(2030, 1, 31, 9, 1, tzinfo=UTC),
            None,
            None,
        )
        assert status.to_json() == {**SCHEDULE, "every": 60.0}
        assert client.pause_schedule("a b/c").paused
    assert fake.last.path == "/v1/schedules/a%20b%2Fc/pause"


def test_a_trigger_returns_the_job_and_an_unknown_schedule_raises_schedule_not_found(
    fake: FakeDaemon,
) -> None:
    fake.answer(
        "POST", "/v1/schedules/s/trigger", 201, job_json(schedule="s", scheduled_for="2030-01-31T09:00:00Z")
    )
    fake.answer("GET", "/v1/schedules/gone", 404, error_json("not_found", "no schedule named 'gone'"))
    with Client(fake.socket) as client:
        job = client.trigger_schedule("s")
        assert (job.schedule, job.scheduled_for) == ("s", datetime(2030, 1, 31, 9, tzinfo=UTC))
        with pytest.raises(jobd.ScheduleNotFound) as caught:
            client.schedule("gone")
    assert caught.value.schedule == "gone" and caught.value.code == "not_found"
    assert isinstance(caught.value, ApiError)
