"""Property tests: random bills, checked against the rules' invariants and an
independent re-derivation of the rules in exact fractions.

The oracle below is written from settlement-rules.md with `Fraction` and its
own half-up rounding, and its profile values are copied from the rules
document's table, not from the shipped JSON files, so it checks those too.
"""
from __future__ import annotations

import math
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import given, strategies as st

from kiosk.errors import IntegrityError
from kiosk.settlement import SETLINFO_FIELDS, Settlement, Ytd, parse_request, reverse, settle_request

from ._hyp import SETTLEMENT

# profile -> (ratio by level, deductible fen by level, cap fen by number of conditions)
RULES_TABLE = {
    "qingdao-employee-outpatient": ((Fraction(80, 100), Fraction(70, 100), Fraction(60, 100)), (0, 20000, 20000), {0: 600000}),
    "yantai-resident-outpatient": ((Fraction(65, 100),) * 3, (0, 0, 0), {0: 40000}),
    "yantai-resident-chronic-htn-dm": ((Fraction(75, 100),) * 3, (0, 0, 0), {1: 60000, 2: 100000}),
}
CLASS_B_DEFAULT = Fraction(10, 100)


def half_up(x: Fraction) -> int:
    assert x >= 0
    return math.floor(x + Fraction(1, 2))


def fen(yuan: str) -> Fraction:
    return Fraction(yuan) * 100


def oracle(req: dict[str, Any]) -> dict[str, Any]:
    """The rules document, step by step, in exact fractions of a fen."""
    ratios, deductibles, caps = RULES_TABLE[req["profile"]]
    level = req["institution_level"]
    det = []
    for it in req["items"]:
        price, qty = fen(it["price"]), Fraction(it["qty"])
        total = half_up(price * qty)
        if it["category"] == "C":
            det.append((total, total, 0, 0, 0))
            continue
        over = 0
        if it.get("price_ceiling") is not None and price > fen(it["price_ceiling"]):
            over = half_up((price - fen(it["price_ceiling"])) * qty)
        pre = 0
        if it["category"] == "B":
            prop = Fraction(it["selfpay_prop"]) if it.get("selfpay_prop") is not None else CLASS_B_DEFAULT
            pre = half_up((total - over) * prop)
        det.append((total, 0, over, pre, total - over - pre))
    medfee, fulamt, overlmt, pre, inscp = (sum(col) for col in zip(*det))
    ytd = req.get("ytd", {})
    d_used, p_paid = int(fen(ytd.get("deductible_used", "0"))), int(fen(ytd.get("pool_paid", "0")))
    dedc = min(inscp, max(0, deductibles[level - 1] - d_used))
    cap_left = max(0, caps[len(req.get("conditions", []))] - p_paid)
    hifp = min(half_up((inscp - dedc) * ratios[level - 1]), cap_left)
    psn = medfee - hifp
    bal = int(fen(req.get("account_balance", "0")))
    acct = min(psn, bal) if req.get("use_account", True) else 0
    aid = min(psn - acct, int(fen(req.get("mutual_aid_balance", "0"))))
    setl = dict(zip(SETLINFO_FIELDS, (medfee, fulamt, overlmt, pre, inscp, dedc, hifp, hifp, psn, acct, aid,
                                      psn - acct - aid, bal - acct)))
    return {"setlinfo": setl, "detlcutinfo": det, "ytd_after": (d_used + dedc, p_paid + hifp)}


def dec(n: int, dp: int) -> str:
    return f"{n // 10**dp}.{n % 10**dp:0{dp}d}"


@st.composite
def items(draw) -> dict[str, Any]:
    cat = draw(st.sampled_from("ABC"))
    it: dict[str, Any] = {
        "code": draw(st.text("ABCXZ0123456789", min_size=1, max_size=8)),
        "category": cat,
        "price": dec(draw(st.integers(0, 2_000_0000)), 4),
        "qty": dec(draw(st.integers(1, 100_0000)), 4),
    }
    if cat == "B" and draw(st.booleans()):
        it["selfpay_prop"] = dec(draw(st.integers(0, 10000)), 4)
    if cat != "C" and draw(st.booleans()):
        it["price_ceiling"] = dec(draw(st.integers(0, 2_000_0000)), 4)
    return it


@st.composite
def requests(draw) -> dict[str, Any]:
    profile = draw(st.sampled_from(sorted(RULES_TABLE)))
    req: dict[str, Any] = {
        "profile": profile,
        "institution_level": draw(st.integers(1, 3)),
        "items": draw(st.lists(items(), min_size=1, max_size=8)),
        "ytd": {"deductible_used": dec(draw(st.integers(0, 30000)), 2), "pool_paid": dec(draw(st.integers(0, 700000)), 2)},
        "account_balance": dec(draw(st.integers(0, 100000)), 2),
        "use_account": draw(st.booleans()),
        "mutual_aid_balance": dec(draw(st.integers(0, 100000)), 2),
    }
    if profile == "yantai-resident-chronic-htn-dm":
        req["conditions"] = draw(st.sampled_from([["htn"], ["dm"], ["htn", "dm"], ["dm", "htn"]]))
    return req


