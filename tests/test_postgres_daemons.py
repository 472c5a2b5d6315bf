"""Several real `jobd` daemons sharing one PostgreSQL database.

Each test starts `jobd run` processes pointed at a fresh database and reads the truth
straight from `jobd.jobs` with psycopg. Faults are real: SIGKILL, SIGSTOP, backends
terminated by the server, and a TCP forwarder in front of the server that the test
refuses, cuts and restores (the daemons' view of a PostgreSQL restart, without
restarting the server other tests share). Every wait polls a condition with a deadline.
"""

from __future__ import annotations

import bisect
import contextlib
import json
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import psycopg
import pytest
from conftest import DaemonProcess, send_batches_some_refused, wait_until
from psycopg.rows import dict_row

import jobd
from jobd.completer import CANCELLED_AT_SHUTDOWN

pytestmark = [pytest.mark.process, pytest.mark.postgres]
StartDaemon = Callable[..., DaemonProcess]
Row = dict[str, Any]


# -- helpers --------------------------------------------------------------------------------


def connect(url: str) -> psycopg.Connection[Row]:
    return psycopg.connect(url, autocommit=True, row_factory=dict_row)


def scalar(conn: psycopg.Connection[Row], query: str, params: Any = None) -> Any:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return next(iter(row.values()))


def job_row(conn: psycopg.Connection[Row], job_id: str | uuid.UUID) -> Row:
    row = conn.execute("SELECT * FROM jobd.jobs WHERE id = %s", (job_id,)).fetchone()
    assert row is not None, f"job {job_id} is not in jobd.jobs"
    return row


def owner_prefix(daemon: DaemonProcess) -> str:
    """The start of the owner id a daemon writes on the rows it runs: host:pid:."""
    assert daemon.process is not None
    return f"{socket.gethostname()}:{daemon.process.pid}:"


def submit(daemon: DaemonProcess, job: dict[str, Any]) -> dict[str, Any]:
    with daemon.http() as client:
        answer = client.post("/v1/jobs", json=job)
    assert answer.status_code == 201, answer.text
    return dict(answer.json())


def submit_batch(daemon: DaemonProcess, jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    with daemon.http() as client:
        answer = client.post("/v1/jobs/batch", json={"jobs": jobs})
    assert answer.status_code == 201, answer.text
    return list(answer.json()["jobs"])


def set_paused(daemon: DaemonProcess, queue: str, paused: bool) -> None:
    with daemon.http() as client:
        answer = client.post(f"/v1/queues/{queue}/{'pause' if paused else 'resume'}")
    assert answer.status_code == 200, answer.text


def health(daemon: DaemonProcess) -> httpx.Response:
    with daemon.http(timeout=10) as client:
        return client.get("/v1/health")


def completed_count(conn: psycopg.Connection[Row]) -> int:
    return int(scalar(conn, "SELECT count(*) FROM jobd.jobs WHERE state = 'completed'"))


def completed_at_least(conn: psycopg.Connection[Row], count: int) -> bool:
    return completed_count(conn) >= count


def row_in_state(conn: psycopg.Connection[Row], job_id: str | uuid.UUID, state: str) -> Row | None:
    row = job_row(conn, job_id)
    return row if row["state"] == state else None


def counts_by_state(conn: psycopg.Connection[Row]) -> dict[str, int]:
    rows = conn.execute("SELECT state, count(*) AS n FROM jobd.jobs GROUP BY state").fetchall()
    return {row["state"]: row["n"] for row in rows}


def log_lines(daemon: DaemonProcess) -> list[dict[str, Any]]:
    lines = []
    for line in daemon.log().splitlines():
        with contextlib.suppress(ValueError):
            lines.append(json.loads(line))
    return lines


def logged(daemon: DaemonProcess, message: str) -> bool:
    return any(entry.get("message") == message for entry in log_lines(daemon))


def alive(daemon: DaemonProcess) -> bool:
    return daemon.process is not None and daemon.process.poll() is None


class NotifyListener:
    """A datagram socket standing in for systemd's notify socket."""

    def __init__(self, path: Path) -> None:
        self.address = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.address)
        self.sock.settimeout(0.05)
        self.messages: list[str] = []

    def fields(self) -> list[str]:
        while True:
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except TimeoutError:
                return [field for message in self.messages for field in message.split("\n")]


