"""Sealing biometric data to a recipient: ephemeral X25519 + HKDF-SHA256 + AES-256-GCM.

A template or crop that must leave the process is sealed to the recipient's
X25519 public key. The associated data binds the blob to the device id, the
session id and the purpose, so a blob lifted from one session or used for
another purpose does not open. Format (version 1, all lengths in bytes):

    "KS" | 0x01 | len(key_id) u8 | key_id ascii | ephemeral X25519 public (32)
         | nonce (12) | AES-256-GCM ciphertext || tag (16)

The header (everything before the ciphertext) and the encoded context are the
GCM associated data; the HKDF salt is ephemeral||recipient public key and the
info carries the context, so the key itself is context-bound too. key_id names
the recipient key version, so a rotated key store still opens older blobs.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Union

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from kiosk.errors import InputError, IntegrityError

MAGIC = b"KS"
VERSION = 1
_RAW = serialization.Encoding.Raw, serialization.PublicFormat.Raw


@dataclass(frozen=True)
class SealContext:
    """What a sealed blob is bound to. All three must match when opening."""

    device_id: str
    session_id: str
    purpose: str

    def encode(self) -> bytes:
        out = bytearray()
        for name in ("device_id", "session_id", "purpose"):
            v = getattr(self, name)
            if not isinstance(v, str) or not v:
                raise InputError(f"seal context {name} must be a non-empty string", field=name)
            b = v.encode("utf-8")
            if len(b) > 0xFFFF:
                raise InputError(f"seal context {name} is too long", field=name)
            out += len(b).to_bytes(2, "big") + b
        return bytes(out)


def _pub_bytes(pub: X25519PublicKey) -> bytes:
    return pub.public_bytes(*_RAW)


def _key(shared: bytes, eph: bytes, recipient: bytes, ctx: bytes) -> bytes:
    return HKDF(hashes.SHA256(), 32, salt=eph + recipient, info=b"kiosk/seal/v1\x00" + ctx).derive(shared)


def seal(plaintext: bytes, recipient: X25519PublicKey, key_id: str, context: SealContext) -> bytes:
    """Seal `plaintext` so only the holder of `recipient`'s private key opens it, in `context`."""
    kid = key_id.encode("ascii") if key_id.isascii() else b""
    if not 1 <= len(kid) <= 255:
        raise InputError("key_id must be 1-255 ASCII characters", field="key_id")
    ctx = context.encode()
    eph = X25519PrivateKey.generate()
    eph_pub = _pub_bytes(eph.public_key())
    rec = _pub_bytes(recipient)
    key = _key(eph.exchange(recipient), eph_pub, rec, ctx)
    nonce = os.urandom(12)
    header = MAGIC + bytes([VERSION, len(kid)]) + kid + eph_pub + nonce
    return header + AESGCM(key).encrypt(nonce, bytes(plaintext), header + ctx)


@dataclass(frozen=True)
class SealedHeader:
    key_id: str
    ephemeral: bytes
    nonce: bytes
    header_len: int


def parse_header(blob: bytes) -> SealedHeader:
    if len(blob) < 4 or blob[:2] != MAGIC:
        raise IntegrityError("not a sealed blob (bad magic)", code="seal_malformed")
    if blob[2] != VERSION:
        raise IntegrityError(f"unsupported sealed-blob version {blob[2]}", code="seal_malformed")
    n = blob[3]
    end = 4 + n + 32 + 12
    if n == 0 or len(blob) < end + 16:
        raise IntegrityError("sealed blob is truncated", code="seal_malformed")
    try:
        kid = blob[4 : 4 + n].decode("ascii")
    except UnicodeDecodeError:
        raise IntegrityError("sealed blob key id is not ASCII", code="seal_malformed") from None
    return SealedHeader(kid, blob[4 + n : 4 + n + 32], blob[4 + n + 32 : end], end)


KeyLookup = Callable[[str], X25519PrivateKey]


def open_sealed(blob: bytes, recipient: Union[X25519PrivateKey, KeyLookup], context: SealContext) -> bytes:
    """Open a sealed blob. `recipient` is the private key, or a lookup by key id
    (e.g. `KeyStore.agreement_key`). Wrong key, context or any flipped byte ->
    IntegrityError."""
    h = parse_header(bytes(blob))
    if isinstance(recipient, X25519PrivateKey):
        priv = recipient
    else:
        try:
            priv = recipient(h.key_id)
        except KeyError:
            raise IntegrityError(f"no private key with id {h.key_id!r} to open this blob", code="seal_unknown_key") from None
    ctx = context.encode()
    try:
        eph = X25519PublicKey.from_public_bytes(h.ephemeral)
        key = _key(priv.exchange(eph), h.ephemeral, _pub_bytes(priv.public_key()), ctx)
        return AESGCM(key).decrypt(h.nonce, blob[h.header_len :], blob[: h.header_len] + ctx)
    except (InvalidTag, ValueError):
        raise IntegrityError(
            "sealed blob does not open: wrong recipient, wrong device/session/purpose, or tampered",
            code="seal_invalid",
        ) from None
