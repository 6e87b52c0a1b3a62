"""Day-end reconciliation at the centre: 3201 (totals) and 3202 (the settlement list).

The day is the centre's settlement date in Asia/Shanghai. A settlement counts on
the day it was made; its reversal (2208/2103/2601) is a second row, with negated
amounts, on the day it was reversed (the platform's refd_setl_flag 1; with 0
reversal rows are left out). Only the caller's institution is ever read: the
institution comes from the registered terminal, never from the request, and a
request naming another institution is answered as for one with no settlements
(and audited), so nobody learns whether another institution settled anything.

Groups: insutype is the insured person's (centre_persons), clr_type follows the
transaction that settled (2207 -> 11 outpatient, 2102 -> 41 pharmacy).
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any, Iterable

from kiosk.clock import SHANGHAI
from kiosk.money import fen_to_yuan, yuan_to_fen
from kiosk.services.centre import models as m
from kiosk.services.gateway import Ctx
from kiosk.storage import Transaction

CLR_TYPE = {"2207": "11", "2102": "41"}
CONSISTENT, INCONSISTENT = "0", "1"


@dataclass(frozen=True)
class Row:
    """One line of the day's list: a settlement (refd_setl_flag 0) or its reversal (1, amounts negated)."""

    setl_id: str
    app_id: str
    msgid: str
    infno: str
    clr_type: str
    insutype: str
    psn_no: str
    mdtrt_id: str
    medfee_sumamt: int
    fund_pay_sumamt: int
    acct_pay: int
    acct_mulaid_pay: int
    psn_cash_pay: int
    setl_time: str       # Asia/Shanghai, yyyy-MM-dd HH:mm:ss (the reversal's time on a reversal row)
    refd_setl_flag: str  # '0' settlement, '1' reversal
    state: str           # the settlement's state now: settled | reversed
    reversed_at: str     # Asia/Shanghai, '' while standing

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.__dict__)
        for k in ("medfee_sumamt", "fund_pay_sumamt", "acct_pay", "acct_mulaid_pay", "psn_cash_pay"):
            out[k] = fen_to_yuan(out[k])
        return out


def _local(ts: str) -> datetime:
    dt = datetime.fromisoformat(ts)
    if dt.tzinfo is None:  # never written so; read as UTC rather than guess the host's zone
        from datetime import timezone

        dt = dt.replace(tzinfo=timezone.utc)
    return dt.astimezone(SHANGHAI)


