"""Payment orders and the session journal, on kiosk.storage (SQLite / PostgreSQL).

`app_orders` is what the POS sees: one row per (system, order_id), with the
request's hash (a retry with another body is a conflict) and the outcome.
`app_journal` is append-only: a step is written BEFORE the external call it
announces (and a result step after), so a crash at any instant leaves enough
to resume or reverse (see kiosk.app.recovery). No face data is ever written:
steps carry ids and amounts only.
"""
from __future__ import annotations

import json
from datetime import datetime
from dataclasses import dataclass
from typing import Any

from kiosk.clock import Clock, local_day
from kiosk.errors import ConflictError, InputError
from kiosk.storage import Database, Migration, request_hash

MIGRATIONS = [
    Migration("app.001_orders_journal", [
        """CREATE TABLE IF NOT EXISTS app_orders (
            system TEXT NOT NULL,
            order_id TEXT NOT NULL,
            request_hash TEXT NOT NULL,
            request TEXT NOT NULL,
            mode TEXT NOT NULL,
            status TEXT NOT NULL,
            reason TEXT,
            result TEXT,
            psn_no TEXT,
            setl_id TEXT,
            refunded_fen BIGINT NOT NULL DEFAULT 0,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            day TEXT NOT NULL,
            PRIMARY KEY (system, order_id))""",
        "CREATE INDEX IF NOT EXISTS app_orders_status ON app_orders (status)",
        "CREATE INDEX IF NOT EXISTS app_orders_day ON app_orders (day)",
        """CREATE TABLE IF NOT EXISTS app_journal (
            id SERIAL_PK,
            system TEXT NOT NULL,
            order_id TEXT NOT NULL,
            step TEXT NOT NULL,
            data TEXT NOT NULL,
            at TEXT NOT NULL)""",
        "CREATE INDEX IF NOT EXISTS app_journal_order ON app_journal (system, order_id)",
        """CREATE TABLE IF NOT EXISTS app_refunds (
            system TEXT NOT NULL,
            refund_id TEXT NOT NULL,
            order_id TEXT NOT NULL,
            request_hash TEXT NOT NULL,
            amount_fen BIGINT NOT NULL,
            status TEXT NOT NULL,
            result TEXT,
            created_at TEXT NOT NULL,
            day TEXT NOT NULL,
            PRIMARY KEY (system, refund_id))""",
    ]),
    # when the current attempt of a refund started: a failed or abandoned (crash) attempt is
    # taken up again by a retry with the same refund id
    Migration("app.002_refund_attempts", ["ALTER TABLE app_refunds ADD COLUMN attempt_at TEXT"]),
    # recovery looks refunds up by state on every idle pass, and an order's refunds decide its state
    Migration("app.003_refund_lookups", [
        "CREATE INDEX IF NOT EXISTS app_refunds_status ON app_refunds (status)",
        "CREATE INDEX IF NOT EXISTS app_refunds_order ON app_refunds (system, order_id)",
    ]),
    # the day-end (kiosk.app.reconcile): the orders whose money moved in a window of days, by the journal's
    # money steps and their time (an order of an earlier day recovered today is today's), and the refunds
    # of those days
    Migration("app.004_dayend_lookups", [
        "CREATE INDEX IF NOT EXISTS app_journal_step_at ON app_journal (step, at)",
        "CREATE INDEX IF NOT EXISTS app_refunds_day ON app_refunds (day)",
    ]),
]
REFUND_STALE_S = 60  # a 'running' refund attempt older than this was cut off (crash): a retry resumes it

OPEN = ("pending", "running", "reversing")  # 'reversing': money may have moved; recovery puts it back
FINAL = ("paid", "held", "failed", "cancelled", "refunded", "partially_refunded", "captured", "returned")
# Item-level returns (kiosk.app.terminal): a return is its own row, order id RETURN_PREFIX + return id
# (a '/' no POS order id can hold), mode 'return'. While it runs the original order is 'returning';
# a return whose party's answer is unknown is 'return_pending' (recovery completes it by its keys);
# 'return_failed': a party refused after the original settlement was reversed (an operator looks).
RETURN_PREFIX = "return/"
RETURN_OPEN = ("return_pending",)
# A paid order while a refund is under way: 'refund_pending' (a party's answer is not known yet;
# recovery resolves it by key), 'refund_failed' (a party definitively refused after another applied
# its part: the parties disagree and an operator must look; the cross-party check names it).
REFUND_STATES = ("refund_pending", "refund_failed")

