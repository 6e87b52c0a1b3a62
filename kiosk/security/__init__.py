"""Security layer: device identity, sealing, platform envelope, anti-replay, audit, privacy guard.

Entry points other concerns use:

    KeyStore.open_or_init(dir)            device identity (Ed25519 + X25519 + SM2, versioned kids)
    seal / open_sealed / SealContext      biometric data to a recipient (X25519+HKDF+AES-256-GCM)
    KeyStore.encrypt_at_rest / decrypt_at_rest   templates cached on the device
    build_envelope / open_envelope        national platform SM4/SM2 envelope
    RequestSigner / RequestVerifier / ReplayGuard + MemoryNonceStore | SqliteNonceStore | DatabaseNonceStore(kiosk.storage db)
    AuditLog(path, key).append(event, **fields) / verify_log / mask_id_number
    scan_paths / assert_no_biometrics     privacy guard for tests and technicians
"""
from __future__ import annotations

from kiosk.security.audit import AuditLog, AuditRecord, AuditReport, check_privacy, mask_id_number, verify_log
from kiosk.security.envelope import OpenedEnvelope, build_envelope, canonical_data, data_key, open_envelope, sign_text
from kiosk.security.keystore import KeyStore, KeyVersion
from kiosk.security.privacy import Finding, assert_no_biometrics, scan_bytes, scan_paths
from kiosk.security.replay import (
    DatabaseNonceStore,
    MemoryNonceStore,
    NonceStore,
    ReplayGuard,
    RequestSigner,
    RequestVerifier,
    SqliteNonceStore,
    VerifiedRequest,
)
from kiosk.security.seal import SealContext, open_sealed, seal
from kiosk.security.sm import (
    SM2P256V1,
    Sm2PrivateKey,
    Sm2PublicKey,
    load_private_pem,
    load_public_pem,
    sm2_sign,
    sm2_verify,
    sm3,
    sm4_ecb_decrypt,
    sm4_ecb_encrypt,
)

__all__ = [
    "AuditLog", "AuditRecord", "AuditReport", "check_privacy", "mask_id_number", "verify_log",
    "OpenedEnvelope", "build_envelope", "canonical_data", "data_key", "open_envelope", "sign_text",
    "KeyStore", "KeyVersion",
    "Finding", "assert_no_biometrics", "scan_bytes", "scan_paths",
    "DatabaseNonceStore", "MemoryNonceStore", "NonceStore", "ReplayGuard", "RequestSigner", "RequestVerifier", "SqliteNonceStore", "VerifiedRequest",
    "SealContext", "open_sealed", "seal",
    "SM2P256V1", "Sm2PrivateKey", "Sm2PublicKey", "load_private_pem", "load_public_pem", "sm2_sign", "sm2_verify",
    "sm3", "sm4_ecb_decrypt", "sm4_ecb_encrypt",
]
