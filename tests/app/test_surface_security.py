"""The terminal's own network surfaces: POS request signatures, key file modes, the technician
PIN under parallel guessing, log masking, who may read the patient's screen, a cashier's cancel
racing the counter picking the order up."""
from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from kiosk.app import technician
from kiosk.app.pos_auth import AuthError, PosAuth, add_system, load_systems, signed_headers, systems_file
from kiosk.app.technician import Gate, mask_text, set_pin
from kiosk.clock import ManualClock, SystemClock
from kiosk.errors import ConfigError

KEY = "k" * 64
PATH = "/pos/v1/orders/A1/cancel"


def _headers(**over: str) -> dict[str, str]:
    now = time.time()
    h = {k.lower(): v for k, v in signed_headers("pos", KEY, "POST", PATH, b"", now=now).items()}
    h.update({k.lower(): v for k, v in over.items()})
    return h


@pytest.mark.parametrize("over", [
    {"X-Pos-Signature": "\u00e9" * 64},          # non-ASCII: hmac.compare_digest raised TypeError (500)
    {"X-Pos-Timestamp": "9" * 4000},             # float(int) overflowed (500)
    {"X-Pos-Timestamp": "+" + str(int(time.time()))},
    {"X-Pos-Timestamp": " 1"},
])
def test_malformed_auth_headers_are_refused_as_unauthorised_not_a_crash(over):
    auth = PosAuth({"pos": KEY})
    with pytest.raises(AuthError):
        auth.verify(_headers(**over), "POST", PATH, b"")


def test_a_signed_request_verifies_and_any_change_is_refused():
    auth = PosAuth({"pos": KEY})
    h = _headers()
    assert auth.verify(h, "POST", PATH, b"") == "pos"
    for method, path, body in (("GET", PATH, b""), ("POST", PATH + "?x=1", b""), ("POST", PATH, b"{}")):
        with pytest.raises(AuthError):
            auth.verify(h, method, path, body)
    with pytest.raises(AuthError):
        auth.verify(h, "POST", PATH, b"", now=time.time() + 301)


def test_the_pos_key_file_is_owner_only_and_a_readable_one_is_refused(tmp_path):
    (tmp_path / "pos_systems.tmp").write_text("{}")
    os.chmod(tmp_path / "pos_systems.tmp", 0o644)  # a leftover temp file must not pass its mode on
    add_system(tmp_path, "pos")
    assert systems_file(tmp_path).stat().st_mode & 0o777 == 0o600
    os.chmod(systems_file(tmp_path), 0o644)
    with pytest.raises(ConfigError):
        load_systems(tmp_path)


def test_parallel_wrong_pins_get_no_more_than_five_tries(tmp_path, monkeypatch):
    set_pin(tmp_path, "24681357")
    gate = Gate(tmp_path, ManualClock())
    tried: list[str] = []
    real = technician.check_pin

    def counting(data_dir, pin):  # type: ignore[no-untyped-def]
        tried.append(pin)
        return real(data_dir, pin)

    monkeypatch.setattr(technician, "check_pin", counting)
    n = 16
    barrier = threading.Barrier(n)

    def guess(i: int) -> str | None:
        barrier.wait()
        return gate.login(f"{10000000 + i}")

    with ThreadPoolExecutor(n) as ex:
        assert list(ex.map(guess, range(n))) == [None] * n
    assert len(tried) == technician.MAX_FAILURES
    assert gate.locked_for() > 0 and gate.login("24681357") is None


@pytest.mark.parametrize("raw,masked", [
    ("psn_name=张伟 ok", "psn_name=张* ok"),
    ('{"psn_name": "王建国", "name": "provisioning"}', '{"psn_name": "王**", "name": "provisioning"}'),
    ("old id 370202800101123 end", "old id 370202*****1123 end"),
    ("tel 8613812345678", "tel 86138****5678"),
])
def test_masking_covers_names_old_ids_and_prefixed_phones(raw, masked):
    assert mask_text(raw) == masked


