"""`kiosk check parties`: the centre, the bank and the kiosk's orders must tell one story.

Each scenario of issue 13 is planted as the books looked on the main branch before the fixes:
the centre's settlements are made (and reversed) through the real centre over its platform API,
the bank's rows through kiosk.credit plus the bank's own key table exactly as the bank service
wrote them, and the kiosk's orders through the terminal's store - so the data is what the old code
produced, whatever the services refuse today. Each alone balances (`kiosk services check`); the
cross-party check must exit 1 naming the mismatch (kind, order, setl_id).
"""
from __future__ import annotations

import json
import secrets
from datetime import date
from pathlib import Path
from typing import Any, Iterator

import pytest

from kiosk.app.store import Store
from kiosk.cli import main
from kiosk.money import fen_to_yuan
from kiosk.security.sm import Sm2PrivateKey
from kiosk.services.bank.app import build_bank, check_bank
from kiosk.services.centre.check import check_centre
from kiosk.services.protocol import ok
from kiosk.storage import open_database, request_hash

from tests.services.conftest import INSTITUTION, fresh_pg, head, lines, make_centre, pg_url

OTHER = "H37020200001"  # another institution of the region (the demo clinic)
PEM = Sm2PrivateKey.generate().public_key().to_bytes().hex()


class Books:
    """The three books of one region as the old code left them."""

    def __init__(self, tmp: Path, urls: tuple[str, str, str]) -> None:
        self.urls = urls
        self.centre = make_centre(urls[0], tmp)
        self.clock = self.centre.clock
        self.bank_db = open_database(urls[1])
        self.bank, gw = build_bank(self.bank_db, tmp, self.clock)
        self.app = self.centre.app_id  # the clinic's... here: the hospital's own terminal
        gw.register_terminal(self.app, self.centre.app_secret, PEM, INSTITUTION)
        self.rogue = "ROGUE" + secrets.token_hex(6).upper()  # a terminal registered for another institution
        gw.register_terminal(self.rogue, "s" * 32, PEM, OTHER)
        self.centre.gateway.register_terminal(self.rogue, "s" * 32, PEM, OTHER)
        self.kiosk_db = open_database(urls[2])
        self.store = Store(self.kiosk_db, self.clock)
        born = [p for p in self.centre.people if p.brdy >= "1968-01-01"]
        self.people = born
        self.tokens: dict[str, str] = {}
        for p in born[:4]:
            assert self.bank.credit.open(f"seed/{p.psn_no}", p.psn_no, date.fromisoformat(p.brdy), 6).ok

    def close(self) -> None:
        self.centre.http.close()
        for db in (self.centre.db, self.bank_db, self.kiosk_db):
            db.close()

    # -- centre (the real service) ---------------------------------------------------------------------------
    def settle(self, p: Any, yuan: str = "34.00") -> tuple[str, str]:
        """A class C bill all paid by the patient (psn_cash_pay = the bill): (setl_id, msgid)."""
        if p.psn_no not in self.tokens:
            self.tokens[p.psn_no] = self.centre.activate(p)  # first visit: face + ID number (the clock stands still)
        token = self.tokens[p.psn_no]
        medfee, feedetail = lines(("XC02", yuan, "1"))
        msgid = self.centre.client.new_msgid()
        a = self.centre.client.settle(head(p, token, medfee, acct_used_flag="0"), feedetail, msgid=msgid)
        assert a.ok and a.output["setlinfo"]["psn_cash_pay"] == yuan, a
        return a.output["setlinfo"]["setl_id"], msgid

    def reverse(self, setl_id: str, p: Any, by: str | None = None) -> None:
        """2208 through the centre; `by` = the terminal whose message reversed it (as the old centre let any)."""
        a = self.centre.client.reverse(setl_id, p.psn_no)
        assert a.ok, a
        if by:
            self.centre.db.run(lambda tx: tx.execute(
                "UPDATE centre_settlements SET rev_msgid = ? WHERE setl_id = ?", (f"{by}/{a.msgid}", setl_id)))

    # -- bank (as the bank service wrote it) ------------------------------------------------------------------
    def draw(self, app: str, key: str, payer: str, fen: int, ref: str) -> None:
        k = f"{app}/{key}"
        assert self.bank.credit.draw(k, payer, fen, ref).ok
        self.bank_db.run(lambda tx: tx.execute(
            "INSERT INTO bank_draw_keys (key, payer, ref, amount, state, created_at) VALUES (?, ?, ?, ?, 'drawn', ?)",
            (k, payer, ref, fen, self.clock.now().isoformat())))

    def draw_reverse(self, app: str, key: str) -> None:
        k = f"{app}/{key}"
        ref, amount = self.bank_db.read(lambda tx: tx.fetch_one(
            "SELECT ref, amount FROM bank_draw_keys WHERE key = ?", (k,)))
        assert self.bank.credit.refund(f"{k}/reverse", ref, int(amount)).ok
        self.bank_db.run(lambda tx: tx.execute("UPDATE bank_draw_keys SET state = 'reversed' WHERE key = ?", (k,)))

    def refund(self, app: str, key: str, ref: str, fen: int) -> bool:
        """credit.refund as the bank served it: the credit refund and the stored answer under the msgid."""
        r = self.bank.credit.refund(f"{app}/{key}", ref, fen)
        if r.ok:
            msgid = self.centre.client.new_msgid()
            inp = {"ref": ref, "amount": fen_to_yuan(fen), "key": key}
            answer = ok(msgid, {**r.detail, "ref": ref}, self.clock.now())
            self.bank_db.run(lambda tx: tx.execute(
                "INSERT INTO idempotency_keys (scope, key, request_hash, response, created_at) VALUES (?, ?, ?, ?, ?)",
                ("bank.msgid", f"{app}/{msgid}", request_hash({"infno": "credit.refund", "input": inp}),
                 json.dumps(answer), self.clock.now().isoformat())))
        return r.ok

    # -- the kiosk (its store, as the old terminal wrote it) ------------------------------------------------------
    def order(self, system: str, oid: str, status: str, p: Any, setl_id: str, msgid: str, *, credit: int = 3400,
              reason: str | None = None) -> None:
        self.store.create_order(system, oid, {"bill": {"items": []}}, "outpatient")
        for step, data in (("start", {"mode": "outpatient", "institution": INSTITUTION}),
                           ("settle", {"msgid": msgid, "psn_no": p.psn_no}), ("settled", {"setl_id": setl_id})):
            self.store.record(system, oid, step, data)
        paid = status != "failed"
        result = {"status": status, "reason": reason, "setl_id": setl_id if paid else None, "medfee_sumamt": "34.00",
                  "fund_pay_sumamt": "0.00", "acct_pay": "0.00", "acct_mulaid_pay": "0.00",
                  "credit_draw": fen_to_yuan(credit if paid else 0), "cash_pay": fen_to_yuan(3400 - credit if paid else 0),
                  "draw_id": setl_id if paid and credit else None, "psn_no": p.psn_no, "payer": "self",
                  "hold_id": None, "receipt_printed": True}
        self.store.set_status(system, oid, status, reason=reason, result=result)

    def kiosk_refund(self, system: str, oid: str, rid: str, status: str) -> None:
        """A whole refund as the old terminal recorded it: 'refunded', or 'failed' (reservation given back)."""
        self.store.begin_refund(system, oid, rid, 3400, {"amount": None}, 3400)
        res = {"refund_id": rid, "order_id": oid, "status": "refunded", "amount": "34.00", "credit_refund": "34.00",
               "cash_refund": "0.00", "whole": True} if status == "refunded" else {"status": "failed"}
        self.store.finish_refund(system, oid, rid, status, res, release_fen=3400 if status == "failed" else 0)
        if status == "refunded":
            self.store.set_status(system, oid, "refunded", result=self.store.get(system, oid).result)

    # -- the checks ------------------------------------------------------------------------------------------------
    def each_ledger_balances(self) -> None:
        """What `kiosk services check` proves: each book alone balances (so only the cross check can tell)."""
        assert check_centre(self.centre.db)["balanced"]
        assert check_bank(self.bank_db)["balanced"]

    def check(self, capsys: Any, *extra: str) -> tuple[int, Any]:
        rc = main(["check", "parties", "--centre-db", self.urls[0], "--bank-db", self.urls[1],
                   "--kiosk-db", self.urls[2], *extra])
        out = capsys.readouterr().out
        return rc, (json.loads(out) if "--json" in extra else out)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def books(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Books]:
    if request.param == "sqlite":
        urls = tuple(f"sqlite:///{tmp_path / n}.db" for n in ("centre", "bank", "kiosk"))
    else:
        url = pg_url()
        if url is None:
            pytest.skip("KIOSK_TEST_PG_URL not set")
        urls = (fresh_pg(url), fresh_pg(url), fresh_pg(url))
    b = Books(tmp_path, urls)  # type: ignore[arg-type]
    yield b
    b.close()


