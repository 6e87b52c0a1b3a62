"""A return's re-settlement at the centre (2207/2102 with orig_setl_id): the original face-proved
settlement is the authority, so a return resumed after the face's e-voucher expired (15 min) still
completes, and nobody can use it to charge anything the patient did not already buy."""
from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any, Iterator

import pytest

from kiosk.security.sm import Sm2PrivateKey
from kiosk.services import payauth, seed
from kiosk.services.centre.check import check_centre
from kiosk.services.client import CentreClient, ServiceIdentity
from kiosk.services.protocol import Answer, InfCode

from .conftest import INSTITUTION, Centre, fresh_pg, head, lines, make_centre, pg_url

OTHER = "H37020200001"  # another institution of the same area
BOUGHT = (("XA01", "12.50", "2"), ("XC02", "30.00", "1"), ("XC01", "8.80", "3"))
KEPT = (("XA01", "12.50", "1"), ("XC02", "30.00", "1"))  # one box of XA01 and all of XC01 go back


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def c(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Centre]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/centre.db"
    else:
        pg = pg_url()
        if pg is None:
            pytest.skip("KIOSK_TEST_PG_URL not set (scripts/test provides it; required under CI)")
        url = fresh_pg(pg)
    c = make_centre(url, tmp_path, people=12)
    yield c
    c.http.close()
    c.db.close()


def _other(c: Centre) -> CentreClient:
    key = Sm2PrivateKey.generate()
    app_id, secret = "KIOSKOTHER" + secrets.token_hex(5).upper(), secrets.token_hex(16)
    c.gateway.register_terminal(app_id, secret, key.public_key().to_bytes().hex(), OTHER)
    cl = CentreClient("http://testserver", ServiceIdentity(app_id, secret, key, OTHER), http=c.http, clock=c.clock)
    cl.sign_in("intruder")
    return cl


def _paid(c: Centre, p: Any) -> tuple[str, str]:
    """The original: settled with the patient's face (ecToken); (setl_id, token)."""
    token = c.activate(p)
    medfee, detail = lines(*BOUGHT)
    a = c.client.settle(head(p, token, medfee, acct_used_flag="0"), detail)
    assert a.ok, a
    return _announced(c, p, a.output["setlinfo"]["setl_id"]), token


def _announced(c: Centre, p: Any, orig: str, spec: tuple[tuple[str, str, str], ...] = BOUGHT,
               **kw: str) -> str:
    """The return announced, as the terminal does: its kept lines pre-settled while the original stands."""
    medfee, detail = lines(*spec)
    a = c.client.presettle(head(p, orig, medfee, acct_used_flag="0", orig_setl_id=orig, **kw), detail)
    assert a.ok, a
    return orig


def _resettle(cl: CentreClient, p: Any, orig: str, spec: tuple[tuple[str, str, str], ...] = KEPT, *,
              cert: str | None = None, commit: bool = True, msgid: str | None = None, pharmacy: bool = False) -> Answer:
    medfee, detail = lines(*spec)
    h = head(p, cert or orig, medfee, acct_used_flag="0", orig_setl_id=orig)
    if commit:
        return cl.settle(h, detail, msgid=msgid, pharmacy=pharmacy)
    return cl.presettle(h, detail, pharmacy=pharmacy)


def _fields(a: Answer) -> tuple[Any, ...]:
    return a.infcode, a.err_code, a.err_msg, a.output


