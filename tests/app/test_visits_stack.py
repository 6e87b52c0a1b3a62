"""Senseless outpatient payment end to end on the stack (test_e2e's: the real centre and bank as their own
processes, the firmware bridge on the MCU simulator, the kiosk over HTTP with the real face pipeline):
one face at registration, charges settled and drawn without the patient, a charge over the cap that
needs the patient, the notices in the patient's inbox, the holder's statement, a refund, the day-end,
a revocation that stops the next charge, and other POS systems' attempts."""
from __future__ import annotations

import time
from typing import Any

import pytest

from kiosk.clock import SystemClock, local_day
from kiosk.storage import open_database

from tests.app.test_e2e import HAS_BANK, LI, OTHER_POS, centre_rows, stack  # noqa: F401

pytestmark = pytest.mark.skipif(not HAS_BANK, reason="kiosk.services.bank not landed yet")


def bill(yuan: str, code: str = "F001") -> dict[str, Any]:
    return {"med_type": "11", "items": [{"code": code, "price": yuan, "qty": "1"}]}


def register(st: Any, visit_id: str, person: str, *, mandate: dict[str, str] | None = None,
             timeout: float = 60.0) -> dict[str, Any]:
    """The HIS registers the visit; the patient steps up: face (ID on a first visit), the confirm key."""
    from kiosk.app.demo import scene

    st.typist.clear()
    if not centre_rows(st, "SELECT activated FROM centre_persons WHERE psn_no = ?", (person,))[0][0]:
        st.typist.plan("id_entry", f"{st.person(person)['certno']}<enter>")
    st.typist.plan("confirm", "<enter>")
    st.camera.show(scene(st, person))
    try:
        r = st.pos_client.open_visit(visit_id, mandate)
        assert r.status_code == 201, r.text
        end = time.monotonic() + timeout
        while True:
            v = st.pos_client.visit(visit_id, wait=10).json()
            if v["state"] != "opening" or time.monotonic() > end:
                return v
    finally:
        st.camera.clear()


def inbox(st: Any, psn_no: str) -> list[dict[str, Any]]:
    from kiosk.services.centre.service import notices_of

    db = open_database(f"sqlite:///{st.data_dir / 'centre.db'}")
    try:
        return notices_of(db, psn_no)
    finally:
        db.close()


def statement(st: Any, holder: str) -> dict[str, Any]:
    from kiosk.services.client import operator_call

    a = operator_call(st.url("bank"), st.admin_token, "statement", {"holder": holder})
    assert a["infcode"] == 0, a
    return a["output"]


