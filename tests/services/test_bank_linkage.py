"""The bank over HTTP, and the settlement + draw linkage repaired after failures between them."""
from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Iterator

import httpx
import pytest
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st

from kiosk.errors import RemoteError
from kiosk.services.bank.app import check_bank, create_app as create_bank
from kiosk.services.centre.check import check_centre
from kiosk.services.client import BankClient, drain_notifications, operator_call
from kiosk.services.http import admin_token
from kiosk.services.linkage import LinkedPayment, MemoryJournal
from kiosk.services.protocol import Answer, InfCode
from kiosk.storage import Database, open_database

from .conftest import Centre, apply_auth, bank_identity, fresh_pg, head, lines, make_centre, pay_auth, pg_url


@dataclass
class Bank:
    client: BankClient
    http: TestClient
    db: Database
    token: str = ""

    def _operator(self, act: str, body: dict[str, Any]) -> Answer:
        d = operator_call("http://testserver", self.token, act, body, http=self.http)
        return Answer(d["infcode"], d.get("err_code", ""), d.get("err_msg", ""), d.get("output") or {}, "")

    def open(self, holder: str, birth_date: str, years: int) -> Answer:
        """A line opened in the bank's own channel (operator token)."""
        return self._operator("apply", {"holder": holder, "birth_date": birth_date, "insured_years": years,
                                        "key": f"open/{holder}"})

    def line(self, payer: str) -> Answer:
        """The whole line, as the bank's operator sees it (a terminal sees own/family and covers only)."""
        return self._operator("line", {"payer": payer})

    def notifications(self, limit: int = 100) -> list[dict[str, Any]]:
        """What the operator's sender takes from the outbox."""
        return drain_notifications("http://testserver", self.token, limit, http=self.http)


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def pair(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Centre, Bank]]:
    tmp = tmp_path_factory.mktemp("pair")
    if request.param == "sqlite":
        centre = make_centre(f"sqlite:///{tmp}/centre.db", tmp)
        db = open_database(f"sqlite:///{tmp}/bank.db")
    else:
        url = pg_url()
        if url is None:
            pytest.skip("KIOSK_TEST_PG_URL not set (scripts/test provides it; required under CI)")
        centre = make_centre(fresh_pg(url), tmp)
        db = open_database(fresh_pg(url))
    app = create_bank(db, data_dir=tmp, clock=centre.clock)
    app.state.gateway.register_terminal(centre.app_id, centre.app_secret, centre.key.public_key().to_bytes().hex(),
                                        "H37020200002")
    http = TestClient(app)
    bank = Bank(BankClient("http://testserver", bank_identity(centre.app_id, centre.app_secret, centre.key),
                           http=http, clock=centre.clock), http, db, admin_token(tmp))
    yield centre, bank
    http.close()
    centre.http.close()
    db.close()
    centre.db.close()


