"""etc/jobd.toml: the documented default config parses, names every key, and changes nothing."""

from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path

import pytest

from jobd.config import (
    SECTIONS,
    Config,
    HandlerConfig,
    QueueConfig,
    ScheduleConfig,
    _config_fields,
    load_config,
    parse_config,
)

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = ROOT / "etc" / "jobd.toml"
# Left commented out: their defaults depend on the user and on systemd's directories.
COMMENTED_KEYS = {("store", "url"), ("api", "socket")}
# An example setting written as a comment: "# key = value" or "# [table]".
EXAMPLE_LINE = re.compile(r"^# (\[[^\]]+\]|[a-z_]+ = .+)$")


def key_lines(text: str) -> dict[str, set[str]]:
    """Section -> keys set in it; commented example keys are reported with a leading '#'."""
    out: dict[str, set[str]] = {}
    section = ""
    for line in text.splitlines():
        if header := re.fullmatch(r"#? ?\[([^\]]+)\]", line):
            section = header.group(1)
        elif setting := re.fullmatch(r"(# )?([a-z_]+) = .+", line):
            out.setdefault(section, set()).add(("#" if setting.group(1) else "") + setting.group(2))
    return out


def uncommented(text: str) -> str:
    return "\n".join(
        match.group(1) if (match := EXAMPLE_LINE.match(line)) else line for line in text.splitlines()
    )


def without_source(config: Config) -> Config:
    return dataclasses.replace(config, source=None)


@pytest.mark.parametrize("uid", [0, 1000])
def test_the_file_changes_nothing(uid: int) -> None:
    env = {"HOME": "/home/someone"}
    from_file = load_config(str(DEFAULT_CONFIG), env=env, uid=uid)
    assert from_file.source == str(DEFAULT_CONFIG)
    assert without_source(from_file) == parse_config({}, env=env, uid=uid)


def test_every_key_of_every_section_is_documented() -> None:
    found = key_lines(DEFAULT_CONFIG.read_text())
    for section, cls in SECTIONS.items():
        expected = {
            ("#" if (section, item.name) in COMMENTED_KEYS else "") + item.name
            for item in dataclasses.fields(cls)
        }
        # store.url shows two examples (SQLite and PostgreSQL): sets make that one key.
        assert found.get(section, set()) == expected, section


def test_queue_and_handler_keys_are_shown_as_examples() -> None:
    found = key_lines(DEFAULT_CONFIG.read_text())
    assert found["queues.default"] == {"#" + item.name for item in dataclasses.fields(QueueConfig)}
    assert found['handlers."email.send"'] == {"#" + item.name for item in dataclasses.fields(HandlerConfig)}
    assert {"plugins.shell", "plugins.http", "plugins.email"} <= set(found)
    # Every schedule key but `every`, which excludes `cron`: the second example shows it.
    keys = {"#" + key for key in _config_fields(ScheduleConfig)}
    assert found["schedules.nightly-report"] == keys - {"#every"}
    assert found["schedules.cleanup"] == {"#every", "#type", "#payload"}


def test_every_key_has_a_comment() -> None:
    lines = DEFAULT_CONFIG.read_text().splitlines()
    for number, line in enumerate(lines):
        setting = re.fullmatch(r"([a-z_]+) = .+", line)
        if setting is None:
            continue
        above = lines[number - 1]
        # A key's comment is on the line above, or it shares that of the key above it.
        assert above.startswith("#") or re.fullmatch(r"[a-z_]+ = .+", above), setting.group(1)


def test_the_commented_examples_are_valid_too(tmp_path: Path) -> None:
    text = uncommented(DEFAULT_CONFIG.read_text())
    # Two store.url examples: keep the PostgreSQL one (TOML refuses a key set twice).
    text = text.replace('url = "sqlite:///var/lib/jobd/jobd.db"\n', "", 1)
    raw = tomllib.loads(text)
    config = parse_config(raw, source="uncommented example", env={}, uid=1000)
    assert config.store.url == "postgresql://jobd@db.example.com/jobd"
    assert config.api.socket == "/run/jobd/jobd.sock"
    assert config.queue_concurrency("default") == 10
    assert config.queues["default"].global_concurrency == 4
    assert config.handlers["email.send"].queue == "email"
    assert "email" in config.queues
    assert set(config.plugins) == {"shell", "http", "email"}
    nightly, cleanup = config.schedules["nightly-report"], config.schedules["cleanup"]
    assert (nightly.cron, nightly.timezone, nightly.job_type, nightly.overlap) == (
        "30 2 * * *",
        "Europe/Berlin",
        "shell.run",
        "skip",
    )
    assert nightly.payload == {"argv": ["/usr/local/bin/report"]}
    assert (cleanup.every, cleanup.cron) == (900.0, None)
