"""Crash and restart in the flows other than the plain outpatient payment (that one is in
test_e2e.py): family pay, inpatient admission and discharge, and a whole refund.

For every journal step of each flow a real kiosk process is killed right after the step is
durable (KIOSK_CRASH_AFTER_STEP, as on a power cut); a new `Terminal` on the same database runs
`recover()`, and the books are checked: the centre's settlement and the patient's account, the
bank line (available, draws, holds: exactly once or fully undone), the POS order's final status
and reason, and the `kiosk services check` balance checks of both services.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kiosk.app.demo import DEMO_BILL, FAMILY_HOLDER
from kiosk.money import yuan_to_fen
from kiosk.storage import open_database

from tests.app.test_e2e import HAS_BANK, LI, WANG, balance, centre_rows, crash_kiosk, pay_order, stack  # noqa: F401

pytestmark = pytest.mark.skipif(not HAS_BANK, reason="kiosk.services.bank not landed yet")
SYSTEM = "demo-pos"


# ------------------------------------------------------------------------------------------ the books
def bank_rows(st: Any, sql: str, params: tuple = ()) -> list[tuple]:
    from kiosk.services.bank.app import bank_db_url

    db = open_database(bank_db_url(st.data_dir))
    try:
        return db.read(lambda tx: tx.fetch_all(sql, params))
    finally:
        db.close()


def _operator_line(st: Any, payer: str) -> Any:
    """The whole line as the bank's operator sees it (a terminal sees own/family and covers only)."""
    from kiosk.services.client import operator_call
    from kiosk.services.protocol import Answer

    d = operator_call(st.url("bank"), st.admin_token, "line", {"payer": payer})
    return Answer(d["infcode"], d.get("err_code", ""), d.get("err_msg", ""), d.get("output") or {}, "")


def available(st: Any, payer: str) -> int:
    return yuan_to_fen(_operator_line(st, payer).output["available"], "available")


def services_check(st: Any) -> None:
    """What `kiosk services check` runs: every account and journal of both services balances."""
    from kiosk.services.bank.app import bank_db_url, check_bank
    from kiosk.services.centre.app import centre_db_url
    from kiosk.services.centre.check import check_centre

    with open_database(centre_db_url(st.data_dir)) as db:
        centre = check_centre(db)
    with open_database(bank_db_url(st.data_dir)) as db:
        bank = check_bank(db)
    assert centre["balanced"] and bank["balanced"], (centre, bank)


def settlements(st: Any, psn: str) -> list[tuple[str, str]]:
    return [(r[0], r[1]) for r in centre_rows(
        st, "SELECT setl_id, state FROM centre_settlements WHERE psn_no = ? ORDER BY created_at", (psn,))]


def draws(st: Any, ref: str) -> list[tuple[int, int, int]]:
    """(original, unpaid, refunded) of the draws on the bank line under this reference."""
    return [(int(r[0]), int(r[1]), int(r[2])) for r in bank_rows(
        st, "SELECT original_fen, unpaid_fen, refunded_fen FROM credit_draws WHERE ref = ?", (ref,))]


def hold(st: Any, ref: str) -> tuple[int, str, int | None] | None:
    rows = bank_rows(st, "SELECT amount_fen, status, captured_fen FROM credit_holds WHERE ref = ?", (ref,))
    return (int(rows[0][0]), rows[0][1], rows[0][2]) if rows else None


def draw_key_state(st: Any, key: str) -> str | None:
    rows = bank_rows(st, "SELECT state FROM bank_draw_keys WHERE key LIKE ?", (f"%/{key}",))
    return rows[0][0] if rows else None


def restart(st: Any, kiosk_db: Path, oid: str) -> tuple[Any, list[tuple[str, str]], Any]:
    """A new terminal on the dead kiosk's database: its recovery pass. Returns (store, resolved, db)."""
    from kiosk.app.store import Store
    from kiosk.app.terminal import Terminal
    from kiosk.clock import SystemClock

    db = open_database(f"sqlite:///{kiosk_db / 'kiosk.db'}")
    store = Store(db, SystemClock())
    term = Terminal(store, st.runtime.terminal.deps, SystemClock())
    resolved = term.recover()
    assert term.recover() == []  # a second pass finds nothing left
    return store, resolved, db


def hold_ref(st: Any, oid: str) -> str:
    """The bank's reference of an admission's hold: the order's own (institution, POS system, order id)."""
    from kiosk.app.order_key import scoped_key

    return scoped_key(st.fixmedins, SYSTEM, oid, "hold-ref")


def steps_of(store: Any, oid: str) -> list[str]:
    return [s for s, _ in store.steps(SYSTEM, oid)]


