"""`jobd-ctl`: the control client's command line, over `jobd.client.Client`.

Exit status: 0 ok; 1 the daemon said no, or a waited job did not complete; 2 usage (bad
arguments, payload JSON, duration, or an unreadable config when looking for the socket);
3 the daemon cannot be reached; 130 interrupted.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from jobd import top
from jobd.client import DEFAULT_TIMEOUT, Client, JobPage, os_errno
from jobd.durations import format_duration, parse_duration
from jobd.errors import ApiError, ConfigError, DaemonUnreachable
from jobd.job import JSON, Job, JobState
from jobd.schedules import ScheduleStatus
from jobd.version import __version__

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_INTERRUPTED = 130
MIN_INTERVAL = 0.1  # `top` refreshing faster would load the daemon for no one's eyes

Command = Callable[[argparse.Namespace], int]


class UsageError(Exception):
    """A mistake in the invocation found after argument parsing (exit status 2)."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:  # argparse's --help, --version and usage errors
        return stop.code if isinstance(stop.code, int) else EXIT_OK if stop.code is None else EXIT_USAGE
    command: Command = args.command
    try:
        return command(args)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # the reader went away (`| head`): no traceback at exit either
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except UsageError as error:
        _complain(str(error))
        return EXIT_USAGE
    except DaemonUnreachable as error:
        _complain(f"{error.message}\n{_unreachable_hint(error)}")
        return EXIT_UNREACHABLE
    except ApiError as error:
        _complain(f"{error.message} ({error.code})")
        return EXIT_ERROR


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jobd-ctl",
        description="Control a running jobd daemon through its Unix socket.",
        epilog=(
            "Global options come before the command: jobd-ctl --json list.\n"
            "The socket is --socket, else $JOBD_SOCKET, else the one jobd's config names.\n"
            "Exit status: 0 ok; 1 the daemon refused, or a waited job failed or was cancelled;\n"
            "2 usage error; 3 the daemon cannot be reached."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--socket", metavar="PATH", help="the daemon's control socket")
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")
    parser.add_argument("--version", action="version", version=f"jobd-ctl {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)

    submit = _command(commands, "submit", _submit, "submit a job")
    submit.add_argument("type", metavar="TYPE", help="the job type, e.g. jobd.noop")
    submit.add_argument(
        "payload",
        metavar="PAYLOAD_JSON",
        nargs="?",
        help="the payload as JSON, or - to read it from standard input (default: null)",
    )
    submit.add_argument("--queue", metavar="Q")
    submit.add_argument("--priority", metavar="N", type=int, help="higher runs first (default 0)")
    when = submit.add_mutually_exclusive_group()
    when.add_argument("--delay", metavar="DUR", type=_duration, help="run after DUR, e.g. 30s, 1h30m")
    when.add_argument("--at", metavar="TIME", type=_time, help="run at an RFC 3339 time")
    submit.add_argument("--max-attempts", metavar="N", type=int)
    submit.add_argument("--timeout", metavar="DUR", type=_duration, help="per-attempt time limit")
    submit.add_argument("--key", metavar="KEY", help="idempotency key")
    submit.add_argument(
        "--unique-for",
        metavar="DUR",
        type=_duration,
        help="with --key: return any job made with that key within DUR, in any state",
    )
    submit.add_argument(
        "--after",
        metavar="ID",
        type=_job_id,
        action="append",
        default=[],
        help="wait for job ID to complete first (repeat for several)",
    )
    submit.add_argument(
        "--on-parent-failure",
        choices=["cancel", "run"],
        help="when a job named by --after fails or is cancelled: cancel this one (default) or run it",
    )
    submit.add_argument(
        "--wait",
        action="store_true",
        help="wait for the job to finish; exit 0 if it completed, 1 if it failed or was cancelled",
    )

    show = _command(commands, "show", _show, "show a job")
    show.add_argument("id", metavar="ID", type=_job_id)

    listing = _command(commands, "list", _list, "list jobs, newest first")
    listing.add_argument("--state", metavar="S", choices=[state.value for state in JobState])
    listing.add_argument("--type", metavar="T")
    listing.add_argument("--queue", metavar="Q")
    listing.add_argument("--limit", metavar="N", type=int, help="at most N jobs, 1-1000 (default 100)")
    listing.add_argument("--after", metavar="CURSOR", help="continue a listing where it stopped")

    cancel = _command(commands, "cancel", _cancel, "cancel a waiting or running job")
    cancel.add_argument("id", metavar="ID", type=_job_id)
    retry = _command(commands, "retry", _retry, "run a failed or cancelled job again")
    retry.add_argument("id", metavar="ID", type=_job_id)

    wait = _command(
        commands,
        "wait",
        _wait,
        "wait for a job to finish",
        epilog=(
            "Prints the job once it is finished. Exit status: 0 if it completed; 1 if it\n"
            "failed or was cancelled, or if --timeout ran out first (the job is then\n"
            "printed as it stands, still unfinished)."
        ),
    )
    wait.add_argument("id", metavar="ID", type=_job_id)
    wait.add_argument("--timeout", metavar="DUR", type=_duration, help="give up after DUR (default: never)")

    _command(commands, "stats", _stats, "show per-queue counts and the workers' load")
    _command(commands, "handlers", _handlers, "list the job types the daemon handles")
    _command(commands, "health", _health, "check the daemon and its store (exit 1 when degraded)")
    pause = _command(commands, "pause", _pause, "stop starting jobs of a queue (they are still accepted)")
    pause.add_argument("queue", metavar="QUEUE")
    resume = _command(commands, "resume", _resume, "start jobs of a paused queue again")
    resume.add_argument("queue", metavar="QUEUE")

    watch = _command(
        commands,
        "top",
        _top,
        "watch the queues, the running jobs and the latest failures, live",
        epilog=(
            "Per queue: jobs scheduled, pending and running; its concurrency here and its\n"
            "global limit; jobs completed, failed and retried per second over the last 10 s;\n"
            "how long the oldest pending job has waited; whether it is paused.\n"
            "Keys: up/down select a queue or a running job; p pauses or resumes the selected\n"
            "queue; c cancels the selected job (y confirms); q quits.\n"
            "With --once, --json, or when standard output is not a terminal, it prints one\n"
            "snapshot and exits."
        ),
    )
    watch.add_argument(
        "--interval",
        metavar="DUR",
        type=_interval,
        default=1.0,
        help="refresh every DUR (default 1s, at least 100ms)",
    )
    watch.add_argument("--once", action="store_true", help="print one snapshot and exit")

    _command(commands, "schedules", _schedules, "list the schedules with their next and last run")
    schedule = _command(
        commands,
        "schedule",
        _schedule,
        "show, pause, resume or trigger a schedule",
        epilog=(
            "show: the schedule; pause: no ticks until resumed, on every daemon sharing the\n"
            "store; resume: tick again from the next tick (ticks missed while paused make no\n"
            "job); trigger: make the schedule's job now, leaving its ticks as they are."
        ),
    )
    schedule.add_argument(
        "action",
        choices=["show", "pause", "resume", "trigger"],
        metavar="ACTION",
        help="show, pause, resume or trigger",
    )
    schedule.add_argument("name", metavar="NAME")
    return parser


def _command(
    commands: Any, name: str, run: Command, summary: str, epilog: str | None = None
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = commands.add_parser(
        name,
        help=summary,
        description=summary[0].upper() + summary[1:] + ".",
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(command=run)
    return parser


# -- argument types -----------------------------------------------------------------------


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _interval(text: str) -> float:
    seconds = _duration(text)
    if seconds < MIN_INTERVAL:
        raise argparse.ArgumentTypeError(f"must be at least {format_duration(MIN_INTERVAL)}, got {text!r}")
    return seconds


def _time(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        value = None
    if value is None or value.tzinfo is None:
        raise argparse.ArgumentTypeError(
            f"expected an RFC 3339 time with an offset, such as 2030-01-31T09:00:00Z, got {text!r}"
        )
    return value


def _job_id(text: str) -> str:
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a job id (a UUID): {text!r}") from None


# -- commands -----------------------------------------------------------------------------


def _client(args: argparse.Namespace, timeout: float = DEFAULT_TIMEOUT) -> Client:
    try:
        return Client(args.socket, timeout=timeout)
    except ConfigError as error:
        raise UsageError(
            f"cannot tell where jobd's socket is: {error}\nPass --socket PATH or set JOBD_SOCKET."
        ) from None


def _submit(args: argparse.Namespace) -> int:
    payload = _payload(args.payload)
    with _client(args) as client:
        submitted = client.submit_result(
            args.type,
            payload,
            queue=args.queue,
            priority=args.priority,
            delay=args.delay,
            run_at=args.at,
            max_attempts=args.max_attempts,
            timeout=args.timeout,
            key=args.key,
            after=args.after,
            on_parent_failure=args.on_parent_failure,
            unique_for=args.unique_for,
        )
        job = submitted.job
        if not submitted.created:
            held = "a job made within --unique-for" if args.unique_for else "an unfinished job"
            _complain(f"{held} with key {job.key!r} exists: showing it, no new job submitted")
        if not args.wait:
            _print_job(args, job)
            return EXIT_OK
        if not args.json:
            _complain(f"submitted job {job.id}; waiting for it to finish (Ctrl-C stops waiting, not the job)")
        return _finished(args, client.wait(job.id))


def _unreachable_hint(error: DaemonUnreachable) -> str:
    if os_errno(error) == errno.EACCES:
        return (
            "Only root and members of the socket's group (api.socket_group, or jobd's own group) may use it."
        )
    return (
        "Is jobd running? Start it with `jobd run` (or `systemctl start jobd`), or point "
        "jobd-ctl at its socket with --socket PATH or $JOBD_SOCKET."
    )


def _payload(text: str | None) -> JSON:
    if text is None:
        return None
    source = "PAYLOAD_JSON"
    if text == "-":
        source = "the payload read from standard input"
        try:
            text = sys.stdin.read()
        except (OSError, UnicodeDecodeError) as error:
            raise UsageError(f"cannot read the payload from standard input: {error}") from None
    try:
        return json.loads(text)
    except ValueError as error:
        raise UsageError(f"{source} is not valid JSON: {error}") from None


def _show(args: argparse.Namespace) -> int:
    with _client(args) as client:
        _print_job(args, client.get(args.id))
    return EXIT_OK


def _list(args: argparse.Namespace) -> int:
    with _client(args) as client:
        page = client.list_page(
            state=args.state, type=args.type, queue=args.queue, limit=args.limit, after=args.after
        )
    if args.json:
        _print_json([job.to_json() for job in page.jobs])
    else:
        _print_job_table(page)
    return EXIT_OK


def _cancel(args: argparse.Namespace) -> int:
    with _client(args) as client:
        _print_job(args, client.cancel(args.id))
    return EXIT_OK


def _retry(args: argparse.Namespace) -> int:
    with _client(args) as client:
        _print_job(args, client.retry(args.id))
    return EXIT_OK


def _wait(args: argparse.Namespace) -> int:
    with _client(args) as client:
        job = client.wait(args.id, timeout=args.timeout)
    if not job.state.finished:
        _print_job(args, job)
        _complain(f"job {job.id} is still {job.state} after {format_duration(args.timeout)}")
        return EXIT_ERROR
    return _finished(args, job)


def _finished(args: argparse.Namespace, job: Job) -> int:
    """Print a finished job; its state makes the exit status."""
    _print_job(args, job)
    if job.state is JobState.COMPLETED:
        return EXIT_OK
    reason = f": {job.last_error}" if job.last_error else ""
    _complain(f"job {job.id} ended {job.state}{reason}")
    return EXIT_ERROR


def _stats(args: argparse.Namespace) -> int:
    with _client(args) as client:
        body = client.stats()
    if args.json:
        _print_json(body)
        return EXIT_OK
    queues = body.get("queues") or {}
    counts = ("waiting", "scheduled", "pending", "running", "completed", "failed", "cancelled", "concurrency")
    rows = [
        [
            name,
            *(_text(stats.get(field)) for field in counts),
            _text(stats.get("rate")),
            "yes" if stats.get("paused") else "no",
        ]
        for name, stats in sorted(queues.items())
    ]
    print(
        _table(
            ["QUEUE", *(field.upper() for field in counts), "RATE", "PAUSED"],
            rows,
            numeric=range(1, len(counts) + 1),
        )
    )
    workers = body.get("workers") or {}
    print(f"\nworkers busy: {_text(workers.get('busy'))} of {_text(workers.get('capacity'))}")
    return EXIT_OK


def _handlers(args: argparse.Namespace) -> int:
    with _client(args) as client:
        body = client.handlers()
    if args.json:
        _print_json(body)
        return EXIT_OK
    rows = [
        [
            _text(item.get("type")),
            _text(item.get("plugin")),
            _text(item.get("queue")),
            _seconds(item.get("timeout")),
            _text(item.get("max_attempts")),
        ]
        for item in sorted(body.get("handlers") or [], key=lambda item: str(item.get("type")))
    ]
    print(_table(["TYPE", "PLUGIN", "QUEUE", "TIMEOUT", "MAX_ATTEMPTS"], rows, numeric=[4]))
    return EXIT_OK


def _health(args: argparse.Namespace) -> int:
    with _client(args) as client:
        body = client.health()
    if args.json:
        _print_json(body)
    else:
        print(_block([(key, _text(value)) for key, value in body.items()]))
    return EXIT_OK if body.get("status") == "ok" else EXIT_ERROR


def _pause(args: argparse.Namespace) -> int:
    with _client(args) as client:
        _print_queue(args, client.pause(args.queue))
    return EXIT_OK


def _resume(args: argparse.Namespace) -> int:
    with _client(args) as client:
        _print_queue(args, client.resume(args.queue))
    return EXIT_OK


def _top(args: argparse.Namespace) -> int:
    with _client(args, timeout=top.REQUEST_TIMEOUT) as client:
        if args.once or args.json or not top.is_interactive():
            top.print_once(client, as_json=args.json)
        else:
            try:
                top.run_interactive(client, args.interval)
            except top.TerminalUnusable as error:
                raise UsageError(f"{error}\nUse --once for one plain snapshot.") from None
    return EXIT_OK


def _schedules(args: argparse.Namespace) -> int:
    with _client(args) as client:
        statuses = client.schedules()
    if args.json:
        _print_json({"schedules": [status.to_json() for status in statuses]})
        return EXIT_OK
    if not statuses:
        print("no schedules")
        return EXIT_OK
    rows = [
        [
            status.name,
            status.describe(),
            status.timezone,
            status.type,
            _when(status.next_run),
            _when(status.last_tick),
            _schedule_state(status),
        ]
        for status in statuses
    ]
    print(_table(["NAME", "SCHEDULE", "TIMEZONE", "TYPE", "NEXT RUN", "LAST RUN", "STATE"], rows))
    return EXIT_OK


def _schedule(args: argparse.Namespace) -> int:
    with _client(args) as client:
        if args.action == "trigger":
            _print_job(args, client.trigger_schedule(args.name))
            return EXIT_OK
        act = {"show": client.schedule, "pause": client.pause_schedule, "resume": client.resume_schedule}
        status = act[args.action](args.name)
    if args.json:
        _print_json(status.to_json())
        return EXIT_OK
    print(
        _block(
            [
                ("name", status.name),
                ("schedule", status.describe()),
                ("timezone", status.timezone),
                ("type", status.type),
                ("queue", status.queue),
                ("state", _schedule_state(status)),
                ("next_run", _when(status.next_run)),
                ("last_tick", _when(status.last_tick)),
                ("last_job_id", _text(None if status.last_job_id is None else str(status.last_job_id))),
            ]
        )
    )
    return EXIT_OK


def _schedule_state(status: ScheduleStatus) -> str:
    if not status.enabled:
        return "disabled"
    return "paused" if status.paused else "active"


# -- output -------------------------------------------------------------------------------


def _complain(message: str) -> None:
    print(f"jobd-ctl: {message}", file=sys.stderr)


def _print_json(value: JSON) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False))


def _print_job(args: argparse.Namespace, job: Job) -> None:
    if args.json:
        _print_json(job.to_json())
        return
    progress = "-"
    if job.progress is not None:
        progress = " ".join(filter(None, [f"{job.progress.fraction:.0%}", job.progress.message]))
    # Only a schedule's jobs say which tick made them.
    made_by = []
    if job.schedule is not None:
        made_by = [("schedule", job.schedule), ("scheduled_for", _when(job.scheduled_for))]
    # Only a job with parents says which, and what it does if one fails.
    if job.after:
        made_by += [
            ("after", " ".join(str(parent) for parent in job.after)),
            ("on_parent_failure", job.on_parent_failure.value),
        ]
    print(
        _block(
            [
                ("id", str(job.id)),
                ("type", job.type),
                ("queue", job.queue),
                ("state", job.state.value),
                ("priority", str(job.priority)),
                ("attempts", f"{job.attempts} of {job.max_attempts}"),
                ("timeout", _seconds(job.timeout)),
                ("key", _text(job.key)),
                ("run_at", _when(job.run_at)),
                ("created_at", _when(job.created_at)),
                ("updated_at", _when(job.updated_at)),
                ("started_at", _when(job.started_at)),
                ("finished_at", _when(job.finished_at)),
                ("progress", progress),
                ("last_error", _text(job.last_error)),
                *made_by,
                ("payload", _compact(job.payload)),
                ("result", _compact(job.result)),
            ]
        )
    )


def _print_job_table(page: JobPage) -> None:
    if not page.jobs:
        print("no jobs")
    else:
        rows = [
            [
                str(job.id),
                job.type,
                job.queue,
                job.state.value,
                f"{job.attempts}/{job.max_attempts}",
                str(job.priority),
                _when(job.created_at),
            ]
            for job in page.jobs
        ]
        print(_table(["ID", "TYPE", "QUEUE", "STATE", "ATTEMPTS", "PRIORITY", "CREATED"], rows, numeric=[5]))
    if page.next is not None:
        _complain(f"more jobs: add --after {page.next}")


def _print_queue(args: argparse.Namespace, body: Mapping[str, Any]) -> None:
    if args.json:
        _print_json(dict(body))
    else:
        print(_block([(key, _text(value)) for key, value in body.items()]))


def _block(rows: Sequence[tuple[str, str]]) -> str:
    """`key: value` lines with the values aligned; a value's further lines are indented to match."""
    width = max((len(key) for key, _ in rows), default=0) + 2
    indent = "\n" + " " * width
    return "\n".join(f"{key + ':':<{width}}{value.replace(chr(10), indent)}" for key, value in rows)


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], numeric: Sequence[int] = ()) -> str:
    """Columns padded to their widest cell; the `numeric` columns right-aligned."""
    widths = [max(len(row[column]) for row in [headers, *rows]) for column in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        padded = (
            cell.rjust(width) if column in numeric else cell.ljust(width)
            for column, (cell, width) in enumerate(zip(cells, widths, strict=True))
        )
        return "  ".join(padded).rstrip()

    return "\n".join(line(row) for row in [headers, *rows])


def _text(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, str):
        return value
    return _compact(value)


def _compact(value: JSON) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": "))


def _seconds(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "-"
    return format_duration(float(value))


def _when(value: datetime | None) -> str:
    return "-" if value is None else value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
