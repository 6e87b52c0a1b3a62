"""`kiosk reconcile DAY`: the terminal's journal against the centre (3201, then 3202) and the bank's
clearing statement, over the real services (tests/services/test_dayend.py's world: the centre and the
bank apps on a real database, reached over HTTP as this terminal). The kiosk's orders are written
through its store exactly as the counter flow journals them (start, settle, settled, draw, drawn,
refund, refund_reversed, refund_credited, ...); each discrepancy is planted at one party and must be
found, named, and given its resolution. A matching day exits 0, a discrepancy 1."""
from __future__ import annotations

import json
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any, Iterator

import pytest

from kiosk.app import stack as stack_mod
from kiosk.app.reconcile import reconcile
from kiosk.app.store import Store
from kiosk.cli import main
from kiosk.clock import SHANGHAI
from kiosk.credit import CreditService, Owner
from kiosk.money import fen_to_yuan
from kiosk.storage import Database, open_database

from tests.services.conftest import INSTITUTION, fresh_pg, pg_url
from tests.services.test_dayend import DayWorld, close_world, open_world


class Kiosk:
    """This terminal's store, written as the counter flow and the refund path write it."""

    def __init__(self, w: DayWorld, db: Database) -> None:
        self.w = w
        self.db = db
        self.store = Store(db, w.c.clock)

    def pay(self, oid: str, p: Any, yuan: str, *, credit: bool = True, pharmacy: bool = False,
            split_override: dict[str, int] | None = None, journal_at: datetime | None = None) -> str:
        """`journal_at`: the moment the kiosk journals the centre's answer (and draws), if not the same."""
        s, w = self.store, self.w
        bill = {"items": [{"code": "XC02", "price": yuan, "qty": "1"}], **({"med_type": "41"} if pharmacy else {})}
        s.create_order("pos", oid, {"bill": bill}, "pharmacy" if pharmacy else "outpatient")
        s.record("pos", oid, "start", {"mode": "outpatient", "institution": INSTITUTION})
        msgid = w.c.client.new_msgid()
        s.record("pos", oid, "settle", {"msgid": msgid, "psn_no": p.psn_no})
        out = w.settle(p, yuan, pharmacy=pharmacy, msgid=msgid)
        if journal_at is not None:
            w.at(journal_at)
        info = out["setlinfo"]
        setl = info["setl_id"]
        fen = int(round(float(yuan) * 100))
        split = {"medfee_sumamt": fen, "fund_pay_sumamt": 0, "psn_part_amt": fen, "acct_pay": 0, "acct_mulaid_pay": 0,
                 "psn_cash_pay": fen, **(split_override or {})}
        s.record("pos", oid, "settled", {"msgid": msgid, "setl_id": setl, "mdtrt_id": "", "split": split,
                                         "insutype": info["insutype"]})
        drawn = 0
        if credit:
            key = f"pos:{oid}:draw"
            s.record("pos", oid, "draw", {"key": key, "amount": fen, "payer": p.psn_no, "ref": setl})
            w.draw(p, out, key)
            s.record("pos", oid, "drawn", {"key": key, "draw_id": setl, "amount": fen})
            drawn = fen
        result = {"status": "paid", "setl_id": setl, "medfee_sumamt": yuan, "fund_pay_sumamt": "0.00",
                  "acct_pay": "0.00", "acct_mulaid_pay": "0.00", "credit_draw": fen_to_yuan(drawn),
                  "cash_pay": fen_to_yuan(fen - drawn), "draw_id": setl if credit else None, "psn_no": p.psn_no}
        s.record("pos", oid, "paid", {"outcome": result})
        s.set_status("pos", oid, "paid", result=result)
        return setl

    def refund_whole(self, oid: str, p: Any, rid: str, *, at_centre: bool = True, at_bank: bool = True,
                     finish: bool = True) -> None:
        """A whole refund: 2208 at the centre, credit.refund at the bank, each step journaled."""
        s, w = self.store, self.w
        row = s.get("pos", oid)
        setl, fen = row.result["setl_id"], int(round(float(row.result["medfee_sumamt"]) * 100))
        credit = int(round(float(row.result["credit_draw"]) * 100))
        s.begin_refund("pos", oid, rid, fen, {"amount": None}, fen)
        plan = {"refund_id": rid, "amount": fen, "whole": True, "credit_back": credit, "setl_id": setl,
                "draw_id": row.result["draw_id"], "psn_no": p.psn_no, "total": fen, "key": f"pos:{rid}"}
        s.record("pos", oid, "refund", plan)
        if at_centre:
            w.reverse(setl, p)
        s.record("pos", oid, "refund_reversed", {"refund_id": rid})
        if not finish:
            s.finish_refund("pos", oid, rid, "pending", {"status": "refund_pending", "waiting_for": "bank"})
            s.set_status("pos", oid, "refund_pending", reason="bank_unavailable", result=row.result)
            return
        if credit:
            if at_bank:
                assert w.bank.refund(setl, fen_to_yuan(credit), f"pos:{rid}").ok
            s.record("pos", oid, "refund_credited", {"refund_id": rid})
        res = {"refund_id": rid, "order_id": oid, "status": "refunded", "amount": fen_to_yuan(fen), "whole": True}
        s.finish_refund("pos", oid, rid, "refunded", res)
        s.set_status("pos", oid, "refunded", result=row.result)
        s.record("pos", oid, "refunded", {"refund_id": rid})

    def failed_after_settlement(self, oid: str, p: Any, yuan: str) -> None:
        """The bank refused the draw: the settlement is reversed by msgid (2601) and the order fails."""
        s, w = self.store, self.w
        s.create_order("pos", oid, {"bill": {"items": []}}, "outpatient")
        msgid = w.c.client.new_msgid()
        s.record("pos", oid, "settle", {"msgid": msgid, "psn_no": p.psn_no})
        out = w.settle(p, yuan, msgid=msgid)
        fen = int(round(float(yuan) * 100))
        s.record("pos", oid, "settled", {"msgid": msgid, "setl_id": out["setlinfo"]["setl_id"], "split": {
            "medfee_sumamt": fen, "fund_pay_sumamt": 0, "acct_pay": 0}, "insutype": p.insutype})
        s.record("pos", oid, "reverse", {"msgid": msgid, "setl_id": out["setlinfo"]["setl_id"]})
        a = w.c.client.reverse_message(p.psn_no, msgid, "2207")
        assert a.ok and a.output["result"] == "reversed", a
        s.record("pos", oid, "reversed", {"msgid": msgid})
        s.set_status("pos", oid, "failed", reason="insufficient_credit", result={"status": "failed"})


    def lost_answer_then_reversed(self, oid: str, p: Any, yuan: str) -> None:
        """The 2207 applied but its answer never came back: reversed by its msgid (2601), the order failed."""
        s, w = self.store, self.w
        s.create_order("pos", oid, {"bill": {"items": []}}, "outpatient")
        msgid = w.c.client.new_msgid()
        s.record("pos", oid, "settle", {"msgid": msgid, "psn_no": p.psn_no})
        w.settle(p, yuan, msgid=msgid)  # applied; the kiosk never learns the setl_id
        s.record("pos", oid, "reverse", {"msgid": msgid, "setl_id": None})
        assert w.c.client.reverse_message(p.psn_no, msgid, "2207").output["result"] == "reversed"
        s.record("pos", oid, "reversed", {"msgid": msgid})
        s.set_status("pos", oid, "failed", reason="centre_unavailable", result={"status": "failed"})


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def world(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DayWorld]:
    w = open_world(request.param, tmp_path_factory.mktemp("reconcile"))
    w.kiosk_kind = request.param  # type: ignore[attr-defined]
    yield w
    close_world(w)