# app_refunds.status: 'running' (an attempt in progress), 'pending' (a party's answer unknown;
# reserved amount kept), 'refunded', 'failed' (refused before anything applied; reservation given
# back), 'refused' (refused after the other party applied; reservation kept). What the POS reads:
REFUND_VIEW = {"running": "refund_pending", "pending": "refund_pending", "refunded": "refunded",
               "failed": "refund_failed", "refused": "refund_failed"}


@dataclass(frozen=True)
class OrderRow:
    system: str
    order_id: str
    request: dict[str, Any]
    mode: str
    status: str
    reason: str | None
    result: dict[str, Any] | None
    refunded_fen: int
    created_at: str
    updated_at: str

    def to_json(self) -> dict[str, Any]:
        return {"order_id": self.order_id, "mode": self.mode, "status": self.status, "reason": self.reason,
                "result": self.result, "created_at": self.created_at, "updated_at": self.updated_at}


def _row(r: Any) -> OrderRow:
    return OrderRow(system=r[0], order_id=r[1], request=json.loads(r[2]), mode=r[3], status=r[4], reason=r[5],
                    result=json.loads(r[6]) if r[6] else None, refunded_fen=int(r[7]), created_at=r[8], updated_at=r[9])


_COLS = "system, order_id, request, mode, status, reason, result, refunded_fen, created_at, updated_at"


