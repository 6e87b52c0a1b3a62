"""`kiosk fleet ...`: run the fleet service, register terminals, publish and roll out updates, a demo."""
from __future__ import annotations

import argparse
import base64
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from kiosk.config import load
from kiosk.errors import ConfigError, InputError, RemoteError

DEFAULT_URL = "http://127.0.0.1:8750"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fleet", help="the operator's fleet service: heartbeats, alerts, staged rollout")
    s = p.add_subparsers(dest="fleet_command", metavar="ACTION")
    s.required = True

    sv = s.add_parser("serve", help="run the fleet service (uvicorn workers) and its periodic job")
    sv.add_argument("--db", default="", help="sqlite:///FILE.db or postgresql://... (default <data_dir>/fleet.db)")
    sv.add_argument("--host", default="127.0.0.1")
    sv.add_argument("--port", type=int, default=8750)
    sv.add_argument("--workers", type=int, default=1)
    sv.add_argument("--rules", default="", help="alert rules file (default: the shipped kiosk/fleet/rules.toml)")
    sv.add_argument("--operator-pub", default="", help="operator public key PEM: published artifacts are checked")
    sv.add_argument("--webhook", default="", help="alert webhook URL (default: alerts go to the log)")
    sv.add_argument("--data-dir", default="")
    sv.set_defaults(func=_serve)

    kg = s.add_parser("keygen", help="create the operator's Ed25519 signing key (operator.key / operator.pub)")
    kg.add_argument("--out", required=True, help="directory (keep operator.key off the fleet server)")
    kg.set_defaults(func=_keygen)

    rg = s.add_parser("register", help="register this terminal's device key with the fleet service")
    _conn(rg)
    rg.add_argument("--keys", default="", help="the terminal's key store (default <data_dir>/keys)")
    rg.add_argument("--institution", required=True, help="fixmedins code")
    rg.add_argument("--district", required=True)
    rg.add_argument("--alg", choices=["Ed25519", "SM2"], default="Ed25519")
    rg.set_defaults(func=_register)

    pb = s.add_parser("publish", help="sign and publish a model pack (directory) or MCU image (.kfw)")
    _conn(pb)
    pb.add_argument("--key", required=True, help="operator.key (PEM)")
    pb.add_argument("--kind", choices=["model_pack", "mcu_firmware"], required=True)
    pb.add_argument("--version", required=True)
    pb.add_argument("path", help="model pack directory (with manifest.json) or .kfw file")
    pb.set_defaults(func=_publish)

    ro = s.add_parser("rollout", help="start | advance | halt | close | status")
    _conn(ro)
    ro.add_argument("action", choices=["start", "advance", "halt", "close", "status"])
    ro.add_argument("target", nargs="?", default="", help="start: the artifact sha256; others: the rollout id")
    ro.add_argument("--kind", choices=["model_pack", "mcu_firmware"], default="model_pack")
    ro.set_defaults(func=_rollout)

    dm = s.add_parser("demo", help="fleet service + simulated terminals (alerts, a rollout) on loopback")
    dm.add_argument("--terminals", type=int, default=40)
    dm.add_argument("--port", type=int, default=8750)
    dm.add_argument("--seconds", type=float, default=0, help="stop after this long (0: until interrupted)")
    dm.add_argument("--beat-s", type=float, default=2.0, help="heartbeat period of the simulated terminals")
    dm.add_argument("--data-dir", default="")
    dm.set_defaults(func=_demo)


