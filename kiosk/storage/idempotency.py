"""Idempotency keys: the same key with the same request replays the stored
response; the same key with a different request is a ConflictError.

The key is claimed with `INSERT ... ON CONFLICT DO NOTHING` inside the caller's
transaction, so the claim, the work and the stored response commit together
(or not at all), and a concurrent retry with the same key waits for the first
one (PostgreSQL row lock / SQLite writer lock) and then replays it.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from kiosk.errors import ConflictError, InputError, StorageError
from kiosk.storage.database import Database, Transaction, dumps


def request_hash(request: Any) -> str:
    return hashlib.sha256(dumps(request).encode()).hexdigest()


class IdempotencyStore:
    """Keys live in one table, separated by `scope` (e.g. "credit", "bank.pay")."""

    def __init__(self, scope: str) -> None:
        self.scope = scope

    def begin(self, tx: Transaction, key: str, request: Any) -> Any | None:
        """Claim `key` for `request`. Returns the stored response of an earlier
        identical request (replay), or None when the caller must do the work."""
        sql, params, h = self.claim_statement(key, request)
        return self.resolve(tx, key, h, tx.fetch_one(sql, params))

    def claim_statement(self, key: str, request: Any) -> tuple[str, tuple[Any, ...], str]:
        """The claim as (sql, params, request hash), for a caller that sends it together with
        other statements (`Transaction.fetch_each`); hand its row to `resolve`."""
        if not isinstance(key, str) or not key.strip() or len(key) > 200:
            raise InputError("must be a non-empty string of at most 200 characters", field="idempotency_key")
        h = request_hash(request)
        now = datetime.now(timezone.utc).isoformat()
        return ("INSERT INTO idempotency_keys (scope, key, request_hash, created_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (scope, key) DO NOTHING RETURNING key", (self.scope, key, h, now), h)

    def resolve(self, tx: Transaction, key: str, h: str, claimed: Any) -> Any | None:
        """After the claim statement: None (ours: do the work) or the earlier answer (replay)."""
        if claimed is not None:
            return None
        row = tx.fetch_one("SELECT request_hash, response FROM idempotency_keys WHERE scope = ? AND key = ?",
                           (self.scope, key))
        if row is None:  # pragma: no cover - the conflicting row vanished (rolled back): retry
            raise StorageError("idempotency key changed under us", code="serialization_failure")
        if row[0] != h:
            raise ConflictError(f"idempotency key {key!r} was already used for a different request",
                                code="idempotency_conflict", field="idempotency_key")
        if row[1] is None:
            raise ConflictError(f"idempotency key {key!r} is in use by a request still running",
                                code="idempotency_in_progress", field="idempotency_key")
        return json.loads(row[1])

    def finish(self, tx: Transaction, key: str, response: Any, *, at_commit: bool = False) -> None:
        """Store the response for `key` (same transaction as `begin`); `at_commit` when the
        caller reads nothing more of this key: it then travels with COMMIT."""
        args = ("UPDATE idempotency_keys SET response = ? WHERE scope = ? AND key = ?",
                (dumps(response), self.scope, key))
        if at_commit:
            tx.execute_at_commit(*args)
        else:
            tx.execute(*args)

    def execute(self, db: Database, key: str, request: Any,
                work: Callable[[Transaction], Any]) -> tuple[Any, bool]:
        """Run `work(tx)` once per key. Returns (response, replayed). The response
        must be JSON-serialisable; a replay returns it as parsed JSON."""

        def body(tx: Transaction) -> tuple[Any, bool]:
            prior = self.begin(tx, key, request)
            if prior is not None:
                return prior, True
            resp = work(tx)
            self.finish(tx, key, resp)
            return resp, False

        return db.run(body)
