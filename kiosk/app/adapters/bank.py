"""The Bank port over the bank's credit-line API (kiosk.services.client.BankClient).

Amounts cross as yuan strings. A refusal is a reason the patient can act on;
a transport fault on a draw leaves its fate unknown ('unknown'), which the
session resolves by reversing the draw by its idempotency key.
"""
from __future__ import annotations

from typing import Any

from kiosk.errors import RemoteError
from kiosk.money import fen_to_yuan, yuan_to_fen
from kiosk.services.client import BankClient
from kiosk.services.protocol import Answer, InfCode
from kiosk.app.ports import MANDATE_REFUSALS, DrawResult, Line, MandateResult, Person, RefundResult

# answers that say nothing about whether a message applied: a party fault (9001 storage, 9999
# internal) or an envelope the party could not take at that moment (stale, replayed, signed out)
UNKNOWN_INFCODES = (InfCode.STORAGE, InfCode.INTERNAL, InfCode.BAD_ENVELOPE, InfCode.REPLAYED,
                    InfCode.NOT_SIGNED_IN)


def refund_result(a: Answer) -> RefundResult:
    """A party's answer to a refund step as ok / refused (definitive) / unknown."""
    if a.ok:
        return RefundResult("ok")
    if a.infcode in UNKNOWN_INFCODES:
        return RefundResult("unknown", a.err_code or f"infcode_{a.infcode}", a.err_msg)
    return RefundResult("refused", a.err_code or f"infcode_{a.infcode}", a.err_msg)


def _reason(a: Answer) -> str:
    code = (a.err_code or "").lower()
    if "overdue" in code:
        return "credit_overdue"
    if "cap" in code:
        return "family_cap_exceeded"
    if "elig" in code or "no_line" in code or "not_bound" in code or "unknown_ref" in code:
        return "credit_not_eligible"
    return "insufficient_credit"


