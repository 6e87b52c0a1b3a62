"""One payment session at the counter: drives the `Machine` through its states
against the ports, writing the journal BEFORE every external call.

The session never loses track of money: once settlement starts, a failure to
draw credit reverses the settlement; an answer lost on the wire is left in the
journal as 'unknown' for `kiosk.app.recovery` to resolve (reverse by msgid /
idempotency key), so a retry can never charge twice.
"""
from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterator, Protocol

from kiosk.clock import Clock
from kiosk.errors import DeviceError, KioskError, RemoteError
from kiosk.money import fen_to_yuan
from kiosk.app.flow import Machine, Snapshot, State
from kiosk.app.idcard import valid_id_number
from kiosk.app.order_key import scoped_key
from kiosk.app.prompts import REASONS
from kiosk.app.ports import Bank, Camera, Centre, KeyEntry, Keypad, Line, Person, Printer, Probe, Split, Vision


@dataclass
class Deps:
    camera: Camera
    vision: Vision
    centre: Centre
    bank: Bank
    keypad: Keypad
    printer: Printer


@dataclass(frozen=True)
class Limits:
    liveness_tries: int = 3
    multi_face_frames: int = 8      # consecutive frames with two faces -> reject
    id_tries: int = 3
    frame_wait_s: float = 0.03      # pause when the camera has no new frame
    camera_stall_s: float = 5.0     # no frame at all for this long: the camera is gone
    key_poll_s: float = 0.1


@dataclass(frozen=True)
class Order:
    """What the POS asked for (already validated by the POS API)."""

    order_id: str
    bill: dict[str, Any]
    mode: str = "outpatient"        # 'outpatient' | 'admission' | 'discharge'
    deposit_fen: int = 0            # admission: hold amount
    hold_id: str = ""               # discharge: the admission's hold
    system: str = ""                # the POS system that sent it (set by the terminal)
    psn_no: str = ""                # return: the patient of the original order (the face must be theirs)
    institution: str = ""           # the terminal's fixmedins_code (set by the terminal)
    # return: 'face' (the patient's face again) or 'cashier' (the cashier vouches; no face), the operator
    # (id, name) who confirms, the settlement being returned (the authority of the re-settlement), the
    # patient's insutype and the original split (yuan strings) shown beside the new one
    confirm: str = "face"
    operator: tuple[str, str] = ("", "")
    orig_setl_id: str = ""
    insutype: str = ""
    old: dict[str, str] = field(default_factory=dict)

    def key(self, *step: str) -> str:
        """The key (or reference) of one external step of this order (kiosk.app.order_key)."""
        return scoped_key(self.institution, self.system, self.order_id, *step)


@dataclass
class Outcome:
    status: str                      # 'paid' | 'held' | 'failed' | 'cancelled' | 'reversing'
    reason: str | None = None
    setl_id: str = ""
    medfee_sumamt: int = 0
    fund_pay_sumamt: int = 0
    acct_pay: int = 0
    acct_mulaid_pay: int = 0
    credit_draw: int = 0
    cash_pay: int = 0
    payer: str = "self"              # 'self' | 'family'
    psn_no: str = ""
    draw_id: str = ""
    hold_id: str = ""
    receipt_printed: bool = False
    stage_ms: dict[str, float] = field(default_factory=dict)
    confirm_wait_ms: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.status, "reason": self.reason, "setl_id": self.setl_id or None,
            "medfee_sumamt": fen_to_yuan(self.medfee_sumamt), "fund_pay_sumamt": fen_to_yuan(self.fund_pay_sumamt),
            "acct_pay": fen_to_yuan(self.acct_pay), "acct_mulaid_pay": fen_to_yuan(self.acct_mulaid_pay),
            "credit_draw": fen_to_yuan(self.credit_draw), "cash_pay": fen_to_yuan(self.cash_pay),
            "payer": self.payer, "draw_id": self.draw_id or None, "hold_id": self.hold_id or None,
            "receipt_printed": self.receipt_printed,
        }


class _Stop(Exception):
    """Internal: the session ended early (the machine already holds the reason)."""


class JournalPort(Protocol):
    """What the session needs from the journal (kiosk.app.store, via kiosk.app.terminal)."""

    def record(self, order_id: str, step: str, data: dict[str, Any] | None = None) -> None: ...


