"""Schema migrations registered per concern: a name and a list of DDL statements.

Each concern keeps its own list (e.g. `kiosk.credit.schema.MIGRATIONS`) and calls
`db.migrate(MIGRATIONS)` when it starts. A migration runs once, in one
transaction, and is recorded in `schema_migrations` with a checksum of its
statements; changing a recorded migration is refused (add a new one instead).
A statement may be a mapping {"sqlite": ..., "postgresql": ...} where the
dialects need different text (triggers); a missing/empty entry is skipped.
On PostgreSQL concurrent migrators are serialised by an advisory lock.
"""
from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from kiosk.errors import StorageError
from kiosk.storage.sql import POSTGRESQL

if TYPE_CHECKING:
    from kiosk.storage.database import Database

_ADVISORY_KEY = 7_410_355_017  # arbitrary, fixed: "kiosk migrations"


@dataclass(frozen=True)
class Migration:
    """`name` must be unique across the project: prefix it with the concern ("credit.001_lines")."""

    name: str
    statements: tuple[str | Mapping[str, str], ...]

    def __init__(self, name: str, statements: Sequence[str | Mapping[str, str]]) -> None:
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "statements", tuple(statements))

    @property
    def checksum(self) -> str:
        h = hashlib.sha256()
        for s in self.statements:
            text = s if isinstance(s, str) else "\x1e".join(f"{k}={v}" for k, v in sorted(s.items()))
            h.update(" ".join(text.split()).encode())
            h.update(b"\0")
        return h.hexdigest()[:16]


_TABLE = """CREATE TABLE IF NOT EXISTS schema_migrations (
    name TEXT PRIMARY KEY, checksum TEXT NOT NULL, applied_at TEXT NOT NULL)"""


def apply(db: Database, migrations: Sequence[Migration]) -> list[str]:
    from kiosk.storage.database import utc_now_text

    names = [m.name for m in migrations]
    if len(set(names)) != len(names):
        raise StorageError(f"duplicate migration names in {names}", code="migration_error")
    applied: list[str] = []
    for m in migrations:
        with db.transaction() as tx:
            if db.dialect == POSTGRESQL:
                tx.execute("SELECT pg_advisory_xact_lock(?)", (_ADVISORY_KEY,))
            tx.execute(_TABLE)
            row = tx.fetch_one("SELECT checksum FROM schema_migrations WHERE name = ?", (m.name,))
            if row is not None:
                if row[0] != m.checksum:
                    raise StorageError(
                        f"migration {m.name!r} was changed after it was applied; add a new migration instead",
                        code="migration_changed")
                continue
            for stmt in m.statements:
                if not isinstance(stmt, str):  # dialect-specific text: {"sqlite": ..., "postgresql": ...}
                    stmt = stmt.get(db.dialect, "")
                if stmt.strip():
                    tx.execute(db.ddl(stmt))
            tx.execute("INSERT INTO schema_migrations (name, checksum, applied_at) VALUES (?, ?, ?)",
                       (m.name, m.checksum, utc_now_text()))
            applied.append(m.name)
    return applied


CORE_MIGRATIONS = [
    Migration("storage.001_idempotency", [
        """CREATE TABLE idempotency_keys (
            scope TEXT NOT NULL,
            key TEXT NOT NULL,
            request_hash TEXT NOT NULL,
            response TEXT,
            created_at TEXT NOT NULL,
            PRIMARY KEY (scope, key))""",
    ]),
    Migration("storage.002_outbox", [
        """CREATE TABLE outbox (
            id SERIAL_PK,
            topic TEXT NOT NULL,
            payload TEXT NOT NULL,
            dedupe_key TEXT UNIQUE,
            created_at TEXT NOT NULL,
            sent_at TEXT,
            attempts INTEGER NOT NULL DEFAULT 0,
            last_error TEXT)""",
        "CREATE INDEX outbox_pending ON outbox (topic, id) WHERE sent_at IS NULL",
    ]),
]
