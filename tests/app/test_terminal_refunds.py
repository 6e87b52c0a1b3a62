"""The terminal's refund states and its recovery by key, against scripted parties (the real
stack covers the same paths over HTTP in test_e2e.py): an unknown answer is pending, never failed;
a definitive refusal is refund_failed; keys are the order's own and journaled keys are reused."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Iterator

import pytest

from kiosk.app.order_key import scoped_key
from kiosk.app.ports import RefundResult
from kiosk.app.session import Deps
from kiosk.app.store import Store
from kiosk.app.terminal import Terminal
from kiosk.clock import SHANGHAI, ManualClock
from kiosk.errors import ConflictError
from kiosk.storage.testing import PG_ENV, scratch_database

INST = "H37020200001"
RESULT = {"status": "paid", "reason": None, "setl_id": "S1", "medfee_sumamt": "104.00", "fund_pay_sumamt": "70.00",
          "acct_pay": "0.00", "acct_mulaid_pay": "0.00", "credit_draw": "34.00", "cash_pay": "0.00",
          "draw_id": "S1", "psn_no": "P1", "payer": "self", "hold_id": None, "receipt_printed": True}


@dataclass
class Party:
    """Answers refund steps from a script: 'ok', 'unknown' or a refusal code."""

    answers: list[str] = field(default_factory=list)
    calls: list[tuple[Any, ...]] = field(default_factory=list)
    institution: str = INST
    _n: int = 0

    def _next(self) -> RefundResult:
        a = self.answers.pop(0) if self.answers else "ok"
        return RefundResult(a) if a in ("ok", "unknown") else RefundResult("refused", a, f"refused: {a}")

    def new_msgid(self) -> str:
        self._n += 1
        return f"{INST}20260301235900{self._n:04d}"

    def refund(self, *args: Any, **kw: Any) -> RefundResult:  # centre: (person, setl_id, fen, key, msgid, pharmacy)
        self.calls.append(args + tuple(sorted(kw.items())))
        return self._next()

    def reverse_draw(self, key: str, payer: str, ref: str = "") -> bool:
        self.calls.append(("reverse_draw", key))
        return True

    def reverse(self, person: Any, msgid: str, setl_id: str | None) -> bool:
        self.calls.append(("reverse", msgid))
        return True


@pytest.fixture(params=["sqlite", "postgresql"])
def rig(request: pytest.FixtureRequest) -> Iterator[tuple[Terminal, Party, Party]]:
    base = None
    if request.param == "postgresql":
        base = os.environ.get(PG_ENV)
        if not base:
            pytest.skip(f"NOT TESTED ON POSTGRESQL - {PG_ENV} not set")
    with scratch_database(request.param, base) as db:
        store = Store(db, ManualClock(datetime(2026, 3, 1, 23, 59, tzinfo=SHANGHAI)))
        centre, bank = Party(), Party()
        deps = Deps(camera=None, vision=None, centre=centre, bank=bank, keypad=None, printer=None)  # type: ignore[arg-type]
        term = Terminal(store, deps, store.clock)
        store.create_order("pos", "O1", {"bill": {"items": []}}, "outpatient")
        store.set_status("pos", "O1", "paid", result=RESULT)
        yield term, centre, bank


def test_the_terminal_acts_for_its_centre_registration_and_keys_are_the_orders_own(rig):
    term, centre, bank = rig
    assert term.institution == INST
    term.refund("pos", "O1", "R1", None)
    key = scoped_key(INST, "pos", "O1", "refund", "R1")
    assert centre.calls[0][3] == key and bank.calls[0][2] == key
    assert key != scoped_key(INST, "pos2", "O1", "refund", "R1") != scoped_key("H2", "pos", "O1", "refund", "R1")


def test_unknown_bank_answer_is_pending_then_recovered_by_the_same_keys(rig):
    term, centre, bank = rig
    bank.answers = ["unknown", "unknown"]
    res, replayed = term.refund("pos", "O1", "R1", None)
    assert (res["status"], res["waiting_for"], replayed) == ("refund_pending", "bank", False)
    assert term.store.get("pos", "O1").status == "refund_pending"
    assert term.store.refund_status("pos", "R1") == "pending"
    with pytest.raises(ConflictError) as e:  # no other refund of that order meanwhile
        term.refund("pos", "O1", "R2", 500)
    assert e.value.code == "not_refundable"
    steps = len(term.store.steps("pos", "O1"))
    assert term.recover() == []  # the bank still does not answer: still pending, nothing new written
    assert len(term.store.steps("pos", "O1")) == steps
    assert term.recover() == [("O1", "refunded")]
    assert term.store.get("pos", "O1").status == "refunded"
    assert len(centre.calls) == 1  # the centre confirmed once: never asked again
    assert len(bank.calls) == 3 and len({c for c in bank.calls}) == 1  # the same draw, amount and key each time
    again, replayed = term.refund("pos", "O1", "R1", None)
    assert replayed and again["status"] == "refunded" and len(bank.calls) == 3


def test_unknown_centre_answer_is_pending_and_the_same_msgid_is_sent_again(rig):
    term, centre, bank = rig
    centre.answers = ["unknown"]
    res, _ = term.refund("pos", "O1", "R1", None)
    assert (res["status"], res["waiting_for"]) == ("refund_pending", "centre") and bank.calls == []
    res, replayed = term.refund("pos", "O1", "R1", None)  # the POS asks again: resolved now
    assert (res["status"], replayed) == ("refunded", False)
    msgids = [dict(c[4:]).get("msgid") for c in centre.calls]
    assert len(msgids) == 2 and msgids[0] == msgids[1] and msgids[0].startswith(INST)


def test_a_definitive_refusal_before_anything_applied_gives_the_order_back(rig):
    term, centre, bank = rig
    centre.answers = ["not_found"]
    with pytest.raises(ConflictError) as e:
        term.refund("pos", "O1", "R1", None)
    assert e.value.code == "refund_failed" and "centre" in e.value.message and "not_found" in e.value.message
    row = term.store.get("pos", "O1")
    assert (row.status, row.refunded_fen) == ("paid", 0) and bank.calls == []


def test_a_refusal_after_the_other_party_applied_is_refund_failed_not_paid(rig):
    term, centre, bank = rig
    bank.answers = ["exceeds_original", "exceeds_original"]
    with pytest.raises(ConflictError):
        term.refund("pos", "O1", "R1", None)
    row = term.store.get("pos", "O1")
    assert (row.status, row.reason, row.refunded_fen) == ("refund_failed", "bank:exceeds_original", 10400)
    assert term.recover() == []  # a definitive refusal is not retried behind anyone's back
    with pytest.raises(ConflictError):  # the same request tries again (the centre's part is not repeated)
        term.refund("pos", "O1", "R1", None)
    assert len(centre.calls) == 1 and len(bank.calls) == 2
    assert term.store.get("pos", "O1").refunded_fen == 10400  # reserved once


def test_recovery_uses_the_keys_the_journal_holds(rig):
    """Orders and refunds journaled before scoped keys keep their keys: recovery never re-derives."""
    term, centre, bank = rig
    store = term.store
    store.create_order("pos", "O2", {"bill": {"items": []}}, "outpatient")
    store.set_status("pos", "O2", "reversing", reason="bank_unavailable")
    for step, data in (("start", {"mode": "outpatient"}), ("settle", {"msgid": "M-OLD", "psn_no": "P1"}),
                       ("settled", {"setl_id": "S2"}), ("draw", {"key": "O2:draw", "amount": 3400, "payer": "P1"})):
        store.record("pos", "O2", step, data)
    # a whole refund of O1 cut off by a crash, its plan in the old form (no key, no msgid)
    store.begin_refund("pos", "O1", "R9", 10400, {"amount": None}, 10400)
    store.record("pos", "O1", "refund", {"refund_id": "R9", "amount": 10400, "whole": True, "psn_no": "P1",
                                         "total": 10400, "setl_id": "S1", "draw_id": "S1", "credit_back": 3400})
    assert sorted(term.recover()) == [("O1", "refunded"), ("O2", "failed")]
    assert ("reverse_draw", "O2:draw") in bank.calls
    refund = [c for c in centre.calls if c[0] != "reverse"][0]
    assert refund[3] == "pos:R9" and dict(refund[4:]) == {}  # old plan: no msgid, the adapter picks 2208/2103
    assert bank.calls[-1] == ("S1", 3400, "pos:R9")
