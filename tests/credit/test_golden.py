"""Golden timelines worked out by hand, run through the replay tool.

Conventions: daily rate 0.05 %, rounded half-up per draw per day; day 0 is the
draw's date, days 0..59 are free. 2026 is not a leap year: from 2026-01-01,
day 59 is 2026-03-01 and day 60 is 2026-03-02.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kiosk.credit.replay import replay
from kiosk.storage import Database
from kiosk.storage.testing import scratch_database


def ev(date: str, op: str, **kw: object) -> dict[str, object]:
    return {"date": date, "op": op, **kw}


OPEN5 = ev("2026-01-01", "open", holder="h", birth_date="1990-06-15", insured_years=5)  # limit 20,000


def run(events: list[dict[str, object]], as_of: str, db: Database | None = None) -> dict[str, object]:
    scenario = {"events": events, "as_of": as_of}
    if db is not None:
        return replay(scenario, db)
    with scratch_database("sqlite") as d:
        return replay(scenario, d)


def state(limit: str, available: str, principal: str = "0.00", i_unpaid: str = "0.00", i_paid: str = "0.00",
          refunded: str = "0.00", overdue: bool = False) -> dict[str, object]:
    return {"limit": limit, "available": available, "principal_outstanding": principal,
            "interest_unpaid": i_unpaid, "interest_paid": i_paid, "refunded_cash": refunded, "overdue": overdue}


def test_repay_on_day_59_is_free() -> None:
    # draw 1000.00 on 01-01; repay 1000.00 on 03-01 (day 59): no interest at all, even by 03-10.
    out = run([OPEN5, ev("2026-01-01", "draw", payer="h", amount="1000.00", ref="d1"),
               ev("2026-03-01", "repay", holder="h", amount="1000.00")], "2026-03-10")
    assert out == {"results": ["ok", "ok", "ok"], "state": state("20000.00", "20000.00")}


def test_repay_on_day_60_costs_one_day() -> None:
    # 03-02 is day 60: accrual first, 100000 fen x 0.0005 = 50 fen -> owed 1000.50.
    # 1000.51 is refused whole; 1000.00 pays 0.50 interest + 999.50 principal, leaving 0.50 unpaid
    # on a day-60 draw -> overdue; the last 0.50 clears it.
    out = run([OPEN5, ev("2026-01-01", "draw", payer="h", amount="1000.00", ref="d1"),
               ev("2026-03-02", "repay", holder="h", amount="1000.51"),
               ev("2026-03-02", "repay", holder="h", amount="1000.00"),
               ev("2026-03-02", "draw", payer="h", amount="1.00", ref="d2")], "2026-03-02")
    assert out["results"] == ["ok", "ok", "overpayment", "ok", "line_overdue"]
    assert out["state"] == state("20000.00", "19999.50", "0.50", "0.00", "0.50", overdue=True)
    out = run([OPEN5, ev("2026-01-01", "draw", payer="h", amount="1000.00", ref="d1"),
               ev("2026-03-02", "repay", holder="h", amount="1000.50")], "2026-03-02")
    assert out == {"results": ["ok", "ok", "ok"], "state": state("20000.00", "20000.00", i_paid="0.50")}


def test_partial_repayment_across_two_draws_oldest_first() -> None:
    # limit 10,000 (3 years). d1 333.33 on 01-01, d2 200.00 on 01-02.
    # 03-02: d1 day 60 -> round(33333 x 0.0005 = 16.6665) = 17 fen.
    # 03-03: d1 day 61 -> 17 fen; d2 day 60 -> 20000 x 0.0005 = 10 fen. Interest 0.44.
    # repay 400.00 on 03-03: 0.44 interest, then 333.33 to d1, 66.23 to d2 -> d2 owes 133.77 (overdue).
    out = run([ev("2026-01-01", "open", holder="h", birth_date="1980-01-01", insured_years=3),
               ev("2026-01-01", "draw", payer="h", amount="333.33", ref="d1"),
               ev("2026-01-02", "draw", payer="h", amount="200.00", ref="d2"),
               ev("2026-03-03", "repay", holder="h", amount="400.00")], "2026-03-03")
    assert out["results"] == ["ok"] * 4
    assert out["state"] == state("10000.00", "9866.23", "133.77", "0.00", "0.44", overdue=True)
    # as of 03-05 two more days on d2: round(13377 x 0.0005 = 6.6885) = 7 fen per day -> 0.14
    out = run([ev("2026-01-01", "open", holder="h", birth_date="1980-01-01", insured_years=3),
               ev("2026-01-01", "draw", payer="h", amount="333.33", ref="d1"),
               ev("2026-01-02", "draw", payer="h", amount="200.00", ref="d2"),
               ev("2026-03-03", "repay", holder="h", amount="400.00")], "2026-03-05")
    assert out["state"] == state("10000.00", "9866.23", "133.77", "0.14", "0.44", overdue=True)


def test_partial_repayment_inside_free_period() -> None:
    # d1 300.00 (01-01), d2 200.00 (01-10); repay 400.00 on 02-01: d1 cleared, d2 owes 100.00.
    # d2's day 60 is 03-11: as of 03-10 nothing accrued, not overdue; as of 03-13: 3 x 5 fen.
    evs = [ev("2026-01-01", "open", holder="h", birth_date="1980-01-01", insured_years=4),
           ev("2026-01-01", "draw", payer="h", amount="300.00", ref="d1"),
           ev("2026-01-10", "draw", payer="h", amount="200.00", ref="d2"),
           ev("2026-02-01", "repay", holder="h", amount="400.00")]
    assert run(evs, "2026-03-10")["state"] == state("10000.00", "9900.00", "100.00")
    assert run(evs, "2026-03-13")["state"] == state("10000.00", "9900.00", "100.00", "0.15", overdue=True)


def test_overdue_freeze_and_unfreeze() -> None:
    # limit 2,000 (0 years). d1 100.00 on 01-01; hold placed 01-05. On 03-02 (day 60) accrue 0.05:
    # draws and new holds are refused; capturing the existing hold is allowed. repay 100.00 pays
    # 0.05 interest first and 99.95 principal, so d1 still owes 0.05 -> still frozen; repay 0.05 unfreezes.
    out = run([ev("2026-01-01", "open", holder="h", birth_date="2000-01-01", insured_years=0),
               ev("2026-01-01", "draw", payer="h", amount="100.00", ref="d1"),
               ev("2026-01-05", "hold", payer="h", amount="300.00", ref="h1"),
               ev("2026-03-02", "draw", payer="h", amount="50.00", ref="d2"),
               ev("2026-03-02", "hold", payer="h", amount="50.00", ref="h2"),
               ev("2026-03-02", "capture", ref="h1", amount="200.00"),
               ev("2026-03-02", "repay", holder="h", amount="100.00"),
               ev("2026-03-02", "draw", payer="h", amount="50.00", ref="d2"),
               ev("2026-03-02", "repay", holder="h", amount="0.05"),
               ev("2026-03-02", "draw", payer="h", amount="50.00", ref="d2")], "2026-03-02")
    assert out["results"] == ["ok", "ok", "ok", "line_overdue", "line_overdue", "ok", "ok", "line_overdue", "ok", "ok"]
    # owed: h1's draw 200.00 (dated 03-02) + d2 50.00
    assert out["state"] == state("2000.00", "1750.00", "250.00", "0.00", "0.05")


def test_hold_then_capture_below_the_hold() -> None:
    # limit 5,000. hold 3000 (01-03) leaves 2000 available; 2500 refused, 2000 ok.
    # capture 1800 on 01-10 draws 1800 dated 01-10 and releases 1200 -> available 1200.
    # As of 03-10: d1 (01-04) is at day 65: days 60..65 = 6 x 1.00 = 6.00; the captured draw is at
    # day 59 (free) - it would already accrue if it were dated at the hold (01-03).
    out = run([ev("2026-01-01", "open", holder="h", birth_date="1990-01-01", insured_years=1),
               ev("2026-01-03", "hold", payer="h", amount="3000.00", ref="h1"),
               ev("2026-01-04", "draw", payer="h", amount="2500.00", ref="d1"),
               ev("2026-01-04", "draw", payer="h", amount="2000.00", ref="d1"),
               ev("2026-01-10", "capture", ref="h1", amount="1800.00"),
               ev("2026-01-10", "capture", ref="h1", amount="1.00"),
               ev("2026-01-10", "release", ref="h1"),
               ev("2026-01-10", "capture", ref="zz", amount="1.00"),
               ev("2026-01-11", "hold", payer="h", amount="500.00", ref="h2"),
               ev("2026-01-11", "capture", ref="h2", amount="500.01"),
               ev("2026-01-11", "release", ref="h2"),
               ev("2026-01-12", "refund", ref="h2", amount="1.00")], "2026-03-10")
    assert out["results"] == ["ok", "ok", "exceeds_available", "ok", "ok", "unknown_ref", "unknown_ref",
                              "unknown_ref", "ok", "exceeds_hold", "ok", "unknown_ref"]
    assert out["state"] == state("5000.00", "1200.00", "3800.00", "6.00", overdue=True)


def test_member_cap_in_a_new_month() -> None:
    # cap 500/month for m (spouse). Jan: 300 ok; 250 over (550); refund 100 of the 300 is not
    # netted, so 250 is still over; 200 fits exactly (500). The holder is not capped.
    # Feb 1 is a new month: 500 ok, then 0.01 over. No consent -> no_consent -> not_bound.
    # After unbind m is not_bound; a second unbind is not_bound.
    out = run([OPEN5,
               ev("2026-01-02", "bind", holder="h", member="m", relation="spouse", consent=True, monthly_cap="500.00"),
               ev("2026-01-20", "draw", payer="m", amount="300.00", ref="m1"),
               ev("2026-01-25", "draw", payer="m", amount="250.00", ref="m2"),
               ev("2026-01-25", "draw", payer="h", amount="250.00", ref="h1"),
               ev("2026-01-26", "refund", ref="m1", amount="100.00"),
               ev("2026-01-27", "draw", payer="m", amount="250.00", ref="m2"),
               ev("2026-01-31", "draw", payer="m", amount="200.00", ref="m2"),
               ev("2026-02-01", "draw", payer="m", amount="500.00", ref="m3"),
               ev("2026-02-01", "draw", payer="m", amount="0.01", ref="m4"),
               ev("2026-02-01", "bind", holder="h", member="p", relation="parent", consent=False, monthly_cap=None),
               ev("2026-02-01", "draw", payer="p", amount="1.00", ref="p1"),
               ev("2026-02-02", "unbind", holder="h", member="m"),
               ev("2026-02-03", "draw", payer="m", amount="1.00", ref="m5"),
               ev("2026-02-03", "unbind", holder="h", member="m")], "2026-02-03")
    assert out["results"] == ["ok", "ok", "ok", "member_cap_exceeded", "ok", "ok", "member_cap_exceeded", "ok",
                              "ok", "member_cap_exceeded", "no_consent", "not_bound", "ok", "not_bound", "not_bound"]
    # owed: m1 200 + h1 250 + m2 200 + m3 500 = 1150
    assert out["state"] == state("20000.00", "18850.00", "1150.00")


def test_refund_larger_than_unpaid_principal() -> None:
    # d1 1000; repay 700 leaves 300 unpaid. refund 500: 300 reduces d1, 200 back as cash.
    # refunds of d1 may total 1000: 500.01 more is refused, 500.00 is all cash, then 0.01 is refused.
    out = run([OPEN5, ev("2026-01-01", "draw", payer="h", amount="1000.00", ref="d1"),
               ev("2026-01-10", "repay", holder="h", amount="700.00"),
               ev("2026-01-11", "refund", ref="d1", amount="500.00"),
               ev("2026-01-11", "refund", ref="d1", amount="500.01"),
               ev("2026-01-12", "refund", ref="d1", amount="500.00"),
               ev("2026-01-12", "refund", ref="d1", amount="0.01"),
               ev("2026-01-12", "refund", ref="nope", amount="1.00"),
               ev("2026-01-12", "repay", holder="h", amount="0.01")], "2026-01-31")
    assert out["results"] == ["ok", "ok", "ok", "ok", "exceeds_original", "ok", "exceeds_original",
                              "unknown_ref", "overpayment"]
    assert out["state"] == state("20000.00", "20000.00", refunded="700.00")


def test_eligibility_and_no_line() -> None:
    # born 1965-03-02: on 2026-03-01 aged 60 (eligible); on 2026-03-02 aged 61.
    assert run([ev("2026-03-01", "open", holder="a", birth_date="1965-03-02", insured_years=0)],
               "2026-03-01")["state"]["limit"] == "2000.00"
    out = run([ev("2026-03-01", "draw", payer="a", amount="1.00", ref="x"),
               ev("2026-03-02", "open", holder="a", birth_date="1965-03-02", insured_years=9),
               ev("2026-03-02", "draw", payer="a", amount="1.00", ref="x"),
               ev("2026-03-02", "repay", holder="a", amount="1.00"),
               ev("2026-03-02", "refund", ref="x", amount="1.00"),
               ev("2026-03-02", "bind", holder="a", member="b", relation="child", consent=True, monthly_cap=None)],
              "2026-03-03")
    assert out["results"] == ["no_line", "ineligible_age", "no_line", "no_line", "no_line", "no_line"]
    assert out["state"] == state("0.00", "0.00")
    # 18th birthday on the day: eligible; the day before: not.
    assert run([ev("2026-05-10", "open", holder="y", birth_date="2008-05-10", insured_years=1)],
               "2026-05-10")["results"] == ["ok"]
    assert run([ev("2026-05-09", "open", holder="y", birth_date="2008-05-10", insured_years=1)],
               "2026-05-09")["results"] == ["ineligible_age"]


def test_draw_result_precedence() -> None:
    # overdue + over available + over cap: a stranger gets not_bound, a member line_overdue;
    # on a healthy line over both the limit and the cap: exceeds_available first.
    out = run([ev("2026-01-01", "open", holder="h", birth_date="1990-01-01", insured_years=0),
               ev("2026-01-01", "bind", holder="h", member="c", relation="child", consent=True, monthly_cap="10.00"),
               ev("2026-01-01", "draw", payer="c", amount="3000.00", ref="a"),
               ev("2026-01-01", "draw", payer="c", amount="10.00", ref="a"),
               ev("2026-03-02", "draw", payer="x", amount="3000.00", ref="b"),
               ev("2026-03-02", "draw", payer="c", amount="3000.00", ref="b"),
               ev("2026-03-02", "hold", payer="c", amount="3000.00", ref="b")], "2026-03-02")
    assert out["results"] == ["ok", "ok", "exceeds_available", "ok", "not_bound", "line_overdue", "line_overdue"]


@pytest.mark.postgres
def test_golden_timeline_is_identical_on_postgresql(db: Database) -> None:
    evs = [ev("2026-01-01", "open", holder="h", birth_date="1980-01-01", insured_years=3),
           ev("2026-01-01", "draw", payer="h", amount="333.33", ref="d1"),
           ev("2026-01-02", "draw", payer="h", amount="200.00", ref="d2"),
           ev("2026-03-03", "repay", holder="h", amount="400.00"),
           ev("2026-03-04", "refund", ref="d2", amount="150.00")]
    # refund 150 of d2 (133.77 + 1 day 7 fen interest on 03-04): 133.77 principal, 16.23 cash
    expected = {"results": ["ok"] * 5,
                "state": state("10000.00", "10000.00", "0.00", "0.07", "0.44", "16.23")}
    assert run(evs, "2026-03-04") == expected
    assert run(evs, "2026-03-04", db) == expected


def test_cli_replay_prints_json_and_names_bad_fields(tmp_path: Path) -> None:
    scen = tmp_path / "s.json"
    scen.write_text(json.dumps({"events": [OPEN5, ev("2026-01-01", "draw", payer="h", amount="12.34", ref="d")],
                                "as_of": "2026-01-02"}))
    p = subprocess.run([sys.executable, "-m", "kiosk.cli", "credit", "replay", str(scen)],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout) == {"results": ["ok", "ok"], "state": state("20000.00", "19987.66", "12.34")}
    scen.write_text(json.dumps({"events": [ev("2026-01-02", "repay", holder="h", amount="1"),
                                           ev("2026-01-01", "repay", holder="h", amount="1")], "as_of": "2026-01-02"}))
    p = subprocess.run([sys.executable, "-m", "kiosk.cli", "credit", "replay", str(scen)],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "events[1].date" in p.stderr and "Traceback" not in p.stderr


def test_auditor_capture_while_overdue_then_refund_the_captured_hold() -> None:
    # limit 2,000. hold H 500 + draw D 100 on 01-01. 03-02 is D's day 60: 100.00 x 0.05 % = 0.05.
    # new hold refused (overdue); capture 600 > hold 500 -> exceeds_hold; capture 400 allowed while
    # overdue -> draw "H" 400 dated 03-02, 100 released. Refund of H: 400.01 > original; 150 reduces H.
    # repay 100.05 = 0.05 interest + D's 100 (oldest) -> not overdue, a new draw of 50 is ok.
    # owed H 250 + D2 50 = 300 -> available 1,700.
    out = run([ev("2026-01-01", "open", holder="h", birth_date="1990-01-01", insured_years=0),
               ev("2026-01-01", "hold", payer="h", amount="500", ref="H"),
               ev("2026-01-01", "draw", payer="h", amount="100", ref="D"),
               ev("2026-03-02", "hold", payer="h", amount="10", ref="H2"),
               ev("2026-03-02", "capture", ref="H", amount="600"),
               ev("2026-03-02", "capture", ref="H", amount="400"),
               ev("2026-03-02", "refund", ref="H", amount="400.01"),
               ev("2026-03-02", "refund", ref="H", amount="150"),
               ev("2026-03-02", "repay", holder="h", amount="100.05"),
               ev("2026-03-02", "draw", payer="h", amount="50", ref="D2")], "2026-03-02")
    assert out["results"] == ["ok", "ok", "ok", "line_overdue", "exceeds_hold", "ok", "exceeds_original", "ok",
                              "ok", "ok"]
    assert out["state"] == state("2000.00", "1700.00", "300.00", "0.00", "0.05")


def test_auditor_member_hold_checked_against_cap_and_captured_in_the_next_month() -> None:
    # cap 100/month. Jan 31: draw 80; hold 30 would make 110 -> member_cap_exceeded; hold 20 ok.
    # Feb 1 capture 20 -> a February draw; 81 more would make 101 -> refused; 80 fits (100).
    # unbind -> not_bound; bind without consent -> no_consent (still not bound); rebind uncapped -> 500 ok.
    out = run([OPEN5,
               ev("2026-01-01", "bind", holder="h", member="m", relation="child", consent=True, monthly_cap="100.00"),
               ev("2026-01-31", "draw", payer="m", amount="80", ref="a"),
               ev("2026-01-31", "hold", payer="m", amount="30", ref="b"),
               ev("2026-01-31", "hold", payer="m", amount="20", ref="b"),
               ev("2026-02-01", "capture", ref="b", amount="20"),
               ev("2026-02-01", "draw", payer="m", amount="81", ref="c"),
               ev("2026-02-01", "draw", payer="m", amount="80", ref="c"),
               ev("2026-02-01", "unbind", holder="h", member="m"),
               ev("2026-02-01", "draw", payer="m", amount="1", ref="d"),
               ev("2026-02-01", "bind", holder="h", member="m", relation="spouse", consent=False, monthly_cap=None),
               ev("2026-02-01", "draw", payer="m", amount="1", ref="d"),
               ev("2026-02-01", "bind", holder="h", member="m", relation="spouse", consent=True, monthly_cap=None),
               ev("2026-02-01", "draw", payer="m", amount="500", ref="d")], "2026-02-01")
    assert out["results"] == ["ok", "ok", "ok", "member_cap_exceeded", "ok", "ok", "member_cap_exceeded", "ok",
                              "ok", "not_bound", "no_consent", "not_bound", "ok", "ok"]
    assert out["state"] == state("20000.00", "19320.00", "680.00")


def test_auditor_interest_on_three_draws_then_exact_payoff() -> None:
    # a 100 + b 200 on 01-01 (day 60 = 03-02), c 300 on 01-02 (day 60 = 03-03).
    # 03-02: a 5 + b 10 fen; 03-03: a 5 + b 10 + c 15 -> 0.45. repay 150.45: 0.45, a 100, b 50.
    # 03-04: b 150.00 x 0.05 % = 7.5 -> 8 fen (half-up), c 15 fen -> 0.23 unpaid; owed 450.23:
    # 450.24 is refused whole, 450.23 clears everything.
    evs = [OPEN5, ev("2026-01-01", "draw", payer="h", amount="100", ref="a"),
           ev("2026-01-01", "draw", payer="h", amount="200", ref="b"),
           ev("2026-01-02", "draw", payer="h", amount="300", ref="c"),
           ev("2026-03-03", "repay", holder="h", amount="150.45")]
    assert run(evs, "2026-03-04")["state"] == state("20000.00", "19550.00", "450.00", "0.23", "0.45", overdue=True)
    out = run(evs + [ev("2026-03-04", "repay", holder="h", amount="450.24"),
                     ev("2026-03-04", "repay", holder="h", amount="450.23")], "2026-03-31")
    assert out["results"] == ["ok"] * 5 + ["overpayment", "ok"]
    assert out["state"] == state("20000.00", "20000.00", i_paid="0.68")


def test_auditor_leap_day_birthdays_and_tiers() -> None:
    # born 29 Feb: in a common year the birthday counts on 1 March (documented in rules.age_on).
    def opened(day: str, born: str, years: int = 1) -> dict[str, object]:
        return run([ev(day, "open", holder="h", birth_date=born, insured_years=years)], day)

    assert opened("2026-02-28", "2008-02-29")["results"] == ["ineligible_age"]   # 17
    assert opened("2026-03-01", "2008-02-29")["results"] == ["ok"]               # 18
    assert opened("2025-02-28", "1964-02-29")["results"] == ["ok"]               # 60
    assert opened("2025-03-01", "1964-02-29")["results"] == ["ineligible_age"]   # 61
    assert opened("2024-02-29", "2006-03-01")["results"] == ["ineligible_age"]    # 17 on a leap day
    limits = {y: opened("2026-01-01", "1990-01-01", y)["state"]["limit"] for y in (0, 1, 2, 3, 4, 5, 40)}
    assert limits == {0: "2000.00", 1: "5000.00", 2: "5000.00", 3: "10000.00", 4: "10000.00", 5: "20000.00",
                      40: "20000.00"}


# -- second audit: four more timelines worked out by hand from settlement-rules.md ("Credit line") --

def test_audit2_refunds_unfreeze_an_overdue_line_and_interest_stays_owed() -> None:
    # limit 5,000 (2 years). d1 1234.56 on 04-10 (day 60 = 06-09): 123456 x 0.05 % = 61.728 -> 62 fen/day.
    # d2 10.00 on 04-20 (day 60 = 06-19): 1000 x 0.05 % = 0.5 -> 1 fen/day (half-up).
    # 06-10: accrue 06-09 + 06-10 on d1 = 1.24. refund 1000 -> d1 owes 234.56, still overdue.
    # refund 300 more would total 1300 > 1234.56; refund 234.56 clears d1 (no cash): oldest unpaid is
    # now d2 at day 51 -> not overdue, a draw is ok although 1.24 interest is still unpaid.
    # 06-19, 06-20: d2 accrues 1 fen each -> 1.26. repay 11.26: interest, then d2; d3 (1.00) is left.
    evs = [ev("2026-04-10", "open", holder="h", birth_date="1990-01-01", insured_years=2),
           ev("2026-04-10", "draw", payer="h", amount="1234.56", ref="d1"),
           ev("2026-04-20", "draw", payer="h", amount="10.00", ref="d2"),
           ev("2026-06-10", "refund", ref="d1", amount="1000.00"),
           ev("2026-06-10", "draw", payer="h", amount="1.00", ref="d3"),
           ev("2026-06-10", "refund", ref="d1", amount="300.00"),
           ev("2026-06-10", "refund", ref="d1", amount="234.56"),
           ev("2026-06-10", "draw", payer="h", amount="1.00", ref="d3")]
    out = run(evs, "2026-06-20")
    assert out["results"] == ["ok", "ok", "ok", "ok", "line_overdue", "exceeds_original", "ok", "ok"]
    assert out["state"] == state("5000.00", "4989.00", "11.00", "1.26", overdue=True)
    # owed 1.26 + 10.00 + 1.00 = 12.26: 12.27 is refused whole
    out = run(evs + [ev("2026-06-20", "repay", holder="h", amount="12.27"),
                     ev("2026-06-20", "repay", holder="h", amount="11.26"),
                     ev("2026-06-20", "repay", holder="h", amount="1.01")], "2026-06-20")
    assert out["results"][8:] == ["overpayment", "ok", "overpayment"]
    assert out["state"] == state("5000.00", "4999.00", "1.00", "0.00", "1.26")


AUDIT2_MONTH = [ev("2026-02-27", "open", holder="h", birth_date="2008-02-27", insured_years=0),
                ev("2026-02-27", "bind", holder="h", member="m", relation="parent", consent=True, monthly_cap="1000.00"),
                ev("2026-02-28", "draw", payer="m", amount="600.00", ref="m1"),
                ev("2026-02-28", "hold", payer="m", amount="500.00", ref="H"),
                ev("2026-02-28", "hold", payer="m", amount="400.00", ref="H"),
                ev("2026-02-28", "draw", payer="h", amount="900.00", ref="h1"),
                ev("2026-03-01", "draw", payer="m", amount="200.00", ref="m2"),
                ev("2026-03-01", "capture", ref="H", amount="350.00"),
                ev("2026-03-01", "draw", payer="m", amount="150.00", ref="m2"),
                ev("2026-03-01", "repay", holder="h", amount="1000.00"),
                ev("2026-03-02", "draw", payer="m", amount="600.00", ref="m3"),
                ev("2026-03-02", "draw", payer="m", amount="500.00", ref="m3"),
                ev("2026-03-02", "unbind", holder="h", member="m"),
                ev("2026-03-02", "draw", payer="m", amount="10000.00", ref="m4"),
                ev("2026-03-02", "refund", ref="H", amount="350.00")]


def test_audit2_member_cap_and_capture_across_the_february_march_boundary() -> None:
    # holder turns 18 on the day she opens (eligible); limit 2,000 (0 years); parent m capped 1,000/month.
    # 02-28: m draws 600; a hold of 500 would make 1,100 -> cap; hold 400 ok; holder draws 900 -> available 100.
    # 03-01 (new month): m's 200 exceeds available (100) first; capture 350 of the 400 hold -> a March draw
    # "H" (50 released) -> available 150; m draws 150 (March: 500). repay 1,000 pays m's 600 then 400 of
    # the holder's 900 (same day, event order). 03-02: m 600 -> March 1,100 > cap; 500 fits (1,000).
    # unbound m over the limit -> not_bound first. refund H 350 reduces H's unpaid to 0.
    evs = AUDIT2_MONTH
    out = run(evs, "2026-03-31")
    assert out["results"] == ["ok", "ok", "ok", "member_cap_exceeded", "ok", "ok", "exceeds_available", "ok", "ok",
                              "ok", "member_cap_exceeded", "ok", "ok", "not_bound", "ok"]
    # owed: h1 500 (02-28) + m2 150 (03-01) + m3 500 (03-02) = 1,150
    assert out["state"] == state("2000.00", "850.00", "1150.00")
    # day 60: 02-28 -> 04-29, 03-01 -> 04-30, 03-02 -> 05-01. As of 05-01:
    # h1 3 x 25 fen + m2 2 x round(7.5) = 2 x 8 fen + m3 1 x 25 fen = 1.16
    assert run(evs, "2026-05-01")["state"] == state("2000.00", "850.00", "1150.00", "1.16", overdue=True)


def test_audit2_holds_are_not_owed_and_same_day_draws_repay_in_event_order() -> None:
    # limit 20,000 (10 years). a 5,000 and b 3,000 on 01-15 (day 59 = 03-15, day 60 = 03-16), hold 12,000:
    # available exactly 0, so 0.01 more is refused for a draw and for a hold. 03-15: 8,000.01 is more than
    # the 8,000 owed (a hold is not owed) -> refused whole; release H.
    # 03-17: accrue 03-16 + 03-17: a 2.50 + b 1.50 a day -> 8.00. repay 4,000: 8.00 interest, 3,992 to a
    # (the earlier event of the day) -> a owes 1,008.00; still overdue.
    # 03-18: a round(100800 x 0.05 %) = 50 fen + b 1.50 = 2.00. repay 1,010 clears interest and a; b is
    # still unpaid at day 62 -> a new hold is refused; refunding b whole unfreezes; hold 1.00 ok.
    out = run([ev("2026-01-15", "open", holder="h", birth_date="1970-05-05", insured_years=10),
               ev("2026-01-15", "draw", payer="h", amount="5000.00", ref="a"),
               ev("2026-01-15", "draw", payer="h", amount="3000.00", ref="b"),
               ev("2026-01-15", "hold", payer="h", amount="12000.00", ref="H"),
               ev("2026-01-16", "draw", payer="h", amount="0.01", ref="c"),
               ev("2026-01-16", "hold", payer="h", amount="0.01", ref="H2"),
               ev("2026-03-15", "repay", holder="h", amount="8000.01"),
               ev("2026-03-15", "release", ref="H"),
               ev("2026-03-17", "repay", holder="h", amount="4000.00"),
               ev("2026-03-17", "draw", payer="h", amount="1.00", ref="c"),
               ev("2026-03-18", "repay", holder="h", amount="1010.00"),
               ev("2026-03-18", "hold", payer="h", amount="1.00", ref="H3"),
               ev("2026-03-18", "refund", ref="b", amount="3000.00"),
               ev("2026-03-18", "hold", payer="h", amount="1.00", ref="H3")], "2026-03-31")
    assert out["results"] == ["ok", "ok", "ok", "ok", "exceeds_available", "exceeds_available", "overpayment", "ok",
                              "ok", "line_overdue", "ok", "line_overdue", "ok", "ok"]
    assert out["state"] == state("20000.00", "19999.00", "0.00", "0.00", "10.00")


def test_audit2_refund_after_day_60_then_cash_and_payoff() -> None:
    # holder 18 on the day; limit 5,000 (1 year). d1 2,000 on 10-01 (day 60 = 11-30); d2 999.99 on 10-20
    # (day 60 = 12-19): round(99999 x 0.05 % = 49.9995) = 50 fen/day.
    # 11-29 (d1 day 59) repay 1,500: free, d1 owes 500. 12-01: accrue 11-30 + 12-01 on 500 = 2 x 25 fen.
    # refund 800 of d1: 500 principal + 300 cash. repay 0.51: 0.50 interest + 0.01 of d2 (999.98 left).
    # refund 1,200.01 would total 2,000.01 > 2,000; 1,200.00 is all cash (refunded cash 1,500).
    evs = [ev("2026-10-01", "open", holder="h", birth_date="2008-10-01", insured_years=1),
           ev("2026-10-01", "draw", payer="h", amount="2000.00", ref="d1"),
           ev("2026-10-20", "draw", payer="h", amount="999.99", ref="d2"),
           ev("2026-11-29", "repay", holder="h", amount="1500.00"),
           ev("2026-12-01", "refund", ref="d1", amount="800.00"),
           ev("2026-12-01", "repay", holder="h", amount="0.51"),
           ev("2026-12-01", "refund", ref="d1", amount="1200.01"),
           ev("2026-12-01", "refund", ref="d1", amount="1200.00")]
    out = run(evs, "2026-12-18")
    assert out["results"] == ["ok", "ok", "ok", "ok", "ok", "ok", "exceeds_original", "ok"]
    assert out["state"] == state("5000.00", "4000.02", "999.98", "0.00", "0.50", "1500.00")
    # 12-19 is d2's day 60: round(99998 x 0.05 % = 49.999) = 50 fen -> overdue at the end of the day
    assert run(evs, "2026-12-19")["state"] == state("5000.00", "4000.02", "999.98", "0.50", "0.50", "1500.00",
                                                    overdue=True)
    # 12-20: one more 0.50 -> owed 999.98 + 1.00; a fen more is refused whole
    out = run(evs + [ev("2026-12-20", "repay", holder="h", amount="1000.99"),
                     ev("2026-12-20", "repay", holder="h", amount="1000.98")], "2026-12-31")
    assert out["results"][8:] == ["overpayment", "ok"]
    assert out["state"] == state("5000.00", "5000.00", "0.00", "0.00", "1.50", "1500.00")


@pytest.mark.postgres
def test_audit2_month_boundary_timeline_is_identical_on_postgresql(db: Database) -> None:
    out = run(AUDIT2_MONTH, "2026-05-01", db)
    assert out["results"] == ["ok", "ok", "ok", "member_cap_exceeded", "ok", "ok", "exceeds_available", "ok", "ok",
                              "ok", "member_cap_exceeded", "ok", "ok", "not_bound", "ok"]
    assert out["state"] == state("2000.00", "850.00", "1150.00", "1.16", overdue=True)
