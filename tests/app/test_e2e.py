"""End to end through the real HTTP APIs and the simulated hardware.

One stack per module: the insurance centre and the bank as their own processes
(SQLite in a temp dir), the firmware bridge process on the MCU simulator, the
kiosk app (POS API on a free port) with a simulated camera playing the shared
face images through the real face pipeline. The POS side signs its requests
like an integrating system. The kiosk reaches the centre through a relay that
can lose the network on cue.
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import httpx
import pytest

from kiosk.app.demo import DEMO_BILL, FAMILY_HOLDER, scene, seed_bank
from kiosk.app.flow import State
from kiosk.app.stack import Ports, Stack
from kiosk.app.typist import Typist
from kiosk.storage import open_database

from tests.app.conftest import NUAA_SPOOF, TWO_PEOPLE, free_port
from tests.app.netcut import NetCut

HAS_BANK = importlib.util.find_spec("kiosk.services.bank.app") is not None
ZHANG, LI, WANG, LIU, CHEN = "D370202000001", "D370202000002", "D370202000003", "D370202000004", "D370602000001"
OTHER_POS = "other-pos"
TIMEOUTS = {State.FACE_CAPTURE: 8.0, State.LIVENESS: 8.0, State.CONFIRM: 8.0, State.ID_ENTRY: 10.0}


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Any:
    d = tmp_path_factory.mktemp("stack")
    st = Stack(data_dir=d, ports=Ports(centre=free_port(), bank=free_port(), bridge=free_port(), kiosk=free_port()))
    relay = None
    try:
        st.prepare(fresh=True)
        st.seed_centre()
        st.start_centre()
        if HAS_BANK:
            st.start_bank()
        st.start_bridge()
        st.register_terminal()
        relay = NetCut(st.ports.centre).start()
        st.client_ports["centre"] = relay.port
        if HAS_BANK:
            st.bank_relay = NetCut(st.ports.bank).start()
            st.client_ports["bank"] = st.bank_relay.port
        st.clients()
        if HAS_BANK:
            seed_bank(st)
        from kiosk.app.pos_auth import add_system

        st.other_pos_key = add_system(d, OTHER_POS)  # a second POS/HIS system at the same counter
        st.build_kiosk(timeouts=TIMEOUTS)
        st.relay = relay
        st.typist = Typist(st.bridge.sim)
        st.runtime.listeners.append(st.typist.on_snapshot)
        st.snaps = []
        st.runtime.listeners.append(st.snaps.append)
        st.pos_client = st.pos()
        yield st
    finally:
        if relay:
            relay.close()
        if getattr(st, "bank_relay", None):
            st.bank_relay.close()
        st.stop()


def _operator_line(st: Any, payer: str) -> Any:
    """The whole line as the bank's operator sees it (a terminal sees own/family and covers only)."""
    from kiosk.services.client import operator_call
    from kiosk.services.protocol import Answer

    d = operator_call(st.url("bank"), st.admin_token, "line", {"payer": payer})
    return Answer(d["infcode"], d.get("err_code", ""), d.get("err_msg", ""), d.get("output") or {}, "")


def pay(st: Any, order_id: str, person: str | None, *, keys: dict[str, list[str]] | None = None,
        images: list[Path] | None = None, bill: dict[str, Any] = DEMO_BILL, timeout: float = 40.0,
        pos: Any = None) -> dict[str, Any]:
    pos = pos or st.pos_client
    st.typist.clear()
    keys = dict(keys or {})
    if person and "id_entry" not in keys and not centre_rows(
            st, "SELECT activated FROM centre_persons WHERE psn_no = ?", (person,))[0][0]:
        keys["id_entry"] = [f"{st.person(person)['certno']}<enter>"]  # first visit: the patient types the ID
    for state, plans in keys.items():
        for k in plans:
            st.typist.plan(state, k)
    st.camera.show(images if images is not None else scene(st, person))
    del st.snaps[:]
    try:
        r = pos.create({"order_id": order_id, "bill": bill})
        assert r.status_code == 201, r.text
        end = time.monotonic() + timeout
        while True:
            got = pos.get(order_id, wait=10).json()
            if got["status"] not in ("pending", "running") or time.monotonic() > end:
                return got
    finally:
        st.camera.clear()


def crash_kiosk(st: Any, tmp_path: Path, crash_after: str, person: str, body: dict[str, Any], *,
                seed: Callable[[Path], None] | None = None, refund: dict[str, Any] | None = None,
                ret: dict[str, Any] | None = None) -> Path:
    """Run a whole kiosk app in its own process on its own database (same terminal identity, services
    and bridge) with KIOSK_CRASH_AFTER_STEP=crash_after, send it the order `body` (and, once that order
    is paid, the `refund` request or the item-level return `ret`), and wait until it dies on the spot after that journal step.
    `seed(dir)` may prepare the child's data dir first. Returns the child's data dir (kiosk.db)."""
    port = free_port()
    env = {**os.environ, "KIOSK_CRASH_AFTER_STEP": crash_after, "KIOSK_DATA_DIR": str(st.data_dir),
           "KIOSK_BRIDGE_TOKEN_FILE": str(st.bridge_token_file())}  # the same bridge: its per-boot token
    kiosk_db = tmp_path / "crash"
    kiosk_db.mkdir()
    for f in ("terminal.json", "pos_systems.json"):
        (kiosk_db / f).write_bytes((st.data_dir / f).read_bytes())
        os.chmod(kiosk_db / f, 0o600)
    os.symlink(st.data_dir / "keys", kiosk_db / "keys")
    if seed is not None:
        seed(kiosk_db)
    images = [str(p) for p in scene(st, person)]
    keys = ["--keys", "confirm=<enter>"] * (2 if ret is not None else 1)  # a return: the patient confirms again
    if not centre_rows(st, "SELECT activated FROM centre_persons WHERE psn_no = ?", (person,))[0][0]:
        keys += ["--keys", f"id_entry={st.person(person)['certno']}<enter>"]
    log = tmp_path / "child.log"
    child = subprocess.Popen(
        [sys.executable, "-m", "kiosk.cli", "serve", "--data-dir", str(kiosk_db), "--port", str(port),
         "--centre-port", str(st.ports.centre), "--bank-port", str(st.ports.bank),
         "--bridge-port", str(st.ports.bridge), "--images", *images, *keys],
        env=env, stdout=subprocess.DEVNULL, stderr=open(log, "wb"), start_new_session=True)
    try:
        from kiosk.app.pos_client import PosClient

        pos = PosClient(f"http://127.0.0.1:{port}", "demo-pos", st.pos_key, timeout=5)
        end = time.monotonic() + 60
        while True:
            try:
                if pos.http.get("/health").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < end and child.poll() is None, log.read_text()[-3000:]
            time.sleep(0.2)
        assert pos.create(body).status_code == 201
        if refund is not None:
            got = pos.get(body["order_id"], wait=30).json()
            assert got["status"] == "paid", (got, log.read_text()[-3000:])
            try:
                pos.refund(body["order_id"], refund["refund_id"], refund.get("amount"))
            except httpx.HTTPError:
                pass  # the process died under the request
        if ret is not None:
            got = pos.get(body["order_id"], wait=30).json()
            assert got["status"] == "paid", (got, log.read_text()[-3000:])
            try:  # the child's camera and keys are the same patient again: face, then confirm
                pos.return_lines(body["order_id"], ret["return_id"], ret["lines"])
            except httpx.HTTPError:
                pass
        try:
            assert child.wait(60) == 137  # died on the spot, no cleanup
        except subprocess.TimeoutExpired:
            pytest.fail("the kiosk never reached the crash point:\n" + log.read_text()[-3000:])
    finally:
        if child.poll() is None:
            child.kill()
    return kiosk_db