def test_one_face_then_charges_without_the_patient_caps_notices_refund_revocation(stack):
    st = stack
    v = register(st, "SV1", LI, mandate={"per_visit": "100.00", "per_day": "150.00",
                                         "until": local_day(SystemClock()).isoformat()})
    assert v["state"] == "open", v
    mid = v["mandate"]["mandate_id"]
    assert v["mandate"]["per_visit"] == "100.00" and v["mdtrt_id"]
    term = st.runtime.terminal
    # three charges posted at different times, each paid without the patient
    paid = []
    for i, amount in enumerate(("30.00", "40.00", "50.00"), 1):
        r = st.pos_client.charge("SV1", f"C{i}", bill(amount))
        assert r.status_code == 201, r.text
        paid.append(r.json())
        time.sleep(0.2)
    assert all(p["status"] == "paid" and p["result"]["setl_id"] for p in paid)
    for p in paid:  # each settlement stands at the centre, made under the visit
        row = centre_rows(st, "SELECT state, mdtrt_id FROM centre_settlements WHERE setl_id = ?",
                          (p["result"]["setl_id"],))
        assert row == [("settled", v["mdtrt_id"])]
    used = sum(int(round(float(p["result"][k]) * 100)) for p in paid for k in ("acct_pay", "acct_mulaid_pay",
                                                                               "credit_draw", "cash_pay"))
    assert st.pos_client.visit("SV1").json()["used_this_visit"] == f"{used // 100}.{used % 100:02d}"
    # a fourth over the per-visit cap: the patient is needed, nothing moved for it
    before = centre_rows(st, "SELECT COUNT(*) FROM centre_settlements WHERE psn_no = ?", (LI,))[0][0]
    r = st.pos_client.charge("SV1", "C4", bill("300.00"))
    assert r.status_code == 409 and r.json()["code"] == "needs_patient", r.text
    assert r.json()["reason"] in ("mandate_cap_visit", "mandate_cap_day")
    assert centre_rows(st, "SELECT COUNT(*) FROM centre_settlements WHERE psn_no = ? AND state = 'settled'",
                       (LI,))[0][0] <= before
    assert st.pos_client.cancel(r.json()["order_id"]).status_code == 200  # the HIS takes it back
    # the notices reach the patient's insurance app (the idle pass), each once
    term.recover()
    got = [n for n in inbox(st, LI) if n["kind"] == "senseless_charge"]
    assert {n["setl_id"] for n in got} >= {p["result"]["setl_id"] for p in paid}
    # the holder's statement shows the mandate and marks the senseless draws
    stm = statement(st, LI)
    assert any(m["mandate_id"] == mid for m in stm["mandates"])
    drawn = [d for d in stm["draws"] if d.get("mandate_id") == mid]
    assert len(drawn) == sum(1 for p in paid if p["result"]["credit_draw"] != "0.00")
    # a charge is refunded like an order
    ref = st.pos_client.refund(paid[0]["order_id"], "SV1-R1")
    assert ref.status_code == 201, ref.text
    assert centre_rows(st, "SELECT state FROM centre_settlements WHERE setl_id = ?",
                       (paid[0]["result"]["setl_id"],))[0][0] != "settled"
    # another POS system at the same counter can neither charge nor see nor revoke the visit
    from kiosk.app.pos_client import PosClient

    other = PosClient(st.url("kiosk"), OTHER_POS, st.other_pos_key)
    for resp in (other.charge("SV1", "X1", bill("10.00")), other.visit("SV1"), other.revoke_visit("SV1"),
                 other.close_visit("SV1")):
        assert resp.status_code == 404 and resp.json()["code"] == "not_found"
    other.close()
    # the revocation stops the next charge
    rv = st.pos_client.revoke_visit("SV1")
    assert rv.status_code == 200 and rv.json()["mandate"]["state"] == "revoked", rv.text
    r = st.pos_client.charge("SV1", "C5", bill("10.00"))
    assert r.status_code == 409 and r.json()["reason"] == "mandate_revoked"
    st.pos_client.cancel(r.json()["order_id"])
    # close: the summary printed and sent
    c = st.pos_client.close_visit("SV1")
    assert c.status_code == 200 and c.json()["state"] == "closed"
    term.recover()
    assert any(n["kind"] == "visit_summary" and n["mdtrt_id"] == v["mdtrt_id"] for n in inbox(st, LI))


def test_the_demos_senseless_part(stack):
    """What `kiosk demo` adds for issue 17, on the test's stack: three charges paid without the patient, the
    fourth needs her, notices and statement show them, the revocation stops the next charge."""
    from kiosk.app.demo import ReceiptTee, senseless_demo

    st = stack
    st.typist.clear()
    if not centre_rows(st, "SELECT activated FROM centre_persons WHERE psn_no = ?", (LI,))[0][0]:
        st.typist.plan("id_entry", f"{st.person(LI)['certno']}<enter>")  # the demo's payment activated her first
    tee = ReceiptTee(st.runtime.terminal.deps.printer)
    st.runtime.terminal.deps.printer = tee
    try:
        out = senseless_demo(st, st.typist, tee, "DEMO-V")
    finally:
        st.runtime.terminal.deps.printer = tee.inner
    assert out["state"] == "open", out
    paid = [c for c in out["charges"][:3]]
    assert [c["http"] for c in paid] == [201, 201, 201] and all(c["status"] == "paid" for c in paid)
    assert out["charges"][3]["http"] == 409 and out["charges"][3]["status"] == "needs_patient"
    assert out["charges"][3]["reason"] in ("mandate_cap_visit", "mandate_cap_day")
    assert {n["setl_id"] for n in out["notices"]} == {c["setl_id"] for c in paid}
    assert out["statement"]["mandates"] and len(out["statement"]["senseless_draws"]) == sum(
        1 for c in paid if c["credit_draw"] != "0.00")
    assert out["revoked"] and out["after_revocation"] == {"http": 409, "status": "needs_patient",
                                                          "reason": "mandate_revoked"}
    assert out["summary_printed"] and out["totals"]["medfee_sumamt"] == "92.00"


