"""The `input` of each centre transaction, with the platform's field names.

Validation lives here so a handler only ever sees well-formed data; a bad field
becomes `infcode` 1001 with `err_msg` naming it (`input.data.certno: ...`).
Money arrives as yuan strings (at most 2 dp for amounts, 4 for prices and
quantities); floats are refused because they cannot say what the bill said.
"""
from __future__ import annotations

import re
from decimal import Decimal
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from kiosk.money import parse_decimal

CERTNO_RE = re.compile(r"^\d{17}[\dX]$")
PSN_NO_RE = re.compile(r"^[A-Za-z0-9]{1,30}$")
RELATIONS = ("spouse", "parent", "child", "sibling", "grandparent", "grandchild")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


def _yuan(v: object, field: str, dp: int) -> str:
    d = parse_decimal(v, field, max_dp=dp)  # raises InputError, which pydantic reports as ValueError
    return str(d)


def check_certno(v: str) -> str:
    """An 18-character resident ID number with a valid ISO 7064 check character."""
    v = v.upper()
    if not CERTNO_RE.match(v):
        raise ValueError("must be an 18-character ID number (17 digits and a digit or X)")
    weights = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
    check = "10X98765432"[sum(int(c) * w for c, w in zip(v[:17], weights)) % 11]
    if v[17] != check:
        raise ValueError("check character does not match (mistyped ID number?)")
    return v


def mask_certno(v: str) -> str:
    """First 6 and last 4 characters: the only form an ID number may be logged in."""
    return v[:6] + "*" * max(0, len(v) - 10) + v[-4:] if len(v) > 10 else "*" * len(v)


# ---- 9001 sign-in ---------------------------------------------------------------------------
class SignInData(_Strict):
    opter_no: str = Field(min_length=1, max_length=30)
    mac: str = Field(default="", max_length=64)
    ip: str = Field(default="", max_length=64)


class SignIn9001(_Strict):
    signIn: SignInData


# ---- 1101 person info -------------------------------------------------------------------------
class PersonInfoData(_Strict):
    mdtrt_cert_type: Literal["01", "02", "03"] = Field(description="01 e-voucher token, 02 ID number, 03 card")
    mdtrt_cert_no: str = Field(min_length=1, max_length=64)
    card_sn: str = Field(default="", max_length=64)
    begntime: str = Field(default="", max_length=19)
    psn_cert_type: str = Field(default="01", max_length=6)
    certno: str = Field(default="", max_length=18)
    psn_name: str = Field(default="", max_length=50)

    @model_validator(mode="after")
    def _cert(self) -> "PersonInfoData":
        if self.mdtrt_cert_type == "02":
            self.mdtrt_cert_no = check_certno(self.mdtrt_cert_no)
        if self.mdtrt_cert_type == "03":
            raise ValueError("mdtrt_cert_type 03 (social-security card) is not read by this terminal type")
        return self


class PersonInfo1101(_Strict):
    data: PersonInfoData


# ---- face activation and authentication -------------------------------------------------------
class FaceActivateData(_Strict):
    certno: str = Field(description="ID number typed at the keypad")
    face_seal: str = Field(min_length=16, max_length=8192, description="face template sealed to the centre (Base64)")
    session_id: str = Field(min_length=1, max_length=64)

    @field_validator("certno")
    @classmethod
    def _certno(cls, v: str) -> str:
        return check_certno(v)


class FaceActivate(_Strict):
    data: FaceActivateData


class FaceAuthData(_Strict):
    face_seal: str = Field(min_length=16, max_length=8192)
    session_id: str = Field(min_length=1, max_length=64)
    psn_no: str = Field(default="", max_length=30, description="when known: 1:1 instead of 1:N")
    phone_last4: str = Field(default="", pattern=r"^(\d{4})?$", description="asked for when 1:N is ambiguous")


class FaceAuth(_Strict):
    data: FaceAuthData


