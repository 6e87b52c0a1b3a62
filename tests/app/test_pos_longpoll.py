"""Long-polls hold no worker thread: POS systems waiting on results never stall other calls."""
from __future__ import annotations

import threading
import time

from kiosk.app.pos_auth import PosAuth
from kiosk.app.pos_api import create_app
from kiosk.app.pos_client import PosClient
from kiosk.app.runtime import ServerThread
from kiosk.app.session import Deps
from kiosk.app.store import Store
from kiosk.app.terminal import Terminal
from kiosk.clock import SystemClock
from kiosk.storage import open_database

from tests.app.conftest import free_port

KEY = "p" * 64
BILL = {"items": [{"code": "F001", "price": "10.00", "qty": "1"}]}


def test_twenty_waiting_pos_calls_do_not_stall_a_new_order(tmp_path) -> None:  # type: ignore[no-untyped-def]
    db = open_database(f"sqlite:///{tmp_path / 'pos.db'}")
    deps = Deps(camera=None, vision=None, centre=None, bank=None, keypad=None, printer=None)  # type: ignore[arg-type]
    terminal = Terminal(Store(db, SystemClock()), deps, SystemClock())  # no worker: orders stay pending
    port = free_port()
    server = ServerThread(create_app(terminal, PosAuth({"pos": KEY})), port=port).start()
    url = f"http://127.0.0.1:{port}"
    try:
        first = PosClient(url, "pos", KEY)
        assert first.create({"order_id": "WAITED", "bill": BILL}).status_code == 201
        done: list[float] = []

        def long_poll() -> None:
            c = PosClient(url, "pos", KEY)
            t = time.monotonic()
            r = c.get("WAITED", wait=20)
            if r.status_code == 200 and r.json()["status"] == "cancelled":
                done.append(time.monotonic() - t)
            c.close()

        pollers = [threading.Thread(target=long_poll) for _ in range(20)]
        for t in pollers:
            t.start()
        time.sleep(0.5)  # all twenty are waiting now
        t0 = time.monotonic()
        assert first.create({"order_id": "NEXT", "bill": BILL}).status_code == 201
        assert first.cancel("NEXT").status_code == 200
        assert time.monotonic() - t0 < 1.5, "a new order waited behind the long-polls"
        # the worker's change signal ends a wait early: cancelling the waited order answers the polls
        first.cancel("WAITED")
        for t in pollers:
            t.join(10)
        assert len(done) == 20 and max(done) < 5  # answered by the cancel, not by the 20 s timeout
        first.close()
    finally:
        server.stop()
        db.close()
