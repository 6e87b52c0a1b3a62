from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given, strategies as st

from kiosk.errors import InputError
from kiosk.money import fen_to_yuan, mul_fen, parse_decimal, round_fen, yuan_to_fen


@pytest.mark.parametrize(
    "yuan, fen",
    [("0.005", 1), ("0.0049", 0), ("1.235", 124), ("1.2349", 123), ("-0.005", -1), ("0", 0)],
)
def test_round_fen_is_half_up(yuan, fen):
    assert round_fen(Decimal(yuan)) == fen


def test_mul_fen_rounds_once_half_up():
    assert mul_fen(5, Decimal("0.1")) == 1  # 0.5 fen -> 1
    assert mul_fen(4, Decimal("0.1")) == 0
    assert mul_fen(12345, Decimal("0.7")) == 8642  # 8641.5 -> 8642


@pytest.mark.parametrize("bad", ["abc", "1.23456", "-1", "", "NaN", "Infinity", 1.5, None, True, [1]])
def test_parse_decimal_refuses_bad_input_with_field(bad):
    with pytest.raises(InputError) as e:
        parse_decimal(bad, "items[0].price")
    assert "items[0].price" in str(e.value)


@pytest.mark.parametrize(
    "bad", ["1_000", "\uff11\uff12", "\u0661\u0662", "1 000", "+-1", "0x10", ".", "1e", "1.2.3", " ", "sNaN", "-Infinity", "1e2",
            "1E+999999999", "9" * 13, 10 ** 13,
            Decimal("1E+999999999"), Decimal("NaN")]
)
def test_parse_decimal_takes_only_ascii_decimal_notation(bad):
    # Decimal() alone reads "1_000" as 1000 and full-width / Arabic-Indic digits as 12.
    with pytest.raises(InputError) as e:
        parse_decimal(bad, "items[0].qty")
    assert str(e.value).startswith("items[0].qty: ")


@pytest.mark.parametrize(
    "text, value", [("12", "12"), (" 12.50 ", "12.50"), (".5", "0.5"), ("5.", "5"), ("+3", "3"), ("999999999999.99", "999999999999.99"), (7, "7"),
                      (Decimal("1E+2"), "100")]
)
def test_parse_decimal_accepts_plain_numbers(text, value):
    assert parse_decimal(text, "x") == Decimal(value)


@given(st.integers(min_value=-10**12, max_value=10**12))
def test_yuan_round_trip(fen):
    assert yuan_to_fen(fen_to_yuan(fen), "x", allow_negative=True) == fen
