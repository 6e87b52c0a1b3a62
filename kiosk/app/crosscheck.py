"""The cross-party check: the centre, the bank and the kiosks' orders tell one story.

`kiosk services check` proves each ledger balances on its own; a payment spans
parties, and each can balance while they disagree (a draw on a settlement that
was reversed, an order that says paid for money already given back). This
check reads the three books (read-only) and proves, beyond each alone:

- every bank draw refers (ref = setl_id) to a settlement at the centre, made for
  the same person by the same institution that drew (the drawing terminal's appId
  -> the institution it is registered for at the bank, or the draw's own
  institution column where the bank stores one), and the draw net of refunds
  never exceeds that settlement's personal cash share (`psn_cash_pay`);
- every reversed settlement's draw was refunded in full, no draw was undone by
  its key (credit.draw_reverse) while its settlement stands, and no settlement
  or draw was reversed or refunded by a terminal of another institution;
- every kiosk order's state matches both parties: paid (or partially refunded)
  => its settlement stands and its draw holds the credit share less what its
  refunds returned; refunded => settlement reversed (whole) and draw refunded;
  failed or cancelled => nothing standing; held => the hold is open at the bank.

An order still being resolved by its terminal (running, reversing,
refund_pending) is listed as pending, with whatever the parties show for it,
not as a mismatch. Layering: kiosk.app reads the services' tables; the services
never import this.
"""
from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Sequence

from kiosk.errors import KioskError
from kiosk.money import fen_to_yuan, yuan_to_fen
from kiosk.storage import Database

IN_FLIGHT = ("pending", "running", "reversing", "refund_pending", "returning", "return_pending",
             "charge_pending", "opening")  # a visit's charge / registration waiting for a party (kiosk.app.visits)
_INSTITUTION_COLUMNS = ("fixmedins_code", "institution")  # what a bank table may name the drawing institution


@dataclass(frozen=True)
class Finding:
    kind: str     # machine code, e.g. 'reversed_settlement_draw_not_refunded'
    setl_id: str  # the settlement (or the draw's ref) concerned, '' when none
    order: str    # 'system/order_id' of a kiosk order, '' when the finding is between centre and bank only
    detail: str   # what differs, in words and yuan

    def to_json(self) -> dict[str, str]:
        return asdict(self)


@dataclass
class PartiesReport:
    mismatches: list[Finding] = field(default_factory=list)
    pending: list[Finding] = field(default_factory=list)
    counted: dict[str, int] = field(default_factory=dict)

    @property
    def balanced(self) -> bool:
        return not self.mismatches

    def to_json(self) -> dict[str, Any]:
        return {"balanced": self.balanced, "counted": self.counted,
                "mismatches": [f.to_json() for f in self.mismatches], "pending": [f.to_json() for f in self.pending]}

    def table(self) -> str:
        """A readable table: one line per mismatch (then the pending ones), then the verdict."""
        lines = []
        for title, rows in (("MISMATCH", self.mismatches), ("PENDING", self.pending)):
            if not rows:
                continue
            w_kind = max(len(r.kind) for r in rows)
            w_order = max([len("ORDER")] + [len(r.order) for r in rows])
            w_setl = max([len("SETL_ID")] + [len(r.setl_id) for r in rows])
            lines.append(f"{title:<8} {'KIND':<{w_kind}}  {'ORDER':<{w_order}}  {'SETL_ID':<{w_setl}}  WHAT DIFFERS")
            for r in rows:
                lines.append(f"{'':<8} {r.kind:<{w_kind}}  {r.order or '-':<{w_order}}  {r.setl_id or '-':<{w_setl}}  "
                             f"{r.detail}")
        counted = ", ".join(f"{v} {k}" for k, v in self.counted.items())
        verdict = "balanced across parties" if self.balanced else f"{len(self.mismatches)} mismatch(es)"
        lines.append(f"{verdict} ({counted}; {len(self.pending)} pending)")
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------ reading
@dataclass(frozen=True)
class _Setl:
    setl_id: str
    msgid: str       # as the centre stores it: 'appId/msgid'
    psn_no: str
    institution: str
    state: str       # settled | reversed
    cash: int        # psn_cash_pay, fen
    rev_by: str      # appId of the reversing message ('' while standing)


