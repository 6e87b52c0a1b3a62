"""Credit-line rules as pure functions (no I/O): the "Credit line" section of
settlement-rules.md. Amounts are int fen; days are Asia/Shanghai calendar dates.

Day 0 is a draw's date; days 0..59 are free; for every day d >= 60 the draw's
unpaid principal at the start of d accrues round_half_up(unpaid x daily_rate).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal

from kiosk.errors import ConfigError, InputError
from kiosk.money import Fen, mul_fen

# Result codes (values, not exceptions).
OK = "ok"
INELIGIBLE_AGE = "ineligible_age"
NO_LINE = "no_line"
NO_CONSENT = "no_consent"
NOT_BOUND = "not_bound"
LINE_OVERDUE = "line_overdue"
EXCEEDS_AVAILABLE = "exceeds_available"
MEMBER_CAP_EXCEEDED = "member_cap_exceeded"
EXCEEDS_HOLD = "exceeds_hold"
UNKNOWN_REF = "unknown_ref"
EXCEEDS_ORIGINAL = "exceeds_original"
OVERPAYMENT = "overpayment"
ALREADY_OPEN = "already_open"
ALREADY_BOUND = "already_bound"  # the member is bound to another family line
# senseless outpatient payment (a draw under a standing mandate, issue 17)
NO_MANDATE = "no_mandate"              # none of this payer at the drawing institution (or another's: the same)
UNKNOWN_MANDATE = "unknown_mandate"    # revoke/read of a mandate that is not the caller's to touch
MANDATE_REVOKED = "mandate_revoked"    # revoked, or replaced by a newer one
MANDATE_EXPIRED = "mandate_expired"    # past its last valid Shanghai day
LINE_NOT_ALLOWED = "line_not_allowed"  # the line that would pay is not one the mandate names
MANDATE_CAP_VISIT = "mandate_cap_visit"
MANDATE_CAP_DAY = "mandate_cap_day"
MANDATE_LINES = ("own", "family")

# Family pay relations (family mutual aid allows more; family pay does not).
RELATIONS = {"spouse": "spouse", "parent": "parent", "parents": "parent", "father": "parent",
             "mother": "parent", "child": "child", "children": "child", "son": "child", "daughter": "child"}


# "Never above 20,000 yuan (the reported maximum)": a ceiling on every profile, not a default.
CEILING: Fen = 2_000_000


@dataclass(frozen=True)
class CreditProfile:
    """Region values are configuration: the shipped default profile."""

    name: str = "default"
    daily_rate: Decimal = Decimal("0.0005")  # 0.05 % per day (placeholder in the rules)
    free_days: int = 59  # last interest-free day index
    min_age: int = 18
    max_age: int = 60
    # (insured years strictly below, limit): y<1 -> 2,000; y<3 -> 5,000; y<5 -> 10,000; else 20,000 yuan
    tiers: tuple[tuple[int, Fen], ...] = ((1, 200_000), (3, 500_000), (5, 1_000_000))
    top_limit: Fen = 2_000_000
    max_limit: Fen = CEILING  # never above 20,000 yuan (refused above CEILING)
    notice_days_before: int = 7  # "approaching day 59" notice on day 52

    def __post_init__(self) -> None:
        if self.max_limit > CEILING:
            raise ConfigError(f"profile {self.name}: max_limit is above 20,000 yuan", field="max_limit")
        if self.top_limit > self.max_limit or any(lim > self.max_limit for _, lim in self.tiers):
            raise ConfigError(f"profile {self.name}: a limit tier is above the maximum", field="tiers")


PROFILES = {"default": CreditProfile()}


def profile(name: str) -> CreditProfile:
    try:
        return PROFILES[name]
    except KeyError:
        raise ConfigError(f"unknown credit profile {name!r} (known: {sorted(PROFILES)})", field="profile") from None


def age_on(birth: date, day: date) -> int:
    """Whole years of age on `day` (a 29 February birthday counts on 1 March)."""
    return day.year - birth.year - ((day.month, day.day) < (birth.month, birth.day))


def eligible(birth: date, day: date, p: CreditProfile) -> bool:
    return p.min_age <= age_on(birth, day) <= p.max_age


def limit_for(insured_years: int, p: CreditProfile) -> Fen:
    if insured_years < 0:
        raise InputError("must not be negative", field="insured_years")
    for below, lim in p.tiers:
        if insured_years < below:
            return min(lim, p.max_limit)
    return min(p.top_limit, p.max_limit)


def day_index(draw_day: date, day: date) -> int:
    return (day - draw_day).days


def first_interest_day(draw_day: date, p: CreditProfile) -> date:
    return draw_day + timedelta(days=p.free_days + 1)


def daily_interest(unpaid: Fen, p: CreditProfile) -> Fen:
    return mul_fen(unpaid, p.daily_rate) if unpaid > 0 else 0


def interest_days(draw_day: date, after: date, through: date, p: CreditProfile) -> int:
    """How many days d with after < d <= through are interest days (d >= day 60) of a draw."""
    start = max(after + timedelta(days=1), first_interest_day(draw_day, p))
    return max(0, (through - start).days + 1)


@dataclass(frozen=True)
class OpenDraw:
    """A draw as the rules need it: identity, date and unpaid principal."""

    draw_id: int
    day: date
    unpaid: Fen


def accrual(draws: Sequence[OpenDraw], after: date, through: date, p: CreditProfile) -> list[tuple[int, int, Fen]]:
    """Interest for days (after, through], per draw: [(draw_id, days, fen)].

    Valid when no event changed the draws' unpaid principal in that span (the
    service accrues up to the event's day before applying each event), so
    every day's amount is the same rounded daily figure.
    """
    out = []
    for d in draws:
        n = interest_days(d.day, after, through, p)
        per_day = daily_interest(d.unpaid, p)
        if n > 0 and per_day > 0:
            out.append((d.draw_id, n, n * per_day))
    return out


def overdue(oldest_unpaid_day: date | None, day: date, p: CreditProfile) -> bool:
    """Overdue when any draw at day 60 or later still has unpaid principal."""
    return oldest_unpaid_day is not None and day_index(oldest_unpaid_day, day) > p.free_days


def draw_check(*, has_line: bool, bound: bool, is_overdue: bool, amount: Fen, available: Fen,
               month_drawn: Fen | None, cap: Fen | None) -> str:
    """The result of a draw or a new hold, in the specified precedence."""
    if not has_line:
        return NO_LINE
    if not bound:
        return NOT_BOUND
    if is_overdue:
        return LINE_OVERDUE
    if amount > available:
        return EXCEEDS_AVAILABLE
    if cap is not None and (month_drawn or 0) + amount > cap:
        return MEMBER_CAP_EXCEEDED
    return OK


def mandate_check(*, found: bool, state: str, until: date, today: date, kind: str, allowed: bool,
                  visit_used: Fen, day_used: Fen, amount: Fen, per_visit: Fen, per_day: Fen) -> str:
    """Whether a draw may go under a mandate, before the line's own checks (draw_check). `kind` is the
    line that would pay (own/family), `allowed` whether the mandate names that line with that holder;
    the used amounts are the draws already made (refunds do not give cap back: conservative)."""
    if not found:
        return NO_MANDATE
    if state != "active":
        return MANDATE_REVOKED
    if today > until:
        return MANDATE_EXPIRED
    if kind not in MANDATE_LINES or not allowed:
        return LINE_NOT_ALLOWED
    if visit_used + amount > per_visit:
        return MANDATE_CAP_VISIT
    if day_used + amount > per_day:
        return MANDATE_CAP_DAY
    return OK


@dataclass(frozen=True)
class RepaymentPlan:
    interest: Fen
    principal: tuple[tuple[int, Fen], ...]  # (draw_id, fen), oldest first


def allocate_repayment(amount: Fen, interest_unpaid: Fen, draws_oldest_first: Sequence[OpenDraw]) -> RepaymentPlan | None:
    """Interest first, then principal oldest draw first. None = overpayment (refused whole)."""
    owed = interest_unpaid + sum(d.unpaid for d in draws_oldest_first)
    if amount > owed:
        return None
    interest = min(amount, interest_unpaid)
    left = amount - interest
    parts = []
    for d in draws_oldest_first:
        if left <= 0:
            break
        take = min(left, d.unpaid)
        if take > 0:
            parts.append((d.draw_id, take))
            left -= take
    return RepaymentPlan(interest, tuple(parts))


def allocate_refund(amount: Fen, original: Fen, refunded: Fen, unpaid: Fen) -> tuple[Fen, Fen] | None:
    """(principal reduced, cash back) or None when refunds would exceed the original draw."""
    if refunded + amount > original:
        return None
    principal = min(amount, unpaid)
    return principal, amount - principal


def capture_split(hold: Fen, captured: Fen) -> tuple[Fen, Fen] | None:
    """(drawn, released) or None when the capture exceeds the hold."""
    if captured > hold:
        return None
    return captured, hold - captured


def relation(value: object) -> str:
    if not isinstance(value, str) or value.strip().lower() not in RELATIONS:
        raise InputError(f"must be spouse, parent or child for family pay, got {value!r}", field="relation")
    return RELATIONS[value.strip().lower()]


def month_of(day: date) -> str:
    return f"{day.year:04d}-{day.month:02d}"
