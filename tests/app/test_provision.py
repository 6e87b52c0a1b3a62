"""`kiosk provision` against the real centre service (F), the real key store (D), the
shared model pack (C's loader) and the firmware-bridge simulator (E), over HTTP."""
from __future__ import annotations

import io
import json
import shutil
import stat
from dataclasses import replace
from pathlib import Path

import pytest

from kiosk.app.provision import Options, register_provision, run_provision
from kiosk.app.technician import check_pin
from kiosk.config import Settings
from kiosk.errors import InputError

from .screen.server import serve

FACE = "data/faces/misc/examples_knn_examples_test_obama1.jpg"


@pytest.fixture(scope="module", autouse=True)
def operator_token():
    """One operator token for both services, as a region would configure it."""
    mp = pytest.MonkeyPatch()
    mp.setenv("KIOSK_SERVICES_ADMIN_TOKEN", "operator-token-for-tests")
    yield
    mp.undo()


@pytest.fixture(scope="module")
def centre(tmp_path_factory, operator_token):
    from kiosk.services.centre.app import create_app

    d = tmp_path_factory.mktemp("centre")
    app = create_app(f"sqlite:///{d / 'centre.db'}", data_dir=d)
    from kiosk.services.http import admin_token

    with serve(app) as url:
        yield url, admin_token(d)


@pytest.fixture(scope="module")
def bank(tmp_path_factory, operator_token):
    """The bank service when it is built (F); None means this run registers with the centre only."""
    try:
        from kiosk.services.bank.app import create_app
    except ImportError:
        yield None
        return
    d = tmp_path_factory.mktemp("bank")
    from kiosk.services.http import admin_token

    app = create_app(f"sqlite:///{d / 'bank.db'}", data_dir=d)
    with serve(app) as url:
        yield url, admin_token(d)


@pytest.fixture(scope="module")
def bridge(tmp_path_factory):
    from firmware_bridge.access import write_token_file
    from firmware_bridge.bridge import Bridge
    from firmware_bridge.service import create_app
    from firmware_bridge.session import Link
    from firmware_bridge.sim import Simulator

    sim = Simulator().start()
    link = Link(sim.url).start()
    try:
        app = create_app(Bridge(link), sim=sim)
        token_file = write_token_file(tmp_path_factory.mktemp("bridge-run") / "token", app.state.token)
        with serve(app) as url:
            yield url, sim, str(token_file)
    finally:
        link.stop()
        sim.close()


@pytest.fixture
def pack_copy(shared_dir, tmp_path):
    """A model pack source the test may damage: symlinks to the shared files, one file copied."""
    src = tmp_path / "pack-src"
    for p in (shared_dir / "models").rglob("*.onnx"):
        dst = src / p.relative_to(shared_dir / "models")
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.symlink_to(p)
    return src


@pytest.fixture
def services(centre, bank):
    return {"centre_url": centre[0], "admin_token": centre[1], "bank_url": bank[0] if bank else None,
            "no_bank": bank is None}


def opts(services, bridge, shared_dir, **kw) -> Options:
    base = dict(**services, fixmedins_code="P37020200001", region="370200",
                profile="qingdao-employee-outpatient", model_source=str(shared_dir / "models"),
                camera=str(shared_dir / FACE), bridge_url=bridge[0], bridge_token_file=bridge[2])
    base.update(kw)
    return Options(**base)


def settings_for(tmp_path: Path, shared_dir: Path) -> Settings:
    return Settings(data_dir=tmp_path / "var", model_pack=shared_dir / "models")


