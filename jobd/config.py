"""TOML file + environment -> one frozen, typed `Config`.

Strict: an unknown key or a bad value is a `ConfigError` naming the key and the file
(or the environment variable) it came from. The sections `daemon`, `store`, `api`,
`metrics`, `workers`, `retry` and `retention` may be overridden key by key through
`JOBD_<SECTION>_<KEY>`; `queues`, `handlers` and `plugins` come from the file only.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, get_args, get_origin, get_type_hints

from jobd.durations import format_duration, parse_duration
from jobd.errors import ConfigError

SYSTEM_CONFIG = Path("/etc/jobd/jobd.toml")
DEFAULT_QUEUE = "default"


def duration(default: float, minimum: float = 0.0) -> Any:
    """A dataclass field holding seconds, written in TOML as a duration string."""
    return field(default=default, metadata={"duration": True, "minimum": minimum})


def optional_duration() -> Any:
    return field(default=None, metadata={"duration": True})


@dataclass(frozen=True, slots=True)
class DaemonConfig:
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "text"] = "json"
    shutdown_timeout: float = duration(30.0)


@dataclass(frozen=True, slots=True)
class StoreConfig:
    url: str = ""  # filled from the zero-config defaults
    sqlite_synchronous: Literal["full", "normal"] = "full"
    pool_size: int = 4
    connect_timeout: float = duration(5.0)


@dataclass(frozen=True, slots=True)
class ApiConfig:
    socket: str = ""  # filled from the zero-config defaults
    socket_mode: str = "0660"
    socket_group: str = ""
    max_payload_bytes: int = 1_048_576
    max_request_bytes: int = 67_108_864
    accept_unknown_types: bool = False
    request_timeout: float = duration(30.0)
    max_connections: int = 256


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    listen: str = "127.0.0.1:9464"


@dataclass(frozen=True, slots=True)
class WorkersConfig:
    concurrency: int = 10
    lease: float = duration(30.0, minimum=1.0)  # renewed every third of it
    poll_interval: float = duration(1.0, minimum=0.01)


@dataclass(frozen=True, slots=True)
class RetryConfig:
    max_attempts: int = 3
    base_delay: float = duration(1.0)
    max_delay: float = duration(60.0)
    jitter: bool = True


@dataclass(frozen=True, slots=True)
class RetentionConfig:
    completed: float = duration(7 * 86400.0)
    failed: float = duration(30 * 86400.0)
    cancelled: float = duration(7 * 86400.0)


@dataclass(frozen=True, slots=True)
class QueueConfig:
    concurrency: int | None = None  # None: workers.concurrency
    global_concurrency: int | None = None


@dataclass(frozen=True, slots=True)
class HandlerConfig:
    queue: str | None = None
    timeout: float | None = optional_duration()
    max_attempts: int | None = None
    base_delay: float | None = optional_duration()
    max_delay: float | None = optional_duration()
    jitter: bool | None = None


SECTIONS: Mapping[str, type] = MappingProxyType(
    {
        "daemon": DaemonConfig,
        "store": StoreConfig,
        "api": ApiConfig,
        "metrics": MetricsConfig,
        "workers": WorkersConfig,
        "retry": RetryConfig,
        "retention": RetentionConfig,
    }
)
TABLES = ("queues", "handlers", "plugins")


@dataclass(frozen=True, slots=True)
class Config:
    daemon: DaemonConfig = DaemonConfig()
    store: StoreConfig = StoreConfig()
    api: ApiConfig = ApiConfig()
    metrics: MetricsConfig = MetricsConfig()
    workers: WorkersConfig = WorkersConfig()
    retry: RetryConfig = RetryConfig()
    retention: RetentionConfig = RetentionConfig()
    queues: Mapping[str, QueueConfig] = field(default_factory=dict)
    handlers: Mapping[str, HandlerConfig] = field(default_factory=dict)
    plugins: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    source: str | None = None  # the file read, if any

    def queue_concurrency(self, queue: str) -> int:
        configured = self.queues.get(queue)
        if configured is not None and configured.concurrency is not None:
            return configured.concurrency
        return self.workers.concurrency

    def to_toml_dict(self) -> dict[str, Any]:
        """The effective config as TOML tables (durations as strings, no None)."""
        out: dict[str, Any] = {name: _section_to_dict(getattr(self, name)) for name in SECTIONS}
        out["queues"] = {name: _section_to_dict(q) for name, q in self.queues.items()}
        out["handlers"] = {name: _section_to_dict(h) for name, h in self.handlers.items()}
        out["plugins"] = {name: dict(table) for name, table in self.plugins.items()}
        return out


def _section_to_dict(section: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in dataclasses.fields(section):
        value = getattr(section, item.name)
        if value is None:
            continue
        out[item.name] = format_duration(value) if item.metadata.get("duration") else value
    return out


# -- zero-config defaults -------------------------------------------------------------


def default_store_url(env: Mapping[str, str], uid: int) -> str:
    if env.get("STATE_DIRECTORY"):
        # systemd may pass several directories separated by ':'; the first is ours.
        base = Path(env["STATE_DIRECTORY"].split(":")[0])
    elif uid == 0:
        base = Path("/var/lib/jobd")
    else:
        state_home = env.get("XDG_STATE_HOME") or str(
            Path(env.get("HOME", "~")).expanduser() / ".local/state"
        )
        base = Path(state_home) / "jobd"
    return f"sqlite://{base.absolute()}/jobd.db"


def default_socket(env: Mapping[str, str], uid: int) -> str:
    if env.get("RUNTIME_DIRECTORY"):
        return str(Path(env["RUNTIME_DIRECTORY"].split(":")[0]) / "jobd.sock")
    if uid == 0:
        return "/run/jobd/jobd.sock"
    if env.get("XDG_RUNTIME_DIR"):
        return str(Path(env["XDG_RUNTIME_DIR"]) / "jobd" / "jobd.sock")
    return f"/tmp/jobd-{uid}/jobd.sock"


# -- loading --------------------------------------------------------------------------


def config_path(explicit: str | None, env: Mapping[str, str]) -> Path | None:
    """`--config`, else `$JOBD_CONFIG`, else /etc/jobd/jobd.toml if it exists, else None."""
    if explicit:
        return Path(explicit)
    if env.get("JOBD_CONFIG"):
        return Path(env["JOBD_CONFIG"])
    if SYSTEM_CONFIG.exists():
        return SYSTEM_CONFIG
    return None


def load_config(
    explicit_path: str | None = None,
    env: Mapping[str, str] | None = None,
    uid: int | None = None,
) -> Config:
    """Read the config the way both programs do: defaults, then the file, then the environment."""
    env = os.environ if env is None else env
    uid = os.getuid() if uid is None else uid
    path = config_path(explicit_path, env)
    raw: dict[str, Any] = {}
    source = None
    if path is not None:
        source = str(path)
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError("the config file does not exist", file=source) from None
        except OSError as error:
            raise ConfigError(f"cannot read the config file: {error.strerror}", file=source) from None
        except UnicodeDecodeError:
            raise ConfigError("the config file is not UTF-8 text", file=source) from None
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"not valid TOML: {error}", file=source) from None
    return parse_config(raw, source=source, env=env, uid=uid)


def parse_config(
    raw: Mapping[str, Any],
    *,
    source: str | None = None,
    env: Mapping[str, str] | None = None,
    uid: int | None = None,
) -> Config:
    env = {} if env is None else env
    uid = os.getuid() if uid is None else uid
    where = source or "the config"
    for name in raw:
        if name not in SECTIONS and name not in TABLES:
            raise ConfigError(
                f"unknown section (known: {', '.join([*SECTIONS, *TABLES])})", key=name, file=where
            )
    sections: dict[str, Any] = {}
    origin: dict[str, str] = {}  # "section.key" -> the file or the variable it came from
    for name, cls in SECTIONS.items():
        table = _table(raw, name, where)
        values = {key: (value, where) for key, value in table.items()}
        values.update(_env_overrides(env, name, cls))
        origin.update({f"{name}.{key}": source for key, (_, source) in values.items()})
        sections[name] = _build(cls, name, values)
    if not sections["store"].url:
        sections["store"] = dataclasses.replace(sections["store"], url=default_store_url(env, uid))
    if not sections["api"].socket:
        sections["api"] = dataclasses.replace(sections["api"], socket=default_socket(env, uid))
    _check_store_url(sections["store"].url, origin.get("store.url", where))
    _check_socket_mode(sections["api"].socket_mode, origin.get("api.socket_mode", where))
    _check_listen(sections["metrics"].listen, origin.get("metrics.listen", where))

    handlers = {
        name: _build(HandlerConfig, f'handlers."{name}"', _sourced(table, where))
        for name, table in _named_tables(raw, "handlers", where).items()
    }
    queues = {
        name: _build(QueueConfig, f"queues.{name}", _sourced(table, where))
        for name, table in _named_tables(raw, "queues", where).items()
    }
    for name in [DEFAULT_QUEUE, *(h.queue for h in handlers.values() if h.queue)]:
        queues.setdefault(name, QueueConfig())
    for name in queues:
        _check_name(name, f"queues.{name}", where)
    plugins = {
        name: MappingProxyType(dict(table)) for name, table in _named_tables(raw, "plugins", where).items()
    }
    return Config(
        **sections,
        queues=MappingProxyType(queues),
        handlers=MappingProxyType(handlers),
        plugins=MappingProxyType(plugins),
        source=source,
    )


def _table(raw: Mapping[str, Any], name: str, where: str) -> Mapping[str, Any]:
    table = raw.get(name, {})
    if not isinstance(table, dict):
        raise ConfigError("must be a table", key=name, file=where)
    return table


def _named_tables(raw: Mapping[str, Any], name: str, where: str) -> dict[str, Mapping[str, Any]]:
    tables = _table(raw, name, where)
    for key, value in tables.items():
        if not isinstance(value, dict):
            raise ConfigError("must be a table", key=f"{name}.{key}", file=where)
    return dict(tables)


def _sourced(table: Mapping[str, Any], where: str) -> dict[str, tuple[Any, str]]:
    return {key: (value, where) for key, value in table.items()}


def _env_overrides(env: Mapping[str, str], section: str, cls: type) -> dict[str, tuple[Any, str]]:
    prefix = f"JOBD_{section.upper()}_"
    known = {item.name for item in dataclasses.fields(cls)}
    found: dict[str, tuple[Any, str]] = {}
    for variable, text in env.items():
        if not variable.startswith(prefix):
            continue
        key = variable[len(prefix) :].lower()
        if key not in known:
            raise ConfigError(
                f"unknown key {key!r} of section [{section}] (known: {', '.join(sorted(known))})",
                key=f"{section}.{key}",
                file=f"${variable}",
            )
        found[key] = (_EnvText(text), f"${variable}")
    return found


class _EnvText(str):
    """A value from the environment: parsed as the key's type rather than taken as a string."""


