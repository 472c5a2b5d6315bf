"""The daemon under a (test) service manager: sd_notify messages, watchdog, socket activation, reload."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import tomli_w
from conftest import JOBD, DaemonProcess, wait_until

pytestmark = pytest.mark.process
StartDaemon = Callable[..., DaemonProcess]


class NotifyListener:
    """A datagram socket standing in for systemd's notify socket."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address.replace("@", "\0", 1) if address.startswith("@") else address)
        self.sock.settimeout(0.05)
        self.messages: list[str] = []

    def read(self) -> list[str]:
        while True:
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except TimeoutError:
                return self.messages

    def wait_for(self, field: str, after: int = 0, timeout: float = 30) -> int:
        """Index of the first message from `after` on holding `field`."""

        def found() -> int | None:
            for index, message in enumerate(self.read()[after:], start=after):
                if field in message.split("\n"):
                    return index + 1  # truthy even for message 0
            return None

        return int(wait_until(found, timeout, what=f"{field} from jobd")) - 1


@pytest.fixture(params=["path", "abstract"])
def notify_socket(request: pytest.FixtureRequest, short_dir: Path) -> Iterator[tuple[str, NotifyListener]]:
    abstract = f"@jobd-test-{os.getpid()}-{time.time_ns()}"
    address = str(short_dir / "notify") if request.param == "path" else abstract
    listener = NotifyListener(address)
    yield address, listener
    listener.sock.close()


def test_ready_status_watchdog_reload_and_stopping(
    start_daemon: StartDaemon, notify_socket: tuple[str, NotifyListener]
) -> None:
    address, listener = notify_socket
    daemon = start_daemon(env={"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "400000"}, wait=False)
    ready = listener.wait_for("READY=1")
    assert any(line.startswith("STATUS=running 0/10 jobs") for line in listener.messages[ready].split("\n"))
    daemon.wait_healthy()  # READY=1 came only once the socket answered and the store was open
    first_ping = listener.wait_for("WATCHDOG=1")
    listener.wait_for("WATCHDOG=1", after=first_ping + 1)  # it keeps pinging, every 0.2 s
    daemon.signal(signal.SIGHUP)
    reloading = listener.wait_for("RELOADING=1", after=ready + 1)
    assert any(line.startswith("MONOTONIC_USEC=") for line in listener.messages[reloading].split("\n"))
    listener.wait_for("READY=1", after=reloading + 1)
    daemon.signal(signal.SIGTERM)
    listener.wait_for("STOPPING=1")
    assert daemon.wait_exit() == 0


def test_no_watchdog_pings_for_another_pid(
    start_daemon: StartDaemon, notify_socket: tuple[str, NotifyListener]
) -> None:
    address, listener = notify_socket
    daemon = start_daemon(env={"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "100000", "WATCHDOG_PID": "1"})
    listener.wait_for("READY=1")
    daemon.ctl("health")
    assert not any("WATCHDOG=1" in message for message in listener.read())
    assert daemon.stop() == 0


@pytest.mark.skipif(
    shutil.which("systemd-socket-activate") is None and not os.environ.get("CI"),
    reason="systemd-socket-activate is not installed (package systemd)",
)
def test_socket_activation_serves_the_passed_socket(short_dir: Path) -> None:
    socket_path = short_dir / "activated.sock"
    config = short_dir / "jobd.toml"
    config.write_text(
        tomli_w.dumps(
            {
                "store": {"url": f"sqlite://{short_dir}/jobd.db"},
                "api": {"socket": str(short_dir / "never-bound.sock")},
                "metrics": {"listen": ""},
            }
        )
    )
    log = open(short_dir / "log", "wb")  # noqa: SIM115
    process = subprocess.Popen(
        ["systemd-socket-activate", "-l", str(socket_path), *JOBD, "run", "--config", str(config)],
        stdout=log,
        stderr=log,
    )
    try:
        wait_until(socket_path.exists, what="the activation socket")
        # The first connection makes systemd-socket-activate start jobd with the socket as fd 3.
        jobd_ctl = [*JOBD[:-1], str(Path(JOBD[0]).parent / "jobd-ctl")]
        result = subprocess.run(
            [*jobd_ctl, "--socket", str(socket_path), "--json", "submit", "jobd.noop", "7", "--wait"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr + (short_dir / "log").read_text()
        assert json.loads(result.stdout)["result"] == 7
        assert not (short_dir / "never-bound.sock").exists()
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(60)
        log.close()


def test_sighup_applies_new_concurrency_under_load(start_daemon: StartDaemon) -> None:
    daemon = start_daemon(config={"workers": {"concurrency": 2}})
    with daemon.http() as client:
        jobs = client.post(
            "/v1/jobs/batch",
            json={"jobs": [{"type": "jobd.sleep", "payload": {"seconds": 0.3}} for _ in range(40)]},
        ).json()["jobs"]

    def busy() -> int:
        with daemon.http() as client:
            return int(client.get("/v1/stats").json()["workers"]["busy"])

    observed = [busy() for _ in range(10)]
    assert max(observed) <= 2
    # A bad config is refused: the old one stays in force and the daemon keeps serving.
    good = daemon.config_path.read_text()
    daemon.config_path.write_text(good.replace("concurrency = 2", 'concurrency = "lots"'))
    daemon.signal(signal.SIGHUP)
    wait_until(lambda: "reload refused" in daemon.log(), what="the refused reload to be logged")
    assert "workers.concurrency" in daemon.log()
    assert max(busy() for _ in range(5)) <= 2
    daemon.config_path.write_text(good.replace("concurrency = 2", "concurrency = 5"))
    daemon.signal(signal.SIGHUP)
    wait_until(lambda: busy() == 5, what="5 jobs running after the reload")
    assert max(busy() for _ in range(10)) <= 5
    with daemon.http() as client:
        for job in jobs:
            done = client.get(f"/v1/jobs/{job['id']}/wait", params={"timeout": "60"}).json()
            assert done["state"] == "completed"
        assert client.get("/v1/stats").json()["workers"]["capacity"] == 5
    assert daemon.stop() == 0
