from __future__ import annotations

import json
import subprocess
import sys
from datetime import date, datetime
from pathlib import Path

from kiosk.clock import SHANGHAI, ManualClock
from kiosk.credit import CreditService
from kiosk.storage import open_database


def kiosk(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kiosk.cli", *args], capture_output=True, text=True, timeout=60)


def test_check_and_statement_commands(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'k.db'}"
    db = open_database(url)
    svc = CreditService(db, ManualClock(datetime(2026, 1, 1, 12, tzinfo=SHANGHAI)))
    svc.open("o", "h", date(1990, 1, 1), 5)
    svc.draw("d", "h", 12_300, "bill-1")
    p = kiosk("credit", "check", "--db", url)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["ok"] is True
    p = kiosk("credit", "statement", "h", "--db", url)
    assert p.returncode == 0 and json.loads(p.stdout)["draws"][0]["original"] == "123.00"
    # a projection edited behind the journal's back is found
    db.run(lambda tx: tx.execute("UPDATE credit_draws SET unpaid_fen = 1"))
    db.close()
    p = kiosk("credit", "check", "--db", url)
    assert p.returncode == 1
    assert any("draw bill-1: unpaid 1" in x for x in json.loads(p.stdout)["problems"])
    p = kiosk("credit", "check", "--db", f"sqlite:///{tmp_path / 'missing.db'}")
    assert p.returncode == 2 and "no database" in p.stderr
