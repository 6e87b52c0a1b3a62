"""The insurance centre through real HTTP (TestClient) on SQLite: envelope, msgid idempotency, amounts."""
from __future__ import annotations

import json
from decimal import Decimal

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kiosk.money import fen_to_yuan
from kiosk.services import seed
from kiosk.services.centre.check import check_centre
from kiosk.services.protocol import InfCode
from kiosk.settlement.bill import Bill, Category, Item, Ytd
from kiosk.settlement.engine import SETLINFO_FIELDS, settle
from kiosk.settlement.profiles import get_profile
from kiosk.storage import Transaction

from .conftest import Centre, head, lines


def engine_split(p: seed.SeedPerson, spec, balance: int, ytd: Ytd = Ytd(), level: int = 2):
    items = []
    for code, price, qty in spec:
        _name, cat, prop, ceil = seed.CATALOGUE[code]
        items.append(Item(code=code, category=Category(cat), price=Decimal(price), qty=Decimal(qty),
                          selfpay_prop=Decimal(prop) if prop and cat == "B" else None,
                          price_ceiling=Decimal(ceil) if ceil else None))
    profile = get_profile("qingdao-employee-outpatient")
    return settle(Bill(profile.name, level, tuple(items)), profile, ytd, balance)


def balance(c: Centre, psn_no: str) -> int:
    return int(c.db.read(lambda tx: tx.scalar("SELECT balc FROM centre_persons WHERE psn_no = ?", (psn_no,))))


def test_activation_right_id_then_wrong_id_three_times_locks(centre: Centre) -> None:
    p, other = centre.people[0], centre.people[1]
    cl = centre.client
    ok = cl.activate(cl.seal_face(centre.capture(p.psn_no), "s1", "activate"), p.certno, "s1")
    assert ok.ok and ok.output["psn_no"] == p.psn_no and ok.output["ecToken"].startswith("EC.")
    # the same face with someone else's ID number: refused, twice, then locked
    for i in range(3):
        sid = f"w{i}"
        bad = cl.activate(cl.seal_face(centre.capture(p.psn_no), sid, "activate"), other.certno, sid)
        assert not bad.ok
        assert bad.infcode == (InfCode.LOCKED if i == 2 else InfCode.IDENTITY_MISMATCH), bad
    # locked even with the right face now
    locked = cl.activate(cl.seal_face(centre.capture(other.psn_no), "s9", "activate"), other.certno, "s9")
    assert locked.infcode == InfCode.LOCKED and "try again after" in locked.err_msg
    # a mistyped ID number (bad check digit) is invalid input naming the field
    typo = p.certno[:-1] + ("0" if p.certno[-1] != "0" else "1")
    inv = cl.activate(cl.seal_face(centre.capture(p.psn_no), "s2", "activate"), typo, "s2")
    assert inv.infcode == InfCode.INVALID_INPUT and inv.err_code == "invalid_input"
    assert "certno" in inv.err_msg


def test_face_only_later_visit_and_seal_bound_to_session(centre: Centre) -> None:
    p = centre.people[2]
    centre.activate(p)
    cl = centre.client
    a = cl.authenticate(cl.seal_face(centre.capture(p.psn_no, np.random.default_rng(5)), "v1", "auth"), "v1")
    assert a.ok and a.output["psn_no"] == p.psn_no
    # sealed for another session: does not open
    wrong = cl.authenticate(cl.seal_face(centre.capture(p.psn_no), "v2", "auth"), "v3")
    assert wrong.infcode == InfCode.BAD_ENVELOPE and wrong.err_code == "seal_invalid"
    # a stranger's face: not matched (never a score)
    stranger = seed.synthetic_template("nobody")
    n = cl.authenticate(cl.seal_face(stranger, "v4", "auth"), "v4")
    assert n.infcode == InfCode.FACE_NOT_MATCHED and "score" not in json.dumps(n.output)


