"""Draws and holds belong to the institution that made them: to any other, they do not exist."""
from __future__ import annotations

from datetime import date, datetime

from kiosk.clock import SHANGHAI, ManualClock
from kiosk.credit import CreditService, Owner
from kiosk.storage import Database

CLINIC = Owner("H37020200001", "KIOSK-CLINIC-0001")
HOSPITAL = Owner("H37020200002", "KIOSK-HOSP-00001")


def _svc(db: Database) -> CreditService:
    svc = CreditService(db, ManualClock(datetime(2026, 3, 2, 10, tzinfo=SHANGHAI)))
    assert svc.open("o1", "HOLDER", date(1985, 1, 1), 6).ok
    return svc


def test_only_the_drawing_institution_refunds_and_never_above_what_is_left(db: Database) -> None:
    svc = _svc(db)
    assert svc.draw("d1", "HOLDER", 50000, "S-1", owner=HOSPITAL).ok
    row = db.read(lambda tx: tx.fetch_one("SELECT fixmedins_code, app_id FROM credit_draws WHERE ref = 'S-1'"))
    assert tuple(row) == (HOSPITAL.institution, HOSPITAL.app_id)
    theirs = svc.refund("r-x", "S-1", 200, institution=CLINIC.institution)
    none = svc.refund("r-y", "S-none", 200, institution=CLINIC.institution)
    assert theirs == none and theirs.code == "unknown_ref"  # the same value: no existence oracle
    assert svc.refund("r1", "S-1", 30000, institution=HOSPITAL.institution).ok
    over = svc.refund("r2", "S-1", 20001, institution=HOSPITAL.institution)
    assert over.code == "exceeds_original" and over.detail["refundable"] == "200.00"
    assert svc.refund("r3", "S-1", 20000, institution=HOSPITAL.institution).ok
    assert svc.check().ok


def test_a_hold_is_captured_or_released_only_by_its_institution(db: Database) -> None:
    svc = _svc(db)
    assert svc.hold("h1", "HOLDER", 100000, "ADM-1", owner=HOSPITAL).ok
    for r in (svc.capture("c-x", "ADM-1", 100, institution=CLINIC.institution),
              svc.release("r-x", "ADM-1", institution=CLINIC.institution)):
        assert r.code == "unknown_ref"
    assert svc.capture("c-over", "ADM-1", 100001, institution=HOSPITAL.institution).code == "exceeds_hold"
    cap = svc.capture("c1", "ADM-1", 40000, institution=HOSPITAL.institution)
    assert cap.ok and cap.detail["drawn"] == "400.00"
    # the draw the capture made belongs to the hold's institution and terminal
    row = db.read(lambda tx: tx.fetch_one("SELECT fixmedins_code, app_id FROM credit_draws WHERE ref = 'ADM-1'"))
    assert tuple(row) == (HOSPITAL.institution, HOSPITAL.app_id)
    assert svc.refund("rf-x", "ADM-1", 100, institution=CLINIC.institution).code == "unknown_ref"
    assert svc.check().ok


def test_covers_says_only_whether_a_draw_would_pass_and_draws_nothing(db: Database) -> None:
    """What the bank tells a counter (credit.line): the line's holder and whether this amount would be
    drawn now - bound, within the available credit and the member's monthly cap, not overdue."""
    svc = _svc(db)
    assert svc.bind("b1", "HOLDER", "MEMBER", "spouse", True, 5000).ok
    before = svc.state("HOLDER")
    assert svc.covers("HOLDER", 2_000_000) == ("HOLDER", True)
    assert svc.covers("HOLDER", before.available + 1) == ("HOLDER", False)
    assert svc.covers("MEMBER", 5000) == ("HOLDER", True)
    assert svc.covers("MEMBER", 5001) == ("HOLDER", False)  # over the member's monthly cap
    assert svc.covers("NOBODY", 100) == (None, False)
    assert svc.state("HOLDER").available == before.available  # nothing drawn or held
    assert svc.draw("d1", "HOLDER", 1000, "S-9", owner=HOSPITAL).ok
    svc.clock.advance(days=61)  # type: ignore[attr-defined]
    assert svc.covers("HOLDER", 100) == ("HOLDER", False)  # overdue: no new draw
    assert svc.check().ok