# ---- family mutual aid ------------------------------------------------------------------------
class MutualAidAuthData(_Strict):
    psn_no: str = Field(min_length=1, max_length=30, description="the patient who may use the account")
    mdtrt_cert_type: Literal["01"] = Field(default="01", description="only the ecToken: the face proves the patient")
    mdtrt_cert_no: str = Field(min_length=1, max_length=64, description="the patient's ecToken from face "
                               "authentication at this terminal")
    auth_psn_no: str = Field(min_length=1, max_length=30, description="the relative whose account pays")
    auth_certno: str = Field(description="the relative's ID number, typed by the relative as consent")
    relation: Literal["spouse", "parent", "child", "sibling", "grandparent", "grandchild"] = Field(
        description="what the relative is to the patient"
    )

    @field_validator("auth_certno")
    @classmethod
    def _certno(cls, v: str) -> str:
        return check_certno(v)


class MutualAidAuth(_Strict):
    data: MutualAidAuthData


class MutualAidRevokeData(_Strict):
    psn_no: str = Field(min_length=1, max_length=30)
    auth_psn_no: str = Field(min_length=1, max_length=30)
    mdtrt_cert_type: Literal["01"] = Field(default="01")
    mdtrt_cert_no: str = Field(min_length=1, max_length=64, description="the ecToken of the patient or of the "
                               "relative who withdraws consent (face authentication at this terminal)")


class MutualAidRevoke(_Strict):
    data: MutualAidRevokeData


# ---- fee lines and settlements ----------------------------------------------------------------
class FeeDetail(_Strict):
    """One line of the bill (2204's fields; pharmacy's drugdetail uses the same)."""

    feedetl_sn: str = Field(min_length=1, max_length=30)
    med_list_codg: str = Field(min_length=1, max_length=50, description="catalogue code")
    medins_list_codg: str = Field(default="", max_length=150)
    pric: str = Field(description="unit price, yuan, up to 4 dp")
    cnt: str = Field(description="quantity, up to 4 dp")
    det_item_fee_sumamt: str = Field(description="line total, yuan (2 dp); must equal round(pric x cnt)")

    @field_validator("pric", "cnt", mode="before")
    @classmethod
    def _dec4(cls, v: object, info) -> str:  # type: ignore[no-untyped-def]
        try:
            return _yuan(v, info.field_name, 4)
        except Exception as e:  # InputError -> pydantic error with the same text
            raise ValueError(getattr(e, "message", str(e))) from None

    @field_validator("det_item_fee_sumamt", mode="before")
    @classmethod
    def _dec2(cls, v: object, info) -> str:  # type: ignore[no-untyped-def]
        try:
            return _yuan(v, info.field_name, 2)
        except Exception as e:
            raise ValueError(getattr(e, "message", str(e))) from None

    @field_validator("cnt")
    @classmethod
    def _positive(cls, v: str) -> str:
        if Decimal(v) <= 0:
            raise ValueError("must be greater than 0")
        return v


class _SettleHead(_Strict):
    psn_no: str = Field(min_length=1, max_length=30)
    mdtrt_cert_type: Literal["01", "02"] = "01"
    mdtrt_cert_no: str = Field(min_length=1, max_length=128, description="the ecToken from face authentication, "
                               "or (2206/2207 of an open outpatient visit) the visit_token 2201 issued")
    medfee_sumamt: str = Field(description="bill total, yuan; must equal the sum of the lines")
    insutype: Literal["310", "390"] = "310"
    acct_used_flag: Literal["0", "1"] = "1"
    acct_mulaid_flag: Literal["0", "1"] = Field(default="0", description="1: use the authorised relative's account")
    mdtrt_id: str = Field(default="", max_length=30)
    chrg_bchno: str = Field(default="", max_length=30)
    psn_setlway: Literal["01", "02"] = "01"
    orig_setl_id: str = Field(default="", max_length=30, description="a return's re-settlement: the settlement "
                              "being returned (this institution's, this person's, face-proved, reversed for "
                              "2207/2102); the new lines must be a part of its lines. With mdtrt_cert_no = "
                              "orig_setl_id that original is the authority (no ecToken needed)")

    @field_validator("medfee_sumamt", mode="before")
    @classmethod
    def _dec2(cls, v: object, info) -> str:  # type: ignore[no-untyped-def]
        try:
            return _yuan(v, info.field_name, 2)
        except Exception as e:
            raise ValueError(getattr(e, "message", str(e))) from None


class OutpatientData(_SettleHead):
    med_type: Literal["11", "14"] = Field(default="11", description="11 outpatient, 14 chronic/special disease")
    feedetail: list[FeeDetail] = Field(min_length=1, max_length=1000)


