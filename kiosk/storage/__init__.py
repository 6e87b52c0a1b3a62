"""The one storage layer: SQLite by default (WAL, one file), PostgreSQL by URL.

    db = open_database("sqlite:///var/kiosk.db")      # or postgresql://user@host:port/db
    db.migrate(MIGRATIONS)                            # [Migration(name, [DDL, ...]), ...]
    with db.transaction() as tx:                      # write transaction
        tx.execute("INSERT INTO t (a) VALUES (?)", (1,))
    db.run(lambda tx: ..., retries=5)                 # same, retried on serialization failure

Same SQL text on both (`?` placeholders, see `kiosk.storage.sql`). Driver errors
become `kiosk.errors.StorageError` with a code (`serialization_failure`,
`busy`, `unique_violation`, `constraint_violation`, `unavailable`, `sql_error`).
"""
from __future__ import annotations

from kiosk.storage.database import Database, Transaction, open_database
from kiosk.storage.idempotency import IdempotencyStore, request_hash
from kiosk.storage.migrations import Migration
from kiosk.storage.outbox import Outbox, OutboxMessage

__all__ = [
    "Database",
    "IdempotencyStore",
    "Migration",
    "Outbox",
    "OutboxMessage",
    "Transaction",
    "open_database",
    "request_hash",
]