@pytest.fixture
def kiosk(world: DayWorld, tmp_path: Path) -> Iterator[Kiosk]:
    if world.kiosk_kind == "sqlite":  # type: ignore[attr-defined]
        url = f"sqlite:///{tmp_path / 'kiosk.db'}"
    else:
        url = fresh_pg(pg_url() or "")
    db = open_database(url)
    k = Kiosk(world, db)
    k.url = url  # type: ignore[attr-defined]
    yield k
    db.close()


def at(w: DayWorld, day: date, hh: int, mm: int = 0, ss: int = 0) -> None:
    w.at(datetime(day.year, day.month, day.day, hh, mm, ss, tzinfo=SHANGHAI))


def found(rep: Any) -> set[tuple[str, str, str]]:
    return {(d.kind, d.order, d.ref) for d in rep.discrepancies}


def test_a_matching_day_with_payments_a_refund_and_a_failed_payment(world, kiosk):
    w, day = world, date(2026, 5, 1)
    p, q, r = w.c.people[0], w.c.people[1], w.c.people[2]
    at(w, day, 9)
    kiosk.pay("M-1", p, "34.00")
    at(w, day, 10)
    kiosk.pay("M-2", q, "12.50", credit=False)
    kiosk.pay("M-3", r, "100.00", pharmacy=True)
    at(w, day, 11)
    kiosk.pay("M-4", p, "20.00")
    at(w, day, 16)
    kiosk.refund_whole("M-4", p, "RF-1")
    kiosk.failed_after_settlement("M-5", q, "8.00")
    rep = reconcile(kiosk.db, w.c.client, w.bank, day)
    assert rep.matched, rep.table()
    assert all(g["consistent"] for g in rep.groups)
    by = {g["clr_type"]: g for g in rep.groups}
    # by hand: outpatient +34.00 +12.50 +20.00 -20.00 +8.00 -8.00 = 46.50 in 6 rows; pharmacy 100.00 in 1
    assert (by["11"]["kiosk"]["medfee_sumamt"], by["11"]["kiosk"]["fixmedins_setl_cnt"]) == ("46.50", 6)
    assert by["11"]["centre"] == by["11"]["kiosk"] and by["41"]["centre"]["medfee_sumamt"] == "100.00"
    # bank: draws 34.00 + 100.00 + 20.00, refund 20.00: 134.00 due
    assert rep.bank["bank"] == rep.bank["kiosk"] == {"draws": "154.00", "captures": "0.00", "refunds": "20.00",
                                                     "net_due": "134.00"}
    assert "day matches" in rep.table()