def states(st: Any) -> list[str]:
    out: list[str] = []
    for s in st.snaps:
        if not out or out[-1] != s.state:
            out.append(s.state)
    return out


def centre_rows(st: Any, sql: str, params: tuple = ()) -> list[tuple]:
    db = open_database(f"sqlite:///{st.data_dir / 'centre.db'}")
    try:
        return db.read(lambda tx: tx.fetch_all(sql, params))
    finally:
        db.close()


def balance(st: Any, psn: str) -> int:
    return int(centre_rows(st, "SELECT balc FROM centre_persons WHERE psn_no = ?", (psn,))[0][0])


# ------------------------------------------------------------------------------------------ identity
def test_first_visit_activation_then_repeat_payment_by_face_only(stack):
    p = stack.person(ZHANG)
    before = balance(stack, ZHANG)
    got = pay(stack, "E-ACT-1", ZHANG, keys={"id_entry": [f"{p['certno']}<enter>"], "confirm": ["<enter>"]})
    assert got["status"] == "paid", got
    res = got["result"]
    assert "id_entry" in states(stack) and "activation" in states(stack)
    assert (res["medfee_sumamt"], res["fund_pay_sumamt"], res["acct_pay"]) == ("104.00", "70.00", "34.00")
    assert res["receipt_printed"] is True and res["setl_id"].startswith("S")
    assert balance(stack, ZHANG) == before - 3400
    # second visit: the face alone
    got2 = pay(stack, "E-ACT-2", ZHANG, keys={"confirm": ["<enter>"]})
    assert got2["status"] == "paid", got2
    assert "id_entry" not in states(stack)
    assert balance(stack, ZHANG) == before - 6800
    # what the centre recorded is what the POS was told
    rows = centre_rows(stack, "SELECT setl_id, fund_pay_sumamt, acct_pay, state FROM centre_settlements "
                              "WHERE psn_no = ? ORDER BY created_at", (ZHANG,))
    assert [(r[0], r[1], r[2], r[3]) for r in rows] == [
        (res["setl_id"], 7000, 3400, "settled"), (got2["result"]["setl_id"], 7000, 3400, "settled")]


def test_spoof_is_rejected_before_anything_leaves_the_terminal(stack):
    n = len(centre_rows(stack, "SELECT 1 FROM centre_settlements"))
    got = pay(stack, "E-SPOOF", None, images=[NUAA_SPOOF])
    assert (got["status"], got["reason"]) == ("failed", "spoof_suspected")
    assert "match" not in states(stack)
    assert len(centre_rows(stack, "SELECT 1 FROM centre_settlements")) == n


def test_two_faces_are_rejected(stack):
    got = pay(stack, "E-TWO", None, images=[TWO_PEOPLE])
    assert (got["status"], got["reason"]) == ("failed", "multiple_faces")
    assert "match" not in states(stack)


def test_wrong_id_three_times_locks_for_a_while(stack):
    # 刘芳 (first visit) types 陈静's ID number: the face does not match that person's photo on record
    wrong = stack.person(CHEN)["certno"]
    got = pay(stack, "E-LOCK-1", LIU, keys={"id_entry": [f"{wrong}<enter>"] * 3})
    assert (got["status"], got["reason"]) == ("failed", "id_locked"), got
    assert [s for s in states(stack) if s == "activation"] == ["activation"] * 3
    locked = centre_rows(stack, "SELECT locked_until FROM centre_activation_fails")
    assert [r[0] for r in locked if r[0]]  # the centre holds the lock (per institution and typed number)
    # a minute later the same number is still refused at once
    got = pay(stack, "E-LOCK-2", LIU, keys={"id_entry": [f"{wrong}<enter>"]})
    assert (got["status"], got["reason"]) == ("failed", "id_locked")


# ------------------------------------------------------------------------------------------ POS API
def test_pos_retry_returns_the_first_result_and_other_body_conflicts(stack):
    first = pay(stack, "E-RETRY", ZHANG, keys={"confirm": ["<enter>"]})
    assert first["status"] == "paid"
    again = stack.pos_client.create({"order_id": "E-RETRY", "bill": DEMO_BILL})
    assert again.status_code == 200 and again.json()["result"] == first["result"]
    other = dict(DEMO_BILL, items=DEMO_BILL["items"][:1])
    clash = stack.pos_client.create({"order_id": "E-RETRY", "bill": other})
    assert clash.status_code == 409 and clash.json()["code"] == "order_conflict"
    # nothing was settled twice
    assert len(centre_rows(stack, "SELECT 1 FROM centre_settlements WHERE setl_id = ?",
                           (first["result"]["setl_id"],))) == 1