def kinds(report: dict[str, Any]) -> set[tuple[str, str, str]]:
    return {(m["kind"], m["order"], m["setl_id"]) for m in report["mismatches"]}


def paid_order(b: Books, system: str, oid: str, p: Any) -> str:
    """A payment as it should be: settled, the cash share drawn by this institution's terminal, paid."""
    setl, msgid = b.settle(p)
    b.draw(b.app, f"{oid}:draw", p.psn_no, 3400, setl)
    b.order(system, oid, "paid", p, setl, msgid)
    return setl


# ------------------------------------------------------------------------------------------ consistent books
def test_consistent_books_balance_across_parties(books, capsys):
    p, q = books.people[0], books.people[1]
    paid_order(books, "pos", "OK-1", p)
    setl = paid_order(books, "pos", "OK-2", q)  # then refunded whole, both parties, as it should be
    books.reverse(setl, q)
    assert books.refund(books.app, "pos:RF-1", setl, 3400)
    books.kiosk_refund("pos", "OK-2", "RF-1", "refunded")
    books.each_ledger_balances()
    rc, rep = books.check(capsys, "--json")
    assert (rc, rep["mismatches"]) == (0, []), rep
    assert rep["counted"] == {"settlements": 2, "draws": 2, "orders": 2}
    rc, table = books.check(capsys)
    assert rc == 0 and "balanced across parties" in table


