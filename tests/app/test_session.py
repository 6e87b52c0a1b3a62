"""The counter session against the real camera path (images -> real face
pipeline), the real firmware bridge (simulated MCU over a pty) and the real
journal store; only the two remote parties are scripted here, so each failure
reason can be provoked on purpose. The end-to-end tests (test_e2e.py) use the
real centre and bank over HTTP."""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import pytest

from kiosk.clock import SystemClock
from kiosk.errors import RemoteError
from kiosk.storage import open_database
from kiosk.app.adapters.bridge import BridgeKeypad, BridgePrinter
from kiosk.app.adapters.camera import ImageCamera
from kiosk.app.adapters.vision import PipelineVision
from kiosk.app.flow import State
from kiosk.app.ports import Activation, DrawResult, FaceAuth, Line, Person, RefundResult, SettleResult, Split
from kiosk.app.session import CounterSession, Deps, Limits, Order, Outcome
from kiosk.app.store import Store
from kiosk.app.terminal import Terminal
from kiosk.app.typist import Typist

from tests.app.conftest import NUAA_SPOOF, TWO_PEOPLE, casia

ALICE = Person(psn_no="P001", name="王小华", ec_token="tok")
SPLIT = Split(medfee_sumamt=10000, fund_pay_sumamt=6000, psn_part_amt=4000, acct_pay=1000, acct_mulaid_pay=0,
              psn_cash_pay=3000, setl_id="S1", mdtrt_id="M1", pay_auth="PA1.settled.S1")
BILL = {"items": [{"code": "X", "price": "100.00", "qty": "1"}]}
GOOD_ID = "11010519491231002X"
FAST = {State.FACE_CAPTURE: 8.0, State.LIVENESS: 8.0, State.CONFIRM: 6.0, State.ID_ENTRY: 8.0}


@dataclass
class Centre:
    """Scripted insurance centre; asserts the journal announced each money call first."""

    store: Store
    auth: FaceAuth = field(default_factory=lambda: FaceAuth("matched", ALICE))
    activations: list[Activation] = field(default_factory=list)
    settle_error: bool = False
    reverse_error: bool = False
    calls: list[tuple[str, Any]] = field(default_factory=list)
    _n: int = 0

    def _journal(self) -> list[str]:
        return [s for s, _ in self.store.steps("t", "o1")]

    def face_auth(self, probe, session_id):
        assert probe.sealed("auth") and "face_auth" == self._journal()[-1]
        self.calls.append(("face_auth", session_id))
        return self.auth

    def activate(self, probe, id_no, session_id):
        assert self._journal()[-1] == "activate"
        self.calls.append(("activate", id_no))
        return self.activations.pop(0)

    def presettle(self, person, bill, order_id):
        assert self._journal()[-1] == "presettle"
        self.calls.append(("presettle", person.psn_no))
        return SettleResult("ok", SPLIT)

    def new_msgid(self):
        self._n += 1
        return f"H37020000001202601010000000{self._n:03d}"

    def settle(self, person, bill, order_id, msgid):
        steps = self.store.steps("t", "o1")
        assert steps[-1][0] == "settle" and steps[-1][1]["msgid"] == msgid  # journal first
        self.calls.append(("settle", msgid))
        if self.settle_error:
            raise RemoteError("connection reset", code="centre_unreachable")
        return SettleResult("ok", SPLIT)

    def reverse(self, person, msgid, setl_id):
        assert self._journal()[-1] == "reverse"
        self.calls.append(("reverse", msgid))
        if self.reverse_error:
            raise RemoteError("still unreachable", code="centre_unreachable")
        return True

    def refund(self, person, setl_id, amount_fen, key, msgid="", pharmacy=None):
        self.calls.append(("refund", setl_id))
        return RefundResult("ok")

    def hold_auth(self, person, amount_fen, ref):
        self.calls.append(("hold_auth", amount_fen))
        return "PA1.fake.auth"

    def line_auth(self, person, amount_fen, ref):
        return "PA1.fake.line"


