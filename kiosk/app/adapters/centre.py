"""The Centre port over the insurance centre's platform API (kiosk.services.client).

Refusal codes become the reasons the flow shows; transport faults that leave
a settlement's fate unknown become status 'unknown' so the journal resolves
them (2601 reverses a message whether or not it was applied).
"""
from __future__ import annotations

from decimal import Decimal
from typing import Any

from kiosk.errors import RemoteError
from kiosk.money import fen_to_yuan, round_fen, yuan_to_fen
from kiosk.services.client import CentreClient
from kiosk.services.protocol import Answer, InfCode
from kiosk.app.adapters.bank import refund_result
from kiosk.app.ports import (Activation, FaceAuth, Person, Probe, RefundResult, SettleResult, Split, VisitOpened,
                             VisitRef)

LOCK_MINUTES = 30
# the centre's refusals of a charge on a visit token (contract item 3): the charge needs the patient
VISIT_REFUSALS = ("visit_expired", "visit_closed", "face_auth_required")


def fee_lines(bill: dict[str, Any]) -> tuple[list[dict[str, str]], int]:
    """The POS bill's items -> the platform's fee lines (det_item_fee_sumamt = round(pric x cnt))."""
    lines, total = [], 0
    for i, it in enumerate(bill.get("items") or []):
        amt = round_fen(Decimal(it["price"]) * Decimal(it["qty"]))
        total += amt
        lines.append({"feedetl_sn": f"{i + 1:04d}", "med_list_codg": it["code"], "medins_list_codg": it["code"],
                      "pric": str(it["price"]), "cnt": str(it["qty"]), "det_item_fee_sumamt": fen_to_yuan(amt)})
    return lines, total


def split_from(output: dict[str, Any]) -> Split:
    s = output.get("setlinfo") or {}

    def f(k: str) -> int:
        return yuan_to_fen(s.get(k, "0.00") or "0.00", f"setlinfo.{k}", allow_negative=True)

    return Split(medfee_sumamt=f("medfee_sumamt"), fund_pay_sumamt=f("fund_pay_sumamt"), psn_part_amt=f("psn_part_amt"),
                 acct_pay=f("acct_pay"), acct_mulaid_pay=f("acct_mulaid_pay"), psn_cash_pay=f("psn_cash_pay"),
                 setl_id=str(s.get("setl_id") or ""), mdtrt_id=str(s.get("mdtrt_id") or ""), raw=dict(s),
                 pay_auth=str(output.get("pay_auth") or ""))


def _person(out: dict[str, Any]) -> Person:
    return Person(psn_no=out["psn_no"], name=out.get("psn_name", ""), ec_token=out.get("ecToken", ""),
                  insutype=out.get("insutype", ""))


