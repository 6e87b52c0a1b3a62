"""`kiosk reconcile DAY`: the terminal's day-end with the insurance centre and the bank.

For one Asia/Shanghai day and this terminal's institution, the kiosk journal
(app_orders, app_journal, app_refunds; read with the cross-party check's
queries) says what the centre and the bank should show:

- the centre: each settlement ('settled' step) on the day it was recorded, and
  each reversal of one ('reversed' after a failed payment, 'refund_reversed' of
  a whole refund) as a row with negated amounts on its own day - the rows 3201
  totals per insurance type and clearing type. The kiosk sends its totals;
  where the centre answers "inconsistent", 3202 (the centre's list) is compared
  row by row;
- the bank: each draw or capture ('drawn'), each credit refund
  ('refund_credited') and each draw undone by key ('draw_reversed') on its
  day, compared per ref with the bank's clearing statement (credit.clearing).

Rows another terminal of the institution made (their appId differs) are
counted in the institution's totals but cannot be judged from this journal:
they are listed as notes. Every discrepancy says what it is and what resolves
it: recovery by key on this terminal (what is still in flight), or a report to
the operator (what the parties disagree on). Exit 0 when the day matches, 1
otherwise.
"""
from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

from kiosk.app.crosscheck import IN_FLIGHT, _rows
from kiosk.clock import SHANGHAI
from kiosk.errors import KioskError, RemoteError
from kiosk.money import fen_to_yuan, yuan_to_fen
from kiosk.storage import Database

AMOUNTS = ("medfee_sumamt", "fund_pay_sumamt", "acct_pay")
RECOVER = ("restart the kiosk app (systemctl restart kiosk-app): on start it resolves open orders and pending "
           "refunds by their journal keys")


@dataclass(frozen=True)
class Discrepancy:
    kind: str      # missing_at_centre | reversed_at_centre_paid_locally | draw_without_settlement |
    #                refund_not_applied | amount_differs | pending_refund | order_in_flight | missing_locally
    order: str     # 'system/order_id', '' when no order of this terminal knows it
    ref: str       # setl_id (the draw's ref at the bank)
    detail: str
    resolve: str

    def to_json(self) -> dict[str, str]:
        return asdict(self)


@dataclass
class DayReport:
    day: str
    institution: str
    groups: list[dict[str, Any]] = field(default_factory=list)
    bank: dict[str, Any] = field(default_factory=dict)
    discrepancies: list[Discrepancy] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def matched(self) -> bool:
        return not self.discrepancies

    def to_json(self) -> dict[str, Any]:
        return {"day": self.day, "institution": self.institution, "matched": self.matched, "groups": self.groups,
                "bank": self.bank, "discrepancies": [d.to_json() for d in self.discrepancies], "notes": self.notes}

    def table(self) -> str:
        out = [f"day-end {self.day} (Asia/Shanghai), institution {self.institution}", "",
               f"{'INSUTYPE':<8} {'CLR':<4} {'':<7} {'MEDFEE':>12} {'FUND':>12} {'ACCT':>12} {'COUNT':>6}  CENTRE SAYS"]
        for g in self.groups:
            for who in ("kiosk", "centre"):
                t = g[who]
                verdict = ("consistent" if g["consistent"] else "INCONSISTENT") if who == "centre" else ""
                out.append(f"{g['insutype']:<8} {g['clr_type']:<4} {who:<7} {t['medfee_sumamt']:>12} "
                           f"{t['fund_pay_sumamt']:>12} {t['acct_pay']:>12} {t['fixmedins_setl_cnt']:>6}  {verdict}")
        if not self.groups:
            out.append("(no settlements on this day at either side)")
        b = self.bank
        if b:
            out += ["", f"{'BANK':<8} {'DRAWS':>12} {'CAPTURES':>12} {'REFUNDS':>12} {'NET DUE':>12}"]
            for who in ("kiosk", "bank"):
                t = b[who]
                out.append(f"{who:<8} {t['draws']:>12} {t['captures']:>12} {t['refunds']:>12} {t['net_due']:>12}")
        if self.discrepancies:
            out += ["", "DISCREPANCIES"]
            for d in self.discrepancies:
                out.append(f"- {d.kind}: order {d.order or '-'}, ref {d.ref or '-'}: {d.detail}")
                out.append(f"    resolve: {d.resolve}")
        for n in self.notes:
            out.append(f"note: {n}")
        out += ["", "day matches" if self.matched else f"{len(self.discrepancies)} discrepancy(ies)"]
        return "\n".join(out)


