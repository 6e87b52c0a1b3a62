"""The national insurance platform's message envelope (SM4 payload + SM2 signature).

Conventions (docs platform-interface.md, "Encryption and signature"), matched to
the platform's public client code:
- data key: SM4-ECB(key = first 16 chars of appId, plaintext = appSecret, PKCS#7);
  the first 16 upper-case hex characters of the ciphertext, as ASCII, are the key.
- encData: upper-case hex of SM4-ECB-PKCS#7(data key, compact JSON of the payload
  with every non-ASCII character as a \\uXXXX escape, as the platform's client
  sends it; any JSON parser reads it back unchanged).
- signData: Base64 of the SM2 signature (SM3, user id 1234567812345678, raw r||s)
  over the envelope's non-empty fields except signData/encData/extra, sorted by
  name, as `k=v` joined by `&`, with `&key=<appSecret>` appended.

Which fields are signed, and why the plaintext: the platform's public client
builds the request `{appId, data, encType, signType, timestamp, version}`, signs
it (dropping signData, encData and extra), then encrypts `data` into encData and
removes `data`. So the signed text holds appId, encType, signType, timestamp,
version and `data=<payload>` (serialised by `canonical_data`), never encData: the
signature covers what the receiver acts on, a receiver decrypts first and then
verifies, and a wrong data key or tampered encData fails as surely as a forged
field. Checked against an independent implementation of that client (sm-crypto)
in tests/security/test_envelope.py. The printed envelope has exactly appId,
encType, signType, timestamp, version, encData, signData (`data` is never sent).
`timestamp` is milliseconds since the epoch (the services' anti-replay window).

Building or opening is pure computation (no I/O); time comes from an injected Clock.
"""
from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Mapping

from kiosk.clock import Clock, SystemClock
from kiosk.errors import InputError, IntegrityError
from kiosk.security.sm import (
    DEFAULT_USER_ID,
    Sm2PrivateKey,
    Sm2PublicKey,
    sm2_sign,
    sm2_verify,
    sm4_ecb_decrypt,
    sm4_ecb_encrypt,
)

ENC_TYPE = "SM4"
SIGN_TYPE = "SM2"
DEFAULT_VERSION = "1.0.0"
ENVELOPE_FIELDS = ("appId", "encType", "signType", "timestamp", "version", "encData", "signData")
_UNSIGNED = frozenset({"signData", "encData", "extra"})


def data_key(app_id: str, app_secret: str) -> bytes:
    """The 16-byte SM4 data key derived from appId and appSecret (cached: every message of a
    terminal uses the same one, and the derivation is an SM4 operation of its own)."""
    if isinstance(app_id, str) and isinstance(app_secret, str):
        return _data_key(app_id, app_secret)
    return _derive_data_key(app_id, app_secret)


@lru_cache(maxsize=4096)
def _data_key(app_id: str, app_secret: str) -> bytes:
    return _derive_data_key(app_id, app_secret)


def _derive_data_key(app_id: Any, app_secret: Any) -> bytes:
    if not isinstance(app_id, str) or len(app_id) < 16:
        raise InputError("appId must have at least 16 characters (its first 16 key the data-key derivation)", field="appId")
    if not isinstance(app_secret, str) or not app_secret:
        raise InputError("appSecret must be a non-empty string", field="appSecret")
    kek = app_id[:16].encode("utf-8")
    if len(kek) != 16:
        raise InputError("the first 16 characters of appId must be ASCII", field="appId")
    return sm4_ecb_encrypt(kek, app_secret.encode("utf-8")).hex().upper()[:16].encode("ascii")


def _empty(v: Any) -> bool:
    """What the platform's signer drops: null, "" and []. (An empty object stays,
    as in JavaScript, where `{}` is truthy.)"""
    return v is None or v == "" or (isinstance(v, list) and not v)


def canonical_data(payload: Mapping[str, Any]) -> str:
    """The payload as the platform signs it: top-level keys sorted, numbers and
    booleans as strings, null/""/[] dropped (an empty object stays), objects inside
    arrays key-sorted, deeper levels untouched, compact JSON without ASCII
    escaping (JavaScript JSON.stringify). Not copied: the JS client's treatment of
    scalars inside arrays (it turns "ab" into {"0":"a","1":"b"}); platform
    payloads carry arrays of objects, and scalars here stay as they are."""
    out: dict[str, Any] = {}
    for k in sorted(payload):
        v = payload[k]
        if type(v) is str:  # the common case, decided without the checks below (same result)
            if v:
                out[k] = v
            continue
        if isinstance(v, bool):
            v = "true" if v else "false"
        elif isinstance(v, int):
            v = str(v)
        elif isinstance(v, float):  # JavaScript's String(number) for the usual cases
            v = str(int(v)) if v.is_integer() and abs(v) < 1e21 else repr(v)
        elif isinstance(v, list):
            v = [{kk: item[kk] for kk in sorted(item)} if isinstance(item, dict) else item for item in v]
        if _empty(v):
            continue
        out[k] = v
    return json.dumps(out, ensure_ascii=False, separators=(",", ":"))


def sign_text(fields: Mapping[str, Any], app_secret: str) -> str:
    """`k=v&...&key=appSecret` over the sorted non-empty signed fields."""
    parts = []
    for k in sorted(fields):
        if k in _UNSIGNED:
            continue
        v = fields[k]
        if type(v) is str:
            if v:
                parts.append(f"{k}={v}")
            continue
        if k == "data" and isinstance(v, Mapping):
            v = canonical_data(v)
        if _empty(v):
            continue
        parts.append(f"{k}={v}")
    parts.append(f"key={app_secret}")
    return "&".join(parts)


