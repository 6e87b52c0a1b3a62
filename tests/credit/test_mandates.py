"""Mandates in kiosk.credit: senseless draws (the payer not present) never pass a mandate's caps, even when
many arrive at once from threads, and a family line shared with counter payments never passes its limit."""
from __future__ import annotations

import threading
from datetime import date, datetime, timedelta

import pytest

from kiosk.clock import SHANGHAI, ManualClock
from kiosk.credit import CreditService, MandateUse, Owner, rules
from kiosk.storage import Database

HOSPITAL = Owner("H37020200002", "KIOSK-A")
CLINIC = Owner("H37020200001", "KIOSK-B")
DAY = date(2026, 3, 10)


def _svc(db: Database) -> tuple[CreditService, ManualClock]:
    clock = ManualClock(datetime(2026, 3, 10, 9, 0, tzinfo=SHANGHAI))
    return CreditService(db, clock), clock


def _family(svc: CreditService) -> None:
    """H holds a 2,000.00 line (0 years insured); M is bound to it (no monthly cap)."""
    assert svc.open("open-h", "H", date(1980, 5, 1), 0).ok
    assert svc.bind("bind-m", "H", "M", "child", True).ok


def _senseless_total(db: Database, mandate_id: str, visit: str | None = None) -> int:
    sql = "SELECT SUM(original_fen) FROM credit_draws WHERE mandate_id = ?" + (" AND visit = ?" if visit else "")
    return int(db.read(lambda tx: tx.scalar(sql, (mandate_id, visit) if visit else (mandate_id,), default=0)) or 0)


def _run(threads: list[threading.Thread]) -> None:
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads)


def test_concurrent_senseless_draws_never_pass_the_per_visit_cap(db: Database) -> None:
    svc, _clock = _svc(db)
    assert svc.open("open-p", "P", date(1980, 1, 1), 6).ok
    m = svc.mandate("m1", "P", HOSPITAL, 30_000, 50_000, DAY + timedelta(days=30), ("own",), "PAM1")
    assert m.ok, m
    mid = m.detail["mandate_id"]
    results: list[str] = []
    lock = threading.Lock()

    def charge(i: int) -> None:
        r = svc.draw(f"k{i}", "P", 7_000, f"S{i:03d}", owner=HOSPITAL, mandate=MandateUse(mid, "V1"))
        with lock:
            results.append(r.code)

    _run([threading.Thread(target=charge, args=(i,)) for i in range(12)])
    # 300.00 per visit, 70.00 each: exactly four fit, the other eight come back "needs the patient"
    assert sorted(results) == ["mandate_cap_visit"] * 8 + ["ok"] * 4
    assert _senseless_total(db, mid, "V1") == 28_000
    assert svc.check().ok


def test_concurrent_draws_on_two_visits_never_pass_the_per_day_cap(db: Database) -> None:
    svc, clock = _svc(db)
    assert svc.open("open-p", "P", date(1980, 1, 1), 6).ok
    mid = svc.mandate("m1", "P", HOSPITAL, 30_000, 50_000, DAY + timedelta(days=30), ("own",), "PAM1"
                      ).detail["mandate_id"]
    codes: list[str] = []
    lock = threading.Lock()

    def charge(i: int) -> None:
        r = svc.draw(f"k{i}", "P", 10_000, f"S{i:03d}", owner=HOSPITAL, mandate=MandateUse(mid, f"V{i % 3}"))
        with lock:
            codes.append(r.code)

    _run([threading.Thread(target=charge, args=(i,)) for i in range(12)])
    assert codes.count("ok") == 5  # 500.00 a day, 100.00 each, over three visits of 300.00 each
    assert set(codes) <= {"ok", "mandate_cap_day", "mandate_cap_visit"}
    assert _senseless_total(db, mid) == 50_000
    for v in ("V0", "V1", "V2"):
        assert _senseless_total(db, mid, v) <= 30_000
    # the next Shanghai day has its own cap; the visit's does not reset (a visit is one day anyway)
    clock.set(datetime(2026, 3, 11, 0, 0, 1, tzinfo=SHANGHAI))
    assert svc.draw("next-day", "P", 10_000, "S900", owner=HOSPITAL, mandate=MandateUse(mid, "V9")).ok
    assert svc.check().ok


