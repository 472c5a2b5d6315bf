"""The shipped dashboard and alert rules: valid for the tools that load them, alerts that fire
when they should (promtool's own unit tests), and no name a daemon does not expose."""

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
from conftest import DaemonProcess, wait_until
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "packaging" / "prometheus" / "jobd-rules.yml"
RULE_TESTS = ROOT / "tests" / "prometheus" / "jobd-rules.test.yml"
DASHBOARD = ROOT / "packaging" / "grafana" / "jobd.json"
# Series Prometheus makes itself rather than scraping them from jobd.
PROMETHEUS_OWN = {"up"}
StartDaemon = Callable[..., DaemonProcess]

needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None and not os.environ.get("CI"),
    reason="needs promtool (Debian package prometheus); CI has it",
)


def promtool(*args: str | Path, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["promtool", *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=60)


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def dashboard_queries() -> list[str]:
    """Every PromQL query of the dashboard: its panels' targets and its variables."""
    board = dashboard()
    queries = [target["expr"] for panel in board["panels"] for target in panel.get("targets", [])]
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            queries.append(variable["query"]["query"])
    return queries


def rule_queries() -> list[str]:
    """The `expr` of every rule: the file is YAML, and each expr is a block or one line."""
    queries: list[str] = []
    current: list[str] = []
    indent: int | None = None
    for line in RULES.read_text().splitlines():
        if indent is not None:
            if line.strip() and len(line) - len(line.lstrip()) > indent:
                current.append(line.strip())
                continue
            queries.append(" ".join(current))
            indent = None
        if match := re.match(r"^(\s*)expr: (.*)$", line):
            if match.group(2) == "|":
                current, indent = [], len(match.group(1))
            else:
                queries.append(match.group(2))
    return queries


def as_promql(query: str) -> str:
    """A dashboard query with Grafana's variables filled in as Grafana would."""
    return query.replace("$__rate_interval", "5m").replace('"$queue"', '".*"')


@needs_promtool
def test_the_rules_pass_promtool_check() -> None:
    result = promtool("check", "rules", RULES)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 6 rules found" in result.stdout


@needs_promtool
def test_every_alert_fires_when_it_should_and_only_then() -> None:
    result = promtool("test", "rules", RULE_TESTS.name, cwd=RULE_TESTS.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    tested = set(re.findall(r"alertname: (\w+)", RULE_TESTS.read_text()))
    assert tested == set(re.findall(r"- alert: (\w+)", RULES.read_text()))


@needs_promtool
def test_every_dashboard_query_is_valid_promql(tmp_path: Path) -> None:
    """promtool parses each query as a recording rule's expression."""
    queries = dashboard_queries()
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"jobd_dashboard:query_{index}", "expr": as_promql(query)}
                    for index, query in enumerate(queries)
                    if not query.startswith("label_values(")
                ],
            }
        ]
    }
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(json.dumps(rules))  # JSON is YAML
    result = promtool("check", "rules", path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_dashboard_is_well_formed() -> None:
    board = dashboard()
    assert board["uid"] and board["title"] == "jobd"
    panels = board["panels"]
    assert len({panel["id"] for panel in panels}) == len(panels)
    occupied: set[tuple[int, int]] = set()
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        cells = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not cells & occupied, f"{panel['title']} overlaps another panel"
        occupied |= cells
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], panel["title"]
        assert len({target["refId"] for target in panel["targets"]}) == len(panel["targets"])
    titles = " ".join(panel["title"].lower() for panel in panels)
    for subject in (
        "submitted",
        "waiting",
        "oldest",
        "failures",
        "run time",
        "wait",
        "workers",
        "store call",
        "rescued",
        "listener",
    ):
        assert subject in titles


@pytest.fixture
def two_daemons_on_postgres(
    start_daemon: StartDaemon, fresh_postgres_url: str
) -> Iterator[tuple[DaemonProcess, DaemonProcess]]:
    config = {"store": {"url": fresh_postgres_url}, "queues": {"slow": {}}}
    yield start_daemon(config=config, name="a"), start_daemon(config=config, name="b")


def scrape(daemon: DaemonProcess) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    with daemon.http() as client:
        answer = client.get("/metrics")
    assert answer.status_code == 200
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(answer.text)
        for sample in family.samples
    }


def sample(daemon: DaemonProcess, name: str, **labels: str) -> float | None:
    return scrape(daemon).get((name, frozenset(labels.items())))


@pytest.mark.process
@pytest.mark.postgres
def test_every_metric_the_dashboard_and_rules_name_is_exposed_by_a_daemon(
    two_daemons_on_postgres: tuple[DaemonProcess, DaemonProcess],
) -> None:
    first, second = two_daemons_on_postgres
    with first.http() as client:
        job = client.post("/v1/jobs", json={"type": "jobd.noop"}).json()
        done = client.get(f"/v1/jobs/{job['id']}/wait", params={"timeout": "20"}).json()
        assert done["state"] == "completed"
        assert client.post("/v1/queues/slow/pause").status_code == 200
        assert client.post("/v1/jobs", json={"type": "jobd.noop", "queue": "slow"}).status_code == 201
    # The queue gauges come from the store: the daemon that took no part sees the job wait.
    wait_until(
        lambda: (sample(second, "jobd_oldest_pending_job_age_seconds", queue="slow") or 0) > 0,
        what="the other daemon to report the waiting job",
    )
    wait_until(
        lambda: sample(first, "jobd_jobs", queue="slow", state="pending") == 1,
        what="the submitting daemon to count it",
    )
    assert sample(second, "jobd_jobs", queue="slow", state="pending") == 1
    wait_until(lambda: sample(first, "jobd_store_listener_connected") == 1, what="the listener to connect")
    assert (sample(first, "jobd_store_listener_last_connect_timestamp_seconds") or 0) > 0

    exposed = {name for name, _ in scrape(first)}
    for where, queries in (("dashboard", dashboard_queries()), ("rules", rule_queries())):
        named = {name for query in queries for name in re.findall(r"\bjobd_[a-z0-9_]+\b", query)}
        assert len(queries) >= 6, where
        assert named <= exposed, f"the {where} name metrics no daemon exposes: {sorted(named - exposed)}"
        selectors = {name for query in queries for name in re.findall(r"\b([a-zA-Z_:][\w:]*)\{", query)}
        assert selectors - named <= PROMETHEUS_OWN, where
