"""Pick the store a config's URL names. The only place that knows every implementation."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from jobd.config import StoreConfig, parse_store_url
from jobd.errors import ConfigError
from jobd.store import Store
from jobd.store.memory import MemoryStore
from jobd.store.sqlite import SQLiteStore

_HIDDEN = "***"


def create_store(config: StoreConfig) -> Store:
    """The store `config.url` names; its rules are `jobd.config.parse_store_url`'s."""
    try:
        location = parse_store_url(config.url)
    except ValueError as error:
        raise ConfigError(str(error), key="store.url") from None
    if location.kind == "memory":
        return MemoryStore()
    if location.kind == "sqlite":
        return SQLiteStore(location.target, synchronous=config.sqlite_synchronous)
    # Imported here: a SQLite or memory daemon never loads the PostgreSQL driver.
    from jobd.store.postgres import PostgresStore

    return PostgresStore(
        location.target,
        pool_size=config.pool_size,
        connect_timeout=config.connect_timeout,
        listen_url=config.listen_url or None,
        transaction_pooling=config.transaction_pooling,
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
