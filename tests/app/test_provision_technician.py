"""The technician page over real HTTP: PIN login and lockout, health/versions/errors/frames, the log bundle."""
from __future__ import annotations

import io
import json
import logging
import zipfile
from datetime import timedelta

import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from kiosk.app.technician import TechnicianConfig, mask_text, mount_technician, set_pin
from kiosk.clock import ManualClock
from kiosk.config import Settings
from kiosk.security.keystore import KeyStore

from .screen.server import serve

PIN = "24681357"
ID = "37020219800101123X"


@pytest.fixture(scope="module")
def bridge_url():
    from firmware_bridge.access import TOKEN_HEADER
    from firmware_bridge.bridge import Bridge
    from firmware_bridge.service import create_app
    from firmware_bridge.session import Link
    from firmware_bridge.sim import Simulator

    sim = Simulator().start()
    link = Link(sim.url).start()
    try:
        app = create_app(Bridge(link), sim=sim)
        with serve(app) as url:
            httpx.post(url + "/v1/led", json={"color": "green"}, headers={TOKEN_HEADER: app.state.token},
                       timeout=5)  # some traffic for the frame log
            yield url, app.state.token
    finally:
        link.stop()
        sim.close()


@pytest.fixture
def site(tmp_path, shared_dir, bridge_url):
    from firmware_bridge.access import write_token_file

    bridge_url, token = bridge_url
    data = tmp_path / "var"
    write_token_file(data / "bridge" / "token", token)  # what the bridge writes where the kiosk app reads it
    KeyStore.init(data / "keys")
    set_pin(data, PIN)
    (data / "logs").mkdir(parents=True)
    (data / "logs" / "app.log").write_text(
        f"2026-11-23 activation for {ID} phone 13812345678 ok\napp_secret=deadbeefcafe\nfine line\n")
    import cv2

    ok, jpg = cv2.imencode(".jpg", np.full((64, 64, 3), 128, np.uint8))
    (data / "logs" / "camera.log").write_bytes(jpg.tobytes())  # a frame where a log should be
    (data / "keys" / "x.log").write_text("secret stuff")
    clock = ManualClock()
    cfg = TechnicianConfig(settings=Settings(data_dir=data, model_pack=shared_dir / "models"),
                           bridge_url=bridge_url, clock=clock)
    app = FastAPI()
    mount_technician(app, config=cfg)
    with serve(app) as url:
        yield url, clock, data, app


def test_health_endpoint_is_open_and_says_nothing_else(site):
    url, *_ = site
    r = httpx.get(url + "/technician/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok"}


def test_everything_else_needs_the_pin_and_five_wrong_pins_lock_the_page(site):
    url, clock, *_ = site
    with httpx.Client(base_url=url, follow_redirects=False) as c:
        assert "PIN" in c.get("/technician/").text
        assert c.get("/technician/api/status").status_code == 401
        assert c.get("/technician/bundle.zip").status_code == 401
        for i in range(4):
            assert c.post("/technician/login", data={"pin": "00000000"}).status_code == 401
        r = c.post("/technician/login", data={"pin": "11111111"})
        assert r.status_code == 429 and "Locked" in r.text
        assert c.post("/technician/login", data={"pin": PIN}).status_code == 429  # even the right PIN, for now
        assert c.get("/technician/api/status", headers={"Authorization": f"Bearer {PIN}"}).status_code == 401
        clock.advance(seconds=301)
        r = c.post("/technician/login", data={"pin": PIN})
        assert r.status_code == 303
        cookie = r.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
        page = c.get("/technician/")
        assert page.status_code == 200 and "Health" in page.text and "Bridge: last raw frames" in page.text
        assert "no-store" in page.headers["cache-control"]
        # every wrong PIN and the login are in the audit chain
        from kiosk.security.audit import verify_log

        _, _, data, _ = site
        recs = [json.loads(line) for line in (data / "audit.log").read_text().splitlines()]
        assert [r["event"] for r in recs].count("login_failed") == 5
        assert recs[-1]["event"] == "admin_action" and recs[-1]["data"]["action"] == "technician_login"
        assert verify_log(data / "audit.log", KeyStore.open(data / "keys").audit_key()).ok
        # the session expires
        clock.advance(minutes=16)
        assert "PIN" in c.get("/technician/").text and "Health" not in c.get("/technician/").text


