"""The screen's HTTP endpoints over a real socket (uvicorn), read with httpx."""
from __future__ import annotations

import json
import threading
import time

import cv2
import httpx
import numpy as np

from kiosk.app.screen import ScreenState
from kiosk.app.screen.access import TOKEN_HEADER
from kiosk.app.screen.samples import samples


def _read_events(resp: httpx.Response, n: int, out: list[tuple[float, dict]]) -> None:
    data = None
    for line in resp.iter_lines():
        if line.startswith("data: "):
            data = json.loads(line[6:])
        elif line == "" and data is not None:
            out.append((time.perf_counter(), data))
            data = None
            if len(out) >= n:
                return


def test_page_strings_and_state_are_served(screen):
    url, bus, token = screen
    with httpx.Client(base_url=url, timeout=5, headers={TOKEN_HEADER: token}) as c:
        page = c.get("/screen/")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        assert 'lang="zh-CN"' in page.text and "static/screen.js" in page.text
        assert page.headers["cache-control"].startswith("no-store")
        assert c.get("/screen/static/screen.css").status_code == 200
        strings = c.get("/screen/strings").json()
        assert strings["reasons"]["multiple_faces"]["en"] == "Only one person, please"
        bus.publish(samples()["confirm"])
        st = c.get("/screen/state").json()
        assert st["phase"] == "confirm" and st["amounts"]["credit_draw"] == "7.00"
        assert c.get("/screen", follow_redirects=False).status_code in (307, 308)


def test_sse_pushes_every_change_at_once(screen):
    url, bus, token = screen
    got: list[tuple[float, dict]] = []
    sent: dict[int, float] = {}
    with httpx.Client(base_url=url, timeout=10, headers={TOKEN_HEADER: token}) as c, c.stream("GET", "/screen/events") as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        reader = threading.Thread(target=_read_events, args=(resp, 21, got))
        reader.start()
        time.sleep(0.2)  # the first event is the current state
        for i in range(20):
            t = time.perf_counter()
            s = bus.publish(ScreenState(phase="face", camera=True, deadline_s=float(i)))
            sent[s.seq] = t
            time.sleep(0.02)
        reader.join(5)
    assert len(got) == 21
    lat = sorted((t - sent[d["seq"]]) * 1000 for t, d in got[1:])
    assert [d["deadline_s"] for _, d in got[1:]] == [float(i) for i in range(20)]
    assert lat[int(0.95 * len(lat)) - 1] < 100, lat


def test_camera_jpeg_is_made_in_memory_from_the_current_frame(screen, tmp_path, monkeypatch):
    url, bus, token = screen
    monkeypatch.chdir(tmp_path)
    with httpx.Client(base_url=url, timeout=5, headers={TOKEN_HEADER: token}) as c:
        bus.publish(ScreenState(phase="face", camera=True))
        bus.clear_frame()
        assert c.get("/screen/camera.jpg").status_code == 204
        frame = np.zeros((720, 1280, 3), np.uint8)
        frame[:, :640] = (0, 0, 255)  # left half red (BGR)
        bus.publish_frame(frame)
        r = c.get("/screen/camera.jpg")
        assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
        assert r.headers["cache-control"].startswith("no-store")
        img = cv2.imdecode(np.frombuffer(r.content, np.uint8), cv2.IMREAD_COLOR)
        assert img.shape == (360, 640, 3)  # scaled to the preview width
        assert img[180, 100, 2] > 200 and img[180, 540, 2] < 40
        # the MJPEG stream carries the same frame as a multipart part
        with c.stream("GET", "/screen/camera.mjpg") as s:
            assert s.headers["content-type"].startswith("multipart/x-mixed-replace")
            buf = b""
            for chunk in s.iter_bytes():
                buf += chunk
                if buf.count(b"\xff\xd9") >= 1:
                    break
        assert buf.startswith(b"--frame\r\nContent-Type: image/jpeg")
        # leaving the camera phase drops the frame: nothing more to show
        bus.publish(ScreenState(phase="matching"))
        assert c.get("/screen/camera.jpg").status_code == 204
    assert list(tmp_path.iterdir()) == []