def test_pos_requests_must_be_signed(stack):
    url = stack.url("kiosk")
    r = httpx.post(f"{url}/pos/v1/orders", json={"order_id": "X", "bill": DEMO_BILL})
    assert r.status_code == 401 and r.json()["code"] == "unauthorised"
    from kiosk.app.pos_client import PosClient

    forged = PosClient(url, "demo-pos", "0" * 64)
    assert forged.get("E-RETRY").status_code == 401
    unknown = PosClient(url, "someone-else", stack.pos_key)
    assert unknown.get("E-RETRY").status_code == 401
    forged.close()
    unknown.close()


def test_bad_bill_is_refused_with_the_field(stack):
    r = stack.pos_client.create({"order_id": "E-BAD", "bill": {"items": [{"code": "F001", "price": "1.5", "qty": "0"}]}})
    assert r.status_code == 422 and r.json()["field"] == "bill.items[0].qty"
    r = stack.pos_client.create({"order_id": "E-BAD2", "bill": {"items": [{"code": "F001", "price": 1.5, "qty": "1"}]}})
    assert r.status_code == 422 and "price" in r.json()["field"]
    # the terminal checks codes against its copy of the centre's catalogue (1312), before any session
    r = stack.pos_client.create({"order_id": "E-BAD3", "bill": {"items": [{"code": "NOPE01", "price": "1.50",
                                                                           "qty": "1"}]}})
    assert r.status_code == 422 and r.json()["field"] == "bill.items[0].code", r.text
    assert stack.pos_client.get("E-BAD3").status_code == 404


def test_cashier_cancels_while_the_patient_hesitates(stack):
    stack.typist.clear()
    del stack.snaps[:]
    stack.camera.show(scene(stack, ZHANG))
    try:
        assert stack.pos_client.create({"order_id": "E-CANCEL", "bill": DEMO_BILL}).status_code == 201
        end = time.monotonic() + 20
        while not any(s.state == "confirm" for s in stack.snaps[-5:]) and time.monotonic() < end:
            time.sleep(0.05)
        r = stack.pos_client.cancel("E-CANCEL")
        assert r.status_code == 200 and r.json()["status"] == "cancelled", r.text
        assert r.json()["reason"] == "cancelled_by_cashier"
    finally:
        stack.camera.clear()


def test_reconciliation_lists_the_days_orders(stack):
    from kiosk.clock import SystemClock, local_day

    day = local_day(SystemClock()).isoformat()
    r = stack.pos_client.reconciliation(day)
    assert r.status_code == 200
    body = r.json()
    paid = [o for o in body["orders"] if o["status"] in ("paid", "refunded", "partially_refunded")]
    assert body["count_paid"] == len(paid) >= 1
    total = sum(int(o["medfee_sumamt"].replace(".", "")) for o in paid)
    assert int(body["totals"]["medfee_sumamt"].replace(".", "")) == total
    csv = stack.pos_client.reconciliation(day, "csv")
    assert csv.headers["content-type"].startswith("text/csv") and "E-RETRY" in csv.text


def test_openapi_is_published(stack):
    doc = httpx.get(stack.url("kiosk") + "/openapi.json").json()
    assert {"/pos/v1/orders", "/pos/v1/orders/{order_id}", "/pos/v1/orders/{order_id}/cancel",
            "/pos/v1/orders/{order_id}/refunds", "/pos/v1/reconciliation"} <= set(doc["paths"])


# ------------------------------------------------------------------------------------------ faults
def test_printer_out_of_paper(stack):
    stack.bridge.sim("paper out")
    try:
        got = pay(stack, "E-PAPER", ZHANG, keys={"confirm": ["<enter>"]})
    finally:
        stack.bridge.sim("paper in")
    assert got["status"] == "paid" and got["reason"] is None, (got, [(x.state, x.reason) for x in stack.snaps])
    assert got["result"]["receipt_printed"] is False
    done = [s for s in stack.snaps if s.state == "done"]
    assert done and done[-1].reason == "paper_out"


def test_network_lost_mid_settlement_is_resolved_without_double_charge(stack):
    before = balance(stack, ZHANG)
    stack.relay.cut_after("POST /fsi/api/2207")  # the settlement reaches the centre, its answer is lost
    got = pay(stack, "E-NET-1", ZHANG, keys={"confirm": ["<enter>"]})
    assert stack.relay.fired.is_set()
    assert (got["status"], got["reason"]) == ("reversing", "centre_unavailable"), got
    # the centre did settle it; the terminal does not know yet
    rows = centre_rows(stack, "SELECT state FROM centre_settlements WHERE psn_no = ? ORDER BY created_at DESC LIMIT 1",
                       (ZHANG,))
    assert rows[0][0] == "settled"
    stack.relay.restore()
    assert stack.runtime.terminal.wait_idle()
    stack.runtime.terminal.recover()  # also runs by itself every few seconds when idle
    got = stack.pos_client.get("E-NET-1").json()
    assert (got["status"], got["reason"]) == ("failed", "centre_unavailable")
    rows = centre_rows(stack, "SELECT state FROM centre_settlements WHERE psn_no = ? ORDER BY created_at DESC LIMIT 1",
                       (ZHANG,))
    assert rows[0][0] == "reversed"
    assert balance(stack, ZHANG) == before
    # the POS tries again with a new order: charged exactly once
    again = pay(stack, "E-NET-2", ZHANG, keys={"confirm": ["<enter>"]})
    assert again["status"] == "paid"
    assert balance(stack, ZHANG) == before - 3400


@pytest.mark.parametrize("crash_after, outcome", [
    ("settle", "failed"),    # journal written, the 2207 never left: 2601 tombstones the msgid
    ("settled", "failed"),   # the centre settled, nothing else: reversed by msgid
] + ([("draw", "failed"),  # the draw never reached the bank: reversed by its key, then the settlement
       ("drawn", "paid")] if HAS_BANK else []))  # all money moved, only the local record missing: resumed
