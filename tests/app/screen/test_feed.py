"""The flow's real state machine (kiosk.app.flow.Machine) drives the screen through ScreenFeed."""
from __future__ import annotations

from datetime import timedelta

import pytest

from kiosk.app.screen import ScreenBus
from kiosk.app.screen.feed import ScreenFeed, mask_name, peripherals_from_bridge
from kiosk.clock import ManualClock

flow = pytest.importorskip("kiosk.app.flow")
State = flow.State


def run_session(bus: ScreenBus, clock: ManualClock):
    feed = ScreenFeed(bus, clock)
    m = flow.Machine("S1", "O1", clock, on_change=feed.on_snapshot)
    phases = [bus.current()]
    m.go(State.FACE_CAPTURE)
    phases.append(bus.current())
    m.prompt("multiple_faces")
    phases.append(bus.current())
    m.go(State.LIVENESS)
    m.go(State.MATCH)
    m.go(State.ID_ENTRY, attempts_left=3)
    m.set_info(keypad_masked="370202****", keypad_length=10)
    phases.append(bus.current())
    m.go(State.ACTIVATION)
    m.go(State.PRESETTLED)
    m.set_amounts(medfee_sumamt="120.00", fund_pay_sumamt="72.00", acct_pay="0.00", acct_mulaid_pay="0.00",
                  credit_draw="48.00", cash_pay="0.00", credit_holder="王小华")
    clock.advance(seconds=5)
    m.go(State.CONFIRM)
    phases.append(bus.current())
    m.go(State.SETTLING)
    m.go(State.PRINTING)
    m.go(State.DONE, reason="paper_out", setl_id="SETL1")
    phases.append(bus.current())
    return phases


def test_a_whole_session_reaches_the_screen():
    bus, clock = ScreenBus(), ManualClock()
    bill, face, two, idn, confirm, done = run_session(bus, clock)
    assert bill.phase == "bill" and not bill.camera and bill.deadline_s == 120.0
    assert face.phase == "face" and face.camera
    assert two.reason == "multiple_faces" and two.prompt.en.startswith("More than one face")
    assert idn.phase == "id_entry" and idn.keypad.masked == "370202****" and idn.keypad.attempts_left == 3
    assert confirm.phase == "confirm" and confirm.payer == "family"
    assert confirm.amounts.credit_draw == "48.00" and confirm.amounts.credit_holder == "王*华"
    assert confirm.deadline_s == 60.0
    assert done.phase == "success" and done.receipt_printed is False and done.setl_id == "SETL1"
    assert "打印机缺纸" in done.prompt.zh
    assert "score" not in done.model_dump_json()
    assert bus.current().seq > 10


def test_timeout_and_cancel_are_outcomes_with_a_reason():
    bus, clock = ScreenBus(), ManualClock()
    feed = ScreenFeed(bus, clock)
    m = flow.Machine("S2", "O2", clock, on_change=feed.on_snapshot)
    m.go(State.FACE_CAPTURE)
    clock.advance(seconds=31)
    m.finish_timeout()
    st = bus.current()
    assert (st.phase, st.reason, st.camera) == ("failure", "timeout", False)
    feed.idle()
    assert bus.current().phase == "idle"


@pytest.mark.parametrize("name,masked", [("王小华", "王*华"), ("王华", "王*"), ("欧阳小明", "欧**明"), ("王*华", "王*华"), ("A", "A*")])
def test_holder_names_are_masked(name, masked):
    assert mask_name(name) == masked


def test_bridge_status_becomes_status_bar_lights():
    up = {"state": "connected", "peripherals": {"paper_out": True, "cover_open": False}}
    p = peripherals_from_bridge(up, network_ok=True, camera_ok=True)
    assert (p.printer, p.printer_detail, p.keypad, p.network, p.camera) == ("error", "paper_out", "ok", "ok", "ok")
    p = peripherals_from_bridge({"state": "disconnected"}, network_ok=False)
    assert (p.printer, p.keypad, p.network, p.camera) == ("offline", "offline", "offline", "unknown")
    assert peripherals_from_bridge(None).printer_detail == "bridge_down"


def test_a_return_session_reaches_the_screen_as_a_return_with_the_old_split_beside_the_new():
    """A return the cashier confirms: no face step, the original split beside the kept lines' split at
    the confirm, and only return texts (never "pay") on the way to the outcome."""
    from kiosk.app.screen.texts import prompt_for

    bus, clock = ScreenBus(), ManualClock()
    feed = ScreenFeed(bus, clock)
    m = flow.Machine("S2", "return/R1", clock, on_change=feed.on_snapshot, kind="return_cashier")
    seen = [bus.current()]
    m.go(State.PRESETTLED)
    m.set_amounts(medfee_sumamt="85.50", fund_pay_sumamt="55.20", acct_pay="15.00", acct_mulaid_pay="0.00",
                  credit_draw="15.30", cash_pay="0.00")
    m.set_info(amounts_old={"medfee_sumamt": "104.00", "fund_pay_sumamt": "70.00", "acct_pay": "15.00",
                            "acct_mulaid_pay": "0.00", "credit_draw": "19.00", "cash_pay": "0.00"})
    m.go(State.CONFIRM)
    seen.append(bus.current())
    m.go(State.SETTLING)
    m.go(State.PRINTING)
    m.go(State.DONE, reason="printer_offline")
    seen.append(bus.current())
    confirm, done = seen[1], seen[2]
    assert confirm.kind == "return" and confirm.phase == "confirm"
    assert confirm.amounts.medfee_sumamt == "85.50" and confirm.amounts_old.medfee_sumamt == "104.00"
    assert confirm.amounts_old.credit_draw == "19.00"
    for s in seen[1:]:
        text = s.prompt.zh + s.prompt.en
        assert "退货" in s.prompt.zh and "eturn" in s.prompt.en, s
        assert not any(w in text for w in ("pay", "Pay", "支付", "扣款", "charged")), text
    assert done.phase == "success" and done.receipt_printed is False
    # the page's own fallbacks (no prompt from the flow) are return texts too
    for phase in ("bill", "confirm", "processing", "success", "failure", "cancelled"):
        t = prompt_for(phase, None, None, "return")
        assert "退货" in t.zh and not any(w in t.zh + t.en for w in ("pay", "Pay", "支付", "扣款", "charged")), phase
    assert "收银员" in prompt_for("failure", "not_matched", None, "return").zh
    assert prompt_for("confirm", None, None) != prompt_for("confirm", None, None, "return")  # a payment stays one