def test_each_kind_of_discrepancy_is_found_named_and_given_its_resolution(world, kiosk):
    w, day = world, date(2026, 5, 3)
    ppl = w.c.people
    at(w, day, 9)
    good = kiosk.pay("D-OK", ppl[0], "10.00")
    # 1. missing at the centre: the kiosk journaled a settlement the centre never made
    s1 = kiosk.pay("D-MISS", ppl[1], "15.00", credit=False)
    w.c.db.run(lambda tx: tx.execute("DELETE FROM centre_settlements WHERE setl_id = ?", (s1,)))
    # 2. reversed at the centre, paid locally (the kiosk was never told)
    s2 = kiosk.pay("D-REV", ppl[2], "22.00", credit=False)
    w.reverse(s2, ppl[2])
    # 3. a draw without a settlement (this terminal's key, a ref no settlement has)
    CreditService(w.bank_db, w.c.clock).draw(f"{INSTITUTION}/{w.c.app_id}/ghost", ppl[0].psn_no, 777, "S-GHOST",
                                             owner=Owner(INSTITUTION, w.c.app_id))
    # 4. refund not applied: the kiosk says refunded, neither the centre nor the bank applied it
    s4 = kiosk.pay("D-NOREF", ppl[3], "30.00")
    at(w, day, 12)
    kiosk.refund_whole("D-NOREF", ppl[3], "RF-X", at_centre=False, at_bank=False)
    # 5. amount differs: the kiosk's receipt says 41.00, the centre settled 40.00
    s5 = kiosk.pay("D-AMT", ppl[4], "40.00", credit=False, split_override={"medfee_sumamt": 4100})
    # 6. a refund still pending (the bank has not answered)
    s6 = kiosk.pay("D-PEND", ppl[5], "18.00")
    kiosk.refund_whole("D-PEND", ppl[5], "RF-P", finish=False)

    rep = reconcile(kiosk.db, w.c.client, w.bank, day)
    assert not rep.matched
    got = found(rep)
    assert ("missing_at_centre", "pos/D-MISS", s1) in got
    assert ("reversed_at_centre_paid_locally", "pos/D-REV", s2) in got
    assert ("draw_without_settlement", "", "S-GHOST") in got
    assert ("refund_not_applied", "pos/D-NOREF", s4) in got  # at the centre
    assert sum(1 for d in rep.discrepancies if (d.kind, d.ref) == ("refund_not_applied", s4)) == 2  # both parties
    assert any(d.kind == "refund_not_applied" and d.ref == s4 and "bank's clearing" in d.detail
               for d in rep.discrepancies)
    assert ("amount_differs", "pos/D-AMT", s5) in got
    assert ("pending_refund", "pos/D-PEND", s6) in got
    assert not any(d.ref == good for d in rep.discrepancies)  # the good payment is not named
    assert len(rep.discrepancies) == 7, rep.table()  # nothing else (the pending refund's reversal matches)
    res = {d.kind: d.resolve for d in rep.discrepancies}
    assert res["pending_refund"].startswith("restart the kiosk app")
    for kind in ("missing_at_centre", "reversed_at_centre_paid_locally", "draw_without_settlement", "amount_differs"):
        assert res[kind].startswith("report to the operator"), (kind, res[kind])
    table = rep.table()
    for kind in ("missing_at_centre", "reversed_at_centre_paid_locally", "draw_without_settlement",
                 "refund_not_applied", "amount_differs", "pending_refund"):
        assert kind in table
    assert "INCONSISTENT" in table