def settle_dict(req: dict[str, Any]) -> Settlement:
    return settle_request(parse_request(req))


@SETTLEMENT
@given(requests())
def test_engine_matches_the_rules_oracle(req):
    s = settle_dict(req)
    want = oracle(req)
    assert s.setlinfo() == want["setlinfo"]
    assert [tuple(vars(d).values()) for d in s.detlcutinfo] == want["detlcutinfo"]
    assert (s.ytd_after.deductible_used, s.ytd_after.pool_paid) == want["ytd_after"]


@SETTLEMENT
@given(requests())
def test_conservation_no_negative_share_and_caps(req):
    s = settle_dict(req)
    for d in s.detlcutinfo:
        assert d.det_item_fee_sumamt == d.fulamt_ownpay_amt + d.overlmt_amt + d.preselfpay_amt + d.inscp_scp_amt
        assert min(vars(d).values()) >= 0
    assert s.medfee_sumamt == sum(d.det_item_fee_sumamt for d in s.detlcutinfo)
    assert s.medfee_sumamt == s.fulamt_ownpay_amt + s.overlmt_selfpay + s.preselfpay_amt + s.inscp_scp_amt
    assert s.medfee_sumamt == s.fund_pay_sumamt + s.psn_part_amt
    assert s.psn_part_amt == s.acct_pay + s.acct_mulaid_pay + s.psn_cash_pay
    assert min(s.setlinfo().values()) >= 0
    r = parse_request(req)
    caps = RULES_TABLE[req["profile"]][2]
    cap_left = max(0, caps[len(req.get("conditions", []))] - r.ytd.pool_paid)
    assert s.hifp_pay <= cap_left
    assert s.ytd_after.pool_paid <= max(r.ytd.pool_paid, caps[len(req.get("conditions", []))])
    assert s.act_pay_dedc <= s.inscp_scp_amt
    assert s.acct_pay <= r.account_balance and s.balc == r.account_balance - s.acct_pay
    assert s.acct_mulaid_pay <= r.mutual_aid_balance
    if not r.use_account:
        assert s.acct_pay == 0


@SETTLEMENT
@given(st.lists(requests(), min_size=1, max_size=5), st.randoms(use_true_random=False))
def test_reversal_restores_accumulators(reqs, rnd):
    # Commit a series of bills for one person (each starts from the last ytd),
    # then reverse them in any order: the accumulators return exactly.
    profile = reqs[0]["profile"]
    start = parse_request(reqs[0]).ytd
    ytd, done = start, []
    for req in reqs:
        req = {**req, "profile": profile, "conditions": reqs[0].get("conditions", [])}
        req.pop("ytd")
        r = parse_request(req)
        s = settle_request(type(r)(r.bill, ytd, r.account_balance, r.use_account, r.mutual_aid_balance))
        assert reverse(s, s.ytd_after) == ytd
        ytd = s.ytd_after
        done.append(s)
    rnd.shuffle(done)
    for s in done:
        ytd = reverse(s, ytd)
    assert ytd == start


@SETTLEMENT
@given(requests())
def test_reversal_never_goes_negative(req):
    s = settle_dict(req)
    short = Ytd(max(0, s.act_pay_dedc - 1), max(0, s.hifp_pay - 1))
    if s.act_pay_dedc or s.hifp_pay:
        with pytest.raises(IntegrityError) as e:
            reverse(s, short)
        assert e.value.code == "reversal_exceeds_ytd"
    else:
        assert reverse(s, short) == short


@SETTLEMENT
@given(requests(), st.randoms(use_true_random=False))
def test_result_is_independent_of_item_order(req, rnd):
    order = list(range(len(req["items"])))
    rnd.shuffle(order)
    shuffled = {**req, "items": [req["items"][i] for i in order]}
    a, b = settle_dict(req), settle_dict(shuffled)
    assert a.setlinfo() == b.setlinfo()
    assert a.ytd_after == b.ytd_after
    assert b.detlcutinfo == tuple(a.detlcutinfo[i] for i in order)


@SETTLEMENT
@given(requests())
def test_json_round_trip(req):
    s = settle_dict(req)
    assert Settlement.from_json(s.to_json()) == s


@SETTLEMENT
@given(requests())
def test_request_json_round_trip(req):
    r = parse_request(req)
    assert parse_request(r.to_json()) == r
