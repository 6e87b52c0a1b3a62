"""Senseless outpatient payment at the terminal (issue 17): registration, charges without the patient,
the kiosk's caps under concurrency, expiry, revocation mid-visit, crash after each journal step,
refund of a charge, notices and the foreign callers.

The terminal, its journal and store (SQLite; PostgreSQL too where KIOSK_TEST_PG_URL is set) and the POS
API over HTTP are the real ones. The two parties are in-memory models of the contract (notes: wire
contract #17) that keep the properties the terminal relies on: a 2207 replayed by its msgid, a 2601 that
tombstones a msgid, draws and mandates replayed by their key, the bank's own caps under the mandate.
The same flows against the real centre and bank run in test_visits_stack.py.
"""
from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from kiosk.clock import SystemClock, local_day
from kiosk.errors import RemoteError
from kiosk.money import fen_to_yuan, yuan_to_fen
from kiosk.storage import Outbox
from kiosk.storage.testing import scratch_database
from kiosk.app import terminal as terminal_mod
from kiosk.app.flow import State
from kiosk.app.pos_api import create_app
from kiosk.app.pos_auth import PosAuth
from kiosk.app.pos_client import PosClient
from kiosk.app.ports import (Capture, DrawResult, FaceAuth, KeyEntry, Line, MandateResult, Person, PrintResult,
                             RefundResult, SettleResult, Split, VisitOpened)
from kiosk.app.session import Deps, Limits
from kiosk.app.store import NOTICE_TOPIC, Store
from kiosk.app.terminal import Terminal

INST = "H37020200001"
PATIENT = Person(psn_no="P100", name="李娜", ec_token="EC.P100", insutype="310")
OTHER = Person(psn_no="P200", name="王五", ec_token="EC.P200", insutype="310")
SYSTEM, OTHER_SYSTEM = "his", "lab-pos"
KEYS = {SYSTEM: "k" * 32, OTHER_SYSTEM: "o" * 32}


def bill(yuan: str) -> dict[str, Any]:
    return {"med_type": "11", "items": [{"code": "F001", "price": yuan, "qty": "1"}]}


# ------------------------------------------------------------------------------------------ the parties
@dataclass
class Centre:
    """The centre's side of the contract: fund pays 60 %, the personal share is all cash (no account)."""

    person: Person = PATIENT
    exp_s: int = 3600
    down: set[str] = field(default_factory=set)        # calls that get no answer (RemoteError / unknown)
    lose_answer: set[str] = field(default_factory=set)  # applied, but the answer is lost
    settlements: dict[str, dict[str, Any]] = field(default_factory=dict)  # msgid -> settlement
    tombstones: set[str] = field(default_factory=set)
    visits: dict[str, dict[str, Any]] = field(default_factory=dict)
    by_msgid: dict[str, VisitOpened] = field(default_factory=dict)
    notices: dict[str, dict[str, Any]] = field(default_factory=dict)
    presettle_delay: float = 0.0
    institution: str = INST
    _n: itertools.count = field(default_factory=itertools.count)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def new_msgid(self) -> str:
        return f"M{next(self._n):06d}"

    def face_auth(self, probe, session_id, phone_last4=""):
        return FaceAuth("matched", self.person)

    def line_auth(self, person, amount_fen, ref):
        return f"LA.{person.psn_no}.{amount_fen}"

    def person_auth(self, person, purpose, ref):  # ec.payauth statement / mandate_revoke: the face's word
        if "person_auth" in self.down:
            raise RemoteError("centre down", code="unreachable")
        return f"PP.{purpose}.{person.psn_no}.{ref}"

    def mandate_auth(self, person, terms, per_visit_fen):
        if "mandate_auth" in self.down:
            raise RemoteError("centre down", code="unreachable")
        assert f"visit={per_visit_fen};" in terms
        return f"PAM.{person.psn_no}.{terms}"

    def register_visit(self, person, msgid):
        with self._lock:
            if msgid in self.by_msgid:
                return self.by_msgid[msgid]
            if "register" in self.down:
                return VisitOpened("unknown", code="timeout")
            mdtrt = f"MD{len(self.visits) + 1:04d}"
            vo = VisitOpened("ok", mdtrt_id=mdtrt, visit_token=f"VT.{person.psn_no}.{mdtrt}",
                             exp=int(time.time()) + self.exp_s)
            self.visits[mdtrt] = {"psn_no": person.psn_no, "state": "open", "exp": vo.exp}
            self.by_msgid[msgid] = vo
            if "register" in self.lose_answer:
                self.lose_answer.discard("register")
                return VisitOpened("unknown", code="timeout")
            return vo

    def close_visit(self, psn_no, mdtrt_id):
        if "close" in self.down:
            return RefundResult("unknown", "timeout")
        self.visits[mdtrt_id]["state"] = "closed"
        return RefundResult("ok")

    def _split(self, bill_: dict[str, Any], setl_id: str = "", mdtrt: str = "", visit=None) -> Split:
        total = sum(yuan_to_fen(it["price"], "p") for it in bill_["items"])
        fund = total * 6 // 10
        return Split(medfee_sumamt=total, fund_pay_sumamt=fund, psn_part_amt=total - fund, acct_pay=0,
                     acct_mulaid_pay=0, psn_cash_pay=total - fund, setl_id=setl_id, mdtrt_id=mdtrt,
                     pay_auth=f"PAS.{setl_id}/{mdtrt}" if setl_id else "", raw={"insutype": "310"})

    def _visit_ok(self, visit) -> str:
        v = self.visits.get(visit.mdtrt_id)
        if v is None or visit.visit_token != f"VT.{visit.psn_no}.{visit.mdtrt_id}":
            return "face_auth_required"
        if v["state"] != "open":
            return "visit_closed"
        if v["exp"] <= time.time():
            return "visit_expired"
        return ""

    # the counter's own path (a charge that needs the patient is paid as a normal order)
    def presettle(self, person, bill_, order_id):
        return SettleResult("ok", self._split(bill_))

    def settle(self, person, bill_, order_id, msgid):
        with self._lock:
            sp = self._split(bill_, f"S{msgid}", "counter")
            self.settlements.setdefault(msgid, {"split": sp, "state": "settled", "psn_no": person.psn_no,
                                                "counter": True})
            return SettleResult("ok", self.settlements[msgid]["split"])

    def visit_presettle(self, visit, bill_, order_id):
        if "presettle" in self.down:
            raise RemoteError("centre down", code="unreachable")
        time.sleep(self.presettle_delay)
        why = self._visit_ok(visit)
        return SettleResult(why) if why else SettleResult("ok", self._split(bill_))

    def visit_settle(self, visit, bill_, order_id, msgid):
        with self._lock:
            if msgid in self.tombstones:
                return SettleResult("bill_rejected")
            if msgid in self.settlements:
                return SettleResult("ok", self.settlements[msgid]["split"])
            if "settle" in self.down:
                return SettleResult("unknown", detail="timeout")
            why = self._visit_ok(visit)
            if why:
                return SettleResult(why)
            sp = self._split(bill_, f"S{msgid}", visit.mdtrt_id)
            self.settlements[msgid] = {"split": sp, "state": "settled", "psn_no": visit.psn_no}
            if "settle" in self.lose_answer:
                return SettleResult("unknown", detail="timeout")
            return SettleResult("ok", sp)

    def reverse(self, person, msgid, setl_id):
        if "reverse" in self.down:
            raise RemoteError("centre down", code="unreachable")
        with self._lock:
            s = self.settlements.get(msgid)
            if s is not None:
                s["state"] = "reversed"
            else:
                self.tombstones.add(msgid)
        return True

    def refund(self, person, setl_id, amount_fen, key, *, msgid="", pharmacy=None):
        for s in self.settlements.values():
            if s["split"].setl_id == setl_id:
                s["state"] = "reversed"
                return RefundResult("ok")
        return RefundResult("refused", "not_found")

    def renew_pay_auth(self, psn_no, setl_id):  # 5203
        s = next((x for x in self.settlements.values() if x["split"].setl_id == setl_id), None)
        return f"PAS2.{setl_id}/{s['split'].mdtrt_id}" if s and s["state"] == "settled" else ""

    def notify(self, notice):
        if "notify" in self.down:
            return RefundResult("unknown", "timeout")
        self.notices.setdefault(notice["notice_id"], notice)
        return RefundResult("ok")

    def settled(self, psn_no: str = "P100") -> list[Split]:
        """The senseless settlements that stand (counter payments apart)."""
        return [s["split"] for s in self.settlements.values() if s["state"] == "settled" and s["psn_no"] == psn_no
                and not s.get("counter")]


