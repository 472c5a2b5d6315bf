"""`jobd-ctl top`: the live view, a thin curses shell around `jobd.topview`.

Each refresh asks the daemon four things over the control socket: `GET /v1/health`,
`GET /v1/stats`, the running jobs and the latest failed ones (`GET /v1/jobs?state=…`).
Between refreshes it waits for a key; a key that changes something (pause, resume,
cancel) is sent at once and the view refreshed. `curses.wrapper` gives the terminal back
as it found it however the loop ends: `q`, Ctrl-C or an error.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from jobd.client import Client
from jobd.errors import ApiError, DaemonUnreachable, StoreUnavailable
from jobd.job import Job
from jobd.topview import (
    Cancel,
    Quit,
    Screen,
    SetPaused,
    Snapshot,
    Style,
    press,
    render,
    render_plain,
    short_id,
    snapshot_of,
)

if TYPE_CHECKING:
    import curses

RUNNING_LIMIT = 1000  # the API's largest page: running jobs are bounded by the daemons' concurrency
FAILURES_LIMIT = 20  # more than a screen shows
REQUEST_TIMEOUT = 5.0  # a daemon that hangs holds the screen this long at most per request


@dataclass(frozen=True, slots=True)
class Answers:
    """The daemon's answers of one refresh, as it sent them."""

    health: dict[str, Any]
    stats: dict[str, Any]
    running: tuple[Job, ...]
    failures: tuple[Job, ...]

    def snapshot(self, taken_at: datetime) -> Snapshot:
        return snapshot_of(self.health, self.stats, self.running, self.failures, taken_at)

    def to_json(self) -> dict[str, Any]:
        return {
            "health": self.health,
            "stats": self.stats,
            "running": [job.to_json() for job in self.running],
            "failed": [job.to_json() for job in self.failures],
        }


def ask(client: Client) -> Answers:
    """One refresh's requests. Raises `DaemonUnreachable`, or an `ApiError` when the
    daemon answers but cannot serve them (its store is down, it is shutting down)."""
    health = client.health()
    stats = client.stats()
    running = client.list_page(state="running", limit=RUNNING_LIMIT).jobs
    failures = client.list_page(state="failed", limit=FAILURES_LIMIT).jobs
    return Answers(health, stats, running, failures)


def print_once(client: Client, *, as_json: bool) -> None:
    """One snapshot on standard output: the tables as text, or the answers as JSON."""
    answers = ask(client)
    if as_json:
        print(json.dumps(answers.to_json(), indent=2, ensure_ascii=False))
        return
    snapshot = answers.snapshot(datetime.now(UTC))
    print("\n".join(render_plain(client.socket, snapshot, shutil.get_terminal_size().columns)))


class TerminalUnusable(Exception):
    """curses cannot drive this terminal (an unknown $TERM, say)."""


def run_interactive(client: Client, interval: float) -> None:
    """The live view until `q`; Ctrl-C raises KeyboardInterrupt as usual, and SIGTERM
    SystemExit, both once the terminal is given back."""
    import curses

    def stop(signum: int, frame: object) -> None:
        sys.exit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        curses.wrapper(lambda window: _Shell(window, client, interval).loop())
    except curses.error as error:
        terminal = os.environ.get("TERM", "")
        raise TerminalUnusable(f"cannot drive this terminal (TERM={terminal!r}): {error}") from None
    finally:
        signal.signal(signal.SIGTERM, previous)


def is_interactive() -> bool:
    return sys.stdout.isatty() and sys.stdin.isatty()


def refresh(client: Client, screen: Screen) -> Screen:
    """The screen with the daemon's new answer, or with why there is none."""
    try:
        return screen.refreshed(ask(client).snapshot(datetime.now(UTC)))
    except DaemonUnreachable as error:
        return screen.failed(f"DAEMON UNREACHABLE: {error.reason}")
    except StoreUnavailable as error:
        return screen.failed(f"STORE UNAVAILABLE: {error.message}")
    except ApiError as error:
        return screen.failed(f"THE DAEMON ANSWERS, BUT: {error.message}")


def carry_out(client: Client, screen: Screen, command: SetPaused | Cancel) -> Screen:
    """Send what a key asked for; the answer, or why not, becomes the screen's message."""
    try:
        if isinstance(command, SetPaused):
            if command.paused:
                client.pause(command.queue)
                return screen.told(f"queue {command.queue} paused: it starts no job until resumed (p)")
            client.resume(command.queue)
            return screen.told(f"queue {command.queue} resumed")
        job = client.cancel(command.job_id)
        if job.state.finished:
            return screen.told(f"job {short_id(job.id)} {job.state}")
        return screen.told(f"job {short_id(job.id)}: cancel requested; it ends within a few seconds")
    except ApiError as error:
        return screen.told(f"not done: {error.message}")


class _Shell:
    """The curses side: paints the lines `render` makes and turns key codes into names."""

    def __init__(self, window: curses.window, client: Client, interval: float) -> None:
        import curses

        self._curses = curses
        self._window = window
        self._client = client
        self._interval = interval
        self._styles = self._make_styles()

    def _make_styles(self) -> dict[Style, int]:
        curses = self._curses
        alert = curses.A_BOLD
        with contextlib.suppress(curses.error):  # a terminal that cannot hide the cursor
            curses.curs_set(0)
        if curses.has_colors():
            curses.start_color()
            curses.use_default_colors()
            curses.init_pair(1, curses.COLOR_RED, -1)
            alert |= curses.color_pair(1)
        return {
            Style.PLAIN: curses.A_NORMAL,
            Style.HEADING: curses.A_BOLD,
            Style.SELECTED: curses.A_REVERSE,
            Style.ALERT: alert,
            Style.DIM: curses.A_DIM,
        }

    def loop(self) -> None:
        screen = Screen(self._client.socket, self._interval)
        due = 0.0  # when the next refresh is due, on the monotonic clock
        while True:
            if time.monotonic() >= due:
                screen = refresh(self._client, screen)
                due = time.monotonic() + self._interval
            self._paint(screen)
            self._window.timeout(max(0, round((due - time.monotonic()) * 1000)))
            key = self._key(self._window.getch())
            if key is None:  # the interval is over, the terminal was resized, or a key we ignore
                continue
            screen, command = press(screen, key)
            if isinstance(command, Quit):
                return
            if command is not None:
                self._paint(screen)
                screen = carry_out(self._client, screen, command)
                due = 0.0  # show what it did at once

    def _paint(self, screen: Screen) -> None:
        curses = self._curses
        height, width = self._window.getmaxyx()
        encoding = self._window.encoding
        self._window.erase()
        for row, line in enumerate(render(screen, width, height, datetime.now(UTC))):
            # Characters the terminal's encoding lacks are shown as "?".
            text = line.text.encode(encoding, "replace").decode(encoding)
            # Writing the bottom-right cell moves the cursor off the screen: an error, once drawn.
            with contextlib.suppress(curses.error):
                self._window.addstr(row, 0, text, self._styles[line.style])
        self._window.refresh()

    def _key(self, code: int) -> str | None:
        curses = self._curses
        if code == curses.KEY_UP:
            return "up"
        if code == curses.KEY_DOWN:
            return "down"
        if 32 <= code < 127:
            return chr(code)
        return None