def _build(cls: type, section: str, values: Mapping[str, tuple[Any, str]]) -> Any:
    hints = get_type_hints(cls)
    known = {item.name: item for item in dataclasses.fields(cls)}
    parsed: dict[str, Any] = {}
    for key, (value, where) in values.items():
        item = known.get(key)
        full_key = f"{section}.{key}"
        if item is None:
            raise ConfigError(
                f"unknown key (known in [{section}]: {', '.join(known)})", key=full_key, file=where
            )
        try:
            parsed[key] = _coerce(value, hints[key], bool(item.metadata.get("duration")))
            minimum = item.metadata.get("minimum", 0.0)
            if parsed[key] is not None and item.metadata.get("duration") and parsed[key] < minimum:
                raise ValueError(f"must be at least {format_duration(minimum)}, got {value!r}")
        except ValueError as error:
            raise ConfigError(str(error), key=full_key, file=where) from None
    return cls(**parsed)


def _coerce(value: Any, hint: Any, is_duration: bool) -> Any:
    from_env = isinstance(value, _EnvText)
    if is_duration:
        return parse_duration(str(value) if from_env else value)
    if get_origin(hint) is Literal:
        choices = get_args(hint)
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(map(repr, choices))}, got {value!r}")
        return str(value)
    kind = next((arg for arg in get_args(hint) if arg is not type(None)), hint)
    if kind is bool:
        return _coerce_bool(value, from_env)
    if kind is int:
        return _coerce_int(value, from_env)
    if kind is str:
        if not isinstance(value, str):
            raise ValueError(f"must be a string, got {value!r}")
        return str(value)
    raise TypeError(f"no parser for {hint!r}")  # a programming error in this module


