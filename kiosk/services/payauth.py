"""`pay_auth`: the centre's signed word that a person authorised one payment at one terminal.

The bank charges a credit line only with one (docs/remote-parties.md, "Who may act on what").
The centre issues it where the person was proved by the face: in the answer of a settlement
made with the ecToken (2207/2102, purpose `draw`, ref = setl_id, amount = psn_cash_pay) and by
`ec.payauth` for an admission's deposit (purpose `hold`, ref = the admission id). It is
signed with the centre's SM2 key, so the bank checks it with the centre's public key alone,
without trusting the terminal that carries it:

    PA1.<base64url(canonical JSON claims)>.<base64url(SM2 r||s over those JSON bytes)>

Claims: `id` (unique per authorised payment; the bank uses it once), `psn_no` (the payer:
the patient), `fixmedins_code` (the payee institution), `app_id` (the terminal), `ref`,
`amount` (fen), `purpose` (draw | hold), `exp` (Unix seconds), `kid` (the centre key's id).
It is not secret (the terminal journals it), only bound: a copy is useless at another
terminal, for another amount or settlement, after it expires, or once used.

Purpose `bind` is the line holder's word that a family member may draw on the line
(`ec.payauth` with the holder's ecToken; ref = the member's psn_no, amount = the monthly cap
in fen, 0 = no cap): a terminal cannot lend anyone's line to anyone on its own.

The bank's other acts on a person's line need that person's face too (`ec.payauth`, the
person's ecToken at this terminal):

| purpose | psn_no | ref | amount |
|---|---|---|---|
| `line` | the payer | the payment it is for (free text) | the cash share to check (fen, > 0) |
| `apply` | the applicant | the applicant's birth date, from the centre's registry | full years insured, from the registry |
| `unbind` | the holder, or the member leaving | the member's psn_no | 0 |
| `statement` | the holder | the holder's psn_no | 0 |
| `repay` | the holder | the repayment (free text) | the repayment (fen, > 0) |

`line` and `statement` read only: the bank checks them but does not spend them (a retry within
their 10 minutes reads again); the others are single use like a draw's.

Senseless outpatient payment (issue 17) adds three purposes, with the claims set unchanged (the terms
travel in `ref`):

| purpose | psn_no | ref | amount |
|---|---|---|---|
| `mandate` | the patient giving the standing authorisation | the terms, `visit=<fen>;day=<fen>;until=<YYYY-MM-DD>;lines=<own|family|own,family>` (`format_terms`) | the per-visit cap (= `visit=`) |
| `mandate_revoke` | the patient (the mandate's payer) | the mandate id | 0 |
| `senseless` | the patient of the visit | `<setl_id>/<mdtrt_id>` (2207 with a visit token) | the settlement's psn_cash_pay |

A return's re-settlement (2207/2102 with `orig_setl_id`) gets a `draw` (or `senseless`) pay_auth whose `id`
names the settlement it replaces: `PD<new setl_id>~<orig setl_id>` (`PV...` for senseless; `return_auth_id`).
The bank draws on it only once the original settlement's draw, if there was one, is refunded in full, and
from then on refuses any new draw on the original's ref (docs/remote-parties.md, "Insurance centre", a return's
re-settlement).

`mandate` and `mandate_revoke` are single use; a `senseless` one is a draw's, but the bank takes it
only under an active mandate of this payer and institution, within its caps.
"""
from __future__ import annotations

import base64
import json
import re
from dataclasses import asdict, dataclass
from datetime import date, datetime, timedelta
from typing import Any

from kiosk.errors import InputError, IntegrityError
from kiosk.security.sm import Sm2PrivateKey, Sm2PublicKey, sm2_sign, sm2_verify

PREFIX = "PA1"
PURPOSES = ("draw", "hold", "bind", "line", "apply", "unbind", "statement", "repay", "mandate", "mandate_revoke",
            "senseless")
