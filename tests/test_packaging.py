"""packaging/build-deb.sh: build the Debian package, inspect it, unpack it and run what it installs.

Building takes a minute or two (a fresh virtual environment and a pip install), so the
package is built once for the session (`conftest.built_deb`, shared with test_install.py).
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SYSTEM_PYTHON = Path("/usr/bin/python3")

pytestmark = [
    pytest.mark.process,
    pytest.mark.skipif(
        not (shutil.which("dpkg-deb") and SYSTEM_PYTHON.exists()) and not os.environ.get("CI"),
        reason="needs dpkg-deb and /usr/bin/python3 (Debian); CI has them",
    ),
]

EXPECTED_PATHS = {
    "/opt/jobd/bin/python",
    "/opt/jobd/bin/jobd",
    "/opt/jobd/bin/jobd-ctl",
    "/opt/jobd/bin/pip",
    "/opt/jobd/pyvenv.cfg",
    "/usr/bin/jobd",
    "/usr/bin/jobd-ctl",
    "/lib/systemd/system/jobd.service",
    "/lib/systemd/system/jobd.socket",
    "/etc/jobd/jobd.toml",
    "/usr/lib/sysusers.d/jobd.conf",
    "/usr/lib/tmpfiles.d/jobd.conf",
    "/usr/share/doc/jobd/operations.md",
    "/usr/share/jobd/grafana/jobd.json",
    "/usr/share/jobd/prometheus/jobd-rules.yml",
}


def run(
    *args: str | Path,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(arg) for arg in args],
        env=env,
        cwd=cwd,
        input=input,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


@pytest.fixture(scope="module")
def deb(built_deb: Path) -> Path:
    return built_deb


@pytest.fixture(scope="module")
def unpacked(deb: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("root")
    result = run("dpkg", "-x", deb, root)
    assert result.returncode == 0, result.stderr
    return root


def field(deb: Path, name: str) -> str:
    result = run("dpkg-deb", "--field", deb, name)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_file_name_carries_version_and_architecture(deb: Path) -> None:
    version = importlib.metadata.version("jobd")
    architecture = run("dpkg", "--print-architecture").stdout.strip()
    assert deb.name == f"jobd_{version}_{architecture}.deb"


def test_control_fields(deb: Path) -> None:
    assert field(deb, "Package") == "jobd"
    assert field(deb, "Version") == importlib.metadata.version("jobd")
    assert field(deb, "Architecture") == run("dpkg", "--print-architecture").stdout.strip()
    minor = run(SYSTEM_PYTHON, "-c", "import sys; print(sys.version_info[1])").stdout.strip()
    depends = [item.strip() for item in field(deb, "Depends").split(",")]
    # The environment is built for one Python minor version: the package must say so.
    assert f"python3 (>= 3.{minor})" in depends
    assert f"python3 (<< 3.{int(minor) + 1})" in depends
    assert field(deb, "Maintainer")
    assert field(deb, "Description")


def test_conffiles_and_maintainer_scripts(deb: Path) -> None:
    result = run("dpkg-deb", "--info", deb, "conffiles")
    assert result.stdout.split() == ["/etc/jobd/jobd.toml"]
    info = run("dpkg-deb", "--info", deb).stdout
    for script in ("postinst", "prerm", "postrm"):
        assert script in info
        text = run("dpkg-deb", "--info", deb, script).stdout
        assert text.startswith("#!/bin/sh\n")
        syntax = run("sh", "-n", input=text)
        assert syntax.returncode == 0, syntax.stderr


def test_contents(deb: Path) -> None:
    listing = run("dpkg-deb", "--contents", deb).stdout.splitlines()
    paths = {}
    for line in listing:
        name = line.split(None, 5)[5]
        path, _, target = name.partition(" -> ")
        paths[path.removeprefix(".").rstrip("/")] = (line[0], target)
    assert set(paths) >= EXPECTED_PATHS
    assert paths["/usr/bin/jobd"] == ("l", "/opt/jobd/bin/jobd")
    assert paths["/usr/bin/jobd-ctl"] == ("l", "/opt/jobd/bin/jobd-ctl")
    owners = {line.split()[1] for line in listing}
    assert owners == {"root/root"}


def test_shipped_files_are_the_repository_files(unpacked: Path) -> None:
    for packaged, source in (
        ("lib/systemd/system/jobd.service", "jobd.service"),
        ("lib/systemd/system/jobd.socket", "packaging/jobd.socket"),
        ("etc/jobd/jobd.toml", "etc/jobd.toml"),
        ("usr/lib/sysusers.d/jobd.conf", "packaging/jobd.sysusers"),
        ("usr/lib/tmpfiles.d/jobd.conf", "packaging/jobd.tmpfiles"),
        ("usr/share/jobd/grafana/jobd.json", "packaging/grafana/jobd.json"),
        ("usr/share/jobd/prometheus/jobd-rules.yml", "packaging/prometheus/jobd-rules.yml"),
    ):
        assert (unpacked / packaged).read_text() == (ROOT / source).read_text(), packaged


def test_the_environment_is_relocated_to_opt_jobd(unpacked: Path) -> None:
    venv = unpacked / "opt" / "jobd"
    assert (venv / "bin" / "jobd").read_text().splitlines()[0] == "#!/opt/jobd/bin/python"
    assert (venv / "bin" / "jobd-ctl").read_text().splitlines()[0] == "#!/opt/jobd/bin/python"
    assert (venv / "bin" / "pip").read_text().splitlines()[0] == "#!/opt/jobd/bin/python3"
    config = (venv / "pyvenv.cfg").read_text()
    assert "home = /usr/bin" in config
    assert "/tmp" not in config
    assert os.readlink(venv / "bin" / "python3") == str(SYSTEM_PYTHON)


def installed(unpacked: Path, program: str, *args: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """Run an installed program through the unpacked environment's own interpreter.

    Its #! line names /opt/jobd/bin/python, which exists only once installed; the
    interpreter finds its environment from pyvenv.cfg beside it, wherever it lies.
    """
    venv = unpacked / "opt" / "jobd"
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "LANG": "C.UTF-8"}
    return run(venv / "bin" / "python", venv / "bin" / program, *args, env=env, cwd=tmp_path)


def test_the_interpreter_uses_the_unpacked_environment(unpacked: Path, tmp_path: Path) -> None:
    venv = unpacked / "opt" / "jobd"
    code = "import sys, jobd; print(sys.prefix); print(jobd.__file__)"
    result = run(venv / "bin" / "python", "-c", code, env={"PATH": "/usr/bin:/bin"}, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    prefix, module = result.stdout.splitlines()
    assert prefix == str(venv)
    assert module.startswith(str(venv / "lib"))
    assert sys.prefix != prefix


def test_installed_jobd_version(unpacked: Path, tmp_path: Path) -> None:
    result = installed(unpacked, "jobd", "--version", tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"jobd {importlib.metadata.version('jobd')}"


def test_installed_jobd_check(unpacked: Path, tmp_path: Path) -> None:
    config = tmp_path / "jobd.toml"
    config.write_text('[store]\nurl = "memory:"\n')
    result = installed(unpacked, "jobd", "check", "--config", str(config), tmp_path=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "handlers" in result.stdout

    config.write_text("[workers]\nconcurrency = 0\n")
    result = installed(unpacked, "jobd", "check", "--config", str(config), tmp_path=tmp_path)
    assert result.returncode == 1
    assert "workers.concurrency" in result.stderr


def test_installed_jobd_ctl_runs(unpacked: Path, tmp_path: Path) -> None:
    result = installed(unpacked, "jobd-ctl", "--help", tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "jobd-ctl" in result.stdout
