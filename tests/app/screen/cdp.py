"""A small Chrome DevTools Protocol client over --remote-debugging-pipe.

Chromium reads NUL-terminated JSON commands on fd 3 and writes replies and
events on fd 4, so no websocket library is needed. Used by the screen tests to
drive a real headless Chromium: navigate, evaluate, click, screenshot.
"""
from __future__ import annotations

import base64
import fcntl
import json
import os
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-default-apps", "--disable-extensions", "--mute-audio", "--no-default-browser-check",
    "--disable-dev-shm-usage", "--remote-debugging-pipe",
]


class CDPError(RuntimeError):
    pass


class Browser:
    def __init__(self, chromium: str, width: int = 1280, height: int = 800) -> None:
        self._profile = tempfile.TemporaryDirectory(prefix="kiosk-chromium-")
        to_browser_r, self._w = os.pipe()
        self._r, from_browser_w = os.pipe()

        def child() -> None:  # runs in the child before exec: put the pipes on fds 3 and 4
            a = fcntl.fcntl(to_browser_r, fcntl.F_DUPFD, 10)
            b = fcntl.fcntl(from_browser_w, fcntl.F_DUPFD, 10)
            os.dup2(a, 3)  # dup2 makes them inheritable; every other fd of ours is not
            os.dup2(b, 4)

        self.proc = subprocess.Popen(
            [chromium, *FLAGS, f"--user-data-dir={self._profile.name}", f"--window-size={width},{height}",
             "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=child, close_fds=False,
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._id = 0
        self._lock = threading.Lock()
        self._replies: dict[int, dict[str, Any]] = {}
        self._cv = threading.Condition()
        self._dead = False
        threading.Thread(target=self._reader, daemon=True).start()
        self.session = self._attach(width, height)

    # --- transport -----------------------------------------------------------
    def _reader(self) -> None:
        buf = b""
        while True:
            try:
                chunk = os.read(self._r, 1 << 16)
            except OSError:
                chunk = b""
            if not chunk:
                with self._cv:
                    self._dead = True
                    self._cv.notify_all()
                return
            buf += chunk
            while b"\0" in buf:
                msg, buf = buf.split(b"\0", 1)
                m = json.loads(msg)
                if "id" in m:
                    with self._cv:
                        self._replies[m["id"]] = m
                        self._cv.notify_all()

    def send(self, method: str, params: dict[str, Any] | None = None, *, session: str | None = "page",
             timeout: float = 15.0) -> dict[str, Any]:
        with self._lock:
            self._id += 1
            mid = self._id
        msg: dict[str, Any] = {"id": mid, "method": method, "params": params or {}}
        sid = self.session if session == "page" else session
        if sid:
            msg["sessionId"] = sid
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        with self._cv:
            while mid not in self._replies:
                left = deadline - time.monotonic()
                if self._dead or left <= 0:
                    raise CDPError(f"{method}: no reply ({'browser exited' if self._dead else 'timeout'})")
                self._cv.wait(left)
            rep = self._replies.pop(mid)
        if "error" in rep:
            raise CDPError(f"{method}: {rep['error']}")
        return rep.get("result", {})

    def _attach(self, width: int, height: int) -> str:
        self.session = None  # type: ignore[assignment]
        targets = self.send("Target.getTargets", session=None)["targetInfos"]
        pages = [t for t in targets if t["type"] == "page"]
        tid = pages[0]["targetId"] if pages else self.send("Target.createTarget", {"url": "about:blank"},
                                                            session=None)["targetId"]
        sid = self.send("Target.attachToTarget", {"targetId": tid, "flatten": True}, session=None)["sessionId"]
        self.session = sid
        self.send("Page.enable")
        self.send("Runtime.enable")
        self.send("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
        return sid

    # --- page helpers --------------------------------------------------------
    def goto(self, url: str) -> None:
        self.send("Page.navigate", {"url": url})
        self.wait_for("document.readyState === 'complete'")

    def eval(self, expression: str) -> Any:
        r = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in r:
            raise CDPError(f"JS error in {expression!r}: {r['exceptionDetails'].get('text')}"
                           f" {r['exceptionDetails'].get('exception', {}).get('description', '')}")
        return r["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 10.0, interval: float = 0.005) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            v = self.eval(expression)
            if v:
                return v
            if time.monotonic() > deadline:
                raise CDPError(f"timed out waiting for {expression!r}")
            time.sleep(interval)

    def click(self, selector: str) -> None:
        """A real mouse click at the element's centre (not element.click())."""
        box = self.eval(f"(function(){{var r=document.querySelector({json.dumps(selector)}).getBoundingClientRect();"
                        "return [r.x + r.width/2, r.y + r.height/2];})()")
        for kind in ("mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent",
                      {"type": kind, "x": box[0], "y": box[1], "button": "left", "clickCount": 1})

    def screenshot(self, path: Path) -> bytes:
        data = base64.b64decode(self.send("Page.captureScreenshot", {"format": "png"})["data"])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return data

    def text(self) -> str:
        return self.eval("document.body.innerText")

    def html(self) -> str:
        return self.eval("document.documentElement.outerHTML")

    def close(self) -> None:
        try:
            self.send("Browser.close", session=None, timeout=3)
        except CDPError:
            pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
        for fd in (self._w, self._r):
            try:
                os.close(fd)
            except OSError:
                pass
        self._profile.cleanup()