class TcpForwarder:
    """127.0.0.1:port -> the PostgreSQL server, under the test's control.

    The port is bound at once but not listened on, so connecting is refused (nothing
    listens) until `up()`. `cut()` resets every forwarded connection and refuses new
    ones until the next `up()`: what the daemons see of a server restart.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._serving = False
        self._listening = False
        self._closed = False
        self._accepter: threading.Thread | None = None

    def up(self) -> None:
        with self._lock:
            self._serving = True
        if not self._listening:
            self._listening = True
            self._listener.listen(128)
            self._accepter = threading.Thread(target=self._accept, daemon=True)
            self._accepter.start()

    def cut(self) -> None:
        with self._lock:
            self._serving = False
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            _reset(sock)

    def close(self) -> None:
        self._closed = True
        self.cut()
        if self._accepter is not None:
            self._accepter.join(5)
        self._listener.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _address = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                serving = self._serving
            if not serving:
                _reset(client)
                continue
            try:
                upstream = socket.create_connection(self._target, timeout=5)
            except OSError:
                _reset(client)
                continue
            upstream.settimeout(None)
            with self._lock:
                self._sockets += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pump, args=(source, sink), daemon=True).start()


def _pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    _reset(source)
    _reset(sink)


def _reset(sock: socket.socket) -> None:
    """Close with RST, waking any thread blocked on the socket."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


@pytest.fixture
def forwarder(fresh_postgres_url: str) -> Iterator[tuple[TcpForwarder, str]]:
    """A forwarder to the test server, and the fresh database's URL through it."""
    parts = urlsplit(fresh_postgres_url)
    forwarder = TcpForwarder(parts.hostname or "127.0.0.1", parts.port or 5432)
    user = f"{parts.username}@" if parts.username else ""
    netloc = f"{user}127.0.0.1:{forwarder.port}"
    try:
        yield forwarder, urlunsplit(parts._replace(netloc=netloc))
    finally:
        forwarder.close()


@pytest.fixture
def start_jobd(start_daemon: StartDaemon) -> Iterator[StartDaemon]:
    """`start_daemon`, and after the test: no daemon logged an error or wrote anything but JSON."""
    started: list[DaemonProcess] = []

    def start(*args: Any, **kwargs: Any) -> DaemonProcess:
        daemon = start_daemon(*args, **kwargs)
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        bad = [
            line
            for line in daemon.log().splitlines()
            if not line.startswith("--- start ") and not _clean_log_line(line)
        ]
        assert not bad, f"{daemon.directory.name} logged:\n" + "\n".join(bad[:20])


def _clean_log_line(line: str) -> bool:
    try:
        entry = json.loads(line)
    except ValueError:
        return False
    return isinstance(entry, dict) and entry.get("level") not in ("error", "critical")


def store(url: str, **workers: Any) -> dict[str, Any]:
    """A daemon config on the shared database; `workers` overrides [workers] keys."""
    return {"store": {"url": url}, "workers": {"lease": "2s", **workers}}


# -- 1. many daemons, one queue, a SIGKILL halfway -------------------------------------------

TOTAL = 10_000


