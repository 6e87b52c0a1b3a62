"""`kiosk settle` as an operator runs it: the installed command, in a subprocess."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from kiosk.settlement import sample_bill_text

ROOT = Path(__file__).resolve().parents[2]
KIOSK = ROOT / ".venv" / "bin" / "kiosk"


def kiosk_settle(arg: str, stdin: str | bytes | None = None) -> subprocess.CompletedProcess:
    if not KIOSK.exists():
        pytest.fail(f"{KIOSK} is missing; run ./scripts/setup")
    data = stdin.encode() if isinstance(stdin, str) else stdin
    return subprocess.run([str(KIOSK), "settle", arg], input=data, capture_output=True, timeout=60, cwd=ROOT)


def test_sample_bill_settles(tmp_path):
    # The shipped sample (qingdao level 2, 150.00 of the 200.00 deductible used, account 60.00):
    # A 28.50 x 2 = 5700; B 46.80 x 3 = 14040, over (46.80 - 42.00) x 3 = 1440,
    # pre (14040 - 1440) x 0.10 = 1260, inscp 11340; C 19.90 -> fulamt 1990.
    # medfee 21730, inscp 17040, dedc min(17040, 5000) = 5000,
    # hifp (17040 - 5000) x 0.70 = 8428; psn 13302; acct 6000; cash 7302.
    f = tmp_path / "bill.json"
    f.write_text(sample_bill_text())
    p = kiosk_settle(str(f))
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert set(out) == {"setlinfo", "detlcutinfo", "ytd_after"}
    s = out["setlinfo"]
    assert list(s) == [
        "medfee_sumamt", "fulamt_ownpay_amt", "overlmt_selfpay", "preselfpay_amt", "inscp_scp_amt",
        "act_pay_dedc", "hifp_pay", "fund_pay_sumamt", "psn_part_amt", "acct_pay", "acct_mulaid_pay",
        "psn_cash_pay", "balc",
    ]
    assert (s["medfee_sumamt"], s["inscp_scp_amt"], s["act_pay_dedc"], s["hifp_pay"]) == (
        "217.30", "170.40", "50.00", "84.28")
    assert (s["psn_part_amt"], s["acct_pay"], s["psn_cash_pay"], s["balc"]) == ("133.02", "60.00", "73.02", "0.00")
    assert [d["overlmt_amt"] for d in out["detlcutinfo"]] == ["0.00", "14.40", "0.00"]
    assert list(out["detlcutinfo"][0]) == [
        "det_item_fee_sumamt", "fulamt_ownpay_amt", "overlmt_amt", "preselfpay_amt", "inscp_scp_amt"]
    assert out["ytd_after"] == {"deductible_used": "200.00", "pool_paid": "384.28"}
    # stdin gives the same answer
    p2 = kiosk_settle("-", sample_bill_text())
    assert p2.returncode == 0 and json.loads(p2.stdout) == out


def _bill(**over) -> str:
    b = json.loads(sample_bill_text())
    b.update(over)
    return json.dumps(b)


def _items(i: int, **over) -> list:
    items = json.loads(sample_bill_text())["items"]
    items[i].update(over)
    return items


BAD = [
    ("unknown profile", _bill(profile="shanghai"), "profile: unknown profile"),
    ("level 0", _bill(institution_level=0), "institution_level:"),
    ("level 4", _bill(institution_level=4), "institution_level:"),
    ("unknown category", _bill(items=_items(1, category="Z")), "items[1].category:"),
    ("negative price", _bill(items=_items(0, price="-28.50")), "items[0].price: must not be negative"),
    ("non-numeric price", _bill(items=_items(0, price="twelve")), "items[0].price: is not a number"),
    ("negative qty", _bill(items=_items(2, qty="-1")), "items[2].qty: must not be negative"),
    ("non-numeric qty", _bill(items=_items(2, qty="1x")), "items[2].qty: is not a number"),
    ("5 decimals", _bill(items=_items(2, qty="1.00001")), "items[2].qty: has more than 4 decimal places"),
    ("empty bill", _bill(items=[]), "items: the bill is empty"),
    ("bad json", '{"profile": ', "bill: not valid JSON"),
    ("json array", "[]", "bill: must be a JSON object"),
    ("float price", _bill(items=_items(0, price=28.5)), "items[0].price:"),
    ("bad condition", _bill(conditions=["flu"]), "conditions[0]:"),
    ("bad balance", _bill(account_balance="1.234"), "account_balance:"),
    ("5000-digit number", _bill(institution_level=0).replace(": 0", ": " + "9" * 5000, 1), "bill: not valid JSON"),
    ("deep nesting", _bill(items=[]).replace("[]", "[" * 100_000 + "]" * 100_000), "bill: not valid JSON"),
]


@pytest.mark.parametrize("name, text, expected", BAD, ids=[b[0] for b in BAD])
def test_bad_input_exits_2_with_one_line_naming_the_field(name, text, expected):
    p = kiosk_settle("-", text)
    err = p.stderr.decode()
    assert p.returncode == 2, (p.returncode, err)
    assert p.stdout == b""
    assert "Traceback" not in err
    assert err.count("\n") == 1 and err.startswith("kiosk settle: ")
    assert expected in err


def test_missing_file_exits_2(tmp_path):
    p = kiosk_settle(str(tmp_path / "nope.json"))
    err = p.stderr.decode()
    assert p.returncode == 2 and "nope.json" in err and "Traceback" not in err