def test_apply_bind_draw_idempotent_and_reverse(pair: tuple[Centre, Bank]) -> None:
    c, bank = pair
    b = bank.client
    assert b.apply("H1", "1980-05-01", 4, pay_auth=apply_auth(c, "H1", "1980-05-01", 4)).output["limit"] == "10000.00"
    old = b.apply("H2", "1950-05-01", 9, pay_auth=apply_auth(c, "H2", "1950-05-01", 9))
    assert old.infcode == InfCode.BUSINESS_REFUSED and old.err_code == "ineligible_age"
    assert b.bind("H1", "M1", "parent", False,
                  pay_auth=pay_auth(c, "H1", "M1", "0.00", purpose="bind")).err_code == "no_consent"
    assert b.bind("H1", "M1", "parent", True, "100.00").err_code == "pay_auth_required"  # not without the holder
    assert b.bind("H1", "M1", "parent", True, "100.00", pay_auth=pay_auth(c, "H1", "M1", "100.00", purpose="bind")).ok
    line = b.line("M1", "60.00", pay_auth=pay_auth(c, "M1", "q-1", "60.00", purpose="line"))
    assert line.ok and line.output == {"payer": "M1", "kind": "family", "amount": "60.00", "covers": "1",
                                       "holder_hint": "H1"}
    auth_a = pay_auth(c, "M1", "SETL-A", "60.00")
    first = b.draw("M1", "60.00", "SETL-A", "k-a", pay_auth=auth_a)
    again = b.draw("M1", "60.00", "SETL-A", "k-a", pay_auth=auth_a)  # retry, same key: first result, no 2nd charge
    assert first.ok and again.ok and again.output["ref"] == "SETL-A"
    assert bank.line("H1").output["available"] == "9940.00"
    capped = b.draw("M1", "60.00", "SETL-B", "k-b", pay_auth=pay_auth(c, "M1", "SETL-B", "60.00"))
    assert capped.err_code == "member_cap_exceeded"
    other = b.draw("M1", "61.00", "SETL-A", "k-a", pay_auth=pay_auth(c, "M1", "SETL-A", "61.00"))  # same key, other draw
    assert other.infcode == InfCode.MSGID_CONFLICT
    msgid = b.new_msgid()
    auth_c = pay_auth(c, "H1", "SETL-C", "10.00")
    d1 = b.draw("H1", "10.00", "SETL-C", "k-c", msgid=msgid, pay_auth=auth_c)
    d2 = b.draw("H1", "10.00", "SETL-C", "k-c", msgid=msgid, pay_auth=auth_c)  # same message retried
    assert d1.output == d2.output
    # the holder is told about the member's draw
    notes = bank.notifications()
    assert any(n["payload"]["member"] == "M1" and n["payload"]["ref"] == "SETL-A" for n in notes)
    # reversing a draw by key refunds it; a key that never drew is blocked
    r = b.reverse_draw("k-a", "M1")
    assert r.output["result"] == "reversed" and bank.line("H1").output["available"] == "9990.00"
    assert b.reverse_draw("k-a", "M1").output["result"] == "already_reversed"
    assert b.reverse_draw("k-z", "H1").output["result"] == "not_drawn"
    late = b.draw("H1", "5.00", "SETL-Z", "k-z", pay_auth=pay_auth(c, "H1", "SETL-Z", "5.00"))
    assert late.infcode == InfCode.ALREADY_REVERSED and late.err_code == "draw_reversed"
    st = b.statement("H1", pay_auth=pay_auth(c, "H1", "H1", "0.00", purpose="statement")).output
    assert [d["ref"] for d in st["draws"]] == ["SETL-A", "SETL-C"]
    bad = b.call("credit.draw", {"payer": "H1", "amount": "-3", "ref": "x", "key": "y"})
    assert bad.infcode == InfCode.INVALID_INPUT and "amount" in bad.err_msg
    assert check_bank(bank.db)["balanced"]


def _draws(bank: Bank, ref: str) -> int:
    return int(bank.db.read(lambda tx: tx.scalar("SELECT COUNT(*) FROM credit_draws WHERE ref = ?", (ref,))))


class Crash(Exception):
    pass


def _payment(c: Centre, bank: Bank, journal: MemoryJournal, p: Any, fault: str | None = None,
             amount: str = "400.00") -> tuple[LinkedPayment, Any]:
    token = c.activate(p)
    medfee, feedetail = lines(("XC02", amount, "1"))  # class C: all self-paid
    h = head(p, token, medfee, acct_used_flag="0")  # the patient keeps the account: all goes to credit

    def hook(step: str) -> None:
        if step == fault:
            raise Crash(step)

    lp = LinkedPayment(c.client, bank.client, journal, fault=hook)
    return lp, lp.begin(f"order-{secrets.token_hex(4)}", h, feedetail)