def test_three_daemons_drain_10000_jobs_through_a_sigkill(
    start_jobd: StartDaemon, fresh_postgres_url: str
) -> None:
    config = {**store(fresh_postgres_url, concurrency=25), "daemon": {"log_level": "warning"}}
    # Started together: they race to migrate the empty database (an advisory lock serialises them).
    daemons = [start_jobd(config=config, name=f"d{i}", wait=False) for i in range(3)]
    for daemon in daemons:
        daemon.wait_healthy()
    survivor, victim = daemons[0], daemons[1]
    set_paused(survivor, "default", True)  # submit everything first, so the kill falls mid-drain
    for batch in range(10):
        first = batch * 1000
        submit_batch(
            daemons[batch % 3], [{"type": "jobd.noop", "payload": n} for n in range(first, first + 1000)]
        )
    with connect(fresh_postgres_url) as conn:
        assert counts_by_state(conn) == {"pending": TOTAL}
        set_paused(survivor, "default", False)  # every daemon hears of it through NOTIFY
        completed = wait_until(
            lambda: (n := completed_count(conn)) >= TOTAL // 2 and n,
            timeout=60,
            what="half the jobs to complete",
        )
        victim_owner = owner_prefix(victim)
        victim.kill()
        assert completed < TOTAL, "the drain ended before the kill: nothing was cut off"
        wait_until(
            lambda: counts_by_state(conn) == {"completed": TOTAL},
            timeout=90,
            what="every job to complete after the kill",
        )
        rows = conn.execute(
            "SELECT payload, state, attempts, last_error, owner, lease_until, result FROM jobd.jobs"
        ).fetchall()
    assert all(alive(daemon) for daemon in daemons if daemon is not victim)
    assert sorted(row["payload"] for row in rows) == list(range(TOTAL))  # each submitted once
    assert all(
        row["result"] == row["payload"] and row["owner"] is None and row["lease_until"] is None
        for row in rows
    )
    # At least once, and exactly this: a job whose completion was committed is never run
    # again (the state and the fence forbid it). The attempts the kill cut off are the
    # rows the victim held `running`: handlers still running, and handlers that had
    # finished but whose outcome sat in the victim's unflushed completion batch. Only
    # the lease rescue frees those, and it leaves its mark: attempt 1 was the victim's,
    # the rescue says so in last_error, and attempt 2 ran elsewhere. No other row may
    # have been run twice.
    once = [row for row in rows if row["attempts"] == 1]
    twice = [row for row in rows if row["attempts"] == 2]
    assert len(once) + len(twice) == TOTAL, {row["attempts"] for row in rows}
    assert all(row["last_error"] is None for row in once)
    for row in twice:
        assert row["last_error"].startswith(f"lease expired: daemon {victim_owner}"), row
        assert row["last_error"].endswith("stopped renewing attempt 1"), row
    assert twice, "the victim held no running job when killed"
    print(f"\nkilled at {completed} completed; {len(twice)} attempts cut off and re-run")


# -- 2. a queue's global concurrency holds across daemons -----------------------------------