def test_presettle_settle_reverse_match_the_engine(centre: Centre) -> None:
    p = centre.people[4]
    token = centre.activate(p)
    spec = [("XA01", "12.50", "2"), ("XB02", "45.00", "1"), ("XC01", "8.80", "3"), ("F003", "130.00", "1")]
    medfee, feedetail = lines(*spec)
    bal0 = balance(centre, p.psn_no)
    want = engine_split(p, spec, bal0)
    pre = centre.client.presettle(head(p, token, medfee), feedetail)
    assert pre.ok, pre
    for f in SETLINFO_FIELDS:
        assert pre.output["setlinfo"][f] == fen_to_yuan(getattr(want, f)), f
    assert balance(centre, p.psn_no) == bal0  # nothing committed
    st = centre.client.settle(head(p, token, medfee), feedetail)
    assert st.ok
    assert {f: st.output["setlinfo"][f] for f in SETLINFO_FIELDS} == {f: pre.output["setlinfo"][f]
                                                                      for f in SETLINFO_FIELDS}
    assert balance(centre, p.psn_no) == bal0 - want.acct_pay
    # a second bill sees the accumulators the first one moved (deductible at level 2 used up first)
    want2 = engine_split(p, spec, bal0 - want.acct_pay, want.ytd_after)
    pre2 = centre.client.presettle(head(p, token, medfee), feedetail)
    assert pre2.output["setlinfo"]["act_pay_dedc"] == fen_to_yuan(want2.act_pay_dedc)
    assert pre2.output["setlinfo"]["hifp_pay"] == fen_to_yuan(want2.hifp_pay)
    setl_id = st.output["setlinfo"]["setl_id"]
    rv = centre.client.reverse(setl_id, p.psn_no)
    assert rv.ok and rv.output["setlinfo"]["acct_pay"] == fen_to_yuan(-want.acct_pay)
    assert balance(centre, p.psn_no) == bal0
    again = centre.client.reverse(setl_id, p.psn_no)
    assert again.infcode == InfCode.ALREADY_REVERSED
    q = centre.client.query(p.psn_no, setl_id=setl_id)
    assert q.ok and q.output["setl_state"] == "reversed"
    pre3 = centre.client.presettle(head(p, token, medfee), feedetail)
    assert pre3.output["setlinfo"]["act_pay_dedc"] == fen_to_yuan(want.act_pay_dedc)  # accumulators back
    assert check_centre(centre.db)["balanced"]


def test_msgid_replay_returns_first_answer_and_other_body_conflicts(centre: Centre) -> None:
    p = centre.people[6]
    token = centre.activate(p)
    medfee, feedetail = lines(("XA03", "3.20", "10"))
    msgid = centre.client.new_msgid()
    first = centre.client.settle(head(p, token, medfee), feedetail, msgid=msgid)
    again = centre.client.settle(head(p, token, medfee), feedetail, msgid=msgid)  # new envelope, new nonce
    assert first.ok and again.output == first.output
    n = centre.db.read(lambda tx: tx.scalar("SELECT COUNT(*) FROM centre_settlements WHERE msgid = ?", (f"{centre.app_id}/{msgid}",)))
    assert n == 1
    medfee2, feedetail2 = lines(("XA03", "3.20", "11"))
    other = centre.client.settle(head(p, token, medfee2), feedetail2, msgid=msgid)
    assert other.infcode == InfCode.MSGID_CONFLICT and "msgid" in other.err_msg


def _envelope(c: Centre, infno: str, data: dict) -> dict:
    from kiosk.services import envelope as env

    req = c.client.request(infno, data)
    e = env.client_envelope(req, app_id=c.app_id, app_secret=c.app_secret, sm2_key=c.key, now=c.clock.now())
    return {**e, "_msgid": req["msgid"]}


