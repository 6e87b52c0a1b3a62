"""`kiosk provision`: what a technician runs once on a new terminal (and again after any fix).

Steps, in order, each recorded in <data_dir>/provision/state.json with its result:

    settings     region code, settlement profile, medical-institution code (validated)
    keys         the device identity in <data_dir>/keys (kiosk.security.keystore; never regenerated)
    register     the public SM2 key registered with the insurance centre and the bank (POST /admin/terminals)
    models       the model pack copied to <data_dir>/models, every file checked by sha256 (models.loader)
    camera       one live frame read and judged (exposure, focus, faces) in memory, never stored;
                 then a few seconds of the technician's face scored for liveness: only summary
                 statistics are kept (here, device-local), with a warning when they sit far
                 from the calibration data's (a camera the models were not calibrated for)
    peripherals  the firmware bridge answers, the MCU is connected, its self-test passes
    technician   the PIN of the technician page (scrypt hash; a new PIN is printed once)
    fleet        only with a fleet service (--fleet URL, remembered): the device's Ed25519 key registered
                 there (kiosk.fleet.agent.register_with_fleet) with the institution and district, and the
                 operator's artifact key (--fleet-operator-pub) kept at <data_dir>/fleet/operator.pub;
                 `kiosk serve` then reports to that fleet (KIOSK_FLEET_URL overrides it)

Re-running is safe: keys are opened, not remade; a registration with the same inputs
is skipped; model files already in place with the right digest are kept; checks
(camera, peripherals) run every time. A failed step does not stop the independent
ones, so one run shows everything that needs fixing; the exit status is 1 until
all steps are ok.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import secrets
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from kiosk.clock import Clock, SystemClock
from kiosk.config import Settings, load
from kiosk.errors import ConfigError, InputError, KioskError

STEP_NAMES = ("settings", "keys", "register", "models", "camera", "peripherals", "technician", "fleet")
DEFAULT_CENTRE = "http://127.0.0.1:8710"
DEFAULT_BRIDGE = "http://127.0.0.1:8730"
DEFAULT_BANK = "http://127.0.0.1:8720"


@dataclass(frozen=True)
class StepResult:
    status: str                 # ok | failed | blocked | skipped
    summary: str
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class Options:
    centre_url: str | None = None
    bank_url: str | None = None
    no_bank: bool = False
    admin_token: str | None = None
    fixmedins_code: str | None = None
    region: str | None = None
    profile: str | None = None
    model_source: str | None = None
    model_dir: str | None = None
    camera: str | None = None
    bridge_url: str | None = None
    bridge_token_file: str | None = None  # default: KIOSK_BRIDGE_TOKEN_FILE (the self-test needs the bridge's token)
    technician_pin: str | None = None
    fleet_url: str | None = None          # the operator's fleet service (remembered); none: the step is not run
    fleet_token: str | None = None        # its operator token (or KIOSK_FLEET_ADMIN_TOKEN); never recorded
    fleet_district: str | None = None     # district shown on the fleet page (default: the region code)
    fleet_operator_pub: str | None = None  # the operator's artifact public key (PEM file)
    redo: tuple[str, ...] = ()
    only: tuple[str, ...] = ()
    skip: tuple[str, ...] = ()


# ----------------------------------------------------------------------------- state file

def state_path(data_dir: Path) -> Path:
    return Path(data_dir) / "provision" / "state.json"


def _write_json(path: Path, obj: Any, mode: int = 0o600) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, json.dumps(obj, ensure_ascii=False, indent=2, sort_keys=True).encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path} is unreadable ({e}); move it away to start provisioning afresh",
                          code="provision_state_invalid") from None


def _fingerprint(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- context

@dataclass
class Ctx:
    settings: Settings
    opts: Options
    clock: Clock
    state: dict[str, Any]
    results: dict[str, StepResult] = field(default_factory=dict)
    new_pin: str | None = None
    keystore: Any = None
    pack: Any = None

    @property
    def data_dir(self) -> Path:
        return Path(self.settings.data_dir)

    @property
    def conf(self) -> dict[str, Any]:
        return self.state.setdefault("settings", {})

    def value(self, name: str, default: Any = None) -> Any:
        """A CLI value, else the one remembered from the last run, else the default."""
        v = getattr(self.opts, name)
        return v if v not in (None, "") else self.conf.get(name, default)


# ----------------------------------------------------------------------------- steps

def step_settings(ctx: Ctx) -> StepResult:
    region = str(ctx.value("region") or "")
    profile = str(ctx.value("profile") or "")
    code = str(ctx.value("fixmedins_code") or "")
    if not re.fullmatch(r"\d{6}", region):
        raise InputError("must be the 6-digit administrative region code (e.g. 370200 for Qingdao)", field="region")
    if not re.fullmatch(r"[A-Za-z0-9]{1,30}", code):
        raise InputError("must be the medical institution code (letters and digits, at most 30)",
                         field="fixmedins_code")
    from kiosk.settlement.profiles import get_profile

    get_profile(profile)  # InputError naming `profile` and the known ones
    ctx.conf.update(region=region, profile=profile, fixmedins_code=code)
    return StepResult("ok", f"region {region}, profile {profile}, institution {code}",
                      {"region": region, "profile": profile, "fixmedins_code": code})


def step_keys(ctx: Ctx) -> StepResult:
    from kiosk.security.keystore import KeyStore

    path = ctx.data_dir / "keys"
    existed = (path / "device.json").exists()
    ks = KeyStore.open(path) if existed else KeyStore.init(path)
    ctx.keystore = ks
    pub = ks.public_identity()
    fp = {k: hashlib.sha256(bytes.fromhex(pub[k])).hexdigest()[:16] for k in ("ed25519", "x25519", "sm2")}
    mode = oct(path.stat().st_mode & 0o777)
    return StepResult("ok", f"{'kept existing' if existed else 'generated'} device identity {ks.device_id} "
                            f"(key {ks.current_kid}, dir mode {mode})",
                      {"device_id": ks.device_id, "kid": ks.current_kid, "fingerprints": fp, "created": not existed})


def _services(ctx: Ctx) -> list[tuple[str, str]]:
    """The remote services this terminal registers with: the centre, and the bank unless credit pay is off."""
    centre = str(ctx.value("centre_url", DEFAULT_CENTRE)).rstrip("/")
    ctx.conf["centre_url"] = centre
    if ctx.opts.no_bank:
        ctx.conf["bank_url"] = None
    elif ctx.opts.bank_url:
        ctx.conf["bank_url"] = ctx.opts.bank_url.rstrip("/")
    elif "bank_url" not in ctx.conf:
        ctx.conf["bank_url"] = DEFAULT_BANK
    out = [("centre", centre)]
    if ctx.conf["bank_url"]:
        out.append(("bank", ctx.conf["bank_url"]))
    return out


def _register_inputs(ctx: Ctx, services: list[tuple[str, str]]) -> str:
    ks = ctx.keystore
    return _fingerprint({"services": services, "app_id": ks.device_id, "sm2": ks.public_identity()["sm2"],
                         "code": ctx.conf.get("fixmedins_code")})


def step_register(ctx: Ctx) -> StepResult:
    """Register the SM2 public key with each service (kiosk.services.client.register_terminal).

    Each service issues its own app_secret, kept in <data_dir>/provision/<service>.json (0600) where
    the kiosk app reads it; a re-registration sends the saved secret back so it stays the same."""
    from kiosk.services.client import register_terminal

    ks = ctx.keystore
    services = _services(ctx)
    prev = ctx.state.get("steps", {}).get("register", {})
    saved = {name: _read_json(ctx.data_dir / "provision" / f"{name}.json") for name, _ in services}
    if (prev.get("status") == "ok" and prev.get("inputs") == _register_inputs(ctx, services)
            and all(saved[n].get("app_secret") for n, _ in services) and "register" not in ctx.opts.redo):
        return StepResult("skipped", "already registered with " + ", ".join(f"{n} {u}" for n, u in services),
                          prev.get("detail", {}))
    token = ctx.opts.admin_token or os.environ.get("KIOSK_CENTRE_ADMIN_TOKEN", "")
    if not token:
        return StepResult("failed", "the operator token is needed to register: pass --admin-token "
                                    "(or set KIOSK_CENTRE_ADMIN_TOKEN)", {"field": "admin_token"})
    sm2_public = ks.public_identity()["sm2"]
    detail: dict[str, Any] = {"app_id": ks.device_id, "services": {}}
    failed = []
    for name, url in services:
        old = saved[name]
        try:
            out = register_terminal(url, token, ks.device_id, sm2_public, ctx.conf["fixmedins_code"],
                                    app_secret=old.get("app_secret", "") if old.get("url") == url else "")
        except KioskError as e:
            msg = str(e)
            if "admin token" in msg or "x-admin-token" in msg:
                msg = f"the {name} refused the operator token (X-Admin-Token)"
            elif getattr(e, "code", "") == "unreachable":
                msg = f"the {name} at {url} is not reachable; check the network and the URL"
            failed.append(msg)
            detail["services"][name] = {"url": url, "status": "failed"}
            continue
        _write_json(ctx.data_dir / "provision" / f"{name}.json",
                    {"url": url, "app_id": out.get("app_id", ks.device_id), "app_secret": out["app_secret"],
                     "service_keys": out.get("service_keys", {})})
        fps = {k: hashlib.sha256(str(v).encode()).hexdigest()[:16] for k, v in (out.get("service_keys") or {}).items()}
        detail["services"][name] = {"url": url, "status": "ok", "service_key_fingerprints": fps}
    done = [f"{n} {u}" for n, u in services if detail["services"][n]["status"] == "ok"]
    ok_part = "registered with " + ", ".join(done) if done else ""
    if failed:
        return StepResult("failed", "; ".join(failed) + (f" ({ok_part})" if ok_part else ""), detail)
    return StepResult("ok", f"{ok_part} as {ks.device_id}", detail)


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def step_models(ctx: Ctx) -> StepResult:
    from models.loader import load_manifest, load_pack

    target = Path(ctx.value("model_dir") or (ctx.data_dir / "models"))
    source = Path(ctx.value("model_source") or ctx.settings.model_pack)
    ctx.conf.update(model_dir=str(target), model_source=str(source))
    man = load_manifest()
    copied, kept = [], []
    for key, e in man["models"].items():
        want = e["sha256"].lower()
        dst = target / e["file"]
        if dst.is_file() and _sha256_file(dst) == want:
            kept.append(e["file"])
            continue
        src = source / e["file"]
        if e.get("dev_only") and not src.is_file():
            continue  # non-commercial dev/test weights (SCRFD): a licensed pack leaves them out
        if not src.is_file():
            return StepResult("failed", f"{e['file']} is not in the pack at {source}", {"file": e["file"]})
        data = src.read_bytes()
        got = hashlib.sha256(data).hexdigest()
        if got != want:
            return StepResult("failed", f"{e['file']} in {source} has sha256 {got[:16]}…, the manifest says "
                                        f"{want[:16]}…: refused, nothing of it installed", {"file": e["file"]})
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
        with tmp.open("wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dst)
        copied.append(e["file"])
    pack = load_pack(target, verify=True)  # the loader's own check, and every model must load
    for key in man["models"]:
        e = man["models"][key]
        if e.get("engine") != "cv2.FaceDetectorYN" and not (e.get("dev_only") and not pack.path(key).exists()):
            pack.session(key)
    ctx.pack = pack
    versions = {k: e["sha256"][:12] for k, e in man["models"].items()}
    return StepResult("ok", f"{len(copied)} file(s) installed, {len(kept)} already in place, all {len(versions)} "
                            f"verified by sha256 and loaded in {target}",
                      {"model_dir": str(target), "copied": copied, "kept": kept, "sha256": versions})


def step_camera(ctx: Ctx) -> StepResult:
    import cv2
    import numpy as np

    from kiosk.vision.frames import open_source

    spec = str(ctx.value("camera", "0"))
    ctx.conf["camera"] = spec
    src = open_source(spec)
    frame = None
    try:
        for _ in range(30):  # a real camera may need a few frames to settle exposure
            frame = src.read()
            if frame is not None and float(np.asarray(frame).std()) > 0:
                break
            time.sleep(0.05)
    finally:
        src.close()
    if frame is None:
        return StepResult("failed", f"no frame from camera {spec}: check the cable and the device index", {})
    grey = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY) if frame.ndim == 3 else frame
    h, w = grey.shape[:2]
    mean, std = float(grey.mean()), float(grey.std())
    sharp = float(cv2.Laplacian(grey, cv2.CV_64F).var())
    detail: dict[str, Any] = {"width": w, "height": h, "brightness": round(mean, 1), "contrast": round(std, 1),
                              "sharpness": round(sharp, 1)}
    problems = []
    if std < 8:
        problems.append("the picture is blank (lens covered or sensor fault)")
    elif mean < 40:
        problems.append("too dark: check the fill light")
    elif mean > 220:
        problems.append("over-exposed: shield the camera from direct light")
    faces_note = "face check skipped (model pack not installed)"
    live_note = ""
    if ctx.pack is not None and not problems:
        from kiosk.vision.detect import make_detector
        from kiosk.vision.quality import QualityConfig, assess

        faces = make_detector(ctx.pack).detect(frame)
        q = assess(frame, faces, QualityConfig.from_thresholds(ctx.pack.thresholds))
        detail.update(faces=len(faces), quality=q.reason or "ok")
        faces_note = (f"{len(faces)} face(s) in view, quality {q.reason or 'ok'}" if faces
                      else "no face in view (stand in front of the camera to check framing)")
        if faces:
            detail["liveness"] = _camera_liveness(ctx, spec)
            live_note = "; " + detail["liveness"]["verdict"]
    del frame, grey  # the frame lived in memory only
    if problems:
        return StepResult("failed", f"camera {spec} {w}x{h}: " + "; ".join(problems), detail)
    return StepResult("ok", f"camera {spec} gives {w}x{h} frames, brightness {mean:.0f}, {faces_note}{live_note}",
                      detail)


LIVENESS_SAMPLE_S = 3.0
LIVENESS_SAMPLE_FRAMES = 60


def _camera_liveness(ctx: Ctx, spec: str) -> dict[str, Any]:
    """The technician's own face for a few seconds: per-frame live scores summarised (frames and
    scores are dropped here) and compared with the calibration's live frames from the manifest."""
    from kiosk.vision.frames import open_source
    from kiosk.vision.liveness import far_from_calibration, summarise_live_scores
    from kiosk.vision.pipeline import FacePipeline

    pipe = FacePipeline(ctx.pack)
    threshold = float(ctx.pack.thresholds["liveness_live"])
    calib = ((ctx.pack.manifest.get("calibration") or {}).get("liveness") or {}).get("live_score_stats") or {}
    scores: list[float] = []
    src = open_source(spec, loop=True)
    end = time.monotonic() + LIVENESS_SAMPLE_S
    try:
        for _ in range(LIVENESS_SAMPLE_FRAMES):
            if time.monotonic() > end:
                break
            f = src.read()
            if f is None:
                time.sleep(0.02)
                continue
            r = pipe.analyse(f, want_template=False)
            if r.quality.ok and r.live_score is not None:
                scores.append(r.live_score)
    finally:
        src.close()
    stats = summarise_live_scores(scores, threshold)
    del scores
    if stats["frames"] < 5:
        verdict = "liveness check: too few steady frames of a face (stand still in front of the camera, re-run)"
        return {"camera": stats, "verdict": verdict, "warning": True}
    if not calib:
        return {"camera": stats, "verdict": "liveness check: no calibration statistics in the manifest",
                "warning": True}
    why = far_from_calibration(stats, calib)
    verdict = (f"WARNING liveness on this camera sits far from the calibration data: {why}; patients may be "
               "refused as spoofs: check the lighting and the camera model before opening the counter"
               if why else f"liveness on this camera within the calibration range ({stats['frames']} frames)")
    return {"camera": stats, "calibration": {k: calib.get(k) for k in ("frames", "p10", "p50", "below_threshold")},
            "verdict": verdict, "warning": bool(why)}


