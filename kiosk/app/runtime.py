"""Assembles the kiosk application: store, terminal, POS API, screen, status bar.

    rt = build(settings, deps, pos_systems)     # nothing started yet
    rt.start()                                  # recovery pass + counter worker + status poller
    server = serve_in_thread(rt.app, port=8740) # the POS API and the screen
    ...
    rt.stop(); server.stop()
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from fastapi import FastAPI

from kiosk.clock import Clock, SystemClock
from kiosk.errors import ConfigError
from kiosk.app.flow import State
from kiosk.app.pos_api import create_app
from kiosk.app.pos_auth import PosAuth
from kiosk.app.screen_link import ScreenLink, screen_available
from kiosk.app.session import Deps, Limits
from kiosk.app.store import Store
from kiosk.app.terminal import Terminal
from kiosk.storage import Database

log = logging.getLogger("kiosk.app")


@dataclass
class Runtime:
    app: FastAPI
    terminal: Terminal
    store: Store
    bus: Any = None  # kiosk.app.screen.ScreenBus when the screen is installed
    screen_token: str | None = None  # the screen's per-start secret (kiosk.app.screen.access) when installed
    link: ScreenLink | None = None
    status_probe: Callable[[], dict[str, Any]] | None = None
    listeners: list[Callable[[Any], None]] = field(default_factory=list)
    fleet: Any = None  # kiosk.app.fleet_link.FleetLink when a fleet URL is configured
    _stop: threading.Event = field(default_factory=threading.Event)
    _poller: threading.Thread | None = None

    def start(self) -> None:
        self.terminal.start()
        if self.status_probe and self.bus is not None:
            self._poller = threading.Thread(target=self._poll_status, name="status-bar", daemon=True)
            self._poller.start()

    def stop(self) -> None:
        self._stop.set()
        if self.fleet is not None:  # no beat or update may start while the counter shuts down
            self.fleet.stop()
            self.fleet = None
        self.terminal.stop()
        if self.bus is not None:
            try:
                self.bus.close()
            except Exception:  # noqa: BLE001
                pass

    def _poll_status(self) -> None:
        while not self._stop.wait(2.0):
            try:
                st = self.status_probe() if self.status_probe else {}
                if self.link is not None:
                    self.link.peripherals(st.get("bridge"), network_ok=st.get("network_ok"),
                                          camera_ok=st.get("camera_ok"))
            except Exception:  # noqa: BLE001 - the status bar is best effort
                log.debug("status poll failed", exc_info=True)


def build(db: Database, deps: Deps, pos_systems: Mapping[str, str], *, clock: Clock | None = None,
          timeouts: dict[State, float] | None = None, limits: Limits = Limits(), with_screen: bool = True,
          status_probe: Callable[[], dict[str, Any]] | None = None,
          audit: Callable[..., Any] | None = None, technician: Any = None, catalogue: Any = None,
          institution: str | None = None) -> Runtime:
    """`status_probe()` -> {"bridge": bridge /v1/status or None, "network_ok": bool, "camera_ok": bool}.
    `technician`: the technician page's TechnicianConfig (the terminal's data dir: PIN, audit log, logs).
    `catalogue`: the centre's catalogue (kiosk.app.bill_check.Catalogue) the POS API checks codes against.
    `institution`: the terminal's fixmedins_code (default: the one its centre client is registered for)."""
    clock = clock or SystemClock()
    store = Store(db, clock)
    bus = None
    link: ScreenLink | None = None
    if with_screen and screen_available():
        from kiosk.app.screen import ScreenBus

        bus = ScreenBus()
        link = ScreenLink(bus)
    listeners: list[Callable[[Any], None]] = []

    def on_change(snap: Any) -> None:
        if link is not None:
            link(snap)
        for fn in list(listeners):
            try:
                fn(snap)
            except Exception:  # noqa: BLE001
                log.exception("state listener failed")

    terminal = Terminal(store, deps, clock, on_change=on_change, on_idle=link.idle if link else None,
                        on_frame=link.frame if link else None, timeouts=timeouts, limits=limits, audit=audit,
                        institution=institution)
    app = create_app(terminal, PosAuth(pos_systems), catalogue=catalogue)
    if bus is not None:
        from kiosk.app.screen import mount_screen
        from kiosk.app.screen.access import new_token

        screen_token = new_token()  # this start's screen secret: the caller writes it for the kiosk browser
        try:
            import kiosk.app.technician  # noqa: F401
            mount_screen(app, bus, technician_config=technician, token=screen_token)
        except ImportError:  # the technician page is not installed
            mount_screen(app, bus, technician=False, token=screen_token)
    _technician_checks(store)
    return Runtime(app=app, terminal=terminal, store=store, bus=bus, link=link, status_probe=status_probe,
                   listeners=listeners, screen_token=getattr(app.state, "screen_token", None))


def _technician_checks(store: Store) -> None:
    """Report unfinished payments on the technician page (when it is installed)."""
    try:
        from kiosk.app.technician import add_health_check
    except ImportError:
        return

    def counter() -> tuple[bool, str]:
        rows = store.open_orders()
        stuck = [r.order_id for r in rows if r.status == "reversing"]
        if stuck:
            return False, f"{len(stuck)} payment(s) waiting to be put back (party unreachable): {', '.join(stuck[:5])}"
        waiting = [r[2] for r in store.open_refunds() if r[4] == "pending"]
        if waiting:
            return False, (f"{len(waiting)} refund(s) waiting for a party's answer (completed automatically): "
                           f"{', '.join(waiting[:5])}")
        return True, f"{len(rows)} order(s) open, none waiting for a reversal or a refund"

    add_health_check("counter", counter)


class ServerThread:
    """uvicorn in a background thread (the demo, the tests and the bench)."""

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 8740) -> None:
        import uvicorn

        self.config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off")
        self.server = uvicorn.Server(self.config)
        self.thread = threading.Thread(target=self.server.run, name=f"http-{port}", daemon=True)

    def start(self, timeout_s: float = 10.0) -> "ServerThread":
        self.thread.start()
        end = time.monotonic() + timeout_s
        while not self.server.started:
            if time.monotonic() > end or not self.thread.is_alive():
                raise ConfigError(f"the HTTP server on {self.config.host}:{self.config.port} did not start "
                                  "(port in use?)", code="port_in_use")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=5)
