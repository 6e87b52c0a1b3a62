"""Orders, journal and refunds of the terminal on both databases kiosk.storage speaks."""
from __future__ import annotations

import os
from datetime import datetime
from typing import Iterator

import pytest

from kiosk.clock import SHANGHAI, ManualClock
from kiosk.errors import ConflictError, InputError
from kiosk.storage.testing import PG_ENV, scratch_database
from kiosk.app.store import Store

BILL = {"bill": {"items": [{"code": "F001", "price": "10.00", "qty": "1"}]}}


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest) -> Iterator[Store]:
    base = None
    if request.param == "postgresql":
        base = os.environ.get(PG_ENV)
        if not base:
            if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
                pytest.fail(f"{PG_ENV} is not set under CI (scripts/test starts PostgreSQL)")
            pytest.skip(f"NOT TESTED ON POSTGRESQL - {PG_ENV} not set (use ./scripts/test)")
    with scratch_database(request.param, base) as db:
        yield Store(db, ManualClock(datetime(2026, 3, 1, 23, 59, tzinfo=SHANGHAI)))


def test_same_order_id_same_body_is_the_same_order(store):
    a, created = store.create_order("pos1", "O1", BILL, "outpatient")
    b, again = store.create_order("pos1", "O1", dict(BILL), "outpatient")
    assert created and not again and a == b
    # another system may use the same order id: orders are per system
    c, created_c = store.create_order("pos2", "O1", BILL, "outpatient")
    assert created_c and c.system == "pos2"


def test_same_order_id_other_body_conflicts(store):
    store.create_order("pos1", "O1", BILL, "outpatient")
    with pytest.raises(ConflictError) as e:
        store.create_order("pos1", "O1", {"bill": {"items": []}}, "outpatient")
    assert e.value.field == "order_id"


def test_status_moves_only_from_the_expected_state(store):
    store.create_order("pos1", "O1", BILL, "outpatient")
    assert store.set_status("pos1", "O1", "running", expect=("pending",))
    assert not store.set_status("pos1", "O1", "cancelled", expect=("pending",))  # too late
    assert [o.order_id for o in store.open_orders()] == ["O1"]
    store.set_status("pos1", "O1", "paid", result={"setl_id": "S1", "psn_no": "P1", "medfee_sumamt": "10.00"})
    row = store.get("pos1", "O1")
    assert row.status == "paid" and row.result["setl_id"] == "S1" and store.open_orders() == []


def test_journal_keeps_order_and_data(store):
    store.create_order("pos1", "O1", BILL, "outpatient")
    for step, data in [("start", {}), ("settle", {"msgid": "M1"}), ("settled", {"setl_id": "S1"})]:
        store.record("pos1", "O1", step, data)
    assert store.steps("pos1", "O1") == [("start", {}), ("settle", {"msgid": "M1"}), ("settled", {"setl_id": "S1"})]


def test_refunds_are_capped_replayed_and_released_on_failure(store):
    store.create_order("pos1", "O1", BILL, "outpatient")
    assert store.begin_refund("pos1", "O1", "R1", 600, {"amount": 600}, 1000) == (None, False)
    with pytest.raises(InputError):  # 600 + 500 > 1000
        store.begin_refund("pos1", "O1", "R2", 500, {"amount": 500}, 1000)
    store.finish_refund("pos1", "O1", "R1", "refunded", {"amount": "6.00"})
    assert store.find_refund("pos1", "O1", "R1", {"amount": 600}) == {"amount": "6.00"}
    with pytest.raises(ConflictError):
        store.find_refund("pos1", "O1", "R1", {"amount": 700})
    # a refund the bank refused gives its reservation back
    store.begin_refund("pos1", "O1", "R3", 400, {"amount": 400}, 1000)
    store.finish_refund("pos1", "O1", "R3", "failed", {"status": "failed"}, release_fen=400)
    assert store.get("pos1", "O1").refunded_fen == 600
    assert store.begin_refund("pos1", "O1", "R4", 400, {"amount": 400}, 1000) == (None, False)


def test_a_failed_or_cut_off_refund_is_taken_up_again_by_the_same_request(store):
    """The POS retries with the same refund id: a failed attempt runs again (reserving again), a
    fresh 'running' one is reported as running, one cut off by a crash resumes after a minute."""
    store.create_order("pos1", "O2", BILL, "outpatient")
    assert store.begin_refund("pos1", "O2", "R1", 700, {"amount": 700}, 1000) == (None, False)
    store.finish_refund("pos1", "O2", "R1", "failed", {"status": "failed"}, release_fen=700)
    assert store.get("pos1", "O2").refunded_fen == 0
    assert store.find_refund("pos1", "O2", "R1", {"amount": 700}) is None  # not a replay: try again
    assert store.begin_refund("pos1", "O2", "R1", 700, {"amount": 700}, 1000) == (None, False)
    assert store.get("pos1", "O2").refunded_fen == 700  # reserved again, once
    # in flight: a concurrent identical request is told its outcome is pending, and reserves nothing
    assert store.begin_refund("pos1", "O2", "R1", 700, {"amount": 700}, 1000) == ({"status": "refund_pending"}, True)
    with pytest.raises(InputError):  # the reservation still counts against other refunds
        store.begin_refund("pos1", "O2", "R2", 400, {"amount": 400}, 1000)
    store.clock.advance(seconds=61)  # the attempt was cut off (the terminal restarted)
    assert store.begin_refund("pos1", "O2", "R1", 700, {"amount": 700}, 1000) == (None, False)
    assert store.get("pos1", "O2").refunded_fen == 700  # its reservation is not taken twice
    store.finish_refund("pos1", "O2", "R1", "refunded", {"amount": "7.00"})
    assert store.begin_refund("pos1", "O2", "R1", 700, {"amount": 700}, 1000) == ({"amount": "7.00"}, True)