def test_global_concurrency_holds_across_three_daemons(
    start_jobd: StartDaemon, fresh_postgres_url: str
) -> None:
    # A 30 s poll: a slot freed under the global limit must be refilled on a signal, not at a poll.
    config = {
        **store(fresh_postgres_url, concurrency=10, poll_interval="30s"),
        "queues": {"limited": {"concurrency": 10, "global_concurrency": 3}},
    }
    daemons = [start_jobd(config=config, name=f"d{i}") for i in range(3)]
    job = {"type": "jobd.sleep", "queue": "limited", "payload": {"seconds": 0.2}}
    wave, total = 10, 60
    submitted = 0
    running_counts: list[int] = []
    owners: set[str] = set()
    with connect(fresh_postgres_url) as conn:
        deadline = time.monotonic() + 60
        while True:
            # One statement, one snapshot: the running rows as committed at one instant.
            rows = conn.execute(
                "SELECT state, owner FROM jobd.jobs WHERE state IN ('running', 'completed')"
            ).fetchall()
            running = [row["owner"] for row in rows if row["state"] == "running"]
            running_counts.append(len(running))
            owners.update(running)
            done = len(rows) - len(running)
            if done == total:
                break
            if done == submitted:
                # Each wave wakes all three daemons at once (NOTIFY): they race for the room.
                submit_batch(daemons[submitted // wave % 3], [job] * wave)
                submitted += wave
            assert time.monotonic() < deadline, f"the {total} jobs did not finish: {done} done"
            time.sleep(0.005)
    assert max(running_counts) == 3, f"running at once: max {max(running_counts)}"
    assert running_counts.count(3) > 1
    print(
        f"\n{len(running_counts)} samples; max running {max(running_counts)};"
        f" {len({owner.rsplit(':', 1)[0] for owner in owners})} daemons ran jobs"
    )


# -- 3. a job submitted on one host starts at once on another -------------------------------


def test_a_job_submitted_on_a_busy_daemon_starts_at_once_on_an_idle_one(
    start_jobd: StartDaemon, fresh_postgres_url: str
) -> None:
    busy = start_jobd(config=store(fresh_postgres_url, concurrency=1, poll_interval="30s"), name="busy")
    blocker = submit(busy, {"type": "testplugin.stubborn"})
    with connect(fresh_postgres_url) as conn:
        wait_until(lambda: job_row(conn, blocker["id"])["state"] == "running", what="the blocker to run")
        assert job_row(conn, blocker["id"])["owner"].startswith(owner_prefix(busy))
        idle = start_jobd(config=store(fresh_postgres_url, poll_interval="30s"), name="idle")
        waits: list[float] = []  # from the client's request, httpx's own cost included
        inside: list[float] = []  # from the submitting daemon's created_at
        for n in range(5):
            sent = time.time()
            job_id = submit(busy, {"type": "jobd.noop", "payload": n})["id"]
            final = wait_until(
                partial(row_in_state, conn, job_id, "completed"), timeout=20, what="the job to complete"
            )
            waits.append(final["started_at"].timestamp() - sent)
            inside.append((final["started_at"] - final["created_at"]).total_seconds())
            done = f"job {job_id} completed"
            wait_until(partial(logged, idle, done), what="the idle daemon to log the job")
            assert not logged(busy, done)
    assert max(waits) < 1.0, f"submit -> start took {waits} with a 30 s poll interval"
    print(
        f"\nsubmit on one daemon -> start on another: {[round(w * 1000, 1) for w in waits]} ms;"
        f" created_at -> started_at {[round(w * 1000, 1) for w in inside]} ms"
    )


# -- 4. cancel on one host, the job running on another ---------------------------------------


def test_cancel_through_one_daemon_stops_a_job_running_on_another(
    start_jobd: StartDaemon, fresh_postgres_url: str
) -> None:
    runner = start_jobd(config=store(fresh_postgres_url), name="runner")
    job = submit(runner, {"type": "testplugin.stubborn"})
    with connect(fresh_postgres_url) as conn:
        wait_until(lambda: job_row(conn, job["id"])["state"] == "running", what="the job to run")
        other = start_jobd(config=store(fresh_postgres_url), name="other")
        asked = time.monotonic()
        cancelled = other.ctl("--json", "cancel", job["id"])
        assert cancelled.returncode == 0, cancelled.stderr
        wait_until(
            lambda: job_row(conn, job["id"])["state"] == "cancelled",
            timeout=3,
            what="the job to be cancelled on the other daemon",
        )
        took = time.monotonic() - asked
        final = job_row(conn, job["id"])
    assert final["attempts"] == 1 and final["last_error"] == "cancelled while running"
    assert logged(runner, f"job {job['id']} cancelled: cancelled while running")
    print(f"\ncancel -> cancelled across daemons: {took * 1000:.0f} ms (including jobd-ctl's start)")


def test_a_cancel_through_another_daemon_during_a_shutdown_ends_the_job_cancelled(
    start_jobd: StartDaemon, fresh_postgres_url: str
) -> None:
    """The cancel is recorded after the runner stopped the handler for its shutdown and
    before its requeue reaches the store: the test holds the job's row locked while the
    other daemon's cancel, then the runner's requeue, queue up behind it, in that order."""
    config = store(fresh_postgres_url)
    runner = start_jobd(config={**config, "daemon": {"shutdown_timeout": "0.5s"}}, name="runner")
    other = start_jobd(config=config, name="other")
    job = submit(runner, {"type": "testplugin.stubborn"})
    waiting_on_the_row = (
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND wait_event_type = 'Lock' AND query LIKE %s"
    )
    with (
        connect(fresh_postgres_url) as watcher,
        connect(fresh_postgres_url) as holder,
        ThreadPoolExecutor(1) as background,
    ):
        wait_until(lambda: job_row(watcher, job["id"])["state"] == "running", what="the job to run")
        with holder.transaction():
            holder.execute("SELECT 1 FROM jobd.live_jobs WHERE id = %s FOR UPDATE", (job["id"],))
            cancelled = background.submit(other.ctl, "cancel", job["id"])
            wait_until(
                lambda: scalar(watcher, waiting_on_the_row, ("%FOR UPDATE%",)) >= 1,
                what="the other daemon's cancel to wait for the row",
            )
            runner.signal(signal.SIGTERM)
            wait_until(
                lambda: scalar(watcher, waiting_on_the_row, ("%json_to_recordset%",)) >= 1,
                what="the runner's requeue to wait for the row",
            )
        assert cancelled.result().returncode == 0, cancelled.result().stderr
        assert runner.wait_exit() == 0
        final = job_row(watcher, job["id"])
    assert (final["state"], final["attempts"]) == ("cancelled", 1)
    assert final["last_error"] == CANCELLED_AT_SHUTDOWN
    assert logged(runner, f"job {job['id']} cancelled: {CANCELLED_AT_SHUTDOWN}")


# -- 5. a frozen daemon's late completion is fenced off ----------------------------------------


def test_a_daemon_frozen_past_its_lease_cannot_overwrite_the_rescuers_result(
    start_jobd: StartDaemon, fresh_postgres_url: str
) -> None:
    frozen = start_jobd(config=store(fresh_postgres_url), name="frozen")
    job = submit(frozen, {"type": "jobd.sleep", "payload": {"seconds": 3}})
    with connect(fresh_postgres_url) as conn:
        wait_until(lambda: job_row(conn, job["id"])["state"] == "running", what="the job to run")
        first = job_row(conn, job["id"])
        frozen_owner = first["owner"]
        assert frozen_owner.startswith(owner_prefix(frozen)) and first["attempts"] == 1
        frozen.signal(signal.SIGSTOP)
        try:
            rescuer = start_jobd(config=store(fresh_postgres_url), name="rescuer")
            # The lease runs out, the rescuer rescues and re-runs the job: attempt 2, to the end.
            wait_until(
                lambda: job_row(conn, job["id"])["state"] == "completed",
                timeout=30,
                what="the rescuer to complete the job",
            )
            rescued = job_row(conn, job["id"])
            assert rescued["attempts"] == 2
            assert rescued["last_error"] == f"lease expired: daemon {frozen_owner} stopped renewing attempt 1"
            assert logged(rescuer, f"job {job['id']} completed")
        finally:
            frozen.signal(signal.SIGCONT)
        # Thawed, the frozen daemon's handler is past its 3 s at once and reports attempt 1.
        discarded = (
            f"job {job['id']}: outcome completed of attempt 1 discarded, the job is no longer this daemon's"
        )
        wait_until(
            lambda: logged(frozen, discarded), timeout=20, what="the frozen daemon to discard its outcome"
        )
        assert job_row(conn, job["id"]) == rescued
    assert health(frozen).status_code == 200 and health(rescuer).status_code == 200


# -- 6. faults --------------------------------------------------------------------------------


TERMINATE = (
    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
)


def test_terminated_backends_lose_no_job_and_no_daemon(
    start_jobd: StartDaemon, fresh_postgres_url: str
) -> None:
    config = store(fresh_postgres_url, concurrency=10, poll_interval="30s")
    daemons = [start_jobd(config=config, name=f"d{i}") for i in range(2)]
    total = 1500
    set_paused(daemons[0], "default", True)
    for index in range(3):
        submit_batch(
            daemons[index % 2],
            [{"type": "jobd.sleep", "payload": {"seconds": 0.01}} for _ in range(total // 3)],
        )
    terminations: list[tuple[int, int]] = []
    with connect(fresh_postgres_url) as conn:
        set_paused(daemons[0], "default", False)
        while len(terminations) < 4:
            done = completed_count(conn)
            if done == total:
                break
            killed = scalar(conn, TERMINATE)
            terminations.append((done, killed))
            # The daemons recover: jobs complete again after every termination.
            again = min(done + 50, total)
            wait_until(
                partial(completed_at_least, conn, again),
                timeout=30,
                what="jobs to complete after the termination",
            )
        wait_until(
            lambda: counts_by_state(conn) == {"completed": total}, timeout=60, what="every job to complete"
        )
        # The listening connections go too: a job the application commits right after starts
        # at once all the same (the daemons listen again and look once), not at the 30 s poll.
        assert scalar(conn, TERMINATE) >= 2
        job_id = jobd.submit(conn, "jobd.noop", "after")  # autocommit: committed here
        final = wait_until(
            partial(row_in_state, conn, job_id, "completed"),
            timeout=20,
            what="the job committed after the terminations to complete",
        )
    took = (final["started_at"] - final["created_at"]).total_seconds()
    # Not the 30 s poll: the daemons listened again and looked (0.36 to 0.76 s on a slow machine).
    assert took < 5.0, f"a job committed after the terminations waited {took:.3f}s to start"
    # The first termination ends every connection both daemons opened; each later one ends
    # those opened again since (how many depends on which daemon's rounds ran meanwhile).
    assert len(terminations) >= 2 and terminations[0][1] >= 2, terminations
    assert all(killed >= 1 for _done, killed in terminations), terminations
    for daemon in daemons:
        assert alive(daemon)
        assert health(daemon).status_code == 200
    print(f"\n(completed, backends terminated): {terminations}; then commit -> start {took * 1000:.1f} ms")


def test_an_unreachable_database_at_start_degrades_then_recovers(
    start_jobd: StartDaemon, forwarder: tuple[TcpForwarder, str], short_dir: Path
) -> None:
    proxy, url = forwarder
    notify = NotifyListener(short_dir / "notify")
    try:
        daemon = start_jobd(config=store(url), env={"NOTIFY_SOCKET": notify.address}, name="d", wait=False)

        def degraded() -> bool:
            with contextlib.suppress(httpx.TransportError):
                return health(daemon).status_code == 503
            return False

        wait_until(degraded, timeout=30, what="the control socket to answer")
        answer = health(daemon)
        assert answer.json()["status"] == "degraded" and answer.json()["store"] == "unavailable"
        before = time.monotonic()
        with daemon.http(timeout=30) as client:
            refused = client.post("/v1/jobs", json={"type": "jobd.noop"})
        assert refused.status_code == 503 and time.monotonic() - before < 15
        error = refused.json()["error"]
        assert error["code"] and error["message"]
        wait_until(lambda: "retrying in" in daemon.log(), what="a retry to be logged")
        assert alive(daemon)
        assert "READY=1" not in notify.fields()
        proxy.up()
        wait_until(lambda: "READY=1" in notify.fields(), timeout=30, what="READY=1 once the store answers")
        assert health(daemon).status_code == 200
        done = submit(daemon, {"type": "jobd.noop", "payload": "after"})
        with daemon.http() as client:
            final = client.get(f"/v1/jobs/{done['id']}/wait", params={"timeout": "20"}).json()
        assert final["state"] == "completed" and final["result"] == "after"
    finally:
        notify.sock.close()


def test_the_store_going_away_and_back_loses_no_job(
    start_jobd: StartDaemon, forwarder: tuple[TcpForwarder, str], fresh_postgres_url: str
) -> None:
    proxy, url = forwarder
    proxy.up()
    daemons = [start_jobd(config=store(url, concurrency=10, lease="4s"), name=f"d{i}") for i in range(2)]
    total = 600
    accepted = []
    for index in range(2):
        accepted += submit_batch(
            daemons[index], [{"type": "jobd.sleep", "payload": {"seconds": 0.05}} for _ in range(total // 2)]
        )
    with connect(fresh_postgres_url) as conn:
        wait_until(lambda: completed_count(conn) >= 100, what="some jobs to complete")
        proxy.cut()
        down_at = time.monotonic()
        for daemon in daemons:
            began = time.monotonic()
            answer = health(daemon)
            assert answer.status_code == 503 and answer.json()["status"] == "degraded"
            with daemon.http(timeout=30) as client:
                refused = client.post("/v1/jobs", json={"type": "jobd.noop"})
            assert refused.status_code == 503 and refused.json()["error"]["code"], refused.text
            assert time.monotonic() - began < 10, "the API took too long to answer while the store was down"
        done_while_down = completed_count(conn)
        assert done_while_down < total, "every job finished before the cut"
        wait_until(lambda: time.monotonic() - down_at > 3, what="3 s of outage")
        proxy.up()
        wait_until(
            lambda: all(health(daemon).status_code == 200 for daemon in daemons),
            timeout=30,
            what="the daemons to report the store back",
        )
        wait_until(
            lambda: counts_by_state(conn) == {"completed": total},
            timeout=90,
            what="every accepted job to complete",
        )
        ids = {row["id"] for row in conn.execute("SELECT id FROM jobd.jobs").fetchall()}
    assert ids == {uuid.UUID(job["id"]) for job in accepted}
    assert all(alive(daemon) for daemon in daemons)


# -- 7. jobd.submit inside the application's transaction --------------------------------------


def test_a_transactional_submit_runs_only_after_commit_and_then_promptly(
    start_jobd: StartDaemon, fresh_postgres_url: str
) -> None:
    daemon = start_jobd(config=store(fresh_postgres_url, poll_interval="30s"), name="d")
    with psycopg.connect(fresh_postgres_url) as app, connect(fresh_postgres_url) as observer:
        rolled_back = jobd.submit(app, "jobd.noop", {"n": "rolled back"})
        # A job submitted through the API after ours is claimed: the daemon looked, ours was not there.
        sentinel = submit(daemon, {"type": "jobd.noop"})
        wait_until(lambda: job_row(observer, sentinel["id"])["state"] == "completed", what="the sentinel")
        app.rollback()
        job_id = jobd.submit(app, "jobd.noop", {"n": "committed"})
        sentinel = submit(daemon, {"type": "jobd.noop"})
        wait_until(lambda: job_row(observer, sentinel["id"])["state"] == "completed", what="the sentinel")
        inside = app.execute("SELECT state, attempts FROM jobd.jobs WHERE id = %s", (job_id,)).fetchone()
        assert inside == ("pending", 0)
        committed = time.time()
        app.commit()
        wait_until(
            lambda: job_row(observer, job_id)["state"] == "completed", timeout=20, what="the job to complete"
        )
        final = job_row(observer, job_id)
        assert observer.execute("SELECT 1 FROM jobd.jobs WHERE id = %s", (rolled_back,)).fetchone() is None
    assert final["result"] == {"n": "committed"} and final["attempts"] == 1
    took = final["started_at"].timestamp() - committed
    assert took < 1.0, f"commit -> start took {took:.3f}s with a 30 s poll interval"
    print(f"\ncommit -> start: {took * 1000:.1f} ms")


# -- 8. a queue's rate holds across daemons --------------------------------------------------


def rate_metrics(daemon: DaemonProcess) -> dict[str, float]:
    """This daemon's starts of the `webhooks` queue, and the claims its rate held back."""
    with daemon.http() as client:
        text = client.get("/metrics").text
    wanted = {
        'jobd_job_wait_seconds_count{queue="webhooks"}': "started",
        'jobd_queue_rate_limited_total{queue="webhooks"}': "held",
    }
    found = {"started": 0.0, "held": 0.0}
    for line in text.splitlines():
        name, _, number = line.rpartition(" ")
        if name in wanted:
            found[wanted[name]] = float(number)
    return found


def test_a_rate_of_20_per_second_holds_across_three_daemons(
    start_jobd: StartDaemon, fresh_postgres_url: str
) -> None:
    total, per_second, burst = 400, 20, 20  # burst: the rate's count, by default
    config = {**store(fresh_postgres_url, concurrency=10), "queues": {"webhooks": {"rate": "20/s"}}}
    daemons = [start_jobd(config=config, name=f"d{i}") for i in range(3)]
    set_paused(daemons[0], "webhooks", True)  # every job waiting first: the rate alone paces them
    for n in range(4):
        submit_batch(daemons[n % 3], [{"type": "jobd.noop", "queue": "webhooks"}] * (total // 4))
    with connect(fresh_postgres_url) as conn:
        set_paused(daemons[1], "webhooks", False)
        wait_until(lambda: completed_at_least(conn, total), timeout=60, what=f"the {total} jobs to complete")
        rows = conn.execute("SELECT started_at, attempts FROM jobd.jobs ORDER BY started_at").fetchall()
    assert len(rows) == total and all(row["attempts"] == 1 for row in rows)
    starts = [row["started_at"].timestamp() for row in rows]
    # In any window of length T, at most burst + rate * T starts: for T = 1 s, 40.
    busiest = max(bisect.bisect_right(starts, start + 1.0) - first for first, start in enumerate(starts))
    assert busiest <= burst + per_second, f"{busiest} starts within one second"
    took = starts[-1] - starts[0]
    assert 15 <= took <= 30, f"the first to the last start took {took:.1f} s"  # (400 - 20) / 20 = 19 s
    # The tokens are shared: every daemon started jobs, and each was held back by the rate.
    seen = [rate_metrics(daemon) for daemon in daemons]
    assert sum(found["started"] for found in seen) == total
    assert all(found["started"] > 0 and found["held"] > 0 for found in seen), seen
    print(
        f"\n{total} starts in {took:.1f} s; busiest second: {busiest};"
        f" per daemon: {[int(found['started']) for found in seen]}"
    )


def test_concurrent_large_batches_to_two_daemons_some_refused_while_they_run(
    start_jobd: StartDaemon, fresh_postgres_url: str
) -> None:
    """Batches checked chunk by chunk while PostgreSQL inserts them, from four clients
    at once to two daemons that run their jobs meanwhile (a chunked batch is claimed by
    no submit: the lanes are woken, and the other daemon by NOTIFY): each accepted job
    runs once, and nothing of a refused batch is kept."""
    config = store(fresh_postgres_url, concurrency=25)
    daemons = [start_jobd(config=config, name=f"d{i}") for i in range(2)]
    accepted = send_batches_some_refused(daemons)
    with connect(fresh_postgres_url) as conn:
        wait_until(
            lambda: counts_by_state(conn) == {"completed": len(accepted)},
            timeout=90,
            what="every accepted job completed",
        )
        rows = conn.execute("SELECT id, attempts FROM jobd.jobs").fetchall()
    assert {str(row["id"]) for row in rows} == accepted
    assert {row["attempts"] for row in rows} == {1}
    assert all(alive(daemon) for daemon in daemons)


def test_a_large_batch_is_all_or_nothing_through_the_api(
    start_jobd: StartDaemon, fresh_postgres_url: str
) -> None:
    """A batch of more than 250 jobs is checked and inserted chunk by chunk on PostgreSQL:
    one bad item late in it still refuses the whole batch, naming that item."""
    daemon = start_jobd(config=store(fresh_postgres_url), name="d")
    set_paused(daemon, "default", True)
    jobs: list[dict[str, Any]] = [{"type": "jobd.noop", "payload": n} for n in range(600)]
    with daemon.http() as client:
        refused = client.post(
            "/v1/jobs/batch", json={"jobs": [*jobs[:550], {"type": "no.such"}, *jobs[551:]]}
        )
    assert refused.status_code == 422, refused.text
    error = refused.json()["error"]
    assert (error["code"], error["details"]) == ("invalid_job", {"field": "type", "index": 550})
    assert "jobs[550]" in error["message"] and "unknown job type 'no.such'" in error["message"]
    with connect(fresh_postgres_url) as conn:
        assert counts_by_state(conn) == {}
    accepted = submit_batch(daemon, jobs)
    assert [job["payload"] for job in accepted] == list(range(600))
    with connect(fresh_postgres_url) as conn:
        assert counts_by_state(conn) == {"pending": 600}
