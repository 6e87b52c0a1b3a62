"""What the counter flow needs from the world, as narrow Protocols.

The flow (`kiosk.app.session`) talks only to these; `kiosk.app.adapters`
implements them over the real parts (camera + kiosk.vision, the insurance
centre and the bank over HTTP, the firmware bridge's local API). Outcomes the
patient can act on are values (a status field holding a reason code from
`kiosk.app.prompts.REASONS`); faults of a party are `RemoteError`/`DeviceError`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Protocol

import numpy as np


# ---------------------------------------------------------------- camera + vision
class Camera(Protocol):
    def read(self) -> np.ndarray | None:
        """The next BGR frame, or None when none is ready yet."""


class Probe(Protocol):
    """A captured face, held in memory only; leaves the device only sealed to the
    centre for one purpose ('auth' or 'activate') of one session."""

    def sealed(self, purpose: str) -> str: ...


@dataclass(frozen=True)
class Capture:
    """reason 'ok' with a `probe`, or the reason to retry ('spoof_suspected', a quality reason)."""

    reason: str
    probe: Probe | None = None


class Vision(Protocol):
    def capture(self, frames: Iterator[np.ndarray], on_frame: Callable[[str], None], session_id: str) -> Capture:
        """Consume frames until one live face is captured (or the pipeline gives up).

        `on_frame` gets each frame's quality verdict ('ok' or a reason code) so
        the screen can prompt; it may raise to stop the capture. The template is
        sealed bound to `session_id` (the centre opens it for that session only)."""


# ---------------------------------------------------------------- insurance centre
@dataclass(frozen=True)
class Person:
    psn_no: str
    name: str
    ec_token: str = ""
    insutype: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class FaceAuth:
    """status: 'matched' | 'not_activated' (first visit: ID needed) | 'no_match' | 'id_locked' |
    'need_phone_digits' (1:N found look-alikes: the last 4 phone digits decide)."""

    status: str
    person: Person | None = None
    minutes: int = 0


@dataclass(frozen=True)
class Activation:
    """status: 'ok' | 'id_mismatch' | 'id_locked' | 'not_insured'."""

    status: str
    person: Person | None = None
    tries_left: int | None = None
    minutes: int = 0


@dataclass(frozen=True)
class Split:
    """The settlement split (platform `setlinfo` fields, int fen) and ids."""

    medfee_sumamt: int
    fund_pay_sumamt: int
    psn_part_amt: int
    acct_pay: int
    acct_mulaid_pay: int
    psn_cash_pay: int
    setl_id: str = ""
    mdtrt_id: str = ""
    raw: dict[str, Any] = field(default_factory=dict)
    pay_auth: str = ""  # the centre's signed authorisation to draw psn_cash_pay (settlements only)


@dataclass(frozen=True)
class SettleResult:
    """status: 'ok' | 'bill_rejected' | 'unknown' (answer lost: the journal must resolve it)."""

    status: str
    split: Split | None = None
    detail: str = ""


@dataclass(frozen=True)
class RefundResult:
    """A party's answer to a refund step. status: 'ok' (done, or done before: a replay) |
    'refused' (a definitive refusal, `code` says why) | 'unknown' (no answer, a lost answer or
    a party fault such as 9001/9999: it may or may not have applied; resolved by its key)."""

    status: str
    code: str = ""
    message: str = ""


class Centre(Protocol):
    def face_auth(self, probe: Probe, session_id: str, phone_last4: str = "") -> FaceAuth: ...

    def activate(self, probe: Probe, id_no: str, session_id: str) -> Activation: ...

    def presettle(self, person: Person, bill: dict[str, Any], order_id: str, *, orig_setl_id: str = "") -> SettleResult:
        """Pre-settle (nothing committed). `orig_setl_id`: a return's kept lines, on the authority of the
        settlement being returned (no ecToken needed)."""

    def settle(self, person: Person, bill: dict[str, Any], order_id: str, msgid: str, *,
               orig_setl_id: str = "") -> SettleResult:
        """Settle under `msgid` (journaled first). `orig_setl_id`: a return's re-settlement of the kept lines
        on the returned settlement's authority (reversed first; once per original)."""

    def new_msgid(self) -> str: ...

    def reverse(self, person: Person, msgid: str, setl_id: str | None) -> bool:
        """Undo the settlement sent as `msgid` (no-op if it never happened). True when settled-state is 'reversed'."""

    def refund(self, person: Person, setl_id: str, amount_fen: int, key: str, *, msgid: str = "",
               pharmacy: bool | None = None) -> RefundResult:
        """Whole refund: reverse the settlement (2208, or 2103 for a pharmacy one). `msgid`, journaled
        before the call, makes a retry the same message (the centre replays its first answer)."""

    def hold_auth(self, person: Person, amount_fen: int, ref: str) -> str:
        """The centre's signed authorisation of a deposit hold for the face-proved `person` ("" if refused)."""

    def line_auth(self, person: Person, amount_fen: int, ref: str) -> str:
        """The centre's signed proof that the face-proved `person` asks which line pays `amount_fen`
        ("" if refused): the bank tells a terminal nothing about a line without it."""