def test_a_return_is_resettled_on_the_originals_authority_after_the_face_token_expired(c: Centre) -> None:
    p = c.people[0]
    orig, token = _paid(c, p)
    pre = _resettle(c.client, p, orig, commit=False)  # shown to the patient before the reversal
    assert pre.ok, pre
    # without the face the answer does not tell the account's balance (any counter of the institution
    # could otherwise read it, again and again, for the 30 days of the return window)
    assert "balc" not in pre.output["setlinfo"]
    assert c.client.reverse(orig, p.psn_no).ok
    c.clock.advance(hours=3)  # the counter was down: the face's e-voucher (15 min) has expired
    medfee, detail = lines(*KEPT)
    assert c.client.settle(head(p, token, medfee, acct_used_flag="0"), detail).err_code == "token_expired"
    msgid = c.client.new_msgid()
    a = _resettle(c.client, p, orig, msgid=msgid)
    assert a.ok, a
    s = a.output["setlinfo"]
    # by hand: 12.50 (class A) + 30.00 (class C), inside the level-2 deductible, account not used: all cash
    assert (s["medfee_sumamt"], s["psn_cash_pay"]) == (pre.output["setlinfo"]["medfee_sumamt"], "42.50")
    assert "balc" not in s
    assert a.output.get("pay_auth"), "the new cash share may be drawn on credit as for any face-proved settlement"
    # the same message replays its first answer; another message may not re-settle it again
    again = _resettle(c.client, p, orig, msgid=msgid)
    assert again.ok and again.output["setlinfo"]["setl_id"] == s["setl_id"]
    second = _resettle(c.client, p, orig)
    assert (second.infcode, second.err_code) == (InfCode.BUSINESS_REFUSED, "already_resettled"), second
    rows = c.db.read(lambda tx: tx.fetch_all("SELECT state FROM centre_settlements WHERE psn_no = ? ORDER BY "
                                             "created_at", (p.psn_no,)))
    assert [r[0] for r in rows] == ["reversed", "settled"]
    assert check_centre(c.db)["balanced"]


def test_the_authority_charges_only_a_part_of_what_was_bought(c: Centre) -> None:
    p = c.people[1]
    orig, _token = _paid(c, p)
    not_yet = _resettle(c.client, p, orig)
    assert (not_yet.infcode, not_yet.err_code) == (InfCode.BUSINESS_REFUSED, "not_reversed"), not_yet
    assert c.client.reverse(orig, p.psn_no).ok
    for spec, code, field in (
            ((("XA01", "12.50", "3"),), "more_than_original", "input.data.feedetail[0].cnt"),
            ((("XA01", "12.50", "1"), ("XA01", "12.50", "2")), "more_than_original", "input.data.feedetail[1].cnt"),
            ((("XA01", "13.00", "1"),), "not_on_original", "input.data.feedetail[0].med_list_codg"),
            ((("XA01", "12.50", "1"), ("F003", "130.00", "1")), "not_on_original",
             "input.data.feedetail[1].med_list_codg")):
        a = _resettle(c.client, p, orig, spec)
        assert (a.infcode, a.err_code) == (InfCode.BUSINESS_REFUSED, code), (spec, a)
        assert field in a.err_msg, a
    # nothing of it settled; a kept part (all of it here) still may be
    assert c.db.read(lambda tx: tx.scalar("SELECT COUNT(*) FROM centre_settlements WHERE psn_no = ? AND "
                                          "state = 'settled'", (p.psn_no,))) == 0
    assert _resettle(c.client, p, orig, BOUGHT).ok


