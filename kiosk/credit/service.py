"""CreditService: the credit line on a real database.

Every mutation runs in one transaction that (1) claims its idempotency key,
(2) locks the line row (`FOR UPDATE` on PostgreSQL; SQLite serialises writers),
(3) accrues interest up to the event's day, (4) applies the pure rule, and
(5) appends a balanced journal entry, updates the projection and queues
outbox notifications. A retried key replays the first Result and moves no
money twice; two counters on one line are serialised by the line lock, so the
limit can never be exceeded.
"""
from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import date, timedelta
from typing import Any

from kiosk.clock import Clock, local_day
from kiosk.credit import ledger, rules
from kiosk.credit.schema import MIGRATIONS
from kiosk.errors import InputError, IntegrityError, StorageError
from kiosk.money import Fen, fen_to_yuan
from kiosk.storage import Database, IdempotencyStore, Outbox, OutboxMessage, Transaction

TOPIC_MEMBER_DRAW = "credit.member_draw"
TOPIC_DUE_SOON = "credit.due_soon"
TOPIC_OVERDUE = "credit.overdue"
TOPIC_SENSELESS_DRAW = "credit.senseless_draw"  # to the payer and, on a family line, to its holder
TOPIC_MANDATE = "credit.mandate"                # a mandate given, replaced or revoked: to payer (and family holder)
DISPUTE_TEXT = ("Not yours? Revoke the mandate at any terminal with your face, in the bank's app, or call the "
                "bank; a disputed charge is refunded by the institution.")

MAX_INSURED_YEARS = 150
_REF_LOCK_CLASS = 0x6B72  # advisory-lock namespace of credit refs ("kr")
MAX_CAP: Fen = 10**12  # 10 billion yuan: far above any line, far inside BIGINT

_LINE_COLS = ("id, holder, birth_date, insured_years, profile, opened_day, limit_fen, principal_fen, holds_fen, "
              "interest_unpaid_fen, interest_paid_fen, refunded_cash_fen, accrued_through")


@dataclass(frozen=True)
class Result:
    """An operation's outcome: a code from `rules` and details (yuan strings)."""

    code: str
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.code == rules.OK

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, **self.detail}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Result:
        d = dict(d)
        return cls(d.pop("code"), d)


@dataclass(frozen=True)
class Owner:
    """Who made a draw or hold: the payee institution (fixmedins_code) and its terminal (appId).
    Only that institution may refund, capture or release it; to anyone else it does not exist."""

    institution: str
    app_id: str = ""


@dataclass(frozen=True)
class MandateUse:
    """A draw without the payer present: the standing mandate it runs under and the visit (mdtrt_id)."""

    mandate_id: str
    visit: str


_MANDATE_COLS = ("id, mandate_id, payer, fixmedins_code, per_visit_fen, per_day_fen, until_day, lines, own_holder, "
                 "family_holder, state, app_id")


@dataclass(frozen=True)
class _Mandate:
    id: int
    mandate_id: str
    payer: str
    fixmedins_code: str
    per_visit: Fen
    per_day: Fen
    until: date
    lines: tuple[str, ...]
    own_holder: str | None
    family_holder: str | None
    state: str
    app_id: str

    @classmethod
    def from_row(cls, r: tuple[Any, ...]) -> _Mandate:
        return cls(int(r[0]), r[1], r[2], r[3], int(r[4]), int(r[5]), date.fromisoformat(r[6]),
                   tuple(r[7].split(",")), r[8], r[9], r[10], r[11])

    def state_on(self, day: date) -> str:
        return "expired" if self.state == "active" and day > self.until else self.state

    def to_json(self) -> dict[str, Any]:
        return {"mandate_id": self.mandate_id, "payer": self.payer, "fixmedins_code": self.fixmedins_code,
                "per_visit": fen_to_yuan(self.per_visit), "per_day": fen_to_yuan(self.per_day),
                "until": self.until.isoformat(), "lines": ",".join(self.lines),
                "holders": {"own": self.own_holder, "family": self.family_holder}}


@dataclass(frozen=True)
class LineState:
    holder: str | None
    limit: Fen
    available: Fen
    principal_outstanding: Fen
    holds_open: Fen
    interest_unpaid: Fen
    interest_paid: Fen
    refunded_cash: Fen
    overdue: bool
    as_of: date

    def to_json(self) -> dict[str, Any]:
        return {"limit": fen_to_yuan(self.limit), "available": fen_to_yuan(self.available),
                "principal_outstanding": fen_to_yuan(self.principal_outstanding),
                "interest_unpaid": fen_to_yuan(self.interest_unpaid),
                "interest_paid": fen_to_yuan(self.interest_paid),
                "refunded_cash": fen_to_yuan(self.refunded_cash), "overdue": self.overdue}


@dataclass(frozen=True)
class CheckReport:
    ok: bool
    lines: int
    entries: int
    postings: int
    problems: list[str]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Line:
    id: int
    holder: str
    birth_date: date
    insured_years: int
    profile: rules.CreditProfile
    opened_day: date
    limit: Fen
    principal: Fen
    holds: Fen
    interest_unpaid: Fen
    interest_paid: Fen
    refunded_cash: Fen
    accrued_through: date

    @property
    def available(self) -> Fen:
        return self.limit - self.principal - self.holds

    @classmethod
    def from_row(cls, r: tuple[Any, ...]) -> _Line:
        return cls(r[0], r[1], date.fromisoformat(r[2]), r[3], rules.profile(r[4]), date.fromisoformat(r[5]),
                   r[6], r[7], r[8], r[9], r[10], r[11], date.fromisoformat(r[12]))


def _positive(amount: Fen, name: str = "amount") -> Fen:
    if isinstance(amount, bool) or not isinstance(amount, int):
        raise InputError("must be an integer number of fen", field=name)
    if amount <= 0:
        raise InputError("must be positive", field=name)
    return amount


def _text(value: object, name: str) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > 200:
        raise InputError("must be a non-empty string (at most 200 characters)", field=name)
    return value