# ------------------------------------------------------------------------------------------ family pay
FAMILY_STEPS = ["start", "face_auth", "activate", "presettle", "settle", "settled", "draw", "drawn", "paid",
                "print", "done"]
MOVED = {"drawn", "paid", "print", "done"}  # every external effect happened: resumed as paid


@pytest.mark.parametrize("crash_after", FAMILY_STEPS)
def test_family_pay_crash_is_resolved_on_restart(stack, tmp_path, crash_after):
    """王建国 pays by family pay (his son's line): killed after each journal step, then recovered."""
    activated = centre_rows(stack, "SELECT activated FROM centre_persons WHERE psn_no = ?", (WANG,))[0][0]
    if crash_after == "activate" and activated:
        pytest.skip("the relative is already activated (run the family steps in order)")
    acct0, avail0, setl0 = balance(stack, WANG), available(stack, WANG), settlements(stack, WANG)
    assert available(stack, FAMILY_HOLDER) == avail0  # one line, the holder's
    oid = f"E-CR-FAM-{crash_after}"
    kiosk_db = crash_kiosk(stack, tmp_path, crash_after, WANG, {"order_id": oid, "bill": DEMO_BILL})
    store, resolved, db = restart(stack, kiosk_db, oid)
    try:
        row = store.get(SYSTEM, oid)
        steps = steps_of(store, oid)
        data = dict(store.steps(SYSTEM, oid))
    finally:
        db.close()
    new = settlements(stack, WANG)[len(setl0):]
    assert settlements(stack, WANG)[:len(setl0)] == setl0  # nothing earlier touched
    if crash_after in MOVED:
        assert resolved == [(oid, "paid")]
        # done: the receipt printed, only the local status was missing
        assert (row.status, row.reason) == ("paid", None if crash_after == "done" else "interrupted")
        r = row.result
        assert r["payer"] == "family" and r["acct_pay"] == "0.00", r
        credit = yuan_to_fen(r["credit_draw"], "credit_draw")
        assert credit == 3400 and r["cash_pay"] == "0.00"
        assert r["receipt_printed"] is (crash_after == "done")
        assert new == [(r["setl_id"], "settled")]  # settled once
        assert draws(stack, r["setl_id"]) == [(credit, credit, 0)]  # drawn once, on the holder's line
        assert available(stack, WANG) == avail0 - credit
        assert balance(stack, WANG) == acct0
    else:
        assert resolved == [(oid, "failed")]
        assert (row.status, row.reason) == ("failed", "interrupted")
        assert available(stack, WANG) == avail0  # nothing drawn, or the draw undone
        assert balance(stack, WANG) == acct0
        if crash_after in ("settled", "draw"):
            setl_id = data["settled"]["setl_id"]
            assert new == [(setl_id, "reversed")]  # settled, then reversed by msgid
            assert draws(stack, setl_id) == []
            assert steps[-3:] == ["reverse", "reversed", "recovered"]
        else:
            assert new == []  # never reached the centre (settle: the msgid is tombstoned)
        if crash_after == "draw":
            assert draw_key_state(stack, data["draw"]["key"]) == "blocked"  # a late draw would be refused
    services_check(stack)


# ------------------------------------------------------------------------------------------ inpatient
ADMISSION_STEPS = ["start", "face_auth", "hold", "held", "done"]


@pytest.mark.parametrize("crash_after", ADMISSION_STEPS)
def test_admission_crash_is_resolved_on_restart(stack, tmp_path, crash_after):
    """李娜 is admitted (a 500.00 deposit held on her line): killed after each journal step."""
    avail0, setl0 = available(stack, LI), settlements(stack, LI)
    oid = f"E-CR-ADM-{crash_after}"
    kiosk_db = crash_kiosk(stack, tmp_path, crash_after, LI,
                           {"order_id": oid, "mode": "admission", "deposit": "500.00"})
    store, resolved, db = restart(stack, kiosk_db, oid)
    try:
        row = store.get(SYSTEM, oid)
        data = dict(store.steps(SYSTEM, oid))
    finally:
        db.close()
    ref = hold_ref(stack, oid)
    if "hold" in data:
        assert data["hold"]["ref"] == ref  # journaled before the call, scoped by its owner
    assert settlements(stack, LI) == setl0  # an admission settles nothing
    if crash_after in ("held", "done"):
        assert resolved == [(oid, "held")]
        assert (row.status, row.reason) == ("held", None if crash_after == "done" else "interrupted")
        assert row.result["hold_id"] == ref
        assert hold(stack, ref) == (50000, "open", None)  # held once
        assert available(stack, LI) == avail0 - 50000
        release = bank_rows(stack, "SELECT 1 FROM credit_holds WHERE ref = ? AND status <> 'open'", (ref,))
        assert release == []
        _release_for_next(stack, ref)
    else:
        assert resolved == [(oid, "failed")]
        assert (row.status, row.reason) == ("failed", "interrupted")
        assert hold(stack, ref) is None or hold(stack, ref)[1] == "released"
        assert available(stack, LI) == avail0
    services_check(stack)


