"""The real `jobd` against clients and handlers that misbehave: connections that say nothing or
dribble, long polls by the hundred, handlers that ignore cancellation or block the event loop.

Every client here is a real socket, every daemon a real process; waits poll with deadlines.
"""

from __future__ import annotations

import itertools
import json
import signal
import socket
import sqlite3
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import DaemonProcess, wait_until

from jobd.daemon import EXIT_ABANDONED, HARD_EXIT_AFTER
from jobd.worker import SHUTDOWN_MARGIN

pytestmark = pytest.mark.process
StartDaemon = Callable[..., DaemonProcess]


@contextmanager
def raw_connections(
    daemon: DaemonProcess, count: int, first_bytes: Callable[[int], bytes]
) -> Iterator[list[socket.socket]]:
    """`count` connections to the daemon, the i-th having sent `first_bytes(i)` and nothing more."""
    opened: list[socket.socket] = []
    try:
        for index in range(count):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            opened.append(sock)
            sock.settimeout(10)
            sock.connect(daemon.socket)
            if data := first_bytes(index):
                sock.sendall(data)
        yield opened
    finally:
        for sock in opened:
            sock.close()


def read_to_end(sock: socket.socket) -> bytes:
    received = b""
    while data := sock.recv(65536):
        received += data
    return received


def job_state(daemon: DaemonProcess, job_id: str) -> dict[str, Any]:
    with daemon.http() as client:
        return dict(client.get(f"/v1/jobs/{job_id}").json())


# -- connections ----------------------------------------------------------------------------


def test_500_silent_or_dribbling_connections_do_not_hold_up_a_submit(start_daemon: StartDaemon) -> None:
    # A read timeout far beyond jobd-ctl's own: a submit queued behind the flood would time out.
    daemon = start_daemon(config={"api": {"request_timeout": "10m"}})
    half_a_request = b"POST /v1/jobs HTTP/1.1\r\nHost: jobd\r\n"
    with raw_connections(daemon, 500, lambda index: half_a_request if index % 2 else b"") as flood:
        submitted = daemon.ctl("--json", "submit", "jobd.noop", '{"through": "the flood"}', timeout=20)
        assert submitted.returncode == 0, submitted.stderr
        # Of 256 connections, the submit's took the place of the oldest still open: the first
        # 244 + 1 of the flood were closed to make room, those that had begun a request with a 503.
        answers = [read_to_end(sock) for sock in flood[:245]]
    assert all(answer == b"" for answer in answers[::2])
    for answer in answers[1::2]:
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 503 ")
        assert json.loads(body)["error"]["code"] == "overloaded"
    job = json.loads(submitted.stdout)
    assert job_state(daemon, job["id"])["payload"] == {"through": "the flood"}
    assert daemon.stop() == 0


def test_long_polls_beyond_their_share_get_503_and_leave_room_for_submits(start_daemon: StartDaemon) -> None:
    daemon = start_daemon(config={"api": {"max_connections": 4}})  # room for two long polls
    job = json.loads(daemon.ctl("--json", "submit", "testplugin.stubborn").stdout)

    def wait(timeout: str) -> httpx.Response:
        with daemon.http(timeout=90) as client:
            return client.get(f"/v1/jobs/{job['id']}/wait", params={"timeout": timeout})

    def long_poll() -> dict[str, Any]:
        """Waits for the job; refused while the probe holds a share, it asks again."""
        while (answer := wait("60")).status_code == 503:
            time.sleep(0.05)
        assert answer.status_code == 200, answer.text
        return dict(answer.json())

    def probe() -> dict[str, Any] | None:
        """Refused only once both long polls wait (the probes come one at a time)."""
        answer = wait("0.2")
        return dict(answer.json()) if answer.status_code == 503 else None

    with ThreadPoolExecutor(2) as polls:
        waits = [polls.submit(long_poll) for _ in range(2)]
        refused = wait_until(probe, what="a third long poll to be refused")
        assert refused["error"]["code"] == "overloaded" and refused["error"]["details"] == {"limit": 2}
        ctl_wait = daemon.ctl("wait", job["id"], "--timeout", "30s")
        assert ctl_wait.returncode == 1 and "overloaded" in ctl_wait.stderr
        submitted = daemon.ctl("--json", "submit", "jobd.noop")  # the other connections still serve
        assert submitted.returncode == 0, submitted.stderr
        assert daemon.ctl("cancel", job["id"]).returncode == 0
        assert [done.result()["state"] for done in waits] == ["cancelled", "cancelled"]
    assert daemon.stop() == 0


# -- handlers -------------------------------------------------------------------------------


