"""A POS/HIS system acts only on its own orders: a second system registered at the same terminal
(`kiosk pos-key add`) asking for, cancelling, refunding or reconciling another system's order, or
discharging against its admission, gets exactly what an order id never used gets (no existence
oracle), and its own orders with the same ids are its own. The POS API's rows are keyed by
(system, order id) in the store; these are the attacks on that."""
from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from kiosk.app.pos_api import create_app
from kiosk.app.pos_auth import PosAuth
from kiosk.app.pos_client import PosClient
from kiosk.app.session import Deps
from kiosk.app.store import Store
from kiosk.app.terminal import Terminal
from kiosk.clock import SHANGHAI, SystemClock
from kiosk.storage import open_database

A, B = "his-a", "pos-b"
KEYS = {A: "a" * 64, B: "b" * 64}
BILL = {"med_type": "11", "items": [{"code": "F001", "name": "consultation", "price": "10.00", "qty": "1"}]}
PAID = {"status": "paid", "setl_id": "S20260310AAAAAAAAAAAAAAAA", "medfee_sumamt": "10.00",
        "fund_pay_sumamt": "8.00", "acct_pay": "0.00", "acct_mulaid_pay": "0.00", "credit_draw": "2.00",
        "cash_pay": "0.00", "psn_no": "P37020200000001", "draw_id": "S20260310AAAAAAAAAAAAAAAA"}


class Counter:
    """The POS API of one terminal (not started: no patient sessions), two systems registered."""

    def __init__(self, tmp: Path) -> None:
        self.db = open_database(f"sqlite:///{tmp / f'pos-{uuid.uuid4().hex[:6]}.db'}")
        self.store = Store(self.db, SystemClock())
        deps = Deps(camera=None, vision=None, centre=None, bank=None, keypad=None, printer=None)  # type: ignore[arg-type]
        self.terminal = Terminal(self.store, deps, SystemClock())
        http = TestClient(create_app(self.terminal, PosAuth(KEYS)))
        self.a = PosClient("http://testserver", A, KEYS[A], http=http)
        self.b = PosClient("http://testserver", B, KEYS[B], http=http)


@pytest.fixture
def counter(tmp_path: Path) -> Counter:
    return Counter(tmp_path)


def _same(theirs: Any, never: Any, their_id: str, never_id: str) -> None:
    """Status and body alike, once the order id the caller typed is put back."""
    assert theirs.status_code == never.status_code, (theirs.text, never.text)
    assert theirs.text.replace(their_id, "ID") == never.text.replace(never_id, "ID")


def test_another_systems_orders_look_like_orders_never_made(counter: Counter) -> None:
    c = counter
    assert c.a.create({"order_id": "A-PAID", "bill": BILL}).status_code == 201
    assert c.a.create({"order_id": "A-PEND", "bill": BILL}).status_code == 201
    assert c.store.set_status(A, "A-PAID", "paid", result=PAID)
    for oid in ("A-PAID", "A-PEND"):
        _same(c.b.get(oid), c.b.get("NEVER-1"), oid, "NEVER-1")
        _same(c.b.cancel(oid), c.b.cancel("NEVER-1"), oid, "NEVER-1")
        _same(c.b.refund(oid, "rf-1"), c.b.refund("NEVER-1", "rf-1"), oid, "NEVER-1")
        _same(c.b.refund(oid, "rf-2", "1.00"), c.b.refund("NEVER-1", "rf-2", "1.00"), oid, "NEVER-1")
    assert c.b.get("A-PAID").status_code == 404
    # nothing of A's moved: still paid and pending, no refund recorded
    assert c.a.get("A-PAID").json()["status"] == "paid"
    assert c.a.get("A-PEND").json()["status"] == "pending"
    assert c.store.refunds_of_order(A, "A-PAID") == []
    # the day's reconciliation is each system's own
    day = SystemClock().now().astimezone(SHANGHAI).date().isoformat()
    rec_b = c.b.reconciliation(day).json()
    assert "A-PAID" not in repr(rec_b) and "A-PEND" not in repr(rec_b)
    assert "A-PAID" in repr(c.a.reconciliation(day).json())


def test_the_same_order_and_refund_ids_in_two_systems_never_meet(counter: Counter) -> None:
    c = counter
    assert c.a.create({"order_id": "O-1", "bill": BILL}).status_code == 201
    assert c.store.set_status(A, "O-1", "paid", result=PAID)
    other_bill = {**BILL, "items": [{**BILL["items"][0], "price": "12.00"}]}
    mine = c.b.create({"order_id": "O-1", "bill": other_bill})  # not A's order (no 409 conflict, no replay)
    assert mine.status_code == 201 and mine.json()["status"] == "pending"
    assert c.a.get("O-1").json()["status"] == "paid"
    # B's refund with A's refund id of B's own unpaid order: refused for B's order's own state, not A's replay
    r = c.b.refund("O-1", "rf-shared")
    assert r.status_code == 409 and r.json()["code"] == "not_refundable"
    assert c.store.refunds_of_order(A, "O-1") == []


def test_a_discharge_cannot_settle_against_another_systems_admission(counter: Counter) -> None:
    c = counter
    assert c.a.create({"order_id": "ADM-1", "mode": "admission", "deposit": "500.00"}).status_code == 201
    assert c.store.set_status(A, "ADM-1", "held", result={"status": "held", "hold_id": "k" + "1" * 40})
    theirs = c.b.create({"order_id": "DIS-1", "mode": "discharge", "admission_order_id": "ADM-1", "bill": BILL})
    never = c.b.create({"order_id": "DIS-2", "mode": "discharge", "admission_order_id": "ADM-9", "bill": BILL})
    assert theirs.status_code == never.status_code == 409
    assert theirs.json() == never.json()  # same code, message and field: no hint the admission exists
    assert c.store.get(B, "DIS-1") is None
