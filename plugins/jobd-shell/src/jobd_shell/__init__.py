"""jobd-shell: the `shell.run` job type runs a command as a child process.

The command runs without a shell (argv is executed as given) in a process group of
its own, so that cancelling the job or reaching a timeout ends the command and every
process it started: SIGTERM to the group, then SIGKILL after a grace period (`kill_grace`
when the payload's own `timeout` runs out, at most `CANCEL_GRACE` when the job itself is
cancelled, so the worker can record that within the contract's second). Output is
captured up to `max_output_bytes` per stream; the rest is read and thrown away so a
chatty command can neither block on a full pipe nor fill the daemon's memory.
The daemon's own plumbing (`JOBD_*`, systemd's notify, watchdog and socket variables)
is removed from the environment the command inherits.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

import trio

import jobd

__all__ = ["Settings", "jobd_configure", "jobd_handlers", "run", "validate"]

SHELL = "/bin/sh"
PAYLOAD_KEYS = frozenset({"argv", "cwd", "env", "stdin", "timeout", "shell"})
STDERR_TAIL = 500  # characters of stderr quoted in a failed attempt's reason
GROUP_POLL = 0.05  # seconds between checks that a terminated process group is gone
CANCEL_GRACE = 0.5  # longest wait between SIGTERM and SIGKILL when the job is cancelled
# Variables meant for the daemon alone: secrets (JOBD_*) and systemd's handles on it.
PRIVATE_PREFIX = "JOBD_"
PRIVATE_VARIABLES = frozenset(
    {"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"}
)


@dataclass(frozen=True, slots=True)
class Settings:
    """`[plugins.shell]`: each field is a key, with its default."""

    allowed_commands: tuple[str, ...] = ()  # empty: any command may run
    max_output_bytes: int = jobd.setting(65_536, minimum=0)  # per stream (stdout, stderr)
    kill_grace: float = jobd.setting(5.0, duration=True)  # between SIGTERM and SIGKILL

    def allows(self, program: str) -> bool:
        return not self.allowed_commands or program in self.allowed_commands


@jobd.hookimpl
def jobd_configure(config: Mapping[str, Any]) -> Settings:
    settings = jobd.parse_settings(Settings, config)
    for index, command in enumerate(settings.allowed_commands):
        if not command or ("/" in command and not command.startswith("/")):
            raise jobd.ConfigError(
                f"item {index} ({command!r}) must be a command name such as 'rsync' or an absolute path",
                key="allowed_commands",
            )
    return settings


def validate(payload: Any, settings: Settings) -> None:
    """Refuse a `shell.run` payload at submit, naming the field at fault."""
    if not isinstance(payload, dict):
        raise jobd.InvalidJob('payload must be an object such as {"argv": ["echo", "hi"]}', field="payload")
    unknown = sorted(set(payload) - PAYLOAD_KEYS)
    if unknown:
        known = ", ".join(sorted(PAYLOAD_KEYS))
        raise jobd.InvalidJob(f"unknown field (known: {known})", field=f"payload.{unknown[0]}")
    argv = payload.get("argv")
    if not isinstance(argv, list) or not argv or not all(isinstance(item, str) for item in argv):
        raise jobd.InvalidJob("must be a non-empty list of strings", field="payload.argv")
    if any("\0" in item for item in argv) or not argv[0]:
        raise jobd.InvalidJob("must not hold NUL characters or an empty program", field="payload.argv")
    use_shell = payload.get("shell", False)
    if not isinstance(use_shell, bool):
        raise jobd.InvalidJob("must be true or false", field="payload.shell")
    program = _program(argv, use_shell)
    if not settings.allows(program):
        raise jobd.InvalidJob(f"{program!r} is not in [plugins.shell] allowed_commands", field="payload.argv")
    cwd = payload.get("cwd")
    if cwd is not None and (not isinstance(cwd, str) or not cwd.startswith("/") or "\0" in cwd):
        raise jobd.InvalidJob("must be an absolute path", field="payload.cwd")
    env = payload.get("env")
    if env is not None:
        _validate_env(env, settings)
    stdin = payload.get("stdin")
    if stdin is not None and not isinstance(stdin, str):
        raise jobd.InvalidJob("must be a string", field="payload.stdin")
    timeout = payload.get("timeout")
    if timeout is not None and not _positive_number(timeout):
        raise jobd.InvalidJob("must be a number of seconds > 0", field="payload.timeout")


def _validate_env(env: Any, settings: Settings) -> None:
    if not isinstance(env, dict):
        raise jobd.InvalidJob("must be an object of strings", field="payload.env")
    for name, value in env.items():
        if not name or "=" in name or "\0" in name or not isinstance(value, str) or "\0" in value:
            raise jobd.InvalidJob(f"{name!r} must be a name with a string value", field="payload.env")
        # With an allow-list, the loader's variables would let a payload run code of its choosing.
        if settings.allowed_commands and name.startswith("LD_"):
            raise jobd.InvalidJob(f"{name} may not be set under allowed_commands", field="payload.env")


def _positive_number(value: Any) -> bool:
    is_number = isinstance(value, int | float) and not isinstance(value, bool)
    return is_number and math.isfinite(value) and value > 0


def _program(argv: list[str], use_shell: bool) -> str:
    """What the allow-list is checked against: argv[0], or the shell itself."""
    return SHELL if use_shell else argv[0]


@jobd.handler("shell.run", validate=validate)
async def run(job: jobd.JobContext) -> dict[str, Any]:
    """Run `payload.argv`; a non-zero exit is a failed attempt, retried like any other."""
    settings: Settings = job.settings
    payload = job.payload
    argv: list[str] = payload["argv"]
    use_shell: bool = payload.get("shell", False)
    program = _program(argv, use_shell)
    if not settings.allows(program):  # the allow-list may have shrunk since the job was submitted
        raise jobd.Fail(f"{program!r} is not in [plugins.shell] allowed_commands")
    command = [SHELL, "-c", argv[0], "sh", *argv[1:]] if use_shell else argv
    executable = _executable(command[0])
    # An optional field given as null counts as absent.
    env = {**_inherited_environment(), **(payload.get("env") or {})}
    stdin = (payload.get("stdin") or "").encode()
    timeout = payload.get("timeout") or math.inf
    process = _Process(command, executable, payload.get("cwd"), env, stdin, timeout)

    started = trio.current_time()
    stdout, stderr = _Capture(settings.max_output_bytes), _Capture(settings.max_output_bytes)
    try:
        exit_code = await _run_process(process, stdout, stderr, settings.kill_grace)
    except* OSError as errors:  # the program could not be started: missing, not executable, bad cwd
        error = errors.exceptions[0]
        reason = error.strerror if isinstance(error, OSError) and error.strerror else error
        raise jobd.Fail(f"cannot run {command[0]!r}: {reason}") from None
    duration = round(trio.current_time() - started, 3)
    if exit_code is None:
        raise jobd.Retry(reason=f"{program} timed out after {timeout:g}s and was killed")
    if exit_code != 0:
        tail = stderr.text()[-STDERR_TAIL:].strip()
        raise jobd.Retry(reason=f"{_describe_exit(program, exit_code)}; stderr: {tail}")
    return {
        "exit_code": exit_code,
        "stdout": stdout.text(),
        "stderr": stderr.text(),
        "truncated": stdout.truncated or stderr.truncated,
        "duration": duration,
    }


@jobd.hookimpl
def jobd_handlers() -> list[jobd.Handler]:
    return [run]


def _executable(program: str) -> str:
    """The file to execute: a bare name is looked up on the daemon's PATH, never the payload's."""
    if "/" in program:
        return program
    found = shutil.which(program)
    if found is None:
        raise jobd.Fail(f"command {program!r} not found on the daemon's PATH")
    return found


def _inherited_environment() -> dict[str, str]:
    """The daemon's environment without what is meant for the daemon alone."""
    return {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(PRIVATE_PREFIX) and name not in PRIVATE_VARIABLES
    }


