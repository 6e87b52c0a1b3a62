"""Item-level returns at the counter (issue 14, returns half): the POS sends the returned lines, the
patient confirms by face at the terminal, the kiosk reverses the settlement (2208), settles the kept
lines anew (2207) and moves the difference back through every source (fund, account, credit line).

The golden cases (a partial quantity of one line; a return that moves the deductible, at the level-2
hospital; one with mutual aid; one with a family-pay draw) are worked by hand from
../shared/docs/settlement-rules.md and checked against `kiosk settle` of the kept lines on the
year-to-date as it was before the original payment, and against the books after the return.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from kiosk.app.demo import DEMO_BILL, scene
from kiosk.app.store import RETURN_PREFIX
from kiosk.app.terminal import kept_bill, return_receipt
from kiosk.errors import InputError
from kiosk.money import fen_to_yuan, yuan_to_fen
from kiosk.storage import open_database

from kiosk.app.demo import FAMILY_HOLDER

from tests.app.test_crash_flows import available, bank_rows, draws, restart, services_check
from tests.app.test_e2e import HAS_BANK, LI, LIU, OTHER_POS, WANG, ZHANG, balance, centre_rows, crash_kiosk, pay_order, stack  # noqa: F401

pytestmark = pytest.mark.skipif(not HAS_BANK, reason="kiosk.services.bank not landed yet")
SYSTEM = "demo-pos"
ONE_AMOXICILLIN = [{"code": "XA01", "qty": "1"}]  # of the 2 bought


def do_return(st: Any, oid: str, rid: str, lines: list[dict[str, str]], person: str,
              timeout: float = 40.0) -> tuple[int, dict[str, Any]]:
    """POST the return, the patient at the terminal (face, confirm key), then the return's final state."""
    st.typist.clear()
    st.typist.plan("confirm", "<enter>")
    st.camera.show(scene(st, person))
    try:
        r = st.pos_client.return_lines(oid, rid, lines)
        if r.status_code != 202:
            return r.status_code, r.json()
        end = time.monotonic() + timeout
        while True:
            got = st.pos_client.get_return(oid, rid, wait=10).json()
            if got["status"] not in ("pending", "running") or time.monotonic() > end:
                return r.status_code, got
    finally:
        st.camera.clear()


def ytd(st: Any, psn: str) -> tuple[int, int]:
    rows = centre_rows(st, "SELECT deductible_used, pool_paid FROM centre_ytd WHERE psn_no = ?", (psn,))
    return (int(rows[0][0]), int(rows[0][1])) if rows else (0, 0)


def kiosk_settle(st: Any, tmp: Path, bill: dict[str, Any], ytd_before: tuple[int, int], acct: int,
                 level: int = 1) -> dict[str, Any]:
    """`kiosk settle` of a bill of the demo catalogue (categories as the centre's seed) at `level`."""
    from kiosk.services.seed import CATALOGUE

    items = []
    for it in bill["items"]:
        _name, cat, prop, ceiling = CATALOGUE[it["code"]]
        items.append({"code": it["code"], "category": cat, "price": it["price"], "qty": it["qty"],
                      **({"selfpay_prop": prop} if prop else {}), **({"price_ceiling": ceiling} if ceiling else {})})
    req = {"profile": "qingdao-employee-outpatient", "institution_level": level, "items": items,
           "ytd": {"deductible_used": fen_to_yuan(ytd_before[0]), "pool_paid": fen_to_yuan(ytd_before[1])},
           "account_balance": fen_to_yuan(acct), "use_account": True}
    f = tmp / "kept.json"
    f.write_text(json.dumps(req))
    out = subprocess.run([sys.executable, "-m", "kiosk.cli", "settle", str(f)], capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout)


# ------------------------------------------------------------------------------------------ at the door
def test_returned_lines_are_checked_against_the_bill() -> None:
    kept = kept_bill(DEMO_BILL, ONE_AMOXICILLIN)
    assert kept is not None and [(i["code"], i["qty"]) for i in kept["items"]] == [
        ("F001", "1"), ("XA01", "1"), ("XB01", "1"), ("XC01", "1")]
    assert kept_bill(DEMO_BILL, [{"code": c, "qty": q} for c, q in
                                 (("F001", "1"), ("XA01", "2"), ("XB01", "1"), ("XC01", "1"))]) is None
    for lines, field in (([{"code": "ZZ99", "qty": "1"}], "lines.0.code"),
                         ([{"code": "XA01", "qty": "3"}], "lines.0.qty"),
                         ([{"code": "XA01", "qty": "0"}], "lines.0.qty"),
                         ([{"code": "XA01", "qty": "1"}, {"code": "XA01", "qty": "1"}], "lines.1.code")):
        with pytest.raises(InputError) as e:
            kept_bill(DEMO_BILL, lines)
        assert e.value.field == field


