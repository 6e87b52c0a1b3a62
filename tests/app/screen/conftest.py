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
def screen() -> Iterator[tuple[str, ScreenBus]]:
    """A kiosk-like app with only the screen mounted, served on a free port."""
    app, bus = FastAPI(), ScreenBus()
    mount_screen(app, bus, technician=False)
    with serve(app, on_stop=bus.close) as url:
        yield url, bus


@pytest.fixture(scope="module")
def browser(chromium: str) -> Iterator[object]:
    from .cdp import Browser

    b = Browser(chromium, 1280, 800)
    try:
        yield b
    finally:
        b.close()