@dataclass(frozen=True)
class VisitOpened:
    """The centre's answer to an outpatient registration (2201). status: 'ok' | 'refused' (`code`) |
    'unknown' (no answer: the same msgid again replays one that landed)."""

    status: str
    mdtrt_id: str = ""
    visit_token: str = ""
    exp: int = 0
    code: str = ""


@dataclass(frozen=True)
class VisitRef:
    """An open visit as the terminal charges it without the patient: the centre accepts 2206/2207 with
    the visit token (bound to this terminal, the person and mdtrt_id) instead of a fresh face."""

    psn_no: str
    insutype: str
    mdtrt_id: str
    visit_token: str


class VisitCentre(Protocol):
    """The centre's part of senseless payment (issue 17; kiosk.app.visits)."""

    def mandate_auth(self, person: Person, terms: str, per_visit_fen: int) -> str:
        """ec.payauth purpose mandate: the face-proved patient's consent to `terms` ("" if refused)."""

    def person_auth(self, person: Person, purpose: str, ref: str) -> str:
        """ec.payauth with no amount (purpose statement: ref = the person; mandate_revoke: ref = the mandate
        id): the face-proved person's word ("" if refused or unanswered)."""

    def register_visit(self, person: Person, msgid: str) -> VisitOpened: ...

    def close_visit(self, psn_no: str, mdtrt_id: str) -> RefundResult: ...

    def visit_presettle(self, visit: VisitRef, bill: dict[str, Any], order_id: str) -> SettleResult:
        """2206 with the visit token; status 'ok', 'bill_rejected', or the centre's visit refusal
        ('visit_expired' | 'visit_closed' | 'face_auth_required')."""

    def visit_settle(self, visit: VisitRef, bill: dict[str, Any], order_id: str, msgid: str) -> SettleResult: ...

    def renew_pay_auth(self, psn_no: str, setl_id: str) -> str:
        """5203: the settlement's draw authorisation signed anew (after its 10 minutes); "" if not."""

    def notify(self, notice: dict[str, Any]) -> RefundResult:
        """ec.notify: a notice to the patient's insurance app (ok / refused / unknown)."""


# ---------------------------------------------------------------- bank
@dataclass(frozen=True)
class Line:
    """Who pays the cash share: the patient's own line, a relative's (family pay), or none."""

    kind: str  # 'own' | 'family' | 'none'
    line_id: str = ""
    holder_name: str = ""
    available: int = 0
    family_hint: str = ""  # an own line, and the payer is bound to a family line too: its holder's last 4


@dataclass(frozen=True)
class DrawResult:
    """status: 'ok' | 'credit_declined' | 'credit_overdue' | 'family_cap_exceeded' | 'unknown'."""

    status: str
    draw_id: str = ""
    amount: int = 0


