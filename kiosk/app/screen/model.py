"""What the patient's screen shows: one `ScreenState` per moment of a session.

The counter flow (kiosk.app, G1) builds a ScreenState and publishes it on the
ScreenBus; the page renders exactly this and nothing else. There is
deliberately no field for a match or liveness score: the screen shows only the
outcome and an actionable reason (the score never leaves the vision layer).
Amounts are yuan strings with two decimals, as at every other boundary.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# Phases the page knows how to lay out. A state name the page does not know is
# still shown (prompt + status bar) with the generic layout, so G1 may add states.
Phase = Literal[
    "idle",           # waiting for a bill: welcome page
    "bill",           # bill received, show total, ask to look at the camera
    "face",           # face capture with quality prompts (camera preview + guide)
    "liveness",       # liveness check (camera preview + guide)
    "matching",       # matching / contacting the centre (spinner)
    "id_entry",       # first time: type the ID number on the keypad (masked)
    "phone_entry",    # 1:N ambiguous: last 4 digits of the phone number
    "confirm",        # pre-settlement split shown, press confirm on the keypad
    "processing",     # settling, drawing credit, printing
    "success",        # outcome: paid, amounts split
    "failure",        # outcome: not paid, actionable reason
    "cancelled",      # outcome: cancelled by patient/cashier/timeout
    "pending",        # outcome not known yet (a party's answer was lost): completes by itself, never "failed"
]

PeripheralStatus = Literal["ok", "warning", "error", "offline", "unknown"]

_YUAN = r"^\d{1,9}\.\d{2}$"


class Text(BaseModel):
    """A sentence in both languages; zh is what the page shows by default."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    zh: str = Field(max_length=400)
    en: str = Field(max_length=400)


class Amounts(BaseModel):
    """The split of one bill, in yuan strings (e.g. "12.30").

    medfee_sumamt = fund_pay_sumamt + acct_pay + acct_mulaid_pay + credit_draw + cash_pay
    (checked: the page must never show a split that does not add up).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    medfee_sumamt: str = Field(pattern=_YUAN, description="bill total")
    fund_pay_sumamt: str = Field(default="0.00", pattern=_YUAN, description="insurance fund share")
    acct_pay: str = Field(default="0.00", pattern=_YUAN, description="own personal account")
    acct_mulaid_pay: str = Field(default="0.00", pattern=_YUAN, description="family mutual aid (relative's account)")
    credit_draw: str = Field(default="0.00", pattern=_YUAN, description="bank credit line")
    cash_pay: str = Field(default="0.00", pattern=_YUAN, description="cash at the counter")
    # family pay: whose credit line pays, masked (e.g. "张*明 (子女)")
    credit_holder: str | None = Field(default=None, max_length=40)
    credit_available: str | None = Field(default=None, pattern=_YUAN, description="line left after this draw")

    @field_validator("credit_holder")
    @classmethod
    def _short(cls, v: str | None) -> str | None:
        return v.strip() or None if v is not None else None

    def parts_fen(self) -> dict[str, int]:
        from kiosk.money import yuan_to_fen

        names = ("fund_pay_sumamt", "acct_pay", "acct_mulaid_pay", "credit_draw", "cash_pay")
        return {n: yuan_to_fen(getattr(self, n), n) for n in names}

    @model_validator(mode="after")
    def _adds_up(self) -> "Amounts":
        from kiosk.money import yuan_to_fen

        if sum(self.parts_fen().values()) != yuan_to_fen(self.medfee_sumamt, "medfee_sumamt"):
            raise ValueError("fund + account + family aid + credit + cash must equal medfee_sumamt")
        return self


class BillLine(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(max_length=80)
    qty: str = Field(default="1", max_length=12)
    amount: str = Field(pattern=_YUAN)


class KeypadEntry(BaseModel):
    """What the keypad has typed so far, already masked by the sender."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    masked: str = Field(default="", max_length=24, description="e.g. '110105********12' — never the clear ID number")
    length: int = Field(default=0, ge=0, le=24)
    expected: int = Field(default=18, ge=1, le=24)
    attempts_left: int | None = Field(default=None, ge=0, le=9)


class Peripherals(BaseModel):
    """Status-bar lights. Detail is a short reason code (e.g. 'paper_out')."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    printer: PeripheralStatus = "unknown"
    keypad: PeripheralStatus = "unknown"
    network: PeripheralStatus = "unknown"
    camera: PeripheralStatus = "unknown"
    printer_detail: str | None = Field(default=None, max_length=40)
    keypad_detail: str | None = Field(default=None, max_length=40)
    network_detail: str | None = Field(default=None, max_length=40)
    camera_detail: str | None = Field(default=None, max_length=40)


class MandateItem(BaseModel):
    """One senseless-pay mandate a revocation by face will end: where and its terms (no person id, no
    mandate id: the patient recognises it by the institution and the caps)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    fixmedins_code: str = Field(pattern=r"^[A-Za-z0-9]{1,20}$", description="the institution's code")
    per_visit: str = Field(pattern=_YUAN)
    per_day: str = Field(pattern=_YUAN)
    until: str = Field(pattern=r"^\d{4}-\d{2}-\d{2}$")


class ScreenState(BaseModel):
    """One frame of the patient's screen. `seq` is set by the bus."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    seq: int = 0
    phase: Phase = "idle"
    state: str = Field(default="idle", max_length=40, description="the flow's own state name (shown to technicians only)")
    session_id: str | None = Field(default=None, max_length=64)
    prompt: Text | None = Field(default=None, description="what the patient should do now; spoken aloud")
    reason: str | None = Field(default=None, max_length=40, description="reason code; the page explains it if prompt is empty")
    amounts: Amounts | None = None
    bill_lines: list[BillLine] = Field(default_factory=list, max_length=50)
    keypad: KeypadEntry | None = None
    peripherals: Peripherals = Field(default_factory=Peripherals)
    camera: bool = Field(default=False, description="show the live preview with the face guide")
    deadline_s: float | None = Field(default=None, ge=0, le=3600, description="seconds left before this state times out")
    receipt_printed: bool | None = None
    setl_id: str | None = Field(default=None, max_length=64)
    payer: Literal["self", "family"] = "self"
    kind: Literal["pay", "return", "register", "revoke"] = Field(
        default="pay", description="return: an item-level return (return texts, the original split beside the new "
                                   "one); register / revoke: a senseless-pay registration / revocation (no payment)")
    amounts_old: Amounts | None = Field(default=None, description="return: the original split, shown beside `amounts`")
    mandates: list[MandateItem] = Field(default_factory=list, max_length=20,
                                        description="revoke: the mandates the confirm key ends")