def test_crash_mid_payment_is_resolved_on_restart(stack, tmp_path, crash_after, outcome):
    """A kiosk process dies right after a journal step (power cut); on restart the journal resumes or reverses."""
    person = LI if crash_after in ("draw", "drawn") else ZHANG  # LI pays part by credit
    before = balance(stack, person)
    n_before = len(centre_rows(stack, "SELECT 1 FROM centre_settlements WHERE psn_no = ?", (person,)))
    oid = f"E-CRASH-{crash_after}"
    kiosk_db = crash_kiosk(stack, tmp_path, crash_after, person, {"order_id": oid, "bill": DEMO_BILL})
    rows = centre_rows(stack, "SELECT state FROM centre_settlements WHERE psn_no = ? ORDER BY created_at DESC",
                       (person,))
    if crash_after == "settle":
        assert len(rows) == n_before and balance(stack, person) == before  # never reached the centre
    else:
        assert len(rows) == n_before + 1 and rows[0][0] == "settled" and balance(stack, person) < before
    # restart: a new terminal on the same database resolves it before serving anything
    from kiosk.clock import SystemClock
    from kiosk.app.store import Store
    from kiosk.app.terminal import Terminal

    db = open_database(f"sqlite:///{kiosk_db / 'kiosk.db'}")
    store = Store(db, SystemClock())
    assert store.get("demo-pos", oid).status == "running"
    term = Terminal(store, stack.runtime.terminal.deps, SystemClock())
    assert term.recover() == [(oid, outcome)]
    row = store.get("demo-pos", oid)
    assert (row.status, row.reason) == (outcome, "interrupted")
    steps = [s for s, _ in store.steps("demo-pos", oid)]
    db.close()
    if outcome == "failed":
        assert steps[-3:] == ["reverse", "reversed", "recovered"]
        assert balance(stack, person) == before
        rows = centre_rows(stack, "SELECT state FROM centre_settlements WHERE psn_no = ? ORDER BY created_at DESC",
                           (person,))
        assert len(rows) == n_before + (crash_after != "settle")
        assert all(r[0] == "reversed" for r in rows[:1]) or crash_after == "settle"
        if crash_after == "settle":  # a late arrival of that message would now be refused
            assert centre_rows(stack, "SELECT count(*) FROM centre_tombstones")[0][0] >= 1
    else:
        assert steps[-1] == "recovered" and row.result["credit_draw"] != "0.00"
        assert row.result["receipt_printed"] is False  # the receipt never printed: the POS is told
        assert rows[0][0] == "settled"


# ------------------------------------------------------------------------------------------ money with the bank
needs_bank = pytest.mark.skipif(not HAS_BANK, reason="kiosk.services.bank not landed yet")


@needs_bank
def test_part_fund_part_account_part_credit_then_refunds(stack):
    from kiosk.money import fen_to_yuan

    acct = min(balance(stack, LI), 3400)  # 15.00 on a fresh stack; less if an earlier test spent it
    got = pay(stack, "E-CREDIT", LI, keys={"confirm": ["<enter>"]})
    assert got["status"] == "paid", got
    r = got["result"]
    assert (r["medfee_sumamt"], r["fund_pay_sumamt"], r["acct_pay"], r["credit_draw"], r["cash_pay"]) == (
        "104.00", "70.00", fen_to_yuan(acct), fen_to_yuan(3400 - acct), "0.00")
    assert 3400 - acct >= 1000
    part = stack.pos_client.refund("E-CREDIT", "R1", "5.00")
    assert part.status_code == 201 and part.json()["credit_refund"] == "5.00", part.text
    assert stack.pos_client.refund("E-CREDIT", "R1", "5.00").json() == part.json()  # retry replays
    assert stack.pos_client.refund("E-CREDIT", "R1", "6.00").status_code == 409
    too_much = stack.pos_client.refund("E-CREDIT", "R2", fen_to_yuan(3400 - acct))  # 5.00 already refunded
    assert too_much.status_code == 422 and too_much.json()["field"] == "amount"
    assert stack.pos_client.get("E-CREDIT").json()["status"] == "partially_refunded"


@needs_bank
def test_family_pay_charges_the_relatives_line_and_notifies_them(stack):
    p = stack.person(WANG)
    got = pay(stack, "E-FAMILY", WANG, keys={"id_entry": [f"{p['certno']}<enter>"], "confirm": ["<enter>"]})
    assert got["status"] == "paid", got
    r = got["result"]
    assert r["payer"] == "family" and r["acct_pay"] == "0.00" and r["credit_draw"] == "34.00"
    confirm = [s for s in stack.snaps if s.state == "confirm"][-1]
    assert confirm.amounts.get("credit_holder")
    from kiosk.services.client import drain_notifications

    notes = drain_notifications(stack.url("bank"), stack.admin_token, 1000)
    mine = [m for m in notes if FAMILY_HOLDER in str(m["payload"])]
    assert any("34.00" in str(m["payload"]) or "3400" in str(m["payload"]) for m in mine), notes


def test_whole_refund_reverses_the_settlement_once(stack):
    before = balance(stack, ZHANG)
    got = pay(stack, "E-REFUND", ZHANG, keys={"confirm": ["<enter>"]})
    assert got["status"] == "paid" and balance(stack, ZHANG) == before - 3400
    r = stack.pos_client.refund("E-REFUND", "RF-1")
    assert r.status_code == 201, r.text
    body = r.json()
    assert (body["status"], body["amount"], body["fund_refund"], body["account_refund"]) == (
        "refunded", "104.00", "70.00", "34.00")
    assert balance(stack, ZHANG) == before
    setl = got["result"]["setl_id"]
    assert centre_rows(stack, "SELECT state FROM centre_settlements WHERE setl_id = ?", (setl,))[0][0] == "reversed"
    again = stack.pos_client.refund("E-REFUND", "RF-1")  # a retry replays the first answer
    assert again.status_code == 200 and again.json() == body
    assert stack.pos_client.refund("E-REFUND", "RF-2").status_code == 409  # already refunded
    assert stack.pos_client.get("E-REFUND").json()["status"] == "refunded"
    assert balance(stack, ZHANG) == before


