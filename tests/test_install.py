"""The Debian package installed for real: dpkg -i, a daemon as user jobd, an upgrade, a purge.

This changes the machine (a system user, /opt/jobd, /etc/jobd, /var/lib/jobd), so it runs
only as root and only when asked (`JOBD_TEST_INSTALL=1`, which .ci/run sets). Before
installing it records the state of every path the package touches, and the account files,
in MARKER; a run that died half way is cleaned up by the next one against that record. It
refuses to touch a jobd that it did not install.

There is no systemd as PID 1 here: the daemon is started the way jobd.service would start
it (user and group jobd, umask 0077, $STATE_DIRECTORY, $RUNTIME_DIRECTORY, /run/jobd made
as RuntimeDirectory= makes it). The upgrade installs the same package repacked with a
higher version (rebuilding would take another minute or two).
"""

from __future__ import annotations

import grp
import hashlib
import json
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import wait_until

pytestmark = [
    pytest.mark.process,
    pytest.mark.skipif(
        os.environ.get("JOBD_TEST_INSTALL") != "1",
        reason="installs jobd on this machine for real; .ci/run runs it (as root, JOBD_TEST_INSTALL=1)",
    ),
    pytest.mark.skipif(os.geteuid() != 0, reason="installing a package needs root"),
    pytest.mark.skipif(shutil.which("dpkg") is None, reason="needs dpkg (Debian)"),
]

MARKER = Path("/var/tmp/jobd-install-test.json")
# Every path the package, its scripts and this test create.
TOUCHED = (
    "/opt/jobd",
    "/etc/jobd",
    "/var/lib/jobd",
    "/run/jobd",
    "/usr/bin/jobd",
    "/usr/bin/jobd-ctl",
    "/lib/systemd/system/jobd.service",
    "/lib/systemd/system/jobd.socket",
    "/usr/lib/sysusers.d/jobd.conf",
    "/usr/lib/tmpfiles.d/jobd.conf",
    "/usr/share/doc/jobd",
    "/etc/systemd/system/multi-user.target.wants/jobd.service",
    "/etc/systemd/system/sockets.target.wants/jobd.socket",
)
ACCOUNT_FILES = ("/etc/passwd", "/etc/group", "/etc/shadow", "/etc/gshadow")
CONFFILE = Path("/etc/jobd/jobd.toml")
SOCKET = "/run/jobd/jobd.sock"
UPGRADE_VERSION_SUFFIX = "+test1"
# What jobd.service gives the daemon.
SERVICE_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "LANG": "C.UTF-8",
    "HOME": "/var/lib/jobd",
    "USER": "jobd",
    "LOGNAME": "jobd",
    "STATE_DIRECTORY": "/var/lib/jobd",
    "RUNTIME_DIRECTORY": "/run/jobd",
    "CONFIGURATION_DIRECTORY": "/etc/jobd",
}
ROOT_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "HOME": "/root"}

Snapshot = dict[str, Any]


