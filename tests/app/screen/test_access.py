"""A hostile local process against the patient's screen while a session is live.

Loopback is not a boundary: any local process can connect to the kiosk app. Without this start's secret
(none, a wrong one, or the one from the app's previous start) it must not read the state (amounts,
masked ID entry), the events, or the camera preview of the patient's face; every refusal is the same 401.
"""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from dataclasses import dataclass

import httpx
import numpy as np
import pytest
from fastapi import FastAPI

from kiosk.app.screen import KeypadEntry, ScreenBus, ScreenState, mount_screen
from kiosk.app.screen.access import COOKIE, REFUSED, TOKEN_HEADER, read_token_file, session_value, write_token_file
from kiosk.app.screen.launch import RESTART, start_page
from kiosk.app.screen.samples import samples

from .server import serve

DATA = ("/screen/state", "/screen/events", "/screen/camera.jpg", "/screen/camera.mjpg")


@pytest.fixture(scope="module")
def live():
    """This start's app (a session on screen: ID entry with the camera on) and the previous start's secret."""
    previous = mount_screen(FastAPI(), ScreenBus(), technician=False)  # the app before its restart
    app, bus = FastAPI(), ScreenBus()
    token = mount_screen(app, bus, technician=False)
    bus.publish(ScreenState(phase="id_entry", camera=True,
                            keypad=KeypadEntry(masked="3702**********1234", length=18, expected=18)))
    bus.publish_frame(np.full((720, 1280, 3), 120, np.uint8))
    with serve(app, on_stop=bus.close) as url:
        yield url, bus, token, previous


@dataclass
class Got:
    status_code: int
    headers: httpx.Headers
    content: bytes

    def json(self) -> dict:
        return json.loads(self.content)


def _get(url: str, path: str, **kw) -> Got:  # type: ignore[no-untyped-def]
    """GET that also works on the endless streams: reads what arrives within a moment (enough for a refusal)."""
    with httpx.Client(base_url=url, timeout=3) as c, c.stream("GET", path, **kw) as r:
        body = b""
        if r.headers.get("content-type", "").startswith(("text/event-stream", "multipart/")):
            for chunk in r.iter_bytes():
                body += chunk
                if b"\n\n" in body and (b"\xff\xd9" in body or b"event: state" in body):
                    break
        else:
            body = r.read()
        return Got(r.status_code, r.headers, body)


def _attempts(token: str, previous: str) -> dict[str, dict]:
    wrong = "0" * 64
    return {
        "no secret": {},
        "wrong secret": {"headers": {TOKEN_HEADER: wrong}},
        "previous start's secret": {"headers": {TOKEN_HEADER: previous}},
        "previous start's cookie": {"headers": {"Cookie": f"{COOKIE}={session_value(previous)}"}},
        "secret as cookie": {"headers": {"Cookie": f"{COOKIE}={token}"}},  # the cookie is derived, not the secret
        "forged cookie": {"headers": {"Cookie": f"{COOKIE}={session_value(wrong)}"}},
        "secret prefix": {"headers": {TOKEN_HEADER: token[:32]}},
        "secret in the query": {"params": {"k": token}},
    }


@pytest.mark.parametrize("path", DATA)
def test_a_local_process_without_this_starts_secret_reads_nothing(live, path):
    url, bus, token, previous = live
    for what, kw in _attempts(token, previous).items():
        r = _get(url, path, **kw)
        assert r.status_code == 401, (what, path, r.status_code)
        assert r.content == REFUSED, (what, path)  # one answer, nothing about the state
        assert "set-cookie" not in r.headers
        assert b"3702" not in r.content and b"\xff\xd8" not in r.content
    # the session on screen went on untouched
    assert bus.current().phase == "id_entry" and bus.current().keypad.length == 18


def test_the_session_exchange_refuses_the_same_way_and_grants_only_with_the_secret(live):
    url, _, token, previous = live
    with httpx.Client(base_url=url, timeout=3) as c:
        for what, kw in _attempts(token, previous).items():
            if "cookie" in what:
                continue
            r = c.post("/screen/session", **kw)
            assert r.status_code == 401 and r.content == REFUSED and "set-cookie" not in r.headers, what
        ok = c.post("/screen/session", headers={TOKEN_HEADER: token})
        assert ok.status_code == 204
        sc = ok.headers["set-cookie"].lower()
        assert "httponly" in sc and "samesite=strict" in sc and "path=/screen/" in sc
        assert token not in ok.headers["set-cookie"]  # the cookie never carries the secret
        # the cookie alone (as the page's EventSource and <img> send it) now reads the state and the camera
        assert c.get("/screen/state").json()["keypad"]["masked"].startswith("3702")
        assert c.get("/screen/camera.jpg").content[:2] == b"\xff\xd8"


