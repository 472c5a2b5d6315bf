"""jobd behind PgBouncer in transaction pooling mode (Debian's `pgbouncer`, started here).

Each test starts its own pgbouncer on a free port in front of a fresh database, with a
server pool of two connections, so that consecutive transactions of one client land on
different server sessions: anything jobd kept in a session (a prepared statement, a
setting, a LISTEN) would break. The daemons reach the store through it and LISTEN on a
direct connection (`store.listen_url`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from conftest import DaemonProcess, wait_until
from psycopg.rows import dict_row

import jobd
from jobd.store.postgres import MIGRATIONS

pytestmark = [pytest.mark.process, pytest.mark.postgres]
StartDaemon = Callable[..., DaemonProcess]
Row = dict[str, Any]
SERVER_POOL = 2  # server connections per database: fewer than the daemons' clients


@dataclass(frozen=True)
class Bouncer:
    url: str  # the fresh database through pgbouncer
    direct_url: str  # the same database, straight to PostgreSQL
    admin_url: str  # pgbouncer's admin console

    def transactions(self, database: str) -> int:
        """Transactions pgbouncer has passed to `database` so far (SHOW STATS)."""
        with psycopg.connect(self.admin_url, autocommit=True, row_factory=dict_row) as console:
            rows = console.execute("SHOW STATS").fetchall()
        return sum(int(row["total_xact_count"]) for row in rows if row["database"] == database)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def bouncer(fresh_postgres_url: str) -> Iterator[Bouncer]:
    program = shutil.which("pgbouncer", path=f"{os.environ.get('PATH', '')}:/usr/sbin")
    if program is None:
        message = "no pgbouncer (Debian package pgbouncer; .ci/run installs it)"
        if os.environ.get("JOBD_REQUIRE_POSTGRES") == "1":
            pytest.fail(message)
        pytest.skip(message)
    parts = urlsplit(fresh_postgres_url)
    user = parts.username or "postgres"
    directory = Path(tempfile.mkdtemp(prefix="jobd-pgbouncer-"))
    port = _free_port()
    (directory / "users.txt").write_text(f'"{user}" ""\n')
    (directory / "pgbouncer.ini").write_text(
        "[databases]\n"
        f"* = host={parts.hostname or '127.0.0.1'} port={parts.port or 5432}\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        f"auth_type = trust\nauth_file = {directory / 'users.txt'}\nadmin_users = {user}\n"
        f"pool_mode = transaction\ndefault_pool_size = {SERVER_POOL}\nmax_client_conn = 200\n"
        f"logfile = {directory / 'pgbouncer.log'}\n"
    )
    user_of_process: dict[str, Any] = {}
    if os.geteuid() == 0:  # pgbouncer refuses to run as root
        shutil.chown(directory, "postgres")
        user_of_process = {"user": "postgres", "group": "postgres", "extra_groups": []}
    process = subprocess.Popen(
        [program, str(directory / "pgbouncer.ini")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        **user_of_process,
    )
    netloc = f"{user}@127.0.0.1:{port}"
    pooled = urlunsplit(parts._replace(netloc=netloc))
    admin = urlunsplit(parts._replace(netloc=netloc, path="/pgbouncer"))
    try:
        wait_until(
            lambda: _answers(admin) or process.poll() is not None, timeout=15, what="pgbouncer to listen"
        )
        assert process.poll() is None, process.stderr.read().decode() if process.stderr else ""
        yield Bouncer(pooled, fresh_postgres_url, admin)
    finally:
        process.terminate()
        process.wait(10)
        if process.stderr is not None:
            process.stderr.close()
        shutil.rmtree(directory, ignore_errors=True)


def _answers(url: str) -> bool:
    try:
        with psycopg.connect(url, autocommit=True, connect_timeout=2):
            return True
    except psycopg.Error:
        return False


def pooled_config(bouncer: Bouncer, **store: Any) -> dict[str, Any]:
    """A daemon on the store through pgbouncer, LISTENing straight to PostgreSQL; a 30 s
    poll, so that a job another daemon submits starts only when a NOTIFY wakes it."""
    return {
        "store": {"url": bouncer.url, "transaction_pooling": True, "listen_url": bouncer.direct_url, **store},
        "workers": {"concurrency": 5, "poll_interval": "30s", "lease": "5s"},
        "queues": {"limited": {"concurrency": 5, "global_concurrency": 2}},
    }


def submit_batch(daemon: DaemonProcess, jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    with daemon.http() as client:
        answer = client.post("/v1/jobs/batch", json={"jobs": jobs})
    assert answer.status_code == 201, answer.text
    return list(answer.json()["jobs"])


def log_entries(daemon: DaemonProcess) -> list[dict[str, Any]]:
    entries = []
    for line in daemon.log().splitlines():
        with contextlib.suppress(ValueError):
            entries.append(json.loads(line))
    return entries


def test_jobs_claims_global_limits_and_migrations_go_through_pgbouncer(
    start_daemon: StartDaemon, bouncer: Bouncer
) -> None:
    database = urlsplit(bouncer.direct_url).path.lstrip("/")
    # The first daemon migrates the empty database, through pgbouncer: listen_url only LISTENs.
    daemons = [start_daemon(config=pooled_config(bouncer), name=f"d{i}") for i in range(2)]
    with psycopg.connect(bouncer.direct_url, autocommit=True, row_factory=dict_row) as conn:
        versions = [row["version"] for row in conn.execute("SELECT version FROM jobd.migrations ORDER BY 1")]
        assert versions == [migration.version for migration in MIGRATIONS]

        # Many claims and completions of the same statements: psycopg would have prepared
        # them after five, and a prepared statement is missing in the next server session.
        noop = submit_batch(daemons[0], [{"type": "jobd.noop", "payload": n} for n in range(60)])
        sleepy = {"type": "jobd.sleep", "queue": "limited", "payload": {"seconds": 0.2}}
        submitted, total, running_counts = 0, 20, []
        deadline = time.monotonic() + 60
        while True:
            rows = conn.execute("SELECT state FROM jobd.jobs WHERE queue = 'limited'").fetchall()
            running_counts.append(sum(row["state"] == "running" for row in rows))
            done = sum(row["state"] == "completed" for row in rows)
            if done == total:
                break
            if done == submitted:  # a wave through each daemon in turn: both race for the two slots
                submit_batch(daemons[submitted // 10 % 2], [sleepy] * 10)
                submitted += 10
            assert time.monotonic() < deadline, f"the limited jobs did not finish: {done} done"
            time.sleep(0.005)
        finished = conn.execute(
            "SELECT state, attempts FROM jobd.jobs WHERE id = ANY(%s)", ([job["id"] for job in noop],)
        ).fetchall()
        assert [(row["state"], row["attempts"]) for row in finished] == [("completed", 1)] * 60
        assert max(running_counts) == 2, f"running at once: max {max(running_counts)}"

        # A job inserted by an application wakes a daemon through the direct LISTEN: the
        # 30 s poll would be far too late for the wait below.
        with psycopg.connect(bouncer.direct_url) as app:
            job_id = jobd.submit(app, "jobd.noop", {"woken": True})
        wait_until(
            lambda: (
                conn.execute("SELECT state FROM jobd.jobs WHERE id = %s", (job_id,)).fetchone()
                == {"state": "completed"}
            ),
            timeout=10,
            what="the application's job to run",
        )
    # The daemons' store calls went through pgbouncer (connected directly, none would). With
    # short jobs claimed ahead, rounds carry more jobs: about 100 transactions in all.
    assert bouncer.transactions(database) > 50
    for daemon in daemons:
        errors = [entry for entry in log_entries(daemon) if entry.get("level") in ("error", "critical")]
        assert not errors, errors
        assert daemon.stop() == 0


def test_listen_through_the_pooler_is_a_clear_start_error(
    start_daemon: StartDaemon, bouncer: Bouncer
) -> None:
    config = pooled_config(bouncer, listen_url=bouncer.url, connect_timeout="1s")
    daemon = start_daemon(config=config, wait=False)
    assert daemon.wait_exit(30) == 1
    log = daemon.log()
    assert "key 'store.listen_url': LISTEN on store.listen_url heard no NOTIFY within 1s" in log
    assert "set store.listen_url to a direct connection to PostgreSQL" in log


def test_without_transaction_pooling_the_pooler_refusal_names_the_setting(
    start_daemon: StartDaemon, bouncer: Bouncer
) -> None:
    config = {"store": {"url": bouncer.url, "connect_timeout": "1s"}}
    daemon = start_daemon(config=config, wait=False)
    hint = (
        "unsupported startup parameter: options"
        " (a pooler in transaction mode? set store.transaction_pooling = true)"
    )
    wait_until(lambda: hint in daemon.log(), timeout=20, what="the refusal in the log")
    with daemon.http(timeout=10) as client:
        assert client.get("/v1/health").status_code == 503
    assert daemon.stop() == 0
