"""Senseless outpatient payment at the terminal (issue 17): one face at registration, then the
visit's charges paid as the HIS posts them, without the patient.

    POST /pos/v1/visits                      -> a counter session of mode 'register': face, the mandate's
                                                terms on the screen, the confirm key, then (journaled)
                                                credit.mandate -> 2201 -> the visit is open
    POST /pos/v1/visits/{id}/charges         -> 2206 on the visit token -> the kiosk's cap check (atomic,
                                                under the visit's and the mandate's row locks) -> 2207 ->
                                                credit.draw under the mandate -> paid, and a notice queued
    POST /pos/v1/visits/{id}/close|revoke    -> the summary printed and sent / the mandate revoked

A charge is an order of mode 'charge' (kiosk.app.store.CHARGE_PREFIX): the refund, reconcile and
cross-check machinery of counter payments applies to it unchanged (same journal steps: settle,
settled, draw, drawn, paid; keys by kiosk.app.order_key.scoped_key). What the mandate cannot pay
(a cap, expiry, revocation, at the kiosk or at the bank or the centre) becomes a normal counter order
for the patient (COUNTER_PREFIX), nothing left charged. The journal step comes before every external
call; recovery continues a registration or a charge from its journal by the same keys and msgids.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Callable

from kiosk.clock import SHANGHAI, local_day
from kiosk.errors import ConflictError, InputError, RemoteError
from kiosk.money import fen_to_yuan
from kiosk.storage import Outbox
from kiosk.app.order_key import scoped_key
from kiosk.app.ports import MANDATE_REFUSALS, Person, VisitRef
from kiosk.app.session import Order, Outcome, split_json
from kiosk.app.store import (CHARGE_PREFIX, COUNTER_PREFIX, FACE_REVOKE_PREFIX, NOTICE_TOPIC, VISIT_PREFIX, OrderRow,
                             VisitRow)

# seconds a close waits for the visit's charges already past the cap check (a draw answering late)
CLOSE_WAIT_S = 15.0

if TYPE_CHECKING:
    from kiosk.app.session import CounterSession
    from kiosk.app.terminal import Terminal

log = logging.getLogger("kiosk.app.visits")

DEFAULT_PER_VISIT = 50000    # fen: 500.00 per visit
DEFAULT_PER_DAY = 100000     # fen: 1,000.00 per day
DEFAULT_DAYS = 90            # the mandate runs until today + 90 days (inclusive)
MAX_CAP = 2000000            # the centre signs no cap above 20,000.00
# the lower choices the keypad offers (per visit, per day), below the proposed terms
PRESETS = ((50000, 100000), (30000, 60000), (20000, 40000), (10000, 20000))
VISIT_REFUSALS = ("visit_expired", "visit_closed", "face_auth_required")
CONSENT = (
    "本人授权本院在本次及今后就诊中，由医院信息系统发起医保结算，个人自付部分从信用额度中扣款（无需再次刷脸）："
    "每次就诊不超过 {visit} 元，每日不超过 {day} 元，有效期至 {until}。每笔扣款都会通知您；"
    "您可随时在终端、收费处或银行撤销授权。",
    "I authorise this hospital to settle my insurance claims and charge my own share to my credit line "
    "without my face again: at most {visit} per visit and {day} per day, until {until}. I am told of every "
    "charge and may revoke this at any time at a terminal, the cashier or my bank.")


@dataclass(frozen=True)
class Terms:
    """A mandate's terms in fen; `ref()` is the canonical text the centre signs (contract item 1)."""

    per_visit: int
    per_day: int
    until: str
    lines: str = "own"
    holder: str = ""  # the family line's holder, last 4 characters (screen and slip only; not in the terms)

    def ref(self) -> str:
        return f"visit={self.per_visit};day={self.per_day};until={self.until};lines={self.lines}"

    def to_json(self) -> dict[str, str]:
        return {"per_visit": fen_to_yuan(self.per_visit), "per_day": fen_to_yuan(self.per_day),
                "until": self.until, "lines": self.lines}


def check_terms(per_visit: int, per_day: int, until: str, lines: str, today: str) -> None:
    """The terms a POS may propose, checked at the door (422 naming the field) as the centre will."""
    if not 0 < per_visit <= MAX_CAP:
        raise InputError("must be more than 0.00 and at most 20000.00", field="mandate.per_visit")
    if not per_visit <= per_day <= MAX_CAP:
        raise InputError("must be at least the per-visit cap and at most 20000.00", field="mandate.per_day")
    try:
        u = datetime.strptime(until, "%Y-%m-%d").date()
    except ValueError:
        raise InputError("must be a date YYYY-MM-DD", field="mandate.until") from None
    t = datetime.strptime(today, "%Y-%m-%d").date()
    if not t <= u <= t + timedelta(days=366):
        raise InputError("must be from today to a year ahead", field="mandate.until")
    if lines not in ("own", "family", "own,family"):
        raise InputError("must be own, family or own,family", field="mandate.lines")


@dataclass
class RegisterPlan:
    """What the registration screen offers: the choices (the first is proposed) or the active
    mandate reused (no new consent: the terms are the same)."""

    choices: list[Terms]
    reuse: dict[str, Any] | None = None
    # the lines the patient picks between (keypad 7 own, 8 family, 9 both) when she has an own line and is
    # bound to a family line too; empty: no choice (the one line she has, or the POS's proposal)
    line_sets: tuple[str, ...] = ()


LINE_KEYS = {7: "own", 8: "family", 9: "own,family"}  # the keypad digit for each line set
LINE_PICK = ("；输入 7 仅本人额度、8 仅家人（尾号 {holder}）额度、9 两者均可，再按确认键",  # the consent's hint (zh, en)
             "; 7 own line only, 8 family line (holder …{holder}) only, 9 either, then Enter")


def line_text(lines: str, holder: str) -> tuple[str, str]:
    """The lines a mandate may use, as the consent and the slip name them (the holder masked: last 4)."""
    fam_zh, fam_en = f"家人（尾号 {holder}）的额度", f"the family line (holder …{holder})"
    return {"own": ("本人额度", "your own line"), "family": (fam_zh, fam_en),
            "own,family": (f"本人额度或{fam_zh}", f"your own or {fam_en}")}[lines]