def step_peripherals(ctx: Ctx) -> StepResult:
    from firmware_bridge.client import BridgeClient

    url = str(ctx.value("bridge_url", DEFAULT_BRIDGE))
    ctx.conf["bridge_url"] = url
    token_file = str(ctx.value("bridge_token_file") or ctx.settings.bridge_token_path())
    if ctx.opts.bridge_token_file:
        ctx.conf["bridge_token_file"] = token_file  # remembered like --bridge
    try:
        with BridgeClient(url, timeout=5.0, token_file=token_file) as c:
            st = c.status()
            if st.get("state") != "connected":
                return StepResult("failed", f"the bridge runs but the MCU is {st.get('state')}: check the serial "
                                            f"cable ({st.get('serial_url')}); last error: {st.get('last_error')}",
                                  {"state": st.get("state")})
            test = c.self_test()
            printer = c.printer()
    except KioskError as e:
        return StepResult("failed", f"firmware bridge at {url}: {e}", {"code": e.code})
    detail = {"firmware": st.get("firmware"), "protocol": st.get("protocol"), "model": st.get("model"),
              "device_serial": st.get("device_serial"), "self_test": test.get("results"), "printer": printer}
    if printer.get("paper_out") or printer.get("cover_open"):
        what = "out of paper: load paper" if printer.get("paper_out") else "cover open: close the cover"
        return StepResult("failed", f"printer {what}, then re-run", detail)
    failed = [k for k, v in (test.get("results") or {}).items() if not v]
    if not test.get("passed") or failed:
        return StepResult("failed", f"MCU self-test failed: {', '.join(failed) or 'see detail'}", detail)
    return StepResult("ok", f"MCU {st.get('model')} firmware {st.get('firmware')}, self-test passed "
                            f"({', '.join(sorted(test.get('results') or {}))}), printer ready", detail)