def test_family_line_shared_by_senseless_and_counter_draws_stays_within_caps_and_limit(db: Database) -> None:
    svc, _clock = _svc(db)
    _family(svc)
    m = svc.mandate("m1", "M", HOSPITAL, 30_000, 50_000, DAY + timedelta(days=30), ("family",), "PAM1")
    assert m.ok and m.detail["holders"] == {"own": None, "family": "H"}
    mid = m.detail["mandate_id"]
    codes: dict[str, list[str]] = {"senseless": [], "counter": []}
    lock = threading.Lock()

    def senseless(i: int) -> None:
        r = svc.draw(f"s{i}", "M", 10_000, f"SS{i:03d}", owner=HOSPITAL, mandate=MandateUse(mid, f"V{i % 2}"))
        with lock:
            codes["senseless"].append(r.code)

    def counter(i: int) -> None:  # the holder paying at counters with the face, on the same line
        r = svc.draw(f"c{i}", "H", 18_000, f"SC{i:03d}", owner=CLINIC)
        with lock:
            codes["counter"].append(r.code)

    threads = [threading.Thread(target=senseless, args=(i,)) for i in range(10)]
    threads += [threading.Thread(target=counter, args=(i,)) for i in range(10)]
    threads = threads[::2] + threads[1::2]  # interleaved
    _run(threads)
    st = svc.state("H")
    assert st.principal_outstanding <= st.limit == 200_000
    assert _senseless_total(db, mid) <= 50_000
    for v in ("V0", "V1"):
        assert _senseless_total(db, mid, v) <= 30_000
    ok_s, ok_c = codes["senseless"].count("ok"), codes["counter"].count("ok")
    assert st.principal_outstanding == ok_s * 10_000 + ok_c * 18_000
    assert set(codes["senseless"]) <= {"ok", "mandate_cap_day", "mandate_cap_visit", "exceeds_available"}
    assert set(codes["counter"]) <= {"ok", "exceeds_available"}
    assert svc.check().ok


def test_one_mandate_on_two_lines_serialises_on_the_mandate_not_only_the_line(db: Database) -> None:
    """A payer bound to a family line who later opened an own line: a mandate naming both has draws under
    two different line locks; the mandate row's lock keeps the shared caps."""
    svc, _clock = _svc(db)
    _family(svc)
    assert svc.open("open-m", "M", date(1990, 1, 1), 6).ok
    m = svc.mandate("m1", "M", HOSPITAL, 40_000, 1_000_000, DAY + timedelta(days=3), ("own", "family"), "PAM1")
    assert m.detail["holders"] == {"own": "M", "family": "H"}
    mid = m.detail["mandate_id"]
    start = threading.Barrier(2)

    def charge(i: int, visit: str) -> None:
        start.wait(timeout=30)  # the two draws race: one on each line
        svc.draw(f"k{i}", "M", 10_000, f"S{i:03d}", "H" if i % 2 else None, owner=HOSPITAL,
                 mandate=MandateUse(mid, visit))

    for r in range(20):  # 20 visits, 300.00 each way: one draw of each pair must be refused
        start.reset()
        mid_visit = f"V{r}"
        svc.draw(f"pre{r}", "M", 30_000, f"P{r:03d}", owner=HOSPITAL, mandate=MandateUse(mid, mid_visit))
        _run([threading.Thread(target=charge, args=(2 * r + k, mid_visit)) for k in range(2)])
        assert _senseless_total(db, mid, mid_visit) == 40_000
    assert svc.state("H").principal_outstanding + svc.state("M").principal_outstanding == 20 * 40_000
    assert svc.check().ok