def test_tampered_envelope_and_replayed_nonce_are_refused(centre: Centre) -> None:
    p = centre.people[7]
    e = _envelope(centre, "1101", {"data": {"mdtrt_cert_type": "01", "mdtrt_cert_no": centre.activate(p)}})
    msgid = e.pop("_msgid")
    r1 = centre.http.post("/fsi/api/1101", json=e)
    assert r1.status_code == 200 and centre.client.read_answer(r1, msgid).ok
    r2 = centre.http.post("/fsi/api/1101", json=e)  # the very same envelope again
    assert r2.status_code == 401 and r2.json()["infcode"] == InfCode.REPLAYED
    e2 = _envelope(centre, "1101", {"data": {"mdtrt_cert_type": "02", "mdtrt_cert_no": p.certno}})
    enc = e2["encData"]
    e2["encData"] = enc[:40] + ("0" if enc[40] != "0" else "1") + enc[41:]
    r3 = centre.http.post("/fsi/api/1101", json=e2)
    assert r3.status_code == 401 and r3.json()["infcode"] == InfCode.BAD_ENVELOPE
    e3 = _envelope(centre, "1101", {"data": {"mdtrt_cert_type": "02", "mdtrt_cert_no": p.certno}})
    e3["signData"] = _envelope(centre, "1101", {"data": {}})["signData"]  # another message's signature
    assert centre.http.post("/fsi/api/1101", json=e3).json()["infcode"] == InfCode.BAD_ENVELOPE
    # stale: an envelope from 10 minutes ago
    old = _envelope(centre, "1101", {"data": {"mdtrt_cert_type": "02", "mdtrt_cert_no": p.certno}})
    centre.clock.advance(minutes=10)
    try:
        assert centre.http.post("/fsi/api/1101", json=old).json()["infcode"] == InfCode.BAD_ENVELOPE
    finally:
        centre.clock.advance(minutes=-10)


def test_invalid_input_is_an_answer_naming_the_field_never_a_500(centre: Centre) -> None:
    p = centre.people[8]
    token = centre.activate(p)
    medfee, feedetail = lines(("XA01", "10.00", "2"))
    feedetail[0]["det_item_fee_sumamt"] = "21.00"
    a = centre.client.presettle(head(p, token, medfee), feedetail)
    assert a.infcode == InfCode.INVALID_INPUT and "det_item_fee_sumamt" in a.err_msg
    b = centre.client.presettle(head(p, token, "20.00"), [dict(feedetail[0], pric=12.5)])
    assert b.infcode == InfCode.INVALID_INPUT and "pric" in b.err_msg
    c = centre.client.presettle(head(p, token, "20.00"), [dict(feedetail[0], med_list_codg="NOPE",
                                                              det_item_fee_sumamt="20.00")])
    assert c.infcode == InfCode.INVALID_INPUT and "med_list_codg" in c.err_msg
    d = centre.client.call("2206", {"data": {"psn_no": p.psn_no}})
    assert d.infcode == InfCode.INVALID_INPUT
    u = centre.client.call("9999", {})
    assert u.infcode == InfCode.UNKNOWN_TRANSACTION and "/fsi/api/9999" in u.err_msg
    for body in (b"", b"not json", b"[]", b'{"appId": 5}', json.dumps({"appId": "X" * 20}).encode()):
        r = centre.http.post("/fsi/api/2206", content=body)
        assert r.status_code in (400, 401) and r.json()["infcode"] != 0
    other = centre.people[9]
    e = centre.client.presettle(head(other, token, medfee), feedetail)  # someone else's token
    assert e.infcode == InfCode.IDENTITY_MISMATCH


def test_mutual_aid_relation_checked_and_used(centre: Centre) -> None:
    a, spouse, stranger = centre.people[10], centre.people[11], centre.people[12]
    cl = centre.client
    tok = centre.activate(a)
    r = cl.mulaid_authorise(a.psn_no, stranger.psn_no, stranger.certno, "spouse", ec_token=tok)
    assert r.infcode == InfCode.RELATION_NOT_ALLOWED and r.err_code == "not_a_relative"
    r = cl.mulaid_authorise(a.psn_no, spouse.psn_no, spouse.certno, "sibling", ec_token=tok)
    assert r.infcode == InfCode.RELATION_NOT_ALLOWED and r.err_code == "relation_mismatch"
    r = cl.mulaid_authorise(a.psn_no, spouse.psn_no, a.certno, "spouse", ec_token=tok)  # not the relative's ID number
    assert r.infcode == InfCode.IDENTITY_MISMATCH
    assert cl.mulaid_authorise(a.psn_no, spouse.psn_no, spouse.certno, "spouse", ec_token=tok).ok
    token = centre.activate(a)
    bal_a, bal_s = balance(centre, a.psn_no), balance(centre, spouse.psn_no)
    big = f"{(bal_a + bal_s) // 100 + 5000}.00"
    medfee, feedetail = lines(("XC02", big, "1"))  # class C: all self-paid
    st = cl.settle(head(a, token, medfee, acct_mulaid_flag="1"), feedetail)
    assert st.ok, st
    s = st.output["setlinfo"]
    assert s["acct_pay"] == fen_to_yuan(bal_a) and s["acct_mulaid_pay"] == fen_to_yuan(bal_s)
    assert balance(centre, spouse.psn_no) == 0
    assert cl.reverse(s["setl_id"], a.psn_no).ok
    assert balance(centre, spouse.psn_no) == bal_s and balance(centre, a.psn_no) == bal_a


