"""`kiosk services ...`: run, seed and check the insurance centre and the bank."""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from kiosk.config import load
from kiosk.errors import ConfigError, InputError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("services", help="the insurance centre (8710) and the bank (8720) the terminals talk to")
    s = p.add_subparsers(dest="services_command", metavar="ACTION")
    s.required = True

    r = s.add_parser("run", help="start both services (uvicorn workers) until interrupted")
    r.add_argument("--db", default="", help="database URL (sqlite:///... or postgresql://...); default: "
                   "one SQLite file per service under the data dir")
    r.add_argument("--workers", type=int, default=1)
    r.add_argument("--host", default="127.0.0.1")
    r.add_argument("--centre-port", type=int, default=8710)
    r.add_argument("--bank-port", type=int, default=8720)
    r.add_argument("--data-dir", default="")
    r.set_defaults(func=_run)

    sd = s.add_parser("seed", help="create a region of synthetic insured people plus the named demo people")
    sd.add_argument("--people", type=int, default=1000)
    sd.add_argument("--region", default="370202", help="6-digit area code (370202 Qingdao, 370602 Yantai)")
    sd.add_argument("--db", default="")
    sd.add_argument("--data-dir", default="")
    sd.add_argument("--no-demo", action="store_true", help="skip the named demo people (no face models needed)")
    sd.set_defaults(func=_seed)

    t = s.add_parser("register-terminal", help="register a terminal's SM2 public key with both services")
    t.add_argument("--app-id", required=True)
    t.add_argument("--sm2-public", required=True, help="hex 04||x||y (kiosk keys show) or a PEM file path")
    t.add_argument("--fixmedins-code", required=True)
    t.add_argument("--app-secret", default="")
    t.add_argument("--db", default="")
    t.add_argument("--data-dir", default="")
    t.set_defaults(func=_register)

    n = s.add_parser("notices", help="a person's insurance-app inbox at the centre (ec.notify: senseless charges, "
                     "visit summaries), newest first")
    n.add_argument("--psn-no", required=True)
    n.add_argument("--limit", type=int, default=100)
    n.add_argument("--db", default="")
    n.add_argument("--data-dir", default="")
    n.set_defaults(func=_notices)

    c = s.add_parser("check", help="check that every account and journal balances (exit 1 if not)")
    c.add_argument("--db", default="")
    c.add_argument("--data-dir", default="")
    c.set_defaults(func=_check)


def _data_dir(args: argparse.Namespace) -> Path:
    return Path(args.data_dir) if args.data_dir else Path(load().data_dir)


def db_urls(db: str, data_dir: Path) -> tuple[str, str]:
    """(centre URL, bank URL): one PostgreSQL database for both, or one SQLite file each
    (default `<data_dir>/centre.db` and `<data_dir>/bank.db`, or KIOSK_CENTRE_DB / KIOSK_BANK_DB)."""
    if not db:
        from kiosk.services.bank.app import bank_db_url
        from kiosk.services.centre.app import centre_db_url

        return centre_db_url(data_dir), bank_db_url(data_dir)
    if db.startswith("sqlite:///"):
        if not db.endswith(".db"):
            raise InputError("a SQLite URL must name a .db file", field="--db")
        base = db[len("sqlite:///"):-3]
        return f"sqlite:///{base}-centre.db", f"sqlite:///{base}-bank.db"
    if db.startswith(("postgresql://", "postgres://")):
        return db, db
    raise InputError("must be sqlite:///FILE.db or postgresql://...", field="--db")


def prepare(centre_url: str, bank_url: str, data_dir: Path) -> None:
    """Create keys and tables once, before workers start (they would race to do it)."""
    from kiosk.services.bank.app import build_bank
    from kiosk.services.centre.app import build_centre
    from kiosk.storage import open_database

    with open_database(centre_url) as db:
        build_centre(db, data_dir)
    with open_database(bank_url) as db:
        build_bank(db, data_dir)


def start_services(db: str, data_dir: Path, *, workers: int = 1, host: str = "127.0.0.1", centre_port: int = 8710,
                   bank_port: int = 8720, quiet: bool = True) -> list[subprocess.Popen]:
    """Start both services as uvicorn processes; returns them once both answer /health."""
    from kiosk.services.gateway import wait_for

    centre_url, bank_url = db_urls(db, data_dir)
    prepare(centre_url, bank_url, data_dir)
    env = dict(os.environ, KIOSK_CENTRE_DB=centre_url, KIOSK_BANK_DB=bank_url, KIOSK_DATA_DIR=str(data_dir))
    procs = []
    out = subprocess.DEVNULL if quiet else None
    for app, port in (("kiosk.services.centre.app:app_from_env", centre_port),
                      ("kiosk.services.bank.app:app_from_env", bank_port)):
        cmd = [sys.executable, "-m", "uvicorn", "--factory", app, "--host", host, "--port", str(port),
               "--workers", str(workers), "--no-access-log", "--log-level", "warning"]
        procs.append(subprocess.Popen(cmd, env=env, stdout=out, stderr=out, start_new_session=True))
    try:
        for port in (centre_port, bank_port):
            wait_for(f"http://{host}:{port}/health", 60)
    except Exception:
        stop_services(procs)
        raise
    return procs