POSITIVE = ("draw", "hold", "line", "repay", "mandate", "senseless")  # amount is money to move or cap: > 0
MAX_LEN = 2048
# the centre's settlement ids ("S" + yyyymmdd + 16 hex): a draw's ref. A hold's ref (admission) must never
# look like one: a hold captured under another institution's setl_id would be a draw on that settlement's
# ref, and the real draw of that settlement would be refused (ref already used).
SETTLEMENT_ID = re.compile(r"S[0-9]{8}[0-9A-F]{16}")


def is_settlement_id(ref: str) -> bool:
    return SETTLEMENT_ID.fullmatch(ref) is not None


# ---- mandate terms (purpose `mandate`: the claims are fixed, so the terms are the canonical `ref`) -------------
MANDATE_MAX: int = 2_000_000  # 20,000.00 yuan: no cap above the largest line there is
MANDATE_MAX_DAYS = 366        # until at most a year (and a day) ahead
LINE_SETS = ("own", "family", "own,family")
MANDATE_ID = re.compile(r"M[0-9a-f]{20}")
_TERMS = re.compile(r"visit=([0-9]{1,12});day=([0-9]{1,12});until=([0-9]{4}-[0-9]{2}-[0-9]{2});"
                    r"lines=(own|family|own,family)")  # ASCII digits only (\d is any script's)


@dataclass(frozen=True)
class MandateTerms:
    """What the patient chose on the screen: caps in fen, the last valid Shanghai day, the lines allowed."""

    visit: int
    day: int
    until: date
    lines: tuple[str, ...]

    def text(self) -> str:
        return format_terms(self.visit, self.day, self.until, self.lines)


def format_terms(visit: int, day: int, until: date, lines: tuple[str, ...] | list[str] | str) -> str:
    """The canonical `ref` of a mandate pay_auth (one spelling per terms: the bank compares it as text)."""
    names = lines.split(",") if isinstance(lines, str) else list(lines)
    joined = ",".join(n for n in ("own", "family") if n in names)
    if joined not in LINE_SETS or len(set(names)) != len(names) or set(names) - {"own", "family"}:
        raise ValueError("lines must be own, family or own,family")
    return f"visit={int(visit)};day={int(day)};until={until.isoformat()};lines={joined}"


def parse_terms(ref: str, today: date | None = None, *, field: str = "ref") -> MandateTerms:
    """The terms of a mandate `ref`, checked: canonical form, caps > 0, day >= visit, both <= 20,000.00,
    and (given today) today <= until <= today + 366 days. InputError naming what is wrong."""
    m = _TERMS.fullmatch(ref or "")
    if m is None:
        raise InputError("must be the mandate terms visit=<fen>;day=<fen>;until=<YYYY-MM-DD>;"
                         "lines=<own|family|own,family>", field=field)
    visit, day = int(m.group(1)), int(m.group(2))
    try:
        until = date.fromisoformat(m.group(3))
    except ValueError:
        raise InputError("until is not a real date", field=field) from None
    if str(visit) != m.group(1) or str(day) != m.group(2):
        raise InputError("caps are written in fen without leading zeros", field=field)
    if visit <= 0 or day <= 0:
        raise InputError("the per-visit and per-day caps must be greater than 0", field=field)
    if day < visit:
        raise InputError("the per-day cap must be at least the per-visit cap", field=field)
    if visit > MANDATE_MAX or day > MANDATE_MAX:
        raise InputError("a cap may not exceed 20000.00", field=field)
    if today is not None and not today <= until <= today + timedelta(days=MANDATE_MAX_DAYS):
        raise InputError(f"until must be a day from today to {MANDATE_MAX_DAYS} days ahead", field=field)
    return MandateTerms(visit, day, until, tuple(m.group(4).split(",")))


# ---- a return's re-settlement: its cash authorisation names the settlement it replaces -----------------------
RETURN_LINK = "~"  # "<PD|PV><new setl_id>~<orig setl_id>": no other id the centre signs contains "~"


