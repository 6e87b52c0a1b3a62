"""Keypad, printer and fill-light ports over the firmware bridge's local HTTP API (8730)."""
from __future__ import annotations

from typing import Callable

from firmware_bridge.client import BridgeClient
from kiosk.errors import DeviceError, InputError
from kiosk.app.ports import KeyEntry, PrintResult

# The bridge's ID-entry session refuses ENTER on anything but a valid ID number
# ("an ID number has 18 characters, N entered"); on the confirm step (N = 0) and
# the phone-digits step (N = 4, read from the revealed display) that refusal IS
# the ENTER key.


class BridgeKeypad:
    def __init__(self, client: BridgeClient) -> None:
        self.client = client

    def start(self, timeout_s: float, reveal_last: int = 1) -> str:
        e = self.client.start_id_entry(timeout_s=min(600.0, max(1.0, timeout_s)), reveal_last=reveal_last)
        return str(e["session_id"])

    def poll(self, handle: str) -> KeyEntry:
        e = self.client.id_entry(handle)
        err = e.get("error")
        n = int(e.get("length") or 0)
        return KeyEntry(state=e["state"], masked=e.get("display") or "", length=n, error=err, value=e.get("value"),
                        # ENTER on a short entry: the bridge refuses it as an ID number ("empty" /
                        # "length"), which is exactly the confirm key (0 keys) or a 4-digit phone entry
                        confirmed=e["state"] == "active" and e.get("error_code") in ("empty", "length"))

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


class BridgeLight:
    """The fill light (LIGHT_SET channel 0) for the capture loop. `on_set` tells a simulated camera what
    the LED now does to the scene (kiosk.app.adapters.camera.ImageCamera.set_fill_light)."""

    def __init__(self, client: BridgeClient, on_set: Callable[[int], None] | None = None) -> None:
        self.client = client
        self.on_set = on_set

    def set(self, level: int) -> None:
        self.client.light("fill", int(level))
        if self.on_set is not None:
            self.on_set(int(level))