def test_crash_between_settlement_and_draw_is_completed_on_resume(pair: tuple[Centre, Bank]) -> None:
    c, bank = pair
    p = c.people[18]
    assert bank.open(p.psn_no, p.brdy, 6).ok
    journal = MemoryJournal()
    lp, entry = _payment(c, bank, journal, p, fault="settle")
    with pytest.raises(Crash):
        lp.run(entry)  # settled at the centre, the terminal died before recording it
    saved = journal.load(entry.order_id)
    assert saved.state == "intent"
    done = LinkedPayment(c.client, bank.client, journal).resume(saved)  # restart: same msgid replays
    assert done.state == "done" and done.setl_id
    assert _draws(bank, done.setl_id) == 1
    # the draw answer lost after the bank committed it: resume draws again with the same key
    lp2, e2 = _payment(c, bank, journal, p, fault="draw", amount="300.00")
    with pytest.raises(Crash):
        lp2.run(e2)
    again = LinkedPayment(c.client, bank.client, journal).resume(journal.load(e2.order_id))
    assert again.state == "done" and _draws(bank, again.setl_id) == 1
    line = bank.line(p.psn_no).output
    assert line["principal_outstanding"] == "700.00"  # both bills charged exactly once


def test_refused_draw_reverses_the_settlement(pair: tuple[Centre, Bank]) -> None:
    c, bank = pair
    p = c.people[19]  # no credit line: the draw is refused
    bal = int(c.db.read(lambda tx: tx.scalar("SELECT balc FROM centre_persons WHERE psn_no = ?", (p.psn_no,))))
    journal = MemoryJournal()
    lp, entry = _payment(c, bank, journal, p)
    out = lp.run(entry)
    assert out.state == "reversed" and "not_bound" in out.detail
    q = c.client.query(p.psn_no, setl_id=out.setl_id)
    assert q.output["setl_state"] == "reversed"
    assert int(c.db.read(lambda tx: tx.scalar("SELECT balc FROM centre_persons WHERE psn_no = ?",
                                               (p.psn_no,)))) == bal


def test_a_bank_fault_answer_is_retried_not_taken_for_a_decline(pair: tuple[Centre, Bank], monkeypatch) -> None:
    """9001 means "nothing applied, send again": the payment is completed on resume, not reversed."""
    from kiosk.services.protocol import Answer

    c, bank = pair
    p = c.people[21]
    assert bank.open(p.psn_no, p.brdy, 6).ok
    journal = MemoryJournal()
    lp, entry = _payment(c, bank, journal, p, amount="120.00")
    real = bank.client.draw
    monkeypatch.setattr(bank.client, "draw", lambda *a, **k: Answer(9001, "unavailable", "retry", {}, "m"))
    with pytest.raises(RemoteError):
        lp.run(entry)
    assert journal.load(entry.order_id).state == "settled"  # kept for resume, not reversing
    monkeypatch.setattr(bank.client, "draw", real)
    done = LinkedPayment(c.client, bank.client, journal).resume(journal.load(entry.order_id))
    assert done.state == "done" and _draws(bank, done.setl_id) == 1
    assert c.client.query(p.psn_no, setl_id=done.setl_id).output["setl_state"] == "settled"


