"""The operator's page in a real headless Chromium: login, terminals grouped by institution and
district with state and open alerts, filters that narrow the list."""
from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from kiosk.config import ROOT
from tests.app.screen.conftest import chromium_path

from .conftest import TOKEN, Fleet

SHOTS = ROOT / "artifacts" / "fleet"


@pytest.fixture(params=["sqlite"])
def db(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    from kiosk.storage.testing import scratch_database

    monkeypatch.setenv("KIOSK_SQLITE_SYNCHRONOUS", "NORMAL")
    with scratch_database("sqlite") as d:
        yield d


@pytest.fixture
def browser() -> Iterator[object]:
    path = chromium_path()
    if path is None:
        import os

        msg = "headless Chromium not found: export KIOSK_CHROMIUM=$(./scripts/browser)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    from tests.app.screen.cdp import Browser

    b = Browser(path, 1280, 900)
    try:
        yield b
    finally:
        b.close()


def _rows(b) -> list[dict]:  # type: ignore[no-untyped-def]
    return b.eval("Array.from(document.querySelectorAll('tr.terminal')).map(r => ({id: r.dataset.id, "
                  "state: r.dataset.state, alerts: Array.from(r.querySelectorAll('li.alert')).map(a => a.dataset.rule)}))")


def test_page_lists_filters_and_needs_login(fleet: Fleet, browser) -> None:  # type: ignore[no-untyped-def]
    b = browser
    a1 = fleet.terminal("KIOSK-PG001", institution="H37020200001", district="370202")
    a2 = fleet.terminal("KIOSK-PG002", institution="H37020200001", district="370202")
    a3 = fleet.terminal("KIOSK-PG003", institution="H37021200009", district="370212")
    fleet.terminal("KIOSK-PG004", institution="H37021200009", district="370212")  # never beats: offline
    a2.status.periph["paper"] = "out"
    for a in (a1, a2, a3):
        a.beat()
    fleet.clock.advance(minutes=6)
    for a in (a1, a2, a3):
        a.beat()
    fleet.svc.evaluate()

    b.goto(fleet.url + "/fleet/")
    b.wait_for("!!document.querySelector('#token')")  # redirected to the login form
    b.eval("document.querySelector('#token').value = 'wrong'")
    b.click("#login")
    b.wait_for("!!document.querySelector('#error')")
    assert "wrong token" in b.text()
    b.eval(f"document.querySelector('#token').value = {json.dumps(TOKEN)}")
    b.click("#login")
    b.wait_for("document.querySelectorAll('tr.terminal').length === 4")
    rows = {r["id"]: r for r in _rows(b)}
    assert rows["KIOSK-PG001"]["state"] == "ok"
    assert rows["KIOSK-PG002"]["state"] == "alerting" and rows["KIOSK-PG002"]["alerts"] == ["paper_out"]
    assert rows["KIOSK-PG004"]["state"] == "offline" and rows["KIOSK-PG004"]["alerts"] == ["offline"]
    groups = b.eval("Array.from(document.querySelectorAll('h2.group')).map(h => h.textContent)")
    assert groups == ["H37020200001 · 370202 (2)", "H37021200009 · 370212 (2)"]
    b.screenshot(SHOTS / "fleet-all.png")

    # filter by state through the form, as an operator would
    b.eval("document.querySelector('#f-state').value = 'alerting'")
    b.click("#apply")
    b.wait_for("location.search.includes('state=alerting') && document.readyState === 'complete'")
    assert [r["id"] for r in _rows(b)] == ["KIOSK-PG002"]
    # by district
    b.goto(fleet.url + "/fleet/?district=370212")
    assert sorted(r["id"] for r in _rows(b)) == ["KIOSK-PG003", "KIOSK-PG004"]
    assert b.eval("document.querySelector('#f-district').value") == "370212"
    # by institution and state offline
    b.goto(fleet.url + "/fleet/?institution=H37021200009&state=offline")
    assert [r["id"] for r in _rows(b)] == ["KIOSK-PG004"]
    b.screenshot(SHOTS / "fleet-filtered.png")
    # nothing matches: a clear sentence, not an empty table
    b.goto(fleet.url + "/fleet/?q=NOPE")
    assert b.eval("!!document.querySelector('#empty')")
    # the cookie opens the page only: an admin action still needs the header
    r = fleet.client.post("/admin/terminals/KIOSK-PG001/revoke", headers={"Cookie": f"fleet_admin={TOKEN}"})
    assert r.status_code == 401


def test_page_escapes_what_terminals_and_operators_typed(fleet: Fleet) -> None:
    from kiosk.fleet.models import Registration

    fleet.svc.register(Registration(terminal_id="KIOSK-ESC01", institution="H1", district="<script>x</script>",
                                    key_id="k1", public_key="11" * 32))
    r = fleet.client.get("/fleet/?q=<b>", headers={"X-Admin-Token": TOKEN})
    assert r.status_code == 200
    assert "<script>x</script>" not in r.text and "&lt;script&gt;" in r.text and "<b>" not in r.text
