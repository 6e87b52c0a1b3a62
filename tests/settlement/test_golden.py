"""Golden vectors worked out by hand from shared/docs/settlement-rules.md.

Every expected figure below was computed on paper from the rules (the
arithmetic is in the comments, in fen unless a unit is given); none was copied
from the engine's output.
"""
from __future__ import annotations

from kiosk.settlement import reverse, settle_request, parse_request, Ytd

from ._util import item, run

QD = "qingdao-employee-outpatient"  # 80/70/60 %, deductible 0 / 200 / 200 yuan, cap 6000 yuan
YT = "yantai-resident-outpatient"  # 65 %, no deductible, cap 400 yuan
CH = "yantai-resident-chronic-htn-dm"  # 75 %, no deductible, cap 600 (one) / 1000 (both) yuan


def setl(result: dict) -> dict:
    return result["setlinfo"]


def test_deductible_partly_used():
    # qingdao level 3: ratio 60 %, deductible 200.00, 120.00 already used -> 80.00 left.
    # A 150.00 x 1 = 15000; inscp 15000.
    # act_pay_dedc = min(15000, 8000) = 8000
    # hifp = round((15000 - 8000) x 0.60) = 4200
    # psn_part = 15000 - 4200 = 10800, no account -> cash 10800
    # ytd: deductible 12000 + 8000 = 20000; pool 50000 + 4200 = 54200
    r = run(QD, 3, [item("A", "150.00")], ytd={"deductible_used": "120.00", "pool_paid": "500.00"})
    assert setl(r) == {
        "medfee_sumamt": "150.00",
        "fulamt_ownpay_amt": "0.00",
        "overlmt_selfpay": "0.00",
        "preselfpay_amt": "0.00",
        "inscp_scp_amt": "150.00",
        "act_pay_dedc": "80.00",
        "hifp_pay": "42.00",
        "fund_pay_sumamt": "42.00",
        "psn_part_amt": "108.00",
        "acct_pay": "0.00",
        "acct_mulaid_pay": "0.00",
        "psn_cash_pay": "108.00",
        "balc": "0.00",
    }
    assert r["ytd_after"] == {"deductible_used": "200.00", "pool_paid": "542.00"}


def test_deductible_larger_than_bill_takes_whole_inscp():
    # qingdao level 2, nothing used: left 20000. A 50.00 -> inscp 5000.
    # dedc = min(5000, 20000) = 5000; hifp = round(0 x 0.7) = 0; psn 5000.
    r = run(QD, 2, [item("A", "50.00")])
    assert setl(r)["act_pay_dedc"] == "50.00"
    assert setl(r)["hifp_pay"] == "0.00"
    assert setl(r)["psn_cash_pay"] == "50.00"
    assert r["ytd_after"] == {"deductible_used": "50.00", "pool_paid": "0.00"}


def test_level_one_has_no_deductible_even_with_none_used():
    # qingdao level 1: deductible 0, so none is used; hifp = 10000 x 0.80 = 8000.
    r = run(QD, 1, [item("A", "100.00")])
    assert setl(r)["act_pay_dedc"] == "0.00"
    assert setl(r)["hifp_pay"] == "80.00"
    assert r["ytd_after"]["deductible_used"] == "0.00"


def test_deductible_used_above_profile_value_leaves_zero():
    # used 250.00 > 200.00 (profile changed mid-year): left = max(0, 20000 - 25000) = 0.
    # A 10.00 -> hifp = 1000 x 0.70 = 700.
    r = run(QD, 2, [item("A", "10.00")], ytd={"deductible_used": "250.00", "pool_paid": "0"})
    assert setl(r)["act_pay_dedc"] == "0.00"
    assert setl(r)["hifp_pay"] == "7.00"


def test_cap_crossed_inside_a_bill():
    # yantai resident: cap 400.00, 380.00 paid -> 2000 left.
    # A 80.00 x 1 = 8000; round(8000 x 0.65) = 5200 > 2000 -> hifp 2000.
    # psn 8000 - 2000 = 6000; pool after 38000 + 2000 = 40000 (exactly the cap).
    r = run(YT, 1, [item("A", "80.00")], ytd={"deductible_used": "0", "pool_paid": "380.00"})
    assert setl(r)["hifp_pay"] == "20.00"
    assert setl(r)["fund_pay_sumamt"] == "20.00"
    assert setl(r)["psn_part_amt"] == "60.00"
    assert setl(r)["psn_cash_pay"] == "60.00"
    assert r["ytd_after"] == {"deductible_used": "0.00", "pool_paid": "400.00"}


def test_cap_exhausted_or_exceeded_pays_nothing():
    # cap left = max(0, 40000 - 40000) = 0 and max(0, 40000 - 45000) = 0.
    for paid in ("400.00", "450.00"):
        r = run(YT, 2, [item("A", "80.00")], ytd={"pool_paid": paid})
        assert setl(r)["hifp_pay"] == "0.00"
        assert setl(r)["psn_part_amt"] == "80.00"


