"""What `jobd-ctl top` shows, as text: pure functions from the API's answers and the keys
pressed to the lines of the screen.

Nothing here draws, reads a key or asks the daemon: `jobd.top` does, and hands over what
it got. So every line of the screen, at any size, and every key's effect can be tested as
plain values.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from jobd.durations import format_duration
from jobd.job import Job

KEYS_HELP = "up/down select  p pause/resume queue  c cancel job  q quit"
_MARK = "> "  # before the selected row; "  " before the others
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]+")


# -- what the daemon answered --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class QueueStats:
    """One queue of `GET /v1/stats`; None where the daemon did not say (an older jobd)."""

    name: str
    scheduled: int | None
    pending: int | None
    running: int | None
    concurrency: int | None
    global_concurrency: int | None
    paused: bool
    completed_rate: float | None
    failed_rate: float | None
    retried_rate: float | None
    oldest_pending_age: float | None


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One refresh: the daemon's answers, taken at `taken_at`."""

    taken_at: datetime
    version: str | None
    store_ok: bool
    busy: int | None
    capacity: int | None
    queues: tuple[QueueStats, ...]
    running: tuple[Job, ...]  # longest running first
    running_total: int  # running jobs in the store, which may be more than those listed
    failures: tuple[Job, ...]  # the latest first


def snapshot_of(
    health: Mapping[str, Any],
    stats: Mapping[str, Any],
    running: Sequence[Job],
    failures: Sequence[Job],
    taken_at: datetime,
) -> Snapshot:
    """The answers of `GET /v1/health`, `/v1/stats` and the listings of running and failed jobs."""
    workers = _mapping(stats.get("workers"))
    per_queue = sorted(_mapping(stats.get("queues")).items())
    queues = tuple(_queue(str(name), _mapping(body)) for name, body in per_queue)
    listed_running = sum(queue.running or 0 for queue in queues)
    return Snapshot(
        taken_at=taken_at,
        version=health.get("version") if isinstance(health.get("version"), str) else None,
        store_ok=health.get("store") == "ok",
        busy=_count(workers.get("busy")),
        capacity=_count(workers.get("capacity")),
        queues=queues,
        running=tuple(sorted(running, key=_started)),
        running_total=max(listed_running, len(running)),
        failures=tuple(sorted(failures, key=_finished, reverse=True)),
    )