def test_a_refund_whose_answer_was_lost_is_pending_and_completed_by_the_same_refund_id(stack):
    """The centre's answer to the reversal is lost: the POS is told the refund is pending (never
    that it failed: the centre did reverse it), and the same request completes it by the journaled
    msgid (no new refund id needed, nothing refunded twice)."""
    before = balance(stack, ZHANG)
    got = pay(stack, "E-REFUND-NET", ZHANG, keys={"confirm": ["<enter>"]})
    assert got["status"] == "paid" and balance(stack, ZHANG) == before - 3400
    stack.relay.cut_after("POST /fsi/api/2208")  # the reversal reaches the centre, its answer is lost
    try:
        pending = stack.pos_client.refund("E-REFUND-NET", "RF-NET")
        assert stack.relay.fired.is_set()
        assert stack.pos_client.get("E-REFUND-NET").json()["status"] == "refund_pending"
    finally:
        stack.relay.restore()
    assert pending.status_code == 202, pending.text
    assert (pending.json()["status"], pending.json()["waiting_for"]) == ("refund_pending", "centre")
    assert balance(stack, ZHANG) == before  # the centre did apply it
    done = stack.pos_client.refund("E-REFUND-NET", "RF-NET")
    assert done.status_code in (200, 201), done.text  # 200: the idle recovery pass completed it first
    assert (done.json()["status"], done.json()["amount"]) == ("refunded", "104.00")
    assert balance(stack, ZHANG) == before  # the account came back exactly once
    assert stack.pos_client.get("E-REFUND-NET").json()["status"] == "refunded"
    assert stack.pos_client.refund("E-REFUND-NET", "RF-NET").json() == done.json()


def _bank_rows(st: Any, sql: str, params: tuple = ()) -> list[tuple]:
    from kiosk.services.bank.app import bank_db_url

    db = open_database(bank_db_url(st.data_dir))
    try:
        return db.read(lambda tx: tx.fetch_all(sql, params))
    finally:
        db.close()


def _draws(st: Any, ref: str) -> list[tuple[int, int, int]]:
    """(original, unpaid, refunded) of the bank's draws on this settlement."""
    return [(int(r[0]), int(r[1]), int(r[2])) for r in _bank_rows(
        st, "SELECT original_fen, unpaid_fen, refunded_fen FROM credit_draws WHERE ref = ?", (ref,))]


def _setl_state(st: Any, setl_id: str) -> str:
    return centre_rows(st, "SELECT state FROM centre_settlements WHERE setl_id = ?", (setl_id,))[0][0]


@needs_bank
def test_two_pos_systems_with_one_order_id_both_pay(stack):
    """Two POS systems at one counter both use order id E-SAME-1: each pays its own bill (the second
    was refused as 'insufficient_credit' when the bank's draw key was the order id alone)."""
    from kiosk.app.pos_client import PosClient

    other = PosClient(stack.url("kiosk"), OTHER_POS, stack.other_pos_key)
    try:
        a = pay(stack, "E-SAME-1", WANG, keys={"confirm": ["<enter>"]})
        assert a["status"] == "paid" and a["result"]["credit_draw"] == "34.00", a
        b = pay(stack, "E-SAME-1", WANG, keys={"confirm": ["<enter>"]}, pos=other)
        assert (b["status"], b["reason"]) == ("paid", None), b
        sa, sb = a["result"]["setl_id"], b["result"]["setl_id"]
        assert sa != sb and _draws(stack, sa) == [(3400, 3400, 0)] and _draws(stack, sb) == [(3400, 3400, 0)]
        assert stack.pos_client.get("E-SAME-1").json()["result"] == a["result"]  # each system sees its own
        assert other.get("E-SAME-1").json()["result"] == b["result"]
    finally:
        other.close()


@needs_bank
def test_a_reversal_by_key_touches_only_its_own_orders_draw(stack):
    """The bank's answer to the second system's draw (same order id as the first system's paid order)
    is lost: recovery reverses that draw by its key - its own, never the first system's: the first
    order stays paid, its settlement and its draw intact."""
    from kiosk.app.pos_client import PosClient

    other = PosClient(stack.url("kiosk"), OTHER_POS, stack.other_pos_key)
    try:
        c = pay(stack, "E-SAME-2", WANG, keys={"confirm": ["<enter>"]})
        assert c["status"] == "paid", c
        sc = c["result"]["setl_id"]
        stack.bank_relay.cut_after("POST /fsi/api/credit.draw")  # the draw lands, its answer is lost
        try:
            d = pay(stack, "E-SAME-2", WANG, keys={"confirm": ["<enter>"]}, pos=other)
        finally:
            fired = stack.bank_relay.fired.is_set()
            stack.bank_relay.restore()
        assert fired and (d["status"], d["reason"]) == ("reversing", "bank_unavailable"), d
        assert stack.runtime.terminal.wait_idle()
        stack.runtime.terminal.recover()
        d = other.get("E-SAME-2").json()
        assert (d["status"], d["reason"]) == ("failed", "bank_unavailable"), d
        # the first system's payment is untouched at both parties
        assert stack.pos_client.get("E-SAME-2").json()["result"] == c["result"]
        assert _setl_state(stack, sc) == "settled" and _draws(stack, sc) == [(3400, 3400, 0)]
        # the second system's own draw was the one undone, and its settlement reversed
        sd = centre_rows(stack, "SELECT setl_id FROM centre_settlements WHERE psn_no = ? ORDER BY created_at DESC "
                                "LIMIT 1", (WANG,))[0][0]
        assert sd != sc and _setl_state(stack, sd) == "reversed"
        assert _draws(stack, sd) == [(3400, 0, 3400)]  # its own draw landed, then was undone by its key
    finally:
        other.close()


