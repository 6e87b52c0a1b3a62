"""Hypothesis properties: the journal always balances, available is never
negative, and no interest accrues inside the free period."""
from __future__ import annotations

from datetime import date, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kiosk.clock import SHANGHAI, ManualClock
from kiosk.credit import CreditService, ledger, rules
from kiosk.errors import ConfigError
from kiosk.storage import open_database

P = rules.CreditProfile()
START = date(2026, 1, 1)

amounts = st.integers(min_value=1, max_value=300_000)
ops = st.lists(st.tuples(
    st.integers(min_value=0, max_value=25),                              # days since the previous event
    st.sampled_from(["draw", "draw", "hold", "capture", "release", "repay", "refund", "bind", "unbind"]),
    st.sampled_from(["h", "m1", "m2"]),                                   # who
    amounts,
    st.integers(min_value=0, max_value=30),                               # which earlier ref
), min_size=1, max_size=30)


def run_timeline(events: list[tuple[int, str, str, int, int]], insured_years: int) -> tuple[CreditService, ManualClock]:
    clock = ManualClock(datetime(2026, 1, 1, 12, tzinfo=SHANGHAI))
    svc = CreditService(open_database("sqlite:///:memory:"), clock)
    assert svc.open("open", "h", date(1990, 1, 1), insured_years).ok
    refs: list[str] = []
    holds: list[str] = []
    for i, (gap, op, who, amount, pick) in enumerate(events):
        clock.advance(days=gap)
        key = f"k{i}"
        if op in ("draw", "hold"):
            r = (svc.draw if op == "draw" else svc.hold)(key, who, amount, f"r{i}", holder="h")
            if r.ok:
                (refs if op == "draw" else holds).append(f"r{i}")
        elif op == "capture" and holds:
            ref = holds[pick % len(holds)]
            if svc.capture(key, ref, amount // 2, holder="h").ok and amount // 2 > 0:
                refs.append(ref)
        elif op == "release" and holds:
            svc.release(key, holds[pick % len(holds)], holder="h")
        elif op == "repay":
            svc.repay(key, "h", amount)
        elif op == "refund" and refs:
            svc.refund(key, refs[pick % len(refs)], amount, holder="h")
        elif op == "bind" and who != "h":
            svc.bind(key, "h", who, "child", True, amount * 3 if pick % 2 else None)
        elif op == "unbind" and who != "h":
            svc.unbind(key, "h", who)
        s = svc.state("h")
        assert s.available >= 0 and s.available == s.limit - s.principal_outstanding - s.holds_open
        assert s.principal_outstanding >= 0 and s.interest_unpaid >= 0
    return svc, clock


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops, st.integers(min_value=0, max_value=6))
def test_journal_balances_and_available_never_negative(events, years) -> None:  # type: ignore[no-untyped-def]
    svc, _ = run_timeline(events, years)
    report = svc.check()
    assert report.ok, report.problems
    svc.db.close()


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops)
def test_no_interest_inside_the_free_period(events) -> None:  # type: ignore[no-untyped-def]
    # squeeze the whole timeline into days 0..59 of the first possible draw
    span = 0
    squeezed = []
    for gap, *rest in events:
        gap = min(gap, 59 - span)
        span += gap
        squeezed.append((gap, *rest))
    svc, clock = run_timeline([(0, "draw", "h", 1_000, 0), *squeezed], 5)
    clock.set(datetime(2026, 3, 1, 23, 59, tzinfo=SHANGHAI))  # day 59 of the first draw, end of day
    s = svc.state("h")
    assert s.interest_unpaid == 0 and s.interest_paid == 0 and not s.overdue
    svc.db.close()


@given(st.lists(st.tuples(st.integers(0, 200), st.integers(1, 10**7)), min_size=1, max_size=8),
       st.integers(0, 10**5), st.integers(0, 2 * 10**7))
