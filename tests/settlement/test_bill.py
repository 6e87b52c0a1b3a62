"""Bill parsing: strict, and every refusal names the field."""
from __future__ import annotations

import copy
from decimal import Decimal

import pytest

from kiosk.errors import InputError
from kiosk.settlement import Category, get_profile, loads_request, parse_request, settle, settle_request

GOOD = {
    "profile": "yantai-resident-chronic-htn-dm",
    "institution_level": 2,
    "items": [
        {"code": "a1", "category": "A", "price": "1.2345", "qty": "2"},
        {"code": "b1", "category": "B", "price": "3", "qty": "0.5", "selfpay_prop": "0.2", "price_ceiling": "2.5"},
        {"code": "c1", "category": "C", "price": "4.00", "qty": 1},
    ],
    "ytd": {"deductible_used": "0.00", "pool_paid": "12.30"},
    "account_balance": "5.00",
    "use_account": False,
    "mutual_aid_balance": "1.00",
    "conditions": ["htn"],
}


def test_good_request_parses_to_exact_values():
    req = parse_request(GOOD)
    assert req.bill.institution_level == 2
    assert [i.category for i in req.bill.items] == [Category.A, Category.B, Category.C]
    assert [i.chrgitm_lv for i in req.bill.items] == ["01", "02", "03"]
    assert req.bill.items[0].price == Decimal("1.2345")
    assert req.bill.items[1].selfpay_prop == Decimal("0.2")
    assert req.bill.items[1].price_ceiling == Decimal("2.5")
    assert req.bill.conditions == frozenset({"htn"})
    assert (req.ytd.deductible_used, req.ytd.pool_paid) == (0, 1230)
    assert (req.account_balance, req.use_account, req.mutual_aid_balance) == (500, False, 100)


def test_optional_fields_default():
    req = parse_request({"profile": "x", "institution_level": 1, "items": GOOD["items"][:1]})
    assert (req.ytd.deductible_used, req.ytd.pool_paid) == (0, 0)
    assert (req.account_balance, req.use_account, req.mutual_aid_balance) == (0, True, 0)
    assert req.bill.items[0].selfpay_prop is None and req.bill.items[0].price_ceiling is None


def _with(path: tuple, value, delete: bool = False) -> dict:
    d = copy.deepcopy(GOOD)
    target = d
    for k in path[:-1]:
        target = target[k]
    if delete:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return d


BAD = [
    (("profile",), 5, "profile", "non-empty string"),
    (("institution_level",), 0, "institution_level", "1, 2 or 3"),
    (("institution_level",), 4, "institution_level", "1, 2 or 3"),
    (("institution_level",), "2", "institution_level", "1, 2 or 3"),
    (("institution_level",), True, "institution_level", "1, 2 or 3"),
    (("items",), [], "items", "empty"),
    (("items",), {}, "items", "array"),
    (("items", 1), "x", "items[1]", "JSON object"),
    (("items", 2, "category"), "D", "items[2].category", "\"A\", \"B\", \"C\""),
    (("items", 2, "category"), "a", "items[2].category", "\"A\""),
    (("items", 0, "price"), "-1.00", "items[0].price", "negative"),
    (("items", 0, "price"), "abc", "items[0].price", "not a number"),
    (("items", 0, "price"), 1.5, "items[0].price", "string"),
    (("items", 0, "price"), "1.23456", "items[0].price", "more than 4 decimal places"),
    (("items", 2, "qty"), "1.00001", "items[2].qty", "more than 4 decimal places"),
    (("items", 2, "qty"), "-2", "items[2].qty", "negative"),
    (("items", 2, "qty"), "0", "items[2].qty", "greater than 0"),
    (("items", 2, "qty"), "NaN", "items[2].qty", "not a number"),
    (("items", 2, "qty"), "1_0", "items[2].qty", "not a number"),
    (("items", 0, "price"), "\uff11\uff12", "items[0].price", "not a number"),
    (("items", 0, "price"), "99999999", "items[0].price", "at most"),
    (("items", 1, "selfpay_prop"), "1.5", "items[1].selfpay_prop", "at most 1"),
    (("items", 1, "price_ceiling"), "-1", "items[1].price_ceiling", "negative"),
    (("items", 0, "selfpay_prop"), "0.1", "items[0].selfpay_prop", "Class A"),
    (("items", 0, "code"), "", "items[0].code", "non-empty"),
    (("items", 0, "colour"), "red", "items[0].colour", "unknown field"),
    (("ytd", "pool_paid"), "1.001", "ytd.pool_paid", "more than 2 decimal places"),
    (("ytd", "deductible_used"), "-3", "ytd.deductible_used", "negative"),
    (("ytd",), [], "ytd", "JSON object"),
    (("account_balance",), "x", "account_balance", "not a number"),
    (("mutual_aid_balance",), "-0.01", "mutual_aid_balance", "negative"),
    (("use_account",), "yes", "use_account", "true or false"),
    (("conditions",), "htn", "conditions", "array"),
    (("conditions",), ["htn", "copd"], "conditions[1]", "must be one of"),
    (("conditions",), ["htn", "htn"], "conditions[1]", "twice"),
    (("use_acount",), True, "use_acount", "unknown field"),
]


