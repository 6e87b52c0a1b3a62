"""Two more bills worked out by hand from shared/docs/settlement-rules.md by an
auditor, independently of test_golden.py, and checked through `kiosk settle`
(the installed command) field by field. Figures in fen unless a unit is given.
"""
from __future__ import annotations

import json

from kiosk.settlement import Ytd, parse_request, reverse, settle_request

from .test_cli import kiosk_settle

# qingdao-employee-outpatient, level 2: ratio 0.70, deductible 200.00, cap 6000.00.
# B-CEIL: Class B 12.3456 x 7.3, ceiling 11.50, default selfpay_prop 0.10
#   total   = round(90.12288 yuan)            = 9012
#   overlmt = round((12.3456-11.50) x 7.3 = 6.17288 yuan) = 617
#   presel  = round((9012-617) x 0.10 = 839.5) = 840 (half-up)
#   inscp   = 9012 - 617 - 840                = 7555
# Class A 150.00 x 1, ceiling 200 (not crossed) -> 15000 all inscp
# C-1: Class C 8.005 x 1 -> round(800.5) = 801 all fulamt_ownpay
# medfee 24813, fulamt 801, overlmt 617, presel 840, inscp 22555
# deductible left 20000 - 12000 = 8000 -> act_pay_dedc = 8000 (deductible crossed)
# hifp = round((22555-8000) x 0.70 = 10188.5) = 10189 (cap left 600000)
# psn_part = 24813 - 10189 = 14624; account 5000 -> acct_pay 5000, balc 0; cash 9624
# ytd_after: deductible 12000+8000 = 20000; pool 0+10189
BILL_CEILING_DEDUCTIBLE = {
    "profile": "qingdao-employee-outpatient",
    "institution_level": 2,
    "items": [
        {"code": "B-CEIL", "category": "B", "price": "12.3456", "qty": "7.3", "price_ceiling": "11.50"},
        {"code": "A-1", "category": "A", "price": "150.00", "qty": "1", "price_ceiling": "200"},
        {"code": "C-1", "category": "C", "price": "8.005", "qty": "1"},
    ],
    "ytd": {"deductible_used": "120.00", "pool_paid": "0"},
    "account_balance": "50.00",
}
EXPECTED_CEILING_DEDUCTIBLE = {
    "setlinfo": {
        "medfee_sumamt": "248.13", "fulamt_ownpay_amt": "8.01", "overlmt_selfpay": "6.17",
        "preselfpay_amt": "8.40", "inscp_scp_amt": "225.55", "act_pay_dedc": "80.00",
        "hifp_pay": "101.89", "fund_pay_sumamt": "101.89", "psn_part_amt": "146.24",
        "acct_pay": "50.00", "acct_mulaid_pay": "0.00", "psn_cash_pay": "96.24", "balc": "0.00",
    },
    "detlcutinfo": [
        {"det_item_fee_sumamt": "90.12", "fulamt_ownpay_amt": "0.00", "overlmt_amt": "6.17",
         "preselfpay_amt": "8.40", "inscp_scp_amt": "75.55"},
        {"det_item_fee_sumamt": "150.00", "fulamt_ownpay_amt": "0.00", "overlmt_amt": "0.00",
         "preselfpay_amt": "0.00", "inscp_scp_amt": "150.00"},
        {"det_item_fee_sumamt": "8.01", "fulamt_ownpay_amt": "8.01", "overlmt_amt": "0.00",
         "preselfpay_amt": "0.00", "inscp_scp_amt": "0.00"},
    ],
    "ytd_after": {"deductible_used": "200.00", "pool_paid": "101.89"},
}

