"""jobd-shell against real processes: output, exit codes, limits, and killing whole process groups."""

from __future__ import annotations

import json
import sys
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jobd_shell
import pytest
import trio
from jobd_shell import Settings

from jobd.errors import ConfigError, InvalidJob
from jobd.job import JobState
from jobd.testing import (
    Outcome,
    OutcomeKind,
    configure_plugin,
    plugin_settings,
    run_handler,
    validate_payload,
)

DEADLINE = 30.0  # generous: the machine is shared and slow under load
DEFAULTS = Settings()  # [plugins.shell] left out


def configured(**table: Any) -> Settings:
    """The settings `[plugins.shell]` with these keys gives, read as the daemon reads them."""
    settings: Settings = plugin_settings(jobd_shell, table)
    return settings


async def run(payload: Any, settings: Settings = DEFAULTS, **options: Any) -> Outcome:
    return await run_handler(jobd_shell.run, payload, settings=settings, **options)


def validate(payload: Any, settings: Settings = DEFAULTS) -> None:
    validate_payload(jobd_shell.run, payload, settings=settings)


async def wait_until(condition: Callable[[], bool], what: str) -> None:
    with trio.move_on_after(DEADLINE):
        while not condition():  # noqa: ASYNC110 - the condition is another process's doing
            await trio.sleep(0.02)
        return
    raise AssertionError(f"gave up waiting for {what} after {DEADLINE}s")