@dataclass
class _Draw:
    ref: str
    payer: str
    original: int
    refunded: int
    from_hold: bool
    institution: str = ""      # who drew: the bank's own column, else the drawing terminal's registration
    drawer: str = ""           # appId of the drawing terminal ('' for a capture: not keyed by credit.draw)
    reversed_by_key: bool = False

    @property
    def net(self) -> int:
        return self.original - self.refunded


def _rows(db: Database, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]] | None:
    """The rows, or None when the table or column does not exist (an older or newer schema)."""
    try:
        return db.read(lambda tx: tx.fetch_all(sql, params))
    except KioskError:
        return None


def _terminals(db: Database, service: str) -> dict[str, str]:
    return {r[0]: r[1] for r in _rows(db, f"SELECT app_id, fixmedins_code FROM {service}_terminals") or []}


def _appid(qualified: str) -> str:
    """'appId/rest' (how both services qualify msgids and keys by their sender) -> appId."""
    return qualified.split("/", 1)[0] if "/" in qualified else ""


def _centre(db: Database) -> tuple[dict[str, _Setl], dict[str, str]]:
    rows = _rows(db, "SELECT setl_id, msgid, psn_no, fixmedins_code, state, psn_cash_pay, rev_msgid "
                     "FROM centre_settlements")
    if rows is None:
        raise KioskError("no centre_settlements table: not an insurance centre database", code="not_a_centre_db",
                         field="--centre-db")
    setl = {r[0]: _Setl(r[0], r[1], r[2], r[3], r[4], int(r[5]), _appid(r[6] or "")) for r in rows}
    return setl, _terminals(db, "centre")


def _bank(db: Database) -> tuple[dict[str, _Draw], dict[str, tuple[str, int]], list[tuple[str, str, int]]]:
    """(draws by ref, holds by ref -> (status, captured), refunds made through credit.refund as
    (appId, ref, amount))."""
    rows = _rows(db, "SELECT ref, payer, original_fen, refunded_fen, from_hold FROM credit_draws")
    if rows is None:
        raise KioskError("no credit_draws table: not a bank database", code="not_a_bank_db", field="--bank-db")
    draws = {r[0]: _Draw(r[0], r[1], int(r[2]), int(r[3]), bool(r[4])) for r in rows}
    terms = _terminals(db, "bank")
    for col in _INSTITUTION_COLUMNS:  # a bank that records the drawing institution on the draw itself
        for ref, inst in _rows(db, f"SELECT ref, {col} FROM credit_draws") or []:
            if inst and ref in draws:
                draws[ref].institution = str(inst)
    own_col = next((c for c in _INSTITUTION_COLUMNS if _rows(db, f"SELECT {c} FROM bank_draw_keys WHERE 1 = 0")
                    is not None), None)
    cols = "key, ref, state" + (f", {own_col}" if own_col else "")
    for r in _rows(db, f"SELECT {cols} FROM bank_draw_keys") or []:
        d = draws.get(r[1])
        if d is None or r[2] not in ("drawn", "reversed"):
            continue
        d.drawer = _appid(r[0])
        if not d.institution:
            d.institution = str(r[3]) if own_col and r[3] else _institution_of(d.drawer, terms)
        d.reversed_by_key = d.reversed_by_key or r[2] == "reversed"
    holds = {r[0]: (r[1], int(r[2] or 0)) for r in _rows(db, "SELECT ref, status, captured_fen FROM credit_holds") or []}
    # who refunded what: credit.refund leaves no actor in the credit journal; the bank's stored answer to
    # the message (under 'appId/msgid') names the ref and the split it refunded
    refunds: list[tuple[str, str, int]] = []
    for key, resp in _rows(db, "SELECT key, response FROM idempotency_keys WHERE scope = 'bank.msgid' "
                               "AND response LIKE ?", ('%"principal"%',)) or []:
        try:
            a = json.loads(resp)
            out = a.get("output") or {}
            if a.get("infcode") == 0 and set(out) == {"principal", "cash", "ref"}:
                refunds.append((_appid(key), str(out["ref"]), _fen(out["principal"]) + _fen(out["cash"])))
        except (ValueError, TypeError, AttributeError, KioskError):
            continue
    return draws, holds, [(_institution_of(app, terms) or app, ref, amt) for app, ref, amt in refunds]