def _payload_bytes(payload: Mapping[str, Any]) -> bytes:
    if not isinstance(payload, Mapping):
        raise InputError("payload must be a JSON object", field="payload")
    try:
        return json.dumps(payload, ensure_ascii=True, separators=(",", ":"), allow_nan=False).encode("ascii")
    except (TypeError, ValueError) as e:
        raise InputError(f"payload is not JSON-serialisable: {e}", field="payload") from None


def build_envelope(
    payload: Mapping[str, Any],
    *,
    app_id: str,
    app_secret: str,
    sm2_key: Sm2PrivateKey,
    clock: Clock | None = None,
    version: str = DEFAULT_VERSION,
    user_id: bytes = DEFAULT_USER_ID,
) -> dict[str, str]:
    """Encrypt and sign `payload`; returns the envelope fields (all strings)."""
    key = data_key(app_id, app_secret)
    body = _payload_bytes(payload)
    ts = str(int((clock or SystemClock()).now().timestamp() * 1000))
    fields: dict[str, Any] = {
        "appId": app_id,
        "encType": ENC_TYPE,
        "signType": SIGN_TYPE,
        "timestamp": ts,
        "version": version,
        "data": payload,
    }
    text = sign_text(fields, app_secret)
    sig = sm2_sign(sm2_key, text.encode("utf-8"), user_id)
    return {
        "appId": app_id,
        "encType": ENC_TYPE,
        "signType": SIGN_TYPE,
        "timestamp": ts,
        "version": version,
        "encData": sm4_ecb_encrypt(key, body).hex().upper(),
        "signData": base64.b64encode(sig).decode("ascii"),
    }


@dataclass(frozen=True)
class OpenedEnvelope:
    app_id: str
    timestamp_ms: int
    version: str
    payload: dict[str, Any]


def _field(env: Mapping[str, Any], name: str) -> str:
    v = env.get(name)
    if not isinstance(v, str) or not v:
        raise IntegrityError(f"envelope field {name} is missing or not a string", code="envelope_malformed", field=name)
    return v


def open_envelope(
    envelope: Mapping[str, Any],
    *,
    app_secret: str,
    sm2_public_key: Sm2PublicKey,
    expected_app_id: str | None = None,
    clock: Clock | None = None,
    max_skew_s: float | None = None,
    user_id: bytes = DEFAULT_USER_ID,
) -> OpenedEnvelope:
    """Decrypt and verify an envelope. Any tampering -> IntegrityError naming the field.

    With `max_skew_s` set, a timestamp further than that from `clock` is refused
    (code "stale"); replay of a fresh envelope is the ReplayGuard's job.
    """
    if not isinstance(envelope, Mapping):
        raise IntegrityError("envelope is not a JSON object", code="envelope_malformed")
    app_id = _field(envelope, "appId")
    if expected_app_id is not None and app_id != expected_app_id:
        raise IntegrityError(f"envelope is for appId {app_id!r}, expected {expected_app_id!r}", code="envelope_wrong_app", field="appId")
    if _field(envelope, "encType") != ENC_TYPE:
        raise IntegrityError(f"unsupported encType {envelope['encType']!r} (only SM4)", code="envelope_malformed", field="encType")
    if _field(envelope, "signType") != SIGN_TYPE:
        raise IntegrityError(f"unsupported signType {envelope['signType']!r} (only SM2)", code="envelope_malformed", field="signType")
    ts = _field(envelope, "timestamp")
    if not ts.isdigit() or not ts.isascii():
        raise IntegrityError("timestamp must be milliseconds since the epoch", code="envelope_malformed", field="timestamp")
    version = _field(envelope, "version")
    enc = _field(envelope, "encData")
    sig_b64 = _field(envelope, "signData")

    if enc != enc.upper():
        raise IntegrityError("encData must be upper-case hex", code="envelope_malformed", field="encData")
    try:
        ct = bytes.fromhex(enc)
    except ValueError:
        raise IntegrityError("encData is not hex", code="envelope_malformed", field="encData") from None
    try:
        sig = base64.b64decode(sig_b64, validate=True)
    except (binascii.Error, ValueError):
        sig = b""
    if not sig or base64.b64encode(sig).decode("ascii") != sig_b64:
        raise IntegrityError("signData is not canonical Base64", code="envelope_malformed", field="signData")

    try:
        plain = sm4_ecb_decrypt(data_key(app_id, app_secret), ct)
    except IntegrityError as e:
        raise IntegrityError(f"encData does not decrypt: {e.message}", code="envelope_tampered", field="encData") from None
    except InputError as e:
        raise IntegrityError(f"envelope unusable: {e}", code="envelope_malformed", field="appId") from None
    try:
        payload = json.loads(plain.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise IntegrityError("encData does not decrypt to JSON", code="envelope_tampered", field="encData") from None
    if not isinstance(payload, dict):
        raise IntegrityError("encData does not hold a JSON object", code="envelope_tampered", field="encData")

    fields = {k: v for k, v in envelope.items() if k not in _UNSIGNED}
    fields["data"] = payload
    text = sign_text(fields, app_secret)
    if not sm2_verify(sm2_public_key, text.encode("utf-8"), sig, user_id):
        raise IntegrityError("signData does not verify: the envelope was altered or signed by another key",
                             code="envelope_tampered", field="signData")
    if max_skew_s is not None:
        now_ms = (clock or SystemClock()).now().timestamp() * 1000
        if abs(now_ms - int(ts)) > max_skew_s * 1000:
            raise IntegrityError(f"timestamp is outside the {max_skew_s:g} s window", code="stale", field="timestamp")
    return OpenedEnvelope(app_id=app_id, timestamp_ms=int(ts), version=version, payload=payload)