@dataclass
class Bank:
    store: Store
    line: Line = field(default_factory=lambda: Line("own", "L1", "", 2_000_000))
    draw_status: str = "ok"
    calls: list[tuple[str, Any]] = field(default_factory=list)

    def line_for(self, person, amount_fen, auth):
        assert auth == "PA1.fake.line"  # the bank is asked only with the centre's line proof
        return self.line

    def draw(self, line, person, amount_fen, key, ref, auth=""):
        assert [s for s, _ in self.store.steps("t", "o1")][-1] == "draw"
        self.calls.append(("draw", amount_fen))
        self.auths = getattr(self, "auths", []) + [auth]
        return DrawResult(self.draw_status, "D1" if self.draw_status == "ok" else "", amount_fen)

    def reverse_draw(self, key, payer, ref=""):
        self.calls.append(("reverse_draw", key))
        return True

    def hold(self, line, person, amount_fen, key, ref, auth=""):
        self.calls.append(("hold", amount_fen))
        self.auths = getattr(self, "auths", []) + [auth]
        return DrawResult("ok", "H1", amount_fen)

    def capture(self, hold_id, amount_fen, key):
        return DrawResult("ok", "D2", amount_fen)

    def release(self, ref, key):
        return True

    def refund(self, ref, amount_fen, key):
        self.calls.append(("refund", amount_fen))
        return RefundResult("ok")


@pytest.fixture
def rig(tmp_path, pipeline, device_seal, bridge):
    client, sim = bridge
    db = open_database(f"sqlite:///{tmp_path / 'kiosk.db'}")
    store = Store(db, SystemClock())
    store.create_order("t", "o1", {"bill": BILL}, "outpatient")
    cam = ImageCamera(fps=0)
    centre, bank = Centre(store), Bank(store)
    deps = Deps(camera=cam, vision=PipelineVision(pipeline, device_seal), centre=centre, bank=bank,
                keypad=BridgeKeypad(client), printer=BridgePrinter(client))
    typist = Typist(client.sim)
    snaps: list[Any] = []

    class Rig:
        pass

    r = Rig()
    r.store, r.cam, r.centre, r.bank, r.deps, r.typist, r.sim, r.snaps, r.client = (
        store, cam, centre, bank, deps, typist, sim, snaps, client)

    def run(order=Order("o1", BILL), timeouts=FAST, limits=Limits(key_poll_s=0.02)):
        def on_change(s):
            snaps.append(s)
            typist.on_snapshot(s)

        class J:
            def record(self, order_id, step, data=None):
                store.record("t", order_id, step, data)

        r.session = CounterSession(order, deps, J(), SystemClock(), on_change=on_change, timeouts=timeouts,
                                   limits=limits)
        return r.session.run()

    r.run = run
    r.states = lambda: [s.state for s in snaps]
    r.reasons = lambda: [s.reason for s in snaps if s.reason]
    r.steps = lambda: [s for s, _ in store.steps("t", "o1")]
    yield r
    typist.stop()
    db.close()


def test_repeat_patient_pays_part_fund_part_credit(rig):
    rig.cam.show([casia(1, 0)])
    rig.typist.plan("confirm", "<enter>")
    out = rig.run()
    assert out.status == "paid", (out, rig.reasons())
    assert (out.medfee_sumamt, out.fund_pay_sumamt, out.acct_pay, out.credit_draw, out.cash_pay) == (
        10000, 6000, 1000, 3000, 0)
    assert out.receipt_printed and out.setl_id == "S1"
    states = rig.states()
    for s in ["bill_received", "face_capture", "liveness", "match", "presettled", "confirm", "settling",
              "printing", "done"]:
        assert s in states
    assert states.index("confirm") < states.index("settling")
    assert rig.steps() == ["face_auth", "presettle", "settle", "settled", "draw", "drawn", "paid", "print", "done"]
    assert out.confirm_wait_ms > 0 and "confirm" in out.stage_ms
    # the screen saw the split before the confirm key
    confirm = next(s for s in rig.snaps if s.state == "confirm")
    assert confirm.amounts["credit_draw"] == "30.00" and confirm.amounts["fund_pay_sumamt"] == "60.00"


