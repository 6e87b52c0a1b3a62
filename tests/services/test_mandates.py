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
        c = make_centre(f"sqlite:///{tmp}/centre.db", tmp, people=40)
        bdb = open_database(f"sqlite:///{tmp}/bank.db")
    else:
        url = pg_url()
        if url is None:
            pytest.skip("KIOSK_TEST_PG_URL not set (scripts/test provides it; required under CI)")
        c = make_centre(fresh_pg(url), tmp, people=40)
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

    yield World(c, bank, bdb, app.state.service, other_centre, other_bank, twin_centre, twin_bank, admin_token(tmp))
    bhttp.__exit__(None, None, None)
    c.http.__exit__(None, None, None)
    bdb.close()
    c.db.close()


_used: set[str] = set()


def _person(w: World, *, line: bool = True) -> Any:
    """A fresh insured person of working age (each test its own), with a line opened at the bank."""
    for p in w.c.people:
        born = date.fromisoformat(p.brdy)
        age = 2026 - born.year
        if p.psn_no in _used or not 20 <= age <= 58:
            continue
        _used.add(p.psn_no)
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