def test_first_run_does_every_step_and_a_rerun_changes_nothing(services, centre, bridge, shared_dir, tmp_path):
    s = settings_for(tmp_path, shared_dir)
    out = io.StringIO()
    st = run_provision(opts(services, bridge, shared_dir), settings=s, out=out)
    text = out.getvalue()
    assert [v["status"] for v in st["steps"].values()] == ["ok"] * 7, text
    for i, name in enumerate(["settings", "keys", "register", "models", "camera", "peripherals", "technician"], 1):
        assert f"[{i}/7] {name}" in text
    keys = tmp_path / "var" / "keys"
    assert stat.S_IMODE(keys.stat().st_mode) == 0o700
    assert st["device_id"].startswith("KIOSK-")
    assert "1 face(s) in view" in st["steps"]["camera"]["summary"]
    assert st["steps"]["models"]["detail"]["kept"] == [] and len(st["steps"]["models"]["detail"]["copied"]) >= 5
    assert st["steps"]["peripherals"]["detail"]["firmware"]
    creds = json.loads((tmp_path / "var" / "provision" / "centre.json").read_text())
    assert creds["app_id"] == st["device_id"] and len(creds["app_secret"]) >= 16
    assert stat.S_IMODE((tmp_path / "var" / "provision" / "centre.json").stat().st_mode) == 0o600
    registered = st["steps"]["register"]["detail"]["services"]
    assert registered["centre"]["status"] == "ok"
    assert ("bank" in registered) == (not services["no_bank"])
    assert (tmp_path / "var" / "provision" / "bank.json").exists() == (not services["no_bank"])
    pin = text.split("technician PIN: ")[1].split()[0]
    assert check_pin(tmp_path / "var", pin)
    # the run is in the device's audit chain, which still verifies
    from kiosk.security.audit import verify_log
    from kiosk.security.keystore import KeyStore

    audit_key = KeyStore.open(keys).audit_key()
    assert verify_log(tmp_path / "var" / "audit.log", audit_key).ok
    last = json.loads((tmp_path / "var" / "audit.log").read_text().splitlines()[-1])
    assert last["event"] == "admin_action" and last["data"]["action"] == "provision"
    assert set(last["data"]["steps"].values()) == {"ok"}
    # nothing secret in the state file
    raw = (tmp_path / "var" / "provision" / "state.json").read_text()
    assert creds["app_secret"] not in raw and pin not in raw
    # the kiosk process reads back exactly what provisioning registered
    from kiosk.app.stack import Stack

    ident = Stack(data_dir=tmp_path / "var", fixmedins="P00000000000").load_identity()
    assert ident["fixmedins_code"] == "P37020200001"
    assert ident["app_id"] == st["device_id"]
    assert ident["services"]["centre"]["app_secret"] == creds["app_secret"]
    assert ("bank" in ident["services"]) == (not services["no_bank"])

    out2 = io.StringIO()
    st2 = run_provision(Options(admin_token=centre[1]), settings=s, out=out2)  # everything remembered
    text2 = out2.getvalue()
    assert all(v["status"] == "ok" for v in st2["steps"].values()), text2
    assert st2["device_id"] == st["device_id"]
    assert "already registered" in text2 and "technician PIN:" not in text2
    assert st2["steps"]["models"]["detail"]["copied"] == []
    assert json.loads((tmp_path / "var" / "provision" / "centre.json").read_text()) == creds
    assert check_pin(tmp_path / "var", pin)


def test_an_altered_model_file_is_refused_by_name(services, centre, bridge, shared_dir, tmp_path, pack_copy):
    victim = next(pack_copy.rglob("mobilefacenet.onnx"))
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.unlink()
    victim.write_bytes(bytes(data))
    out = io.StringIO()
    st = run_provision(opts(services, bridge, shared_dir, model_source=str(pack_copy)),
                       settings=settings_for(tmp_path, shared_dir), out=out)
    m = st["steps"]["models"]
    assert m["status"] == "failed" and "recognition/mobilefacenet.onnx" in m["summary"] and "refused" in m["summary"]
    assert not (tmp_path / "var" / "models" / "recognition" / "mobilefacenet.onnx").exists()
    assert "not finished: models" in out.getvalue()
    assert st["steps"]["register"]["status"] == "ok"  # independent steps still ran


def test_a_licensed_pack_without_the_dev_only_scrfd_installs(services, centre, bridge, shared_dir, tmp_path,
                                                              pack_copy):
    # det_500m is non-commercial (manifest dev_only): a production pack leaves it out, provisioning still passes
    next(pack_copy.rglob("det_500m.onnx")).unlink()
    st = run_provision(opts(services, bridge, shared_dir, model_source=str(pack_copy)),
                       settings=settings_for(tmp_path, shared_dir), out=io.StringIO())
    m = st["steps"]["models"]
    assert m["status"] == "ok", m["summary"]
    assert "detection/det_500m.onnx" not in m["detail"]["copied"]
    assert not (tmp_path / "var" / "models" / "detection" / "det_500m.onnx").exists()