def test_status_reports_health_versions_errors_and_frames(site):
    url, *_ = site
    logging.getLogger("kiosk.test").error("centre refused activation of %s", ID)
    r = httpx.get(url + "/technician/api/status", headers={"Authorization": f"Bearer {PIN}"}, timeout=30)
    assert r.status_code == 200
    st = r.json()
    health = {h["name"]: h for h in st["health"]}
    assert health["keys"]["ok"] and health["keys"]["detail"].startswith("device KIOSK-")
    assert health["model_pack"]["ok"] and "verified (sha256)" in health["model_pack"]["detail"]
    assert health["bridge"]["ok"] and "connected" in health["bridge"]["detail"]
    assert not health["provisioning"]["ok"] and not health["centre"]["ok"]
    assert st["versions"]["software"]["numpy"] and st["versions"]["firmware"]["firmware"]
    assert any(k.startswith("recognizer") for k in st["versions"]["models"])
    assert any("370202********123X" in e["message"] for e in st["last_errors"])
    assert ID not in r.text
    frames = [f for f in st["bridge_frames"] if "hex" in f]
    assert frames and all(len(f["hex"].split("…")[0].split()) <= 16 for f in frames)


def test_a_bridge_that_refuses_the_apps_token_is_unhealthy(site):
    """The bridge answers its open status, but the app could not use the keypad: the page must say so."""
    from firmware_bridge.access import new_token, write_token_file

    url, _, data, _ = site
    write_token_file(data / "bridge" / "token", new_token())  # a stale or foreign secret
    r = httpx.get(url + "/technician/api/status", headers={"Authorization": f"Bearer {PIN}"}, timeout=30)
    health = {h["name"]: h for h in r.json()["health"]}
    assert not health["bridge"]["ok"] and "token" in health["bridge"]["detail"]


def test_the_log_bundle_is_masked_and_holds_no_images_or_keys(site):
    url, clock, data, _ = site
    r = httpx.get(url + "/technician/bundle.zip", headers={"Authorization": f"Bearer {PIN}"}, timeout=30)
    assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
    assert "attachment" in r.headers["content-disposition"]
    z = zipfile.ZipFile(io.BytesIO(r.content))
    names = set(z.namelist())
    assert {"status.json", "settings.json", "MANIFEST.json", "logs/logs/app.log"} <= names
    assert not any(n.startswith("logs/keys/") or "camera.log" in n for n in names)
    blob = b"".join(z.read(n) for n in names)
    assert ID.encode() not in blob and b"13812345678" not in blob and b"deadbeefcafe" not in blob
    assert b"\xff\xd8\xff" not in blob
    log = z.read("logs/logs/app.log").decode()
    assert "370202********123X" in log and "138****5678" in log and "fine line" in log
    man = json.loads(z.read("MANIFEST.json"))
    assert any("camera.log (binary" in s for s in man["skipped"])
    assert PIN.encode() not in blob and b"scrypt" not in blob
    last = json.loads((data / "audit.log").read_text().splitlines()[-1])
    assert last["data"] == {"action": "log_bundle_export", "bytes": len(r.content)}
    # nothing was written to disk for it
    assert not list(data.rglob("*.zip"))


def test_only_loopback_clients_are_served(site):
    *_, app = site
    c = TestClient(app)  # its client address is "testclient", not loopback
    assert c.get("/technician/").status_code == 403
    assert c.get("/technician/api/status", headers={"Authorization": f"Bearer {PIN}"}).status_code == 403


@pytest.mark.parametrize("raw,masked", [
    (ID, "370202********123X"), ("110105194912310021", "110105********0021"),
    ("call 15900001111 now", "call 159****1111 now"), ("postgresql://kiosk:s3cret@db/kiosk", "postgresql://kiosk:***@db/kiosk"),
    ('"app_secret": "abc123"', '"app_secret": "***"'), ("amount 12.30 order 20261123000001", "amount 12.30 order 20261123000001"),
])
def test_masking(raw, masked):
    assert mask_text(raw) == masked
