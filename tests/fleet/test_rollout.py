"""Staged rollout: signed artifacts, cohorts 1% -> 10% -> all, idle-only install, automatic halt + rollback."""
from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest

from firmware_bridge.firmware import sign_image
from kiosk.fleet import artifacts as art
from kiosk.fleet.service import cohort_bucket

from .conftest import Fleet, require_pg


@pytest.fixture(params=["sqlite"])
def db(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """Rollouts run on SQLite here (CPU is scarce); the halt-and-roll-back test also runs on PostgreSQL."""
    from kiosk.storage.testing import scratch_database

    monkeypatch.setenv("KIOSK_SQLITE_SYNCHRONOUS", "NORMAL")
    base = require_pg() if request.param == "postgresql" else None
    with scratch_database(request.param, base) as d:
        yield d


def make_pack(tmp: Path, tag: str) -> bytes:
    root = tmp / f"pack-{tag}"
    root.mkdir()
    files = {"det.onnx": f"detector {tag}".encode() * 50, "live.onnx": f"liveness {tag}".encode() * 40}
    for n, b in files.items():
        (root / n).write_bytes(b)
    manifest = {"models": {n.split(".")[0]: {"file": n, "task": n.split(".")[0], "input_size": [1, 1],
                                             "sha256": hashlib.sha256(b).hexdigest()} for n, b in files.items()},
                "thresholds": {"liveness_live": 0.35}}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return art.pack_tar(root)


def publish(fleet: Fleet, kind: str, version: str, blob: bytes, *, key=None) -> str:  # type: ignore[no-untyped-def]
    s = art.sign_artifact(key or fleet.operator_key, kind, version, blob)
    r = fleet.admin("POST", "/admin/artifacts", json={"kind": kind, "version": version, "sha256": s.sha256,
                                                      "signature": s.signature,
                                                      "blob_b64": base64.b64encode(blob).decode()})
    assert r.status_code == 200, r.text
    return s.sha256


def test_cohort_is_deterministic_and_staged(fleet: Fleet, tmp_path: Path) -> None:
    agents = [fleet.terminal(f"KIOSK-C{i:04d}", state_dir=tmp_path / f"t{i}") for i in range(40)]
    sha = publish(fleet, "model_pack", "2026.12.1", make_pack(tmp_path, "new"))
    ro = fleet.admin("POST", "/admin/rollouts", json={"artifact_sha256": sha, "kind": "model_pack"}).json()
    assert ro["percent"] == 1 and ro["status"] == "active"
    stages = []
    for _ in range(3):
        for a in agents:
            a.beat()
        applied = {a.terminal_id for a in agents if a.installed["model_pack"].current == sha}
        stages.append(applied)
        fleet.svc._live = (0.0, [])
        if len(stages) < 3:
            assert fleet.admin("POST", f"/admin/rollouts/{ro['id']}/advance").status_code == 200
    expect1 = {a.terminal_id for a in agents if cohort_bucket(a.terminal_id) < 1} or {
        min((a.terminal_id for a in agents), key=cohort_bucket)}
    assert stages[0] == expect1
    assert stages[1] == expect1 | {a.terminal_id for a in agents if cohort_bucket(a.terminal_id) < 10}
    assert stages[2] == {a.terminal_id for a in agents}
    assert 1 <= len(stages[0]) < len(stages[1]) < 40
    # each applied terminal reported it, and reports the new pack in its versions
    for a in agents:
        a.beat()
    rows = fleet.svc.rollout(ro["id"])
    assert rows["terminals"] == {"applied": 40}
    assert {t["model_pack"] for t in fleet.svc.terminals()} == {sha}
    # the pack on disk is the checked one; the previous is kept
    a = agents[0]
    cur = a.installed["model_pack"].root / "current"
    assert json.loads((cur / "manifest.json").read_text())["thresholds"]["liveness_live"] == 0.35
    assert fleet.admin("POST", f"/admin/rollouts/{ro['id']}/advance").status_code == 409


def test_install_waits_for_idle(fleet: Fleet, tmp_path: Path) -> None:
    a = fleet.terminal("KIOSK-IDLE1", state_dir=tmp_path / "t")
    sha = publish(fleet, "model_pack", "v2", make_pack(tmp_path, "v2"))
    fleet.admin("POST", "/admin/rollouts", json={"artifact_sha256": sha, "kind": "model_pack"})
    a.status.busy = True  # a payment is running
    a.beat()
    assert a.deferred == 1 and a.installed["model_pack"].current == ""
    a.beat()
    assert a.installed["model_pack"].current == ""
    a.status.busy = False
    a.beat()
    assert a.installed["model_pack"].current == sha


def test_bad_signature_or_altered_bytes_are_never_used(fleet: Fleet, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    rogue = Ed25519PrivateKey.generate()
    blob = make_pack(tmp_path, "rogue")
    s = art.sign_artifact(rogue, "model_pack", "evil", blob)
    body = {"kind": "model_pack", "version": "evil", "sha256": s.sha256, "signature": s.signature,
            "blob_b64": base64.b64encode(blob).decode()}
    # the service checks with the operator key it was given
    assert fleet.admin("POST", "/admin/artifacts", json=body).status_code == 422
    # a service without the key stores it, but the terminal refuses it
    fleet.svc.operator_key = None
    assert fleet.admin("POST", "/admin/artifacts", json=body).status_code == 200
    a = fleet.terminal("KIOSK-SIG01", state_dir=tmp_path / "t")
    fleet.admin("POST", "/admin/rollouts", json={"artifact_sha256": s.sha256, "kind": "model_pack"})
    a.beat()
    assert a.installed["model_pack"].current == ""
    a.beat()  # carries the report
    assert fleet.svc.db.read(lambda tx: tx.fetch_one(
        "SELECT state, reason FROM fleet_rollout_terminals WHERE terminal_id = ?", (a.terminal_id,))) == (
        "failed", "artifact_signature")
    # a pack whose file does not match its own manifest is refused after the signature checked
    with pytest.raises(Exception) as e:
        bad = tmp_path / "bad"
        pack = make_pack(tmp_path, "x")
        art.unpack_pack(pack.replace(b"detector x", b"detector y", 1), bad)
    assert getattr(e.value, "code", "") == "pack_digest"


def test_an_artifact_is_served_only_to_an_offered_terminal(fleet: Fleet, tmp_path: Path) -> None:
    sha = publish(fleet, "model_pack", "v3", make_pack(tmp_path, "v3"))
    a = fleet.terminal("KIOSK-OFR01", state_dir=tmp_path / "a")
    path = f"/v1/artifacts/{sha}"
    assert fleet.client.get(path, headers=a.signer.headers("GET", path, b"")).status_code == 401  # no rollout yet
    assert fleet.client.get(path).status_code == 401  # unsigned
    fleet.admin("POST", "/admin/rollouts", json={"artifact_sha256": sha, "kind": "model_pack"})
    a.beat()
    assert a.installed["model_pack"].current == sha
    b = fleet.terminal("KIOSK-OFR02", state_dir=tmp_path / "b")  # registered after; not in the 1% cohort
    if cohort_bucket(b.terminal_id) >= 1:
        assert fleet.client.get(path, headers=b.signer.headers("GET", path, b"")).status_code == 401


@pytest.mark.parametrize("db", ["sqlite", "postgresql"], indirect=True)
def test_rollout_halts_itself_when_the_cohorts_reject_rate_jumps_and_rolls_back(fleet: Fleet, tmp_path: Path) -> None:
    agents = [fleet.terminal(f"KIOSK-H{i:04d}", state_dir=tmp_path / f"t{i}") for i in range(30)]
    old = publish(fleet, "model_pack", "v1", make_pack(tmp_path, "v1"))
    r1 = fleet.svc.start_rollout(old, "model_pack")
    for stage in range(2):
        for a in agents:
            a.beat()
        fleet.svc._live = (0.0, [])
        fleet.svc.advance(r1["id"])
    for a in agents:
        a.beat()
        a.beat()
    assert all(a.installed["model_pack"].current == old for a in agents)
    fleet.svc.close(r1["id"])
    new = publish(fleet, "model_pack", "v2", make_pack(tmp_path, "v2"))
    r2 = fleet.svc.start_rollout(new, "model_pack")
    fleet.svc.advance(r2["id"])  # 10%
    for a in agents:
        a.beat()
    cohort = [a for a in agents if a.installed["model_pack"].current == new]
    rest = [a for a in agents if a not in cohort]
    assert cohort and rest
    for _ in range(3):
        fleet.clock.advance(minutes=1)
        for a in agents:
            bad = a in cohort
            a.counts.session("paid", n=6 if bad else 9)
            a.counts.session("failed", "spoof_suspected", n=4 if bad else 1)
            a.beat()
    m = fleet.svc.compare(r2["id"], 0)
    assert m["cohort"]["liveness_reject_rate"] == pytest.approx(0.4)
    assert m["rest"]["liveness_reject_rate"] == pytest.approx(0.1)
    fleet.svc.evaluate()
    ro = fleet.svc.rollout(r2["id"])
    assert ro["status"] == "halted" and "liveness_reject_rate" in ro["reason"]
    assert fleet.notifier.of("rollout_halted") == ["raised"]
    with pytest.raises(Exception):
        fleet.svc.advance(r2["id"])
    fleet.svc._live = (0.0, [])
    for a in agents:
        a.beat()  # told to roll back
    assert all(a.installed["model_pack"].current == old for a in agents)
    assert (cohort[0].installed["model_pack"].root / "current").resolve().name == old
    for a in agents:
        a.beat()  # reports reach the service
    fleet.svc.evaluate()
    assert fleet.svc.rollout(r2["id"])["status"] == "rolled_back"
    assert fleet.svc.rollout(r2["id"])["terminals"] == {"rolled_back": len(cohort)}


def test_a_healthy_cohort_is_not_halted_and_few_sessions_prove_nothing(fleet: Fleet, tmp_path: Path) -> None:
    agents = [fleet.terminal(f"KIOSK-N{i:04d}", state_dir=tmp_path / f"t{i}") for i in range(20)]
    sha = publish(fleet, "model_pack", "v2", make_pack(tmp_path, "v2"))
    r = fleet.svc.start_rollout(sha, "model_pack")
    fleet.svc.advance(r["id"])
    for a in agents:
        a.beat()
    cohort = [a for a in agents if a.installed["model_pack"].current == sha]
    fleet.clock.advance(minutes=1)
    for a in agents:
        a.counts.session("failed", "spoof_suspected", n=3 if a in cohort else 0)  # few sessions
        a.counts.session("paid", n=1)
        a.beat()
    fleet.svc.evaluate()
    assert fleet.svc.rollout(r["id"])["status"] == "active"


def test_firmware_rollout_checks_the_kfw_and_crash_bound_halts(fleet: Fleet, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    fw_key = Ed25519PrivateKey.generate()
    flashed: list[str] = []
    agents = [fleet.terminal(f"KIOSK-F{i:04d}", state_dir=tmp_path / f"t{i}") for i in range(10)]
    for a in agents:
        a.firmware_trust = fw_key.public_key()
        a.apply = lambda kind, path: flashed.append(path.name)
    image = sign_image(fw_key, (1, 2, 0), b"\x7fFIRMWARE" * 300).to_bytes()
    sha = publish(fleet, "mcu_firmware", "1.2.0", image)
    r = fleet.svc.start_rollout(sha, "mcu_firmware")
    for a in agents:
        a.beat()
    cohort = [a for a in agents if a.installed["mcu_firmware"].current == sha]
    assert len(cohort) == 1 and flashed == [f"{sha}.kfw"]
    fleet.clock.advance(minutes=1)
    for a in agents:
        if a in cohort:
            a.counts.add("crashes", 3)
        a.beat()
    fleet.svc.evaluate()
    assert fleet.svc.rollout(r["id"])["status"] == "halted"
    assert "crashes" in fleet.svc.rollout(r["id"])["reason"]