@needs_bank
def test_two_pos_systems_admissions_with_one_order_id_hold_separately(stack):
    """The hold's reference at the bank was the bare order id: a second system's admission with the
    same id was refused, and its release by that reference could free the first system's deposit.
    Now each admission holds under its own order's reference."""
    from kiosk.app.pos_client import PosClient

    other = PosClient(stack.url("kiosk"), OTHER_POS, stack.other_pos_key)
    try:
        a = pay_order(stack, {"order_id": "E-ADM-SAME", "mode": "admission", "deposit": "100.00"}, LI)
        assert a["status"] == "held", a
        b = pay_order(stack, {"order_id": "E-ADM-SAME", "mode": "admission", "deposit": "100.00"}, LI, pos=other)
        assert b["status"] == "held", b
        refs = [a["result"]["hold_id"], b["result"]["hold_id"]]
        assert refs[0] != refs[1] and "E-ADM-SAME" not in refs
        held = _bank_rows(stack, "SELECT ref, amount_fen, status FROM credit_holds WHERE ref IN (?, ?) ORDER BY ref",
                          tuple(refs))
        assert sorted((r[1], r[2]) for r in held) == [(10000, "open"), (10000, "open")]
    finally:
        other.close()  # the deposits stay held, as the orders say (the cross-party check at the end agrees)


@needs_bank
@pytest.mark.parametrize("amount", [None, "5.00"], ids=["whole", "partial"])
def test_a_refund_with_the_bank_stalled_is_pending_until_recovery_completes_it(stack, amount):
    """The bank takes the credit refund but its answer never comes back (it stalls): the POS gets 202
    refund_pending, the order and the day's reconciliation say pending; a recovery pass while the bank
    is still away keeps it pending; once the bank is back recovery completes it by the same key -
    refunded once, the retry of the same refund id replays it, the reconciliation counts it."""
    from kiosk.clock import SystemClock, local_day

    oid, rid = f"E-RF-STALL-{amount or 'whole'}", f"RF-STALL-{amount or 'whole'}"
    got = pay(stack, oid, WANG, keys={"confirm": ["<enter>"]})
    assert got["status"] == "paid" and got["result"]["credit_draw"] == "34.00", got
    setl = got["result"]["setl_id"]
    avail = _fen(_operator_line(stack, WANG).output["available"])
    back = 3400 if amount is None else 500
    day = local_day(SystemClock()).isoformat()
    stack.bank_relay.cut_after("POST /fsi/api/credit.refund")
    try:
        r = stack.pos_client.refund(oid, rid, amount)
        assert stack.bank_relay.fired.is_set()
        assert r.status_code == 202, r.text  # was 502 refund_failed although the bank applied it
        assert (r.json()["status"], r.json()["waiting_for"]) == ("refund_pending", "bank")
        assert stack.pos_client.get(oid).json()["status"] == "refund_pending"
        assert _draws(stack, setl) == [(3400, 3400 - back, back)]  # the bank did apply it
        rec = stack.pos_client.reconciliation(day).json()
        mine = [x for x in rec["refunds"] if x["refund_id"] == rid]
        assert [x["status"] for x in mine] == ["refund_pending"]
        row = [o for o in rec["orders"] if o["order_id"] == oid][0]
        assert (row["status"], row["refunded"], row["refund_pending"]) == (
            "refund_pending", "0.00", "104.00" if amount is None else "5.00")
        other = stack.pos_client.refund(oid, rid + "-B", "1.00")  # no second refund while one is pending
        assert other.status_code == 409 and other.json()["code"] == "not_refundable"
        assert stack.runtime.terminal.wait_idle()
        stack.runtime.terminal.recover()  # the bank is still away: nothing changes, nothing twice
        assert stack.pos_client.get(oid).json()["status"] == "refund_pending"
    finally:
        stack.bank_relay.restore()
    stack.runtime.terminal.recover()  # (also runs by itself every few seconds when idle)
    end = time.monotonic() + 20
    while stack.pos_client.get(oid).json()["status"] == "refund_pending" and time.monotonic() < end:
        time.sleep(0.2)
    order = stack.pos_client.get(oid).json()
    assert order["status"] == ("refunded" if amount is None else "partially_refunded"), order
    assert _draws(stack, setl) == [(3400, 3400 - back, back)]  # refunded exactly once
    assert _fen(_operator_line(stack, WANG).output["available"]) == avail + back
    assert _setl_state(stack, setl) == ("reversed" if amount is None else "settled")
    again = stack.pos_client.refund(oid, rid, amount)  # the POS retries: the stored answer, nothing new
    assert again.status_code == 200 and again.json()["status"] == "refunded", again.text
    assert again.json()["credit_refund"] == _yuan(back)
    assert _draws(stack, setl) == [(3400, 3400 - back, back)]
    rec = stack.pos_client.reconciliation(day).json()
    assert [x["status"] for x in rec["refunds"] if x["refund_id"] == rid] == ["refunded"]
    row = [o for o in rec["orders"] if o["order_id"] == oid][0]
    assert (row["refunded"], row["refund_pending"]) == ("104.00" if amount is None else "5.00", "0.00")


def _yuan(fen: int) -> str:
    from kiosk.money import fen_to_yuan

    return fen_to_yuan(fen)


def test_demo_console_drives_a_session_from_a_browser(stack):
    """`kiosk demo --serve`: a person at the browser plays POS, camera and keypad through /demo/."""
    from kiosk.app.demo_console import mount_demo_console

    scenes = {p["psn_no"]: scene(stack, p["psn_no"]) for p in stack.demo_people}
    scenes.update({"nobody": [], "two": [TWO_PEOPLE]})
    mount_demo_console(stack.runtime.app, stack, DEMO_BILL, scenes)
    stack.typist.clear()
    del stack.snaps[:]
    base = stack.url("kiosk")
    page = httpx.get(base + "/demo/").text
    assert "Kiosk demo console" in page
    # the embedded screen gets this run's secret from the console's own fragment, never from the server
    tok = stack.runtime.screen_token
    assert tok and tok not in page and "'/screen/'+location.hash" in page
    assert stack.screen_url() == base + "/screen/#k=" + tok
    assert httpx.get(base + "/screen/state").status_code == 401
    assert httpx.get(base + "/screen/state", headers={"X-Screen-Token": tok}).status_code == 200
    assert httpx.post(base + "/demo/camera", json={"scene": "nope"}).status_code == 422
    if not centre_rows(stack, "SELECT activated FROM centre_persons WHERE psn_no = ?", (ZHANG,))[0][0]:
        stack.typist.plan("id_entry", f"{stack.person(ZHANG)['certno']}<enter>")  # run alone: his first visit
    o = httpx.post(base + "/demo/order", json={"psn_no": ZHANG}).json()
    assert o["http"] == 201
    end = time.monotonic() + 30
    while not any(s.state == "confirm" and s.info.get("keypad_on") for s in stack.snaps[-5:]):
        assert time.monotonic() < end  # the screen shows the amounts, then the keypad lights up
        time.sleep(0.05)
    while True:
        r = httpx.post(base + "/demo/keys", json={"keys": "<enter>"}).json()
        if r["result"] == "keys sent: 1":
            break
        assert time.monotonic() < end
        time.sleep(0.02)
    while True:
        got = httpx.get(base + f"/demo/orders/{o['order_id']}").json()
        if got["status"] not in ("pending", "running"):
            break
        assert time.monotonic() < end
        time.sleep(0.1)
    assert got["status"] == "paid"
    stack.camera.clear()