def test_lost_settlement_answer_is_found_or_blocked(pair: tuple[Centre, Bank]) -> None:
    c, bank = pair
    p = c.people[20]
    assert bank.open(p.psn_no, p.brdy, 2).ok
    journal = MemoryJournal()
    lp, entry = _payment(c, bank, journal, p, amount="50.00")
    # the centre cannot be reached at all: nothing sent, journal still at intent
    real_post = c.client.post_envelope

    def down(infno: str, envelope: dict) -> Any:
        err = RemoteError("connection refused", code="unreachable")
        err.uncertain = False  # type: ignore[attr-defined]
        raise err

    c.client.post_envelope = down  # type: ignore[method-assign]
    try:
        with pytest.raises(RemoteError):
            lp.run(entry)
    finally:
        c.client.post_envelope = real_post  # type: ignore[method-assign]
    assert journal.load(entry.order_id).state == "intent"

    # the 2207 times out after the centre applied it: 5203 finds it, the draw completes
    calls = {"n": 0}

    def timeout_after_send(infno: str, envelope: dict) -> Any:
        r = real_post(infno, envelope)
        if infno == "2207" and calls["n"] == 0:
            calls["n"] += 1
            err = RemoteError("read timeout", code="timeout")
            err.uncertain = True  # type: ignore[attr-defined]
            raise err
        return r

    c.client.post_envelope = timeout_after_send  # type: ignore[method-assign]
    try:
        out = lp.run(journal.load(entry.order_id))
    finally:
        c.client.post_envelope = real_post  # type: ignore[method-assign]
    assert out.state == "done" and out.history[-2:] == ["settled", "done"]
    assert _draws(bank, out.setl_id) == 1
    n = c.db.read(lambda tx: tx.scalar("SELECT COUNT(*) FROM centre_settlements WHERE msgid = ?",
                                       (f"{c.app_id}/{out.settle_msgid}",)))
    assert n == 1

    # the 2207 never reached the centre and the answer timed out: 2601 blocks a late arrival
    lp3, e3 = _payment(c, bank, journal, p, amount="20.00")

    def lost(infno: str, envelope: dict) -> Any:
        if infno == "2207":
            err = RemoteError("read timeout", code="timeout")
            err.uncertain = True  # type: ignore[attr-defined]
            raise err
        return real_post(infno, envelope)

    c.client.post_envelope = lost  # type: ignore[method-assign]
    try:
        out3 = lp3.run(e3)
    finally:
        c.client.post_envelope = real_post  # type: ignore[method-assign]
    assert out3.state == "reversed" and not out3.setl_id
    late = c.client.settle(e3.head, e3.lines, msgid=e3.settle_msgid)  # the lost message finally arrives
    assert late.infcode == InfCode.ALREADY_REVERSED and late.err_code == "message_reversed"
    assert check_centre(c.db)["balanced"] and check_bank(bank.db)["balanced"]


def test_bank_openapi_lists_every_operation(pair: tuple[Centre, Bank]) -> None:
    _c, bank = pair
    doc = bank.http.get("/openapi.json").json()
    ops = ["apply", "bind", "unbind", "line", "draw", "draw_reverse", "hold", "capture", "release", "repay",
           "refund", "statement", "mandate", "mandate_revoke", "mandate_get"]
    for op in ops:
        assert f"/fsi/api/credit.{op}" in doc["paths"]
        assert f"credit.{op}.input" in doc["components"]["schemas"]
    assert "/admin/notifications" in doc["paths"] and "/fsi/api/credit.notifications" not in doc["paths"]
    assert {"/admin/mandate/revoke", "/admin/mandate"} <= set(doc["paths"])


def test_hold_capture_release_repay_refund(pair: tuple[Centre, Bank]) -> None:
    c, bank = pair
    b = bank.client
    assert bank.open("H9", "1985-01-01", 1).output["limit"] == "5000.00"
    assert b.hold("H9", "3000.00", "ADM-1", "h1", pay_auth=pay_auth(c, "H9", "ADM-1", "3000.00", purpose="hold")).ok
    assert bank.line("H9").output["available"] == "2000.00"
    over = b.capture("ADM-1", "3500.00", "c0")
    assert over.err_code == "exceeds_hold"
    cap = b.capture("ADM-1", "1200.00", "c1")
    assert cap.ok and cap.output["drawn"] == "1200.00" and cap.output["released"] == "1800.00"
    assert b.hold("H9", "100.00", "ADM-2", "h2", pay_auth=pay_auth(c, "H9", "ADM-2", "100.00", purpose="hold")).ok
    assert b.release("ADM-2", "r2").ok
    assert b.refund("ADM-1", "200.00", "rf1").output["principal"] == "200.00"
    assert b.repay("H9", "1000.00", "p1").err_code == "pay_auth_required"  # only with the holder's face
    assert b.repay("H9", "5000.00", "p0",
                   pay_auth=pay_auth(c, "H9", "r0", "5000.00", purpose="repay")).err_code == "overpayment"
    assert b.repay("H9", "1000.00", "p1", pay_auth=pay_auth(c, "H9", "r1", "1000.00", purpose="repay")).ok
    assert bank.line("H9").output["available"] == "5000.00"
    assert check_bank(bank.db)["balanced"]