def test_another_person_or_institution_gets_not_found_and_no_face_no_second_authority(c: Centre) -> None:
    p, q = c.people[2], c.people[3]
    orig, _token = _paid(c, p)
    assert c.client.reverse(orig, p.psn_no).ok
    missing_id = "S" + orig[1:9] + "0" * 16
    # another person at this institution, another institution's terminal: the answer a missing id gets
    c.activate(q)
    for cl, who in ((c.client, q), (_other(c), p)):
        theirs, none = _resettle(cl, who, orig), _resettle(cl, who, missing_id)
        assert theirs.infcode == InfCode.NOT_FOUND, theirs
        assert _fields(theirs) == _fields(none)
    audit = c.db.read(lambda tx: tx.fetch_all("SELECT fixmedins_code, infno FROM centre_audit WHERE object_id = ?",
                                              (orig,)))
    assert audit == [(OTHER, "2207")]
    # a made-up token is still checked as a token
    forged = _resettle(c.client, p, orig, cert="EC.x.1.abc")
    assert not forged.ok and forged.infcode in (InfCode.INVALID_INPUT, InfCode.IDENTITY_MISMATCH)
    # the re-settlement (made without the face) is no authority for a second return of it
    new = _resettle(c.client, p, orig)
    assert new.ok, new
    new_id = new.output["setlinfo"]["setl_id"]
    assert c.client.reverse(new_id, p.psn_no).ok
    again = _resettle(c.client, p, new_id, (("XA01", "12.50", "1"),))
    assert (again.infcode, again.err_code) == (InfCode.BUSINESS_REFUSED, "not_face_proved"), again


def test_the_return_window_closes(c: Centre) -> None:
    p = c.people[4]
    orig, _token = _paid(c, p)
    assert c.client.reverse(orig, p.psn_no).ok
    c.clock.advance(days=31)
    late = _resettle(c.client, p, orig)
    assert (late.infcode, late.err_code) == (InfCode.BUSINESS_REFUSED, "return_window_closed"), late


def _purpose(c: Centre, a: Answer) -> str:
    return payauth.verify(a.output["pay_auth"], c.service.keys.sm2.public_key()).purpose


def _settled(c: Centre, p: Any) -> int:
    return c.db.read(lambda tx: tx.scalar("SELECT COUNT(*) FROM centre_settlements WHERE psn_no = ? AND "
                                          "state = 'settled'", (p.psn_no,)))


def test_a_line_split_into_smaller_lines_does_not_round_up_to_more_than_was_paid(c: Centre) -> None:
    """10 x 0.0150 is 0.15 as one line; as ten lines of one it would be ten roundings up, 0.20."""
    p = c.people[5]
    token = c.activate(p)
    medfee, detail = lines(("XA01", "0.0150", "10"))
    a = c.client.settle(head(p, token, medfee, acct_used_flag="0"), detail)
    assert a.ok, a
    orig = _announced(c, p, a.output["setlinfo"]["setl_id"], (("XA01", "0.0150", "5"),))
    assert c.client.reverse(orig, p.psn_no).ok
    for spec in ((("XA01", "0.0150", "1"),) * 10, (("XA01", "0.0150", "5"),) * 2):
        split = _resettle(c.client, p, orig, spec)
        assert (split.infcode, split.err_code) == (InfCode.BUSINESS_REFUSED, "more_than_original"), split
        assert "det_item_fee_sumamt" in split.err_msg
    assert _settled(c, p) == 0
    kept = _resettle(c.client, p, orig, (("XA01", "0.0150", "5"),))  # one line of 5: 0.08, a part of 0.15
    assert kept.ok and kept.output["setlinfo"]["medfee_sumamt"] == "0.08", kept


def test_a_return_keeps_the_originals_med_type(tmp_path: Path, c: Centre) -> None:
    """A general outpatient purchase is not re-settled as chronic care (a better fund share), face or not."""
    seed.seed_region(c.db, c.service.keys, 8, "370602")
    p = next(x for x in seed.synthetic_people(8, "370602") if x.conditions)
    token = c.activate(p)
    medfee, detail = lines(("XA01", "12.50", "4"))
    a = c.client.settle(head(p, token, medfee, acct_used_flag="0", med_type="11"), detail)
    assert a.ok, a
    orig = _announced(c, p, a.output["setlinfo"]["setl_id"], (("XA01", "12.50", "2"),), med_type="11")
    assert c.client.reverse(orig, p.psn_no).ok
    kept_fee, kept = lines(("XA01", "12.50", "2"))
    for cert in (orig, c.activate(p)):
        for call in (c.client.presettle, c.client.settle):
            chronic = call(head(p, cert, kept_fee, acct_used_flag="0", med_type="14", orig_setl_id=orig), kept)
            assert (chronic.infcode, chronic.err_code) == (InfCode.BUSINESS_REFUSED, "not_as_original"), chronic
    assert _settled(c, p) == 0
    same = c.client.settle(head(p, orig, kept_fee, acct_used_flag="0", med_type="11", orig_setl_id=orig), kept)
    assert same.ok, same


