"""jobd.systemd without systemd: a datagram socket stands in for the service manager."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import trio.testing

from jobd import systemd


class Manager:
    """The receiving end of NOTIFY_SOCKET."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def messages(self) -> list[list[str]]:
        """Every datagram received so far, each split into its fields."""
        out: list[list[str]] = []
        while True:
            try:
                data = self.sock.recv(4096, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return out
            out.append(data.decode().split("\n"))


@pytest.fixture(params=["path", "abstract"])
def manager(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Manager]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        if request.param == "path":
            address = str(tmp_path / "notify.sock")
            sock.bind(address)
            monkeypatch.setenv("NOTIFY_SOCKET", address)
        else:
            name = f"jobd-test-{uuid.uuid4().hex}"
            sock.bind("\0" + name)
            monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        monkeypatch.delenv("WATCHDOG_USEC", raising=False)
        monkeypatch.delenv("WATCHDOG_PID", raising=False)
        yield Manager(sock)


def test_notify_sends_one_datagram_of_fields(manager: Manager) -> None:
    assert systemd.notify("READY=1", "STATUS=up") is True
    assert manager.messages() == [["READY=1", "STATUS=up"]]


def test_notify_without_socket_is_false(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert systemd.notify("READY=1") is False
    assert systemd.notify_ready() is False


def test_notify_to_a_vanished_socket_is_false(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone.sock"))
    assert systemd.notify("READY=1") is False


def test_notify_to_an_unsupported_address_is_false(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "vsock:2:1234")
    assert systemd.notify("READY=1") is False


def test_ready_status_stopping(manager: Manager) -> None:
    assert systemd.notify_ready("3 running, 12 queued")
    assert systemd.notify_status("line one\nline two")
    assert systemd.notify_stopping()
    assert manager.messages() == [
        ["READY=1", "STATUS=3 running, 12 queued"],
        ["STATUS=line one line two"],
        ["STOPPING=1"],
    ]


def test_reloading_carries_the_monotonic_clock(manager: Manager) -> None:
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert systemd.notify_reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    [[reloading, monotonic]] = manager.messages()
    assert reloading == "RELOADING=1"
    name, _, usec = monotonic.partition("=")
    assert name == "MONOTONIC_USEC"
    assert before <= int(usec) <= after


# -- the watchdog ---------------------------------------------------------------------


def test_watchdog_interval_is_half_of_watchdog_usec(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    assert systemd.watchdog_interval() == 15.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert systemd.watchdog_interval() == 15.0


@pytest.mark.parametrize(
    ("usec", "pid"),
    [(None, None), ("", None), ("0", None), ("soon", None), ("30000000", "1")],
    ids=["unset", "empty", "zero", "garbage", "another-process"],
)
def test_no_watchdog(monkeypatch: pytest.MonkeyPatch, usec: str | None, pid: str | None) -> None:
    for name, text in (("WATCHDOG_USEC", usec), ("WATCHDOG_PID", pid)):
        if text is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, text)
    assert systemd.watchdog_interval() is None


async def test_watchdog_pings_at_half_the_timeout(
    manager: Manager, monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")
    async with trio.open_nursery() as nursery:
        await nursery.start(systemd.run_watchdog)
        await trio.sleep(3.5)
        nursery.cancel_scope.cancel()
    # Pings at 0, 1, 2 and 3 seconds of the (virtual) clock.
    assert manager.messages() == [["WATCHDOG=1"]] * 4


async def test_watchdog_returns_at_once_without_a_watchdog(
    manager: Manager, autojump_clock: trio.testing.MockClock
) -> None:
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        await nursery.start(systemd.run_watchdog)
    assert trio.current_time() == start
    assert manager.messages() == []


# -- socket activation ----------------------------------------------------------------


@pytest.fixture
def activation(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def _activation_variables() -> set[str]:
    return {"LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"} & set(os.environ)


_ACTIVATED_CHILD = """
import json, os, socket
from jobd import systemd
first, second = socket.socketpair()
os.dup2(first.fileno(), 3)
os.dup2(second.fileno(), 4)
os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS="2", LISTEN_FDNAMES="jobd.socket:extra")
fds = systemd.listen_fds()
print(json.dumps({
    "fds": fds,
    "inheritable": [os.get_inheritable(fd) for fd in fds],
    "left": sorted(set(os.environ) & {"LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"}),
}))
"""


def test_listen_fds_for_this_process(tmp_path: Path) -> None:
    # In a child process, so that fds 3 and 4 can be laid out as systemd would.
    child = subprocess.run(
        [sys.executable, "-c", _ACTIVATED_CHILD],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        cwd=tmp_path,
    )
    assert json.loads(child.stdout) == {"fds": [3, 4], "inheritable": [False, False], "left": []}


def test_listen_fds_for_another_process(activation: pytest.MonkeyPatch) -> None:
    activation.setenv("LISTEN_PID", str(os.getpid() + 1))
    activation.setenv("LISTEN_FDS", "1")
    assert systemd.listen_fds() == []
    # Removed all the same, so a child started later does not see them either.
    assert _activation_variables() == set()


@pytest.mark.parametrize("count", [None, "", "many", "-1"])
def test_listen_fds_with_a_bad_count(activation: pytest.MonkeyPatch, count: str | None) -> None:
    activation.setenv("LISTEN_PID", str(os.getpid()))
    if count is not None:
        activation.setenv("LISTEN_FDS", count)
    assert systemd.listen_fds() == []


def test_listen_fds_without_activation(activation: pytest.MonkeyPatch) -> None:
    assert systemd.listen_fds() == []