def test_a_draw_under_a_mandate_checks_who_where_which_line_and_until(db: Database) -> None:
    svc, clock = _svc(db)
    _family(svc)
    assert svc.open("open-p", "P", date(1980, 1, 1), 6).ok
    mh = svc.mandate("mh", "M", HOSPITAL, 30_000, 50_000, DAY + timedelta(days=1), ("family",), "PAM1"
                     ).detail["mandate_id"]
    mp = svc.mandate("mp", "P", HOSPITAL, 30_000, 50_000, DAY, ("own",), "PAM2").detail["mandate_id"]

    n = iter(range(1000))

    def draw(payer: str, mid: str, owner: Owner = HOSPITAL, holder: str | None = None) -> str:
        i = next(n)
        return svc.draw(f"k{i}", payer, 1_000, f"R{i}", holder, owner=owner, mandate=MandateUse(mid, "V1")).code

    assert draw("M", mp) == rules.NO_MANDATE          # another payer's mandate
    assert draw("M", mh, CLINIC) == rules.NO_MANDATE  # another institution's terminal
    assert draw("M", "M" + "0" * 20) == rules.NO_MANDATE  # one that does not exist
    assert draw("H", mh) == rules.NO_MANDATE          # the holder is not the mandate's payer
    # P's mandate names only P's own line: another line named explicitly is not one it allows
    assert draw("P", mp, holder="H") == rules.LINE_NOT_ALLOWED
    assert draw("P", mp) == rules.OK
    clock.set(datetime(2026, 3, 11, 8, 0, tzinfo=SHANGHAI))  # past P's until (the 10th)
    assert draw("P", mp) == rules.MANDATE_EXPIRED
    assert draw("M", mh) == rules.OK
    # a line of the member's own, opened later, is not what a mandate naming the family line pays from:
    # the family line still pays (the mandate names it), never the other
    assert svc.open("open-m", "M", date(1990, 1, 1), 6).ok
    assert draw("M", mh) == rules.OK
    assert svc.state("M").principal_outstanding == 0
    assert draw("M", mh, holder="M") == rules.LINE_NOT_ALLOWED
    assert svc.unbind("unbind-m", "H", "M").ok
    assert draw("M", mh) == rules.NOT_BOUND
    assert svc.check().ok


def test_new_mandate_replaces_the_old_and_keeps_the_days_usage(db: Database) -> None:
    svc, _clock = _svc(db)
    assert svc.open("open-p", "P", date(1980, 1, 1), 6).ok
    first = svc.mandate("m1", "P", HOSPITAL, 30_000, 40_000, DAY + timedelta(days=5), ("own",), "PAM1")
    assert svc.draw("k1", "P", 30_000, "S1", owner=HOSPITAL,
                    mandate=MandateUse(first.detail["mandate_id"], "V1")).ok
    second = svc.mandate("m2", "P", HOSPITAL, 30_000, 40_000, DAY + timedelta(days=5), ("own",), "PAM2")
    assert second.ok and second.detail["mandate_id"] != first.detail["mandate_id"]
    # the old one is replaced: a draw under it is refused
    assert svc.draw("k2", "P", 1_000, "S2", owner=HOSPITAL,
                    mandate=MandateUse(first.detail["mandate_id"], "V2")).code == rules.MANDATE_REVOKED
    # the new one does not reset the day's (or the visit's) usage at this institution
    new = MandateUse(second.detail["mandate_id"], "V2")
    assert svc.draw("k3", "P", 20_000, "S3", owner=HOSPITAL, mandate=new).code == rules.MANDATE_CAP_DAY
    assert svc.draw("k4", "P", 10_000, "S4", owner=HOSPITAL, mandate=new).ok
    # the same key replays the first answer (one mandate, not two)
    again = svc.mandate("m2", "P", HOSPITAL, 30_000, 40_000, DAY + timedelta(days=5), ("own",), "PAM2")
    assert again.detail["mandate_id"] == second.detail["mandate_id"]
    # none of the named lines: refused
    assert svc.mandate("m3", "P", HOSPITAL, 100, 100, DAY, ("family",), "PAM3").code == rules.NO_LINE


def test_concurrent_mandates_of_one_payer_leave_exactly_one_active(db: Database) -> None:
    svc, _clock = _svc(db)
    assert svc.open("open-p", "P", date(1980, 1, 1), 6).ok
    out: list[str] = []

    def give(i: int) -> None:
        r = svc.mandate(f"m{i}", "P", HOSPITAL, 10_000, 10_000, DAY + timedelta(days=3), ("own",), f"PAM{i}")
        out.append(r.code)

    _run([threading.Thread(target=give, args=(i,)) for i in range(6)])
    assert out == ["ok"] * 6
    states = db.read(lambda tx: [r[0] for r in tx.fetch_all("SELECT state FROM credit_mandates WHERE payer = 'P'")])
    assert sorted(states) == ["active"] + ["replaced"] * 5