class CreditService:
    """Credit lines, family pay and the journal on one Database."""

    def __init__(self, db: Database, clock: Clock, *, migrate: bool = True) -> None:
        self.db = db
        self.clock = clock
        self.idem = IdempotencyStore("credit")
        self.outbox = Outbox("credit.")
        if migrate:
            db.migrate(MIGRATIONS)

    # -- plumbing -------------------------------------------------------------
    def _today(self) -> date:
        return local_day(self.clock)

    def _mutate(self, key: str, request: dict[str, Any], work: Callable[[Transaction, date], Result]) -> Result:
        day = self._today()

        def body(tx: Transaction) -> Result:
            prior = self.idem.begin(tx, key, request)
            if prior is not None:
                return Result.from_dict(prior)
            res = work(tx, day)
            self.idem.finish(tx, key, res.to_dict())
            return res

        return self.db.run(body)

    def _line_id(self, tx: Transaction, holder: str) -> int | None:
        return tx.scalar("SELECT id FROM credit_lines WHERE holder = ?", (holder,))

    def _lock(self, tx: Transaction, line_id: int) -> _Line:
        r = tx.fetch_one(f"SELECT {_LINE_COLS} FROM credit_lines WHERE id = ?" + tx.for_update, (line_id,))
        if r is None:  # pragma: no cover - lines are never deleted
            raise IntegrityError(f"credit line {line_id} vanished")
        return _Line.from_row(r)

    def _lock_holder(self, tx: Transaction, holder: str) -> _Line | None:
        """The holder's line, locked for this transaction (one round trip), or None."""
        r = tx.fetch_one(f"SELECT {_LINE_COLS} FROM credit_lines WHERE holder = ?" + tx.for_update, (holder,))
        return None if r is None else _Line.from_row(r)

    def _save(self, tx: Transaction, ln: _Line) -> None:
        tx.execute("UPDATE credit_lines SET principal_fen = ?, holds_fen = ?, interest_unpaid_fen = ?, "
                   "interest_paid_fen = ?, refunded_cash_fen = ?, accrued_through = ? WHERE id = ?",
                   (ln.principal, ln.holds, ln.interest_unpaid, ln.interest_paid, ln.refunded_cash,
                    ln.accrued_through.isoformat(), ln.id))

    def _append(self, tx: Transaction, ln: _Line, e: ledger.Entry) -> int:
        e.require_balanced()
        head = (ln.id, e.kind, e.day.isoformat(), e.ref, e.corrects, self.clock.now().isoformat())
        if tx.dialect == "postgresql" and e.postings:  # entry + postings in one round trip
            values = ", ".join(["(?::bigint, ?, ?::bigint, ?::bigint, ?::bigint)"] * len(e.postings))
            params: list[Any] = list(head)
            for p in e.postings:
                params += [ln.id, p.account, p.amount, p.draw_id, p.hold_id]
            return int(tx.scalar(
                "WITH e AS (INSERT INTO credit_entries (line_id, kind, day, ref, corrects, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?) RETURNING id) "
                "INSERT INTO credit_postings (entry_id, line_id, account, amount, draw_id, hold_id) "
                "SELECT e.id, v.line_id, v.account, v.amount, v.draw_id, v.hold_id FROM e, "
                f"(VALUES {values}) AS v (line_id, account, amount, draw_id, hold_id) RETURNING entry_id", params))
        entry_id = tx.scalar("INSERT INTO credit_entries (line_id, kind, day, ref, corrects, created_at) "
                             "VALUES (?, ?, ?, ?, ?, ?) RETURNING id", head)
        if e.postings:
            values = ", ".join(["(?, ?, ?, ?, ?, ?)"] * len(e.postings))
            params = []
            for p in e.postings:
                params += [entry_id, ln.id, p.account, p.amount, p.draw_id, p.hold_id]
            tx.execute("INSERT INTO credit_postings (entry_id, line_id, account, amount, draw_id, hold_id) "
                       f"VALUES {values}", params)
        return int(entry_id)

    def _open_draws(self, tx: Transaction, line_id: int) -> list[rules.OpenDraw]:
        rows = tx.fetch_all("SELECT id, day, unpaid_fen FROM credit_draws WHERE line_id = ? AND unpaid_fen > 0 "
                            "ORDER BY day, id", (line_id,))  # oldest first, ties in event order
        return [rules.OpenDraw(r[0], date.fromisoformat(r[1]), r[2]) for r in rows]

    def _oldest_unpaid_day(self, tx: Transaction, line_id: int) -> date | None:
        d = tx.scalar("SELECT day FROM credit_draws WHERE line_id = ? AND unpaid_fen > 0 ORDER BY day LIMIT 1",
                      (line_id,))
        return None if d is None else date.fromisoformat(d)

    def _accrue(self, tx: Transaction, ln: _Line, day: date) -> None:
        """Interest and notices for the days (accrued_through, day], before the day's event."""
        if day <= ln.accrued_through:
            return
        p = ln.profile
        bearing_before = day - timedelta(days=p.free_days + 1)
        notice_before = day - timedelta(days=p.free_days - p.notice_days_before)
        rows = tx.fetch_all("SELECT id, day, unpaid_fen, ref FROM credit_draws WHERE line_id = ? AND unpaid_fen > 0 "
                            "AND day <= ? ORDER BY day, id", (ln.id, notice_before.isoformat()))
        draws = [rules.OpenDraw(r[0], date.fromisoformat(r[1]), r[2]) for r in rows]
        parts = rules.accrual([d for d in draws if d.day <= bearing_before], ln.accrued_through, day, p)
        if parts:
            self._append(tx, ln, ledger.accrual_entry(day, parts))
            ln.interest_unpaid += sum(f for _, _, f in parts)
        for r, d in zip(rows, draws):
            topic = TOPIC_OVERDUE if d.day <= bearing_before else TOPIC_DUE_SOON
            free_until = d.day + timedelta(days=p.free_days)
            self.outbox.put(tx, topic, {"holder": ln.holder, "ref": r[3], "draw_day": d.day.isoformat(),
                                        "free_until": free_until.isoformat(), "unpaid": fen_to_yuan(d.unpaid)},
                            dedupe_key=f"{topic}:{d.draw_id}", created_at=self.clock.now().isoformat())
        ln.accrued_through = day

    def _resolve_payer(self, tx: Transaction, payer: str, holder: str | None) -> _Line | None:
        """The locked line the payer draws on: `holder`'s, else the payer's own, else the one
        the payer is bound to. Membership is (re)checked by the caller under the lock."""
        if holder is not None:
            return self._lock_holder(tx, holder)
        own = self._lock_holder(tx, payer)
        if own is not None:
            return own
        lid = tx.scalar("SELECT line_id FROM credit_members WHERE member = ? AND active = 1", (payer,))
        return None if lid is None else self._lock(tx, lid)

    def _member(self, tx: Transaction, ln: _Line, payer: str) -> tuple[bool, Fen | None]:
        """(bound, monthly cap) of `payer` on the locked line; the holder is always bound, uncapped."""
        if payer == ln.holder:
            return True, None
        r = tx.fetch_one("SELECT monthly_cap_fen FROM credit_members WHERE line_id = ? AND member = ? AND active = 1",
                         (ln.id, payer))
        return (False, None) if r is None else (True, r[0])

    @staticmethod
    def _insert_ref(tx: Transaction, sql: str, params: tuple[Any, ...], ref: str) -> int:
        """Insert a draw/hold row whose ref must be new across draws and holds.

        The other table is checked in the same statement (NOT EXISTS); the row's
        own table by its UNIQUE constraint. NOT EXISTS cannot see another line's
        uncommitted row (READ COMMITTED; its line lock is not ours), so on PostgreSQL
        the ref itself is locked first: a racing draw/hold with this ref waits for us
        to commit and then sees our row."""
        if tx.dialect == "postgresql":
            tx.scalar("SELECT pg_advisory_xact_lock(?::int, hashtext(?))::text", (_REF_LOCK_CLASS, ref))
        try:
            new_id = tx.scalar(sql, params)
        except StorageError as e:
            if e.code == "unique_violation":
                raise InputError(f"ref {ref!r} is already used by another draw or hold", field="ref") from None
            raise
        if new_id is None:
            raise InputError(f"ref {ref!r} is already used by another draw or hold", field="ref")
        return int(new_id)

    def _new_draw(self, tx: Transaction, ln: _Line, day: date, ref: str, payer: str, amount: Fen,
                  from_hold: bool, owner: Owner | None = None, mandate: MandateUse | None = None) -> int:
        # a captured hold becomes a draw with the hold's ref; any other draw needs a new ref
        guard = "" if from_hold else " WHERE NOT EXISTS (SELECT 1 FROM credit_holds WHERE ref = ?)"
        params: tuple[Any, ...] = (ln.id, ref, payer, day.isoformat(), rules.month_of(day), amount, amount,
                                   int(from_hold), owner.institution if owner else None,
                                   owner.app_id if owner else None, mandate.mandate_id if mandate else None,
                                   mandate.visit if mandate else None) + (() if from_hold else (ref,))
        draw_id = self._insert_ref(
            tx, "INSERT INTO credit_draws (line_id, ref, payer, day, month, original_fen, unpaid_fen, from_hold, "
            "fixmedins_code, app_id, mandate_id, visit) SELECT ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?" + guard
            + " RETURNING id", params, ref)
        self._append(tx, ln, ledger.draw_entry(day, ref, draw_id, amount))
        ln.principal += amount
        if mandate is not None:  # nobody stood at a counter: the payer (and a family line's holder) are told
            self._senseless_notices(tx, ln, day, ref, payer, amount, draw_id, owner, mandate)
        elif payer != ln.holder:  # the holder is notified of every member draw
            self.outbox.put(tx, TOPIC_MEMBER_DRAW, {"holder": ln.holder, "member": payer, "ref": ref,
                                                    "amount": fen_to_yuan(amount), "day": day.isoformat()},
                            dedupe_key=f"{TOPIC_MEMBER_DRAW}:{draw_id}", created_at=self.clock.now().isoformat())
        return draw_id

    def _senseless_notices(self, tx: Transaction, ln: _Line, day: date, ref: str, payer: str, amount: Fen,
                           draw_id: int, owner: Owner | None, mandate: MandateUse) -> None:
        base = {"payer": payer, "holder": ln.holder, "line": "own" if payer == ln.holder else "family",
                "ref": ref, "visit": mandate.visit, "mandate_id": mandate.mandate_id, "amount": fen_to_yuan(amount),
                "fixmedins_code": owner.institution if owner else None, "day": day.isoformat(),
                "dispute": DISPUTE_TEXT}
        now = self.clock.now().isoformat()
        for role, to in (("payer", payer), ("holder", ln.holder)):
            if role == "holder" and to == payer:
                continue
            self.outbox.put(tx, TOPIC_SENSELESS_DRAW, {"to": to, "role": role, **base},
                            dedupe_key=f"{TOPIC_SENSELESS_DRAW}:{draw_id}:{role}", created_at=now)

    def _locked_mandate(self, tx: Transaction, mandate_id: str) -> _Mandate | None:
        r = tx.fetch_one(f"SELECT {_MANDATE_COLS} FROM credit_mandates WHERE mandate_id = ?" + tx.for_update,
                         (mandate_id,))
        return None if r is None else _Mandate.from_row(r)

    @staticmethod
    def _mandate_used(tx: Transaction, m: _Mandate, day: date, visit: str | None) -> tuple[Fen, Fen]:
        """(drawn for this visit, drawn this Shanghai day) under ANY mandate of this payer at this institution:
        replacing a mandate does not reset its caps. Originals: refunds give no cap back (conservative)."""
        rows = tx.fetch_each([
            ("SELECT SUM(d.original_fen) FROM credit_draws d JOIN credit_mandates m ON m.mandate_id = d.mandate_id "
             "WHERE m.payer = ? AND m.fixmedins_code = ? AND d.visit = ?", (m.payer, m.fixmedins_code, visit or "")),
            ("SELECT SUM(d.original_fen) FROM credit_draws d JOIN credit_mandates m ON m.mandate_id = d.mandate_id "
             "WHERE m.payer = ? AND m.fixmedins_code = ? AND d.day = ?", (m.payer, m.fixmedins_code, day.isoformat())),
        ])
        return tuple(int(r[0] or 0) if r else 0 for r in rows)  # type: ignore[return-value]

    def _mandate_check(self, tx: Transaction, ln: _Line, day: date, payer: str, amount: Fen, owner: Owner | None,
                       use: MandateUse) -> str:
        """Under the line lock, and the mandate's row lock (two lines of one mandate, own and family, lock
        different lines; the mandate row serialises them): may this draw go without the payer?"""
        m = self._locked_mandate(tx, use.mandate_id)
        found = m is not None and owner is not None and m.payer == payer and m.fixmedins_code == owner.institution
        if not found or m is None:
            return rules.NO_MANDATE
        kind = "own" if ln.holder == payer else "family"
        allowed = kind in m.lines and ln.holder == (m.own_holder if kind == "own" else m.family_holder)
        visit_used, day_used = self._mandate_used(tx, m, day, use.visit)
        return rules.mandate_check(found=True, state=m.state, until=m.until, today=day, kind=kind, allowed=allowed,
                                   visit_used=visit_used, day_used=day_used, amount=amount,
                                   per_visit=m.per_visit, per_day=m.per_day)

    # -- operations -----------------------------------------------------------
    def open(self, key: str, holder: str, birth_date: date, insured_years: int, profile: str = "default") -> Result:
        _text(holder, "holder")
        if not isinstance(birth_date, date):
            raise InputError("must be a date", field="birth_date")
        if (isinstance(insured_years, bool) or not isinstance(insured_years, int)
                or not 0 <= insured_years <= MAX_INSURED_YEARS):
            raise InputError(f"must be a whole number of years from 0 to {MAX_INSURED_YEARS}", field="insured_years")
        prof = rules.profile(profile)
        req = {"op": "open", "holder": holder, "birth_date": birth_date.isoformat(),
               "insured_years": insured_years, "profile": profile}

        def work(tx: Transaction, day: date) -> Result:
            if self._line_id(tx, holder) is not None:
                return Result(rules.ALREADY_OPEN)
            if not rules.eligible(birth_date, day, prof):
                return Result(rules.INELIGIBLE_AGE, {"age": rules.age_on(birth_date, day)})
            limit = rules.limit_for(insured_years, prof)
            new_id = tx.scalar("INSERT INTO credit_lines (holder, birth_date, insured_years, profile, opened_day, "
                               "limit_fen, accrued_through) VALUES (?, ?, ?, ?, ?, ?, ?) "
                               "ON CONFLICT (holder) DO NOTHING RETURNING id",
                               (holder, birth_date.isoformat(), insured_years, profile, day.isoformat(), limit,
                                day.isoformat()))
            if new_id is None:  # opened concurrently under another key
                return Result(rules.ALREADY_OPEN)
            return Result(rules.OK, {"limit": fen_to_yuan(limit)})

        return self._mutate(key, req, work)

    def bind(self, key: str, holder: str, member: str, relation: str, consent: bool,
             monthly_cap: Fen | None = None) -> Result:
        _text(holder, "holder")
        _text(member, "member")
        rel = rules.relation(relation)
        if not isinstance(consent, bool):
            raise InputError("must be true or false", field="consent")
        if monthly_cap is not None and (isinstance(monthly_cap, bool) or not isinstance(monthly_cap, int)
                                        or not 0 <= monthly_cap <= MAX_CAP):
            raise InputError(f"must be null or an amount from 0 to {fen_to_yuan(MAX_CAP)}", field="monthly_cap")
        if member == holder:
            raise InputError("the holder cannot bind themselves", field="member")
        req = {"op": "bind", "holder": holder, "member": member, "relation": rel, "consent": consent,
               "monthly_cap": monthly_cap}

        def work(tx: Transaction, day: date) -> Result:
            lid = self._line_id(tx, holder)
            if lid is None:
                return Result(rules.NO_LINE)
            ln = self._lock(tx, lid)
            if not consent:
                return Result(rules.NO_CONSENT)
            other = tx.scalar("SELECT line_id FROM credit_members WHERE member = ? AND active = 1", (member,))
            if other is not None and other != ln.id:
                return Result(rules.ALREADY_BOUND)
            if self._line_id(tx, member) is not None:
                raise InputError("holds a credit line of their own", field="member")
            tx.execute("UPDATE credit_members SET active = 0, unbound_day = ? WHERE line_id = ? AND member = ? "
                       "AND active = 1", (day.isoformat(), ln.id, member))
            # another line binding the same member at this moment (its own line lock does not
            # serialise with ours) loses on the one-active-binding index: a value, not a fault
            new_id = tx.scalar("INSERT INTO credit_members (line_id, member, relation, monthly_cap_fen, consent_at, "
                               "bound_day) VALUES (?, ?, ?, ?, ?, ?) "
                               "ON CONFLICT (member) WHERE active = 1 DO NOTHING RETURNING id",
                               (ln.id, member, rel, monthly_cap, self.clock.now().isoformat(), day.isoformat()))
            return Result(rules.OK if new_id is not None else rules.ALREADY_BOUND)

        return self._mutate(key, req, work)

    def unbind(self, key: str, holder: str, member: str) -> Result:
        _text(holder, "holder")
        _text(member, "member")

        def work(tx: Transaction, day: date) -> Result:
            lid = self._line_id(tx, holder)
            if lid is None:
                return Result(rules.NO_LINE)
            self._lock(tx, lid)
            n = tx.execute("UPDATE credit_members SET active = 0, unbound_day = ? WHERE line_id = ? AND member = ? "
                           "AND active = 1", (day.isoformat(), lid, member))
            return Result(rules.OK if n else rules.NOT_BOUND)

        return self._mutate(key, {"op": "unbind", "holder": holder, "member": member}, work)

    def _reserve(self, op: str, key: str, payer: str, amount: Fen, ref: str, holder: str | None,
                 owner: Owner | None = None, mandate: MandateUse | None = None) -> Result:
        _text(payer, "payer")
        _text(ref, "ref")
        _positive(amount)
        req = {"op": op, "payer": payer, "amount": amount, "ref": ref, "holder": holder}
        if owner is not None:  # only then: the keys of requests without an owner keep their digest
            req["owner"] = [owner.institution, owner.app_id]
        if mandate is not None:
            _text(mandate.mandate_id, "mandate_id")
            _text(mandate.visit, "visit")
            if op != "draw":
                raise InputError("only a draw runs under a mandate", field="mandate_id")
            req["mandate"] = [mandate.mandate_id, mandate.visit]

        def work(tx: Transaction, day: date) -> Result:
            line_of = holder
            if mandate is not None and holder is None:  # the line the mandate names (checked again below, locked)
                line_of = tx.scalar("SELECT family_holder FROM credit_mandates WHERE mandate_id = ? AND payer = ? "
                                    "AND lines = 'family'", (mandate.mandate_id, payer))
            ln = self._resolve_payer(tx, payer, line_of)
            if ln is None:
                return Result(rules.NOT_BOUND if holder is None else rules.NO_LINE)
            self._accrue(tx, ln, day)
            if mandate is not None:
                mcode = self._mandate_check(tx, ln, day, payer, amount, owner, mandate)
                if mcode != rules.OK:
                    self._save(tx, ln)
                    return Result(mcode)
            bound, cap = self._member(tx, ln, payer)
            is_overdue = rules.overdue(self._oldest_unpaid_day(tx, ln.id), day, ln.profile)
            month_drawn = None
            if cap is not None:
                month_drawn = tx.scalar("SELECT SUM(original_fen) FROM credit_draws WHERE line_id = ? AND payer = ? "
                                        "AND month = ?", (ln.id, payer, rules.month_of(day)), default=0)
            code = rules.draw_check(has_line=True, bound=bound, is_overdue=is_overdue, amount=amount,
                                    available=ln.available, month_drawn=month_drawn, cap=cap)
            if code != rules.OK:
                self._save(tx, ln)
                return Result(code, {"available": fen_to_yuan(ln.available)})
            if op == "draw":
                self._new_draw(tx, ln, day, ref, payer, amount, from_hold=False, owner=owner, mandate=mandate)
            else:
                hold_id = self._insert_ref(
                    tx, "INSERT INTO credit_holds (line_id, ref, payer, day, amount_fen, fixmedins_code, app_id) "
                    "SELECT ?, ?, ?, ?, ?, ?, ? WHERE NOT EXISTS (SELECT 1 FROM credit_draws WHERE ref = ?) "
                    "RETURNING id", (ln.id, ref, payer, day.isoformat(), amount, owner.institution if owner else None,
                                     owner.app_id if owner else None, ref), ref)
                self._append(tx, ln, ledger.hold_entry(day, ref, hold_id, amount))
                ln.holds += amount
            self._save(tx, ln)
            return Result(rules.OK, {"ref": ref, "amount": fen_to_yuan(amount), "available": fen_to_yuan(ln.available)})

        return self._mutate(key, req, work)

    def draw(self, key: str, payer: str, amount: Fen, ref: str, holder: str | None = None, *,
             owner: Owner | None = None, mandate: MandateUse | None = None) -> Result:
        """Charge `amount` fen to the line of `holder` (or the payer's own / bound line). With `mandate`, a
        senseless draw (the payer not present): only under that active, unexpired mandate of this payer and
        the owner's institution, on a line it names, within its per-visit and per-day caps (checked under
        the line's and the mandate's locks, so concurrent draws cannot pass a cap together)."""
        return self._reserve("draw", key, payer, amount, ref, holder, owner, mandate)

    # -- mandates (senseless outpatient payment) ---------------------------------
    def mandate(self, key: str, payer: str, owner: Owner, per_visit: Fen, per_day: Fen, until: date,
                lines: tuple[str, ...], auth_id: str) -> Result:
        """Record the payer's standing authorisation for `owner`'s institution (the caller checked the
        payer's signed word). One active per payer and institution: a new one replaces the previous.
        Refused `no_line` when none of the named lines exists for the payer."""
        _text(payer, "payer")
        _positive(per_visit, "per_visit")
        _positive(per_day, "per_day")
        if per_day < per_visit or per_day > MAX_CAP:
            raise InputError("must be at least the per-visit cap", field="per_day")
        if not lines or set(lines) - set(rules.MANDATE_LINES) or len(set(lines)) != len(lines):
            raise InputError("must be own, family or both", field="lines")
        lines = tuple(n for n in rules.MANDATE_LINES if n in lines)
        req = {"op": "mandate", "payer": payer, "owner": [owner.institution, owner.app_id], "per_visit": per_visit,
               "per_day": per_day, "until": until.isoformat(), "lines": list(lines), "auth_id": auth_id}

        def work(tx: Transaction, day: date) -> Result:
            if until < day:
                raise InputError("the mandate's last day has passed", field="until")
            own = payer if "own" in lines and self._line_id(tx, payer) is not None else None
            family = None
            if "family" in lines:
                family = tx.scalar("SELECT l.holder FROM credit_members m JOIN credit_lines l ON l.id = m.line_id "
                                   "WHERE m.member = ? AND m.active = 1", (payer,))
            if own is None and family is None:
                return Result(rules.NO_LINE)
            mandate_id = "M" + secrets.token_hex(10)
            now = self.clock.now().isoformat()
            tx.execute("UPDATE credit_mandates SET state = 'replaced', ended_at = ?, ended_by = ? WHERE payer = ? "
                       "AND fixmedins_code = ? AND state = 'active'", (now, f"replaced:{mandate_id}", payer,
                                                                        owner.institution))
            new_id = tx.scalar(
                "INSERT INTO credit_mandates (mandate_id, payer, fixmedins_code, app_id, per_visit_fen, per_day_fen, "
                "until_day, lines, own_holder, family_holder, auth_id, state, created_at) VALUES "
                "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'active', ?) "
                "ON CONFLICT (payer, fixmedins_code) WHERE state = 'active' DO NOTHING RETURNING id",
                (mandate_id, payer, owner.institution, owner.app_id, per_visit, per_day, until.isoformat(),
                 ",".join(lines), own, family, auth_id, now))
            if new_id is None:  # another mandate of this payer here committed meanwhile: start again
                raise StorageError("a mandate was given concurrently", code="serialization_failure")
            m = _Mandate(int(new_id), mandate_id, payer, owner.institution, per_visit, per_day, until, lines, own,
                         family, "active", owner.app_id)
            self._mandate_notice(tx, m, "given")
            return Result(rules.OK, {**m.to_json(), "state": "active"})

        return self._mutate(key, req, work)

    def _mandate_notice(self, tx: Transaction, m: _Mandate, event: str) -> None:
        payload = {"event": event, "mandate_id": m.mandate_id, "payer": m.payer, "fixmedins_code": m.fixmedins_code,
                   "per_visit": fen_to_yuan(m.per_visit), "per_day": fen_to_yuan(m.per_day),
                   "until": m.until.isoformat(), "lines": ",".join(m.lines), "dispute": DISPUTE_TEXT}
        now = self.clock.now().isoformat()
        for role, to in (("payer", m.payer), ("holder", m.family_holder)):
            if to is None or (role == "holder" and to == m.payer):
                continue
            self.outbox.put(tx, TOPIC_MANDATE, {"to": to, "role": role, **payload},
                            dedupe_key=f"{TOPIC_MANDATE}:{m.mandate_id}:{event}:{role}", created_at=now)

    def mandate_revoke(self, key: str, mandate_id: str, *, institution: str | None = None,
                       payer: str | None = None, operator: bool = False, by: str = "") -> Result:
        """End a mandate: its institution (giving up its own authority), its payer (the caller checked the
        payer's signed word) or the bank's operator. Anyone else: `unknown_mandate`, as for one that does
        not exist. An ended mandate answers its state again."""
        _text(mandate_id, "mandate_id")
        req = {"op": "mandate_revoke", "mandate_id": mandate_id, "institution": institution, "payer": payer,
               "operator": operator}

        def work(tx: Transaction, day: date) -> Result:
            m = self._locked_mandate(tx, mandate_id)
            if m is None or not (operator or (institution is not None and m.fixmedins_code == institution)
                                 or (payer is not None and m.payer == payer)):
                return Result(rules.UNKNOWN_MANDATE)
            if m.state == "active":
                tx.execute("UPDATE credit_mandates SET state = 'revoked', ended_at = ?, ended_by = ? WHERE id = ?",
                           (self.clock.now().isoformat(), by or ("operator" if operator else "institution"), m.id))
                self._mandate_notice(tx, m, "revoked")
                return Result(rules.OK, {"mandate_id": mandate_id, "state": "revoked"})
            return Result(rules.OK, {"mandate_id": mandate_id, "state": m.state})

        return self._mutate(key, req, work)

    def mandate_get(self, mandate_id: str, *, institution: str | None, visit: str | None = None) -> Result:
        """A mandate as its institution sees it (or the operator, institution=None): state (active, revoked,
        replaced, expired), caps, what is used today and (given `visit`) on that visit."""
        _text(mandate_id, "mandate_id")
        day = self._today()

        def work(tx: Transaction) -> Result:
            r = tx.fetch_one(f"SELECT {_MANDATE_COLS} FROM credit_mandates WHERE mandate_id = ?", (mandate_id,))
            if r is None or (institution is not None and r[3] != institution):
                return Result(rules.UNKNOWN_MANDATE)
            m = _Mandate.from_row(r)
            used_visit, used_today = self._mandate_used(tx, m, day, visit)
            out = {**m.to_json(), "state": m.state_on(day), "used_today": fen_to_yuan(used_today)}
            if visit is not None:
                out.update(visit=visit, used_visit=fen_to_yuan(used_visit))
            return Result(rules.OK, out)

        return self.db.read(work)

    def mandates_of(self, payer: str) -> list[dict[str, Any]]:
        """The payer's mandates in force today at every institution (the caller checked the payer's word):
        what the payer may revoke at any terminal."""
        _text(payer, "payer")
        day = self._today()

        def work(tx: Transaction) -> list[dict[str, Any]]:
            rows = tx.fetch_all(f"SELECT {_MANDATE_COLS} FROM credit_mandates WHERE payer = ? AND state = 'active' "
                                "ORDER BY id", (payer,))
            ms = [_Mandate.from_row(r) for r in rows]
            return [{**m.to_json(), "state": "active"} for m in ms if m.state_on(day) == "active"]

        return self.db.read(work)

    def hold(self, key: str, payer: str, amount: Fen, ref: str, holder: str | None = None, *,
             owner: Owner | None = None) -> Result:
        """Reserve `amount` for an inpatient deposit; captured at discharge."""
        return self._reserve("hold", key, payer, amount, ref, holder, owner)

    @staticmethod
    def _scoped(req: dict[str, Any], institution: str | None) -> dict[str, Any]:
        if institution is not None:
            req["institution"] = institution
        return req

    def _hold_for(self, tx: Transaction, ref: str, holder: str | None,
                  institution: str | None = None) -> tuple[Result | None, _Line | None, Any]:
        if holder is not None and self._line_id(tx, holder) is None:
            return Result(rules.NO_LINE), None, None
        r = tx.fetch_one("SELECT line_id, fixmedins_code FROM credit_holds WHERE ref = ?", (ref,))
        if r is None or (institution is not None and r[1] != institution):  # another's: as if it did not exist
            return Result(rules.UNKNOWN_REF), None, None
        ln = self._lock(tx, r[0])
        if holder is not None and ln.holder != holder:
            return Result(rules.UNKNOWN_REF), None, None
        h = tx.fetch_one("SELECT id, payer, amount_fen, status, fixmedins_code, app_id FROM credit_holds "
                         "WHERE ref = ?", (ref,))
        if h is None or h[3] != "open":
            return Result(rules.UNKNOWN_REF), None, None
        return None, ln, h

    def capture(self, key: str, ref: str, amount: Fen, holder: str | None = None, *,
                institution: str | None = None) -> Result:
        """Discharge: draw `amount` (at most the hold) dated today and release the rest."""
        _text(ref, "ref")
        if isinstance(amount, bool) or not isinstance(amount, int) or amount < 0:
            raise InputError("must be a non-negative amount", field="amount")

        def work(tx: Transaction, day: date) -> Result:
            early, ln, h = self._hold_for(tx, ref, holder, institution)
            if early is not None or ln is None:
                return early or Result(rules.UNKNOWN_REF)
            self._accrue(tx, ln, day)
            split = rules.capture_split(h[2], amount)
            if split is None:
                self._save(tx, ln)
                return Result(rules.EXCEEDS_HOLD, {"hold": fen_to_yuan(h[2])})
            drawn, released = split
            self._append(tx, ln, ledger.hold_close_entry("capture", day, ref, h[0], h[2]))
            ln.holds -= h[2]
            tx.execute("UPDATE credit_holds SET status = 'captured', captured_fen = ?, closed_day = ? WHERE id = ?",
                       (drawn, day.isoformat(), h[0]))
            if drawn > 0:
                self._new_draw(tx, ln, day, ref, h[1], drawn, from_hold=True,
                               owner=Owner(h[4], h[5] or "") if h[4] is not None else None)
            self._save(tx, ln)
            return Result(rules.OK, {"drawn": fen_to_yuan(drawn), "released": fen_to_yuan(released)})

        return self._mutate(key, self._scoped({"op": "capture", "ref": ref, "amount": amount, "holder": holder},
                                              institution), work)

    def release(self, key: str, ref: str, holder: str | None = None, *, institution: str | None = None) -> Result:
        _text(ref, "ref")

        def work(tx: Transaction, day: date) -> Result:
            early, ln, h = self._hold_for(tx, ref, holder, institution)
            if early is not None or ln is None:
                return early or Result(rules.UNKNOWN_REF)
            self._accrue(tx, ln, day)
            self._append(tx, ln, ledger.hold_close_entry("release", day, ref, h[0], h[2]))
            ln.holds -= h[2]
            tx.execute("UPDATE credit_holds SET status = 'released', captured_fen = 0, closed_day = ? WHERE id = ?",
                       (day.isoformat(), h[0]))
            self._save(tx, ln)
            return Result(rules.OK, {"released": fen_to_yuan(h[2])})

        return self._mutate(key, self._scoped({"op": "release", "ref": ref, "holder": holder}, institution), work)

    def repay(self, key: str, holder: str, amount: Fen) -> Result:
        """Interest first, then principal oldest draw first; more than owed is refused whole."""
        _text(holder, "holder")
        _positive(amount)

        def work(tx: Transaction, day: date) -> Result:
            ln = self._lock_holder(tx, holder)
            if ln is None:
                return Result(rules.NO_LINE)
            self._accrue(tx, ln, day)
            draws = self._open_draws(tx, ln.id)
            plan = rules.allocate_repayment(amount, ln.interest_unpaid, draws)
            if plan is None:
                self._save(tx, ln)
                return Result(rules.OVERPAYMENT, {"owed": fen_to_yuan(ln.interest_unpaid + ln.principal)})
            self._append(tx, ln, ledger.repay_entry(day, amount, plan.interest, plan.principal))
            for draw_id, fen in plan.principal:
                tx.execute("UPDATE credit_draws SET unpaid_fen = unpaid_fen - ? WHERE id = ?", (fen, draw_id))
            paid_principal = sum(f for _, f in plan.principal)
            ln.interest_unpaid -= plan.interest
            ln.interest_paid += plan.interest
            ln.principal -= paid_principal
            self._save(tx, ln)
            return Result(rules.OK, {"interest": fen_to_yuan(plan.interest), "principal": fen_to_yuan(paid_principal)})

        return self._mutate(key, {"op": "repay", "holder": holder, "amount": amount}, work)

    def refund(self, key: str, ref: str, amount: Fen, holder: str | None = None, *,
               institution: str | None = None) -> Result:
        """Credit a refunded bill: the draw's unpaid principal first, the rest back as cash; never above
        what is left of that one draw. With `institution`, only a draw that institution made."""
        _text(ref, "ref")
        _positive(amount)

        def work(tx: Transaction, day: date) -> Result:
            if holder is not None and self._line_id(tx, holder) is None:
                return Result(rules.NO_LINE)
            r = tx.fetch_one("SELECT line_id, fixmedins_code FROM credit_draws WHERE ref = ?", (ref,))
            if r is None or (institution is not None and r[1] != institution):  # another's: as if none
                return Result(rules.UNKNOWN_REF)
            ln = self._lock(tx, r[0])
            if holder is not None and ln.holder != holder:
                return Result(rules.UNKNOWN_REF)
            self._accrue(tx, ln, day)
            d = tx.fetch_one("SELECT id, original_fen, refunded_fen, unpaid_fen FROM credit_draws WHERE ref = ?", (ref,))
            assert d is not None
            split = rules.allocate_refund(amount, d[1], d[2], d[3])
            if split is None:
                self._save(tx, ln)
                return Result(rules.EXCEEDS_ORIGINAL, {"refundable": fen_to_yuan(d[1] - d[2])})
            principal, cash = split
            self._append(tx, ln, ledger.refund_entry(day, ref, d[0], principal, cash))
            tx.execute("UPDATE credit_draws SET unpaid_fen = unpaid_fen - ?, refunded_fen = refunded_fen + ? "
                       "WHERE id = ?", (principal, amount, d[0]))
            ln.principal -= principal
            ln.refunded_cash += cash
            self._save(tx, ln)
            return Result(rules.OK, {"principal": fen_to_yuan(principal), "cash": fen_to_yuan(cash)})

        return self._mutate(key, self._scoped({"op": "refund", "ref": ref, "amount": amount, "holder": holder},
                                              institution), work)

    # -- reading --------------------------------------------------------------
    def state(self, holder: str) -> LineState:
        """The line as of the end of today (accrues interest up to today first)."""
        day = self._today()

        def work(tx: Transaction) -> LineState:
            lid = self._line_id(tx, holder)
            if lid is None:
                return LineState(None, 0, 0, 0, 0, 0, 0, 0, False, day)
            ln = self._lock(tx, lid)
            self._accrue(tx, ln, day)
            self._save(tx, ln)
            od = rules.overdue(self._oldest_unpaid_day(tx, ln.id), day, ln.profile)
            return LineState(ln.holder, ln.limit, ln.available, ln.principal, ln.holds, ln.interest_unpaid,
                             ln.interest_paid, ln.refunded_cash, od, day)

        return self.db.run(work)

    def covers(self, payer: str, amount: Fen) -> tuple[str | None, bool]:
        """(holder of the line the payer draws on, whether a draw of `amount` would pass now: bound,
        not overdue, within the available credit and the member's monthly cap), drawing nothing.
        The least a counter needs to offer the line; (None, False) when the payer has none."""
        _text(payer, "payer")
        _positive(amount)
        day = self._today()

        def work(tx: Transaction) -> tuple[str | None, bool]:
            ln = self._resolve_payer(tx, payer, None)
            if ln is None:
                return None, False
            self._accrue(tx, ln, day)
            bound, cap = self._member(tx, ln, payer)
            month_drawn = None
            if cap is not None:
                month_drawn = tx.scalar("SELECT SUM(original_fen) FROM credit_draws WHERE line_id = ? AND payer = ? "
                                        "AND month = ?", (ln.id, payer, rules.month_of(day)), default=0)
            code = rules.draw_check(has_line=True, bound=bound,
                                    is_overdue=rules.overdue(self._oldest_unpaid_day(tx, ln.id), day, ln.profile),
                                    amount=amount, available=ln.available, month_drawn=month_drawn, cap=cap)
            self._save(tx, ln)
            return (ln.holder if bound else None), code == rules.OK

        return self.db.run(work)

    def statement(self, holder: str) -> dict[str, Any]:
        """The holder's view: state, draws, holds, members (yuan strings)."""
        st = self.state(holder)
        if st.holder is None:
            return {"code": rules.NO_LINE}

        day = st.as_of

        def work(tx: Transaction) -> dict[str, Any]:
            lid = self._line_id(tx, holder)
            draws = tx.fetch_dicts("SELECT ref, payer, day, original_fen, unpaid_fen, refunded_fen, mandate_id, visit "
                                   "FROM credit_draws WHERE line_id = ? ORDER BY id", (lid,))
            for d in draws:  # a senseless draw is marked (mandate, visit); a counter draw has neither
                if d["mandate_id"] is None:
                    del d["mandate_id"], d["visit"]
            mandates = []
            for r in tx.fetch_all(f"SELECT {_MANDATE_COLS} FROM credit_mandates WHERE payer = ? OR own_holder = ? "
                                  "OR family_holder = ? ORDER BY id", (holder, holder, holder)):
                m = _Mandate.from_row(r)
                used = self._mandate_used(tx, m, day, None)[1]  # what counts against its day cap
                mandates.append({**m.to_json(), "state": m.state_on(day), "used_today": fen_to_yuan(used)})
            holds = tx.fetch_dicts("SELECT ref, payer, day, amount_fen, status, captured_fen FROM credit_holds "
                                   "WHERE line_id = ? ORDER BY id", (lid,))
            members = tx.fetch_dicts("SELECT member, relation, monthly_cap_fen, consent_at, bound_day, unbound_day, "
                                     "active FROM credit_members WHERE line_id = ? ORDER BY id", (lid,))
            return {"draws": draws, "holds": holds, "members": members, "mandates": mandates}

        parts = self.db.read(work)

        def yuanify(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
            return [{(k[:-4] if k.endswith("_fen") else k): (fen_to_yuan(v) if k.endswith("_fen") and v is not None
                                                              else v) for k, v in r.items()} for r in rows]

        mandates = parts.pop("mandates")
        return {"code": rules.OK, "holder": holder, "as_of": st.as_of.isoformat(), "state": st.to_json(),
                **{k: yuanify(v) for k, v in parts.items()}, "mandates": mandates}

    def sweep(self) -> int:
        """Daily job: accrue every line to today and queue due/overdue notices. Returns lines touched
        (lines already accrued through today are skipped, so running it often costs little)."""
        day = self._today()
        ids = self.db.read(lambda tx: [r[0] for r in tx.fetch_all(
            "SELECT id FROM credit_lines WHERE accrued_through < ? ORDER BY id", (day.isoformat(),))])
        for lid in ids:
            def work(tx: Transaction, lid: int = lid) -> None:
                ln = self._lock(tx, lid)
                self._accrue(tx, ln, day)
                self._save(tx, ln)
            self.db.run(work)
        return len(ids)

    def drain_notifications(self, send: Callable[[OutboxMessage], None], limit: int = 1000) -> tuple[int, int]:
        """Hand queued holder notifications to `send` (at least once, in order)."""
        return self.outbox.drain(self.db, send, limit=limit)

    # -- verification ----------------------------------------------------------
    def check(self) -> CheckReport:
        """Prove the journal balances and that the projection equals the balances it implies."""
        from kiosk.credit.check import run_check

        return self.db.read(lambda tx: run_check(tx))


__all__ = ["CheckReport", "CreditService", "LineState", "MandateUse", "Owner", "Result"]
