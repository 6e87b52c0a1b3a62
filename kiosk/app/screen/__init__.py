"""The patient's screen: a local web page driven by the counter flow.

    from kiosk.app.screen import ScreenBus, ScreenState, mount_screen
    bus = ScreenBus()
    mount_screen(app, bus)            # on the kiosk FastAPI app (127.0.0.1:8740)
    bus.update(phase="face", camera=True, prompt=None, reason="off_centre")
    bus.publish_frame(frame_bgr)      # live preview, in memory only

The kiosk browser opens http://127.0.0.1:8740/screen/#k=<secret> full screen: state, events and the
camera answer only the holder of the screen's per-start secret (kiosk.app.screen.access).
"""
from __future__ import annotations

from fastapi import FastAPI

from kiosk.app.screen.bus import ScreenBus
from kiosk.app.screen.model import Amounts, BillLine, KeypadEntry, Peripherals, ScreenState, Text

__all__ = [
    "Amounts", "BillLine", "KeypadEntry", "Peripherals", "ScreenBus", "ScreenState", "Text", "mount_screen",
]


def mount_screen(app: FastAPI, bus: ScreenBus, *, technician: bool = True, prefix: str = "/screen",
                 technician_config: object = None, token: str | None = None) -> str:
    """Mount the patient's screen (and, unless told not to, the technician page) on `app`.

    `technician_config` (a `kiosk.app.technician.TechnicianConfig`) names the terminal's data dir
    and bridge; by default they come from the environment (KIOSK_DATA_DIR). `token`: the screen's
    secret (fresh when None); returned, and kept as `app.state.screen_token`."""
    from kiosk.app.screen.routes import mount

    token = mount(app, bus, prefix, token)
    if technician:
        from kiosk.app.technician import mount_technician

        mount_technician(app, bus=bus, config=technician_config)  # type: ignore[arg-type]
    return token