def step_technician(ctx: Ctx) -> StepResult:
    from kiosk.app.technician import pin_is_set, set_pin

    pin = ctx.opts.technician_pin or os.environ.get("KIOSK_TECHNICIAN_PIN") or None
    if pin:
        set_pin(ctx.data_dir, pin, ctx.clock)
        return StepResult("ok", "technician PIN set (as given)", {"pin": "set"})
    if pin_is_set(ctx.data_dir) and "technician" not in ctx.opts.redo:
        return StepResult("ok", "technician PIN kept (use --technician-pin or --redo technician to change it)",
                          {"pin": "kept"})
    pin = f"{secrets.randbelow(10**8):08d}"
    set_pin(ctx.data_dir, pin, ctx.clock)
    ctx.new_pin = pin
    return StepResult("ok", "new technician PIN generated (printed once below)", {"pin": "generated"})


def _fleet_inputs(ctx: Ctx, url: str, district: str, pub_sha: str) -> str:
    ident = ctx.keystore.public_identity()
    return _fingerprint({"url": url, "device": ident["device_id"], "kid": ident.get("kid"), "ed25519": ident["ed25519"],
                         "institution": ctx.conf.get("fixmedins_code"), "district": district, "operator_pub": pub_sha})


def step_fleet(ctx: Ctx) -> StepResult:
    """Register the device's Ed25519 key with the fleet service (heartbeats are signed with it) and keep
    the operator's artifact public key where `kiosk serve` finds it. Re-run: skipped when nothing changed."""
    from kiosk.fleet import artifacts as art
    from kiosk.fleet.agent import register_with_fleet

    url = str(ctx.value("fleet_url") or "").rstrip("/")
    district = str(ctx.value("fleet_district") or ctx.conf.get("region") or "")
    ctx.conf.update(fleet_url=url, fleet_district=district)
    if not url.startswith(("http://", "https://")):
        raise InputError("must be the fleet service's http(s) URL", field="fleet_url")
    pub_dst = ctx.data_dir / "fleet" / "operator.pub"
    src = ctx.opts.fleet_operator_pub
    if src:
        pem = Path(src).read_bytes()
        art.load_public(pem)  # ConfigError naming trust_key when it is not an Ed25519 public key
        pub_dst.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = pub_dst.with_name(f".{pub_dst.name}.{os.getpid()}.tmp")
        tmp.write_bytes(pem)
        os.replace(tmp, pub_dst)
    if not pub_dst.is_file():
        return StepResult("failed", "the operator's artifact public key is needed: pass --fleet-operator-pub FILE "
                                    "(operator.pub from `kiosk fleet keygen`)", {"field": "fleet_operator_pub"})
    pub_sha = hashlib.sha256(pub_dst.read_bytes()).hexdigest()
    ctx.conf["fleet_operator_pub"] = str(pub_dst)
    inputs = _fleet_inputs(ctx, url, district, pub_sha)
    prev = ctx.state.get("steps", {}).get("fleet", {})
    if prev.get("status") == "ok" and prev.get("inputs") == inputs and "fleet" not in ctx.opts.redo:
        return StepResult("skipped", f"already registered with the fleet at {url}", prev.get("detail", {}))
    token = ctx.opts.fleet_token or os.environ.get("KIOSK_FLEET_ADMIN_TOKEN", "")
    if not token:
        return StepResult("failed", "the fleet operator token is needed to register: pass --fleet-token "
                                    "(or set KIOSK_FLEET_ADMIN_TOKEN)", {"field": "fleet_token"})
    ident = ctx.keystore.public_identity()
    out = register_with_fleet(url, token, ident, institution=ctx.conf["fixmedins_code"], district=district)
    detail = {"url": url, "terminal_id": out.get("terminal_id", ident["device_id"]), "district": district,
              "key_fingerprint": hashlib.sha256(bytes.fromhex(ident["ed25519"])).hexdigest()[:16],
              "operator_pub_sha256": pub_sha[:16], "inputs": inputs}
    return StepResult("ok", f"registered with the fleet at {url} as {detail['terminal_id']} (district {district})",
                      detail)