def submitted(daemon: DaemonProcess, job_type: str, payload: Any = None) -> dict[str, Any]:
    with daemon.http() as client:
        answer = client.post("/v1/jobs", json={"type": job_type, "payload": payload})
    assert answer.status_code == 201, answer.text
    return dict(answer.json())


def log_entries(daemon: DaemonProcess) -> list[dict[str, Any]]:
    entries = []
    for line in daemon.log().splitlines():
        if line.startswith("{"):
            entries.append(json.loads(line))
    return entries


def test_a_shutdown_leaves_handlers_that_will_not_stop_to_the_lease_rescue(start_daemon: StartDaemon) -> None:
    daemon = start_daemon(config={"daemon": {"shutdown_timeout": "1s"}})
    deaf = submitted(daemon, "testplugin.deaf")
    thread_bound = submitted(daemon, "testplugin.thread_bound")
    polite = submitted(daemon, "jobd.sleep", {"seconds": 600})
    stuck = [deaf, thread_bound]
    wait_until(
        lambda: all(job_state(daemon, job["id"])["state"] == "running" for job in [*stuck, polite]),
        what="the three jobs to run",
    )
    daemon.signal(signal.SIGTERM)
    # Within shutdown_timeout + SHUTDOWN_MARGIN; the thread's hard exit would come 5 s later.
    assert daemon.wait_exit(timeout=1 + SHUTDOWN_MARGIN + HARD_EXIT_AFTER - 1) == EXIT_ABANDONED
    messages = [entry["message"] for entry in log_entries(daemon)]
    for job in stuck:
        assert (
            f"job {job['id']} ({job['type']}) did not stop when cancelled by the shutdown; it is left "
            "running in the store, and the lease rescue requeues it once its lease expires"
        ) in messages
    assert f"job {polite['id']} requeued by shutdown" in messages
    assert not any(entry["level"] == "critical" for entry in log_entries(daemon))
    assert not Path(daemon.socket).exists()
    database = sqlite3.connect(daemon.directory / "jobd.db")
    states = dict(database.execute("SELECT id, state FROM jobs").fetchall())
    database.close()
    assert [states[job["id"]] for job in [*stuck, polite]] == ["running", "running", "pending"]
    daemon.start()  # the daemon that owned them is gone: their leases are rescued at start
    for job in stuck:
        assert job_state(daemon, job["id"])["last_error"].startswith("lease expired")


class NotifyRecorder:
    """A datagram socket standing in for systemd's notify socket, noting when each message came."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.05)
        self.received: list[tuple[float, str]] = []

    def pings(self) -> list[float]:
        while True:
            try:
                message = self.sock.recv(4096).decode()
            except TimeoutError:
                break
            self.received.append((time.monotonic(), message))
        return [when for when, message in self.received if "WATCHDOG=1" in message.split("\n")]


def test_a_handler_blocking_the_event_loop_is_named_counted_and_stops_the_watchdog(
    start_daemon: StartDaemon, short_dir: Path
) -> None:
    notify = NotifyRecorder(short_dir / "notify")
    daemon = start_daemon(env={"NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "200000"})
    threaded = daemon.ctl("--json", "submit", "testplugin.blocking", '{"seconds": 1}', "--wait")
    assert threaded.returncode == 0 and json.loads(threaded.stdout)["result"] == 1.0
    wait_until(lambda: len(notify.pings()) > 5, what="watchdog pings")
    blocked = daemon.ctl("--json", "submit", "testplugin.block_loop", '{"seconds": 2}', "--wait")
    assert blocked.returncode == 0, blocked.stderr
    job = json.loads(blocked.stdout)
    before = len(notify.pings())
    pings = wait_until(
        lambda: notify.pings() if len(notify.pings()) > before + 5 else None, what="the pings to resume"
    )
    # Pinged from the event loop only: none came while the handler held it.
    assert max(later - earlier for earlier, later in itertools.pairwise(pings)) >= 1.5
    [warning] = [
        entry
        for entry in log_entries(daemon)
        if entry.get("logger") == "jobd.loopwatch" and entry.get("type") == "testplugin.block_loop"
    ]
    assert warning["level"] == "warning" and warning["job_id"] == job["id"]
    assert warning["message"].startswith("the event loop was blocked for ")
    assert 1.5 <= warning["blocked_seconds"] <= 60
    with daemon.http() as client:
        metrics = client.get("/metrics").text
    assert 'jobd_event_loop_blocked_total{type="testplugin.block_loop"} 1.0' in metrics
    # The plain def handler's thread blocked nothing.
    assert 'jobd_event_loop_blocked_total{type="testplugin.blocking"}' not in metrics
    assert daemon.stop() == 0
