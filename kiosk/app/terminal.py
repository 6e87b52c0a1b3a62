"""The terminal: one counter, one session at a time, orders from the POS.

Orders queue up; a worker thread runs each as a `CounterSession` and stores
its outcome. On start (and whenever idle) `recover()` resolves every order the
journal shows unfinished: a payment whose money fully moved is reported as
paid (resume); anything less is put back (reverse the draw by its idempotency
key, the settlement by its msgid), so a crash never leaves a half payment.
"""
from __future__ import annotations

import logging
import os
import queue
import unicodedata
import threading
import time
from dataclasses import dataclass, replace
from typing import Any, Callable

from kiosk import metrics
from kiosk.clock import Clock
from kiosk.errors import ConflictError, InputError, KioskError, RemoteError
from kiosk.money import fen_to_yuan, yuan_to_fen
from kiosk.app.flow import Snapshot, State
from kiosk.app.order_key import scoped_key
from kiosk.app.ports import Line, Person, RefundResult
from kiosk.app.session import CounterSession, Deps, Limits, Order, Outcome, split_json
from kiosk.app.store import REFUND_STATES, RETURN_PREFIX, OrderRow, Store

log = logging.getLogger("kiosk.app")


# Fault injection for the crash tests: the process dies (no cleanup at all)
# right after this journal step is durable, as on a power cut.
CRASH_ENV = "KIOSK_CRASH_AFTER_STEP"


class _Journal:
    def __init__(self, store: Store, system: str) -> None:
        self.store, self.system = store, system
        self.crash_after = os.environ.get(CRASH_ENV) or None

    def record(self, order_id: str, step: str, data: dict[str, Any] | None = None) -> None:
        self.store.record(self.system, order_id, step, data)
        if step == self.crash_after:
            os._exit(137)


@dataclass
class _Job:
    system: str
    order: Order