def test_nobody_in_front_of_the_camera_times_out(rig):
    rig.cam.show([])  # no frames at all
    out = rig.run(timeouts={State.FACE_CAPTURE: 0.5})
    assert out.status == "failed" and out.reason == "timeout"
    assert rig.snaps[-1].info["timed_out_in"] == "face_capture"
    assert rig.centre.calls == []


def test_two_faces_are_rejected(rig):
    rig.cam.show([TWO_PEOPLE])
    out = rig.run()
    assert (out.status, out.reason) == ("failed", "multiple_faces")
    assert rig.centre.calls == []


def test_printed_photo_spoof_is_rejected(rig):
    rig.cam.show([NUAA_SPOOF])
    out = rig.run()
    assert (out.status, out.reason) == ("failed", "spoof_suspected")
    assert rig.centre.calls == [] and "liveness" in rig.states()


def test_unknown_face_is_not_matched(rig):
    rig.centre.auth = FaceAuth("no_match")
    rig.cam.show([casia(1, 0)])
    out = rig.run()
    assert (out.status, out.reason) == ("failed", "not_matched")


def test_patient_cancels_on_the_confirm_step(rig):
    rig.cam.show([casia(1, 0)])
    rig.typist.plan("confirm", "<cancel>")
    out = rig.run()
    assert (out.status, out.reason) == ("cancelled", "cancelled_by_patient")
    assert [c for c, _ in rig.centre.calls] == ["face_auth", "presettle"]  # nothing settled


def test_confirm_times_out_without_charging(rig):
    rig.cam.show([casia(1, 0)])
    out = rig.run(timeouts={**FAST, State.CONFIRM: 0.6})
    assert (out.status, out.reason) == ("failed", "timeout")
    assert "settle" not in [c for c, _ in rig.centre.calls]


def test_cashier_cancel_from_another_thread(rig):
    rig.cam.show([casia(1, 0)])

    def cancel_when_confirming(s):
        if s.state == "confirm":
            threading.Timer(0.1, lambda: rig.session.cancel("cashier")).start()

    rig.typist.on_snapshot  # no keys planned: the patient hesitates
    rig.snaps_hook = cancel_when_confirming
    orig = rig.typist.on_snapshot
    rig.typist.on_snapshot = lambda s: (orig(s), cancel_when_confirming(s))
    out = rig.run()
    assert (out.status, out.reason) == ("cancelled", "cancelled_by_cashier")


def test_first_visit_wrong_id_three_times_locks(rig):
    rig.centre.auth = FaceAuth("not_activated")
    rig.centre.activations = [Activation("id_mismatch", tries_left=2), Activation("id_mismatch", tries_left=1),
                              Activation("id_mismatch", tries_left=0, minutes=30)]
    wrong = "110105194912310021"[:17]
    from kiosk.app.idcard import check_char

    wrong = wrong[:16] + "3"
    wrong += check_char(wrong)
    for _ in range(3):
        rig.typist.plan("id_entry", f"{wrong}<enter>")
    rig.cam.show([casia(1, 0)])
    out = rig.run()
    assert (out.status, out.reason) == ("failed", "id_locked")
    assert [c for c, _ in rig.centre.calls].count("activate") == 3
    retry = [s for s in rig.snaps if s.state == "id_entry" and s.reason == "id_mismatch"]
    assert retry and "2" in retry[0].reason_en
    assert "30" in rig.snaps[-1].reason_en


def test_first_visit_activation_then_pays(rig):
    rig.centre.auth = FaceAuth("not_activated")
    rig.centre.activations = [Activation("ok", ALICE)]
    rig.typist.plan("id_entry", f"{GOOD_ID}<enter>").plan("confirm", "<enter>")
    rig.cam.show([casia(1, 0)])
    out = rig.run()
    assert out.status == "paid", rig.reasons()
    assert ("activate", GOOD_ID) in rig.centre.calls
    # the ID number never reaches the journal or the screen
    assert GOOD_ID not in str(rig.store.steps("t", "o1"))
    assert all(GOOD_ID not in str(s.to_dict()) for s in rig.snaps)