class Bank(Protocol):
    """Draws are made for `person` (the payer) from the line they may use (own or family)."""

    def line_for(self, person: Person, amount_fen: int, auth: str) -> Line:
        """The line that pays `amount_fen` for `person` (`auth`: the centre's line proof); `available` is
        `amount_fen` when it covers it now, else 0; kind 'none' without a line (or without the proof)."""

    def draw(self, line: Line, person: Person, amount_fen: int, key: str, ref: str, auth: str = "") -> DrawResult:
        """`ref` names what is paid (the settlement id); `key` makes a retry harmless; `auth` is the
        centre's pay_auth from the settlement (the bank charges nothing without it)."""

    def reverse_draw(self, key: str, payer: str, ref: str = "") -> bool:
        """Undo the draw made with idempotency `key` (no-op if none was made). True when nothing remains drawn.
        `ref`: the settlement the draw was for; the bank leaves a draw for another ref alone."""

    def hold(self, line: Line, person: Person, amount_fen: int, key: str, ref: str, auth: str = "") -> DrawResult: ...

    def capture(self, ref: str, amount_fen: int, key: str) -> DrawResult: ...

    def release(self, ref: str, key: str) -> bool: ...

    def refund(self, ref: str, amount_fen: int, key: str) -> RefundResult:
        """Refund `amount_fen` to the draw `ref`; `key` makes a retry a replay."""


@dataclass(frozen=True)
class MandateResult:
    """The bank's answer to credit.mandate. status: 'ok' | 'refused' (`code`, e.g. no_line) | 'unknown'."""

    status: str
    mandate_id: str = ""
    per_visit: int = 0
    per_day: int = 0
    until: str = ""
    lines: str = ""
    code: str = ""


# the bank's refusals of a senseless draw (contract item 8): the terminal answers "needs the patient"
MANDATE_REFUSALS = ("mandate_cap_visit", "mandate_cap_day", "mandate_revoked", "mandate_expired", "no_mandate",
                    "line_not_allowed")


class VisitBank(Protocol):
    """The bank's part of senseless payment (issue 17; kiosk.app.visits)."""

    def mandate(self, payer: str, key: str, auth: str) -> MandateResult: ...

    def mandate_revoke(self, mandate_id: str, key: str, auth: str = "") -> RefundResult:
        """End a mandate: this institution's own (no auth), or any with the payer's word (`auth`, purpose
        mandate_revoke); idempotent by `key`."""

    def mandates_of(self, payer: str, auth: str) -> list[dict[str, Any]] | None:
        """The face-proved payer's mandates in force at every institution (`auth`: her word, purpose
        statement); None when the bank did not answer."""

    def mandate_get(self, mandate_id: str) -> dict[str, Any] | None:
        """The institution's own mandate (state, caps, until); None when the bank does not know it."""

    def senseless_draw(self, payer: str, amount_fen: int, ref: str, key: str, auth: str, mandate_id: str,
                       visit: str) -> DrawResult:
        """A draw under the mandate with the settlement's pay_auth (purpose senseless). status 'ok', a
        MANDATE_REFUSALS code, another decline, or 'unknown' (resolved by sending the same key again)."""


# ---------------------------------------------------------------- keypad + printer
@dataclass(frozen=True)
class KeyEntry:
    """A keypad entry as the bridge reports it (the clear value only once accepted).

    state: 'active' | 'accepted' | 'cancelled' | 'timed_out'; `confirmed` is
    ENTER pressed on an empty entry (the confirm key of the confirm step)."""

    state: str
    masked: str = ""
    length: int = 0
    error: str | None = None
    value: str | None = None
    confirmed: bool = False


class Keypad(Protocol):
    def start(self, timeout_s: float, reveal_last: int = 1) -> str:
        """Switch the keypad on for one entry; returns its handle. `reveal_last` characters stay
        readable in `masked` (4 for the phone digits, which are read from there)."""

    def poll(self, handle: str) -> KeyEntry: ...

    def stop(self, handle: str) -> None:
        """End the entry (keypad off); no-op if it already ended."""


@dataclass(frozen=True)
class PrintResult:
    """status: 'ok' | 'printer_out_of_paper' | 'printer_fault'."""

    status: str


class Printer(Protocol):
    def print_receipt(self, lines: list[str]) -> PrintResult: ...
