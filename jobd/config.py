"""TOML file + environment -> one frozen, typed `Config`; and the strict parser behind it.

Strict: an unknown key or a bad value is a `ConfigError` naming the key and the file
(or the environment variable) it came from. The sections `daemon`, `store`, `api`,
`metrics`, `workers`, `retry`, `retention` and `tracing` may be overridden key by key through
`JOBD_<SECTION>_<KEY>`; `queues`, `handlers`, `plugins` and `schedules` come from the
file only.

`parse_settings` is that parser, for any frozen dataclass: the daemon's own sections
and every plugin's `[plugins.NAME]` table go through it. `setting` declares a field's
key, whether it is a duration, and its bounds.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType, NoneType, UnionType
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

from jobd.durations import format_duration, parse_duration
from jobd.errors import ConfigError, InvalidJob
from jobd.rates import MAX_COUNT, RateLimit, parse_rate
from jobd.recurrence import MIN_EVERY, parse_cron, parse_zone
from jobd.submission import Submission, check_submission, storable

SYSTEM_CONFIG = Path("/etc/jobd/jobd.toml")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
DEFAULT_QUEUE = "default"
SettingsT = TypeVar("SettingsT")


def setting(
    default: Any,
    *,
    key: str | None = None,
    duration: bool = False,
    minimum: float | None = None,
    maximum: float | None = None,
    from_config: bool = True,
) -> Any:
    """A field of a settings dataclass read by `parse_settings`.

    `key` is the name in the table when it is not the field's (`from` is a Python
    keyword); `duration` reads "30s"-style strings or seconds; `minimum` and `maximum`
    bound a number (a duration's in seconds). A field with `from_config=False` is no
    key at all: the plugin fills it after parsing (a secret read from a named file).
    """
    metadata = {"key": key, "duration": duration, "minimum": minimum, "maximum": maximum}
    return field(default=default, metadata={**metadata, "from_config": from_config})


def duration(default: float | None, minimum: float = 0.0) -> Any:
    """A field holding seconds, written in TOML as a duration string."""
    return setting(default, duration=True, minimum=minimum)


def count(default: int | None) -> Any:
    """A field holding a whole number of at least 1: a size, a limit, a number of attempts."""
    return setting(default, minimum=1)


@dataclass(frozen=True, slots=True)
class DaemonConfig:
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "text"] = "json"
    shutdown_timeout: float = duration(30.0)


@dataclass(frozen=True, slots=True)
class StoreConfig:
    url: str = ""  # filled from the zero-config defaults
    sqlite_synchronous: Literal["full", "normal"] = "full"
    pool_size: int = count(4)
    connect_timeout: float = duration(5.0)
    # PostgreSQL: the session LISTEN runs on; "" means `url`. Needed when `url` goes
    # through a pooler in transaction mode, which cannot keep a LISTEN.
    listen_url: str = ""
    # PostgreSQL: `url` is a pooler in transaction mode (PgBouncer): no session settings,
    # no prepared statements.
    transaction_pooling: bool = False


@dataclass(frozen=True, slots=True)
class ApiConfig:
    socket: str = ""  # filled from the zero-config defaults
    socket_mode: str = "0660"
    socket_group: str = ""
    max_payload_bytes: int = count(1_048_576)
    # At most 256 MiB: a batch goes to a store as one JSON text, which SQLite and
    # PostgreSQL each hold to 1 GB (its payloads escaped, it may be twice the body).
    max_request_bytes: int = setting(67_108_864, minimum=1, maximum=268_435_456)
    accept_unknown_types: bool = False
    request_timeout: float = duration(30.0)
    max_connections: int = setting(256, minimum=2)  # at least one for a long poll, one for the rest

    @property
    def max_waiting(self) -> int:
        """Long polls (`GET /v1/jobs/{id}/wait`) answered at once: half the connections,
        so that clients waiting for jobs never take every connection from the others."""
        return self.max_connections // 2


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    listen: str = "127.0.0.1:9464"


@dataclass(frozen=True, slots=True)
class WorkersConfig:
    concurrency: int = count(10)
    lease: float = duration(30.0, minimum=1.0)  # renewed every third of it
    poll_interval: float = duration(1.0, minimum=0.01)


@dataclass(frozen=True, slots=True)
class RetryConfig:
    max_attempts: int = count(3)
    base_delay: float = duration(1.0)
    max_delay: float = duration(60.0)
    jitter: bool = True


@dataclass(frozen=True, slots=True)
class RetentionConfig:
    completed: float = duration(7 * 86400.0)
    failed: float = duration(30 * 86400.0)
    cancelled: float = duration(7 * 86400.0)


@dataclass(frozen=True, slots=True)
class TracingConfig:
    enabled: bool = False  # needs jobd[otel]; exporting is set by the OTEL_* variables


@dataclass(frozen=True, slots=True)
class QueueConfig:
    concurrency: int | None = count(None)  # None: workers.concurrency
    global_concurrency: int | None = count(None)
    rate: str | None = None  # "20/s", "600/m", "5000/h": starts across all daemons
    burst: int | None = setting(None, minimum=1, maximum=MAX_COUNT)  # None: the rate's count

    def rate_limit(self) -> RateLimit | None:
        """The queue's rate limit, None without one; ValueError for a bad `rate`."""
        return None if self.rate is None else parse_rate(self.rate, self.burst)


@dataclass(frozen=True, slots=True)
class HandlerConfig:
    queue: str | None = None
    timeout: float | None = duration(None)
    max_attempts: int | None = count(None)
    base_delay: float | None = duration(None)
    max_delay: float | None = duration(None)
    jitter: bool | None = None


@dataclass(frozen=True, slots=True)
class ScheduleConfig:
    """`[schedules.NAME]`: `cron` or `every`, and the job each tick makes."""

    cron: str | None = None  # five fields, or a nickname such as @daily
    every: float | None = setting(None, duration=True, minimum=MIN_EVERY)
    timezone: str = "UTC"
    job_type: str = setting("", key="type")
    payload: Any = None
    queue: str | None = None
    priority: int | None = None
    max_attempts: int | None = count(None)
    timeout: float | None = duration(None)
    catch_up: Literal["latest", "all", "none"] = "latest"
    overlap: Literal["allow", "skip"] = "allow"
    jitter: float = duration(0.0)
    enabled: bool = True

    def submission(self) -> Submission:
        """The job each tick makes, checked as any submit is; `InvalidJob` otherwise.
        A tick's job has no delay, so the instant it is checked at does not matter."""
        return check_submission(
            job_type=self.job_type,
            payload=self.payload,
            now=_EPOCH,
            queue=self.queue,
            priority=self.priority,
            max_attempts=self.max_attempts,
            timeout=self.timeout,
        )


SECTIONS: Mapping[str, type] = MappingProxyType(
    {
        "daemon": DaemonConfig,
        "store": StoreConfig,
        "api": ApiConfig,
        "metrics": MetricsConfig,
        "workers": WorkersConfig,
        "retry": RetryConfig,
        "retention": RetentionConfig,
        "tracing": TracingConfig,
    }
)
TABLES = ("queues", "handlers", "plugins", "schedules")


@dataclass(frozen=True, slots=True)
class Config:
    daemon: DaemonConfig = DaemonConfig()
    store: StoreConfig = StoreConfig()
    api: ApiConfig = ApiConfig()
    metrics: MetricsConfig = MetricsConfig()
    workers: WorkersConfig = WorkersConfig()
    retry: RetryConfig = RetryConfig()
    retention: RetentionConfig = RetentionConfig()
    tracing: TracingConfig = TracingConfig()
    queues: Mapping[str, QueueConfig] = field(default_factory=dict)
    handlers: Mapping[str, HandlerConfig] = field(default_factory=dict)
    plugins: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    schedules: Mapping[str, ScheduleConfig] = field(default_factory=dict)
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
        out["schedules"] = {name: _section_to_dict(s) for name, s in self.schedules.items()}
        return out


def _section_to_dict(section: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, item in _config_fields(type(section)).items():
        value = getattr(section, item.name)
        if value is None:
            continue
        out[key] = format_duration(value) if item.metadata.get("duration") else value
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
        values = _sourced(table, where)
        values.update(_env_overrides(env, name, cls))
        origin.update({f"{name}.{key}": given.origin or where for key, given in values.items()})
        sections[name] = _build(cls, name, values)
    if not sections["store"].url:
        sections["store"] = dataclasses.replace(sections["store"], url=default_store_url(env, uid))
    if not sections["api"].socket:
        sections["api"] = dataclasses.replace(sections["api"], socket=default_socket(env, uid))
    _check_store_url(sections["store"].url, origin.get("store.url", where))
    _check_store_listening(sections["store"], origin, where)
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
    for name, queue in queues.items():
        _check_name(name, f"queues.{name}", where)
        _check_rate(queue, f"queues.{name}", where)
    plugins = {
        name: MappingProxyType(dict(table)) for name, table in _named_tables(raw, "plugins", where).items()
    }
    schedules = {
        name: _schedule(name, table, where) for name, table in _named_tables(raw, "schedules", where).items()
    }
    return Config(
        **sections,
        queues=MappingProxyType(queues),
        handlers=MappingProxyType(handlers),
        plugins=MappingProxyType(plugins),
        schedules=MappingProxyType(schedules),
        source=source,
    )


def _schedule(name: str, table: Mapping[str, Any], where: str) -> ScheduleConfig:
    """A schedule's table, each key checked on its own and against the others; what needs
    the loaded handlers (the type, the queue, the payload's validation) is checked when
    the daemon's settings are built (`jobd.settings.build_settings`)."""
    prefix = f"schedules.{name}"
    if not _plain_name(name):
        message = "a schedule name must be 1-200 characters without spaces, '/', NUL or a lone surrogate"
        raise ConfigError(message, key=prefix, file=where)
    schedule = _build(ScheduleConfig, prefix, _sourced(table, where))

    def refuse(key: str, message: str) -> ConfigError:
        return ConfigError(message, key=f"{prefix}.{key}", file=where)

    if schedule.cron is not None and schedule.every is not None:
        raise refuse("every", "give cron or every, not both")
    if schedule.cron is None and schedule.every is None:
        raise refuse("cron", "a schedule needs cron (five fields, or @hourly ...) or every (a duration)")
    if schedule.cron is not None:
        try:
            parse_cron(schedule.cron)
        except ValueError as error:
            raise refuse("cron", str(error)) from None
    try:
        parse_zone(schedule.timezone)
    except ValueError as error:
        raise refuse("timezone", str(error)) from None
    if not schedule.job_type:
        raise refuse("type", "a schedule needs the type of the job its ticks make")
    try:
        schedule.submission()
    except InvalidJob as error:
        raise refuse(error.field or "type", error.message) from None
    return schedule


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


def _sourced(table: Mapping[str, Any], where: str | None) -> dict[str, _Given]:
    return {key: _Given(value, where) for key, value in table.items()}


def _env_overrides(env: Mapping[str, str], section: str, cls: type) -> dict[str, _Given]:
    prefix = f"JOBD_{section.upper()}_"
    known = _config_fields(cls)
    found: dict[str, _Given] = {}
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
        found[key] = _Given(_EnvText(text), f"${variable}")
    return found


# -- the strict parser ------------------------------------------------------------------


def parse_settings(cls: type[SettingsT], table: Mapping[str, Any], prefix: str = "") -> SettingsT:
    """Read `table` into `cls`, a dataclass whose fields are its keys, as strictly as jobd
    reads its own config.

    An unknown key, a value of the wrong type, a bad duration, a value that is not one
    of a `Literal`'s choices or is outside the bounds given with `setting` raise
    `ConfigError` whose `key` is the key's path below `prefix` (`"limits.max"` for the
    prefix `"limits"`). A key left out keeps the field's default. Field types: `bool`,
    `int`, `float`, `str`, a `Literal` of choices, `tuple[T, ...]` of those (a TOML
    array), each also `| None` (for a default of None); `Any` takes the value as TOML
    gives it.

    In a plugin's `jobd_configure`, keys are relative to the plugin's own table: the
    daemon reports them as `plugins.NAME.KEY`, with the config file's name.
    """
    return _build(cls, prefix, _sourced(table, None))


@dataclass(frozen=True, slots=True)
class _Given:
    """A value as the config gives it, and where from: the file, or `$VARIABLE`."""

    value: Any
    origin: str | None


class _EnvText(str):
    """A value from the environment: parsed as the key's type rather than taken as a string."""


_Reader = Callable[[Any], Any]
"""Turns a value as given into the field's value, or raises ValueError saying why not."""


def _config_fields(cls: type) -> dict[str, dataclasses.Field[Any]]:
    """The fields of `cls` that are keys, by key."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    return {
        item.metadata.get("key") or item.name: item
        for item in dataclasses.fields(cls)
        if item.metadata.get("from_config", True)
    }


def _build(cls: type[SettingsT], section: str, values: Mapping[str, _Given]) -> SettingsT:
    known = _config_fields(cls)
    hints = get_type_hints(cls)
    # Every field's reader, given or not: an unsupported type shows on the first parse.
    readers = {
        key: _reader(hints[item.name], item.metadata, f"{cls.__name__}.{item.name}")
        for key, item in known.items()
    }
    parsed: dict[str, Any] = {}
    for key, given in values.items():
        full_key = f"{section}.{key}" if section else key
        if key not in known:
            where = f" in [{section}]" if section else ""
            raise ConfigError(
                f"unknown key (known{where}: {', '.join(known)})", key=full_key, file=given.origin
            )
        try:
            parsed[known[key].name] = readers[key](given.value)
        except ValueError as error:
            raise ConfigError(str(error), key=full_key, file=given.origin) from None
    return cls(**parsed)


def _reader(hint: Any, metadata: Mapping[str, Any], name: str) -> _Reader:
    if hint is Any:
        return _read_any
    if get_origin(hint) in (Union, UnionType):
        kinds = [arg for arg in get_args(hint) if arg is not NoneType]
        if len(kinds) != 1:
            raise TypeError(f"{name}: no parser for {hint!r}")
        hint = kinds[0]
    minimum, maximum = metadata.get("minimum"), metadata.get("maximum")
    if metadata.get("duration"):
        return lambda value: _bounded(parse_duration(value), value, minimum, maximum, format_duration)
    if get_origin(hint) is Literal:
        return _choice(get_args(hint))
    if get_origin(hint) is tuple:
        item, ellipsis = (*get_args(hint), None)[:2]
        if ellipsis is not Ellipsis:
            raise TypeError(f"{name}: a tuple setting is tuple[T, ...], not {hint!r}")
        return _items(_reader(item, {}, name))
    if hint is bool:
        return _read_bool
    if hint is int:
        return lambda value: _bounded(_read_int(value), value, minimum, maximum, str)
    if hint is float:
        return lambda value: _bounded(_read_float(value), value, minimum, maximum, str)
    if hint is str:
        return _read_str
    raise TypeError(f"{name}: no parser for {hint!r}")


def _bounded(
    number: Any, given: Any, minimum: float | None, maximum: float | None, show: Callable[[Any], str]
) -> Any:
    if minimum is not None and number < minimum:
        raise ValueError(f"must be at least {show(minimum)}, got {given!r}")
    if maximum is not None and number > maximum:
        raise ValueError(f"must be at most {show(maximum)}, got {given!r}")
    return number


def _choice(choices: tuple[Any, ...]) -> _Reader:
    def read(value: Any) -> Any:
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(map(repr, choices))}, got {str(value)!r}")
        return str(value) if isinstance(value, _EnvText) else value

    return read


def _items(read_item: _Reader) -> _Reader:
    def read(value: Any) -> tuple[Any, ...]:
        if not isinstance(value, list):
            raise ValueError(f"must be a list, got {value!r}")
        items = []
        for index, item in enumerate(value):
            try:
                items.append(read_item(item))
            except ValueError as error:
                raise ValueError(f"item {index}: {error}") from None
        return tuple(items)

    return read


def _read_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, _EnvText) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise ValueError(f"must be true or false, got {str(value)!r}")


def _read_int(value: Any) -> int:
    if isinstance(value, _EnvText):
        try:
            return int(value)
        except ValueError:
            raise ValueError(f"must be a whole number, got {str(value)!r}") from None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"must be a whole number, got {value!r}")
    return value


def _read_float(value: Any) -> float:
    if isinstance(value, _EnvText):
        try:
            value = float(value)
        except ValueError:
            raise ValueError(f"must be a number, got {str(value)!r}") from None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"must be a finite number, got {value!r}")
    return float(value)


def _read_any(value: Any) -> Any:
    return value


def _read_str(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"must be a string, got {value!r}")
    return str(value)


# -- rules of single values ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StoreLocation:
    """Where a store URL points: its kind, and the SQLite file or the PostgreSQL URL."""

    kind: Literal["memory", "sqlite", "postgresql"]
    target: str  # the SQLite file's absolute path, the PostgreSQL URL as given, "" for memory:


def parse_store_url(url: str) -> StoreLocation:
    """`memory:`, `sqlite:///ABSOLUTE/PATH` or `postgresql://…` (also `postgres://…`); ValueError
    for anything else, naming at most the scheme so that no password reaches a log."""
    if url == "memory:":
        return StoreLocation("memory", "")
    if url.startswith(("postgresql://", "postgres://")):
        return StoreLocation("postgresql", url)
    if url.startswith("sqlite://"):
        path = url.removeprefix("sqlite://")
        if not path.startswith("/"):
            raise ValueError(f"the SQLite path must be absolute (sqlite:///ABSOLUTE/PATH), got {url!r}")
        return StoreLocation("sqlite", path)
    scheme = url.partition("://")[0] if "://" in url else url
    raise ValueError(f"expected sqlite:///ABSOLUTE/PATH, postgresql://... or memory:, got {scheme!r}")


@dataclass(frozen=True, slots=True)
class Address:
    """A TCP address to listen on."""

    host: str  # a name or an address, an IPv6 one without its brackets
    port: int


def parse_address(text: str) -> Address:
    """Read "HOST:PORT" ("[::1]:9464" for IPv6); ValueError otherwise. The port is 1-65535:
    a listener that scrapers must find has no use for whatever port happens to be free."""
    host, sep, port = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"expected HOST:PORT such as '127.0.0.1:9464' (port 1-65535), got {text!r}")
    return Address(host, int(port))


def _check_store_url(url: str, where: str) -> None:
    try:
        parse_store_url(url)
    except ValueError as error:
        raise ConfigError(str(error), key="store.url", file=where) from None


def _check_store_listening(store: StoreConfig, origin: Mapping[str, str], where: str) -> None:
    """`listen_url` and `transaction_pooling` are PostgreSQL's, and pooling needs `listen_url`:
    LISTEN needs a session of its own."""

    def refuse(key: str, message: str) -> ConfigError:
        return ConfigError(message, key=f"store.{key}", file=origin.get(f"store.{key}", where))

    postgres = parse_store_url(store.url).kind == "postgresql"
    if store.transaction_pooling and not postgres:
        raise refuse("transaction_pooling", "only for a PostgreSQL store (store.url = 'postgresql://...')")
    if not store.listen_url:
        if store.transaction_pooling:
            message = (
                "LISTEN needs a session of its own, which a pooler in transaction mode does not keep: "
                "set store.listen_url to a direct connection to PostgreSQL"
            )
            raise refuse("listen_url", message)
        return
    if not postgres:
        raise refuse("listen_url", "only for a PostgreSQL store (store.url = 'postgresql://...')")
    try:
        listening = parse_store_url(store.listen_url).kind
    except ValueError:
        listening = None
    if listening != "postgresql":
        raise refuse("listen_url", "must be a postgresql://... URL, or '' to LISTEN through store.url")


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
    try:
        parse_address(listen)
    except ValueError as error:
        raise ConfigError(f"{error}; '' turns the listener off", key="metrics.listen", file=where) from None


def _check_rate(queue: QueueConfig, prefix: str, where: str) -> None:
    if queue.burst is not None and queue.rate is None:
        raise ConfigError('burst needs a rate (such as rate = "20/s")', key=f"{prefix}.burst", file=where)
    try:
        queue.rate_limit()
    except ValueError as error:
        raise ConfigError(str(error), key=f"{prefix}.rate", file=where) from None


def _plain_name(name: str) -> bool:
    """1-200 characters, none of them a space or '/', and each store can keep it (no NUL,
    no lone surrogate: SQLite's JSON would cut it short, PostgreSQL refuses it)."""
    return 0 < len(name) <= 200 and not any(ch.isspace() or ch == "/" for ch in name) and storable(name)


def _check_name(name: str, key: str, where: str) -> None:
    if not _plain_name(name):
        message = "a queue name must be 1-200 characters without spaces, '/', NUL or a lone surrogate"
        raise ConfigError(message, key=key, file=where)