def test_receipt_shows_old_and_new_side_by_side() -> None:
    o = {"setl_id": "S1", "medfee_sumamt": "104.00", "fund_pay_sumamt": "70.00", "acct_pay": "15.00",
         "acct_mulaid_pay": "0.00", "credit_draw": "19.00", "cash_pay": "0.00"}
    n = {**o, "setl_id": "S2", "medfee_sumamt": "85.50", "fund_pay_sumamt": "55.20", "credit_draw": "15.30"}
    b = {k: fen_to_yuan(yuan_to_fen(o[k], k) - yuan_to_fen(n[k], k)) for k in o if k != "setl_id"}
    lines = return_receipt("E1", "李娜", {"return_id": "R1", "old": o, "new": n, "back": b})
    fund = next(x for x in lines if x.startswith("统筹"))
    assert fund.split()[-3:] == ["70.00", "55.20", "14.80"]
    from firmware_bridge.escpos import width

    table = lines[lines.index(fund) - 2:lines.index(fund) + 5]
    assert all(width(x) <= 32 for x in table), table  # 58 mm paper: the columns stay aligned
    assert len({width(x) for x in table}) == 1, table
    legend = lines[lines.index(fund) + 5:]
    assert legend and all(width(x) <= 32 for x in legend), legend  # the legend is not wrapped mid-word
    assert "李*" in "".join(lines) and "李娜" not in "".join(lines)


# ------------------------------------------------------------------------------------------ the golden return
def test_partial_return_resettles_the_kept_lines_like_kiosk_settle(stack, tmp_path):
    """李娜 pays the demo bill (fund, her account, her credit line), then gives back 1 of the 2 amoxicillin.

    By hand (settlement-rules.md, qingdao employee, level 1: 80 %, no deductible):
      original 104.00: within policy 10.00 + 37.00 + (45.00 - 4.50) = 87.50 -> fund 70.00; personal 34.00
      kept 85.50: within policy 10.00 + 18.50 + 40.50 = 69.00 -> fund 55.20; personal 30.30 =
      account 15.00 (her balance, given back by the reversal) + credit 15.30.
      Back: fund 14.80, account 0.00, credit 19.00 - 15.30 = 3.70 (18.50 in all, the returned box)."""
    acct0, avail0, ytd0 = balance(stack, LI), available(stack, LI), ytd(stack, LI)
    assert acct0 == 1500, "the golden numbers assume her fresh 15.00 balance"
    got = pay_order(stack, {"order_id": "E-RET-1", "bill": DEMO_BILL}, LI)
    assert got["status"] == "paid" and got["result"]["credit_draw"] == "19.00", got
    old_setl = got["result"]["setl_id"]
    code, ret = do_return(stack, "E-RET-1", "RT-1", ONE_AMOXICILLIN, LI)
    assert code == 202 and ret["status"] == "returned", ret
    new, back = ret["result"]["new"], ret["result"]["back"]
    assert (new["medfee_sumamt"], new["fund_pay_sumamt"], new["acct_pay"], new["acct_mulaid_pay"],
            new["credit_draw"], new["cash_pay"]) == ("85.50", "55.20", "15.00", "0.00", "15.30", "0.00")
    assert (back["fund_pay_sumamt"], back["acct_pay"], back["credit_draw"], back["cash_pay"]) == (
        "14.80", "0.00", "3.70", "0.00")
    ref = kiosk_settle(stack, tmp_path, kept_bill(DEMO_BILL, ONE_AMOXICILLIN), ytd0, acct0)["setlinfo"]
    assert (ref["medfee_sumamt"], ref["fund_pay_sumamt"], ref["acct_pay"], ref["psn_cash_pay"]) == (
        new["medfee_sumamt"], new["fund_pay_sumamt"], new["acct_pay"],
        fen_to_yuan(yuan_to_fen(new["credit_draw"], "c") + yuan_to_fen(new["cash_pay"], "c")))
    # the books: old settlement reversed, new one standing; the draw refunded whole and a new one made
    assert centre_rows(stack, "SELECT state FROM centre_settlements WHERE setl_id = ?", (old_setl,)) == [("reversed",)]
    assert centre_rows(stack, "SELECT state FROM centre_settlements WHERE setl_id = ?", (new["setl_id"],)) == [
        ("settled",)]
    assert draws(stack, old_setl) == [(1900, 0, 1900)] and draws(stack, new["setl_id"]) == [(1530, 1530, 0)]
    assert available(stack, LI) == avail0 - 1530 and balance(stack, LI) == acct0 - 1500
    order = stack.pos_client.get("E-RET-1").json()
    assert order["status"] == "returned" and order["result"]["setl_id"] == new["setl_id"]
    assert order["result"]["returned"]["old"]["setl_id"] == old_setl
    # idempotent by return id
    again = stack.pos_client.return_lines("E-RET-1", "RT-1", ONE_AMOXICILLIN)
    assert again.status_code == 200 and again.json()["result"] == ret["result"]
    other = stack.pos_client.return_lines("E-RET-1", "RT-1", [{"code": "XC01", "qty": "1"}])
    assert other.status_code == 409 and other.json()["code"] == "return_conflict"
    assert stack.pos_client.return_lines("E-RET-1", "RT-2", [{"code": "XC01", "qty": "1"}]).status_code == 409
    services_check(stack)