@pytest.mark.parametrize("declined", ["insufficient_credit", "credit_not_eligible"])
def test_credit_declined_reverses_the_settlement_and_tells_the_patient(rig, declined):
    rig.bank.draw_status = declined
    rig.typist.plan("confirm", "<enter>")
    rig.cam.show([casia(1, 0)])
    out = rig.run()
    assert (out.status, out.reason) == ("failed", declined)
    assert [c for c, _ in rig.centre.calls][-2:] == ["settle", "reverse"]
    assert rig.steps()[-3:] == ["reverse", "reversed", "failed"]
    assert "Please" in rig.snaps[-1].reason_en


def test_printer_out_of_paper_still_completes_the_payment(rig):
    rig.sim.run_command("paper out")
    rig.typist.plan("confirm", "<enter>")
    rig.cam.show([casia(1, 0)])
    out = rig.run()
    assert out.status == "paid" and not out.receipt_printed
    assert rig.snaps[-1].state == "done" and rig.snaps[-1].reason == "paper_out"


def test_lost_settlement_answer_is_reversed_by_recovery(rig, tmp_path):
    rig.centre.settle_error = True
    rig.centre.reverse_error = True
    rig.typist.plan("confirm", "<enter>")
    rig.cam.show([casia(1, 0)])
    out = rig.run()
    assert (out.status, out.reason) == ("reversing", "centre_unavailable")
    # the 2207 may stand until the reversal is confirmed: the screen reads pending, never "nothing was charged"
    assert (rig.snaps[-1].state, rig.snaps[-1].reason) == ("pending", "payment_pending") and rig.snaps[-1].terminal
    assert "failed" not in rig.states() and "未扣款" not in rig.snaps[-1].reason_zh
    rig.store.set_status("t", "o1", "reversing", reason=out.reason)
    # the network comes back: a recovery pass reverses the very msgid that was sent
    rig.centre.reverse_error = False
    term = Terminal(rig.store, rig.deps, SystemClock())
    assert term.recover() == [("o1", "failed")]
    sent = [m for c, m in rig.centre.calls if c == "settle"]
    reversed_ = [m for c, m in rig.centre.calls if c == "reverse"]
    assert reversed_[-1] == sent[0]
    assert rig.store.get("t", "o1").status == "failed"


def test_camera_that_gives_no_frames_is_reported(rig):
    rig.cam.show([])
    out = rig.run(timeouts={State.FACE_CAPTURE: 5.0}, limits=Limits(camera_stall_s=0.3, key_poll_s=0.02))
    assert (out.status, out.reason) == ("failed", "camera_offline")


def test_bridge_down_at_the_keypad_is_reported(rig):
    rig.cam.show([casia(1, 0)])
    rig.sim.run_command("mute on")  # the MCU stops answering: the bridge cannot switch the keypad on
    try:
        out = rig.run()
    finally:
        rig.sim.run_command("mute off")
    assert out.status == "failed" and out.reason in ("keypad_offline", "device_fault")
    assert "settle" not in [c for c, _ in rig.centre.calls]


def test_fault_while_money_moves_is_left_to_recovery(rig):
    class Broken:
        def print_receipt(self, lines):
            from kiosk.errors import StorageError

            raise StorageError("disk full", code="disk_full")

    rig.deps.printer = Broken()
    rig.typist.plan("confirm", "<enter>")
    rig.cam.show([casia(1, 0)])
    out = rig.run()
    assert (out.status, out.reason) == ("reversing", "interrupted")
    assert rig.snaps[-1].state == "pending" and "failed" not in rig.states()  # it was paid: never "not paid"
    # the journal shows the money fully moved: recovery reports it paid, receipt not printed
    rig.store.set_status("t", "o1", "reversing", reason="interrupted")
    assert Terminal(rig.store, rig.deps, SystemClock()).recover() == [("o1", "paid")]
    assert rig.store.get("t", "o1").result["receipt_printed"] is False