def _conn(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", default=os.environ.get("KIOSK_FLEET_URL", DEFAULT_URL))
    p.add_argument("--token", default="", help="operator token (default $KIOSK_FLEET_ADMIN_TOKEN)")


def _token(args: argparse.Namespace) -> str:
    t = args.token or os.environ.get("KIOSK_FLEET_ADMIN_TOKEN", "")
    if not t:
        raise InputError("the operator token is needed (--token or KIOSK_FLEET_ADMIN_TOKEN)", field="--token")
    return t


def _call(args: argparse.Namespace, method: str, path: str, **kw: Any) -> Any:
    import httpx

    try:
        r = httpx.request(method, args.url.rstrip("/") + path, headers={"X-Admin-Token": _token(args)},
                          timeout=120, **kw)
    except httpx.HTTPError as e:
        raise RemoteError(f"fleet service {args.url} unreachable: {type(e).__name__}", code="fleet_unreachable") from None
    if r.status_code != 200:
        raise RemoteError(f"{method} {path}: {r.status_code} {r.text[:300]}", code="fleet_refused")
    return r.json()


def _data_dir(args: argparse.Namespace) -> Path:
    return Path(args.data_dir) if getattr(args, "data_dir", "") else Path(load().data_dir)


def _serve(args: argparse.Namespace) -> int:
    from kiosk.fleet.app import Job, admin_token, fleet_db_url, notifier_from_env
    from kiosk.fleet.rules import load_rules
    from kiosk.fleet.service import FleetService
    from kiosk.storage import open_database

    data_dir = _data_dir(args)
    env = dict(os.environ, KIOSK_DATA_DIR=str(data_dir))
    env["KIOSK_FLEET_DB"] = args.db or fleet_db_url(data_dir)
    env.setdefault("KIOSK_SQLITE_SYNCHRONOUS", "NORMAL")  # heartbeats are not money; see docs/fleet.md
    for k, v in (("KIOSK_FLEET_RULES", args.rules), ("KIOSK_FLEET_OPERATOR_PUB", args.operator_pub),
                 ("KIOSK_FLEET_WEBHOOK", args.webhook)):
        if v:
            env[k] = v
    os.environ.update({k: env[k] for k in ("KIOSK_FLEET_DB", "KIOSK_SQLITE_SYNCHRONOUS", "KIOSK_DATA_DIR")
                       if k in env})
    for k in ("KIOSK_FLEET_RULES", "KIOSK_FLEET_WEBHOOK"):
        if k in env:
            os.environ[k] = env[k]
    rules = load_rules()
    admin_token(data_dir)  # made once here (0600), before the workers would race to make it
    db = open_database(env["KIOSK_FLEET_DB"])
    svc = FleetService(db, rules=rules, notifier=notifier_from_env())  # creates the tables before the workers
    cmd = [sys.executable, "-m", "uvicorn", "--factory", "kiosk.fleet.app:app_from_env", "--host", args.host,
           "--port", str(args.port), "--workers", str(args.workers), "--no-access-log", "--log-level", "warning"]
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)

    def _term(signum: int, frame: Any) -> None:  # systemd's stop: take the workers down with us
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _term)
    job = Job(svc).start()
    print(f"fleet service on http://{args.host}:{args.port}/ (page /fleet/, operator token in "
          f"{'KIOSK_FLEET_ADMIN_TOKEN' if os.environ.get('KIOSK_FLEET_ADMIN_TOKEN') else data_dir / 'fleet' / 'admin.token'});"
          f" job every {rules.evaluate_every_s:g} s", file=sys.stderr)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)
        return 130
    finally:
        job.stop()
        db.close()


def _keygen(args: argparse.Namespace) -> int:
    from kiosk.fleet.artifacts import write_keypair

    priv, pub = write_keypair(Path(args.out))
    print(json.dumps({"private": str(priv), "public": str(pub)}))
    return 0


def _register(args: argparse.Namespace) -> int:
    from kiosk.fleet.agent import register_with_fleet
    from kiosk.security.keystore import KeyStore

    ks = KeyStore.open(Path(args.keys) if args.keys else Path(load().data_dir) / "keys",
                       passphrase=os.environ.get("KIOSK_KEY_PASSPHRASE"))
    out = register_with_fleet(args.url, _token(args), ks.public_identity(), institution=args.institution,
                              district=args.district, alg=args.alg)
    print(json.dumps(out))
    return 0


def _publish(args: argparse.Namespace) -> int:
    from kiosk.fleet import artifacts as art

    path = Path(args.path)
    if args.kind == "model_pack":
        if not (path / "manifest.json").is_file():
            raise InputError(f"{path} is not a model pack directory (no manifest.json)", field="path")
        blob = art.pack_tar(path)
    else:
        from firmware_bridge.firmware import SignedImage

        blob = path.read_bytes()
        SignedImage.from_bytes(blob)
    s = art.sign_artifact(art.load_private(Path(args.key)), args.kind, args.version, blob)
    out = _call(args, "POST", "/admin/artifacts", json={
        "kind": args.kind, "version": args.version, "sha256": s.sha256, "signature": s.signature,
        "blob_b64": base64.b64encode(blob).decode()})
    print(json.dumps(out))
    return 0


def _rollout(args: argparse.Namespace) -> int:
    if args.action == "start":
        if not args.target:
            raise InputError("give the artifact sha256", field="target")
        out = _call(args, "POST", "/admin/rollouts", json={"artifact_sha256": args.target, "kind": args.kind})
    elif args.action == "status":
        out = _call(args, "GET", f"/admin/rollouts/{int(args.target)}" if args.target else "/admin/rollouts")
    else:
        if not args.target.isdigit():
            raise InputError("give the rollout id", field="target")
        out = _call(args, "POST", f"/admin/rollouts/{args.target}/{args.action}")
    print(json.dumps(out, indent=1))
    return 0


