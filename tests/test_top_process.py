"""`jobd-ctl top` for real: in an 80x24 tmux terminal against a real daemon, keys pressed
with `send-keys`, the screen read with `capture-pane`; and its one plain snapshot."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import JOBD_CTL, DaemonProcess, wait_until

from jobd.ctl import main

TMUX = shutil.which("tmux")

pytestmark = [
    pytest.mark.process,
    pytest.mark.skipif(TMUX is None and not os.environ.get("CI"), reason="needs tmux; CI installs it"),
]
StartDaemon = Callable[..., DaemonProcess]
CONFIG = {"workers": {"concurrency": 4}, "queues": {"email": {"concurrency": 1}}}


class Terminal:
    """A tmux server of our own with one 80x24 window running `sh`."""

    def __init__(self, directory: Path) -> None:
        self._socket = str(directory / "tmux.sock")
        env = {**os.environ, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "PS1": "$ "}
        self._tmux("new-session", "-d", "-x", "80", "-y", "24", "-s", "t", "sh", env=env)

    def _tmux(self, *args: str, env: dict[str, str] | None = None) -> str:
        assert TMUX is not None, "tmux is not installed"
        done = subprocess.run([TMUX, "-S", self._socket, "-f", "/dev/null", *args], capture_output=True,
                              text=True, timeout=10, env=env, check=True)  # fmt: skip
        return done.stdout

    def run(self, command: str) -> None:
        self._tmux("send-keys", "-t", "t", "-l", command)
        self._tmux("send-keys", "-t", "t", "Enter")

    def press(self, *keys: str) -> None:
        for key in keys:  # one at a time: each is then read as one key, not as part of an escape
            self._tmux("send-keys", "-t", "t", key)

    def screen(self) -> list[str]:
        return self._tmux("capture-pane", "-p", "-t", "t").splitlines()

    def wait_for(self, pattern: str, what: str, timeout: float = 15.0) -> list[str]:
        """The screen once a line of it matches `pattern` (a regular expression)."""
        found = re.compile(pattern)

        def shown() -> list[str] | None:
            lines = self.screen()
            return lines if any(found.search(line) for line in lines) else None

        try:
            return list(wait_until(shown, timeout=timeout, what=what))
        except AssertionError:
            raise AssertionError(f"{what}: not on the screen:\n" + "\n".join(self.screen())) from None

    def alternate_screen(self) -> bool:
        return self._tmux("display-message", "-p", "-t", "t", "#{alternate_on}").strip() == "1"

    def close(self) -> None:
        self._tmux("kill-server")


@pytest.fixture
def terminal(short_dir: Path) -> Iterator[Terminal]:
    opened = Terminal(short_dir)
    try:
        yield opened
    finally:
        opened.close()


def submit(daemon: DaemonProcess, seconds: float, **options: Any) -> dict[str, Any]:
    body = {"type": "jobd.sleep", "payload": {"seconds": seconds}, **options}
    with daemon.http() as client:
        answer = client.post("/v1/jobs", json=body)
        assert answer.status_code == 201, answer.text
        return dict(answer.json())


def get(daemon: DaemonProcess, path: str) -> dict[str, Any]:
    with daemon.http() as client:
        answer = client.get(path)
        assert answer.status_code == 200, answer.text
        return dict(answer.json())


def busy(daemon: DaemonProcess) -> dict[str, Any]:
    """Two jobs running in default, one in email and one pending there, one failed."""
    running = [submit(daemon, 60) for _ in range(2)]
    submit(daemon, 60, queue="email")
    submit(daemon, 60, queue="email")
    failed = submit(daemon, 5, timeout=0.01, max_attempts=1)
    wait_until(lambda: get(daemon, f"/v1/jobs/{failed['id']}")["state"] == "failed", what="a failed job")
    wait_until(lambda: get(daemon, "/v1/stats")["workers"]["busy"] == 3, what="three jobs running")
    return {"running": running, "failed": failed}


def top_command(daemon: DaemonProcess) -> str:
    # The exit status, then the terminal's modes, to check what top left behind.
    return f"{JOBD_CTL[0]} --socket {daemon.socket} top --interval 200ms; echo EXIT=$?; stty -a"


def assert_restored(terminal: Terminal, status: int) -> None:
    terminal.wait_for(rf"^EXIT={status}$", f"top's exit status {status}")
    lines = terminal.wait_for(r"icanon", "the terminal's modes, from stty")
    modes = " ".join(lines[lines.index(f"EXIT={status}") :])
    assert re.search(r"(^|\s)icanon\s", modes) and re.search(r"\secho\s", modes), modes  # cooked again
    assert not terminal.alternate_screen()


def test_top_shows_the_daemon_and_its_keys_pause_and_cancel(
    start_daemon: StartDaemon, terminal: Terminal, tmp_path: Path
) -> None:
    daemon = start_daemon(config=CONFIG)
    jobs = busy(daemon)
    terminal.run(top_command(daemon))
    screen = terminal.wait_for(r"^  FAILED ", "the failures table")
    screen = terminal.wait_for(r"^  email +0 +1 +1 +1 +- .* no$", "email: 1 pending, 1 running, not paused")
    assert screen[0].startswith(f"jobd {get(daemon, '/v1/health')['version']} at {daemon.socket}")
    assert screen[1] == "store ok  workers 3 of 4 busy  refresh 200ms"
    assert screen[3] == "  QUEUE          SCHED   PEND  RUN CONC GLOB DONE/s FAIL/s RETRY/s OLDEST PAUSED"
    assert any(re.match(r"^> default +0 +0 +2 +4 +- ", line) for line in screen), screen
    failure = f"  {jobs['failed']['id'][-8:]} jobd.sleep "
    assert any(line.startswith(failure) and "timed out" in line for line in screen), screen
    assert screen[-1] == "up/down select  p pause/resume queue  c cancel job  q quit"
    assert len(screen) == 24 and all(len(line) <= 80 for line in screen)

    # p pauses the selected queue, for the daemon and on the screen.
    terminal.press("Down", "p")
    terminal.wait_for(r"^> email .* yes$", "email paused on the screen")
    assert get(daemon, "/v1/stats")["queues"]["email"]["paused"] is True
    (tmp_path / "top.txt").write_text("\n".join(terminal.screen()) + "\n")  # for docs/operations.md
    terminal.press("p")
    terminal.wait_for(r"^> email .* no$", "email resumed")
    assert get(daemon, "/v1/stats")["queues"]["email"]["paused"] is False

    # c asks; y cancels the selected job: the longest running, first of the running table.
    queues = len(get(daemon, "/v1/stats")["queues"])  # default, email and the test plugin's own
    terminal.press(*["Down"] * (queues - 1), "c")
    screen = terminal.wait_for(r"^cancel job \w{8} \(jobd\.sleep in default\)\? y: yes", "the question")
    short = screen[-1].split()[2]
    [chosen] = [job["id"] for job in jobs["running"] if job["id"].endswith(short)]
    assert chosen == jobs["running"][0]["id"]
    terminal.press("y")
    wait_until(lambda: get(daemon, f"/v1/jobs/{chosen}")["state"] == "cancelled", what="the job cancelled")
    terminal.wait_for(rf"^job {short}: cancel requested", "the answer")
    assert get(daemon, f"/v1/jobs/{jobs['running'][1]['id']}")["state"] == "running"

    terminal.press("q")
    assert_restored(terminal, 0)


def test_top_says_when_the_daemon_is_unreachable_and_comes_back_with_it(
    start_daemon: StartDaemon, terminal: Terminal
) -> None:
    daemon = start_daemon(config=CONFIG)
    terminal.run(f"TERM=nonesuch {top_command(daemon)}")
    terminal.wait_for(r"^jobd-ctl: cannot drive this terminal \(TERM='nonesuch'\)", "the complaint")
    assert_restored(terminal, 2)
    terminal.run(f"clear; {top_command(daemon)}")
    terminal.wait_for(r"^store ok  workers 0 of 4 busy", "the first answer")
    daemon.kill()
    screen = terminal.wait_for(r"^DAEMON UNREACHABLE: ", "the daemon gone")
    assert re.match(r"^retrying every 200ms; below: its answer of \d\d:\d\d:\d\dZ$", screen[2]), screen
    assert any(line.startswith("  default ") or line.startswith("> default ") for line in screen)
    daemon.start()
    screen = terminal.wait_for(r"^store ok  workers 0 of 4 busy", "the daemon back")
    assert not any("UNREACHABLE" in line for line in screen)
    terminal.press("C-c")
    assert_restored(terminal, 130)


def test_top_once_prints_one_plain_snapshot(
    start_daemon: StartDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    daemon = start_daemon(config=CONFIG)
    jobs = busy(daemon)
    done = daemon.ctl("top")  # standard output is a pipe: one snapshot, as with --once
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[1] == "store ok  workers 3 of 4 busy"
    assert any(re.match(r"^  default +0 +0 +2 +4 +- ", line) for line in lines), lines
    assert sum(" jobd.sleep " in line for line in lines) == 4  # three running, one failed
    assert not any(line.startswith(">") for line in lines) and "\x1b" not in done.stdout

    assert main(["--socket", daemon.socket, "top", "--once"]) == 0
    assert capsys.readouterr().out.splitlines()[3] == lines[3]
    assert main(["--socket", daemon.socket, "--json", "top"]) == 0
    answers = json.loads(capsys.readouterr().out)
    assert set(answers) == {"health", "stats", "running", "failed"}
    assert {job["id"] for job in answers["running"]} >= {job["id"] for job in jobs["running"]}
    assert [job["id"] for job in answers["failed"]] == [jobs["failed"]["id"]]
    assert answers["stats"]["queues"]["email"]["oldest_pending_age"] > 0
    assert main(["--socket", daemon.socket, "top", "--interval", "10ms"]) == 2
    assert "--interval: must be at least 100ms" in capsys.readouterr().err

    daemon.kill()
    assert main(["--socket", daemon.socket, "top", "--once"]) == 3
    assert "cannot reach jobd" in capsys.readouterr().err