def _coerce_bool(value: Any, from_env: bool) -> bool:
    if isinstance(value, bool):
        return value
    if from_env and value.lower() in ("true", "false"):
        return bool(value.lower() == "true")
    raise ValueError(f"must be true or false, got {str(value)!r}")


def _coerce_int(value: Any, from_env: bool) -> int:
    if from_env:
        try:
            value = int(value)
        except ValueError:
            raise ValueError(f"must be a whole number, got {str(value)!r}") from None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"must be a whole number, got {value!r}")
    if value < 1:
        raise ValueError(f"must be at least 1, got {value}")
    return value


def _check_store_url(url: str, where: str) -> None:
    if url == "memory:" or url.startswith(("postgresql://", "postgres://")):
        return
    if url.startswith("sqlite://"):
        path = url.removeprefix("sqlite://")
        if not path.startswith("/"):
            raise ConfigError(
                f"the SQLite path must be absolute (sqlite:///ABSOLUTE/PATH), got {url!r}",
                key="store.url",
                file=where,
            )
        return
    raise ConfigError(
        f"expected sqlite:///ABSOLUTE/PATH, postgresql://... or memory:, got {url!r}",
        key="store.url",
        file=where,
    )


def _check_socket_mode(mode: str, where: str) -> None:
    try:
        value = int(mode, 8)
    except ValueError:
        value = -1
    if not 0 <= value <= 0o777:
        raise ConfigError(
            f"must be an octal file mode such as '0660', got {mode!r}", key="api.socket_mode", file=where
        )


def _check_listen(listen: str, where: str) -> None:
    if listen == "":
        return
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(
            f"expected HOST:PORT such as '127.0.0.1:9464', or '' to disable, got {listen!r}",
            key="metrics.listen",
            file=where,
        )


def _check_name(name: str, key: str, where: str) -> None:
    if not name or len(name) > 200 or any(ch.isspace() or ch == "/" for ch in name):
        raise ConfigError("a queue name must be 1-200 characters without spaces or '/'", key=key, file=where)