def test_the_screen_answers_loopback_clients_only(tmp_path):
    from kiosk.app.screen import ScreenBus, mount_screen

    bus = ScreenBus()
    bus.publish_frame(np.full((32, 32, 3), 90, np.uint8))
    app = FastAPI()
    mount_screen(app, bus, technician=False)
    c = TestClient(app)  # its client address is "testclient", not loopback
    for path in ("/screen/state", "/screen/camera.jpg", "/screen/events", "/screen/"):
        assert c.get(path).status_code == 403, path
    # the secret does not open the screen to a remote client either
    token = app.state.screen_token
    for path in ("/screen/state", "/screen/camera.jpg", "/screen/events"):
        assert c.get(path, headers={"X-Screen-Token": token}).status_code == 403, path
    assert c.post("/screen/session", headers={"X-Screen-Token": token}).status_code == 403


def test_a_cancel_that_races_the_counter_picking_up_the_order_cancels_it(tmp_path):
    """The cashier's cancel reads 'pending', the counter moves it to 'running' before the cancel
    writes: the cancel must still reach the running session, not answer 'the patient confirmed'."""
    from kiosk.app.session import Deps
    from kiosk.app.store import Store
    from kiosk.app.terminal import Terminal
    from kiosk.storage import open_database

    store = Store(open_database(f"sqlite:///{tmp_path / 'k.db'}"), SystemClock())
    deps = Deps(camera=None, vision=None, centre=None, bank=None, keypad=None, printer=None)  # type: ignore[arg-type]
    term = Terminal(store, deps, SystemClock())
    store.create_order("pos", "A1", {"order_id": "A1", "bill": {"items": []}}, "outpatient")

    class Session:
        def cancel(self, by: str) -> bool:
            store.set_status("pos", "A1", "cancelled", reason="cancelled_by_cashier", expect=("running",))
            return True

    real = store.set_status

    def racing(system, order_id, status, **kw):  # type: ignore[no-untyped-def]
        if status == "cancelled" and kw.get("expect") == ("pending",):  # the counter wins the race
            term._current = ("pos", "A1", Session())  # type: ignore[assignment]
            real(system, order_id, "running", expect=("pending",))
        return real(system, order_id, status, **kw)

    store.set_status = racing  # type: ignore[method-assign]
    assert term.cancel("pos", "A1").status == "cancelled"


def test_status_objects_mask_names_but_keep_check_names():
    from kiosk.app.technician import mask_obj

    assert mask_obj({"psn_name": "张伟", "holder_name": " 欧阳娜娜", "name": "provisioning"}) == {
        "psn_name": "张*", "holder_name": "欧***", "name": "provisioning"}


def test_the_demo_data_dir_is_owner_only(tmp_path):
    from kiosk.app.stack import Stack

    st = Stack(data_dir=tmp_path / "demo")
    st.prepare(fresh=True)
    assert st.data_dir.stat().st_mode & 0o777 == 0o700


def test_the_technician_page_uses_the_terminals_data_dir_not_the_environments(tmp_path):
    """`kiosk serve --data-dir D` / the demo: the PIN, the audit log and the logs are D's."""
    import httpx

    from kiosk.app.runtime import build
    from kiosk.app.session import Deps
    from kiosk.app.technician import TechnicianConfig
    from kiosk.config import Settings
    from kiosk.storage import open_database

    from .screen.server import serve

    data = tmp_path / "terminal"
    set_pin(data, "24681357")
    deps = Deps(camera=None, vision=None, centre=None, bank=None, keypad=None, printer=None)  # type: ignore[arg-type]
    rt = build(open_database(f"sqlite:///{tmp_path / 'k.db'}"), deps, {},
               technician=TechnicianConfig(settings=Settings(data_dir=data)))
    with serve(rt.app) as url:
        page = httpx.get(url + "/technician/").text
        assert "No technician PIN" not in page and "PIN" in page
        r = httpx.post(url + "/technician/login", data={"pin": "24681357"}, follow_redirects=False)
        assert r.status_code == 303 and "kiosk_tech" in r.headers["set-cookie"]
        assert "httponly" in r.headers["set-cookie"].lower() and "samesite=strict" in r.headers["set-cookie"].lower()