class Terminal:
    def __init__(self, store: Store, deps: Deps, clock: Clock, *,
                 on_change: Callable[[Snapshot], None] | None = None,
                 on_idle: Callable[[], None] | None = None,
                 on_frame: Callable[[Any], None] | None = None,
                 timeouts: dict[State, float] | None = None, limits: Limits = Limits(),
                 recover_every_s: float = 5.0,
                 audit: Callable[..., Any] | None = None, institution: str | None = None) -> None:
        self.store = store
        # the fixmedins_code this terminal acts for: with the POS system and the order id, an order's identity
        self.institution = institution if institution is not None else str(getattr(deps.centre, "institution", ""))
        self.deps = deps
        self.clock = clock
        self.on_change = on_change
        self.on_idle = on_idle
        self.on_frame = on_frame
        self.timeouts = timeouts
        self.limits = limits
        self.recover_every_s = recover_every_s
        self._audit_fn = audit  # e.g. kiosk.security AuditLog(...).append: event, **fields
        self._q: queue.Queue[_Job | None] = queue.Queue()
        self._cond = threading.Condition()
        self.changes = 0  # bumped by _notify: the async long-poll re-reads when it moves
        self._current: tuple[str, str, CounterSession] | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.last_outcome: Outcome | None = None
        self._live_refunds: set[tuple[str, str]] = set()  # refunds being run by this process now
        from kiosk.app.visits import Visits

        self.visits = Visits(self)  # senseless payment: visits, charges without the patient, notices

    # ------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self.recover()
        for row in self.store.open_orders():  # still-pending orders from before a restart
            if row.mode == "charge":
                continue  # a charge runs in its POS request, never at the counter: recovery resolves it
            if row.status == "pending" and row.mode == "register":
                self._q.put(_Job(row.system, Order(order_id=row.order_id, bill={}, mode="register")))
            elif row.status == "pending" and row.mode == "return":
                self._q.put(_Job(row.system, self._return_order(row)))
            elif row.status == "pending":
                self._q.put(_Job(row.system, order_from_request(row.order_id, row.request)))
        self._thread = threading.Thread(target=self._worker, name="counter", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        cur = self._current
        if cur:
            cur[2].cancel("cashier")
        self._q.put(None)
        if self._thread:
            self._thread.join(timeout=10)

    # ------------------------------------------------------------ POS side
    def submit(self, system: str, order: Order) -> None:
        self._q.put(_Job(system, order))

    def cancel(self, system: str, order_id: str) -> OrderRow:
        row = self.store.get(system, order_id)
        if row is None:
            raise InputError(f"no order {order_id!r}", code="not_found", field="order_id")
        if row.status == "pending" and self.store.set_status(system, order_id, "cancelled",
                                                             reason="cancelled_by_cashier", expect=("pending",)):
            self.store.record(system, order_id, "cancelled", {"by": "cashier"})
            if row.mode == "register":  # a visit whose registration was cancelled before the patient came
                self.visits.registration_ended(system, order_id, Outcome(status="cancelled",
                                                                         reason="cancelled_by_cashier"))
            self._notify()
            return self.store.get(system, order_id)  # type: ignore[return-value]
        cur = self._current  # 'pending' too: the counter may have picked the order up since the read
        if row.status in ("pending", "running") and cur and cur[0] == system and cur[1] == order_id:
            if cur[2].cancel("cashier"):
                self.wait(system, order_id, 10.0)
                return self.store.get(system, order_id)  # type: ignore[return-value]
        row = self.store.get(system, order_id)
        assert row is not None
        if row.status == "cancelled":
            return row
        if row.status in ("failed",):
            return row
        why = {
            "running": "the patient has confirmed and the payment is being settled; query it and refund it if needed",
            "reversing": "the terminal is undoing it (nothing will stay charged); query it until it is failed",
            "held": "an admission's hold is settled by its discharge order, which releases what is not used",
        }.get(row.status, "a paid order is refunded, not cancelled")
        raise ConflictError(f"order {order_id!r} is {row.status}: {why}", code="not_cancellable", field="order_id")

    def wait(self, system: str, order_id: str, timeout_s: float) -> OrderRow | None:
        """Block until the order leaves pending/running (or the timeout)."""
        end = time.monotonic() + max(0.0, timeout_s)
        with self._cond:
            while True:
                row = self.store.get(system, order_id)
                if row is None or row.status not in ("pending", "running"):
                    return row
                left = end - time.monotonic()
                if left <= 0:
                    return row
                self._cond.wait(min(left, 0.5))

    def _notify(self) -> None:
        with self._cond:
            self.changes += 1
            self._cond.notify_all()

    async def wait_async(self, system: str, order_id: str, timeout_s: float) -> OrderRow | None:
        """`wait` for the event loop: a long-poll holds no worker thread (several POS systems
        waiting up to 60 s each would otherwise fill the small default pool and stall every
        other request). Re-reads the order when the worker signals a change, and every 0.5 s."""
        import asyncio

        end = time.monotonic() + max(0.0, timeout_s)
        seen, read_at = -1, 0.0
        row: OrderRow | None = None
        while True:
            now = time.monotonic()
            if self.changes != seen or now - read_at >= 0.5:
                seen, read_at = self.changes, now
                row = await asyncio.to_thread(self.store.get, system, order_id)
                if row is None or row.status not in ("pending", "running"):
                    return row
            left = end - time.monotonic()
            if left <= 0:
                return row
            await asyncio.sleep(min(left, 0.02))

    # ------------------------------------------------------------ worker
    def _worker(self) -> None:
        last_recover = time.monotonic()
        while not self._stop.is_set():
            try:
                job = self._q.get(timeout=0.5)
            except queue.Empty:
                if time.monotonic() - last_recover > self.recover_every_s:
                    last_recover = time.monotonic()
                    self._safe_recover()
                continue
            if job is None:
                break
            try:
                self._run(job)
            except Exception:  # noqa: BLE001 - the counter must survive any one session
                log.exception("session for order %s crashed", job.order.order_id)
                self.store.set_status(job.system, job.order.order_id, "reversing", reason="internal_error",
                                      expect=("running",))
                self._safe_recover()
            finally:
                self._current = None
                self._notify()
                if self.on_idle:
                    self.on_idle()

    def _run(self, job: _Job) -> None:
        oid = job.order.order_id
        journal = _Journal(self.store, job.system)
        order = replace(job.order, system=job.system, institution=self.institution)  # its keys: owner-scoped
        s = CounterSession(order, self.deps, journal, self.clock, on_change=self.on_change,
                           timeouts=self.timeouts, limits=self.limits, on_face=self.on_frame)
        if job.order.mode == "return":
            s.returner = lambda sess: self._return_money(job.system, oid, sess)
        if job.order.mode == "register":
            s.registrar = self.visits.registrar(job.system)
        if job.order.mode == "mandate_revoke":
            s.revoker = self.visits.revoker(job.system)
        self._current = (job.system, oid, s)  # before 'running' is visible: a cancel then always finds it
        if not self.store.set_status(job.system, oid, "running", expect=("pending",)):
            return  # cancelled while queued
        journal.record(oid, "start", {"mode": job.order.mode, "institution": self.institution})
        out = s.run()
        if job.order.mode == "return":
            self._return_session_ended(job.system, oid, out)
            return
        if job.order.mode == "mandate_revoke":
            self.visits.face_revoke_ended(job.system, oid, out)
            self._audit_identity(job.system, oid, out)
            return
        self.last_outcome = out
        metrics.observe_session(out.status, out.reason, out.stage_ms)
        result = out.to_json()
        result["psn_no"] = out.psn_no or None
        result["stage_ms"] = {k: round(v, 1) for k, v in out.stage_ms.items()}
        self.store.set_status(job.system, oid, out.status, reason=out.reason, result=result)
        if job.order.mode == "register":
            self.visits.registration_ended(job.system, oid, out)
        if out.status == "paid":
            self._discharged(job.system, oid)
        self._audit_identity(job.system, oid, out)
        self._audit("payment", system=job.system, order_id=oid, mode=job.order.mode, status=out.status,
                    reason=out.reason or "", setl_id=out.setl_id, medfee_sumamt=result["medfee_sumamt"],
                    credit_draw=result["credit_draw"], payer=out.payer)

    def _audit_identity(self, system: str, oid: str, out: Any) -> None:
        """Security events of the session before the money: a spoof that ended it, and an
        activation (ID number typed at the keypad) with its outcome. Ids and codes only."""
        if out.reason == "spoof_suspected":
            self._audit("liveness_failed", system=system, order_id=oid)
        names = [n for n, _ in self.store.steps(system, oid)]
        tries = names.count("activate")
        if tries:
            ok = "presettle" in names[names.index("activate"):]
            self._audit("activation", system=system, order_id=oid, result="ok" if ok else "refused",
                        reason="" if ok else (out.reason or ""), attempts=tries)

    def _discharged(self, system: str, order_id: str) -> None:
        """A paid discharge captured its admission's hold: the admission is 'captured' (no second discharge)."""
        row = self.store.get(system, order_id)
        adm = (row.request.get("admission_order_id") if row and row.mode == "discharge" else None)
        if adm:
            self.store.set_status(system, adm, "captured", expect=("held",))

    def _audit(self, event: str, **fields: Any) -> None:
        """Tamper-evident record of what the terminal did with money (ids and amounts, no person data)."""
        if self._audit_fn is None:
            return
        try:
            self._audit_fn(event, **fields)
        except KioskError as e:  # the payment stands; the gap is logged loudly
            log.error("audit record %s not written: %s", event, e)

    # ------------------------------------------------------------ recovery
    def _safe_recover(self) -> None:
        try:
            self.recover()
        except KioskError as e:
            log.warning("recovery pass incomplete: %s", e)

    @property
    def counting(self) -> bool:
        """Whether the counter's worker runs (sessions can progress)."""
        return self._thread is not None and self._thread.is_alive()

    def idle(self) -> bool:
        """True when no session runs and none is queued (read-only; the fleet agent applies
        an update only then, never mid-payment)."""
        return self._current is None and self._q.empty()

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """True once no session is running (a session's order is its own until it ends: `recover`
        skips it). For a manual recovery pass right after a session reported its outcome."""
        deadline = time.monotonic() + timeout
        while self._current is not None:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    def recover(self) -> list[tuple[str, str]]:
        """Resolve every order left running/reversing by a crash or a lost answer.

        Returns (order_id, new status) for the orders resolved in this pass; an
        order whose party cannot be reached stays open for the next pass."""
        done: list[tuple[str, str]] = []
        cur = self._current
        for row in self.store.open_orders():
            if row.status == "pending" and row.mode != "charge":
                continue
            if cur and cur[0] == row.system and cur[1] == row.order_id:
                continue  # the live session owns it
            try:
                if row.mode == "charge":
                    status = self.visits.resolve_charge(row)
                elif row.mode == "register":
                    status = self.visits.resolve_registration(row)
                elif row.mode == "mandate_revoke":
                    status = self.visits.resolve_face_revoke(row)
                else:
                    status = self._resolve(row)
            except RemoteError as e:
                log.warning("order %s: cannot resolve yet (%s)", row.order_id, e)
                continue
            if status:
                done.append((row.order_id, status))
        try:
            done += self._resolve_refunds()
        except RemoteError as e:
            log.warning("refunds: cannot resolve yet (%s)", e)
        try:
            self.visits.idle_pass()
        except KioskError as e:
            log.warning("visits: notices/closes/revocations not delivered yet (%s)", e)
        if done:
            self._notify()
        return done

    def _resolve(self, row: OrderRow) -> str | None:
        if row.mode == "return":
            return self._resolve_return(row)
        steps = self.store.steps(row.system, row.order_id)
        names = [s for s, _ in steps]
        data = {s: d for s, d in steps}  # last data per step
        j = _Journal(self.store, row.system)
        oid = row.order_id
        if "paid" in names or "held" in names:
            # resume: the money fully moved; report it (the receipt may not have printed)
            result = dict(data.get("done", data.get("paid", data.get("held", {}))).get("outcome", {}))
            if "done" not in names:
                result["receipt_printed"] = False
            status = "held" if "held" in names else "paid"
            j.record(oid, "recovered", {"as": status})
            self.store.set_status(row.system, oid, status, reason=None if "done" in names else "interrupted",
                                  result=result)
            if status == "paid":
                self._discharged(row.system, oid)
            self._audit("recovery", system=row.system, order_id=oid, status=status)
            return status
        if row.mode == "discharge" and "draw" in names and "settled" in names and "drawn" not in names:
            # a capture cannot be undone by its key (the hold is closed by it): send it again, idempotent by
            # that key - it replays one that landed before the crash, or completes the discharge now
            d = data["draw"]
            cr = self.deps.bank.capture(d["line_id"], d["amount"], d["key"])
            if cr.status == "unknown":
                raise RemoteError("the bank did not answer the capture", code="bank_unavailable")
            if cr.status == "ok":
                data["drawn"] = {"key": d["key"], "draw_id": cr.draw_id or d["line_id"], "amount": d["amount"]}
                j.record(oid, "drawn", data["drawn"])
                names.append("drawn")
        if "drawn" in names and "settled" in names:
            # every external effect happened; only the local 'paid' record is missing
            split = data["settled"].get("split", {})
            draw = data["drawn"]
            result = {
                "status": "paid", "reason": None, "setl_id": data["settled"].get("setl_id"),
                "medfee_sumamt": fen_to_yuan(split.get("medfee_sumamt", 0)),
                "fund_pay_sumamt": fen_to_yuan(split.get("fund_pay_sumamt", 0)),
                "acct_pay": fen_to_yuan(split.get("acct_pay", 0)),
                "acct_mulaid_pay": fen_to_yuan(split.get("acct_mulaid_pay", 0)),
                "credit_draw": fen_to_yuan(draw.get("amount", 0)),
                "cash_pay": fen_to_yuan(split.get("psn_cash_pay", 0) - draw.get("amount", 0)),
                "draw_id": draw.get("draw_id"), "receipt_printed": False, "psn_no": data["settle"].get("psn_no"),
                "payer": "family" if draw.get("amount") and _line_kind(data["settle"], row.mode) == "family" else "self",
                "hold_id": None,
            }
            j.record(oid, "recovered", {"as": "paid"})
            self.store.set_status(row.system, oid, "paid", reason="interrupted", result=result)
            self._discharged(row.system, oid)
            self._audit("recovery", system=row.system, order_id=oid, status="paid")
            return "paid"
        # anything less is put back, draw first, then the settlement
        if "draw" in names:
            d = data["draw"]
            j.record(oid, "reverse_draw", {"key": d["key"]})
            self.deps.bank.reverse_draw(d["key"], d.get("payer", ""), ref=d.get("ref", ""))
            j.record(oid, "draw_reversed", {"key": d["key"]})
        if "hold" in names:
            h = data["hold"]
            j.record(oid, "release", {"ref": h["ref"]})
            self.deps.bank.release(h["ref"], h["key"] + ":release")
            j.record(oid, "released", {"ref": h["ref"]})
        if "settle" in names and "reversed" not in names:
            st = data["settle"]
            msgid = st["msgid"]
            setl_id = data.get("settled", {}).get("setl_id")
            j.record(oid, "reverse", {"msgid": msgid, "setl_id": setl_id})
            if not self.deps.centre.reverse(Person(psn_no=st.get("psn_no", ""), name=""), msgid, setl_id):
                raise RemoteError("the centre did not confirm the reversal", code="reversal_unconfirmed")
            j.record(oid, "reversed", {"msgid": msgid})
        reason = row.reason or "interrupted"
        if row.status == "running":
            reason = "interrupted"
        j.record(oid, "recovered", {"as": "failed"})
        self.store.set_status(row.system, oid, "failed", reason=reason,
                              result={"status": "failed", "reason": reason, "receipt_printed": False})
        self._audit("recovery", system=row.system, order_id=oid, status="failed")
        return "failed"

    # ------------------------------------------------------------ refunds
    def refund(self, system: str, order_id: str, refund_id: str, amount_fen: int | None) -> tuple[dict[str, Any], bool]:
        """Whole (amount None) or partial refund of a paid order. Returns (result, replayed).

        Whole: the centre reverses the settlement (fund and accounts return) and
        the bank refunds the credit draw. Partial: the personal share only, the
        credit draw first (the bank reduces that draw's principal), the rest
        as cash the counter hands back.

        result["status"] is 'refunded', or 'refund_pending' when a party's answer is not known (no
        answer, a lost answer, a 9001/9999): the order says 'refund_pending' too, and recovery (or the
        same request again) resolves it by the refund's keys. A definitive refusal by a party is a
        ConflictError `refund_failed` naming the party and its reason."""
        row = self.store.get(system, order_id)
        if row is None:
            raise InputError(f"no order {order_id!r}", code="not_found", field="order_id")
        prior = self.store.find_refund(system, order_id, refund_id, {"amount": amount_fen})
        if prior is not None:  # a retry: the first answer, whatever the order's state now
            return prior, True
        again = self.store.refund_status(system, refund_id) is not None  # a pending/failed one, tried again
        if not (row.status in ("paid", "partially_refunded") or (again and row.status in REFUND_STATES)) \
                or not row.result:
            why = ("a refund of it is pending (a party has not answered yet; it completes by itself): query the "
                   "order" if row.status == "refund_pending" else "only a paid order can be refunded")
            raise ConflictError(f"order {order_id!r} is {row.status}; {why}", code="not_refundable",
                                field="order_id")
        res = row.result
        total = yuan_to_fen(res["medfee_sumamt"], "medfee_sumamt")
        credit = yuan_to_fen(res["credit_draw"], "credit_draw")
        whole = amount_fen is None
        limit = _refundable(res, whole)
        if whole:
            if row.refunded_fen and not again:
                raise ConflictError("a partial refund was already made; refund the rest partially",
                                    code="not_refundable", field="amount")
            amount = total
        else:
            amount = int(amount_fen or 0)
            if amount <= 0:
                raise InputError("must be more than 0.00", field="amount")
        self._live_refunds.add((system, refund_id))  # before the claim: recovery leaves it alone
        try:
            prior, replayed = self.store.begin_refund(system, order_id, refund_id, amount,
                                                      {"amount": amount_fen}, limit)
            if replayed:
                return prior or {}, True
            plan = self._refund_plan(system, order_id, refund_id)  # tried before: the same calls, same keys
            new = plan is None
            if plan is None:
                credit_back = credit if whole else min(amount, max(0, credit - row.refunded_fen))  # credit first
                setl_id = res.get("setl_id") or ""
                plan = {"refund_id": refund_id, "amount": amount, "whole": whole, "psn_no": res.get("psn_no") or "",
                        "total": total, "setl_id": setl_id, "draw_id": res.get("draw_id") or "",
                        "credit_back": credit_back,
                        "key": scoped_key(self.institution, system, order_id, "refund", refund_id),
                        "centre_msgid": self.deps.centre.new_msgid() if whole and setl_id else "",
                        "pharmacy": (row.request.get("bill") or {}).get("med_type") == "41"}
            result = self._refund_run(system, order_id, plan, new=new)
        finally:
            self._live_refunds.discard((system, refund_id))
        if result["status"] == "refund_failed":
            raise ConflictError(f"the {result['refused_by']} refused the refund ({result['reason']}): "
                                f"{result.get('message') or 'definitive refusal'}", code="refund_failed",
                                field="refund_id")
        return result, False

    def _refund_plan(self, system: str, order_id: str, refund_id: str) -> dict[str, Any] | None:
        plans = [d for s, d in self.store.steps(system, order_id) if s == "refund" and d.get("refund_id") == refund_id]
        return plans[-1] if plans and "credit_back" in plans[-1] else None

    def _refund_run(self, system: str, order_id: str, plan: dict[str, Any], *, new: bool = True,
                    quiet: bool = False) -> dict[str, Any]:
        """The refund's external calls, each announced in the journal first and keyed (the centre's by
        the journaled msgid, the bank's by the refund's key), so any retry replays what applied; then
        its state: refunded, pending (a party's answer unknown) or failed (a definitive refusal).
        `quiet`: a recovery pass over a refund already pending writes nothing while nothing changed."""
        j = _Journal(self.store, system)
        refund_id, amount, whole, credit_back = plan["refund_id"], plan["amount"], plan["whole"], plan["credit_back"]
        key = plan.get("key") or f"{system}:{refund_id}"  # refunds journaled before scoped keys keep theirs
        if new:
            j.record(order_id, "refund", plan)
        done = {s for s, d in self.store.steps(system, order_id)
                if s in ("refund_reversed", "refund_credited") and d.get("refund_id") == refund_id}
        person = Person(psn_no=plan["psn_no"], name="")
        if whole and plan["setl_id"] and "refund_reversed" not in done:
            extra = {"msgid": plan["centre_msgid"], "pharmacy": plan["pharmacy"]} if "pharmacy" in plan else {}
            r = self.deps.centre.refund(person, plan["setl_id"], plan["total"], key, **extra)
            if r.status != "ok":
                return self._refund_open(system, order_id, plan, "centre", r, applied=bool(done), quiet=quiet)
            j.record(order_id, "refund_reversed", {"refund_id": refund_id})
            done.add("refund_reversed")
        if credit_back and plan["draw_id"] and "refund_credited" not in done:
            r = self.deps.bank.refund(plan["draw_id"], credit_back, key)
            if r.status != "ok":
                return self._refund_open(system, order_id, plan, "bank", r, applied=bool(done), quiet=quiet)
            j.record(order_id, "refund_credited", {"refund_id": refund_id})
        row = self.store.get(system, order_id)
        assert row is not None and row.result is not None
        res = row.result
        result = {"refund_id": refund_id, "order_id": order_id, "status": "refunded",
                  "amount": fen_to_yuan(amount), "credit_refund": fen_to_yuan(credit_back),
                  "cash_refund": fen_to_yuan(0 if whole else amount - credit_back),
                  "whole": whole}
        if whole:
            result["fund_refund"] = res["fund_pay_sumamt"]
            result["account_refund"] = fen_to_yuan(yuan_to_fen(res["acct_pay"], "acct_pay")
                                                   + yuan_to_fen(res["acct_mulaid_pay"], "acct_mulaid_pay"))
            result["cash_refund"] = res["cash_pay"]
        self.store.finish_refund(system, order_id, refund_id, "refunded", result)
        self._order_after_refunds(system, order_id)
        j.record(order_id, "refunded", {"refund_id": refund_id})
        self._audit("refund", system=system, order_id=order_id, refund_id=refund_id, amount=result["amount"],
                    whole=whole)
        self._notify()
        return result

    def _refund_open(self, system: str, order_id: str, plan: dict[str, Any], party: str, r: RefundResult, *,
                     applied: bool, quiet: bool) -> dict[str, Any]:
        """A party did not confirm a refund step: pending when its answer is unknown (kept reserved,
        resolved by key later), failed when it definitively refused (the reservation is given back
        unless the other party already applied its part: then the parties disagree, 'refund_failed')."""
        refund_id, amount = plan["refund_id"], plan["amount"]
        base = {"refund_id": refund_id, "order_id": order_id, "amount": fen_to_yuan(amount), "whole": plan["whole"]}
        if r.status == "unknown":
            result = {**base, "status": "refund_pending", "reason": f"{party}_unavailable", "waiting_for": party}
            if quiet:  # already pending for this reason: nothing new to write
                self.store.finish_refund(system, order_id, refund_id, "pending", result)
                return result
            self.store.finish_refund(system, order_id, refund_id, "pending", result)
            self._order_after_refunds(system, order_id, reason=result["reason"])
            _Journal(self.store, system).record(order_id, "refund_pending", {"refund_id": refund_id,
                                                                              "waiting_for": party, "code": r.code})
            self._audit("refund_pending", system=system, order_id=order_id, refund_id=refund_id, party=party,
                        code=r.code)
            self._notify()
            return result
        result = {**base, "status": "refund_failed", "reason": r.code, "refused_by": party, "message": r.message,
                  "applied": applied}
        self.store.finish_refund(system, order_id, refund_id, "refused" if applied else "failed", result,
                                 release_fen=0 if applied else amount)
        self._order_after_refunds(system, order_id, reason=f"{party}:{r.code}")
        _Journal(self.store, system).record(order_id, "refund_refused", {"refund_id": refund_id, "party": party,
                                                                          "code": r.code, "applied": applied})
        self._audit("refund_refused", system=system, order_id=order_id, refund_id=refund_id, party=party,
                    code=r.code, applied=applied)
        self._notify()
        return result

    def _order_after_refunds(self, system: str, order_id: str, reason: str | None = None) -> str:
        """The order's state from its refunds: pending while any is pending, refund_failed while one was
        refused after the other party applied, else refunded / partially_refunded / paid by what completed."""
        row = self.store.get(system, order_id)
        assert row is not None and row.result is not None
        refunds = self.store.refunds_of_order(system, order_id)
        states = {r["status"] for r in refunds}
        done = [r for r in refunds if r["status"] == "refunded"]
        total = sum(r["amount_fen"] for r in done)
        if "pending" in states:
            status = "refund_pending"
        elif "refused" in states:
            status = "refund_failed"
        elif any((r["result"] or {}).get("whole") for r in done) or (done and total >= _refundable(row.result, False)):
            status = "refunded"
        else:
            status = "partially_refunded" if done else "paid"
        if status not in REFUND_STATES:
            reason = row.result.get("reason")  # the payment's own (e.g. a receipt not printed), as before
        self.store.set_status(system, order_id, status, reason=reason, result=row.result,
                              expect=("paid", "partially_refunded", "refunded") + REFUND_STATES)
        return status

    def _resolve_refunds(self) -> list[tuple[str, str]]:
        """Refunds a crash cut off (running, and not live in this process) or left pending by a party
        that did not answer: completed from the journal by the same keys (a step that applied is
        replayed, never applied twice), or given back when nothing was sent yet."""
        done: list[tuple[str, str]] = []
        for system, refund_id, order_id, amount, status in self.store.open_refunds():
            if (system, refund_id) in self._live_refunds:
                continue
            plan = self._refund_plan(system, order_id, refund_id)
            row = self.store.get(system, order_id)
            if plan is None or row is None or not row.result:
                if status == "running":
                    self.store.finish_refund(system, order_id, refund_id, "failed", {
                        "status": "refund_failed", "reason": "interrupted"}, release_fen=amount)  # nothing sent
                    done.append((order_id, "refund_failed"))
                continue
            self._live_refunds.add((system, refund_id))
            try:
                if not self.store.retake_refund(system, refund_id):
                    continue  # resolved meanwhile (the POS's retry)
                result = self._refund_run(system, order_id, plan, new=False, quiet=status == "pending")
            finally:
                self._live_refunds.discard((system, refund_id))
            if result["status"] == "refund_pending":
                log.warning("refund %s: still waiting for the %s", refund_id, result["waiting_for"])
                if status == "pending":
                    continue
            done.append((order_id, result["status"]))
        return done


    # ------------------------------------------------------------ item-level returns
    def submit_return(self, system: str, order_id: str, return_id: str, lines: list[dict[str, str]], *,
                      confirm: str = "face", operator: dict[str, str] | None = None) -> tuple[dict[str, Any], int]:
        """A return of some of a paid order's lines (code + quantity). Returns (answer, HTTP status).

        Lines are checked against the original bill at the door (422 naming the field). Keeping
        nothing is a whole refund (the refund path, refund id = return id). Otherwise the return
        waits for the patient at the counter (their face again and the confirm key), then
        `_return_run` reverses the original settlement and settles the kept lines. Idempotent per
        return id within the POS system; another system's order is not found. confirm='cashier': the
        cashier (`operator` {id, name}) vouches for the patient instead of the face (the fallback when
        the face fails); the re-settlement needs no face either (the original settlement's authority)."""
        row = self.store.get(system, order_id)
        if row is None or row.order_id.startswith(RETURN_PREFIX):
            raise InputError(f"no order {order_id!r}", code="not_found", field="order_id")
        if confirm not in ("face", "cashier") or (confirm == "cashier") != bool(operator):
            raise InputError("confirm is 'face', or 'cashier' with the operator", field="operator")
        if row.status in _NOT_RETURNABLE and self.store.get(system, RETURN_PREFIX + return_id) is None:
            raise ConflictError(f"order {order_id!r} {_NOT_RETURNABLE[row.status]}", code="not_returnable",
                                field="order_id")
        kept = kept_bill(row.request.get("bill") or {}, lines)
        if kept is not None and row.mode == "charge":
            raise ConflictError(f"order {order_id!r} {_CHARGE_NOT_RETURNABLE}", code="not_returnable",
                                field="order_id")
        body: dict[str, Any] = {"order_id": order_id, "lines": lines}
        if confirm == "cashier":  # (a face return's body stays as before: its idempotency hash too)
            body.update(confirm="cashier", operator={"id": operator["id"], "name": operator["name"]})  # type: ignore[index]
        if kept is None:  # nothing kept: what a whole refund is today
            result, replayed = self.refund(system, order_id, return_id, None)
            return {**result, "return_id": return_id, "kept": []}, (
                202 if result.get("status") == "refund_pending" else 200 if replayed else 201)
        request = {**body, "bill": kept, "psn_no": (row.result or {}).get("psn_no") or ""}
        rrow, created = self.store.begin_return(system, order_id, return_id, request)
        if created:
            self._q.put(_Job(system, self._return_order(rrow)))
        return return_view(rrow), 202 if created else 200

    def _return_order(self, rrow: OrderRow) -> Order:
        """The session of a return: the kept lines, the original's patient, settlement and split (shown
        beside the new one), and who confirms."""
        req = rrow.request
        orig = self.store.get(rrow.system, req["order_id"])
        res = (orig.result if orig else None) or {}
        settled = {s: d for s, d in self.store.steps(rrow.system, req["order_id"])}.get("settled", {})
        op = req.get("operator") or {}
        return Order(order_id=rrow.order_id, bill=req["bill"], mode="return", psn_no=req.get("psn_no") or "",
                     confirm=req.get("confirm") or "face", operator=(op.get("id", ""), op.get("name", "")),
                     orig_setl_id=str(res.get("setl_id") or ""), insutype=str(settled.get("insutype") or ""),
                     old={k: str(res.get(k) or "0.00") for k in ("medfee_sumamt", "fund_pay_sumamt", "acct_pay",
                                                                 "acct_mulaid_pay", "credit_draw", "cash_pay")})

    def get_return(self, system: str, return_id: str) -> OrderRow | None:
        return self.store.get(system, RETURN_PREFIX + return_id)

    def _return_session_ended(self, system: str, rid: str, out: Outcome) -> None:
        """After the return's session: the money steps set the states themselves; a session that
        ended before them (no face, another person, cancelled) changed nothing: the original is paid."""
        names = [n for n, _ in self.store.steps(system, rid)]
        if "return" in names:
            if out.status == "reversing":  # a fault mid-way: recovery completes it from the journal
                self.store.set_status(system, rid, "return_pending", reason="interrupted",
                                      result={"status": "return_pending", "reason": "interrupted"},
                                      expect=("running",))
            return
        row = self.store.get(system, rid)
        assert row is not None
        extra = None
        if out.reason in FACE_FAILURES and (row.request.get("confirm") or "face") == "face":
            # the face could not confirm the patient: nothing changed, and the POS may ask the cashier
            extra = {"fallback": {"confirm": "cashier", "message": "the patient's face did not confirm the return; "
                                  "nothing changed. The cashier may confirm it: send the return again under a new "
                                  "return_id with confirm=cashier and the operator"}}
        self._return_nothing_changed(row, out.status if out.status == "cancelled" else "failed",
                                     out.reason or "interrupted", extra)

    def _return_nothing_changed(self, row: OrderRow, status: str, reason: str,
                                extra: dict[str, Any] | None = None) -> str:
        orig = self.store.get(row.system, row.request["order_id"])
        self.store.set_status(row.system, row.order_id, status, reason=reason,
                              result={"status": status, "reason": reason, **(extra or {})})
        self.store.set_status(row.system, row.request["order_id"], "paid", reason=orig.reason if orig else None,
                              expect=("returning",))
        return status

    def _resolve_return(self, row: OrderRow) -> str | None:
        plan = self._return_plan(row.system, row.order_id)
        if plan is None:  # nothing was sent: nothing changed
            _Journal(self.store, row.system).record(row.order_id, "recovered", {"as": "failed"})
            return self._return_nothing_changed(row, "failed", "interrupted")
        before = row.status
        res = self._return_run(row.system, row.order_id, plan, new=False, quiet=before == "return_pending")
        if res["status"] == "return_pending" and before == "return_pending":
            return None
        return res["status"]

    def _return_plan(self, system: str, rid: str) -> dict[str, Any] | None:
        plans = [d for s, d in self.store.steps(system, rid) if s == "return"]
        return plans[-1] if plans else None

    def _return_money(self, system: str, rid: str, sess: CounterSession) -> tuple[Outcome, list[str]]:
        """The patient confirmed: plan the return (every msgid and key fixed now, journaled before the
        first call), run it, and say what the session shows."""
        row = self.store.get(system, rid)
        assert row is not None and sess.person is not None
        orig = self.store.get(system, row.request["order_id"])
        assert orig is not None and orig.result is not None
        res, oid = orig.result, orig.order_id
        # the new cash share is drawn on the line the original drew on (journaled with its settle step)
        paid = {s: d for s, d in self.store.steps(system, oid)}.get("settle", {})
        if paid.get("line_id") and yuan_to_fen(res.get("credit_draw") or "0.00", "credit_draw"):
            line = Line(kind=_line_kind(paid, orig.mode), line_id=str(paid["line_id"]))
        else:
            line = sess.line or Line(kind="none")
        op = sess.order.operator
        plan = {"order_id": oid, "psn_no": sess.person.psn_no,
                "insutype": sess.person.insutype or sess.order.insutype,
                "ec_token": sess.person.ec_token,  # older plans re-settled with it (15 min, this terminal only)
                # the authority of the re-settlement: the original face-proved settlement (no token needed,
                # so recovery hours later still completes)
                "orig_setl_id": res.get("setl_id"),
                "confirm": sess.order.confirm,
                **({"operator": {"id": op[0], "name": op[1]}} if sess.order.confirm == "cashier" else {}),
                "orig": {k: res.get(k) for k in ("setl_id", "medfee_sumamt", "fund_pay_sumamt", "acct_pay",
                                                 "acct_mulaid_pay", "credit_draw", "cash_pay", "draw_id")},
                "orig_bill": orig.request.get("bill") or {}, "bill": row.request["bill"],
                "pharmacy": (orig.request.get("bill") or {}).get("med_type") == "41",
                "reverse_msgid": self.deps.centre.new_msgid(), "settle_msgid": self.deps.centre.new_msgid(),
                "refund_key": scoped_key(self.institution, system, oid, "return", rid, "refund"),
                "draw_key": scoped_key(self.institution, system, oid, "return", rid, "draw"),
                "line_kind": line.kind, "line_id": line.line_id}
        result = self._return_run(system, rid, plan, new=True)
        if result["status"] == "failed":
            return Outcome(status="failed", reason=result.get("reason")), []
        if result["status"] != "returned":
            return Outcome(status=result["status"], reason=result.get("reason")), []
        new = result["new"]
        out = Outcome(status="returned", setl_id=new["setl_id"] or "", psn_no=sess.person.psn_no,
                      medfee_sumamt=yuan_to_fen(new["medfee_sumamt"], "medfee_sumamt"))
        return out, return_receipt(oid, sess.person.name, result)

    def _return_run(self, system: str, rid: str, plan: dict[str, Any], *, new: bool,
                    quiet: bool = False) -> dict[str, Any]:
        """2208 the original (by the journaled msgid), 2207 the kept lines (journaled msgid: the centre
        replays one that landed), the bank refunds the original draw whole (its key) and draws the new
        cash share on the same line with the new settlement's pay_auth (its key). Each step is durable
        in the journal before the next call, so recovery continues exactly where it stopped; once the
        original is reversed the only way is forward."""
        j = _Journal(self.store, system)
        if new:
            j.record(rid, "return", plan)
        data = {s: d for s, d in self.store.steps(system, rid)}
        code = ""
        person = Person(psn_no=plan["psn_no"], name="", ec_token=plan["ec_token"], insutype=plan["insutype"])
        o = plan["orig"]
        credit = yuan_to_fen(o["credit_draw"], "credit_draw")
        if "return_reversed" not in data:
            r = self.deps.centre.refund(person, o["setl_id"], yuan_to_fen(o["medfee_sumamt"], "medfee_sumamt"),
                                        plan["refund_key"], msgid=plan["reverse_msgid"], pharmacy=plan["pharmacy"])
            if r.status != "ok":
                return self._return_open(system, rid, plan, "centre", r, applied=False, quiet=quiet)
            j.record(rid, "return_reversed", {"setl_id": o["setl_id"]})
        if "return_settled" not in data:
            auth = {"orig_setl_id": plan["orig_setl_id"]} if plan.get("orig_setl_id") else {}
            try:
                self.deps.centre.presettle(person, plan["bill"], plan["order_id"], **auth)  # the mutual-aid flag
                st = self.deps.centre.settle(person, plan["bill"], plan["order_id"], plan["settle_msgid"], **auth)
            except RemoteError as e:
                st = None
                code = e.code
            if st is None or st.status == "unknown" or st.split is None:
                rr = RefundResult("unknown" if st is None or st.status == "unknown" else "refused",
                                  code=code if st is None else (st.detail or st.status))
                return self._return_open(system, rid, plan, "centre", rr, applied=True, quiet=quiet)
            data["return_settled"] = {"setl_id": st.split.setl_id, "split": split_json(st.split),
                                      "pay_auth": st.split.pay_auth}
            j.record(rid, "return_settled", data["return_settled"])
        settled = data["return_settled"]
        if credit and o.get("draw_id") and "return_credited" not in data:
            r = self.deps.bank.refund(o["draw_id"], credit, plan["refund_key"])
            if r.status != "ok":
                return self._return_open(system, rid, plan, "bank", r, applied=True, quiet=quiet)
            j.record(rid, "return_credited", {"draw_id": o["draw_id"], "amount": credit})
        cash_share = settled["split"]["psn_cash_pay"]
        want = cash_share if credit and plan["line_kind"] not in ("none", "hold") else 0
        if want and "return_drawn" not in data:
            if "return_draw" not in data:
                j.record(rid, "return_draw", {"key": plan["draw_key"], "amount": want})
            dr = self.deps.bank.draw(Line(kind=plan["line_kind"], line_id=plan["line_id"]), person, want,
                                     plan["draw_key"], ref=settled["setl_id"], auth=settled["pay_auth"])
            if dr.status == "unknown":
                return self._return_open(system, rid, plan, "bank", RefundResult("unknown", "bank_unavailable"),
                                         applied=True, quiet=quiet)
            data["return_drawn"] = ({"draw_id": dr.draw_id, "amount": want} if dr.status == "ok" else
                                    {"draw_id": "", "amount": 0, "declined": dr.status})  # paid in cash instead
            j.record(rid, "return_drawn", data["return_drawn"])
        drawn = data.get("return_drawn", {"draw_id": "", "amount": 0})
        sp = settled["split"]
        new_ = {"setl_id": settled["setl_id"], "medfee_sumamt": fen_to_yuan(sp["medfee_sumamt"]),
                "fund_pay_sumamt": fen_to_yuan(sp["fund_pay_sumamt"]), "acct_pay": fen_to_yuan(sp["acct_pay"]),
                "acct_mulaid_pay": fen_to_yuan(sp["acct_mulaid_pay"]), "credit_draw": fen_to_yuan(drawn["amount"]),
                "cash_pay": fen_to_yuan(cash_share - drawn["amount"]), "draw_id": drawn["draw_id"] or None}
        back = {k: fen_to_yuan(yuan_to_fen(o[k], k) - yuan_to_fen(new_[k], k))
                for k in ("medfee_sumamt", "fund_pay_sumamt", "acct_pay", "acct_mulaid_pay", "credit_draw",
                          "cash_pay")}
        result = {"return_id": rid[len(RETURN_PREFIX):], "order_id": plan["order_id"], "status": "returned",
                  "old": o, "new": new_, "back": back, "confirm": plan.get("confirm") or "face",
                  **({"operator": plan["operator"]} if plan.get("operator") else {})}
        orig = self.store.get(system, plan["order_id"])
        assert orig is not None and orig.result is not None
        self.store.set_status(system, plan["order_id"], "returned", result={
            **orig.result, **{k: v for k, v in new_.items()}, "returned": {"return_id": result["return_id"],
                                                                           "old": o}})
        self.store.set_status(system, rid, "returned", result=result)
        j.record(rid, "returned", {})
        self._audit("return", system=system, order_id=plan["order_id"], return_id=result["return_id"],
                    old_setl_id=o["setl_id"], setl_id=settled["setl_id"], confirm=result["confirm"],
                    operator_id=(plan.get("operator") or {}).get("id", ""))
        self._notify()
        return result

    def _return_open(self, system: str, rid: str, plan: dict[str, Any], party: str, r: RefundResult, *,
                     applied: bool, quiet: bool) -> dict[str, Any]:
        """A party did not confirm a return step. Unknown answer: 'return_pending', resolved by key by
        recovery (never reported failed). A refusal of the first step (the reversal): nothing changed.
        A refusal after the original was reversed: 'return_failed' on both rows for an operator."""
        rrow = self.store.get(system, rid)
        assert rrow is not None
        if r.status == "unknown":
            result = {"status": "return_pending", "reason": f"{party}_unavailable", "waiting_for": party}
            self.store.set_status(system, rid, "return_pending", reason=result["reason"], result=result)
            if not quiet:
                _Journal(self.store, system).record(rid, "return_pending", {"waiting_for": party, "code": r.code})
                self._notify()
            return result
        if not applied:
            _Journal(self.store, system).record(rid, "return_refused", {"party": party, "code": r.code})
            self._return_nothing_changed(rrow, "failed", f"{party}:{r.code}")
            return {"status": "failed", "reason": f"{party}:{r.code}"}
        reason = f"{party}:{r.code}"
        result = {"status": "return_failed", "reason": reason, "refused_by": party, "message": r.message}
        self.store.set_status(system, rid, "return_failed", reason=reason, result=result)
        self.store.set_status(system, plan["order_id"], "return_failed", reason=reason, expect=("returning",))
        _Journal(self.store, system).record(rid, "return_refused", {"party": party, "code": r.code,
                                                                   "applied": True})
        self._audit("return_refused", system=system, order_id=plan["order_id"], party=party, code=r.code)
        self._notify()
        return result


# a face that did not confirm the patient of a return: the POS is told the cashier may confirm it
FACE_FAILURES = frozenset({"not_matched", "spoof_suspected", "multiple_faces", "phone_mismatch", "id_locked",
                           "not_insured", "camera_offline"})
# why an order takes no (further) return: answered 409 not_returnable at the door, before anything is stored
_NOT_RETURNABLE = {
    "returned": "was already returned: a second return (of the new settlement) is not taken at the terminal "
                "(the new settlement was made on the original's authority, not the patient's face, so the "
                "centre takes it as no authority for another re-settlement); an operator's case",
    "returning": "has a return under way: wait for it (GET .../returns/{return_id})",
    "return_failed": "has a return a party refused after the reversal: an operator's case (kiosk check parties)",
    "partially_refunded": "was partially refunded: that refund gave back part of the personal share only, so a "
                          "return (a re-settlement of the kept lines) cannot follow it; give back more with a "
                          "partial refund (POST .../refunds with an amount)",
    "refund_pending": "has a refund under way", "refunded": "was refunded",
}


# a visit's charge (mode 'charge', kiosk.app.visits) is drawn under the patient's mandate, without the patient:
# re-settling its kept lines would be a second charge under the mandate's caps (the refunded draw still counts
# against them, as any refund gives no cap back), so the finance office gives money back by refund instead
_CHARGE_NOT_RETURNABLE = ("is a visit's charge made under the patient's mandate: it takes no item-level return "
                          "(a re-settlement would charge the mandate again); refund it whole or in part "
                          "(POST .../refunds, with an amount for a part)")


def kept_bill(bill: dict[str, Any], lines: list[dict[str, str]]) -> dict[str, Any] | None:
    """The original bill less the returned lines (None: nothing is kept). Each returned code must be
    on the bill, once, and its quantity more than 0 and at most what was bought (InputError naming
    lines[i].code / lines[i].qty otherwise). Quantities are exact decimals (up to 4 dp)."""
    from decimal import Decimal, InvalidOperation

    items = [dict(it) for it in bill.get("items") or []]
    by_code = {it["code"]: it for it in items}
    seen: set[str] = set()
    for i, ln in enumerate(lines):
        code = ln.get("code", "")
        if code not in by_code or code in seen:
            raise InputError("is not on the original bill" if code not in by_code else "is listed twice",
                             field=f"lines.{i}.code")
        seen.add(code)
        try:
            q = Decimal(ln.get("qty", ""))
        except InvalidOperation:
            raise InputError("is not a quantity", field=f"lines.{i}.qty") from None
        bought = Decimal(by_code[code]["qty"])
        if not (0 < q <= bought):
            raise InputError(f"must be more than 0 and at most the {bought} bought", field=f"lines.{i}.qty")
        left = bought - q
        by_code[code]["qty"] = format(left.normalize(), "f") if left else "0"
    kept = [it for it in items if Decimal(it["qty"]) > 0]
    return {**bill, "items": kept} if kept else None


def return_view(row: OrderRow) -> dict[str, Any]:
    """What the POS reads of a return (its id, not the internal row id)."""
    res = dict(row.result or {})
    return {"return_id": row.order_id[len(RETURN_PREFIX):], "order_id": row.request.get("order_id"),
            "status": row.status, "reason": row.reason, "lines": row.request.get("lines"), "result": res or None,
            "created_at": row.created_at, "updated_at": row.updated_at}


RECEIPT_COLUMNS = 32  # 58 mm paper, font A (firmware_bridge.escpos.Receipt)


def _cols(s: str) -> int:
    """Printed columns: CJK (wide/full-width) characters take two."""
    return sum(2 if unicodedata.east_asian_width(c) in ("W", "F") else 1 for c in s)


def _row(label: str, *cells: str) -> str:
    """One table row in 32 columns: the label in 5, each cell right-aligned in 9."""
    return label + " " * max(0, 5 - _cols(label)) + "".join(" " * max(1, 9 - _cols(c)) + c for c in cells)


def return_receipt(order_id: str, name: str, result: dict[str, Any]) -> list[str]:
    """The return receipt: the old and the new split side by side and what went back by each source
    (a negative cash 'back' is collected at the counter: the new draw was declined)."""
    masked = (name[0] + "*" * (len(name) - 1)) if name else ""
    o, n, b = result["old"], result["new"], result["back"]
    rows = ["医保退货凭条 / Insurance return receipt", f"订单 Order: {order_id}", f"退货 Return: {result['return_id']}",
            f"患者 Patient: {masked}", f"原结算 Old: {o['setl_id']}", f"新结算 New: {n['setl_id']}",
            _row("", "原 Old", "新 New", "退 Back")]
    for k, label in (("medfee_sumamt", "合计"), ("fund_pay_sumamt", "统筹"), ("acct_pay", "账户"),
                     ("acct_mulaid_pay", "共济"), ("credit_draw", "信用"), ("cash_pay", "现金")):
        rows.append(_row(label, o[k], n[k], b[k]))
    rows += ["合计 Total  统筹 Fund", "账户 Account  共济 Family aid", "信用 Credit  现金 Cash"]  # the legend, 32 columns
    op = result.get("operator")
    if op:  # the cashier vouched for the patient (no face): who, on the paper the patient keeps
        rows += [f"收银员确认 Cashier: {op['id']}", f"  {op['name']}"]
    return rows


def _refundable(res: dict[str, Any], whole: bool) -> int:
    """Fen a paid order's refunds may total: the whole bill, or (partial) its personal share
    paid by credit and cash."""
    if whole:
        return yuan_to_fen(res["medfee_sumamt"], "medfee_sumamt")
    return yuan_to_fen(res["credit_draw"], "credit_draw") + yuan_to_fen(res["cash_pay"], "cash_pay")


def _line_kind(settle: dict[str, Any], mode: str) -> str:
    """The line a journaled payment drew on (older journals: a line not the patient's own is a relative's)."""
    if settle.get("line_kind"):
        return str(settle["line_kind"])
    if mode == "discharge":
        return "hold"
    line = settle.get("line_id") or ""
    return "family" if line and line != settle.get("psn_no") else "own"


def order_from_request(order_id: str, req: dict[str, Any]) -> Order:
    return Order(order_id=order_id, bill=req.get("bill") or {}, mode=req.get("mode", "outpatient"),
                 deposit_fen=yuan_to_fen(req["deposit"], "deposit") if req.get("deposit") else 0,
                 hold_id=req.get("hold_id") or "", psn_no=req.get("psn_no") or "")