def test_a_charge_for_a_visit_that_does_not_exist_moves_nothing(stack):
    r = stack.pos_client.charge("NO-SUCH-VISIT", "C1", bill("10.00"))
    assert r.status_code == 404 and r.json()["code"] == "not_found"


def test_the_day_end_matches_with_the_charges(stack):
    from kiosk.app.reconcile import reconcile

    st = stack
    st.runtime.terminal.wait_idle(10)
    rep = reconcile(st.runtime.terminal.store.db, st.centre_client, st.bank_client, local_day(SystemClock()))
    assert rep.matched, rep.table()


def test_the_three_books_agree_on_the_charges(stack):
    """`kiosk check parties`: every charge's settlement and draw as the terminal says (paid, refunded, or
    nothing standing for one that needed the patient)."""
    from kiosk.app.crosscheck import check_parties
    from kiosk.services.bank.app import bank_db_url

    st = stack
    st.runtime.terminal.wait_idle(10)
    with open_database(f"sqlite:///{st.data_dir / 'centre.db'}") as c, open_database(bank_db_url(st.data_dir)) as b:
        rep = check_parties(c, b, [st.runtime.terminal.store.db])
    assert rep.balanced, rep.table()
    assert rep.counted


# ------------------------------------------------------------------------------------------ crash after each step
CHARGE_STEPS = ["start", "presettle", "reserved", "settle", "settled", "draw", "drawn", "paid"]
MOVED = {"settled", "draw", "drawn", "paid"}  # the settlement stands: recovery goes forward, by the same key


@pytest.fixture(scope="module")
def crash_visit(stack) -> dict[str, Any]:
    """A visit registered by face on the stack's kiosk, for the crash children to charge (same terminal)."""
    v = register(stack, "CRASH-V", LI, mandate={"per_visit": "2000.00", "per_day": "5000.00",
                                                "until": local_day(SystemClock()).isoformat()})
    assert v["state"] == "open", v
    return v


def _copy_visit(st: Any, child_dir: Any, visit_id: str) -> None:
    """The child kiosk's database starts with the visit and its mandate (as if registered there)."""
    from kiosk.app.store import Store

    src = st.runtime.terminal.store.db
    vrow = src.read(lambda tx: tx.fetch_dicts("SELECT * FROM app_visits WHERE visit_id = ?", (visit_id,)))[0]
    mrow = src.read(lambda tx: tx.fetch_dicts("SELECT * FROM app_mandates WHERE mandate_id = ?",
                                              (vrow["mandate_id"],)))[0]
    db = open_database(f"sqlite:///{child_dir / 'kiosk.db'}")
    try:
        Store(db, SystemClock())
        for table, row in (("app_visits", vrow), ("app_mandates", mrow)):
            cols = ", ".join(row)
            db.run(lambda tx: tx.execute(f"INSERT INTO {table} ({cols}) VALUES ({', '.join('?' for _ in row)})",
                                         tuple(row.values())))
    finally:
        db.close()