@dataclass
class Bank:
    """The bank's side: the line covers `available`; mandates and draws replayed by key; its own caps."""

    available: int = 5_000_000
    down: set[str] = field(default_factory=set)
    lose_answer: set[str] = field(default_factory=set)
    mandates: dict[str, dict[str, Any]] = field(default_factory=dict)
    mandate_keys: dict[str, str] = field(default_factory=dict)
    draws: dict[str, dict[str, Any]] = field(default_factory=dict)  # key -> draw
    refunds: dict[str, int] = field(default_factory=dict)
    auth_expired: bool = False  # the settlement's pay_auth is older than its 10 minutes
    family_hint: str = ""  # the patient is bound to a family line too (its holder's last 4)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def line_for(self, person, amount_fen, auth):
        assert auth == f"LA.{person.psn_no}.{amount_fen}"
        return Line(kind="own", line_id=person.psn_no, available=amount_fen if amount_fen <= self.available else 0,
                    family_hint=self.family_hint)

    def draw(self, line, person, amount_fen, key, ref, auth=""):  # the counter's draw (patient present)
        self.counter_draws = getattr(self, "counter_draws", 0) + amount_fen
        return DrawResult("ok", f"CD{ref}", amount_fen)

    def reverse_draw(self, key, payer, ref=""):
        return True

    def mandate(self, payer, key, auth):
        with self._lock:
            if key in self.mandate_keys:
                m = self.mandates[self.mandate_keys[key]]
            else:
                if "mandate" in self.down:
                    return MandateResult("unknown", code="timeout")
                terms = dict(kv.split("=") for kv in auth.split(".", 2)[2].split(";"))
                for m in self.mandates.values():  # one active per payer and institution
                    if m["payer"] == payer:
                        m["state"] = "revoked"
                mid = f"M{len(self.mandates) + 1:08x}"
                m = {"mandate_id": mid, "payer": payer, "per_visit": int(terms["visit"]), "per_day": int(terms["day"]),
                     "until": terms["until"], "lines": terms["lines"], "state": "active"}
                self.mandates[mid] = m
                self.mandate_keys[key] = mid
                if "mandate" in self.lose_answer:
                    self.lose_answer.discard("mandate")
                    return MandateResult("unknown", code="timeout")
            return MandateResult("ok", m["mandate_id"], m["per_visit"], m["per_day"], m["until"], m["lines"])

    def mandate_revoke(self, mandate_id, key, auth=""):
        if "revoke" in self.down:
            return RefundResult("unknown", "timeout")
        m = self.mandates.get(mandate_id)
        if m is None or (auth and auth != f"PP.mandate_revoke.{m['payer']}.{mandate_id}"):
            return RefundResult("refused", "unknown_mandate")
        if not auth and m.get("fixmedins_code", INST) != INST:  # another institution's: only the payer's word
            return RefundResult("refused", "unknown_mandate")
        self.revoke_keys = getattr(self, "revoke_keys", []) + [key]
        m["state"] = "revoked"
        if "revoke" in self.lose_answer:
            self.lose_answer.discard("revoke")
            return RefundResult("unknown", "timeout")
        return RefundResult("ok")

    def mandates_of(self, payer, auth):
        if "mandates" in self.down:
            return None
        if auth != f"PP.statement.{payer}.{payer}":
            return []
        return [{"mandate_id": m["mandate_id"], "fixmedins_code": m.get("fixmedins_code", INST),
                 "per_visit": fen_to_yuan(m["per_visit"]), "per_day": fen_to_yuan(m["per_day"]), "until": m["until"],
                 "lines": m["lines"]} for m in self.mandates.values() if m["payer"] == payer and m["state"] == "active"]

    def mandate_get(self, mandate_id):
        m = self.mandates.get(mandate_id)
        return None if m is None else {"state": m["state"]}

    def senseless_draw(self, payer, amount_fen, ref, key, auth, mandate_id, visit):
        with self._lock:
            if key in self.draws:
                d = self.draws[key]
                return DrawResult("ok", d["draw_id"], d["amount"])
            if "draw" in self.down:
                return DrawResult("unknown")
            if self.auth_expired and not auth.startswith("PAS2."):
                return DrawResult("pay_auth_expired")  # nothing drawn, the word not spent
            assert auth in (f"PAS.{ref}/{visit}", f"PAS2.{ref}/{visit}")
            m = self.mandates.get(mandate_id)
            if m is None or m["payer"] != payer:
                return DrawResult("no_mandate")
            if m["state"] != "active":
                return DrawResult("mandate_revoked")
            used = sum(d["amount"] for d in self.draws.values() if d["mandate_id"] == mandate_id and d["visit"] == visit)
            if used + amount_fen > m["per_visit"]:
                return DrawResult("mandate_cap_visit")
            self.draws[key] = {"draw_id": f"D{len(self.draws) + 1}", "amount": amount_fen, "ref": ref,
                               "mandate_id": mandate_id, "visit": visit, "refunded": 0}
            if "draw" in self.lose_answer:
                self.lose_answer.discard("draw")
                return DrawResult("unknown")
            return DrawResult("ok", self.draws[key]["draw_id"], amount_fen)

    def refund(self, ref, amount_fen, key):
        for d in self.draws.values():
            if d["draw_id"] == ref:
                if key not in self.refunds:
                    self.refunds[key] = amount_fen
                    d["refunded"] += amount_fen
                return RefundResult("ok")
        return RefundResult("refused", "unknown_ref")

    def drawn(self) -> int:
        return sum(d["amount"] - d["refunded"] for d in self.draws.values())


# ------------------------------------------------------------------------------------------ the counter
class Camera:
    def read(self):
        return np.zeros((4, 4, 3), np.uint8)


class Probe:
    def sealed(self, purpose: str) -> str:
        return f"sealed-{purpose}"


class Vision:
    def capture(self, frames, on_frame, session_id):
        next(frames)
        on_frame("ok")
        return Capture("ok", Probe())


@dataclass
class Keypad:
    """The patient's keys for each entry in order ('' = the confirm key on an empty entry, '2' = 2 then
    ENTER); with no plan left the entry stays open (the session times out)."""

    plans: list[str] = field(default_factory=lambda: [""] * 50)

    def start(self, timeout_s, reveal_last=1):
        return self.plans.pop(0) if self.plans else "<none>"

    def poll(self, h):
        if h == "<none>":
            return KeyEntry("active")
        return KeyEntry("active", masked=h, length=len(h), confirmed=True)

    def stop(self, h):
        pass


@dataclass
class Printer:
    printed: list[list[str]] = field(default_factory=list)

    def print_receipt(self, lines):
        self.printed.append(list(lines))
        return PrintResult("ok")


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request):
    import os

    if request.param == "postgresql" and not os.environ.get("KIOSK_TEST_PG_URL"):
        pytest.skip("KIOSK_TEST_PG_URL not set (eval \"$(scripts/postgres start)\")")
    with scratch_database(request.param) as d:
        yield d


