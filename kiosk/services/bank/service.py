"""The bank's transactions: kiosk.credit's CreditService behind the platform envelope.

| infno | input | output |
|---|---|---|
| credit.apply | holder, birth_date, insured_years, pay_auth (the applicant's, purpose apply) | line opened: limit (tier) / ineligible_age |
| credit.bind | holder, member, relation, consent, monthly_cap, pay_auth (the holder's, purpose bind) | bound / no_consent / no_line |
| credit.unbind | holder, member, pay_auth (holder's or member's, purpose unbind) | unbound / not_bound |
| credit.line | payer, amount, pay_auth (the payer's, purpose line) | kind own/family, covers 1/0, holder_hint, family_hint? (own line and a family line too) |
| credit.draw | payer, amount, ref (= setl_id), key, pay_auth; senseless: + mandate_id, visit | ref, amount, available |
|  | a return's re-settlement (pay_auth id `...~<orig setl_id>`): only once the original's draw is refunded whole | `original_not_refunded` / `settlement_returned` |
| credit.draw_reverse | key, payer, ref? | reversed / not_drawn (the key is then blocked) / key_ref_mismatch |
| credit.hold / credit.capture / credit.release | payer, amount, ref, key, pay_auth / ref, amount, key / ref, key | ... |
| credit.repay | holder, amount, key, pay_auth (holder's, purpose repay) | interest, principal |
| credit.refund | ref, amount, key | principal, cash |
| credit.statement | holder, pay_auth (holder's, purpose statement) | state, draws, holds, members, mandates |
| credit.mandate | payer, key, pay_auth (payer's, purpose mandate: ref = the terms) | mandate_id, caps, until, lines, holders |
| credit.mandate_revoke | mandate_id, key, pay_auth? (payer's, purpose mandate_revoke) | mandate_id, state |
| credit.mandate_get | mandate_id, visit? | state, caps, used_today (, used_visit) |
| credit.mandates | payer, pay_auth? (payer's, purpose statement, ref = payer) | the payer's mandates in force at every institution (none without the proof) |

The bank's own channel (operator token): `POST /admin/apply`, `/admin/bind`, `/admin/unbind`,
`/admin/line`, `/admin/repay`, `/admin/statement`, `/admin/mandate/revoke`, `/admin/mandate`
(kiosk.services.client.operator_call).

Holder notifications are not a terminal transaction: the operator's sender drains
them through `POST /admin/notifications` (operator token), see `hand_over`.

CreditService runs inside the gateway's transaction (kiosk.storage joins nested
transactions), so the message's msgid, the credit operation's idempotency key,
the journal entry and the stored answer commit together. A credit refusal
(`exceeds_available`, `line_overdue`, ...) is an answer with infcode 3004 and
that code as `err_code`.

Who may act on what (docs/remote-parties.md): a draw or hold needs the centre's signed
`pay_auth` for exactly this payer, terminal, institution, ref and amount, unexpired and
unused (kiosk.services.payauth); a refund, capture, release or draw_reverse reaches only a
draw or hold the caller's institution made, and anything else answers as if it did not
exist. Idempotency keys are scoped by the caller's institution and terminal.
"""
from __future__ import annotations

from collections.abc import Callable
from datetime import date
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, field_validator, model_validator

from kiosk.clock import Clock
from kiosk.credit import CreditService, MandateUse, Owner, Result
from kiosk.clock import local_day
from kiosk.errors import ConflictError, InputError, IntegrityError, KioskError
from kiosk.money import yuan_to_fen
from kiosk.security.sm import Sm2PublicKey
from kiosk.services import payauth
from kiosk.services.bank import clearing
from kiosk.services.bank.clearing import Clearing
from kiosk.services.gateway import Ctx, Route
from kiosk.services.protocol import InfCode, Refusal
from kiosk.storage import Database, Migration, Transaction

MIGRATIONS = [
    Migration("bank.001_draw_keys", [
        """CREATE TABLE bank_draw_keys (
            key TEXT PRIMARY KEY,
            payer TEXT NOT NULL,
            ref TEXT NOT NULL,
            amount BIGINT NOT NULL,
            state TEXT NOT NULL,
            created_at TEXT NOT NULL)""",
    ]),
    Migration("bank.002_pay_auths", [
        # each centre pay_auth the bank accepted, with the key of the payment that used it (single use)
        """CREATE TABLE bank_pay_auths (
            auth_id TEXT PRIMARY KEY,
            key TEXT NOT NULL,
            purpose TEXT NOT NULL,
            ref TEXT NOT NULL,
            psn_no TEXT NOT NULL,
            amount BIGINT NOT NULL,
            fixmedins_code TEXT NOT NULL,
            app_id TEXT NOT NULL,
            used_at TEXT NOT NULL)""",
    ]),
    Migration("bank.003_draw_refs", [
        # each settlement ref a draw was made for ('drawn'), and each one a return replaced ('returned': by_ref
        # re-settled it, drawn on a pay_auth linked to it). One row per ref, so a draw on the original and the
        # re-settlement's draw meet here (the second waits for the first) whichever lines they use.
        """CREATE TABLE bank_draw_refs (
            ref TEXT PRIMARY KEY,
            state TEXT NOT NULL,
            by_ref TEXT NOT NULL,
            created_at TEXT NOT NULL)""",
    ]),
]

_ID = Field(min_length=1, max_length=64)
_KEY = Field(min_length=1, max_length=120, description="idempotency key: the same key replays the first result")


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


