"""One example ScreenState per phase, for the screen's tests and for a person
looking at the page without running a whole counter session
(`python -m kiosk.app.screen --port 8741` cycles through them)."""
from __future__ import annotations

from kiosk.app.screen.model import Amounts, BillLine, KeypadEntry, Peripherals, ScreenState

OK = Peripherals(printer="ok", keypad="ok", network="ok", camera="ok")

BILL = [BillLine(name="阿莫西林胶囊 0.25g×24", qty="2", amount="31.60"),
        BillLine(name="布洛芬缓释胶囊", amount="18.90"),
        BillLine(name="一般诊疗费", amount="10.00")]

SPLIT = Amounts(medfee_sumamt="60.50", fund_pay_sumamt="36.30", acct_pay="12.00",
                acct_mulaid_pay="5.20", credit_draw="7.00", credit_available="19993.00")


def samples() -> dict[str, ScreenState]:
    """name -> state; names are used for screenshot files."""
    return {
        "idle": ScreenState(phase="idle", state="idle", peripherals=OK),
        "bill": ScreenState(phase="bill", state="bill_received", session_id="S1", amounts=Amounts(
            medfee_sumamt="60.50", cash_pay="60.50"), bill_lines=BILL, peripherals=OK, deadline_s=60),
        "face": ScreenState(phase="face", state="face_capture", session_id="S1", camera=True, peripherals=OK,
                            deadline_s=30),
        "face_off_centre": ScreenState(phase="face", state="face_capture", session_id="S1", camera=True,
                                       reason="off_centre", peripherals=OK, deadline_s=28),
        "face_two_people": ScreenState(phase="face", state="face_capture", session_id="S1", camera=True,
                                       reason="multiple_faces", peripherals=OK, deadline_s=25),
        "liveness": ScreenState(phase="liveness", state="liveness", session_id="S1", camera=True, peripherals=OK),
        "matching": ScreenState(phase="matching", state="matching", session_id="S1", peripherals=OK),
        "id_entry": ScreenState(phase="id_entry", state="id_entry", session_id="S1", peripherals=OK, deadline_s=90,
                                keypad=KeypadEntry(masked="370202********", length=14, expected=18, attempts_left=3)),
        "phone_entry": ScreenState(phase="phone_entry", state="phone_digits", session_id="S1", peripherals=OK,
                                   keypad=KeypadEntry(masked="**", length=2, expected=4)),
        "confirm": ScreenState(phase="confirm", state="presettled", session_id="S1", amounts=SPLIT,
                               peripherals=OK, deadline_s=45),
        "confirm_family": ScreenState(phase="confirm", state="presettled", session_id="S2", payer="family",
                                      amounts=Amounts(medfee_sumamt="120.00", fund_pay_sumamt="72.00",
                                                      credit_draw="48.00", credit_holder="王*华（子女）"),
                                      peripherals=OK, deadline_s=45),
        "processing": ScreenState(phase="processing", state="settling", session_id="S1", amounts=SPLIT, peripherals=OK),
        "success": ScreenState(phase="success", state="done", session_id="S1", amounts=SPLIT, receipt_printed=True,
                               setl_id="SETL20261123000017", peripherals=OK),
        "success_paper_out": ScreenState(phase="success", state="done", session_id="S1", amounts=SPLIT,
                                         reason="paper_out", receipt_printed=False, setl_id="SETL20261123000018",
                                         peripherals=OK.model_copy(update={"printer": "error",
                                                                           "printer_detail": "paper_out"})),
        "failure_spoof": ScreenState(phase="failure", state="failed", session_id="S1", reason="spoof_suspected",
                                     peripherals=OK),
        "failure_network": ScreenState(phase="failure", state="failed", session_id="S1", reason="network_down",
                                       peripherals=OK.model_copy(update={"network": "offline"})),
        "failure_locked": ScreenState(phase="failure", state="failed", session_id="S1", reason="id_locked",
                                      peripherals=OK),
        "cancelled": ScreenState(phase="cancelled", state="cancelled", session_id="S1", reason="timeout",
                                 peripherals=OK),
        "pending": ScreenState(phase="pending", state="pending", session_id="S1", reason="payment_pending",
                               peripherals=OK.model_copy(update={"network": "offline"})),
    }
