"""The bridge: one Link plus keypad entry sessions, an event log and peripheral
state, shared by the HTTP service. No HTTP here, so it is testable directly."""
from __future__ import annotations

import collections
import secrets
from pathlib import Path
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from firmware_bridge.access import FirmwareUnavailable, read_firmware_file
from firmware_bridge.firmware import FirmwareUpdater, SignedImage
from firmware_bridge.keypad import EntryState, IdEntry
from firmware_bridge.messages import BootEvent, BuzzerPattern, CardInfo, Evt, Flag, PayloadError, fmt_version
from firmware_bridge.peripherals import Peripherals
from firmware_bridge.session import Link, LinkState
from kiosk.errors import DeviceError, InputError


@dataclass
class _EntrySession:
    id: str
    entry: IdEntry
    started: float
    timeout: float
    keypad_off: bool = False


@dataclass
class PeripheralState:
    paper_out: bool = False
    cover_open: bool = False
    card_present: bool = False
    card_atr: str = ""
    tamper: bool = False


@dataclass
class Bridge:
    link: Link
    clock: Any = time.monotonic
    events_kept: int = 500
    # the only place firmware images are read from (None: firmware updates are refused)
    firmware_dir: Path | None = None
    firmware_max_bytes: int = 8 << 20
    peripherals: Peripherals = field(init=False)
    state: PeripheralState = field(default_factory=PeripheralState)

    def __post_init__(self) -> None:
        self.peripherals = Peripherals(self.link)
        self._events: collections.deque[dict[str, Any]] = collections.deque(maxlen=self.events_kept)
        self._event_id = 0
        self._lock = threading.Lock()
        self._entries: dict[str, _EntrySession] = {}
        self._active: str | None = None
        self._fw_job: dict[str, Any] = {"state": "idle"}
        self.link.add_listener(self._on_event)
        self.link.add_state_listener(self._on_state)

    def _on_state(self, s: LinkState) -> None:
        self._log("link", state=s.value)
        if s == LinkState.CONNECTED:  # flags may have changed while we were away
            threading.Thread(target=self._refresh_quietly, name="bridge-refresh", daemon=True).start()

    def _refresh_quietly(self) -> None:
        try:
            self.refresh()
        except DeviceError:
            pass
        self._rearm_keypad(None)

    def _rearm_keypad(self, boot_id: int | None) -> None:
        """Switch the keypad on again for an active ID entry, once the link has greeted ``boot_id``."""
        deadline = time.monotonic() + 3.0
        while boot_id is not None and time.monotonic() < deadline:
            info = self.link.info
            if info is not None and info.boot_id == boot_id and self.link.state == LinkState.CONNECTED:
                break
            time.sleep(0.01)
        with self._lock:
            active = self._active is not None and self._entries.get(self._active) is not None
            active = active and self._entries[self._active].entry.state == EntryState.ACTIVE
        if active:
            try:
                self.peripherals.keypad(True)
            except DeviceError:
                pass  # the link is down again: the next reconnect re-arms it

    # --- events ------------------------------------------------------------------------

    def _log(self, kind: str, **data: Any) -> None:
        with self._lock:
            self._event_id += 1
            self._events.append({"id": self._event_id, "t": time.time(), "kind": kind, **data})

    def events(self, after: int = 0) -> list[dict[str, Any]]:
        with self._lock:
            return [e for e in self._events if e["id"] > after]

    def _on_event(self, code: int, payload: bytes) -> None:  # reader thread: no requests here
        try:
            if code == Evt.KEY and len(payload) == 1:
                with self._lock:
                    s = self._entries.get(self._active or "")
                    if s is not None:
                        s.entry.press(payload[0])
                self._log("key")  # which key is never logged (ID numbers are personal data)
            elif code == Evt.PRINTER and payload:
                self.state.paper_out = bool(payload[0] & Flag.PAPER_OUT)
                self.state.cover_open = bool(payload[0] & Flag.COVER_OPEN)
                self._log("printer", paper_out=self.state.paper_out, cover_open=self.state.cover_open)
            elif code == Evt.CARD:
                card = CardInfo.decode(payload)
                self.state.card_present, self.state.card_atr = card.present, card.atr.hex().upper()
                self._log("card", present=card.present, atr=self.state.card_atr)
            elif code == Evt.TAMPER and payload:
                self.state.tamper = bool(payload[0])
                self._log("tamper", opened=self.state.tamper)
            elif code == Evt.BOOT:
                boot = BootEvent.decode(payload)
                self._log("boot", firmware=fmt_version(boot.firmware), reason=boot.reason.name.lower())
                # the device boots with its keypad off (protocol.md §4): an entry in progress needs it back
                threading.Thread(target=self._rearm_keypad, args=(boot.boot_id,), name="bridge-rearm", daemon=True).start()
        except PayloadError:
            self._log("malformed_event", code=code)

    # --- status ------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        info = self.link.info
        return {
            "state": self.link.state.value,
            "serial_url": self.link.url,
            "last_error": self.link.last_error,
            "firmware": fmt_version(info.firmware) if info else None,
            "protocol": self.link.protocol,
            "model": info.model if info else None,
            "device_serial": info.serial if info else None,
            "peripherals": vars(self.state).copy(),
            "stats": vars(self.link.stats).copy(),
        }

    def refresh(self) -> None:
        """Re-read peripheral flags from the device (after a reconnect, say)."""
        st = self.peripherals.status()
        self.state.paper_out = bool(st.flags & Flag.PAPER_OUT)
        self.state.cover_open = bool(st.flags & Flag.COVER_OPEN)
        self.state.card_present = bool(st.flags & Flag.CARD_PRESENT)
        self.state.tamper = bool(st.flags & Flag.TAMPER)

    # --- ID entry ----------------------------------------------------------------------

    def start_id_entry(self, timeout_s: float = 120.0, reveal_last: int = 1) -> dict[str, Any]:
        if not 1 <= timeout_s <= 600:
            raise InputError("timeout_s must be 1..600", field="timeout_s")
        if not 0 <= reveal_last <= 4:
            raise InputError("reveal_last must be 0..4", field="reveal_last")
        sid = secrets.token_hex(8)
        # the session exists before the keypad is switched on, so a key pressed the instant
        # it lights up lands in this entry instead of being dropped
        with self._lock:
            if self._active and self._active in self._entries:
                self._entries[self._active].entry.state = EntryState.CANCELLED
            self._entries = {k: v for k, v in self._entries.items() if v.entry.state == EntryState.ACTIVE}
            self._entries[sid] = _EntrySession(sid, IdEntry(reveal_last=reveal_last), self.clock(), timeout_s)
            self._active = sid
        try:
            self.peripherals.keypad(True)
        except Exception:
            with self._lock:
                self._entries.pop(sid, None)
                if self._active == sid:
                    self._active = None
            raise
        return self.entry(sid)

    def entry(self, sid: str) -> dict[str, Any]:
        with self._lock:
            s = self._entries.get(sid)
            if s is None:
                raise InputError(f"no keypad entry session {sid!r}", code="not_found", field="session_id")
            if s.entry.state == EntryState.ACTIVE and self.clock() - s.started > s.timeout:
                s.entry.expire()
            e = s.entry
            out = {"session_id": sid, "state": e.state.value, "display": e.display, "length": e.length, "error": e.error, "error_code": e.error_code, "value": e.value}
            finish = e.state != EntryState.ACTIVE and not s.keypad_off
            if finish:
                s.keypad_off = True
                if self._active == sid:
                    self._active = None
        if finish:
            self._finish(e.state)
        return out

    def cancel_entry(self, sid: str) -> dict[str, Any]:
        with self._lock:
            s = self._entries.get(sid)
            if s is None:
                raise InputError(f"no keypad entry session {sid!r}", code="not_found", field="session_id")
            if s.entry.state == EntryState.ACTIVE:
                s.entry.state = EntryState.CANCELLED
        return self.entry(sid)

    def _finish(self, state: EntryState) -> None:
        try:
            self.peripherals.keypad(False)
            self.peripherals.buzz(BuzzerPattern.SHORT if state == EntryState.ACCEPTED else BuzzerPattern.DOUBLE)
        except DeviceError:
            pass  # the entry's outcome stands even if the beep is lost

    # --- firmware update (technician) ------------------------------------------------------

    def start_firmware_update(self, name: str) -> dict[str, Any]:
        """Start (or resume) an update from the signed ``.kfw`` file ``name`` in the firmware directory.

        Any file the bridge may not read (not there, outside the directory, a link,
        a FIFO, a device, too big) is the same FirmwareUnavailable.
        """
        if self.firmware_dir is None:
            raise FirmwareUnavailable()
        blob = read_firmware_file(self.firmware_dir, name, self.firmware_max_bytes)
        image = SignedImage.from_bytes(blob)  # InputError / IntegrityError name the problem
        with self._lock:
            if self._fw_job.get("state") == "running":
                raise InputError("a firmware update is already running", code="busy", field="name")
            job = {"state": "running", "version": ".".join(map(str, image.version)), "offset": 0, "size": len(image.data), "error": None, "resumed_from": None}
            self._fw_job = job

        def progress(offset: int, size: int) -> None:
            job["offset"] = offset

        def run() -> None:
            try:
                res = FirmwareUpdater(self.link).update(image, progress=progress)
                job.update(state="done", offset=job["size"], resumed_from=res.resumed_from)
                self._log("firmware", state="done", version=job["version"])
            except DeviceError as e:
                job.update(state="failed", error=e.message)
                self._log("firmware", state="failed", version=job["version"])

        threading.Thread(target=run, name="firmware-update", daemon=True).start()
        return dict(job)

    def firmware_job(self) -> dict[str, Any]:
        return dict(self._fw_job)