class Store:
    def __init__(self, db: Database, clock: Clock) -> None:
        self.db = db
        self.clock = clock
        db.migrate(MIGRATIONS)

    def _now(self) -> str:
        return self.clock.now().isoformat()

    # ---------------------------------------------------------------- orders
    def create_order(self, system: str, order_id: str, request: dict[str, Any], mode: str) -> tuple[OrderRow, bool]:
        """Insert the order, or return the existing one for an identical retry (created=False).

        The same order id with a different body is a ConflictError (HTTP 409)."""
        h = request_hash(request)
        now = self._now()

        def work(tx: Any) -> tuple[OrderRow, bool]:
            # claim first: two POS retries racing on one order id cannot both create it
            n = tx.execute("INSERT INTO app_orders (system, order_id, request_hash, request, mode, status, created_at, "
                           "updated_at, day) VALUES (?, ?, ?, ?, ?, 'pending', ?, ?, ?) "
                           "ON CONFLICT (system, order_id) DO NOTHING",
                           (system, order_id, h, json.dumps(request, sort_keys=True), mode, now, now,
                            local_day(self.clock).isoformat()))
            row = tx.fetch_one(f"SELECT {_COLS}, request_hash FROM app_orders WHERE system = ? AND order_id = ?",
                               (system, order_id))
            if n == 0 and row[10] != h:
                raise ConflictError(f"order {order_id!r} already exists with a different request",
                                    code="order_conflict", field="order_id")
            return _row(row), n == 1

        return self.db.run(work)

    def get(self, system: str, order_id: str) -> OrderRow | None:
        r = self.db.read(lambda tx: tx.fetch_one(f"SELECT {_COLS} FROM app_orders WHERE system = ? AND order_id = ?",
                                                 (system, order_id)))
        return _row(r) if r else None

    def set_status(self, system: str, order_id: str, status: str, *, reason: str | None = None,
                   result: dict[str, Any] | None = None, expect: tuple[str, ...] | None = None) -> bool:
        """Move an order to `status` (only from `expect` when given). Returns whether it moved."""
        now = self._now()
        sql = "UPDATE app_orders SET status = ?, reason = ?, updated_at = ?"
        params: list[Any] = [status, reason, now]
        if result is not None:
            sql += ", result = ?, psn_no = ?, setl_id = ?"
            params += [json.dumps(result, sort_keys=True), result.get("psn_no"), result.get("setl_id")]
        sql += " WHERE system = ? AND order_id = ?"
        params += [system, order_id]
        if expect:
            sql += f" AND status IN ({', '.join('?' for _ in expect)})"
            params += list(expect)
        return self.db.run(lambda tx: tx.execute(sql, tuple(params))) > 0

    def open_orders(self) -> list[OrderRow]:
        return [_row(r) for r in self.db.read(lambda tx: tx.fetch_all(
            f"SELECT {_COLS} FROM app_orders WHERE status IN ('pending', 'running', 'reversing', 'return_pending') "
            "ORDER BY created_at"))]

    def orders_of_day(self, system: str, day: str) -> list[OrderRow]:
        return [_row(r) for r in self.db.read(lambda tx: tx.fetch_all(
            f"SELECT {_COLS} FROM app_orders WHERE system = ? AND day = ? ORDER BY created_at, order_id",
            (system, day)))]

    def begin_return(self, system: str, order_id: str, return_id: str,
                     request: dict[str, Any]) -> tuple[OrderRow, bool]:
        """Create the return's row and mark the original 'returning' in one transaction (a second
        return or a refund of it is refused meanwhile). Returns (return row, created); an identical
        retry returns the existing row, the same return id with another body is 409 return_conflict."""
        rid = RETURN_PREFIX + return_id
        h = request_hash(request)
        now = self._now()

        def work(tx: Any) -> tuple[OrderRow, bool]:
            r = tx.fetch_one(f"SELECT {_COLS}, request_hash FROM app_orders WHERE system = ? AND order_id = ?",
                             (system, rid))
            if r is not None:
                if r[10] != h:
                    raise ConflictError(f"return {return_id!r} already exists with a different request",
                                        code="return_conflict", field="return_id")
                return _row(r), False
            n = tx.execute("UPDATE app_orders SET status = 'returning', updated_at = ? WHERE system = ? AND "
                           "order_id = ? AND status = 'paid' AND mode = 'outpatient' AND refunded_fen = 0",
                           (now, system, order_id))
            if n == 0:
                raise ConflictError(f"order {order_id!r} cannot be returned now: only a paid outpatient order "
                                    "without refunds or another return", code="not_returnable", field="order_id")
            tx.execute("INSERT INTO app_orders (system, order_id, request_hash, request, mode, status, created_at, "
                       "updated_at, day) VALUES (?, ?, ?, ?, 'return', 'pending', ?, ?, ?)",
                       (system, rid, h, json.dumps(request, sort_keys=True), now, now,
                        local_day(self.clock).isoformat()))
            row = tx.fetch_one(f"SELECT {_COLS} FROM app_orders WHERE system = ? AND order_id = ?", (system, rid))
            return _row(row), True

        return self.db.run(work)

    # ---------------------------------------------------------------- journal
    def record(self, system: str, order_id: str, step: str, data: dict[str, Any] | None = None) -> None:
        self.db.run(lambda tx: tx.execute(
            "INSERT INTO app_journal (system, order_id, step, data, at) VALUES (?, ?, ?, ?, ?)",
            (system, order_id, step, json.dumps(data or {}, sort_keys=True), self._now())))

    def steps(self, system: str, order_id: str) -> list[tuple[str, dict[str, Any]]]:
        rows = self.db.read(lambda tx: tx.fetch_all(
            "SELECT step, data FROM app_journal WHERE system = ? AND order_id = ? ORDER BY id", (system, order_id)))
        return [(r[0], json.loads(r[1])) for r in rows]

    # ---------------------------------------------------------------- refunds
    def begin_refund(self, system: str, order_id: str, refund_id: str, amount_fen: int,
                     request: dict[str, Any], limit_fen: int) -> tuple[dict[str, Any] | None, bool]:
        """Claim a refund id. Returns (stored result, replayed). A new claim reserves
        `amount_fen` against the order (never above `limit_fen` in total)."""
        h = request_hash({"order_id": order_id, **request})
        now = self._now()

        def work(tx: Any) -> tuple[dict[str, Any] | None, bool]:
            # the order row is locked first, so refunds of one order (and their total) are serialised
            tx.fetch_one("SELECT refunded_fen FROM app_orders WHERE system = ? AND order_id = ?" + tx.for_update,
                         (system, order_id))
            r = tx.fetch_one("SELECT request_hash, status, result, COALESCE(attempt_at, created_at) FROM app_refunds "
                             "WHERE system = ? AND refund_id = ?", (system, refund_id))
            reserve = amount_fen
            if r is not None:
                if r[0] != h:
                    raise ConflictError(f"refund {refund_id!r} already exists with a different request",
                                        code="refund_conflict", field="refund_id")
                if not self._retryable(r[1], r[3]):
                    return (json.loads(r[2]) if r[2] else {"status": REFUND_VIEW.get(r[1], r[1])}), True
                reserve = amount_fen if r[1] == "failed" else 0  # pending/cut off/refused: still reserved
            done = tx.scalar("SELECT refunded_fen FROM app_orders WHERE system = ? AND order_id = ?",
                             (system, order_id), default=0)
            if done + reserve > limit_fen:
                raise InputError(f"refunds would total more than the refundable {limit_fen / 100:.2f}",
                                 field="amount")
            if r is None:
                tx.execute("INSERT INTO app_refunds (system, refund_id, order_id, request_hash, amount_fen, status, "
                           "created_at, day, attempt_at) VALUES (?, ?, ?, ?, ?, 'running', ?, ?, ?)",
                           (system, refund_id, order_id, h, amount_fen, now, local_day(self.clock).isoformat(), now))
            else:  # the same request again after a failed, pending or cut-off attempt: keys make it safe
                tx.execute("UPDATE app_refunds SET status = 'running', result = NULL, attempt_at = ? "
                           "WHERE system = ? AND refund_id = ?", (now, system, refund_id))
            if reserve:
                tx.execute("UPDATE app_orders SET refunded_fen = refunded_fen + ?, updated_at = ? "
                           "WHERE system = ? AND order_id = ?", (reserve, now, system, order_id))
            return None, False

        return self.db.run(work)

    def find_refund(self, system: str, order_id: str, refund_id: str,
                    request: dict[str, Any]) -> dict[str, Any] | None:
        """The stored answer of an earlier identical refund request (a retry), else None.

        The same refund id with a different request is a ConflictError."""
        h = request_hash({"order_id": order_id, **request})
        r = self.db.read(lambda tx: tx.fetch_one(
            "SELECT request_hash, status, result, COALESCE(attempt_at, created_at) FROM app_refunds "
            "WHERE system = ? AND refund_id = ?", (system, refund_id)))
        if r is None:
            return None
        if r[0] != h:
            raise ConflictError(f"refund {refund_id!r} already exists with a different request",
                                code="refund_conflict", field="refund_id")
        if self._retryable(r[1], r[3]):
            return None  # begin_refund takes it up again
        return json.loads(r[2]) if r[2] else {"status": REFUND_VIEW.get(r[1], r[1])}

    def refund_status(self, system: str, refund_id: str) -> str | None:
        """The stored status of a refund id of this system (None: never asked for)."""
        return self.db.read(lambda tx: tx.scalar("SELECT status FROM app_refunds WHERE system = ? AND refund_id = ?",
                                                 (system, refund_id)))

    def _retryable(self, status: str, attempt_at: str) -> bool:
        """A failed, refused or pending attempt, or one left 'running' by a crash, is tried again by the
        same request (every call is keyed: a step that applied is replayed, never applied twice)."""
        if status in ("failed", "refused", "pending"):
            return True
        if status != "running":
            return False
        started = datetime.fromisoformat(attempt_at)
        return (self.clock.now() - started).total_seconds() > REFUND_STALE_S

    def finish_refund(self, system: str, order_id: str, refund_id: str, status: str, result: dict[str, Any],
                      release_fen: int = 0) -> None:
        """Store the refund's result; a failed refund gives its reserved amount back."""
        def work(tx: Any) -> None:
            tx.execute("UPDATE app_refunds SET status = ?, result = ? WHERE system = ? AND refund_id = ?",
                       (status, json.dumps(result, sort_keys=True), system, refund_id))
            if release_fen:
                tx.execute("UPDATE app_orders SET refunded_fen = refunded_fen - ? WHERE system = ? AND order_id = ?",
                           (release_fen, system, order_id))
        self.db.run(work)

    def open_refunds(self) -> list[tuple[str, str, str, int, str]]:
        """(system, refund_id, order_id, amount_fen, status) of every refund still running or pending."""
        return [(r[0], r[1], r[2], int(r[3]), r[4]) for r in self.db.read(lambda tx: tx.fetch_all(
            "SELECT system, refund_id, order_id, amount_fen, status FROM app_refunds "
            "WHERE status IN ('running', 'pending') ORDER BY created_at, refund_id"))]

    def retake_refund(self, system: str, refund_id: str) -> bool:
        """Claim a running (cut off) or pending refund for a recovery attempt; False when it has
        moved on meanwhile (e.g. the POS's retry resolved it)."""
        now = self._now()
        return self.db.run(lambda tx: tx.execute(
            "UPDATE app_refunds SET status = 'running', attempt_at = ? WHERE system = ? AND refund_id = ? "
            "AND status IN ('running', 'pending')", (now, system, refund_id))) > 0

    def refunds_of_order(self, system: str, order_id: str) -> list[dict[str, Any]]:
        """Every refund of one order: refund_id, status (as stored), amount_fen, result."""
        rows = self.db.read(lambda tx: tx.fetch_all(
            "SELECT refund_id, status, amount_fen, result FROM app_refunds WHERE system = ? AND order_id = ? "
            "ORDER BY created_at, refund_id", (system, order_id)))
        return [{"refund_id": r[0], "status": r[1], "amount_fen": int(r[2]),
                 "result": json.loads(r[3]) if r[3] else None} for r in rows]

    def refunds_of_day(self, system: str, day: str) -> list[dict[str, Any]]:
        rows = self.db.read(lambda tx: tx.fetch_all(
            "SELECT refund_id, order_id, amount_fen, status, created_at FROM app_refunds "
            "WHERE system = ? AND day = ? ORDER BY created_at, refund_id", (system, day)))
        return [{"refund_id": r[0], "order_id": r[1], "amount_fen": int(r[2]), "status": r[3], "created_at": r[4]}
                for r in rows]

