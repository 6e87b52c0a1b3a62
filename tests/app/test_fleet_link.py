"""The kiosk app's fleet agent against the real fleet service (kiosk.app.fleet_link, docs/fleet.md).

One stack: the centre and the bank as their own processes, the bridge on the MCU
simulator, the kiosk app in this process, and the operator's fleet service in this
process on a free port (kiosk.app.demo.DemoFleet), the demo terminal registered
with its key store's Ed25519 key. The agent runs in its thread as `kiosk serve`
runs it; the tests then drive further beats by hand.
"""
from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import time
from dataclasses import replace
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from kiosk.app.demo import DEMO_BILL, DEMO_PATIENT, DemoFleet, scene, seed_bank
from kiosk.app.flow import State
from kiosk.app.stack import Ports, Stack
from kiosk.app.typist import Typist
from kiosk.config import load
from kiosk.fleet import artifacts as art
from kiosk.fleet.agent import FleetAgent, StaticStatus
from kiosk.fleet.models import Publish
from kiosk.security.replay import RequestSigner

from tests.app.conftest import free_port

HAS_BANK = importlib.util.find_spec("kiosk.services.bank.app") is not None
pytestmark = pytest.mark.skipif(not HAS_BANK, reason="the demo payment needs the bank service")
TIMEOUTS = {State.FACE_CAPTURE: 20.0, State.LIVENESS: 8.0, State.CONFIRM: 8.0, State.ID_ENTRY: 10.0}


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Any:
    d = tmp_path_factory.mktemp("fleetstack")
    settings = replace(load(), fleet_url="", fleet_operator_pub="", fleet_firmware_install=False)
    st = Stack(data_dir=d, settings=settings,
               ports=Ports(centre=free_port(), bank=free_port(), bridge=free_port(), kiosk=free_port()))
    try:
        st.prepare(fresh=True)
        st.seed_centre()
        st.start_centre()
        st.start_bank()
        st.start_bridge()
        st.register_terminal()
        st.clients()
        seed_bank(st)
        st.fleet_service = DemoFleet(st, job=False)
        st.fleet_service.register(st)
        st.build_kiosk(timeouts=TIMEOUTS)
        st.typist = Typist(st.bridge.sim)
        st.runtime.listeners.append(st.typist.on_snapshot)
        yield st
    finally:
        st.stop()


def wait_for(pred, timeout: float = 20.0) -> Any:  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = pred()
        if got:
            return got
        time.sleep(0.1)
    raise AssertionError("condition not reached in time")


def beats(st: Any) -> list[dict[str, Any]]:
    rows = st.fleet_service.app.state.db.read(lambda tx: tx.fetch_all(
        "SELECT body FROM fleet_heartbeats WHERE terminal_id = ? ORDER BY id", (st.runtime.fleet.agent.terminal_id,)))
    return [json.loads(r[0]) for r in rows]


def pay(st: Any, order_id: str) -> dict[str, Any]:
    p = st.person(DEMO_PATIENT)
    st.typist.clear()
    st.typist.plan("id_entry", f"{p['certno']}<enter>")
    st.typist.plan("confirm", "<enter>")
    st.camera.show(scene(st, DEMO_PATIENT))
    pos = st.pos()
    try:
        assert pos.create({"order_id": order_id, "bill": DEMO_BILL}).status_code == 201
        end = time.monotonic() + 60
        while True:
            got = pos.get(order_id, wait=10).json()
            if got["status"] not in ("pending", "running") or time.monotonic() > end:
                return got
    finally:
        pos.close()
        st.camera.clear()


def test_the_terminal_beats_signed_into_the_fleet_with_versions_and_peripherals_and_no_person(stack):
    st = stack
    link = st.runtime.fleet
    assert link is not None and link.thread is not None and link.thread.is_alive()  # kiosk serve's daemon thread
    tid = link.agent.terminal_id
    row = wait_for(lambda: (t := st.fleet_service.terminal(tid)) and t["last_seen_ms"] and t)  # the first beat
    assert row["institution"] == st.fixmedins and row["state"] == "ok"
    bridge_status = st.bridge.status()
    assert row["mcu_firmware"] == bridge_status["firmware"] and row["mcu_firmware"] != "none"
    from models.loader import MANIFEST_PATH

    assert row["model_pack"] == hashlib.sha256(MANIFEST_PATH.read_bytes()).hexdigest()  # the provisioned pack
    assert row["app_version"]
    assert (row["paper"], row["cover"], row["bridge"]) == ("ok", "closed", "connected")

    # a real payment: the next beat counts it, and nothing of the patient leaves the terminal
    n0 = len(beats(st))
    got = pay(st, "FLEET-0001")
    assert got["status"] == "paid", got
    assert link.agent.beat() is not None
    since = beats(st)[n0:]  # the agent's own thread may have beaten meanwhile
    paid = sum(c["n"] for b in since for c in b["counts"]["sessions"] if c["outcome"] == "paid")
    assert paid == 1
    assert since[-1]["journal"] == {"unresolved": 0, "refunds_pending": 0}
    p = st.person(DEMO_PATIENT)
    raw = json.dumps(beats(st), ensure_ascii=False)
    for secret in (p["psn_no"], p["certno"], p["psn_name"], p["certno"][-6:], got["result"]["setl_id"]):
        assert secret and secret not in raw

    # the counts were reset once accepted: a beat with no session in between counts none
    assert link.agent.beat() is not None
    assert beats(st)[-1]["counts"]["sessions"] == []