def gone(pid: int) -> bool:
    """True when `pid` has exited (a zombie waiting for its reaper counts as exited)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def pids_in(path: Path) -> list[int]:
    return [int(line) for line in path.read_text().split()]


async def test_runs_a_command_and_returns_its_output() -> None:
    outcome = await run({"argv": ["echo", "hello", "world"]})
    assert outcome.kind is OutcomeKind.COMPLETED, outcome.reason
    assert outcome.result["exit_code"] == 0
    assert outcome.result["stdout"] == "hello world\n"
    assert outcome.result["stderr"] == ""
    assert outcome.result["truncated"] is False
    assert 0 <= outcome.result["duration"] < DEADLINE


async def test_stdin_env_and_cwd_reach_the_process(tmp_path: Path) -> None:
    script = "import os, sys; print(sys.stdin.read().upper(), os.environ['GREETING'], os.getcwd())"
    payload = {
        "argv": [sys.executable, "-c", script],
        "stdin": "from stdin",
        "env": {"GREETING": "hi"},
        "cwd": str(tmp_path),
    }
    outcome = await run(payload)
    assert outcome.result["stdout"] == f"FROM STDIN hi {tmp_path}\n"


async def test_argv_is_not_interpreted_by_a_shell() -> None:
    outcome = await run({"argv": ["echo", "$HOME; false", "*"]})
    assert outcome.result["stdout"] == "$HOME; false *\n"


async def test_shell_true_runs_argv0_through_sh_with_the_rest_as_positional_parameters() -> None:
    payload = {"argv": ['echo "$1-$2" | tr a-z A-Z', "one", "two"], "shell": True}
    outcome = await run(payload)
    assert outcome.result["stdout"] == "ONE-TWO\n"


async def test_a_non_zero_exit_is_a_failed_attempt_quoting_the_exit_code_and_stderr() -> None:
    payload = {"argv": ["sh", "-c", "echo noise; echo 'disk full' >&2; exit 3"]}
    first = await run(payload, attempt=1, max_attempts=2)
    assert first.kind is OutcomeKind.RETRY
    assert "exited with code 3" in first.reason and "disk full" in first.reason
    assert first.delay is None and first.state is JobState.SCHEDULED
    last = await run(payload, attempt=2, max_attempts=2)
    assert last.state is JobState.FAILED


async def test_a_process_killed_by_a_signal_says_which() -> None:
    outcome = await run({"argv": ["sh", "-c", "kill -KILL $$"]})
    assert outcome.kind is OutcomeKind.RETRY
    assert "killed by SIGKILL" in outcome.reason


async def test_megabytes_of_output_are_truncated_without_being_held_in_memory() -> None:
    settings = configured(max_output_bytes=1000)
    script = "import sys\nfor _ in range(320): sys.stdout.write('x' * 65536); sys.stderr.write('y' * 65536)"
    tracemalloc.start()
    try:
        outcome = await run({"argv": [sys.executable, "-c", script]}, settings)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert outcome.kind is OutcomeKind.COMPLETED, outcome.reason
    assert outcome.result["stdout"] == "x" * 1000
    assert outcome.result["stderr"] == "y" * 1000
    assert outcome.result["truncated"] is True
    assert peak < 4 * 1024 * 1024, f"peak {peak} bytes while 40 MiB went through"


async def test_a_missing_program_fails_at_once() -> None:
    outcome = await run({"argv": ["no-such-command-for-jobd"]})
    assert outcome.kind is OutcomeKind.FAILED
    assert "not found on the daemon's PATH" in outcome.reason


async def test_a_missing_working_directory_fails_at_once(tmp_path: Path) -> None:
    outcome = await run({"argv": ["true"], "cwd": str(tmp_path / "nowhere")})
    assert outcome.kind is OutcomeKind.FAILED
    assert "cannot run 'true'" in outcome.reason


async def test_the_payload_timeout_kills_the_process_and_asks_for_a_retry(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    payload = {"argv": ['echo $$ > "$1"; exec sleep 600', str(pid_file)], "shell": True, "timeout": 0.5}
    outcome = await run(payload)
    assert outcome.kind is OutcomeKind.RETRY
    assert "timed out after 0.5s" in outcome.reason
    assert gone(pids_in(pid_file)[0])


async def test_the_job_timeout_kills_the_process(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    payload = {"argv": ['echo $$ > "$1"; exec sleep 600', str(pid_file)], "shell": True}
    outcome = await run(payload, timeout=0.5)
    assert outcome.kind is OutcomeKind.TIMED_OUT
    assert gone(pids_in(pid_file)[0])


async def test_cancelling_a_job_terminates_a_cooperative_process_without_waiting_for_the_grace(
    tmp_path: Path,
) -> None:
    settings = configured(kill_grace="60s")
    pid_file = tmp_path / "pid"
    payload = {"argv": ['echo $$ > "$1"; exec sleep 600', str(pid_file)], "shell": True}
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run, payload, settings)
        await wait_until(lambda: pid_file.exists() and pid_file.read_text().endswith("\n"), "the pid file")
        started = trio.current_time()
        nursery.cancel_scope.cancel()
    assert trio.current_time() - started < 30
    assert gone(pids_in(pid_file)[0])


# The shell and its background child both ignore SIGTERM (an ignored signal stays ignored across exec).
STUBBORN = """trap '' TERM; sleep 600 & echo $! > "$1"; echo $$ >> "$1"; touch "$2"; wait"""


async def test_a_cancelled_job_kills_children_ignoring_sigterm_after_half_a_second_not_kill_grace(
    tmp_path: Path,
) -> None:
    settings = configured(kill_grace="60s")
    pid_file, ready = tmp_path / "pids", tmp_path / "ready"
    payload = {"argv": [STUBBORN, str(pid_file), str(ready)], "shell": True}
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run, payload, settings)
        await wait_until(ready.exists, "the child to be ready")
        started = trio.current_time()
        nursery.cancel_scope.cancel()
    waited = trio.current_time() - started
    pids = pids_in(pid_file)
    assert len(pids) == 2
    # SIGTERM first, SIGKILL 0.5 s later; the contract's second leaves room, a loaded machine less so.
    assert 0.5 <= waited < 5, f"the handler took {waited:.2f}s to end after the job was cancelled"
    # SIGKILL is sent to the whole group; the orphaned child dies a moment later.
    await wait_until(lambda: all(gone(pid) for pid in pids), "both processes to be gone")


async def test_the_payload_timeout_gives_children_ignoring_sigterm_the_full_grace(tmp_path: Path) -> None:
    settings = configured(kill_grace="1500ms")
    pid_file, ready = tmp_path / "pids", tmp_path / "ready"
    payload = {"argv": [STUBBORN, str(pid_file), str(ready)], "shell": True, "timeout": 0.2}
    started = trio.current_time()
    outcome = await run(payload, settings)
    waited = trio.current_time() - started
    assert outcome.kind is OutcomeKind.RETRY
    assert "timed out after 0.2s" in outcome.reason
    assert waited >= 1.7, "SIGKILL came before kill_grace ended"
    pids = pids_in(pid_file)
    await wait_until(lambda: all(gone(pid) for pid in pids), "both processes to be gone")


async def test_cancelling_while_a_timed_out_command_has_its_grace_ends_it_promptly(tmp_path: Path) -> None:
    settings = configured(kill_grace="60s")
    pid_file, ready = tmp_path / "pids", tmp_path / "ready"
    payload = {"argv": [STUBBORN, str(pid_file), str(ready)], "shell": True, "timeout": 0.2}
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run, payload, settings)
        await wait_until(ready.exists, "the child to be ready")
        await trio.sleep(0.5)  # past the payload's timeout: SIGTERM sent, 60 s of grace begun
        started = trio.current_time()
        nursery.cancel_scope.cancel()
    assert trio.current_time() - started < 5
    pids = pids_in(pid_file)
    await wait_until(lambda: all(gone(pid) for pid in pids), "both processes to be gone")


async def test_the_daemons_secrets_and_systemd_plumbing_are_not_inherited(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    private = {"JOBD_SMTP_PASSWORD", "JOBD_ANYTHING", "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"}
    private |= {"LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"}
    for name in private:
        monkeypatch.setenv(name, "daemon-only")
    monkeypatch.setenv("KEEP_ME", "inherited")
    script = "import json, os; print(json.dumps(dict(os.environ)))"
    payload = {"argv": [sys.executable, "-c", script], "env": {"JOBD_GIVEN": "by the job", "LISTEN_FDS": "9"}}
    outcome = await run(payload)
    seen = json.loads(outcome.result["stdout"])
    assert not (private - {"LISTEN_FDS"}) & seen.keys(), seen
    assert seen["KEEP_ME"] == "inherited"
    assert seen["JOBD_GIVEN"] == "by the job" and seen["LISTEN_FDS"] == "9"  # the payload's env still applies


async def test_optional_fields_given_as_null_count_as_absent() -> None:
    payload = {"argv": ["cat"], "stdin": None, "env": None, "timeout": None, "cwd": None}
    outcome = await run(payload)
    assert outcome.kind is OutcomeKind.COMPLETED, outcome.reason
    assert outcome.result["stdout"] == ""


async def test_a_signal_without_a_name_is_reported_by_its_number() -> None:
    script = "import os; os.kill(os.getpid(), 40)"  # a realtime signal: signal.Signals(40) has no member
    outcome = await run({"argv": [sys.executable, "-c", script]})
    assert outcome.kind is OutcomeKind.RETRY, outcome.reason
    assert "killed by signal 40" in outcome.reason


async def test_processes_left_behind_by_a_finished_command_are_ended(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    payload = {"argv": ['sleep 600 & echo $! > "$1"; echo started', str(pid_file)], "shell": True}
    outcome = await run(payload, timeout=DEADLINE)
    assert outcome.kind is OutcomeKind.COMPLETED, outcome.reason
    assert outcome.result["stdout"] == "started\n"
    await wait_until(lambda: gone(pids_in(pid_file)[0]), "the background child to be gone")


async def test_the_allow_list_refuses_other_commands_at_submit() -> None:
    settings = configured(allowed_commands=["echo", "/usr/bin/env"])
    validate({"argv": ["echo", "ok"]}, settings)
    validate({"argv": ["/usr/bin/env"]}, settings)
    for argv in (["ls"], ["/bin/echo"], ["env"]):
        with pytest.raises(InvalidJob, match=r"not in \[plugins.shell\] allowed_commands") as refused:
            validate({"argv": argv}, settings)
        assert refused.value.field == "payload.argv"
    with pytest.raises(InvalidJob) as refused:
        validate({"argv": ["echo hi"], "shell": True}, settings)
    assert refused.value.field == "payload.argv"
    with pytest.raises(InvalidJob) as refused:
        validate({"argv": ["echo"], "env": {"LD_PRELOAD": "/tmp/x.so"}}, settings)
    assert refused.value.field == "payload.env"


async def test_the_shell_is_allowed_only_when_the_list_names_it() -> None:
    settings = configured(allowed_commands=["/bin/sh"])
    outcome = await run({"argv": ["echo via sh"], "shell": True}, settings)
    assert outcome.result["stdout"] == "via sh\n"


async def test_a_job_submitted_before_the_list_shrank_fails_when_it_runs() -> None:
    payload = {"argv": ["echo", "hi"]}
    validate(payload)
    outcome = await run(payload, configured(allowed_commands=["true"]), validate=False)
    assert outcome.kind is OutcomeKind.FAILED
    assert "allowed_commands" in outcome.reason


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        (["echo"], "payload"),
        ({}, "payload.argv"),
        ({"argv": []}, "payload.argv"),
        ({"argv": "echo hi"}, "payload.argv"),
        ({"argv": ["echo", 1]}, "payload.argv"),
        ({"argv": [""]}, "payload.argv"),
        ({"argv": ["echo"], "cwd": "relative/dir"}, "payload.cwd"),
        ({"argv": ["echo"], "env": {"A": 1}}, "payload.env"),
        ({"argv": ["echo"], "env": ["A=1"]}, "payload.env"),
        ({"argv": ["echo"], "stdin": 5}, "payload.stdin"),
        ({"argv": ["echo"], "timeout": 0}, "payload.timeout"),
        ({"argv": ["echo"], "timeout": "5s"}, "payload.timeout"),
        ({"argv": ["echo"], "shell": "yes"}, "payload.shell"),
        ({"argv": ["echo"], "args": []}, "payload.args"),
    ],
)
def test_bad_payloads_are_refused_naming_the_field(payload: Any, field: str) -> None:
    with pytest.raises(InvalidJob) as refused:
        validate(payload)
    assert refused.value.field == field


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ({"allowed_comands": []}, "plugins.shell.allowed_comands"),
        ({"allowed_commands": "echo"}, "plugins.shell.allowed_commands"),
        ({"allowed_commands": ["bin/echo"]}, "plugins.shell.allowed_commands"),
        ({"allowed_commands": [""]}, "plugins.shell.allowed_commands"),
        ({"max_output_bytes": -1}, "plugins.shell.max_output_bytes"),
        ({"max_output_bytes": "1MB"}, "plugins.shell.max_output_bytes"),
        ({"kill_grace": "soon"}, "plugins.shell.kill_grace"),
    ],
)
def test_a_bad_config_table_is_refused_naming_the_key(table: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as refused:
        configure_plugin(jobd_shell, table)
    assert refused.value.key == key


def test_a_good_table_becomes_the_settings() -> None:
    table = {"allowed_commands": ["echo", "/bin/sh"], "max_output_bytes": 0, "kill_grace": "1500ms"}
    assert configured(**table) == Settings(("echo", "/bin/sh"), 0, 1.5)
    assert configured() == Settings()


def test_the_plugin_registers_shell_run_under_its_entry_point_name() -> None:
    registry = configure_plugin(jobd_shell, {"kill_grace": 1})
    handler = registry.get("shell.run")
    assert handler is not None
    assert handler.plugin == "jobd-shell"
    assert handler.settings == registry.settings["shell"] == Settings(kill_grace=1.0)