def test_an_order_still_being_resolved_is_pending_not_a_mismatch(books, capsys):
    p = books.people[0]
    setl = paid_order(books, "pos", "PEND-1", p)
    books.reverse(setl, p)  # the refund reached the centre; the bank has not answered yet
    books.store.set_status("pos", "PEND-1", "refund_pending", reason="bank_unavailable",
                           result=books.store.get("pos", "PEND-1").result)
    rc, rep = books.check(capsys, "--json")
    assert rc == 0, rep
    assert {(f["kind"], f["order"]) for f in rep["pending"]} >= {("order_in_flight", "pos/PEND-1")}
    assert any(f["kind"] == "reversed_settlement_draw_not_refunded" and f["setl_id"] == setl for f in rep["pending"])


# ------------------------------------------------------------------------------------------ issue 13, scenario 1
def test_scenario_1_two_pos_systems_one_order_id(books, capsys):
    """Old terminal: the draw key was the order id alone. The second system's draw with E-1 collided
    (refused), the bank stalled, and its reversal by key undid the FIRST system's draw; the first
    order still reads paid, its settlement standing."""
    p = books.people[0]
    sa = paid_order(books, "pos-a", "E-1", p)
    sb, mb = books.settle(p)  # pos-b's settlement of its own E-1
    books.draw_reverse(books.app, "E-1:draw")  # "its" reversal: the key is pos-a's draw's
    books.reverse(sb, p)
    books.order("pos-b", "E-1", "failed", p, sb, mb, reason="bank_unavailable")
    books.each_ledger_balances()
    rc, rep = books.check(capsys, "--json")
    assert rc == 1
    assert {("draw_reversed_settlement_standing", "", sa), ("order_draw_differs", "pos-a/E-1", sa)} <= kinds(rep)
    assert not any(m["order"] == "pos-b/E-1" for m in rep["mismatches"])  # pos-b's own books agree


# ------------------------------------------------------------------------------------------ scenario 2
def test_scenario_2_another_institutions_terminal_reversed_the_settlement(books, capsys):
    p = books.people[1]
    setl = paid_order(books, "pos", "E-2", p)
    books.reverse(setl, p, by=books.rogue)  # 2208 by a terminal of another institution
    books.each_ledger_balances()
    rc, rep = books.check(capsys, "--json")
    assert rc == 1
    assert {("reversed_by_other_institution", "", setl), ("reversed_settlement_draw_not_refunded", "", setl),
            ("order_settlement_reversed", "pos/E-2", setl)} <= kinds(rep)
    rc, table = books.check(capsys)  # the readable form names it too
    assert rc == 1 and "reversed_by_other_institution" in table and setl in table and "pos/E-2" in table