@dataclass
class Rig:
    store: Store
    centre: Centre
    bank: Bank
    keypad: Keypad
    printer: Printer
    term: Terminal
    pos: PosClient
    other: PosClient

    def register(self, visit_id: str = "V1", mandate: dict[str, str] | None = None, *, wait: bool = True) -> dict:
        r = self.pos.open_visit(visit_id, mandate)
        assert r.status_code in (200, 201), r.text
        if not wait:
            return r.json()
        end = time.monotonic() + 20
        while True:
            v = self.pos.visit(visit_id).json()
            if v["state"] != "opening" or time.monotonic() > end:
                return v
            time.sleep(0.02)

    def restart(self) -> Terminal:
        """A new terminal on the same database and parties: what a restart after a crash finds."""
        return Terminal(Store(self.store.db, SystemClock()), self.term.deps, SystemClock(), institution=INST)


def make_rig(db, *, centre: Centre | None = None, bank: Bank | None = None, keypad: Keypad | None = None,
             start: bool = True) -> Rig:
    store = Store(db, SystemClock())
    centre = centre or Centre()
    bank = bank or Bank()
    keypad = keypad or Keypad()
    printer = Printer()
    deps = Deps(camera=Camera(), vision=Vision(), centre=centre, bank=bank, keypad=keypad, printer=printer)
    term = Terminal(store, deps, SystemClock(), timeouts={State.CONFIRM: 2.0}, limits=Limits(key_poll_s=0.005),
                    recover_every_s=3600, institution=INST)
    if start:
        term.start()
    app = create_app(term, PosAuth(KEYS))
    http = TestClient(app)
    return Rig(store, centre, bank, keypad, printer, term, PosClient("", SYSTEM, KEYS[SYSTEM], http=http),
               PosClient("", OTHER_SYSTEM, KEYS[OTHER_SYSTEM], http=http))


@pytest.fixture
def rig(db):
    r = make_rig(db)
    try:
        yield r
    finally:
        r.term.stop()


# ------------------------------------------------------------------------------------------ registration
def test_registration_records_the_mandate_then_opens_the_visit_and_prints_the_terms(rig):
    v = rig.register()
    assert v["state"] == "open" and v["psn_no"] == "P100" and v["mdtrt_id"] == "MD0001"
    m = v["mandate"]
    assert (m["per_visit"], m["per_day"], m["state"]) == ("500.00", "1000.00", "active")
    assert m["until"] == (local_day(SystemClock()) + timedelta(days=90)).isoformat()
    assert rig.bank.mandates[m["mandate_id"]]["per_visit"] == 50000  # the bank holds the signed terms
    steps = [s for s, _ in rig.store.steps(SYSTEM, "visit~V1")]
    assert steps.index("mandate_auth") < steps.index("register") < steps.index("mandated") < steps.index("registered")
    assert any("无感支付授权 / Senseless pay mandate" in p[0] for p in rig.printer.printed)
    assert rig.pos.get("visit~V1").json()["status"] == "registered"


def test_registration_never_offers_more_than_the_line_covers_and_the_keypad_picks_a_lower_preset(db):
    r = make_rig(db, bank=Bank(available=70000), keypad=Keypad(plans=["3", ""]))  # covers 300/600; picks 3rd
    try:
        v = r.register()
        assert v["state"] == "open"
        # offered: 300/600 (the largest covered), 200/400, 100/200 -> "3" is 100/200
        assert (v["mandate"]["per_visit"], v["mandate"]["per_day"]) == ("100.00", "200.00")
    finally:
        r.term.stop()


@pytest.mark.parametrize("keys,proposed,lines", [
    ([""], None, "own"),                  # the line the bank names, unless the patient picks another
    (["8", ""], None, "family"),
    (["9", ""], None, "own,family"),
    (["8", "2", ""], None, "family"),     # a lower cap picked after the line: both kept
    ([""], "family", "family"),           # the POS proposes; the patient may still change it
    (["7", ""], "own,family", "own"),
])
def test_the_patient_with_an_own_and_a_family_line_picks_which_the_mandate_may_use(db, keys, proposed, lines):
    r = make_rig(db, bank=Bank(family_hint="0042"), keypad=Keypad(plans=list(keys)))
    snaps: list = []
    r.term.on_change = snaps.append
    try:
        mandate = None if proposed is None else {"per_visit": "500.00", "per_day": "1000.00",
                                                  "until": (local_day(SystemClock()) + timedelta(days=30)).isoformat(),
                                                  "lines": proposed}
        v = r.register(mandate=mandate)
        assert v["state"] == "open", v
        signed = r.bank.mandates[v["mandate"]["mandate_id"]]
        assert signed["lines"] == lines  # what the centre signed and the bank recorded
        if "2" in keys:
            assert (v["mandate"]["per_visit"], v["mandate"]["per_day"]) == ("300.00", "600.00")
        slip = next(p for p in r.printer.printed if "无感支付授权 / Senseless pay mandate" in p[0])
        from kiosk.app.visits import line_text

        assert f"额度 Line: {' / '.join(line_text(lines, '0042'))}" in slip, slip  # "family": the holder masked
        assert not any("P100" in ln for ln in slip)  # the holder masked, the patient's number never printed
        # the consent on the screen named the lines, the holder masked, and the keys to pick them
        assert any(sn.reason == "mandate_terms_lines" and "…0042" in sn.reason_en and "7 own line only" in
                   sn.reason_en and "尾号 0042" in sn.reason_zh for sn in snaps)
    finally:
        r.term.stop()


def test_without_a_family_line_the_line_keys_do_nothing(db):
    r = make_rig(db, keypad=Keypad(plans=["8", "9", ""]))
    try:
        v = r.register()
        assert v["state"] == "open" and r.bank.mandates[v["mandate"]["mandate_id"]]["lines"] == "own"
    finally:
        r.term.stop()


def test_no_line_no_mandate_and_nothing_opened(db):
    r = make_rig(db, bank=Bank(available=0))
    try:
        v = r.register()
        assert v["state"] == "failed" and v["mandate"] is None
        assert r.bank.mandates == {} and r.centre.visits == {}
    finally:
        r.term.stop()


def test_second_visit_reuses_the_active_mandate_without_new_consent(rig):
    first = rig.register("V1")
    second = rig.register("V2")
    assert second["state"] == "open" and second["mandate"]["mandate_id"] == first["mandate"]["mandate_id"]
    assert len(rig.bank.mandates) == 1
    assert "mandate_auth" not in [s for s, _ in rig.store.steps(SYSTEM, "visit~V2")]
    # other terms: a new consent, a new mandate, the old one superseded
    third = rig.register("V3", {"per_visit": "200.00", "per_day": "300.00",
                                "until": (local_day(SystemClock()) + timedelta(days=10)).isoformat()})
    assert third["mandate"]["mandate_id"] != first["mandate"]["mandate_id"]
    assert rig.pos.visit("V1").json()["mandate"]["state"] == "revoked"


def test_a_registration_cancelled_before_the_patient_came_opens_nothing(db):
    r = make_rig(db, start=False)  # the counter is busy: the registration waits in the queue
    r.register(wait=False)
    assert r.pos.cancel("visit~V1").json()["status"] == "cancelled"
    v = r.pos.visit("V1").json()
    assert v["state"] == "failed" and v["reason"] == "cancelled_by_cashier" and r.bank.mandates == {}


def test_registration_request_is_idempotent_and_checked_at_the_door(rig):
    rig.register("V1")
    assert rig.pos.open_visit("V1").status_code == 200
    assert rig.pos.open_visit("V1", {"per_visit": "100.00", "per_day": "100.00",
                                     "until": local_day(SystemClock()).isoformat()}).json()["code"] == "visit_conflict"
    bad = rig.pos.open_visit("V9", {"per_visit": "600.00", "per_day": "500.00",
                                    "until": local_day(SystemClock()).isoformat()})
    assert bad.status_code == 422 and bad.json()["field"] == "mandate.per_day"
    assert rig.pos.visit("V9").status_code == 404  # nothing stored


