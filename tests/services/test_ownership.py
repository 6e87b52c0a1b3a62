"""Who may act on what: a second institution's terminal at the centre, a rogue registered terminal
at the bank. Each test is an attack that worked before ownership was checked where the object is
stored (settlements by institution, draws and holds by institution, draws only with the centre's
pay_auth)."""
from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any, Iterator

import pytest
from fastapi.testclient import TestClient

from kiosk.security.sm import Sm2PrivateKey
from kiosk.services import payauth
from kiosk.services.bank.app import check_bank, create_app as create_bank
from kiosk.services.centre.check import check_centre
from kiosk.services.client import BankClient, CentreClient, ServiceIdentity, operator_call
from kiosk.services.linkage import LinkedPayment, MemoryJournal
from kiosk.services.protocol import Answer, InfCode
from kiosk.storage import Database, open_database

from .conftest import INSTITUTION, Centre, fresh_pg, head, lines, make_centre, pay_auth, pg_url

OTHER = "H37020200001"  # another institution of the same area (the demo clinic)


@dataclass
class World:
    c: Centre                 # the centre, and the hospital's terminal (INSTITUTION) as c.client
    bank: BankClient          # the hospital's terminal at the bank
    bank_db: Database
    other_centre: CentreClient  # a terminal of another institution, registered at both
    other_bank: BankClient
    other_app_id: str
    admin_token: str = ""


