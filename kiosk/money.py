"""Exact money in integer fen, and the one rounding rule the product uses.

Amounts are `int` fen everywhere inside the domain. Yuan strings are parsed and
printed only at the boundaries. Every product by a price, quantity, ratio or
rate is rounded half-up to fen once, at the step where it happens.
"""
from __future__ import annotations

import re
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

from kiosk.errors import InputError

Fen = int

_FEN = Decimal("0.01")
# What a bill may spell a number as: ASCII digits, one optional sign and point.
# Decimal() alone would also take "1_000", "1e2", full-width or Arabic-Indic
# digits, which no counter system means as an amount ("1e999999999" would also
# make a billion-digit integer).
_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)")
MAX_INT_DIGITS = 12  # below a trillion: far above any bill, far below any cost to compute


def parse_decimal(value: object, field: str, *, max_dp: int = 4, allow_negative: bool = False) -> Decimal:
    """Parse a decimal given as a string (or int) with at most `max_dp` places.

    Floats are refused: they cannot say exactly what the bill said.
    """
    if isinstance(value, bool) or value is None:
        raise InputError(f"must be a decimal number, got {value!r}", field=field)
    if isinstance(value, float):
        raise InputError("must be given as a string (e.g. \"12.50\"), not a JSON float", field=field)
    if isinstance(value, int):
        d = Decimal(value)
    elif isinstance(value, Decimal):  # a JSON number read exactly (json.loads(parse_float=Decimal))
        d = value
    elif isinstance(value, str):
        s = value.strip()
        if not _NUMBER.fullmatch(s):
            raise InputError(f"is not a number: {value!r}", field=field)
        try:
            d = Decimal(s)
        except InvalidOperation:  # pragma: no cover - the pattern admits only what Decimal reads
            raise InputError(f"is not a number: {value!r}", field=field) from None
    else:
        raise InputError(f"must be a decimal string, got {type(value).__name__}", field=field)
    if not d.is_finite():
        raise InputError(f"is not a finite number: {value!r}", field=field)
    if d.adjusted() >= MAX_INT_DIGITS:
        raise InputError(f"is too large: {str(value)[:20]!r} (at most {MAX_INT_DIGITS} digits before the point)",
                         field=field)
    exp = d.as_tuple().exponent
    if isinstance(exp, int) and exp < -max_dp:
        raise InputError(f"has more than {max_dp} decimal places: {value!r}", field=field)
    if d < 0 and not allow_negative:
        raise InputError(f"must not be negative: {value!r}", field=field)
    return d


def round_fen(yuan: Decimal) -> Fen:
    """Round an exact yuan amount half-up (away from zero) to integer fen."""
    return int((yuan / _FEN).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def mul_fen(amount_fen: Fen, factor: Decimal) -> Fen:
    """fen x factor, rounded half-up to fen (the rules' single rounding step)."""
    return int((Decimal(amount_fen) * factor).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def yuan_to_fen(value: object, field: str, *, allow_negative: bool = False) -> Fen:
    """Parse a yuan amount that must be a whole number of fen (at most 2 dp)."""
    d = parse_decimal(value, field, max_dp=2, allow_negative=allow_negative)
    return int(d * 100)


def fen_to_yuan(fen: Fen) -> str:
    """Format fen as a yuan string with exactly two decimals ("-1.05", "0.00")."""
    sign = "-" if fen < 0 else ""
    q, r = divmod(abs(int(fen)), 100)
    return f"{sign}{q}.{r:02d}"
