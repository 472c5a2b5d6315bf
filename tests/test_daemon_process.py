"""The real `jobd` program on a temporary socket and state directory, driven by jobd-ctl and httpx.

These tests start, kill and restart the daemon, and check that every accepted job ends in
the state the contract gives it. They poll for conditions with deadlines; none sleeps and hopes.
"""

from __future__ import annotations

import json
import signal
import socket
import sqlite3
import subprocess
import textwrap
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import JOBD, JOBD_CTL, DaemonProcess, run_python, send_batches_some_refused, wait_until

pytestmark = pytest.mark.process
StartDaemon = Callable[..., DaemonProcess]


def job_state(daemon: DaemonProcess, job_id: str) -> dict[str, Any]:
    with daemon.http() as client:
        answer = client.get(f"/v1/jobs/{job_id}")
        assert answer.status_code == 200, answer.text
        return dict(answer.json())


def all_jobs(daemon: DaemonProcess) -> list[dict[str, Any]]:
    jobs: list[dict[str, Any]] = []
    after = None
    with daemon.http() as client:
        while True:
            params = {"limit": "1000", **({"after": after} if after else {})}
            body = client.get("/v1/jobs", params=params).json()
            jobs.extend(body["jobs"])
            after = body["next"]
            if after is None:
                return jobs


def test_submit_with_ctl_and_the_job_runs(start_daemon: StartDaemon) -> None:
    daemon = start_daemon()
    submitted = daemon.ctl("--json", "submit", "jobd.noop", '{"n": 1}', "--wait")
    assert submitted.returncode == 0, submitted.stderr
    job = json.loads(submitted.stdout)
    assert job["state"] == "completed" and job["result"] == {"n": 1}
    shown = json.loads(daemon.ctl("--json", "show", job["id"]).stdout)
    assert shown == job_state(daemon, job["id"])
    listed = json.loads(daemon.ctl("--json", "list", "--state", "completed").stdout)
    assert [j["id"] for j in listed] == [job["id"]]
    stats = json.loads(daemon.ctl("--json", "stats").stdout)
    assert stats["queues"]["default"]["completed"] == 1
    assert stats["workers"]["capacity"] == 10
    assert daemon.stop() == 0


def test_a_plugin_installed_as_a_distribution_runs_its_jobs(start_daemon: StartDaemon) -> None:
    daemon = start_daemon(config={"plugins": {"testplugin": {"greeting": "hi"}}})
    with daemon.http() as client:
        handlers = {h["type"]: h for h in client.get("/v1/handlers").json()["handlers"]}
        assert handlers["testplugin.echo"]["plugin"] == "jobd-testplugin"
        assert handlers["testplugin.echo"]["queue"] == "tests"
        assert handlers["jobd.noop"]["plugin"] == "jobd"
        answer = client.post("/v1/jobs", json={"type": "testplugin.echo", "payload": {"text": "ping"}})
        assert answer.status_code == 201
        job = answer.json()
        assert job["queue"] == "tests"
        done = client.get(f"/v1/jobs/{job['id']}/wait", params={"timeout": "20"}).json()
        assert done["state"] == "completed"
        assert done["result"] == {"echo": "ping", "attempt": 1, "greeting": "hi"}
        assert done["progress"] == {"fraction": 1.0, "message": "echoed"}
        refused = client.post("/v1/jobs", json={"type": "testplugin.echo", "payload": {"text": 5}})
        assert refused.status_code == 422
        assert refused.json()["error"]["details"]["field"] == "payload.text"
        flaky = client.post("/v1/jobs", json={"type": "testplugin.flaky"}).json()
        flaky_done = client.get(f"/v1/jobs/{flaky['id']}/wait", params={"timeout": "20"}).json()
        assert flaky_done["state"] == "completed" and flaky_done["attempts"] == 3