def test_bad_lines_are_refused_at_the_door_and_another_pos_finds_no_order(stack):
    got = pay_order(stack, {"order_id": "E-RET-2", "bill": DEMO_BILL}, LI)
    assert got["status"] == "paid", got
    r = stack.pos_client.return_lines("E-RET-2", "RT-X", [{"code": "XA01", "qty": "2.5"}])
    assert r.status_code == 422 and r.json()["field"] == "lines.0.qty", r.text
    r = stack.pos_client.return_lines("E-RET-2", "RT-X", [{"code": "NOPE", "qty": "1"}])
    assert r.status_code == 422 and r.json()["field"] == "lines.0.code", r.text
    from kiosk.app.pos_client import PosClient

    other = PosClient(stack.url("kiosk"), OTHER_POS, stack.other_pos_key)
    mine = other.return_lines("E-RET-2", "RT-X", ONE_AMOXICILLIN)
    none = other.return_lines("E-NO-SUCH", "RT-X", ONE_AMOXICILLIN)
    assert mine.status_code == none.status_code == 404
    assert (mine.json()["code"], mine.json()["field"]) == (none.json()["code"], none.json()["field"]) == (
        "not_found", "order_id")
    assert other.get_return("E-RET-2", "RT-X").status_code == 404
    assert stack.pos_client.get("E-RET-2").json()["status"] == "paid"  # nothing changed
    # keeping nothing is a whole refund
    everything = [{"code": i["code"], "qty": i["qty"]} for i in DEMO_BILL["items"]]
    r = stack.pos_client.return_lines("E-RET-2", "RT-ALL", everything)
    assert r.status_code == 201 and r.json()["status"] == "refunded" and r.json()["whole"], r.text
    assert stack.pos_client.get("E-RET-2").json()["status"] == "refunded"


def test_a_return_whose_resettlement_answer_was_lost_is_pending_then_completed_by_key(stack):
    """The centre's answer to the kept lines' 2207 is lost: the return is return_pending (never failed:
    the centre may well have settled), and recovery completes it with the journaled msgid: the
    centre replays the settlement, nothing is settled twice."""
    got = pay_order(stack, {"order_id": "E-RET-NET", "bill": DEMO_BILL}, LI)
    assert got["status"] == "paid", got
    standing = len(centre_rows(stack, "SELECT setl_id FROM centre_settlements WHERE psn_no = ? AND state = 'settled'",
                               (LI,)))
    stack.relay.cut_after("POST /fsi/api/2207")
    try:
        code, ret = do_return(stack, "E-RET-NET", "RT-NET", ONE_AMOXICILLIN, LI)
        assert stack.relay.fired.is_set()
        assert code == 202 and (ret["status"], ret["result"]["waiting_for"]) == ("return_pending", "centre"), ret
        assert stack.pos_client.get("E-RET-NET").json()["status"] == "returning"
    finally:
        stack.relay.restore()
    assert stack.runtime.terminal.wait_idle()
    stack.runtime.terminal.recover()
    done = stack.pos_client.get_return("E-RET-NET", "RT-NET").json()
    assert done["status"] == "returned", done
    assert stack.pos_client.get("E-RET-NET").json()["status"] == "returned"
    assert len(centre_rows(stack, "SELECT setl_id FROM centre_settlements WHERE psn_no = ? AND state = 'settled'",
                           (LI,))) == standing  # the original reversed, the kept lines settled once
    assert draws(stack, done["result"]["new"]["setl_id"]) == [
        (yuan_to_fen(done["result"]["new"]["credit_draw"], "c"),) * 2 + (0,)]


def test_another_patients_face_cannot_confirm_a_return(stack):
    """张伟 (activated, at the counter) is not the patient of 李娜's order: the return fails before any
    money moves and her order is paid as before."""
    assert pay_order(stack, {"order_id": "E-RET-ZH", "bill": DEMO_BILL}, ZHANG)["status"] == "paid"
    got = pay_order(stack, {"order_id": "E-RET-OTHER", "bill": DEMO_BILL}, LI)
    assert got["status"] == "paid", got
    code, ret = do_return(stack, "E-RET-OTHER", "RT-OTHER", ONE_AMOXICILLIN, ZHANG)
    assert code == 202 and (ret["status"], ret["reason"]) == ("failed", "not_matched"), ret
    assert ret["result"]["fallback"]["confirm"] == "cashier", ret  # the POS is told the cashier may confirm it
    assert stack.pos_client.get("E-RET-OTHER").json()["status"] == "paid"
    assert centre_rows(stack, "SELECT state FROM centre_settlements WHERE setl_id = ?",
                       (got["result"]["setl_id"],)) == [("settled",)]


OPERATOR = {"id": "C-007", "name": "赵敏"}


def cashier_return(st: Any, oid: str, rid: str, lines: list[dict[str, str]], operator: dict[str, str] = OPERATOR,
                   timeout: float = 40.0) -> tuple[int, dict[str, Any], list[Any]]:
    """POST a return the cashier confirms (no face: the camera shows nobody), the confirm key; the final
    state and every snapshot the patient's screen got meanwhile."""
    snaps: list[Any] = []
    st.typist.clear()
    st.typist.plan("confirm", "<enter>")
    st.camera.clear()
    st.runtime.listeners.append(snaps.append)
    try:
        r = st.pos_client.return_lines(oid, rid, lines, operator=operator)
        if r.status_code != 202:
            return r.status_code, r.json(), snaps
        end = time.monotonic() + timeout
        while True:
            got = st.pos_client.get_return(oid, rid, wait=10).json()
            if got["status"] not in ("pending", "running") or time.monotonic() > end:
                return r.status_code, got, snaps
    finally:
        st.runtime.listeners.remove(snaps.append)


PAY_WORDS = ("pay", "Pay", "PAY", "支付", "扣款", "charged", "付款")


