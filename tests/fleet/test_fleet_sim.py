"""A simulated fleet against the real service under uvicorn on loopback: a few hundred terminals
(the real FleetAgent, real Ed25519 keys, signed beats over HTTP), a ManualClock shared with the
service. Shows every alert rule raised and cleared, a bad signature refused, and a rollout that
halts itself when its cohort's reject rate jumps, then rolls back."""
from __future__ import annotations

import base64
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from kiosk.fleet import artifacts as art
from kiosk.security.replay import RequestSigner

from .conftest import Fleet
from .test_rollout import make_pack

N = 200
RULES = ("offline", "paper_out", "bridge_disconnected", "liveness_rejects_high", "recovery_backlog", "dayend_mismatch")


@pytest.fixture(params=["sqlite"])
def db(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    from kiosk.storage.testing import scratch_database

    monkeypatch.setenv("KIOSK_SQLITE_SYNCHRONOUS", "NORMAL")
    with scratch_database("sqlite") as d:
        yield d


def test_simulated_fleet(fleet: Fleet, tmp_path: Path) -> None:
    agents = [fleet.terminal(f"SIM-{i:05d}", institution=f"H3702020{i % 12:04d}", district=f"3702{i % 4:02d}",
                             state_dir=tmp_path / f"t{i}") for i in range(N)]
    pool = ThreadPoolExecutor(6)

    def round_(who=None, bad=(), sessions=10, rejects=1, bad_rejects=5):  # type: ignore[no-untyped-def]
        def one(a):  # type: ignore[no-untyped-def]
            r = bad_rejects if a in bad else rejects
            if sessions:
                a.counts.session("paid", n=sessions - r)
                a.counts.session("failed", "spoof_suspected", n=r)
            return a.beat()
        answers = list(pool.map(one, who if who is not None else agents))
        assert all(x is not None for x in answers)

    # --- alerts: one terminal per rule goes wrong
    paper, bridge, silent, rej, backlog, dayend = agents[:6]
    paper.status.periph["paper"] = "out"
    bridge.status.periph["bridge"] = "disconnected"
    backlog.status.unresolved = 5
    dayend.status.dayend = {"day": "2026-12-03", "result": "failed"}
    round_(bad=(rej,), bad_rejects=8)
    fleet.clock.advance(minutes=6)  # `silent` says nothing from now on (offline after 5 minutes)
    round_([a for a in agents if a is not silent], bad=(rej,), bad_rejects=8)
    r = fleet.admin("POST", "/admin/evaluate").json()
    assert r["raised"] == 6, r
    opened = {(a["rule"], a["terminal_id"]) for a in fleet.admin("GET", "/admin/alerts").json()}
    assert opened == {("paper_out", paper.terminal_id), ("bridge_disconnected", bridge.terminal_id),
                      ("offline", silent.terminal_id), ("liveness_rejects_high", rej.terminal_id),
                      ("recovery_backlog", backlog.terminal_id), ("dayend_mismatch", dayend.terminal_id)}

    # --- a heartbeat with a bad signature is refused, and so is one from a stranger
    body, _, _ = paper.build()
    forged = RequestSigner(agents[7].key, device_id=paper.terminal_id, key_id="v0001-test",  # type: ignore[attr-defined]
                           clock=fleet.clock).headers("POST", "/v1/heartbeat", body)
    assert fleet.client.post("/v1/heartbeat", content=body, headers=forged).status_code == 401

    # --- everything mended: every alert clears
    paper.status.periph["paper"] = "ok"
    bridge.status.periph["bridge"] = "connected"
    backlog.status.unresolved = 0
    dayend.status.dayend = {"day": "2026-12-04", "result": "ok"}
    fleet.clock.advance(minutes=61)
    round_()
    r = fleet.admin("POST", "/admin/evaluate").json()
    assert r["cleared"] == 6 and fleet.admin("GET", "/admin/alerts").json() == []
    for rule in RULES:
        assert fleet.notifier.of(rule) == ["raised", "cleared"], rule

    # --- a rollout whose 10% cohort starts rejecting live people halts itself and rolls back
    blob = make_pack(tmp_path, "v2")
    s = art.sign_artifact(fleet.operator_key, "model_pack", "2026.12.2", blob)
    assert fleet.admin("POST", "/admin/artifacts", json={
        "kind": "model_pack", "version": s.version, "sha256": s.sha256, "signature": s.signature,
        "blob_b64": base64.b64encode(blob).decode()}).status_code == 200
    ro = fleet.admin("POST", "/admin/rollouts", json={"artifact_sha256": s.sha256, "kind": "model_pack"}).json()
    round_()
    first = [a for a in agents if a.installed["model_pack"].current == s.sha256]
    assert 1 <= len(first) <= N // 20
    assert fleet.admin("POST", f"/admin/rollouts/{ro['id']}/advance").json()["percent"] == 10
    fleet.svc._live = (0.0, [])
    round_()
    cohort = [a for a in agents if a.installed["model_pack"].current == s.sha256]
    assert len(first) < len(cohort) < N // 4
    fleet.clock.advance(minutes=1)
    round_(bad=cohort, rejects=1, bad_rejects=5)  # 50% of sessions rejected in the cohort, 10% elsewhere
    fleet.admin("POST", "/admin/evaluate")
    ro = fleet.admin("GET", f"/admin/rollouts/{ro['id']}").json()
    assert ro["status"] == "halted" and "liveness_reject_rate" in ro["reason"]
    assert fleet.notifier.of("rollout_halted") == ["raised"]
    fleet.svc._live = (0.0, [])
    round_()  # told to roll back; reported at once
    assert all(a.installed["model_pack"].current == "" for a in cohort)
    fleet.admin("POST", "/admin/evaluate")
    ro = fleet.admin("GET", f"/admin/rollouts/{ro['id']}").json()
    assert ro["status"] == "rolled_back" and ro["terminals"] == {"rolled_back": len(cohort)}
    # the next rollout of a model pack may start now
    assert fleet.admin("POST", "/admin/rollouts", json={"artifact_sha256": s.sha256,
                                                        "kind": "model_pack"}).status_code == 200
    pool.shutdown()
