"""Feeds the patient's screen (kiosk.app.screen, G2) from the counter flow.

Maps each `Snapshot` of the state machine onto the screen's `ScreenState`
(phase, zh/en prompt, reason code, amounts, masked keypad entry, deadline).
The screen is optional: without the package the app runs headless. A screen
fault never affects a payment: it is logged and the payment goes on.
"""
from __future__ import annotations

import logging
from typing import Any

from kiosk.app.flow import Snapshot

log = logging.getLogger("kiosk.app.screen_link")

PHASE = {
    "bill_received": "bill", "face_capture": "face", "liveness": "liveness", "match": "matching",
    "id_entry": "id_entry", "activation": "matching", "presettled": "processing", "confirm": "confirm",
    "settling": "processing", "printing": "processing", "done": "success", "failed": "failure",
    "cancelled": "cancelled",
}
CAMERA_STATES = {"face_capture", "liveness"}


def screen_available() -> bool:
    try:
        import kiosk.app.screen  # noqa: F401
    except ImportError:
        return False
    return True


def to_screen_state(snap: Snapshot, seconds_left: float | None, peripherals: Any = None) -> Any:
    from kiosk.app.screen import Amounts, KeypadEntry, ScreenState, Text

    phase = PHASE.get(snap.state, "processing")
    if snap.state == "failed" and snap.reason == "timeout":
        phase = "cancelled"
    if snap.reason and snap.reason_zh:
        prompt = Text(zh=snap.reason_zh, en=snap.reason_en or "")
    else:
        prompt = Text(zh=snap.prompt_zh, en=snap.prompt_en)
    amounts = None
    if snap.amounts.get("medfee_sumamt"):
        a = dict(snap.amounts)
        amounts = Amounts(**{k: v for k, v in a.items() if k in Amounts.model_fields})
    keypad = None
    if snap.state == "id_entry":
        info = snap.info
        keypad = KeypadEntry(masked=str(info.get("keypad_masked", ""))[:24], length=int(info.get("keypad_length", 0) or 0),
                             attempts_left=info.get("attempts_left"))  # type: ignore[arg-type]
    fields: dict[str, Any] = dict(
        phase=phase, state=snap.state, session_id=snap.session_id, prompt=prompt, reason=snap.reason,
        amounts=amounts, keypad=keypad, camera=snap.state in CAMERA_STATES,
        deadline_s=None if snap.terminal or seconds_left is None else round(min(seconds_left, 3600.0), 1),
        payer="family" if snap.amounts.get("credit_holder") else "self",
    )
    if snap.state == "done":
        fields["receipt_printed"] = snap.reason not in ("paper_out", "printer_offline")
        fields["setl_id"] = snap.info.get("setl_id")
    if peripherals is not None:
        fields["peripherals"] = peripherals
    return ScreenState(**fields)


class ScreenLink:
    """on_change for the Machine: publish each snapshot on the screen bus."""

    def __init__(self, bus: Any) -> None:
        self.bus = bus

    def __call__(self, snap: Snapshot) -> None:
        try:
            left = None
            if snap.deadline:
                from datetime import datetime, timezone

                left = max(0.0, (datetime.fromisoformat(snap.deadline) - datetime.now(timezone.utc)).total_seconds())
            self.bus.publish(to_screen_state(snap, left, self.bus.current().peripherals))
        except Exception:  # noqa: BLE001 - the screen must never stop a payment
            log.exception("screen update failed for state %s", snap.state)

    def idle(self) -> None:
        try:
            from kiosk.app.screen import ScreenState

            self.bus.publish(ScreenState(peripherals=self.bus.current().peripherals))
            self.bus.clear_frame()
        except Exception:  # noqa: BLE001
            log.exception("screen idle update failed")

    def frame(self, frame: Any) -> None:
        try:
            self.bus.publish_frame(frame)
        except Exception:  # noqa: BLE001
            log.debug("preview frame dropped", exc_info=True)