def test_class_b_with_ceiling():
    # qingdao level 1 (80 %, no deductible). B price 12.3456, qty 3, ceiling 10.0000, prop 0.15.
    # total = 12.3456 x 3 = 37.0368 yuan = 3703.68 fen -> 3704
    # overlmt = (12.3456 - 10) x 3 = 7.0368 yuan = 703.68 -> 704
    # preselfpay = round((3704 - 704) x 0.15) = 450
    # inscp = 3704 - 0 - 704 - 450 = 2550; hifp = 2550 x 0.80 = 2040
    # psn = 3704 - 2040 = 1664
    r = run(QD, 1, [item("B", "12.3456", "3", selfpay_prop="0.15", price_ceiling="10.0000")])
    assert r["detlcutinfo"] == [
        {
            "det_item_fee_sumamt": "37.04",
            "fulamt_ownpay_amt": "0.00",
            "overlmt_amt": "7.04",
            "preselfpay_amt": "4.50",
            "inscp_scp_amt": "25.50",
        }
    ]
    s = setl(r)
    assert (s["overlmt_selfpay"], s["preselfpay_amt"], s["inscp_scp_amt"]) == ("7.04", "4.50", "25.50")
    assert (s["hifp_pay"], s["psn_part_amt"]) == ("20.40", "16.64")


def test_class_b_default_prop_and_price_at_ceiling():
    # B 20.00 x 2 with ceiling 20.00 (not above) -> overlmt 0; default prop 0.10.
    # total 4000; pre = 4000 x 0.10 = 400; inscp 3600.
    # A 30.00 with ceiling 25.00: overlmt = 5.00 x 1 = 500; A has no preselfpay; inscp 2500.
    # bill inscp 6100; yantai 65 %: hifp = 3965; medfee 7000; psn 3035.
    r = run(YT, 3, [item("B", "20.00", "2", price_ceiling="20.00"), item("A", "30.00", price_ceiling="25")])
    assert [d["overlmt_amt"] for d in r["detlcutinfo"]] == ["0.00", "5.00"]
    assert [d["preselfpay_amt"] for d in r["detlcutinfo"]] == ["4.00", "0.00"]
    s = setl(r)
    assert (s["medfee_sumamt"], s["inscp_scp_amt"], s["hifp_pay"], s["psn_part_amt"]) == (
        "70.00",
        "61.00",
        "39.65",
        "30.35",
    )


def test_class_c_only_paid_from_account():
    # yantai resident; C 35.50 x 2 = 7100; C 8.8888 x 1.5 = 13.3332 yuan = 1333.32 -> 1333.
    # fulamt = 8433 = medfee; inscp 0 -> hifp 0; psn 8433.
    # account 100.00: acct = min(8433, 10000) = 8433; balc 1567; cash 0.
    r = run(YT, 1, [item("C", "35.50", "2"), item("C", "8.8888", "1.5")], account_balance="100.00")
    assert setl(r) == {
        "medfee_sumamt": "84.33",
        "fulamt_ownpay_amt": "84.33",
        "overlmt_selfpay": "0.00",
        "preselfpay_amt": "0.00",
        "inscp_scp_amt": "0.00",
        "act_pay_dedc": "0.00",
        "hifp_pay": "0.00",
        "fund_pay_sumamt": "0.00",
        "psn_part_amt": "84.33",
        "acct_pay": "84.33",
        "acct_mulaid_pay": "0.00",
        "psn_cash_pay": "0.00",
        "balc": "15.67",
    }
    assert r["detlcutinfo"][1]["fulamt_ownpay_amt"] == "13.33"
    assert r["ytd_after"] == {"deductible_used": "0.00", "pool_paid": "0.00"}


def test_class_c_selfpay_prop_and_ceiling_do_not_change_a_c_line():
    # C is wholly self-paid: fulamt = total = 1000, nothing over-ceiling or pre-self-paid.
    r = run(YT, 1, [item("C", "10.00", selfpay_prop="0.5", price_ceiling="5.00")])
    assert r["detlcutinfo"][0] == {
        "det_item_fee_sumamt": "10.00",
        "fulamt_ownpay_amt": "10.00",
        "overlmt_amt": "0.00",
        "preselfpay_amt": "0.00",
        "inscp_scp_amt": "0.00",
    }


def test_account_short():
    # qingdao level 2, deductible exhausted (200.00 used). A 100.00 -> inscp 10000, dedc 0.
    # hifp = 10000 x 0.70 = 7000; psn 3000; account 12.34 -> acct 1234, balc 0, cash 1766.
    r = run(QD, 2, [item("A", "100.00")], ytd={"deductible_used": "200.00"}, account_balance="12.34")
    s = setl(r)
    assert (s["hifp_pay"], s["psn_part_amt"], s["acct_pay"], s["balc"], s["psn_cash_pay"]) == (
        "70.00",
        "30.00",
        "12.34",
        "0.00",
        "17.66",
    )


def test_account_not_used_when_patient_declines():
    # same bill, use_account false: acct 0, balance untouched (balc 1234), cash 3000.
    r = run(
        QD, 2, [item("A", "100.00")], ytd={"deductible_used": "200.00"}, account_balance="12.34", use_account=False
    )
    s = setl(r)
    assert (s["acct_pay"], s["balc"], s["psn_cash_pay"]) == ("0.00", "12.34", "30.00")


