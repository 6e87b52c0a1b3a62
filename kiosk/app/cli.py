"""Sub-commands of the kiosk application.

    kiosk demo [--serve] [--fleet] the whole system on one machine + a scripted counter session
    kiosk serve                   the kiosk app on a provisioned terminal (POS API + screen, 8740)
    kiosk pos-key add SYSTEM      create the API key of an integrating POS/HIS system
    kiosk check parties           the centre, the bank and the kiosks' orders agree (exit 1 naming each mismatch)
    kiosk reconcile DAY [--json]  day-end of this terminal's institution with the centre (3201/3202) and the bank
    kiosk provision ...           (G2) technician provisioning
"""
from __future__ import annotations

import argparse

from kiosk.config import load


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    d = sub.add_parser("demo", help="start the local services, the bridge simulator and the kiosk; run a scripted "
                                    "counter session; last stdout line is the result JSON")
    d.add_argument("--serve", action="store_true", help="stay up afterwards for a person to use in a browser")
    d.add_argument("--keep", action="store_true", help="keep var/demo from the last run (default: start fresh)")
    d.add_argument("--port", type=int, default=8740, help="kiosk app port (POS API + screen)")
    d.add_argument("--fleet", action="store_true", help="also run the operator's fleet service (page /fleet/) with "
                                                        "the demo terminal's fleet agent reporting into it")
    d.add_argument("--fleet-port", type=int, default=8750, help="fleet service port with --fleet (0: a free port)")
    d.set_defaults(func=_demo)

    sv = sub.add_parser("serve", help="run the kiosk app (POS API + screen) on a provisioned terminal")
    from kiosk.app.serve import add_arguments

    add_arguments(sv)
    sv.set_defaults(func=_serve)

    k = sub.add_parser("pos-key", help="API keys of the POS/HIS systems allowed to send orders")
    ks = k.add_subparsers(dest="action", metavar="ACTION")
    ks.required = True
    a = ks.add_parser("add", help="create (or show) the key of SYSTEM; prints it once on stdout")
    a.add_argument("system")
    a.set_defaults(func=_pos_key_add)

    c = sub.add_parser("check", help="checks across parties (each ledger alone: kiosk services check)")
    cs = c.add_subparsers(dest="check_command", metavar="WHAT")
    cs.required = True
    pc = cs.add_parser("parties", help="every draw on a standing settlement of the same institution within its "
                                       "cash share, every reversal refunded, every kiosk order matching both "
                                       "parties; exit 0 balanced, 1 naming each mismatch")
    pc.add_argument("--kiosk-db", action="append", default=[], metavar="URL|PATH",
                    help="a kiosk's database (repeatable; default: this data dir's kiosk.db if there is one)")
    pc.add_argument("--centre-db", default="", metavar="URL|PATH", help="default: the data dir's centre database")
    pc.add_argument("--bank-db", default="", metavar="URL|PATH", help="default: the data dir's bank database")
    pc.add_argument("--data-dir", default="")
    pc.add_argument("--json", action="store_true", help="print JSON instead of a table")
    pc.set_defaults(func=_check_parties)

    rc = sub.add_parser("reconcile", help="day-end: this terminal's journal against the centre (3201, 3202 when "
                                          "it disagrees) and the bank's clearing statement; exit 0 matching, 1 "
                                          "naming each discrepancy and what resolves it")
    rc.add_argument("day", nargs="?", default="yesterday", metavar="DAY",
                    help="yyyy-mm-dd, 'today' or 'yesterday' (Asia/Shanghai; default yesterday)")
    rc.add_argument("--json", action="store_true", help="print JSON instead of a table")
    rc.add_argument("--save", default="", metavar="DIR", help="also write the JSON report to DIR/reconcile-DAY.json")
    rc.add_argument("--data-dir", default="")
    rc.add_argument("--centre-port", type=int, default=8710)
    rc.add_argument("--bank-port", type=int, default=8720)
    rc.set_defaults(func=_reconcile)

    try:
        from kiosk.app.provision import register_provision
    except ImportError:
        return
    register_provision(sub)