def _amount(v: object, info: Any) -> str:
    try:
        fen = yuan_to_fen(v, info.field_name)
    except KioskError as e:
        raise ValueError(e.message) from None
    if fen <= 0 and info.field_name != "monthly_cap":
        raise ValueError("must be greater than 0")
    return f"{fen // 100}.{fen % 100:02d}"


class Apply(_In):
    holder: str = _ID
    birth_date: date
    insured_years: StrictInt = Field(ge=0, le=100)
    pay_auth: str | None = Field(default=None, max_length=payauth.MAX_LEN,
                                 description="the applicant's authorisation from the centre's ec.payauth (purpose "
                                             "apply: ref = the birth date, amount = the years insured, both from the "
                                             "centre's registry, which these fields must repeat); required")


class OperatorApply(_In):
    """`POST /admin/apply`: a line the applicant asked for in the bank's own channel (operator token)."""

    holder: str = _ID
    birth_date: date
    insured_years: StrictInt = Field(ge=0, le=100)
    key: str = _KEY


class Bind(_In):
    holder: str = _ID
    member: str = _ID
    relation: Literal["spouse", "parent", "child"]
    consent: StrictBool = Field(description="the member's consent: JSON true (a string or 1 is refused)")
    monthly_cap: str | None = Field(default=None, description="yuan per calendar month; null = no cap")
    pay_auth: str | None = Field(default=None, max_length=payauth.MAX_LEN,
                                 description="the holder's authorisation from the centre's ec.payauth (purpose bind, "
                                             "ref = member, amount = the cap, 0.00 = none); required")

    _cap = field_validator("monthly_cap", mode="before")(lambda v, info: None if v is None else _amount(v, info))


class OperatorBind(Bind):
    """`POST /admin/bind`: a binding the holder made in the bank's own channel (operator token)."""

    key: str = _KEY


class Unbind(_In):
    holder: str = _ID
    member: str = _ID
    pay_auth: str | None = Field(default=None, max_length=payauth.MAX_LEN,
                                 description="the holder's (or the leaving member's) authorisation from the centre's "
                                             "ec.payauth (purpose unbind, ref = the member); required")


class OperatorUnbind(_In):
    holder: str = _ID
    member: str = _ID
    key: str = _KEY


class LineQuery(_In):
    payer: str = _ID
    amount: str = Field(description="yuan, 2 dp: the cash share the counter wants to draw")
    pay_auth: str | None = Field(default=None, max_length=payauth.MAX_LEN,
                                 description="the payer's authorisation from the centre's ec.payauth (purpose line, "
                                             "this amount); without it the answer is that of a person with no line")

    _amt = field_validator("amount", mode="before")(_amount)


class OperatorLine(_In):
    payer: str = _ID


class Draw(_In):
    payer: str = _ID
    amount: str = Field(description="yuan, 2 dp")
    ref: str = Field(min_length=1, max_length=64, description="the settlement's setl_id")
    key: str = _KEY
    holder: str | None = Field(default=None, max_length=64)
    pay_auth: str = Field(min_length=1, max_length=payauth.MAX_LEN,
                          description="the insurance centre's signed authorisation of this payment (2207/2102 "
                                      "answer for a draw, ec.payauth for a hold)")
    mandate_id: str | None = Field(default=None, pattern=f"^{payauth.MANDATE_ID.pattern}$",
                                   description="senseless draw (pay_auth purpose senseless): the payer's mandate")
    visit: str | None = Field(default=None, min_length=1, max_length=30,
                              description="senseless draw: the visit (mdtrt_id); the pay_auth's ref is ref/visit")

    _amt = field_validator("amount", mode="before")(_amount)

    @model_validator(mode="after")
    def _both(self) -> "Draw":
        if (self.mandate_id is None) != (self.visit is None):
            raise ValueError("a senseless draw names both mandate_id and visit (and a counter draw neither)")
        return self


_MANDATE_ID = Field(pattern=f"^{payauth.MANDATE_ID.pattern}$", description="the bank's mandate id (M + 20 hex digits)")


class Mandate(_In):
    payer: str = _ID
    key: str = _KEY
    pay_auth: str = Field(min_length=1, max_length=payauth.MAX_LEN,
                          description="the payer's word from the centre's ec.payauth (purpose mandate, ref = the "
                                      "terms visit=<fen>;day=<fen>;until=<YYYY-MM-DD>;lines=<own|family|own,family>, "
                                      "amount = the per-visit cap)")


class MandateRevoke(_In):
    mandate_id: str = _MANDATE_ID
    key: str = _KEY
    pay_auth: str | None = Field(default=None, max_length=payauth.MAX_LEN,
                                 description="the payer's word (purpose mandate_revoke, ref = mandate_id): any "
                                             "terminal; without it only a terminal of the mandate's institution")


class Mandates(_In):
    payer: str = _ID
    pay_auth: str | None = Field(default=None, max_length=payauth.MAX_LEN,
                                 description="the payer's word from the centre's ec.payauth (purpose statement, ref = "
                                             "the payer: the person reads her own credit record); without it the "
                                             "answer is that of a person with none")


class MandateGet(_In):
    mandate_id: str = _MANDATE_ID
    visit: str | None = Field(default=None, min_length=1, max_length=30, description="also: used on this visit")


class OperatorMandateRevoke(_In):
    mandate_id: str = _MANDATE_ID
    key: str = Field(default="", max_length=120, description="optional idempotency key")


class OperatorMandate(_In):
    mandate_id: str = _MANDATE_ID


class DrawReverse(_In):
    key: str = _KEY
    payer: str = _ID
    ref: str = Field(default="", max_length=64, description="the ref the draw was for (setl_id): a key that "
                     "drew for another ref is not reversed (key_ref_mismatch)")


