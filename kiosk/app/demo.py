"""`kiosk demo`: the whole system on one machine and one scripted counter session.

Starts the insurance centre and the bank (SQLite under var/demo), the firmware
bridge on the MCU simulator and the kiosk app (POS API + screen on 8740) with a
simulated camera playing the shared face images; seeds the demo people; then a
POS sends a bill and the demo patient pays it by face: first visit, so the ID
number is typed on the (simulated) keypad, then the confirm key; part fund,
part personal account, the rest from the credit line. Then an item-level return,
then senseless payment (issue 17): one face at registration, three HIS charges
paid without her, a fourth above the per-visit cap that needs her, the notices
and her statement, a revocation that stops the next charge, the visit's summary
(`senseless` in the JSON). Prints the receipts and,
as the last stdout line, one JSON object with the result. Progress goes to
stderr. `--serve` keeps everything up for a person at http://127.0.0.1:8740/screen/.
`--fleet` also runs the operator's fleet service (8750, SQLite under var/demo/fleet-service)
in this process with the demo terminal registered and its fleet agent reporting into it
(the page /fleet/, the operator token printed on stderr); the JSON then has a `fleet` entry.
"""
from __future__ import annotations

import json
import logging
import signal
import sys
import threading
import time
from datetime import date
from typing import Any

from kiosk.config import load
from kiosk.errors import ConfigError, RemoteError
from kiosk.app.procs import install_cleanup
from kiosk.app.stack import Ports, Stack
from kiosk.app.typist import Typist

DEMO_PATIENT = "D370202000002"   # 李娜: 45, employee insured in Qingdao, 15.00 yuan in her personal account
FAMILY_HOLDER = "D370202000001"  # 张伟 holds a credit line and binds his father
FAMILY_MEMBER = "D370202000003"  # 王建国: 76, no account balance, pays by family pay

# the demo bill at the demo clinic (level 1, Qingdao employee outpatient: 80 %, no deductible)
DEMO_BILL = {"med_type": "11", "items": [
    {"code": "F001", "name": "普通门诊诊查费 consultation", "price": "10.00", "qty": "1"},
    {"code": "XA01", "name": "阿莫西林胶囊 amoxicillin", "price": "18.50", "qty": "2"},
    {"code": "XB01", "name": "阿托伐他汀钙片 atorvastatin", "price": "45.00", "qty": "1"},
    {"code": "XC01", "name": "维生素C泡腾片 vitamin C", "price": "12.00", "qty": "1"},
]}

DEMO_RETURN = [{"code": "XA01", "qty": "1"}]  # one of the two boxes of amoxicillin goes back

# senseless payment (issue 17): the HIS proposes these caps at registration; the visit's charges as the
# departments post them (the fourth is above what is left of the per-visit cap: it needs the patient)
DEMO_MANDATE = {"per_visit": "100.00", "per_day": "200.00"}
DEMO_CHARGES = [
    ("consultation", {"med_type": "11", "items": [{"code": "F001", "name": "诊查费 consultation", "price": "10.00",
                                                   "qty": "1"}]}),
    ("lab", {"med_type": "11", "items": [{"code": "XB01", "name": "阿托伐他汀钙片 atorvastatin", "price": "45.00",
                                          "qty": "1"}]}),
    ("pharmacy", {"med_type": "11", "items": [{"code": "XA01", "name": "阿莫西林胶囊 amoxicillin", "price": "18.50",
                                               "qty": "2"}]}),
    ("imaging", {"med_type": "11", "items": [{"code": "XB01", "name": "阿托伐他汀钙片 atorvastatin", "price": "45.00",
                                              "qty": "20"}]}),
]

# photos of each demo person that pass the capture gates (other shots than the enrolled one)
LIVE_SHOTS = {"000": (4,), "001": (2, 1, 3), "002": (2, 3), "003": (2, 3), "004": (2, 3, 4)}


