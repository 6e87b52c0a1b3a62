"""Model-based check: the service against a naive day-by-day simulator.

The simulator below is written independently of kiosk.credit.rules: it walks
every calendar day, accrues interest per draw per day with Decimal half-up
rounding, and applies the events in order. Random timelines (holder only,
draws/holds/captures/releases/repays/refunds over up to ~200 days) must give
the same result codes and the same final state as the replay tool.
"""
from __future__ import annotations

from datetime import date, timedelta
from decimal import ROUND_HALF_UP, Decimal

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from kiosk.credit.replay import replay
from kiosk.money import fen_to_yuan
from kiosk.storage import open_database

START = date(2026, 1, 1)
LIMIT = 500_000  # 2 insured years



def assert_replay_matches(events: list[dict], as_of: date, expected: dict) -> None:
    """The replay tool on a fresh in-memory database gives what the naive simulator gives
    (the open event, which the simulator leaves out, answers ok)."""
    expected["results"].insert(0, "ok")
    db = open_database("sqlite:///:memory:")
    try:
        got = replay({"events": events, "as_of": as_of.isoformat()}, db)
    finally:
        db.close()
    assert got == expected

def simulate(events: list[dict], as_of: date, limit: int = LIMIT) -> dict:  # type: ignore[type-arg]
    draws: list[dict] = []  # type: ignore[type-arg]
    holds: dict[str, dict] = {}  # type: ignore[type-arg]
    bound: dict[str, int | None] = {}  # family members -> monthly cap (fen) or None
    interest = paid = cash = 0
    codes: list[str] = []
    last = START - timedelta(days=1)

    def fen(y: str) -> int:
        return int(Decimal(y) * 100)

    def advance(to: date) -> None:
        nonlocal last, interest
        d = last + timedelta(days=1)
        while d <= to:
            for dr in draws:
                if dr["unpaid"] > 0 and (d - dr["day"]).days >= 60:
                    interest += int((Decimal(dr["unpaid"]) * Decimal("0.0005")).quantize(Decimal(1), ROUND_HALF_UP))
            d += timedelta(days=1)
        last = max(last, to)

    for e in events:
        day = date.fromisoformat(e["date"])
        advance(day)
        op = e["op"]
        principal = sum(d["unpaid"] for d in draws)
        held = sum(h["amount"] for h in holds.values() if h["open"])
        overdue = any(d["unpaid"] > 0 and (day - d["day"]).days >= 60 for d in draws)
        code = "ok"
        if op in ("draw", "hold"):
            amt = fen(e["amount"])
            payer = e["payer"]
            month = sum(d["orig"] for d in draws if d["payer"] == payer and d["day"].strftime("%Y%m") ==
                        day.strftime("%Y%m"))
            if payer != "h" and payer not in bound:
                code = "not_bound"
            elif overdue:
                code = "line_overdue"
            elif amt > limit - principal - held:
                code = "exceeds_available"
            elif payer != "h" and bound[payer] is not None and month + amt > bound[payer]:  # type: ignore[operator]
                code = "member_cap_exceeded"
            elif op == "draw":
                draws.append({"ref": e["ref"], "day": day, "unpaid": amt, "orig": amt, "refunded": 0, "payer": payer})
            else:
                holds[e["ref"]] = {"amount": amt, "open": True, "payer": payer}
        elif op == "bind":
            if not e["consent"]:
                code = "no_consent"
            else:
                bound[e["member"]] = None if e["monthly_cap"] is None else fen(e["monthly_cap"])
        elif op == "unbind":
            code = "ok" if bound.pop(e["member"], "none") != "none" else "not_bound"
        elif op in ("capture", "release"):
            h = holds.get(e["ref"])
            if h is None or not h["open"]:
                code = "unknown_ref"
            elif op == "capture" and fen(e["amount"]) > h["amount"]:
                code = "exceeds_hold"
            else:
                h["open"] = False
                if op == "capture" and fen(e["amount"]) > 0:
                    a = fen(e["amount"])
                    draws.append({"ref": e["ref"], "day": day, "unpaid": a, "orig": a, "refunded": 0,
                                  "payer": h["payer"]})
        elif op == "repay":
            amt = fen(e["amount"])
            if amt > interest + principal:
                code = "overpayment"
            else:
                i = min(amt, interest)
                interest -= i
                paid += i
                left = amt - i
                for d in sorted(draws, key=lambda d: d["day"]):  # stable: ties keep event order
                    take = min(left, d["unpaid"])
                    d["unpaid"] -= take
                    left -= take
        elif op == "refund":
            amt = fen(e["amount"])
            match = [d for d in draws if d["ref"] == e["ref"]]
            if not match:
                code = "unknown_ref"
            elif match[0]["refunded"] + amt > match[0]["orig"]:
                code = "exceeds_original"
            else:
                d = match[0]
                p = min(amt, d["unpaid"])
                d["unpaid"] -= p
                d["refunded"] += amt
                cash += amt - p
        codes.append(code)
    advance(as_of)
    principal = sum(d["unpaid"] for d in draws)
    held = sum(h["amount"] for h in holds.values() if h["open"])
    overdue = any(d["unpaid"] > 0 and (as_of - d["day"]).days >= 60 for d in draws)
    return {"results": codes, "state": {
        "limit": fen_to_yuan(limit), "available": fen_to_yuan(limit - principal - held),
        "principal_outstanding": fen_to_yuan(principal), "interest_unpaid": fen_to_yuan(interest),
        "interest_paid": fen_to_yuan(paid), "refunded_cash": fen_to_yuan(cash), "overdue": overdue}}