class Visits:
    """The terminal's side of senseless payment; one per Terminal (its store, parties, journal, audit)."""

    def __init__(self, terminal: "Terminal") -> None:
        self.t = terminal
        # charges a request thread of this process is making or running now (counted: a retry of the same
        # charge id may be in flight beside the first request)
        self._live: Counter[tuple[str, str]] = Counter()
        self._live_lock = threading.Lock()

    @property
    def store(self) -> Any:
        return self.t.store

    @property
    def inst(self) -> str:
        return self.t.institution

    def _j(self, system: str) -> Any:
        from kiosk.app.terminal import _Journal

        return _Journal(self.store, system)

    def _today(self) -> str:
        return local_day(self.t.clock).isoformat()

    # ================================================================== registration
    def register(self, system: str, visit_id: str, mandate: dict[str, Any] | None) -> tuple[VisitRow, bool]:
        """POST /pos/v1/visits: claim the visit id and call the patient to the counter (an identical
        retry returns the visit; another body is 409 visit_conflict)."""
        if mandate is not None:
            check_terms(mandate["per_visit"], mandate["per_day"], mandate["until"], mandate.get("lines", "own"),
                        self._today())
        request = {"visit_id": visit_id, "mandate": mandate}
        oid = VISIT_PREFIX + visit_id
        row, created = self.store.create_visit(self.inst, system, visit_id, request, oid)
        # the registration's order (idempotent too: a crash between the two claims is completed by a retry)
        order, new = self.store.create_order(system, oid, {**request, "bill": {}}, "register")
        if new:
            self.t.submit(system, Order(order_id=oid, bill={}, mode="register"))
        return row, created

    def plan(self, sess: "CounterSession", system: str) -> RegisterPlan | None:
        """The face is known: reuse this person's active mandate here when the POS asked for no other
        terms (the bank must still call it active), else the proposed terms and the lower presets the
        line can carry (never above what the line covers; None: no line covers even the lowest)."""
        assert sess.person is not None
        vrow = self._visit_of(system, sess.order.order_id)
        req = (vrow.request.get("mandate") if vrow else None) or None
        active = self.store.active_mandate(self.inst, sess.person.psn_no)
        if active and active["until"] >= self._today():
            same = req is None or (req["per_visit"] == active["per_visit_fen"] and req["per_day"] ==
                                   active["per_day_fen"] and req["until"] == active["until"] and
                                   req.get("lines", "own") == active["lines"])
            if same:
                try:
                    at_bank = self.t.deps.bank.mandate_get(active["mandate_id"])  # type: ignore[attr-defined]
                except RemoteError:
                    at_bank = None
                if at_bank and str(at_bank.get("state", "")) == "active":
                    t = Terms(active["per_visit_fen"], active["per_day_fen"], active["until"], active["lines"])
                    return RegisterPlan([t], reuse=active)
                if at_bank is not None:
                    self.store.set_mandate_state(active["mandate_id"], "revoked")  # revoked at the bank meanwhile
        until = (local_day(self.t.clock) + timedelta(days=DEFAULT_DAYS)).isoformat()
        if req:
            top = Terms(req["per_visit"], req["per_day"], req["until"], req.get("lines", "own"))
        else:
            top = Terms(DEFAULT_PER_VISIT, DEFAULT_PER_DAY, until, "own")
        choices = [top] + [Terms(v, d, top.until, top.lines) for v, d in PRESETS if v < top.per_visit and d <= top.per_day]
        for i, t in enumerate(choices):  # the largest the line covers (a line that covers a cap covers the lower)
            line = sess._line_for(t.per_day)
            if line.kind == "none":
                return None
            if line.available >= t.per_day:
                lines = t.lines if req else ("family" if line.kind == "family" else "own")
                both = line.kind == "own" and bool(line.family_hint)
                holder = line.family_hint if both else (line.line_id.rsplit("…", 1)[-1]
                                                        if line.kind == "family" else "")
                return RegisterPlan([replace(c, lines=lines, holder=holder) for c in choices[i:]],
                                    line_sets=tuple(LINE_KEYS.values()) if both else ())
        return None

    def commit(self, sess: "CounterSession", system: str, terms: Terms, plan: RegisterPlan) -> Outcome:
        """The patient confirmed: the pay_auth for the terms (new mandate only), then the journaled plan
        and its run (credit.mandate, 2201)."""
        assert sess.person is not None
        oid = sess.order.order_id
        p = sess.person
        auth = ""
        if plan.reuse is None:
            sess.journal.record(oid, "mandate_auth", {"terms": terms.ref()})
            try:
                auth = self.t.deps.centre.mandate_auth(p, terms.ref(), terms.per_visit)  # type: ignore[attr-defined]
            except RemoteError:
                auth = ""
            if not auth:
                return Outcome(status="failed", reason="centre_unavailable")  # nothing moved
        reg = {"psn_no": p.psn_no, "insutype": p.insutype, "ec_token": p.ec_token, "terms": terms.to_json(),
               "terms_ref": terms.ref(), "pay_auth": auth,
               "reuse": plan.reuse["mandate_id"] if plan.reuse else "",
               "mandate_key": scoped_key(self.inst, system, oid, "mandate"),
               "msgid": self.t.deps.centre.new_msgid()}
        sess.journal.record(oid, "register", reg)
        return self._register_run(system, oid, reg)

    def _register_run(self, system: str, oid: str, reg: dict[str, Any]) -> Outcome:
        """credit.mandate (by its key: a replay gives the same mandate) then 2201 (by its msgid: the
        centre replays one that landed); each confirmed step journaled before the next call. A refusal
        of 2201 revokes a mandate made for it: the registration ends open, or with nothing opened."""
        j = self._j(system)
        steps = {s: d for s, d in self.store.steps(system, oid)}
        bank, centre = self.t.deps.bank, self.t.deps.centre
        if "mandated" not in steps:
            if reg["reuse"]:
                m = self.store.get_mandate(reg["reuse"])
                assert m is not None
                steps["mandated"] = {"mandate_id": m["mandate_id"], "per_visit": m["per_visit_fen"],
                                     "per_day": m["per_day_fen"], "until": m["until"], "lines": m["lines"],
                                     "reused": True}
            else:
                mr = bank.mandate(reg["psn_no"], reg["mandate_key"], reg["pay_auth"])  # type: ignore[attr-defined]
                if mr.status == "unknown":
                    return Outcome(status="opening", reason="bank_unavailable")
                if mr.status != "ok":
                    j.record(oid, "register_refused", {"party": "bank", "code": mr.code})
                    return Outcome(status="failed", reason="credit_not_eligible")
                steps["mandated"] = {"mandate_id": mr.mandate_id, "per_visit": mr.per_visit or 0,
                                     "per_day": mr.per_day or 0, "until": mr.until, "lines": mr.lines,
                                     "reused": False}
                t = reg["terms"]
                m = steps["mandated"]
                if not m["per_visit"]:  # the bank echoes the terms; an older answer may not
                    from kiosk.money import yuan_to_fen

                    m.update(per_visit=yuan_to_fen(t["per_visit"], "per_visit"),
                             per_day=yuan_to_fen(t["per_day"], "per_day"), until=m["until"] or t["until"],
                             lines=m["lines"] or t["lines"])
                self.store.save_mandate(self.inst, reg["psn_no"], m["mandate_id"], m["per_visit"], m["per_day"],
                                        m["until"], m["lines"])
            j.record(oid, "mandated", steps["mandated"])
        m = steps["mandated"]
        if "registered" not in steps:
            person = Person(psn_no=reg["psn_no"], name="", ec_token=reg["ec_token"], insutype=reg["insutype"])
            vo = centre.register_visit(person, reg["msgid"])  # type: ignore[attr-defined]
            if vo.status == "unknown":
                return Outcome(status="opening", reason="centre_unavailable")
            if vo.status != "ok":
                j.record(oid, "register_refused", {"party": "centre", "code": vo.code})
                if not m.get("reused"):
                    self._revoke_at_bank(m["mandate_id"])
                return Outcome(status="failed", reason="centre_unavailable")
            steps["registered"] = {"mdtrt_id": vo.mdtrt_id, "visit_token": vo.visit_token, "exp": vo.exp}
            j.record(oid, "registered", steps["registered"])
        r = steps["registered"]
        visit_id = oid[len(VISIT_PREFIX):]
        self.store.update_visit(self.inst, system, visit_id, expect=("opening",), state="open", reason=None,
                                psn_no=reg["psn_no"], insutype=reg["insutype"], mdtrt_id=r["mdtrt_id"],
                                visit_token=r["visit_token"], exp=int(r["exp"]), mandate_id=m["mandate_id"],
                                per_visit_fen=int(m["per_visit"]), per_day_fen=int(m["per_day"]), until=m["until"])
        self.t._audit("visit_open", system=system, visit_id=visit_id, mandate_id=m["mandate_id"],
                      mdtrt_id=r["mdtrt_id"], reused=bool(m.get("reused")))
        return Outcome(status="registered", psn_no=reg["psn_no"])

    def _revoke_at_bank(self, mandate_id: str) -> bool:
        """Give up the institution's authority under a mandate (local state first: no charge passes the
        kiosk meanwhile); an unanswered revocation stays 'revoking' and the idle pass sends it again."""
        self.store.set_mandate_state(mandate_id, "revoking", expect=("active",))
        try:
            r = self.t.deps.bank.mandate_revoke(mandate_id, scoped_key(self.inst, "mandate", mandate_id, "revoke"))  # type: ignore[attr-defined]
        except RemoteError:
            return False
        if r.status == "unknown":
            return False
        if r.status != "ok":
            log.warning("mandate %s: the bank refused the revocation (%s); revoked here", mandate_id, r.code)
        self.store.set_mandate_state(mandate_id, "revoked")
        return True

    def registration_ended(self, system: str, oid: str, out: Outcome) -> None:
        """After the registration's session: the visit opened, is still opening (a party's answer is
        unknown: recovery completes it), or nothing opened."""
        visit_id = oid[len(VISIT_PREFIX):]
        if out.status not in ("registered", "opening"):
            self.store.update_visit(self.inst, system, visit_id, expect=("opening",), state="failed",
                                    reason=out.reason or "interrupted")

    def resolve_registration(self, row: OrderRow) -> str | None:
        """A registration cut off (crash) or waiting for a party: forward from its journaled plan by the same
        key and msgid; nothing was sent -> nothing opened."""
        regs = [d for s, d in self.store.steps(row.system, row.order_id) if s == "register"]
        if not regs:
            self._j(row.system).record(row.order_id, "recovered", {"as": "failed"})
            self.store.set_status(row.system, row.order_id, "failed", reason="interrupted",
                                  result={"status": "failed", "reason": "interrupted"})
            self.registration_ended(row.system, row.order_id, Outcome(status="failed", reason="interrupted"))
            return "failed"
        out = self._register_run(row.system, row.order_id, regs[-1])
        if out.status == "opening":
            if row.status != "opening":
                self.store.set_status(row.system, row.order_id, "opening", reason=out.reason)
            return None
        self._j(row.system).record(row.order_id, "recovered", {"as": out.status})
        self.store.set_status(row.system, row.order_id, out.status, reason=out.reason if out.status != "registered"
                              else "interrupted", result={"status": out.status, "reason": out.reason,
                                                          "psn_no": out.psn_no or None})
        self.registration_ended(row.system, row.order_id, out)
        return out.status

    # ================================================================== charges
    def charge(self, system: str, visit_id: str, charge_id: str, bill: dict[str, Any]) -> tuple[dict[str, Any], int]:
        """POST .../charges: (answer, HTTP status). 201 paid, 202 pending (a party's answer unknown:
        completed by recovery by key), 409 needs_patient (the counter order it became) or charge_failed
        (nothing charged). Idempotent per charge id: the same body replays the first answer, another is
        409 charge_conflict. Another system's (or institution's) visit is not found, as a missing one."""
        v = self._own_visit(system, visit_id)
        oid = f"{CHARGE_PREFIX}{visit_id}~{charge_id}"
        req = {"visit_id": visit_id, "charge_id": charge_id, "bill": bill}
        existing = self.store.get(system, oid)
        if existing is None:
            if v.state == "closed":
                raise ConflictError(f"visit {visit_id!r} is closed: no charge is taken after its end",
                                    code="visit_closed", field="visit_id")
            if v.state in ("opening", "failed"):
                raise ConflictError(f"visit {visit_id!r} is not open ({v.state})", code="visit_not_open",
                                    field="visit_id")
        self._hold((system, oid), +1)  # before the row exists: a recovery pass never takes a charge being made
        try:
            row, created = self.store.create_order(system, oid, req, "charge")
        except ConflictError:
            self._hold((system, oid), -1)
            raise ConflictError(f"charge {charge_id!r} already exists with a different request",
                                code="charge_conflict", field="charge_id") from None
        if not created:
            self._hold((system, oid), -1)
            return self._answer(row, replay=True)
        try:
            self.store.set_status(system, oid, "running", expect=("pending",))
            self._j(system).record(oid, "start", {"mode": "charge", "institution": self.inst, "visit_id": visit_id,
                                                  "charge_id": charge_id, "mandate_id": v.mandate_id})
            self._charge_run(system, v, oid, bill)
        finally:
            self._hold((system, oid), -1)
        row2 = self.store.get(system, oid)
        assert row2 is not None
        return self._answer(row2, replay=False)

    def _hold(self, key: tuple[str, str], n: int) -> None:
        with self._live_lock:
            self._live[key] += n
            if self._live[key] <= 0:
                del self._live[key]

    def _own_visit(self, system: str, visit_id: str) -> VisitRow:
        v = self.store.get_visit(self.inst, system, visit_id)
        if v is None:
            raise InputError(f"no visit {visit_id!r}", code="not_found", field="visit_id")
        return v

    def _visit_of(self, system: str, oid: str) -> VisitRow | None:
        if oid.startswith(VISIT_PREFIX):
            return self.store.get_visit(self.inst, system, oid[len(VISIT_PREFIX):])
        return None

    def _ref(self, v: VisitRow) -> VisitRef:
        return VisitRef(psn_no=v.psn_no, insutype=v.insutype, mdtrt_id=v.mdtrt_id, visit_token=v.visit_token)

    def _charge_run(self, system: str, v: VisitRow, oid: str, bill: dict[str, Any]) -> None:
        j = self._j(system)
        centre = self.t.deps.centre
        charge_id = oid.rsplit("~", 1)[1]
        now = int(self.t.clock.now().timestamp())
        if v.state == "revoked":
            return self._needs_patient(system, v, oid, bill, "mandate_revoked")
        if v.exp <= now:
            return self._needs_patient(system, v, oid, bill, "visit_expired")
        j.record(oid, "presettle")
        try:
            pre = centre.visit_presettle(self._ref(v), bill, oid)  # type: ignore[attr-defined]
        except RemoteError:
            return self._failed(system, oid, "centre_unavailable")
        if pre.status in VISIT_REFUSALS:
            return self._needs_patient(system, v, oid, bill, pre.status)
        if pre.status != "ok" or pre.split is None:
            return self._failed(system, oid, "bill_rejected")
        s = pre.split
        personal = s.acct_pay + s.acct_mulaid_pay + s.psn_cash_pay
        why, used_visit, used_day = self.store.reserve_charge(self.inst, system, v.visit_id, charge_id, oid, personal,
                                                              now, self._today())
        if why == "visit_closed":  # closed while this charge came in: as at the door (no counter order)
            return self._failed(system, oid, "visit_closed")
        if why:
            return self._needs_patient(system, v, oid, bill, why)
        j.record(oid, "reserved", {"personal": personal, "used_visit": used_visit, "used_day": used_day})
        msgid = centre.new_msgid()
        j.record(oid, "settle", {"msgid": msgid, "psn_no": v.psn_no, "mdtrt_id": v.mdtrt_id, "line_kind": "mandate",
                                 "draw_amount": s.psn_cash_pay, "mandate_id": v.mandate_id})
        st = centre.visit_settle(self._ref(v), bill, oid, msgid)  # type: ignore[attr-defined]
        if st.status == "unknown":
            if self._reverse(system, oid, v.psn_no, msgid, None):
                self._release(system, v, charge_id)
                return self._failed(system, oid, "centre_unavailable")
            self.store.set_status(system, oid, "reversing", reason="centre_unavailable",
                                  result={"status": "pending", "reason": "centre_unavailable", "waiting_for": "centre"})
            return None
        if st.status != "ok" or st.split is None:
            j.record(oid, "settle_refused", {"msgid": msgid, "code": st.status})
            self._release(system, v, charge_id)
            if st.status in VISIT_REFUSALS:
                return self._needs_patient(system, v, oid, bill, st.status)
            return self._failed(system, oid, "bill_rejected")
        sp = st.split
        j.record(oid, "settled", {"msgid": msgid, "setl_id": sp.setl_id, "mdtrt_id": sp.mdtrt_id or v.mdtrt_id,
                                  "split": split_json(sp), "pay_auth": sp.pay_auth,
                                  "insutype": str(sp.raw.get("insutype") or v.insutype or "")})
        self._charge_forward(system, v, oid)
        return None

    def _charge_forward(self, system: str, v: VisitRow, oid: str, *, quiet: bool = False) -> str:
        """From a confirmed settlement: the draw under the mandate (journaled before the call, the same key
        on every retry: the bank replays one that landed), then paid with its notice. A refusal by the bank
        reverses the settlement (2601 by its msgid) and hands the charge to the patient."""
        j = self._j(system)
        steps = {s: d for s, d in self.store.steps(system, oid)}
        settled, settle = steps["settled"], steps["settle"]
        charge_id = oid.rsplit("~", 1)[1]
        cash = int(settled["split"]["psn_cash_pay"])
        if cash > 0 and "drawn" not in steps:
            d = steps.get("draw") or {"key": scoped_key(self.inst, system, oid, "draw"), "amount": cash,
                                      "payer": v.psn_no, "ref": settled["setl_id"], "mandate_id": v.mandate_id,
                                      "visit": settled.get("mdtrt_id") or v.mdtrt_id,
                                      "pay_auth": settled.get("pay_auth", "")}
            if "draw" not in steps:
                j.record(oid, "draw", d)
            auth = (steps.get("draw_auth") or {}).get("pay_auth") or d["pay_auth"]
            bank = self.t.deps.bank
            dr = bank.senseless_draw(d["payer"], d["amount"], d["ref"], d["key"], auth, d["mandate_id"],  # type: ignore[attr-defined]
                                     d["visit"])
            if dr.status == "pay_auth_expired":  # resumed after the authorisation's 10 minutes: 5203 re-signs it
                auth = self.t.deps.centre.renew_pay_auth(d["payer"], d["ref"])  # type: ignore[attr-defined]
                if auth:
                    j.record(oid, "draw_auth", {"pay_auth": auth})
                    dr = bank.senseless_draw(d["payer"], d["amount"], d["ref"], d["key"], auth,  # type: ignore[attr-defined]
                                             d["mandate_id"], d["visit"])
            if dr.status == "unknown":
                if not quiet:
                    j.record(oid, "draw_unknown", {"key": d["key"]})
                self.store.set_status(system, oid, "charge_pending", reason="bank_unavailable",
                                      result={"status": "pending", "reason": "bank_unavailable", "waiting_for": "bank"})
                return "charge_pending"
            if dr.status != "ok":
                j.record(oid, "draw_refused", {"key": d["key"], "code": dr.status})
                if dr.status in ("mandate_revoked", "no_mandate"):
                    self.store.set_mandate_state(v.mandate_id, "revoked")  # revoked at the bank: stop here too
                if not self._reverse(system, oid, v.psn_no, settle["msgid"], settled["setl_id"]):
                    self.store.set_status(system, oid, "reversing", reason=dr.status,
                                          result={"status": "pending", "reason": dr.status, "waiting_for": "centre"})
                    return "reversing"
                self._release(system, v, charge_id)
                self._needs_patient(system, v, oid, self._bill(system, oid),
                                    dr.status if dr.status in MANDATE_REFUSALS else "credit_declined")
                return "needs_patient"
            steps["drawn"] = {"key": d["key"], "draw_id": dr.draw_id or settled["setl_id"], "amount": d["amount"]}
            j.record(oid, "drawn", steps["drawn"])
        return self._paid(system, v, oid, steps)

    def _paid(self, system: str, v: VisitRow, oid: str, steps: dict[str, Any]) -> str:
        settled = steps["settled"]
        sp = settled["split"]
        drawn = steps.get("drawn") or {"amount": 0, "draw_id": ""}
        charge_id = oid.rsplit("~", 1)[1]
        result = {"status": "paid", "reason": None, "setl_id": settled["setl_id"],
                  "medfee_sumamt": fen_to_yuan(sp["medfee_sumamt"]), "fund_pay_sumamt": fen_to_yuan(sp["fund_pay_sumamt"]),
                  "acct_pay": fen_to_yuan(sp["acct_pay"]), "acct_mulaid_pay": fen_to_yuan(sp["acct_mulaid_pay"]),
                  "credit_draw": fen_to_yuan(drawn["amount"]), "cash_pay": fen_to_yuan(sp["psn_cash_pay"] - drawn["amount"]),
                  "payer": "self", "draw_id": drawn["draw_id"] or None, "hold_id": None, "receipt_printed": False,
                  "psn_no": v.psn_no, "visit_id": v.visit_id, "charge_id": charge_id, "mandate_id": v.mandate_id,
                  "mdtrt_id": settled.get("mdtrt_id") or v.mdtrt_id}
        if "paid" not in steps:
            self._j(system).record(oid, "paid", {"outcome": result})
        self.store.set_status(system, oid, "paid", result=result)
        personal = sp["acct_pay"] + sp["acct_mulaid_pay"] + sp["psn_cash_pay"]
        self.store.finish_charge(self.inst, system, v.visit_id, charge_id, "paid", personal_fen=personal,
                                 notice=self._notice(system, oid, v, "senseless_charge", sp, settled["setl_id"]))
        self.t._audit("senseless_charge", system=system, order_id=oid, visit_id=v.visit_id, setl_id=settled["setl_id"],
                      medfee_sumamt=result["medfee_sumamt"], credit_draw=result["credit_draw"],
                      mandate_id=v.mandate_id)
        self.t._notify()
        return "paid"

    def _notice(self, system: str, oid: str, v: VisitRow, kind: str, sp: dict[str, int], setl_id: str) -> dict[str, Any]:
        """What the patient's insurance app shows (contract item 5): amounts, the institution, and how to
        dispute it. Ids and amounts only (the centre knows who the person is)."""
        y = {k: fen_to_yuan(sp.get(k, 0)) for k in ("medfee_sumamt", "fund_pay_sumamt", "acct_pay", "psn_cash_pay")}
        if kind == "senseless_charge":
            text = (f"{self.inst} 就诊 {v.visit_id}：无感支付 {y['medfee_sumamt']} 元（统筹 {y['fund_pay_sumamt']}，"
                    f"个人账户 {y['acct_pay']}，信用支付 {y['psn_cash_pay']}）。如有异议请联系该院收费处或在医保APP申诉；"
                    f"可随时撤销授权。 / {self.inst} visit {v.visit_id}: senseless charge {y['medfee_sumamt']} "
                    f"(fund {y['fund_pay_sumamt']}, account {y['acct_pay']}, credit {y['psn_cash_pay']}). To dispute "
                    "it, contact the hospital's cashier or your insurance app; you may revoke the mandate at any time.")
        else:
            text = (f"{self.inst} 就诊 {v.visit_id} 已结束：合计 {y['medfee_sumamt']} 元（统筹 {y['fund_pay_sumamt']}，"
                    f"个人账户 {y['acct_pay']}，信用支付 {y['psn_cash_pay']}）。 / {self.inst} visit {v.visit_id} "
                    f"ended: total {y['medfee_sumamt']} (fund {y['fund_pay_sumamt']}, account {y['acct_pay']}, "
                    f"credit {y['psn_cash_pay']}). To dispute a charge, contact the hospital's cashier.")
        return {"notice_id": scoped_key(self.inst, system, oid, "notice", kind), "psn_no": v.psn_no,
                "setl_id": setl_id, "mdtrt_id": v.mdtrt_id, "kind": kind, **y, "text": text}

    def _reverse(self, system: str, oid: str, psn_no: str, msgid: str, setl_id: str | None) -> bool:
        j = self._j(system)
        j.record(oid, "reverse", {"msgid": msgid, "setl_id": setl_id})
        try:
            if self.t.deps.centre.reverse(Person(psn_no=psn_no, name=""), msgid, setl_id):
                j.record(oid, "reversed", {"msgid": msgid})
                return True
        except RemoteError:
            pass
        return False

    def _release(self, system: str, v: VisitRow, charge_id: str) -> None:
        self.store.finish_charge(self.inst, system, v.visit_id, charge_id, "released")

    def _bill(self, system: str, oid: str) -> dict[str, Any]:
        row = self.store.get(system, oid)
        return dict((row.request if row else {}).get("bill") or {})

    def _failed(self, system: str, oid: str, reason: str) -> None:
        """Nothing moved (or it was put back): final; the HIS posts the charge again under a new id."""
        self._j(system).record(oid, "failed", {"reason": reason})
        self.store.set_status(system, oid, "failed", reason=reason,
                              result={"status": "failed", "reason": reason, "receipt_printed": False})
        self.t._notify()

    def _needs_patient(self, system: str, v: VisitRow, oid: str, bill: dict[str, Any], reason: str) -> None:
        """The mandate cannot pay it: the charge becomes a normal counter order for this patient (their
        face, the confirm key), which the POS tracks (GET /pos/v1/orders/{order_id}) or cancels."""
        visit_id, charge_id = v.visit_id, oid.rsplit("~", 1)[1]
        coid = f"{COUNTER_PREFIX}{visit_id}~{charge_id}"
        creq = {"bill": bill, "psn_no": v.psn_no, "charge": {"visit_id": visit_id, "charge_id": charge_id}}
        _, created = self.store.create_order(system, coid, creq, "outpatient")
        if created:
            self.t.submit(system, Order(order_id=coid, bill=bill, psn_no=v.psn_no))
        result = {"status": "needs_patient", "reason": reason, "order_id": coid, "visit_id": visit_id,
                  "charge_id": charge_id}
        self._j(system).record(oid, "needs_patient", {"reason": reason, "order_id": coid})
        self.store.set_status(system, oid, "needs_patient", reason=reason, result=result)
        self.t._audit("senseless_refused", system=system, order_id=oid, visit_id=visit_id, reason=reason)
        self.t._notify()

    def _answer(self, row: OrderRow, *, replay: bool) -> tuple[dict[str, Any], int]:
        view = charge_view(row)
        if row.status == "paid" or row.status in ("refunded", "partially_refunded", "refund_pending", "refund_failed"):
            return view, 200 if replay else 201
        if row.status == "needs_patient":
            r = row.result or {}
            return {"code": "needs_patient", "field": "charge_id", "reason": row.reason, "order_id": r.get("order_id"),
                    "message": f"the mandate cannot pay this charge ({row.reason}): the patient pays it at the "
                               f"counter as order {r.get('order_id')}", "charge": view}, 409
        if row.status == "failed" and row.reason == "visit_closed":  # the visit ended while it came in
            return {"code": "visit_closed", "field": "visit_id", "reason": row.reason,
                    "message": "the visit was closed while this charge came in: nothing was charged; bill it as "
                               "an order", "charge": view}, 409
        if row.status in ("failed", "cancelled"):
            return {"code": "charge_failed", "field": "charge_id", "reason": row.reason,
                    "message": f"nothing was charged ({row.reason}); post it again under a new charge_id",
                    "charge": view}, 409
        return view, 202  # running, charge_pending, reversing: completes by itself (query the visit)

    def resolve_charge(self, row: OrderRow) -> str | None:
        """A charge cut off (crash) or waiting for a party, not live in this process: nothing settled ->
        put back (2601 by the journaled msgid when a 2207 may have gone); settled -> forward by the journaled
        draw key; a draw refused and a reversal unconfirmed -> the reversal again."""
        with self._live_lock:
            if self._live.get((row.system, row.order_id)):
                return None
        steps = self.store.steps(row.system, row.order_id)
        names = [s for s, _ in steps]
        data = {s: d for s, d in steps}
        start = data.get("start") or {}
        v = self.store.get_visit(self.inst, row.system, start.get("visit_id") or row.request.get("visit_id", ""))
        if v is None:
            return None
        charge_id = row.order_id.rsplit("~", 1)[1]
        if "paid" in names or "drawn" in names:
            return self._paid(row.system, v, row.order_id, data) if row.status != "paid" else None
        if "settled" in names and "draw_refused" not in names:
            before = row.status
            out = self._charge_forward(row.system, v, row.order_id, quiet=before == "charge_pending")
            return None if out == before else out
        if "settle" in names and "reversed" not in names:
            st = data["settle"]
            if not self._reverse(row.system, row.order_id, v.psn_no, st["msgid"],
                                 (data.get("settled") or {}).get("setl_id")):
                return None
        self._release(row.system, v, charge_id)
        if "draw_refused" in names:
            code = data["draw_refused"].get("code", "")
            self._needs_patient(row.system, v, row.order_id, self._bill(row.system, row.order_id),
                                code if code in MANDATE_REFUSALS else "credit_declined")
            return "needs_patient"
        self._failed(row.system, row.order_id, "interrupted")
        return "failed"

    # ================================================================== close, revoke, query
    def close(self, system: str, visit_id: str, printer: Any = None) -> dict[str, Any]:
        """The visit's end: no charge is taken from now on, the centre closes it (2202; retried by the idle
        pass when unanswered), the summary of all its charges is printed and sent to the patient's app."""
        v = self._own_visit(system, visit_id)
        if v.state in ("opening", "failed"):
            raise ConflictError(f"visit {visit_id!r} is not open ({v.state})", code="visit_not_open", field="visit_id")
        first = v.state != "closed"
        if first:
            self.store.update_visit(self.inst, system, visit_id, expect=("open", "revoked"), state="closed",
                                    reason="close_pending")
            self._settle_in_flight(system, visit_id)
            self._close_at_centre(self.store.get_visit(self.inst, system, visit_id))  # type: ignore[arg-type]
        view = self.view(system, visit_id)
        tot = view["totals"]
        paid = [c for c in view["charges"] if c["status"] in ("paid", "refunded", "partially_refunded",
                                                               "refund_pending", "refund_failed")]
        if first:
            from kiosk.money import yuan_to_fen

            sp = {"medfee_sumamt": yuan_to_fen(tot["medfee_sumamt"], "t"), "fund_pay_sumamt":
                  yuan_to_fen(tot["fund_pay_sumamt"], "t"), "acct_pay": yuan_to_fen(tot["acct_pay"], "t"),
                  "psn_cash_pay": yuan_to_fen(tot["credit_draw"], "t") + yuan_to_fen(tot["cash_pay"], "t")}
            last = paid[-1]["result"]["setl_id"] if paid else ""
            self.store.queue_notice(self._notice(system, VISIT_PREFIX + visit_id, v, "visit_summary", sp, last))
            printer = printer or self.t.deps.printer
            try:
                view["receipt_printed"] = printer.print_receipt(summary_lines(view)).status == "ok"
            except Exception:  # noqa: BLE001 - the summary is also in the patient's app
                view["receipt_printed"] = False
            self.t._audit("visit_closed", system=system, visit_id=visit_id, charges=len(paid),
                          medfee_sumamt=tot["medfee_sumamt"])
        return view

    def _settle_in_flight(self, system: str, visit_id: str, limit_s: float = CLOSE_WAIT_S) -> None:
        """Closed here (no new charge reserves): let the charges already past the cap check finish before
        2202 and the summary, so the centre still takes their 2207 and the summary lists them. One still
        running after `limit_s` (a party not answering) shows as it stands and completes by itself."""
        prefix = f"{CHARGE_PREFIX}{visit_id}~"
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            with self._live_lock:
                if not any(s == system and o.startswith(prefix) for s, o in self._live):
                    return
            time.sleep(0.02)

    def _close_at_centre(self, v: VisitRow) -> bool:
        try:
            r = self.t.deps.centre.close_visit(v.psn_no, v.mdtrt_id)  # type: ignore[attr-defined]
        except RemoteError:
            return False
        if r.status == "unknown":
            return False
        if r.status != "ok":
            log.warning("visit %s: the centre refused to close it (%s)", v.visit_id, r.code)
        self.store.update_visit(self.inst, v.system, v.visit_id, expect=("closed",), reason=None)
        return True

    def revoke(self, system: str, visit_id: str) -> tuple[dict[str, Any], int]:
        """The mandate this visit runs under is revoked (here at once: no later charge passes the kiosk;
        then at the bank, credit.mandate_revoke by the institution's authority). 200, or 202 while the
        bank has not answered (the idle pass sends it again)."""
        v = self._own_visit(system, visit_id)
        if not v.mandate_id:
            raise ConflictError(f"visit {visit_id!r} is not open ({v.state})", code="visit_not_open", field="visit_id")
        m = self.store.get_mandate(v.mandate_id)
        done = m is not None and m["state"] == "revoked"
        if not done:
            done = self._revoke_at_bank(v.mandate_id)
        self.store.update_visit(self.inst, system, visit_id, expect=("open",), state="revoked", reason="mandate_revoked")
        self.t._audit("mandate_revoked", system=system, visit_id=visit_id, mandate_id=v.mandate_id, confirmed=done)
        return self.view(system, visit_id), 200 if done else 202

    def view(self, system: str, visit_id: str) -> dict[str, Any]:
        """GET /pos/v1/visits/{visit_id}: state, mandate, caps used, every charge with its status."""
        v = self._own_visit(system, visit_id)
        m = self.store.get_mandate(v.mandate_id) if v.mandate_id else None
        charges = []
        tot = dict.fromkeys(("medfee_sumamt", "fund_pay_sumamt", "acct_pay", "acct_mulaid_pay", "credit_draw",
                             "cash_pay"), 0)
        from kiosk.money import yuan_to_fen

        for c in self.store.charges_of_visit(self.inst, system, visit_id):
            row = self.store.get(system, c["order_id"])
            if row is None:
                continue
            charges.append(charge_view(row))
            if row.status in ("paid", "refunded", "partially_refunded", "refund_pending", "refund_failed") and row.result:
                for k in tot:
                    tot[k] += yuan_to_fen(row.result.get(k) or "0.00", k)
        # charges the caps never reached (refused at the door of the visit, or before the cap check)
        seen = {c["charge_id"] for c in charges}
        for row in self._charge_rows(system, visit_id):
            cid = row.order_id.rsplit("~", 1)[1]
            if cid not in seen:
                charges.append(charge_view(row))
        reg = self.store.get(system, v.order_id)
        used = self.store.charges_of_visit(self.inst, system, visit_id)
        state = v.state
        if state == "open" and v.exp and v.exp <= int(self.t.clock.now().timestamp()):
            state = "expired"  # past the end of its Asia/Shanghai day: its charges need the patient
        return {"visit_id": visit_id, "state": state, "reason": v.reason, "psn_no": v.psn_no or None,
                "mdtrt_id": v.mdtrt_id or None,
                "expires_at": (datetime.fromtimestamp(v.exp, timezone.utc).astimezone(SHANGHAI).isoformat()
                               if v.exp else None),
                "registration": {"order_id": v.order_id, "status": reg.status if reg else None,
                                 "reason": reg.reason if reg else None},
                "mandate": None if m is None else {"mandate_id": m["mandate_id"], "state": m["state"],
                                                   "per_visit": fen_to_yuan(m["per_visit_fen"]),
                                                   "per_day": fen_to_yuan(m["per_day_fen"]), "until": m["until"],
                                                   "lines": m["lines"]},
                "used_this_visit": fen_to_yuan(sum(c["personal_fen"] for c in used if c["state"] in ("reserved", "paid"))),
                "charges": charges, "totals": {k: fen_to_yuan(x) for k, x in tot.items()}}

    def _charge_rows(self, system: str, visit_id: str) -> list[OrderRow]:
        prefix = f"{CHARGE_PREFIX}{visit_id}~"
        rows = self.store.db.read(lambda tx: tx.fetch_all(
            "SELECT order_id FROM app_orders WHERE system = ? AND mode = 'charge' AND order_id LIKE ? ORDER BY created_at",
            (system, prefix.replace("_", "\\_").replace("%", "\\%") + "%")))
        out = []
        for (oid,) in rows:
            if oid.startswith(prefix):
                r = self.store.get(system, oid)
                if r is not None:
                    out.append(r)
        return out

    # ================================================================== the idle pass
    def idle_pass(self) -> int:
        """Notices to the centre's ec.notify (at least once, in order; the centre stores each once),
        closes and revocations a party has not confirmed yet. Returns the notices delivered."""
        for m in self.store.mandates_in("revoking"):
            self._revoke_at_bank(m["mandate_id"])
        for v in self.store.visits_in(("closed",), reason="close_pending"):
            self._close_at_centre(v)
        centre = self.t.deps.centre

        def send(msg: Any) -> None:
            r = centre.notify(msg.payload)  # type: ignore[attr-defined]
            if r.status == "unknown":
                raise RemoteError(f"ec.notify not answered: {r.code}", code="centre_unavailable")
            if r.status != "ok":  # a refusal will not change on a retry: logged for the operator
                log.error("notice %s refused by the centre: %s", msg.payload.get("notice_id"), r.code)

        sent, _ = Outbox(NOTICE_TOPIC).drain(self.store.db, send)
        return sent

    # ================================================================== the registration's session
    def registrar(self, system: str) -> Callable[..., Any]:
        return _Registrar(self, system)

    # ================================================================== the patient revoking by face
    def revoke_by_face(self, system: str, revoke_id: str) -> tuple[OrderRow, bool]:
        """POST /pos/v1/mandates/revoke: call the patient to the counter to end her mandates at every
        institution (idempotent per revoke id within the POS system)."""
        oid = FACE_REVOKE_PREFIX + revoke_id
        row, created = self.store.create_order(system, oid, {"mode": "mandate_revoke", "revoke_id": revoke_id,
                                                             "bill": {}}, "mandate_revoke")
        if created:
            self.t.submit(system, Order(order_id=oid, bill={}, mode="mandate_revoke"))
        return row, created

    def revoker(self, system: str) -> "_Revoker":
        return _Revoker(self, system)

    def _face_revoke_run(self, system: str, oid: str, plan: dict[str, Any]) -> Outcome:
        """Each mandate's revocation on the patient's word, by its journaled key and pay_auth; a confirmed
        answer is journaled before the next. A lost answer leaves it for recovery (the same key: the bank
        replays one that landed; one that never landed and whose word expired is refused, not revoked)."""
        j = self._j(system)
        done = {d["mandate_id"]: d for s, d in self.store.steps(system, oid) if s == "face_revoked"}
        pending = False
        for m in plan["mandates"]:
            if m["mandate_id"] in done:
                continue
            r = self.t.deps.bank.mandate_revoke(m["mandate_id"], m["key"], m["pay_auth"])  # type: ignore[attr-defined]
            if r.status == "unknown":
                pending = True
                continue
            d = {"mandate_id": m["mandate_id"], "result": "revoked" if r.status == "ok" else "not_revoked",
                 "code": r.code}
            j.record(oid, "face_revoked", d)
            done[m["mandate_id"]] = d
            local = self.store.get_mandate(m["mandate_id"])
            if r.status == "ok" and local is not None and local["institution"] == self.inst:
                self.store.set_mandate_state(m["mandate_id"], "revoked")  # no charge here passes it either
        if pending:
            return Outcome(status="revoke_pending", reason="revoke_pending", psn_no=plan["psn_no"])
        ok = any(d["result"] == "revoked" for d in done.values())
        return Outcome(status="revoked" if ok else "not_revoked", psn_no=plan["psn_no"])

    def _face_revoke_result(self, system: str, oid: str, out: Outcome) -> dict[str, Any]:
        plans = [d for s, d in self.store.steps(system, oid) if s == "face_revoke"]
        done = {d["mandate_id"]: d for s, d in self.store.steps(system, oid) if s == "face_revoked"}
        ms = [{"mandate_id": m["mandate_id"], "fixmedins_code": m["fixmedins_code"],
               "result": done[m["mandate_id"]]["result"] if m["mandate_id"] in done else "pending",
               **({"code": done[m["mandate_id"]]["code"]} if done.get(m["mandate_id"], {}).get("code") else {})}
              for m in (plans[-1]["mandates"] if plans else [])]
        return {"status": out.status, "reason": out.reason, "psn_no": out.psn_no or None, "mandates": ms}

    def face_revoke_ended(self, system: str, oid: str, out: Outcome) -> None:
        """The session ended: its result (each mandate: revoked, not_revoked, pending) and the audit."""
        result = self._face_revoke_result(system, oid, out)
        self.store.set_status(system, oid, out.status, reason=out.reason, result=result)
        self.t._audit("mandate_revoked_by_face", system=system, order_id=oid, status=out.status,
                      mandates=",".join(m["mandate_id"] for m in result["mandates"] if m["result"] == "revoked"))

    def resolve_face_revoke(self, row: OrderRow) -> str | None:
        """A revocation cut off (crash) or waiting for the bank: forward from its journaled plan by the same
        keys; nothing planned -> nothing was sent (failed)."""
        plans = [d for s, d in self.store.steps(row.system, row.order_id) if s == "face_revoke"]
        if not plans:
            self._j(row.system).record(row.order_id, "recovered", {"as": "failed"})
            self.store.set_status(row.system, row.order_id, "failed", reason="interrupted",
                                  result={"status": "failed", "reason": "interrupted", "mandates": []})
            return "failed"
        out = self._face_revoke_run(row.system, row.order_id, plans[-1])
        if out.status == "revoke_pending":
            if row.status != "revoke_pending":
                self.store.set_status(row.system, row.order_id, "revoke_pending", reason=out.reason,
                                      result=self._face_revoke_result(row.system, row.order_id, out))
            return None
        self._j(row.system).record(row.order_id, "recovered", {"as": out.status})
        self.face_revoke_ended(row.system, row.order_id, out)
        return out.status


