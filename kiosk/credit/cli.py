"""`kiosk credit replay|check|statement|notify`."""
from __future__ import annotations

import argparse
import json
import os
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

from kiosk.errors import InputError


def _load_json(path: str) -> Any:
    p = Path(path)
    try:
        text = sys.stdin.read() if path == "-" else p.read_text(encoding="utf-8")
    except OSError as e:
        raise InputError(f"cannot read {path}: {e.strerror}", field="scenario") from None
    except UnicodeDecodeError:
        raise InputError(f"{path} is not UTF-8 text", field="scenario") from None
    try:  # numbers with a point are read exactly (Decimal), never through binary floats
        return json.loads(text, parse_float=Decimal)
    except json.JSONDecodeError as e:
        raise InputError(f"{path} is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}",
                         field="scenario") from None
    except (ValueError, RecursionError):  # a 5000-digit number, nesting deeper than the parser's stack
        raise InputError(f"{path} is not a usable JSON document (number too long or nesting too deep)",
                         field="scenario") from None


def default_db_url() -> str:
    """Where the credit journal lives: the bank's database (as `kiosk services run` opens it)."""
    from kiosk.config import load

    s = load()
    return os.environ.get("KIOSK_BANK_DB") or s.database_url or f"sqlite:///{s.data_dir / 'bank.db'}"


def _open(url: str | None):  # type: ignore[no-untyped-def]
    from kiosk.errors import StorageError
    from kiosk.storage import open_database
    from kiosk.storage.database import redact

    url = url or default_db_url()
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:" and not Path(url[len("sqlite:///"):]).exists():
        raise InputError(f"no database at {url[len('sqlite:///'):]}", field="db")
    db = open_database(url)
    try:  # never create an empty journal and then "prove" it balances
        db.read(lambda tx: tx.scalar("SELECT COUNT(*) FROM credit_lines"))
    except StorageError:
        db.close()
        raise InputError(f"{redact(url)} holds no credit journal (the bank's database has it)", field="db") from None
    return db


def _replay(args: argparse.Namespace) -> int:
    from kiosk.credit.replay import replay
    from kiosk.storage.testing import scratch_database

    scenario = _load_json(args.scenario)
    kind = "postgresql" if args.postgres else "sqlite"
    with scratch_database(kind, args.postgres) as db:
        out = replay(scenario, db)
    print(json.dumps(out, indent=2, ensure_ascii=False))
    return 0


def _service(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from kiosk.clock import SystemClock
    from kiosk.credit.service import CreditService

    return CreditService(_open(args.db), SystemClock())


def _check(args: argparse.Namespace) -> int:
    svc = _service(args)
    try:
        report = svc.check()
    finally:
        svc.db.close()
    print(json.dumps(report.to_json(), indent=2, ensure_ascii=False))
    return 0 if report.ok else 1


def _statement(args: argparse.Namespace) -> int:
    svc = _service(args)
    try:
        st = svc.statement(args.holder)
    finally:
        svc.db.close()
    print(json.dumps(st, indent=2, ensure_ascii=False))
    return 0 if st["code"] == "ok" else 1


def _notify(args: argparse.Namespace) -> int:
    """The daily job and a minimal sender: accrue every line to today (which queues the
    "approaching day 59" and overdue notices of lines nobody touched), then print each
    pending holder notification as one JSON line."""
    svc = _service(args)
    try:
        if not args.no_sweep:
            svc.sweep()
        sent, failed = svc.drain_notifications(
            lambda m: print(json.dumps({"id": m.id, "topic": m.topic, **m.payload}, ensure_ascii=False)))
    finally:
        svc.db.close()
    print(f"credit notify: {sent} sent, {failed} failed", file=sys.stderr)
    return 0 if not failed else 1


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("credit", help="credit line: replay a timeline, check the journal")
    cs = p.add_subparsers(dest="credit_command", metavar="ACTION")
    cs.required = True
    r = cs.add_parser("replay", help="replay SCENARIO.json against a fresh line in a temporary database")
    r.add_argument("scenario", help="scenario JSON file ('-' for stdin)")
    r.add_argument("--postgres", metavar="URL", help="use a scratch schema on this PostgreSQL server instead of SQLite")
    r.set_defaults(func=_replay)
    c = cs.add_parser("check", help="prove the journal balances and matches the derived state")
    c.add_argument("--db", metavar="URL", help="database URL (default: the bank's: $KIOSK_BANK_DB, "
                   "$KIOSK_DATABASE_URL or <data_dir>/bank.db)")
    c.set_defaults(func=_check)
    s = cs.add_parser("statement", help="a holder's line, draws, holds and family members")
    s.add_argument("holder")
    s.add_argument("--db", metavar="URL")
    s.set_defaults(func=_statement)
    n = cs.add_parser("notify", help="accrue every line to today, then send pending holder notifications "
                      "(prints them as JSON lines)")
    n.add_argument("--db", metavar="URL")
    n.add_argument("--no-sweep", action="store_true", help="only drain what is queued")
    n.set_defaults(func=_notify)