def _describe_exit(program: str, exit_code: int) -> str:
    if exit_code < 0:
        return f"{program} was killed by {_signal_name(-exit_code)}"
    return f"{program} exited with code {exit_code}"


def _signal_name(number: int) -> str:
    """SIGTERM, SIGKILL, …; a signal Python has no name for (a realtime one) by its number."""
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


@dataclass(frozen=True, slots=True)
class _Process:
    """What to start: the command line, where and with what, and its own time limit."""

    command: list[str]
    executable: str
    cwd: str | None
    env: dict[str, str]
    stdin: bytes
    timeout: float  # seconds; math.inf for none


class _Capture:
    """Keeps the first `limit` bytes of a stream and counts what it throws away."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.data = bytearray()
        self.truncated = False

    async def drain(self, stream: trio.abc.ReceiveStream) -> None:
        async with stream:
            async for chunk in stream:
                room = self.limit - len(self.data)
                if len(chunk) > room:
                    self.truncated = True
                self.data += chunk[: max(room, 0)]

    def text(self) -> str:
        return self.data.decode("utf-8", errors="replace")


class _Group:
    """The child's process group: terminated once, killed when the grace period asked for is over."""

    def __init__(self) -> None:
        self.pgid: int | None = None  # the child's pid, which leads its own group
        self.terminated_at: float | None = None

    def _signal(self, signum: int) -> bool:
        """Send `signum` to the group; False when no process is left in it."""
        assert self.pgid is not None
        try:
            os.killpg(self.pgid, signum)
        except ProcessLookupError:
            return False
        return True

    async def end(self, grace: float) -> None:
        """SIGTERM the group (once), wait until `grace` after that for it to empty, then SIGKILL what is left.

        A shorter grace asked for later (the job cancelled while a timed-out command was
        being given its full grace) cuts the wait short.
        """
        if self.pgid is None:
            return
        if self.terminated_at is None:
            self.terminated_at = trio.current_time()
            if not self._signal(signal.SIGTERM):
                return
        kill_at = self.terminated_at + grace
        while trio.current_time() < kill_at:
            if not self._signal(0):
                return
            await trio.sleep(GROUP_POLL)
        self._signal(signal.SIGKILL)


