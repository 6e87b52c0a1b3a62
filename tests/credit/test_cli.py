from __future__ import annotations

import json
import subprocess
import sys
from datetime import date, datetime
from pathlib import Path

import pytest

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


OPEN = {"date": "2026-01-01", "op": "open", "holder": "h", "birth_date": "1990-01-01", "insured_years": 1}


def bind(**kw: object) -> dict[str, object]:
    return {"date": "2026-01-01", "op": "bind", "holder": "h", "member": "m", "relation": "spouse", "consent": True,
            "monthly_cap": None, **kw}


@pytest.mark.parametrize(("content", "needle"), [
    (b"\xff\xfe\x00", "scenario: "),                                         # not UTF-8
    (b"[" * 100_000 + b"]" * 100_000, "scenario: "),                         # deeper than the parser's stack
    (b'{"events": [], "as_of": ' + b"1" * 5000 + b"}", "scenario: "),        # int longer than Python converts
    (json.dumps({"events": [], "as_of": "20260101"}).encode(), "as_of: "),   # fromisoformat alone takes this
    (json.dumps({"events": [dict(OPEN, date="2026-W01-4")], "as_of": "2026-01-02"}).encode(), "events[0].date"),
    (json.dumps({"events": [dict(OPEN, insured_years="\u00b2")], "as_of": "2026-01-02"}).encode(),
     "events[0].insured_years"),
    (json.dumps({"events": [dict(OPEN, insured_years=10**30)], "as_of": "2026-01-02"}).encode(),
     "events[0].insured_years"),
    (json.dumps({"events": [dict(OPEN, holder="x" * 201)], "as_of": "2026-01-02"}).encode(), "events[0].holder"),
    (json.dumps({"events": [OPEN, bind(relation="sibling")], "as_of": "2026-01-02"}).encode(), "events[1].relation"),
    (json.dumps({"events": [OPEN, bind(monthly_cap="1e30")], "as_of": "2026-01-02"}).encode(),
     "events[1].monthly_cap"),
])
def test_replay_bad_input_is_one_line_naming_the_field(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                       content: bytes, needle: str) -> None:
    from kiosk.cli import main

    scen = tmp_path / "s.json"
    scen.write_bytes(content)
    assert main(["credit", "replay", str(scen)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"kiosk credit: {needle}"), err


def test_check_refuses_a_database_without_a_credit_journal(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """`check` on the terminal's own database must not create empty credit tables and call them balanced."""
    from kiosk.cli import main

    url = f"sqlite:///{tmp_path / 'kiosk.db'}"
    open_database(url).close()
    assert main(["credit", "check", "--db", url]) == 2
    assert "holds no credit journal" in capsys.readouterr().err
    db = open_database(url)
    assert db.read(lambda tx: tx.fetch_all("SELECT name FROM sqlite_master WHERE name LIKE 'credit%'")) == []
    db.close()
    # the default is the bank's database under the data dir
    monkeypatch.setenv("KIOSK_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("KIOSK_BANK_DB", raising=False)
    monkeypatch.delenv("KIOSK_DATABASE_URL", raising=False)
    bank = open_database(f"sqlite:///{tmp_path / 'bank.db'}")
    CreditService(bank, ManualClock(datetime(2026, 1, 1, 12, tzinfo=SHANGHAI))).open("o", "h", date(1990, 1, 1), 5)
    bank.close()
    assert main(["credit", "check"]) == 0
    assert json.loads(capsys.readouterr().out)["lines"] == 1


def test_replay_reads_json_numbers_exactly_and_monthly_cap_may_be_left_out(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # 4.9 insured years are 4 whole years (10,000); amounts as JSON numbers are the digits written
    # (12.34 + 0.1 + 1e2 = 112.44, no binary-float drift); a bind without monthly_cap is uncapped.
    from kiosk.cli import main

    scen = tmp_path / "s.json"
    scen.write_text('{"events": [{"date": "2026-01-01", "op": "open", "holder": "h", "birth_date": "1990-01-01", '
                    '"insured_years": 4.9}, {"date": "2026-01-01", "op": "bind", "holder": "h", "member": "m", '
                    '"relation": "spouse", "consent": true}, '
                    '{"date": "2026-01-01", "op": "draw", "payer": "m", "amount": 12.34, "ref": "a"}, '
                    '{"date": "2026-01-01", "op": "draw", "payer": "m", "amount": 0.1, "ref": "b"}, '
                    '{"date": "2026-01-01", "op": "draw", "payer": "h", "amount": 1e2, "ref": "c"}], '
                    '"as_of": "2026-01-01"}')
    assert main(["credit", "replay", str(scen)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["results"] == ["ok"] * 5
    assert (out["state"]["limit"], out["state"]["principal_outstanding"]) == ("10000.00", "112.44")
    scen.write_text(scen.read_text().replace("0.1,", "0.001,"))
    assert main(["credit", "replay", str(scen)]) == 2
    assert "events[3].amount: has more than 2 decimal places" in capsys.readouterr().err


def test_notify_queues_notices_of_lines_nobody_touched(tmp_path: Path) -> None:
    """A draw 53 days ago (Shanghai) on an idle line: `notify` itself must find it is approaching day 59."""
    from datetime import timedelta

    from kiosk.clock import SystemClock, local_day

    url = f"sqlite:///{tmp_path / 'bank.db'}"
    day = local_day(SystemClock()) - timedelta(days=53)
    db = open_database(url)
    svc = CreditService(db, ManualClock(datetime(day.year, day.month, day.day, 12, tzinfo=SHANGHAI)))
    svc.open("o", "h", date(1990, 1, 1), 5)
    svc.draw("d", "h", 12_300, "bill-1")
    db.close()
    p = kiosk("credit", "notify", "--db", url, "--no-sweep")
    assert p.returncode == 0 and p.stdout == ""
    p = kiosk("credit", "notify", "--db", url)
    assert p.returncode == 0, p.stderr
    msgs = [json.loads(line) for line in p.stdout.splitlines()]
    assert [(m["topic"], m["ref"], m["unpaid"]) for m in msgs] == [("credit.due_soon", "bill-1", "123.00")]
    assert kiosk("credit", "notify", "--db", url).stdout == ""  # sent once
