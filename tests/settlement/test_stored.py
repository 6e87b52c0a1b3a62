"""A settlement read back from storage (what a reversal trusts) must add up."""
from __future__ import annotations

import copy

import pytest

from kiosk.errors import InputError, IntegrityError
from kiosk.settlement import Settlement, Ytd, reverse, sample_bill_text, settle_request, loads_request


def stored() -> dict:
    return settle_request(loads_request(sample_bill_text())).to_json()


def test_round_trip_and_reversal_of_a_stored_settlement():
    s = Settlement.from_json(stored())
    # sample: deductible 150.00 used + 50.00, pool 300.00 + 84.28
    assert reverse(s, s.ytd_after) == Ytd(15000, 30000)
    with pytest.raises(IntegrityError) as e:  # accumulators that never held it (a fresh year, another person)
        reverse(s, Ytd(4000, 90000))
    assert e.value.code == "reversal_exceeds_ytd"


@pytest.mark.parametrize(
    "path, value, words",
    [
        (("setlinfo", "hifp_pay"), "184.28", "fund_pay_sumamt differs from hifp_pay"),
        (("setlinfo", "psn_cash_pay"), "0.00", "psn_part_amt != acct_pay"),
        (("setlinfo", "medfee_sumamt"), "1.00", "medfee_sumamt is not the sum"),
        (("setlinfo", "act_pay_dedc"), "999.00", "act_pay_dedc exceeds"),
        (("detlcutinfo", 1, "overlmt_amt"), "0.00", "detlcutinfo[1] parts"),
        (("ytd_after", "pool_paid"), "10.00", "ytd_after is below"),
        (("detlcutinfo",), [], "detlcutinfo is empty"),
    ],
)
def test_tampered_settlement_is_refused(path, value, words):
    d = copy.deepcopy(stored())
    target = d
    for k in path[:-1]:
        target = target[k]
    target[path[-1]] = value
    with pytest.raises(IntegrityError) as e:
        Settlement.from_json(d)
    assert e.value.code == "settlement_inconsistent" and e.value.field == "settlement"
    assert words in e.value.message


@pytest.mark.parametrize("bad", [{}, [], {"setlinfo": {}, "detlcutinfo": [], "ytd_after": {}}, None])
def test_malformed_stored_settlement_is_an_input_error(bad):
    with pytest.raises(InputError):
        Settlement.from_json(bad)
