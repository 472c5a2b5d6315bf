"""`jobd-ctl` against the fake daemon of `test_client_unit`: requests, output and exit status."""

from __future__ import annotations

import errno
import io
import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from conftest import run_python
from test_client_unit import JOB_ID, FakeDaemon, dead_socket, error_json, fake, job_json, short_tmp_dir

from jobd import top
from jobd.client import Client
from jobd.ctl import main
from jobd.errors import DaemonUnreachable
from jobd.job import Job
from jobd.topview import Cancel, Screen, SetPaused

__all__ = ["dead_socket", "fake"]  # fixtures shared with test_client_unit

WAIT_PATH = f"/v1/jobs/{JOB_ID}/wait"


def run(fake: FakeDaemon, *argv: str) -> int:
    return main(["--socket", fake.socket, *argv])


def contract_json(job: dict[str, Any]) -> dict[str, Any]:
    """The job object as jobd-ctl --json prints it: the API's fields, normalised."""
    return Job.from_json(job).to_json()


# -- submit -----------------------------------------------------------------------------------


def test_submit_prints_the_job_as_a_block(fake: FakeDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    fake.answer(
        "POST",
        "/v1/jobs",
        201,
        job_json(payload={"to": "ann"}, progress={"fraction": 0.5, "message": "half"}),
    )
    assert run(fake, "submit", "jobd.noop", '{"to": "ann"}') == 0
    assert fake.last.body == {"type": "jobd.noop", "payload": {"to": "ann"}}
    out = capsys.readouterr().out
    assert f"id:          {JOB_ID}\n" in out
    assert "state:       pending\n" in out
    assert "attempts:    0 of 3\n" in out
    assert "timeout:     30s\n" in out
    assert "run_at:      2030-01-31T09:00:00Z\n" in out
    assert "progress:    50% half\n" in out
    assert 'payload:     {"to": "ann"}\n' in out


def test_submit_json_prints_the_job_object(fake: FakeDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    fake.answer("POST", "/v1/jobs", 201, job_json())
    assert main(["--socket", fake.socket, "--json", "submit", "jobd.noop"]) == 0
    assert fake.last.body == {"type": "jobd.noop", "payload": None}
    assert json.loads(capsys.readouterr().out) == contract_json(job_json())


def test_submit_sends_every_option(fake: FakeDaemon) -> None:
    fake.answer("POST", "/v1/jobs", 201, job_json(state="scheduled"))
    argv = ["submit", "email.send", "[1, 2]", "--queue", "email", "--priority", "-3", "--delay", "1m30s"]
    argv += ["--max-attempts", "5", "--timeout", "500ms", "--key", "order-7"]
    assert run(fake, *argv) == 0
    assert fake.last.body == {
        "type": "email.send",
        "payload": [1, 2],
        "queue": "email",
        "priority": -3,
        "delay": 90.0,
        "max_attempts": 5,
        "timeout": 0.5,
        "key": "order-7",
    }


def test_submit_at_sends_run_at_in_utc(fake: FakeDaemon) -> None:
    fake.answer("POST", "/v1/jobs", 201, job_json(state="scheduled"))
    assert run(fake, "submit", "jobd.noop", "{}", "--at", "2030-01-31T10:00:00+01:00") == 0
    assert fake.last.body == {"type": "jobd.noop", "payload": {}, "run_at": "2030-01-31T09:00:00Z"}


def test_submit_dash_reads_the_payload_from_stdin(fake: FakeDaemon, monkeypatch: pytest.MonkeyPatch) -> None:
    fake.answer("POST", "/v1/jobs", 201, job_json())
    monkeypatch.setattr(sys, "stdin", io.StringIO('{"argv": ["echo", "hi"]}\n'))
    assert run(fake, "submit", "shell.run", "-") == 0
    assert fake.last.body == {"type": "shell.run", "payload": {"argv": ["echo", "hi"]}}


@pytest.mark.parametrize(
    ("argv", "stdin", "message"),
    [
        (["submit", "jobd.noop", "{nope"], "", "PAYLOAD_JSON is not valid JSON"),
        (["submit", "jobd.noop", "-"], "[1,", "the payload read from standard input is not valid JSON"),
        (["submit", "jobd.noop", "--delay", "soon"], "", "argument --delay: expected a duration"),
        (["submit", "jobd.noop", "--timeout", "-5s"], "", "argument --timeout"),
        (["submit", "jobd.noop", "--at", "2030-01-31T09:00:00"], "", "with an offset"),
        (["submit", "jobd.noop", "--delay", "5s", "--at", "2030-01-31T09:00:00Z"], "", "not allowed with"),
        (["submit", "jobd.noop", "--priority", "high"], "", "argument --priority: invalid int value"),
        (["show", "not-a-uuid"], "", "not a job id"),
        (["list", "--state", "done"], "", "invalid choice"),
        (["list", "--json"], "", "unrecognized arguments: --json"),
        (["frobnicate"], "", "invalid choice"),
        ([], "", "required"),
    ],
)
def test_usage_errors_exit_2_without_asking_the_daemon(
    fake: FakeDaemon,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    stdin: str,
    message: str,
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    assert run(fake, *argv) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err
    assert fake.requests == []


def test_submit_of_an_existing_key_says_so(fake: FakeDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    fake.answer("POST", "/v1/jobs", 200, job_json(key="order-7"))
    assert run(fake, "submit", "jobd.noop", "--key", "order-7") == 0
    captured = capsys.readouterr()
    assert "an unfinished job with key 'order-7' exists" in captured.err
    assert JOB_ID in captured.out


@pytest.mark.parametrize(("state", "status"), [("completed", 0), ("failed", 1), ("cancelled", 1)])
def test_submit_wait_exits_by_the_final_state(
    fake: FakeDaemon, capsys: pytest.CaptureFixture[str], state: str, status: int
) -> None:
    fake.answer("POST", "/v1/jobs", 201, job_json())
    fake.answer("GET", WAIT_PATH, 200, job_json(state="running"))
    fake.answer(
        "GET", WAIT_PATH, 200, job_json(state=state, last_error="boom" if state == "failed" else None)
    )
    assert main(["--socket", fake.socket, "--json", "submit", "jobd.noop", "--wait"]) == status
    assert [r.path for r in fake.requests] == ["/v1/jobs", WAIT_PATH, WAIT_PATH]
    captured = capsys.readouterr()
    assert json.loads(captured.out)["state"] == state
    if state == "failed":
        assert f"jobd-ctl: job {JOB_ID} ended failed: boom" in captured.err


# -- the other job commands -------------------------------------------------------------------


def test_show_cancel_and_retry(fake: FakeDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    fake.answer("GET", f"/v1/jobs/{JOB_ID}", 200, job_json(state="running"))
    fake.answer("POST", f"/v1/jobs/{JOB_ID}/cancel", 200, job_json(state="cancelled"))
    fake.answer("POST", f"/v1/jobs/{JOB_ID}/retry", 200, job_json(state="pending"))
    assert run(fake, "show", JOB_ID) == 0
    assert "state:       running" in capsys.readouterr().out
    assert main(["--socket", fake.socket, "--json", "cancel", JOB_ID]) == 0
    assert json.loads(capsys.readouterr().out) == contract_json(job_json(state="cancelled"))
    assert main(["--json", "--socket", fake.socket, "retry", JOB_ID]) == 0
    assert json.loads(capsys.readouterr().out)["state"] == "pending"
    assert [(r.method, r.path) for r in fake.requests] == [
        ("GET", f"/v1/jobs/{JOB_ID}"),
        ("POST", f"/v1/jobs/{JOB_ID}/cancel"),
        ("POST", f"/v1/jobs/{JOB_ID}/retry"),
    ]


def test_a_refusal_exits_1_with_the_message_and_code(
    fake: FakeDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    message = f"job {JOB_ID} is completed: cannot cancel it"
    fake.answer("POST", f"/v1/jobs/{JOB_ID}/cancel", 409, error_json("conflict", message, state="completed"))
    assert run(fake, "cancel", JOB_ID) == 1
    captured = capsys.readouterr()
    assert captured.err == f"jobd-ctl: {message} (conflict)\n"
    assert captured.out == ""


def test_show_of_an_unknown_job_exits_1(fake: FakeDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(fake, "show", JOB_ID) == 1
    assert "(not_found)" in capsys.readouterr().err


def test_list_prints_a_table_and_hints_at_the_next_page(
    fake: FakeDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    other = "7d1f3c9a-0a51-4c57-8f38-6a7c1d2e3f40"
    jobs = [job_json(type="email.send", queue="email", state="failed", attempts=3), job_json(id=other)]
    fake.answer("GET", "/v1/jobs", 200, {"jobs": jobs, "next": "c-2"})
    assert (
        run(fake, "list", "--state", "failed", "--type", "email.send", "--queue", "email", "--limit", "2")
        == 0
    )
    assert fake.last.query == {"state": "failed", "type": "email.send", "queue": "email", "limit": "2"}
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert lines[0].split() == ["ID", "TYPE", "QUEUE", "STATE", "ATTEMPTS", "PRIORITY", "CREATED"]
    assert lines[1].split() == [JOB_ID, "email.send", "email", "failed", "3/3", "0", "2030-01-31T09:00:00Z"]
    assert lines[2].startswith(other)
    # The columns are aligned: every cell of a column starts at the same offset.
    assert {
        line.index(cell) for line, cell in zip(lines, ["TYPE", "email.send", "jobd.noop"], strict=True)
    } == {38}
    assert "--after c-2" in captured.err


def test_list_json_prints_an_array_of_jobs(fake: FakeDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    fake.answer("GET", "/v1/jobs", 200, {"jobs": [job_json()], "next": None})
    assert main(["--json", "--socket", fake.socket, "list", "--after", "c-1"]) == 0
    assert fake.last.query == {"after": "c-1"}
    captured = capsys.readouterr()
    assert json.loads(captured.out) == [contract_json(job_json())]
    assert captured.err == ""


def test_list_of_nothing_says_so(fake: FakeDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    fake.answer("GET", "/v1/jobs", 200, {"jobs": [], "next": None})
    assert run(fake, "list") == 0
    assert capsys.readouterr().out == "no jobs\n"


def test_wait_exits_0_once_the_job_completed(fake: FakeDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    fake.answer("GET", WAIT_PATH, 200, job_json(state="completed", result={"sent": 1}))
    assert run(fake, "wait", JOB_ID, "--timeout", "1m") == 0
    assert float(fake.last.query["timeout"]) <= 60
    assert 'result:      {"sent": 1}' in capsys.readouterr().out


def test_wait_whose_timeout_runs_out_prints_the_job_and_exits_1(
    fake: FakeDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.answer("GET", WAIT_PATH, 200, job_json(state="running"))
    assert main(["--socket", fake.socket, "--json", "wait", JOB_ID, "--timeout", "0"]) == 1
    assert [r.query for r in fake.requests] == [{"timeout": "0"}]
    captured = capsys.readouterr()
    assert json.loads(captured.out)["state"] == "running"
    assert f"jobd-ctl: job {JOB_ID} is still running after 0s" in captured.err


def test_wait_help_documents_the_exit_status(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["wait", "--help"]) == 0
    help_text = " ".join(capsys.readouterr().out.split())
    assert "1 if it failed or was cancelled, or if --timeout ran out first" in help_text


# -- the daemon commands ----------------------------------------------------------------------

QUEUE = {
    "waiting": 6,
    "scheduled": 1,
    "pending": 2,
    "running": 3,
    "completed": 40,
    "failed": 5,
    "cancelled": 0,
}
STATS = {
    "queues": {
        "email": {**QUEUE, "paused": True, "concurrency": 4, "rate": "20/s", "burst": 20},
        "default": {**QUEUE, "paused": False, "concurrency": 10},
    },
    "workers": {"busy": 3, "capacity": 10},
}
HANDLERS = {
    "handlers": [
        {"type": "jobd.sleep", "plugin": "jobd", "queue": "default", "timeout": 300, "max_attempts": 3},
        {"type": "email.send", "plugin": "jobd-email", "queue": "email", "timeout": None, "max_attempts": 5},
    ]
}


def test_stats_prints_a_table_per_queue(fake: FakeDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    fake.answer("GET", "/v1/stats", 200, STATS)
    assert run(fake, "stats") == 0
    lines = capsys.readouterr().out.splitlines()
    header = "QUEUE WAITING SCHEDULED PENDING RUNNING COMPLETED FAILED CANCELLED CONCURRENCY RATE PAUSED"
    assert lines[0].split() == header.split()
    assert lines[1].split() == ["default", "6", "1", "2", "3", "40", "5", "0", "10", "-", "no"]
    assert lines[2].split() == ["email", "6", "1", "2", "3", "40", "5", "0", "4", "20/s", "yes"]
    assert lines[-1] == "workers busy: 3 of 10"


def test_handlers_prints_a_table(fake: FakeDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    fake.answer("GET", "/v1/handlers", 200, HANDLERS)
    assert run(fake, "handlers") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["TYPE", "PLUGIN", "QUEUE", "TIMEOUT", "MAX_ATTEMPTS"]
    assert lines[1].split() == ["email.send", "jobd-email", "email", "-", "5"]
    assert lines[2].split() == ["jobd.sleep", "jobd", "default", "5m", "3"]


@pytest.mark.parametrize(
    ("command", "path", "body"), [("stats", "/v1/stats", STATS), ("handlers", "/v1/handlers", HANDLERS)]
)
def test_stats_and_handlers_json_print_the_api_body(
    fake: FakeDaemon, capsys: pytest.CaptureFixture[str], command: str, path: str, body: dict[str, Any]
) -> None:
    fake.answer("GET", path, 200, body)
    assert main(["--json", "--socket", fake.socket, command]) == 0
    assert json.loads(capsys.readouterr().out) == body


def test_health_exits_0_when_ok_and_1_when_degraded(
    fake: FakeDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.answer("GET", "/v1/health", 200, {"status": "ok", "version": "0.1.0", "store": "ok"})
    fake.answer("GET", "/v1/health", 503, {"status": "degraded", "version": "0.1.0", "store": "unreachable"})
    assert run(fake, "health") == 0
    assert capsys.readouterr().out == "status:  ok\nversion: 0.1.0\nstore:   ok\n"
    assert main(["--json", "--socket", fake.socket, "health"]) == 1
    assert json.loads(capsys.readouterr().out)["status"] == "degraded"


@pytest.mark.parametrize("command", ["pause", "resume"])
def test_pause_and_resume(fake: FakeDaemon, capsys: pytest.CaptureFixture[str], command: str) -> None:
    body = {"queue": "email", **QUEUE, "paused": command == "pause", "concurrency": 4}
    fake.answer("POST", f"/v1/queues/email/{command}", 200, body)
    assert run(fake, command, "email") == 0
    out = capsys.readouterr().out
    assert out.startswith("queue:       email\n")
    assert f"paused:      {'yes' if command == 'pause' else 'no'}\n" in out
    assert main(["--json", "--socket", fake.socket, command, "email"]) == 0
    assert json.loads(capsys.readouterr().out) == body


def test_pausing_an_unknown_queue_exits_1(fake: FakeDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    fake.answer("POST", "/v1/queues/nope/pause", 404, error_json("not_found", "no queue named 'nope'"))
    assert run(fake, "pause", "nope") == 1
    assert capsys.readouterr().err == "jobd-ctl: no queue named 'nope' (not_found)\n"


# -- reaching the daemon ----------------------------------------------------------------------


def test_a_missing_socket_exits_3_naming_it(capsys: pytest.CaptureFixture[str]) -> None:
    with short_tmp_dir() as directory:
        path = str(directory / "absent.sock")
        assert main(["--socket", path, "stats"]) == 3
    err = capsys.readouterr().err
    assert f"cannot reach jobd at {path}: the socket file does not exist" in err
    assert "--socket" in err
    assert "jobd run" in err


def test_a_socket_no_one_listens_on_exits_3(dead_socket: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--socket", dead_socket, "show", JOB_ID]) == 3
    assert "connection refused" in capsys.readouterr().err


def test_a_socket_the_user_may_not_use_exits_3_with_a_hint_about_its_group(
    fake: FakeDaemon, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def refused(self: Client) -> dict[str, Any]:
        denied = PermissionError(errno.EACCES, "Permission denied")
        raise DaemonUnreachable(fake.socket, "permission denied on the socket") from denied

    monkeypatch.setattr(Client, "stats", refused)
    assert run(fake, "stats") == 3
    err = capsys.readouterr().err
    assert "permission denied on the socket" in err
    assert "api.socket_group" in err


def test_jobd_socket_is_used_without_socket_option(fake: FakeDaemon, monkeypatch: pytest.MonkeyPatch) -> None:
    fake.answer("GET", "/v1/stats", 200, STATS)
    monkeypatch.setenv("JOBD_SOCKET", fake.socket)
    assert main(["stats"]) == 0
    assert fake.last.path == "/v1/stats"


def test_a_broken_config_matters_only_without_socket(
    fake: FakeDaemon, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "jobd.toml"
    config.write_text("[api]\nsokcet = '/x.sock'\n")
    monkeypatch.setenv("JOBD_CONFIG", str(config))
    monkeypatch.delenv("JOBD_SOCKET", raising=False)
    assert main(["stats"]) == 2
    err = capsys.readouterr().err
    assert str(config) in err
    assert "sokcet" in err
    assert "--socket" in err
    fake.answer("GET", "/v1/stats", 200, STATS)
    assert run(fake, "stats") == 0


def test_an_interrupt_exits_130_quietly(
    fake: FakeDaemon, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    class Interrupted(io.StringIO):
        def read(self, size: int | None = -1) -> str:
            raise KeyboardInterrupt

    monkeypatch.setattr(sys, "stdin", Interrupted())
    assert run(fake, "submit", "jobd.noop", "-") == 130
    assert capsys.readouterr().err == ""


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("jobd-ctl ")


# -- the program --------------------------------------------------------------------------


def test_the_installed_program_reports_an_unreachable_daemon_without_a_traceback() -> None:
    program = Path(sys.executable).parent / "jobd-ctl"
    with short_tmp_dir() as directory:
        path = str(directory / "absent.sock")
        done = subprocess.run(
            [str(program), "--socket", path, "show", JOB_ID], capture_output=True, text=True, timeout=60
        )
    assert done.returncode == 3
    assert done.stdout == ""
    assert path in done.stderr
    assert "Traceback" not in done.stderr


def test_importing_the_control_client_loads_neither_trio_nor_a_database_driver_nor_pluggy() -> None:
    code = (
        "import sys, jobd.ctl, jobd.client; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'trio', 'psycopg', 'sqlite3', 'pluggy'}))"
    )
    done = run_python(code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


# -- schedules ----------------------------------------------------------------------------------

NIGHTLY = {
    "name": "nightly",
    "cron": "30 2 * * *",
    "timezone": "Europe/Berlin",
    "type": "shell.run",
    "queue": "reports",
    "enabled": True,
    "paused": False,
    "next_run": "2030-02-01T01:30:00Z",
    "last_tick": "2030-01-31T01:30:00Z",
    "last_job_id": JOB_ID,
}
OFTEN = {
    "name": "often",
    "every": 900.0,
    "timezone": "UTC",
    "type": "jobd.noop",
    "queue": "default",
    "enabled": True,
    "paused": True,
    "next_run": None,
    "last_tick": None,
    "last_job_id": None,
}


def block(out: str) -> dict[str, str]:
    """`key: value` lines as jobd-ctl prints one object."""
    return {key: value.strip() for key, _, value in (line.partition(":") for line in out.splitlines())}


def test_schedules_prints_a_table(fake: FakeDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    fake.answer("GET", "/v1/schedules", 200, {"schedules": [NIGHTLY, OFTEN]})
    assert run(fake, "schedules") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["NAME", "SCHEDULE", "TIMEZONE", "TYPE", "NEXT", "RUN", "LAST", "RUN", "STATE"]
    assert lines[1].split() == [
        "nightly",
        "30",
        "2",
        "*",
        "*",
        "*",
        "Europe/Berlin",
        "shell.run",
        "2030-02-01T01:30:00Z",
        "2030-01-31T01:30:00Z",
        "active",
    ]
    assert lines[2].split() == ["often", "every", "15m", "UTC", "jobd.noop", "-", "-", "paused"]


def test_schedules_json_prints_the_api_body(fake: FakeDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    fake.answer("GET", "/v1/schedules", 200, {"schedules": [NIGHTLY, OFTEN]})
    assert run(fake, "--json", "schedules") == 0
    assert json.loads(capsys.readouterr().out) == {"schedules": [NIGHTLY, OFTEN]}


@pytest.mark.parametrize(
    ("action", "method", "suffix"),
    [("show", "GET", ""), ("pause", "POST", "/pause"), ("resume", "POST", "/resume")],
)
def test_schedule_show_pause_resume(
    fake: FakeDaemon, capsys: pytest.CaptureFixture[str], action: str, method: str, suffix: str
) -> None:
    fake.answer(method, f"/v1/schedules/nightly{suffix}", 200, NIGHTLY)
    assert run(fake, "schedule", action, "nightly") == 0
    assert (fake.last.method, fake.last.path) == (method, f"/v1/schedules/nightly{suffix}")
    shown = block(capsys.readouterr().out)
    assert (shown["schedule"], shown["state"], shown["last_job_id"]) == ("30 2 * * *", "active", JOB_ID)
    assert (shown["next_run"], shown["last_tick"]) == ("2030-02-01T01:30:00Z", "2030-01-31T01:30:00Z")
    assert run(fake, "--json", "schedule", action, "nightly") == 0
    assert json.loads(capsys.readouterr().out) == NIGHTLY


def test_schedule_trigger_prints_the_job(fake: FakeDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    made = job_json(schedule="nightly", scheduled_for="2030-01-31T09:00:00Z")
    fake.answer("POST", "/v1/schedules/nightly/trigger", 201, made)
    assert run(fake, "schedule", "trigger", "nightly") == 0
    shown = block(capsys.readouterr().out)
    assert (shown["schedule"], shown["scheduled_for"]) == ("nightly", "2030-01-31T09:00:00Z")
    assert run(fake, "--json", "schedule", "trigger", "nightly") == 0
    assert json.loads(capsys.readouterr().out) == contract_json(made)


def test_an_unknown_schedule_is_exit_1(fake: FakeDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    fake.answer("POST", "/v1/schedules/nope/pause", 404, error_json("not_found", "no schedule named 'nope'"))
    assert run(fake, "schedule", "pause", "nope") == 1
    assert "no schedule named 'nope'" in capsys.readouterr().err
    assert run(fake, "schedule", "explode", "nope") == 2


# -- top ----------------------------------------------------------------------------------------

TOP_STATS = {
    "queues": {"email": {**QUEUE, "paused": False, "concurrency": 4}},
    "workers": {"busy": 1, "capacity": 4},
}


def answer_top(fake: FakeDaemon) -> None:
    fake.answer("GET", "/v1/health", 200, {"status": "ok", "version": "9.9", "store": "ok"})
    fake.answer("GET", "/v1/stats", 200, TOP_STATS)
    running = job_json(state="running", started_at="2030-01-31T09:00:00Z")
    fake.answer("GET", "/v1/jobs", 200, {"jobs": [running], "next": None})


def test_top_asks_for_health_stats_running_and_failed_jobs(fake: FakeDaemon) -> None:
    answer_top(fake)
    with Client(fake.socket) as client:
        screen = top.refresh(client, Screen(fake.socket, 1.0))
    assert [(request.path, request.query) for request in fake.requests] == [
        ("/v1/health", {}),
        ("/v1/stats", {}),
        ("/v1/jobs", {"state": "running", "limit": "1000"}),
        ("/v1/jobs", {"state": "failed", "limit": "20"}),
    ]
    assert screen.problem is None and screen.snapshot is not None
    assert [queue.name for queue in screen.snapshot.queues] == ["email"]


def test_top_says_why_a_refresh_failed(fake: FakeDaemon, dead_socket: str) -> None:
    fake.answer("GET", "/v1/health", 503, {"status": "degraded", "store": "unavailable"})
    fake.answer("GET", "/v1/stats", 503, error_json("store_unavailable", "cannot connect to PostgreSQL"))
    fake.answer("GET", "/v1/stats", 503, error_json("shutting_down", "jobd is shutting down"))
    with Client(fake.socket) as client:
        assert top.refresh(client, Screen(fake.socket, 1.0)).problem == (
            "STORE UNAVAILABLE: cannot connect to PostgreSQL"
        )
        assert top.refresh(client, Screen(fake.socket, 1.0)).problem == (
            "THE DAEMON ANSWERS, BUT: jobd is shutting down"
        )
    with Client(dead_socket) as client:
        assert top.refresh(client, Screen(dead_socket, 1.0)).problem == (
            "DAEMON UNREACHABLE: connection refused: nothing listens on the socket"
        )


def test_top_sends_what_a_key_asked_and_says_what_came_of_it(fake: FakeDaemon) -> None:
    screen = Screen(fake.socket, 1.0)
    fake.answer("POST", "/v1/queues/email/pause", 200, {"queue": "email", **QUEUE, "paused": True})
    fake.answer("POST", "/v1/queues/email/resume", 404, error_json("not_found", "no queue 'email'"))
    fake.answer("POST", f"/v1/jobs/{JOB_ID}/cancel", 200, job_json(state="cancelled"))
    with Client(fake.socket) as client:
        paused = top.carry_out(client, screen, SetPaused("email", True))
        resumed = top.carry_out(client, screen, SetPaused("email", False))
        cancelled = top.carry_out(client, screen, Cancel(uuid.UUID(JOB_ID)))
    assert paused.message == "queue email paused: it starts no job until resumed (p)"
    assert resumed.message == "not done: no queue 'email'"
    assert cancelled.message == f"job {JOB_ID[-8:]} cancelled"
    assert [request.path for request in fake.requests] == [
        "/v1/queues/email/pause",
        "/v1/queues/email/resume",
        f"/v1/jobs/{JOB_ID}/cancel",
    ]