def test_repayment_allocation_conserves_and_goes_oldest_first(draws, interest, amount) -> None:  # type: ignore[no-untyped-def]
    open_draws = [rules.OpenDraw(i, START + timedelta(days=d), u) for i, (d, u) in enumerate(draws)]
    plan = rules.allocate_repayment(amount, interest, open_draws)
    owed = interest + sum(d.unpaid for d in open_draws)
    if amount > owed:
        assert plan is None
        return
    assert plan is not None
    assert plan.interest + sum(f for _, f in plan.principal) == amount
    assert plan.interest == min(amount, interest)
    paid = dict(plan.principal)
    # every draw before the last one touched is paid in full
    touched = [d.draw_id for d in open_draws if d.draw_id in paid]
    for d in open_draws:
        if touched and d.draw_id < touched[-1]:
            assert paid.get(d.draw_id) == d.unpaid


@given(st.integers(0, 400), st.integers(0, 400), st.integers(0, 10**7))
def test_accrual_only_from_day_60(draw_offset, span, unpaid) -> None:  # type: ignore[no-untyped-def]
    day = START + timedelta(days=draw_offset)
    through = day + timedelta(days=span)
    parts = rules.accrual([rules.OpenDraw(1, day, unpaid)], day - timedelta(days=1), through, P)
    expected_days = max(0, span - 59)
    total = sum(f for _, _, f in parts)
    assert total == expected_days * rules.daily_interest(unpaid, P)
    # split at any point gives the same total (accrual is additive over days)
    mid = day + timedelta(days=span // 2)
    a = rules.accrual([rules.OpenDraw(1, day, unpaid)], day - timedelta(days=1), mid, P)
    b = rules.accrual([rules.OpenDraw(1, day, unpaid)], mid, through, P)
    assert sum(f for _, _, f in a) + sum(f for _, _, f in b) == total


@given(st.integers(1, 10**6), st.integers(0, 10**6), st.integers(0, 10**6), st.integers(1, 10**6))
def test_refund_split(original, refunded, unpaid, amount) -> None:  # type: ignore[no-untyped-def]
    refunded = min(refunded, original)
    unpaid = min(unpaid, original - refunded)
    split = rules.allocate_refund(amount, original, refunded, unpaid)
    if refunded + amount > original:
        assert split is None
    else:
        assert split is not None and sum(split) == amount and split[0] == min(amount, unpaid)
        e = ledger.refund_entry(START, "r", 1, *split)
        assert e.balanced()


def test_rule_tables() -> None:
    assert [rules.limit_for(y, P) for y in (0, 1, 2, 3, 4, 5, 40)] == [
        200_000, 500_000, 500_000, 1_000_000, 1_000_000, 2_000_000, 2_000_000]
    assert rules.age_on(date(2008, 2, 29), date(2026, 2, 28)) == 17
    assert rules.age_on(date(2008, 2, 29), date(2026, 3, 1)) == 18
    assert rules.daily_interest(33_333, P) == 17 and rules.daily_interest(10_000, P) == 5
    assert rules.daily_interest(9_999, P) == 5 and rules.daily_interest(9_998, P) == 5
    assert rules.daily_interest(9_990, P) == 5 and rules.daily_interest(9_989, P) == 5
    assert rules.daily_interest(8_999, P) == 4


def test_no_profile_can_configure_a_limit_above_20000_yuan() -> None:
    # the rules' "never above 20,000 yuan" is a ceiling on configuration too, not only a default
    for kw in ({"max_limit": 5_000_000, "top_limit": 5_000_000}, {"max_limit": 2_000_001},
               {"top_limit": 2_000_001}, {"tiers": ((1, 2_000_001),)}):
        with pytest.raises(ConfigError):
            rules.CreditProfile(name="x", **kw)  # type: ignore[arg-type]
    assert rules.limit_for(99, rules.CreditProfile(name="low", max_limit=1_500_000, top_limit=1_500_000)) == 1_500_000