# yantai-resident-chronic-htn-dm, level 1, both conditions: ratio 0.75, no deductible, cap 1000.00.
# A-HTN: 23.4567 x 4 = 93.8268 yuan -> 9383
# B-DM:  45.00 x 2, selfpay_prop 0.2 -> 9000; presel 1800; inscp 7200
# A-TINY: 0.0050 x 1 -> round(0.5 fen) = 1 (half-up at .005)
# medfee 18384, presel 1800, inscp 9383+7200+1 = 16584; dedc 0
# hifp = round(16584 x 0.75) = 12438, capped by 100000 - 95000 = 5000 -> 5000
# psn_part 13384; own account 3000 -> acct_pay 3000, balc 0; remaining 10384
# mutual aid min(10384, 10000) = 10000; cash 384
# ytd_after pool 95000 + 5000 = 100000 (the both-conditions cap exactly)
BILL_CHRONIC_MUTUAL_AID = {
    "profile": "yantai-resident-chronic-htn-dm",
    "institution_level": 1,
    "items": [
        {"code": "A-HTN", "category": "A", "price": "23.4567", "qty": "4"},
        {"code": "B-DM", "category": "B", "price": "45.00", "qty": "2", "selfpay_prop": "0.2"},
        {"code": "A-TINY", "category": "A", "price": "0.0050", "qty": "1"},
    ],
    "ytd": {"deductible_used": "0", "pool_paid": "950.00"},
    "account_balance": "30.00",
    "use_account": True,
    "mutual_aid_balance": "100.00",
    "conditions": ["dm", "htn"],
}
EXPECTED_CHRONIC_MUTUAL_AID = {
    "setlinfo": {
        "medfee_sumamt": "183.84", "fulamt_ownpay_amt": "0.00", "overlmt_selfpay": "0.00",
        "preselfpay_amt": "18.00", "inscp_scp_amt": "165.84", "act_pay_dedc": "0.00",
        "hifp_pay": "50.00", "fund_pay_sumamt": "50.00", "psn_part_amt": "133.84",
        "acct_pay": "30.00", "acct_mulaid_pay": "100.00", "psn_cash_pay": "3.84", "balc": "0.00",
    },
    "detlcutinfo": [
        {"det_item_fee_sumamt": "93.83", "fulamt_ownpay_amt": "0.00", "overlmt_amt": "0.00",
         "preselfpay_amt": "0.00", "inscp_scp_amt": "93.83"},
        {"det_item_fee_sumamt": "90.00", "fulamt_ownpay_amt": "0.00", "overlmt_amt": "0.00",
         "preselfpay_amt": "18.00", "inscp_scp_amt": "72.00"},
        {"det_item_fee_sumamt": "0.01", "fulamt_ownpay_amt": "0.00", "overlmt_amt": "0.00",
         "preselfpay_amt": "0.00", "inscp_scp_amt": "0.01"},
    ],
    "ytd_after": {"deductible_used": "0.00", "pool_paid": "1000.00"},
}


def _cli(bill: dict) -> dict:
    p = kiosk_settle("-", json.dumps(bill))
    assert p.returncode == 0, p.stderr
    assert p.stderr == b""
    return json.loads(p.stdout)


def test_class_b_ceiling_and_deductible_crossing_via_cli():
    assert _cli(BILL_CEILING_DEDUCTIBLE) == EXPECTED_CEILING_DEDUCTIBLE


def test_chronic_both_conditions_with_mutual_aid_via_cli():
    assert _cli(BILL_CHRONIC_MUTUAL_AID) == EXPECTED_CHRONIC_MUTUAL_AID


def test_one_condition_cap_already_exceeded_pays_nothing():
    # Same chronic bill with one condition: cap 600.00 but 950.00 already paid -> left 0.
    bill = {**BILL_CHRONIC_MUTUAL_AID, "conditions": ["htn"]}
    s = _cli(bill)["setlinfo"]
    assert (s["hifp_pay"], s["psn_part_amt"], s["acct_pay"], s["acct_mulaid_pay"], s["psn_cash_pay"]) == (
        "0.00", "183.84", "30.00", "100.00", "53.84")


def test_declined_account_keeps_balance_and_mutual_aid_still_pays():
    # use_account false: acct_pay 0, balc stays 30.00; mutual aid 100.00; cash 133.84 - 100.00 = 33.84
    s = _cli({**BILL_CHRONIC_MUTUAL_AID, "use_account": False})["setlinfo"]
    assert (s["acct_pay"], s["balc"], s["acct_mulaid_pay"], s["psn_cash_pay"]) == ("0.00", "30.00", "100.00", "33.84")


def test_reversal_of_both_bills_restores_the_accumulators():
    for bill in (BILL_CEILING_DEDUCTIBLE, BILL_CHRONIC_MUTUAL_AID):
        req = parse_request(bill)
        settlement = settle_request(req)
        assert reverse(settlement, settlement.ytd_after) == req.ytd
        assert req.ytd != Ytd()