def stop_services(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _run(args: argparse.Namespace) -> int:
    if args.workers < 1 or args.workers > 32:
        raise InputError("must be between 1 and 32", field="--workers")
    data_dir = _data_dir(args)
    # SIGTERM (systemd stop, timeout) must take the uvicorn children down too
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    procs = start_services(args.db, data_dir, workers=args.workers, host=args.host, centre_port=args.centre_port,
                           bank_port=args.bank_port, quiet=False)
    print(json.dumps({"centre": f"http://{args.host}:{args.centre_port}", "bank": f"http://{args.host}:{args.bank_port}",
                      "workers": args.workers, "admin_token_file": str(data_dir / "services" / "admin.token")}),
          flush=True)
    try:
        while all(p.poll() is None for p in procs):
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        stop_services(procs)
    return 0


def _seed(args: argparse.Namespace) -> int:
    from kiosk.services.centre.app import build_centre
    from kiosk.services.seed import seed_demo, seed_region
    from kiosk.storage import open_database

    if args.people < 0 or args.people > 2_000_000:
        raise InputError("must be between 0 and 2,000,000", field="--people")
    from kiosk.services.seed import REGION_INSUTYPE

    if args.region not in REGION_INSUTYPE:
        raise InputError(f"no institutions or policy profiles are configured for area {args.region!r}; "
                         f"known: {', '.join(sorted(REGION_INSUTYPE))}", field="--region")
    data_dir = _data_dir(args)
    centre_url, _ = db_urls(args.db, data_dir)
    with open_database(centre_url) as db:
        service, _gw = build_centre(db, data_dir)
        added = seed_region(db, service.keys, args.people, args.region)
        demo = [] if args.no_demo else seed_demo(db, service.keys, load().demo_faces)
    print(json.dumps({"region": args.region, "people_added": added, "demo_people": demo}, ensure_ascii=False))
    return 0


def _register(args: argparse.Namespace) -> int:
    import secrets

    from kiosk.services.bank.app import build_bank
    from kiosk.services.centre.app import build_centre
    from kiosk.storage import open_database

    from kiosk.services.gateway import check_registration

    pub = args.sm2_public
    if os.path.exists(pub):
        try:
            if Path(pub).stat().st_size > 16 * 1024:
                raise InputError(f"{pub} is too large for a PEM public key", field="--sm2-public")
            pub = Path(pub).read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError) as e:
            raise InputError(f"cannot read {pub} as a PEM file: {getattr(e, 'strerror', None) or e}",
                             field="--sm2-public") from None
    secret = args.app_secret or secrets.token_hex(16)
    try:  # before either service stores anything
        check_registration(args.app_id, secret, pub, args.fixmedins_code)
    except InputError as e:
        raise InputError(e.message, field="--" + (e.field or "app-id").replace("_", "-")) from None
    data_dir = _data_dir(args)
    centre_url, bank_url = db_urls(args.db, data_dir)
    out = {}
    for url, build, name in ((centre_url, build_centre, "centre"), (bank_url, build_bank, "bank")):
        with open_database(url) as db:
            _svc, gw = build(db, data_dir)
            gw.register_terminal(args.app_id, secret, pub, args.fixmedins_code)
            out[name] = gw.keys.public()
    print(json.dumps({"app_id": args.app_id, "app_secret": secret, "service_keys": out}))
    return 0


def _check(args: argparse.Namespace) -> int:
    from kiosk.services.bank.app import check_bank
    from kiosk.services.centre.check import check_centre
    from kiosk.storage import open_database

    data_dir = _data_dir(args)
    centre_url, bank_url = db_urls(args.db, data_dir)
    if not Path(centre_url[len("sqlite:///"):]).exists() and centre_url.startswith("sqlite"):
        raise ConfigError(f"no centre database at {centre_url}", code="no_database")
    with open_database(centre_url) as db:
        centre = check_centre(db)
    with open_database(bank_url) as db:
        bank = check_bank(db)
    print(json.dumps({"centre": centre, "bank": bank}))
    return 0 if centre["balanced"] and bank["balanced"] else 1


def _notices(args: argparse.Namespace) -> int:
    """The operator's (and the demo's) view of what the person's insurance app shows."""
    from kiosk.services.centre.service import notices_of
    from kiosk.storage import open_database

    if not 1 <= args.limit <= 1000:
        raise InputError("must be between 1 and 1000", field="--limit")
    centre_url, _ = db_urls(args.db, _data_dir(args))
    if centre_url.startswith("sqlite") and not Path(centre_url[len("sqlite:///"):]).exists():
        raise ConfigError(f"no centre database at {centre_url}", code="no_database")
    with open_database(centre_url) as db:
        has_table = db.read(lambda tx: tx.scalar("SELECT COUNT(*) FROM schema_migrations WHERE name = ?",
                                                 ("centre.007_visits",)))
        rows = notices_of(db, args.psn_no, args.limit) if has_table else []
    print(json.dumps({"psn_no": args.psn_no, "notices": rows}, ensure_ascii=False))
    return 0
