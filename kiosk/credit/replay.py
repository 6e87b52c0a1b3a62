"""Replay a scenario timeline against a fresh line (the `kiosk credit replay` tool).

Scenario: {"events": [{"date": "YYYY-MM-DD", "op": ..., ...}, ...], "as_of": "YYYY-MM-DD"}.
Each event runs at noon Asia/Shanghai of its date on a ManualClock; the state is
read at the end of `as_of` (interest accrued through `as_of` inclusive).
"""
from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime, time
from typing import Any

from kiosk.clock import SHANGHAI, ManualClock
from kiosk.credit import rules
from kiosk.credit.service import CreditService, Result
from kiosk.errors import InputError
from kiosk.money import yuan_to_fen
from kiosk.storage import Database

OPS: dict[str, tuple[str, ...]] = {
    "open": ("holder", "birth_date", "insured_years"),
    "bind": ("holder", "member", "relation", "consent", "monthly_cap"),
    "unbind": ("holder", "member"),
    "draw": ("payer", "amount", "ref"),
    "hold": ("payer", "amount", "ref"),
    "capture": ("ref", "amount"),
    "release": ("ref",),
    "repay": ("holder", "amount"),
    "refund": ("ref", "amount"),
}


def _day(value: object, field: str) -> date:
    if not isinstance(value, str):
        raise InputError("must be a date string YYYY-MM-DD", field=field)
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise InputError(f"is not a date YYYY-MM-DD: {value!r}", field=field) from None


def _str(ev: dict[str, Any], name: str, where: str) -> str:
    v = ev.get(name)
    if not isinstance(v, str) or not v.strip():
        raise InputError("must be a non-empty string", field=f"{where}.{name}")
    return v


def _years(value: object, field: str) -> int:
    if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, str) and value.isdigit())):
        raise InputError(f"must be a whole number of years, got {value!r}", field=field)
    n = int(value)
    if n < 0:
        raise InputError("must not be negative", field=field)
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
        key = f"replay:{i}"
        op = ev["op"]

        def amount(name: str = "amount", ev: dict[str, Any] = ev, where: str = where) -> int:
            return yuan_to_fen(ev.get(name), f"{where}.{name}")

        run: Callable[[], Result]
        if op == "open":
            holder = _str(ev, "holder", where)
            birth = _day(ev.get("birth_date"), f"{where}.birth_date")
            years = _years(ev.get("insured_years"), f"{where}.insured_years")
            if line_holder is not None:
                results.append(rules.ALREADY_OPEN)
                continue
            res = svc.open(key, holder, birth, years)
            if res.ok:
                line_holder = holder
            results.append(res.code)
            continue
        if op == "bind":
            cap_raw = ev.get("monthly_cap")
            cap = None if cap_raw is None else yuan_to_fen(cap_raw, f"{where}.monthly_cap")
            consent = ev.get("consent")
            if not isinstance(consent, bool):
                raise InputError("must be true or false", field=f"{where}.consent")
            rel = rules.relation(ev.get("relation"))
            args = (_str(ev, "holder", where), _str(ev, "member", where))
            run = lambda: svc.bind(key, *args, rel, consent, cap)  # noqa: E731
        elif op == "unbind":
            args = (_str(ev, "holder", where), _str(ev, "member", where))
            run = lambda: svc.unbind(key, *args)  # noqa: E731
        elif op in ("draw", "hold"):
            payer, ref, amt = _str(ev, "payer", where), _str(ev, "ref", where), amount()
            if amt <= 0:
                raise InputError("must be positive", field=f"{where}.amount")
            fn = svc.draw if op == "draw" else svc.hold
            run = lambda: fn(key, payer, amt, ref, holder=line_holder)  # noqa: E731
        elif op == "capture":
            ref, amt = _str(ev, "ref", where), amount()
            run = lambda: svc.capture(key, ref, amt, holder=line_holder)  # noqa: E731
        elif op == "release":
            ref = _str(ev, "ref", where)
            run = lambda: svc.release(key, ref, holder=line_holder)  # noqa: E731
        elif op == "repay":
            holder, amt = _str(ev, "holder", where), amount()
            if amt <= 0:
                raise InputError("must be positive", field=f"{where}.amount")
            run = lambda: svc.repay(key, holder, amt)  # noqa: E731
        else:  # refund
            ref, amt = _str(ev, "ref", where), amount()
            if amt <= 0:
                raise InputError("must be positive", field=f"{where}.amount")
            run = lambda: svc.refund(key, ref, amt, holder=line_holder)  # noqa: E731
        if line_holder is None:
            results.append(rules.NO_LINE)  # any event before a successful open
            continue
        try:
            results.append(run().code)
        except InputError as e:  # name the event, keep the field
            raise InputError(e.message, field=f"{where}.{e.field}" if e.field else where) from None
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
