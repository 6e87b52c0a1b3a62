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
    # senseless outpatient payment (issue 17): the patient's standing authorisations at this institution,
    # the visits registered under them (per institution, POS system and the HIS's visit id) and each
    # charge's share of the caps (the row a charge reserves under the visit's and the mandate's locks)
    Migration("app.005_visits", [
        """CREATE TABLE IF NOT EXISTS app_mandates (
            mandate_id TEXT PRIMARY KEY,
            institution TEXT NOT NULL,
            psn_no TEXT NOT NULL,
            per_visit_fen BIGINT NOT NULL,
            per_day_fen BIGINT NOT NULL,
            until TEXT NOT NULL,
            lines TEXT NOT NULL,
            state TEXT NOT NULL,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL)""",
        "CREATE INDEX IF NOT EXISTS app_mandates_person ON app_mandates (institution, psn_no, state)",
        """CREATE TABLE IF NOT EXISTS app_visits (
            institution TEXT NOT NULL,
            system TEXT NOT NULL,
            visit_id TEXT NOT NULL,
            request_hash TEXT NOT NULL,
            request TEXT NOT NULL,
            order_id TEXT NOT NULL,
            psn_no TEXT,
            insutype TEXT,
            mdtrt_id TEXT,
            visit_token TEXT,
            mandate_id TEXT,
            per_visit_fen BIGINT NOT NULL DEFAULT 0,
            per_day_fen BIGINT NOT NULL DEFAULT 0,
            until TEXT,
            exp BIGINT NOT NULL DEFAULT 0,
            state TEXT NOT NULL,
            reason TEXT,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            day TEXT NOT NULL,
            PRIMARY KEY (institution, system, visit_id))""",
        "CREATE INDEX IF NOT EXISTS app_visits_state ON app_visits (state)",
        "CREATE INDEX IF NOT EXISTS app_visits_mandate ON app_visits (mandate_id)",
        """CREATE TABLE IF NOT EXISTS app_charges (
            institution TEXT NOT NULL,
            system TEXT NOT NULL,
            visit_id TEXT NOT NULL,
            charge_id TEXT NOT NULL,
            order_id TEXT NOT NULL,
            mandate_id TEXT NOT NULL,
            personal_fen BIGINT NOT NULL,
            day TEXT NOT NULL,
            state TEXT NOT NULL,
            created_at TEXT NOT NULL,
            PRIMARY KEY (institution, system, visit_id, charge_id))""",
        "CREATE INDEX IF NOT EXISTS app_charges_mandate_day ON app_charges (mandate_id, day)",
    ]),
]
REFUND_STALE_S = 60  # a 'running' refund attempt older than this was cut off (crash): a retry resumes it

OPEN = ("pending", "running", "reversing", "charge_pending", "opening", "revoke_pending")  # 'reversing': money may have moved; recovery puts
# it back. 'charge_pending' / 'opening': a senseless charge / a visit's registration whose party's answer is
# unknown; recovery completes it by key.
FINAL = ("paid", "held", "failed", "cancelled", "refunded", "partially_refunded", "captured", "returned",
         "registered", "needs_patient", "revoked", "not_revoked")
