"""kiosk.metrics: Prometheus text on /metrics for every process, never a person or a score as a label."""
from __future__ import annotations

import re
from types import SimpleNamespace

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from kiosk import metrics
from kiosk.errors import ConfigError

from .conftest import Fleet


@pytest.fixture(params=["sqlite"])
def db(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    from kiosk.storage.testing import scratch_database

    monkeypatch.setenv("KIOSK_SQLITE_SYNCHRONOUS", "NORMAL")
    with scratch_database("sqlite") as d:
        yield d


def _label_names(text: str) -> set[str]:
    return {m for line in text.splitlines() if not line.startswith("#")
            for m in re.findall(r"([a-zA-Z_]+)=\"", line)}


def test_a_personal_label_is_refused() -> None:
    for bad in ("psn_no", "score", "id_number", "face"):
        with pytest.raises(ConfigError):
            metrics.counter(f"kiosk_test_{bad}_total", "x", (bad,))


def test_fleet_metrics_count_heartbeats_and_states(fleet: Fleet) -> None:
    a = fleet.terminal("KIOSK-M0001")
    a.beat()
    fleet.client.post("/v1/heartbeat", content=b"{}", headers={"Content-Type": "application/json"})
    text = fleet.client.get("/metrics").text
    assert re.search(r'kiosk_fleet_heartbeats_total\{result="accepted"\} [1-9]', text)
    assert re.search(r'kiosk_fleet_heartbeats_total\{result="refused"\} [1-9]', text)
    assert 'kiosk_fleet_terminals{state="ok"}' in text
    assert "kiosk_fleet_heartbeat_seconds_bucket" in text
    assert not _label_names(text) & metrics.FORBIDDEN_LABELS


def test_kiosk_app_hooks_sessions_backlog_and_loopback_only() -> None:
    store = SimpleNamespace(open_orders=lambda: [SimpleNamespace(status="reversing"), SimpleNamespace(status="pending")],
                            running_refunds=lambda: [("pos", "o1", "r1", 100)])
    app = FastAPI()
    metrics.instrument_kiosk_app(app, SimpleNamespace(store=store))
    metrics.observe_session("failed", "spoof_suspected", {"liveness": 850.0, "match": 120.0})
    metrics.observe_session("paid", None, {"settle": 40.0})
    c = TestClient(app)  # client address "testclient": not loopback
    assert c.get("/metrics").status_code == 403
    text = TestClient(app, client=("127.0.0.1", 5000)).get("/metrics").text
    assert 'kiosk_sessions_total{outcome="failed",reason="spoof_suspected"}' in text
    assert "kiosk_liveness_rejects_total" in text
    assert 'kiosk_stage_seconds_bucket{le="1.0",stage="liveness"}' in text
    assert re.search(r"^kiosk_recovery_backlog 1\.0$", text, re.M)
    assert re.search(r"^kiosk_refunds_pending 1\.0$", text, re.M)
    assert not _label_names(text) & metrics.FORBIDDEN_LABELS


def test_service_hook_counts_infcodes() -> None:
    gw = SimpleNamespace(service="centre", handle=lambda raw, infno=None: (200, {"infcode": -1, "err_msg": "x"}))
    app = FastAPI()
    metrics.instrument_service(app, gw)
    assert gw.handle(b"{}", "2207") == (200, {"infcode": -1, "err_msg": "x"})
    text = TestClient(app).get("/metrics").text
    assert 'kiosk_service_requests_total{infcode="-1",infno="2207",service="centre"}' in text


def test_bridge_hook_exposes_link_and_peripherals() -> None:
    bridge = SimpleNamespace(status=lambda: {"state": "disconnected", "peripherals": {"paper_out": True,
                                                                                      "cover_open": False},
                                             "stats": {"reconnects": 3}})
    app = FastAPI()
    metrics.instrument_bridge(app, bridge)
    text = TestClient(app, client=("127.0.0.1", 5000)).get("/metrics").text
    assert 'kiosk_bridge_link_state{state="disconnected"} 1.0' in text
    assert 'kiosk_peripheral_flag{flag="paper_out"} 1.0' in text
    assert 'kiosk_bridge_link_stats{counter="reconnects"} 3.0' in text


def test_dashboard_and_scrape_config_name_real_metrics() -> None:
    import json

    from kiosk.config import ROOT

    dash = json.loads((ROOT / "docs" / "ops" / "dashboard.json").read_text())
    exprs = " ".join(t["expr"] for p in dash["panels"] for t in p["targets"])
    names = {re.sub(r"_(bucket|count|sum)$", "", n) for n in re.findall(r"\bkiosk_[a-z_]+", exprs)}
    source = "".join(p.read_text() for p in (ROOT / "kiosk").rglob("*.py"))
    for n in names:
        base = n[:-len("_total")] if n.endswith("_total") else n
        assert f'"{base}' in source, f"dashboard uses {n}, which no code defines"
    assert "8750" in (ROOT / "docs" / "ops" / "prometheus.yml").read_text()


def test_terminal_status_reads_the_kiosk_and_counts_sessions() -> None:
    from kiosk.errors import DeviceError
    from kiosk.fleet.agent import Counts, TerminalStatus

    busy = {"v": True}
    store = SimpleNamespace(open_orders=lambda: [SimpleNamespace(status="running")], open_refunds=lambda: [])
    term = SimpleNamespace(store=store, idle=lambda: not busy["v"])
    bridge = SimpleNamespace(status=lambda: {"state": "connected", "firmware": "1.2.0",
                                             "peripherals": {"paper_out": True, "cover_open": False}})
    counts = Counts()
    st = TerminalStatus(term, bridge, counts=counts)
    try:
        assert st.peripherals()["paper"] == "out" and st.versions()["mcu_firmware"] == "1.2.0"
        assert st.journal() == {"unresolved": 1, "refunds_pending": 0} and not st.idle()
        busy["v"] = False
        assert st.idle()
        metrics.observe_session("failed", "spoof_suspected", {})
        assert Counts.to_body(counts.take())["liveness_rejects"] == 1

        def down() -> dict:
            raise DeviceError("bridge process not running", code="bridge_down")

        st.bridge = SimpleNamespace(status=down)
        assert st.peripherals()["bridge"] == "disconnected" and st.peripherals()["paper"] == "unknown"
    finally:
        metrics.session_listeners.remove(counts.session)


def test_terminal_idle_hook_is_read_only_and_sees_queued_orders(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from kiosk.app.session import Order
    from kiosk.app.store import Store
    from kiosk.app.terminal import Terminal
    from kiosk.clock import ManualClock
    from kiosk.storage import open_database

    with open_database(f"sqlite:///{tmp_path}/kiosk.db") as db:
        t = Terminal(Store(db, ManualClock()), deps=None, clock=ManualClock(),
                     institution="H37020200001")  # type: ignore[arg-type]
        assert t.idle()
        t.submit("pos", Order("o-1", {}))  # not started: the order waits in the queue
        assert not t.idle() and not t.idle()  # asking changes nothing