def test_the_cashier_confirms_a_return_when_the_face_cannot(stack, monkeypatch):
    """The patient cannot pass the face: the POS sends the return with confirm=cashier and the operator.
    No face, the old and new split on the screen, the confirm key; the same re-settlement as with the
    face (on the original settlement's authority), the operator in the journal, the audit chain and on
    the receipt; the patient's screen reads return texts throughout, never a payment prompt."""
    got = pay_order(stack, {"order_id": "E-RET-CASH", "bill": DEMO_BILL}, LI)
    assert got["status"] == "paid", got
    old_setl = got["result"]["setl_id"]
    printer, receipts = stack.runtime.terminal.deps.printer, []
    send = printer.print_receipt
    monkeypatch.setattr(printer, "print_receipt", lambda lines: (receipts.append(list(lines)), send(lines))[1])
    code, ret, snaps = cashier_return(stack, "E-RET-CASH", "RT-CASH", ONE_AMOXICILLIN)
    assert code == 202 and ret["status"] == "returned", ret
    res = ret["result"]
    assert res["confirm"] == "cashier" and res["operator"] == OPERATOR
    assert (res["old"]["setl_id"], res["new"]["medfee_sumamt"], res["back"]["medfee_sumamt"]) == (
        old_setl, "85.50", "18.50")
    assert centre_rows(stack, "SELECT state FROM centre_settlements WHERE setl_id = ?", (old_setl,)) == [("reversed",)]
    assert centre_rows(stack, "SELECT orig_setl_id, by_face FROM centre_resettlements WHERE orig_setl_id = ?",
                       (old_setl,)) == [(old_setl, 0)]
    # the screen: no face step, the old split beside the new one at the confirm, return texts only
    states = [str(sn.state) for sn in snaps]
    assert "face_capture" not in states and "confirm" in states and states[-1] == "done", states
    confirm = next(sn for sn in snaps if str(sn.state) == "confirm")
    assert confirm.info["amounts_old"]["medfee_sumamt"] == "104.00" and confirm.amounts["medfee_sumamt"] == "85.50"
    for sn in snaps:
        texts = " ".join(t or "" for t in (sn.prompt_zh, sn.prompt_en, sn.reason_zh, sn.reason_en))
        assert not any(w in texts for w in PAY_WORDS), (sn.state, texts)
    # who vouched: journal, audit chain, receipt
    steps = stack.runtime.terminal.store.steps(SYSTEM, RETURN_PREFIX + "RT-CASH")
    assert ("cashier_confirm", {"operator_id": "C-007", "operator_name": "赵敏"}) in steps
    plan = next(d for s_, d in steps if s_ == "return")
    assert plan["orig_setl_id"] == old_setl and plan["operator"] == OPERATOR and plan["confirm"] == "cashier"
    recs = [json.loads(x) for x in (stack.data_dir / "audit.log").read_text().splitlines()]
    audit = [r["data"] for r in recs if r["event"] == "return" and r["data"].get("order_id") == "E-RET-CASH"]
    assert audit and audit[0]["confirm"] == "cashier" and audit[0]["operator_id"] == "C-007", audit
    assert len(receipts) == 1 and "收银员确认 Cashier: C-007" in receipts[0] and "  赵敏" in receipts[0], receipts
    assert "原结算 Old: " + old_setl in receipts[0]
    services_check(stack)


def test_the_return_door_checks_confirm_and_operator_and_names_why_an_order_takes_no_return(stack):
    got = pay_order(stack, {"order_id": "E-RET-DOOR", "bill": DEMO_BILL}, LI)
    assert got["status"] == "paid", got
    pc = stack.pos_client
    for body, field in (({"confirm": "cashier"}, "operator"),
                        ({"operator": OPERATOR}, "operator"),
                        ({"confirm": "cashier", "operator": {"id": "C 1", "name": "x"}}, "operator.id"),
                        ({"confirm": "cashier", "operator": {"id": "C1", "name": ""}}, "operator.name"),
                        ({"confirm": "card", "operator": OPERATOR}, "confirm")):
        r = pc.request("POST", "/pos/v1/orders/E-RET-DOOR/returns",
                       {"return_id": "RT-DOOR", "lines": ONE_AMOXICILLIN, **body})
        assert r.status_code == 422 and r.json()["field"] == field, (body, r.text)
    assert pc.get("E-RET-DOOR").json()["status"] == "paid"  # nothing stored, nothing changed
    # a second return of a returned order: 409 naming why (its first return id still replays)
    code, ret, _ = cashier_return(stack, "E-RET-DOOR", "RT-DOOR-1", ONE_AMOXICILLIN)
    assert ret["status"] == "returned", ret
    again = pc.return_lines("E-RET-DOOR", "RT-DOOR-2", [{"code": "XC01", "qty": "1"}], operator=OPERATOR)
    assert again.status_code == 409 and again.json()["code"] == "not_returnable", again.text
    assert "already returned" in again.json()["message"], again.text
    assert pc.return_lines("E-RET-DOOR", "RT-DOOR-1", ONE_AMOXICILLIN, operator=OPERATOR).status_code == 200
    # a partially refunded order: 409 naming why
    got = pay_order(stack, {"order_id": "E-RET-PART", "bill": DEMO_BILL}, LI)
    assert got["status"] == "paid", got
    assert pc.refund("E-RET-PART", "RF-PART", "1.00").status_code == 201
    part = pc.return_lines("E-RET-PART", "RT-PART", ONE_AMOXICILLIN)
    assert part.status_code == 409 and "partially refunded" in part.json()["message"], part.text
    assert pc.get("E-RET-PART").json()["status"] == "partially_refunded"


def _authorise_mutual_aid(st: Any, psn: str, relative: str, relation: str) -> None:
    """The centre's mutual-aid authorisation row as mulaid.auth writes it (the relative's consent is
    not what these golden cases test; tests/services cover mulaid.auth itself)."""
    with open_database(f"sqlite:///{st.data_dir / 'centre.db'}") as db, db.transaction() as tx:
        tx.execute("INSERT INTO centre_mulaid (psn_no, auth_psn_no, relation, created_at) VALUES (?, ?, ?, ?)",
                   (psn, relative, relation, "2026-01-01T00:00:00+08:00"))