def crash_charge(st: Any, tmp_path: Any, step: str, visit_id: str, charge_id: str, body: dict[str, Any],
                 *, register_terms: dict[str, str] | None = None) -> Any:
    """A whole kiosk process (same terminal identity, services and bridge) on its own database holding the
    visit, KIOSK_CRASH_AFTER_STEP=step, sent the charge; it dies on the spot after that journal step.
    With `register_terms` it is sent the visit's registration instead (the patient at its camera confirms)."""
    import os
    import subprocess
    import sys

    import httpx

    from kiosk.app.demo import scene
    from kiosk.app.pos_client import PosClient
    from tests.app.conftest import free_port

    port = free_port()
    env = {**os.environ, "KIOSK_CRASH_AFTER_STEP": step, "KIOSK_DATA_DIR": str(st.data_dir),
           "KIOSK_BRIDGE_TOKEN_FILE": str(st.bridge_token_file())}
    kdir = tmp_path / "crash"
    kdir.mkdir()
    for f in ("terminal.json", "pos_systems.json"):
        (kdir / f).write_bytes((st.data_dir / f).read_bytes())
        os.chmod(kdir / f, 0o600)
    os.symlink(st.data_dir / "keys", kdir / "keys")
    if register_terms is None:
        _copy_visit(st, kdir, visit_id)
    id_keys: list[str] = []
    if not centre_rows(st, "SELECT activated FROM centre_persons WHERE psn_no = ?", (LI,))[0][0]:
        id_keys = ["--keys", f"id_entry={st.person(LI)['certno']}<enter>"]  # first visit: the ID is typed
    log = tmp_path / "child.log"
    child = subprocess.Popen(
        [sys.executable, "-m", "kiosk.cli", "serve", "--data-dir", str(kdir), "--port", str(port),
         "--centre-port", str(st.ports.centre), "--bank-port", str(st.ports.bank),
         "--bridge-port", str(st.ports.bridge), "--images", *[str(p) for p in scene(st, LI)],
         "--keys", "confirm=<enter>", *id_keys],
        env=env, stdout=subprocess.DEVNULL, stderr=open(log, "wb"), start_new_session=True)
    try:
        pos = PosClient(f"http://127.0.0.1:{port}", "demo-pos", st.pos_key, timeout=10)
        end = time.monotonic() + 60
        while True:
            try:
                if pos.http.get("/health").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < end and child.poll() is None, log.read_text()[-3000:]
            time.sleep(0.2)
        answer = "(died under the request)"
        try:
            answer = (pos.charge(visit_id, charge_id, body) if register_terms is None else
                      pos.open_visit(visit_id, register_terms)).text
        except httpx.HTTPError:
            pass  # the process died under the request
        try:
            assert child.wait(60 if register_terms is None else 100) == 137
        except subprocess.TimeoutExpired:
            try:
                cdb = open_database(f"sqlite:///{kdir / 'kiosk.db'}")
                seen = cdb.read(lambda tx: tx.fetch_all("SELECT order_id, step, data FROM app_journal ORDER BY id"))
                seen_o = cdb.read(lambda tx: tx.fetch_all("SELECT order_id, status, reason FROM app_orders"))
                cdb.close()
            except Exception as e:  # noqa: BLE001
                seen, seen_o = str(e), ""
            pytest.fail(f"the kiosk never reached the crash point ({answer}; journal {seen}; orders {seen_o}):\n"
                        + log.read_text()[-3000:])
    finally:
        if child.poll() is None:
            child.kill()
    return kdir


@pytest.mark.parametrize("step", CHARGE_STEPS)
def test_charge_crash_after_each_step_is_resolved_on_restart(stack, crash_visit, tmp_path, step):
    """A real kiosk process killed after each journal step of a charge; a new terminal on its database
    recovers it: paid exactly once (settlement standing, one draw under the mandate) or nothing standing,
    and every ledger of both services balances."""
    from kiosk.app.store import Store
    from kiosk.app.terminal import Terminal
    from kiosk.services.bank.app import bank_db_url, check_bank
    from kiosk.services.centre.check import check_centre

    st = stack
    cid = f"CR-{step}"
    kdir = crash_charge(st, tmp_path, step, "CRASH-V", cid, bill("50.00"))
    db = open_database(f"sqlite:///{kdir / 'kiosk.db'}")
    try:
        store = Store(db, SystemClock())
        term = Terminal(store, st.runtime.terminal.deps, SystemClock())
        term.recover()
        assert term.recover() == []  # a second pass finds nothing left
        oid = f"charge~CRASH-V~{cid}"
        row = store.get("demo-pos", oid)
        steps = {s: d for s, d in store.steps("demo-pos", oid)}
        msgid = (steps.get("settle") or {}).get("msgid")
        setl = centre_rows(st, "SELECT setl_id, state FROM centre_settlements WHERE msgid LIKE ?",
                           (f"%{msgid}",)) if msgid else []
        draws = [d for d in bank_draws(st) if setl and d[0] == setl[0][0]]
        if step in MOVED:
            assert row.status == "paid", (row, steps)
            assert setl and setl[0][1] == "settled" and row.result["setl_id"] == setl[0][0]
            cash = yuan_to_fen_(row.result["credit_draw"])
            assert sum(d[1] for d in draws) == cash and len(draws) == (1 if cash else 0)
        else:
            assert row.status == "failed", (row, steps)
            assert all(s[1] != "settled" for s in setl) and not draws
        with open_database(f"sqlite:///{st.data_dir / 'centre.db'}") as c, open_database(bank_db_url(st.data_dir)) as b:
            assert check_centre(c)["balanced"] and check_bank(b)["balanced"]
    finally:
        db.close()


