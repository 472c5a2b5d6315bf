"""`jobd-ctl top`'s screen as pure text: what it shows at 80x24 and other sizes, and what keys do."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from jobd.job import Job, JobState, Progress
from jobd.topview import (
    KEYS_HELP,
    Cancel,
    Kind,
    Line,
    Quit,
    Screen,
    Selected,
    SetPaused,
    Snapshot,
    Style,
    press,
    render,
    render_plain,
    snapshot_of,
)

NOW = datetime(2030, 1, 31, 9, 0, 0, tzinfo=UTC)
SOCKET = "/run/jobd/jobd.sock"


def ago(seconds: float) -> datetime:
    return NOW - timedelta(seconds=seconds)


def job(number: int, *, state: JobState = JobState.RUNNING, started: float = 0, **fields: Any) -> Job:
    values: dict[str, Any] = {
        "id": uuid.UUID(int=number),
        "type": "email.send",
        "queue": "email",
        "payload": None,
        "state": state,
        "priority": 0,
        "attempts": 1,
        "max_attempts": 5,
        "timeout": None,
        "run_at": ago(started + 1),
        "created_at": ago(started + 1),
        "updated_at": ago(started),
        "started_at": ago(started),
    }
    values.update(fields)
    return Job(**values)


def queue(pending: int = 0, **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "scheduled": 0, "pending": pending, "running": 0, "completed": 0, "failed": 0, "cancelled": 0,
        "paused": False, "concurrency": 10, "global_concurrency": None, "oldest_pending_age": None,
        "rates": {"completed": 0.0, "failed": 0.0, "retried": 0.0},
    }  # fmt: skip
    body.update(fields)
    return body


HEALTH = {"status": "ok", "version": "1.2.3", "store": "ok", "workers": {"busy": 7, "capacity": 10}}


def busy_snapshot() -> Snapshot:
    """Six queues, fifteen running jobs and twelve failures: more than 24 lines hold."""
    stats = {
        "queues": {
            "default": queue(12, running=3, rates={"completed": 14.2, "failed": 0.1, "retried": 0.3},
                             oldest_pending_age=2.125),
            "email": queue(123_456, scheduled=5, running=12, concurrency=2, global_concurrency=4, paused=True,
                           rates={"completed": 1234.5, "failed": 0.0, "retried": 0.0},
                           oldest_pending_age=303.9),
            "reports-for-the-finance-department": queue(1, oldest_pending_age=3 * 86_400 + 4 * 3600),
            "webhooks": queue(),
            "thumbnails": queue(scheduled=12_345_678),
            "zzz": queue(),
        },
        "workers": {"busy": 7, "capacity": 10},
    }  # fmt: skip
    running = [
        job(number, started=number * 10.0, queue="email" if number > 3 else "default",
            progress=Progress(0.5, "half way") if number == 15 else None)
        for number in range(1, 16)
    ]  # fmt: skip
    failures = [
        job(100 + number, state=JobState.FAILED, type="http.request", finished_at=ago(number * 60.0),
            last_error=f"HTTP 503 from https://example.org/hook/{number}\nRetry-After: 120")
        for number in range(12)
    ]  # fmt: skip
    return snapshot_of(HEALTH, stats, running, failures, NOW)


def texts(lines: list[Line]) -> list[str]:
    return [line.text for line in lines]


def test_a_busy_daemon_fits_80_by_24_with_every_table_and_the_keys() -> None:
    lines = render(Screen(SOCKET, 1.0).refreshed(busy_snapshot()), 80, 24, NOW)
    shown = texts(lines)
    assert len(shown) == 24
    assert all(len(text) <= 80 for text in shown)
    assert shown[0] == "jobd 1.2.3 at /run/jobd/jobd.sock".ljust(71) + "09:00:00Z"
    assert shown[1] == "store ok  workers 7 of 10 busy  refresh 1s"
    assert shown[3] == "  QUEUE          SCHED   PEND  RUN CONC GLOB DONE/s FAIL/s RETRY/s OLDEST PAUSED"
    assert shown[4] == "> default            0     12    3   10    -   14.2    0.1     0.3   2.1s     no"
    assert shown[5] == "  email              5   123k   12    2    4   1234      0       0  5m03s    yes"
    assert shown[6] == "  reports-for-t~     0      1    0   10    -      0      0       0  3d04h     no"
    assert shown[7] == "  thumbnails     12.3M      0    0   10    -      0      0       0      -     no"
    assert shown[9].startswith("  zzz")  # every queue, before the jobs take the rest
    assert lines[4].style is Style.SELECTED and lines[3].style is Style.HEADING
    assert shown[-1] == KEYS_HELP
    # The tables share the rows left: the running jobs, longest first, with how many are shown.
    running_heading = shown.index(next(text for text in shown if text.startswith("  RUNNING")))
    assert shown[running_heading].endswith("5 of 15")
    longest = "  0000000f email.send            email          1/5  2m30s 50% half way"
    assert shown[running_heading + 1] == longest.ljust(80)
    assert shown[running_heading + 2].startswith("  0000000e email.send")
    failed_heading = shown.index(next(text for text in shown if text.startswith("  FAILED")))
    assert shown[failed_heading] == "  FAILED   TYPE                      WHEN LAST ERROR"
    # The latest failure first; its two-line error on one line.
    assert shown[failed_heading + 1] == (
        "  00000064 http.request          0.0s ago HTTP 503 from https://example.org/hoo~"
    )
    assert shown[failed_heading + 2].startswith("  00000065 http.request         1m00s ago")


def test_a_short_terminal_says_how_many_queues_it_shows() -> None:
    shown = texts(render(Screen(SOCKET, 1.0).refreshed(busy_snapshot()), 80, 14, NOW))
    assert shown[3].startswith("  QUEUE 3 of 6   SCHED")
    assert [text[:16] for text in shown[4:7]] == ["> default       ", "  email         ", "  reports-for-t~"]


def test_every_size_keeps_within_the_terminal_and_the_keys_on_the_last_line() -> None:
    screen = Screen(SOCKET, 1.0).refreshed(busy_snapshot())
    for width, height in [(80, 24), (40, 10), (132, 50), (20, 5), (200, 80)]:
        lines = render(screen, width, height, NOW)
        assert len(lines) == height, (width, height)
        assert all(len(line.text) <= width for line in lines), (width, height)
        assert KEYS_HELP.startswith(lines[-1].text.rstrip("~")), (width, height)
    wide = texts(render(screen, 200, 80, NOW))
    assert not any("of 15" in text for text in wide)  # all fifteen fit
    assert any("HTTP 503 from https://example.org/hook/0 Retry-After: 120" in text for text in wide)
    assert render(screen, 0, 0, NOW) == []


def test_the_arrow_keys_move_through_queues_then_running_jobs_and_scroll_them_into_view() -> None:
    screen = Screen(SOCKET, 1.0).refreshed(busy_snapshot())
    assert screen.selected == Selected(Kind.QUEUE, "default")
    screen, command = press(screen, "up")
    assert command is None and screen.selected == Selected(Kind.QUEUE, "default")  # already the first
    for _ in range(6 + 9):  # past the six queues, to the tenth running job (the 6th longest running)
        screen, _ = press(screen, "down")
    assert screen.selected == Selected(Kind.JOB, str(uuid.UUID(int=6)))
    shown = texts(render(screen, 80, 24, NOW))
    selected = [text.rstrip() for text in shown if text.startswith("> ")]
    assert selected == ["> 00000006 email.send            email          1/5  1m00s"]
    for _ in range(50):
        screen, _ = press(screen, "down")
    assert screen.selected == Selected(Kind.JOB, str(uuid.UUID(int=1)))  # the last row
    assert any(text.startswith("> 00000001") for text in texts(render(screen, 80, 24, NOW)))


def test_p_pauses_or_resumes_the_selected_queue() -> None:
    screen = Screen(SOCKET, 1.0).refreshed(busy_snapshot())
    assert press(screen, "p")[1] == SetPaused("default", True)
    screen, _ = press(screen, "down")
    assert press(screen, "p")[1] == SetPaused("email", False)  # it is paused: p resumes it
    for _ in range(6):
        screen, _ = press(screen, "down")
    screen, command = press(screen, "p")
    assert command is None
    assert screen.message == "select a queue (up/down) to pause or resume it"
    assert texts(render(screen, 80, 24, NOW))[-1] == "select a queue (up/down) to pause or resume it"
    assert press(screen, "x")[0].message is None  # any key clears the message


def test_c_asks_for_a_confirmation_and_only_y_cancels() -> None:
    screen = Screen(SOCKET, 1.0).refreshed(busy_snapshot())
    screen, command = press(screen, "c")
    assert command is None and screen.message == "select a running job (up/down) to cancel it"
    for _ in range(6):
        screen, _ = press(screen, "down")
    asking, command = press(screen, "c")
    assert command is None
    last = render(asking, 80, 24, NOW)[-1]
    assert last.text == "cancel job 0000000f (email.send in email)? y: yes, any other key: no"
    assert last.style is Style.ALERT
    assert press(asking, "y") == (screen, Cancel(uuid.UUID(int=15)))
    kept, command = press(asking, "q")  # even q only answers "no" here
    assert command is None and kept.confirming is None
    assert kept.message == "job 0000000f not cancelled"
    assert press(kept, "q")[1] == Quit()


def test_an_unreachable_daemon_is_said_first_and_its_last_answer_stays_dimmed() -> None:
    never = render(Screen(SOCKET, 0.5).failed("DAEMON UNREACHABLE: connection refused"), 80, 24, NOW)
    assert texts(never)[:4] == [
        "jobd at /run/jobd/jobd.sock".ljust(71) + "09:00:00Z",
        "DAEMON UNREACHABLE: connection refused",
        "retrying every 500ms",
        "waiting for the daemon's first answer...",
    ]
    assert never[1].style is Style.ALERT
    lost = Screen(SOCKET, 1.0).refreshed(busy_snapshot()).failed("DAEMON UNREACHABLE: connection refused")
    lines = render(lost, 80, 24, NOW + timedelta(seconds=5))
    assert texts(lines)[1:3] == [
        "DAEMON UNREACHABLE: connection refused",
        "retrying every 1s; below: its answer of 09:00:00Z",
    ]
    assert lines[5].text.startswith("  email") and lines[5].style is Style.DIM
    assert lost.refreshed(busy_snapshot()).problem is None  # back as soon as it answers


def test_a_store_that_is_down_is_said_on_the_second_line() -> None:
    health = {"status": "degraded", "version": "1.2.3", "store": "unavailable"}
    snapshot = snapshot_of(health, {"queues": {}, "workers": {}}, [], [], NOW)
    lines = render(Screen(SOCKET, 1.0).refreshed(snapshot), 80, 24, NOW)
    assert lines[1] == Line("STORE UNAVAILABLE: the daemon can neither read nor start jobs", Style.ALERT)
    assert "  no queues" in texts(lines) and "  no job is running" in texts(lines)
    assert "  no failed job" in texts(lines)


def test_a_selected_job_that_ended_passes_the_selection_to_the_row_in_its_place() -> None:
    screen = Screen(SOCKET, 1.0).refreshed(busy_snapshot())
    for _ in range(7):
        screen, _ = press(screen, "down")
    assert screen.selected == Selected(Kind.JOB, str(uuid.UUID(int=14)))
    stats = {"queues": {queue.name: {} for queue in busy_snapshot().queues}}
    running = [job for job in busy_snapshot().running if job.id != uuid.UUID(int=14)]
    assert screen.refreshed(snapshot_of(HEALTH, stats, running, [], NOW)).selected == Selected(
        Kind.JOB, str(uuid.UUID(int=13))
    )


def test_an_older_daemon_without_the_new_fields_shows_dashes() -> None:
    stats = {"queues": {"default": {"scheduled": 0, "pending": 2, "running": 1, "paused": False,
                                    "concurrency": 10}}, "workers": {"busy": 1, "capacity": 10}}  # fmt: skip
    snapshot = snapshot_of({"status": "ok", "version": "0.1.0", "store": "ok"}, stats, [], [], NOW)
    row = texts(render(Screen(SOCKET, 1.0).refreshed(snapshot), 80, 24, NOW))[4]
    assert row == "> default            0      2    1   10    -      -      -       -      -     no"


def test_the_plain_snapshot_has_every_row_and_no_selection_or_keys() -> None:
    lines = render_plain(SOCKET, busy_snapshot(), 80)
    assert lines[1] == "store ok  workers 7 of 10 busy"
    assert not any(line.startswith(">") for line in lines)
    assert KEYS_HELP not in lines
    assert sum(line.startswith("  000000") and "email.send" in line for line in lines) == 15
    assert sum("http.request" in line for line in lines) == 12
    assert all(len(line) <= 80 for line in lines)
