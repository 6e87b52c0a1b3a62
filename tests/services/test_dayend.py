"""Day-end at the services: the centre's 3201 (totals) and 3202 (list), the bank's clearing statement
(credit.clearing and the operator's /admin/clearing). Golden totals worked by hand, Asia/Shanghai day
boundaries, and another institution asking for ours (answered as an institution with nothing)."""
from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterator

import pytest
from fastapi.testclient import TestClient

from kiosk.clock import SHANGHAI
from kiosk.security.sm import Sm2PrivateKey
from kiosk.services.bank.app import create_app as create_bank
from kiosk.services.client import BankClient, CentreClient, ServiceIdentity
from kiosk.services.protocol import Answer, InfCode
from kiosk.storage import Database, open_database

from .conftest import INSTITUTION, Centre, fresh_pg, head, lines, make_centre, pg_url

OTHER = "H37020200001"  # another institution of the same area (the demo clinic)


@dataclass
class DayWorld:
    c: Centre
    bank: BankClient
    bank_db: Database
    bank_http: TestClient
    other_centre: CentreClient
    other_bank: BankClient
    admin_token: str
    tokens: dict[str, str] = field(default_factory=dict)
    lines_open: set[str] = field(default_factory=set)

    def token(self, p: Any) -> str:
        """A fresh ecToken for p at the hospital's terminal (activation once, then face authentication)."""
        if p.psn_no not in self.tokens:
            self.tokens[p.psn_no] = self.c.activate(p)
            return self.tokens[p.psn_no]
        sid = secrets.token_hex(4)
        a = self.c.client.authenticate(self.c.client.seal_face(self.c.capture(p.psn_no), sid, "auth"), sid,
                                       psn_no=p.psn_no)
        assert a.ok, a
        return a.output["ecToken"]

    def settle(self, p: Any, yuan: str, *, pharmacy: bool = False, msgid: str | None = None) -> dict[str, Any]:
        """A class C bill, no personal account: all of it is the cash share (medfee = cash, fund = acct = 0)."""
        medfee, feedetail = lines(("XC02", yuan, "1"))
        h = head(p, self.token(p), medfee, acct_used_flag="0")
        if pharmacy:
            h["med_type"] = "41"
        a = self.c.client.settle(h, feedetail, pharmacy=pharmacy, msgid=msgid)
        assert a.ok, a
        return a.output

    def reverse(self, setl_id: str, p: Any, *, pharmacy: bool = False) -> None:
        a = self.c.client.reverse(setl_id, p.psn_no, pharmacy=pharmacy)
        assert a.ok, a

    def draw(self, p: Any, out: dict[str, Any], key: str) -> None:
        if p.psn_no not in self.lines_open:
            from kiosk.services.client import operator_call  # the bank's own channel opens lines

            assert operator_call("http://testserver", self.admin_token, "apply",
                                 {"holder": p.psn_no, "birth_date": p.brdy, "insured_years": 6,
                                  "key": f"open/{p.psn_no}"}, http=self.bank_http)["infcode"] == 0
            self.lines_open.add(p.psn_no)
        s = out["setlinfo"]
        a = self.bank.draw(p.psn_no, s["psn_cash_pay"], s["setl_id"], key, pay_auth=out["pay_auth"])
        assert a.ok, a

    def at(self, when: datetime) -> None:
        self.c.clock.set(when)


def build_world(c: Centre, bdb: Database, tmp: Any) -> DayWorld:
    app = create_bank(bdb, data_dir=tmp, clock=c.clock)
    bgw = app.state.gateway
    bgw.register_terminal(c.app_id, c.app_secret, c.key.public_key().to_bytes().hex(), INSTITUTION)
    bhttp = TestClient(app)
    bank = BankClient("http://testserver", ServiceIdentity(c.app_id, c.app_secret, c.key, INSTITUTION),
                      http=bhttp, clock=c.clock)
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

    return DayWorld(c, bank, bdb, bhttp, other_centre, other_bank, admin_token(tmp))


def open_world(param: str, tmp: Any) -> DayWorld:
    if param == "sqlite":
        c = make_centre(f"sqlite:///{tmp}/centre.db", tmp)
        bdb = open_database(f"sqlite:///{tmp}/bank.db")
    else:
        url = pg_url()
        if url is None:
            pytest.skip("KIOSK_TEST_PG_URL not set (scripts/test provides it; required under CI)")
        c = make_centre(fresh_pg(url), tmp)
        bdb = open_database(fresh_pg(url))
    return build_world(c, bdb, tmp)


