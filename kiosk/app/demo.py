"""`kiosk demo`: the whole system on one machine and one scripted counter session.

Starts the insurance centre and the bank (SQLite under var/demo), the firmware
bridge on the MCU simulator and the kiosk app (POS API + screen on 8740) with a
simulated camera playing the shared face images; seeds the demo people; then a
POS sends a bill and the demo patient pays it by face: first visit, so the ID
number is typed on the (simulated) keypad, then the confirm key; part fund,
part personal account, the rest from the credit line. Prints the receipt and,
as the last stdout line, one JSON object with the result. Progress goes to
stderr. `--serve` keeps everything up for a person at http://127.0.0.1:8740/screen/.
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


def start_stack(port: int, fresh: bool) -> Stack:
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


class ReceiptTee:
    """Keeps the lines of the last receipt sent to the (real) printer, to show them on stdout."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.last: list[str] = []

    def print_receipt(self, lines: list[str]) -> Any:
        self.last = list(lines)
        return self.inner.print_receipt(lines)


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


def run_demo(*, serve: bool = False, fresh: bool = True, port: int = 8740) -> int:
    install_cleanup()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s",
                        stream=sys.stderr)
    st: Stack | None = None
    try:
        st = start_stack(port, fresh)
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
        summary["day_end_matched"] = day_end(st)
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