def _institution_of(prefix: str, terms: dict[str, str]) -> str:
    """The institution behind a key's owner prefix: a registered terminal's appId (keys scoped per
    terminal), or an institution code itself (keys scoped per institution)."""
    return terms.get(prefix) or (prefix if prefix in set(terms.values()) else "")


def _fen(v: Any) -> int:
    return yuan_to_fen(str(v if v is not None else "0.00"), "amount", allow_negative=True)


# ------------------------------------------------------------------------------------------ the check
def check_parties(centre: Database, bank: Database, kiosks: Sequence[Database] = ()) -> PartiesReport:
    setl, centre_terms = _centre(centre)
    draws, holds, refunds = _bank(bank)
    by_msgid = {s.msgid.split("/", 1)[-1]: s for s in setl.values()}
    rep = PartiesReport()
    bad = rep.mismatches.append
    in_flight: set[str] = set()          # setl_ids / refs of orders their terminal is still resolving
    via_hold: dict[str, str] = {}        # hold ref -> setl_id of the discharge that captured it
    orders = 0
    for kdb in kiosks:
        orders += _check_orders(kdb, setl, by_msgid, draws, holds, rep, in_flight, via_hold)

    # every draw: a settlement of the same person and institution whose cash share covers it
    for d in draws.values():
        setl_id = via_hold.get(d.ref, "") if d.from_hold else d.ref
        if d.from_hold and not setl_id:
            if d.ref in setl:  # a deposit captured under a settlement's ref: that settlement cannot draw
                bad(Finding("hold_on_settlement_ref", d.ref, "", f"a captured deposit of {fen_to_yuan(d.original)} "
                            f"(payer {d.payer}) carries the ref of {setl[d.ref].institution}'s settlement"))
            continue  # a captured deposit: linked through the discharge order of a kiosk given, if any
        s = setl.get(setl_id)
        if s is None:
            bad(Finding("draw_without_settlement", d.ref, "", f"bank draw of {fen_to_yuan(d.original)} for payer "
                        f"{d.payer} (refunded {fen_to_yuan(d.refunded)}); the centre has no settlement {setl_id}"))
            continue
        if d.institution and d.institution != s.institution:
            bad(Finding("draw_other_institution", setl_id, "", f"drawn by a terminal of {d.institution}; the "
                        f"settlement belongs to {s.institution}"))
        if d.payer != s.psn_no:
            bad(Finding("draw_other_person", setl_id, "", f"the draw's payer is {d.payer}; the settlement is "
                        f"{s.psn_no}'s"))
        if s.state == "settled":
            if d.original > s.cash or d.net > s.cash:
                bad(Finding("draw_exceeds_cash_share", setl_id, "", f"drawn {fen_to_yuan(d.original)}, net "
                            f"{fen_to_yuan(d.net)}; the personal cash share is {fen_to_yuan(s.cash)}"))
            if d.reversed_by_key:
                bad(Finding("draw_reversed_settlement_standing", setl_id, "", "the draw was undone by its key "
                            "(credit.draw_reverse: payment abandoned) but the settlement stands"))
        elif d.net != 0:
            bad(Finding("reversed_settlement_draw_not_refunded", setl_id, "", f"settlement reversed; its draw of "
                        f"{fen_to_yuan(d.original)} has {fen_to_yuan(d.net)} still charged"))
    for ref, (status, _captured) in holds.items():
        if status == "open" and ref in setl:
            bad(Finding("hold_on_settlement_ref", ref, "", f"an open deposit hold carries the ref of "
                        f"{setl[ref].institution}'s settlement (its draw is refused: ref used)"))
    # reversals and refunds by someone other than the owner
    for s in setl.values():
        if s.state != "settled" and s.rev_by and centre_terms.get(s.rev_by, s.institution) != s.institution:
            bad(Finding("reversed_by_other_institution", s.setl_id, "", f"reversed by terminal {s.rev_by} of "
                        f"{centre_terms.get(s.rev_by)}; the settlement belongs to {s.institution}"))
    for inst, ref, amount in refunds:
        d = draws.get(ref)
        owner = d.institution if d else ""
        if d is not None and owner and inst != owner:
            bad(Finding("refund_by_other_institution", ref, "", f"{fen_to_yuan(amount)} refunded by a terminal of "
                        f"{inst}; the draw was made by {owner}"))

    # what a terminal is still resolving is reported as pending, not as a mismatch
    keep = [f for f in rep.mismatches if f.order or f.setl_id not in in_flight]
    rep.pending += [f for f in rep.mismatches if not f.order and f.setl_id in in_flight]
    rep.mismatches = keep
    rep.counted = {"settlements": len(setl), "draws": len(draws), "orders": orders}
    return rep