def run(*args: str | Path, user: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    as_user: dict[str, Any] = {"user": user, "group": user, "extra_groups": []} if user else {}
    result = subprocess.run(
        [str(arg) for arg in args],
        capture_output=True,
        text=True,
        timeout=300,
        env=SERVICE_ENV if user else ROOT_ENV,
        cwd="/",
        check=False,
        **as_user,
    )
    if check:
        assert result.returncode == 0, f"{args} exited {result.returncode}:\n{result.stdout}{result.stderr}"
    return result


def tree(path: Path) -> list[list[Any]] | None:
    """Every entry under `path` with its type, mode, owner and (files) digest; None if absent."""
    if not path.exists() and not path.is_symlink():
        return None
    entries = []
    for entry in sorted([path, *path.rglob("*")] if path.is_dir() and not path.is_symlink() else [path]):
        info = entry.lstat()
        detail: str | int = ""
        if stat.S_ISLNK(info.st_mode):
            detail = os.readlink(entry)
        elif stat.S_ISREG(info.st_mode):
            detail = hashlib.sha256(entry.read_bytes()).hexdigest()
        entries.append([str(entry), info.st_mode, info.st_uid, info.st_gid, detail])
    return entries


def package_status() -> str:
    """dpkg's record of jobd: "" when it has none (never installed, or purged)."""
    result = run("dpkg-query", "-W", "-f", "${db:Status-Abbrev} ${Version}", "jobd", check=False)
    return result.stdout.strip() if result.returncode == 0 else ""


def snapshot() -> Snapshot:
    return {
        "paths": {path: tree(Path(path)) for path in TOUCHED},
        "dpkg": package_status(),
        "dpkg_info": sorted(str(path) for path in Path("/var/lib/dpkg/info").glob("jobd.*")),
        "accounts": {path: hashlib.sha256(Path(path).read_bytes()).hexdigest() for path in ACCOUNT_FILES},
        "user": _exists(pwd.getpwnam, "jobd"),
        "group": _exists(grp.getgrnam, "jobd"),
    }


def _exists(lookup: Any, name: str) -> bool:
    try:
        lookup(name)
    except KeyError:
        return False
    return True


def clean_up(before: Snapshot, daemon_pid: int | None) -> None:
    """Undo whatever this test (or a run of it that died) did, back to `before`."""
    if daemon_pid is not None:
        stop_leftover_daemon(daemon_pid)
    if package_status():
        run("dpkg", "--purge", "jobd")
    for path, state in before["paths"].items():
        if state is None and (Path(path).exists() or Path(path).is_symlink()):
            if Path(path).is_dir() and not Path(path).is_symlink():
                shutil.rmtree(path)
            else:
                Path(path).unlink()
    if not before["user"] and _exists(pwd.getpwnam, "jobd"):
        run("userdel", "jobd")
    if not before["group"] and _exists(grp.getgrnam, "jobd"):
        run("groupdel", "jobd")


def stop_leftover_daemon(pid: int) -> None:
    """Kill the daemon a dead run started, if `pid` is still that daemon (a jobd of user jobd)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
        uid = int(next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1])
        ours = b"/opt/jobd/bin/jobd" in command and uid == pwd.getpwnam("jobd").pw_uid
    except (OSError, KeyError, StopIteration):
        return
    if ours:
        os.kill(pid, signal.SIGKILL)


def write_marker(before: Snapshot, daemon_pid: int | None) -> None:
    MARKER.write_text(json.dumps({"before": before, "daemon_pid": daemon_pid}))


@pytest.fixture
def machine() -> Iterator[Snapshot]:
    """The machine as it was before any run of this test, restored after this one."""
    if MARKER.exists():
        record = json.loads(MARKER.read_text())
        before, pid = record["before"], record["daemon_pid"]
        clean_up(before, pid)
    else:
        before = snapshot()
        if before["dpkg"] or any(before["paths"].values()):
            pytest.skip("jobd is installed on this machine, not by this test: left alone")
    write_marker(before, None)
    try:
        yield before
    finally:
        record = json.loads(MARKER.read_text())
        clean_up(before, record["daemon_pid"])
        after = snapshot()
        assert after == before, "the machine is not as the test found it"
        MARKER.unlink()


class Daemon:
    """`/opt/jobd/bin/jobd run` as jobd.service runs it, with the shipped config."""

    def __init__(self, before: Snapshot, log: Path) -> None:
        # RuntimeDirectory=jobd, RuntimeDirectoryMode=0755: made (by systemd) before the start.
        run_dir = Path("/run/jobd")
        run_dir.mkdir(mode=0o755, exist_ok=True)
        shutil.chown(run_dir, "jobd", "jobd")
        with log.open("ab") as output:
            self.process = subprocess.Popen(
                ["/opt/jobd/bin/jobd", "run"],
                user="jobd",
                group="jobd",
                extra_groups=[],
                umask=0o077,
                env=SERVICE_ENV,
                cwd="/",
                stdout=output,
                stderr=output,
            )
        write_marker(before, self.process.pid)
        self.log = log
        wait_until(self._healthy, timeout=30, what="the installed daemon to answer")

    def _healthy(self) -> bool:
        assert self.process.poll() is None, f"jobd exited:\n{self.log.read_text()}"
        return run("/opt/jobd/bin/jobd-ctl", "health", check=False).returncode == 0

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        assert self.process.wait(60) == 0, self.log.read_text()


def ctl(*args: str) -> Any:
    """`jobd-ctl --json ...` as root, finding the system socket on its own."""
    return json.loads(run("/opt/jobd/bin/jobd-ctl", "--json", *args).stdout)


def mode_and_owner(path: str) -> tuple[int, str, str]:
    info = os.stat(path)
    return stat.S_IMODE(info.st_mode), pwd.getpwuid(info.st_uid).pw_name, grp.getgrgid(info.st_gid).gr_name


def repacked(deb: Path, directory: Path) -> tuple[Path, str]:
    """`deb` with a higher version: unpacked, its control file's Version raised, packed again."""
    root = directory / "root"
    run("dpkg-deb", "--raw-extract", deb, root)
    control = root / "DEBIAN" / "control"
    text = control.read_text()
    version = next(line for line in text.splitlines() if line.startswith("Version: ")).split()[1]
    newer = version + UPGRADE_VERSION_SUFFIX
    control.write_text(text.replace(f"Version: {version}\n", f"Version: {newer}\n"))
    run("dpkg", "--compare-versions", newer, "gt", version)
    package = directory / f"jobd_{newer}.deb"
    # Fast compression: this package is only ever installed by this test.
    run("dpkg-deb", "--root-owner-group", "-Zgzip", "-z1", "--build", root, package)
    shutil.rmtree(root)
    return package, newer


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_install_run_upgrade_and_purge(built_deb: Path, machine: Snapshot, tmp_path: Path) -> None:
    version = run("dpkg-deb", "--field", built_deb, "Version").stdout.strip()
    run("dpkg", "--install", built_deb)
    assert package_status() == f"ii  {version}"

    # The account and the directories postinst made.
    user = pwd.getpwnam("jobd")
    assert user.pw_uid < 1000 and user.pw_dir == "/var/lib/jobd"
    assert user.pw_shell in ("/usr/sbin/nologin", "/sbin/nologin", "/bin/false")
    assert grp.getgrgid(user.pw_gid).gr_name == "jobd"
    assert mode_and_owner("/var/lib/jobd") == (0o700, "jobd", "jobd")
    assert mode_and_owner("/etc/jobd") == (0o755, "root", "root")
    assert mode_and_owner(str(CONFFILE)) == (0o644, "root", "root")
    assert mode_and_owner("/opt/jobd/bin") == (0o755, "root", "root")
    assert os.readlink("/usr/bin/jobd") == "/opt/jobd/bin/jobd"
    assert not Path("/run/jobd").exists()  # jobd.service makes it

    checked = run("/opt/jobd/bin/jobd", "check", user="jobd").stdout.splitlines()
    assert checked[:3] == [
        "config: /etc/jobd/jobd.toml: ok",
        "store: sqlite:///var/lib/jobd/jobd.db",
        f"socket: {SOCKET}",
    ]
    header = next(number for number, line in enumerate(checked) if line.split()[:1] == ["TYPE"])
    handlers = {line.split()[0] for line in checked[header + 1 :]}
    assert {"shell.run", "http.request", "email.send"} <= handlers
    jobd_version = run("/opt/jobd/bin/jobd", "--version").stdout.split()[1]

    # An edit of the conffile, as an administrator makes one: the metrics port.
    metrics_port = free_port()
    shipped = CONFFILE.read_text()
    assert 'listen = "127.0.0.1:9464"' in shipped
    edited = shipped.replace('listen = "127.0.0.1:9464"', f'listen = "127.0.0.1:{metrics_port}"')
    CONFFILE.write_text(edited)

    daemon = Daemon(machine, tmp_path / "jobd.log")
    try:
        first = ctl("submit", "jobd.noop", '{"installed": true}', "--wait")
        assert first["state"] == "completed" and first["result"] == {"installed": True}
        assert mode_and_owner(SOCKET) == (0o660, "jobd", "jobd")
        assert mode_and_owner("/var/lib/jobd/jobd.db") == (0o600, "jobd", "jobd")
        scrape = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
        assert f'jobd_build_info{{version="{jobd_version}"}} 1.0' in scrape
    finally:
        daemon.stop()

    newer_deb, newer = repacked(built_deb, tmp_path)
    run("dpkg", "--install", newer_deb)
    assert package_status() == f"ii  {newer}"
    assert CONFFILE.read_text() == edited  # the edit survives, and no copy was set aside
    assert sorted(path.name for path in CONFFILE.parent.iterdir()) == ["jobd.toml"]

    daemon = Daemon(machine, tmp_path / "jobd.log")
    try:
        assert ctl("show", first["id"])["state"] == "completed"  # the store survived
        second = ctl("submit", "jobd.noop", '{"upgraded": true}', "--wait")
        assert second["state"] == "completed"
        assert httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).status_code == 200
    finally:
        daemon.stop()

    run("dpkg", "--purge", "jobd")
    after = snapshot()
    # Purge deletes every path (the store and the conffile too) and dpkg's records; the
    # account stays, as Debian's practice is: the fixture then removes it.
    assert after["paths"] == machine["paths"]
    assert (after["dpkg"], after["dpkg_info"]) == (machine["dpkg"], machine["dpkg_info"])
    assert after["user"] and after["group"]
