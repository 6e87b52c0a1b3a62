"""Replay a scenario timeline against a fresh line (the `kiosk credit replay` tool).

Scenario: {"events": [{"date": "YYYY-MM-DD", "op": ..., ...}, ...], "as_of": "YYYY-MM-DD"}.
Each event runs at noon Asia/Shanghai of its date on a ManualClock; the state is
read at the end of `as_of` (interest accrued through `as_of` inclusive).
"""
from __future__ import annotations

import re
from collections.abc import Callable
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any

from kiosk.clock import SHANGHAI, ManualClock
from kiosk.credit import rules
from kiosk.credit.service import MAX_INSURED_YEARS, CreditService, Result
from kiosk.errors import InputError
from kiosk.money import yuan_to_fen
from kiosk.storage import Database

OPS: dict[str, tuple[str, ...]] = {
    "open": ("holder", "birth_date", "insured_years"),
    "bind": ("holder", "member", "relation", "consent"),  # monthly_cap: absent = null (no cap)
    "unbind": ("holder", "member"),
    "draw": ("payer", "amount", "ref"),
    "hold": ("payer", "amount", "ref"),
    "capture": ("ref", "amount"),
    "release": ("ref",),
    "repay": ("holder", "amount"),
    "refund": ("ref", "amount"),
}


_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_YEARS = re.compile(r"[0-9]{1,3}")


def _day(value: object, field: str) -> date:
    # exactly YYYY-MM-DD: date.fromisoformat alone also takes "20260101" and "2026-W01-1"
    if not isinstance(value, str):
        raise InputError("must be a date string YYYY-MM-DD", field=field)
    try:
        if not _DATE.fullmatch(value):
            raise ValueError(value)
        return date.fromisoformat(value)
    except ValueError:
        raise InputError(f"is not a date YYYY-MM-DD: {value!r}", field=field) from None


def _years(value: object, field: str) -> int:
    """Whole years of continuous insurance: a fraction counts down (4.9 years are 4 whole years)."""
    if isinstance(value, Decimal) and value.is_finite():  # a JSON number with a point (kiosk.credit.cli)
        value = -1 if value < 0 else int(value) if value.adjusted() < 4 else 9999  # 1e999999999: no huge int
    # ASCII digits only: str.isdigit() also takes "²" (which int() refuses) and full-width digits
    if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, str) and _YEARS.fullmatch(value))):
        raise InputError(f"must be a whole number of years, got {value!r}", field=field)
    n = int(value)
    if n < 0:
        raise InputError("must not be negative", field=field)
    if n > MAX_INSURED_YEARS:
        raise InputError(f"must be at most {MAX_INSURED_YEARS}, got {n}", field=field)
    return n


def validate(scenario: object) -> tuple[list[dict[str, Any]], date]:
    if not isinstance(scenario, dict):
        raise InputError("the scenario must be a JSON object", field="scenario")
    events = scenario.get("events")
    if not isinstance(events, list):
        raise InputError("must be a list of events", field="events")
    if "as_of" not in scenario:
        raise InputError("is required", field="as_of")
    as_of = _day(scenario.get("as_of"), "as_of")
    last: date | None = None
    for i, ev in enumerate(events):
        where = f"events[{i}]"
        if not isinstance(ev, dict):
            raise InputError("must be an object", field=where)
        d = _day(ev.get("date"), f"{where}.date")
        if last is not None and d < last:
            raise InputError(f"goes back in time ({d} after {last}); dates must be non-decreasing",
                             field=f"{where}.date")
        last = d
        op = ev.get("op")
        if op not in OPS:
            raise InputError(f"unknown op {op!r} (one of {', '.join(OPS)})", field=f"{where}.op")
        for name in OPS[op]:
            if name not in ev:
                raise InputError("is required", field=f"{where}.{name}")
    if last is not None and as_of < last:
        raise InputError(f"{as_of} is before the last event ({last})", field="as_of")
    return events, as_of


