"""Schedules in real `jobd` processes: bad config refused by key, a SIGHUP that changes a
cron, and several daemons on one PostgreSQL database firing each tick exactly once through
kills, restarts and a full stop. The truth is read from the database; every wait polls a
condition with a deadline.
"""

from __future__ import annotations

import itertools
import json
import signal
import subprocess
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from conftest import JOBD, DaemonProcess, wait_until
from psycopg.rows import dict_row

pytestmark = pytest.mark.process
StartDaemon = Callable[..., DaemonProcess]
SECOND = timedelta(seconds=1)


def log_entries(daemon: DaemonProcess) -> list[dict[str, Any]]:
    entries = []
    for line in daemon.log().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict):
            entries.append(entry)
    return entries


# -- a bad schedule stops the start, naming its key ------------------------------------------

BAD_SCHEDULES = [
    ({"cron": "61 * * * *"}, "cron"),
    ({"cron": "* * * * * *"}, "cron"),
    ({"cron": "@fortnightly"}, "cron"),
    ({"cron": None, "every": "0.5s"}, "every"),
    ({"cron": None, "every": "soon"}, "every"),
    ({"every": "1m"}, "every"),  # both
    ({"cron": None}, "cron"),  # neither
    ({"timezone": "Mars/Olympus_Mons"}, "timezone"),
    ({"type": "no.such.type"}, "type"),
    ({"type": None}, "type"),
    ({"payload": {"at": datetime(2030, 1, 1, tzinfo=UTC)}}, "payload"),
    ({"queue": "undeclared"}, "queue"),
    ({"priority": "high"}, "priority"),
    ({"max_attempts": 0}, "max_attempts"),
    ({"timeout": "-1s"}, "timeout"),
    ({"catch_up": "some"}, "catch_up"),
    ({"overlap": "queue"}, "overlap"),
    ({"jitter": "a bit"}, "jitter"),
    ({"enabled": "yes"}, "enabled"),
    ({"retries": 3}, "retries"),
]


def bad_config(change: dict[str, Any]) -> dict[str, Any]:
    table = {"cron": "0 3 * * *", "type": "jobd.noop", **change}
    return {"schedules": {"nightly": {key: value for key, value in table.items() if value is not None}}}