@settings(max_examples=40, deadline=None)
@given(op=st.sampled_from(["apply", "bind", "unbind", "line", "draw", "draw_reverse", "hold", "capture", "release",
                           "repay", "refund", "statement", "mandate", "mandate_revoke", "mandate_get"]),
       data=st.dictionaries(st.sampled_from(["holder", "member", "payer", "amount", "ref", "key", "relation",
                                             "consent", "birth_date", "insured_years", "limit", "monthly_cap",
                                             "mandate_id", "visit", "pay_auth"]),
                            st.none() | st.booleans() | st.integers(-5, 10**12) | st.text(max_size=12)
                            | st.floats(allow_nan=False, allow_infinity=False), max_size=6))
def test_bank_any_input_is_an_answer_never_a_fault(pair: tuple[Centre, Bank], op: str, data: dict) -> None:
    a = pair[1].client.call(f"credit.{op}", data)
    assert isinstance(a.infcode, int)
    if a.infcode != 0:
        assert a.err_msg and a.err_code != "internal", a


def test_notifications_queue_due_soon_and_overdue_without_a_new_draw(tmp_path) -> None:
    """The operator's sender polling `/admin/notifications` gets the day-52 reminder and the day-60 overdue
    notice even when nobody touched the line in between (the bank runs the day's sweep first)."""
    centre = make_centre(f"sqlite:///{tmp_path}/centre.db", tmp_path)
    db = open_database(f"sqlite:///{tmp_path}/bank.db")
    app = create_bank(db, data_dir=tmp_path, clock=centre.clock)
    app.state.gateway.register_terminal(centre.app_id, centre.app_secret, centre.key.public_key().to_bytes().hex(),
                                        "H37020200002")
    with TestClient(app) as http:
        b = BankClient("http://testserver", bank_identity(centre.app_id, centre.app_secret, centre.key),
                       http=http, clock=centre.clock)
        assert b.apply("H9", "1985-01-01", 3, pay_auth=apply_auth(centre, "H9", "1985-01-01", 3)).ok
        assert b.draw("H9", "100.00", "SETL-N", "k-n", pay_auth=pay_auth(centre, "H9", "SETL-N", "100.00")).ok
        def notes() -> list[dict[str, Any]]:
            return drain_notifications("http://testserver", admin_token(tmp_path), http=http)

        assert notes() == []  # the holder's own draw: nothing to tell
        centre.clock.advance(days=52)
        due = notes()
        assert [(m["topic"], m["payload"]["ref"]) for m in due] == [("credit.due_soon", "SETL-N")]
        assert notes() == []  # handed over once
        centre.clock.advance(days=8)
        over = notes()
        assert [(m["topic"], m["payload"]["ref"]) for m in over] == [("credit.overdue", "SETL-N")]
        assert b.statement("H9", pay_auth=pay_auth(centre, "H9", "H9", "0.00", purpose="statement")).ok
        # a terminal cannot take (and so swallow) the holders' notices
        assert b.call("credit.notifications", {"limit": 10}).infcode == InfCode.UNKNOWN_TRANSACTION
        with pytest.raises(RemoteError):
            drain_notifications("http://testserver", "not-the-operator", http=http)
    assert check_bank(db)["balanced"]
    centre.http.close()
    db.close()
    centre.db.close()


@pytest.mark.parametrize("op,data,field", [
    ("bind", {"holder": "HT1", "member": "MT1", "relation": "spouse", "consent": "yes"}, "input.consent"),
    ("bind", {"holder": "HT1", "member": "MT1", "relation": "spouse", "consent": 1}, "input.consent"),
    ("apply", {"holder": "HT2", "birth_date": "1985-01-01", "insured_years": True}, "input.insured_years"),
    ("apply", {"holder": "HT3", "birth_date": "1985-01-01", "insured_years": "5"}, "input.insured_years"),
])
def test_bank_wrong_types_are_refused_not_coerced(pair: tuple[Centre, Bank], op: str, data: dict,
                                                  field: str) -> None:
    """Consent must be an explicit JSON true, counts JSON integers: "yes" or 1 is not consent."""
    _c, bank = pair
    assert bank.open("HT1", "1985-01-01", 2).infcode in (0, InfCode.BUSINESS_REFUSED)
    a = bank.client.call(f"credit.{op}", data)
    assert a.infcode == InfCode.INVALID_INPUT and a.err_msg.startswith(field), a