def test_mutual_aid_after_own_account():
    # same bill (psn 3000). own account 10.00 -> acct 1000; remaining 2000;
    # relative's balance 15.00 -> mulaid = min(2000, 1500) = 1500; cash 500.
    r = run(
        QD,
        2,
        [item("A", "100.00")],
        ytd={"deductible_used": "200.00"},
        account_balance="10.00",
        mutual_aid_balance="15.00",
    )
    s = setl(r)
    assert (s["acct_pay"], s["acct_mulaid_pay"], s["psn_cash_pay"], s["balc"]) == ("10.00", "15.00", "5.00", "0.00")
    # relative's balance 50.00 covers the whole remaining 2000 -> cash 0
    r = run(
        QD,
        2,
        [item("A", "100.00")],
        ytd={"deductible_used": "200.00"},
        account_balance="10.00",
        mutual_aid_balance="50.00",
    )
    s = setl(r)
    assert (s["acct_pay"], s["acct_mulaid_pay"], s["psn_cash_pay"]) == ("10.00", "20.00", "0.00")


def test_both_chronic_conditions_raise_the_cap():
    # chronic profile, 75 %. A 200.00 -> round(20000 x 0.75) = 15000.
    # one condition: cap 60000, 55000 paid -> 5000 left -> hifp 5000, psn 15000.
    # both conditions: cap 100000, 55000 paid -> 45000 left -> hifp 15000, psn 5000.
    one = run(CH, 2, [item("A", "200.00")], ytd={"pool_paid": "550.00"}, conditions=["htn"])
    both = run(CH, 2, [item("A", "200.00")], ytd={"pool_paid": "550.00"}, conditions=["htn", "dm"])
    assert (setl(one)["hifp_pay"], setl(one)["psn_part_amt"]) == ("50.00", "150.00")
    assert (setl(both)["hifp_pay"], setl(both)["psn_part_amt"]) == ("150.00", "50.00")
    assert one["ytd_after"]["pool_paid"] == "600.00"
    assert both["ytd_after"]["pool_paid"] == "700.00"
    # both, 900.00 paid -> 10000 left < 15000 -> capped at 10000
    capped = run(CH, 1, [item("A", "200.00")], ytd={"pool_paid": "900.00"}, conditions=["dm", "htn"])
    assert setl(capped)["hifp_pay"] == "100.00"
    assert capped["ytd_after"]["pool_paid"] == "1000.00"


def test_half_up_rounding_at_half_a_fen():
    # item total: 1.0025 x 2 = 2.005 yuan = 200.5 fen -> 201 (half-up, not banker's 200)
    # 0.0049 x 1 = 0.49 fen -> 0
    # qingdao level 2, deductible exhausted: inscp 201; hifp = 201 x 0.70 = 140.7 -> 141
    r = run(QD, 2, [item("A", "1.0025", "2"), item("A", "0.0049")], ytd={"deductible_used": "200"})
    assert [d["det_item_fee_sumamt"] for d in r["detlcutinfo"]] == ["2.01", "0.00"]
    assert setl(r)["hifp_pay"] == "1.41"
    # pooling step lands on .5 fen: 12345 x 0.70 = 8641.5 -> 8642; psn = 12345 - 8642 = 3703
    r = run(QD, 2, [item("A", "123.45")], ytd={"deductible_used": "200"})
    assert (setl(r)["hifp_pay"], setl(r)["psn_part_amt"]) == ("86.42", "37.03")
    # preselfpay lands on .5 fen: B 10.05 -> 1005 x 0.10 = 100.5 -> 101; inscp 904
    r = run(YT, 1, [item("B", "10.05")])
    assert (r["detlcutinfo"][0]["preselfpay_amt"], r["detlcutinfo"][0]["inscp_scp_amt"]) == ("1.01", "9.04")
    # overlmt lands on .5 fen: (1.0050 - 1.0000) x 1 = 0.005 yuan -> 1 fen
    r = run(YT, 1, [item("A", "1.0050", price_ceiling="1.0000")])
    assert r["detlcutinfo"][0]["overlmt_amt"] == "0.01"


def test_pooling_rounds_once_per_bill_not_per_item():
    # yantai 65 %: two A lines of 0.10 yuan (10 fen each).
    # per bill: round(20 x 0.65) = 13 (per item would give 7 + 7 = 14).
    r = run(YT, 1, [item("A", "0.10"), item("A", "0.10")])
    assert setl(r)["hifp_pay"] == "0.13"
    assert setl(r)["psn_part_amt"] == "0.07"


def test_reversal_restores_accumulators_exactly():
    # first bill: the deductible-partly-used vector above (dedc 8000, hifp 4200)
    before = Ytd(deductible_used=12000, pool_paid=50000)
    req = parse_request(
        {"profile": QD, "institution_level": 3, "items": [item("A", "150.00")],
         "ytd": {"deductible_used": "120.00", "pool_paid": "500.00"}}
    )
    s = settle_request(req)
    assert s.ytd_after == Ytd(20000, 54200)
    assert reverse(s, s.ytd_after) == before