def test_message_reversal_2601_before_and_after_arrival(centre: Centre) -> None:
    p = centre.people[14]
    token = centre.activate(p)
    medfee, feedetail = lines(("XA02", "20.00", "1"))
    bal0 = balance(centre, p.psn_no)
    # answer lost: the terminal reverses by message id
    m1 = centre.client.new_msgid()
    assert centre.client.settle(head(p, token, medfee), feedetail, msgid=m1).ok
    r = centre.client.reverse_message(p.psn_no, m1)
    assert r.ok and r.output["result"] == "reversed" and balance(centre, p.psn_no) == bal0
    assert centre.client.reverse_message(p.psn_no, m1).output["result"] == "already_reversed"
    # the message never arrived: 2601 blocks it, so a late arrival is not applied
    m2 = centre.client.new_msgid()
    r = centre.client.reverse_message(p.psn_no, m2)
    assert r.ok and r.output["result"] == "not_applied"
    late = centre.client.settle(head(p, token, medfee), feedetail, msgid=m2)
    assert late.infcode == InfCode.ALREADY_REVERSED and late.err_code == "message_reversed"
    assert centre.client.query(p.psn_no, omsgid=m2).output["setl_state"] == "not_applied"
    assert balance(centre, p.psn_no) == bal0
    assert check_centre(centre.db)["balanced"]


def test_pharmacy_2101_2102_2103(centre: Centre) -> None:
    p = centre.people[16]
    token = centre.activate(p)
    medfee, feedetail = lines(("XB04", "95.5", "1"), ("XA04", "30.00", "2"))
    h = head(p, token, medfee)
    pre = centre.client.presettle(h, feedetail, pharmacy=True)
    assert pre.ok and pre.output["detlcutinfo"][0]["overlmt_amt"] == "15.50"
    st = centre.client.settle(h, feedetail, pharmacy=True)
    assert st.ok
    wrong = centre.client.reverse(st.output["setlinfo"]["setl_id"], p.psn_no)  # 2208 for a pharmacy settlement
    assert wrong.infcode == InfCode.INVALID_INPUT
    assert centre.client.reverse(st.output["setlinfo"]["setl_id"], p.psn_no, pharmacy=True).ok


def test_not_signed_in_and_openapi_lists_every_transaction(centre: Centre) -> None:
    from kiosk.services.centre.models import TRANSACTIONS
    from kiosk.services.client import CentreClient

    anon = CentreClient("http://testserver", centre.client.ident, http=centre.http, clock=centre.clock)
    a = anon.person_info(certno=centre.people[0].certno)
    assert a.infcode == InfCode.NOT_SIGNED_IN
    doc = centre.http.get("/openapi.json").json()
    for infno in TRANSACTIONS:
        assert f"/fsi/api/{infno}" in doc["paths"], infno
        assert f"{infno}.input" in doc["components"]["schemas"]
    assert {"/keys", "/health", "/admin/terminals"} <= set(doc["paths"])


@pytest.mark.postgres
def test_settle_replay_and_reverse_on_postgresql(tmp_path) -> None:
    from .conftest import fresh_pg, make_centre, pg_url

    url = pg_url()
    if url is None:
        pytest.skip("KIOSK_TEST_PG_URL not set (scripts/test provides it; required under CI)")
    c = make_centre(fresh_pg(url), tmp_path, people=6)
    try:
        p = c.people[0]
        token = c.activate(p)
        medfee, feedetail = lines(("XA01", "12.50", "2"), ("XB01", "51.70", "1"))
        msgid = c.client.new_msgid()
        st = c.client.settle(head(p, token, medfee), feedetail, msgid=msgid)
        assert st.ok and c.client.settle(head(p, token, medfee), feedetail, msgid=msgid).output == st.output
        want = engine_split(p, [("XA01", "12.50", "2"), ("XB01", "51.70", "1")], p.balc)
        assert st.output["setlinfo"]["hifp_pay"] == fen_to_yuan(want.hifp_pay)
        assert c.client.reverse(st.output["setlinfo"]["setl_id"], p.psn_no).ok
        assert check_centre(c.db)["balanced"]
    finally:
        c.http.close()
        c.db.close()