class CentreAdapter:
    def __init__(self, client: CentreClient) -> None:
        self.client = client
        self._mulaid: dict[str, bool] = {}

    def _signed_in(self) -> None:
        if not self.client.sign_no:
            self.client.sign_in("kiosk")

    def _call(self, fn: Any, *a: Any, **kw: Any) -> Answer:
        self._signed_in()
        ans: Answer = fn(*a, **kw)
        if ans.infcode == InfCode.NOT_SIGNED_IN:
            self.client.sign_in("kiosk")
            ans = fn(*a, **kw)
        return ans

    @property
    def institution(self) -> str:
        """The fixmedins_code this terminal is registered for (part of every order's identity)."""
        return self.client.ident.fixmedins_code

    def new_msgid(self) -> str:
        return self.client.new_msgid()

    def catalogue(self, max_pages: int = 1000) -> dict[str, str]:
        """The centre's whole catalogue (1312, page by page): code -> chrgitm_lv (01/02/03)."""
        codes: dict[str, str] = {}
        page = 1
        while True:
            a = self._call(self.client.catalogue_page, page)
            if not a.ok:
                raise RemoteError(f"catalogue query refused: {a.err_msg}", code=a.err_code or "refused")
            for row in a.output.get("data") or []:
                codes[str(row["hilist_code"])] = str(row.get("chrgitm_lv", ""))
            if page >= int(a.output.get("pages") or 0) or page >= max_pages:
                return codes
            page += 1

    # -- identity ---------------------------------------------------------------------------
    def face_auth(self, probe: Probe, session_id: str, phone_last4: str = "") -> FaceAuth:
        a = self._call(self.client.authenticate, probe.sealed("auth"), session_id, phone_last4=phone_last4)
        if a.ok:
            return FaceAuth("matched", _person(a.output))
        if a.infcode in (InfCode.FACE_NOT_MATCHED, InfCode.NOT_ACTIVATED):
            if phone_last4:
                return FaceAuth("no_match")  # the digits named nobody who looks like this
            return FaceAuth("not_activated")  # first visit (or not recognised): the ID number decides
        if a.infcode == InfCode.LOCKED:
            return FaceAuth("id_locked", minutes=LOCK_MINUTES)
        if a.infcode == InfCode.FACE_RETRY:
            return FaceAuth("need_phone_digits")  # look-alikes in 1:N: the last 4 phone digits decide
        raise RemoteError(f"face authentication refused: {a.err_msg}", code=a.err_code or "refused")

    def activate(self, probe: Probe, id_no: str, session_id: str) -> Activation:
        a = self._call(self.client.activate, probe.sealed("activate"), id_no, session_id)
        if a.ok:
            return Activation("ok", _person(a.output))
        if a.infcode == InfCode.IDENTITY_MISMATCH:
            return Activation("id_mismatch")
        if a.infcode == InfCode.LOCKED:
            return Activation("id_locked", minutes=LOCK_MINUTES)
        if a.infcode in (InfCode.NOT_FOUND, InfCode.INVALID_INPUT):
            return Activation("id_mismatch")
        raise RemoteError(f"activation refused: {a.err_msg}", code=a.err_code or "refused")

    # -- settlement ---------------------------------------------------------------------------
    def _head(self, person: Person, bill: dict[str, Any], order_id: str, total: int, mulaid: bool,
              orig_setl_id: str = "") -> dict[str, Any]:
        """The settlement head. A return's re-settlement names the settlement returned (`orig_setl_id`): that
        original, face-proved settlement is the authority (mdtrt_cert_no = orig_setl_id, no ecToken), so a
        return resumed after the face's e-voucher expired, or confirmed by the cashier, still settles."""
        return {"psn_no": person.psn_no, "mdtrt_cert_type": "01", "mdtrt_cert_no": orig_setl_id or person.ec_token,
                "medfee_sumamt": fen_to_yuan(total), "insutype": person.insutype or "310", "acct_used_flag": "1",
                "acct_mulaid_flag": "1" if mulaid else "0", "chrg_bchno": order_id[:30],
                **({"orig_setl_id": orig_setl_id} if orig_setl_id else {}),
                **({} if bill.get("med_type", "11") == "41" else {"med_type": bill.get("med_type", "11")})}

    def presettle(self, person: Person, bill: dict[str, Any], order_id: str, *, orig_setl_id: str = "") -> SettleResult:
        lines, total = fee_lines(bill)
        pharmacy = bill.get("med_type") == "41"
        a = self._call(self.client.presettle, self._head(person, bill, order_id, total, True, orig_setl_id), lines,
                       pharmacy=pharmacy)
        if a.infcode == InfCode.NO_AUTHORISATION:  # no relative authorised mutual aid: own account only
            a = self._call(self.client.presettle, self._head(person, bill, order_id, total, False, orig_setl_id),
                           lines, pharmacy=pharmacy)
            self._mulaid[person.psn_no] = False
        else:
            self._mulaid[person.psn_no] = True
        if not a.ok:
            return SettleResult("bill_rejected", detail=a.err_msg)
        return SettleResult("ok", split_from(a.output))

    def settle(self, person: Person, bill: dict[str, Any], order_id: str, msgid: str, *,
               orig_setl_id: str = "") -> SettleResult:
        lines, total = fee_lines(bill)
        mulaid = self._mulaid.get(person.psn_no, False)
        try:
            a = self._call(self.client.settle, self._head(person, bill, order_id, total, mulaid, orig_setl_id), lines,
                           pharmacy=bill.get("med_type") == "41", msgid=msgid)
        except RemoteError as e:
            return SettleResult("unknown", detail=e.code)
        if not a.ok:
            return SettleResult("bill_rejected", detail=a.err_msg)
        return SettleResult("ok", split_from(a.output))

    def reverse(self, person: Person, msgid: str, setl_id: str | None) -> bool:
        """2601 by the settling msgid: reverses it if applied, tombstones it if not (a late arrival is refused)."""
        a = self._call(self.client.reverse_message, person.psn_no, msgid, "2207")
        if a.ok and a.output.get("result") in ("reversed", "already_reversed", "not_applied"):
            return True
        raise RemoteError(f"reversal refused: {a.err_msg}", code=a.err_code or "refused")

    def hold_auth(self, person: Person, amount_fen: int, ref: str) -> str:
        """ec.payauth: the signed authorisation of an admission's deposit hold (the person's ecToken)."""
        a = self._call(self.client.pay_auth, person.psn_no, person.ec_token, fen_to_yuan(amount_fen), ref)
        return str(a.output.get("pay_auth") or "") if a.ok else ""

    def line_auth(self, person: Person, amount_fen: int, ref: str) -> str:
        """ec.payauth purpose line: the face-proved person asks the bank which line pays this amount."""
        a = self._call(self.client.pay_auth, person.psn_no, person.ec_token, fen_to_yuan(amount_fen), ref,
                       purpose="line")
        return str(a.output.get("pay_auth") or "") if a.ok else ""

    def refund(self, person: Person, setl_id: str, amount_fen: int, key: str, *, msgid: str = "",
               pharmacy: bool | None = None) -> RefundResult:
        """Whole refund of a settlement: 2208 (2103 for a pharmacy settlement). With the journaled
        `msgid` a retry is the same message: the centre replays the answer of one that landed.
        Without `pharmacy` (older journals) 2208 is tried first, then 2103, each with a new msgid."""
        kinds = [pharmacy] if pharmacy is not None else [False, True]
        for ph in kinds:
            try:
                a = self._call(self.client.reverse, setl_id, person.psn_no, pharmacy=ph,
                               msgid=msgid if pharmacy is not None and msgid else None)
            except RemoteError as e:  # not answered: it may have applied; the same msgid resolves it
                return RefundResult("unknown", e.code, e.message)
            if a.ok or a.infcode == InfCode.ALREADY_REVERSED:
                return RefundResult("ok")
            if a.infcode != InfCode.INVALID_INPUT or pharmacy is not None:
                break
        return refund_result(a)

    # -- senseless payment (issue 17) ---------------------------------------------------------
    def mandate_auth(self, person: Person, terms: str, per_visit_fen: int) -> str:
        """ec.payauth purpose mandate: ref = the canonical terms, amount = the per-visit cap."""
        a = self._call(self.client.pay_auth, person.psn_no, person.ec_token, fen_to_yuan(per_visit_fen), terms,
                       purpose="mandate")
        return str(a.output.get("pay_auth") or "") if a.ok else ""

    def person_auth(self, person: Person, purpose: str, ref: str) -> str:
        """ec.payauth with no amount (statement: ref = the person; mandate_revoke: ref = the mandate id)."""
        try:
            a = self._call(self.client.pay_auth, person.psn_no, person.ec_token, "0.00", ref, purpose=purpose)
        except RemoteError:
            return ""
        return str(a.output.get("pay_auth") or "") if a.ok else ""

    def register_visit(self, person: Person, msgid: str) -> VisitOpened:
        """2201 with the face's ecToken; the journaled `msgid` makes a retry replay one that landed."""
        data = {"psn_no": person.psn_no, "insutype": person.insutype or "310", "med_type": "11",
                "mdtrt_cert_type": "01", "mdtrt_cert_no": person.ec_token}
        try:
            a = self._call(self.client.call, "2201", {"data": data}, msgid)
        except RemoteError as e:
            return VisitOpened("unknown", code=e.code)
        if a.ok:
            o = a.output.get("data") if isinstance(a.output.get("data"), dict) else a.output
            return VisitOpened("ok", mdtrt_id=str(o.get("mdtrt_id") or ""), visit_token=str(o.get("visit_token") or ""),
                               exp=int(o.get("exp") or 0))
        r = refund_result(a)
        return VisitOpened(r.status, code=r.code)

    def close_visit(self, psn_no: str, mdtrt_id: str) -> RefundResult:
        try:
            a = self._call(self.client.call, "2202", {"data": {"psn_no": psn_no, "mdtrt_id": mdtrt_id}})
        except RemoteError as e:
            return RefundResult("unknown", e.code, e.message)
        if not a.ok and "closed" in (a.err_code or ""):
            return RefundResult("ok")  # closed before (a retry)
        return refund_result(a)

    def _visit_head(self, visit: VisitRef, bill: dict[str, Any], order_id: str, total: int,
                    mulaid: bool) -> dict[str, Any]:
        person = Person(psn_no=visit.psn_no, name="", ec_token=visit.visit_token, insutype=visit.insutype)
        return {**self._head(person, bill, order_id, total, mulaid), "mdtrt_id": visit.mdtrt_id}

    def _visit_refusal(self, a: Answer) -> SettleResult:
        code = (a.err_code or "").lower()
        return SettleResult(code if code in VISIT_REFUSALS else "bill_rejected", detail=a.err_msg)

    def visit_presettle(self, visit: VisitRef, bill: dict[str, Any], order_id: str) -> SettleResult:
        """2206 on the visit token (mutual aid when a relative authorised it, as at the counter)."""
        lines, total = fee_lines(bill)
        a = self._call(self.client.presettle, self._visit_head(visit, bill, order_id, total, True), lines)
        mulaid = True
        if a.infcode == InfCode.NO_AUTHORISATION:
            mulaid = False
            a = self._call(self.client.presettle, self._visit_head(visit, bill, order_id, total, False), lines)
        self._mulaid[f"visit/{visit.mdtrt_id}"] = mulaid
        if not a.ok:
            return self._visit_refusal(a)
        return SettleResult("ok", split_from(a.output))

    def visit_settle(self, visit: VisitRef, bill: dict[str, Any], order_id: str, msgid: str) -> SettleResult:
        lines, total = fee_lines(bill)
        mulaid = self._mulaid.get(f"visit/{visit.mdtrt_id}", False)
        try:
            a = self._call(self.client.settle, self._visit_head(visit, bill, order_id, total, mulaid), lines,
                           msgid=msgid)
        except RemoteError as e:
            return SettleResult("unknown", detail=e.code)
        if a.infcode in (InfCode.STORAGE, InfCode.INTERNAL):
            return SettleResult("unknown", detail=a.err_code)
        if not a.ok:
            return self._visit_refusal(a)
        return SettleResult("ok", split_from(a.output))

    def renew_pay_auth(self, psn_no: str, setl_id: str) -> str:
        """5203 by setl_id: the centre signs a settlement's draw authorisation anew (the same authorisation
        id: the bank still draws once); "" when it does not."""
        try:
            a = self._call(self.client.query, psn_no, setl_id=setl_id)
        except RemoteError:
            return ""
        return str(a.output.get("pay_auth") or "") if a.ok else ""

    def notify(self, notice: dict[str, Any]) -> RefundResult:
        """ec.notify (contract item 5): stored once per notice_id in the patient's inbox."""
        try:
            a = self._call(self.client.call, "ec.notify", {"data": notice})
        except RemoteError as e:
            return RefundResult("unknown", e.code, e.message)
        return refund_result(a)