def test_without_the_face_a_return_never_starts_spending_a_relatives_account(c: Centre) -> None:
    p, spouse = c.people[6], c.people[7]  # spouses in the seed
    orig, _token = _paid(c, p)  # own account and cash, no relative's account
    token = c.activate(p)
    assert c.client.mulaid_authorise(p.psn_no, spouse.psn_no, spouse.certno, "spouse", ec_token=token).ok
    assert c.client.reverse(orig, p.psn_no).ok
    before = c.db.read(lambda tx: tx.scalar("SELECT balc FROM centre_persons WHERE psn_no = ?", (spouse.psn_no,)))
    medfee, detail = lines(*KEPT)
    for call in (c.client.presettle, c.client.settle):
        a = call(head(p, orig, medfee, acct_used_flag="0", acct_mulaid_flag="1", orig_setl_id=orig), detail)
        # NO_AUTHORISATION: the terminal settles the own account only, as when no relative authorised
        assert (a.infcode, a.ok) == (InfCode.NO_AUTHORISATION, False), a
    assert _settled(c, p) == 0
    own = _resettle(c.client, p, orig)
    assert own.ok and own.output["setlinfo"]["acct_mulaid_pay"] == "0.00", own
    after = c.db.read(lambda tx: tx.scalar("SELECT balc FROM centre_persons WHERE psn_no = ?", (spouse.psn_no,)))
    assert after == before


def test_a_senseless_charges_return_is_never_a_counter_draw_without_the_face(c: Centre) -> None:
    """A visit's charge was drawn under the patient's mandate (pay_auth `senseless`, the visit's caps): its
    re-settlement on its own authority stays senseless, for no more than its cash share; a counter `draw`
    authorisation needs the patient's face."""
    p = c.people[8]
    v = c.client.open_visit(p.psn_no, c.activate(p), p.insutype)
    assert v.ok, v
    medfee, detail = lines(*BOUGHT)
    a = c.client.settle(head(p, v.output["visit_token"], medfee, acct_used_flag="0",
                             mdtrt_id=v.output["mdtrt_id"]), detail)
    assert a.ok and _purpose(c, a) == "senseless", a
    orig = _announced(c, p, a.output["setlinfo"]["setl_id"])
    assert c.client.reverse(orig, p.psn_no).ok
    new = _resettle(c.client, p, orig)
    assert new.ok, new
    claims = payauth.verify(new.output["pay_auth"], c.service.keys.sm2.public_key())
    new_id = new.output["setlinfo"]["setl_id"]
    assert (claims.purpose, claims.ref) == ("senseless", payauth.senseless_ref(new_id, v.output["mdtrt_id"]))
    # with the patient's face at the counter it is what any face-proved settlement is: a counter draw
    q = c.people[9]
    vq = c.client.open_visit(q.psn_no, c.activate(q), q.insutype)
    b = c.client.settle(head(q, vq.output["visit_token"], medfee, acct_used_flag="0",
                             mdtrt_id=vq.output["mdtrt_id"]), detail)
    assert b.ok, b
    assert c.client.reverse(b.output["setlinfo"]["setl_id"], q.psn_no).ok
    by_face = _resettle(c.client, q, b.output["setlinfo"]["setl_id"], cert=c.activate(q))
    assert by_face.ok and _purpose(c, by_face) == "draw", by_face


