"""Fixtures shared by the whole suite: a PostgreSQL server, fresh databases, a clean environment."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

LOCAL_POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"


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


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No JOBD_* setting of the developer's shell may leak into a test."""
    for name in list(os.environ):
        if name.startswith("JOBD_") and name not in ("JOBD_TEST_POSTGRES_URL", "JOBD_REQUIRE_POSTGRES"):
            monkeypatch.delenv(name)
