"""Dependencies and unique windows through a real `jobd` on its default SQLite store,
driven with `jobd-ctl`: submit --after and --unique-for, list --state waiting, and a
SIGKILL while jobs wait that loses none of them."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from conftest import DaemonProcess, wait_until
from test_daemon_process import job_state

pytestmark = pytest.mark.process
StartDaemon = Callable[..., DaemonProcess]


def ctl_json(daemon: DaemonProcess, *args: str) -> dict[str, object]:
    done = daemon.ctl("--json", *args)
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def test_ctl_submits_after_a_parent_and_lists_the_waiting_job(start_daemon: StartDaemon) -> None:
    daemon = start_daemon()
    assert daemon.ctl("pause", "default").returncode == 0  # the parent stays pending meanwhile
    parent = ctl_json(daemon, "submit", "jobd.sleep", '{"seconds": 0.1}')
    child = ctl_json(daemon, "submit", "testplugin.gather", "--after", str(parent["id"]))
    assert child["state"] == "waiting" and child["after"] == [parent["id"]]
    listed = json.loads(daemon.ctl("--json", "list", "--state", "waiting").stdout)
    assert [job["id"] for job in listed] == [child["id"]]
    shown = daemon.ctl("show", str(child["id"])).stdout.splitlines()
    assert any(line.split() == ["after:", str(parent["id"])] for line in shown), shown
    assert daemon.ctl("resume", "default").returncode == 0
    done = ctl_json(daemon, "wait", str(child["id"]))
    assert done["state"] == "completed"
    assert done["result"]["parents"] == {parent["id"]: {"slept": 0.1}}  # type: ignore[index]
    refused = daemon.ctl("submit", "jobd.noop", "--after", "0190c2b4-0000-7000-8000-000000000000")
    assert refused.returncode != 0 and "after" in refused.stderr and "does not exist" in refused.stderr
    assert daemon.stop() == 0


def test_ctl_unique_for_returns_the_finished_job(start_daemon: StartDaemon) -> None:
    daemon = start_daemon()
    first = ctl_json(daemon, "submit", "jobd.noop", "--key", "signup:1", "--unique-for", "10m", "--wait")
    assert first["state"] == "completed"
    again = daemon.ctl("--json", "submit", "jobd.noop", "--key", "signup:1", "--unique-for", "10m")
    assert again.returncode == 0 and json.loads(again.stdout)["id"] == first["id"]
    assert "within --unique-for" in again.stderr
    plain = ctl_json(daemon, "submit", "jobd.noop", "--key", "signup:1")
    assert plain["id"] != first["id"]  # without a window, a key holds only while unfinished
    assert daemon.stop() == 0


def test_kill_9_while_jobs_wait_loses_none(start_daemon: StartDaemon) -> None:
    daemon = start_daemon(config={"workers": {"concurrency": 2}})
    with daemon.http() as client:
        jobs = [
            {"type": "jobd.sleep", "payload": {"seconds": 30}, "max_attempts": 2},
            {"type": "jobd.noop", "payload": "then", "after": ["#0"]},
            {"type": "testplugin.gather", "after": ["#0", "#1"]},
        ]
        submitted = client.post("/v1/jobs/batch", json={"jobs": jobs}).json()["jobs"]
    ids = [job["id"] for job in submitted]
    wait_until(lambda: job_state(daemon, ids[0])["state"] == "running", what="the parent to run")
    daemon.kill()
    daemon.start()
    assert [job_state(daemon, job_id)["state"] for job_id in ids[1:]] == ["waiting", "waiting"]
    with daemon.http() as client:  # the rescued parent runs again: cut it short
        assert client.post(f"/v1/jobs/{ids[0]}/cancel").status_code == 200
    wait_until(lambda: job_state(daemon, ids[2])["state"] == "cancelled", what="the cascade")
    final = [job_state(daemon, job_id) for job_id in ids]
    assert [job["state"] for job in final] == ["cancelled", "cancelled", "cancelled"]
    assert final[1]["last_error"] == f"parent {ids[0]} cancelled"
    assert final[2]["last_error"] == f"parent {ids[0]} cancelled"
    assert daemon.stop() == 0