def _check_orders(db: Database, setl: dict[str, _Setl], by_msgid: dict[str, _Setl], draws: dict[str, _Draw],
                  holds: dict[str, tuple[str, int]], rep: PartiesReport, in_flight: set[str],
                  via_hold: dict[str, str]) -> int:
    orders = _rows(db, "SELECT system, order_id, mode, status, result, setl_id FROM app_orders")
    if orders is None:
        raise KioskError("no app_orders table: not a kiosk database", code="not_a_kiosk_db", field="--kiosk-db")
    journal: dict[tuple[str, str], dict[str, dict[str, Any]]] = defaultdict(dict)
    for system, oid, step, data in _rows(db, "SELECT system, order_id, step, data FROM app_journal ORDER BY id") or []:
        journal[(system, oid)][step] = json.loads(data)  # the last data of each step
    refunds: dict[tuple[str, str], list[tuple[str, dict[str, Any]]]] = defaultdict(list)
    for system, oid, status, result in _rows(db, "SELECT system, order_id, status, result FROM app_refunds") or []:
        refunds[(system, oid)].append((status, json.loads(result) if result else {}))

    for system, oid, mode, status, result, setl_col in orders:
        label = f"{system}/{oid}"
        res = json.loads(result) if result else {}
        j = journal.get((system, oid), {})
        setl_id = setl_col or res.get("setl_id") or j.get("settled", {}).get("setl_id") or ""
        s = setl.get(setl_id) if setl_id else None
        msgid = j.get("settle", {}).get("msgid")
        if s is None and msgid:
            s = by_msgid.get(msgid)  # the answer was lost, but the centre applied it
            setl_id = s.setl_id if s else setl_id
        draw_ref = res.get("draw_id") or j.get("drawn", {}).get("draw_id") or setl_id
        d = draws.get(draw_ref) if draw_ref else None
        if mode == "discharge" and draw_ref and setl_id:
            via_hold[draw_ref] = setl_id
        mine = rep.mismatches.append
        if mode == "return":  # an item-level return: its order carries the new settlement and draw
            if status == "return_failed":
                mine(Finding("order_return_failed", res.get("reason") or "", label, "a party refused the return "
                             "after the original settlement was reversed"))
            elif status in IN_FLIGHT:
                rep.pending.append(Finding("order_in_flight", "", label, f"the return is {status}; its terminal "
                                           "resolves it by key"))
            continue
        if status in IN_FLIGHT:
            in_flight.update(x for x in (setl_id, draw_ref) if x)
            rep.pending.append(Finding("order_in_flight", setl_id, label, f"the order is {status}; its terminal "
                                       "resolves it by key (" + _parties(s, d) + ")"))
            continue
        inst = j.get("start", {}).get("institution")
        if inst and s is not None and s.institution != inst:
            mine(Finding("order_other_institution", setl_id, label, f"the order is {inst}'s; the settlement "
                         f"belongs to {s.institution}"))
        done = [r for st, r in refunds.get((system, oid), []) if st == "refunded"]
        whole = any(r.get("whole") for r in done)
        credit = _fen(res.get("credit_draw")) if res else 0
        credit_back = sum(_fen(r.get("credit_refund")) for r in done)
        if status in ("paid", "partially_refunded", "returned") or (status == "refunded" and not whole):
            if s is None:
                mine(Finding("order_settlement_missing", setl_id, label, f"the order says {status}; the centre has "
                             "no such settlement"))
            elif s.state != "settled":
                mine(Finding("order_settlement_reversed", setl_id, label, f"the order says {status}; the centre "
                             f"says {s.state} (" + _parties(s, d) + ")"))
            want = credit - credit_back
            if credit > 0 and d is None:
                mine(Finding("order_draw_missing", setl_id, label, f"the order says {fen_to_yuan(credit)} by credit; "
                             f"the bank has no draw {draw_ref}"))
            elif d is not None and d.net != want:
                mine(Finding("order_draw_differs", setl_id, label, f"the order says {fen_to_yuan(credit)} by credit, "
                             f"{fen_to_yuan(credit_back)} of it refunded (net {fen_to_yuan(want)}); the bank's draw is "
                             f"{fen_to_yuan(d.original)}, {fen_to_yuan(d.refunded)} refunded (net {fen_to_yuan(d.net)})"))
        elif status == "refunded":
            if s is not None and s.state == "settled":
                mine(Finding("order_refunded_settlement_standing", setl_id, label, "the order says refunded; the "
                             "centre says settled"))
            if d is not None and d.net != 0:
                mine(Finding("order_refunded_draw_standing", setl_id, label, f"the order says refunded; the bank's "
                             f"draw has {fen_to_yuan(d.net)} still charged"))
        elif status in ("failed", "cancelled", "needs_patient"):  # needs_patient: a charge the mandate did not pay
            if s is not None and s.state == "settled":
                mine(Finding("order_failed_settlement_standing", setl_id, label, f"the order says {status}; the "
                             "centre says settled"))
            if d is not None and d.net != 0 and not d.from_hold:
                mine(Finding("order_failed_draw_standing", setl_id, label, f"the order says {status}; the bank's "
                             f"draw has {fen_to_yuan(d.net)} charged"))
        elif status == "refund_failed":
            mine(Finding("order_refund_failed", setl_id, label, f"a party refused the refund after the other "
                         f"applied it ({res.get('reason') or ''}); " + _parties(s, d)))
        elif status in ("held", "captured"):
            h = holds.get(res.get("hold_id") or "")
            want_hold = "open" if status == "held" else "captured"
            if h is None or h[0] != want_hold:
                mine(Finding("order_hold_differs", "", label, f"the order says {status}; the bank's hold "
                             f"{res.get('hold_id')} is {h[0] if h else 'missing'}"))
    return len(orders)