class Outpatient2206(_Strict):
    """2206 pre-settlement and 2207 settlement (fee lines inline instead of a prior 2204)."""

    data: OutpatientData


class DrugInfo(_SettleHead):
    med_type: Literal["41"] = "41"


class Pharmacy2101(_Strict):
    """2101 pharmacy pre-settlement and 2102 settlement."""

    druginfo: DrugInfo
    drugdetail: list[FeeDetail] = Field(min_length=1, max_length=1000)


class ReversalData(_Strict):
    setl_id: str = Field(min_length=1, max_length=30)
    psn_no: str = Field(min_length=1, max_length=30)
    mdtrt_id: str = Field(default="", max_length=30)


class Reversal2208(_Strict):
    data: ReversalData


class MessageReversalData(_Strict):
    psn_no: str = Field(min_length=1, max_length=30)
    omsgid: str = Field(min_length=30, max_length=30)
    oinfno: str = Field(min_length=4, max_length=4)


class MessageReversal2601(_Strict):
    data: MessageReversalData


class SettlementQueryData(_Strict):
    psn_no: str = Field(min_length=1, max_length=30)
    setl_id: str = Field(default="", max_length=30)
    omsgid: str = Field(default="", max_length=30, description="the msgid of the 2207/2102 that settled")

    @model_validator(mode="after")
    def _one(self) -> "SettlementQueryData":
        if not self.setl_id and not self.omsgid:
            raise ValueError("give setl_id or omsgid")
        return self


class SettlementQuery5203(_Strict):
    data: SettlementQueryData


class CatalogueQueryData(_Strict):
    page_num: int = Field(default=1, ge=1, le=100_000)
    page_size: int = Field(default=500, ge=1, le=1000)


class CatalogueQuery1312(_Strict):
    """1312 catalogue query (医保目录信息查询), paged: what a terminal checks a POS bill's codes against."""

    data: CatalogueQueryData = Field(default_factory=CatalogueQueryData)
class PayAuthData(_Strict):
    """The centre's signed word for an act on the person's credit line (kiosk.services.payauth): the
    face-proved person's ecToken at this terminal is the proof."""

    psn_no: str = Field(min_length=1, max_length=30, description="the person who authorises (payer, holder)")
    mdtrt_cert_type: Literal["01"] = Field(default="01", description="only the ecToken: the face proves the person")
    mdtrt_cert_no: str = Field(min_length=1, max_length=64, description="the ecToken from face authentication")
    purpose: Literal["hold", "bind", "line", "apply", "unbind", "statement", "repay", "mandate",
                     "mandate_revoke"] = Field(
        description="hold: an inpatient deposit; bind/unbind: the holder lends (or stops lending) the line to a "
                    "member (unbind also the member leaving); line: which line pays this amount; apply: open a "
                    "line; statement: the holder's statement; repay; mandate: senseless outpatient payment at this "
                    "institution (ref = the terms, amount = the per-visit cap); mandate_revoke: the payer ends a "
                    "mandate (ref = mandate_id) (draws are authorised by 2207/2102)")
    amount: str = Field(description="yuan, 2 dp: hold the deposit, line the amount to check, repay the repayment "
                                    "(> 0); bind the member's monthly cap (0.00 = none); apply/unbind/statement 0.00 "
                                    "(apply: the centre writes the insured years)")
    ref: str = Field(min_length=1, max_length=64, description="hold: the admission id; bind/unbind: the member's "
                     "psn_no; statement: the holder's psn_no; apply: the birth date (the centre writes its "
                     "own); line/repay: the payment it is for; mandate: visit=<fen>;day=<fen>;until=<YYYY-MM-DD>;"
                     "lines=<own|family|own,family>; mandate_revoke: the mandate_id")

    @field_validator("amount", mode="before")
    @classmethod
    def _dec2(cls, v: object, info) -> str:  # type: ignore[no-untyped-def]
        try:
            out = _yuan(v, info.field_name, 2)
        except Exception as e:
            raise ValueError(getattr(e, "message", str(e))) from None
        if Decimal(out) < 0:
            raise ValueError("must not be negative")
        return out

    @model_validator(mode="after")
    def _positive_hold(self) -> "PayAuthData":
        if self.purpose in ("hold", "line", "repay", "mandate") and Decimal(self.amount) <= 0:
            raise ValueError(f"amount must be greater than 0 for {self.purpose}")
        return self