# Senseless outpatient payment (kiosk.app.visits): a visit's registration is an order of mode 'register'
# (id VISIT_PREFIX + visit id) run at the counter with the patient; each charge the HIS posts is an order
# of mode 'charge' (id CHARGE_PREFIX + visit id + '~' + charge id) run without the patient; a charge the
# mandate cannot pay becomes a normal counter order (COUNTER_PREFIX ...). '~' is in no POS id (pos_api._ID),
# so none of these can meet a POS's own order id, and each is still a plain path segment for the order routes.
VISIT_PREFIX = "visit~"
# the patient revoking her mandates by face (POST /pos/v1/mandates/revoke): an order of mode 'mandate_revoke'
# run at the counter; 'revoke_pending' while the bank's answer to a revocation sent is unknown (recovery
# sends it again by key); 'revoked' (at least one ended) / 'not_revoked' (the bank refused every one)
FACE_REVOKE_PREFIX = "mrevoke~"
CHARGE_PREFIX = "charge~"
COUNTER_PREFIX = "counter~"
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
            f"SELECT {_COLS} FROM app_orders WHERE status IN ('pending', 'running', 'reversing', 'return_pending', "
            "'charge_pending', 'opening', 'revoke_pending') "
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


    # ---------------------------------------------------------------- visits (senseless payment)
    def create_visit(self, institution: str, system: str, visit_id: str, request: dict[str, Any],
                     order_id: str) -> tuple["VisitRow", bool]:
        """Claim a visit id of this POS system: (row, created). The same id with another body is 409
        visit_conflict; an identical retry returns the existing visit."""
        h = request_hash(request)
        now = self._now()

        def work(tx: Any) -> tuple[VisitRow, bool]:
            n = tx.execute("INSERT INTO app_visits (institution, system, visit_id, request_hash, request, order_id, "
                           "state, created_at, updated_at, day) VALUES (?, ?, ?, ?, ?, ?, 'opening', ?, ?, ?) "
                           "ON CONFLICT (institution, system, visit_id) DO NOTHING",
                           (institution, system, visit_id, h, json.dumps(request, sort_keys=True), order_id, now, now,
                            local_day(self.clock).isoformat()))
            r = tx.fetch_one(f"SELECT {_VCOLS}, request_hash FROM app_visits WHERE institution = ? AND system = ? "
                             "AND visit_id = ?", (institution, system, visit_id))
            if n == 0 and r[-1] != h:
                raise ConflictError(f"visit {visit_id!r} already exists with a different request",
                                    code="visit_conflict", field="visit_id")
            return _vrow(r), n == 1

        return self.db.run(work)

    def get_visit(self, institution: str, system: str, visit_id: str) -> "VisitRow | None":
        r = self.db.read(lambda tx: tx.fetch_one(
            f"SELECT {_VCOLS} FROM app_visits WHERE institution = ? AND system = ? AND visit_id = ?",
            (institution, system, visit_id)))
        return _vrow(r) if r else None

    def update_visit(self, institution: str, system: str, visit_id: str, *, expect: tuple[str, ...] = (),
                     **fields: Any) -> bool:
        """Set columns of a visit (only from the `expect` states when given). Returns whether it moved."""
        cols = ", ".join(f"{k} = ?" for k in fields)
        sql = f"UPDATE app_visits SET {cols}, updated_at = ? WHERE institution = ? AND system = ? AND visit_id = ?"
        params: list[Any] = [*fields.values(), self._now(), institution, system, visit_id]
        if expect:
            sql += f" AND state IN ({', '.join('?' for _ in expect)})"
            params += list(expect)
        return self.db.run(lambda tx: tx.execute(sql, tuple(params))) > 0

    def visits_in(self, states: tuple[str, ...], reason: str | None = None) -> list["VisitRow"]:
        marks = ", ".join("?" for _ in states)
        extra, params = ("", states) if reason is None else (" AND reason = ?", (*states, reason))
        return [_vrow(r) for r in self.db.read(lambda tx: tx.fetch_all(
            f"SELECT {_VCOLS} FROM app_visits WHERE state IN ({marks}){extra} ORDER BY created_at", params))]

    def save_mandate(self, institution: str, psn_no: str, mandate_id: str, per_visit_fen: int, per_day_fen: int,
                     until: str, lines: str) -> None:
        """Record the bank's mandate as active; any other active one of this person here is superseded
        (the bank keeps one per payer and institution: a new one revokes the previous)."""
        now = self._now()

        def work(tx: Any) -> None:
            tx.execute("UPDATE app_mandates SET state = 'revoked', updated_at = ? WHERE institution = ? AND "
                       "psn_no = ? AND state = 'active' AND mandate_id <> ?", (now, institution, psn_no, mandate_id))
            tx.execute("INSERT INTO app_mandates (mandate_id, institution, psn_no, per_visit_fen, per_day_fen, until, "
                       "lines, state, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, 'active', ?, ?) "
                       "ON CONFLICT (mandate_id) DO NOTHING",
                       (mandate_id, institution, psn_no, per_visit_fen, per_day_fen, until, lines, now, now))

        self.db.run(work)

    def get_mandate(self, mandate_id: str) -> dict[str, Any] | None:
        r = self.db.read(lambda tx: tx.fetch_one(
            "SELECT mandate_id, institution, psn_no, per_visit_fen, per_day_fen, until, lines, state FROM app_mandates "
            "WHERE mandate_id = ?", (mandate_id,)))
        return None if r is None else {"mandate_id": r[0], "institution": r[1], "psn_no": r[2],
                                       "per_visit_fen": int(r[3]), "per_day_fen": int(r[4]), "until": r[5],
                                       "lines": r[6], "state": r[7]}

    def active_mandate(self, institution: str, psn_no: str) -> dict[str, Any] | None:
        mid = self.db.read(lambda tx: tx.scalar(
            "SELECT mandate_id FROM app_mandates WHERE institution = ? AND psn_no = ? AND state = 'active' "
            "ORDER BY created_at DESC LIMIT 1", (institution, psn_no)))
        return self.get_mandate(mid) if mid else None

    def set_mandate_state(self, mandate_id: str, state: str, *, expect: tuple[str, ...] = ()) -> bool:
        """Move a mandate (active -> revoking -> revoked); its open visits are revoked with it."""
        now = self._now()

        def work(tx: Any) -> bool:
            sql = "UPDATE app_mandates SET state = ?, updated_at = ? WHERE mandate_id = ?"
            params: list[Any] = [state, now, mandate_id]
            if expect:
                sql += f" AND state IN ({', '.join('?' for _ in expect)})"
                params += list(expect)
            n = tx.execute(sql, tuple(params))
            if n and state in ("revoking", "revoked"):
                tx.execute("UPDATE app_visits SET state = 'revoked', reason = 'mandate_revoked', updated_at = ? "
                           "WHERE mandate_id = ? AND state = 'open'", (now, mandate_id))
            return n > 0

        return self.db.run(work)

    def mandates_in(self, state: str) -> list[dict[str, Any]]:
        ids = self.db.read(lambda tx: tx.fetch_all("SELECT mandate_id FROM app_mandates WHERE state = ?", (state,)))
        return [m for m in (self.get_mandate(r[0]) for r in ids) if m]

    def reserve_charge(self, institution: str, system: str, visit_id: str, charge_id: str, order_id: str,
                       personal_fen: int, now_unix: int, today: str) -> tuple[str, int, int]:
        """The kiosk's cap check of one charge's personal share, atomic: the visit's row and then its
        mandate's row are locked (FOR UPDATE on PostgreSQL; SQLite serialises writers), so two charges of
        one visit (or of one mandate's day) from two departments cannot pass the caps together.
        Returns (reason, used this visit, used today): reason '' when reserved (or already reserved by an
        earlier attempt of this charge), else visit_closed / visit_expired / mandate_revoked /
        mandate_expired / mandate_cap_visit / mandate_cap_day."""
        def work(tx: Any) -> tuple[str, int, int]:
            v = tx.fetch_one("SELECT state, exp, mandate_id, per_visit_fen, per_day_fen, until FROM app_visits "
                             "WHERE institution = ? AND system = ? AND visit_id = ?" + tx.for_update,
                             (institution, system, visit_id))
            if v is None:
                return "visit_closed", 0, 0
            state, exp, mandate_id, per_visit, per_day, until = v
            m = tx.fetch_one("SELECT state FROM app_mandates WHERE mandate_id = ?" + tx.for_update, (mandate_id,))
            mine = tx.fetch_one("SELECT personal_fen FROM app_charges WHERE institution = ? AND system = ? AND "
                                "visit_id = ? AND charge_id = ? AND state IN ('reserved', 'paid')",
                                (institution, system, visit_id, charge_id))
            used_visit = int(tx.scalar("SELECT COALESCE(SUM(personal_fen), 0) FROM app_charges WHERE institution = ? "
                                       "AND system = ? AND visit_id = ? AND state IN ('reserved', 'paid')",
                                       (institution, system, visit_id), default=0))
            used_day = int(tx.scalar("SELECT COALESCE(SUM(personal_fen), 0) FROM app_charges WHERE mandate_id = ? "
                                     "AND day = ? AND state IN ('reserved', 'paid')", (mandate_id, today), default=0))
            if mine is not None:
                return "", used_visit, used_day
            if state in ("revoked",) or m is None or m[0] != "active":
                return "mandate_revoked", used_visit, used_day
            if state != "open":
                return "visit_closed", used_visit, used_day
            if int(exp) <= now_unix:
                return "visit_expired", used_visit, used_day
            if str(until) < today:
                return "mandate_expired", used_visit, used_day
            if used_visit + personal_fen > int(per_visit):
                return "mandate_cap_visit", used_visit, used_day
            if used_day + personal_fen > int(per_day):
                return "mandate_cap_day", used_visit, used_day
            tx.execute("INSERT INTO app_charges (institution, system, visit_id, charge_id, order_id, mandate_id, "
                       "personal_fen, day, state, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'reserved', ?) "
                       "ON CONFLICT (institution, system, visit_id, charge_id) DO UPDATE SET state = 'reserved', "
                       "personal_fen = excluded.personal_fen",
                       (institution, system, visit_id, charge_id, order_id, mandate_id, personal_fen, today,
                        self._now()))
            return "", used_visit + personal_fen, used_day + personal_fen

        return self.db.run(work)

    def finish_charge(self, institution: str, system: str, visit_id: str, charge_id: str, state: str, *,
                      personal_fen: int | None = None, notice: dict[str, Any] | None = None) -> None:
        """A charge's cap share becomes 'paid' (with the settled personal share) or 'released'; a paid
        charge's notice to the patient is queued in the same transaction (kiosk outbox, once per id)."""
        from kiosk.storage import Outbox

        def work(tx: Any) -> None:
            if personal_fen is None:
                tx.execute("UPDATE app_charges SET state = ? WHERE institution = ? AND system = ? AND visit_id = ? "
                           "AND charge_id = ?", (state, institution, system, visit_id, charge_id))
            else:
                tx.execute("UPDATE app_charges SET state = ?, personal_fen = ? WHERE institution = ? AND system = ? "
                           "AND visit_id = ? AND charge_id = ?",
                           (state, personal_fen, institution, system, visit_id, charge_id))
            if notice is not None:
                Outbox().put(tx, NOTICE_TOPIC, notice, dedupe_key=f"{NOTICE_TOPIC}/{notice['notice_id']}")

        self.db.run(work)

    def queue_notice(self, notice: dict[str, Any]) -> bool:
        from kiosk.storage import Outbox

        return self.db.run(lambda tx: Outbox().put(tx, NOTICE_TOPIC, notice,
                                                   dedupe_key=f"{NOTICE_TOPIC}/{notice['notice_id']}"))

    def charges_of_visit(self, institution: str, system: str, visit_id: str) -> list[dict[str, Any]]:
        rows = self.db.read(lambda tx: tx.fetch_all(
            "SELECT charge_id, order_id, personal_fen, state, day, created_at FROM app_charges WHERE institution = ? "
            "AND system = ? AND visit_id = ? ORDER BY created_at, charge_id", (institution, system, visit_id)))
        return [{"charge_id": r[0], "order_id": r[1], "personal_fen": int(r[2]), "state": r[3], "day": r[4]}
                for r in rows]


