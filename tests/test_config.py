"""Config: defaults, the file, the environment, and an exact error for every bad value."""

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pytest

import jobd
from jobd.config import (
    Address,
    Config,
    StoreLocation,
    load_config,
    parse_address,
    parse_config,
    parse_settings,
    parse_store_url,
    setting,
)
from jobd.errors import ConfigError
from jobd.http import bind_tcp
from jobd.rates import RateLimit

USER_ENV = {"HOME": "/home/ann", "XDG_RUNTIME_DIR": "/run/user/1000"}


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "jobd.toml"
    path.write_text(text)
    return str(path)


def test_zero_config_for_an_ordinary_user() -> None:
    config = load_config(None, env=USER_ENV, uid=1000)
    assert config.store.url == "sqlite:///home/ann/.local/state/jobd/jobd.db"
    assert config.api.socket == "/run/user/1000/jobd/jobd.sock"
    assert config.metrics.listen == "127.0.0.1:9464"
    assert config.workers.concurrency == 10
    assert config.retry.max_attempts == 3 and config.retry.base_delay == 1.0
    assert config.retention.failed == 30 * 86400
    assert list(config.queues) == ["default"]
    assert config.source is None


def test_zero_config_without_runtime_dir_and_with_xdg_state() -> None:
    config = load_config(None, env={"HOME": "/h", "XDG_STATE_HOME": "/x/state"}, uid=1234)
    assert config.store.url == "sqlite:///x/state/jobd/jobd.db"
    assert config.api.socket == "/tmp/jobd-1234/jobd.sock"


def test_zero_config_for_root_and_under_systemd() -> None:
    root = load_config(None, env={}, uid=0)
    assert root.store.url == "sqlite:///var/lib/jobd/jobd.db"
    assert root.api.socket == "/run/jobd/jobd.sock"
    systemd = load_config(
        None, env={"STATE_DIRECTORY": "/srv/state", "RUNTIME_DIRECTORY": "/srv/run"}, uid=1000
    )
    assert systemd.store.url == "sqlite:///srv/state/jobd.db"
    assert systemd.api.socket == "/srv/run/jobd.sock"