def _revoke_mutual_aid(st: Any, psn: str) -> None:
    with open_database(f"sqlite:///{st.data_dir / 'centre.db'}") as db, db.transaction() as tx:
        tx.execute("DELETE FROM centre_mulaid WHERE psn_no = ?", (psn,))


@pytest.fixture(scope="module")
def hospital(tmp_path_factory) -> Any:
    """The whole stack with the terminal at the demo hospital (Qingdao, level 2: 70 %, a 200.00 yearly
    deductible), where a return can move the deductible."""
    from kiosk.app.demo import seed_bank
    from kiosk.app.stack import Ports, Stack
    from kiosk.app.typist import Typist

    from tests.app.conftest import free_port
    from tests.app.test_e2e import TIMEOUTS

    d = tmp_path_factory.mktemp("hospital")
    st = Stack(data_dir=d, ports=Ports(centre=free_port(), bank=free_port(), bridge=free_port(), kiosk=free_port()),
               fixmedins="H37020200002")
    try:
        st.prepare(fresh=True)
        st.seed_centre()
        st.start_centre()
        st.start_bank()
        st.start_bridge()
        st.register_terminal()
        st.clients()
        seed_bank(st)
        st.build_kiosk(timeouts=TIMEOUTS)
        st.typist = Typist(st.bridge.sim)
        st.runtime.listeners.append(st.typist.on_snapshot)
        st.pos_client = st.pos()
        yield st
    finally:
        st.stop()


def test_a_return_that_no_longer_reaches_past_the_deductible_gives_the_fund_share_back(hospital, tmp_path):
    """At the level-2 hospital 李娜 first pays 12 consultations (120.00, all deductible), then the demo
    bill, then gives back 1 of the 2 amoxicillin: the kept lines stay inside the deductible.

    By hand (settlement-rules.md, qingdao employee, level 2: 70 %, deductible 200.00 a year):
      first bill 120.00 within policy -> deductible 120.00, fund 0.00; account 15.00, credit 105.00.
      YTD before the original: deductible used 120.00 (80.00 left), pool 0.00; her account 0.00.
      original 104.00: within policy 87.50 -> deductible 80.00, fund round(7.50 x 0.70) = 5.25;
      personal 98.75 = account 0.00 + credit 98.75.
      kept 85.50: within policy 69.00 -> deductible 69.00 (no longer all 80.00 left), fund 0.00;
      personal 85.50 = credit 85.50.
      Back: fund 5.25, credit 98.75 - 85.50 = 13.25 (18.50 in all). YTD after: deductible 189.00, pool 0.00."""
    st = hospital
    first = pay_order(st, {"order_id": "H-DED-0", "bill": {"med_type": "11", "items": [
        {"code": "F001", "name": "普通门诊诊查费 consultation", "price": "10.00", "qty": "12"}]}}, LI)
    assert first["status"] == "paid", first
    assert (first["result"]["fund_pay_sumamt"], first["result"]["acct_pay"], first["result"]["credit_draw"]) == (
        "0.00", "15.00", "105.00"), first
    acct0, ytd0, avail0 = balance(st, LI), ytd(st, LI), available(st, LI)
    assert (acct0, ytd0) == (0, (12000, 0))
    got = pay_order(st, {"order_id": "H-DED-1", "bill": DEMO_BILL}, LI)
    assert got["status"] == "paid", got
    r = got["result"]
    assert (r["fund_pay_sumamt"], r["acct_pay"], r["credit_draw"]) == ("5.25", "0.00", "98.75"), r
    assert ytd(st, LI) == (20000, 525)
    old_setl = r["setl_id"]
    code, ret = do_return(st, "H-DED-1", "RT-DED", ONE_AMOXICILLIN, LI)
    assert code == 202 and ret["status"] == "returned", ret
    new, back = ret["result"]["new"], ret["result"]["back"]
    assert (new["medfee_sumamt"], new["fund_pay_sumamt"], new["acct_pay"], new["acct_mulaid_pay"],
            new["credit_draw"], new["cash_pay"]) == ("85.50", "0.00", "0.00", "0.00", "85.50", "0.00"), new
    assert (back["medfee_sumamt"], back["fund_pay_sumamt"], back["acct_pay"], back["credit_draw"],
            back["cash_pay"]) == ("18.50", "5.25", "0.00", "13.25", "0.00"), back
    ref = kiosk_settle(st, tmp_path, kept_bill(DEMO_BILL, ONE_AMOXICILLIN), ytd0, acct0, level=2)["setlinfo"]
    assert (ref["medfee_sumamt"], ref["fund_pay_sumamt"], ref["act_pay_dedc"], ref["acct_pay"],
            ref["psn_cash_pay"]) == (new["medfee_sumamt"], new["fund_pay_sumamt"], "69.00", new["acct_pay"],
                                     new["credit_draw"])
    # the books after the return: the accumulators count the kept lines only
    assert ytd(st, LI) == (12000 + 6900, 0)
    assert centre_rows(st, "SELECT state FROM centre_settlements WHERE setl_id = ?", (old_setl,)) == [("reversed",)]
    assert centre_rows(st, "SELECT state, medfee_sumamt, fund_pay_sumamt, psn_cash_pay FROM centre_settlements "
                           "WHERE setl_id = ?", (new["setl_id"],)) == [("settled", 8550, 0, 8550)]
    assert draws(st, old_setl) == [(9875, 0, 9875)] and draws(st, new["setl_id"]) == [(8550, 8550, 0)]
    assert available(st, LI) == avail0 - 8550 and balance(st, LI) == 0
    services_check(st)