def _release_for_next(st: Any, ref: str) -> None:
    """Give the deposit back so the next cases start from the same line."""
    assert st.runtime.terminal.deps.bank.release(ref, f"{ref}:test-release")
    assert hold(st, ref)[1] == "released"


# 'start' and 'face_auth' come before the mode matters (the same code as the admission's): not repeated
DISCHARGE_STEPS = ["presettle", "settle", "settled", "draw", "drawn", "paid", "print", "done"]
_admissions: list[tuple[str, dict[str, Any]]] = []


def held_admission(st: Any) -> tuple[str, dict[str, Any]]:
    """An admission (through the main kiosk) whose hold is still open: reused while discharges fail."""
    if _admissions and hold(st, hold_ref(st, _admissions[-1][0]))[1] == "open":
        return _admissions[-1]
    oid = f"E-CR-ADMIT-{len(_admissions)}"
    got = pay_order(st, {"order_id": oid, "mode": "admission", "deposit": "500.00"}, LI)
    assert got["status"] == "held", got
    row = st.runtime.terminal.store.get(SYSTEM, oid)
    _admissions.append((oid, row.request))
    return _admissions[-1]


@pytest.mark.parametrize("crash_after", DISCHARGE_STEPS)
def test_discharge_crash_is_resolved_on_restart(stack, tmp_path, crash_after):
    """李娜 is discharged: the settlement, then the capture of her admission's hold; killed after each step."""
    adm, adm_request = held_admission(stack)
    avail_held, acct0, setl0 = available(stack, LI), balance(stack, LI), settlements(stack, LI)
    avail0 = avail_held + 50000  # the line before the admission

    def seed(d: Path) -> None:  # the dead kiosk knew the admission (it was admitted at this counter)
        from kiosk.app.store import Store
        from kiosk.clock import SystemClock

        with open_database(f"sqlite:///{d / 'kiosk.db'}") as db:
            s = Store(db, SystemClock())
            s.create_order(SYSTEM, adm, adm_request, "admission")
            s.set_status(SYSTEM, adm, "held", result=stack.runtime.terminal.store.get(SYSTEM, adm).result)

    oid = f"E-CR-DIS-{crash_after}"
    kiosk_db = crash_kiosk(stack, tmp_path, crash_after, LI, {"order_id": oid, "mode": "discharge",
                                                               "admission_order_id": adm, "bill": DEMO_BILL},
                           seed=seed)
    store, resolved, db = restart(stack, kiosk_db, oid)
    try:
        row = store.get(SYSTEM, oid)
        adm_row = store.get(SYSTEM, adm)
        data = dict(store.steps(SYSTEM, oid))
        steps = steps_of(store, oid)
    finally:
        db.close()
    new = settlements(stack, LI)[len(setl0):]
    # 'draw': the capture cannot be undone by its key, so recovery sends it again (idempotent): resumed
    if crash_after in MOVED | {"draw"}:
        assert resolved == [(oid, "paid")]
        assert (row.status, row.reason) == ("paid", None if crash_after == "done" else "interrupted")
        r = row.result
        credit = yuan_to_fen(r["credit_draw"], "credit_draw")
        acct = yuan_to_fen(r["acct_pay"], "acct_pay")
        assert credit + acct == 3400 and credit > 0 and r["cash_pay"] == "0.00"
        assert r["receipt_printed"] is (crash_after == "done")
        assert new == [(r["setl_id"], "settled")] and balance(stack, LI) == acct0 - acct
        assert hold(stack, hold_ref(stack, adm)) == (50000, "captured", credit)  # captured once, the rest released
        assert draws(stack, hold_ref(stack, adm)) == [(credit, credit, 0)]
        assert available(stack, LI) == avail0 - credit
        assert adm_row.status == "captured"  # no second discharge on that admission
    else:
        assert resolved == [(oid, "failed")]
        assert (row.status, row.reason) == ("failed", "interrupted")
        assert balance(stack, LI) == acct0
        assert hold(stack, hold_ref(stack, adm)) == (50000, "open", None)  # the deposit stays held for the next discharge
        assert available(stack, LI) == avail_held
        assert adm_row.status == "held"
        if crash_after == "settled":
            assert new == [(data["settled"]["setl_id"], "reversed")]
            assert steps[-3:] == ["reverse", "reversed", "recovered"]
        else:
            assert new == []
    services_check(stack)