@needs_bank
def test_inpatient_admission_holds_and_discharge_settles_and_captures(stack):
    st = _operator_line(stack, LI)
    avail0 = st.output["available"]
    stack.typist.clear()
    adm = pay_order(stack, {"order_id": "E-ADMIT", "mode": "admission", "deposit": "500.00"}, LI)
    assert adm["status"] == "held", adm
    assert adm["result"]["hold_id"]
    held = _operator_line(stack, LI).output["available"]
    assert _fen(avail0) - _fen(held) == 50000  # the deposit is reserved on the line
    dis = pay_order(stack, {"order_id": "E-DISCHARGE", "mode": "discharge", "admission_order_id": "E-ADMIT",
                            "bill": DEMO_BILL}, LI)
    assert dis["status"] == "paid", dis
    r = dis["result"]
    assert _fen(r["credit_draw"]) == _fen(r["medfee_sumamt"]) - _fen(r["fund_pay_sumamt"]) - _fen(r["acct_pay"]) > 0
    assert r["cash_pay"] == "0.00"
    after = _operator_line(stack, LI).output["available"]
    # the rest of the hold is released: only the captured self-pay stays drawn
    assert _fen(avail0) - _fen(after) == _fen(r["credit_draw"])
    # the hold is spent: the admission says so and a second discharge is refused before any session starts
    assert stack.pos_client.get("E-ADMIT").json()["status"] == "captured"
    again = stack.pos_client.create({"order_id": "E-DISCHARGE-2", "mode": "discharge",
                                     "admission_order_id": "E-ADMIT", "bill": DEMO_BILL})
    assert again.status_code == 409 and again.json()["code"] == "no_hold", again.text


@needs_bank
def test_discharge_whose_capture_answer_is_lost_is_completed_not_reversed(stack):
    """The capture reaches the bank but its answer is lost: the settlement stands and recovery
    completes the discharge by the capture's key (reversing it would leave a captured hold
    with no settlement behind it)."""
    avail0 = _fen(_operator_line(stack, LI).output["available"])
    adm = pay_order(stack, {"order_id": "E-ADMIT-NET", "mode": "admission", "deposit": "300.00"}, LI)
    assert adm["status"] == "held", adm
    import threading

    stack.bank_relay.cut_after("POST /fsi/api/credit.capture")
    # only that one answer is lost: the bank is reachable again at once (a timeout, not an outage)
    healer = threading.Thread(target=lambda: stack.bank_relay.fired.wait(60) and stack.bank_relay.restore())
    healer.start()
    try:
        dis = pay_order(stack, {"order_id": "E-DISCHARGE-NET", "mode": "discharge",
                                "admission_order_id": "E-ADMIT-NET", "bill": DEMO_BILL}, LI)
        assert stack.bank_relay.fired.is_set()
    finally:
        stack.bank_relay.restore()
        healer.join(1)
    if dis["status"] != "paid":  # the retried capture may have been answered at once
        assert (dis["status"], dis["reason"]) == ("reversing", "bank_unavailable"), dis
        assert stack.runtime.terminal.wait_idle()
        stack.runtime.terminal.recover()
    got = stack.pos_client.get("E-DISCHARGE-NET").json()
    assert got["status"] == "paid", got
    setl = got["result"]["setl_id"]
    assert centre_rows(stack, "SELECT state FROM centre_settlements WHERE setl_id = ?", (setl,))[0][0] == "settled"
    after = _fen(_operator_line(stack, LI).output["available"])
    assert avail0 - after == _fen(got["result"]["credit_draw"]) > 0  # captured once, the rest released
    assert stack.pos_client.get("E-ADMIT-NET").json()["status"] == "captured"


def _fen(y: str) -> int:
    from kiosk.money import yuan_to_fen

    return yuan_to_fen(y, "amount")


def pay_order(st: Any, body: dict[str, Any], person: str, timeout: float = 40.0, pos: Any = None) -> dict[str, Any]:
    pos = pos or st.pos_client
    st.typist.clear()
    if not centre_rows(st, "SELECT activated FROM centre_persons WHERE psn_no = ?", (person,))[0][0]:
        st.typist.plan("id_entry", f"{st.person(person)['certno']}<enter>")
    st.typist.plan("confirm", "<enter>")
    st.camera.show(scene(st, person))
    try:
        r = pos.create(body)
        assert r.status_code == 201, r.text
        end = time.monotonic() + timeout
        while True:
            got = pos.get(body["order_id"], wait=10).json()
            if got["status"] not in ("pending", "running") or time.monotonic() > end:
                return got
    finally:
        st.camera.clear()