class CounterSession:
    def __init__(self, order: Order, deps: Deps, journal: JournalPort, clock: Clock, *,
                 on_change: Callable[[Snapshot], None] | None = None,
                 timeouts: dict[State, float] | None = None, limits: Limits = Limits(),
                 on_face: Callable[[Any], None] | None = None) -> None:
        self.order = order
        self.d = deps
        self.journal = journal
        self.clock = clock
        self.limits = limits
        self.session_id = uuid.uuid4().hex[:16]
        kind = ("register" if order.mode == "register" else "revoke" if order.mode == "mandate_revoke" else
                "pay" if order.mode != "return" else "return_cashier" if order.confirm == "cashier" else "return")
        self.m = Machine(self.session_id, order.order_id, clock, timeouts=timeouts, on_change=on_change, kind=kind)
        self._on_face = on_face
        self._t_state = time.perf_counter()
        self._stage_ms: dict[str, float] = {}
        self._confirm_ms = 0.0
        self.person: Person | None = None
        self.split: Split | None = None
        self.line: Line | None = None
        self.draw_amount = 0
        self._multi = 0
        self._entries = 0
        # return: the terminal's money steps once the patient confirmed -> (outcome, receipt lines)
        self.returner: Callable[[CounterSession], tuple[Outcome, list[str]]] | None = None
        # register (senseless payment): the terminal's plan/commit/receipt hooks (kiosk.app.visits._Registrar)
        self.registrar: Any = None
        # mandate_revoke: the terminal's list/commit/receipt hooks (kiosk.app.visits._Revoker)
        self.revoker: Any = None

    # -------------------------------------------------------------- driver
    def cancel(self, by: str = "cashier") -> bool:
        return self.m.request_cancel(by)

    def run(self) -> Outcome:
        out = Outcome(status="failed")
        try:
            if self.order.mode == "return" and self.order.confirm == "cashier":
                out = self._return()  # the cashier vouches for the patient: no face
            else:
                probe = self._capture_and_verify()
                if self.order.psn_no and self.person is not None and self.person.psn_no != self.order.psn_no:
                    self._fail("not_matched")  # an order for one patient (a visit's charge) is paid by that patient only
                if self.order.mode == "admission":
                    out = self._admit()
                elif self.order.mode == "return":
                    out = self._return()
                elif self.order.mode == "register":
                    out = self._register()
                elif self.order.mode == "mandate_revoke":
                    out = self._revoke_mandates()
                else:
                    out = self._pay(probe)
        except _Stop:
            out = Outcome(status="cancelled" if self.m.state is State.CANCELLED else "failed", reason=self.m.reason)
        except KioskError as e:
            if self.m.state in (State.SETTLING, State.PRINTING):
                # a fault while money moves (not a party's answer: those are handled where they come):
                # the journal knows how far it got; recovery resumes or reverses it
                self.m.pend(self._pending_reason())  # not known yet: never shown as failed
                out = Outcome(status="reversing", reason="interrupted")
            else:
                if not self.m.terminal:
                    self.m.fail(_fault_reason(e))
                out = Outcome(status="failed", reason=self.m.reason or "internal_error")
            self.journal.record(self.order.order_id, "failed", {"reason": out.reason, "error": e.code})
        self._tick()
        out.stage_ms = dict(self._stage_ms)
        out.confirm_wait_ms = self._confirm_ms
        if self.person:
            out.psn_no = self.person.psn_no
        if out.status in ("failed", "cancelled") and self.split is not None:
            out.medfee_sumamt = self.split.medfee_sumamt
        return out

    # -------------------------------------------------------------- states
    def _go(self, to: State, **kw: Any) -> None:
        self._tick()
        self.m.go(to, **kw)

    def _tick(self) -> None:
        now = time.perf_counter()
        name = str(self.m.state)
        self._stage_ms[name] = self._stage_ms.get(name, 0.0) + (now - self._t_state) * 1000
        self._t_state = now

    def _check(self) -> None:
        """Honour a pending cancel or an expired deadline (only before money moves)."""
        if self.m.cancel_requested:
            self.m.finish_cancelled()
            self.journal.record(self.order.order_id, "cancelled", {"by": self.m.cancel_requested})
            raise _Stop
        if self.m.expired():
            self.m.finish_timeout()
            self.journal.record(self.order.order_id, "timeout", {"state": self.m.info.get("timed_out_in")})
            raise _Stop

    def _fail(self, reason: str, **args: Any) -> None:
        self.m.fail(reason, **args)
        self.journal.record(self.order.order_id, "failed", {"reason": reason})
        raise _Stop

    def _frames(self) -> Iterator[Any]:
        """Camera frames while the session may go on (cancel and timeout checked per frame)."""
        last = time.monotonic()
        while True:
            self._check()
            frame = self.d.camera.read()
            if frame is None:
                if self.limits.camera_stall_s and time.monotonic() - last > self.limits.camera_stall_s:
                    self._fail("camera_offline")
                time.sleep(self.limits.frame_wait_s)
                continue
            last = time.monotonic()
            if self._on_face is not None:
                self._on_face(frame)
            yield frame

    def _on_frame(self, reason: str) -> None:
        """Quality verdict of one frame: prompt, move between capture and liveness."""
        self._multi = self._multi + 1 if reason == "multiple_faces" else 0
        if self._multi >= self.limits.multi_face_frames:
            self._fail("multiple_faces")
        if reason == "ok":
            if self.m.state is State.FACE_CAPTURE:
                self._go(State.LIVENESS)
        elif self.m.state is State.LIVENESS:
            self._go(State.FACE_CAPTURE, reason=reason if reason in REASONS else "face_quality")
        else:
            self.m.prompt(reason if reason in REASONS else "face_quality")

    def _capture_and_verify(self) -> Probe:
        self._go(State.FACE_CAPTURE)
        spoofs = 0
        self._multi = 0
        while True:
            cap = self.d.vision.capture(self._frames(), self._on_frame, self.session_id)
            if cap.reason == "ok":
                break
            if cap.reason == "spoof_suspected":
                spoofs += 1
                if spoofs >= self.limits.liveness_tries:
                    self._fail("spoof_suspected")
            if cap.reason == "multiple_faces":
                self._fail("multiple_faces")
            reason = cap.reason if cap.reason in REASONS else "face_quality"
            if self.m.state is State.LIVENESS:
                self._go(State.FACE_CAPTURE, reason=reason)
            else:
                self.m.prompt(reason)
        if self.m.state is State.FACE_CAPTURE:
            self._go(State.LIVENESS)
        self._go(State.MATCH)
        self._check()
        self.journal.record(self.order.order_id, "face_auth")
        assert cap.probe is not None
        auth = self.d.centre.face_auth(cap.probe, self.session_id)
        if auth.status == "need_phone_digits":
            self._go(State.PHONE_ENTRY)
            digits = self._read_phone()
            self._go(State.MATCH)
            self._check()
            self.journal.record(self.order.order_id, "face_auth", {"phone": True})
            auth = self.d.centre.face_auth(cap.probe, self.session_id, phone_last4=digits)
            if auth.status in ("no_match", "not_activated", "need_phone_digits"):
                self._fail("phone_mismatch")
        if auth.status == "matched" and auth.person:
            self.person = auth.person
        elif auth.status == "not_activated":
            self.person = self._activate(cap.probe)
        elif auth.status == "id_locked":
            self._fail("id_locked", minutes=auth.minutes)
        else:
            self._fail("not_matched")
        return cap.probe

    def _activate(self, probe: Probe) -> Person:
        left = self.limits.id_tries
        self._go(State.ID_ENTRY, attempts_left=left)
        while True:
            id_no = self._read_id(left)
            if not valid_id_number(id_no):
                self.m.prompt("id_invalid", left=left)  # a typo costs no attempt
                continue
            self._go(State.ACTIVATION)
            self._check()
            self.journal.record(self.order.order_id, "activate")
            act = self.d.centre.activate(probe, id_no, self.session_id)
            if act.status == "ok" and act.person:
                return act.person
            if act.status == "id_mismatch":
                left = act.tries_left if act.tries_left is not None else max(0, left - 1)
                if left <= 0:
                    self._fail("id_locked", minutes=act.minutes or 30)
                self._go(State.ID_ENTRY, reason="id_mismatch", reason_args={"left": left}, attempts_left=left)
                continue
            if act.status == "id_locked":
                self._fail("id_locked", minutes=act.minutes or 30)
            self._fail("not_insured")

    def _keys(self, on_update: Callable[[KeyEntry], None] | None = None, *, reveal_last: int = 1,
              accept: Callable[[KeyEntry], bool] | None = None) -> KeyEntry:
        """Run one keypad entry until it ends; cancel/timeout of the session end it too."""
        h = self.d.keypad.start(max(1.0, self.m.seconds_left()), reveal_last)
        self._entries += 1
        self.m.set_info(keypad_on=True, keypad_entry=self._entries)  # the screen (and a scripted patient) may type now
        try:
            last: KeyEntry | None = None
            while True:
                self._check()
                e = self.d.keypad.poll(h)
                if e.state == "cancelled":
                    self.m.request_cancel("patient")
                    self._check()
                if e.state == "timed_out":
                    self.m.finish_timeout()
                    self.journal.record(self.order.order_id, "timeout", {"state": str(self.m.state)})
                    raise _Stop
                if e.state == "accepted" or (e.confirmed and (accept is None or accept(e))):
                    return e
                if on_update is not None and e != last:
                    on_update(e)
                last = e
                time.sleep(self.limits.key_poll_s)
        finally:
            try:
                self.d.keypad.stop(h)
            except KioskError:
                pass
            if not self.m.terminal:
                self.m.set_info(keypad_on=False)

    def _read_id(self, left: int) -> str:
        def show(e: KeyEntry) -> None:
            self.m.set_info(keypad_masked=e.masked, keypad_length=e.length)
            if e.error and e.length:
                self.m.prompt("id_invalid", left=left)  # a typo costs no attempt

        e = self._keys(show, accept=lambda e: False)  # only a valid ID number (the bridge checks it) ends it
        return e.value or ""

    def _read_phone(self) -> str:
        """The last 4 phone digits: ENTER after exactly 4 digits (read from the revealed display)."""
        def show(e: KeyEntry) -> None:
            self.m.set_info(keypad_masked="*" * e.length, keypad_length=e.length)

        e = self._keys(show, reveal_last=4, accept=lambda e: e.length == 4 and e.masked.isdigit())
        return e.masked

    def _wait_confirm(self) -> None:
        t0 = time.perf_counter()
        try:
            self._keys(accept=lambda e: e.length == 0)
        finally:
            self._confirm_ms = (time.perf_counter() - t0) * 1000

    # -------------------------------------------------------------- money
    def _presettle(self) -> Split:
        assert self.person is not None
        self._go(State.PRESETTLED)
        self._check()
        self.journal.record(self.order.order_id, "presettle")
        pre = self.d.centre.presettle(self.person, self.order.bill, self.order.order_id)
        if pre.status != "ok" or pre.split is None:
            self._fail("bill_rejected" if pre.status == "bill_rejected" else "centre_unavailable")
        assert pre.split is not None
        self.split = pre.split
        if self.order.mode == "discharge" and self.order.hold_id:
            self.line = Line(kind="hold", line_id=self.order.hold_id, available=pre.split.psn_cash_pay)
        else:
            self.line = self._line_for(pre.split.psn_cash_pay) if pre.split.psn_cash_pay > 0 else Line(kind="none")
        if self.line.kind != "none" and self.line.available < pre.split.psn_cash_pay:
            self.draw_amount = 0  # the line cannot carry it: the cash share is paid at the counter
        else:
            self.draw_amount = pre.split.psn_cash_pay if self.line.kind != "none" else 0
        self.m.set_amounts(**self._amounts(pre.split))
        return pre.split

    def _line_for(self, amount_fen: int) -> Line:
        """The line that would pay `amount_fen`: the bank tells only with the centre's proof that this
        face-proved person asks (pay_auth purpose line); no proof, no line (the cash share is paid at the
        counter)."""
        assert self.person is not None
        try:
            auth = self.d.centre.line_auth(self.person, amount_fen, self.session_id)
        except RemoteError:
            auth = ""
        return self.d.bank.line_for(self.person, amount_fen, auth) if auth else Line(kind="none")

    def _amounts(self, s: Split) -> dict[str, str]:
        a = {
            "medfee_sumamt": fen_to_yuan(s.medfee_sumamt), "fund_pay_sumamt": fen_to_yuan(s.fund_pay_sumamt),
            "acct_pay": fen_to_yuan(s.acct_pay), "acct_mulaid_pay": fen_to_yuan(s.acct_mulaid_pay),
            "credit_draw": fen_to_yuan(self.draw_amount),
            "cash_pay": fen_to_yuan(s.psn_cash_pay - self.draw_amount),
        }
        if self.line and self.line.kind == "family" and self.draw_amount:
            a["credit_holder"] = self.line.holder_name
        return a

    def _pay(self, probe: Probe) -> Outcome:
        assert self.person is not None
        self._presettle()
        self._go(State.CONFIRM)
        self._wait_confirm()
        self._go(State.SETTLING)
        oid = self.order.order_id
        msgid = self.d.centre.new_msgid()
        self.journal.record(oid, "settle", {"msgid": msgid, "psn_no": self.person.psn_no,
                                            "draw_amount": self.draw_amount, "line_id": self.line.line_id if self.line else "",
                                            "line_kind": self.line.kind if self.line else "none"})
        try:
            res = self.d.centre.settle(self.person, self.order.bill, oid, msgid)
        except RemoteError:
            res = None
        if res is None or res.status == "unknown":
            # the answer is lost: reverse by msgid now if we can; the journal keeps it otherwise
            ok = self._undo_settlement(msgid, None)
            return self._failed_after_commit("centre_unavailable", keep_open=not ok)
        if res.status != "ok" or res.split is None:
            self.journal.record(oid, "settle_refused", {"msgid": msgid})
            return self._failed_after_commit("bill_rejected")
        settled = res.split
        self.journal.record(oid, "settled", {"msgid": msgid, "setl_id": settled.setl_id, "mdtrt_id": settled.mdtrt_id,
                                             "split": split_json(settled), "pay_auth": settled.pay_auth,
                                             "insutype": str(settled.raw.get("insutype") or "")})
        draw_id = ""
        if self.draw_amount > 0:
            assert self.line is not None
            amount = min(self.draw_amount, settled.psn_cash_pay)
            key = self.order.key("draw")
            self.journal.record(oid, "draw", {"key": key, "amount": amount, "line_id": self.line.line_id,
                                              "payer": self.person.psn_no, "ref": settled.setl_id})
            try:
                if self.line.kind == "hold":  # discharge: capture the admission's hold
                    dr = self.d.bank.capture(self.line.line_id, amount, key)
                else:
                    dr = self.d.bank.draw(self.line, self.person, amount, key, ref=settled.setl_id,
                                          auth=settled.pay_auth)
            except RemoteError:
                dr = None
            if self.line.kind == "hold" and (dr is None or dr.status == "unknown"):
                # a capture cannot be undone by its key (it closes the hold): ask again under the same key
                # (a capture that landed is replayed); still no answer -> recovery re-sends it, never
                # reverses the settlement behind a hold that may be captured already
                try:
                    dr = self.d.bank.capture(self.line.line_id, amount, key)
                except RemoteError:
                    dr = None
                if dr is None or dr.status == "unknown":
                    self.journal.record(oid, "draw_unknown", {"key": key})
                    return self._failed_after_commit("bank_unavailable", keep_open=True)
            if dr is None or dr.status != "ok":
                reason = "bank_unavailable" if dr is None or dr.status == "unknown" else dr.status
                if dr is None or dr.status == "unknown":
                    try:
                        self.d.bank.reverse_draw(key, self.person.psn_no, ref=settled.setl_id)
                    except RemoteError:
                        self.journal.record(oid, "draw_unknown", {"key": key})
                        return self._failed_after_commit(reason, keep_open=True)
                ok = self._undo_settlement(msgid, settled.setl_id)
                return self._failed_after_commit(reason if reason in _MONEY_REASONS else "insufficient_credit",
                                                 keep_open=not ok)
            draw_id = dr.draw_id or settled.setl_id
            self.journal.record(oid, "drawn", {"key": key, "draw_id": draw_id, "amount": amount})
        self.draw_amount = min(self.draw_amount, settled.psn_cash_pay)
        self.m.set_amounts(**self._amounts(settled))
        out = Outcome(status="paid", setl_id=settled.setl_id, medfee_sumamt=settled.medfee_sumamt,
                      fund_pay_sumamt=settled.fund_pay_sumamt, acct_pay=settled.acct_pay,
                      acct_mulaid_pay=settled.acct_mulaid_pay, credit_draw=self.draw_amount,
                      cash_pay=settled.psn_cash_pay - self.draw_amount,
                      payer="family" if self.line and self.line.kind == "family" and self.draw_amount else "self",
                      psn_no=self.person.psn_no, draw_id=draw_id)
        self.journal.record(oid, "paid", {"outcome": out.to_json()})
        self._print(out, settled)
        return out

    def _undo_settlement(self, msgid: str, setl_id: str | None) -> bool:
        """Reverse the settlement sent as `msgid`; False when that could not be confirmed now."""
        assert self.person is not None
        oid = self.order.order_id
        self.journal.record(oid, "reverse", {"msgid": msgid, "setl_id": setl_id, "psn_no": self.person.psn_no})
        try:
            if self.d.centre.reverse(self.person, msgid, setl_id):
                self.journal.record(oid, "reversed", {"msgid": msgid})
                return True
        except RemoteError:
            pass
        return False  # stays open in the journal; recovery retries it

    def _pending_reason(self) -> str:
        """What the screen says of an outcome recovery will settle: per kind of session."""
        return {"register": "register_pending", "revoke": "revoke_pending"}.get(self.m.kind, "payment_pending")

    def _failed_after_commit(self, reason: str, keep_open: bool = False) -> Outcome:
        """Money moved (or might have) and was put back, or is left to recovery (`keep_open`: the screen
        reads pending - the journal may still complete it - while the POS reads reversing + the reason)."""
        if keep_open:
            self.m.pend("payment_pending")
        else:
            self.m.fail(reason)
        self.journal.record(self.order.order_id, "failed", {"reason": reason, "open": keep_open})
        return Outcome(status="reversing" if keep_open else "failed", reason=reason)

    def _print(self, out: Outcome, split: Split) -> None:
        self._go(State.PRINTING)
        self.journal.record(self.order.order_id, "print")
        try:
            pr = self.d.printer.print_receipt(receipt_lines(self.order, self.person, out, self.line))
            status = pr.status
        except DeviceError:
            status = "printer_offline"
        out.receipt_printed = status == "ok"
        self._go(State.DONE, reason=None if status == "ok" else status, setl_id=out.setl_id)
        self.journal.record(self.order.order_id, "done", {"receipt_printed": out.receipt_printed,
                                                         "outcome": out.to_json()})

    def _print_slip(self, out: Outcome, lines: Callable[[], list[str]], **done: Any) -> Outcome:
        """The receipt of a return, registration or revocation: journaled, a printer fault only noted (the
        act itself is done)."""
        self._go(State.PRINTING)
        self.journal.record(self.order.order_id, "print")
        try:
            status = self.d.printer.print_receipt(lines()).status
        except DeviceError:
            status = "printer_offline"
        out.receipt_printed = status == "ok"
        self._go(State.DONE, reason=None if status == "ok" else status, **done)
        self.journal.record(self.order.order_id, "done", {"receipt_printed": out.receipt_printed})
        return out

    # -------------------------------------------------------------- return
    def _return(self) -> Outcome:
        """Item-level return: the original patient's face again (or, confirm=cashier, the cashier vouches
        for them: no face), the kept lines shown beside the original split (a pre-settlement on today's
        year-to-date, on the original settlement's authority: the final split comes after the reversal)
        and confirmed; then the terminal's journalled money steps (`returner`) and the receipt with old
        and new split."""
        assert self.returner is not None
        if self.order.confirm == "cashier":
            self.person = Person(psn_no=self.order.psn_no, name="", ec_token="", insutype=self.order.insutype)
            self.journal.record(self.order.order_id, "cashier_confirm", {"operator_id": self.order.operator[0],
                                                                         "operator_name": self.order.operator[1]})
        assert self.person is not None
        if self.person.psn_no != self.order.psn_no:
            self._fail("not_matched")  # another person cannot confirm someone's return
        self._go(State.PRESETTLED)
        self._check()
        self.journal.record(self.order.order_id, "presettle")
        pre = self.d.centre.presettle(self.person, self.order.bill, self.order.order_id,
                                      orig_setl_id=self.order.orig_setl_id)
        if pre.status != "ok" or pre.split is None:
            self._fail("bill_rejected" if pre.status == "bill_rejected" else "centre_unavailable")
        assert pre.split is not None
        self.split = pre.split
        # the new cash share goes on the original's line when the original drew on one (the terminal's plan)
        self.draw_amount = pre.split.psn_cash_pay if self.order.old.get("credit_draw", "0.00") != "0.00" else 0
        self.m.set_amounts(**self._amounts(pre.split))
        self.m.set_info(amounts_old=dict(self.order.old))
        self._go(State.CONFIRM)
        self._wait_confirm()
        self._go(State.SETTLING)
        out, lines = self.returner(self)
        if out.status == "return_pending":  # a party's answer unknown: recovery completes it by key
            self.m.pend("payment_pending")  # (a return's own text: RETURN_REASONS)
            return out
        if out.status == "return_failed":  # a party refused after the reversal: not "not returned" (the fund
            self.m.pend("return_needs_staff")  # and account went back), an operator's case: result to confirm
            return out
        if out.status != "returned":  # nothing changed: the cashier sees why
            self.m.fail("interrupted")
            return out
        return self._print_slip(out, lambda: lines, setl_id=out.setl_id)

    # -------------------------------------------------------------- senseless payment: registration
    def _register(self) -> Outcome:
        """A visit's registration: the mandate's terms on the screen (the proposed caps, lower presets by
        number on the keypad, the consent text), the confirm key; then the terminal's journaled steps
        (credit.mandate, 2201) and a slip with the terms. An active mandate with the same terms is reused:
        the screen shows it and the confirm key registers the visit, no new consent."""
        from kiosk.app.visits import LINE_KEYS, LINE_PICK, line_text  # (visits imports this module)

        assert self.person is not None and self.registrar is not None
        self._go(State.PRESETTLED)
        self._check()
        plan = self.registrar.plan(self)
        if plan is None:
            self._fail("credit_not_eligible")
        choice = 0
        lines = plan.choices[0].lines  # the POS's proposal, else the line the bank names; 7/8/9 pick another

        def show() -> None:
            t = plan.choices[choice]
            self.m.set_amounts(per_visit=fen_to_yuan(t.per_visit), per_day=fen_to_yuan(t.per_day))
            self.m.set_info(mandate={"until": t.until, "lines": lines, "reused": plan.reuse is not None,
                                     "line_choices": list(plan.line_sets),
                                     "choices": [{"per_visit": fen_to_yuan(c.per_visit),
                                                  "per_day": fen_to_yuan(c.per_day)} for c in plan.choices]})
            args: dict[str, object] = dict(visit=fen_to_yuan(t.per_visit), day=fen_to_yuan(t.per_day), until=t.until,
                                           n=len(plan.choices))
            if plan.reuse is None and t.holder:  # a family line in play: the consent names it, masked
                line_zh, line_en = line_text(lines, t.holder)
                pick = bool(plan.line_sets)
                self.m.prompt("mandate_terms_lines", **args, line_zh=line_zh, line_en=line_en,
                              pick_zh=LINE_PICK[0].format(holder=t.holder) if pick else "",
                              pick_en=LINE_PICK[1].format(holder=t.holder) if pick else "")
            else:
                self.m.prompt("mandate_reused" if plan.reuse else "mandate_terms", **args)

        show()
        self._go(State.CONFIRM)
        show()
        t0 = time.perf_counter()
        while True:  # ENTER on an empty entry accepts; a digit then ENTER picks that choice (shown again)
            e = self._keys(reveal_last=1, accept=lambda e: e.length == 0 or (e.length == 1 and e.masked[-1:].isdigit()))
            if e.length == 0 or plan.reuse is not None:
                break
            k = int(e.masked[-1])
            if 1 <= k <= len(plan.choices):
                choice = k - 1
            elif plan.line_sets and k in LINE_KEYS:
                lines = LINE_KEYS[k]
            show()
        self._confirm_ms = (time.perf_counter() - t0) * 1000
        terms = replace(plan.choices[choice], lines=lines)
        self._go(State.SETTLING)
        out = self.registrar.commit(self, terms, plan)
        if out.status == "opening":  # a party's answer was lost: recovery continues it, the outcome is not known
            self.m.pend("register_pending")
            return out
        if out.status != "registered":
            self.m.fail(out.reason if out.reason in REASONS else "interrupted")
            return out
        return self._print_slip(out, lambda: self.registrar.receipt(self, terms, out))

    # -------------------------------------------------------------- senseless payment: revocation by face
    def _revoke_mandates(self) -> Outcome:
        """The patient ends her senseless-pay mandates at every institution: her face, the list the bank
        gives on her word, the confirm key; then her word per mandate (journaled, sent by key) and a slip."""
        assert self.person is not None and self.revoker is not None
        self._go(State.PRESETTLED)
        self._check()
        ms = self.revoker.list(self)
        if ms is None:
            self._fail("revoke_unavailable")
        if not ms:
            self._fail("no_mandates")
        which = ", ".join(sorted({str(m.get("fixmedins_code") or "") for m in ms}))
        self.m.set_info(mandates=[{"fixmedins_code": m.get("fixmedins_code"), "per_visit": m.get("per_visit"),
                                   "per_day": m.get("per_day"), "until": m.get("until")} for m in ms])
        self._go(State.CONFIRM)
        self.m.prompt("mandate_revoke_list", n=len(ms), which=which)
        t0 = time.perf_counter()
        self._keys(reveal_last=0, accept=lambda e: e.length == 0)
        self._confirm_ms = (time.perf_counter() - t0) * 1000
        self._go(State.SETTLING)
        out = self.revoker.commit(self, ms)
        if out.status == "revoke_pending":  # the bank's answer was lost: recovery sends it again by its key
            self.m.pend("revoke_pending")
            return out
        if out.status not in ("revoked", "not_revoked"):
            self.m.fail(out.reason if out.reason in REASONS else "interrupted")
            return out
        return self._print_slip(out, lambda: self.revoker.receipt(self, out))

    # -------------------------------------------------------------- inpatient
    def _admit(self) -> Outcome:
        """Admission: place a hold for the deposit on the patient's (or family) line."""
        assert self.person is not None
        self._go(State.PRESETTLED)
        self.line = self._line_for(self.order.deposit_fen)
        if self.line.kind == "none":
            self._fail("credit_not_eligible")
        self.draw_amount = self.order.deposit_fen
        self.m.set_amounts(medfee_sumamt=fen_to_yuan(self.order.deposit_fen), fund_pay_sumamt="0.00",
                           acct_pay="0.00", acct_mulaid_pay="0.00", credit_draw=fen_to_yuan(self.order.deposit_fen),
                           cash_pay="0.00")
        self._go(State.CONFIRM)
        self._wait_confirm()
        self._go(State.SETTLING)
        key = self.order.key("hold")
        ref = self.order.key("hold-ref")  # the hold's reference at the bank: this order's, nobody else's
        try:  # the bank holds nothing without the centre's word that this face-proved person agreed
            auth = self.d.centre.hold_auth(self.person, self.order.deposit_fen, ref)
        except RemoteError:
            auth = ""
        if not auth:
            return self._failed_after_commit("centre_unavailable")  # nothing moved yet
        self.journal.record(self.order.order_id, "hold", {"key": key, "amount": self.order.deposit_fen, "ref": ref,
                                                         "payer": self.person.psn_no})
        try:
            hr = self.d.bank.hold(self.line, self.person, self.order.deposit_fen, key, ref, auth=auth)
        except RemoteError:
            try:
                self.d.bank.release(ref, key + ":release")
            except RemoteError:
                return self._failed_after_commit("bank_unavailable", keep_open=True)
            return self._failed_after_commit("bank_unavailable")
        if hr.status != "ok":
            return self._failed_after_commit(hr.status if hr.status in _MONEY_REASONS else "insufficient_credit")
        out = Outcome(status="held", hold_id=hr.draw_id or ref, credit_draw=0, psn_no=self.person.psn_no,
                      payer="family" if self.line.kind == "family" else "self")
        self.journal.record(self.order.order_id, "held", {"hold_id": out.hold_id, "outcome": out.to_json()})
        self._go(State.PRINTING)
        try:
            pr = self.d.printer.print_receipt(receipt_lines(self.order, self.person, out, self.line))
            status = pr.status
        except DeviceError:
            status = "printer_offline"
        out.receipt_printed = status == "ok"
        self._go(State.DONE, reason=None if status == "ok" else status)
        self.journal.record(self.order.order_id, "done", {"receipt_printed": out.receipt_printed, "outcome": out.to_json()})
        return out