def say(msg: str) -> None:
    print(f"demo: {msg}", file=sys.stderr, flush=True)


def seed_bank(st: Stack) -> None:
    """Credit lines: the demo patient's own; the holder's, shared with his father (family pay)."""
    from kiosk.services.client import operator_bind, operator_call

    people = {p["psn_no"]: p for p in st.demo_people}

    def birth(psn: str) -> str:
        c = people[psn]["certno"]
        return f"{c[6:10]}-{c[10:12]}-{c[12:14]}"

    # the holders applied in the bank's own channel (a terminal opens a line only with the applicant's face)
    for holder in (DEMO_PATIENT, FAMILY_HOLDER):
        a = operator_call(st.url("bank"), st.admin_token, "apply", {"holder": holder, "birth_date": birth(holder),
                                                                    "insured_years": 6, "key": f"demo-line/{holder}"})
        if a.get("infcode") != 0 and "already" not in f"{a.get('err_code', '')} {a.get('err_msg', '')}".lower():
            raise RemoteError(f"credit line for {holder} refused: {a.get('err_msg')}",
                              code=str(a.get("err_code") or "refused"))
    # the holder made the binding in the bank's own channel (a terminal binds only with the holder's face)

    b = operator_bind(st.url("bank"), st.admin_token, FAMILY_HOLDER, FAMILY_MEMBER, "parent", True, "2000.00",
                      key=f"demo-family/{FAMILY_HOLDER}/{FAMILY_MEMBER}")
    if b.get("infcode") != 0 and "already" not in f"{b.get('err_code', '')} {b.get('err_msg', '')}".lower():
        raise RemoteError(f"family binding refused: {b.get('err_msg')}", code=str(b.get("err_code") or "refused"))


def _free_port() -> int:
    import socket

    with socket.socket() as sk:
        sk.bind(("127.0.0.1", 0))
        return int(sk.getsockname()[1])