def test_refund_of_a_senseless_draw_keeps_the_cap_used_and_the_statement_marks_it(db: Database) -> None:
    svc, _clock = _svc(db)
    assert svc.open("open-p", "P", date(1980, 1, 1), 6).ok
    mid = svc.mandate("m1", "P", HOSPITAL, 30_000, 50_000, DAY + timedelta(days=3), ("own",), "PAM1"
                      ).detail["mandate_id"]
    assert svc.draw("k1", "P", 25_000, "S1", owner=HOSPITAL, mandate=MandateUse(mid, "V1")).ok
    assert svc.draw("k0", "P", 5_000, "S0", owner=HOSPITAL).ok  # a counter draw with the face
    # another institution cannot refund it (as if it did not exist); its own can
    assert svc.refund("r1", "S1", 25_000, institution=CLINIC.institution).code == rules.UNKNOWN_REF
    assert svc.refund("r2", "S1", 25_000, institution=HOSPITAL.institution).ok
    # refunds give no cap back (conservative, documented): 250.00 of 300.00 still counts
    assert svc.draw("k2", "P", 10_000, "S2", owner=HOSPITAL, mandate=MandateUse(mid, "V1")).code == \
        rules.MANDATE_CAP_VISIT
    st = svc.statement("P")
    draws = {d["ref"]: d for d in st["draws"]}
    assert (draws["S1"]["mandate_id"], draws["S1"]["visit"], draws["S1"]["refunded"]) == (mid, "V1", "250.00")
    assert "mandate_id" not in draws["S0"]
    assert st["mandates"] == [{"mandate_id": mid, "payer": "P", "fixmedins_code": HOSPITAL.institution,
                               "per_visit": "300.00", "per_day": "500.00", "until": "2026-03-13", "lines": "own",
                               "holders": {"own": "P", "family": None}, "state": "active", "used_today": "250.00"}]
    assert svc.check().ok


def test_revocation_by_institution_payer_operator_and_nobody_else(db: Database) -> None:
    svc, _clock = _svc(db)
    assert svc.open("open-p", "P", date(1980, 1, 1), 6).ok

    def give(k: str) -> str:
        return str(svc.mandate(k, "P", HOSPITAL, 100, 100, DAY, ("own",), "A" + k).detail["mandate_id"])

    m = give("m1")
    assert svc.mandate_revoke("x1", m, institution=CLINIC.institution).code == rules.UNKNOWN_MANDATE
    assert svc.mandate_revoke("x2", m, payer="Q").code == rules.UNKNOWN_MANDATE
    assert svc.mandate_revoke("x3", "M" + "1" * 20, institution=HOSPITAL.institution).code == rules.UNKNOWN_MANDATE
    assert svc.mandate_get(m, institution=CLINIC.institution).code == rules.UNKNOWN_MANDATE
    assert svc.mandate_get(m, institution=HOSPITAL.institution).detail["state"] == "active"
    r = svc.mandate_revoke("x4", m, institution=HOSPITAL.institution)
    assert r.ok and r.detail["state"] == "revoked"
    m2 = give("m2")
    assert svc.mandate_revoke("x5", m2, payer="P").detail["state"] == "revoked"
    m3 = give("m3")
    assert svc.mandate_revoke("x6", m3, operator=True).detail["state"] == "revoked"
    notices = [msg.payload for msg in svc.outbox.pending(db) if msg.topic == "credit.mandate"]
    assert [(n["event"], n["mandate_id"]) for n in notices if n["event"] == "revoked"] == [
        ("revoked", m), ("revoked", m2), ("revoked", m3)]


@pytest.mark.parametrize("lines", [("own", "own"), ("bank",), ()])
def test_mandate_refuses_bad_lines_at_the_door(db: Database, lines: tuple[str, ...]) -> None:
    svc, _clock = _svc(db)
    from kiosk.errors import InputError

    with pytest.raises(InputError):
        svc.mandate("m", "P", HOSPITAL, 100, 100, DAY, lines, "PAM")