# the kiosk outbox's topic of the patient's notices (delivered to the centre's ec.notify by the idle pass)
NOTICE_TOPIC = "app.notice"


@dataclass(frozen=True)
class VisitRow:
    institution: str
    system: str
    visit_id: str
    request: dict[str, Any]
    order_id: str
    psn_no: str
    insutype: str
    mdtrt_id: str
    visit_token: str
    mandate_id: str
    per_visit_fen: int
    per_day_fen: int
    until: str
    exp: int
    state: str
    reason: str | None
    created_at: str
    updated_at: str


_VCOLS = ("institution, system, visit_id, request, order_id, psn_no, insutype, mdtrt_id, visit_token, mandate_id, "
          "per_visit_fen, per_day_fen, until, exp, state, reason, created_at, updated_at")


def _vrow(r: Any) -> VisitRow:
    return VisitRow(institution=r[0], system=r[1], visit_id=r[2], request=json.loads(r[3]), order_id=r[4],
                    psn_no=r[5] or "", insutype=r[6] or "", mdtrt_id=r[7] or "", visit_token=r[8] or "",
                    mandate_id=r[9] or "", per_visit_fen=int(r[10]), per_day_fen=int(r[11]), until=r[12] or "",
                    exp=int(r[13]), state=r[14], reason=r[15], created_at=r[16], updated_at=r[17])