# ------------------------------------------------------------------------------------------ the kiosk's view
@dataclass
class _Order:
    system: str
    order_id: str
    mode: str
    status: str
    pharmacy: bool
    steps: list[tuple[str, dict[str, Any], str]]  # (step, data, at) in journal order
    refunds: list[tuple[str, str, str]]            # (refund_id, status, day)

    @property
    def label(self) -> str:
        return f"{self.system}/{self.order_id}"

    def last(self, step: str) -> dict[str, Any] | None:
        found = [d for s, d, _ in self.steps if s == step]
        return found[-1] if found else None


@dataclass(frozen=True)
class _Entry:
    """A row the kiosk expects at a party: +amounts (settlement / draw) or -amounts (reversal / refund)."""

    order: str
    ref: str
    msgid: str
    sign: int
    amounts: tuple[int, int, int]  # medfee, fund, acct (centre); (amount, 0, 0) at the bank
    group: tuple[str, str]         # (insutype, clr_type) at the centre; (kind, '') at the bank
    at: datetime                   # when the kiosk journaled it (Asia/Shanghai)

    @property
    def day(self) -> date:
        return self.at.date()


def _local(ts: str) -> datetime:
    return datetime.fromisoformat(ts).astimezone(SHANGHAI)


def _day_of(ts: str) -> date:
    return _local(ts).date()


# the journal steps that move money at a party (what `_expected` books)
MONEY_STEPS = ("settled", "reversed", "refund_reversed", "drawn", "refund_credited", "draw_reversed",
               "return_reversed", "return_settled", "return_credited", "return_drawn")


def journal_moves_sql(n_steps: int = len(MONEY_STEPS)) -> str:
    """The orders with a money step journaled in [lo, hi): index app_journal_step_at (app.004)."""
    marks = ", ".join("?" for _ in range(n_steps))
    return f"SELECT DISTINCT system, order_id FROM app_journal WHERE step IN ({marks}) AND at >= ? AND at < ?"


def _moved(db: Database, day: date) -> set[tuple[str, str]]:
    """Orders of any day whose money moved around `day` (e.g. one recovered days after it was made). The
    journal's times are ISO text in the writer's offset: a window one day wider each side, by prefix."""
    lo, hi = (day - timedelta(days=1)).isoformat(), (day + timedelta(days=2)).isoformat()
    return {(r[0], r[1]) for r in _rows(db, journal_moves_sql(), (*MONEY_STEPS, lo, hi)) or []}


