"""Transactional outbox: messages are written in the same transaction as the
change they announce, and a sender drains them later, so none is lost when
the sender (or the network) is down. Delivery is at least once, in id order
per drain; receivers deduplicate by `OutboxMessage.id`.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from kiosk.storage.database import Database, Transaction, dumps
from kiosk.storage.sql import POSTGRESQL


@dataclass(frozen=True)
class OutboxMessage:
    id: int
    topic: str
    payload: dict[str, Any]
    created_at: str
    attempts: int


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


class Outbox:
    def __init__(self, topic_prefix: str = "") -> None:
        """`topic_prefix` limits drain/pending to one concern's topics (e.g. "credit.")."""
        self.topic_prefix = topic_prefix

    def put(self, tx: Transaction, topic: str, payload: dict[str, Any], *, dedupe_key: str | None = None,
            created_at: str | None = None) -> bool:
        """Queue a message in `tx`. With `dedupe_key`, a second put of the same key is ignored
        (returns False)."""
        n = tx.execute(
            "INSERT INTO outbox (topic, payload, dedupe_key, created_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (dedupe_key) DO NOTHING",
            (topic, dumps(payload), dedupe_key, created_at or _now()))
        return n > 0

    def pending(self, db: Database, limit: int = 1000) -> list[OutboxMessage]:
        rows = db.read(lambda tx: tx.fetch_all(
            "SELECT id, topic, payload, created_at, attempts FROM outbox "
            "WHERE sent_at IS NULL AND topic LIKE ? ORDER BY id LIMIT ?", (self.topic_prefix + "%", limit)))
        return [OutboxMessage(r[0], r[1], json.loads(r[2]), r[3], r[4]) for r in rows]

    def drain(self, db: Database, send: Callable[[OutboxMessage], None], *, limit: int = 100) -> tuple[int, int]:
        """Send pending messages in order; a message is marked sent only after `send`
        returned. Stops at the first failure (recorded on the message) to keep order.
        Returns (sent, failed)."""
        sent = 0
        skip = " FOR UPDATE SKIP LOCKED" if db.dialect == POSTGRESQL else ""
        while sent < limit:
            def claim(tx: Transaction) -> OutboxMessage | None:
                r = tx.fetch_one(
                    "SELECT id, topic, payload, created_at, attempts FROM outbox "
                    "WHERE sent_at IS NULL AND topic LIKE ? ORDER BY id LIMIT 1" + skip,
                    (self.topic_prefix + "%",))
                return None if r is None else OutboxMessage(r[0], r[1], json.loads(r[2]), r[3], r[4])

            msg = db.run(claim)
            if msg is None:
                return sent, 0
            try:
                send(msg)
            except Exception as e:  # the sender's fault is recorded, the message stays
                err = f"{type(e).__name__}: {e}"[:500]
                db.run(lambda tx: tx.execute(
                    "UPDATE outbox SET attempts = attempts + 1, last_error = ? WHERE id = ?", (err, msg.id)))
                return sent, 1
            db.run(lambda tx: tx.execute(
                "UPDATE outbox SET sent_at = ?, attempts = attempts + 1 WHERE id = ? AND sent_at IS NULL",
                (_now(), msg.id)))
            sent += 1
        return sent, 0

