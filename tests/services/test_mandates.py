"""Senseless outpatient payment at the parties (issue 17): the patient's mandate at the bank, the visit at
the centre, charges of the visit settled and drawn without the patient, and each party's refusals.
Every red-team test is someone else trying it: another institution, another terminal, another person,
a proof of another purpose, a replay, a token after its visit ended."""
from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any, Iterator

import pytest
from fastapi.testclient import TestClient

from kiosk.clock import SHANGHAI
from kiosk.security.sm import Sm2PrivateKey
from kiosk.services import payauth
from kiosk.services.bank.app import check_bank, create_app as create_bank
from kiosk.services.centre.check import check_centre
from kiosk.services.centre.service import notices_of
from kiosk.services.client import BankClient, CentreClient, ServiceIdentity, operator_call
from kiosk.services.protocol import Answer, InfCode
from kiosk.storage import Database, open_database

from .conftest import INSTITUTION, Centre, fresh_pg, head, lines, make_centre, pay_auth, pg_url

OTHER = "H37020200001"  # another institution of the same area


@dataclass
class World:
    c: Centre
    bank: BankClient
    bank_db: Database
    bank_service: Any
    other_centre: CentreClient   # another institution's terminal
    other_bank: BankClient
    twin_centre: CentreClient    # a second terminal of the SAME institution
    twin_bank: BankClient
    admin_token: str
    used: set[str]


def _fields(a: Answer) -> tuple[Any, ...]:
    return a.infcode, a.err_code, a.err_msg, a.output