def test_a_return_gives_the_relatives_mutual_aid_share_back_to_the_relative(stack, tmp_path):
    """王建国 (own balance 0.00) pays the demo bill with his wife 刘芳's account (mutual aid), then
    gives back 1 of the 2 amoxicillin.

    By hand (settlement-rules.md, qingdao employee, level 1: 80 %, no deductible):
      original 104.00: within policy 10.00 + 37.00 + (45.00 - 4.50) = 87.50 -> fund 70.00;
      personal 34.00 = account 0.00 (his balance) + mutual aid 34.00 (刘芳) + cash 0.00.
      kept 85.50: within policy 10.00 + 18.50 + 40.50 = 69.00 -> fund 55.20; personal 30.30 =
      account 0.00 + mutual aid 30.30 + cash 0.00.
      Back: fund 14.80, mutual aid 3.70 to 刘芳 (34.00 by the reversal, 30.30 taken again), no draw."""
    _authorise_mutual_aid(stack, WANG, LIU, "spouse")
    try:
        acct0, liu0, ytd0 = balance(stack, WANG), balance(stack, LIU), ytd(stack, WANG)
        assert acct0 == 0 and liu0 >= 3400, "the golden numbers assume his 0.00 and her 800.00 balance"
        got = pay_order(stack, {"order_id": "E-RET-MA", "bill": DEMO_BILL}, WANG)
        assert got["status"] == "paid", got
        r = got["result"]
        assert (r["fund_pay_sumamt"], r["acct_pay"], r["acct_mulaid_pay"], r["credit_draw"]) == (
            "70.00", "0.00", "34.00", "0.00"), r
        assert balance(stack, LIU) == liu0 - 3400
        old_setl = r["setl_id"]
        code, ret = do_return(stack, "E-RET-MA", "RT-MA", ONE_AMOXICILLIN, WANG)
        assert code == 202 and ret["status"] == "returned", ret
        new, back = ret["result"]["new"], ret["result"]["back"]
        assert (new["medfee_sumamt"], new["fund_pay_sumamt"], new["acct_pay"], new["acct_mulaid_pay"],
                new["credit_draw"], new["cash_pay"]) == ("85.50", "55.20", "0.00", "30.30", "0.00", "0.00"), new
        assert (back["medfee_sumamt"], back["fund_pay_sumamt"], back["acct_pay"], back["acct_mulaid_pay"],
                back["credit_draw"], back["cash_pay"]) == ("18.50", "14.80", "0.00", "3.70", "0.00", "0.00"), back
        # `kiosk settle` knows no relative: its cash share is what mutual aid and the line paid together
        ref = kiosk_settle(stack, tmp_path, kept_bill(DEMO_BILL, ONE_AMOXICILLIN), ytd0, acct0)["setlinfo"]
        assert (ref["medfee_sumamt"], ref["fund_pay_sumamt"], ref["acct_pay"]) == (
            new["medfee_sumamt"], new["fund_pay_sumamt"], new["acct_pay"])
        assert yuan_to_fen(ref["psn_cash_pay"], "c") == yuan_to_fen(new["acct_mulaid_pay"], "m") + yuan_to_fen(
            new["credit_draw"], "c") + yuan_to_fen(new["cash_pay"], "c")
        # the books after the return: the relative's account is down by the kept share only
        assert balance(stack, LIU) == liu0 - 3030 and balance(stack, WANG) == acct0
        assert centre_rows(stack, "SELECT state, mulaid_psn_no, acct_mulaid_pay FROM centre_settlements "
                                  "WHERE setl_id = ?", (old_setl,)) == [("reversed", LIU, 3400)]
        assert centre_rows(stack, "SELECT state, mulaid_psn_no, acct_mulaid_pay FROM centre_settlements "
                                  "WHERE setl_id = ?", (new["setl_id"],)) == [("settled", LIU, 3030)]
        assert ytd(stack, WANG) == (ytd0[0], ytd0[1] + 5520)  # the pool paid counts the kept lines only
        assert draws(stack, old_setl) == [] and draws(stack, new["setl_id"]) == []
    finally:
        _revoke_mutual_aid(stack, WANG)
    services_check(stack)