class PayAuthRequest(_Strict):
    data: PayAuthData


# ---- outpatient visits (senseless payment, issue 17) -------------------------------------------
class VisitOpenData(_Strict):
    """2201 outpatient registration: the patient's face at this terminal opens the visit."""

    psn_no: str = Field(min_length=1, max_length=30)
    insutype: Literal["310", "390"] = "310"
    med_type: Literal["11"] = Field(default="11", description="11 outpatient (the only visit senseless payment has)")
    mdtrt_cert_type: Literal["01"] = Field(default="01", description="only the ecToken: the face proves the patient")
    mdtrt_cert_no: str = Field(min_length=1, max_length=64, description="the ecToken from face authentication at "
                               "this terminal")
    begntime: str = Field(default="", max_length=19, description="yyyy-MM-dd HH:mm:ss, informational")


class VisitOpen2201(_Strict):
    data: VisitOpenData


class VisitCloseData(_Strict):
    psn_no: str = Field(min_length=1, max_length=30)
    mdtrt_id: str = Field(min_length=1, max_length=30)


class VisitClose2202(_Strict):
    """2202 close an outpatient visit (the registering terminal): later charges are refused."""

    data: VisitCloseData


def _yuan_field(v: object, field: str) -> str:
    try:
        return str(parse_decimal(v, field, max_dp=2, allow_negative=True))
    except Exception as e:
        raise ValueError(getattr(e, "message", str(e))) from None


class NotifyData(_Strict):
    """ec.notify (the platform's cn.nhsa.settle.notify): a notice for the person's insurance app inbox."""

    notice_id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_./:-]+$")
    psn_no: str = Field(min_length=1, max_length=30)
    setl_id: str = Field(default="", max_length=30, description="the settlement (senseless_charge: required)")
    mdtrt_id: str = Field(default="", max_length=30, description="the visit (visit_summary: required)")
    kind: Literal["senseless_charge", "visit_summary"]
    medfee_sumamt: str = "0.00"
    fund_pay_sumamt: str = "0.00"
    acct_pay: str = "0.00"
    psn_cash_pay: str = "0.00"
    text: str = Field(default="", max_length=2000)

    @field_validator("medfee_sumamt", "fund_pay_sumamt", "acct_pay", "psn_cash_pay", mode="before")
    @classmethod
    def _dec2(cls, v: object, info) -> str:  # type: ignore[no-untyped-def]
        return _yuan_field(v, info.field_name)

    @model_validator(mode="after")
    def _object(self) -> "NotifyData":
        if self.kind == "senseless_charge" and not self.setl_id:
            raise ValueError("setl_id is required for a senseless_charge notice")
        if not self.setl_id and not self.mdtrt_id:
            raise ValueError("give setl_id or mdtrt_id")
        return self


class Notify(_Strict):
    data: NotifyData


# transaction code -> (input model, summary)
TRANSACTIONS: dict[str, tuple[type[BaseModel], str]] = {
    "9001": (SignIn9001, "sign-in of a terminal operator; returns sign_no"),
    "1101": (PersonInfo1101, "person info (baseinfo, insuinfo, idetinfo)"),
    "ec.activate": (FaceActivate, "insurance-code activation: sealed face template + typed ID number, 1:1"),
    "ec.auth": (FaceAuth, "face authentication of an activated person (1:N in region, or 1:1); returns ecToken"),
    "mulaid.auth": (MutualAidAuth, "family mutual aid: a relative authorises use of their personal account"),
    "mulaid.revoke": (MutualAidRevoke, "withdraw a mutual-aid authorisation"),
    "2206": (Outpatient2206, "outpatient pre-settlement (nothing committed)"),
    "2207": (Outpatient2206, "outpatient settlement (commits; returns setl_id)"),
    "2208": (Reversal2208, "outpatient settlement reversal"),
    "2101": (Pharmacy2101, "pharmacy pre-settlement"),
    "2102": (Pharmacy2101, "pharmacy settlement"),
    "2103": (Reversal2208, "pharmacy settlement reversal"),
    "2601": (MessageReversal2601, "reversal of a message whose answer was lost (2207/2102)"),
    "5203": (SettlementQuery5203, "settlement query by setl_id or by the settling msgid"),
    "1312": (CatalogueQuery1312, "catalogue query, paged (code, name, chrgitm_lv): terminals check bills against it"),
    "ec.payauth": (PayAuthRequest, "the signed pay_auth for an act on the person's credit line: deposit hold, "
                                    "binding, line query, opening, statement, repayment, senseless-payment mandate "
                                    "and its revocation (ecToken of the person)"),
    "2201": (VisitOpen2201, "outpatient registration by face: opens a visit (mdtrt_id, visit_token valid to the "
                            "end of the Asia/Shanghai day); nothing is charged"),
    "2202": (VisitClose2202, "close an outpatient visit (the registering terminal); later charges are refused"),
    "ec.notify": (Notify, "a senseless-charge or visit-summary notice for the person's insurance app inbox "
                          "(own institution's settlement or visit of that person only)"),
}