class _Registrar:
    """The session's hooks for a registration (kiosk.app.session.CounterSession._register)."""

    def __init__(self, visits: Visits, system: str) -> None:
        self.visits, self.system = visits, system

    def plan(self, sess: "CounterSession") -> RegisterPlan | None:
        return self.visits.plan(sess, self.system)

    def commit(self, sess: "CounterSession", terms: Terms, plan: RegisterPlan) -> Outcome:
        return self.visits.commit(sess, self.system, terms, plan)

    def receipt(self, sess: "CounterSession", terms: Terms, out: Outcome) -> list[str]:
        visit_id = sess.order.order_id[len(VISIT_PREFIX):]
        return mandate_receipt(visit_id, sess.person.name if sess.person else "", terms)


class _Revoker:
    """The session's hooks for the patient's revocation by face (CounterSession._revoke_mandates)."""

    def __init__(self, visits: Visits, system: str) -> None:
        self.visits, self.system = visits, system

    def list(self, sess: "CounterSession") -> list[dict[str, Any]] | None:
        """Her mandates in force at every institution, read on her word (ec.payauth statement); None: the
        centre or the bank did not answer."""
        assert sess.person is not None
        try:
            auth = self.visits.t.deps.centre.person_auth(sess.person, "statement", sess.person.psn_no)  # type: ignore[attr-defined]
        except RemoteError:
            auth = ""
        if not auth:
            return None
        return self.visits.t.deps.bank.mandates_of(sess.person.psn_no, auth)  # type: ignore[attr-defined]

    def commit(self, sess: "CounterSession", ms: list[dict[str, Any]]) -> Outcome:
        """She confirmed: her word for each mandate (ec.payauth mandate_revoke), then the journaled plan
        (keys and words fixed before the first call) and its run. No word for one: nothing is sent."""
        assert sess.person is not None
        p, oid = sess.person, sess.order.order_id
        plan: dict[str, Any] = {"psn_no": p.psn_no, "mandates": []}
        for m in ms:
            mid = str(m["mandate_id"])
            try:
                auth = self.visits.t.deps.centre.person_auth(p, "mandate_revoke", mid)  # type: ignore[attr-defined]
            except RemoteError:
                auth = ""
            if not auth:
                return Outcome(status="failed", reason="revoke_unavailable")  # nothing sent
            plan["mandates"].append({"mandate_id": mid, "fixmedins_code": str(m.get("fixmedins_code") or ""),
                                     "key": scoped_key(self.visits.inst, self.system, oid, "revoke", mid),
                                     "pay_auth": auth})
        sess.journal.record(oid, "face_revoke", plan)
        return self.visits._face_revoke_run(self.system, oid, plan)

    def receipt(self, sess: "CounterSession", out: Outcome) -> list[str]:
        res = self.visits._face_revoke_result(self.system, sess.order.order_id, out)
        name = sess.person.name if sess.person else ""
        masked = (name[0] + "*" * (len(name) - 1)) if name else ""
        word = {"revoked": "已撤销 revoked", "not_revoked": "未撤销 not revoked", "pending": "待确认 pending"}
        return (["撤销无感支付授权 / Senseless pay revoked", f"患者 Patient: {masked}"]
                + [f"{m['fixmedins_code']} {m['mandate_id'][-6:]}: {word[m['result']]}" for m in res["mandates"]]
                + ["此后的费用需您本人到场支付 Later bills need you present"])


