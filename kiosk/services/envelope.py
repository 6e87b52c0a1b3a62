"""How the services put the platform envelope (kiosk.security.envelope) on the wire.

Both directions are `build_envelope` / `open_envelope` of the security layer:
SM4-ECB payload under the data key derived from the terminal's appId/appSecret,
SM2 signature over the sorted fields with `&key=appSecret`. Requests are signed
with the terminal's SM2 key (registered with the service), answers with the
service's SM2 key (published at `GET /keys`).

Anti-replay: the encrypted, signed payload carries a `nonce` (128 random bits,
hex) beside the platform request; the envelope's signed `timestamp` must be
within the window of the receiver's clock, and the receiver refuses an
(appId, nonce) it has seen (kiosk.security's ReplayGuard over its
DatabaseNonceStore, so all workers share one window).
A message retried after a lost answer is a new envelope (new nonce) with the
same `msgid`: it replays the first answer instead of being refused.
"""
from __future__ import annotations

import secrets
import threading
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kiosk.clock import ManualClock
from kiosk.errors import InputError, IntegrityError
from kiosk.security.envelope import build_envelope, open_envelope
from kiosk.security.keystore import KeyStore
from kiosk.security.seal import SealContext
from kiosk.security.sm import Sm2PrivateKey, Sm2PublicKey
from kiosk.services.protocol import loads_json

if TYPE_CHECKING:
    from kiosk.services.gateway import Terminal

MAX_BODY = 256 * 1024
MAX_APP_ID = 64  # what registration allows (kiosk.services.gateway.check_registration)


@dataclass
class Outer:
    app_id: str
    envelope: dict[str, Any]
    nonce: str = ""
    ts_ms: int = 0


class ServiceKeys:
    """A service's own keys: SM2 (answers), X25519 (sealed face data), at-rest sealing, MAC secret.

    Kept in a kiosk.security KeyStore directory; every worker opens the same one.
    """

    def __init__(self, store: KeyStore) -> None:
        self.store = store
        self._lock = threading.Lock()

    @classmethod
    def open_or_init(cls, path: Path, device_id: str) -> "ServiceKeys":
        path = Path(path)
        try:
            return cls(KeyStore.open_or_init(path, device_id=device_id))
        except Exception:  # two workers racing to create it: the other one won
            return cls(KeyStore.open(path))

    @property
    def sm2(self) -> Sm2PrivateKey:
        return self.store.sm2_key()

    def public(self) -> dict[str, str]:
        """What terminals need: SM2 public (hex 04||x||y) to verify answers, X25519 to seal to."""
        return self.store.public_identity()

    def mac_key(self) -> bytes:
        return self.store.audit_key()

    def open_sealed(self, blob: bytes, context: SealContext) -> bytes:
        return self.store.open_sealed(blob, context)

    def seal_at_rest(self, data: bytes, *, purpose: str, record_id: str) -> bytes:
        return self.store.encrypt_at_rest(data, purpose=purpose, record_id=record_id)

    def open_at_rest(self, blob: bytes, *, purpose: str, record_id: str) -> bytes:
        return self.store.decrypt_at_rest(blob, purpose=purpose, record_id=record_id)


@lru_cache(maxsize=4096)
def public_key(hex_or_pem: str) -> Sm2PublicKey:
    """A registered SM2 public key (hex 04||x||y, or PEM), parsed once per worker."""
    s = hex_or_pem.strip()
    if s.startswith("-----BEGIN"):
        from kiosk.security.sm import load_public_pem

        return load_public_pem(s)
    try:
        return Sm2PublicKey.from_bytes(bytes.fromhex(s))
    except ValueError:
        raise InputError("SM2 public key must be hex 04||x||y or a PEM", field="sm2_public") from None


def check_public_key(hex_or_pem: str) -> None:
    public_key(hex_or_pem)


def _fixed_clock(now: datetime) -> ManualClock:
    return ManualClock(now)


def parse_outer(raw: bytes) -> Outer:
    if len(raw) > MAX_BODY:
        raise InputError(f"body larger than {MAX_BODY} bytes", field="body")
    doc = loads_json(raw, "body")  # UTF-8, bounded depth and numbers: InputError (HTTP 400), never a fault
    if not isinstance(doc, dict):
        raise InputError("body must be a JSON object (the platform envelope)", field="body")
    app_id = doc.get("appId")
    if not isinstance(app_id, str) or not app_id:
        raise InputError("is missing", field="appId")
    if len(app_id) > MAX_APP_ID:
        raise InputError(f"is longer than {MAX_APP_ID} characters (no terminal has such an appId)", field="appId")
    return Outer(app_id, doc)


def open_request(outer: Outer, terminal: "Terminal", keys: ServiceKeys, now: datetime, window_s: int) -> dict[str, Any]:
    """Verify and decrypt a terminal's envelope; returns the request with the nonce set on `outer`."""
    opened = open_envelope(
        outer.envelope,
        app_secret=terminal.app_secret,
        sm2_public_key=public_key(terminal.sm2_public),
        expected_app_id=terminal.app_id,
        clock=_fixed_clock(now),
        max_skew_s=window_s,
    )
    payload = dict(opened.payload)
    nonce = payload.pop("nonce", None)
    if not isinstance(nonce, str) or not (16 <= len(nonce) <= 64):
        raise IntegrityError("payload carries no usable nonce (16-64 characters)", code="nonce_missing", field="nonce")
    outer.nonce = nonce
    outer.ts_ms = opened.timestamp_ms
    return payload


def seal_response(answer: dict[str, Any], terminal: "Terminal", keys: ServiceKeys, now: datetime) -> dict[str, Any]:
    return build_envelope(dict(answer, nonce=secrets.token_hex(16)), app_id=terminal.app_id,
                          app_secret=terminal.app_secret, sm2_key=keys.sm2, clock=_fixed_clock(now))


# ---- the terminal's side ---------------------------------------------------------------------------
def client_envelope(request: dict[str, Any], *, app_id: str, app_secret: str, sm2_key: Sm2PrivateKey,
                    now: datetime, nonce: str | None = None) -> dict[str, Any]:
    return build_envelope(dict(request, nonce=nonce or secrets.token_hex(16)), app_id=app_id,
                          app_secret=app_secret, sm2_key=sm2_key, clock=_fixed_clock(now))


def client_open(envelope: dict[str, Any], *, app_id: str, app_secret: str, service_public: Sm2PublicKey,
                now: datetime, window_s: int) -> dict[str, Any]:
    opened = open_envelope(envelope, app_secret=app_secret, sm2_public_key=service_public,
                           expected_app_id=app_id, clock=_fixed_clock(now), max_skew_s=window_s)
    payload = dict(opened.payload)
    payload.pop("nonce", None)
    return payload