def _queue(name: str, body: Mapping[str, Any]) -> QueueStats:
    rates = _mapping(body.get("rates"))
    return QueueStats(
        name=name,
        scheduled=_count(body.get("scheduled")),
        pending=_count(body.get("pending")),
        running=_count(body.get("running")),
        concurrency=_count(body.get("concurrency")),
        global_concurrency=_count(body.get("global_concurrency")),
        paused=body.get("paused") is True,
        completed_rate=_number(rates.get("completed")),
        failed_rate=_number(rates.get("failed")),
        retried_rate=_number(rates.get("retried")),
        oldest_pending_age=_number(body.get("oldest_pending_age")),
    )


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _count(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _started(job: Job) -> datetime:
    return job.started_at or job.updated_at


def _finished(job: Job) -> datetime:
    return job.finished_at or job.updated_at


# -- the state of the screen and the keys ------------------------------------------------------


class Kind(enum.StrEnum):
    QUEUE = "queue"
    JOB = "job"


@dataclass(frozen=True, slots=True)
class Selected:
    """The selected row: a queue by name, or a running job by id."""

    kind: Kind
    key: str


@dataclass(frozen=True, slots=True)
class Quit:
    pass


@dataclass(frozen=True, slots=True)
class SetPaused:
    queue: str
    paused: bool


@dataclass(frozen=True, slots=True)
class Cancel:
    job_id: uuid.UUID


Command = Quit | SetPaused | Cancel
"""What a key asks of the daemon (or of `top` itself)."""


@dataclass(frozen=True, slots=True)
class Screen:
    """Everything the screen shows besides its size and the time."""

    socket: str
    interval: float
    snapshot: Snapshot | None = None  # the latest complete answer
    problem: str | None = None  # why the latest refresh failed; the snapshot is then older
    selected: Selected | None = None
    confirming: Job | None = None  # a job to cancel once `y` confirms it
    message: str | None = None  # what the latest key did; the next key clears it

    def refreshed(self, snapshot: Snapshot) -> Screen:
        """A new answer. A selected row that is gone (a job that ended) passes the selection
        to the row now in its place."""
        rows = selectable(snapshot)
        selected = self.selected
        if selected not in rows:
            before = selectable(self.snapshot) if self.snapshot else []
            index = before.index(selected) if selected in before else 0
            selected = rows[min(index, len(rows) - 1)] if rows else None
        return dataclasses.replace(self, snapshot=snapshot, problem=None, selected=selected)

    def failed(self, problem: str) -> Screen:
        """A refresh that got no complete answer; the last one stays on screen."""
        return dataclasses.replace(self, problem=problem)

    def told(self, message: str) -> Screen:
        return dataclasses.replace(self, message=message)


def selectable(snapshot: Snapshot) -> list[Selected]:
    """The rows the arrow keys move through, in screen order: queues, then running jobs."""
    return [Selected(Kind.QUEUE, queue.name) for queue in snapshot.queues] + [
        Selected(Kind.JOB, str(job.id)) for job in snapshot.running
    ]


def press(screen: Screen, key: str) -> tuple[Screen, Command | None]:
    """A key's effect: the screen it leaves, and what to ask the daemon, if anything.

    Keys are named as `jobd.top` reads them: "up", "down", or the character typed.
    """
    screen = dataclasses.replace(screen, message=None)
    if screen.confirming is not None:
        asked = screen.confirming
        screen = dataclasses.replace(screen, confirming=None)
        if key in ("y", "Y"):
            return screen, Cancel(asked.id)
        return screen.told(f"job {short_id(asked.id)} not cancelled"), None
    if key in ("q", "Q"):
        return screen, Quit()
    if key in ("up", "down"):
        return _moved(screen, -1 if key == "up" else 1), None
    if key in ("p", "P"):
        queue = _selected_queue(screen)
        if queue is None:
            return screen.told("select a queue (up/down) to pause or resume it"), None
        return screen, SetPaused(queue.name, not queue.paused)
    if key in ("c", "C"):
        job = _selected_job(screen)
        if job is None:
            return screen.told("select a running job (up/down) to cancel it"), None
        return dataclasses.replace(screen, confirming=job), None
    return screen, None


def _moved(screen: Screen, step: int) -> Screen:
    rows = selectable(screen.snapshot) if screen.snapshot else []
    if not rows:
        return screen
    if screen.selected not in rows:
        return dataclasses.replace(screen, selected=rows[0])
    index = min(max(rows.index(screen.selected) + step, 0), len(rows) - 1)
    return dataclasses.replace(screen, selected=rows[index])


def _selected_queue(screen: Screen) -> QueueStats | None:
    if screen.snapshot is None or screen.selected is None or screen.selected.kind != Kind.QUEUE:
        return None
    return next((queue for queue in screen.snapshot.queues if queue.name == screen.selected.key), None)


def _selected_job(screen: Screen) -> Job | None:
    if screen.snapshot is None or screen.selected is None or screen.selected.kind != Kind.JOB:
        return None
    return next((job for job in screen.snapshot.running if str(job.id) == screen.selected.key), None)


# -- lines ---------------------------------------------------------------------------------


class Style(enum.Enum):
    PLAIN = "plain"
    HEADING = "heading"  # a table's column names
    SELECTED = "selected"
    ALERT = "alert"  # the daemon or its store is down; a confirmation to give
    DIM = "dim"  # an answer older than the latest refresh


@dataclass(frozen=True, slots=True)
class Line:
    text: str
    style: Style = Style.PLAIN


@dataclass(frozen=True, slots=True)
class _Column:
    title: str
    width: int  # 0: takes `share` parts of the room the others leave
    right: bool = False  # numbers: aligned right
    share: int = 1


# Widths leave out the one space between columns; 0: a share of the room the others leave.
_QUEUE_COLUMNS = (
    _Column("QUEUE", 0),
    _Column("SCHED", 5, True),
    _Column("PEND", 6, True),
    _Column("RUN", 4, True),
    _Column("CONC", 4, True),
    _Column("GLOB", 4, True),
    _Column("DONE/s", 6, True),
    _Column("FAIL/s", 6, True),
    _Column("RETRY/s", 7, True),
    _Column("OLDEST", 6, True),
    _Column("PAUSED", 6, True),
)
_RUNNING_COLUMNS = (
    _Column("RUNNING", 8),
    _Column("TYPE", 0),
    _Column("QUEUE", 12),
    _Column("ATT", 5, True),
    _Column("FOR", 6, True),
    _Column("PROGRESS", 0),
)
_FAILED_COLUMNS = (
    _Column("FAILED", 8),
    _Column("TYPE", 0),
    _Column("WHEN", 10, True),
    _Column("LAST ERROR", 0, share=2),
)


def render(screen: Screen, width: int, height: int, now: datetime) -> list[Line]:
    """The whole screen: at most `height` lines of at most `width` characters."""
    if width < 1 or height < 1:
        return []
    lines = _top_lines(screen.socket, screen.snapshot, screen.problem, screen.interval, width, now)
    footer = _footer(screen, width)
    room = height - len(lines) - 1
    snapshot = screen.snapshot
    if snapshot is None:
        body = [Line(_clip("waiting for the daemon's first answer...", width))]
    else:
        body = _body(snapshot, screen.selected, width, room, dim=screen.problem is not None, now=now)
    body = body[: max(room, 0)]
    padding = [Line("")] * (max(room, 0) - len(body))  # the keys stay on the bottom line
    return [*lines, *body, *padding, footer][:height]


def render_plain(socket: str, snapshot: Snapshot, width: int) -> list[str]:
    """One snapshot as plain text, every row of it, for `--once` or a pipe."""
    lines = _top_lines(socket, snapshot, None, None, width, snapshot.taken_at)
    lines += _body(snapshot, None, width, None, dim=False, now=snapshot.taken_at)
    return [line.text.rstrip() for line in lines]


def _top_lines(
    socket: str,
    snapshot: Snapshot | None,
    problem: str | None,
    interval: float | None,
    width: int,
    now: datetime,
) -> list[Line]:
    """The daemon and the time; then its health, or why the view is not current."""
    version = f"jobd {snapshot.version}" if snapshot and snapshot.version else "jobd"
    first = Line(_spread(f"{version} at {socket}", _clock(now), width))
    every = "" if interval is None else format_duration(interval)
    if problem is not None:
        shown = f"; below: its answer of {_clock(snapshot.taken_at)}" if snapshot else ""
        retrying = Line(_clip(f"retrying every {every}{shown}", width))
        return [first, Line(_clip(problem, width), Style.ALERT), retrying]
    if snapshot is None:
        second = Line("")
    elif not snapshot.store_ok:
        second = Line(
            _clip("STORE UNAVAILABLE: the daemon can neither read nor start jobs", width), Style.ALERT
        )
    else:
        workers = f"workers {_text(snapshot.busy)} of {_text(snapshot.capacity)} busy"
        refresh = f"  refresh {every}" if every else ""
        second = Line(_clip(f"store ok  {workers}{refresh}", width))
    return [first, second, Line("")]


def _footer(screen: Screen, width: int) -> Line:
    if screen.confirming is not None:
        job = screen.confirming
        question = f"cancel job {short_id(job.id)} ({job.type} in {job.queue})? y: yes, any other key: no"
        return Line(_clip(question, width), Style.ALERT)
    if screen.message is not None:
        return Line(_clip(screen.message, width))
    return Line(_clip(KEYS_HELP, width), Style.HEADING)


@dataclass(frozen=True, slots=True)
class _Table:
    columns: Sequence[_Column]
    rows: Sequence[tuple[Selected | None, list[str]]]  # each row's key for the selection, and its cells
    nothing: str  # said instead of rows when there are none
    total: int | None  # rows there are, when more than listed may exist


def _body(
    snapshot: Snapshot, selected: Selected | None, width: int, room: int | None, *, dim: bool, now: datetime
) -> list[Line]:
    """The three tables, sharing `room` lines (None: no limit); each keeps its selected row in view."""
    queues = [(Selected(Kind.QUEUE, queue.name), _queue_cells(queue)) for queue in snapshot.queues]
    running = [(Selected(Kind.JOB, str(job.id)), _running_cells(job, now)) for job in snapshot.running]
    failures: list[tuple[Selected | None, list[str]]] = [
        (None, _failure_cells(job, now)) for job in snapshot.failures
    ]
    tables = [
        _Table(_QUEUE_COLUMNS, queues, "no queues", len(queues)),
        _Table(_RUNNING_COLUMNS, running, "no job is running", snapshot.running_total),
        _Table(_FAILED_COLUMNS, failures, "no failed job", None),
    ]
    # Each table has a heading, one line at least (a row or "none"), and a blank line
    # before the next; the rows share what is left, one at a time, in turn.
    wanted = [max(len(table.rows), 1) for table in tables]
    shown = wanted if room is None else _share(room - 2 * len(tables) + 1, wanted)
    style = Style.DIM if dim else Style.PLAIN
    lines: list[Line] = []
    for table, count in zip(tables, shown, strict=True):
        if lines:
            lines.append(Line(""))
        listed = min(count, len(table.rows))
        note = f"{listed} of {table.total}" if table.total is not None and table.total > listed else ""
        lines.append(Line(_heading(table.columns, width, note), Style.HEADING))
        if not table.rows:
            if count:
                lines.append(Line(_clip(" " * len(_MARK) + table.nothing, width), style))
            continue
        keys = [key for key, _ in table.rows]
        first = 0
        if selected in keys:  # scrolled so that the selected row is the last one shown, if need be
            first = max(0, min(keys.index(selected) - count + 1, len(keys) - count))
        for key, cells in table.rows[first : first + count]:
            chosen = key is not None and key == selected
            lines.append(Line(_row(table.columns, cells, width, chosen), Style.SELECTED if chosen else style))
    return lines if room is None else lines[:room]


def _share(room: int, wanted: Sequence[int]) -> list[int]:
    """Rows for each table. The first (the queues) takes all it wants but two rows for each
    other table; then every table that wants more takes one more row at a time, in turn."""
    room = max(room, 0)
    others = sum(min(want, 2) for want in wanted[1:])
    given = [min(wanted[0], max(room - others, 1 if room else 0))] + [0] * (len(wanted) - 1)
    room -= given[0]
    while room > 0 and any(got < want for got, want in zip(given, wanted, strict=True)):
        for index, want in enumerate(wanted):
            if room > 0 and given[index] < want:
                given[index] += 1
                room -= 1
    return given


def _queue_cells(queue: QueueStats) -> list[str]:
    return [
        queue.name,
        _amount(queue.scheduled),
        _amount(queue.pending),
        _amount(queue.running),
        _amount(queue.concurrency),
        _amount(queue.global_concurrency),
        _rate(queue.completed_rate),
        _rate(queue.failed_rate),
        _rate(queue.retried_rate),
        _age(queue.oldest_pending_age),
        "yes" if queue.paused else "no",
    ]


def _running_cells(job: Job, now: datetime) -> list[str]:
    progress = ""
    if job.progress is not None:
        progress = f"{job.progress.fraction:.0%} {job.progress.message or ''}"
    started = job.started_at
    running_for = _age(None if started is None else (now - started).total_seconds())
    attempt = f"{job.attempts}/{job.max_attempts}"
    return [short_id(job.id), job.type, job.queue, attempt, running_for, progress]


def _failure_cells(job: Job, now: datetime) -> list[str]:
    ended = job.finished_at
    when = "-" if ended is None else _age((now - ended).total_seconds()) + " ago"
    return [short_id(job.id), job.type, when, job.last_error or ""]


def _widths(columns: Sequence[_Column], width: int) -> list[int]:
    """Each column's width: the fixed ones as given, the room left shared by the others."""
    fixed = sum(column.width for column in columns) + len(_MARK) + len(columns) - 1
    shares = sum(column.share for column in columns if column.width == 0)
    left = max(width - fixed, 4 * shares)
    widths = [column.width or left * column.share // shares for column in columns]
    flexible = [index for index, column in enumerate(columns) if column.width == 0]
    widths[flexible[-1]] += left - sum(widths[index] for index in flexible)  # what rounding left over
    return widths


def _row(columns: Sequence[_Column], cells: Sequence[str], width: int, selected: bool) -> str:
    parts = []
    for column, cell, size in zip(columns, cells, _widths(columns, width), strict=True):
        text = _clip(cell, size)
        parts.append(text.rjust(size) if column.right else text.ljust(size))
    return _clip((_MARK if selected else " " * len(_MARK)) + " ".join(parts), width)


def _heading(columns: Sequence[_Column], width: int, note: str) -> str:
    """The column titles; `note` (rows shown of how many) at the end, or where there is no
    room for it there, in the first column's title."""
    line = _row(columns, [column.title for column in columns], width, False).rstrip()
    if not note:
        return line
    if len(line) + len(note) + 2 <= width:
        return line.ljust(width - len(note)) + note
    titles = [f"{columns[0].title} {note}", *(column.title for column in columns[1:])]
    return _row(columns, titles, width, False).rstrip()


def _spread(left: str, right: str, width: int) -> str:
    """`left` and `right` on one line, `right` at the end, as much of `left` as fits."""
    if len(right) + 1 >= width:
        return _clip(left, width)
    return _clip(left, width - len(right) - 1).ljust(width - len(right)) + right


def _clean(text: str) -> str:
    """One line of text: control characters (newlines, escapes) become spaces."""
    return _CONTROL.sub(" ", text)


def _clip(text: str, width: int) -> str:
    """`text` on one line of at most `width` characters; `~` ends one cut short."""
    if width <= 0:
        return ""
    text = _clean(text)
    return text if len(text) <= width else text[: width - 1] + "~"


def short_id(job_id: uuid.UUID) -> str:
    """The id's last 8 characters: random, where the first ones of ids made in the same
    minute (time-ordered UUIDv7) are the same."""
    return str(job_id)[-8:]


def _text(value: int | None) -> str:
    return "-" if value is None else str(value)


def _amount(value: int | None) -> str:
    """A count in at most 6 characters: 12345, 678k, 12.3M."""
    if value is None:
        return "-"
    if value < 100_000:
        return str(value)
    if value < 1_000_000:
        return f"{value // 1000}k"
    return f"{value / 1_000_000:.1f}M" if value < 100_000_000 else f"{value // 1_000_000}M"


def _rate(value: float | None) -> str:
    """Jobs per second in at most 6 characters."""
    if value is None:
        return "-"
    if value == 0:
        return "0"
    if value < 100:
        return f"{value:.1f}"
    return f"{value:.0f}" if value < 100_000 else f"{value / 1000:.0f}k"


def _age(seconds: float | None) -> str:
    """A duration in at most 6 characters: 0.4s, 42s, 5m03s, 2h05m, 3d04h."""
    if seconds is None:
        return "-"
    seconds = max(seconds, 0.0)
    if seconds < 10:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86_400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    days = whole // 86_400
    return f"{days}d{whole % 86_400 // 3600:02d}h" if days < 100 else f"{days}d"


def _clock(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%H:%M:%SZ")