@pytest.mark.parametrize("path, value, field, words", BAD, ids=[f"{b[2]}={b[1]!r}" for b in BAD])
def test_bad_field_is_named(path, value, field, words):
    with pytest.raises(InputError) as e:
        settle_request(parse_request(_with(path, value)))
    assert e.value.field == field
    assert words in e.value.message
    assert str(e.value).startswith(f"{field}: ")


@pytest.mark.parametrize("missing", ["profile", "institution_level", "items"])
def test_missing_required_field(missing):
    with pytest.raises(InputError) as e:
        parse_request(_with((missing,), None, delete=True))
    assert e.value.field == missing and "required" in e.value.message


def test_missing_item_field():
    with pytest.raises(InputError) as e:
        parse_request(_with(("items", 1, "price"), None, delete=True))
    assert e.value.field == "items[1].price"


def test_unknown_profile_and_condition_checks_happen_at_settlement():
    with pytest.raises(InputError) as e:
        settle_request(parse_request(_with(("profile",), "beijing")))
    assert e.value.field == "profile" and "unknown profile" in e.value.message
    # conditions on a profile that has none
    with pytest.raises(InputError) as e:
        settle_request(parse_request(_with(("profile",), "yantai-resident-outpatient")))
    assert e.value.field == "conditions"
    # a chronic-care profile needs a condition
    with pytest.raises(InputError) as e:
        settle_request(parse_request(_with(("conditions",), [])))
    assert e.value.field == "conditions"


def test_profile_must_match_the_bill():
    req = parse_request(GOOD)
    with pytest.raises(InputError) as e:
        settle(req.bill, get_profile("qingdao-employee-outpatient"))
    assert e.value.field == "profile"


@pytest.mark.parametrize(
    "text, words",
    [("{", "not valid JSON"), ("", "not valid JSON"), ("[1]", "JSON object"), ('{"a": NaN}', "NaN"),
     (b"\xff\xfe{", "not valid"), ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
     ('{"profile": "x", "institution_level": ' + "9" * 5000 + "}", "too many digits"),
     ('{"profile": "x", "items": [{"price": "1", "price": "-9"}]}', "'price' appears twice")],
)
def test_malformed_json(text, words):
    with pytest.raises(InputError) as e:
        loads_request(text)
    assert e.value.field == "bill" and words in e.value.message


def test_items_and_bills_built_in_code_are_checked_too():
    from kiosk.settlement import Bill, Item

    ok = Item("x", Category.B, Decimal("1.50"), Decimal("2"))
    with pytest.raises(InputError, match="price"):
        Item("x", Category.A, Decimal("-1"), Decimal("1"))
    with pytest.raises(InputError, match="qty"):
        Item("x", Category.A, Decimal("1"), Decimal("0"))
    with pytest.raises(InputError, match="qty"):
        Item("x", Category.A, Decimal("1"), Decimal("0.00001"))
    with pytest.raises(InputError, match="selfpay_prop"):
        Item("x", Category.B, Decimal("1"), Decimal("1"), selfpay_prop=Decimal("1.1"))
    with pytest.raises(InputError, match="category"):
        Item("x", "A", Decimal("1"), Decimal("1"))  # type: ignore[arg-type]
    with pytest.raises(InputError, match="institution_level"):
        Bill("yantai-resident-outpatient", 5, (ok,))
    with pytest.raises(InputError, match="items"):
        Bill("yantai-resident-outpatient", 1, ())
    b = Bill("yantai-resident-chronic-htn-dm", 1, (ok,), {"htn"})  # type: ignore[arg-type]
    assert b.conditions == frozenset({"htn"})