def test_ambiguous_1_to_n_asks_for_phone_digits(centre: Centre) -> None:
    from datetime import date

    from kiosk.services.seed import SeedPerson, certno_for, insert_person, synthetic_template

    p = centre.people[21]
    centre.activate(p)
    # a look-alike: enrolled template a hair away from p's, another phone number
    twin_t = synthetic_template(p.psn_no) + np.float32(0.01) * synthetic_template("twin")
    twin = SeedPerson("P370202TWIN0001", "双胞胎", certno_for("370202", date(1990, 1, 1), 7, False), "1",
                      "1990-01-01", "310", "370202", "2015-01-01", "9999" if p.phone_last4 != "9999" else "8888",
                      "", 1000)
    centre.db.run(lambda tx: insert_person(tx, centre.service.keys, twin, twin_t / np.linalg.norm(twin_t)))
    cl = centre.client
    a = cl.activate(cl.seal_face(twin_t / np.linalg.norm(twin_t), "t1", "activate"), twin.certno, "t1")
    assert a.ok and a.output["psn_no"] == twin.psn_no
    probe = synthetic_template(p.psn_no)
    amb = cl.authenticate(cl.seal_face(probe, "t2", "auth"), "t2")
    assert amb.infcode == InfCode.FACE_RETRY and amb.err_code == "need_phone_digits"
    ok = cl.authenticate(cl.seal_face(probe, "t3", "auth"), "t3", phone_last4=p.phone_last4)
    assert ok.ok and ok.output["psn_no"] == p.psn_no


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(infno=st.sampled_from(sorted(__import__("kiosk.services.centre.models", fromlist=["x"]).TRANSACTIONS)),
       data=st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
                         lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=4),
                         max_leaves=12))
def test_any_input_is_an_answer_never_a_fault(centre: Centre, infno: str, data: object) -> None:
    a = centre.client.call(infno, data if isinstance(data, dict) else {"data": data})
    assert isinstance(a.infcode, int)
    if a.infcode != 0:
        assert a.err_msg and a.err_code != "internal", a


def test_envelope_refusals_name_the_field_once_and_no_header(centre: Centre) -> None:
    """A refused envelope's err_msg is one clear sentence: the field named once, and no HTTP header
    name from kiosk.security's header transport (the nonce travels inside the payload here)."""
    p = centre.people[7]
    e = _envelope(centre, "1101", {"data": {"mdtrt_cert_type": "02", "mdtrt_cert_no": p.certno}})
    e.pop("_msgid")
    assert centre.http.post("/fsi/api/1101", json=e).status_code == 200
    again = centre.http.post("/fsi/api/1101", json=e).json()
    assert again["infcode"] == InfCode.REPLAYED and again["err_field"] == "nonce"
    assert again["err_msg"] == "nonce: nonce was already used: replayed message", again
    e2 = _envelope(centre, "1101", {"data": {"mdtrt_cert_type": "02", "mdtrt_cert_no": p.certno}})
    e2.pop("_msgid")
    e2["signData"] = _envelope(centre, "1101", {"data": {}})["signData"]
    bad = centre.http.post("/fsi/api/1101", json=e2).json()
    assert bad["infcode"] == InfCode.BAD_ENVELOPE and bad["err_msg"].count("signData:") == 1, bad
    e3 = _envelope(centre, "1101", {"data": {}})
    e3.pop("_msgid")
    del e3["encType"]
    bad = centre.http.post("/fsi/api/1101", json=e3).json()
    assert bad["infcode"] == InfCode.BAD_ENVELOPE and bad["err_msg"].count("encType:") == 1, bad