# ------------------------------------------------------------------------------------------ charges
def test_three_charges_paid_without_the_patient_then_a_fourth_over_the_visit_cap_needs_the_patient(rig):
    rig.register()
    for i, amount in enumerate(("300.00", "250.00", "200.00"), 1):  # cash shares 120 + 100 + 80 = 300
        r = rig.pos.charge("V1", f"C{i}", bill(amount))
        assert r.status_code == 201, r.text
        res = r.json()["result"]
        assert res["credit_draw"] == fen_to_yuan(yuan_to_fen(amount, "a") * 4 // 10) and res["cash_pay"] == "0.00"
    assert rig.bank.drawn() == 30000 and len(rig.centre.settled()) == 3
    r = rig.pos.charge("V1", "C4", bill("600.00"))  # 240 more: 540 > 500 per visit
    assert r.status_code == 409 and r.json()["code"] == "needs_patient" and r.json()["reason"] == "mandate_cap_visit"
    counter = r.json()["order_id"]
    assert len(rig.centre.settled()) == 3 and rig.bank.drawn() == 30000  # nothing moved under the mandate
    order = rig.pos.get(counter, wait=10).json()  # the patient comes to the counter: face, confirm key
    assert order["status"] == "paid" and order["result"]["medfee_sumamt"] == "600.00"
    # the answer replays, and another body under the same charge id is refused
    assert rig.pos.charge("V1", "C4", bill("600.00")).json()["order_id"] == counter
    assert rig.pos.charge("V1", "C1", bill("300.00")).status_code == 200
    assert rig.pos.charge("V1", "C1", bill("301.00")).json()["code"] == "charge_conflict"
    assert len(rig.centre.settled()) == 3


def test_the_counter_order_of_a_charge_can_be_cancelled_by_the_pos(rig):
    rig.register()
    rig.keypad.plans.clear()  # the patient has not confirmed (yet)
    rig.store.update_visit(INST, SYSTEM, "V1", exp=int(time.time()) - 1)
    coid = rig.pos.charge("V1", "C1", bill("10.00")).json()["order_id"]
    end = time.monotonic() + 10
    while rig.pos.get(coid).json()["status"] == "pending" and time.monotonic() < end:
        time.sleep(0.02)
    assert rig.pos.cancel(coid).json()["status"] == "cancelled"
    assert rig.centre.settlements == {}


def test_each_charge_queues_a_notice_the_idle_pass_delivers_once(rig):
    rig.register()
    rig.pos.charge("V1", "C1", bill("100.00"))
    rig.pos.charge("V1", "C2", bill("50.00"))
    rig.centre.down.add("notify")
    rig.term.recover()
    assert rig.centre.notices == {} and len(Outbox(NOTICE_TOPIC).pending(rig.store.db)) == 2  # kept, not lost
    rig.centre.down.clear()
    rig.term.recover()
    kinds = [(n["kind"], n["medfee_sumamt"], n["psn_cash_pay"]) for n in rig.centre.notices.values()]
    assert kinds == [("senseless_charge", "100.00", "40.00"), ("senseless_charge", "50.00", "20.00")]
    assert all(n["psn_no"] == "P100" and n["setl_id"] and "dispute" in n["text"] for n in rig.centre.notices.values())


@pytest.fixture
def slow_cap_read(monkeypatch):
    """The first charge to read the caps' sums pauses there, inside its transaction, so the second reaches
    the same point meanwhile: without the visit's and the mandate's row locks both would pass."""
    from kiosk.storage.database import Transaction

    real = Transaction.scalar
    first = threading.Event()

    def scalar(self, sql, params=(), default=None):
        out = real(self, sql, params, default)
        if "SUM(personal_fen)" in sql and "mandate_id" in sql and not first.is_set():
            first.set()
            time.sleep(0.5)
        return out

    monkeypatch.setattr(Transaction, "scalar", scalar)
    return first


def test_two_departments_charging_at_once_cannot_pass_the_kiosk_cap_together(db, slow_cap_read):
    centre = Centre(presettle_delay=0.2)  # both presettle before either reserves
    bank = Bank()
    r = make_rig(db, centre=centre, bank=bank)
    try:
        r.register(mandate={"per_visit": "500.00", "per_day": "1000.00",
                            "until": local_day(SystemClock()).isoformat()})
        bank.mandates[next(iter(bank.mandates))]["per_visit"] = 10**9  # only the kiosk's cap can stop them
        slow_cap_read.clear()
        answers: list[Any] = []

        def post(cid: str) -> None:
            answers.append(r.pos.charge("V1", cid, bill("1000.00")).json())  # personal share 400 each

        threads = [threading.Thread(target=post, args=(c,)) for c in ("LAB", "PHARMACY")]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        codes = sorted(a.get("code") or a["status"] for a in answers)
        assert codes == ["needs_patient", "paid"], answers
        assert len(centre.settled()) == 1 and bank.drawn() == 40000
        assert r.pos.visit("V1").json()["used_this_visit"] == "400.00"
    finally:
        r.term.stop()


def test_two_visits_under_one_mandate_charging_at_once_cannot_pass_the_day_cap_together(db, slow_cap_read):
    """The day cap spans the mandate's visits: each charge locks its own visit, then the mandate's row."""
    centre = Centre(presettle_delay=0.2)
    r = make_rig(db, centre=centre)
    try:
        terms = {"per_visit": "500.00", "per_day": "600.00", "until": local_day(SystemClock()).isoformat()}
        r.register("V1", terms)
        r.register("V2", terms)  # the same terms: the mandate is reused
        assert len(r.bank.mandates) == 1
        slow_cap_read.clear()
        answers: list[Any] = []
        threads = [threading.Thread(target=lambda v=v: answers.append(r.pos.charge(v, "C1", bill("1000.00")).json()))
                   for v in ("V1", "V2")]  # 400 personal each: 800 > 600 a day
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(a.get("reason") or a["status"] for a in answers) == ["mandate_cap_day", "paid"], answers
        assert len(centre.settled()) == 1
    finally:
        r.term.stop()


def test_the_banks_cap_refusal_reverses_the_settlement_and_needs_the_patient(rig):
    rig.register()
    m = next(iter(rig.bank.mandates.values()))
    m["per_visit"] = 5000  # the bank's cap is lower than the kiosk's copy (it does not trust the terminal)
    r = rig.pos.charge("V1", "C1", bill("200.00"))  # cash 80 > 50
    assert r.status_code == 409 and r.json()["reason"] == "mandate_cap_visit"
    assert rig.centre.settled() == [] and rig.bank.drawn() == 0  # settled, then reversed: nothing stands
    assert rig.pos.visit("V1").json()["used_this_visit"] == "0.00"  # the reservation was given back


def test_an_expired_visit_needs_the_patient(rig):
    rig.register()
    rig.store.update_visit(INST, SYSTEM, "V1", exp=int(time.time()) - 1)  # past the end of its Shanghai day
    assert rig.pos.visit("V1").json()["state"] == "expired"
    r = rig.pos.charge("V1", "C1", bill("10.00"))
    assert r.status_code == 409 and r.json()["reason"] == "visit_expired" and rig.centre.settled() == []


def test_the_centre_refusing_an_expired_token_needs_the_patient(rig):
    rig.register()
    rig.centre.visits["MD0001"]["exp"] = time.time() - 1  # the centre's clock says it expired
    r = rig.pos.charge("V1", "C1", bill("10.00"))
    assert r.status_code == 409 and r.json()["reason"] == "visit_expired" and rig.centre.settled() == []


def test_revocation_mid_visit_stops_the_next_charge(rig):
    rig.register()
    assert rig.pos.charge("V1", "C1", bill("100.00")).status_code == 201
    r = rig.pos.revoke_visit("V1")
    assert r.status_code == 200 and r.json()["state"] == "revoked" and r.json()["mandate"]["state"] == "revoked"
    assert next(iter(rig.bank.mandates.values()))["state"] == "revoked"
    r = rig.pos.charge("V1", "C2", bill("100.00"))
    assert r.status_code == 409 and r.json()["reason"] == "mandate_revoked"
    assert len(rig.centre.settled()) == 1


def test_revocation_at_the_bank_is_learnt_from_the_draw_and_stops_the_kiosk_too(rig):
    rig.register()
    next(iter(rig.bank.mandates.values()))["state"] = "revoked"  # the patient revoked it at the bank
    r = rig.pos.charge("V1", "C1", bill("100.00"))
    assert r.status_code == 409 and r.json()["reason"] == "mandate_revoked" and rig.centre.settled() == []
    assert rig.pos.visit("V1").json()["state"] == "revoked"


def test_revocation_the_bank_does_not_answer_is_sent_again_by_the_idle_pass(rig):
    rig.register()
    rig.bank.down.add("revoke")
    r = rig.pos.revoke_visit("V1")
    assert r.status_code == 202 and r.json()["mandate"]["state"] == "revoking"
    assert rig.pos.charge("V1", "C1", bill("10.00")).json()["reason"] == "mandate_revoked"  # stopped at once
    rig.bank.down.clear()
    rig.term.recover()
    assert rig.pos.visit("V1").json()["mandate"]["state"] == "revoked"
    assert next(iter(rig.bank.mandates.values()))["state"] == "revoked"


def test_close_prints_the_summary_sends_it_and_refuses_later_charges(rig):
    rig.register()
    rig.pos.charge("V1", "C1", bill("100.00"))
    rig.pos.charge("V1", "C2", bill("50.00"))
    r = rig.pos.close_visit("V1")
    assert r.status_code == 200 and r.json()["state"] == "closed"
    assert r.json()["totals"]["medfee_sumamt"] == "150.00" and r.json()["totals"]["credit_draw"] == "60.00"
    summary = rig.printer.printed[-1]
    assert summary[0] == "就诊费用汇总 / Visit summary" and "C1: 100.00 (paid)" in summary
    assert rig.centre.visits["MD0001"]["state"] == "closed"
    rig.term.recover()
    assert [n["kind"] for n in rig.centre.notices.values()].count("visit_summary") == 1
    r = rig.pos.charge("V1", "C3", bill("10.00"))
    assert r.status_code == 409 and r.json()["code"] == "visit_closed"
    assert rig.store.get(SYSTEM, "charge~V1~C3") is None  # nothing stored


def test_the_pos_reconciliation_lists_the_charges_as_payments(rig):
    rig.register()
    rig.pos.charge("V1", "C1", bill("100.00"))
    rig.pos.charge("V1", "C2", bill("50.00"))
    rec = rig.pos.reconciliation(local_day(SystemClock()).isoformat()).json()
    assert [o["order_id"] for o in rec["orders"]] == ["charge~V1~C1", "charge~V1~C2"]  # not the registration
    assert rec["totals"]["medfee_sumamt"] == "150.00" and rec["totals"]["credit_draw"] == "60.00"
    assert rig.other.reconciliation(local_day(SystemClock()).isoformat()).json()["orders"] == []


def test_a_close_the_centre_did_not_answer_is_sent_again_and_charges_stop_at_once(rig):
    rig.register()
    rig.centre.down.add("close")
    assert rig.pos.close_visit("V1").json()["state"] == "closed"
    assert rig.pos.charge("V1", "C1", bill("10.00")).json()["code"] == "visit_closed"
    assert rig.centre.visits["MD0001"]["state"] == "open"
    rig.centre.down.clear()
    rig.term.recover()
    assert rig.centre.visits["MD0001"]["state"] == "closed" and rig.pos.visit("V1").json()["reason"] is None
    assert rig.pos.close_visit("V1").status_code == 200  # a second close answers the summary again
    assert [n["kind"] for n in rig.centre.notices.values()].count("visit_summary") == 1


def test_a_charge_is_refunded_through_the_orders_refund_endpoint(rig):
    rig.register()
    res = rig.pos.charge("V1", "C1", bill("100.00")).json()
    r = rig.pos.refund(res["order_id"], "R1")
    assert r.status_code == 201 and r.json()["credit_refund"] == "40.00"
    assert rig.centre.settled() == [] and rig.bank.drawn() == 0
    v = rig.pos.visit("V1").json()
    assert v["charges"][0]["status"] == "refunded"
    assert v["used_this_visit"] == "40.00"  # a refund gives no cap back (conservative, as the bank)


def test_a_charge_takes_no_item_level_return_only_a_refund(rig):
    """A charge was drawn under the mandate without the patient: its return would re-settle the kept lines
    and draw them again under the mandate (the bank refuses a senseless draw without mandate and visit, and
    the refunded draw still counts against the caps). Refused at the door, nothing stored; a refund of a
    part gives the money back instead."""
    rig.register()
    two = {"med_type": "11", "items": [{"code": "F001", "price": "60.00", "qty": "1"},
                                       {"code": "F002", "price": "40.00", "qty": "1"}]}
    oid = rig.pos.charge("V1", "C1", two).json()["order_id"]
    r = rig.pos.return_lines(oid, "RT1", [{"code": "F002", "qty": "1"}])
    assert r.status_code == 409 and r.json()["code"] == "not_returnable", r.text
    assert "mandate" in r.json()["message"] and "refund" in r.json()["message"]
    assert rig.pos.return_lines(oid, "RT1", [{"code": "F002", "qty": "1"}],
                                operator={"id": "c1", "name": "Cashier"}).status_code == 409
    assert rig.pos.get(oid).json()["status"] == "paid"
    assert rig.pos.get_return(oid, "RT1").status_code == 404
    assert rig.pos.visit("V1").json()["charges"][0]["status"] == "paid"
    part = rig.pos.refund(oid, "R1", "10.00")
    assert part.status_code == 201, part.text


# ------------------------------------------------------------------------------------------ revocation by face
def _other_mandate(rig, mid="M0000beef"):
    """A mandate the patient gave another institution: this terminal does not know it."""
    rig.bank.mandates[mid] = {"mandate_id": mid, "payer": "P100", "per_visit": 30000, "per_day": 60000,
                              "until": "2099-01-01", "lines": "own", "state": "active", "fixmedins_code": "H37029900009"}
    return mid


def test_the_patient_revokes_her_mandates_at_every_institution_by_face(rig):
    v = rig.register()
    here, there = v["mandate"]["mandate_id"], _other_mandate(rig)
    r = rig.pos.revoke_by_face("RV1")
    assert r.status_code == 201 and r.json()["order_id"] == "mrevoke~RV1", r.text
    o = rig.pos.get("mrevoke~RV1", wait=10).json()
    assert o["status"] == "revoked", o
    assert {m["mandate_id"]: m["result"] for m in o["result"]["mandates"]} == {here: "revoked", there: "revoked"}
    assert {m["fixmedins_code"] for m in o["result"]["mandates"]} == {INST, "H37029900009"}
    assert rig.bank.mandates[here]["state"] == rig.bank.mandates[there]["state"] == "revoked"
    assert rig.store.get_mandate(here)["state"] == "revoked"  # no charge here passes the kiosk either
    assert rig.pos.charge("V1", "C1", bill("10.00")).json()["code"] == "needs_patient"
    assert any(p[0] == "撤销无感支付授权 / Senseless pay revoked" for p in rig.printer.printed)
    assert rig.pos.revoke_by_face("RV1").status_code == 200  # a retry: the same order
    # another POS system finds nothing; the day's reconciliation lists no payment for it
    assert rig.other.get("mrevoke~RV1").status_code == 404
    day = local_day(SystemClock()).isoformat()
    assert all(x["order_id"] != "mrevoke~RV1" for x in rig.pos.reconciliation(day).json()["orders"])


def test_without_mandates_nothing_is_revoked_and_without_her_word_none_is_read(rig):
    o = rig.pos.revoke_by_face("RV1").json()
    o = rig.pos.get(o["order_id"], wait=10).json()
    assert (o["status"], o["reason"]) == ("failed", "no_mandates"), o
    rig.register()
    rig.centre.down.add("person_auth")  # the centre gives no word: nothing is read or sent
    o = rig.pos.get(rig.pos.revoke_by_face("RV2").json()["order_id"], wait=10).json()
    assert (o["status"], o["reason"]) == ("failed", "revoke_unavailable"), o
    assert all(m["state"] == "active" for m in rig.bank.mandates.values())


def test_a_revocation_whose_answer_was_lost_is_sent_again_by_its_key(rig):
    rig.register()
    _other_mandate(rig)
    rig.bank.lose_answer.add("revoke")
    o = rig.pos.get(rig.pos.revoke_by_face("RV1").json()["order_id"], wait=10).json()
    assert o["status"] == "revoke_pending" and "pending" in {m["result"] for m in o["result"]["mandates"]}, o
    assert rig.term.recover() == [("mrevoke~RV1", "revoked")]
    o = rig.pos.get("mrevoke~RV1").json()
    assert o["status"] == "revoked" and {m["result"] for m in o["result"]["mandates"]} == {"revoked"}
    lost = [k for k in rig.bank.revoke_keys if rig.bank.revoke_keys.count(k) == 2]
    assert len(lost) == 2  # the lost one sent twice, by the same key


def _screens(rig) -> list:
    """Every frame the patient's screen receives from the counter's sessions (flow snapshot -> page model)."""
    from datetime import datetime, timezone

    from kiosk.app.screen.feed import state_from_snapshot
    from kiosk.app.screen.model import Peripherals

    frames: list = []
    rig.term.on_change = lambda snap: frames.append(
        state_from_snapshot(snap, now=datetime.now(timezone.utc), peripherals=Peripherals()))
    return frames


def test_a_revocation_whose_answer_was_lost_reads_pending_on_the_screen_never_failed(rig):
    rig.register()
    _other_mandate(rig)
    frames = _screens(rig)
    rig.bank.lose_answer.add("revoke")
    o = rig.pos.get(rig.pos.revoke_by_face("RV1").json()["order_id"], wait=10).json()
    assert o["status"] == "revoke_pending", o
    last = frames[-1]
    assert (last.phase, last.state, last.kind, last.reason) == ("pending", "pending", "revoke", "revoke_pending")
    assert "银行尚未确认" in last.prompt.zh and "not confirmed" in last.prompt.en
    assert all(f.phase != "failure" for f in frames)  # never "the mandates were not revoked" for one that may be
    from kiosk.app.prompts import state_prompt

    assert state_prompt("pending", "revoke").en != state_prompt("failed", "revoke").en


def test_the_revocation_screen_lists_each_mandate_that_will_end_before_the_confirm_key(rig):
    v = rig.register()
    _other_mandate(rig)
    frames = _screens(rig)
    rig.pos.get(rig.pos.revoke_by_face("RV1").json()["order_id"], wait=10)
    confirm = [f for f in frames if f.phase == "confirm"]
    assert confirm and confirm[0].kind == "revoke"
    shown = {(m.fixmedins_code, m.per_visit, m.per_day, m.until) for m in confirm[0].mandates}
    assert shown == {(INST, "500.00", "1000.00", v["mandate"]["until"]),
                     ("H37029900009", "300.00", "600.00", "2099-01-01")}
    page = confirm[0].model_dump_json()
    assert "P100" not in page and v["mandate"]["mandate_id"] not in page  # no person id, no mandate id
    assert all(not f.mandates for f in frames if f.kind != "revoke")


def test_a_registration_whose_party_answer_was_lost_reads_pending_then_opens(rig):
    frames = _screens(rig)
    rig.centre.down.add("register")  # 2201 unanswered: the order stays opening, recovery continues it
    rig.register(wait=False)
    assert rig.pos.get("visit~V1", wait=10).json()["status"] == "opening"  # the counter's session ended
    assert rig.pos.visit("V1").json()["state"] == "opening"
    last = frames[-1]
    assert (last.phase, last.kind, last.reason) == ("pending", "register", "register_pending"), last
    assert "未作任何授权" not in last.prompt.zh and "Nothing was authorised" not in last.prompt.en
    assert all(f.phase != "failure" for f in frames)
    rig.centre.down.clear()
    rig.term.recover()
    assert rig.pos.visit("V1").json()["state"] == "open"  # it was not failed: it completed by itself


# ------------------------------------------------------------------------------------------ unknown answers
def test_a_lost_draw_answer_is_pending_then_completed_by_its_key(rig):
    rig.register()
    rig.bank.lose_answer.add("draw")  # the draw landed, its answer did not come back
    r = rig.pos.charge("V1", "C1", bill("100.00"))
    assert r.status_code == 202 and r.json()["status"] == "charge_pending"
    assert rig.pos.charge("V1", "C1", bill("100.00")).status_code == 202  # the retry says the same
    rig.term.recover()
    assert rig.pos.charge("V1", "C1", bill("100.00")).status_code == 200
    assert rig.bank.drawn() == 4000 and len(rig.bank.draws) == 1  # once, by the same key


def test_a_draw_resumed_after_its_authorisation_expired_gets_it_anew_from_the_centre(rig):
    rig.register()
    rig.bank.down.add("draw")  # the bank does not answer; later the settlement's pay_auth is too old
    assert rig.pos.charge("V1", "C1", bill("100.00")).status_code == 202
    rig.bank.down.clear()
    rig.bank.auth_expired = True
    rig.term.recover()
    got = rig.pos.charge("V1", "C1", bill("100.00"))
    assert got.status_code == 200 and got.json()["status"] == "paid"
    assert rig.bank.drawn() == 4000 and len(rig.centre.settled()) == 1
    assert "draw_auth" in [s for s, _ in rig.store.steps(SYSTEM, "charge~V1~C1")]


def test_a_lost_settlement_answer_is_reversed_by_its_msgid_and_nothing_stands(rig):
    rig.register()
    rig.centre.lose_answer.add("settle")
    r = rig.pos.charge("V1", "C1", bill("100.00"))
    assert r.status_code == 409 and r.json()["code"] == "charge_failed" and r.json()["reason"] == "centre_unavailable"
    assert rig.centre.settled() == [] and rig.bank.drawn() == 0
    assert rig.pos.visit("V1").json()["used_this_visit"] == "0.00"


# ------------------------------------------------------------------------------------------ foreign callers
def test_another_pos_system_cannot_charge_read_close_or_revoke_the_visit(rig):
    rig.register()
    for r in (rig.other.charge("V1", "C1", bill("10.00")), rig.other.visit("V1"), rig.other.close_visit("V1"),
              rig.other.revoke_visit("V1")):
        assert r.status_code == 404 and r.json()["code"] == "not_found"
    missing = rig.pos.charge("NOPE", "C1", bill("10.00"))
    assert missing.status_code == 404 and missing.json() == rig.other.charge("V1", "C1", bill("10.00")).json() | {
        "message": missing.json()["message"]}
    assert rig.centre.settlements == {} and rig.pos.visit("V1").json()["state"] == "open"


def test_a_terminal_of_another_institution_on_the_same_books_does_not_find_the_visit(rig):
    rig.register()
    other = Terminal(rig.store, rig.term.deps, SystemClock(), institution="H99999999999")
    with pytest.raises(Exception) as e:
        other.visits.charge(SYSTEM, "V1", "C1", bill("10.00"))
    assert getattr(e.value, "code", "") == "not_found" and rig.centre.settlements == {}


def test_another_pos_system_cannot_read_cancel_or_refund_the_orders_a_visit_made(rig):
    """The registration, a charge and a revocation by face are orders of the POS system that made them: by
    another system's key each is not found, exactly as an order that does not exist."""
    rig.register()
    assert rig.pos.charge("V1", "C1", bill("100.00")).status_code == 201
    rig.pos.revoke_by_face("RV1")
    missing = rig.other.get("charge~V1~NOPE")
    assert missing.status_code == 404
    for oid in ("visit~V1", "charge~V1~C1", "mrevoke~RV1"):
        for r in (rig.other.get(oid), rig.other.cancel(oid), rig.other.refund(oid, "RF1", "1.00")):
            assert r.status_code == 404 and r.json()["code"] == "not_found", (oid, r.text)
            assert set(r.json()) == set(missing.json())
    assert rig.bank.drawn() == 4000 and rig.pos.get("charge~V1~C1").json()["status"] == "paid"


def test_a_terminal_of_another_institution_cannot_read_close_or_revoke_the_visit_either(rig):
    rig.register()
    other = Terminal(rig.store, rig.term.deps, SystemClock(), institution="H99999999999")
    for act in (lambda: other.visits.view(SYSTEM, "V1"), lambda: other.visits.close(SYSTEM, "V1"),
                lambda: other.visits.revoke(SYSTEM, "V1")):
        with pytest.raises(Exception) as e:
            act()
        assert getattr(e.value, "code", "") == "not_found"
    v = rig.pos.visit("V1").json()
    assert v["state"] == "open" and v["mandate"]["state"] == "active" and rig.printer.printed[-1][0] != "就诊费用汇总 / Visit summary"


def test_one_charge_id_on_two_visits_is_two_charges_never_a_replay_of_the_other(rig):
    rig.register("V1")
    rig.register("V2")
    a, b = rig.pos.charge("V1", "C1", bill("100.00")), rig.pos.charge("V2", "C1", bill("50.00"))
    assert (a.status_code, b.status_code) == (201, 201), (a.text, b.text)
    assert a.json()["result"]["medfee_sumamt"] == "100.00" and b.json()["result"]["medfee_sumamt"] == "50.00"
    assert len(rig.centre.settled()) == 2 and len(rig.bank.draws) == 2
    assert [c["charge_id"] for c in rig.pos.visit("V1").json()["charges"]] == ["C1"]
    assert rig.pos.visit("V2").json()["charges"][0]["result"]["medfee_sumamt"] == "50.00"


@pytest.mark.parametrize("visit_id", ["V1~C1", "V1~", "~V1", "..", "V1%2FC1", "V1 ", "V%", "V_"])
def test_a_visit_id_with_path_or_key_characters_finds_nothing_and_moves_nothing(rig, visit_id):
    """`~` joins the order id (charge~<visit>~<charge>) and `%`/`_` are LIKE wildcards: a visit id holding
    them never reaches another visit's charges; the answer is the one a missing visit gets."""
    rig.register("V1")
    rig.pos.charge("V1", "C1", bill("10.00"))
    missing = rig.pos.charge("NOPE", "C1", bill("10.00"))
    for r in (rig.pos.charge(visit_id, "C1", bill("10.00")), rig.pos.charge(visit_id, "C2", bill("10.00")),
              rig.pos.visit(visit_id), rig.pos.close_visit(visit_id), rig.pos.revoke_visit(visit_id)):
        assert r.status_code in (404, 422) and r.json()["code"] in ("not_found", "invalid_input"), r.text
        if r.status_code == 404:
            assert set(r.json()) == set(missing.json())
    assert len(rig.centre.settled()) == 1 and rig.pos.visit("V1").json()["state"] == "open"
    assert rig.pos.visit("V1").json()["mandate"]["state"] == "active"


def test_a_charge_on_a_visit_still_opening_is_refused_at_the_door_and_stores_nothing(db):
    r = make_rig(db, start=False)  # the registration waits at the counter: the visit stays opening
    try:
        r.register(wait=False)
        got = r.pos.charge("V1", "C1", bill("10.00"))
        assert got.status_code == 409 and got.json()["code"] == "visit_not_open", got.text
        assert r.store.get(SYSTEM, "charge~V1~C1") is None and r.centre.settlements == {}
        assert r.pos.close_visit("V1").json()["code"] == "visit_not_open"
    finally:
        r.term.stop()


def test_a_close_racing_a_charge_waits_for_it_and_the_summary_counts_it(rig):
    """The HIS closes the visit while a department's charge is between its 2207 and its draw: the close
    lets that charge finish (no new one passes), then closes at the centre; its summary lists the charge
    paid and the totals include it - never a summary missing a charge that was drawn."""
    rig.register()
    real, started = rig.centre.visit_settle, threading.Event()

    def slow_settle(*a, **k):
        out = real(*a, **k)
        started.set()
        time.sleep(0.5)
        return out

    rig.centre.visit_settle = slow_settle
    box: dict = {}
    t = threading.Thread(target=lambda: box.update(r=rig.pos.charge("V1", "C1", bill("100.00"))))
    t.start()
    assert started.wait(10)
    closed = rig.pos.close_visit("V1").json()
    t.join(10)
    assert box["r"].status_code == 201, box["r"].text
    assert [(c["charge_id"], c["status"]) for c in closed["charges"]] == [("C1", "paid")]
    assert closed["totals"]["medfee_sumamt"] == "100.00" and closed["state"] == "closed"
    assert any("C1: 100.00 (paid)" in line for p in rig.printer.printed for line in p)
    later = rig.pos.charge("V1", "C2", bill("10.00"))
    assert later.status_code == 409 and later.json()["code"] == "visit_closed"


def test_a_charge_that_came_in_as_the_visit_closed_is_refused_like_one_after_it_and_calls_nobody(rig):
    """The close lands between a charge's door check and its cap check: the charge is answered 409
    visit_closed as at the door, nothing is charged, and no counter order calls a patient who has left."""
    rig.register()
    real = rig.centre.visit_presettle

    closer: list[threading.Thread] = []

    def presettle_while_closing(*a, **k):
        closer.append(threading.Thread(target=lambda: rig.term.visits.close(SYSTEM, "V1"), daemon=True))
        closer[-1].start()
        end = time.monotonic() + 5
        while rig.store.get_visit(INST, SYSTEM, "V1").state != "closed" and time.monotonic() < end:
            time.sleep(0.01)
        return real(*a, **k)

    rig.centre.visit_presettle = presettle_while_closing
    r = rig.pos.charge("V1", "C1", bill("10.00"))
    assert r.status_code == 409 and r.json()["code"] == "visit_closed", r.text
    assert rig.store.get(SYSTEM, "counter~V1~C1") is None and rig.centre.settled() == [] and rig.bank.drawn() == 0
    assert rig.pos.charge("V1", "C1", bill("10.00")).json()["code"] == "visit_closed"  # the retry reads the same
    for t in closer:  # the close finishes before the rig's database goes
        t.join(30)
        assert not t.is_alive()


def test_a_revoke_id_is_scoped_by_the_pos_system_and_another_body_is_refused_at_the_door(rig):
    rig.register()
    mine = rig.pos.revoke_by_face("RV1").json()["order_id"]
    theirs = rig.other.revoke_by_face("RV1")
    assert theirs.status_code == 201 and theirs.json()["order_id"] == mine  # the same id in another scope:
    assert rig.other.get(mine, wait=10).json()["status"] in ("revoked", "failed")  # its own order, not ours
    # the same revoke_id with another body (one mandate named): refused at the door, the first order unchanged
    before = rig.pos.get(mine).json()
    bad = rig.pos.request("POST", "/pos/v1/mandates/revoke", {"revoke_id": "RV1", "mandate_id": "M00000001"})
    assert bad.status_code == 422 and bad.json()["code"] == "invalid_input", bad.text
    assert rig.pos.get(mine).json()["created_at"] == before["created_at"]


def test_a_counter_order_from_a_charge_is_paid_only_by_that_patient(db):
    centre = Centre()
    r = make_rig(db, centre=centre)
    try:
        r.register()
        r.store.update_visit(INST, SYSTEM, "V1", exp=int(time.time()) - 1)
        centre.person = OTHER  # someone else steps up to the counter (the charge itself needs no face)
        coid = r.pos.charge("V1", "C1", bill("10.00")).json()["order_id"]
        got = r.pos.get(coid, wait=10).json()
        assert got["status"] == "failed" and got["reason"] == "not_matched" and centre.settlements == {}
    finally:
        r.term.stop()


# ------------------------------------------------------------------------------------------ crash after each step
class Crash(BaseException):
    """The process dies right after the journal step (nothing after it runs)."""


def crash_after(monkeypatch, step: str) -> None:
    real = terminal_mod._Journal.record

    def record(self, order_id, s, data=None):
        real(self, order_id, s, data)
        if s == step:
            monkeypatch.setattr(terminal_mod._Journal, "record", real)
            raise Crash(step)

    monkeypatch.setattr(terminal_mod._Journal, "record", record)


CHARGE_STEPS = ["start", "presettle", "reserved", "settle", "settled", "draw", "drawn", "paid"]


@pytest.mark.parametrize("step", CHARGE_STEPS)
def test_charge_crash_after_each_step_ends_paid_once_or_with_nothing_charged(rig, monkeypatch, step):
    rig.register()
    crash_after(monkeypatch, step)
    with pytest.raises(Crash):
        rig.term.visits.charge(SYSTEM, "V1", "C1", bill("100.00"))
    term2 = rig.restart()
    term2.recover()
    assert term2.recover() == []
    row = rig.store.get(SYSTEM, "charge~V1~C1")
    settled, drawn = rig.centre.settled(), rig.bank.drawn()
    if step in ("settled", "draw", "drawn", "paid"):
        assert row.status == "paid" and len(settled) == 1 and drawn == 4000 and len(rig.bank.draws) == 1
        assert row.result["setl_id"] == settled[0].setl_id
        term2.recover()
        assert len(Outbox(NOTICE_TOPIC).pending(rig.store.db)) == 0 and len(rig.centre.notices) == 1
    else:  # a 2207 may have gone: 2601 by its msgid; nothing stands, the cap share given back
        assert row.status == "failed" and settled == [] and drawn == 0
        assert rig.pos.visit("V1").json()["used_this_visit"] == "0.00"
    # whatever happened, the POS's retry reads the final answer, never a second charge
    again = rig.pos.charge("V1", "C1", bill("100.00"))
    assert again.status_code in (200, 409) and len(rig.centre.settled()) == len(settled)


REGISTER_STEPS = ["start", "face_auth", "mandate_auth", "register", "mandated", "registered", "print", "done"]


@pytest.mark.parametrize("step", REGISTER_STEPS)
def test_registration_crash_after_each_step_ends_open_or_with_nothing_opened(db, monkeypatch, step):
    r = make_rig(db, start=False)  # the counter's session is run here, in the test's thread
    r.register(wait=False)
    job = r.term._q.get_nowait()
    crash_after(monkeypatch, step)
    with pytest.raises(Crash):
        r.term._run(job)
    term2 = r.restart()
    term2.recover()
    assert term2.recover() == []
    v = term2.visits.view(SYSTEM, "V1")
    mandates = [m for m in r.bank.mandates.values() if m["state"] == "active"]
    if step in ("register", "mandated", "registered", "print", "done"):  # the patient had confirmed: forward
        assert v["state"] == "open" and len(r.centre.visits) == 1 and len(mandates) == 1
        assert v["mandate"]["mandate_id"] == mandates[0]["mandate_id"]
        assert r.store.get(SYSTEM, "visit~V1").status == "registered"
    else:
        assert v["state"] == "failed" and r.centre.visits == {} and mandates == []


def test_registration_whose_2201_is_refused_after_the_mandate_revokes_it(db):
    centre = Centre()
    r = make_rig(db, centre=centre, start=False)
    r.register(wait=False)
    job = r.term._q.get_nowait()
    centre.register_visit = lambda person, msgid: VisitOpened("refused", code="not_insured")  # type: ignore
    r.term._run(job)
    v = r.term.visits.view(SYSTEM, "V1")
    assert v["state"] == "failed" and [m["state"] for m in r.bank.mandates.values()] == ["revoked"]


def test_the_patients_screen_shows_the_mandates_terms_and_consent_in_both_languages():
    """What the patient reads on the confirm step of a registration: the caps, the end date, how to pick a
    lower cap, that every charge is told and that it can be revoked (zh and en, within the screen's limits)."""
    from datetime import datetime, timezone

    from kiosk.app.flow import Machine
    from kiosk.app.screen.feed import state_from_snapshot
    from kiosk.app.screen.model import Peripherals
    from kiosk.clock import ManualClock

    m = Machine("s1", "visit~V1", ManualClock())
    for s in (State.FACE_CAPTURE, State.LIVENESS, State.MATCH, State.PRESETTLED, State.CONFIRM):
        m.go(s)
    m.prompt("mandate_terms", visit="500.00", day="1000.00", until="2027-03-04", n=4)
    screen = state_from_snapshot(m.snapshot(), now=datetime.now(timezone.utc), peripherals=Peripherals())
    assert screen.phase == "confirm"
    zh, en = screen.prompt.zh, screen.prompt.en
    assert all(x in zh for x in ("500.00", "1000.00", "2027-03-04", "撤销", "通知"))
    assert all(x in en for x in ("500.00", "1000.00", "2027-03-04", "revoke", "1-4", "Enter"))
    # with a family line in play the consent names the line, its holder masked, and the keys to choose
    from kiosk.app.visits import LINE_PICK

    m.prompt("mandate_terms_lines", visit="500.00", day="1000.00", until="2027-03-04", n=4,
             line_zh="本人额度或家人（尾号 0042）的额度", line_en="your own or the family line (holder …0042)",
             pick_zh=LINE_PICK[0].format(holder="0042"), pick_en=LINE_PICK[1].format(holder="0042"))
    screen = state_from_snapshot(m.snapshot(), now=datetime.now(timezone.utc), peripherals=Peripherals())
    zh, en = screen.prompt.zh, screen.prompt.en
    assert all(x in zh for x in ("500.00", "尾号 0042", "7 仅本人", "8 仅家人（尾号 0042）", "9 两者", "撤销"))
    assert all(x in en for x in ("500.00", "…0042", "7 own line only", "8 family line (holder …0042)", "9 either",
                                 "revoke"))
    from kiosk.app.visits import line_text  # the longest it gets still fits the screen (Text: 400 characters)

    z, e = line_text("own,family", "0042")
    m.prompt("mandate_terms_lines", visit="20000.00", day="20000.00", until="2027-03-04", n=5, line_zh=z, line_en=e,
             pick_zh=LINE_PICK[0].format(holder="0042"), pick_en=LINE_PICK[1].format(holder="0042"))
    assert "20000.00" in state_from_snapshot(m.snapshot(), now=datetime.now(timezone.utc),
                                             peripherals=Peripherals()).prompt.en
