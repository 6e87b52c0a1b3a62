"""Keypad and printer ports over the firmware bridge's local HTTP API (8730)."""
from __future__ import annotations

from firmware_bridge.client import BridgeClient
from kiosk.errors import DeviceError, InputError
from kiosk.app.ports import KeyEntry, PrintResult

# The bridge's ID-entry session refuses ENTER on an empty entry with this
# message; on the confirm step that refusal IS the confirm key.
_EMPTY_ENTER = "0 entered"


class BridgeKeypad:
    def __init__(self, client: BridgeClient) -> None:
        self.client = client

    def start(self, timeout_s: float) -> str:
        e = self.client.start_id_entry(timeout_s=min(600.0, max(1.0, timeout_s)), reveal_last=1)
        return str(e["session_id"])

    def poll(self, handle: str) -> KeyEntry:
        e = self.client.id_entry(handle)
        err = e.get("error")
        return KeyEntry(state=e["state"], masked=e.get("display") or "", length=int(e.get("length") or 0),
                        error=err, value=e.get("value"),
                        confirmed=bool(e["state"] == "active" and err and not e.get("length") and _EMPTY_ENTER in err))

    def stop(self, handle: str) -> None:
        try:
            self.client.cancel_id_entry(handle)
        except InputError:
            pass  # already gone


class BridgePrinter:
    def __init__(self, client: BridgeClient) -> None:
        self.client = client

    def print_receipt(self, lines: list[str]) -> PrintResult:
        try:
            r = self.client.print_receipt(lines[0], lines[1:], footer="谢谢 Thank you", columns=42)
        except DeviceError:
            return PrintResult("printer_offline")
        if r.get("printed"):
            return PrintResult("ok")
        return PrintResult("paper_out" if r.get("paper_out") or r.get("status") == "paper_out" else "printer_offline")