def _parties(s: _Setl | None, d: _Draw | None) -> str:
    centre = f"centre: {s.state}" if s else "centre: none"
    bank = (f"bank: drawn {fen_to_yuan(d.original)}, refunded {fen_to_yuan(d.refunded)}" if d else "bank: no draw")
    return f"{centre}; {bank}"


def format_report(rep: PartiesReport, as_json: bool) -> str:
    return json.dumps(rep.to_json(), ensure_ascii=False, indent=1) if as_json else rep.table()


def is_kiosk_db(db: Database) -> bool:
    return _rows(db, "SELECT 1 FROM app_orders WHERE 1 = 0") is not None


def open_books(urls: Iterable[str]) -> list[Database]:
    """Open the given databases read-only in spirit (nothing is written but the storage core's own
    tables on first open); a SQLite path that does not exist is refused, never created."""
    from pathlib import Path

    from kiosk.errors import InputError
    from kiosk.storage import open_database

    out = []
    for u in urls:
        url = u if "://" in u else f"sqlite:///{Path(u).resolve()}"
        if url.startswith("sqlite:///") and url != "sqlite:///:memory:" and not Path(url[len("sqlite:///"):]).exists():
            raise InputError(f"no database file {url[len('sqlite:///'):]}", field="database")
        out.append(open_database(url))
    return out