def test_without_the_face_no_cash_authorisation_above_the_originals(c: Centre) -> None:
    """The original paid from the account; its part re-settled without the account would put more on cash
    than the patient authorised: settled (the return goes forward), but no pay_auth for the excess."""
    p = c.people[10]  # 1,411.30 on the account
    token = c.activate(p)
    medfee, detail = lines(*BOUGHT)
    a = c.client.settle(head(p, token, medfee, acct_used_flag="1"), detail)
    assert a.ok and a.output["setlinfo"]["psn_cash_pay"] == "0.00" and "pay_auth" not in a.output, a
    orig = _announced(c, p, a.output["setlinfo"]["setl_id"])
    assert c.client.reverse(orig, p.psn_no).ok
    new = _resettle(c.client, p, orig)  # acct_used_flag 0: all 42.50 on cash
    assert new.ok and new.output["setlinfo"]["psn_cash_pay"] == "42.50", new
    assert "pay_auth" not in new.output


def test_two_messages_racing_to_resettle_one_original_settle_it_once(c: Centre) -> None:
    """Two counters (two msgids) at once: one re-settlement, the other `already_resettled`, nothing else."""
    import threading

    p = c.people[11]
    orig, _token = _paid(c, p)
    assert c.client.reverse(orig, p.psn_no).ok
    out: list[Answer] = []
    lock = threading.Lock()
    go = threading.Barrier(4)

    def run() -> None:
        go.wait(timeout=30)
        a = _resettle(c.client, p, orig)
        with lock:
            out.append(a)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert sorted(a.err_code or "ok" for a in out) == ["already_resettled"] * 3 + ["ok"], out
    assert _settled(c, p) == 1
    assert check_centre(c.db)["balanced"]


def _twin(c: Centre) -> CentreClient:
    """A second terminal of the same institution."""
    key = Sm2PrivateKey.generate()
    app_id, secret = "KIOSKTWIN" + secrets.token_hex(5).upper(), secrets.token_hex(16)
    c.gateway.register_terminal(app_id, secret, key.public_key().to_bytes().hex(), INSTITUTION)
    cl = CentreClient("http://testserver", ServiceIdentity(app_id, secret, key, INSTITUTION),
                      http=c.http, clock=c.clock)
    cl.sign_in("twin")
    return cl


def test_a_whole_refund_a_cancelled_payment_or_another_terminals_reversal_is_no_authority(c: Centre) -> None:
    """Reversed, but not for a return announced at this terminal: charging the lines again (goods given
    back, or never handed over) needs the patient's face."""
    p = c.people[0]
    twin = _twin(c)
    token = c.activate(p)
    medfee, detail = lines(*BOUGHT)
    made = []
    for _ in range(3):
        msgid = c.client.new_msgid()
        a = c.client.settle(head(p, token, medfee, acct_used_flag="0"), detail, msgid=msgid)
        assert a.ok, a
        made.append((a.output["setlinfo"]["setl_id"], msgid))
    (refunded, _m1), (cancelled, m2), (elsewhere, _m3) = made
    assert c.client.reverse(refunded, p.psn_no).ok                     # a whole refund: 2208, unannounced
    assert c.client.reverse_message(p.psn_no, m2).output["result"] == "reversed"  # the payment cancelled
    _announced(c, p, elsewhere)                                          # announced here, reversed there
    assert twin.reverse(elsewhere, p.psn_no).ok
    for cl, orig in ((c.client, refunded), (c.client, cancelled), (c.client, elsewhere), (twin, elsewhere)):
        a = _resettle(cl, p, orig)
        assert (a.infcode, a.err_code) == (InfCode.BUSINESS_REFUSED, "not_a_return"), (orig, a)
    assert _settled(c, p) == 0
    # announced after the reversal: nothing recorded, still no authority; the patient's face still may
    _announced(c, p, refunded)
    assert _resettle(c.client, p, refunded).err_code == "not_a_return"
    assert _resettle(c.client, p, refunded, cert=c.activate(p)).ok