def test_failures_name_what_to_fix_and_a_rerun_completes(services, centre, bridge, shared_dir, tmp_path):
    from .screen.server import free_port

    s = settings_for(tmp_path, shared_dir)
    dead = f"http://127.0.0.1:{free_port()}"
    out = io.StringIO()
    st = run_provision(opts(services, bridge, shared_dir, bridge_url=dead, admin_token="wrong"), settings=s, out=out)
    assert st["steps"]["peripherals"]["status"] == "failed" and "not running" in st["steps"]["peripherals"]["summary"]
    assert st["steps"]["register"]["status"] == "failed" and "operator token" in st["steps"]["register"]["summary"]
    # paper out is caught by the self-test step
    bridge[1].run_command("paper out")
    try:
        st = run_provision(Options(admin_token=centre[1], bridge_url=bridge[0], bridge_token_file=bridge[2], only=("register", "peripherals")),
                           settings=s, out=out)
        assert st["steps"]["register"]["status"] == "ok"
        assert st["steps"]["peripherals"]["status"] == "failed" and "paper" in st["steps"]["peripherals"]["summary"]
    finally:
        bridge[1].run_command("paper in")
    st = run_provision(Options(only=("peripherals",)), settings=s, out=out)
    assert all(v["status"] == "ok" for v in st["steps"].values()), out.getvalue()


def test_bad_input_names_the_field(services, centre, bridge, shared_dir, tmp_path):
    s = settings_for(tmp_path, shared_dir)
    with pytest.raises(InputError) as e:
        run_provision(opts(services, bridge, shared_dir, region="37"), settings=s, out=io.StringIO())
    assert e.value.field == "region"
    with pytest.raises(InputError) as e:
        run_provision(opts(services, bridge, shared_dir, profile="atlantis"), settings=s, out=io.StringIO())
    assert e.value.field == "profile" and "qingdao-employee-outpatient" in str(e.value)


def test_a_blank_camera_fails_the_camera_step(services, centre, bridge, shared_dir, tmp_path):
    import cv2
    import numpy as np

    blank = tmp_path / "blank"
    blank.mkdir()
    cv2.imwrite(str(blank / "f.png"), np.zeros((480, 640, 3), np.uint8))
    st = run_provision(opts(services, bridge, shared_dir, camera=str(blank), only=("camera",)),
                       settings=settings_for(tmp_path, shared_dir), out=io.StringIO())
    assert st["steps"]["camera"]["status"] == "failed" and "blank" in st["steps"]["camera"]["summary"]


def test_the_cli_registers_and_parses():
    import argparse

    ap = argparse.ArgumentParser()
    register_provision(ap.add_subparsers())
    a = ap.parse_args(["provision", "--region", "370200", "--redo", "register", "--json"])
    assert a.region == "370200" and a.redo == ["register"] and a.json and callable(a.func)
    with pytest.raises(SystemExit):
        ap.parse_args(["provision", "--redo", "nope"])


def test_without_an_operator_token_register_fails_and_the_rest_still_runs(services, centre, bridge, shared_dir,
                                                                          tmp_path, monkeypatch):
    monkeypatch.delenv("KIOSK_CENTRE_ADMIN_TOKEN", raising=False)
    out = io.StringIO()
    st = run_provision(opts({**services, "admin_token": None}, bridge, shared_dir, skip=("models", "camera")),
                       settings=settings_for(tmp_path, shared_dir), out=out)
    reg = st["steps"]["register"]
    assert reg["status"] == "failed" and "--admin-token" in reg["summary"]
    assert st["steps"]["peripherals"]["status"] == "ok" and st["steps"]["technician"]["status"] == "ok"
    assert "[4/7] models       -- not run this time" in out.getvalue()


def test_camera_step_records_the_technicians_live_score_summary(services, centre, bridge, shared_dir, tmp_path):
    # a live face in front of the camera (issue 15): summary statistics only, compared with calibration
    live = shared_dir / "data" / "liveness" / "silentface-samples" / "image_T1.jpg"
    out = io.StringIO()
    st = run_provision(opts(services, bridge, shared_dir, camera=str(live), only=("models", "camera")),
                       settings=settings_for(tmp_path, shared_dir), out=out)
    cam = st["steps"]["camera"]
    assert cam["status"] == "ok" and "within the calibration range" in cam["summary"], cam
    liv = cam["detail"]["liveness"]
    assert set(liv["camera"]) == {"frames", "mean", "p10", "p50", "p90", "below_threshold"}  # no score list
    assert liv["camera"]["frames"] >= 5 and liv["warning"] is False
    assert liv["calibration"]["frames"] > 100  # the manifest's calibration record
    # the console line names no score
    line = next(x for x in out.getvalue().splitlines() if "camera" in x and "liveness" in x)
    assert str(liv["camera"]["p50"]) not in line and str(liv["camera"]["mean"]) not in line
    saved = json.loads((tmp_path / "var" / "provision" / "state.json").read_text())
    assert saved["steps"]["camera"]["detail"]["liveness"]["camera"] == liv["camera"]