def _answer_fields(a: Answer) -> tuple[Any, ...]:
    return a.infcode, a.err_code, a.err_msg, a.output


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def world(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("own")
    if request.param == "sqlite":
        c = make_centre(f"sqlite:///{tmp}/centre.db", tmp)
        bdb = open_database(f"sqlite:///{tmp}/bank.db")
    else:
        url = pg_url()
        if url is None:
            pytest.skip("KIOSK_TEST_PG_URL not set (scripts/test provides it; required under CI)")
        c = make_centre(fresh_pg(url), tmp)
        bdb = open_database(fresh_pg(url))
    app = create_bank(bdb, data_dir=tmp, clock=c.clock)
    bgw = app.state.gateway
    bgw.register_terminal(c.app_id, c.app_secret, c.key.public_key().to_bytes().hex(), INSTITUTION)
    bhttp = TestClient(app)
    # one event loop per client for the whole module: each request's worker thread (and its database
    # connection) is reused, not a new one per request (PostgreSQL would run out of connections)
    bhttp.__enter__()
    c.http.__enter__()
    bank = BankClient("http://testserver", ServiceIdentity(c.app_id, c.app_secret, c.key, INSTITUTION),
                      http=bhttp, clock=c.clock)
    # another institution's terminal, properly registered with both services
    key2 = Sm2PrivateKey.generate()
    app2, secret2 = "KIOSKOTHER" + secrets.token_hex(5).upper(), secrets.token_hex(16)
    c.gateway.register_terminal(app2, secret2, key2.public_key().to_bytes().hex(), OTHER)
    bgw.register_terminal(app2, secret2, key2.public_key().to_bytes().hex(), OTHER)
    ident2 = ServiceIdentity(app2, secret2, key2, OTHER)
    other_centre = CentreClient("http://testserver", ident2, http=c.http, clock=c.clock)
    other_centre.sign_in("intruder")
    other_bank = BankClient("http://testserver", ServiceIdentity(app2, secret2, key2, OTHER), http=bhttp,
                            clock=c.clock)
    from kiosk.services.http import admin_token

    yield World(c, bank, bdb, other_centre, other_bank, app2, admin_token(tmp))
    bhttp.__exit__(None, None, None)
    c.http.__exit__(None, None, None)
    bdb.close()
    c.db.close()


def _settle(w: World, p: Any, amount: str = "500.00") -> Answer:
    """A face-authenticated settlement at the hospital (class C: all of it is the cash share)."""
    token = w.c.activate(p)
    medfee, feedetail = lines(("XC02", amount, "1"))
    a = w.c.client.settle(head(p, token, medfee, acct_used_flag="0"), feedetail)
    assert a.ok, a
    return a


def _open(w: World, p: Any) -> None:
    """A line opened in the bank's own channel (the tests of a terminal's credit.apply open their own)."""
    a = operator_call("http://testserver", w.admin_token, "apply", {"holder": p.psn_no, "birth_date": p.brdy,
                                                                   "insured_years": 6, "key": f"open/{p.psn_no}"},
                      http=w.bank.http)
    assert a["infcode"] == 0, a


def _line(w: World, psn_no: str) -> dict[str, Any]:
    """The whole line as the bank's operator sees it (a terminal sees only own/family and covers)."""
    a = operator_call("http://testserver", w.admin_token, "line", {"payer": psn_no}, http=w.bank.http)
    assert a["infcode"] == 0, a
    return dict(a["output"])


def _line_code(w: World, psn_no: str) -> str:
    return str(operator_call("http://testserver", w.admin_token, "line", {"payer": psn_no},
                             http=w.bank.http).get("err_code") or "")


def _audit_rows(w: World) -> list[tuple[Any, ...]]:
    return w.c.db.read(lambda tx: tx.fetch_all("SELECT app_id, fixmedins_code, infno, object_id FROM centre_audit"))


# ---- the centre: settlements belong to the institution whose terminal made them ----------------------
def test_another_institution_gets_not_found_for_a_settlement_it_does_not_own(world: World) -> None:
    w = world
    p = w.c.people[3]
    st = _settle(w, p)
    setl_id = st.output["setlinfo"]["setl_id"]
    missing_id = "S" + setl_id[1:9] + "0" * 16  # same shape, never issued

    # 5203, 2208 and 2103 by setl_id: the very answer a setl_id that does not exist gets
    for call in (lambda sid: w.other_centre.query(p.psn_no, setl_id=sid),
                 lambda sid: w.other_centre.reverse(sid, p.psn_no),
                 lambda sid: w.other_centre.reverse(sid, p.psn_no, pharmacy=True)):
        theirs, none = call(setl_id), call(missing_id)
        assert theirs.infcode == InfCode.NOT_FOUND
        assert _answer_fields(theirs) == _answer_fields(none)  # no existence oracle
    # the settlement stands, untouched
    q = w.c.client.query(p.psn_no, setl_id=setl_id)
    assert q.ok and q.output["setl_state"] == "settled"
    # each refusal of another's object is audited: ids only, never the person
    rows = [r for r in _audit_rows(w) if r[3] == setl_id]
    assert [(r[0], r[1], r[2], r[3]) for r in rows] == [
        (w.other_app_id, OTHER, infno, setl_id) for infno in ("5203", "2208", "2103")]
    assert all(p.psn_no not in map(str, r) for r in rows)
    assert check_centre(w.c.db)["balanced"]


def test_msgids_are_the_sending_terminals_own(world: World) -> None:
    """2601 and 5203 by omsgid reach only the asking terminal's own messages."""
    w = world
    p = w.c.people[4]
    st = _settle(w, p, "80.00")
    omsgid = st.msgid
    q = w.other_centre.query(p.psn_no, omsgid=omsgid)
    assert q.infcode == InfCode.NOT_FOUND
    r = w.other_centre.reverse_message(p.psn_no, omsgid, "2207")
    assert r.ok and r.output["result"] == "not_applied"  # its own (empty) msgid space: nothing of ours moves
    mine = w.c.client.query(p.psn_no, omsgid=omsgid)
    assert mine.ok and mine.output["setl_state"] == "settled"


def test_the_declared_institution_must_be_the_registered_one(world: World) -> None:
    w = world
    liar = CentreClient("http://testserver", ServiceIdentity(w.other_app_id, w.other_centre.ident.app_secret,
                                                              w.other_centre.ident.sm2_key, INSTITUTION),
                        http=w.c.http, clock=w.c.clock)
    liar.sign_no = w.other_centre.sign_no
    a = liar.query(w.c.people[4].psn_no, setl_id="S2026031000000000000000000")
    assert a.infcode == InfCode.INVALID_INPUT and a.err_code == "institution_mismatch"
    assert "fixmedins_code" in a.err_msg


# ---- 1101: person data only for the face-proved person, at the terminal that proved it ------------
def test_person_info_needs_this_terminals_face_token(world: World) -> None:
    w = world
    p = w.c.people[5]
    token = w.c.activate(p)
    own = w.c.client.person_info(ec_token=token)
    assert own.ok and own.output["baseinfo"]["psn_no"] == p.psn_no
    flat = repr(own.output)
    for secret in (p.brdy, p.certno, "balc", "idet"):  # nothing the counter does not need
        assert secret not in flat or secret == "idet" and own.output["idetinfo"] == []
    typed = w.c.client.person_info(certno=p.certno)  # a typed ID number proves nothing
    elsewhere = w.other_centre.person_info(ec_token=token)  # another institution's terminal, our token
    nobody = w.other_centre.person_info(certno=p.certno)
    assert typed.infcode == InfCode.IDENTITY_MISMATCH and not typed.output
    assert _answer_fields(typed) == _answer_fields(elsewhere) == _answer_fields(nobody)


# ---- the bank: a line is charged only with the centre's pay_auth for this payment -------------------
def test_a_draw_needs_the_centres_pay_auth_for_exactly_this_payment(world: World) -> None:
    w = world
    p = w.c.people[6]
    _open(w, p)
    st = _settle(w, p, "300.00")
    setl_id, auth = st.output["setlinfo"]["setl_id"], st.output["pay_auth"]
    claims = payauth.verify(auth, w.c.service.keys.sm2.public_key())
    assert (claims.psn_no, claims.ref, claims.amount, claims.purpose, claims.app_id, claims.fixmedins_code) == (
        p.psn_no, setl_id, 30000, "draw", w.c.app_id, INSTITUTION)
    avail = _line(w, p.psn_no)["available"]

    # the rogue terminal: no authorisation, a forged one, a made-up ref, and the hospital's own (copied)
    assert w.other_bank.draw(p.psn_no, "1.00", "made-up", "r1").infcode == InfCode.INVALID_INPUT
    forged = payauth.sign(payauth.PayAuth("PX1", p.psn_no, OTHER, w.other_app_id, "made-up", 100, "draw",
                                          claims.exp), Sm2PrivateKey.generate())
    f = w.other_bank.draw(p.psn_no, "1.00", "made-up", "r2", pay_auth=forged)
    assert f.infcode == InfCode.NO_AUTHORISATION and f.err_code == "pay_auth_invalid"
    stolen = w.other_bank.draw(p.psn_no, "300.00", setl_id, "r3", pay_auth=auth)
    assert stolen.infcode == InfCode.NO_AUTHORISATION and stolen.err_code == "pay_auth_mismatch"
    # the hospital's terminal itself, bent: another amount, another payer, another ref
    for payer, amount, ref in ((p.psn_no, "299.00", setl_id), (w.c.people[7].psn_no, "300.00", setl_id),
                               (p.psn_no, "300.00", "S-other")):
        a = w.bank.draw(payer, amount, ref, f"bent-{payer}-{amount}-{ref}", pay_auth=auth)
        assert a.err_code == "pay_auth_mismatch", a
    assert _line(w, p.psn_no)["available"] == avail  # nothing charged by any of it

    # the real draw; its retry (same key) replays; the same auth under another key is refused
    d = w.bank.draw(p.psn_no, "300.00", setl_id, "k-own", pay_auth=auth)
    assert d.ok
    assert w.bank.draw(p.psn_no, "300.00", setl_id, "k-own", pay_auth=auth).output == d.output
    again = w.bank.draw(p.psn_no, "300.00", setl_id, "k-twice", pay_auth=auth)
    assert again.infcode == InfCode.NO_AUTHORISATION and again.err_code == "pay_auth_used"
    used = w.bank_db.read(lambda tx: tx.fetch_one("SELECT key, ref, amount FROM bank_pay_auths WHERE auth_id = ?",
                                                  (claims.id,)))
    assert used is not None and used[1:] == (setl_id, 30000) and used[0].endswith("/k-own")
    owner = w.bank_db.read(lambda tx: tx.fetch_one("SELECT fixmedins_code, app_id FROM credit_draws WHERE ref = ?",
                                                   (setl_id,)))
    assert tuple(owner) == (INSTITUTION, w.c.app_id)
    assert check_bank(w.bank_db)["balanced"]


def test_an_expired_pay_auth_is_refused_and_5203_issues_it_again(world: World) -> None:
    w = world
    p = w.c.people[8]
    _open(w, p)
    st = _settle(w, p, "40.00")
    setl_id, auth = st.output["setlinfo"]["setl_id"], st.output["pay_auth"]
    w.c.clock.advance(minutes=11)
    try:
        late = w.bank.draw(p.psn_no, "40.00", setl_id, "k-late", pay_auth=auth)
        assert late.err_code == "pay_auth_expired"
        # only the terminal that settled gets it again (same authorisation id: still one draw)
        assert "pay_auth" not in w.other_centre.query(p.psn_no, setl_id=setl_id).output
        fresh = w.c.client.query(p.psn_no, setl_id=setl_id).output["pay_auth"]
        assert payauth.verify(fresh, w.c.service.keys.sm2.public_key()).id == \
            payauth.verify(auth, w.c.service.keys.sm2.public_key()).id
        assert w.bank.draw(p.psn_no, "40.00", setl_id, "k-late", pay_auth=fresh).ok
    finally:
        w.c.clock.advance(minutes=-11)


def test_a_member_draws_on_a_family_line_only_with_their_own_authorisation(world: World) -> None:
    w = world
    holder, member = w.c.people[10], w.c.people[11]
    _open(w, holder)
    holder_ok = w.c.client.pay_auth(holder.psn_no, w.c.activate(holder), "2000.00", member.psn_no, purpose="bind")
    assert w.bank.bind(holder.psn_no, member.psn_no, "spouse", True, "2000.00",
                       pay_auth=holder_ok.output.get("pay_auth", "")).ok
    # the rogue: a member draw with no face behind it, and one dressed as the holder's
    assert w.other_bank.draw(member.psn_no, "1800.00", "x", "rg1").infcode == InfCode.INVALID_INPUT
    st = _settle(w, member, "180.00")
    setl_id, auth = st.output["setlinfo"]["setl_id"], st.output.get("pay_auth", "")
    as_holder = w.bank.draw(holder.psn_no, "180.00", setl_id, "m0", pay_auth=auth)
    assert as_holder.err_code == "pay_auth_mismatch"  # the member authorised it, the holder did not
    ok = w.bank.draw(member.psn_no, "180.00", setl_id, "m1", pay_auth=auth)
    assert ok.ok and _line(w, member.psn_no)["holder"] == holder.psn_no
    # within the member's cap only (kiosk.credit): 1900.00 more this month is refused, auth or not
    st2 = _settle(w, member, "1900.00")
    capped = w.bank.draw(member.psn_no, "1900.00", st2.output["setlinfo"]["setl_id"], "m2",
                         pay_auth=st2.output["pay_auth"])
    assert capped.err_code == "member_cap_exceeded"


# ---- refunds, captures, releases, reversals: only the institution that drew, only its own ----------
def test_another_institution_cannot_refund_capture_release_or_reverse(world: World) -> None:
    w = world
    p = w.c.people[12]
    _open(w, p)
    st = _settle(w, p, "250.00")
    setl_id = st.output["setlinfo"]["setl_id"]
    assert w.bank.draw(p.psn_no, "250.00", setl_id, "k-12", pay_auth=st.output.get("pay_auth", "")).ok

    theirs = w.other_bank.refund(setl_id, "2.00", "rf-x")
    none = w.other_bank.refund("S-never-drawn", "2.00", "rf-y")
    assert theirs.err_code == "unknown_ref" and _answer_fields(theirs) == _answer_fields(none)
    # the bank's own keys are the caller's: the rogue reversing "k-12" reaches nothing of ours
    assert w.other_bank.reverse_draw("k-12", p.psn_no).output["result"] == "not_drawn"
    # the hospital's whole refund still goes through (the draw was not nibbled at) - and never above it
    assert w.bank.refund(setl_id, "250.01", "rf-over").err_code == "exceeds_original"
    assert w.bank.refund(setl_id, "250.00", "rf-whole").ok

    # a deposit hold: the rogue can neither capture nor release it
    hold_ref = "ADM-" + secrets.token_hex(4)
    token = w.c.activate(p)
    pa = w.c.client.pay_auth(p.psn_no, token, "1000.00", hold_ref)
    assert pa.ok
    stolen = w.other_bank.hold(p.psn_no, "1000.00", hold_ref, "h-x", pay_auth=pa.output["pay_auth"])
    assert stolen.err_code == "pay_auth_mismatch"
    assert w.bank.hold(p.psn_no, "1000.00", hold_ref, "h-1", pay_auth=pa.output["pay_auth"]).ok
    for theirs, none in ((w.other_bank.capture(hold_ref, "10.00", "c-x"), w.other_bank.capture("ADM-none", "10.00", "c-y")),
                         (w.other_bank.release(hold_ref, "r-x"), w.other_bank.release("ADM-none", "r-y"))):
        assert theirs.err_code == "unknown_ref" and _answer_fields(theirs) == _answer_fields(none)
    assert w.bank.capture(hold_ref, "1000.01", "c-over").err_code == "exceeds_hold"
    cap = w.bank.capture(hold_ref, "600.00", "c-1")
    assert cap.ok and cap.output["released"] == "400.00"
    owner = w.bank_db.read(lambda tx: tx.fetch_one("SELECT fixmedins_code, app_id FROM credit_draws WHERE ref = ?",
                                                   (hold_ref,)))
    assert tuple(owner) == (INSTITUTION, w.c.app_id)  # the captured draw belongs to the hold's institution
    assert w.other_bank.refund(hold_ref, "1.00", "rf-z").err_code == "unknown_ref"
    assert check_bank(w.bank_db)["balanced"]


def test_a_hold_authorisation_needs_the_payers_own_face_token(world: World) -> None:
    w = world
    p, q = w.c.people[13], w.c.people[14]
    token_q = w.c.activate(q)
    a = w.c.client.pay_auth(p.psn_no, token_q, "100.00", "ADM-q")
    assert a.infcode == InfCode.IDENTITY_MISMATCH
    b = w.other_centre.pay_auth(q.psn_no, token_q, "100.00", "ADM-q")  # a token issued to another terminal
    assert b.infcode == InfCode.IDENTITY_MISMATCH


def test_two_institutions_equal_keys_never_meet(world: World) -> None:
    w = world
    p = w.c.people[15]
    _open(w, p)
    st = _settle(w, p, "30.00")
    setl_id = st.output["setlinfo"]["setl_id"]
    # the other institution uses the very key first (for its own, refused-for-no-auth attempt) ...
    w.other_bank.draw(p.psn_no, "30.00", setl_id, "ORDER-1:draw")
    w.other_bank.reverse_draw("ORDER-1:draw", p.psn_no)  # ... and even blocks it in its own space
    # ... and the hospital's draw under the same key is untouched by either
    assert w.bank.draw(p.psn_no, "30.00", setl_id, "ORDER-1:draw", pay_auth=st.output.get("pay_auth", "")).ok


def test_linkage_resumes_a_draw_after_its_pay_auth_expired(world: World) -> None:
    """A terminal that comes back long after the settlement: the journaled pay_auth has expired;
    the draw is completed with the one 5203 re-issues, not reversed."""
    w = world
    p = w.c.people[16]
    _open(w, p)
    token = w.c.activate(p)
    medfee, feedetail = lines(("XC02", "66.00", "1"))
    journal = MemoryJournal()

    class Crash(Exception):
        pass

    def crash(step: str) -> None:
        if step == "settle":
            raise Crash

    lp = LinkedPayment(w.c.client, w.bank, journal, fault=crash)
    e = lp.begin("order-exp", head(p, token, medfee, acct_used_flag="0"), feedetail)
    with pytest.raises(Crash):
        lp.run(e)
    w.c.clock.advance(minutes=12)
    try:
        saved = journal.load("order-exp")
        done = LinkedPayment(w.c.client, w.bank, journal).resume(saved)  # 2207 replays (old pay_auth) ...
        assert done.state == "done", done.detail                          # ... 5203 re-issues it
        assert journal.load("order-exp").pay_auth
    finally:
        w.c.clock.advance(minutes=-12)


def test_a_reversal_by_key_never_touches_a_draw_for_another_ref(world: World) -> None:
    """Two orders that ended up with one key (two POS systems, one order id): the second order's
    reversal names its own settlement and leaves the first order's paid draw alone."""
    w = world
    p = w.c.people[17]
    _open(w, p)
    first = _settle(w, p, "90.00")
    first_id = first.output["setlinfo"]["setl_id"]
    assert w.bank.draw(p.psn_no, "90.00", first_id, "ORDER-7:draw", pay_auth=first.output.get("pay_auth", "")).ok
    second = _settle(w, p, "12.00")
    r = w.bank.reverse_draw("ORDER-7:draw", p.psn_no, ref=second.output["setlinfo"]["setl_id"])
    assert r.err_code == "key_ref_mismatch"
    principal = _line(w, p.psn_no)["principal_outstanding"]
    assert w.bank_db.read(lambda tx: tx.scalar("SELECT refunded_fen FROM credit_draws WHERE ref = ?",
                                               (first_id,))) == 0
    assert w.bank.reverse_draw("ORDER-7:draw", p.psn_no, ref=first_id).output["result"] == "reversed"
    assert _line(w, p.psn_no)["principal_outstanding"] != principal


def test_a_terminal_cannot_lend_a_line_without_the_holders_face(world: World) -> None:
    """A rogue terminal binding its accomplice to a victim's line, then drawing on it as that
    member, was the way round pay_auth: a binding needs the holder's own authorisation."""
    w = world
    victim, accomplice = w.c.people[18], w.c.people[19]
    _open(w, victim)
    plain = w.other_bank.bind(victim.psn_no, accomplice.psn_no, "spouse", True, None)
    assert plain.infcode == InfCode.NO_AUTHORISATION and plain.err_code == "pay_auth_required"
    # the accomplice's own face at the rogue terminal authorises nothing on the victim's line
    token = w.other_centre.activate(w.other_centre.seal_face(w.c.capture(accomplice.psn_no), "s-acc", "activate"),
                                    accomplice.certno, "s-acc")
    assert token.ok
    own = w.other_centre.pay_auth(accomplice.psn_no, token.output["ecToken"], "0.00", accomplice.psn_no,
                                  purpose="bind")
    assert own.ok
    as_victim = w.other_centre.pay_auth(victim.psn_no, token.output["ecToken"], "0.00", accomplice.psn_no,
                                        purpose="bind")
    assert as_victim.infcode == InfCode.IDENTITY_MISMATCH  # the token is the accomplice's
    forged = w.other_bank.bind(victim.psn_no, accomplice.psn_no, "spouse", True, None,
                               pay_auth=own.output["pay_auth"])
    assert forged.err_code == "pay_auth_mismatch"
    assert _line_code(w, accomplice.psn_no) == "not_bound"


def test_the_banks_own_channel_binds_only_with_the_operator_token(world: World) -> None:
    from kiosk.services.client import operator_bind

    w = world
    holder, member = w.c.people[20], w.c.people[21]
    _open(w, holder)
    http = w.bank.http
    denied = operator_bind("http://testserver", "not-the-operator", holder.psn_no, member.psn_no, "spouse", True,
                           "10.00", "k-op", http=http)
    assert denied["infcode"] == InfCode.UNKNOWN_TERMINAL
    assert _line_code(w, member.psn_no) == "not_bound"
    bad = operator_bind("http://testserver", w.admin_token, holder.psn_no, member.psn_no, "spouse", "yes", "10.00",
                        "k-op", http=http)
    assert bad["infcode"] == InfCode.INVALID_INPUT and bad["err_field"] == "consent"
    ok = operator_bind("http://testserver", w.admin_token, holder.psn_no, member.psn_no, "spouse", True, "10.00",
                       "k-op", http=http)
    assert ok["infcode"] == 0 and _line(w, member.psn_no)["holder"] == holder.psn_no


# ---- issue-13 follow-up: a line's existence, size and holder are the person's business -----------------
def _face_auth(w: World, p: Any, purpose: str, amount: str, ref: str, *, client: CentreClient | None = None,
               token: str | None = None) -> str:
    """The centre's pay_auth for `purpose` from the person's own face at the hospital's terminal (ec.payauth)."""
    a = (client or w.c.client).pay_auth(p.psn_no, token or w.c.activate(p), amount, ref, purpose=purpose)
    assert a.ok, a
    return str(a.output["pay_auth"])


def test_a_line_is_told_only_to_the_terminal_holding_the_payers_face(world: World) -> None:
    """Before: credit.line answered any registered terminal for any person number with the holder,
    limit, available credit and overdue state. Now: only with the payer's line proof from the centre,
    and only own/family, whether the line covers the amount and the last 4 of a family holder."""
    w = world
    p, nobody, member = w.c.people[22], w.c.people[23], w.c.people[9]
    _open(w, p)
    assert operator_call("http://testserver", w.admin_token, "bind",
                         {"holder": p.psn_no, "member": member.psn_no, "relation": "spouse", "consent": True,
                          "monthly_cap": "50.00", "key": f"b/{member.psn_no}"}, http=w.bank.http)["infcode"] == 0
    proof = _face_auth(w, p, "line", "120.00", "order-x")
    own = w.bank.line(p.psn_no, "120.00", pay_auth=proof)
    assert own.ok and own.output == {"payer": p.psn_no, "kind": "own", "amount": "120.00", "covers": "1",
                                     "holder_hint": ""}
    fam = w.bank.line(member.psn_no, "60.00", pay_auth=_face_auth(w, member, "line", "60.00", "order-y"))
    assert fam.output == {"payer": member.psn_no, "kind": "family", "amount": "60.00", "covers": "0",
                          "holder_hint": p.psn_no[-4:]}  # over the member's 50.00 cap; the holder's number stays
    none = w.other_bank.line(nobody.psn_no, "120.00")  # a person with no line: the one refusal
    assert none.err_code == "not_bound"
    expired_proof = _face_auth(w, p, "line", "120.00", "order-z")
    second = _second_terminal(w)
    for a in (w.other_bank.line(p.psn_no, "120.00"),                        # the rogue: a bare number
              w.other_bank.line(p.psn_no, "120.00", pay_auth=proof),        # ... with the hospital's proof
              second.line(p.psn_no, "120.00", pay_auth=proof),              # another terminal of the hospital
              w.bank.line(p.psn_no, "120.00"),                              # the hospital without the face
              w.bank.line(p.psn_no, "121.00", pay_auth=proof),              # another amount (no search)
              w.bank.line(nobody.psn_no, "120.00", pay_auth=proof),         # another person
              w.bank.line(p.psn_no, "120.00", pay_auth=_face_auth(w, p, "hold", "120.00", "ADM-l")),  # purpose
              w.bank.line(p.psn_no, "120.00", pay_auth=payauth.sign(payauth.PayAuth(
                  "PL1", p.psn_no, INSTITUTION, w.c.app_id, "x", 12000, "line", 2**40), Sm2PrivateKey.generate()))):
        assert _answer_fields(a) == _answer_fields(none), a
    w.c.clock.advance(minutes=11)
    try:
        assert _answer_fields(w.bank.line(p.psn_no, "120.00", pay_auth=expired_proof)) == _answer_fields(none)
    finally:
        w.c.clock.advance(minutes=-11)
    assert w.bank.line(p.psn_no, "120.00", pay_auth=proof).ok  # a read spends nothing: a retry reads again


def test_a_statement_only_for_the_holders_face_or_the_banks_channel(world: World) -> None:
    w = world
    p, nobody = w.c.people[22], w.c.people[23]
    _open(w, p)
    none = w.other_bank.statement(nobody.psn_no)
    assert none.err_code == "no_line"
    proof = _face_auth(w, p, "statement", "0.00", p.psn_no)
    for a in (w.other_bank.statement(p.psn_no), w.bank.statement(p.psn_no),
              w.other_bank.statement(p.psn_no, pay_auth=proof),
              w.bank.statement(p.psn_no, pay_auth=_face_auth(w, p, "line", "1.00", "x"))):
        assert _answer_fields(a) == _answer_fields(none), a
    mine = w.bank.statement(p.psn_no, pay_auth=proof)
    assert mine.ok and "members" in mine.output
    # a statement proof names the holder itself: the centre signs no other ref for it
    bad = w.c.client.pay_auth(p.psn_no, w.c.activate(p), "0.00", nobody.psn_no, purpose="statement")
    assert bad.infcode == InfCode.INVALID_INPUT
    op = operator_call("http://testserver", w.admin_token, "statement", {"holder": p.psn_no}, http=w.bank.http)
    assert op["infcode"] == 0 and op["output"]["draws"] == mine.output["draws"]
    assert operator_call("http://testserver", "nope", "statement", {"holder": p.psn_no},
                         http=w.bank.http)["infcode"] == InfCode.UNKNOWN_TERMINAL


def test_a_line_is_opened_only_on_the_applicants_face_with_the_centres_facts(world: World) -> None:
    """Before: credit.apply opened a line for any eligible person number, at the birth date and years
    insured the terminal claimed (a 70-year-old could be made 40, a new insured given the top tier)."""
    w = world
    p = w.c.people[2]
    bare = w.other_bank.apply(p.psn_no, p.brdy, 6)
    assert bare.infcode == InfCode.NO_AUTHORISATION and bare.err_code == "pay_auth_required"
    assert _line_code(w, p.psn_no) == "not_bound"  # nothing opened
    a = w.c.client.pay_auth(p.psn_no, w.c.activate(p), "0.00", "anything", purpose="apply")
    assert a.ok and a.output["ref"] == p.brdy  # the centre writes the birth date and years insured itself
    years = int(a.output["amount"])
    auth = a.output["pay_auth"]
    for brdy, yrs, why in (("1990-01-01", years, "ref"), (p.brdy, years + 5, "amount")):
        lie = w.bank.apply(p.psn_no, brdy, yrs, pay_auth=auth)
        assert lie.err_code == "pay_auth_mismatch" and why in lie.err_msg, lie
    assert w.other_bank.apply(p.psn_no, p.brdy, years, pay_auth=auth).err_code == "pay_auth_mismatch"
    first = w.bank.apply(p.psn_no, p.brdy, years, pay_auth=auth)
    assert first.ok or first.err_code == "ineligible_age", first
    assert w.bank.apply(p.psn_no, p.brdy, years, pay_auth=auth).err_code in ("pay_auth_used", "ineligible_age")


def test_a_binding_ends_only_by_the_holder_or_the_member(world: World) -> None:
    """Before: credit.unbind needed no authorisation: any terminal could cut a family off its line."""
    w = world
    holder, member, stranger = w.c.people[0], w.c.people[1], w.c.people[5]
    _open(w, holder)
    assert operator_call("http://testserver", w.admin_token, "bind",
                         {"holder": holder.psn_no, "member": member.psn_no, "relation": "spouse", "consent": True,
                          "monthly_cap": None, "key": f"b/{member.psn_no}"}, http=w.bank.http)["infcode"] == 0
    cut = w.other_bank.unbind(holder.psn_no, member.psn_no)
    assert cut.infcode == InfCode.NO_AUTHORISATION and cut.err_code == "pay_auth_required"
    by_stranger = w.bank.unbind(holder.psn_no, member.psn_no,
                                pay_auth=_face_auth(w, stranger, "unbind", "0.00", member.psn_no))
    assert by_stranger.err_code == "pay_auth_mismatch"
    assert _line(w, member.psn_no)["holder"] == holder.psn_no  # still bound
    leave = w.bank.unbind(holder.psn_no, member.psn_no, pay_auth=_face_auth(w, member, "unbind", "0.00", member.psn_no))
    assert leave.ok and _line_code(w, member.psn_no) == "not_bound"


def test_a_repayment_needs_the_holders_face(world: World) -> None:
    """Before: credit.repay answered any terminal for any number: `no_line` / `overpayment` told whether
    a person has a line and (by halving) what they owe."""
    w = world
    p, nobody = w.c.people[22], w.c.people[23]
    _open(w, p)
    for who in (p, nobody):
        a = w.other_bank.repay(who.psn_no, "99999.00", f"rp-{who.psn_no}")
        assert a.infcode == InfCode.NO_AUTHORISATION and a.err_code == "pay_auth_required"
    over = w.bank.repay(p.psn_no, "99999.00", "rp-own", pay_auth=_face_auth(w, p, "repay", "99999.00", "rp"))
    assert over.err_code == "overpayment"


def _second_terminal(w: World) -> BankClient:
    """Another registered terminal of the hospital itself (same institution, its own appId and key)."""
    key = Sm2PrivateKey.generate()
    app_id, secret = "KIOSKTWIN" + secrets.token_hex(5).upper(), secrets.token_hex(16)
    w.bank.http.app.state.gateway.register_terminal(app_id, secret, key.public_key().to_bytes().hex(), INSTITUTION)
    return BankClient("http://testserver", ServiceIdentity(app_id, secret, key, INSTITUTION), http=w.bank.http,
                      clock=w.c.clock)


def test_a_pay_auth_replayed_at_the_same_institutions_other_terminal_is_refused(world: World) -> None:
    w = world
    p = w.c.people[6]
    st = _settle(w, p, "20.00")
    a = _second_terminal(w).draw(p.psn_no, "20.00", st.output["setlinfo"]["setl_id"], "twin-1",
                                 pay_auth=st.output["pay_auth"])
    assert a.err_code == "pay_auth_mismatch" and "terminal" in a.err_msg


def test_a_member_cannot_draw_on_a_line_named_by_holder_without_being_bound(world: World) -> None:
    """A face-proved accomplice's own draw authorisation, sent with `holder` = a victim's number."""
    w = world
    victim, accomplice = w.c.people[22], w.c.people[14]
    _open(w, victim)
    st = _settle(w, accomplice, "15.00")
    d = w.bank.call("credit.draw", {"payer": accomplice.psn_no, "amount": "15.00", "ref": st.output["setlinfo"]
                                    ["setl_id"], "key": "acc-1", "holder": victim.psn_no,
                                    "pay_auth": st.output["pay_auth"]})
    assert not d.ok and d.err_code in ("not_bound", "no_line")
    assert _line(w, victim.psn_no)["principal_outstanding"] == "0.00"


def test_a_deposit_hold_never_takes_a_settlements_ref(world: World) -> None:
    """Before: ec.payauth signed a hold for any ref, so a rogue terminal, with its accomplice's face, held
    (and captured) a deposit under the hospital's fresh setl_id: the hospital's draw for that settlement
    was refused (ref used), its settlement reversed, and the bank kept a draw with the hospital's setl_id
    made by another institution - which the cross-party check did not see (a captured deposit)."""
    from kiosk.app.crosscheck import check_parties

    w = world
    victim, accomplice = w.c.people[7], w.c.people[15]
    _open(w, victim)
    _open(w, accomplice)
    st = _settle(w, victim, "33.00")
    setl_id = st.output["setlinfo"]["setl_id"]
    token = w.other_centre.activate(w.other_centre.seal_face(w.c.capture(accomplice.psn_no), "s-h", "activate"),
                                    accomplice.certno, "s-h")
    assert token.ok
    asked = w.other_centre.pay_auth(accomplice.psn_no, token.output["ecToken"], "1.00", setl_id, purpose="hold")
    assert asked.infcode == InfCode.INVALID_INPUT and "ref" in asked.err_msg  # the centre signs no such hold
    # even with a (leaked or old-centre) signed hold for that ref, the bank refuses to hold under it
    signed = pay_auth(w.c, accomplice.psn_no, setl_id, "1.00", purpose="hold", app_id=w.other_app_id,
                      institution=OTHER)
    h = w.other_bank.hold(accomplice.psn_no, "1.00", setl_id, "h-steal", pay_auth=signed)
    assert h.infcode == InfCode.INVALID_INPUT and "ref" in h.err_msg
    assert w.bank_db.read(lambda tx: tx.scalar("SELECT COUNT(*) FROM credit_holds WHERE ref = ?", (setl_id,))) == 0
    assert w.bank.draw(victim.psn_no, "33.00", setl_id, "k-v", pay_auth=st.output["pay_auth"]).ok
    rep = check_parties(w.c.db, w.bank_db)
    assert not [f for f in rep.mismatches if f.setl_id == setl_id], rep.mismatches


def test_the_cross_party_check_names_a_hold_under_a_settlements_ref(world: World) -> None:
    """The books of the attack above, written as an older bank would have let them be: the check exits
    with `hold_on_settlement_ref` (open hold, then captured)."""
    from kiosk.app.crosscheck import check_parties
    from kiosk.credit import CreditService, Owner

    w = world
    victim, accomplice = w.c.people[8], w.c.people[16]
    _open(w, accomplice)
    st = _settle(w, victim, "21.00")
    setl_id = st.output["setlinfo"]["setl_id"]
    credit = CreditService(w.bank_db, w.c.clock)  # below the service's door: what the old bank did
    assert credit.hold("old/h", accomplice.psn_no, 100, setl_id, owner=Owner(OTHER, w.other_app_id)).ok
    kinds = {f.kind for f in check_parties(w.c.db, w.bank_db).mismatches if f.setl_id == setl_id}
    assert kinds == {"hold_on_settlement_ref"}
    assert credit.capture("old/c", setl_id, 100, institution=OTHER).ok
    kinds = {f.kind for f in check_parties(w.c.db, w.bank_db).mismatches if f.setl_id == setl_id}
    assert "hold_on_settlement_ref" in kinds


# ---- family mutual aid: the patient's face, not just a typed ID number ------------------------------------
def _spouses(w: World) -> tuple[Any, Any]:
    """A couple on record (the seed pairs 2k/2k+1 as spouses)."""
    return w.c.people[12], w.c.people[13]


def test_mutual_aid_is_authorised_and_revoked_only_by_a_face_proved_party(world: World) -> None:
    """Before: any registered terminal could (1) try ID numbers against a person number through
    mulaid.auth ("not the relative's ID number" vs the relation checks: an ID-number oracle) and
    authorise a relative's account for the patient with no one present, and (2) revoke any family's
    authorisation, the answer telling whether one existed."""
    w = world
    a, spouse = _spouses(w)
    stranger = w.c.people[20]
    rogue = w.other_centre
    guesses = [rogue.call("mulaid.auth", {"data": {"psn_no": a.psn_no, "auth_psn_no": spouse.psn_no,
                                                   "auth_certno": certno, "relation": "spouse",
                                                   "mdtrt_cert_no": tok}})
               for certno in (spouse.certno, stranger.certno) for tok in ("EC.x.1.y", w.c.activate(a))]
    assert all(g.infcode in (InfCode.INVALID_INPUT, InfCode.IDENTITY_MISMATCH) for g in guesses), guesses
    assert guesses[1].err_msg == guesses[3].err_msg  # the right and a wrong ID number: one answer
    assert w.c.db.read(lambda tx: tx.scalar("SELECT COUNT(*) FROM centre_mulaid WHERE psn_no = ?", (a.psn_no,))) == 0
    # the patient's face at the hospital, the relative's ID number typed: authorised
    tok = w.c.activate(a)
    assert w.c.client.mulaid_authorise(a.psn_no, spouse.psn_no, spouse.certno, "spouse", ec_token=tok).ok
    # the rogue cannot end it, not even with a stranger's real face at its own terminal
    st_tok = rogue.activate(rogue.seal_face(w.c.capture(stranger.psn_no), "s-m", "activate"), stranger.certno, "s-m")
    assert st_tok.ok
    for t in ("EC.x.1.y", tok, st_tok.output["ecToken"]):
        r = rogue.mulaid_revoke(a.psn_no, spouse.psn_no, t)
        assert r.infcode in (InfCode.INVALID_INPUT, InfCode.IDENTITY_MISMATCH) and "revoked" not in r.output
    assert w.c.db.read(lambda tx: tx.scalar("SELECT COUNT(*) FROM centre_mulaid WHERE psn_no = ?", (a.psn_no,))) == 1
    # the relative withdraws consent with their own face
    assert w.c.client.mulaid_revoke(a.psn_no, spouse.psn_no, w.c.activate(spouse)).ok
    assert w.c.db.read(lambda tx: tx.scalar("SELECT COUNT(*) FROM centre_mulaid WHERE psn_no = ?", (a.psn_no,))) == 0


def test_a_typed_id_number_settles_nothing_and_reads_no_balance(world: World) -> None:
    """Before: 2206/2207 with mdtrt_cert_type 02 (a typed ID number, which is no secret) let any
    registered terminal read a person's account balance from a pre-settlement and spend it (and an
    authorised relative's) on a bill at its own institution, with nobody at the counter."""
    w = world
    victim, other = w.c.people[4], w.c.people[5]
    bal = w.c.db.read(lambda tx: tx.scalar("SELECT balc FROM centre_persons WHERE psn_no = ?", (victim.psn_no,)))
    medfee, feedetail = lines(("XA01", "30.00", "1"))
    answers = []
    for cert in (victim.certno, other.certno):  # the right and a wrong ID number
        h = {"psn_no": victim.psn_no, "mdtrt_cert_type": "02", "mdtrt_cert_no": cert, "medfee_sumamt": medfee,
             "insutype": victim.insutype, "acct_used_flag": "1"}
        answers += [w.other_centre.presettle(h, feedetail), w.other_centre.settle(h, feedetail)]
    for a in answers:
        assert a.infcode == InfCode.IDENTITY_MISMATCH and a.err_code == "face_auth_required" and not a.output, a
    assert len({(a.err_code, a.err_msg) for a in answers}) == 1  # no oracle on whose ID number it is
    assert w.c.db.read(lambda tx: tx.scalar("SELECT balc FROM centre_persons WHERE psn_no = ?",
                                            (victim.psn_no,))) == bal
    assert w.c.db.read(lambda tx: tx.scalar("SELECT COUNT(*) FROM centre_settlements WHERE fixmedins_code = ?",
                                            (OTHER,))) == 0


def test_failed_activations_lock_an_id_number_only_at_the_institution_that_tried(world: World) -> None:
    """Before: three random faces with a victim's ID number at any terminal locked the victim's activation
    at every terminal for 30 minutes (again and again), and only an ID number the centre knows ever
    answered "locked" (an oracle on who is insured)."""
    from datetime import date

    from kiosk.services.seed import certno_for

    w = world
    victim, stranger = w.c.people[21], w.c.people[20]
    unknown = certno_for("370202", date(1980, 1, 1), 999, False)  # valid, held by nobody
    rogue = w.other_centre
    seen: dict[str, list[tuple[int, str]]] = {}
    for certno in (victim.certno, unknown):
        for i in range(4):
            sid = f"lk{i}{certno[-4:]}"
            a = rogue.activate(rogue.seal_face(w.c.capture(stranger.psn_no), sid, "activate"), certno, sid)
            seen.setdefault(certno, []).append((a.infcode, a.err_msg.split(";")[0]))
    assert seen[victim.certno] == seen[unknown]  # a known and an unknown ID number lock alike
    assert [c for c, _ in seen[unknown]] == [InfCode.IDENTITY_MISMATCH] * 2 + [InfCode.LOCKED] * 2
    # the victim activates at the hospital meanwhile: the rogue's lock is the rogue's own
    assert w.c.activate(victim).startswith("EC.")


@pytest.mark.parametrize("purpose", ["hold", "repay", "apply"])
def test_every_money_or_line_act_refuses_a_replayed_moved_or_expired_authorisation(world: World,
                                                                                    purpose: str) -> None:
    """The single-use proofs (not only a draw's): at the other institution's terminal, for another
    amount, after expiry, and a second time under another key - each refused, nothing done."""
    w = world
    p = w.c.people[19] if purpose == "apply" else w.c.people[17]  # 19: no line yet
    if purpose != "apply":
        _open(w, p)
    if purpose == "repay":  # something to repay
        st = _settle(w, p, "50.00")
        assert w.bank.draw(p.psn_no, "50.00", st.output["setlinfo"]["setl_id"], f"rp-d-{secrets.token_hex(3)}",
                           pay_auth=st.output["pay_auth"]).ok
    ref = "ADM-" + secrets.token_hex(4)

    def auth(**kw: Any) -> str:
        if purpose == "apply":
            from .conftest import apply_auth
            return apply_auth(w.c, p.psn_no, p.brdy, 3, **kw)
        return pay_auth(w.c, p.psn_no, ref, "10.00", purpose=purpose, **kw)

    def act(client: BankClient, token: str, key: str, amount: str = "10.00") -> Answer:
        key = f"{purpose}-{ref}-{key}"
        if purpose == "hold":
            return client.hold(p.psn_no, amount, ref, key, pay_auth=token)
        if purpose == "repay":
            return client.repay(p.psn_no, amount, key, pay_auth=token)
        return client.apply(p.psn_no, p.brdy, 3 if amount == "10.00" else 4, pay_auth=token)

    good, old = auth(), auth()
    assert act(w.other_bank, good, "x1").err_code == "pay_auth_mismatch"
    assert act(w.bank, good, "x2", amount="11.00").err_code == "pay_auth_mismatch"
    w.c.clock.advance(minutes=11)
    try:
        assert act(w.bank, old, "x3").err_code == "pay_auth_expired"
    finally:
        w.c.clock.advance(minutes=-11)
    first = act(w.bank, good, "k1")
    assert first.ok or (purpose == "apply" and first.err_code == "ineligible_age"), first
    if first.ok:
        assert act(w.bank, good, "k2").err_code == "pay_auth_used"


@pytest.mark.parametrize("act, body", [
    ("apply", {"holder": "P37020200000001", "birth_date": "1980-01-01", "insured_years": 10, "key": "k-a"}),
    ("bind", {"holder": "P37020200000001", "member": "P37020200000002", "relation": "spouse", "consent": True,
              "monthly_cap": None, "key": "k-b"}),
    ("unbind", {"holder": "P37020200000001", "member": "P37020200000002", "key": "k-u"}),
    ("line", {"payer": "P37020200000001"}),
    ("repay", {"holder": "P37020200000001", "amount": "1.00", "key": "k-r"}),
    ("statement", {"holder": "P37020200000001"}),
])
def test_every_operator_route_of_the_bank_refuses_a_terminal_without_the_operator_token(
        world: World, act: str, body: dict[str, Any]) -> None:
    """A terminal (or anyone) without the operator token gets one identical refusal from each /admin act,
    whatever the body says, and nothing of the line."""
    w = world
    answers = []
    for token in ("", "not-the-operator", w.admin_token[:-1]):
        r = w.bank.http.post(f"/admin/{act}", json=body, headers={"x-admin-token": token} if token else {})
        answers.append((r.status_code, {k: v for k, v in r.json().items() if k in ("infcode", "err_code", "err_msg")}))
    assert len(set(map(str, answers))) == 1, answers
    assert answers[0][0] == 401 and answers[0][1]["infcode"] == InfCode.UNKNOWN_TERMINAL
    assert "P37020200000001" not in str(answers)