def _event(svc: CreditService, ev: dict[str, Any], key: str, line_holder: str | None) -> Result:
    """Validate and run one event; raises InputError with a field relative to the event."""
    op = ev["op"]

    def amount(name: str = "amount") -> int:
        v = ev.get(name)
        # a JSON number read exactly (the CLI parses them as Decimal): the digits the file holds
        return yuan_to_fen(v, name)

    def positive() -> int:
        amt = amount()
        if amt <= 0:
            raise InputError("must be positive", field="amount")
        return amt

    def text(name: str) -> str:
        v = ev.get(name)
        if not isinstance(v, str) or not v.strip():
            raise InputError("must be a non-empty string", field=name)
        return v

    run: Callable[[], Result]
    if op == "open":
        holder, birth, years = text("holder"), _day(ev.get("birth_date"), "birth_date"), \
            _years(ev.get("insured_years"), "insured_years")
        if line_holder is not None:
            return Result(rules.ALREADY_OPEN)
        return svc.open(key, holder, birth, years)
    if op == "bind":
        cap_raw = ev.get("monthly_cap")
        cap = None if cap_raw is None else amount("monthly_cap")
        consent = ev.get("consent")
        if not isinstance(consent, bool):
            raise InputError("must be true or false", field="consent")
        rel = rules.relation(ev.get("relation"))
        holder, member = text("holder"), text("member")
        run = lambda: svc.bind(key, holder, member, rel, consent, cap)  # noqa: E731
    elif op == "unbind":
        holder, member = text("holder"), text("member")
        run = lambda: svc.unbind(key, holder, member)  # noqa: E731
    elif op in ("draw", "hold"):
        payer, ref, amt = text("payer"), text("ref"), positive()
        fn = svc.draw if op == "draw" else svc.hold
        run = lambda: fn(key, payer, amt, ref, holder=line_holder)  # noqa: E731
    elif op == "capture":
        ref, amt = text("ref"), amount()
        run = lambda: svc.capture(key, ref, amt, holder=line_holder)  # noqa: E731
    elif op == "release":
        ref = text("ref")
        run = lambda: svc.release(key, ref, holder=line_holder)  # noqa: E731
    elif op == "repay":
        holder, amt = text("holder"), positive()
        run = lambda: svc.repay(key, holder, amt)  # noqa: E731
    else:  # refund
        ref, amt = text("ref"), positive()
        run = lambda: svc.refund(key, ref, amt, holder=line_holder)  # noqa: E731
    if line_holder is None:
        return Result(rules.NO_LINE)  # any event before a successful open
    return run()


def replay(scenario: object, db: Database) -> dict[str, Any]:
    """Run the scenario on `db` (fresh) and return {"results": [...], "state": {...}}."""
    events, as_of = validate(scenario)
    clock = ManualClock(datetime.combine(as_of, time(12), SHANGHAI))
    svc = CreditService(db, clock)
    line_holder: str | None = None
    results: list[str] = []
    for i, ev in enumerate(events):
        where = f"events[{i}]"
        clock.set(datetime.combine(date.fromisoformat(ev["date"]), time(12), SHANGHAI))
        try:
            res = _event(svc, ev, f"replay:{i}", line_holder)
        except InputError as e:  # name the event, keep the field
            raise InputError(e.message, code=e.code, field=f"{where}.{e.field}" if e.field else where) from None
        if ev["op"] == "open" and res.ok:
            line_holder = ev["holder"]
        results.append(res.code)
    clock.set(datetime.combine(as_of, time(23, 59, 59), SHANGHAI))
    if line_holder is None:
        state = {"limit": "0.00", "available": "0.00", "principal_outstanding": "0.00", "interest_unpaid": "0.00",
                 "interest_paid": "0.00", "refunded_cash": "0.00", "overdue": False}
    else:
        state = svc.state(line_holder).to_json()
    report = svc.check()
    if not report.ok:  # never print a state the journal does not back
        from kiosk.errors import IntegrityError

        raise IntegrityError("; ".join(report.problems), code="journal_check_failed")
    return {"results": results, "state": state}