def test_a_beat_signed_with_another_key_for_this_terminal_is_refused(stack):
    st = stack
    tid = st.runtime.fleet.agent.terminal_id
    before = len(beats(st))
    forger = FleetAgent(st.fleet_service.url, RequestSigner(Ed25519PrivateKey.generate(), device_id=tid,
                                                            key_id=st._keystore.current_kid),
                        StaticStatus(periph={"paper": "out", "cover": "open", "camera": "ok", "bridge": "connected"}),
                        trust_key=st.fleet_service.operator_key.public_key())
    assert forger.beat() is None
    assert len(beats(st)) == before
    assert st.fleet_service.terminal(tid)["paper"] == "ok"  # the forged state was not stored


def publish(st: Any, kind: str, version: str, blob: bytes) -> dict[str, Any]:
    svc = st.fleet_service.service
    s = art.sign_artifact(st.fleet_service.operator_key, kind, version, blob)
    svc.publish(Publish(kind=kind, version=version, sha256=s.sha256, signature=s.signature,
                        blob_b64=base64.b64encode(blob).decode()), blob)
    return svc.start_rollout(s.sha256, kind) | {"sha256": s.sha256}


def test_a_staged_model_pack_is_applied_only_while_idle_and_used_from_the_next_session(stack):
    from models.loader import MANIFEST_PATH

    st = stack
    link = st.runtime.fleet
    agent, vision = link.agent, st.runtime.terminal.deps.vision
    ro = publish(st, "model_pack", "2026.12-fleet", art.pack_tar(st.settings.model_pack, MANIFEST_PATH))
    old_pipe = vision.pipe

    # a patient is at the counter (a session waits for a face): the update is not touched
    st.camera.clear()
    pos = st.pos()
    try:
        assert pos.create({"order_id": "FLEET-BUSY", "bill": DEMO_BILL}).status_code == 201
        wait_for(lambda: not st.runtime.terminal.idle())
        deferred = agent.deferred
        assert agent.beat() is not None
        assert agent.deferred >= deferred + 1
        assert agent.installed["model_pack"].current == "" and vision.pipe is old_pipe
        assert st.fleet_service.service.rollout(ro["id"])["terminals"].get("applied", 0) == 0
        pos.cancel("FLEET-BUSY")
    finally:
        pos.close()
    wait_for(lambda: st.runtime.terminal.idle())

    # idle: fetched, checked, switched, loaded and in use from the next session; the result reported at once
    assert agent.beat() is not None
    assert agent.installed["model_pack"].current == ro["sha256"]
    assert vision.pipe is not old_pipe and not link.applier.pending
    assert str(link.applier.pack_in_use).endswith(ro["sha256"])
    assert st.fleet_service.service.rollout(ro["id"])["terminals"] == {"applied": 1}
    assert st.fleet_service.terminal(agent.terminal_id)["model_pack"] == ro["sha256"]
    # a restarted app starts on the applied pack
    from kiosk.app.fleet_link import pack_for

    s = pack_for(replace(st.settings, data_dir=st.data_dir))
    assert (s.model_pack / "manifest.json").read_bytes() == MANIFEST_PATH.read_bytes()
    assert s.model_pack.resolve().name == ro["sha256"]
    assert st.kiosk_pipeline().pack.root.resolve().name == ro["sha256"]  # what build_kiosk gives the counter
    # and the counter still pays on it
    assert pay(st, "FLEET-0002")["status"] == "paid"

    # a pack signed by the operator whose models do not load: refused, the working pack stays in use
    st.fleet_service.service.close(ro["id"])
    bad = st.data_dir / "bad-pack"
    (bad / "detection").mkdir(parents=True)
    (bad / "detection" / "yunet.onnx").write_bytes(b"not a model" * 50)
    man = json.loads(MANIFEST_PATH.read_text())
    man["models"] = {"detector": {**man["models"]["detector"], "file": "detection/yunet.onnx",
                                  "sha256": hashlib.sha256(b"not a model" * 50).hexdigest()}} \
        if "detector" in man["models"] else man["models"]
    (bad / "manifest.json").write_text(json.dumps(man))
    pipe_now = vision.pipe
    ro_bad = publish(st, "model_pack", "2026.12-broken", art.pack_tar(bad))
    assert agent.beat() is not None
    assert st.fleet_service.service.rollout(ro_bad["id"])["terminals"] == {"failed": 1}
    assert agent.installed["model_pack"].current == ro["sha256"] and vision.pipe is pipe_now


