"""A return's re-settlement at the centre (2207/2102 with orig_setl_id): the original face-proved
settlement is the authority, so a return resumed after the face's e-voucher expired (15 min) still
completes, and nobody can use it to charge anything the patient did not already buy."""
from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any, Iterator

import pytest

from kiosk.security.sm import Sm2PrivateKey
from kiosk.services.centre.check import check_centre
from kiosk.services.client import CentreClient, ServiceIdentity
from kiosk.services.protocol import Answer, InfCode

from .conftest import Centre, fresh_pg, head, lines, make_centre, pg_url

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
    c = make_centre(url, tmp_path, people=8)
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
    return a.output["setlinfo"]["setl_id"], token


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