def test_file_values_and_tables(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
[daemon]
log_format = "text"
shutdown_timeout = "1m"
[store]
url = "memory:"
[workers]
concurrency = 4
lease = "10s"
[queues.default]
concurrency = 2
[queues.reports]
global_concurrency = 1
[handlers."email.send"]
queue = "email"
timeout = "30s"
max_attempts = 5
[plugins.shell]
allowed_commands = ["ls"]
""",
    )
    config = load_config(path, env={}, uid=1000)
    assert config.source == path
    assert config.daemon.log_format == "text" and config.daemon.shutdown_timeout == 60
    assert config.store.url == "memory:"
    assert config.workers.lease == 10
    assert config.queue_concurrency("default") == 2
    assert config.queue_concurrency("reports") == 4  # falls back to workers.concurrency
    assert config.queues["reports"].global_concurrency == 1
    assert "email" in config.queues  # a queue named by a handler exists
    assert config.handlers["email.send"].timeout == 30
    assert config.plugins["shell"]["allowed_commands"] == ["ls"]


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[workers]\nconcurrency = 4\n")
    env = {
        "JOBD_WORKERS_CONCURRENCY": "7",
        "JOBD_RETRY_JITTER": "false",
        "JOBD_RETRY_MAX_DELAY": "2m",
        "JOBD_STORE_URL": "memory:",
        "JOBD_API_ACCEPT_UNKNOWN_TYPES": "true",
        "JOBD_CONFIG": "ignored-here",
        "JOBD_SOCKET": "/not/a/config/key",
    }
    config = load_config(path, env=env, uid=1000)
    assert config.workers.concurrency == 7
    assert config.retry.jitter is False
    assert config.retry.max_delay == 120
    assert config.store.url == "memory:"
    assert config.api.accept_unknown_types is True


def test_jobd_config_variable_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[workers]\nconcurrency = 3\n")
    assert load_config(None, env={"JOBD_CONFIG": path}, uid=1000).workers.concurrency == 3


@pytest.mark.parametrize(
    ("text", "key", "reason"),
    [
        ("[workers]\nconcurency = 3\n", "workers.concurency", "unknown key"),
        ("[wrkers]\n", "wrkers", "unknown section"),
        ("[workers]\nconcurrency = 0\n", "workers.concurrency", "at least 1"),
        ('[workers]\nconcurrency = "ten"\n', "workers.concurrency", "whole number"),
        ("[workers]\nconcurrency = true\n", "workers.concurrency", "whole number"),
        ('[workers]\nlease = "soon"\n', "workers.lease", "duration"),
        ('[daemon]\nlog_level = "loud"\n', "daemon.log_level", "one of"),
        ('[retry]\njitter = "yes"\n', "retry.jitter", "true or false"),
        ('[store]\nurl = "sqlite://relative/jobs.db"\n', "store.url", "absolute"),
        ('[store]\nurl = "mysql://x"\n', "store.url", "expected"),
        ('[api]\nsocket_mode = "rw"\n', "api.socket_mode", "octal"),
        ("[api]\nmax_connections = 1\n", "api.max_connections", "at least 2"),
        ("[api]\nmax_request_bytes = 268435457\n", "api.max_request_bytes", "at most 268435456"),
        ('[metrics]\nlisten = "9464"\n', "metrics.listen", "HOST:PORT"),
        ('[metrics]\nlisten = "127.0.0.1:0"\n', "metrics.listen", "port 1-65535"),
        ("[queues.default]\nconcurrency = -1\n", "queues.default.concurrency", "at least 1"),
        ("[queues.default]\nsize = 1\n", "queues.default.size", "unknown key"),
        ('[handlers."x"]\ntimeout = "forever"\n', 'handlers."x".timeout', "duration"),
        ("[queues]\ndefault = 3\n", "queues.default", "table"),
        ('[queues."a b"]\n', "queues.a b", "without spaces"),
        ('[queues."a\\u0000b"]\n', "queues.a\x00b", "NUL"),
        ('[handlers."x"]\nqueue = "q\\u0000"\n', "queues.q\x00", "NUL"),
        ('[schedules."a\\u0000b"]\nevery = "1m"\ntype = "x"\n', "schedules.a\x00b", "NUL"),
    ],
)
def test_bad_values_name_the_key_and_the_file(tmp_path: Path, text: str, key: str, reason: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={}, uid=1000)
    assert caught.value.key == key
    assert caught.value.file == path
    assert reason in str(caught.value)
    assert path in str(caught.value)


@pytest.mark.parametrize(
    ("table", "rate"),
    [
        ('rate = "20/s"', RateLimit(20, 1, 20)),
        ('rate = " 600/m "\nburst = 50', RateLimit(600, 60, 50)),
        ('rate = "5000/h"\nburst = 1', RateLimit(5000, 3600, 1)),
        ("concurrency = 4", None),
    ],
)
def test_a_queue_rate_and_its_burst(tmp_path: Path, table: str, rate: RateLimit | None) -> None:
    config = load_config(write(tmp_path, f"[queues.webhooks]\n{table}\n"), env={}, uid=1000)
    assert config.queues["webhooks"].rate_limit() == rate


@pytest.mark.parametrize(
    ("table", "key", "reason"),
    [
        ('rate = "20"', "rate", 'expected "N/s", "N/m" or "N/h"'),
        ('rate = "20/d"', "rate", 'expected "N/s", "N/m" or "N/h"'),
        ('rate = "2.5/s"', "rate", 'expected "N/s", "N/m" or "N/h"'),
        ('rate = "-1/s"', "rate", 'expected "N/s", "N/m" or "N/h"'),
        ('rate = "0/s"', "rate", "the count must be 1 to 1000000"),
        ('rate = "2000000/s"', "rate", "the count must be 1 to 1000000"),
        ("rate = 20", "rate", "must be a string"),
        ('rate = "20/s"\nburst = 0', "burst", "at least 1"),
        ('rate = "20/s"\nburst = 1000001', "burst", "at most 1000000"),
        ('rate = "20/s"\nburst = "lots"', "burst", "whole number"),
        ("burst = 5", "burst", "burst needs a rate"),
    ],
)
def test_a_bad_rate_or_burst_names_the_key_and_the_file(
    tmp_path: Path, table: str, key: str, reason: str
) -> None:
    path = write(tmp_path, f"[queues.webhooks]\n{table}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={}, uid=1000)
    assert (caught.value.key, caught.value.file) == (f"queues.webhooks.{key}", path)
    assert reason in str(caught.value)


def test_bad_environment_values_name_the_variable() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(None, env={"JOBD_WORKERS_CONCURRENCY": "many"}, uid=1000)
    assert caught.value.key == "workers.concurrency"
    assert caught.value.file == "$JOBD_WORKERS_CONCURRENCY"
    with pytest.raises(ConfigError) as unknown:
        load_config(None, env={"JOBD_WORKERS_SPEED": "3"}, uid=1000)
    assert unknown.value.key == "workers.speed"
    assert "JOBD_WORKERS_SPEED" in str(unknown.value)


def test_unreadable_files_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(str(tmp_path / "missing.toml"), env={}, uid=1000)
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "[workers\n"), env={}, uid=1000)


def test_effective_config_round_trips_as_toml(tmp_path: Path) -> None:
    import tomli_w

    config = load_config(
        write(tmp_path, '[workers]\nlease = "90s"\n[handlers."a"]\nqueue = "q"\n'), env={}, uid=1000
    )
    text = tomli_w.dumps(config.to_toml_dict())
    assert 'lease = "1m30s"' in text
    again = parse_config(tomllib.loads(text), env={}, uid=1000)
    assert again.to_toml_dict() == config.to_toml_dict()
    assert isinstance(again, Config)


def test_an_environment_value_that_fails_a_check_names_the_variable(tmp_path: Path) -> None:
    path = write(tmp_path, "[workers]\nconcurrency = 2\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={"JOBD_STORE_URL": "sqlite://relative.db"}, uid=1000)
    assert caught.value.key == "store.url" and caught.value.file == "$JOBD_STORE_URL"


@pytest.mark.parametrize(("key", "value"), [("lease", "0s"), ("lease", "500ms"), ("poll_interval", "0")])
def test_intervals_that_would_spin_are_refused(tmp_path: Path, key: str, value: str) -> None:
    with pytest.raises(ConfigError, match="at least") as caught:
        load_config(write(tmp_path, f'[workers]\n{key} = "{value}"\n'), env={}, uid=1000)
    assert caught.value.key == f"workers.{key}"


# -- one home for the store URL and HOST:PORT rules -------------------------------------


def test_listen_url_and_transaction_pooling_from_the_file_and_the_environment(tmp_path: Path) -> None:
    pooled = "postgresql://jobd@pgbouncer:6432/jobd"
    direct = "postgresql://jobd@db:5432/jobd"
    text = f'[store]\nurl = "{pooled}"\ntransaction_pooling = true\nlisten_url = "{direct}"\n'
    config = load_config(write(tmp_path, text), env={}, uid=1000)
    store = config.store
    assert (store.url, store.listen_url, store.transaction_pooling) == (pooled, direct, True)
    env = {
        "JOBD_STORE_URL": pooled,
        "JOBD_STORE_LISTEN_URL": direct,
        "JOBD_STORE_TRANSACTION_POOLING": "true",
    }
    from_env = load_config(None, env=env, uid=1000)
    assert (from_env.store.listen_url, from_env.store.transaction_pooling) == (direct, True)
    assert parse_config({}, env={}, uid=1000).store.listen_url == ""


@pytest.mark.parametrize(
    ("store", "key", "reason"),
    [
        ({"url": "postgresql://db/jobd", "transaction_pooling": True}, "listen_url", "LISTEN needs"),
        ({"url": "sqlite:///x/jobd.db", "transaction_pooling": True}, "transaction_pooling", "PostgreSQL"),
        ({"url": "sqlite:///x/jobd.db", "listen_url": "postgresql://db/jobd"}, "listen_url", "PostgreSQL"),
        ({"url": "postgresql://db/jobd", "listen_url": "sqlite:///x/jobd.db"}, "listen_url", "postgresql://"),
        ({"url": "postgresql://db/jobd", "listen_url": "db:5432"}, "listen_url", "postgresql://"),
        ({"url": "postgresql://db/jobd", "listen_url": 5432}, "listen_url", "string"),
    ],
)
def test_bad_listening_settings_are_refused_naming_the_key(
    store: dict[str, Any], key: str, reason: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"store": store}, source="jobd.toml", env={}, uid=1000)
    assert caught.value.key == f"store.{key}"
    assert caught.value.file == "jobd.toml"
    assert reason in str(caught.value)


def test_listen_url_is_checked_without_echoing_a_password() -> None:
    store = {"url": "postgresql://db/jobd", "listen_url": "postgresqll://jobd:s3cret@db/jobd"}
    with pytest.raises(ConfigError) as caught:
        parse_config({"store": store}, env={"JOBD_STORE_LISTEN_URL": store["listen_url"]}, uid=1000)
    assert caught.value.key == "store.listen_url" and caught.value.file == "$JOBD_STORE_LISTEN_URL"
    assert "s3cret" not in str(caught.value)


@pytest.mark.parametrize(
    ("url", "location"),
    [
        ("memory:", StoreLocation("memory", "")),
        ("sqlite:///var/lib/jobd/jobd.db", StoreLocation("sqlite", "/var/lib/jobd/jobd.db")),
        ("postgresql://jobd@db/jobd", StoreLocation("postgresql", "postgresql://jobd@db/jobd")),
        ("postgres://jobd@db/jobd", StoreLocation("postgresql", "postgres://jobd@db/jobd")),
    ],
)
def test_store_urls_name_their_store(url: str, location: StoreLocation) -> None:
    assert parse_store_url(url) == location
    assert parse_config({"store": {"url": url}}, env={}, uid=1000).store.url == url


def test_a_bad_store_url_is_refused_without_echoing_a_password() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"store": {"url": "postgresqll://jobd:s3cret@db/jobd"}}, env={}, uid=1000)
    assert caught.value.key == "store.url"
    assert "s3cret" not in str(caught.value) and "'postgresqll'" in str(caught.value)


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("127.0.0.1:9464", Address("127.0.0.1", 9464)),
        ("[::1]:1", Address("::1", 1)),
        ("localhost:65535", Address("localhost", 65535)),
    ],
)
def test_good_listen_addresses(text: str, address: Address) -> None:
    assert parse_address(text) == address
    assert parse_config({"metrics": {"listen": text}}, env={}, uid=1000).metrics.listen == text


@pytest.mark.parametrize(
    "text", ["9464", "localhost", "127.0.0.1:http", "127.0.0.1:70000", ":9464", "[]:9464", "127.0.0.1:0"]
)
async def test_the_config_and_the_listener_refuse_the_same_addresses(text: str) -> None:
    """Port 0 was refused by the config and taken by the listener: one rule serves both now."""
    with pytest.raises(ValueError, match="HOST:PORT"):
        parse_address(text)
    with pytest.raises(ConfigError) as by_config:
        parse_config({"metrics": {"listen": text}}, env={}, uid=1000)
    with pytest.raises(ConfigError) as by_listener:
        await bind_tcp(text)
    assert by_config.value.key == by_listener.value.key == "metrics.listen"


# -- parse_settings: the parser plugins share -------------------------------------------


@dataclass(frozen=True, slots=True)
class Knobs:
    name: str = "x"
    enabled: bool = False
    size: int = setting(10, minimum=0, maximum=100)
    ratio: float = setting(0.5, minimum=0.0, maximum=1.0)
    grace: float = setting(5.0, duration=True, minimum=0.001)
    mode: Literal["fast", "safe"] = "safe"
    tags: tuple[str, ...] = ()
    port: int | None = setting(None, minimum=1, maximum=65535)
    sender: str = setting("me@example.com", key="from")
    secret: bytes = setting(b"", from_config=False)


def test_parse_settings_reads_every_kind_of_field() -> None:
    table = {
        "name": "y",
        "enabled": True,
        "size": 0,
        "ratio": 1,
        "grace": "1m30s",
        "mode": "fast",
        "tags": ["a", "b"],
        "port": 25,
        "from": "you@example.com",
    }
    knobs = parse_settings(Knobs, table)
    assert knobs == Knobs("y", True, 0, 1.0, 90.0, "fast", ("a", "b"), 25, "you@example.com")
    assert parse_settings(Knobs, {}) == Knobs()
    assert jobd.parse_settings is parse_settings and jobd.setting is setting


@pytest.mark.parametrize(
    ("table", "key", "reason"),
    [
        ({"nmae": "y"}, "nmae", "unknown key (known: name, enabled, size"),
        ({"secret": "s"}, "secret", "unknown key"),
        ({"sender": "s"}, "sender", "unknown key"),
        ({"name": 3}, "name", "must be a string"),
        ({"enabled": "yes"}, "enabled", "true or false"),
        ({"size": -1}, "size", "at least 0"),
        ({"size": 101}, "size", "at most 100"),
        ({"size": 1.5}, "size", "whole number"),
        ({"size": True}, "size", "whole number"),
        ({"ratio": 2}, "ratio", "at most 1.0"),
        ({"ratio": "half"}, "ratio", "number"),
        ({"grace": "soon"}, "grace", "duration"),
        ({"grace": 0}, "grace", "at least 1ms"),
        ({"mode": "slow"}, "mode", "one of 'fast', 'safe'"),
        ({"tags": "a"}, "tags", "must be a list"),
        ({"tags": ["a", 1]}, "tags", "item 1: must be a string"),
        ({"port": 0}, "port", "at least 1"),
    ],
)
def test_parse_settings_names_the_key_under_its_prefix(table: dict[str, Any], key: str, reason: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_settings(Knobs, table)
    assert caught.value.key == key and reason in str(caught.value)
    with pytest.raises(ConfigError) as nested:
        parse_settings(Knobs, table, "limits")
    assert nested.value.key == f"limits.{key}"


def test_parse_settings_refuses_a_field_type_it_cannot_read_even_with_no_table() -> None:
    @dataclass(frozen=True)
    class Odd:
        when: complex = 0j

    with pytest.raises(TypeError, match=r"Odd.when: no parser"):
        parse_settings(Odd, {})
