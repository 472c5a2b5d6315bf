"""The real `jobd` against clients and handlers that misbehave: connections that say nothing or
dribble, long polls by the hundred, handlers that ignore cancellation or block the event loop.

Every client here is a real socket, every daemon a real process; waits poll with deadlines.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from conftest import DaemonProcess, wait_until

pytestmark = pytest.mark.process
StartDaemon = Callable[..., DaemonProcess]


@contextmanager
def raw_connections(daemon: DaemonProcess, count: int, first_bytes: Callable[[int], bytes]) -> Iterator[
        list[socket.socket]]:
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