def _demo(args: argparse.Namespace) -> int:
    from kiosk.app.demo import run_demo

    return run_demo(serve=args.serve, fresh=not args.keep, port=args.port,
                    fleet_port=args.fleet_port if args.fleet else None)


def _serve(args: argparse.Namespace) -> int:
    from kiosk.app.serve import serve

    return serve(args)


def _check_parties(args: argparse.Namespace) -> int:
    from pathlib import Path

    from kiosk.app.crosscheck import check_parties, format_report, is_kiosk_db, open_books

    settings = load()
    data_dir = Path(args.data_dir) if args.data_dir else Path(settings.data_dir)
    if args.centre_db and args.bank_db:
        centre_url, bank_url = args.centre_db, args.bank_db
    else:
        from kiosk.services.bank.app import bank_db_url
        from kiosk.services.centre.app import centre_db_url

        centre_url, bank_url = args.centre_db or centre_db_url(data_dir), args.bank_db or bank_db_url(data_dir)
    kiosks = list(args.kiosk_db)
    implicit = not kiosks
    if implicit:
        own = settings.database_url or str(data_dir / "kiosk.db")
        if "://" in own or Path(own).exists():
            kiosks = [own]
    dbs = open_books([centre_url, bank_url, *kiosks])
    try:
        books = [db for db in dbs[2:] if not implicit or is_kiosk_db(db)]  # a default that holds no orders: skipped
        rep = check_parties(dbs[0], dbs[1], books)
    finally:
        for db in dbs:
            db.close()
    print(format_report(rep, args.json))
    return 0 if rep.balanced else 1


def _reconcile(args: argparse.Namespace) -> int:
    from datetime import date, timedelta
    from pathlib import Path

    from kiosk.app.reconcile import format_report, reconcile
    from kiosk.app.stack import Ports, Stack
    from kiosk.clock import SystemClock, local_day
    from kiosk.errors import InputError
    from kiosk.storage import open_database

    today = local_day(SystemClock())
    if args.day in ("today", "yesterday"):
        day = today if args.day == "today" else today - timedelta(days=1)
    else:
        try:
            day = date.fromisoformat(args.day)
        except ValueError:
            raise InputError("must be yyyy-mm-dd, 'today' or 'yesterday'", field="DAY") from None
        if day > today:
            raise InputError(f"{day} has not begun yet in Asia/Shanghai", field="DAY")
    settings = load()
    data_dir = Path(args.data_dir) if args.data_dir else Path(settings.data_dir)
    st = Stack(data_dir=data_dir, settings=settings, ports=Ports(centre=args.centre_port, bank=args.bank_port))
    st.load_identity()
    centre, bank = st.clients()
    db = open_database(settings.database_url or f"sqlite:///{data_dir / 'kiosk.db'}")
    from dataclasses import replace

    from kiosk.app.fleet_link import record_day_end
    from kiosk.errors import KioskError

    fleet = replace(st.settings, data_dir=data_dir) if st.settings.fleet_url else None  # the agent reports it
    try:
        rep = reconcile(db, centre, bank, day)
    except KioskError:
        if fleet is not None:
            record_day_end(fleet, day, "failed")
        raise
    finally:
        db.close()
        centre.close()
        if bank is not None:
            bank.close()
    if fleet is not None:
        record_day_end(fleet, day, "ok" if rep.matched else "mismatch")
    if args.save:
        import os

        out = Path(args.save)
        out.mkdir(parents=True, exist_ok=True)
        tmp = out / f".reconcile-{day.isoformat()}.json.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(format_report(rep, True) + "\n")
        os.replace(tmp, out / f"reconcile-{day.isoformat()}.json")
    print(format_report(rep, args.json))
    return 0 if rep.matched else 1


def _pos_key_add(args: argparse.Namespace) -> int:
    import re

    from kiosk.app.pos_auth import add_system
    from kiosk.errors import InputError

    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", args.system):
        raise InputError("1-64 letters, digits, '_', '.', '-'", field="system")
    print(add_system(load().data_dir, args.system))
    return 0