def test_a_camera_the_models_were_not_calibrated_for_is_warned_about(services, centre, bridge, shared_dir, tmp_path):
    # what the models see through this camera scores like an attack: far from the calibration live frames
    # (a printed photo stands in for a camera that makes a live face look printed)
    printed = shared_dir / "data" / "liveness" / "nuaa-train" / "spoof" / "0001_0001_00_00_01_116.jpg"
    st = run_provision(opts(services, bridge, shared_dir, camera=str(printed), only=("models", "camera")),
                       settings=settings_for(tmp_path, shared_dir), out=io.StringIO())
    cam = st["steps"]["camera"]
    assert cam["status"] == "ok"  # a warning, not a failed step: the technician decides
    assert cam["detail"]["liveness"]["warning"] is True and "WARNING" in cam["summary"], cam


@pytest.fixture
def fleet_service(tmp_path, monkeypatch):
    """The operator's fleet service (kiosk.fleet) on a free port, with its operator key pair."""
    from kiosk.fleet import artifacts as art
    from kiosk.fleet.app import create_app

    monkeypatch.setenv("KIOSK_FLEET_ADMIN_TOKEN", "fleet-operator-token")
    d = tmp_path / "fleet"
    _priv, pub = art.write_keypair(d / "operator")
    app = create_app(f"sqlite:///{d / 'fleet.db'}", data_dir=d, job=False)
    with serve(app) as url:
        yield url, app.state.service, pub
    app.state.db.close()


def test_the_fleet_step_registers_the_device_key_once_and_serve_finds_the_fleet(services, centre, bridge, shared_dir,
                                                                               tmp_path, fleet_service, monkeypatch):
    url, svc, pub = fleet_service
    monkeypatch.delenv("KIOSK_FLEET_ADMIN_TOKEN")  # the token comes from the option, as a technician gives it
    s = settings_for(tmp_path, shared_dir)
    base = opts(services, bridge, shared_dir, only=("settings", "keys", "fleet"))
    out = io.StringIO()
    # someone else's token: refused, and the step says so
    st = run_provision(replace(base, fleet_url=url, fleet_token="not-the-operator", fleet_operator_pub=str(pub)),
                       settings=s, out=out)
    assert st["steps"]["fleet"]["status"] == "failed" and "refused" in st["steps"]["fleet"]["summary"]
    assert svc.terminals() == []
    out = io.StringIO()
    st = run_provision(replace(base, fleet_url=url, fleet_token="fleet-operator-token", fleet_operator_pub=str(pub),
                               fleet_district="370203"), settings=s, out=out)
    assert st["steps"]["fleet"]["status"] == "ok", out.getvalue()
    assert "[8/8] fleet" in out.getvalue()
    [t] = svc.terminals()
    assert (t["terminal_id"], t["institution"], t["district"]) == (st["device_id"], "P37020200001", "370203")
    assert (tmp_path / "var" / "fleet" / "operator.pub").read_bytes() == pub.read_bytes()
    raw = (tmp_path / "var" / "provision" / "state.json").read_text()
    assert "fleet-operator-token" not in raw
    # the key registered is the device's: a beat signed by its key store is accepted
    from kiosk.fleet.agent import FleetAgent, StaticStatus, signer_from_keystore
    from kiosk.fleet import artifacts as art
    from kiosk.security.keystore import KeyStore

    agent = FleetAgent(url, signer_from_keystore(KeyStore.open(tmp_path / "var" / "keys")), StaticStatus(),
                       trust_key=art.load_public(pub))
    assert agent.beat() is not None
    # re-run with everything remembered and no token: nothing to do
    out = io.StringIO()
    st2 = run_provision(Options(only=("fleet",)), settings=s, out=out)
    assert st2["steps"]["fleet"]["status"] == "ok" and "already registered with the fleet" in out.getvalue()
    # `kiosk serve` (Stack.load_identity) reports to the fleet provisioning registered with
    from kiosk.app.stack import Stack

    run_provision(replace(base, only=("register",)), settings=s, out=io.StringIO())
    stk = Stack(data_dir=tmp_path / "var", settings=replace(s, fleet_url="", fleet_operator_pub=""))
    stk.load_identity()
    assert stk.settings.fleet_url == url
    assert stk.settings.fleet_operator_pub == str(tmp_path / "var" / "fleet" / "operator.pub")


def test_without_a_fleet_url_there_is_no_fleet_step(services, centre, bridge, shared_dir, tmp_path):
    out = io.StringIO()
    st = run_provision(opts(services, bridge, shared_dir, only=("settings",)), settings=settings_for(tmp_path, shared_dir),
                       out=out)
    assert "fleet" not in st["steps"] and "/8]" not in out.getvalue()
