"""Settlement + credit draw as one payment that is never left half-done (docs/remote-parties.md).

The terminal writes each step to its journal BEFORE the call it prepares, and
every call is idempotent by a key fixed in the journal:

    intent    msgid M of the 2207/2102, draw key K = "draw-" + M    (journaled first)
    settle    2207(M)            -> setl_id, psn_cash_pay, pay_auth (retry = same M)
    draw      credit.draw(K, ref=setl_id, amount=psn_cash_pay, pay_auth)  (retry = same K)
    done

The pay_auth (the centre's signed, single-use authorisation of this draw: payer, terminal,
institution, setl_id, amount) is journaled with the settlement: it is not secret, and a
draw re-sent after a crash carries it again. Expired by then (10 minutes), the terminal
asks the centre for it again by 5203 (same authorisation id: the bank still draws once).

Repair (`resume`), from whatever step the journal holds:
- no answer to 2207: 5203 by omsgid M; settled -> go on to the draw; otherwise
  2601(M), which also stops a late 2207(M) from ever applying -> `reversed`.
- settled, draw not confirmed: credit.draw(K) again (replays if it happened);
  a refusal (declined, overdue, cap) -> 2208(setl_id) -> `reversed`.
- reversal begun: repeat it (already-reversed counts as done).
Forward completion is preferred (the patient confirmed the payment); reversal
is used when the draw is refused or the settlement cannot be confirmed.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Protocol

from kiosk.errors import RemoteError
from kiosk.money import yuan_to_fen
from kiosk.services.client import BankClient, CentreClient
from kiosk.services.protocol import Answer, InfCode


class Journal(Protocol):
    """Durable per-payment state the terminal keeps (kiosk.app's journal implements this)."""

    def save(self, entry: "PaymentEntry") -> None: ...


@dataclass
class PaymentEntry:
    order_id: str
    psn_no: str
    head: dict[str, Any]
    lines: list[dict[str, Any]]
    pharmacy: bool
    payer: str  # who the bank charges (the patient or a family member bound to a line)
    settle_msgid: str
    draw_key: str
    state: str = "intent"  # intent -> settled -> done | reversing -> reversed | failed
    setl_id: str = ""
    cash_fen: int = 0
    cash_yuan: str = "0.00"
    pay_auth: str = ""  # the centre's authorisation of the draw (2207/2102 answer, or 5203)
    detail: str = ""
    mandate_id: str = ""  # a visit's charge without the patient: drawn under this mandate (visit = head mdtrt_id)
    history: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


TERMINAL = ("done", "reversed", "failed")


class LinkedPayment:
    def __init__(self, centre: CentreClient, bank: BankClient, journal: Journal,
                 fault: Callable[[str], None] | None = None) -> None:
        self.centre = centre
        self.bank = bank
        self.journal = journal
        self.fault = fault or (lambda step: None)  # test hook: raise to simulate a crash after `step`

    def begin(self, order_id: str, head: dict[str, Any], lines: list[dict[str, Any]], *, payer: str = "",
              pharmacy: bool = False, mandate_id: str = "") -> PaymentEntry:
        """`mandate_id`: a charge of an open visit settled with its visit token (head mdtrt_cert_no) and
        drawn under the payer's mandate; a refusal of the mandate reverses the settlement like a decline."""
        m = self.centre.new_msgid()
        e = PaymentEntry(order_id, head["psn_no"], head, lines, pharmacy, payer or head["psn_no"], m, f"draw-{m}",
                         mandate_id=mandate_id)
        self._save(e, "intent")
        return e

    def run(self, e: PaymentEntry) -> PaymentEntry:
        """Drive one payment to a terminal state (or raise RemoteError, leaving the journal resumable)."""
        while e.state not in TERMINAL:
            if e.state == "intent":
                self._settle(e)
            elif e.state == "settled":
                self._draw(e)
            elif e.state == "reversing":
                self._reverse(e)
        return e

    resume = run

    # -- steps ----------------------------------------------------------------------------------
    def _settle(self, e: PaymentEntry) -> None:
        try:
            a = self.centre.settle(e.head, e.lines, pharmacy=e.pharmacy, msgid=e.settle_msgid)
        except RemoteError as err:
            if not getattr(err, "uncertain", True):
                raise  # nothing was sent; still resumable from `intent`
            self._unknown_settlement(e)
            return
        self.fault("settle")
        if a.ok:
            s = a.output["setlinfo"]
            e.setl_id, e.cash_yuan = s["setl_id"], s["psn_cash_pay"]
            e.cash_fen = yuan_to_fen(s["psn_cash_pay"], "psn_cash_pay")
            e.pay_auth = str(a.output.get("pay_auth") or "")
            self._save(e, "settled")
        elif a.err_code == "message_reversed":
            self._save(e, "reversed", a.err_msg)
        else:
            self._save(e, "failed", f"{a.infcode} {a.err_msg}")

    def _unknown_settlement(self, e: PaymentEntry) -> None:
        """The 2207 answer was lost: find out, or make sure it never applies."""
        q = self.centre.query(e.psn_no, omsgid=e.settle_msgid)
        if q.ok and q.output.get("setl_state") == "settled":
            s = q.output["setlinfo"]
            e.setl_id, e.cash_yuan = s["setl_id"], s["psn_cash_pay"]
            e.cash_fen = yuan_to_fen(s["psn_cash_pay"], "psn_cash_pay")
            e.pay_auth = str(q.output.get("pay_auth") or "")
            self._save(e, "settled", "answer lost; found by 5203")
            return
        self._save(e, "reversing", "answer lost; reversing by message (2601)")

    def _draw(self, e: PaymentEntry) -> None:
        if e.cash_fen == 0:
            self._save(e, "done", "no cash share")
            return
        a = self._bank_draw(e)  # uncertain -> raises
        if a.err_code == "pay_auth_expired" or (not e.pay_auth and a.infcode == InfCode.INVALID_INPUT):
            # a draw resumed long after its settlement: the centre signs the same authorisation anew
            q = self.centre.query(e.psn_no, setl_id=e.setl_id)
            if q.ok and q.output.get("pay_auth"):
                e.pay_auth = str(q.output["pay_auth"])
                self.journal.save(e)
                a = self._bank_draw(e)
        self.fault("draw")
        if a.ok:
            self._save(e, "done", f"draw {a.output.get('draw_id', '')}")
        elif a.infcode in (InfCode.STORAGE, InfCode.INTERNAL):
            # the bank applied nothing and asks for a retry: completing beats reversing
            raise RemoteError(f"the bank could not take the draw now ({a.err_code}); resume retries it",
                              code=a.err_code or "bank_fault")
        else:
            self._save(e, "reversing", f"draw refused: {a.err_code}")

    def _bank_draw(self, e: PaymentEntry) -> Answer:
        if e.mandate_id:
            return self.bank.draw(e.payer, e.cash_yuan, e.setl_id, e.draw_key, pay_auth=e.pay_auth,
                                  mandate_id=e.mandate_id, visit=str(e.head.get("mdtrt_id", "")))
        return self.bank.draw(e.payer, e.cash_yuan, e.setl_id, e.draw_key, pay_auth=e.pay_auth)

    def _reverse(self, e: PaymentEntry) -> None:
        if e.setl_id:
            a = self.centre.reverse(e.setl_id, e.psn_no, pharmacy=e.pharmacy, msgid=self._reversal_msgid(e))
            ok = a.ok or a.infcode == InfCode.ALREADY_REVERSED
        else:
            a = self.centre.reverse_message(e.psn_no, e.settle_msgid, "2102" if e.pharmacy else "2207",
                                            msgid=self._reversal_msgid(e))
            ok = a.ok
        if not ok:
            raise RemoteError(f"reversal refused: {a.err_msg}", code=a.err_code or "reversal_refused")
        self._save(e, "reversed", e.detail)

    def _reversal_msgid(self, e: PaymentEntry) -> str:
        # fixed by the journal so a retried reversal is the same message
        rid = next((h.split("=", 1)[1] for h in e.history if h.startswith("reversal_msgid=")), "")
        if not rid:
            rid = self.centre.new_msgid()
            e.history.append(f"reversal_msgid={rid}")
            self.journal.save(e)
        return rid

    def _save(self, e: PaymentEntry, state: str, detail: str = "") -> None:
        e.state = state
        if detail:
            e.detail = detail
        e.history.append(state)
        self.journal.save(e)


class MemoryJournal:
    """A journal for tests and the load tool (the kiosk keeps its own durable one)."""

    def __init__(self) -> None:
        self.entries: dict[str, dict[str, Any]] = {}

    def save(self, entry: PaymentEntry) -> None:
        self.entries[entry.order_id] = entry.to_dict()

    def load(self, order_id: str) -> PaymentEntry:
        return PaymentEntry(**self.entries[order_id])