def test_concurrent_draws_with_one_key_all_get_the_one_charge(pair: tuple[Centre, Bank]) -> None:
    """A retry (new msgid, same key) arriving while the first draw is still in flight gets the first
    answer, never a 9001 after the charge stood (a terminal would reverse the settlement: half-done)."""
    from concurrent.futures import ThreadPoolExecutor

    from kiosk.services import envelope as env

    c, bank = pair
    b = bank.client
    gw = bank.http.app.state.gateway
    assert bank.open("HC1", "1985-01-01", 3).infcode in (0, InfCode.BUSINESS_REFUSED)
    before = bank.line("HC1").output["principal_outstanding"]
    rounds, n = 8, 8
    answers = []
    ex = ThreadPoolExecutor(n)  # one pool: each worker thread keeps one connection
    for i in range(rounds):
        envs = []
        auth = pay_auth(c, "HC1", f"SC-{i}", "1.00")
        for _ in range(n):
            req = b.request("credit.draw", {"payer": "HC1", "amount": "1.00", "ref": f"SC-{i}", "key": f"kc-{i}",
                                            "pay_auth": auth})
            envs.append((json.dumps(env.client_envelope(req, app_id=c.app_id, app_secret=c.app_secret,
                                                        sm2_key=c.key, now=c.clock.now())).encode(), req["msgid"]))
        outs = list(ex.map(lambda e: gw.handle(e[0], "credit.draw"), envs))
        for (status, body), (_raw, msgid) in zip(outs, envs):
            answers.append(b.read_answer(httpx.Response(status, json=body), msgid))
    ex.shutdown()
    assert [(a.infcode, a.err_code, a.err_msg) for a in answers if not a.ok] == []
    after = bank.line("HC1").output["principal_outstanding"]
    assert Decimal(after) - Decimal(before) == rounds  # one yuan per key, however many tries
    assert b.reverse_draw("kc-0", "HC1").output["result"] == "reversed"
    assert b.draw("HC1", "1.00", "SC-0", "kc-0", pay_auth=pay_auth(c, "HC1", "SC-0", "1.00")).err_code == "draw_reversed"
    assert check_bank(bank.db)["balanced"]


_BOUGHT = (("XA01", "12.50", "2"), ("XC02", "30.00", "1"), ("XC01", "8.80", "3"))
_KEPT = (("XA01", "12.50", "1"), ("XC02", "30.00", "1"))


def _returned(c: Centre, p: Any) -> tuple[str, str, str, str, str]:
    """A terminal sells with the face, announces a return of part,
    reverses the original and re-settles the kept lines on its authority: (orig, its pay_auth, its cash,
    new setl_id, the new pay_auth)."""
    from kiosk.services import payauth

    b_medfee, b_detail = lines(*_BOUGHT)
    a = c.client.settle(head(p, c.activate(p), b_medfee, acct_used_flag="0"), b_detail)
    assert a.ok and a.output["pay_auth"], a
    orig, cash = a.output["setlinfo"]["setl_id"], a.output["setlinfo"]["psn_cash_pay"]
    k_medfee, k_detail = lines(*_KEPT)
    assert c.client.presettle(head(p, orig, k_medfee, acct_used_flag="0", orig_setl_id=orig), k_detail).ok
    assert c.client.reverse(orig, p.psn_no).ok
    r = c.client.settle(head(p, orig, k_medfee, acct_used_flag="0", orig_setl_id=orig), k_detail)
    assert r.ok and r.output["pay_auth"], r
    claims = payauth.verify(r.output["pay_auth"], c.service.keys.sm2.public_key())
    assert payauth.returned_settlement(claims.id) == orig  # the centre signed the link
    again = c.client.query(p.psn_no, setl_id=r.output["setlinfo"]["setl_id"])  # 5203: the same word re-issued
    assert payauth.verify(again.output["pay_auth"], c.service.keys.sm2.public_key()).id == claims.id, again
    assert payauth.returned_settlement(payauth.verify(a.output["pay_auth"], c.service.keys.sm2.public_key()).id) is None
    return orig, a.output["pay_auth"], cash, r.output["setlinfo"]["setl_id"], r.output["pay_auth"]