def _load_orders(db: Database, day: date) -> list[_Order]:
    days = [(day + timedelta(days=k)).isoformat() for k in (-1, 0, 1)]
    marks = ", ".join("?" for _ in days)
    base = _rows(db, f"SELECT system, order_id, mode, status, request FROM app_orders WHERE day IN ({marks})",
                 tuple(days))
    if base is None:
        raise KioskError("no app_orders table: not a kiosk database", code="not_a_kiosk_db", field="database")
    refunded = _rows(db, f"SELECT DISTINCT system, order_id FROM app_refunds WHERE day IN ({marks})", tuple(days)) or []
    keys = {(r[0], r[1]) for r in base} | {(r[0], r[1]) for r in refunded} | _moved(db, day)
    extra = [k for k in keys if k not in {(r[0], r[1]) for r in base}]
    rows = list(base)
    for system, oid in extra:  # an order of an earlier day refunded on this one
        rows += _rows(db, "SELECT system, order_id, mode, status, request FROM app_orders WHERE system = ? AND "
                          "order_id = ?", (system, oid)) or []
    out = []
    for system, oid, mode, status, request in rows:
        steps = [(s, json.loads(d), at) for s, d, at in _rows(
            db, "SELECT step, data, at FROM app_journal WHERE system = ? AND order_id = ? ORDER BY id",
            (system, oid)) or []]
        refunds = [(r[0], r[1], r[2]) for r in _rows(
            db, "SELECT refund_id, status, day FROM app_refunds WHERE system = ? AND order_id = ?", (system, oid)) or []]
        bill = (json.loads(request) if request else {}).get("bill") or {}
        out.append(_Order(system, oid, mode, status, str(bill.get("med_type", "")) == "41", steps, refunds))
    return sorted(out, key=lambda o: (o.system, o.order_id))


def _expected(orders: list[_Order]) -> tuple[list[_Entry], list[_Entry]]:
    """(rows the centre should list, entries the bank should clear), each at the instant journaled."""
    centre: list[_Entry] = []
    bank: list[_Entry] = []
    for o in orders:
        if o.mode == "return":
            _expected_return(o, centre, bank)
            continue
        settled = o.last("settled") or {}
        setl_id = str(settled.get("setl_id") or "")
        split = settled.get("split") or {}
        amounts = tuple(int(split.get(k, 0)) for k in AMOUNTS)
        group = (str(settled.get("insutype") or "310"), "41" if o.pharmacy else "11")
        msgid = str(settled.get("msgid") or (o.last("settle") or {}).get("msgid") or "")
        plans = {d.get("refund_id"): d for s, d, _ in o.steps if s == "refund"}
        left = 0  # what is left of the draw at the bank (drawn less what refunds gave back)
        for step, data, ts in o.steps:
            at = _local(ts)
            if step == "settled" and setl_id:
                centre.append(_Entry(o.label, setl_id, msgid, 1, amounts, group, at))  # type: ignore[arg-type]
            elif step in ("reversed", "refund_reversed") and setl_id:
                centre.append(_Entry(o.label, setl_id, msgid, -1, amounts, group, at))  # type: ignore[arg-type]
            elif step == "drawn":
                amt = int(data.get("amount", 0))
                left += amt
                kind = "capture" if o.mode == "discharge" else "draw"
                bank.append(_Entry(o.label, str(data.get("draw_id") or setl_id), "", 1, (amt, 0, 0), (kind, ""), at))
            elif step == "refund_credited":
                plan = plans.get(data.get("refund_id")) or {}
                amt = int(plan.get("credit_back", 0))
                left -= amt
                bank.append(_Entry(o.label, str(plan.get("draw_id") or setl_id), "", -1, (amt, 0, 0), ("refund", ""),
                                   at))
            elif step == "draw_reversed" and left > 0:  # undone by key: the rest of the draw came back
                drawn_data = o.last("drawn") or o.last("draw") or {}
                ref = str(drawn_data.get("draw_id") or drawn_data.get("ref") or setl_id)
                bank.append(_Entry(o.label, ref, "", -1, (left, 0, 0), ("refund", ""), at))
                left = 0
    return centre, bank