def test_mcu_firmware_goes_to_the_bridge_only_when_allowed_and_the_mcu_keeps_an_untrusted_image_out(stack):
    from firmware_bridge.firmware import sign_image

    st = stack
    link = st.runtime.fleet
    agent = link.agent
    fw_dir = replace(st.settings, data_dir=st.data_dir).bridge_firmware_path()
    running = st.bridge.status()["firmware"]
    image = sign_image(Ed25519PrivateKey.generate(), (9, 9, 1), b"\x00firmware" * 512).to_bytes()
    ro = publish(st, "mcu_firmware", "9.9.1", image)
    # not allowed on this terminal (the default): reported failed, nothing written for the bridge
    assert agent.beat() is not None
    assert st.fleet_service.service.rollout(ro["id"])["terminals"] == {"failed": 1}
    assert not list(fw_dir.glob("*.kfw"))
    assert agent.installed["mcu_firmware"].current == ""

    # allowed: handed to the bridge by a bare name; the MCU does not trust the signer and keeps its firmware
    st.fleet_service.service.close(ro["id"])
    ro2 = publish(st, "mcu_firmware", "9.9.2", sign_image(Ed25519PrivateKey.generate(), (9, 9, 2),
                                                           b"\x01firmware" * 512).to_bytes())
    link.applier.settings = replace(link.applier.settings, fleet_firmware_install=True)
    try:
        assert agent.beat() is not None
    finally:
        link.applier.settings = replace(link.applier.settings, fleet_firmware_install=False)
    names = [p.name for p in fw_dir.glob("*.kfw")]
    assert len(names) == 1 and names[0].startswith("fleet-")
    assert st.bridge.firmware_job()["state"] == "failed"
    assert st.fleet_service.service.rollout(ro2["id"])["terminals"] == {"failed": 1}
    assert agent.installed["mcu_firmware"].current == ""  # switched back on disk
    wait_for(lambda: st.bridge.status().get("state") == "connected")
    assert st.bridge.status()["firmware"] == running


def test_the_demo_reports_its_day_end_and_shows_the_fleets_view(stack):
    from kiosk.app.demo import fleet_summary

    out = fleet_summary(stack, True)
    assert out["beat_accepted"] and out["state"] == "ok" and out["dayend_result"] == "ok"
    assert out["peripherals"]["bridge"] == "connected" and out["versions"]["mcu_firmware"]
    assert out["url"].endswith("/fleet/")
    json.dumps(out)  # goes into the demo's final JSON line


def test_kiosk_reconcile_leaves_the_day_end_result_for_the_next_beat(stack, monkeypatch, capsys):
    import argparse

    from kiosk.app.cli import _reconcile

    st = stack
    (st.data_dir / "fleet" / "dayend.json").unlink(missing_ok=True)  # the demo's summary wrote one
    monkeypatch.setenv("KIOSK_DATA_DIR", str(st.data_dir))
    monkeypatch.setenv("KIOSK_FLEET_URL", st.fleet_service.url)
    rc = _reconcile(argparse.Namespace(day="today", json=True, save="", data_dir=str(st.data_dir),
                                       centre_port=st.ports.centre, bank_port=st.ports.bank))
    capsys.readouterr()
    want = {0: "ok", 1: "mismatch"}[rc]
    assert json.loads((st.data_dir / "fleet" / "dayend.json").read_text())["result"] == want
    assert st.runtime.fleet.agent.beat() is not None
    assert st.fleet_service.terminal(st.runtime.fleet.agent.terminal_id)["dayend_result"] == want


def test_a_start_after_a_run_that_did_not_stop_counts_a_crash(stack):
    from kiosk.app.fleet_link import start_fleet

    st = stack
    s = replace(st.settings, data_dir=st.data_dir)
    marker = s.fleet_state_path() / "running"
    assert marker.exists()  # the running app's
    link = start_fleet(s, st._keystore, st.runtime.terminal, st.runtime.terminal.deps.vision, st.bridge, run=False)
    try:
        assert link.counts.take()[1]["crashes"] == 1
    finally:
        link.stop()
    assert not marker.exists()
    link = start_fleet(s, st._keystore, st.runtime.terminal, st.runtime.terminal.deps.vision, st.bridge, run=False)
    try:
        assert link.counts.take()[1]["crashes"] == 0  # the last run stopped cleanly
    finally:
        link.stop()
    marker.write_text("restore")  # the module's running app still runs


def test_a_fleet_url_without_the_operator_key_starts_no_agent_and_the_counter_runs(stack):
    st = stack
    running = st.runtime.fleet
    st.runtime.fleet = None
    saved = st.settings
    try:
        st.settings = replace(saved, fleet_operator_pub="")
        assert st.start_fleet_agent() is None and st.runtime.fleet is None
        st.settings = replace(saved, fleet_operator_pub=str(st.data_dir / "missing.pub"))
        assert st.start_fleet_agent() is None and st.runtime.fleet is None
    finally:
        st.settings = saved
        st.runtime.fleet = running


def test_no_fleet_url_means_no_agent(tmp_path):
    st = Stack(data_dir=tmp_path, settings=replace(load(), fleet_url=""))

    class Rt:
        fleet = None
        terminal = None

    st.runtime = Rt()
    assert st.start_fleet_agent() is None and st.runtime.fleet is None