def _terminal(c: Centre, bgw: Any, bhttp: TestClient, prefix: str, institution: str) -> tuple[CentreClient, BankClient]:
    key = Sm2PrivateKey.generate()
    app_id, secret = prefix + secrets.token_hex(5).upper(), secrets.token_hex(16)
    c.gateway.register_terminal(app_id, secret, key.public_key().to_bytes().hex(), institution)
    bgw.register_terminal(app_id, secret, key.public_key().to_bytes().hex(), institution)
    centre = CentreClient("http://testserver", ServiceIdentity(app_id, secret, key, institution), http=c.http,
                          clock=c.clock)
    centre.sign_in("someone")
    return centre, BankClient("http://testserver", ServiceIdentity(app_id, secret, key, institution), http=bhttp,
                              clock=c.clock)


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def world(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("mandate")
    if request.param == "sqlite":
        c = make_centre(f"sqlite:///{tmp}/centre.db", tmp, people=80)
        bdb = open_database(f"sqlite:///{tmp}/bank.db")
    else:
        url = pg_url()
        if url is None:
            pytest.skip("KIOSK_TEST_PG_URL not set (scripts/test provides it; required under CI)")
        c = make_centre(fresh_pg(url), tmp, people=80)
        bdb = open_database(fresh_pg(url))
    app = create_bank(bdb, data_dir=tmp, clock=c.clock)
    bgw = app.state.gateway
    bgw.register_terminal(c.app_id, c.app_secret, c.key.public_key().to_bytes().hex(), INSTITUTION)
    bhttp = TestClient(app)
    bhttp.__enter__()
    c.http.__enter__()
    bank = BankClient("http://testserver", ServiceIdentity(c.app_id, c.app_secret, c.key, INSTITUTION), http=bhttp,
                      clock=c.clock)
    other_centre, other_bank = _terminal(c, bgw, bhttp, "KIOSKOTHER", OTHER)
    twin_centre, twin_bank = _terminal(c, bgw, bhttp, "KIOSKTWIN", INSTITUTION)
    from kiosk.services.http import admin_token

    yield World(c, bank, bdb, app.state.service, other_centre, other_bank, twin_centre, twin_bank, admin_token(tmp), set())
    bhttp.__exit__(None, None, None)
    c.http.__exit__(None, None, None)
    bdb.close()
    c.db.close()


def _person(w: World, *, line: bool = True) -> Any:
    """A fresh insured person of working age (each test its own), with a line opened at the bank."""
    for p in w.c.people:
        born = date.fromisoformat(p.brdy)
        age = 2026 - born.year
        if p.psn_no in w.used or not 20 <= age <= 58:
            continue
        w.used.add(p.psn_no)
        if line:
            a = operator_call("http://testserver", w.admin_token, "apply",
                              {"holder": p.psn_no, "birth_date": p.brdy, "insured_years": 6, "key": f"open/{p.psn_no}"},
                              http=w.bank.http)
            assert a["infcode"] == 0, a
        return p
    raise AssertionError("no more people")


def _until(w: World, days: int = 30) -> date:
    return w.c.clock.now().astimezone(SHANGHAI).date() + timedelta(days=days)


def _mandate_auth(w: World, p: Any, *, visit: int = 50_000, day: int = 100_000, until: date | None = None,
                  lines_: str = "own", centre: CentreClient | None = None) -> Answer:
    token = w.c.activate(p) if centre is None else _activate_at(w, centre, p)
    terms = payauth.format_terms(visit, day, until or _until(w), lines_)
    return (centre or w.c.client).pay_auth(p.psn_no, token, f"{visit // 100}.{visit % 100:02d}", terms,
                                           purpose="mandate")


def _activate_at(w: World, centre: CentreClient, p: Any) -> str:
    sid = secrets.token_hex(4)
    a = centre.activate(centre.seal_face(w.c.capture(p.psn_no), sid, "activate"), p.certno, sid)
    assert a.ok, a
    return a.output["ecToken"]


def _give(w: World, p: Any, **kw: Any) -> dict[str, Any]:
    a = _mandate_auth(w, p, **kw)
    assert a.ok, a
    m = w.bank.mandate(p.psn_no, "mandate-" + secrets.token_hex(4), a.output["pay_auth"])
    assert m.ok, m
    return dict(m.output)


def _visit(w: World, p: Any, centre: CentreClient | None = None) -> dict[str, Any]:
    centre = centre or w.c.client
    token = w.c.activate(p) if centre is w.c.client else _activate_at(w, centre, p)
    v = centre.open_visit(p.psn_no, token, p.insutype)
    assert v.ok, v
    return dict(v.output)


def _settle(w: World, p: Any, v: dict[str, Any], amount: str, centre: CentreClient | None = None,
            *, token: str | None = None, mdtrt_id: str | None = None) -> Answer:
    medfee, feedetail = lines(("XC02", amount, "1"))  # class C: all of it is the cash share
    return (centre or w.c.client).settle(head(p, token or v["visit_token"], medfee, acct_used_flag="0",
                                              mdtrt_id=mdtrt_id or v["mdtrt_id"]), feedetail)


def _charge(w: World, p: Any, v: dict[str, Any], m: dict[str, Any], amount: str,
            bank: BankClient | None = None) -> tuple[Answer, Answer]:
    """One HIS charge of the visit: 2207 with the visit token, then the senseless draw of its cash share."""
    s = _settle(w, p, v, amount)
    assert s.ok, s
    setl = s.output["setlinfo"]
    d = (bank or w.bank).draw(p.psn_no, setl["psn_cash_pay"], setl["setl_id"], "k" + secrets.token_hex(8),
                              pay_auth=s.output["pay_auth"], mandate_id=m["mandate_id"], visit=v["mdtrt_id"])
    return s, d


def _drawn(w: World, ref: str) -> int | None:
    r = w.bank_db.read(lambda tx: tx.scalar("SELECT original_fen FROM credit_draws WHERE ref = ?", (ref,)))
    return None if r is None else int(r)


def _books(w: World) -> None:
    assert check_centre(w.c.db)["balanced"]
    assert check_bank(w.bank_db)["balanced"]


# ---- the happy path: one face at registration, then charges without the patient ------------------------
def test_mandate_visit_and_three_charges_without_the_patient(world: World) -> None:
    w = world
    p = _person(w)
    m = _give(w, p, visit=50_000, day=100_000)
    assert m["mandate_id"].startswith("M") and m["payer"] == p.psn_no and m["fixmedins_code"] == INSTITUTION
    assert (m["per_visit"], m["per_day"], m["lines"]) == ("500.00", "1000.00", "own")
    assert m["holders"] == {"own": p.psn_no, "family": None}
    v = _visit(w, p)
    assert v["mdtrt_id"].startswith("V") and v["visit_token"].startswith("VT.")
    end = datetime(2026, 3, 10, tzinfo=SHANGHAI) + timedelta(days=1)
    assert int(v["exp"]) == int(end.timestamp()) - 1  # the last second of the Shanghai day

    for amount in ("120.00", "80.00", "150.00"):
        w.c.clock.advance(minutes=40)  # the patient is elsewhere; the token needs no fresh face
        s, d = _charge(w, p, v, m, amount)
        claims = payauth.verify(s.output["pay_auth"], w.c.service.keys.sm2.public_key())
        assert (claims.purpose, claims.ref) == ("senseless", f"{s.output['setlinfo']['setl_id']}/{v['mdtrt_id']}")
        assert d.ok, d
        assert _drawn(w, s.output["setlinfo"]["setl_id"]) == int(amount.replace(".", ""))
    # a fourth above the per-visit cap (350 used of 500): needs the patient, nothing drawn
    s, d = _charge(w, p, v, m, "160.00")
    assert (d.infcode, d.err_code) == (InfCode.BUSINESS_REFUSED, "mandate_cap_visit")
    assert _drawn(w, s.output["setlinfo"]["setl_id"]) is None
    g = w.bank.mandate_get(m["mandate_id"], visit=v["mdtrt_id"])
    assert g.ok and (g.output["state"], g.output["used_visit"], g.output["used_today"]) == ("active", "350.00",
                                                                                          "350.00")
    # the refused draw did not spend the pay_auth: once the cap allows (a counter payment would take it with
    # the patient's face), the terminal reverses the settlement; here: the same pay_auth is still unused
    assert w.bank_db.read(lambda tx: tx.scalar("SELECT COUNT(*) FROM bank_pay_auths WHERE ref = ?",
                                               (f"{s.output['setlinfo']['setl_id']}/{v['mdtrt_id']}",))) == 0
    assert w.c.client.reverse(s.output["setlinfo"]["setl_id"], p.psn_no).ok
    # the day-end: the bank's clearing statement has the three draws, marked with mandate and visit
    day = w.c.clock.now().astimezone(SHANGHAI).date().isoformat()
    cl = w.bank.call("credit.clearing", {"day": day})
    mine = [e for e in cl.output["entries"] if e.get("visit") == v["mdtrt_id"]]
    assert [(e["kind"], e["amount"], e["mandate_id"]) for e in mine] == [
        ("draw", a, m["mandate_id"]) for a in ("120.00", "80.00", "150.00")]
    _books(w)


def test_concurrent_charges_from_two_departments_over_http_never_pass_the_cap(world: World) -> None:
    """Eight charges of one visit settled, then drawn at once (threads through the bank's HTTP front):
    300.00 per visit lets exactly three of 100.00 through; the others spend nothing."""
    import threading

    w = world
    p = _person(w)
    m = _give(w, p, visit=30_000, day=100_000)
    v = _visit(w, p)
    settled = [_settle(w, p, v, "100.00") for _ in range(8)]
    assert all(s.ok for s in settled)
    out: list[Answer] = []
    lock = threading.Lock()
    go = threading.Barrier(len(settled))

    def draw(s: Answer) -> None:
        setl = s.output["setlinfo"]
        go.wait(timeout=30)
        a = w.bank.draw(p.psn_no, "100.00", setl["setl_id"], "k" + setl["setl_id"], pay_auth=s.output["pay_auth"],
                        mandate_id=m["mandate_id"], visit=v["mdtrt_id"])
        with lock:
            out.append(a)

    threads = [threading.Thread(target=draw, args=(s,)) for s in settled]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert sorted(a.err_code or "ok" for a in out) == ["mandate_cap_visit"] * 5 + ["ok"] * 3
    drawn = [s for s in settled if _drawn(w, s.output["setlinfo"]["setl_id"]) is not None]
    assert len(drawn) == 3
    used = w.bank_db.read(lambda tx: tx.scalar("SELECT COUNT(*) FROM bank_pay_auths WHERE psn_no = ? AND "
                                               "purpose = 'senseless'", (p.psn_no,)))
    assert used == 3
    for s in settled:
        if s not in drawn:  # the terminal reverses what was not drawn (a counter payment takes it over)
            assert w.c.client.reverse(s.output["setlinfo"]["setl_id"], p.psn_no).ok
    _books(w)


def test_mandate_revocation_mid_visit_stops_the_next_charge(world: World) -> None:
    w = world
    p = _person(w)
    m = _give(w, p)
    v = _visit(w, p)
    assert _charge(w, p, v, m, "20.00")[1].ok
    r = w.bank.mandate_revoke(m["mandate_id"], "rv-" + secrets.token_hex(4))  # the institution (POS revoke)
    assert r.ok and r.output["state"] == "revoked"
    s, d = _charge(w, p, v, m, "20.00")
    assert (d.infcode, d.err_code) == (InfCode.BUSINESS_REFUSED, "mandate_revoked")
    assert _drawn(w, s.output["setlinfo"]["setl_id"]) is None
    # revoking again answers the state again
    again = w.bank.mandate_revoke(m["mandate_id"], "rv-" + secrets.token_hex(4))
    assert again.ok and again.output["state"] == "revoked"


def test_a_lost_draw_answer_is_replayed_by_key_even_after_revocation(world: World) -> None:
    w = world
    p = _person(w)
    m = _give(w, p)
    v = _visit(w, p)
    s = _settle(w, p, v, "33.00")
    setl = s.output["setlinfo"]
    key = "k" + secrets.token_hex(8)
    first = w.bank.draw(p.psn_no, "33.00", setl["setl_id"], key, pay_auth=s.output["pay_auth"],
                        mandate_id=m["mandate_id"], visit=v["mdtrt_id"])
    assert first.ok
    assert w.bank.mandate_revoke(m["mandate_id"], "rv-" + secrets.token_hex(4)).ok
    # 5203 re-issues the senseless pay_auth (same id: the bank draws once) to the terminal that settled
    q = w.c.client.query(p.psn_no, setl_id=setl["setl_id"])
    assert payauth.verify(q.output["pay_auth"], w.c.service.keys.sm2.public_key()).purpose == "senseless"
    again = w.bank.draw(p.psn_no, "33.00", setl["setl_id"], key, pay_auth=q.output["pay_auth"],
                        mandate_id=m["mandate_id"], visit=v["mdtrt_id"])
    assert again.ok and again.output == first.output
    assert _drawn(w, setl["setl_id"]) == 3300
    _books(w)


def test_refund_of_a_senseless_draw_by_its_institution_only(world: World) -> None:
    w = world
    p = _person(w)
    m = _give(w, p)
    v = _visit(w, p)
    s, d = _charge(w, p, v, m, "45.00")
    assert d.ok
    setl_id = s.output["setlinfo"]["setl_id"]
    theirs = w.other_bank.refund(setl_id, "45.00", "rf-" + secrets.token_hex(4))
    none = w.other_bank.refund("S20260310" + "0" * 16, "45.00", "rf-" + secrets.token_hex(4))
    assert theirs.err_code == "unknown_ref" and _fields(theirs) == _fields(none)
    assert w.c.client.reverse(setl_id, p.psn_no).ok  # the institution's own refund: 2208, then the credit
    r = w.twin_bank.refund(setl_id, "45.00", "rf-" + secrets.token_hex(4))  # any terminal of the institution
    assert r.ok, r
    _books(w)


def test_a_reversed_senseless_draw_is_not_drawn_again_and_gives_no_cap_back(world: World) -> None:
    """draw_reverse undoes a senseless draw; its pay_auth (and 5203's re-issue of it, same id) never draws
    again, under the same key or another, and the cap it used stays used (refunds give none back)."""
    w = world
    p = _person(w)
    m = _give(w, p, visit=5_000, day=100_000)
    v = _visit(w, p)
    s = _settle(w, p, v, "40.00")
    setl = s.output["setlinfo"]
    key = "k" + secrets.token_hex(8)
    drawn = w.bank.draw(p.psn_no, "40.00", setl["setl_id"], key, pay_auth=s.output["pay_auth"],
                        mandate_id=m["mandate_id"], visit=v["mdtrt_id"])
    assert drawn.ok, drawn
    assert w.bank.reverse_draw(key, p.psn_no, ref=setl["setl_id"]).output["result"] == "reversed"
    reissued = w.c.client.query(p.psn_no, setl_id=setl["setl_id"]).output["pay_auth"]
    for k, auth in ((key, s.output["pay_auth"]), ("k" + secrets.token_hex(8), s.output["pay_auth"]),
                    ("k" + secrets.token_hex(8), reissued)):
        again = w.bank.draw(p.psn_no, "40.00", setl["setl_id"], k, pay_auth=auth, mandate_id=m["mandate_id"],
                            visit=v["mdtrt_id"])
        assert again.err_code in ("draw_reversed", "pay_auth_used"), again
    assert w.bank_db.read(lambda tx: tx.scalar("SELECT original_fen - refunded_fen FROM credit_draws WHERE ref = ?",
                                               (setl["setl_id"],))) == 0
    assert w.bank.mandate_get(m["mandate_id"], visit=v["mdtrt_id"]).output["used_visit"] == "40.00"
    _s, over = _charge(w, p, v, m, "20.00")  # 40.00 + 20.00 > 50.00 per visit, the reversal notwithstanding
    assert over.err_code == "mandate_cap_visit", over
    _books(w)


def test_statement_lists_mandates_and_marks_senseless_draws_and_notices_go_to_payer_and_holder(world: World) -> None:
    w = world
    holder = _person(w)
    member = _person(w, line=False)
    b = operator_call("http://testserver", w.admin_token, "bind", {"holder": holder.psn_no, "member": member.psn_no,
                                                                  "relation": "child", "consent": True,
                                                                  "monthly_cap": None, "key": "b" + member.psn_no},
                      http=w.bank.http)
    assert b["infcode"] == 0, b
    _drain(w)  # what earlier tests queued
    m = _give(w, member, lines_="family")
    # the terminal learns of the family line only its holder's last 4 (as credit.line gives them)
    assert m["holders"] == {"own": None, "family": holder.psn_no[-4:]}
    assert w.bank.mandate_get(m["mandate_id"]).output["holders"]["family"] == holder.psn_no[-4:]
    v = _visit(w, member)
    s, d = _charge(w, member, v, m, "66.00")
    assert d.ok, d
    setl_id = s.output["setlinfo"]["setl_id"]
    st = w.bank.statement(holder.psn_no, pay_auth=_proof(w, holder, "statement", holder.psn_no))
    assert st.ok
    draw = next(x for x in st.output["draws"] if x["ref"] == setl_id)
    assert (draw["payer"], draw["mandate_id"], draw["visit"]) == (member.psn_no, m["mandate_id"], v["mdtrt_id"])
    assert [(x["mandate_id"], x["payer"], x["state"], x["used_today"]) for x in st.output["mandates"]] == [
        (m["mandate_id"], member.psn_no, "active", "66.00")]
    msgs = [x for x in _drain(w) if x["topic"] == "credit.senseless_draw"]
    assert sorted((x["payload"]["to"], x["payload"]["role"]) for x in msgs) == sorted(
        [(member.psn_no, "payer"), (holder.psn_no, "holder")])
    for x in msgs:
        pl = x["payload"]
        assert (pl["amount"], pl["fixmedins_code"], pl["mandate_id"], pl["visit"], pl["ref"]) == (
            "66.00", INSTITUTION, m["mandate_id"], v["mdtrt_id"], setl_id)
        assert "revoke" in pl["dispute"].lower()


def _drain(w: World) -> list[dict[str, Any]]:
    from kiosk.services.client import drain_notifications

    return drain_notifications("http://testserver", w.admin_token, 1000, http=w.bank.http)


def _proof(w: World, p: Any, purpose: str, ref: str, amount: str = "0.00",
           centre: CentreClient | None = None) -> str:
    centre = centre or w.c.client
    token = w.c.activate(p) if centre is w.c.client else _activate_at(w, centre, p)
    a = centre.pay_auth(p.psn_no, token, amount, ref, purpose=purpose)
    assert a.ok, a
    return str(a.output["pay_auth"])


def test_the_patient_revokes_by_face_at_any_terminal_and_nobody_else_can(world: World) -> None:
    w = world
    p, q = _person(w), _person(w)
    m = _give(w, p)
    # q's own word for p's mandate (the centre signs any well-formed id for q): not q's mandate
    bad = _proof(w, q, "mandate_revoke", m["mandate_id"], centre=w.other_centre)
    unknown = "M" + "f" * 20
    theirs = w.other_bank.mandate_revoke(m["mandate_id"], "rv1", pay_auth=bad)
    none = w.other_bank.mandate_revoke(unknown, "rv2",
                                       pay_auth=_proof(w, q, "mandate_revoke", unknown, centre=w.other_centre))
    assert theirs.err_code == "unknown_mandate" and _fields(theirs) == _fields(none)
    assert w.bank.mandate_get(m["mandate_id"]).output["state"] == "active"
    # p's own word, at another institution's terminal: revoked
    mine = w.other_bank.mandate_revoke(m["mandate_id"], "rv3",
                                       pay_auth=_proof(w, p, "mandate_revoke", m["mandate_id"], centre=w.other_centre))
    assert mine.ok and mine.output["state"] == "revoked"
    assert w.bank.mandate_get(m["mandate_id"]).output["state"] == "revoked"


def test_the_patient_reads_her_mandates_at_every_institution_by_face_and_nobody_else_can(world: World) -> None:
    """credit.mandates: what a terminal of any institution may offer the patient to revoke (her own word,
    purpose statement, ref = herself, at this terminal); another person's word or none reads nothing."""
    w = world
    p, q = _person(w), _person(w)
    here = _give(w, p)
    m_auth = _mandate_auth(w, p, centre=w.other_centre)
    assert m_auth.ok, m_auth
    there = w.other_bank.mandate(p.psn_no, "mandate-" + secrets.token_hex(4), m_auth.output["pay_auth"])
    assert there.ok, there

    def read(bank: BankClient, payer: str, auth: str) -> list[str]:
        a = bank.call("credit.mandates", {"payer": payer, **({"pay_auth": auth} if auth else {})})
        assert a.ok, a
        return sorted(m["mandate_id"] for m in a.output["mandates"])

    mine = _proof(w, p, "statement", p.psn_no, centre=w.other_centre)
    assert read(w.other_bank, p.psn_no, mine) == sorted([here["mandate_id"], there.output["mandate_id"]])
    assert read(w.other_bank, p.psn_no, "") == []                                   # no word: nothing
    assert read(w.other_bank, p.psn_no, _proof(w, q, "statement", q.psn_no, centre=w.other_centre)) == []
    assert read(w.bank, p.psn_no, mine) == []                                       # her word, another terminal
    assert read(w.other_bank, p.psn_no, _proof(w, p, "line", "x", "1.00", centre=w.other_centre)) == []
    assert w.bank.mandate_revoke(here["mandate_id"], "rv-read").ok                  # revoked: no longer listed
    assert read(w.other_bank, p.psn_no, mine) == [there.output["mandate_id"]]
    # the terminal's adapters, as its revocation session uses them: her word reads, her word revokes
    from kiosk.app.adapters.bank import BankAdapter
    from kiosk.app.adapters.centre import CentreAdapter
    from kiosk.app.ports import Person

    her = Person(psn_no=p.psn_no, name="", ec_token=_activate_at(w, w.other_centre, p))
    centre = CentreAdapter(w.other_centre)
    bank = BankAdapter(w.other_bank)
    listed = bank.mandates_of(p.psn_no, centre.person_auth(her, "statement", p.psn_no))
    assert [m["mandate_id"] for m in listed or []] == [there.output["mandate_id"]]
    word = centre.person_auth(her, "mandate_revoke", there.output["mandate_id"])
    assert bank.mandate_revoke(there.output["mandate_id"], "rv-face", word).status == "ok"
    assert bank.mandates_of(p.psn_no, centre.person_auth(her, "statement", p.psn_no)) == []


def test_operator_revokes_any_mandate(world: World) -> None:
    w = world
    p = _person(w)
    m = _give(w, p)
    assert operator_call("http://testserver", "wrong", "mandate/revoke", {"mandate_id": m["mandate_id"]},
                         http=w.bank.http)["infcode"] != 0
    r = operator_call("http://testserver", w.admin_token, "mandate/revoke", {"mandate_id": m["mandate_id"]},
                      http=w.bank.http)
    assert r["infcode"] == 0 and r["output"]["state"] == "revoked"
    got = operator_call("http://testserver", w.admin_token, "mandate", {"mandate_id": m["mandate_id"]},
                        http=w.bank.http)
    assert got["output"]["state"] == "revoked" and got["output"]["payer"] == p.psn_no


# ---- crash after each step (the services' reference linkage; kiosk.app journals the same way) -------------
class Crash(Exception):
    pass


def _linked(w: World, p: Any, v: dict[str, Any], m: dict[str, Any], amount: str, journal: Any,
            fault: str | None = None) -> tuple[Any, Any]:
    from kiosk.services.linkage import LinkedPayment

    medfee, feedetail = lines(("XC02", amount, "1"))
    h = head(p, v["visit_token"], medfee, acct_used_flag="0", mdtrt_id=v["mdtrt_id"])

    def hook(step: str) -> None:
        if step == fault:
            raise Crash(step)

    lp = LinkedPayment(w.c.client, w.bank, journal, fault=hook)
    return lp, lp.begin("charge-" + secrets.token_hex(4), h, feedetail, mandate_id=m["mandate_id"])


def test_a_charge_survives_a_crash_after_each_step_and_a_cap_refusal_reverses_it(world: World) -> None:
    from kiosk.services.linkage import LinkedPayment, MemoryJournal

    w = world
    p = _person(w)
    m = _give(w, p, visit=30_000, day=60_000)
    v = _visit(w, p)
    journal = MemoryJournal()
    for step, amount in (("settle", "100.00"), ("draw", "110.00")):
        lp, e = _linked(w, p, v, m, amount, journal, fault=step)
        with pytest.raises(Crash):
            lp.run(e)
        done = LinkedPayment(w.c.client, w.bank, journal).resume(journal.load(e.order_id))
        assert done.state == "done", done
        assert _drawn(w, done.setl_id) == int(amount.replace(".", ""))  # once
    # above the per-visit cap (210.00 of 300.00 used): the draw is refused and the settlement reversed,
    # so the charge becomes a counter payment with the patient (nothing stands at either party)
    lp, e = _linked(w, p, v, m, "100.00", journal)
    out = lp.run(e)
    assert out.state == "reversed" and "mandate_cap_visit" in out.detail
    assert w.c.client.query(p.psn_no, setl_id=out.setl_id).output["setl_state"] == "reversed"
    assert _drawn(w, out.setl_id) is None
    _books(w)


# ---- red team: someone else tries it ---------------------------------------------------------------------
def test_another_institution_cannot_use_revoke_or_read_a_mandate(world: World) -> None:
    w = world
    p = _person(w)
    m = _give(w, p)
    unknown = "M" + "0" * 20
    # read and revoke (no pay_auth): the answer of a mandate that does not exist
    for call in (lambda mid: w.other_bank.mandate_get(mid),
                 lambda mid: w.other_bank.mandate_revoke(mid, "rv-" + mid)):
        theirs, none = call(m["mandate_id"]), call(unknown)
        assert (theirs.infcode, theirs.err_code) == (InfCode.BUSINESS_REFUSED, "unknown_mandate")
        assert _fields(theirs) == _fields(none)
    # use: its own visit of the same patient (the patient's face there), its charge drawn under the
    # hospital's mandate: no mandate of this payer here, exactly as for a made-up one; nothing drawn
    v = _visit(w, p, centre=w.other_centre)
    answers = []
    for mid in (m["mandate_id"], unknown):
        s = _settle(w, p, v, "10.00", centre=w.other_centre)
        assert s.ok, s
        setl = s.output["setlinfo"]
        answers.append(w.other_bank.draw(p.psn_no, "10.00", setl["setl_id"], "k" + secrets.token_hex(6),
                                         pay_auth=s.output["pay_auth"], mandate_id=mid, visit=v["mdtrt_id"]))
        assert _drawn(w, setl["setl_id"]) is None
    assert answers[0].err_code == "no_mandate" and _fields(answers[0]) == _fields(answers[1])
    assert w.bank.mandate_get(m["mandate_id"]).output["state"] == "active"
    assert w.bank.mandate_get(m["mandate_id"]).output["used_today"] == "0.00"


def test_malformed_mandate_fields_are_refused_at_the_door(world: World) -> None:
    w = world
    for bad in ("xM" + "0" * 20, "M" + "0" * 20 + "0", "M" + "G" * 20, ""):
        a = w.bank.mandate_get(bad) if bad else w.bank.call("credit.mandate_get", {})
        assert a.infcode == InfCode.INVALID_INPUT and a.err_msg.startswith("input.mandate_id"), (bad, a)
    half = w.bank.call("credit.draw", {"payer": "P1", "amount": "1.00", "ref": "S1", "key": "k", "pay_auth": "PA1.x.y",
                                       "mandate_id": "M" + "0" * 20})
    assert half.infcode == InfCode.INVALID_INPUT  # a mandate without the visit (or a visit without one)


def test_senseless_draw_needs_the_payers_own_mandate(world: World) -> None:
    w = world
    p, q = _person(w), _person(w)
    mq = _give(w, q)  # q's mandate at the same institution
    _give(w, p)
    v = _visit(w, p)
    s = _settle(w, p, v, "12.00")
    setl = s.output["setlinfo"]
    # without a mandate: a senseless pay_auth is not a counter draw's
    none = w.bank.draw(p.psn_no, "12.00", setl["setl_id"], "k" + secrets.token_hex(6), pay_auth=s.output["pay_auth"])
    assert (none.infcode, none.err_code) == (InfCode.NO_AUTHORISATION, "pay_auth_mismatch")
    # with another person's mandate: no mandate of this payer
    foreign = w.bank.draw(p.psn_no, "12.00", setl["setl_id"], "k" + secrets.token_hex(6),
                          pay_auth=s.output["pay_auth"], mandate_id=mq["mandate_id"], visit=v["mdtrt_id"])
    assert foreign.err_code == "no_mandate"
    # another visit than the one the centre signed
    other_visit = w.bank.draw(p.psn_no, "12.00", setl["setl_id"], "k" + secrets.token_hex(6),
                              pay_auth=s.output["pay_auth"], mandate_id=mq["mandate_id"], visit="V20260310FFFFFFFFFFFF")
    assert other_visit.err_code == "pay_auth_mismatch"
    assert _drawn(w, setl["setl_id"]) is None


def test_a_counter_draw_pay_auth_is_never_a_senseless_one(world: World) -> None:
    w = world
    p = _person(w)
    m = _give(w, p)
    v = _visit(w, p)
    token = w.c.activate(p)  # a counter payment with the face: 2207 gives a `draw` pay_auth
    medfee, feedetail = lines(("XC02", "14.00", "1"))
    s = w.c.client.settle(head(p, token, medfee, acct_used_flag="0", mdtrt_id=v["mdtrt_id"]), feedetail)
    assert s.ok
    assert payauth.verify(s.output["pay_auth"], w.c.service.keys.sm2.public_key()).purpose == "draw"
    d = w.bank.draw(p.psn_no, "14.00", s.output["setlinfo"]["setl_id"], "k" + secrets.token_hex(6),
                    pay_auth=s.output["pay_auth"], mandate_id=m["mandate_id"], visit=v["mdtrt_id"])
    assert (d.infcode, d.err_code) == (InfCode.NO_AUTHORISATION, "pay_auth_mismatch")
    assert _drawn(w, s.output["setlinfo"]["setl_id"]) is None
    # and it still works as what it is: a counter draw, needing no mandate
    ok = w.bank.draw(p.psn_no, "14.00", s.output["setlinfo"]["setl_id"], "k" + secrets.token_hex(6),
                     pay_auth=s.output["pay_auth"])
    assert ok.ok


def test_visit_token_refused_at_another_terminal_for_another_person_or_visit(world: World) -> None:
    w = world
    p, q = _person(w), _person(w)
    v, vq = _visit(w, p), _visit(w, q)
    refusals = []
    # the same institution's other terminal; another institution's terminal
    for centre in (w.twin_centre, w.other_centre):
        refusals.append(_settle(w, p, v, "5.00", centre=centre))
    # q's number with p's token; p's token naming q's visit; p's token for 2102 (pharmacy)
    refusals.append(_settle(w, q, v, "5.00", token=v["visit_token"]))
    refusals.append(_settle(w, p, v, "5.00", mdtrt_id=vq["mdtrt_id"]))
    medfee, feedetail = lines(("XC02", "5.00", "1"))
    refusals.append(w.c.client.settle(head(p, v["visit_token"], medfee, mdtrt_id=v["mdtrt_id"]), feedetail,
                                      pharmacy=True))
    # a forged token (another visit id, same shape)
    forged = v["visit_token"].replace(v["mdtrt_id"], vq["mdtrt_id"])
    refusals.append(_settle(w, p, v, "5.00", token=forged, mdtrt_id=vq["mdtrt_id"]))
    for a in refusals:
        assert (a.infcode, a.err_code) == (InfCode.IDENTITY_MISMATCH, "face_auth_required"), a
    assert len({a.err_msg for a in refusals}) == 1
    # and the visit itself still works for its own terminal
    assert _settle(w, p, v, "5.00").ok


def test_a_visit_closes_only_by_its_terminal_and_then_charges_need_the_patient(world: World) -> None:
    w = world
    p = _person(w)
    v = _visit(w, p)
    unknown = "V20260310000000000000"
    for centre in (w.other_centre, w.twin_centre):
        theirs, none = centre.close_visit(p.psn_no, v["mdtrt_id"]), centre.close_visit(p.psn_no, unknown)
        assert theirs.infcode == InfCode.NOT_FOUND and _fields(theirs) == _fields(none)
    assert _settle(w, p, v, "7.00").ok
    closed = w.c.client.close_visit(p.psn_no, v["mdtrt_id"])
    assert closed.ok and closed.output["state"] == "closed"
    assert w.c.client.close_visit(p.psn_no, v["mdtrt_id"]).output["state"] == "closed"  # again: same state
    after = _settle(w, p, v, "7.00")
    assert (after.infcode, after.err_code) == (InfCode.IDENTITY_MISMATCH, "visit_closed")
    pre = w.c.client.presettle(head(p, v["visit_token"], "7.00", acct_used_flag="0", mdtrt_id=v["mdtrt_id"]),
                               lines(("XC02", "7.00", "1"))[1])
    assert pre.err_code == "visit_closed"


def test_visit_registration_needs_the_patients_face_at_this_terminal(world: World) -> None:
    w = world
    p, q = _person(w), _person(w)
    token_q = w.c.activate(q)
    a = w.c.client.open_visit(p.psn_no, token_q, p.insutype)  # q's face, p's number
    assert (a.infcode, a.err_code) == (InfCode.IDENTITY_MISMATCH, "face_auth_required")
    b = w.twin_centre.open_visit(p.psn_no, w.c.activate(p), p.insutype)  # another terminal's face token
    assert b.infcode == InfCode.IDENTITY_MISMATCH
    n = w.c.db.read(lambda tx: tx.scalar("SELECT COUNT(*) FROM centre_visits WHERE psn_no = ?", (p.psn_no,)))
    assert n == 0


def test_mandate_terms_the_centre_will_not_sign(world: World) -> None:
    w = world
    p = _person(w)
    today = w.c.clock.now().astimezone(SHANGHAI).date()
    token = w.c.activate(p)
    cases = [
        (payauth.format_terms(2_000_001, 2_000_001, today, "own"), "20000.01"),  # above 20,000
        (payauth.format_terms(50_000, 2_000_100, today, "own"), "500.00"),        # a day cap above 20,000
        (payauth.format_terms(50_000, 100_000, today - timedelta(days=1), "own"), "500.00"),  # until past
        (payauth.format_terms(50_000, 100_000, today + timedelta(days=367), "own"), "500.00"),
        (payauth.format_terms(50_000, 40_000, today, "own"), "500.00"),           # day < visit
        (payauth.format_terms(50_000, 100_000, today, "own"), "400.00"),          # amount is not the visit cap
        ("visit=50000;day=100000;until=" + today.isoformat() + ";lines=family,own", "500.00"),  # not canonical
        ("visit=050000;day=100000;until=" + today.isoformat() + ";lines=own", "500.00"),
        # one spelling only: spaces, a key twice, digits of another script, a day that does not exist,
        # a line twice, anything after the terms
        ("visit=50000; day=100000;until=" + today.isoformat() + ";lines=own", "500.00"),
        ("visit=50000;day=100000;day=200000;until=" + today.isoformat() + ";lines=own", "500.00"),
        ("visit=\u0665\u0660\u0660\u0660\u0660;day=100000;until=" + today.isoformat() + ";lines=own", "500.00"),
        ("visit=50000;day=100000;until=\u0662\u0660\u0662\u0666" + today.isoformat()[4:] + ";lines=own", "500.00"),
        ("visit=50000;day=100000;until=2026-02-30;lines=own", "500.00"),
        ("visit=50000;day=100000;until=" + today.isoformat() + ";lines=own,own", "500.00"),
        ("visit=50000;day=100000;until=" + today.isoformat() + ";lines=own;", "500.00"),
    ]
    for ref, amount in cases:
        a = w.c.client.pay_auth(p.psn_no, token, amount, ref, purpose="mandate")
        assert a.infcode == InfCode.INVALID_INPUT, (ref, a)
        assert a.err_msg.startswith(("input.data.ref", "input.data.amount")), a.err_msg
    ok = w.c.client.pay_auth(p.psn_no, token, "500.00", payauth.format_terms(50_000, 100_000, today, "own"),
                             purpose="mandate")
    assert ok.ok and ok.output["auth_id"].startswith("PAM")


def test_bank_refuses_centre_signed_terms_out_of_bounds_and_past(world: World) -> None:
    """Even with the centre's signature (a centre bug, a key misuse), the bank re-reads the terms."""
    w = world
    p = _person(w)
    today = w.c.clock.now().astimezone(SHANGHAI).date()
    over = pay_auth(w.c, p.psn_no, "visit=2000001;day=2000001;until=" + today.isoformat() + ";lines=own",
                    "20000.01", purpose="mandate")
    a = w.bank.mandate(p.psn_no, "m-over", over)
    assert (a.infcode, a.err_code) == (InfCode.NO_AUTHORISATION, "pay_auth_mismatch")
    past = pay_auth(w.c, p.psn_no, payauth.format_terms(100, 100, today - timedelta(days=1), "own"), "1.00",
                    purpose="mandate")
    b = w.bank.mandate(p.psn_no, "m-past", past)
    assert (b.infcode, b.err_code) == (InfCode.BUSINESS_REFUSED, "mandate_expired")
    # another person's word, another purpose: refused before anything is recorded
    q = _person(w)
    theirs = _mandate_auth(w, q).output["pay_auth"]
    assert w.bank.mandate(p.psn_no, "m-q", theirs).err_code == "pay_auth_mismatch"
    line = _proof(w, p, "line", "x", "5.00")
    assert w.bank.mandate(p.psn_no, "m-l", line).err_code == "pay_auth_mismatch"
    assert w.bank_db.read(lambda tx: tx.scalar("SELECT COUNT(*) FROM credit_mandates WHERE payer = ?",
                                               (p.psn_no,))) == 0


def test_a_mandate_pay_auth_is_used_once(world: World) -> None:
    w = world
    p = _person(w)
    a = _mandate_auth(w, p).output["pay_auth"]
    first = w.bank.mandate(p.psn_no, "m-once", a)
    assert first.ok
    replay_same_key = w.bank.mandate(p.psn_no, "m-once", a)
    assert replay_same_key.ok and replay_same_key.output == first.output
    again = w.bank.mandate(p.psn_no, "m-twice", a)
    assert (again.infcode, again.err_code) == (InfCode.NO_AUTHORISATION, "pay_auth_used")
    # at another terminal of the same institution: bound to the terminal it was issued to
    twin = w.twin_bank.mandate(p.psn_no, "m-twin", a)
    assert twin.err_code == "pay_auth_mismatch"
    n = w.bank_db.read(lambda tx: tx.scalar("SELECT COUNT(*) FROM credit_mandates WHERE payer = ?", (p.psn_no,)))
    assert n == 1


def test_no_line_for_the_named_lines(world: World) -> None:
    w = world
    p = _person(w)
    a = _mandate_auth(w, p, lines_="family").output["pay_auth"]
    r = w.bank.mandate(p.psn_no, "m-fam", a)
    assert (r.infcode, r.err_code) == (InfCode.BUSINESS_REFUSED, "no_line")
    # the refusal did not spend the word: the same key can be retried later (e.g. once bound)
    assert w.bank_db.read(lambda tx: tx.scalar("SELECT COUNT(*) FROM bank_pay_auths WHERE psn_no = ? AND "
                                               "purpose = 'mandate'", (p.psn_no,))) == 0


def test_notify_only_for_the_institutions_own_settlement_of_that_person(world: World) -> None:
    w = world
    p, q = _person(w), _person(w)
    m = _give(w, p)
    v = _visit(w, p)
    s, d = _charge(w, p, v, m, "21.00")
    assert d.ok
    setl = s.output["setlinfo"]
    notice = {"notice_id": "N-" + setl["setl_id"], "psn_no": p.psn_no, "setl_id": setl["setl_id"],
              "mdtrt_id": v["mdtrt_id"], "kind": "senseless_charge", "medfee_sumamt": setl["medfee_sumamt"],
              "fund_pay_sumamt": setl["fund_pay_sumamt"], "acct_pay": setl["acct_pay"],
              "psn_cash_pay": setl["psn_cash_pay"], "text": "21.00 charged to your credit line at the hospital"}
    unknown = "S20260310" + "0" * 16
    theirs = w.other_centre.notify({**notice, "notice_id": "X1"})
    none = w.other_centre.notify({**notice, "notice_id": "X1", "setl_id": unknown})
    assert theirs.infcode == InfCode.NOT_FOUND and _fields(theirs) == _fields(none)
    other_person = w.c.client.notify({**notice, "psn_no": q.psn_no})
    assert other_person.infcode == InfCode.NOT_FOUND
    other_visit = w.other_centre.notify({**notice, "notice_id": "X2", "setl_id": "", "kind": "visit_summary"})
    assert other_visit.infcode == InfCode.NOT_FOUND
    # the patient is told what was charged: amounts other than the settlement's are refused, nothing stored
    for k, val in (("psn_cash_pay", "0.01"), ("medfee_sumamt", "2.10"), ("acct_pay", "21.00")):
        lie = w.c.client.notify({**notice, "notice_id": "L-" + k, k: val})
        assert (lie.infcode, lie.err_code) == (InfCode.INVALID_INPUT, "notice_amounts"), lie
    assert w.c.client.notify(notice).ok
    assert w.c.client.notify(notice).ok  # once per (institution, notice_id): a retry stores nothing more
    clash = w.c.client.notify({**notice, "text": "something else"})
    assert clash.err_code == "notice_conflict"
    summary = {**notice, "notice_id": "S-" + v["mdtrt_id"], "setl_id": "", "kind": "visit_summary"}
    assert w.c.client.notify(summary).ok
    inbox = notices_of(w.c.db, p.psn_no)
    assert sorted(n["notice_id"] for n in inbox) == sorted([notice["notice_id"], summary["notice_id"]])
    assert notices_of(w.c.db, q.psn_no) == []


def test_notices_command_prints_the_inbox(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from kiosk.cli import main

    c = make_centre(f"sqlite:///{tmp_path}/svc-centre.db", tmp_path, people=8)  # `--db .../svc.db` names it
    try:
        p = c.people[0]
        v = c.client.open_visit(p.psn_no, c.activate(p), p.insutype)
        assert v.ok
        assert c.client.notify({"notice_id": "N1", "psn_no": p.psn_no, "mdtrt_id": v.output["mdtrt_id"],
                                "kind": "visit_summary", "medfee_sumamt": "12.00", "psn_cash_pay": "12.00",
                                "text": "1 charge, 12.00"}).ok
    finally:
        c.http.close()
        c.db.close()
    assert main(["services", "notices", "--psn-no", p.psn_no, "--db", f"sqlite:///{tmp_path}/svc.db",
                 "--data-dir", str(tmp_path)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [(n["notice_id"], n["kind"], n["psn_cash_pay"], n["fixmedins_code"]) for n in out["notices"]] == [
        ("N1", "visit_summary", "12.00", INSTITUTION)]
    assert main(["services", "notices", "--psn-no", p.psn_no, "--db", f"sqlite:///{tmp_path}/none.db"]) == 2


# ---- the clock moves on: these run last in the module -----------------------------------------------------
def test_zz_visit_token_after_the_day_ends_and_mandate_after_until(world: World) -> None:
    w = world
    p = _person(w)
    today = w.c.clock.now().astimezone(SHANGHAI).date()
    m = _give(w, p, until=today)
    v = _visit(w, p)
    assert _charge(w, p, v, m, "9.00")[1].ok
    w.c.clock.set(datetime(today.year, today.month, today.day, 23, 59, 59, tzinfo=SHANGHAI))
    assert _settle(w, p, v, "1.00").ok  # the last second of the day
    w.c.clock.advance(seconds=1)        # 00:00:00 of the next Shanghai day
    late = _settle(w, p, v, "1.00")
    assert (late.infcode, late.err_code) == (InfCode.IDENTITY_MISMATCH, "visit_expired")
    # a new visit the next day (the patient's face again): the mandate's last day has passed
    v2 = _visit(w, p)
    s, d = _charge(w, p, v2, m, "9.00")
    assert (d.infcode, d.err_code) == (InfCode.BUSINESS_REFUSED, "mandate_expired")
    assert _drawn(w, s.output["setlinfo"]["setl_id"]) is None
    assert w.bank.mandate_get(m["mandate_id"]).output["state"] == "expired"