def close_world(w: DayWorld) -> None:
    w.bank_http.close()
    w.c.http.close()
    w.bank_db.close()
    w.c.db.close()


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def world(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DayWorld]:
    w = open_world(request.param, tmp_path_factory.mktemp("dayend"))
    yield w
    close_world(w)


def totals_3201(client: CentreClient, day: str, groups: list[dict[str, Any]] | None = None, **kw: str) -> Answer:
    return client.call("3201", {"data": {"stmt_begndate": day, "stmt_enddate": day, "stmtinfo": groups or [], **kw}})


def list_3202(client: CentreClient, day: str, **kw: Any) -> Answer:
    return client.call("3202", {"data": {"stmt_begndate": day, "stmt_enddate": day, **kw}})


def group(insutype: str, clr: str, med: str, fund: str, acct: str, cnt: int) -> dict[str, Any]:
    return {"insutype": insutype, "clr_type": clr, "medfee_sumamt": med, "fund_pay_sumamt": fund, "acct_pay": acct,
            "fixmedins_setl_cnt": cnt}


def test_3201_golden_totals_per_group_and_3202_lists_settlements_and_reversals(world: DayWorld) -> None:
    w = world
    p, q = w.c.people[0], w.c.people[1]
    assert p.insutype == q.insutype
    it = p.insutype
    w.at(datetime(2026, 4, 2, 9, 0, tzinfo=SHANGHAI))
    a = w.settle(p, "34.00")
    w.at(datetime(2026, 4, 2, 10, 0, tzinfo=SHANGHAI))
    b = w.settle(q, "12.50")
    w.at(datetime(2026, 4, 2, 11, 0, tzinfo=SHANGHAI))
    c = w.settle(p, "100.00", pharmacy=True)
    w.at(datetime(2026, 4, 2, 15, 30, tzinfo=SHANGHAI))
    w.reverse(b["setlinfo"]["setl_id"], q)
    # by hand: outpatient (11): +34.00 +12.50 -12.50 = 34.00 in 3 rows; pharmacy (41): 100.00 in 1 row
    want = [group(it, "11", "34.00", "0.00", "0.00", 3), group(it, "41", "100.00", "0.00", "0.00", 1)]
    ans = totals_3201(w.c.client, "2026-04-02", want)
    assert ans.ok, ans
    assert ans.output["stmt_rslt"] == "0"
    got = {(g["insutype"], g["clr_type"]): g for g in ans.output["stmtinfo"]}
    assert set(got) == {(it, "11"), (it, "41")}
    assert (got[(it, "11")]["medfee_sumamt"], got[(it, "11")]["fixmedins_setl_cnt"]) == ("34.00", 3)
    assert got[(it, "41")]["stmt_rslt"] == "0" and got[(it, "41")]["setl_optins"] == "370202"
    # without reversals (refd_setl_flag 0): 34.00 + 12.50 in 2 rows
    excl = totals_3201(w.c.client, "2026-04-02", [group(it, "11", "46.50", "0.00", "0.00", 2),
                                                   group(it, "41", "100.00", "0.00", "0.00", 1)], refd_setl_flag="0")
    assert excl.output["stmt_rslt"] == "0", excl.output
    # the institution counted one settlement short: that group (only) is inconsistent, saying what differs
    short = totals_3201(w.c.client, "2026-04-02", [group(it, "11", "21.50", "0.00", "0.00", 2), want[1]])
    by = {g["clr_type"]: g for g in short.output["stmtinfo"]}
    assert short.output["stmt_rslt"] == "1" and by["41"]["stmt_rslt"] == "0" and by["11"]["stmt_rslt"] == "1"
    assert "medfee_sumamt: centre 34.00, institution 21.50" in by["11"]["stmt_rslt_dscr"]
    # a group the institution left out is compared with zero
    assert totals_3201(w.c.client, "2026-04-02", want[:1]).output["stmt_rslt"] == "1"

    lst = list_3202(w.c.client, "2026-04-02")
    assert lst.ok, lst
    rows = [(r["setl_id"], r["refd_setl_flag"], r["medfee_sumamt"], r["clr_type"], r["state"]) for r in lst.output["data"]]
    sa, sb, sc = (x["setlinfo"]["setl_id"] for x in (a, b, c))
    assert rows == [(sa, "0", "34.00", "11", "settled"), (sb, "0", "12.50", "11", "reversed"),
                    (sc, "0", "100.00", "41", "settled"), (sb, "1", "-12.50", "11", "reversed")]
    rev = lst.output["data"][3]
    assert rev["setl_time"] == "2026-04-02 15:30:00" and rev["reversed_at"] == "2026-04-02 15:30:00"
    assert rev["app_id"] == w.c.app_id and rev["psn_no"] == q.psn_no and len(rev["msgid"]) == 30
    assert "certno" not in rev and "psn_name" not in rev
    assert lst.output["fixmedins_setl_cnt"] == 4 and lst.output["medfee_sumamt"] == "134.00"
    # paged
    p1 = list_3202(w.c.client, "2026-04-02", page_size=3)
    p2 = list_3202(w.c.client, "2026-04-02", page_size=3, page_num=2)
    assert p1.output["pages"] == 2 and [r["setl_id"] for r in p1.output["data"] + p2.output["data"]] == [
        r[0] for r in rows]