def charge_view(row: OrderRow) -> dict[str, Any]:
    """What the POS reads of one charge (its id, not the internal order id)."""
    _, visit_id, charge_id = row.order_id.split("~", 2)
    res = dict(row.result or {})
    return {"charge_id": charge_id, "visit_id": visit_id, "order_id": row.order_id, "status": row.status,
            "reason": row.reason, "result": res or None, "created_at": row.created_at, "updated_at": row.updated_at}


def mandate_receipt(visit_id: str, name: str, t: Terms) -> list[str]:
    masked = (name[0] + "*" * (len(name) - 1)) if name else ""
    return ["无感支付授权 / Senseless pay mandate", f"就诊 Visit: {visit_id}", f"患者 Patient: {masked}",
            f"每次就诊 Per visit: {fen_to_yuan(t.per_visit)}", f"每日 Per day: {fen_to_yuan(t.per_day)}",
            f"有效至 Until: {t.until}", *([f"额度 Line: {z} / {e}" for z, e in [line_text(t.lines, t.holder)]]
                                          if t.holder else []),
            "每笔扣款均有通知 Every charge is notified",
            "可随时撤销 Revocable at any time"]


def summary_lines(view: dict[str, Any]) -> list[str]:
    """The visit's summary receipt: each charge and the totals per source."""
    rows = ["就诊费用汇总 / Visit summary", f"就诊 Visit: {view['visit_id']}"]
    for c in view["charges"]:
        r = c.get("result") or {}
        if c["status"] in ("paid", "refunded", "partially_refunded", "refund_pending", "refund_failed"):
            rows.append(f"{c['charge_id']}: {r.get('medfee_sumamt')} ({c['status']})")
        else:
            rows.append(f"{c['charge_id']}: {c['status']} {c.get('reason') or ''}".rstrip())
    t = view["totals"]
    rows += [f"费用合计 Total: {t['medfee_sumamt']}", f"医保统筹 Fund: {t['fund_pay_sumamt']}",
             f"个人账户 Account: {t['acct_pay']}", f"家庭共济 Family aid: {t['acct_mulaid_pay']}",
             f"信用支付 Credit: {t['credit_draw']}", f"现金 Cash: {t['cash_pay']}"]
    return rows