def _demo(args: argparse.Namespace) -> int:
    """The fleet service in this process (SQLite under <data_dir>/fleet-demo) with simulated terminals
    beating every --beat-s: one runs out of paper, one goes silent, one loses its bridge; a model
    pack is published and rolled out to 10%. Prints the page URL and the operator token."""
    import random
    import secrets
    import tempfile

    import uvicorn
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from kiosk.fleet import artifacts as art
    from kiosk.fleet.agent import FleetAgent, StaticStatus
    from kiosk.fleet.app import create_app
    from kiosk.fleet.models import Publish, Registration
    from kiosk.fleet.rules import load_rules
    from kiosk.security.replay import RequestSigner

    base = _data_dir(args) / "fleet-demo"
    base.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("KIOSK_SQLITE_SYNCHRONOUS", "NORMAL")
    token = os.environ.get("KIOSK_FLEET_ADMIN_TOKEN") or secrets.token_urlsafe(12)
    os.environ["KIOSK_FLEET_ADMIN_TOKEN"] = token
    db_path = base / "fleet.db"
    for suffix in ("", "-wal", "-shm"):
        Path(str(db_path) + suffix).unlink(missing_ok=True)
    op = Ed25519PrivateKey.generate()
    rules = load_rules()
    rules = type(rules)(rules.rules, rules.rollout, evaluate_every_s=max(1.0, args.beat_s), history_days=1)
    app = create_app(f"sqlite:///{db_path}", data_dir=base, rules=rules, operator_pub=art.public_pem(op.public_key()),
                     job=True)
    svc = app.state.service
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=args.port, log_level="warning", lifespan="off"))
    th = threading.Thread(target=server.run, daemon=True)
    th.start()
    while not server.started:
        if not th.is_alive():
            raise ConfigError(f"port {args.port} is in use", code="port_in_use", field="--port")
        time.sleep(0.05)
    url = f"http://127.0.0.1:{args.port}"
    rng = random.Random(1)
    agents = []
    tmp = tempfile.TemporaryDirectory(prefix="kiosk-fleet-demo-")
    for i in range(args.terminals):
        key = Ed25519PrivateKey.generate()
        tid = f"DEMO-{i:04d}"
        svc.register(Registration(terminal_id=tid, institution=f"H3702020{i % 5:04d}", district=f"37020{2 + i % 3}",
                                  key_id="v0001-demo", public_key=key.public_key().public_bytes(
                                      serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()))
        a = FleetAgent(url, RequestSigner(key, device_id=tid, key_id="v0001-demo"), StaticStatus(),
                       trust_key=op.public_key(), state_dir=Path(tmp.name) / tid)
        agents.append(a)
    # a small model pack made here (never real weights): rolled out to 1% then 10%
    pack = Path(tmp.name) / "pack"
    pack.mkdir()
    (pack / "demo.onnx").write_bytes(b"demo model bytes" * 64)
    import hashlib

    (pack / "manifest.json").write_text(json.dumps({"models": {"demo": {
        "file": "demo.onnx", "task": "demo", "input_size": [1, 1],
        "sha256": hashlib.sha256((pack / "demo.onnx").read_bytes()).hexdigest()}}, "thresholds": {}}))
    blob = art.pack_tar(pack)
    s = art.sign_artifact(op, "model_pack", "demo.2", blob)
    svc.publish(Publish(kind="model_pack", version="demo.2", sha256=s.sha256, signature=s.signature,
                        blob_b64=base64.b64encode(blob).decode()), blob)
    ro = svc.start_rollout(s.sha256, "model_pack")
    print(f"fleet demo: {url}/fleet/ (operator token: {token}), {args.terminals} simulated terminals, "
          f"rollout {ro['id']} of model pack demo.2 at 1%", file=sys.stderr)
    stop = threading.Event()
    t_end = time.monotonic() + args.seconds if args.seconds else float("inf")
    n = 0
    try:
        while time.monotonic() < t_end:
            n += 1
            for i, a in enumerate(agents):
                if i == 1 and n > 3:
                    continue  # goes silent: offline after the rule's minutes
                a.status.periph["paper"] = "out" if i == 0 and n > 2 else "ok"
                a.status.periph["bridge"] = "disconnected" if i == 2 and 3 < n < 30 else "connected"
                ok = rng.randint(3, 9)
                a.counts.session("paid", n=ok)
                a.counts.session("failed", "no_face", n=rng.randint(0, 1))
                a.beat()
            if n == 5:
                svc.advance(ro["id"])
                print(f"fleet demo: rollout {ro['id']} advanced to 10%", file=sys.stderr)
            if stop.wait(args.beat_s):
                break
    except KeyboardInterrupt:
        pass
    finally:
        summary = svc.summary()
        server.should_exit = True
        th.join(5)
        app.state.job.stop()
        tmp.cleanup()
    print(json.dumps({"url": f"{url}/fleet/", "rounds": n, **summary, "rollout": svc.rollout(ro["id"])["terminals"]}))
    return 0