def _fault_reason(e: KioskError) -> str:
    """A party's fault before money moved -> what the patient is told."""
    if isinstance(e, RemoteError):
        return "bank_unavailable" if "bank" in str(e).lower() else "centre_unavailable"
    if isinstance(e, DeviceError):
        return "keypad_offline" if e.code in ("bridge_down", "bridge_timeout", "disconnected") else "device_fault"
    return "internal_error"


def split_json(s: Split) -> dict[str, int]:
    return {k: getattr(s, k) for k in ("medfee_sumamt", "fund_pay_sumamt", "psn_part_amt", "acct_pay",
                                       "acct_mulaid_pay", "psn_cash_pay")}


_MONEY_REASONS = {"insufficient_credit", "credit_overdue", "credit_not_eligible", "family_cap_exceeded", "bank_unavailable"}


def _mask(digits: list[str]) -> str:
    n = len(digits)
    if n <= 4:
        return "*" * n
    return "".join(digits[:2]) + "*" * (n - 4) + "".join(digits[-2:])


def receipt_lines(order: Order, person: Person | None, out: Outcome, line: Line | None) -> list[str]:
    """The printed receipt (no ID number, masked name)."""
    name = person.name if person else ""
    masked = (name[0] + "*" * (len(name) - 1)) if name else ""
    rows = [
        "医保刷脸支付凭条 / Insurance face-pay receipt",
        f"订单 Order: {order.order_id}",
        f"患者 Patient: {masked}",
    ]
    if out.status == "held":
        rows += [f"住院押金(信用冻结) Deposit hold: {fen_to_yuan(order.deposit_fen)}", f"冻结号 Hold: {out.hold_id}"]
    else:
        rows += [
            f"结算号 Settlement: {out.setl_id}",
            f"费用合计 Total: {fen_to_yuan(out.medfee_sumamt)}",
            f"医保统筹 Fund: {fen_to_yuan(out.fund_pay_sumamt)}",
            f"个人账户 Account: {fen_to_yuan(out.acct_pay)}",
            f"家庭共济 Family aid: {fen_to_yuan(out.acct_mulaid_pay)}",
            f"信用支付 Credit: {fen_to_yuan(out.credit_draw)}",
            f"现金 Cash: {fen_to_yuan(out.cash_pay)}",
        ]
        if out.payer == "family" and line is not None:
            rows.append(f"亲情付 Family pay by: {line.holder_name}")
    return rows