def _fmt(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%d %H:%M:%S")


def own_institution(ctx: Ctx, tx: Transaction, asked: str) -> str | None:
    """The institution whose books the caller may read: its own; None (audited) for any other named."""
    mine = ctx.terminal.fixmedins_code
    if asked and asked != mine:
        tx.execute("INSERT INTO centre_audit (at, event, app_id, fixmedins_code, infno, msgid, object_id) "
                   "VALUES (?, 'foreign_object', ?, ?, ?, ?, ?)",
                   (ctx.now.isoformat(), ctx.terminal.app_id, mine, ctx.request.infno, ctx.request.msgid, asked))
        return None
    return mine


# an institution's settlements made or reversed in [lo, hi): indexes centre_settlements_inst_made and
# centre_settlements_inst_reversed (centre.006), one per side of the OR
DAY_ROWS_SQL = (
    "SELECT s.setl_id, s.msgid, s.infno, s.psn_no, s.mdtrt_id, s.state, s.medfee_sumamt, s.fund_pay_sumamt, "
    "s.acct_pay, s.acct_mulaid_pay, s.psn_cash_pay, s.created_at, s.reversed_at, p.insutype "
    "FROM centre_settlements s LEFT JOIN centre_persons p ON p.psn_no = s.psn_no "
    "WHERE (s.fixmedins_code = ? AND s.created_at >= ? AND s.created_at < ?) "
    "OR (s.fixmedins_code = ? AND s.reversed_at >= ? AND s.reversed_at < ?) ORDER BY s.created_at, s.setl_id")


def day_rows(tx: Transaction, institution: str | None, begin: date, end: date, *, reversals: bool = True) -> list[Row]:
    """The institution's settlement and reversal rows dated begin..end (inclusive, Asia/Shanghai)."""
    if institution is None:
        return []
    # timestamps are ISO text in whatever offset the writer had: a string window one day wider on each
    # side finds every candidate through the index-friendly prefix, the exact local day is decided here
    lo, hi = (begin - timedelta(days=1)).isoformat(), (end + timedelta(days=2)).isoformat()
    rows = tx.fetch_all(DAY_ROWS_SQL, (institution, lo, hi, institution, lo, hi))
    out: list[Row] = []
    for r in rows:
        setl_id, qmsg, infno, psn, mdtrt, state, med, fund, acct, mul, cash, created, rev, insutype = r
        app_id, _, msgid = str(qmsg).partition("/")
        made = _local(created)
        undone = _local(rev) if rev else None
        amounts = [int(med), int(fund), int(acct), int(mul), int(cash)]
        common = dict(setl_id=setl_id, app_id=app_id, msgid=msgid, infno=infno, clr_type=CLR_TYPE.get(infno, "99"),
                      insutype=str(insutype or ""), psn_no=psn, mdtrt_id=mdtrt or "", state=state,
                      reversed_at=_fmt(undone) if undone else "")
        if begin <= made.date() <= end:
            out.append(Row(**common, medfee_sumamt=amounts[0], fund_pay_sumamt=amounts[1], acct_pay=amounts[2],
                           acct_mulaid_pay=amounts[3], psn_cash_pay=amounts[4], setl_time=_fmt(made),
                           refd_setl_flag="0"))
        if reversals and undone is not None and begin <= undone.date() <= end:
            out.append(Row(**common, medfee_sumamt=-amounts[0], fund_pay_sumamt=-amounts[1], acct_pay=-amounts[2],
                           acct_mulaid_pay=-amounts[3], psn_cash_pay=-amounts[4], setl_time=_fmt(undone),
                           refd_setl_flag="1"))
    out.sort(key=lambda x: (x.setl_time, x.setl_id, x.refd_setl_flag))
    return out


def totals(rows: Iterable[Row]) -> dict[tuple[str, str], list[int]]:
    """(insutype, clr_type) -> [medfee_sumamt, fund_pay_sumamt, acct_pay, count]."""
    out: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for r in rows:
        t = out[(r.insutype, r.clr_type)]
        t[0] += r.medfee_sumamt
        t[1] += r.fund_pay_sumamt
        t[2] += r.acct_pay
        t[3] += 1
    return dict(out)


def _period(d: m._StmtPeriod) -> tuple[date, date]:
    return date.fromisoformat(d.stmt_begndate), date.fromisoformat(d.stmt_enddate)


def _optins(tx: Transaction, institution: str) -> str:
    return str(tx.scalar("SELECT admdvs FROM centre_institutions WHERE fixmedins_code = ?", (institution,)) or "")


def reconcile_totals(ctx: Ctx, tx: Transaction, data: m.Totals3201) -> dict[str, Any]:
    """3201: per (insutype, clr_type), the centre's totals against the institution's; every group either
    side has is answered (a group the institution left out is compared with zero)."""
    d = data.data
    inst = own_institution(ctx, tx, d.fixmedins_code)
    begin, end = _period(d)
    centre = totals(day_rows(tx, inst, begin, end, reversals=d.refd_setl_flag == "1"))
    theirs: dict[tuple[str, str], list[int]] = {}
    for g in d.stmtinfo:
        key = (g.insutype, g.clr_type)
        if key in theirs:
            from kiosk.errors import InputError

            raise InputError(f"group insutype {key[0]} clr_type {key[1]} is given twice", field="input.data.stmtinfo")
        theirs[key] = [yuan_to_fen(g.medfee_sumamt, "medfee_sumamt", allow_negative=True),
                       yuan_to_fen(g.fund_pay_sumamt, "fund_pay_sumamt", allow_negative=True),
                       yuan_to_fen(g.acct_pay, "acct_pay", allow_negative=True), g.fixmedins_setl_cnt]
    optins = _optins(tx, ctx.terminal.fixmedins_code)
    names = ("medfee_sumamt", "fund_pay_sumamt", "acct_pay", "fixmedins_setl_cnt")
    out = []
    for key in sorted(set(centre) | set(theirs)):
        c, t = centre.get(key, [0, 0, 0, 0]), theirs.get(key, [0, 0, 0, 0])
        diffs = [f"{n}: centre {_show(n, a)}, institution {_show(n, b)}" for n, a, b in zip(names, c, t) if a != b]
        out.append({"insutype": key[0], "clr_type": key[1], "setl_optins": optins,
                    "stmt_rslt": INCONSISTENT if diffs else CONSISTENT,
                    "stmt_rslt_dscr": "; ".join(diffs) if diffs else "consistent",
                    "medfee_sumamt": fen_to_yuan(c[0]), "fund_pay_sumamt": fen_to_yuan(c[1]),
                    "acct_pay": fen_to_yuan(c[2]), "fixmedins_setl_cnt": c[3]})
    consistent = all(g["stmt_rslt"] == CONSISTENT for g in out)
    return {"stmt_begndate": d.stmt_begndate, "stmt_enddate": d.stmt_enddate, "refd_setl_flag": d.refd_setl_flag,
            "stmt_rslt": CONSISTENT if consistent else INCONSISTENT, "stmtinfo": out}


def _show(name: str, v: int) -> str:
    return str(v) if name == "fixmedins_setl_cnt" else fen_to_yuan(v)


def settlement_list(ctx: Ctx, tx: Transaction, data: m.Detail3202) -> dict[str, Any]:
    """3202: the period's settlement and reversal rows of the caller's institution, paged (the platform
    exchanges them as files through 9101/9102; here the rows travel inline, one per line of that file)."""
    d = data.data
    inst = own_institution(ctx, tx, d.fixmedins_code)
    begin, end = _period(d)
    rows = [r for r in day_rows(tx, inst, begin, end, reversals=d.refd_setl_flag == "1")
            if not d.clr_type or r.clr_type == d.clr_type]
    page = rows[(d.page_num - 1) * d.page_size: d.page_num * d.page_size]
    sums = totals(rows)
    return {"stmt_begndate": d.stmt_begndate, "stmt_enddate": d.stmt_enddate, "refd_setl_flag": d.refd_setl_flag,
            "setl_optins": _optins(tx, ctx.terminal.fixmedins_code),
            "medfee_sumamt": fen_to_yuan(sum(t[0] for t in sums.values())),
            "fund_pay_sumamt": fen_to_yuan(sum(t[1] for t in sums.values())),
            "cash_payamt": fen_to_yuan(sum(r.psn_cash_pay for r in rows)),
            "fixmedins_setl_cnt": len(rows), "pageNum": d.page_num, "pageSize": d.page_size,
            "recordCounts": len(rows), "pages": -(-len(rows) // d.page_size),
            "data": [r.to_json() for r in page]}


__all__ = ["Row", "day_rows", "reconcile_totals", "settlement_list", "totals"]
