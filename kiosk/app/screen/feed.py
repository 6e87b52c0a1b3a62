"""Turns the counter flow's snapshots (kiosk.app.flow.Snapshot) and the bridge's
status into ScreenStates on the bus.

    feed = ScreenFeed(bus, clock)
    Machine(..., on_change=feed.on_snapshot)   # every state change reaches the screen
    feed.peripherals_from_bridge(bridge_client.status(), network_ok=True)
    feed.idle()                                # after the outcome page, next patient

Names, ID digits and scores never reach the page: holder names are masked here,
keypad digits arrive masked from the bridge, and a snapshot has no score.
"""
from __future__ import annotations

import threading
from datetime import datetime
from typing import Any, Mapping

from kiosk.app.screen.bus import ScreenBus
from kiosk.app.screen.model import Amounts, KeypadEntry, MandateItem, Peripherals, ScreenState, Text
from kiosk.clock import Clock, SystemClock

# the flow's state name -> the page's layout
PHASE_OF: dict[str, str] = {
    "idle": "idle", "bill_received": "bill", "face_capture": "face", "liveness": "liveness",
    "match": "matching", "id_entry": "id_entry", "phone_entry": "phone_entry", "activation": "matching",
    "presettled": "processing", "confirm": "confirm", "settling": "processing", "printing": "processing",
    "done": "success", "failed": "failure", "cancelled": "cancelled", "pending": "pending",
}
CAMERA_STATES = frozenset({"face_capture", "liveness"})
_AMOUNT_KEYS = ("medfee_sumamt", "fund_pay_sumamt", "acct_pay", "acct_mulaid_pay", "credit_draw", "cash_pay")


def mask_name(name: str) -> str:
    """'王小华' -> '王*华', '王华' -> '王*', 'Li Lei' -> 'L*i': enough for a relative to recognise."""
    n = name.strip()
    if not n or "*" in n:
        return n[:40]
    if len(n) <= 2:
        return n[0] + "*"
    return n[0] + "*" * (len(n) - 2) + n[-1]


def _get(snap: Any, key: str, default: Any = None) -> Any:
    if isinstance(snap, Mapping):
        return snap.get(key, default)
    return getattr(snap, key, default)


def state_from_snapshot(snap: Any, *, now: datetime, peripherals: Peripherals) -> ScreenState:
    """A flow Snapshot (object or its to_dict()) -> ScreenState."""
    name = str(_get(snap, "state"))
    phase = PHASE_OF.get(name, "processing")
    reason = _get(snap, "reason")
    prompt_d = _get(snap, "prompt")
    if isinstance(prompt_d, Mapping):
        pz, pe = prompt_d.get("zh"), prompt_d.get("en")
    else:
        pz, pe = _get(snap, "prompt_zh"), _get(snap, "prompt_en")
    rt = _get(snap, "reason_text")
    rz, re_ = (rt.get("zh"), rt.get("en")) if isinstance(rt, Mapping) else (_get(snap, "reason_zh"), _get(snap, "reason_en"))
    # a reason (quality hint, failure, receipt warning) is what the patient must act on
    if reason and rz and re_:
        prompt = Text(zh=rz, en=re_)
    elif pz and pe:
        prompt = Text(zh=pz, en=pe)
    else:
        prompt = None
    info: Mapping[str, Any] = _get(snap, "info") or {}
    amounts = None
    a = dict(_get(snap, "amounts") or {})
    if "medfee_sumamt" in a:
        kw = {k: a[k] for k in _AMOUNT_KEYS if a.get(k) is not None}
        if a.get("credit_holder"):
            kw["credit_holder"] = mask_name(str(a["credit_holder"]))
        if a.get("credit_available"):
            kw["credit_available"] = a["credit_available"]
        try:
            amounts = Amounts(**kw)
        except ValueError:
            amounts = None  # a split still being filled in does not add up yet: show no numbers
    keypad = None
    if name in ("id_entry", "phone_entry"):
        masked = str(info.get("keypad_masked") or "")
        keypad = KeypadEntry(masked=masked[:24], length=int(info.get("keypad_length") or len(masked)),
                             expected=4 if name == "phone_entry" else 18,
                             attempts_left=info.get("attempts_left"))
    deadline = _get(snap, "deadline")
    deadline_s = None
    if deadline:
        d = deadline if isinstance(deadline, datetime) else datetime.fromisoformat(str(deadline))
        deadline_s = max(0.0, min(3600.0, (d - now).total_seconds()))
    payer = "family" if (info.get("payer") == "family" or (amounts and amounts.credit_holder)) else "self"
    kind = str(info.get("kind")) if info.get("kind") in ("return", "register", "revoke") else "pay"
    amounts_old = None
    old = info.get("amounts_old")
    if kind == "return" and isinstance(old, Mapping) and old.get("medfee_sumamt"):
        try:
            amounts_old = Amounts(**{k: str(old[k]) for k in _AMOUNT_KEYS if old.get(k) is not None})
        except ValueError:
            amounts_old = None
    mandates = []
    if kind == "revoke":
        for m in list(info.get("mandates") or [])[:20]:  # only what the patient recognises them by
            try:
                mandates.append(MandateItem(**{k: str(m.get(k) or "") for k in ("fixmedins_code", "per_visit",
                                                                                   "per_day", "until")}))
            except (ValueError, AttributeError):
                continue  # a malformed entry is not shown (the prompt still says how many and where)
    return ScreenState(
        phase=phase, mandates=mandates, state=name[:40], session_id=_get(snap, "session_id"), prompt=prompt, reason=reason,
        amounts=amounts, keypad=keypad, peripherals=peripherals, camera=name in CAMERA_STATES,
        deadline_s=deadline_s, payer=payer, kind=kind, amounts_old=amounts_old,
        receipt_printed=(reason not in ("paper_out", "cover_open", "printer_offline")) if phase == "success" else None,
        setl_id=(str(info["setl_id"])[:64] if info.get("setl_id") else None),
    )