def test_a_returns_redraw_waits_for_the_originals_draw_refunded_in_full(pair: tuple[Centre, Bank]) -> None:
    """A rogue terminal reverses its own sale, skips refunding the original credit draw, then draws the
    re-settlement: the bank refuses until the original's draw is refunded whole (no double charge)."""
    c, bank = pair
    b = bank.client
    p = c.people[22]
    assert bank.open(p.psn_no, p.brdy, 6).ok
    orig, orig_auth, cash, new, new_auth = _returned(c, p)
    assert b.draw(p.psn_no, cash, orig, "rt-orig", pay_auth=orig_auth).ok
    owed = bank.line(p.psn_no).output["principal_outstanding"]
    assert Decimal(owed) == Decimal(cash)
    kept = "42.50"  # 12.50 + 30.00, all cash (inside the deductible, account not used)
    skip = b.draw(p.psn_no, kept, new, "rt-new", pay_auth=new_auth)
    assert (skip.infcode, skip.err_code) == (InfCode.BUSINESS_REFUSED, "original_not_refunded"), skip
    assert bank.line(p.psn_no).output["principal_outstanding"] == owed  # nothing charged, nothing spent
    assert b.refund(orig, "1.00", "rt-refund-1").ok  # a part is not enough
    assert b.draw(p.psn_no, kept, new, "rt-new", pay_auth=new_auth).err_code == "original_not_refunded"
    assert b.refund(orig, str(Decimal(cash) - 1), "rt-refund-2").ok
    done = b.draw(p.psn_no, kept, new, "rt-new", pay_auth=new_auth)  # the same key and pay_auth, now accepted
    assert done.ok, done
    assert b.draw(p.psn_no, kept, new, "rt-new", pay_auth=new_auth).output == done.output  # replayed
    assert bank.line(p.psn_no).output["principal_outstanding"] == kept
    assert check_bank(bank.db)["balanced"]


def test_a_returned_settlement_is_never_drawn_after_its_resettlement(pair: tuple[Centre, Bank]) -> None:
    """The other order: the terminal never drew the original, draws the re-settlement, then tries the
    original's still-valid pay_auth: refused, the patient pays only for what was kept."""
    c, bank = pair
    b = bank.client
    p = c.people[23]
    assert bank.open(p.psn_no, p.brdy, 6).ok
    orig, orig_auth, cash, new, new_auth = _returned(c, p)
    assert b.draw(p.psn_no, "42.50", new, "rt2-new", pay_auth=new_auth).ok
    late = b.draw(p.psn_no, cash, orig, "rt2-orig", pay_auth=orig_auth)
    assert (late.infcode, late.err_code) == (InfCode.BUSINESS_REFUSED, "settlement_returned"), late
    assert bank.line(p.psn_no).output["principal_outstanding"] == "42.50"
    assert check_bank(bank.db)["balanced"]


