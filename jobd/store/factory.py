"""Pick the store a config's URL names. The only place that knows every implementation."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from jobd.config import StoreConfig
from jobd.errors import ConfigError
from jobd.store import Store
from jobd.store.memory import MemoryStore
from jobd.store.sqlite import SQLiteStore

_HIDDEN = "***"


def create_store(config: StoreConfig) -> Store:
    """`memory:`, `sqlite:///ABSOLUTE/PATH` or `postgresql://…` (also `postgres://…`)."""
    url = config.url
    if url == "memory:":
        return MemoryStore()
    if url.startswith("sqlite://"):
        path = url.removeprefix("sqlite://")
        if not path.startswith("/"):
            raise ConfigError(
                f"the SQLite path must be absolute (sqlite:///ABSOLUTE/PATH), got {url!r}", key="store.url"
            )
        return SQLiteStore(path, synchronous=config.sqlite_synchronous)
    if url.startswith(("postgresql://", "postgres://")):
        # Imported here: a SQLite or memory daemon never loads the PostgreSQL driver.
        from jobd.store.postgres import PostgresStore

        return PostgresStore(url, pool_size=config.pool_size, connect_timeout=config.connect_timeout)
    raise ConfigError(
        f"expected sqlite:///ABSOLUTE/PATH, postgresql://... or memory:, got {describe(url)!r}",
        key="store.url",
    )


def describe(url: str) -> str:
    """`url` fit for logs: any password, in the authority or the query, replaced by ***."""
    parts = urlsplit(url)
    if parts.password is None and "password" not in parts.query.lower():
        return url
    netloc = parts.netloc
    if parts.password is not None:
        user, _, host = netloc.rpartition("@")
        netloc = f"{user.partition(':')[0]}:{_HIDDEN}@{host}"
    query = parts.query
    if "password" in query.lower():
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode(
            [(key, _HIDDEN if key.lower() == "password" else value) for key, value in pairs], safe="*"
        )
    return urlunsplit(parts._replace(netloc=netloc, query=query))
