"""Config: defaults, the file, the environment, and an exact error for every bad value."""

from pathlib import Path

import pytest
import tomllib

from jobd.config import Config, load_config, parse_config
from jobd.errors import ConfigError

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
        ('[metrics]\nlisten = "9464"\n', "metrics.listen", "HOST:PORT"),
        ("[queues.default]\nconcurrency = -1\n", "queues.default.concurrency", "at least 1"),
        ("[queues.default]\nsize = 1\n", "queues.default.size", "unknown key"),
        ('[handlers."x"]\ntimeout = "forever"\n', 'handlers."x".timeout', "duration"),
        ("[queues]\ndefault = 3\n", "queues.default", "table"),
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
