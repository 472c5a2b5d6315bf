"""Fixtures shared by the whole suite: a PostgreSQL server, fresh databases, a clean environment."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import psycopg
import pytest
import tomli_w

LOCAL_POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"
ROOT = Path(__file__).resolve().parent.parent


def with_database(url: str, name: str) -> str:
    """`url` pointing at database `name` instead."""
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


def _answers(url: str) -> bool:
    try:
        with psycopg.connect(url, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
        return True
    except psycopg.Error:
        return False


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _postgres_bin() -> Path | None:
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).parent
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), reverse=True)
    return candidates[0].parent if candidates else None


@contextlib.contextmanager
def _throwaway_cluster() -> Iterator[str | None]:
    """initdb + pg_ctl in a temporary directory, as whoever we are (postgres refuses root)."""
    bin_dir = _postgres_bin()
    if bin_dir is None:
        yield None
        return
    base = Path(tempfile.mkdtemp(prefix="jobd-pg-"))
    run_as: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(base, "postgres")
        run_as = ["runuser", "-u", "postgres", "--"]
    data, port = base / "data", _free_port()
    subprocess.run(
        [*run_as, str(bin_dir / "initdb"), "-A", "trust", "-U", "postgres", "-D", str(data)],
        check=True,
        capture_output=True,
    )
    options = f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=on"
    subprocess.run(
        [
            *run_as,
            str(bin_dir / "pg_ctl"),
            "-D",
            str(data),
            "-o",
            options,
            "-w",
            "-l",
            str(base / "log"),
            "start",
        ],
        check=True,
        capture_output=True,
    )
    try:
        url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE DATABASE test")
        yield f"postgresql://postgres@127.0.0.1:{port}/test"
    finally:
        subprocess.run(
            [*run_as, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
            capture_output=True,
        )
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A PostgreSQL server: $JOBD_TEST_POSTGRES_URL, else the local one, else a throwaway cluster."""
    required = os.environ.get("JOBD_REQUIRE_POSTGRES") == "1"
    explicit = os.environ.get("JOBD_TEST_POSTGRES_URL")
    if explicit:
        if not _answers(explicit):
            pytest.fail(f"$JOBD_TEST_POSTGRES_URL={explicit} does not answer")
        yield explicit
        return
    if _answers(LOCAL_POSTGRES):
        yield LOCAL_POSTGRES
        return
    with _throwaway_cluster() as url:
        if url is None:
            message = (
                "no PostgreSQL: set JOBD_TEST_POSTGRES_URL, run one on 127.0.0.1:5432, or install initdb"
            )
            if required:
                pytest.fail(message)
            pytest.skip(message)
        yield url