@pytest.mark.parametrize(("change", "key"), BAD_SCHEDULES, ids=[key for _, key in BAD_SCHEDULES])
def test_jobd_check_refuses_a_bad_schedule_naming_the_key(
    change: dict[str, Any], key: str, short_dir: Any
) -> None:
    daemon = DaemonProcess(short_dir, bad_config(change), {})
    checked = subprocess.run(
        [*JOBD, "check", "--config", str(daemon.config_path)], capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 1, checked.stdout
    assert f"schedules.nightly.{key}" in checked.stderr and str(daemon.config_path) in checked.stderr
    assert "Traceback" not in checked.stderr


def test_a_bad_schedule_stops_the_start_and_a_good_one_is_listed_by_check(
    start_daemon: StartDaemon, short_dir: Any
) -> None:
    daemon = start_daemon(config=bad_config({"timezone": "Nowhere/Else"}), wait=False)
    assert daemon.wait_exit(60) == 1
    assert "schedules.nightly.timezone" in daemon.log() and "Traceback" not in daemon.log()
    (short_dir / "good").mkdir()
    good = DaemonProcess(short_dir / "good", bad_config({}), {})
    checked = subprocess.run(
        [*JOBD, "check", "--config", str(good.config_path)], capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stderr
    assert "nightly" in checked.stdout and "0 3 * * *" in checked.stdout


# -- SIGHUP --------------------------------------------------------------------------------


def schedule_jobs(daemon: DaemonProcess, name: str) -> list[dict[str, Any]]:
    with daemon.http() as client:
        jobs = client.get("/v1/jobs", params={"limit": "1000"}).json()["jobs"]
    return sorted((job for job in jobs if job["schedule"] == name), key=lambda job: job["scheduled_for"])


def parse(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_a_sighup_that_changes_the_cron_takes_effect_at_the_next_tick(start_daemon: StartDaemon) -> None:
    yearly = {"schedules": {"s": {"cron": "0 0 1 1 *", "type": "jobd.noop", "catch_up": "all"}}}
    daemon = start_daemon(config=yearly)
    shown = json.loads(daemon.ctl("--json", "schedule", "show", "s").stdout)
    assert shown["cron"] == "0 0 1 1 *" and shown["last_tick"] is None

    # A bad cron is refused: the old schedule stays.
    config = daemon.config_path.read_text()
    daemon.config_path.write_text(config.replace('cron = "0 0 1 1 *"', 'cron = "0 0 1 1"'))
    daemon.signal(signal.SIGHUP)
    wait_until(lambda: "reload refused" in daemon.log(), what="the bad reload to be refused")
    assert "schedules.s.cron" in daemon.log()
    assert json.loads(daemon.ctl("--json", "schedule", "show", "s").stdout)["cron"] == "0 0 1 1 *"

    daemon.config_path.write_text(config.replace('cron = "0 0 1 1 *"', 'cron = "* * * * *"'))
    reloads = daemon.log().count("config reloaded")
    reloaded_at = datetime.now(UTC)
    daemon.signal(signal.SIGHUP)
    wait_until(lambda: daemon.log().count("config reloaded") > reloads, what="the reload")
    next_minute = (reloaded_at + timedelta(minutes=1)).replace(second=0, microsecond=0)
    assert json.loads(daemon.ctl("--json", "schedule", "show", "s").stdout)["next_run"] in (
        next_minute.isoformat().replace("+00:00", "Z"),
        (next_minute + timedelta(minutes=1)).isoformat().replace("+00:00", "Z"),  # reloaded at :59.9
    )
    jobs = wait_until(lambda: schedule_jobs(daemon, "s"), timeout=90, what="the first tick of the new cron")
    # The first tick after the reload, not one before it (even with catch_up = "all").
    first = parse(jobs[0]["scheduled_for"])
    assert first > reloaded_at and first - reloaded_at <= timedelta(minutes=1, seconds=1)
    assert first.second == 0 and len(jobs) == 1
    listed = daemon.ctl("schedules")
    assert listed.returncode == 0
    header, row = listed.stdout.splitlines()
    assert header.split() == ["NAME", "SCHEDULE", "TIMEZONE", "TYPE", "NEXT", "RUN", "LAST", "RUN", "STATE"]
    assert row.split()[:4] == ["s", "*", "*", "*"] and row.split()[-1] == "active"


# -- several daemons on one PostgreSQL database ---------------------------------------------------


def connect(url: str) -> psycopg.Connection[dict[str, Any]]:
    return psycopg.connect(url, autocommit=True, row_factory=dict_row)


def ticks_made(conn: psycopg.Connection[dict[str, Any]], schedule: str) -> list[datetime]:
    rows = conn.execute(
        "SELECT scheduled_for FROM jobd.jobs WHERE schedule = %s ORDER BY scheduled_for", (schedule,)
    ).fetchall()
    return [row["scheduled_for"] for row in rows]


def consecutive(ticks: list[datetime]) -> bool:
    return all(later - earlier == SECOND for earlier, later in itertools.pairwise(ticks))


def pg_config(url: str, schedules: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {"store": {"url": url}, "workers": {"lease": "2s"}, "schedules": schedules}


def wait_for_seconds(seconds: float) -> None:
    """Let wall-clock time pass: the ticks are the wall clock's."""
    until = time.monotonic() + seconds
    wait_until(lambda: time.monotonic() >= until, timeout=seconds + 5, what=f"{seconds}s to pass")


@pytest.mark.postgres
def test_three_daemons_make_one_job_per_tick_through_a_sigkill_and_a_restart(
    start_daemon: StartDaemon, fresh_postgres_url: str
) -> None:
    config = pg_config(fresh_postgres_url, {"tick": {"every": "1s", "type": "jobd.noop"}})
    daemons = [start_daemon(config=config, name=f"d{n}", wait=False) for n in range(3)]
    for daemon in daemons:
        daemon.wait_healthy()
    started = time.monotonic()
    with connect(fresh_postgres_url) as conn:
        wait_until(lambda: len(ticks_made(conn, "tick")) >= 3, what="the first ticks")
        wait_for_seconds(5)
        daemons[1].kill()  # SIGKILL, in the middle of whatever it was doing
        wait_for_seconds(4)
        daemons[2].stop()
        daemons[2].start()
        wait_until(lambda: time.monotonic() - started >= 20, timeout=40, what="20 s of ticks")
        before_stop = datetime.now(UTC)
        for daemon in (daemons[0], daemons[2]):
            assert daemon.stop() == 0
        ticks = ticks_made(conn, "tick")
        record = conn.execute("SELECT last_tick FROM jobd.schedules WHERE name = 'tick'").fetchone()
    assert len(ticks) == len(set(ticks)), "a tick made two jobs"
    assert consecutive(ticks), f"a tick was missed: {ticks}"
    assert len(ticks) >= 17 and ticks[-1] >= before_stop - 2 * SECOND
    assert record is not None and record["last_tick"] == ticks[-1]
    survivors = [daemons[0], daemons[2]]
    made_by = [
        sum(1 for entry in log_entries(d) if entry.get("schedule") == "tick" and "job_id" in entry)
        for d in survivors
    ]
    assert sum(made_by) <= len(ticks), made_by  # each tick made by one daemon
    print(f"\n{len(ticks)} ticks, one job each; made by the survivors: {made_by}")


@pytest.mark.postgres
def test_a_full_stop_across_ticks_follows_each_catch_up_policy(
    start_daemon: StartDaemon, fresh_postgres_url: str
) -> None:
    schedules = {
        policy: {"every": "1s", "type": "jobd.noop", "catch_up": policy}
        for policy in ("latest", "all", "none")
    }
    config = pg_config(fresh_postgres_url, schedules)
    daemons = [start_daemon(config=config, name=f"d{n}") for n in range(2)]
    with connect(fresh_postgres_url) as conn:
        wait_until(
            lambda: all(len(ticks_made(conn, policy)) >= 2 for policy in schedules),
            what="two ticks of each schedule",
        )
        for daemon in daemons:
            assert daemon.stop() == 0
        last = {policy: ticks_made(conn, policy)[-1] for policy in schedules}
        wait_for_seconds(4)  # at least three ticks pass with no daemon up
        daemons[0].start()
        wait_until(
            lambda: all(ticks_made(conn, p)[-1] >= last[p] + 6 * SECOND for p in schedules),
            timeout=60,
            what="ticks after the restart",
        )
        made = {policy: ticks_made(conn, policy) for policy in schedules}
    missed = {
        entry["schedule"]: parse(entry["watching_since"])
        for entry in log_entries(daemons[0])
        if "watching_since" in entry
    }
    assert set(missed) == set(schedules), missed
    for policy in schedules:
        ticks, since = made[policy], missed[policy]
        assert len(ticks) == len(set(ticks)), policy
        before, after = [t for t in ticks if t <= last[policy]], [t for t in ticks if t > last[policy]]
        assert consecutive(before), policy
        live = [t for t in after if t > since]
        caught_up = [t for t in after if t <= since]
        assert live and consecutive(live), policy
        if policy == "all":  # every tick missed while down, oldest first
            assert caught_up == [last[policy] + n * SECOND for n in range(1, len(caught_up) + 1)]
            assert len(caught_up) >= 3
        elif policy == "latest":  # one job, for the most recent missed tick
            assert caught_up == [live[0] - SECOND]
        else:  # none: straight on with the next tick
            assert caught_up == []
        assert live[0] - since <= SECOND