def test_asia_shanghai_day_boundary(world: DayWorld) -> None:
    """23:59:59 and 00:00:00 local are two days, whatever offset the clock (and the row) carries."""
    w = world
    p = w.c.people[2]
    w.at(datetime(2026, 4, 5, 15, 59, 59, tzinfo=timezone.utc))  # 2026-04-05 23:59:59 in Shanghai
    late = w.settle(p, "20.00")
    w.draw(p, late, "late")
    w.at(datetime(2026, 4, 5, 16, 0, 0, tzinfo=timezone.utc))    # 2026-04-06 00:00:00 in Shanghai
    early = w.settle(p, "30.00")
    w.draw(p, early, "early")
    it = p.insutype
    d5 = list_3202(w.c.client, "2026-04-05").output["data"]
    d6 = list_3202(w.c.client, "2026-04-06").output["data"]
    assert [r["setl_id"] for r in d5] == [late["setlinfo"]["setl_id"]]
    assert d5[0]["setl_time"] == "2026-04-05 23:59:59"
    assert [r["setl_id"] for r in d6] == [early["setlinfo"]["setl_id"]]
    assert totals_3201(w.c.client, "2026-04-05", [group(it, "11", "20.00", "0.00", "0.00", 1)]).output["stmt_rslt"] == "0"
    assert totals_3201(w.c.client, "2026-04-06", [group(it, "11", "30.00", "0.00", "0.00", 1)]).output["stmt_rslt"] == "0"
    c5 = w.bank.call("credit.clearing", {"day": "2026-04-05"}).output
    c6 = w.bank.call("credit.clearing", {"day": "2026-04-06"}).output
    assert [(e["ref"], e["amount"]) for e in c5["entries"]] == [(late["setlinfo"]["setl_id"], "20.00")]
    assert [(e["ref"], e["amount"]) for e in c6["entries"]] == [(early["setlinfo"]["setl_id"], "30.00")]


def test_clearing_statement_golden(world: DayWorld) -> None:
    """Draws 34.00 + 50.00, a refund of 10.00 on the first and the second undone by key: by hand the bank
    owes 34.00 + 50.00 - 10.00 - 50.00 = 24.00."""
    w = world
    p, q = w.c.people[3], w.c.people[4]
    w.at(datetime(2026, 4, 8, 10, 0, tzinfo=SHANGHAI))
    a = w.settle(p, "34.00")
    w.draw(p, a, "d-a")
    b = w.settle(q, "50.00")
    w.draw(q, b, "d-b")
    assert w.bank.refund(a["setlinfo"]["setl_id"], "10.00", "rf-a").ok
    assert w.bank.reverse_draw("d-b", q.psn_no).output["result"] == "reversed"
    st = w.bank.call("credit.clearing", {"day": "2026-04-08"})
    assert st.ok, st
    o = st.output
    assert o["fixmedins_code"] == INSTITUTION
    assert (o["draws"], o["captures"], o["refunds"], o["net_due"]) == (
        {"count": 2, "amount": "84.00"}, {"count": 0, "amount": "0.00"}, {"count": 2, "amount": "60.00"}, "24.00")
    assert [(e["kind"], e["ref"], e["due"]) for e in o["entries"]] == [
        ("draw", a["setlinfo"]["setl_id"], "34.00"), ("draw", b["setlinfo"]["setl_id"], "50.00"),
        ("refund", a["setlinfo"]["setl_id"], "-10.00"), ("refund", b["setlinfo"]["setl_id"], "-50.00")]
    assert all(e["app_id"] == w.c.app_id for e in o["entries"])
    # the operator reads any institution's with the admin token; without it, nothing
    adm = w.bank_http.get("/admin/clearing", params={"fixmedins_code": INSTITUTION, "day": "2026-04-08"},
                          headers={"x-admin-token": w.admin_token})
    assert adm.status_code == 200 and adm.json()["output"] == o
    assert w.bank_http.get("/admin/clearing", params={"fixmedins_code": INSTITUTION, "day": "2026-04-08"},
                           headers={"x-admin-token": "wrong"}).status_code == 401
    assert w.bank_http.get("/admin/clearing", params={"fixmedins_code": INSTITUTION, "day": "2026-02-30"},
                           headers={"x-admin-token": w.admin_token}).status_code == 400