def _expected_return(o: _Order, centre: list[_Entry], bank: list[_Entry]) -> None:
    """An item-level return (kiosk.app.terminal): its plan names the original settlement and draw;
    'return_reversed' takes the original off (-), 'return_settled' books the kept lines (+),
    'return_credited' refunds the original draw whole (-), 'return_drawn' draws the new cash share (+)."""
    plan = o.last("return") or {}
    orig = plan.get("orig") or {}
    group = (str(plan.get("insutype") or "310"), "41" if plan.get("pharmacy") else "11")
    old = tuple(yuan_to_fen(str(orig.get(k) or "0.00"), k) for k in AMOUNTS)
    label = f"{o.system}/{plan.get('order_id') or o.order_id}"
    for step, data, ts in o.steps:
        at = _local(ts)
        if step == "return_reversed" and orig.get("setl_id"):
            centre.append(_Entry(label, str(orig["setl_id"]), "", -1, old, group, at))  # type: ignore[arg-type]
        elif step == "return_settled":
            split = data.get("split") or {}
            amounts = tuple(int(split.get(k, 0)) for k in AMOUNTS)
            centre.append(_Entry(label, str(data.get("setl_id") or ""), str(plan.get("settle_msgid") or ""), 1,
                                 amounts, group, at))  # type: ignore[arg-type]
        elif step == "return_credited":
            bank.append(_Entry(label, str(data.get("draw_id") or ""), "", -1, (int(data.get("amount", 0)), 0, 0),
                               ("refund", ""), at))
        elif step == "return_drawn" and int(data.get("amount", 0)) > 0:
            bank.append(_Entry(label, str(data.get("draw_id") or ""), "", 1, (int(data["amount"]), 0, 0),
                               ("draw", ""), at))


def _totals(entries: list[_Entry]) -> dict[tuple[str, str], list[int]]:
    out: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for e in entries:
        t = out[e.group]
        for i in range(3):
            t[i] += e.sign * e.amounts[i]
        t[3] += 1
    return dict(out)


# ------------------------------------------------------------------------------------------ the day-end
def _centre_call(centre: Any, infno: str, data: dict[str, Any]) -> dict[str, Any]:
    """One centre transaction, signed in (again, once, when the centre says the sign-in lapsed)."""
    from kiosk.services.protocol import InfCode

    if not centre.sign_no:
        centre.sign_in("reconcile")
    a = centre.call(infno, data)
    if a.infcode == InfCode.NOT_SIGNED_IN:
        centre.sign_in("reconcile")
        a = centre.call(infno, data)
    return _answer(a, f"centre ({infno})")


def _answer(a: Any, what: str) -> dict[str, Any]:
    if not a.ok:
        raise RemoteError(f"the {what} refused: {a.err_msg}", code=a.err_code or "refused")
    return a.output


def reconcile(db: Database, centre: Any, bank: Any | None, day: date) -> DayReport:
    """The day-end of this terminal's institution. `centre`, `bank`: the terminal's CentreClient and
    BankClient (signed in as this terminal; the services answer for its own institution only)."""
    me = centre.ident.app_id
    rep = DayReport(day.isoformat(), centre.ident.fixmedins_code)
    orders = _load_orders(db, day)
    all_centre, all_bank = _expected(orders)
    mine = _totals([e for e in all_centre if e.day == day])
    period = {"stmt_begndate": day.isoformat(), "stmt_enddate": day.isoformat(), "refd_setl_flag": "1"}
    stmt = [{"insutype": k[0], "clr_type": k[1], "medfee_sumamt": fen_to_yuan(v[0]),
             "fund_pay_sumamt": fen_to_yuan(v[1]), "acct_pay": fen_to_yuan(v[2]), "fixmedins_setl_cnt": v[3]}
            for k, v in sorted(mine.items())]
    out = _centre_call(centre, "3201", {"data": {**period, "stmtinfo": stmt}})
    consistent = True
    for g in out["stmtinfo"]:
        k = (g["insutype"], g["clr_type"])
        v = mine.get(k, [0, 0, 0, 0])
        rep.groups.append({"insutype": k[0], "clr_type": k[1], "consistent": g["stmt_rslt"] == "0",
                           "kiosk": {"medfee_sumamt": fen_to_yuan(v[0]), "fund_pay_sumamt": fen_to_yuan(v[1]),
                                     "acct_pay": fen_to_yuan(v[2]), "fixmedins_setl_cnt": v[3]},
                           "centre": {n: g[n] for n in ("medfee_sumamt", "fund_pay_sumamt", "acct_pay",
                                                        "fixmedins_setl_cnt")},
                           "differs": "" if g["stmt_rslt"] == "0" else g["stmt_rslt_dscr"]})
        consistent = consistent and g["stmt_rslt"] == "0"
    listed: list[dict[str, Any]] | None = None
    if not consistent:
        # the day and its neighbours: a row booked across midnight (the parties' clocks a moment apart,
        # or a step journaled just after the centre's answer) is found where it is, not called missing
        wide = {**period, "stmt_begndate": (day - timedelta(days=1)).isoformat(),
                "stmt_enddate": (day + timedelta(days=1)).isoformat()}
        listed = _settlement_list(centre, wide)
        _compare_centre(rep, listed, all_centre, orders, me, day)
    if bank is not None:
        def clearing(d: date) -> dict[str, Any]:
            return _answer(bank.call("credit.clearing", {"day": d.isoformat()}), "bank (credit.clearing)")

        _compare_bank(rep, clearing, all_bank, all_centre, listed, me, day)
    _in_flight(rep, orders, day)
    if not consistent and not any(d.kind not in ("order_in_flight", "pending_refund") for d in rep.discrepancies) \
            and not rep.notes:
        rep.discrepancies.append(Discrepancy(
            "amount_differs", "", "", "the centre's totals differ from the kiosk's but no settlement explains it "
            "(" + "; ".join(g["differs"] for g in rep.groups if g["differs"]) + ")",
            "report to the operator with this report (--json)"))
    return rep


