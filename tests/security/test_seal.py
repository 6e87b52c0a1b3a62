"""AES-GCM / X25519 / HKDF known answers, and the sealed-blob format."""
from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import given, settings
from hypothesis import strategies as st

from kiosk.errors import InputError, IntegrityError
from kiosk.security.seal import SealContext, open_sealed, parse_header, seal

H = bytes.fromhex


def test_aes_256_gcm_nist_vectors() -> None:
    # McGrew & Viega GCM spec (NIST CSRC GCM validation), test cases 13, 14 and 16 (AES-256)
    k0 = bytes(32)
    assert AESGCM(k0).encrypt(bytes(12), b"", None) == H("530f8afbc74536b9a963b4f1c4cb738b")
    assert AESGCM(k0).encrypt(bytes(12), bytes(16), None) == H(
        "cea7403d4d606b6e074ec5d3baf39d18" "d0d1c8a799996bf0265b98b5d48ab919")
    key = H("feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308")
    iv = H("cafebabefacedbaddecaf888")
    pt = H("d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72"
           "1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39")
    aad = H("feedfacedeadbeeffeedfacedeadbeefabaddad2")
    ct = H("522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa"
           "8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662")
    tag = H("76fc6ece0f4e1768cddf8853bb2d551b")
    assert AESGCM(key).encrypt(iv, pt, aad) == ct + tag
    assert AESGCM(key).decrypt(iv, ct + tag, aad) == pt


def test_x25519_rfc7748_and_hkdf_rfc5869() -> None:
    a = X25519PrivateKey.from_private_bytes(H("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a"))
    b = X25519PrivateKey.from_private_bytes(H("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb"))
    raw = (serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert a.public_key().public_bytes(*raw) == H("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
    assert a.exchange(b.public_key()) == b.exchange(a.public_key()) == H(
        "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")
    okm = HKDF(hashes.SHA256(), 42, salt=H("000102030405060708090a0b0c"), info=H("f0f1f2f3f4f5f6f7f8f9")).derive(b"\x0b" * 22)
    assert okm == H("3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865")


RECIPIENT = X25519PrivateKey.generate()
CTX = SealContext("KIOSK-0001", "S-20260101-0001", "face-template/insurance-check")
TEMPLATE = bytes(range(256)) * 8  # 2 KiB, the size of a 512-d float32 template


def test_seal_roundtrip_and_format() -> None:
    blob = seal(TEMPLATE, RECIPIENT.public_key(), "v0001-abcd", CTX)
    h = parse_header(blob)
    assert blob[:3] == b"KS\x01" and h.key_id == "v0001-abcd"
    assert len(blob) == 3 + 1 + 10 + 32 + 12 + len(TEMPLATE) + 16
    assert TEMPLATE not in blob
    assert open_sealed(blob, RECIPIENT, CTX) == TEMPLATE
    assert open_sealed(blob, lambda kid: {"v0001-abcd": RECIPIENT}[kid], CTX) == TEMPLATE
    assert seal(TEMPLATE, RECIPIENT.public_key(), "v0001-abcd", CTX) != blob  # ephemeral key + nonce


@pytest.mark.parametrize("field", ["device_id", "session_id", "purpose"])
def test_seal_opens_only_in_its_context(field: str) -> None:
    blob = seal(b"crop", RECIPIENT.public_key(), "k1", CTX)
    other = SealContext(**{**CTX.__dict__, field: getattr(CTX, field) + "x"})
    with pytest.raises(IntegrityError, match="wrong device/session/purpose"):
        open_sealed(blob, RECIPIENT, other)


def test_seal_opens_only_for_its_recipient() -> None:
    blob = seal(b"crop", RECIPIENT.public_key(), "k1", CTX)
    with pytest.raises(IntegrityError) as e:
        open_sealed(blob, X25519PrivateKey.generate(), CTX)
    assert e.value.code == "seal_invalid"
    with pytest.raises(IntegrityError) as e:
        open_sealed(blob, lambda kid: {}[kid], CTX)
    assert e.value.code == "seal_unknown_key"


def test_every_byte_flip_of_a_sealed_blob_is_refused() -> None:
    blob = seal(b"template bytes " * 4, RECIPIENT.public_key(), "v0002-ffff", CTX)
    lookup = {"v0002-ffff": RECIPIENT}
    for i in range(len(blob)):
        bad = bytearray(blob)
        bad[i] ^= 0x80
        with pytest.raises(IntegrityError):
            open_sealed(bytes(bad), lambda kid: lookup[kid], CTX)
    for cut in (0, 3, 20, len(blob) - 1):
        with pytest.raises(IntegrityError):
            open_sealed(blob[:cut], RECIPIENT, CTX)


def test_seal_rejects_bad_input() -> None:
    with pytest.raises(InputError):
        seal(b"x", RECIPIENT.public_key(), "", CTX)
    with pytest.raises(InputError):
        seal(b"x", RECIPIENT.public_key(), "k", SealContext("", "s", "p"))


@settings(max_examples=20, deadline=None)
@given(data=st.binary(max_size=4096), session=st.text(min_size=1, max_size=40))
def test_seal_property(data: bytes, session: str) -> None:
    ctx = SealContext("KIOSK-0001", session, "p")
    assert open_sealed(seal(data, RECIPIENT.public_key(), "k", ctx), RECIPIENT, ctx) == data
