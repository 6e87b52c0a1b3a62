"""Whatever JSON arrives, parsing and settling either succeed or raise a KioskError naming a field."""
from __future__ import annotations

import json

from hypothesis import given, strategies as st

from kiosk.errors import KioskError
from kiosk.settlement import loads_request, sample_bill_text, settle_request

from ._hyp import SETTLEMENT

scalars = st.none() | st.booleans() | st.integers(-10**6, 10**20) | st.text(max_size=12) | st.sampled_from(
    ["1", "-1", "0", "1.00001", "NaN", "1e9", "A", "B", "C", "htn", "dm", "qingdao-employee-outpatient"]
)
values = st.recursive(scalars, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=3),
                      max_leaves=8)


def _mutate(bill: dict, path: list, value: object) -> dict:
    target: object = bill
    for step in path[:-1]:
        target = target[step] if isinstance(target, dict) else target[step % len(target)]  # type: ignore[index]
    if isinstance(target, dict):
        target[path[-1]] = value
    return bill


PATHS = [["profile"], ["institution_level"], ["items"], ["items", 0], ["items", 1, "price"], ["items", 1, "qty"],
         ["items", 2, "category"], ["items", 1, "selfpay_prop"], ["items", 0, "price_ceiling"], ["ytd"],
         ["ytd", "pool_paid"], ["account_balance"], ["use_account"], ["mutual_aid_balance"], ["conditions"]]


def _outcome(text: str) -> None:
    try:
        s = settle_request(loads_request(text))
    except KioskError as e:
        assert e.field and "\n" not in str(e)
    else:
        assert s.medfee_sumamt == s.fund_pay_sumamt + s.psn_part_amt


@SETTLEMENT
@given(st.sampled_from(PATHS), values)
def test_any_field_replaced_by_any_json_is_settled_or_refused_by_name(path, value):
    _outcome(json.dumps(_mutate(json.loads(sample_bill_text()), path, value)))


@SETTLEMENT
@given(values)
def test_any_json_document_is_refused_by_name(value):
    _outcome(json.dumps(value))