def test_kill_9_mid_job_loses_nothing(start_daemon: StartDaemon) -> None:
    daemon = start_daemon(config={"workers": {"concurrency": 4}})
    with daemon.http() as client:
        sleeper = {"type": "jobd.sleep", "payload": {"seconds": 1}, "max_attempts": 3}
        sleepers = [client.post("/v1/jobs", json=sleeper).json() for _ in range(3)]
        last_chance = client.post(
            "/v1/jobs", json={"type": "jobd.sleep", "payload": {"seconds": 1000}, "max_attempts": 1}
        ).json()
        waiting = client.post(
            "/v1/jobs/batch", json={"jobs": [{"type": "jobd.noop", "payload": i} for i in range(200)]}
        ).json()["jobs"]
        delayed = client.post("/v1/jobs", json={"type": "jobd.noop", "delay": 2}).json()
    running_ids = {j["id"] for j in sleepers} | {last_chance["id"]}
    wait_until(lambda: all(job_state(daemon, i)["state"] == "running" for i in running_ids), what="4 running")
    daemon.kill()
    daemon.start()
    everything = [*sleepers, last_chance, *waiting, delayed]
    wait_until(
        lambda: all(job_state(daemon, j["id"])["state"] in ("completed", "failed") for j in everything),
        timeout=60,
        what="every job to finish",
    )
    for job in sleepers:
        final = job_state(daemon, job["id"])
        assert final["state"] == "completed"
        assert final["attempts"] == 2  # the killed attempt, then the one that finished
        assert "lease expired" in final["last_error"]
    lost = job_state(daemon, last_chance["id"])
    assert lost["state"] == "failed" and "lease expired" in lost["last_error"]
    for job in [*waiting, delayed]:
        final = job_state(daemon, job["id"])
        assert final["state"] == "completed" and final["attempts"] == 1
    assert len(all_jobs(daemon)) == len(everything)
    assert daemon.stop() == 0


def test_a_large_batch_is_all_or_nothing_and_kept_through_a_kill(start_daemon: StartDaemon) -> None:
    """A batch of more than 250 jobs is checked chunk by chunk while SQLite inserts the
    chunks before: a bad item late in it refuses it whole; a 201 is kept through kill -9."""
    daemon = start_daemon()
    jobs: list[dict[str, Any]] = [{"type": "jobd.noop", "payload": n} for n in range(600)]
    with daemon.http() as client:
        client.post("/v1/queues/default/pause").raise_for_status()
        refused = client.post(
            "/v1/jobs/batch", json={"jobs": [*jobs[:550], {"type": "no.such"}, *jobs[551:]]}
        )
        assert refused.status_code == 422, refused.text
        assert refused.json()["error"]["details"] == {"field": "type", "index": 550}
        assert all_jobs(daemon) == []
        accepted = client.post("/v1/jobs/batch", json={"jobs": jobs})
        assert accepted.status_code == 201, accepted.text
    assert [job["payload"] for job in accepted.json()["jobs"]] == list(range(600))
    daemon.kill()
    daemon.start()
    kept = all_jobs(daemon)  # newest first
    assert [job["payload"] for job in reversed(kept)] == list(range(600))
    assert {job["state"] for job in kept} == {"pending"}
    assert daemon.stop() == 0


def test_sigterm_lets_jobs_finish_then_requeues_the_rest(start_daemon: StartDaemon) -> None:
    daemon = start_daemon(config={"daemon": {"shutdown_timeout": "1s"}})
    with daemon.http() as client:
        short = client.post("/v1/jobs", json={"type": "jobd.sleep", "payload": {"seconds": 0.2}}).json()
        long = client.post("/v1/jobs", json={"type": "jobd.sleep", "payload": {"seconds": 600}}).json()
    wait_until(lambda: job_state(daemon, long["id"])["state"] == "running", what="the long job to run")
    assert daemon.stop() == 0
    database = sqlite3.connect(daemon.directory / "jobd.db")
    states = dict(database.execute("SELECT id, state FROM jobs").fetchall())
    database.close()
    assert "running" not in states.values()
    daemon.start()
    assert job_state(daemon, short["id"])["state"] == "completed"
    requeued = job_state(daemon, long["id"])
    assert requeued["attempts"] in (0, 1)  # given back at shutdown; 1 if it already restarted
    assert requeued["state"] in ("pending", "running")
    assert "shutdown" in requeued["last_error"]
    cancel = daemon.ctl("cancel", long["id"])
    assert cancel.returncode == 0


