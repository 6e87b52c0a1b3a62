"""Feeds the patient's screen (kiosk.app.screen, owned by G2) from the counter flow.

G2's `ScreenFeed` maps each `Snapshot` onto the page's `ScreenState`; this
link makes that optional and harmless: without the screen package the app
runs headless, and a screen fault is logged, never allowed to stop a payment.
The outcome page stays up `outcome_s` before the welcome page returns.
"""
from __future__ import annotations

import logging
import threading
from typing import Any, Mapping

log = logging.getLogger("kiosk.app.screen_link")


def screen_available() -> bool:
    try:
        import kiosk.app.screen.feed  # noqa: F401
    except ImportError:
        return False
    return True


class ScreenLink:
    def __init__(self, bus: Any, *, outcome_s: float = 8.0) -> None:
        from kiosk.app.screen.feed import ScreenFeed

        self.bus = bus
        self.feed = ScreenFeed(bus)
        self.outcome_s = outcome_s
        self._gen = 0
        self._lock = threading.Lock()

    def __call__(self, snap: Any) -> None:
        with self._lock:
            self._gen += 1
        try:
            self.feed.on_snapshot(snap)
        except Exception:  # noqa: BLE001 - the screen must never stop a payment
            log.exception("screen update failed for state %s", getattr(snap, "state", "?"))

    def idle(self) -> None:
        """After an outcome: back to the welcome page unless a new session began meanwhile."""
        with self._lock:
            gen = self._gen

        def later() -> None:
            with self._lock:
                if gen != self._gen:
                    return
            try:
                self.feed.idle()
                self.bus.clear_frame()
            except Exception:  # noqa: BLE001
                log.exception("screen idle update failed")

        t = threading.Timer(self.outcome_s, later)
        t.daemon = True
        t.start()

    def frame(self, frame: Any) -> None:
        try:
            self.bus.publish_frame(frame)
        except Exception:  # noqa: BLE001
            log.debug("preview frame dropped", exc_info=True)

    def peripherals(self, bridge_status: Mapping[str, Any] | None, **kw: Any) -> None:
        try:
            self.feed.peripherals_from_bridge(bridge_status, **kw)
        except Exception:  # noqa: BLE001
            log.debug("status bar update failed", exc_info=True)