def test_another_institution_gets_nothing_of_ours(world: DayWorld) -> None:
    """The other institution's terminal asks for our day: by default it sees its own (empty) books;
    naming our institution gets exactly the answer an institution with nothing gets."""
    w = world
    p = w.c.people[5]
    w.at(datetime(2026, 4, 9, 10, 0, tzinfo=SHANGHAI))
    out = w.settle(p, "40.00")
    w.draw(p, out, "d-own")
    day = "2026-04-09"
    mine = totals_3201(w.c.client, day).output
    assert mine["stmt_rslt"] == "1" and mine["stmtinfo"][0]["medfee_sumamt"] == "40.00"  # ours exist
    for asked in ({}, {"fixmedins_code": INSTITUTION}):
        t = totals_3201(w.other_centre, day, **asked)
        assert t.ok and t.output["stmtinfo"] == [] and t.output["stmt_rslt"] == "0", t
        lst = list_3202(w.other_centre, day, **asked)
        assert lst.ok and lst.output["data"] == [] and lst.output["fixmedins_setl_cnt"] == 0
        assert lst.output["setl_optins"] == list_3202(w.other_centre, "2026-01-01").output["setl_optins"]
        # totals it claims for us are compared with nothing: inconsistent, our figures never shown
        claim = totals_3201(w.other_centre, day, [group(p.insutype, "11", "40.00", "0.00", "0.00", 1)], **asked)
        g = claim.output["stmtinfo"][0]
        assert (g["stmt_rslt"], g["medfee_sumamt"], g["fixmedins_setl_cnt"]) == ("1", "0.00", 0)
        cl = w.other_bank.call("credit.clearing", {"day": day, **asked})
        assert cl.ok and cl.output["entries"] == [] and cl.output["net_due"] == "0.00"
    # naming us is indistinguishable from naming an institution that settled nothing
    none = w.other_bank.call("credit.clearing", {"day": day, "fixmedins_code": "H99999999999"}).output
    ours = w.other_bank.call("credit.clearing", {"day": day, "fixmedins_code": INSTITUTION}).output
    assert {**none, "fixmedins_code": ""} == {**ours, "fixmedins_code": ""}
    audit = w.c.db.read(lambda tx: tx.fetch_all("SELECT infno, object_id FROM centre_audit WHERE infno IN "
                                                "('3201', '3202')"))
    assert ("3201", INSTITUTION) in {tuple(r) for r in audit} and ("3202", INSTITUTION) in {tuple(r) for r in audit}


@pytest.mark.parametrize("bad, field", [
    ({"stmt_begndate": "2026-04-10", "stmt_enddate": "2026-04-09"}, "input.data"),
    ({"stmt_begndate": "2026-01-01", "stmt_enddate": "2026-03-01"}, "input.data"),
    ({"stmt_begndate": "2026-02-30", "stmt_enddate": "2026-02-30"}, "input.data"),
    ({"stmt_begndate": "2026-04-09", "stmt_enddate": "2026-04-09",
      "stmtinfo": [{"insutype": "310", "clr_type": "11", "medfee_sumamt": 1.5, "fund_pay_sumamt": "0",
                    "acct_pay": "0", "fixmedins_setl_cnt": 1}]}, "input.data.stmtinfo"),
])
def test_bad_periods_and_amounts_are_refused_at_the_door(world: DayWorld, bad: dict[str, Any], field: str) -> None:
    a = world.c.client.call("3201", {"data": bad})
    assert a.infcode == InfCode.INVALID_INPUT and field in a.err_msg, a
    assert world.bank.call("credit.clearing", {"day": "2026-13-01"}).infcode == InfCode.INVALID_INPUT