def test_a_reversal_on_a_later_day_is_found_on_that_day(world, kiosk):
    """Paid on day 1 (matching); the centre reverses it on day 2 while the kiosk says paid: day 2 names it."""
    w, d1 = world, date(2026, 5, 5)
    d2 = date(2026, 5, 6)
    p = w.c.people[6]
    at(w, d1, 10)
    s = kiosk.pay("L-1", p, "25.00", credit=False)
    at(w, d2, 9)
    w.reverse(s, p)
    assert reconcile(kiosk.db, w.c.client, w.bank, d1).matched
    rep = reconcile(kiosk.db, w.c.client, w.bank, d2)
    assert found(rep) == {("reversed_at_centre_paid_locally", "pos/L-1", s)}


def test_day_boundary_in_asia_shanghai(world, kiosk):
    """A payment at 23:59:59 belongs to its day, one at 00:00:00 to the next, at every party."""
    w = world
    d1, d2 = date(2026, 5, 8), date(2026, 5, 9)
    p = w.c.people[7]
    at(w, d1, 23, 59, 59)
    kiosk.pay("B-1", p, "11.00")
    at(w, d2, 0, 0, 0)
    kiosk.pay("B-2", p, "12.00")
    r1 = reconcile(kiosk.db, w.c.client, w.bank, d1)
    r2 = reconcile(kiosk.db, w.c.client, w.bank, d2)
    assert r1.matched and r2.matched, (r1.table(), r2.table())
    assert [g["kiosk"]["medfee_sumamt"] for g in r1.groups] == ["11.00"]
    assert [g["kiosk"]["medfee_sumamt"] for g in r2.groups] == ["12.00"]
    assert r1.bank["bank"]["net_due"] == "11.00" and r2.bank["bank"]["net_due"] == "12.00"


def test_a_settlement_booked_across_midnight_is_a_note_not_a_discrepancy(world, kiosk):
    """The centre booked it at 23:59:59, the kiosk journaled its answer (and drew) at 00:00:01: each day is
    inconsistent in total, and 3202 over the neighbouring days shows why - nothing is missing."""
    w = world
    d1, d2 = date(2026, 5, 14), date(2026, 5, 15)
    p = w.c.people[9]
    at(w, d1, 23, 59, 59)
    s = kiosk.pay("X-1", p, "16.00", journal_at=datetime(2026, 5, 15, 0, 0, 1, tzinfo=SHANGHAI))
    for d in (d1, d2):
        rep = reconcile(kiosk.db, w.c.client, w.bank, d)
        assert rep.matched, rep.table()
        assert any(s in n and "across midnight" in n for n in rep.notes), rep.notes
    assert not reconcile(kiosk.db, w.c.client, w.bank, d1).groups[0]["consistent"]