class Capture(_In):
    ref: str = Field(min_length=1, max_length=64)
    amount: str
    key: str = _KEY
    holder: str | None = Field(default=None, max_length=64)

    @field_validator("amount", mode="before")
    @classmethod
    def _amt(cls, v: object, info: Any) -> str:
        try:
            fen = yuan_to_fen(v, "amount")
        except KioskError as e:
            raise ValueError(e.message) from None
        return f"{fen // 100}.{fen % 100:02d}"


class Release(_In):
    ref: str = Field(min_length=1, max_length=64)
    key: str = _KEY
    holder: str | None = Field(default=None, max_length=64)


class Repay(_In):
    holder: str = _ID
    amount: str
    key: str = _KEY
    pay_auth: str | None = Field(default=None, max_length=payauth.MAX_LEN,
                                 description="the holder's authorisation from the centre's ec.payauth (purpose repay, "
                                             "this amount); required")

    _amt = field_validator("amount", mode="before")(_amount)


class OperatorRepay(_In):
    holder: str = _ID
    amount: str
    key: str = _KEY

    _amt = field_validator("amount", mode="before")(_amount)


class Refund(_In):
    ref: str = Field(min_length=1, max_length=64)
    amount: str
    key: str = _KEY
    holder: str | None = Field(default=None, max_length=64)

    _amt = field_validator("amount", mode="before")(_amount)


class OperatorStatement(_In):
    holder: str = _ID


class Statement(_In):
    holder: str = _ID
    pay_auth: str | None = Field(default=None, max_length=payauth.MAX_LEN,
                                 description="the holder's authorisation from the centre's ec.payauth (purpose "
                                             "statement); without it the answer is that of a person with no line")


def _fen(yuan: str) -> int:
    return yuan_to_fen(yuan, "amount")


def _answer(r: Result, **extra: Any) -> dict[str, Any] | Refusal:
    if r.ok:
        return {**r.detail, **extra}
    return Refusal(InfCode.BUSINESS_REFUSED, _MESSAGES.get(r.code, r.code.replace("_", " ")), code=r.code)


_MESSAGES = {
    "ineligible_age": "the holder must be aged 18 to 60 on the day of application",
    "already_open": "this person already has a credit line",
    "no_line": "no credit line",
    "no_consent": "the member's consent is required to bind them",
    "not_bound": "the payer has no credit line and is not bound to a family line",
    "line_overdue": "the line is overdue: repay the draws past day 59 first",
    "exceeds_available": "the amount exceeds the credit available",
    "member_cap_exceeded": "the amount exceeds this member's monthly cap",
    "exceeds_hold": "the capture exceeds the hold",
    "unknown_ref": "no draw or hold with this ref",
    "exceeds_original": "refunds would exceed the draw's original amount",
    "overpayment": "the repayment exceeds what is owed",
    "no_mandate": "no senseless-payment mandate of this payer at this institution: the patient is needed",
    "unknown_mandate": "no such mandate",
    "mandate_revoked": "the mandate was revoked: the patient is needed",
    "mandate_expired": "the mandate has expired: the patient is needed",
    "line_not_allowed": "the mandate does not allow this line: the patient is needed",
    "mandate_cap_visit": "the charge would exceed the mandate's per-visit cap: the patient is needed",
    "mandate_cap_day": "the charge would exceed the mandate's per-day cap: the patient is needed",
}


def _for_terminal(r: Result) -> Result:
    """A terminal learns of a family line only its holder's last 4 characters (as `credit.line` gives it):
    the holder's number is the bank's and the holder's business (the operator and the statement show it)."""
    holders = r.detail.get("holders") if r.ok else None
    if not holders or not holders.get("family"):
        return r
    return Result(r.code, {**r.detail, "holders": {**holders, "family": str(holders["family"])[-4:]}})