def test_a_payer_with_an_own_line_is_told_of_a_family_line_too_and_nobody_else(pair: tuple[Centre, Bank]) -> None:
    """credit.line answers `family_hint` (the family holder's last 4) only to the face-proved payer who has an
    own line and is bound to a family line as well: the registration offers own / family / both."""
    c, bank = pair
    b = bank.client
    assert bank.open("FL-B0042", "1981-01-01", 4).ok

    def line(payer: str, auth: bool = True) -> Answer:
        return b.line(payer, "10.00", pay_auth=pay_auth(c, payer, "q", "10.00", purpose="line") if auth else "")

    # bound as a member first (a binding takes no one with a line of their own), then a line of her own
    assert b.bind("FL-B0042", "FL-A0001", "spouse", True, "100.00",
                  pay_auth=pay_auth(c, "FL-B0042", "FL-A0001", "100.00", purpose="bind")).ok
    assert line("FL-A0001").output["kind"] == "family"
    assert bank.open("FL-A0001", "1980-01-01", 4).ok
    assert bank.open("FL-C0001", "1980-01-01", 4).ok
    assert "family_hint" not in line("FL-C0001").output  # an own line only
    both = line("FL-A0001")
    assert both.output["kind"] == "own" and both.output["family_hint"] == "0042", both
    assert line("FL-A0001", auth=False).err_code == "not_bound"  # without the payer's face: nothing
    assert "family_hint" not in line("FL-B0042").output  # the holder is nobody's member
    from kiosk.app.adapters.bank import BankAdapter  # what the terminal's registration reads of it
    from kiosk.app.ports import Person

    seen = BankAdapter(b).line_for(Person(psn_no="FL-A0001", name="", ec_token=""), 1000,
                                   pay_auth(c, "FL-A0001", "q", "10.00", purpose="line"))
    assert (seen.kind, seen.family_hint, seen.available) == ("own", "0042", 1000)
    assert b.bind("FL-B0042", "FL-M9", "child", True, "100.00",
                  pay_auth=pay_auth(c, "FL-B0042", "FL-M9", "100.00", purpose="bind")).ok
    member = line("FL-M9").output  # a member without an own line: the family line is the one it uses
    assert member["kind"] == "family" and member["holder_hint"] == "0042" and "family_hint" not in member


def test_a_draw_on_the_original_racing_the_resettlements_draw_on_another_line_charges_once(
        pair: tuple[Centre, Bank]) -> None:
    """A rogue terminal sends the original's draw (on the family line) and the re-settlement's draw (on the
    patient's own line) at once: two line locks, so they meet only on the original's bank_draw_refs row.
    Exactly one is charged, whichever lands first; the other is refused and rolled back."""
    from concurrent.futures import ThreadPoolExecutor

    from kiosk.services import envelope as env

    c, bank = pair
    b = bank.client
    gw = bank.http.app.state.gateway
    assert bank.open("RACE-H042", "1980-01-01", 6).ok
    p = None
    for cand in c.people[:18]:  # bound as a member first, then her own line (a binding takes no line holder)
        if b.bind("RACE-H042", cand.psn_no, "spouse", True, None,
                  pay_auth=pay_auth(c, "RACE-H042", cand.psn_no, "0.00", purpose="bind")).ok:
            if bank.open(cand.psn_no, cand.brdy, 6).ok:
                p = cand
                break
            b.unbind("RACE-H042", cand.psn_no, pay_auth=pay_auth(c, "RACE-H042", cand.psn_no, "0.00", purpose="unbind"))
    assert p is not None

    def owed() -> Decimal:
        return sum(Decimal(bank.line(h).output["principal_outstanding"]) for h in (p.psn_no, "RACE-H042"))

    ex = ThreadPoolExecutor(2)
    try:
        for i in range(2):  # (few rounds: each round's centre calls may open connections in more server threads)
            orig, orig_auth, cash, new, new_auth = _returned(c, p)
            before = owed()
            envs = []
            for data in ({"payer": p.psn_no, "amount": cash, "ref": orig, "key": f"race-o{i}", "pay_auth": orig_auth,
                          "holder": "RACE-H042"},
                         {"payer": p.psn_no, "amount": "42.50", "ref": new, "key": f"race-n{i}", "pay_auth": new_auth}):
                req = b.request("credit.draw", data)
                envs.append((json.dumps(env.client_envelope(req, app_id=c.app_id, app_secret=c.app_secret,
                                                            sm2_key=c.key, now=c.clock.now())).encode(), req["msgid"]))
            outs = list(ex.map(lambda e: gw.handle(e[0], "credit.draw"), envs))
            got = [b.read_answer(httpx.Response(s, json=body), m) for (s, body), (_r, m) in zip(outs, envs)]
            assert [a.ok for a in got].count(True) == 1, got
            assert {a.err_code for a in got if not a.ok} <= {"original_not_refunded", "settlement_returned"}, got
            won = Decimal(cash) if got[0].ok else Decimal("42.50")
            assert owed() - before == won  # charged once, for the one that stood
    finally:
        ex.shutdown()
    assert check_bank(bank.db)["balanced"]