# ---- 3201 / 3202 day-end reconciliation --------------------------------------------------------
_DATE = r"^\d{4}-\d{2}-\d{2}$"
MAX_STMT_DAYS = 31


class _StmtPeriod(_Strict):
    stmt_begndate: str = Field(pattern=_DATE, description="first Asia/Shanghai day, yyyy-MM-dd")
    stmt_enddate: str = Field(pattern=_DATE, description="last Asia/Shanghai day (inclusive), yyyy-MM-dd")
    refd_setl_flag: Literal["0", "1"] = Field(default="1", description="1: reversals count (negated); 0: they do not")
    fixmedins_code: str = Field(default="", max_length=30, description="optional: must be the caller's own "
                                "institution; any other is answered as one with no settlements")

    @model_validator(mode="after")
    def _period(self) -> "_StmtPeriod":
        from datetime import date

        try:
            b, e = date.fromisoformat(self.stmt_begndate), date.fromisoformat(self.stmt_enddate)
        except ValueError:
            raise ValueError("stmt_begndate / stmt_enddate must be real dates (yyyy-MM-dd)") from None
        if e < b:
            raise ValueError("stmt_enddate is before stmt_begndate")
        if (e - b).days >= MAX_STMT_DAYS:
            raise ValueError(f"a statement covers at most {MAX_STMT_DAYS} days")
        return self


class StmtTotals(_Strict):
    """The institution's own totals for one insurance type and clearing type."""

    insutype: str = Field(pattern=r"^\d{3,6}$")
    clr_type: Literal["11", "21", "41", "99"] = Field(description="11 outpatient, 21 inpatient, 41 pharmacy, 99 other")
    setl_optins: str = Field(default="", max_length=6)
    medfee_sumamt: str
    fund_pay_sumamt: str
    acct_pay: str
    fixmedins_setl_cnt: int = Field(ge=0, le=10_000_000)

    @field_validator("medfee_sumamt", "fund_pay_sumamt", "acct_pay", mode="before")
    @classmethod
    def _dec2(cls, v: object, info) -> str:  # type: ignore[no-untyped-def]
        try:  # totals net of reversals may be negative
            return str(parse_decimal(v, info.field_name, max_dp=2, allow_negative=True))
        except Exception as e:
            raise ValueError(getattr(e, "message", str(e))) from None


class TotalsData(_StmtPeriod):
    stmtinfo: list[StmtTotals] = Field(default_factory=list, max_length=100,
                                       description="one row per (insutype, clr_type); a group left out counts as zero")


class Totals3201(_Strict):
    """3201 total reconciliation (对总账): the centre answers consistent / not per group."""

    data: TotalsData


class DetailData(_StmtPeriod):
    clr_type: Literal["", "11", "21", "41", "99"] = ""
    page_num: int = Field(default=1, ge=1, le=100_000)
    page_size: int = Field(default=500, ge=1, le=1000)


class Detail3202(_Strict):
    """3202 detail reconciliation (对明细账): the centre's settlement list for the period (inline, paged)."""

    data: DetailData


TRANSACTIONS["3201"] = (Totals3201, "day-end totals per insutype and clr_type against the institution's own; "
                        "consistent or not per group (own institution only)")
TRANSACTIONS["3202"] = (Detail3202, "day-end settlement list (settlements and reversals) of the caller's institution")