@dataclass(frozen=True)
class Step:
    name: str
    run: Callable[[Ctx], StepResult]
    needs: tuple[str, ...] = ()


STEPS = (
    Step("settings", step_settings),
    Step("keys", step_keys),
    Step("register", step_register, needs=("settings", "keys")),
    Step("models", step_models),
    Step("camera", step_camera),
    Step("peripherals", step_peripherals),
    Step("technician", step_technician),
)
FLEET_STEP = Step("fleet", step_fleet, needs=("settings", "keys"))


def steps_for(opts: Options, state: dict[str, Any]) -> tuple[Step, ...]:
    """The fleet step runs only on a terminal given a fleet service (now or in an earlier run)."""
    if opts.fleet_url or state.get("settings", {}).get("fleet_url"):
        return (*STEPS, FLEET_STEP)
    return STEPS


# ----------------------------------------------------------------------------- runner

def run_provision(opts: Options, *, settings: Settings | None = None, clock: Clock | None = None,
                  out: TextIO | None = None) -> dict[str, Any]:
    """Run the steps, print progress, record every result; returns the state written."""
    settings = settings or load()
    clock = clock or SystemClock()
    out = out or sys.stdout
    for name in (*opts.redo, *opts.only, *opts.skip):
        if name not in STEP_NAMES:
            raise InputError(f"unknown step {name!r}; steps: {', '.join(STEP_NAMES)}", field="step")
    data_dir = Path(settings.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    sp = state_path(data_dir)
    state = _read_json(sp)
    state.setdefault("steps", {})
    ctx = Ctx(settings=settings, opts=opts, clock=clock, state=state)
    print(f"kiosk provision: data dir {data_dir}", file=out, flush=True)
    steps = steps_for(opts, state)
    n = len(steps)
    for i, step in enumerate(steps, 1):
        t0 = time.perf_counter()
        if (opts.only and step.name not in opts.only) or step.name in opts.skip:
            res = None
        else:
            missing = [d for d in step.needs if ctx.results.get(d, _prev(state, d)).status not in ("ok", "skipped")]
            if not missing and "keys" in step.needs and ctx.keystore is None:  # keys not run this time
                try:
                    from kiosk.security.keystore import KeyStore

                    ctx.keystore = KeyStore.open(data_dir / "keys")
                except KioskError:
                    missing.append("keys")
            if missing:
                res = StepResult("blocked", f"needs {', '.join(missing)} to succeed first")
            else:
                try:
                    res = step.run(ctx)
                except InputError:
                    raise
                except KioskError as e:
                    res = StepResult("failed", str(e), {"code": e.code})
                except Exception as e:  # noqa: BLE001 - a step's fault is that step's result, not a traceback
                    res = StepResult("failed", f"{type(e).__name__}: {e}", {})
        ms = (time.perf_counter() - t0) * 1000
        if res is None:
            print(f"[{i}/{n}] {step.name:<12} -- not run this time", file=out, flush=True)
            continue
        ctx.results[step.name] = res
        mark = {"ok": "ok", "skipped": "ok (already done)", "failed": "FAILED", "blocked": "BLOCKED"}[res.status]
        print(f"[{i}/{n}] {step.name:<12} {mark:<18} {res.summary} ({ms:.0f} ms)", file=out, flush=True)
        prev = state["steps"].get(step.name, {})
        rec = {"status": "ok" if res.status == "skipped" else res.status, "summary": res.summary,
               "detail": res.detail, "at": clock.now().isoformat(timespec="seconds"), "ms": round(ms, 1)}
        if step.name == "register":
            rec["inputs"] = _register_inputs(ctx, _services(ctx)) if ctx.keystore is not None else None
            if res.status == "skipped":
                rec = {**prev, "summary": res.summary, "checked_at": rec["at"]}
        if step.name == "fleet":
            rec["inputs"] = rec["detail"].pop("inputs", None) if res.status == "ok" else None
            if res.status == "skipped":
                rec = {**prev, "summary": res.summary, "checked_at": rec["at"]}
        state["steps"][step.name] = rec
        if ctx.keystore is not None:
            state["device_id"] = ctx.keystore.device_id
        state["updated_at"] = clock.now().isoformat(timespec="seconds")
        _write_json(sp, state)  # after every step: an interrupted run keeps what it did
    bad = [k for k, v in state["steps"].items() if v.get("status") != "ok"]
    from kiosk.app.technician import audit

    audit(data_dir, "admin_action", clock, action="provision",
          steps={k: v.get("status") for k, v in state["steps"].items()}, device_id=state.get("device_id"))
    if ctx.new_pin:
        print(f"technician PIN: {ctx.new_pin}   (shown once; the page is http://127.0.0.1:8740/technician/)",
              file=out, flush=True)
    if bad:
        print(f"kiosk provision: not finished: {', '.join(bad)}; fix and run `kiosk provision` again "
              "(finished steps are kept)", file=out, flush=True)
    else:
        print(f"kiosk provision: all {len(state['steps'])} steps ok; device {state.get('device_id')}",
              file=out, flush=True)
    return state


def _prev(state: dict[str, Any], name: str) -> StepResult:
    s = state.get("steps", {}).get(name) or {}
    return StepResult(s.get("status", "missing"), s.get("summary", ""))


# ----------------------------------------------------------------------------- CLI

def _cmd(args: argparse.Namespace) -> int:
    opts = Options(centre_url=args.centre, bank_url=args.bank_url, no_bank=args.no_bank, admin_token=args.admin_token, fixmedins_code=args.fixmedins_code,
                   region=args.region, profile=args.profile, model_source=args.model_source,
                   model_dir=args.model_dir, camera=args.camera, bridge_url=args.bridge, bridge_token_file=args.bridge_token_file,
                   technician_pin=args.technician_pin, fleet_url=args.fleet, fleet_token=args.fleet_token,
                   fleet_district=args.fleet_district, fleet_operator_pub=args.fleet_operator_pub, redo=tuple(args.redo or ()), only=tuple(args.only or ()),
                   skip=tuple(args.skip or ()))
    state = run_provision(opts, out=sys.stderr if args.json else sys.stdout)
    if args.json:
        print(json.dumps(state, ensure_ascii=False, sort_keys=True))
    return 0 if all(v.get("status") == "ok" for v in state["steps"].values()) else 1


def register_provision(subparsers: argparse._SubParsersAction) -> None:
    """Add `kiosk provision` (called from kiosk/app/cli.py)."""
    p = subparsers.add_parser("provision", help="technician: register, keys, model pack, camera and peripheral checks",
                              description=__doc__.splitlines()[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter,
                              epilog="\n".join(__doc__.splitlines()[2:18]))
    p.add_argument("--centre", metavar="URL", help=f"insurance centre (default {DEFAULT_CENTRE}; remembered)")
    p.add_argument("--bank", dest="bank_url", metavar="URL", help=f"bank (credit line) service (default {DEFAULT_BANK}; remembered)")
    p.add_argument("--no-bank", action="store_true", help="this counter offers no credit pay: register with the centre only")
    p.add_argument("--admin-token", help="the operator's token for registration (or KIOSK_CENTRE_ADMIN_TOKEN)")
    p.add_argument("--fixmedins-code", help="medical institution code of this counter (remembered)")
    p.add_argument("--region", help="6-digit region code, e.g. 370200 (remembered)")
    p.add_argument("--profile", help="settlement profile name, e.g. qingdao-employee-outpatient (remembered)")
    p.add_argument("--model-source", metavar="DIR", help="where the model pack comes from (default KIOSK_MODEL_PACK)")
    p.add_argument("--model-dir", metavar="DIR", help="where it is installed (default <data_dir>/models)")
    p.add_argument("--camera", help="camera index, video file or image folder (default 0; remembered)")
    p.add_argument("--bridge", metavar="URL", help=f"firmware bridge API (default {DEFAULT_BRIDGE})")
    p.add_argument("--bridge-token-file", metavar="FILE",
                   help="the bridge's API token file (default KIOSK_BRIDGE_TOKEN_FILE; remembered); run as the kiosk user or root")
    p.add_argument("--technician-pin", help="set this PIN (6-12 digits) instead of generating one; prefer KIOSK_TECHNICIAN_PIN in the environment (a command-line argument is visible in ps)")
    p.add_argument("--fleet", metavar="URL", help="the operator's fleet service: register this terminal there (remembered)")
    p.add_argument("--fleet-token", help="the fleet operator token (prefer KIOSK_FLEET_ADMIN_TOKEN in the environment)")
    p.add_argument("--fleet-district", help="district shown on the fleet page (default: the region code; remembered)")
    p.add_argument("--fleet-operator-pub", metavar="FILE", help="the operator's artifact public key (operator.pub)")
    p.add_argument("--redo", action="append", choices=STEP_NAMES, help="run a done step again (repeatable)")
    p.add_argument("--only", action="append", choices=STEP_NAMES, help="run only these steps (repeatable)")
    p.add_argument("--skip", action="append", choices=STEP_NAMES, help="leave these steps out (repeatable)")
    p.add_argument("--json", action="store_true", help="print the recorded state as JSON on stdout")
    p.set_defaults(func=_cmd)