def test_cancel_a_running_job_through_ctl(start_daemon: StartDaemon) -> None:
    daemon = start_daemon()
    job = json.loads(daemon.ctl("--json", "submit", "testplugin.stubborn").stdout)
    wait_until(lambda: job_state(daemon, job["id"])["state"] == "running", what="the job to run")
    assert daemon.ctl("cancel", job["id"]).returncode == 0
    waited = daemon.ctl("--json", "wait", job["id"], "--timeout", "10s")
    assert waited.returncode == 1  # a waited job that ended cancelled
    assert json.loads(waited.stdout)["state"] == "cancelled"
    again = daemon.ctl("cancel", job["id"])
    assert again.returncode == 1 and "conflict" in again.stderr


def test_a_second_daemon_does_not_steal_a_live_socket(start_daemon: StartDaemon, short_dir: Path) -> None:
    first = start_daemon()
    second = subprocess.run(
        [*JOBD, "run", "--config", str(first.config_path)], capture_output=True, text=True, timeout=30
    )
    assert second.returncode == 1
    assert "already" in second.stderr and first.socket in second.stderr
    assert "Traceback" not in second.stderr
    assert first.ctl("health").returncode == 0  # the first one still serves


def test_a_stale_socket_file_is_replaced(start_daemon: StartDaemon, short_dir: Path) -> None:
    directory = short_dir / "d"
    directory.mkdir()
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(directory / "jobd.sock"))
    stale.close()  # the file stays, nobody listens: what a killed daemon leaves
    daemon = start_daemon()
    assert daemon.ctl("health").returncode == 0