async def _run_process(process: _Process, stdout: _Capture, stderr: _Capture, grace: float) -> int | None:
    """Run the command to its end in its own session; its exit code, or None when its timeout ran out.

    No process of its group survives this call. Cancelled (the job cancelled, timed out,
    or the daemon stopping), the group gets at most `CANCEL_GRACE` before SIGKILL, so the
    handler ends promptly; the command's own timeout gives it the whole `grace`.
    """
    group = _Group()
    cancel_grace = min(grace, CANCEL_GRACE)

    async def deliver_cancel(child: trio.Process) -> None:
        group.pgid = child.pid
        await group.end(cancel_grace)

    try:
        async with trio.open_nursery() as nursery:
            child: trio.Process = await nursery.start(
                partial(
                    trio.run_process,
                    process.command,
                    executable=process.executable,
                    cwd=process.cwd,
                    env=process.env,
                    stdin=process.stdin,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    check=False,
                    start_new_session=True,  # its own session, hence its own process group
                    deliver_cancel=deliver_cancel,
                )
            )
            group.pgid = child.pid
            assert child.stdout is not None and child.stderr is not None
            async with trio.open_nursery() as readers:
                readers.start_soon(stdout.drain, child.stdout)
                readers.start_soon(stderr.drain, child.stderr)
                with trio.move_on_after(process.timeout) as deadline:
                    await child.wait()
                # The command is done or out of time. Whatever is left of its group goes too,
                # else a background child holding the pipes would keep the job running.
                await group.end(grace)
                await child.wait()
                readers.cancel_scope.deadline = trio.current_time() + grace
        assert child.returncode is not None
        return None if deadline.cancelled_caught else child.returncode
    finally:
        with trio.CancelScope(shield=True):
            await group.end(cancel_grace)