def test_a_return_of_a_family_pay_order_refunds_and_draws_again_on_the_same_family_line(stack, tmp_path):
    """王建国 (own balance 0.00, no mutual aid) pays the demo bill from his son 张伟's credit line
    (family pay), then gives back 1 of the 2 amoxicillin.

    By hand (settlement-rules.md, qingdao employee, level 1: 80 %, no deductible):
      original 104.00: fund 70.00; personal 34.00 = account 0.00 + cash 34.00 -> one draw of 34.00
      on 张伟's line, payer 王建国.
      kept 85.50: fund 55.20; personal 30.30 = account 0.00 + cash 30.30 -> a draw of 30.30 on the
      same family line; the 34.00 draw is refunded whole (its unpaid principal 34.00 -> 0).
      Back: fund 14.80, credit 3.70; the holder's available line ends 30.30 below where it started."""
    acct0, ytd0, avail0 = balance(stack, WANG), ytd(stack, WANG), available(stack, FAMILY_HOLDER)
    assert acct0 == 0
    got = pay_order(stack, {"order_id": "E-RET-FP", "bill": DEMO_BILL}, WANG)
    assert got["status"] == "paid", got
    r = got["result"]
    assert (r["payer"], r["fund_pay_sumamt"], r["acct_pay"], r["acct_mulaid_pay"], r["credit_draw"]) == (
        "family", "70.00", "0.00", "0.00", "34.00"), r
    old_setl = r["setl_id"]
    assert available(stack, FAMILY_HOLDER) == avail0 - 3400
    code, ret = do_return(stack, "E-RET-FP", "RT-FP", ONE_AMOXICILLIN, WANG)
    assert code == 202 and ret["status"] == "returned", ret
    new, back = ret["result"]["new"], ret["result"]["back"]
    assert (new["medfee_sumamt"], new["fund_pay_sumamt"], new["acct_pay"], new["acct_mulaid_pay"],
            new["credit_draw"], new["cash_pay"]) == ("85.50", "55.20", "0.00", "0.00", "30.30", "0.00"), new
    assert (back["fund_pay_sumamt"], back["acct_pay"], back["acct_mulaid_pay"], back["credit_draw"],
            back["cash_pay"]) == ("14.80", "0.00", "0.00", "3.70", "0.00"), back
    ref = kiosk_settle(stack, tmp_path, kept_bill(DEMO_BILL, ONE_AMOXICILLIN), ytd0, acct0)["setlinfo"]
    assert (ref["medfee_sumamt"], ref["fund_pay_sumamt"], ref["acct_pay"], ref["psn_cash_pay"]) == (
        new["medfee_sumamt"], new["fund_pay_sumamt"], new["acct_pay"], new["credit_draw"])
    # the books: the old draw refunded whole, the new one on the same family line, payer the member
    assert draws(stack, old_setl) == [(3400, 0, 3400)] and draws(stack, new["setl_id"]) == [(3030, 3030, 0)]
    lines = bank_rows(stack, "SELECT ref, line_id, payer FROM credit_draws WHERE ref IN (?, ?)",
                      (old_setl, new["setl_id"]))
    assert len(lines) == 2 and len({ln[1] for ln in lines}) == 1 and {ln[2] for ln in lines} == {WANG}, lines
    assert available(stack, FAMILY_HOLDER) == avail0 - 3030
    assert centre_rows(stack, "SELECT state FROM centre_settlements WHERE setl_id = ?", (old_setl,)) == [
        ("reversed",)]
    assert ytd(stack, WANG) == (ytd0[0], ytd0[1] + 5520)
    services_check(stack)


def test_the_parties_agree_and_the_day_end_matches_after_the_returns_above(stack):
    """`kiosk check parties` and the day-end (`reconcile`: 3201/3202 and the bank's clearing) over the
    books after every return above: the reversed originals, the new settlements and draws all match.
    (Before the crash tests below: their kiosks keep their own journals, which this kiosk's day-end
    cannot see.)"""
    from kiosk.app.crosscheck import check_parties
    from kiosk.app.reconcile import reconcile
    from kiosk.clock import SystemClock, local_day
    from kiosk.services.bank.app import bank_db_url

    assert stack.runtime.terminal.wait_idle()
    stack.runtime.terminal.recover()
    with open_database(f"sqlite:///{stack.data_dir / 'centre.db'}") as c, \
            open_database(bank_db_url(stack.data_dir)) as b, \
            open_database(f"sqlite:///{stack.data_dir / 'kiosk.db'}") as k:
        rep = check_parties(c, b, [k])
        assert rep.balanced, rep.table()
        day = reconcile(k, stack.centre_client, stack.bank_client, local_day(SystemClock()))
    assert day.matched, day.table()


# ------------------------------------------------------------------------------------------ crash safety
# the return's own journal steps (its session's face/presettle steps share the payment's names: the
# case before 'return' is test_a_return_cut_off_before_the_patient_confirmed_changes_nothing)
RETURN_STEPS = ["return", "return_reversed", "return_settled", "return_credited", "return_draw", "return_drawn",
                "returned"]


@pytest.mark.parametrize("crash_after", RETURN_STEPS)
def test_a_return_cut_off_after_any_step_recovers_to_returned(stack, tmp_path, crash_after):
    """Killed (as on a power cut) right after each journal step of a return of 1 of 2 amoxicillin on
    a credit-paid order; a new terminal's recovery completes it forward exactly once."""
    acct0, avail0, ytd0 = balance(stack, LI), available(stack, LI), ytd(stack, LI)
    oid, rid = f"E-CR-RT-{crash_after}", f"RT-{crash_after}"
    kiosk_db = crash_kiosk(stack, tmp_path, crash_after, LI, {"order_id": oid, "bill": DEMO_BILL},
                           ret={"return_id": rid, "lines": ONE_AMOXICILLIN})
    store, resolved, db = restart(stack, kiosk_db, oid)
    try:
        order, ret = store.get(SYSTEM, oid), store.get(SYSTEM, RETURN_PREFIX + rid)
        steps = [s for s, _ in store.steps(SYSTEM, RETURN_PREFIX + rid)]
    finally:
        db.close()
    assert ret is not None and ret.status == "returned", (ret, steps)
    assert order.status == "returned" and steps.count("returned") == 1
    old, new = ret.result["old"], ret.result["new"]
    assert centre_rows(stack, "SELECT state FROM centre_settlements WHERE setl_id = ?", (old["setl_id"],)) == [
        ("reversed",)]
    assert centre_rows(stack, "SELECT state FROM centre_settlements WHERE setl_id = ?", (new["setl_id"],)) == [
        ("settled",)]
    ref = kiosk_settle(stack, tmp_path, kept_bill(DEMO_BILL, ONE_AMOXICILLIN), ytd0, acct0)["setlinfo"]
    cash = yuan_to_fen(ref["psn_cash_pay"], "c")
    assert (new["fund_pay_sumamt"], new["acct_pay"], new["credit_draw"]) == (
        ref["fund_pay_sumamt"], ref["acct_pay"], fen_to_yuan(cash))
    old_credit = yuan_to_fen(old["credit_draw"], "c")
    assert draws(stack, old["setl_id"]) == [(old_credit, 0, old_credit)]  # refunded once, whole
    assert draws(stack, new["setl_id"]) == ([(cash, cash, 0)] if cash else [])  # drawn once
    assert available(stack, LI) == avail0 - cash
    assert balance(stack, LI) == acct0 - yuan_to_fen(ref["acct_pay"], "a")
    services_check(stack)