def test_bad_config_exits_1_naming_key_and_file(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[workers]\nconcurrency = "lots"\n')
    for command in ("run", "check"):
        result = subprocess.run(
            [*JOBD, command, "--config", str(config)], capture_output=True, text=True, timeout=30
        )
        assert result.returncode == 1
        assert "workers.concurrency" in result.stderr and str(config) in result.stderr
        assert "Traceback" not in result.stderr


def test_a_broken_or_clashing_plugin_stops_the_start(tmp_path: Path) -> None:
    site = tmp_path / "site"
    for name, module, code in (
        ("jobd_broken", "broken_plugin", "raise ImportError('missing dependency foo')\n"),
    ):
        dist = site / f"{name}-1.0.dist-info"
        dist.mkdir(parents=True)
        (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
        (dist / "entry_points.txt").write_text(f"[jobd]\nbroken = {module}\n")
        (site / f"{module}.py").write_text(code)
    env = {"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}
    config = tmp_path / "c.toml"
    config.write_text('[store]\nurl = "memory:"\n')
    result = subprocess.run(
        [*JOBD, "check", "--config", str(config)], capture_output=True, text=True, env=env, timeout=30
    )
    assert result.returncode == 1
    assert "broken" in result.stderr and "missing dependency foo" in result.stderr
    assert "Traceback" not in result.stderr

    clash = tmp_path / "clash"
    dist = clash / "jobd_clash-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: jobd-clash\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[jobd]\nclash = clash_plugin\n")
    (clash / "clash_plugin.py").write_text(
        "import jobd\n"
        "@jobd.handler('jobd.noop')\n"
        "async def mine(job): return None\n"
        "@jobd.hookimpl\n"
        "def jobd_handlers(): return [mine]\n"
    )
    result = subprocess.run(
        [*JOBD, "run", "--config", str(config)],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(clash), "PATH": "/usr/bin:/bin"},
        timeout=30,
    )
    assert result.returncode == 1
    assert "jobd.noop" in result.stderr and "jobd-clash" in result.stderr


def test_jobd_version_config_and_check(tmp_path: Path) -> None:
    version = subprocess.run([*JOBD, "--version"], capture_output=True, text=True, timeout=30)
    assert version.returncode == 0 and version.stdout.startswith("jobd ")
    config = tmp_path / "c.toml"
    config.write_text('[store]\nurl = "memory:"\n[workers]\nlease = "45s"\n')
    printed = subprocess.run(
        [*JOBD, "config", "--config", str(config)],
        capture_output=True,
        text=True,
        env={"JOBD_WORKERS_CONCURRENCY": "3", "PATH": "/usr/bin"},
        timeout=30,
    )
    assert printed.returncode == 0
    import tomllib

    effective = tomllib.loads(printed.stdout)
    assert effective["workers"] == {"concurrency": 3, "lease": "45s", "poll_interval": "1s"}
    assert effective["store"]["url"] == "memory:"
    checked = subprocess.run(
        [*JOBD, "check", "--config", str(config)], capture_output=True, text=True, timeout=30
    )
    assert checked.returncode == 0
    assert "jobd.noop" in checked.stdout and "testplugin.echo" in checked.stdout


def test_bad_requests_get_the_contract_errors_and_lose_nothing(start_daemon: StartDaemon) -> None:
    daemon = start_daemon(config={"api": {"max_payload_bytes": 1000}})
    with daemon.http() as client:

        def error(answer: httpx.Response, status: int) -> dict[str, Any]:
            assert answer.status_code == status, answer.text
            body = answer.json()
            assert set(body) == {"error"} and {"code", "message"} <= set(body["error"])
            return dict(body["error"])

        error(client.post("/v1/jobs", content=b'{"type": "jobd.noop",'), 400)
        assert error(client.post("/v1/jobs", json={"type": 5}), 422)["details"]["field"] == "type"
        assert error(client.post("/v1/jobs", json={"type": "no.such"}), 422)["details"]["field"] == "type"
        assert (
            error(client.post("/v1/jobs", json={"type": "jobd.noop", "priority": "high"}), 422)["details"][
                "field"
            ]
            == "priority"
        )
        assert (
            error(client.post("/v1/jobs", json={"type": "jobd.noop", "queue": "nope"}), 422)["details"][
                "field"
            ]
            == "queue"
        )
        assert (
            error(client.post("/v1/jobs", json={"type": "jobd.noop", "delay": "soon"}), 422)["details"][
                "field"
            ]
            == "delay"
        )
        assert (
            error(client.post("/v1/jobs", json={"type": "jobd.sleep", "payload": {"seconds": -1}}), 422)[
                "details"
            ]["field"]
            == "payload.seconds"
        )
        assert (
            error(client.post("/v1/jobs", json={"type": "jobd.noop", "payload": "x" * 2000}), 413)["details"][
                "field"
            ]
            == "payload"
        )
        batch = client.post("/v1/jobs/batch", json={"jobs": [{"type": "jobd.noop"}, {"type": "bad"}]})
        assert error(batch, 422)["details"]["index"] == 1
        error(client.get("/v1/nothing"), 404)
        error(client.get(f"/v1/jobs/{uuid.uuid4()}"), 404)
        error(client.get("/v1/jobs/not-a-uuid"), 404)
        error(client.delete("/v1/jobs"), 405)
        error(client.get("/v1/jobs", params={"limit": "0"}), 400)
        error(client.post("/v1/queues/nope/pause"), 404)
        done = client.post("/v1/jobs", json={"type": "jobd.noop"}).json()
        client.get(f"/v1/jobs/{done['id']}/wait", params={"timeout": "10"})
        error(client.post(f"/v1/jobs/{done['id']}/cancel"), 409)
        error(client.post(f"/v1/jobs/{done['id']}/retry"), 409)
    # A body cut short: the client promises more than it sends, then hangs up.
    raw = socket.socket(socket.AF_UNIX)
    raw.connect(daemon.socket)
    raw.sendall(b'POST /v1/jobs HTTP/1.1\r\nHost: jobd\r\nContent-Length: 100\r\n\r\n{"type"')
    raw.shutdown(socket.SHUT_WR)
    reply = raw.recv(4096)
    raw.close()
    assert reply == b"" or reply.startswith(b"HTTP/1.1 400")
    # Only the one good job and nothing from the bad requests is in the store.
    assert [j["type"] for j in all_jobs(daemon)] == ["jobd.noop"]
    assert daemon.ctl("health").returncode == 0


def test_a_flood_of_concurrent_submissions_is_all_kept(start_daemon: StartDaemon) -> None:
    daemon = start_daemon()

    def submit(i: int) -> str:
        with daemon.http() as client:
            answer = client.post("/v1/jobs", json={"type": "jobd.noop", "payload": i})
            assert answer.status_code == 201, answer.text
            return str(answer.json()["id"])

    with ThreadPoolExecutor(max_workers=50) as pool:
        ids = set(pool.map(submit, range(1000)))
    assert len(ids) == 1000

    def completed() -> int:
        return int(json.loads(daemon.ctl("--json", "stats").stdout)["queues"]["default"]["completed"])

    wait_until(lambda: completed() == 1000, timeout=60, what="1000 jobs completed")
    assert {j["id"] for j in all_jobs(daemon)} == ids


def test_concurrent_large_batches_some_refused_while_jobs_run(start_daemon: StartDaemon) -> None:
    """Batches checked chunk by chunk while SQLite's thread inserts them, from four
    clients at once, while the daemon runs their jobs: each accepted job runs once, and
    nothing of a refused batch is kept."""
    daemon = start_daemon()
    accepted = send_batches_some_refused([daemon])

    def completed() -> int:
        return int(json.loads(daemon.ctl("--json", "stats").stdout)["queues"]["default"]["completed"])

    wait_until(lambda: completed() == len(accepted), timeout=60, what="every accepted job completed")
    kept = all_jobs(daemon)
    assert {job["id"] for job in kept} == accepted
    assert {(job["state"], job["attempts"]) for job in kept} == {("completed", 1)}


def test_idempotency_key_pause_resume_and_metrics(start_daemon: StartDaemon) -> None:
    daemon = start_daemon()
    assert daemon.ctl("pause", "default").returncode == 0
    with daemon.http() as client:
        first = client.post("/v1/jobs", json={"type": "jobd.noop", "key": "order-1"})
        second = client.post("/v1/jobs", json={"type": "jobd.noop", "key": "order-1"})
        assert (first.status_code, second.status_code) == (201, 200)
        assert first.json()["id"] == second.json()["id"]
        stats = client.get("/v1/stats").json()["queues"]["default"]
        assert stats["paused"] is True and stats["pending"] == 1
    # The pause is kept in the store: it survives a restart.
    assert daemon.stop() == 0
    daemon.start()
    assert json.loads(daemon.ctl("--json", "stats").stdout)["queues"]["default"]["paused"] is True
    resumed = json.loads(daemon.ctl("--json", "resume", "default").stdout)
    assert resumed["queue"] == "default" and resumed["paused"] is False
    waited = daemon.ctl("--json", "wait", first.json()["id"], "--timeout", "20s")
    assert json.loads(waited.stdout)["state"] == "completed"
    with daemon.http() as client:
        metrics = client.get("/metrics").text
    assert 'jobd_jobs_finished_total{outcome="completed",queue="default",type="jobd.noop"} 1.0' in metrics


def test_ctl_reports_an_unreachable_daemon_with_exit_3(short_dir: Path) -> None:
    result = subprocess.run(
        [*JOBD_CTL, "--socket", str(short_dir / "none.sock"), "stats"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 3
    assert "none.sock" in result.stderr and "Traceback" not in result.stderr


def test_sigint_also_stops_cleanly(start_daemon: StartDaemon) -> None:
    daemon = start_daemon()
    daemon.signal(signal.SIGINT)
    assert daemon.wait_exit() == 0
    assert "stopped" in daemon.log()


def test_a_taken_metrics_port_is_a_clean_start_error(start_daemon: StartDaemon, short_dir: Path) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        daemon = start_daemon(config={"metrics": {"listen": f"127.0.0.1:{port}"}}, wait=False)
        assert daemon.wait_exit() == 1
        log = daemon.log()
        assert "metrics.listen" in log and str(port) in log
        assert "Traceback" not in log
        assert not Path(daemon.socket).exists()  # the control socket it bound was removed
    finally:
        taken.close()


def test_metrics_are_served_on_tcp_and_a_clean_exit_removes_the_socket(start_daemon: StartDaemon) -> None:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    daemon = start_daemon(config={"metrics": {"listen": f"127.0.0.1:{port}"}})
    daemon.ctl("submit", "jobd.noop", "--wait")
    scraped = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
    assert scraped.status_code == 200
    assert "jobd_build_info" in scraped.text and "jobd_workers_capacity" in scraped.text
    assert httpx.get(f"http://127.0.0.1:{port}/v1/stats", timeout=10).status_code == 404
    assert daemon.stop() == 0
    assert not Path(daemon.socket).exists()


def test_jobd_migrate_creates_the_schema_and_exits(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    database = tmp_path / "state" / "jobd.db"
    config.write_text(f'[store]\nurl = "sqlite://{database}"\n')
    for _ in range(2):  # a second run finds nothing to do
        result = subprocess.run(
            [*JOBD, "migrate", "--config", str(config)], capture_output=True, text=True, timeout=30
        )
        assert result.returncode == 0, result.stderr
        assert "up to date" in result.stdout
    connection = sqlite3.connect(database)
    tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    connection.close()
    assert {"jobs", "paused_queues", "schema_migrations"} <= tables
    bad = tmp_path / "bad.toml"
    bad.write_text('[store]\nurl = "sqlite:///proc/no/such/dir/jobd.db"\n')
    failed = subprocess.run(
        [*JOBD, "migrate", "--config", str(bad)], capture_output=True, text=True, timeout=30
    )
    assert failed.returncode == 1 and "Traceback" not in failed.stderr and "/proc/no/such" in failed.stderr


def test_the_metrics_port_takes_no_request_bodies(start_daemon: StartDaemon) -> None:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    start_daemon(config={"metrics": {"listen": f"127.0.0.1:{port}"}})
    answer = httpx.post(f"http://127.0.0.1:{port}/metrics", content=b"x" * 10_000, timeout=10)
    assert answer.status_code == 413
    assert httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).status_code == 200


def test_a_json_number_too_long_to_convert_is_a_bad_request(start_daemon: StartDaemon) -> None:
    daemon = start_daemon()
    with daemon.http() as client:
        answer = client.post("/v1/jobs", content=b'{"type": "jobd.noop", "payload": ' + b"9" * 5000 + b"}")
    assert answer.status_code == 400 and answer.json()["error"]["code"] == "bad_request"


INTERPRETER_AT_READINESS = textwrap.dedent(
    """
    import gc
    import sys

    import trio

    import jobd.daemon
    from jobd.config import parse_config
    from jobd.plugins import PluginHost

    raw = {"store": {"url": "memory:"}, "api": {"socket": sys.argv[1]}, "metrics": {"listen": ""}}
    config = parse_config(raw)
    host = PluginHost()
    host.load([])
    daemon = jobd.daemon.Daemon(config, host, None)
    print(gc.get_threshold()[0], gc.get_freeze_count() > 0, sys.getswitchinterval())
    notify_ready = jobd.daemon.systemd.notify_ready


    def ready(status):
        notify_ready(status)
        print(gc.get_threshold()[0], gc.get_freeze_count() > 0, sys.getswitchinterval())
        daemon.stop("the test")


    jobd.daemon.systemd.notify_ready = ready
    trio.run(daemon.run)
    """
)


def test_a_ready_daemon_has_settled_its_collector_and_its_switch_interval(short_dir: Path) -> None:
    """At 700 young objects (the default) a drain set off collections that freed nothing;
    at a 5 ms switch interval the SQLite store's thread waited up to 5 ms for the loop."""
    result = run_python(INTERPRETER_AT_READINESS, str(short_dir / "s"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["700 False 0.005", "20000 True 0.0005"]