def test_a_settlement_whose_answer_was_lost_and_reversed_by_msgid_matches(world, kiosk):
    w, day = world, date(2026, 5, 17)
    at(w, day, 10)
    kiosk.lost_answer_then_reversed("LOST-1", w.c.people[10], "19.00")
    rep = reconcile(kiosk.db, w.c.client, w.bank, day)
    assert rep.matched, rep.table()
    assert sum("2601" in n and "pos/LOST-1" in n for n in rep.notes) == 2  # the settlement and its reversal


def test_the_cli_prints_json_and_exits_1_on_a_discrepancy_0_when_matching(world, kiosk, tmp_path, monkeypatch,
                                                                         capsys):
    w, day = world, date(2026, 5, 11)
    p = w.c.people[8]
    at(w, day, 10)
    s = kiosk.pay("C-1", p, "9.00")
    monkeypatch.setenv("KIOSK_DATABASE_URL", kiosk.url)
    monkeypatch.setattr(stack_mod.Stack, "load_identity", lambda self: {})
    monkeypatch.setattr(stack_mod.Stack, "clients", lambda self: (w.c.client, w.bank))
    monkeypatch.setattr(w.c.client, "close", lambda: None)
    monkeypatch.setattr(w.bank, "close", lambda: None)
    args = ["reconcile", day.isoformat(), "--data-dir", str(tmp_path)]
    assert main(args + ["--json", "--save", str(tmp_path / "reports")]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["matched"] and rep["institution"] == INSTITUTION and rep["day"] == "2026-05-11"
    saved = tmp_path / "reports" / "reconcile-2026-05-11.json"
    assert json.loads(saved.read_text()) == rep and saved.stat().st_mode & 0o077 == 0
    w.reverse(s, p)  # the centre reverses it; the kiosk still says paid
    assert main(args) == 1
    out = capsys.readouterr().out
    assert "reversed_at_centre_paid_locally" in out and "pos/C-1" in out
    assert main(["reconcile", "2026-02-30", "--data-dir", str(tmp_path)]) == 2
    assert "DAY" in capsys.readouterr().err


def test_the_demo_runs_the_day_end_after_its_payment(world, kiosk, capsys):
    """`kiosk demo` closes its day with the same reconcile (its payment is today's, an empty day here)."""
    from types import SimpleNamespace

    from kiosk.app.demo import day_end

    term = SimpleNamespace(wait_idle=lambda timeout: True, store=SimpleNamespace(db=kiosk.db))
    st = SimpleNamespace(runtime=SimpleNamespace(terminal=term), centre_client=world.c.client,
                         bank_client=world.bank)
    assert day_end(st) is True
    assert "day matches" in capsys.readouterr().err


def test_a_fresh_terminal_signs_in_and_an_unreachable_party_is_exit_2_not_a_verdict(world, kiosk, tmp_path,
                                                                                     monkeypatch, capsys):
    from kiosk.services.client import BankClient, CentreClient, ServiceIdentity

    w, day = world, date(2026, 5, 20)
    c = w.c
    fresh = CentreClient("http://testserver", ServiceIdentity(c.app_id, c.app_secret, c.key, INSTITUTION), http=c.http,
                         clock=c.clock)
    assert not fresh.sign_no
    assert reconcile(kiosk.db, fresh, w.bank, day).matched and fresh.sign_no
    gone = BankClient("http://127.0.0.1:9", ServiceIdentity(c.app_id, c.app_secret, c.key, INSTITUTION),
                      clock=c.clock, timeout=2.0)
    monkeypatch.setenv("KIOSK_DATABASE_URL", kiosk.url)
    monkeypatch.setattr(stack_mod.Stack, "load_identity", lambda self: {})
    monkeypatch.setattr(stack_mod.Stack, "clients", lambda self: (fresh, gone))
    monkeypatch.setattr(fresh, "close", lambda: None)
    assert main(["reconcile", day.isoformat(), "--data-dir", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "bank" in captured.err


def test_an_order_recovered_days_after_it_was_made_is_in_the_day_its_money_moved(world, kiosk):
    """Settled on day 1, the answer lost and the terminal off for three days: recovery reverses it by its
    msgid on day 4. Day 4's day-end finds the order by its journal (step and time), not by its day, and
    matches the centre's reversal on that day."""
    w, d1 = world, date(2026, 5, 20)
    d4 = d1 + timedelta(days=3)
    p = w.c.people[9]
    s = kiosk.store
    at(w, d1, 10)
    s.create_order("pos", "R-LATE", {"bill": {"items": []}}, "outpatient")
    msgid = w.c.client.new_msgid()
    s.record("pos", "R-LATE", "settle", {"msgid": msgid, "psn_no": p.psn_no})
    out = w.settle(p, "16.00", msgid=msgid)
    s.record("pos", "R-LATE", "settled", {"msgid": msgid, "setl_id": out["setlinfo"]["setl_id"], "split": {
        "medfee_sumamt": 1600, "fund_pay_sumamt": 0, "acct_pay": 0}, "insutype": p.insutype})
    s.set_status("pos", "R-LATE", "reversing", reason="interrupted")
    at(w, d4, 9)
    s.record("pos", "R-LATE", "reverse", {"msgid": msgid, "setl_id": out["setlinfo"]["setl_id"]})
    assert w.c.client.reverse_message(p.psn_no, msgid, "2207").output["result"] == "reversed"
    s.record("pos", "R-LATE", "reversed", {"msgid": msgid})
    s.set_status("pos", "R-LATE", "failed", reason="interrupted", result={"status": "failed"})
    rep = reconcile(kiosk.db, w.c.client, w.bank, d4)
    assert rep.matched, rep.table()


def test_the_day_end_queries_use_their_indexes(world, kiosk, tmp_path):
    """EXPLAIN QUERY PLAN on SQLite: each day-end query finds the day's rows by an index (app.004,
    centre.006, credit.004), never by scanning every order, settlement or ledger entry ever made."""
    from kiosk.app.reconcile import MONEY_STEPS, journal_moves_sql
    from kiosk.credit.schema import MIGRATIONS as CREDIT
    from kiosk.services.bank.clearing import CLEARING_SQL
    from kiosk.services.centre.dayend import DAY_ROWS_SQL
    from kiosk.services.centre.schema import MIGRATIONS as CENTRE

    def plan(db: Database, sql: str, params: tuple) -> str:
        return " | ".join(r[3] for r in db.read(lambda tx: tx.fetch_all("EXPLAIN QUERY PLAN " + sql, params)))

    with open_database(f"sqlite:///{tmp_path / 'k.db'}") as k:
        Store(k, world.c.clock)
        moved = plan(k, journal_moves_sql(), (*MONEY_STEPS, "2026-05-01", "2026-05-03"))
        assert "USING INDEX app_journal_step_at (step=? AND at>? AND at<?)" in moved, moved
        refunds = plan(k, "SELECT DISTINCT system, order_id FROM app_refunds WHERE day IN (?, ?, ?)", ("a", "b", "c"))
        assert "USING INDEX app_refunds_day" in refunds or "USING COVERING INDEX app_refunds_day" in refunds, refunds
    with open_database(f"sqlite:///{tmp_path / 'c.db'}") as c:
        c.migrate(CENTRE)
        rows = plan(c, DAY_ROWS_SQL, ("H1", "2026-05-01", "2026-05-03", "H1", "2026-05-01", "2026-05-03"))
        assert "MULTI-INDEX OR" in rows and "SCAN s" not in rows, rows
        assert "centre_settlements_inst_made (fixmedins_code=? AND created_at>? AND created_at<?)" in rows, rows
        assert "centre_settlements_inst_reversed (fixmedins_code=? AND reversed_at>? AND reversed_at<?)" in rows, rows
    with open_database(f"sqlite:///{tmp_path / 'b.db'}") as b:
        b.migrate(CREDIT)
        clearing = plan(b, CLEARING_SQL, ("2026-05-01", "merchant", "H1"))
        assert "SEARCH e USING INDEX credit_entries_day (day=?)" in clearing and "SCAN" not in clearing, clearing