def bank_draws(st: Any) -> list[tuple[str, int]]:
    from kiosk.services.bank.app import bank_db_url

    with open_database(bank_db_url(st.data_dir)) as db:
        return [(r[0], int(r[1])) for r in db.read(lambda tx: tx.fetch_all(
            "SELECT ref, original_fen FROM credit_draws WHERE mandate_id IS NOT NULL"))]


def yuan_to_fen_(v: str) -> int:
    from kiosk.money import yuan_to_fen

    return yuan_to_fen(v, "amount")


REGISTER_STEPS = ["start", "face_auth", "mandate_auth", "register", "mandated", "registered", "print", "done"]
CONFIRMED = {"register", "mandated", "registered", "print", "done"}  # the patient had confirmed: forward


@pytest.mark.parametrize("step", REGISTER_STEPS)
def test_registration_crash_after_each_step_ends_open_or_with_nothing_opened(stack, tmp_path, step):
    """A real kiosk process killed after each journal step of a registration; the new terminal's recovery
    ends it open (mandate at the bank, visit at the centre, both named by the kiosk's visit) or with
    nothing opened - never a mandate without its visit."""
    from kiosk.app.store import Store
    from kiosk.app.terminal import Terminal
    from kiosk.services.bank.app import bank_db_url

    st = stack

    def bank_mandates() -> list[tuple[str, str]]:
        with open_database(bank_db_url(st.data_dir)) as db:
            return [(r[0], r[1]) for r in db.read(lambda tx: tx.fetch_all(
                "SELECT mandate_id, state FROM credit_mandates WHERE payer = ? ORDER BY mandate_id", (LI,)))]

    mandates_before = bank_mandates()
    visits_before = centre_rows(st, "SELECT mdtrt_id FROM centre_visits WHERE psn_no = ?", (LI,))
    vid = f"CRV-{step}"
    terms = {"per_visit": "300.00", "per_day": "600.00", "until": local_day(SystemClock()).isoformat()}
    kdir = crash_charge(st, tmp_path, step, vid, "", {}, register_terms=terms)
    db = open_database(f"sqlite:///{kdir / 'kiosk.db'}")
    try:
        store = Store(db, SystemClock())
        term = Terminal(store, st.runtime.terminal.deps, SystemClock())
        term.recover()
        assert term.recover() == []
        v = term.visits.view("demo-pos", vid)
        new_mandates = [m for m in bank_mandates() if m not in mandates_before and m[0] not in
                        {x[0] for x in mandates_before}]
        new_visits = [r for r in centre_rows(st, "SELECT mdtrt_id, state FROM centre_visits WHERE psn_no = ?", (LI,))
                      if (r[0],) not in visits_before]
        if step in CONFIRMED:
            assert v["state"] == "open", v
            assert new_mandates == [(v["mandate"]["mandate_id"], "active")]
            assert new_visits == [(v["mdtrt_id"], "open")]
        else:
            assert v["state"] == "failed", v
            assert new_mandates == [] and new_visits == []
    finally:
        db.close()


def test_the_patient_revokes_her_mandates_by_face_on_the_stack(stack):
    """POST /pos/v1/mandates/revoke through the real parties: her face, her mandates read on her word at the
    bank, the confirm key, each revoked on her word; the visit's next charge needs her."""
    from kiosk.app.demo import scene

    st = stack
    v = register(st, "SV-RV", LI)
    assert v["state"] == "open", v
    mid = v["mandate"]["mandate_id"]
    st.typist.clear()
    st.typist.plan("confirm", "<enter>")
    st.camera.show(scene(st, LI))
    try:
        r = st.pos_client.revoke_by_face("RV-STACK")
        assert r.status_code == 201, r.text
        end = time.monotonic() + 60
        while True:
            o = st.pos_client.get(r.json()["order_id"], wait=10).json()
            if o["status"] not in ("pending", "running") or time.monotonic() > end:
                break
    finally:
        st.camera.clear()
    assert o["status"] == "revoked", o
    assert {m["mandate_id"]: m["result"] for m in o["result"]["mandates"]}[mid] == "revoked"
    a = st.bank_client.call("credit.mandate_get", {"mandate_id": mid})
    assert a.output["state"] == "revoked", a
    c = st.pos_client.charge("SV-RV", "C1", bill("10.00"))
    assert c.status_code == 409 and c.json()["reason"] == "mandate_revoked", c.text
    st.pos_client.cancel(c.json()["order_id"])