def test_zy_look_alikes_are_told_apart_by_phone_digits(stack):
    """张伟's identical twin is enrolled and activated too: the 1:N search finds two people who look
    the same, so the patient types the last 4 digits of the phone number on the keypad."""
    from datetime import date

    from kiosk.services.centre.app import centre_keys
    from kiosk.services.seed import SeedPerson, certno_for, insert_person
    from kiosk.vision.frames import read_image

    zhang = stack.person(ZHANG)
    pay(stack, "E-TWIN-0", ZHANG, keys={"confirm": ["<enter>"]})  # activated (first visit if needed)
    img = read_image(stack.settings.demo_faces / zhang["image"])
    tmpl = stack.face_pipeline().enrol_image(img).template
    twin_cert = certno_for("370202", date(1978, 3, 14), 777, False)
    twin = SeedPerson("D370202000777", "张武", twin_cert, "1", "1978-03-14", "310", "370202", "2012-01-01", "7777",
                      "", 10_000)
    db = open_database(f"sqlite:///{stack.data_dir / 'centre.db'}")
    try:
        db.run(lambda tx: insert_person(tx, centre_keys(stack.data_dir), twin, tmpl))
    finally:
        db.close()
    c = stack.centre_client
    c.sign_in("kiosk")
    a = c.activate(c.seal_face(tmpl, "twin-session", "activate"), twin_cert, "twin-session")
    assert a.ok, a.err_msg
    phone = centre_rows(stack, "SELECT phone_last4 FROM centre_persons WHERE psn_no = ?", (ZHANG,))[0][0]
    got = pay(stack, "E-TWIN-1", ZHANG, keys={"phone_entry": [f"{phone}<enter>"], "confirm": ["<enter>"]})
    assert got["status"] == "paid", got
    assert got["result"]["psn_no"] == ZHANG
    assert "phone_entry" in states(stack)
    phone_snaps = [x for x in stack.snaps if x.state == "phone_entry"]
    assert all(phone not in str(x.to_dict()) for x in phone_snaps)  # the screen shows stars only
    wrong = pay(stack, "E-TWIN-2", ZHANG, keys={"phone_entry": ["0000<enter>"]})
    assert (wrong["status"], wrong["reason"]) == ("failed", "phone_mismatch")


def test_zz_no_face_data_or_id_numbers_left_on_the_terminal(stack):
    """After every session above: the terminal's files hold no image, no template, no clear ID number."""
    from kiosk.security.privacy import scan_paths

    files = [p for p in stack.data_dir.iterdir() if p.name.startswith("kiosk.db") or p.name.endswith(".json")]
    files += list((stack.data_dir / "logs").glob("*"))
    assert files and scan_paths(*files) == []
    blob = b"".join(p.read_bytes() for p in files if p.name.startswith("kiosk.db"))
    for p in stack.demo_people:
        assert p["certno"].encode() not in blob


@needs_bank
def test_bank_lost_mid_draw_puts_everything_back(stack):
    """The draw reaches the bank, its answer is lost, the bank stays unreachable: the order stays
    'reversing' until the network returns, then the draw and the settlement are both undone."""
    before = balance(stack, WANG)
    avail = _fen(_operator_line(stack, WANG).output["available"])
    stack.bank_relay.cut_after("POST /fsi/api/credit.draw")
    try:
        got = pay(stack, "E-BANKNET", WANG, keys={"confirm": ["<enter>"]})
    finally:
        fired = stack.bank_relay.fired.is_set()
        stack.bank_relay.restore()
    assert fired and (got["status"], got["reason"]) == ("reversing", "bank_unavailable"), got
    assert stack.runtime.terminal.wait_idle()
    stack.runtime.terminal.recover()
    got = stack.pos_client.get("E-BANKNET").json()
    assert (got["status"], got["reason"]) == ("failed", "bank_unavailable")
    assert _fen(_operator_line(stack, WANG).output["available"]) == avail
    assert balance(stack, WANG) == before
    last = centre_rows(stack, "SELECT state FROM centre_settlements WHERE psn_no = ? ORDER BY created_at DESC "
                              "LIMIT 1", (WANG,))
    assert last[0][0] == "reversed"


def test_zz_the_centre_the_bank_and_the_kiosk_agree_after_every_session_above(stack):
    """`kiosk check parties` over this stack's three books after every payment, refund, lost answer
    and recovery above: no draw without its settlement, nothing reversed but not refunded, every
    order's state what both parties say."""
    from kiosk.app.crosscheck import check_parties
    from kiosk.services.bank.app import bank_db_url

    assert stack.runtime.terminal.wait_idle()
    stack.runtime.terminal.recover()
    with open_database(f"sqlite:///{stack.data_dir / 'centre.db'}") as c, \
            open_database(bank_db_url(stack.data_dir)) as b, \
            open_database(f"sqlite:///{stack.data_dir / 'kiosk.db'}") as k:
        rep = check_parties(c, b, [k])
    assert rep.balanced, rep.table()
    from kiosk.cli import main  # the operator's command on this data dir's books: the same verdict

    assert main(["check", "parties", "--data-dir", str(stack.data_dir), "--json"]) == 0


def test_zz_every_payment_refund_and_recovery_is_in_the_audit_chain(stack):
    import json

    from kiosk.security.audit import verify_log

    path = stack.data_dir / "audit.log"
    report = verify_log(path, stack._keystore.audit_key())
    assert report.ok, str(report)
    recs = [json.loads(line) for line in path.read_text().splitlines()]
    events = {(r["event"], r["data"].get("order_id")) for r in recs}
    assert ("payment", "E-ACT-1") in events and ("refund", "E-REFUND") in events
    assert ("recovery", "E-NET-1") in events
    paid = {r["data"]["order_id"] for r in recs if r["event"] == "payment" and r["data"]["status"] == "paid"}
    assert {"E-ACT-1", "E-ACT-2", "E-RETRY", "E-PAPER", "E-NET-2"} <= paid
    assert all(p["certno"] not in path.read_text() for p in stack.demo_people)
    # the security events before the money: the spoof, the first-visit activation, the ID lock-out
    assert ("liveness_failed", "E-SPOOF") in events
    acts = {r["data"]["order_id"]: r["data"] for r in recs if r["event"] == "activation"}
    assert acts["E-ACT-1"]["result"] == "ok" and acts["E-ACT-1"]["attempts"] == 1
    assert acts["E-LOCK-1"]["result"] == "refused" and acts["E-LOCK-1"]["reason"] == "id_locked"
    assert acts["E-LOCK-1"]["attempts"] == 3