def test_a_database_fault_is_a_retry_answer_that_names_no_host_or_sql(centre: Centre, monkeypatch) -> None:
    """The terminal learns to resend with the same msgid; the URL and SQL stay in the service log."""
    from kiosk.errors import StorageError

    def down(*_a, **_k):
        raise StorageError("cannot open postgresql://centre:pw@10.0.0.5:5432/centre: too many clients already",
                           code="unavailable", field="database_url")

    monkeypatch.setattr(centre.db, "run", down)
    a = centre.client.call("1101", {"data": {"mdtrt_cert_type": "02", "mdtrt_cert_no": centre.people[0].certno,
                                              "psn_cert_type": "01"}})
    assert a.infcode == InfCode.STORAGE and a.err_code == "unavailable"
    assert "same msgid" in a.err_msg
    assert "postgresql" not in a.err_msg and "10.0.0.5" not in a.err_msg and "pw" not in a.err_msg


def _mulaid_patient(centre: Centre):
    """Patient people[23] whose spouse people[22] (psn_no sorts first) pays through mutual aid."""
    a, spouse = centre.people[23], centre.people[22]
    assert spouse.psn_no < a.psn_no
    assert centre.client.mulaid_authorise(a.psn_no, spouse.psn_no, spouse.certno, "spouse",
                                          ec_token=centre.activate(a)).ok
    return a, spouse


def test_reversals_lock_people_in_psn_no_order_like_settlement(centre: Centre, monkeypatch) -> None:
    # A settlement locks (relative, patient) in psn_no order; a 2208/2601 that locked the patient first and
    # then the relative deadlocked with it on PostgreSQL (measured: 14 deadlocks in 15 rounds, 1-3 s stalls).
    a, spouse = _mulaid_patient(centre)
    token = centre.activate(a)
    order: list[str] = []
    real = Transaction.fetch_each

    def spy(tx, statements):  # people are locked through fetch_each (one round trip), in statement order
        for sql, params in statements:
            if "FROM centre_persons WHERE psn_no = ?" in sql and params[0] not in order:
                order.append(params[0])
        return real(tx, statements)

    monkeypatch.setattr(Transaction, "fetch_each", spy)
    medfee, feedetail = lines(("XC02", f"{balance(centre, a.psn_no) // 100 + 30}.00", "1"))
    for how in ("2208", "2601"):
        msgid = centre.client.new_msgid()
        st = centre.client.settle(head(a, token, medfee, acct_mulaid_flag="1"), feedetail, msgid=msgid)
        assert st.ok and st.output["setlinfo"]["acct_mulaid_pay"] != "0.00", st
        order.clear()
        r = (centre.client.reverse(st.output["setlinfo"]["setl_id"], a.psn_no) if how == "2208"
             else centre.client.reverse_message(a.psn_no, msgid))
        assert r.ok, r
        assert order == sorted(order) == [spouse.psn_no, a.psn_no], (how, order)
    assert check_centre(centre.db)["balanced"]


def test_mutual_aid_revoked_while_a_settlement_waits_for_the_lock_is_not_charged(centre: Centre,
                                                                                   monkeypatch) -> None:
    # The settlement reads the authorisation, then waits for the person locks; a revoke that commits in
    # that gap must win: the relative's account is not charged after they withdrew consent.
    a, spouse = centre.people[9], centre.people[8]
    token = centre.activate(a)
    assert centre.client.mulaid_authorise(a.psn_no, spouse.psn_no, spouse.certno, "spouse", ec_token=token).ok
    bal_s = balance(centre, spouse.psn_no)
    real = centre.service._lock_people

    def revoke_meanwhile(tx, *psn_nos, **kw):
        tx.execute("DELETE FROM centre_mulaid WHERE psn_no = ?", (a.psn_no,))  # as a revoke committed just now
        return real(tx, *psn_nos, **kw)

    monkeypatch.setattr(centre.service, "_lock_people", revoke_meanwhile)
    medfee, feedetail = lines(("XC02", f"{balance(centre, a.psn_no) // 100 + 30}.00", "1"))
    st = centre.client.settle(head(a, token, medfee, acct_mulaid_flag="1"), feedetail)
    assert st.infcode == InfCode.NO_AUTHORISATION, st
    assert balance(centre, spouse.psn_no) == bal_s