class BankService:
    def __init__(self, db: Database, clock: Clock,
                 centre_key: Callable[[], Sm2PublicKey | None] | None = None) -> None:
        self.db = db
        self.clock = clock
        self.credit = CreditService(db, clock)
        self.centre_key = centre_key or (lambda: None)
        db.migrate(MIGRATIONS)

    def _key(self, ctx: Ctx, key: str) -> str:
        """Credit idempotency keys are the caller's: scoped by its institution and terminal, so two
        institutions' (or terminals') equal keys never meet, and no one can replay or reverse another's."""
        return f"{ctx.terminal.fixmedins_code}/{ctx.terminal.app_id}/{key}"

    @staticmethod
    def _owner(ctx: Ctx) -> Owner:
        return Owner(ctx.terminal.fixmedins_code, ctx.terminal.app_id)

    def _authorised(self, ctx: Ctx, tx: Transaction, token: str | None, purpose: str, key: str, *,
                    psn_no: str | tuple[str, ...], ref: str | None, amount: int | None) -> tuple[bool, str]:
        """Check the act's pay_auth and claim it for `key`; (newly claimed, auth id). Raises a Refusal
        (everything rolls back) when the centre's signature, the binding (person, terminal,
        institution, ref, amount, purpose), the expiry or single use fails."""
        if not token:
            raise Refusal(InfCode.NO_AUTHORISATION, "the insurance centre's pay_auth for this act is required",
                          code="pay_auth_required", field="input.pay_auth")
        pub = self.centre_key()
        if pub is None:
            raise Refusal(InfCode.INTERNAL, "the bank does not know the insurance centre's public key; nothing "
                          "was charged", code="centre_key_unknown", field="input.pay_auth")
        try:
            a = payauth.verify(token, pub)
        except IntegrityError as e:
            raise Refusal(InfCode.NO_AUTHORISATION, e.message, code="pay_auth_invalid",
                          field="input.pay_auth") from None
        t = ctx.terminal
        wrong = ("purpose" if a.purpose != purpose else
                 "terminal" if a.app_id != t.app_id or a.fixmedins_code != t.fixmedins_code else
                 "person" if a.psn_no not in ((psn_no,) if isinstance(psn_no, str) else psn_no) else
                 "ref" if ref is not None and a.ref != ref else
                 "amount" if amount is not None and a.amount != amount else "")
        if wrong:
            raise Refusal(InfCode.NO_AUTHORISATION, f"pay_auth does not authorise this {purpose}: its {wrong} "
                          "differs", code="pay_auth_mismatch", field="input.pay_auth")
        claimed = tx.fetch_one(
            "INSERT INTO bank_pay_auths (auth_id, key, purpose, ref, psn_no, amount, fixmedins_code, app_id, used_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (auth_id) DO NOTHING RETURNING auth_id",
            (a.id, key, purpose, a.ref, a.psn_no, a.amount, a.fixmedins_code, a.app_id, ctx.now.isoformat()))
        if claimed is None:
            if tx.scalar("SELECT key FROM bank_pay_auths WHERE auth_id = ?", (a.id,)) != key:
                raise Refusal(InfCode.NO_AUTHORISATION, "pay_auth was already used for another payment",
                              code="pay_auth_used", field="input.pay_auth")
            return False, a.id  # the same payment again (same key): its first answer is replayed
        if a.expired(ctx.now):
            raise Refusal(InfCode.NO_AUTHORISATION, "pay_auth has expired; ask the insurance centre again "
                          "(5203 re-issues a settlement's)", code="pay_auth_expired", field="input.pay_auth")
        return True, a.id

    def _proves(self, ctx: Ctx, token: str | None, purpose: str, psn_no: str, *, ref: str | None = None,
                amount: int | None = None) -> bool:
        """A read-only act's proof (line, statement): the centre's signature, this purpose, this terminal
        and institution, this person (ref, amount), unexpired. Not spent: a read may be retried. Never
        a refusal of its own: the caller answers as for a person with nothing to show (no oracle)."""
        pub = self.centre_key()
        if not token or pub is None:
            return False
        try:
            a = payauth.verify(token, pub)
        except IntegrityError:
            return False
        t = ctx.terminal
        return (a.purpose == purpose and a.app_id == t.app_id and a.fixmedins_code == t.fixmedins_code
                and a.psn_no == psn_no and (ref is None or a.ref == ref) and (amount is None or a.amount == amount)
                and not a.expired(ctx.now))

    def _release(self, tx: Transaction, r: Result, auth_new: bool, auth_id: str) -> None:
        """A refused act spends no authorisation (the person may try again, e.g. after a repayment)."""
        if not r.ok and auth_new:
            tx.execute("DELETE FROM bank_pay_auths WHERE auth_id = ?", (auth_id,))

    @staticmethod
    def _guard(fn: Any, *a: Any, **kw: Any) -> Result:
        try:
            return fn(*a, **kw)
        except ConflictError as e:
            raise Refusal(InfCode.MSGID_CONFLICT, "key was already used for a different operation",
                          code=e.code, field="input.key") from None

    def apply(self, ctx: Ctx, tx: Transaction, d: Apply) -> dict[str, Any] | Refusal:
        """A line is opened only on the applicant's own face (pay_auth purpose apply), with the birth date
        and years insured the centre signed: no terminal opens a line for anyone, or for a better tier."""
        auth_new, auth_id = self._authorised(ctx, tx, d.pay_auth, "apply",
                                             self._key(ctx, f"apply/{ctx.request.msgid}"), psn_no=d.holder,
                                             ref=d.birth_date.isoformat(), amount=d.insured_years)
        r = self._guard(self.credit.open, f"{ctx.terminal.app_id}/{ctx.request.msgid}", d.holder, d.birth_date,
                        d.insured_years)
        self._release(tx, r, auth_new, auth_id)
        return _answer(r, holder=d.holder)

    def apply_by_operator(self, d: OperatorApply) -> dict[str, Any] | Refusal:
        """The bank's own channel (the applicant authenticated by the bank): seeding, demos, branches."""
        return _answer(self.credit.open(f"operator/{d.key}", d.holder, d.birth_date, d.insured_years),
                       holder=d.holder)

    def bind(self, ctx: Ctx, tx: Transaction, d: Bind) -> dict[str, Any] | Refusal:
        """A family binding lends the holder's line: only with the holder's own authorisation (the centre's
        pay_auth of purpose bind, from the holder's face at this terminal) for this member and cap."""
        cap = None if d.monthly_cap is None else _fen(d.monthly_cap)
        key = f"{ctx.terminal.app_id}/{ctx.request.msgid}"
        auth_new, auth_id = self._authorised(ctx, tx, d.pay_auth, "bind", self._key(ctx, f"bind/{ctx.request.msgid}"),
                                             psn_no=d.holder, ref=d.member, amount=cap or 0)
        r = self._guard(self.credit.bind, key, d.holder, d.member, d.relation, d.consent, cap)
        self._release(tx, r, auth_new, auth_id)
        return _answer(r, holder=d.holder, member=d.member, bound="1")

    def bind_by_operator(self, d: OperatorBind) -> dict[str, Any] | Refusal:
        """The bank's own channel (the holder authenticated by the bank, e.g. its app or branch): the
        operator records a binding the holder made there (seeding, demos)."""
        cap = None if d.monthly_cap is None else _fen(d.monthly_cap)
        r = self.credit.bind(f"operator/{d.key}", d.holder, d.member, d.relation, d.consent, cap)
        return _answer(r, holder=d.holder, member=d.member, bound="1")

    def unbind(self, ctx: Ctx, tx: Transaction, d: Unbind) -> dict[str, Any] | Refusal:
        """Only the holder (withdrawing the loan of the line) or the member (leaving it), by face."""
        auth_new, auth_id = self._authorised(ctx, tx, d.pay_auth, "unbind",
                                             self._key(ctx, f"unbind/{ctx.request.msgid}"),
                                             psn_no=(d.holder, d.member), ref=d.member, amount=0)
        r = self._guard(self.credit.unbind, f"{ctx.terminal.app_id}/{ctx.request.msgid}", d.holder, d.member)
        self._release(tx, r, auth_new, auth_id)
        return _answer(r, holder=d.holder, member=d.member, bound="0")

    def unbind_by_operator(self, d: OperatorUnbind) -> dict[str, Any] | Refusal:
        return _answer(self.credit.unbind(f"operator/{d.key}", d.holder, d.member), holder=d.holder,
                       member=d.member, bound="0")

    def line(self, ctx: Ctx, tx: Transaction, d: LineQuery) -> dict[str, Any] | Refusal:
        """What the counter needs to offer the line, for the face-proved payer only (pay_auth purpose line,
        this amount): own or family, whether it covers the amount now, and the last 4 characters of a
        family holder's number for the screen. No limit, balance, holder number or overdue state. Without
        the proof the answer is exactly that of a person with no line."""
        nothing = Refusal(InfCode.BUSINESS_REFUSED, _MESSAGES["not_bound"], code="not_bound", field="input.payer")
        amount = _fen(d.amount)
        if not self._proves(ctx, d.pay_auth, "line", d.payer, amount=amount):
            return nothing
        holder, covers = self.credit.covers(d.payer, amount)
        if holder is None:
            return nothing
        family = holder != d.payer
        # a payer with an own line who is also bound to a family line may let a mandate use either or both:
        # the face-proved payer is told that one exists, by its holder's last 4 characters only
        also = None if family else tx.scalar(
            "SELECT l.holder FROM credit_members m JOIN credit_lines l ON l.id = m.line_id "
            "WHERE m.member = ? AND m.active = 1", (d.payer,))
        return {"payer": d.payer, "kind": "family" if family else "own", "amount": d.amount,
                "covers": "1" if covers else "0", "holder_hint": holder[-4:] if family else "",
                **({"family_hint": str(also)[-4:]} if also else {})}

    def line_for_operator(self, d: OperatorLine) -> dict[str, Any] | Refusal:
        """The bank's own channel sees the whole line (limit, balances, overdue)."""
        holder = self.db.run(lambda tx: tx.scalar("SELECT holder FROM credit_lines WHERE holder = ?", (d.payer,)))
        kind = "own"
        if holder is None:
            holder = self.db.run(lambda tx: tx.scalar(
                "SELECT l.holder FROM credit_members m JOIN credit_lines l ON l.id = m.line_id "
                "WHERE m.member = ? AND m.active = 1", (d.payer,)))
            kind = "family"
        if holder is None:
            return Refusal(InfCode.BUSINESS_REFUSED, _MESSAGES["not_bound"], code="not_bound", field="payer")
        st = self.credit.state(holder)
        return {"payer": d.payer, "holder": holder, "line_id": holder, "kind": kind, **st.to_json()}

    def draw(self, ctx: Ctx, tx: Transaction, d: Draw) -> dict[str, Any] | Refusal:
        key = self._key(ctx, d.key)
        amount = _fen(d.amount)
        # Claim the key first: a concurrent draw (or draw_reverse) with this key waits here for ours to
        # commit, then replays it or is refused. (Read-then-insert let two in-flight draws with one key
        # both see no row; the second replayed the charge, then failed its insert with a 9001.)
        claimed = tx.fetch_one("INSERT INTO bank_draw_keys (key, payer, ref, amount, state, created_at) "
                               "VALUES (?, ?, ?, ?, 'drawn', ?) ON CONFLICT (key) DO NOTHING RETURNING key",
                               (key, d.payer, d.ref, amount, ctx.now.isoformat()))
        if claimed is None:
            row = tx.fetch_one("SELECT state FROM bank_draw_keys WHERE key = ?" + tx.for_update, (key,))
            if row is not None and row[0] in ("blocked", "reversed"):
                return Refusal(InfCode.ALREADY_REVERSED, "this draw was reversed (credit.draw_reverse); not charged",
                               code="draw_reversed", field="input.key")
        # a counter draw carries the payer's `draw` word; a visit's charge without the payer its `senseless`
        # word (ref setl_id/visit) and runs under the payer's mandate: neither stands in for the other
        use = MandateUse(d.mandate_id, d.visit) if d.mandate_id is not None and d.visit is not None else None
        auth_new, auth_id = self._authorised(ctx, tx, d.pay_auth, "senseless" if use else "draw", key,
                                             psn_no=d.payer, ref=payauth.senseless_ref(d.ref, d.visit or "")
                                             if use else d.ref, amount=amount)
        r = self._guard(self.credit.draw, key, d.payer, amount, d.ref, d.holder, owner=self._owner(ctx), mandate=use)
        if not r.ok:  # refused: nothing drawn under this key, and the authorisation is not spent
            if claimed is not None:
                tx.execute("DELETE FROM bank_draw_keys WHERE key = ?", (key,))
            if auth_new:
                tx.execute("DELETE FROM bank_pay_auths WHERE auth_id = ?", (auth_id,))
        elif claimed is not None:
            self._claim_refs(ctx, tx, d.ref, payauth.returned_settlement(auth_id))
        return _answer(r, draw_id=d.ref, payer=d.payer)

    @staticmethod
    def _claim_refs(ctx: Ctx, tx: Transaction, ref: str, orig: str | None) -> None:
        """A return's re-settlement is drawn only after the original's draw was refunded whole, and the
        original is never drawn after it: else a terminal that reversed its own sale without refunding the
        draw, then drew the re-settlement, charged the patient twice. After the draw (a Refusal raised
        here rolls it back); both sides write the original's row in bank_draw_refs, so concurrent ones
        serialise there and the later one sees the other's draw."""
        now = ctx.now.isoformat()
        if tx.fetch_one("INSERT INTO bank_draw_refs (ref, state, by_ref, created_at) VALUES (?, 'drawn', '', ?) "
                        "ON CONFLICT (ref) DO NOTHING RETURNING ref", (ref, now)) is None and tx.scalar(
                "SELECT state FROM bank_draw_refs WHERE ref = ?", (ref,)) == "returned":
            raise Refusal(InfCode.BUSINESS_REFUSED, "this settlement was returned and re-settled: it is not "
                          "drawn on any more; nothing was charged", code="settlement_returned", field="input.ref")
        if orig is None:
            return
        if tx.fetch_one("INSERT INTO bank_draw_refs (ref, state, by_ref, created_at) VALUES (?, 'returned', ?, ?) "
                        "ON CONFLICT (ref) DO UPDATE SET state = 'returned', by_ref = excluded.by_ref "
                        "WHERE bank_draw_refs.state = 'drawn' OR bank_draw_refs.by_ref = excluded.by_ref "
                        "RETURNING ref", (orig, ref, now)) is None:
            # already replaced by another re-settlement (the centre re-settles a settlement once)
            raise Refusal(InfCode.BUSINESS_REFUSED, f"settlement {orig} was already replaced by another "
                          "re-settlement; nothing was charged", code="settlement_returned", field="input.pay_auth")
        left = tx.fetch_one("SELECT original_fen - refunded_fen FROM credit_draws WHERE ref = ?", (orig,))
        if left is not None and int(left[0]) > 0:
            raise Refusal(InfCode.BUSINESS_REFUSED, f"the draw of settlement {orig}, which this re-settlement "
                          "replaces, is not refunded in full: refund it (credit.refund) first; nothing was charged",
                          code="original_not_refunded", field="input.pay_auth")

    def draw_reverse(self, ctx: Ctx, tx: Transaction, d: DrawReverse) -> dict[str, Any] | Refusal:
        key = self._key(ctx, d.key)  # the caller's own keys only: another's draw cannot be named
        # claim first (as draw does): a draw in flight with this key is waited for, then reversed
        if tx.fetch_one("INSERT INTO bank_draw_keys (key, payer, ref, amount, state, created_at) "
                        "VALUES (?, ?, '', 0, 'blocked', ?) ON CONFLICT (key) DO NOTHING RETURNING key",
                        (key, d.payer, ctx.now.isoformat())) is not None:
            return {"key": d.key, "result": "not_drawn"}
        row = tx.fetch_one("SELECT state, ref, amount, payer FROM bank_draw_keys WHERE key = ?" + tx.for_update,
                           (key,))
        if row[0] != "drawn":
            return {"key": d.key, "result": "already_reversed", "ref": row[1]}
        if d.ref and d.ref != row[1]:  # two orders under one key (e.g. two POS systems): never the other's
            return Refusal(InfCode.BUSINESS_REFUSED, "this key drew for another ref; nothing was reversed",
                           code="key_ref_mismatch", field="input.ref")
        # what is left of this draw (a partial refund may have come first): never more
        left = tx.fetch_one("SELECT original_fen - refunded_fen FROM credit_draws WHERE ref = ?", (row[1],))
        detail: dict[str, Any] = {}
        if left is not None and int(left[0]) > 0:
            r = self._guard(self.credit.refund, f"{key}/reverse", row[1], int(left[0]),
                            institution=ctx.terminal.fixmedins_code)
            if not r.ok:
                return _answer(r)
            detail = r.detail
        tx.execute("UPDATE bank_draw_keys SET state = 'reversed' WHERE key = ?", (key,))
        return {"key": d.key, "result": "reversed", "ref": row[1], **detail}

    def hold(self, ctx: Ctx, tx: Transaction, d: Draw) -> dict[str, Any] | Refusal:
        if d.mandate_id is not None:
            raise Refusal(InfCode.INVALID_INPUT, "a deposit hold never runs under a mandate", field="input.mandate_id")
        if payauth.is_settlement_id(d.ref):  # a deposit is never held under a settlement's ref (payauth)
            raise Refusal(InfCode.INVALID_INPUT, "must be the admission's reference, never a settlement id",
                          field="input.ref")
        key = self._key(ctx, d.key)
        auth_new, auth_id = self._authorised(ctx, tx, d.pay_auth, "hold", key, psn_no=d.payer, ref=d.ref,
                                             amount=_fen(d.amount))
        r = self._guard(self.credit.hold, key, d.payer, _fen(d.amount), d.ref, d.holder, owner=self._owner(ctx))
        if not r.ok and auth_new:
            tx.execute("DELETE FROM bank_pay_auths WHERE auth_id = ?", (auth_id,))
        return _answer(r, hold_id=d.ref)

    def capture(self, ctx: Ctx, tx: Transaction, d: Capture) -> dict[str, Any] | Refusal:
        """Discharge: only the institution that placed the hold, never above it (kiosk.credit)."""
        r = self._guard(self.credit.capture, self._key(ctx, d.key), d.ref, _fen(d.amount), d.holder,
                        institution=ctx.terminal.fixmedins_code)
        return _answer(r, ref=d.ref, draw_id=d.ref)

    def release(self, ctx: Ctx, tx: Transaction, d: Release) -> dict[str, Any] | Refusal:
        r = self._guard(self.credit.release, self._key(ctx, d.key), d.ref, d.holder,
                        institution=ctx.terminal.fixmedins_code)
        return _answer(r, ref=d.ref)

    def repay(self, ctx: Ctx, tx: Transaction, d: Repay) -> dict[str, Any] | Refusal:
        """Only with the holder's face (pay_auth purpose repay, this amount): the answer tells what is owed
        (`overpayment`) and that a line exists, which is the holder's business."""
        key = self._key(ctx, d.key)
        auth_new, auth_id = self._authorised(ctx, tx, d.pay_auth, "repay", key, psn_no=d.holder, ref=None,
                                             amount=_fen(d.amount))
        r = self._guard(self.credit.repay, key, d.holder, _fen(d.amount))
        self._release(tx, r, auth_new, auth_id)
        return _answer(r, holder=d.holder)

    def repay_by_operator(self, d: OperatorRepay) -> dict[str, Any] | Refusal:
        return _answer(self.credit.repay(f"operator/{d.key}", d.holder, _fen(d.amount)), holder=d.holder)

    def refund(self, ctx: Ctx, tx: Transaction, d: Refund) -> dict[str, Any] | Refusal:
        """Only the institution that drew, only its own draw, never above what is left of it."""
        r = self._guard(self.credit.refund, self._key(ctx, d.key), d.ref, _fen(d.amount), d.holder,
                        institution=ctx.terminal.fixmedins_code)
        return _answer(r, ref=d.ref)

    def statement(self, ctx: Ctx, tx: Transaction, d: Statement) -> dict[str, Any] | Refusal:
        """The holder's own statement: only with the holder's face at this terminal (pay_auth purpose
        statement); anything else answers as for a person with no line."""
        if not self._proves(ctx, d.pay_auth, "statement", d.holder, ref=d.holder):
            return Refusal(InfCode.BUSINESS_REFUSED, _MESSAGES["no_line"], code="no_line", field="input.holder")
        return self.statement_for(d.holder, field="input.holder")

    def statement_for(self, holder: str, field: str = "holder") -> dict[str, Any] | Refusal:
        s = self.credit.statement(holder)
        if s.get("code") != "ok":
            return Refusal(InfCode.BUSINESS_REFUSED, _MESSAGES["no_line"], code="no_line", field=field)
        s.pop("code")
        return s

    # ---- mandates: senseless outpatient payment ---------------------------------------------------------
    def _verified(self, token: str) -> payauth.PayAuth:
        pub = self.centre_key()
        if pub is None:
            raise Refusal(InfCode.INTERNAL, "the bank does not know the insurance centre's public key; nothing "
                          "was recorded", code="centre_key_unknown", field="input.pay_auth")
        try:
            return payauth.verify(token, pub)
        except IntegrityError as e:
            raise Refusal(InfCode.NO_AUTHORISATION, e.message, code="pay_auth_invalid",
                          field="input.pay_auth") from None

    def mandate(self, ctx: Ctx, tx: Transaction, d: Mandate) -> dict[str, Any] | Refusal:
        """The payer's standing authorisation of senseless payment at the caller's institution: only on the
        payer's own word (pay_auth purpose mandate, from the face at this terminal), whose signed ref carries
        the terms; the bank re-reads them (form, caps <= 20,000.00, until not past), never the terminal's."""
        key = self._key(ctx, f"mandate/{d.key}")
        a = self._verified(d.pay_auth)
        if a.purpose != "mandate":
            raise Refusal(InfCode.NO_AUTHORISATION, "pay_auth does not authorise this mandate: its purpose differs",
                          code="pay_auth_mismatch", field="input.pay_auth")
        try:
            terms = payauth.parse_terms(a.ref, field="input.pay_auth")
        except InputError:
            raise Refusal(InfCode.NO_AUTHORISATION, "pay_auth does not authorise this mandate: its terms are not "
                          "ones the centre signs", code="pay_auth_mismatch", field="input.pay_auth") from None
        auth_new, auth_id = self._authorised(ctx, tx, d.pay_auth, "mandate", key, psn_no=d.payer, ref=a.ref,
                                             amount=terms.visit)
        if auth_new and terms.until < local_day(ctx.now):  # (a replay of the same key answers as before)
            raise Refusal(InfCode.BUSINESS_REFUSED, _MESSAGES["mandate_expired"], code="mandate_expired",
                          field="input.pay_auth")
        r = self._guard(self.credit.mandate, key, d.payer, self._owner(ctx), terms.visit, terms.day, terms.until,
                        terms.lines, a.id)
        self._release(tx, r, auth_new, auth_id)
        return _answer(_for_terminal(r))

    def mandate_revoke(self, ctx: Ctx, tx: Transaction, d: MandateRevoke) -> dict[str, Any] | Refusal:
        """A terminal of the mandate's institution (it may always give up its own authority), or any terminal
        with the payer's word for this mandate (pay_auth purpose mandate_revoke). Anyone else: the answer
        of a mandate that does not exist."""
        key = self._key(ctx, f"mandate_revoke/{d.key}")
        payer, auth_new, auth_id = None, False, ""
        if d.pay_auth:
            a = self._verified(d.pay_auth)  # the proof is judged before the mandate is looked at
            auth_new, auth_id = self._authorised(ctx, tx, d.pay_auth, "mandate_revoke", key, psn_no=a.psn_no,
                                                 ref=d.mandate_id, amount=0)
            payer = a.psn_no
        r = self._guard(self.credit.mandate_revoke, key, d.mandate_id, institution=ctx.terminal.fixmedins_code,
                        payer=payer, by=f"{'payer' if payer else 'institution'}:{ctx.terminal.app_id}")
        self._release(tx, r, auth_new, auth_id)
        return _answer(r)

    def mandate_revoke_by_operator(self, d: OperatorMandateRevoke) -> dict[str, Any] | Refusal:
        """The bank's own channel (the payer asked the bank: app, phone, branch)."""
        return _answer(self.credit.mandate_revoke(f"operator/mandate_revoke/{d.key or d.mandate_id}", d.mandate_id,
                                                  operator=True, by="operator"))

    def mandate_for_operator(self, d: OperatorMandate) -> dict[str, Any] | Refusal:
        return _answer(self.credit.mandate_get(d.mandate_id, institution=None))

    def mandates(self, ctx: Ctx, tx: Transaction, d: Mandates) -> dict[str, Any]:
        """The face-proved payer's mandates in force at every institution (what she may revoke at any
        terminal with her word, purpose mandate_revoke). Only with her proof at this terminal (pay_auth
        purpose statement, ref = the payer; read-only, not spent); anything else answers as for a person
        with none. A family holder is shown by the last 4 characters only."""
        if not self._proves(ctx, d.pay_auth, "statement", d.payer, ref=d.payer):
            return {"payer": d.payer, "mandates": []}
        out = []
        for m in self.credit.mandates_of(d.payer):
            fam = (m.get("holders") or {}).get("family")
            out.append({**m, "holders": {**m["holders"], "family": str(fam)[-4:] if fam else None}})
        return {"payer": d.payer, "mandates": out}

    def mandate_get(self, ctx: Ctx, tx: Transaction, d: MandateGet) -> dict[str, Any] | Refusal:
        """The institution's own mandate: state, caps, used today (and on the visit named)."""
        return _answer(_for_terminal(self.credit.mandate_get(d.mandate_id, institution=ctx.terminal.fixmedins_code,
                                                             visit=d.visit)))

    def clearing(self, ctx: Ctx, tx: Transaction, d: Clearing) -> dict[str, Any]:
        """credit.clearing: the caller's institution's statement for the day; another institution's is
        answered as one with nothing (never read)."""
        mine = ctx.terminal.fixmedins_code
        asked = d.fixmedins_code or mine
        return clearing.statement(tx, asked, d.day, readable=asked == mine)

    def hand_over(self, tx: Transaction, now: Any, limit: int = 100) -> dict[str, Any]:
        """Hand queued holder notifications to the operator's sender (SMS/app); they are marked sent.

        The day's sweep runs first, so "due soon" and "overdue" notices are queued even on
        lines nobody drew on today (a no-op for lines already accrued through today). Only the
        operator may call this (a terminal could otherwise swallow every holder's notices)."""
        self.credit.sweep()
        msgs = self.credit.outbox.pending(self.db, limit)
        for m in msgs:
            tx.execute("UPDATE outbox SET sent_at = ?, attempts = attempts + 1 WHERE id = ? AND sent_at IS NULL",
                       (now.isoformat(), m.id))
        return {"messages": [{"id": m.id, "topic": m.topic, "payload": m.payload, "created_at": m.created_at}
                             for m in msgs]}

    def routes(self) -> dict[str, Route]:
        table: list[tuple[str, type[BaseModel], Any, str]] = [
            ("credit.apply", Apply, self.apply, "open a credit line: eligibility (18-60) and limit tier"),
            ("credit.bind", Bind, self.bind, "bind a family member to the holder's line (consent recorded)"),
            ("credit.unbind", Unbind, self.unbind, "unbind a family member"),
            ("credit.line", LineQuery, self.line, "the line a payer uses (own or family) and what is available"),
            ("credit.draw", Draw, self.draw, "charge a settlement's cash share (idempotent by key; ref = setl_id)"),
            ("credit.draw_reverse", DrawReverse, self.draw_reverse,
             "undo the draw made with key (full refund), or block the key if it never arrived"),
            ("credit.hold", Draw, self.hold, "inpatient deposit: hold part of the line"),
            ("credit.capture", Capture, self.capture, "discharge: capture the actual self-pay, release the rest"),
            ("credit.release", Release, self.release, "release a hold"),
            ("credit.repay", Repay, self.repay, "repay: interest first, then oldest principal"),
            ("credit.refund", Refund, self.refund, "refund of a paid bill to its draw"),
            ("credit.statement", Statement, self.statement, "the holder's statement"),
            ("credit.mandate", Mandate, self.mandate,
             "the payer's standing authorisation of senseless outpatient payment at this institution"),
            ("credit.mandate_revoke", MandateRevoke, self.mandate_revoke,
             "end a mandate: its institution, or any terminal with the payer's word"),
            ("credit.mandate_get", MandateGet, self.mandate_get, "the institution's own mandate: state, caps, used"),
            ("credit.mandates", Mandates, self.mandates,
             "the face-proved payer's mandates in force at every institution (to revoke at any terminal)"),
            ("credit.clearing", Clearing, self.clearing,
             "the institution's clearing statement for a day: draws, captures, refunds, net due (own only)"),
        ]
        return {code: Route(code, model, fn, summary, needs_sign_in=False) for code, model, fn, summary in table}