class DemoFleet:
    """The operator's fleet service (kiosk.fleet) in this process on SQLite under `<data_dir>/fleet-service`,
    an operator artifact key made there (`operator.key` 0600 + `operator.pub`), and `register(st)` for the
    stack's terminal. Its operator token is the stack's (`st.admin_token`, written 0600 where the service
    reads it); the terminal's agent is then configured by `st.settings` (fleet_url, fleet_operator_pub)."""

    def __init__(self, st: Stack, port: int = 0, *, job: bool = True) -> None:
        import os

        from kiosk.app.runtime import ServerThread
        from kiosk.fleet import artifacts as art
        from kiosk.fleet.app import create_app
        from kiosk.fleet.notify import LogNotifier

        self.dir = st.data_dir / "fleet-service"
        (self.dir / "fleet").mkdir(parents=True, exist_ok=True, mode=0o700)
        tok = self.dir / "fleet" / "admin.token"
        fd = os.open(tok, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(st.admin_token)
        self.token = st.admin_token
        keys = self.dir / "operator"
        if not (keys / "operator.key").exists():
            art.write_keypair(keys)
        self.operator_key = art.load_private(keys / "operator.key")
        self.operator_pub = keys / "operator.pub"
        self.port = port or _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.app = create_app(f"sqlite:///{self.dir / 'fleet.db'}", data_dir=self.dir, notifier=LogNotifier(),
                              operator_pub=self.operator_pub.read_bytes(), job=job)
        self.service = self.app.state.service
        self.server = ServerThread(self.app, port=self.port).start()

    def register(self, st: Stack, *, district: str = "370202") -> dict[str, Any]:
        """The stack's terminal registered (its key store's Ed25519 key) and its settings pointed here."""
        from dataclasses import replace

        from kiosk.fleet.agent import register_with_fleet
        from kiosk.security.keystore import KeyStore

        ks = KeyStore.open(st.data_dir / "keys")
        out = register_with_fleet(self.url, self.token, ks.public_identity(), institution=st.fixmedins,
                                  district=district)
        st.settings = replace(st.settings, fleet_url=self.url, fleet_operator_pub=str(self.operator_pub))
        return out

    def terminal(self, terminal_id: str) -> dict[str, Any] | None:
        return next((t for t in self.service.terminals() if t["terminal_id"] == terminal_id), None)

    def stop(self) -> None:
        self.server.stop()
        job = getattr(self.app.state, "job", None)
        if job is not None:
            job.stop()
        self.app.state.db.close()


def start_stack(port: int, fresh: bool, fleet_port: int | None = None) -> Stack:
    s = load()
    st = Stack(data_dir=s.data_dir / "demo", ports=Ports(kiosk=port), settings=s)
    st.prepare(fresh)
    say(f"state under {st.data_dir}")
    say("seeding the insurance centre with the demo people (templates from the shared face images)")
    st.seed_centre()
    say("starting the insurance centre (8710), the bank (8720), the firmware bridge on the MCU simulator (8730)")
    st.start_centre()
    st.start_bank()
    st.start_bridge()
    st.register_terminal()
    st.clients()
    seed_bank(st)
    if fleet_port is not None:
        st.fleet_service = DemoFleet(st, fleet_port)
        st.fleet_service.register(st)
        say(f"fleet service on {st.fleet_service.url} (page {st.fleet_service.url}/fleet/, operator token "
            f"{st.fleet_service.token}); the demo terminal reports into it")
    say(f"starting the kiosk app (POS API + screen) on 127.0.0.1:{port}")
    st.build_kiosk()
    return st


def scene(st: Stack, psn_no: str) -> list[Any]:
    p = st.person(psn_no)
    img = st.settings.demo_faces / p["image"]
    folder = img.parent.name
    shots = LIVE_SHOTS.get(folder)
    if not shots:
        return [img]
    return [img.with_name(f"{folder}_{k}.png") for k in shots]


def pay_once(st: Stack, order_id: str, bill: dict[str, Any], *, timeout_s: float = 90.0) -> tuple[dict[str, Any], float]:
    """POS side: send the bill, wait for the result. Returns (order JSON, ms from bill to result)."""
    pos = st.pos()
    try:
        t0 = time.perf_counter()
        r = pos.create({"order_id": order_id, "bill": bill})
        if r.status_code not in (200, 201):
            raise ConfigError(f"the POS API refused the order: {r.status_code} {r.text}", code="order_refused")
        end = time.monotonic() + timeout_s
        while True:
            got = pos.get(order_id, wait=min(30.0, max(1.0, end - time.monotonic()))).json()
            if got["status"] not in ("pending", "running") or time.monotonic() > end:
                return got, (time.perf_counter() - t0) * 1000
    finally:
        pos.close()


def return_once(st: Stack, order_id: str, return_id: str, lines: list[dict[str, str]], *,
                timeout_s: float = 60.0) -> dict[str, Any]:
    """POS side: post an item-level return, wait until the patient confirmed and it settled (or not)."""
    pos = st.pos()
    try:
        r = pos.return_lines(order_id, return_id, lines)
        if r.status_code not in (200, 201, 202):
            raise ConfigError(f"the POS API refused the return: {r.status_code} {r.text}", code="return_refused")
        end = time.monotonic() + timeout_s
        while True:
            got = pos.get_return(order_id, return_id, wait=min(30.0, max(1.0, end - time.monotonic()))).json()
            if got["status"] not in ("pending", "running") or time.monotonic() > end:
                return got
    finally:
        pos.close()


class ReceiptTee:
    """Keeps the lines of the last receipt sent to the (real) printer, to show them on stdout."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.last: list[str] = []

    def print_receipt(self, lines: list[str]) -> Any:
        self.last = list(lines)
        return self.inner.print_receipt(lines)


def senseless_demo(st: Stack, typist: Typist, tee: ReceiptTee, visit_id: str) -> dict[str, Any]:
    """Issue 17 in the demo: one face at registration, three HIS charges paid without the patient, a
    fourth above the per-visit cap that needs the patient, the notices and the holder's statement, then a
    revocation that stops the next charge, and the visit's summary."""
    from datetime import timedelta

    from kiosk.clock import SystemClock, local_day
    from kiosk.services.centre.service import notices_of
    from kiosk.services.client import operator_call
    from kiosk.storage import open_database

    pos = st.pos()
    term = st.runtime.terminal
    out: dict[str, Any] = {"visit_id": visit_id}
    try:
        name = st.person(DEMO_PATIENT)["psn_name"]
        until = (local_day(SystemClock()) + timedelta(days=90)).isoformat()
        say(f"senseless pay: the HIS registers visit {visit_id}; {name} shows her face once and confirms the "
            f"mandate ({DEMO_MANDATE['per_visit']} per visit, {DEMO_MANDATE['per_day']} per day, until {until})")
        typist.plan("confirm", "<enter>")
        st.camera.show(scene(st, DEMO_PATIENT))
        r = pos.open_visit(visit_id, {**DEMO_MANDATE, "until": until, "lines": "own"})
        if r.status_code not in (200, 201):
            raise ConfigError(f"the POS API refused the visit: {r.status_code} {r.text}", code="visit_refused")
        end = time.monotonic() + 90
        v = r.json()
        while v["state"] == "opening" and time.monotonic() < end:
            v = pos.visit(visit_id, wait=10).json()
        st.camera.clear()
        out.update(state=v["state"], mandate=v.get("mandate"), mdtrt_id=v.get("mdtrt_id"))
        if v["state"] != "open":
            say(f"the visit did not open: {v['state']} ({v.get('reason')})")
            return out
        charges = []
        for i, (dept, bill) in enumerate(DEMO_CHARGES, 1):
            time.sleep(1.0)  # the departments post at different times; nobody is at the terminal
            r = pos.charge(visit_id, f"C{i}-{dept}", bill)
            body = r.json()
            res = body.get("result") or {}
            item = {"charge_id": f"C{i}-{dept}", "http": r.status_code,
                    "status": body.get("status") or body.get("code"), "reason": body.get("reason"),
                    "medfee_sumamt": res.get("medfee_sumamt"), "credit_draw": res.get("credit_draw"),
                    "setl_id": res.get("setl_id"), "counter_order": body.get("order_id") if r.status_code == 409 else None}
            charges.append(item)
            say(f"  HIS {dept}: {r.status_code} {item['status']}" + (f" ({item['reason']})" if item["reason"] else
                f", {item['medfee_sumamt']} settled, {item['credit_draw']} from the credit line"))
            if item["counter_order"]:
                pos.cancel(item["counter_order"])  # the cashier will see her at the counter instead
        out["charges"] = charges
        term.recover()  # the idle pass: the notices go to her insurance app
        with open_database(f"sqlite:///{st.data_dir / 'centre.db'}") as cdb:
            inbox = notices_of(cdb, DEMO_PATIENT)
        out["notices"] = [{"kind": n["kind"], "setl_id": n.get("setl_id"), "medfee_sumamt": n.get("medfee_sumamt"),
                           "psn_cash_pay": n.get("psn_cash_pay")} for n in inbox if n.get("kind") == "senseless_charge"
                          and n.get("mdtrt_id") == v.get("mdtrt_id")]
        say(f"  her insurance app holds {len(out['notices'])} senseless-charge notice(s) for this visit")
        stm = operator_call(st.url("bank"), st.admin_token, "statement", {"holder": DEMO_PATIENT}).get("output") or {}
        mid = (v.get("mandate") or {}).get("mandate_id")
        out["statement"] = {"mandates": [m for m in stm.get("mandates") or [] if m.get("mandate_id") == mid],
                            "senseless_draws": [{k: v for k, v in d.items() if k in ("ref", "day", "mandate_id", "visit")
                                                 or k.startswith("original")}
                                                for d in stm.get("draws") or [] if d.get("mandate_id") == mid]}
        say(f"  her statement lists the mandate and {len(out['statement']['senseless_draws'])} senseless draw(s)")
        rv = pos.revoke_visit(visit_id)
        out["revoked"] = rv.status_code == 200 and (rv.json().get("mandate") or {}).get("state") == "revoked"
        say(f"  the mandate is revoked ({rv.status_code}); the HIS posts one more charge")
        r = pos.charge(visit_id, "C5-after-revocation", DEMO_CHARGES[0][1])
        body = r.json()
        out["after_revocation"] = {"http": r.status_code, "status": body.get("status") or body.get("code"),
                                   "reason": body.get("reason")}
        if r.status_code == 409 and body.get("order_id"):
            pos.cancel(body["order_id"])
        say(f"  -> {r.status_code} {out['after_revocation']['status']} ({out['after_revocation']['reason']})")
        tee.last = []
        c = pos.close_visit(visit_id).json()
        out["totals"] = c.get("totals")
        out["summary_printed"] = bool(c.get("receipt_printed"))
        if tee.last:
            print("\n".join(["-" * 42, *tee.last, "-" * 42]), flush=True)
        term.recover()
        return out
    finally:
        st.camera.clear()
        pos.close()


def day_end(st: Stack) -> bool | None:
    """`kiosk reconcile today` on the demo's books: the table on stderr; whether the day matched
    (None when a party could not answer: the demo's payment result stands either way)."""
    from kiosk.app.reconcile import reconcile
    from kiosk.clock import SystemClock, local_day
    from kiosk.errors import KioskError

    st.runtime.terminal.wait_idle(10.0)
    try:
        rep = reconcile(st.runtime.terminal.store.db, st.centre_client, st.bank_client, local_day(SystemClock()))
    except KioskError as e:
        say(f"day-end could not run: {e}")
        return None
    say("day-end (kiosk reconcile today):\n" + rep.table())
    return rep.matched


def fleet_summary(st: Stack, day_matched: bool | None) -> dict[str, Any]:
    """After the session: the day-end result and the session in one more beat; the fleet's view of the terminal."""
    from dataclasses import replace

    from kiosk.app.fleet_link import record_day_end
    from kiosk.clock import SystemClock, local_day

    link = st.runtime.fleet
    record_day_end(replace(st.settings, data_dir=st.data_dir), local_day(SystemClock()),
                   "failed" if day_matched is None else "ok" if day_matched else "mismatch")
    answer = link.agent.beat()
    t = st.fleet_service.terminal(link.agent.terminal_id) or {}
    return {"url": st.fleet_service.url + "/fleet/", "beat_accepted": answer is not None, "state": t.get("state"),
            "versions": {k: t.get(k) for k in ("app_version", "model_pack", "mcu_firmware")},
            "peripherals": {k: t.get(k) for k in ("paper", "cover", "camera", "bridge")},
            "dayend_result": t.get("dayend_result")}


def run_demo(*, serve: bool = False, fresh: bool = True, port: int = 8740, fleet_port: int | None = None) -> int:
    install_cleanup()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s",
                        stream=sys.stderr)
    st: Stack | None = None
    try:
        st = start_stack(port, fresh, fleet_port)
        tee = ReceiptTee(st.runtime.terminal.deps.printer)
        st.runtime.terminal.deps.printer = tee
        typist = Typist(st.bridge.sim)
        st.runtime.listeners.append(typist.on_snapshot)
        last: list[str] = []

        def show(snap: Any) -> None:
            if not last or last[-1] != snap.state:
                last.append(snap.state)
                extra = f" ({snap.reason})" if snap.reason else ""
                say(f"  screen: {snap.state}{extra} - {snap.prompt_en}")

        st.runtime.listeners.append(show)
        patient = st.person(DEMO_PATIENT)
        say(f"patient {patient['psn_name']} steps up (first visit: she types her ID number, then confirms)")
        typist.plan("id_entry", f"{patient['certno']}<enter>")
        typist.plan("confirm", "<enter>")
        st.camera.show(scene(st, DEMO_PATIENT))
        order_id = f"DEMO-{date.today():%Y%m%d}-{int(time.time()) % 100000:05d}"
        got, elapsed = pay_once(st, order_id, DEMO_BILL)
        st.camera.clear()
        res = got.get("result") or {}
        if tee.last:
            print("\n".join(["-" * 42, *tee.last, "-" * 42]), flush=True)
        summary = {
            "setl_id": res.get("setl_id"), "medfee_sumamt": res.get("medfee_sumamt"),
            "fund_pay_sumamt": res.get("fund_pay_sumamt"), "acct_pay": res.get("acct_pay"),
            "credit_draw": res.get("credit_draw"), "receipt_printed": bool(res.get("receipt_printed")),
            "elapsed_ms": round(elapsed, 1),
        }
        if got["status"] != "paid":
            say(f"the payment did not complete: {got['status']} ({got.get('reason')})")
            summary["senseless"] = None
        else:
            tee.last = []
            say(f"{patient['psn_name']} brings back 1 of the 2 amoxicillin: the POS posts the return, she confirms")
            typist.plan("confirm", "<enter>")
            st.camera.show(scene(st, DEMO_PATIENT))
            ret = return_once(st, order_id, f"{order_id}-R1", DEMO_RETURN)
            st.camera.clear()
            if tee.last:
                print("\n".join(["-" * 42, *tee.last, "-" * 42]), flush=True)
            if ret.get("status") == "returned":
                new = ret["result"]["new"]
                summary["return"] = {k: new.get(k) for k in ("setl_id", "medfee_sumamt", "fund_pay_sumamt",
                                                               "acct_pay", "acct_mulaid_pay", "credit_draw",
                                                               "cash_pay")}
            else:
                say(f"the return did not complete: {ret.get('status')} ({ret.get('reason')})")
                summary["return"] = None
            summary["senseless"] = senseless_demo(st, typist, tee, f"{order_id}-V")
        summary["day_end_matched"] = day_end(st)
        if st.fleet_service is not None and st.runtime.fleet is not None:
            summary["fleet"] = fleet_summary(st, summary["day_end_matched"])
        if serve:
            from kiosk.app.demo_console import mount_demo_console

            faces = st.settings.demo_faces
            scenes: dict[str, list[Any]] = {p["psn_no"]: scene(st, p["psn_no"]) for p in st.demo_people}
            scenes.update({"nobody": [], "two": [faces / "misc" / "examples_two_people.jpg"],
                           "spoof": [faces.parent / "liveness" / "nuaa-train" / "spoof" / "0001_0001_00_00_01_116.jpg"]})
            mount_demo_console(st.runtime.app, st, DEMO_BILL, scenes)
            # the screen answers only with this run's secret: the URLs carry it in the fragment (never sent
            # to the server); the page trades it for a session cookie and drops it from the address bar
            frag = st.screen_url().partition("#")[2]
            say(f"up: demo console http://127.0.0.1:{port}/demo/#{frag} (POS, camera, keypad, printer), "
                f"screen {st.screen_url()}, POS API docs http://127.0.0.1:{port}/docs; Ctrl-C to stop")
            print(json.dumps(summary, ensure_ascii=False), flush=True)
            stop = threading.Event()
            signal.signal(signal.SIGINT, lambda *_: stop.set())
            stop.wait()
            return 0 if got["status"] == "paid" else 1
        print(json.dumps(summary, ensure_ascii=False), flush=True)
        return 0 if got["status"] == "paid" else 1
    finally:
        if st is not None:
            st.stop()
