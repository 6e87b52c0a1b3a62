"""The technician page's wrong-PIN lockout survives a restart of the app (it lives in the data dir),
and a lockout file that makes no sense locks the page rather than opening it."""
from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from kiosk.app import technician
from kiosk.app.technician import Gate, TechnicianConfig, mount_technician, set_pin
from kiosk.clock import ManualClock
from kiosk.config import Settings

from .screen.server import serve

PIN = "24681357"
WRONG = "11112222"


def lockout_path(data: Path) -> Path:
    return data / "provision" / "technician-lockout.json"


@contextmanager
def app_on(data: Path, clock: ManualClock) -> Iterator[httpx.Client]:
    """A fresh app process's worth of state (a new router, a new Gate) on the same data dir."""
    app = FastAPI()
    mount_technician(app, config=TechnicianConfig(settings=Settings(data_dir=data), clock=clock,
                                                  bridge_url="http://127.0.0.1:9"))
    with serve(app) as url, httpx.Client(base_url=url, follow_redirects=False) as c:
        yield c


def login(c: httpx.Client, pin: str) -> int:
    return c.post("/technician/login", data={"pin": pin}).status_code


@pytest.fixture
def data(tmp_path: Path) -> Path:
    d = tmp_path / "var"
    set_pin(d, PIN)
    return d


def test_five_wrong_pins_stay_locked_across_a_restart_until_the_time_is_up(data: Path) -> None:
    clock = ManualClock()
    with app_on(data, clock) as c:
        assert [login(c, WRONG) for _ in range(5)] == [401, 401, 401, 401, 429]
    with app_on(data, clock) as c:  # the app restarted (a crash the guesser provoked, a reboot)
        assert login(c, PIN) == 429  # even the right PIN: the lock held
        r = c.get("/technician/api/status", headers={"Authorization": f"Bearer {PIN}"})
        assert r.status_code == 401
        clock.advance(seconds=technician.LOCKOUT_S + 1)
        assert login(c, PIN) == 303
    assert lockout_path(data).stat().st_mode & 0o777 == 0o600


def test_the_count_of_wrong_pins_survives_a_restart_too(data: Path) -> None:
    clock = ManualClock()
    with app_on(data, clock) as c:
        assert [login(c, WRONG) for _ in range(4)] == [401] * 4
    with app_on(data, clock) as c:
        assert login(c, WRONG) == 429  # the fifth wrong PIN, in the new process, locks
        assert login(c, PIN) == 429


def test_a_right_pin_clears_the_count(data: Path) -> None:
    clock = ManualClock()
    g = Gate(data, clock)
    for _ in range(4):
        assert g.login(WRONG) is None
    assert g.login(PIN) is not None
    g2 = Gate(data, clock)
    for _ in range(4):
        assert g2.login(WRONG) is None
    assert g2.locked_for() == 0


@pytest.mark.parametrize("content", [b"{not json", b"[]", b'{"failures": [], "locked_until": "soon"}',
                                     b'{"failures": "x", "locked_until": 0}', b'{"locked_until": 0}',
                                     b'{"failures": [1e400], "locked_until": 0}', b"\xff\xfe", b"[" * 100_000])
def test_a_corrupt_lockout_file_fails_closed(data: Path, content: bytes) -> None:
    clock = ManualClock()
    p = lockout_path(data)
    p.write_bytes(content)
    g = Gate(data, clock)
    assert g.locked_for() > 0
    assert g.login(PIN) is None  # locked, not open
    clock.advance(seconds=technician.LOCKOUT_S + 1)
    assert g.login(PIN) is not None  # the lock ends: the file was rewritten, not left to brick the page
    assert json.loads(p.read_text())["failures"] == []


def test_an_unreadable_lockout_file_fails_closed(data: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root reads any file")
    p = lockout_path(data)
    p.write_text(json.dumps({"failures": [], "locked_until": 0}))
    p.chmod(0)
    try:
        assert Gate(data, ManualClock()).login(PIN) is None
    finally:
        p.chmod(0o600)


def test_a_lockout_path_that_is_not_a_file_fails_closed(data: Path) -> None:
    clock = ManualClock()
    lockout_path(data).mkdir()
    g = Gate(data, clock)
    assert g.login(PIN) is None
    clock.advance(seconds=technician.LOCKOUT_S + 1)
    assert g.login(PIN) is None  # still nothing to trust: stays locked until a technician fixes the file


def test_a_clock_set_back_does_not_stretch_the_lock(data: Path) -> None:
    clock = ManualClock()
    g = Gate(data, clock)
    for _ in range(5):
        g.login(WRONG)
    assert 0 < g.locked_for() <= technician.LOCKOUT_S
    clock.advance(days=-30)
    assert 0 < g.locked_for() <= technician.LOCKOUT_S  # still locked, for at most the lockout
    clock.advance(seconds=technician.LOCKOUT_S + 1)
    assert g.login(PIN) is not None