def peripherals_from_bridge(status: Mapping[str, Any] | None, *, network_ok: bool | None = None,
                            camera_ok: bool | None = None) -> Peripherals:
    """The bridge's /v1/status (None when the bridge is down) -> status-bar lights."""
    def light(ok: bool | None, detail: str | None = None) -> tuple[str, str | None]:
        return ("unknown", None) if ok is None else (("ok", None) if ok else ("error", detail))

    if status is None:
        printer = keypad = ("offline", "bridge_down")
    elif status.get("state") != "connected":
        printer = keypad = ("offline", str(status.get("state") or "disconnected"))
    else:
        p = status.get("peripherals") or {}
        if p.get("paper_out"):
            printer = ("error", "paper_out")
        elif p.get("cover_open"):
            printer = ("error", "cover_open")
        elif p.get("paper_near_end"):
            printer = ("warning", "paper_near_end")
        else:
            printer = ("ok", None)
        keypad = ("ok", None)
    net = ("unknown", None) if network_ok is None else (("ok", None) if network_ok else ("offline", "centre_unreachable"))
    cam = light(camera_ok, "camera_offline")
    return Peripherals(printer=printer[0], printer_detail=printer[1], keypad=keypad[0], keypad_detail=keypad[1],
                       network=net[0], network_detail=net[1], camera=cam[0], camera_detail=cam[1])


class ScreenFeed:
    """Glue between the flow and the bus; thread-safe, cheap (called on every change)."""

    def __init__(self, bus: ScreenBus, clock: Clock | None = None) -> None:
        self.bus = bus
        self.clock = clock or SystemClock()
        self._lock = threading.Lock()

    def on_snapshot(self, snap: Any) -> None:
        with self._lock:
            self.bus.publish(state_from_snapshot(snap, now=self.clock.now(), peripherals=self.bus.current().peripherals))

    def idle(self) -> None:
        with self._lock:
            self.bus.publish(ScreenState(phase="idle", state="idle", peripherals=self.bus.current().peripherals))

    def set_peripherals(self, p: Peripherals) -> None:
        with self._lock:
            if p != self.bus.current().peripherals:
                self.bus.update(peripherals=p)

    def peripherals_from_bridge(self, status: Mapping[str, Any] | None, **kw: Any) -> None:
        self.set_peripherals(peripherals_from_bridge(status, **kw))