# ------------------------------------------------------------------------------------------ refunds
REFUND_STEPS = ["refund", "refund_reversed", "refund_credited"]


@pytest.mark.parametrize("crash_after", REFUND_STEPS)
def test_whole_refund_crash_is_completed_on_restart(stack, tmp_path, crash_after):
    """A whole refund of a family-pay order: killed after the refund is journaled, between the centre's
    reversal and the bank's credit refund, and after both; recovery completes it exactly once."""
    acct0, avail0 = balance(stack, WANG), available(stack, WANG)
    oid = f"E-CR-RF-{crash_after}"
    kiosk_db = crash_kiosk(stack, tmp_path, crash_after, WANG, {"order_id": oid, "bill": DEMO_BILL},
                           refund={"refund_id": f"RF-{crash_after}"})
    store, resolved, db = restart(stack, kiosk_db, oid)
    try:
        row = store.get(SYSTEM, oid)
        refunds = db.read(lambda tx: tx.fetch_all(
            "SELECT refund_id, status, amount_fen FROM app_refunds WHERE system = ? AND order_id = ?", (SYSTEM, oid)))
        steps = steps_of(store, oid)
    finally:
        db.close()
    setl_id = row.result["setl_id"]
    assert (row.status, row.reason) == ("refunded", None), row
    assert [(r[0], r[1], int(r[2])) for r in refunds] == [(f"RF-{crash_after}", "refunded", 10400)]
    assert steps.count("refunded") == 1
    assert centre_rows(stack, "SELECT state FROM centre_settlements WHERE setl_id = ?", (setl_id,)) == [("reversed",)]
    assert draws(stack, setl_id) == [(3400, 0, 3400)]  # drawn once, refunded once
    assert available(stack, WANG) == avail0 and balance(stack, WANG) == acct0
    services_check(stack)


def test_discharge_capture_that_landed_before_the_crash_is_not_lost(stack, tmp_path):
    """Power lost while the capture was on the wire: the journal ends at 'draw' (as in the 'draw' case
    above) but the bank did capture the hold. Recovery must not reverse the settlement and leave the
    capture standing (the patient's line charged for a bill the centre no longer has)."""
    adm, adm_request = held_admission(stack)
    avail_held, acct0, setl0 = available(stack, LI), balance(stack, LI), settlements(stack, LI)
    avail0 = avail_held + 50000

    def seed(d: Path) -> None:
        from kiosk.app.store import Store
        from kiosk.clock import SystemClock

        with open_database(f"sqlite:///{d / 'kiosk.db'}") as db:
            s = Store(db, SystemClock())
            s.create_order(SYSTEM, adm, adm_request, "admission")
            s.set_status(SYSTEM, adm, "held", result=stack.runtime.terminal.store.get(SYSTEM, adm).result)

    oid = "E-CR-DIS-INFLIGHT"
    kiosk_db = crash_kiosk(stack, tmp_path, "draw", LI, {"order_id": oid, "mode": "discharge",
                                                          "admission_order_id": adm, "bill": DEMO_BILL}, seed=seed)
    with open_database(f"sqlite:///{kiosk_db / 'kiosk.db'}") as db:
        from kiosk.app.store import Store
        from kiosk.clock import SystemClock

        d = dict(Store(db, SystemClock()).steps(SYSTEM, oid))["draw"]
    # the capture that was on the wire lands at the bank
    assert stack.runtime.terminal.deps.bank.capture(d["line_id"], d["amount"], d["key"]).status == "ok"
    store, resolved, db = restart(stack, kiosk_db, oid)
    try:
        row, adm_row = store.get(SYSTEM, oid), store.get(SYSTEM, adm)
    finally:
        db.close()
    new = settlements(stack, LI)[len(setl0):]
    assert resolved == [(oid, "paid")]  # every external effect happened: resumed
    assert (row.status, row.reason) == ("paid", "interrupted")
    credit = yuan_to_fen(row.result["credit_draw"], "credit_draw")
    assert credit == d["amount"] and new == [(row.result["setl_id"], "settled")]
    assert balance(stack, LI) == acct0 - yuan_to_fen(row.result["acct_pay"], "acct_pay")
    ref = hold_ref(stack, adm)
    assert hold(stack, ref) == (50000, "captured", credit) and draws(stack, ref) == [(credit, credit, 0)]
    assert available(stack, LI) == avail0 - credit
    assert adm_row.status == "captured"
    services_check(stack)
