from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI

from kiosk.app.screen import ScreenBus, mount_screen
from kiosk.config import ROOT

from .server import serve

ARTIFACTS = ROOT / "artifacts" / "screens"


def chromium_path() -> str | None:
    p = os.environ.get("KIOSK_CHROMIUM") or ""
    if p and Path(p).is_file():
        return p
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture(scope="session")
def chromium() -> str:
    p = chromium_path()
    if p is None:
        msg = "headless Chromium not found: run `export KIOSK_CHROMIUM=$(./scripts/browser)` (scripts/test does)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return p


@pytest.fixture(scope="module")
def screen() -> Iterator[tuple[str, ScreenBus, str]]:
    """A kiosk-like app with only the screen mounted, served on a free port: (url, bus, its secret)."""
    app, bus = FastAPI(), ScreenBus()
    token = mount_screen(app, bus, technician=False)
    with serve(app, on_stop=bus.close) as url:
        yield url, bus, token


def open_screen(browser, url: str, token: str, start_dir: Path) -> None:  # type: ignore[no-untyped-def]
    """Open the screen as the kiosk browser does: the launcher's start page (file://) with the secret."""
    from kiosk.app.screen.launch import start_page, write_private

    page = write_private(start_dir / "start.html", start_page(url + "/screen/", token))
    browser.goto(page.as_uri())
    # the start page replaces itself with the screen (fragment: the secret)
    browser.wait_for(f"location.origin === {url!r} && document.readyState === 'complete' && !!document.body")


@pytest.fixture(scope="module")
def browser(chromium: str) -> Iterator[object]:
    from .cdp import Browser

    b = Browser(chromium, 1280, 800)
    try:
        yield b
    finally:
        b.close()
