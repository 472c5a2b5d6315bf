"""The SQL of the stores, read from `sql/<dialect>/`: named queries and numbered migrations.

`queries.sql` holds every query of a store, each after a `-- name: NAME` line; comment
lines are dropped (psycopg would read a %(placeholder)s inside one as a parameter).
Migrations are files `NNNN_what.sql`, applied in order, each once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

_MIGRATION_NAME = re.compile(r"^(\d{4})_(\w+)\.sql$")


@dataclass(frozen=True, slots=True, order=True)
class Migration:
    version: int
    name: str
    sql: str


def load_queries(dialect: str) -> dict[str, str]:
    text = (resources.files("jobd.store") / "sql" / dialect / "queries.sql").read_text()
    parts = re.split(r"^-- name: (\w+)\n", text, flags=re.MULTILINE)
    return {
        name: "\n".join(line for line in body.splitlines() if not line.lstrip().startswith("--")).strip()
        for name, body in zip(parts[1::2], parts[2::2], strict=True)
    }


def load_migrations(dialect: str) -> list[Migration]:
    """Every numbered migration of `dialect`, oldest first."""
    found = []
    for entry in (resources.files("jobd.store") / "sql" / dialect).iterdir():
        match = _MIGRATION_NAME.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text()))
    return sorted(found)