@pytest.fixture
def fresh_postgres_url(postgres_url: str) -> Iterator[str]:
    """A new, empty database on the test server, dropped after the test."""
    name = f"jobd_test_{uuid.uuid4().hex[:12]}"
    admin = with_database(postgres_url, "postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield with_database(postgres_url, name)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def built_deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The package packaging/build-deb.sh makes, built once for the session (a minute or two)."""
    out = tmp_path_factory.mktemp("dist")
    result = subprocess.run(
        [str(ROOT / "packaging" / "build-deb.sh")],
        env={**os.environ, "JOBD_DEB_OUT": str(out)},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    [package] = out.glob("*.deb")
    return package


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """No JOBD_* setting of the developer's shell, and no system jobd running on this
    machine, may leak into a test."""
    for name in list(os.environ):
        if name.startswith("JOBD_") and name not in ("JOBD_TEST_POSTGRES_URL", "JOBD_REQUIRE_POSTGRES"):
            monkeypatch.delenv(name)
    import jobd.client

    no_system_socket = tmp_path_factory.getbasetemp() / "no-system-jobd.sock"
    monkeypatch.setattr(jobd.client, "SYSTEM_SOCKET", str(no_system_socket))


# -- the daemon as a process ------------------------------------------------------------

BIN = Path(sys.executable).parent
JOBD = [str(BIN / "jobd")]  # the installed console scripts, as a user runs them
JOBD_CTL = [str(BIN / "jobd-ctl")]
START_DEADLINE = 30.0


class DaemonProcess:
    """One `jobd run` on a private socket and state directory; restartable."""

    def __init__(self, directory: Path, config: dict[str, Any], env: dict[str, str]) -> None:
        self.directory = directory
        self.socket = str(directory / "jobd.sock")
        self.config_path = directory / "jobd.toml"
        tables = {"store": {"url": f"sqlite://{directory}/jobd.db"}, "metrics": {"listen": ""}}
        for section, values in config.items():
            tables.setdefault(section, {}).update(values)
        tables.setdefault("api", {})["socket"] = self.socket
        tables.setdefault("daemon", {}).setdefault("shutdown_timeout", "5s")
        self.config_path.write_text(tomli_w.dumps(tables))
        self.env = {**os.environ, **env}
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = directory / "jobd.log"
        self.starts = 0

    def start(self, wait: bool = True) -> None:
        self.starts += 1
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it
        log.write(f"--- start {self.starts} ---\n".encode())
        log.flush()
        self.process = subprocess.Popen(
            [*JOBD, "run", "--config", str(self.config_path)], stdout=log, stderr=log, env=self.env
        )
        log.close()
        if wait:
            self.wait_healthy()

    def wait_healthy(self) -> None:
        deadline = time.monotonic() + START_DEADLINE
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"jobd exited with {self.process.returncode}:\n{self.log()}")
            try:
                with self.http() as client:
                    if client.get("/v1/health").status_code == 200:
                        return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"jobd did not become healthy in {START_DEADLINE}s:\n{self.log()}")

    def http(self, timeout: float = 30.0) -> httpx.Client:
        return httpx.Client(
            transport=httpx.HTTPTransport(uds=self.socket), base_url="http://jobd", timeout=timeout
        )

    def ctl(
        self, *args: str, input: str | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*JOBD_CTL, "--socket", self.socket, *args],
            capture_output=True,
            text=True,
            input=input,
            timeout=timeout,
            env=self.env,
        )

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def wait_exit(self, timeout: float = 60) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        self.wait_exit()

    def stop(self) -> int:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.signal(signal.SIGTERM)
        return self.wait_exit()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a short path: AF_UNIX socket paths are limited to 108 bytes."""
    path = Path(tempfile.mkdtemp(prefix="jd-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def start_daemon(short_dir: Path) -> Iterator[Callable[..., DaemonProcess]]:
    """Start `jobd` processes: `start_daemon(config={...}, env={...})`; all stopped after the test."""
    daemons: list[DaemonProcess] = []

    def start(
        config: dict[str, Any] | None = None,
        env: dict[str, str] | None = None,
        *,
        name: str = "d",
        wait: bool = True,
    ) -> DaemonProcess:
        directory = short_dir / name
        directory.mkdir(exist_ok=True)
        daemon = DaemonProcess(directory, config or {}, env or {})
        daemons.append(daemon)
        daemon.start(wait=wait)
        return daemon

    yield start
    for daemon in daemons:
        if daemon.process is not None and daemon.process.poll() is None:
            daemon.process.kill()
            daemon.process.wait()


def wait_until(condition: Callable[[], Any], timeout: float = 30.0, what: str = "the condition") -> Any:
    """Poll `condition` until it returns something true; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def send_batches_some_refused(
    daemons: Sequence[DaemonProcess], clients: int = 4, batches: int = 6
) -> set[str]:
    """From `clients` threads at once, `batches` 600-job batches each, sent to `daemons`
    in turn; every third names an unknown type at item 550 and must be refused whole
    (422). The ids of the jobs the others created, every one of them distinct."""

    def send(client_number: int) -> tuple[list[str], list[int]]:
        accepted: list[str] = []
        refusals: list[int] = []
        for number in range(batches):
            jobs: list[dict[str, Any]] = [
                {"type": "jobd.noop", "payload": [client_number, number, i]} for i in range(600)
            ]
            if number % 3 == 2:
                jobs[550] = {"type": "no.such"}
            with daemons[(client_number + number) % len(daemons)].http() as client:
                answer = client.post("/v1/jobs/batch", json={"jobs": jobs})
            if number % 3 == 2:
                refusals.append(answer.status_code)
            else:
                assert answer.status_code == 201, answer.text
                accepted += [job["id"] for job in answer.json()["jobs"]]
        return accepted, refusals

    with ThreadPoolExecutor(max_workers=clients) as pool:
        results = list(pool.map(send, range(clients)))
    refused = clients * (batches // 3)
    accepted = {job_id for ids, _ in results for job_id in ids}
    assert len(accepted) == (clients * batches - refused) * 600
    assert [status for _, refusals in results for status in refusals] == [422] * refused
    return accepted


def run_python(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`code` run by this interpreter in a process of its own, with `args` as its
    `sys.argv[1:]`: its exit status and its output as text."""
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60)