class BankAdapter:
    def __init__(self, client: BankClient) -> None:
        self.client = client

    def _call(self, fn: Any, *a: Any, **kw: Any) -> Answer:
        ans: Answer = fn(*a, **kw)
        return ans

    def line_for(self, person: Person, amount_fen: int, auth: str) -> Line:
        """The bank answers only whether the face-proved payer's line covers this amount (no limit, balance
        or holder number): `available` is the amount when it does, 0 when it does not."""
        if not auth or amount_fen <= 0:
            return Line(kind="none")
        a = self._call(self.client.line, person.psn_no, fen_to_yuan(amount_fen), pay_auth=auth)
        if not a.ok:
            return Line(kind="none")
        o = a.output
        kind = "family" if o.get("kind") == "family" else "own"
        # the screen shows whose line it is by the last 4 characters of the holder's number only
        hint = str(o.get("holder_hint") or "")
        label = f"家人 family …{hint}" if kind == "family" else ""
        return Line(kind=kind, line_id=person.psn_no if kind == "own" else f"family…{hint}", holder_name=label,
                    available=amount_fen if o.get("covers") == "1" else 0,
                    family_hint=str(o.get("family_hint") or "") if kind == "own" else "")

    def draw(self, line: Line, person: Person, amount_fen: int, key: str, ref: str, auth: str = "") -> DrawResult:
        try:
            a = self._call(self.client.draw, person.psn_no, fen_to_yuan(amount_fen), ref, key, pay_auth=auth)
        except RemoteError:
            return DrawResult("unknown")
        if a.infcode in (InfCode.STORAGE, InfCode.INTERNAL):
            return DrawResult("unknown")  # a bank fault is not a decline: resolved by key like a lost answer
        if not a.ok:
            return DrawResult(_reason(a))
        return DrawResult("ok", str(a.output.get("draw_id") or ref), amount_fen)

    def reverse_draw(self, key: str, payer: str, ref: str = "") -> bool:
        a = self._call(self.client.reverse_draw, key, payer, ref=ref)
        if a.ok:
            return True
        code = (a.err_code or "").lower()
        if "already" in code:
            return True  # already undone
        if code == "key_ref_mismatch":
            return True  # the key holds another order's draw: ours never happened under it (a late one conflicts)
        raise RemoteError(f"the bank refused to reverse draw {key}: {a.err_msg}", code=a.err_code or "refused")

    def hold(self, line: Line, person: Person, amount_fen: int, key: str, ref: str, auth: str = "") -> DrawResult:
        a = self._call(self.client.hold, person.psn_no, fen_to_yuan(amount_fen), ref, key, pay_auth=auth)
        if not a.ok:
            return DrawResult(_reason(a))
        return DrawResult("ok", str(a.output.get("hold_id") or ref), amount_fen)

    def capture(self, ref: str, amount_fen: int, key: str) -> DrawResult:
        try:
            a = self._call(self.client.capture, ref, fen_to_yuan(amount_fen), key)
        except RemoteError:
            return DrawResult("unknown")
        if a.infcode in (InfCode.STORAGE, InfCode.INTERNAL):
            return DrawResult("unknown")  # a bank fault is not a decline: resolved by key like a lost answer
        if not a.ok:
            return DrawResult(_reason(a))
        return DrawResult("ok", str(a.output.get("draw_id") or ref), amount_fen)

    def release(self, ref: str, key: str) -> bool:
        a = self._call(self.client.release, ref, key)
        if a.ok or "unknown_ref" in (a.err_code or "").lower():
            return True
        raise RemoteError(f"the bank refused to release hold {ref}: {a.err_msg}", code=a.err_code or "refused")

    def refund(self, ref: str, amount_fen: int, key: str) -> RefundResult:
        try:
            a = self._call(self.client.refund, ref, fen_to_yuan(amount_fen), key)
        except RemoteError as e:  # not answered: it may have applied; the same key resolves it
            return RefundResult("unknown", e.code, e.message)
        return refund_result(a)

    # -- senseless payment (issue 17) ---------------------------------------------------------
    def mandate(self, payer: str, key: str, auth: str) -> MandateResult:
        """credit.mandate with the patient's pay_auth (purpose mandate); idempotent by `key`."""
        try:
            a = self._call(self.client.call, "credit.mandate", {"payer": payer, "key": key, "pay_auth": auth})
        except RemoteError as e:
            return MandateResult("unknown", code=e.code)
        if a.ok:
            o = a.output
            return MandateResult("ok", mandate_id=str(o.get("mandate_id") or ""),
                                 per_visit=yuan_to_fen(str(o.get("per_visit") or "0.00"), "per_visit"),
                                 per_day=yuan_to_fen(str(o.get("per_day") or "0.00"), "per_day"),
                                 until=str(o.get("until") or ""), lines=_lines(o.get("lines")))
        r = refund_result(a)
        return MandateResult(r.status, code=r.code)

    def mandate_revoke(self, mandate_id: str, key: str, auth: str = "") -> RefundResult:
        """credit.mandate_revoke by this institution's terminal (its own authority, no pay_auth), or by any
        terminal with the payer's word (`auth`, purpose mandate_revoke)."""
        body = {"mandate_id": mandate_id, "key": key, **({"pay_auth": auth} if auth else {})}
        try:
            a = self._call(self.client.call, "credit.mandate_revoke", body)
        except RemoteError as e:
            return RefundResult("unknown", e.code, e.message)
        if not a.ok and "already" in (a.err_code or "").lower():
            return RefundResult("ok")
        return refund_result(a)

    def mandates_of(self, payer: str, auth: str) -> list[dict[str, Any]] | None:
        try:
            a = self._call(self.client.call, "credit.mandates", {"payer": payer, "pay_auth": auth})
        except RemoteError:
            return None
        return [dict(m) for m in a.output.get("mandates") or []] if a.ok else None

    def mandate_get(self, mandate_id: str) -> dict[str, Any] | None:
        try:
            a = self._call(self.client.call, "credit.mandate_get", {"mandate_id": mandate_id})
        except RemoteError:
            return None
        return dict(a.output) if a.ok else None

    def senseless_draw(self, payer: str, amount_fen: int, ref: str, key: str, auth: str, mandate_id: str,
                       visit: str) -> DrawResult:
        body = {"payer": payer, "amount": fen_to_yuan(amount_fen), "ref": ref, "key": key, "pay_auth": auth,
                "mandate_id": mandate_id, "visit": visit}
        try:
            a = self._call(self.client.call, "credit.draw", body)
        except RemoteError:
            return DrawResult("unknown")
        if a.infcode in UNKNOWN_INFCODES:
            return DrawResult("unknown")
        if not a.ok:
            code = (a.err_code or "").lower()
            if code == "pay_auth_expired":
                return DrawResult(code)  # resumed after the authorisation's 10 minutes: 5203 re-issues it
            return DrawResult(code if code in MANDATE_REFUSALS else _reason(a))
        return DrawResult("ok", str(a.output.get("draw_id") or ref), amount_fen)


def _lines(v: Any) -> str:
    if isinstance(v, (list, tuple)):
        return ",".join(str(x) for x in v)
    return str(v or "")