@pytest.mark.parametrize("state", ["pending", "refused"])
def test_a_pending_or_refused_refund_is_tried_again_keeping_its_reservation(store, state):
    """A party did not answer (pending) or refused after the other applied its part (refused): the money
    may have moved, so the reservation stays; the same request tries again and reserves nothing more,
    and recovery can claim it (once) while the POS cannot see a stored answer for it."""
    store.create_order("pos1", "O3", BILL, "outpatient")
    assert store.begin_refund("pos1", "O3", "R1", 700, {"amount": 700}, 1000) == (None, False)
    store.finish_refund("pos1", "O3", "R1", state, {"status": "refund_pending"})
    assert store.refund_status("pos1", "R1") == state and store.refund_status("pos1", "R9") is None
    assert store.find_refund("pos1", "O3", "R1", {"amount": 700}) is None  # not a replay: try again
    assert [r[1:] for r in store.open_refunds()] == ([("R1", "O3", 700, "pending")] if state == "pending" else [])
    assert store.begin_refund("pos1", "O3", "R1", 700, {"amount": 700}, 1000) == (None, False)
    assert store.get("pos1", "O3").refunded_fen == 700  # still reserved once
    assert store.retake_refund("pos1", "R1")  # running now (e.g. cut off): recovery may claim it
    store.finish_refund("pos1", "O3", "R1", "refunded", {"amount": "7.00"})
    assert not store.retake_refund("pos1", "R1")  # done: nothing to take up
    assert [(r["refund_id"], r["status"], r["amount_fen"]) for r in store.refunds_of_order("pos1", "O3")] == [
        ("R1", "refunded", 700)]


def test_reconciliation_day_is_the_shanghai_day(store):
    store.create_order("pos1", "O1", BILL, "outpatient")  # 23:59 on 1 March in Shanghai
    store.clock.advance(minutes=2)  # type: ignore[attr-defined]
    store.create_order("pos1", "O2", BILL, "outpatient")  # 00:01 on 2 March
    assert [o.order_id for o in store.orders_of_day("pos1", "2026-03-01")] == ["O1"]
    assert [o.order_id for o in store.orders_of_day("pos1", "2026-03-02")] == ["O2"]
    assert store.orders_of_day("pos2", "2026-03-01") == []


def test_racing_retries_create_one_order(store):
    import threading

    results, errors = [], []
    start = threading.Barrier(8)

    def go() -> None:
        try:
            start.wait()
            results.append(store.create_order("pos1", "RACE", BILL, "outpatient"))
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=go) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sum(created for _, created in results) == 1
    assert len({row.created_at for row, _ in results}) == 1


def test_racing_refunds_never_exceed_the_limit(store):
    import threading

    store.create_order("pos1", "O9", BILL, "outpatient")
    ok, refused = [], []
    start = threading.Barrier(6)

    def go(i: int) -> None:
        start.wait()
        try:
            store.begin_refund("pos1", "O9", f"R{i}", 300, {"amount": 300}, 1000)
            ok.append(i)
        except InputError:
            refused.append(i)

    threads = [threading.Thread(target=go, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(ok) == 3 and len(refused) == 3
    assert store.get("pos1", "O9").refunded_fen == 900


def test_a_return_claims_a_paid_order_once_per_system(store):
    store.create_order("pos1", "O1", BILL, "outpatient")
    req = {"order_id": "O1", "lines": [{"code": "F001", "qty": "1"}]}
    with pytest.raises(ConflictError) as e:  # not paid yet: nothing to return
        store.begin_return("pos1", "O1", "R1", req)
    assert e.value.code == "not_returnable"
    store.set_status("pos1", "O1", "paid", result={"setl_id": "S1", "psn_no": "P1"})
    with pytest.raises(ConflictError):  # another system's return of it claims nothing
        store.begin_return("pos2", "O1", "R1", req)
    row, created = store.begin_return("pos1", "O1", "R1", req)
    assert created and row.mode == "return" and row.status == "pending"
    assert store.get("pos1", "O1").status == "returning"
    again, created2 = store.begin_return("pos1", "O1", "R1", dict(req))
    assert not created2 and again == row  # the same request: the same return
    with pytest.raises(ConflictError) as e:
        store.begin_return("pos1", "O1", "R1", {**req, "lines": [{"code": "F001", "qty": "0.5"}]})
    assert e.value.code == "return_conflict"
    with pytest.raises(ConflictError) as e:  # a second return while one is under way
        store.begin_return("pos1", "O1", "R2", req)
    assert e.value.code == "not_returnable"