def test_the_holder_reads_state_events_and_camera(live):
    url, bus, token, _ = live
    h = {TOKEN_HEADER: token}
    assert _get(url, "/screen/state", headers=h).status_code == 200
    assert _get(url, "/screen/camera.jpg", headers=h).content[:2] == b"\xff\xd8"
    r = _get(url, "/screen/events", headers=h)
    assert r.status_code == 200 and b"event: state" in r.content
    r = _get(url, "/screen/camera.mjpg", headers=h)
    assert r.status_code == 200 and r.content.startswith(b"--frame")


def test_the_page_itself_carries_no_patient_data_and_stays_open(live):
    url, *_ = live
    with httpx.Client(base_url=url, timeout=3) as c:
        for path in ("/screen/", "/screen/static/screen.js", "/screen/strings"):
            r = c.get(path)
            assert r.status_code == 200, path
            assert "3702" not in r.text


def test_a_page_opened_without_the_secret_shows_no_state(live, browser):
    url, bus, _, previous = live
    browser.goto(url + "/screen/#k=" + previous)  # a stale link from the previous start
    time.sleep(0.8)
    assert browser.eval("window.kiosk.session") is False
    assert browser.eval("document.body.dataset.seq") == "-1"  # the page's initial mark: no state rendered
    assert browser.eval("window.kiosk.history") == [] and "3702" not in browser.html()
    assert browser.eval("document.getElementById('preview').naturalWidth") == 0
    assert "#" not in browser.eval("location.href")


def test_the_token_file_is_private_and_replaced_whole(tmp_path):
    p = write_token_file(tmp_path / "screen" / "token", "a" * 64)
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o600 and read_token_file(p) == "a" * 64
    write_token_file(p, "b" * 64)
    assert read_token_file(p) == "b" * 64 and [x.name for x in p.parent.iterdir()] == ["token"]


def test_the_launcher_keeps_the_secret_off_the_command_line_and_restarts_on_a_new_one(tmp_path):
    tok = tmp_path / "screen-token"
    start = tmp_path / "run" / "start.html"
    marker = tmp_path / "child-args"
    write_token_file(tok, "c" * 64)
    child = [sys.executable, "-c",
             f"import sys,time; open({str(marker)!r},'w').write(' '.join(sys.argv)); time.sleep(60)", "--app=file://" + str(start)]
    proc = subprocess.Popen([sys.executable, "-m", "kiosk.app.screen.launch", "--token-file", str(tok),
                             "--start-file", str(start), "--url", "http://127.0.0.1:8740/screen/", "--", *child])
    try:
        end = time.monotonic() + 20
        while not marker.exists() and time.monotonic() < end:
            time.sleep(0.05)
        assert marker.exists()
        assert "c" * 64 not in marker.read_text()  # the browser's argv (world-readable /proc/pid/cmdline)
        assert stat.S_IMODE(os.stat(start).st_mode) == 0o600
        assert start.read_text() == start_page("http://127.0.0.1:8740/screen/", "c" * 64)
        assert '"http://127.0.0.1:8740/screen/#k=' + "c" * 64 + '"' in start.read_text()
        write_token_file(tok, "d" * 64)  # the kiosk app restarted: the browser's cookie is void
        assert proc.wait(15) == RESTART
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_the_launcher_gives_up_without_a_secret(tmp_path):
    r = subprocess.run([sys.executable, "-m", "kiosk.app.screen.launch", "--token-file", str(tmp_path / "none"),
                        "--start-file", str(tmp_path / "s.html"), "--wait", "0.3", "--", "true"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and not (tmp_path / "s.html").exists()


def test_samples_still_render_through_the_gate_for_the_holder(live):
    url, bus, token, _ = live
    st = bus.publish(samples()["confirm"])
    got = _get(url, "/screen/state", headers={TOKEN_HEADER: token}).json()
    assert got["seq"] == st.seq and got["amounts"]["credit_draw"] == "7.00"
