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
"""
from __future__ import annotations

import base64
import json
import re
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from kiosk.errors import IntegrityError
from kiosk.security.sm import Sm2PrivateKey, Sm2PublicKey, sm2_sign, sm2_verify

PREFIX = "PA1"
PURPOSES = ("draw", "hold", "bind", "line", "apply", "unbind", "statement", "repay")
POSITIVE = ("draw", "hold", "line", "repay")  # purposes whose amount is money to move or check: > 0
MAX_LEN = 2048
# the centre's settlement ids ("S" + yyyymmdd + 16 hex): a draw's ref. A hold's ref (admission) must never
# look like one: a hold captured under another institution's setl_id would be a draw on that settlement's
# ref, and the real draw of that settlement would be refused (ref already used).
SETTLEMENT_ID = re.compile(r"S[0-9]{8}[0-9A-F]{16}")


def is_settlement_id(ref: str) -> bool:
    return SETTLEMENT_ID.fullmatch(ref) is not None
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


__all__ = ["POSITIVE", "PURPOSES", "SETTLEMENT_ID", "PayAuth", "is_settlement_id", "public_key_hex", "sign", "verify"]