# ------------------------------------------------------------------------------------------ scenario 3
def test_scenario_3_a_rogue_terminal_draws_and_refunds_at_the_bank(books, capsys):
    holder, member, other = books.people[2], books.people[4], books.people[3]
    assert books.bank.credit.bind("bind/1", holder.psn_no, member.psn_no, "child", True, None).ok
    books.draw(books.rogue, "x1", other.psn_no, 100, "MADE-UP-1")             # 1.00 on a made-up ref
    books.draw(books.rogue, "x2", member.psn_no, 180000, "MADE-UP-2")         # 1,800.00 off a family line
    setl = paid_order(books, "pos", "E-3", other)
    assert books.refund(books.rogue, "x3", setl, 200)                         # 2.00 refunded by the rogue
    # the institution's own whole refund: the centre reverses, the bank refuses (exceeds_original)
    books.reverse(setl, other)
    assert not books.refund(books.app, "pos:RF-3", setl, 3400)
    books.kiosk_refund("pos", "E-3", "RF-3", "failed")
    books.each_ledger_balances()
    rc, rep = books.check(capsys, "--json")
    assert rc == 1
    assert {("draw_without_settlement", "", "MADE-UP-1"), ("draw_without_settlement", "", "MADE-UP-2"),
            ("refund_by_other_institution", "", setl), ("reversed_settlement_draw_not_refunded", "", setl),
            ("order_settlement_reversed", "pos/E-3", setl), ("order_draw_differs", "pos/E-3", setl)} <= kinds(rep)
    made_up = [m for m in rep["mismatches"] if m["setl_id"] == "MADE-UP-2"][0]
    assert "1800.00" in made_up["detail"] and member.psn_no in made_up["detail"]


def test_a_draw_by_another_institution_or_for_another_person_or_above_the_cash_share(books, capsys):
    p, q = books.people[0], books.people[1]
    s1, _ = books.settle(p)
    books.draw(books.rogue, "y1", p.psn_no, 3400, s1)       # another institution draws on our settlement
    s2, _ = books.settle(q, "10.00")
    books.draw(books.app, "y2", p.psn_no, 1000, s2)         # p pays for q's settlement
    s3, _ = books.settle(q, "10.00")
    books.draw(books.app, "y3", q.psn_no, 1500, s3)         # 15.00 drawn on a 10.00 cash share
    rc, rep = books.check(capsys, "--json")
    assert rc == 1
    assert {("draw_other_institution", "", s1), ("draw_other_person", "", s2),
            ("draw_exceeds_cash_share", "", s3)} <= kinds(rep)


# ------------------------------------------------------------------------------------------ scenario 4
def test_scenario_4_a_refund_reported_failed_that_both_parties_completed(books, capsys):
    """Old terminal: the bank stalled during a whole refund; the POS got 502 refund_failed and the order
    stayed paid, while the centre reversed it and the bank applied the credit refund when it resumed."""
    p = books.people[0]
    setl = paid_order(books, "pos", "E-4", p)
    books.reverse(setl, p)
    assert books.refund(books.app, "pos:RF-4", setl, 3400)  # applied; the answer never reached the terminal
    books.kiosk_refund("pos", "E-4", "RF-4", "failed")
    books.each_ledger_balances()
    rc, rep = books.check(capsys, "--json")
    assert rc == 1
    assert {("order_settlement_reversed", "pos/E-4", setl), ("order_draw_differs", "pos/E-4", setl)} <= kinds(rep)
    assert not any(m["order"] == "" for m in rep["mismatches"])  # centre and bank agree with each other


def test_bad_arguments_are_one_clear_line(tmp_path, capsys):
    rc = main(["check", "parties", "--centre-db", str(tmp_path / "nope.db"), "--bank-db", str(tmp_path / "b.db")])
    err = capsys.readouterr().err
    assert rc == 2 and "no database file" in err and "Traceback" not in err
    assert not (tmp_path / "nope.db").exists()  # never created by looking