step = st.tuples(st.integers(0, 40), st.sampled_from(["draw", "draw", "hold", "capture", "release", "repay",
                                                     "repay", "refund"]),
                 st.integers(1, 250_000), st.integers(0, 50))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(step, min_size=1, max_size=25), st.integers(0, 90))
def test_service_matches_a_naive_daily_simulator(steps, tail) -> None:  # type: ignore[no-untyped-def]
    day = START
    events: list[dict] = [{"date": day.isoformat(), "op": "open", "holder": "h",  # type: ignore[type-arg]
                           "birth_date": "1990-01-01", "insured_years": 2}]
    made: list[str] = []
    for i, (gap, op, amount, pick) in enumerate(steps):
        day += timedelta(days=gap)
        e: dict = {"date": day.isoformat(), "op": op}  # type: ignore[type-arg]
        y = fen_to_yuan(amount)
        if op in ("draw", "hold"):
            e.update(payer="h", amount=y, ref=f"r{i}")
            made.append(f"r{i}")
        elif op in ("capture", "refund"):
            e.update(ref=made[pick % len(made)] if made else "none", amount=y if op == "refund" else fen_to_yuan(amount // 3))
        elif op == "release":
            e.update(ref=made[pick % len(made)] if made else "none")
        else:
            e.update(holder="h", amount=y)
        events.append(e)
    as_of = day + timedelta(days=tail)
    assert_replay_matches(events, as_of, simulate(events[1:], as_of))


member_step = st.tuples(st.integers(0, 12), st.sampled_from(["draw", "draw", "draw", "hold", "capture", "release",
                                                            "repay", "repay", "refund", "bind", "unbind"]),
                        st.one_of(st.integers(1, 60_000), st.integers(1, 40).map(lambda n: n * 2_500)),
                        st.integers(0, 50), st.sampled_from(["h", "m", "m", "k"]),
                        st.sampled_from([None, 10_000, 50_000, 100_000, "no consent"]))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(member_step, min_size=6, max_size=30), st.integers(0, 70))
# m (cap 600): 400 + 300 in January is over the cap; 500 on 02-04 is a new month
@example([(0, "draw", 40_000, 0, "m", None), (0, "draw", 30_000, 0, "m", None), (15, "draw", 50_000, 0, "m", None)], 0)
def test_family_pay_matches_the_naive_simulator_across_months(steps, tail) -> None:  # type: ignore[no-untyped-def]
    """Members m and k (bind with or without consent, caps, unbind) drawing over month boundaries."""
    day = date(2026, 1, 20)
    events: list[dict] = [{"date": day.isoformat(), "op": "open", "holder": "h",  # type: ignore[type-arg]
                           "birth_date": "1990-01-01", "insured_years": 0}]  # limit 2,000
    events += [{"date": day.isoformat(), "op": "bind", "holder": "h", "member": m, "relation": "spouse",
                "consent": True, "monthly_cap": cap} for m, cap in (("m", "600.00"), ("k", None))]
    made: list[str] = []
    for i, (gap, op, amount, pick, who, cap) in enumerate(steps):
        day += timedelta(days=gap)
        e: dict = {"date": day.isoformat(), "op": op}  # type: ignore[type-arg]
        if op in ("draw", "hold"):
            e.update(payer=who, amount=fen_to_yuan(amount), ref=f"r{i}")
            made.append(f"r{i}")
        elif op in ("capture", "refund", "release"):
            e.update(ref=made[pick % len(made)] if made else "none")
            if op != "release":
                e.update(amount=fen_to_yuan(amount if op == "refund" else amount // 2))
        elif op in ("bind", "unbind"):
            e.update(holder="h", member="k" if who == "h" else who)
            if op == "bind":
                e.update(relation="child", consent=cap != "no consent",
                         monthly_cap=fen_to_yuan(cap) if isinstance(cap, int) else None)
        else:
            e.update(holder="h", amount=fen_to_yuan(amount))
        events.append(e)
    as_of = day + timedelta(days=tail)
    assert_replay_matches(events, as_of, simulate(events[1:], as_of, 200_000))  # the binds run in the simulator too