def test_every_reason_the_session_can_give_has_patient_text():
    """A reason code without a prompt turns into an IntegrityError mid-session (the patient
    would read 'system fault', or a declined draw would be left 'reversing')."""
    import re
    from pathlib import Path

    from kiosk.app import session as session_mod
    from kiosk.app.prompts import REASONS

    src = Path(session_mod.__file__).read_text()
    used = set(re.findall(r'_fail\("([a-z_]+)"', src)) | set(session_mod._MONEY_REASONS)
    assert used - set(REASONS) == set()



def test_admission_without_a_credit_line_is_told_why(rig):
    rig.bank.line = Line(kind="none")
    rig.cam.show([casia(1, 0)])
    out = rig.run(Order("o1", {}, mode="admission", deposit_fen=50000))
    assert (out.status, out.reason) == ("failed", "credit_not_eligible")
    assert rig.bank.calls == []


def test_the_settlements_pay_auth_is_journaled_and_carried_into_the_draw(rig):
    """The bank draws only with the centre's pay_auth: it comes from the settlement's answer, is kept
    with the 'settled' step (a crash-recovery re-send carries it again) and goes into the draw."""
    rig.cam.show([casia(1, 0)])
    rig.typist.plan("confirm", "<enter>")
    out = rig.run()
    assert out.status == "paid", (out, rig.reasons())
    assert rig.bank.auths == ["PA1.settled.S1"]
    settled = dict(rig.store.steps("t", "o1"))["settled"]
    assert settled["pay_auth"] == "PA1.settled.S1"


def test_admission_asks_the_centre_for_the_holds_pay_auth_first(rig):
    rig.cam.show([casia(1, 0)])
    rig.typist.plan("confirm", "<enter>")
    out = rig.run(Order("o1", {}, mode="admission", deposit_fen=50000))
    assert out.status == "held", (out, rig.reasons())
    assert ("hold_auth", 50000) in rig.centre.calls and rig.bank.auths == ["PA1.fake.auth"]


def test_admission_without_the_centres_authorisation_holds_nothing(rig, monkeypatch):
    monkeypatch.setattr(rig.centre, "hold_auth", lambda person, amount_fen, ref: "")
    rig.cam.show([casia(1, 0)])
    rig.typist.plan("confirm", "<enter>")
    out = rig.run(Order("o1", {}, mode="admission", deposit_fen=50000))
    assert (out.status, out.reason) == ("failed", "centre_unavailable")
    assert [c for c in rig.bank.calls if c[0] == "hold"] == []


@pytest.mark.parametrize("status, end, reason", [
    ("return_failed", "pending", "return_needs_staff"),  # a party refused after the reversal: staff settle it
    ("failed", "failed", "interrupted"),                   # refused before anything changed: not returned
])
def test_a_return_refused_after_its_reversal_never_reads_not_returned(rig, status, end, reason):
    """The patient's screen must not say "not returned" when the fund and account already went back (the
    reversal landed, a later party refused: an operator's case); a return refused before anything changed
    still ends failed."""
    rig.store.create_order("t", "r1", {"bill": BILL}, "return")
    rig.centre.presettle = lambda person, bill, order_id, **kw: SettleResult("ok", SPLIT)
    rig.typist.plan("confirm", "<enter>")
    order = Order("r1", BILL, mode="return", psn_no="P1", confirm="cashier", operator=("op1", "Wang"),
                  orig_setl_id="S1", insutype="310", old={"credit_draw": "0.00"})

    def on_change(s):
        rig.snaps.append(s)
        rig.typist.on_snapshot(s)

    class J:
        def record(self, order_id, step, data=None):
            rig.store.record("t", order_id, step, data)

    s = CounterSession(order, rig.deps, J(), SystemClock(), on_change=on_change, timeouts=FAST,
                       limits=Limits(key_poll_s=0.02))
    s.returner = lambda sess: (Outcome(status=status, reason="bank_refused"), [])
    out = s.run()
    assert out.status == status
    assert (rig.snaps[-1].state, rig.snaps[-1].reason) == (end, reason), rig.snaps[-1]