def return_auth_id(base_id: str, orig_setl_id: str) -> str:
    """The `id` of a re-settlement's draw/senseless pay_auth: the centre signs the link to the settlement
    returned, so the bank draws it only once that settlement's own draw is refunded in full."""
    if RETURN_LINK in base_id or not is_settlement_id(orig_setl_id):
        raise ValueError("a return link needs a plain auth id and a settlement id")
    return f"{base_id}{RETURN_LINK}{orig_setl_id}"


def returned_settlement(auth_id: str) -> str | None:
    """The settlement a re-settlement's pay_auth replaces (its signed id names it), else None."""
    _base, sep, orig = auth_id.partition(RETURN_LINK)
    return orig if sep and is_settlement_id(orig) else None


def senseless_ref(setl_id: str, mdtrt_id: str) -> str:
    """The `ref` of a senseless draw's pay_auth: the settlement and the visit it was charged to."""
    return f"{setl_id}/{mdtrt_id}"
USER_ID = b"kiosk-pay-auth"  # SM2 signer id: a pay_auth signature is never valid as an envelope's


@dataclass(frozen=True)
class PayAuth:
    id: str
    psn_no: str
    fixmedins_code: str
    app_id: str
    ref: str
    amount: int
    purpose: str
    exp: int
    kid: str = ""

    def expired(self, now: datetime) -> bool:
        return self.exp < now.timestamp()


def _b64(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode("ascii")


def _unb64(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def sign(auth: PayAuth, key: Sm2PrivateKey) -> str:
    if auth.purpose not in PURPOSES or auth.amount < 0 or (auth.amount == 0 and auth.purpose in POSITIVE):
        raise ValueError(f"pay_auth needs a purpose of {'/'.join(PURPOSES)} and an amount >= 0 (> 0 for "
                         f"{'/'.join(POSITIVE)})")
    text = json.dumps(asdict(auth), sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    return f"{PREFIX}.{_b64(text)}.{_b64(sm2_sign(key, text, USER_ID))}"


_TYPES = {"id": str, "psn_no": str, "fixmedins_code": str, "app_id": str, "ref": str, "amount": int,
          "purpose": str, "exp": int, "kid": str}


def verify(token: str, pub: Sm2PublicKey) -> PayAuth:
    """The claims of a pay_auth the centre signed; IntegrityError (code `pay_auth_invalid`) otherwise."""
    bad = IntegrityError("pay_auth is not an authorisation signed by the insurance centre",
                         code="pay_auth_invalid", field="input.pay_auth")
    if not isinstance(token, str) or len(token) > MAX_LEN:
        raise bad
    parts = token.split(".")
    if len(parts) != 3 or parts[0] != PREFIX:
        raise bad
    try:
        text, sig = _unb64(parts[1]), _unb64(parts[2])
    except (ValueError, TypeError):
        raise bad from None
    if not sm2_verify(pub, text, sig, USER_ID):
        raise bad
    try:
        claims: Any = json.loads(text)
    except ValueError:
        raise bad from None
    if not isinstance(claims, dict) or set(claims) != set(_TYPES):
        raise bad
    for k, t in _TYPES.items():
        if not isinstance(claims[k], t) or isinstance(claims[k], bool):
            raise bad
    if claims["purpose"] not in PURPOSES:
        raise bad
    return PayAuth(**claims)


def public_key_hex(key: Sm2PrivateKey) -> str:
    return key.public_key().to_bytes().hex()


__all__ = ["LINE_SETS", "MANDATE_ID", "MANDATE_MAX", "POSITIVE", "PURPOSES", "SETTLEMENT_ID", "MandateTerms", "PayAuth",
           "format_terms", "is_settlement_id", "parse_terms", "public_key_hex", "return_auth_id", "returned_settlement",
           "senseless_ref", "sign", "verify"]