def _expire_plan_token(st: Any, kiosk_db: Path, rid: str, psn: str) -> None:
    """Hours pass: the face's e-voucher journaled in the return's plan is now expired (one the centre
    signed for this terminal, 15 minutes after the face, three hours ago)."""
    import hashlib
    import hmac

    from kiosk.services.centre.app import centre_keys

    app_id = json.loads((st.data_dir / "terminal.json").read_text())["app_id"]
    body = f"{psn}.{int(time.time()) - 3 * 3600}"
    sig = hmac.new(centre_keys(st.data_dir).mac_key(), f"ec|{app_id}|{body}".encode(), hashlib.sha256).hexdigest()
    with open_database(f"sqlite:///{kiosk_db / 'kiosk.db'}") as db, db.transaction() as tx:
        jid, data = tx.fetch_one("SELECT id, data FROM app_journal WHERE order_id = ? AND step = 'return'",
                                 (RETURN_PREFIX + rid,))
        plan = json.loads(data)
        assert plan["ec_token"].startswith("EC.")
        tx.execute("UPDATE app_journal SET data = ? WHERE id = ?",
                   (json.dumps({**plan, "ec_token": f"EC.{body}.{sig[:24]}"}), jid))


def test_a_return_resumed_after_the_face_token_expired_completes_to_returned(stack, tmp_path):
    """Cut off right after the reversal; the counter stays down for hours (the face's e-voucher, 15 min,
    has expired). Recovery re-settles the kept lines on the original settlement's authority (journaled
    orig_setl_id), refunds and draws again: returned, not return_failed (token_expired)."""
    acct0, avail0, ytd0 = balance(stack, LI), available(stack, LI), ytd(stack, LI)
    oid, rid = "E-CR-RT-LATE", "RT-LATE"
    kiosk_db = crash_kiosk(stack, tmp_path, "return_reversed", LI, {"order_id": oid, "bill": DEMO_BILL},
                           ret={"return_id": rid, "lines": ONE_AMOXICILLIN})
    _expire_plan_token(stack, kiosk_db, rid, LI)
    store, _resolved, db = restart(stack, kiosk_db, oid)
    try:
        order, ret = store.get(SYSTEM, oid), store.get(SYSTEM, RETURN_PREFIX + rid)
        steps = [s for s, _ in store.steps(SYSTEM, RETURN_PREFIX + rid)]
    finally:
        db.close()
    assert ret is not None and ret.status == "returned", (ret, steps)
    assert order.status == "returned" and "return_refused" not in steps
    new = ret.result["new"]
    ref = kiosk_settle(stack, tmp_path, kept_bill(DEMO_BILL, ONE_AMOXICILLIN), ytd0, acct0)["setlinfo"]
    assert (new["fund_pay_sumamt"], new["acct_pay"], new["credit_draw"]) == (
        ref["fund_pay_sumamt"], ref["acct_pay"], ref["psn_cash_pay"])
    cash = yuan_to_fen(ref["psn_cash_pay"], "c")
    assert draws(stack, new["setl_id"]) == [(cash, cash, 0)] and available(stack, LI) == avail0 - cash
    services_check(stack)


def test_a_return_cut_off_before_the_patient_confirmed_changes_nothing(stack, tmp_path):
    """Killed after the return's pre-settlement was journaled (the patient had not confirmed): the
    return fails as interrupted and the order is paid as before."""
    from kiosk.app.store import Store
    from kiosk.app.terminal import Terminal
    from kiosk.clock import SystemClock

    got = pay_order(stack, {"order_id": "E-RET-NC", "bill": DEMO_BILL}, LI)
    assert got["status"] == "paid", got
    term = stack.runtime.terminal
    store: Store = term.store
    row, created = store.begin_return(SYSTEM, "E-RET-NC", "RT-NC", {"order_id": "E-RET-NC", "lines": ONE_AMOXICILLIN,
                                                                    "bill": kept_bill(DEMO_BILL, ONE_AMOXICILLIN),
                                                                    "psn_no": LI})
    assert created
    store.set_status(SYSTEM, row.order_id, "running", expect=("pending",))  # as a session cut off mid-way
    store.record(SYSTEM, row.order_id, "presettle")
    other = Terminal(store, term.deps, SystemClock())
    other.recover()
    assert store.get(SYSTEM, row.order_id).status == "failed"
    assert store.get(SYSTEM, "E-RET-NC").status == "paid"
    assert centre_rows(stack, "SELECT state FROM centre_settlements WHERE setl_id = ?",
                       (got["result"]["setl_id"],)) == [("settled",)]
