"""jobd.service and packaging/jobd.socket: what systemd itself says about them."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from jobd.config import DaemonConfig
from jobd.daemon import HARD_EXIT_AFTER
from jobd.durations import parse_duration
from jobd.worker import SHUTDOWN_MARGIN

ROOT = Path(__file__).resolve().parent.parent
SERVICE = ROOT / "jobd.service"
SOCKET = ROOT / "packaging" / "jobd.socket"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")

needs_systemd_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None and not os.environ.get("CI"),
    reason="systemd-analyze is not installed (Debian package systemd); CI installs it",
)


def settings(path: Path) -> dict[str, list[str]]:
    """KEY -> every value it is given, comments and section headers left out."""
    out: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def test_exec_lines_point_at_the_packaged_program() -> None:
    unit = settings(SERVICE)
    assert unit["ExecStart"] == ["/usr/bin/jobd run"]
    assert unit["ExecReload"] == ["/bin/kill -HUP $MAINPID"]


def test_the_unit_has_what_the_contract_asks() -> None:
    unit = settings(SERVICE)
    expected = {
        "Type": "notify",
        "Restart": "on-failure",
        "User": "jobd",
        "Group": "jobd",
        "StateDirectory": "jobd",
        "RuntimeDirectory": "jobd",
        "ConfigurationDirectory": "jobd",
        "ProtectSystem": "strict",
        "ProtectHome": "true",
        "PrivateTmp": "true",
        "NoNewPrivileges": "true",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
        "KillMode": "mixed",
    }
    assert {key: unit.get(key, [None])[0] for key in expected} == expected
    assert "@system-service" in unit["SystemCallFilter"]
    assert parse_duration(unit["WatchdogSec"][0]) > 0


def test_systemd_waits_longer_than_the_longest_shutdown() -> None:
    # Shorter, and systemd would SIGKILL jobd while it requeues interrupted jobs.
    timeout = parse_duration(settings(SERVICE)["TimeoutStopSec"][0])
    assert timeout > DaemonConfig().shutdown_timeout + SHUTDOWN_MARGIN + HARD_EXIT_AFTER


def test_the_socket_is_the_one_jobd_uses_under_systemd() -> None:
    socket_unit = settings(SOCKET)
    assert socket_unit["ListenStream"] == ["/run/jobd/jobd.sock"]
    assert socket_unit["SocketMode"] == ["0660"]
    assert socket_unit["SocketUser"] == ["jobd"]
    assert socket_unit["SocketGroup"] == ["jobd"]
    # The service keeps /run/jobd when it stops, or it would delete the socket's file.
    assert settings(SERVICE)["RuntimeDirectoryPreserve"] == ["yes"]


def jobd_program() -> Path:
    """The `jobd` program of the environment running the tests."""
    beside_python = Path(sys.prefix) / "bin" / "jobd"
    if beside_python.exists():
        return beside_python
    found = shutil.which("jobd")
    assert found, "no jobd program in this environment: install the package (pip install -e .)"
    return Path(found)


@pytest.fixture
def units(tmp_path: Path) -> Path:
    """Copies of both units whose Exec lines run this environment's jobd (verify needs it to exist)."""
    program = jobd_program()
    text = SERVICE.read_text().replace("ExecStart=/usr/bin/jobd ", f"ExecStart={program} ")
    assert str(program) in text
    (tmp_path / "jobd.service").write_text(text)
    shutil.copy(SOCKET, tmp_path / "jobd.socket")
    return tmp_path


def analyze(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    assert SYSTEMD_ANALYZE, "systemd-analyze is missing: install the Debian package systemd"
    return subprocess.run(
        [SYSTEMD_ANALYZE, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


@needs_systemd_analyze
@pytest.mark.parametrize("unit", ["jobd.service", "jobd.socket"])
def test_systemd_analyze_verify_is_silent(units: Path, unit: str) -> None:
    # verify exits 0 on settings it merely ignores, so any output at all is a failure.
    result = analyze("verify", "--man=no", str(units / unit), cwd=units)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


@needs_systemd_analyze
def test_security_exposure_stays_low(units: Path) -> None:
    result = analyze("security", "--offline=yes", str(units / "jobd.service"), cwd=units)
    assert result.returncode == 0, result.stderr
    match = re.search(r"Overall exposure level for jobd\.service: (\d+\.\d+)", result.stdout)
    assert match, result.stdout
    # 1.2 when written; systemd calls anything under 2 "OK".
    assert float(match.group(1)) < 2.0, result.stdout