def _settlement_list(centre: Any, period: dict[str, str]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    page = 1
    while True:
        out = _centre_call(centre, "3202", {"data": {**period, "page_num": page, "page_size": 1000}})
        rows += out["data"]
        if page >= int(out["pages"] or 0):
            return rows
        page += 1


def _fen(v: Any) -> int:
    return yuan_to_fen(str(v), "amount", allow_negative=True)


def _centre_time(r: dict[str, Any]) -> datetime:
    return datetime.strptime(r["setl_time"], "%Y-%m-%d %H:%M:%S").replace(tzinfo=SHANGHAI)


def _compare_centre(rep: DayReport, listed: list[dict[str, Any]], expected: list[_Entry], orders: list[_Order],
                    me: str, day: date) -> None:
    bad = rep.discrepancies.append
    theirs = {(r["setl_id"], 1 if r["refd_setl_flag"] == "0" else -1): r for r in listed}
    ours = {(e.ref, e.sign): e for e in expected}
    by_setl = {str((o.last("settled") or {}).get("setl_id") or ""): o for o in orders}
    by_msgid = {str((o.last("settle") or {}).get("msgid") or ""): o for o in orders}
    what = {1: "settlement", -1: "reversal"}
    for key, e in sorted(ours.items()):
        if e.day != day:
            continue
        r = theirs.get(key)
        if r is None:
            if e.sign > 0:
                bad(Discrepancy("missing_at_centre", e.order, e.ref, f"the kiosk recorded settlement {e.ref} (msgid "
                                f"{e.msgid}, {fen_to_yuan(e.amounts[0])}) on this day; the centre lists none",
                                "report to the operator: the centre must find msgid " + e.msgid + " (5203 by "
                                "omsgid) or the order be refunded to the patient"))
            else:
                bad(Discrepancy("refund_not_applied", e.order, e.ref, f"the kiosk reversed settlement {e.ref} on "
                                "this day; the centre lists no reversal", "report to the operator: reverse "
                                f"{e.ref} at the centre (2208/2103) or restore the order"))
            continue
        if _centre_time(r).date() != day:
            rep.notes.append(f"{what[e.sign]} {e.ref} ({e.order}): journaled at the kiosk {e.at:%Y-%m-%d %H:%M:%S}, "
                             f"booked by the centre {r['setl_time']} (across midnight: counted on that day)")
        got = tuple(_fen(r[k]) for k in AMOUNTS)  # the centre's reversal rows carry their minus sign
        want = tuple(e.sign * a for a in e.amounts)
        if got != want:
            diff = ", ".join(f"{k} kiosk {fen_to_yuan(w)} centre {fen_to_yuan(g)}"
                             for k, w, g in zip(AMOUNTS, want, got) if w != g)
            bad(Discrepancy("amount_differs", e.order, e.ref, diff, "report to the operator: the settlement's split "
                            "differs between the kiosk's receipt and the centre"))
    for key, r in sorted(theirs.items()):
        e = ours.get(key)
        if _centre_time(r).date() != day or (e is not None and e.day == day):
            continue
        if r["app_id"] != me:
            rep.notes.append(f"{what[key[1]]} {r['setl_id']} made by terminal {r['app_id']} of this institution: "
                             "not in this terminal's journal")
            continue
        if e is not None:
            rep.notes.append(f"{what[key[1]]} {r['setl_id']} ({e.order}): booked by the centre {r['setl_time']}, "
                             f"journaled at the kiosk {e.at:%Y-%m-%d %H:%M:%S} (across midnight: counted on that day)")
            continue
        o = by_setl.get(r["setl_id"]) or by_msgid.get(r["msgid"])
        label = o.label if o else ""
        if key[1] < 0 and o is not None and o.status in ("paid", "partially_refunded"):
            bad(Discrepancy("reversed_at_centre_paid_locally", label, r["setl_id"], f"the centre reversed it at "
                            f"{r['reversed_at']}; the kiosk's order says {o.status}",
                            "report to the operator: the patient was paid back by the fund but not by the kiosk "
                            "(refund the order through the POS) or the reversal was wrong"))
        elif o is not None and o.status in IN_FLIGHT:
            continue  # named by _in_flight: its terminal resolves it by key
        elif o is not None and o.last("settled") is None and any(s == "reversed" for s, _, _ in o.steps):
            rep.notes.append(f"{what[key[1]]} {r['setl_id']} ({label}): the settling answer was lost and the message "
                             "reversed by its msgid (2601): nothing stands, as the kiosk's order says")
        else:
            bad(Discrepancy("missing_locally", label, r["setl_id"], f"the centre lists a {what[key[1]]} of "
                            f"{r['medfee_sumamt']} by this terminal (msgid {r['msgid']}) that the kiosk's journal "
                            "does not have", "report to the operator: the kiosk's journal lost a step"))


def _compare_bank(rep: DayReport, clearing: Any, expected: list[_Entry], exp_centre: list[_Entry],
                  listed: list[dict[str, Any]] | None, me: str, day: date) -> None:
    bad = rep.discrepancies.append
    stmt = clearing(day)
    near: dict[date, dict[str, Any]] = {day: stmt}

    def net_by_ref(st: dict[str, Any]) -> tuple[dict[str, int], dict[str, set[str]]]:
        net: dict[str, int] = defaultdict(int)
        kinds: dict[str, set[str]] = defaultdict(set)
        for x in st["entries"]:
            if not x.get("app_id") or x["app_id"] == me:
                net[x["ref"]] += _fen(x["due"])
                kinds[x["ref"]].add(x["kind"])
        return net, kinds

    for x in stmt["entries"]:
        if x.get("app_id") and x["app_id"] != me:
            rep.notes.append(f"bank {x['kind']} of {x['amount']} on {x['ref']} by terminal {x['app_id']} of this "
                             "institution: not in this terminal's journal")
    theirs, kinds = net_by_ref(stmt)
    ours: dict[str, int] = defaultdict(int)
    who: dict[str, str] = {}
    sums = {"draw": 0, "capture": 0, "refund": 0}
    for e in expected:
        who.setdefault(e.ref, e.order)
        if e.day == day:
            ours[e.ref] += e.sign * e.amounts[0]
            sums[e.group[0]] += e.amounts[0]
    settled = {e.ref for e in exp_centre if e.sign > 0} | {r["setl_id"] for r in listed or [] if r["state"] == "settled"}
    for ref in sorted(set(theirs) | set(ours)):
        t, o = theirs.get(ref, 0), ours.get(ref, 0)
        if t == o:
            continue
        # booked across midnight? the same ref over the day and its neighbours, at both sides
        for d in (day - timedelta(days=1), day + timedelta(days=1)):
            if d not in near:
                near[d] = clearing(d)
        t3 = sum(net_by_ref(st)[0].get(ref, 0) for st in near.values())
        o3 = sum(e.sign * e.amounts[0] for e in expected if e.ref == ref and abs((e.day - day).days) <= 1)
        if t3 == o3 and ref in who:
            rep.notes.append(f"bank entries on {ref} ({who[ref]}) booked across midnight: the day and its neighbours "
                             "agree")
            continue
        if ref not in ours and kinds.get(ref, set()) & {"draw", "capture"} and ref not in settled and t > 0:
            bad(Discrepancy("draw_without_settlement", who.get(ref, ""), ref, f"the bank cleared {fen_to_yuan(t)} for "
                            f"ref {ref} by this terminal; no settlement of the kiosk's has this ref",
                            "report to the operator: the bank's draw must be refunded (credit.refund) or its "
                            "settlement found"))
            continue
        refunded = -sum(e.sign * e.amounts[0] for e in expected if e.ref == ref and e.sign < 0 and e.day == day)
        if o < t and refunded:
            bad(Discrepancy("refund_not_applied", who.get(ref, ""), ref, f"the kiosk gave {fen_to_yuan(refunded)} "
                            f"back to this draw on this day; the bank's clearing shows net due {fen_to_yuan(t)}, "
                            f"the kiosk's journal {fen_to_yuan(o)}", "report to the operator: the bank confirmed "
                            "a refund it does not clear (its journal lost it, or it was booked on another day)"))
        else:
            bad(Discrepancy("amount_differs", who.get(ref, ""), ref, f"net due on this ref: kiosk {fen_to_yuan(o)}, "
                            f"bank {fen_to_yuan(t)}", "report to the operator: the bank's clearing and the kiosk's "
                            "journal disagree on this draw"))
    net = sums["draw"] + sums["capture"] - sums["refund"]
    rep.bank = {"kiosk": {"draws": fen_to_yuan(sums["draw"]), "captures": fen_to_yuan(sums["capture"]),
                          "refunds": fen_to_yuan(sums["refund"]), "net_due": fen_to_yuan(net)},
                "bank": {"draws": stmt["draws"]["amount"], "captures": stmt["captures"]["amount"],
                         "refunds": stmt["refunds"]["amount"], "net_due": stmt["net_due"]},
                "entries": stmt["entries"]}


def _in_flight(rep: DayReport, orders: list[_Order], day: date) -> None:
    for o in orders:
        pending = [rid for rid, status, d in o.refunds if status in ("running", "pending")]
        if pending or o.status == "refund_pending":
            rep.discrepancies.append(Discrepancy(
                "pending_refund", o.label, str((o.last("settled") or {}).get("setl_id") or ""),
                f"refund {', '.join(pending) or '?'} is pending (a party's answer is not known yet)",
                RECOVER + f"; or the POS retries POST /pos/v1/orders/{o.order_id}/refunds with the same refund_id"))
        elif o.status in IN_FLIGHT and any(_day_of(at) == day for _, _, at in o.steps):
            rep.discrepancies.append(Discrepancy(
                "order_in_flight", o.label, str((o.last("settled") or {}).get("setl_id") or ""),
                f"the order is {o.status}", RECOVER))


def format_report(rep: DayReport, as_json: bool) -> str:
    return json.dumps(rep.to_json(), ensure_ascii=False, indent=1) if as_json else rep.table()
