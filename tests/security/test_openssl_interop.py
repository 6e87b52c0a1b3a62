"""Interop with an independent implementation: the `openssl` command line (OpenSSL 3)."""
from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from kiosk.errors import InputError
from kiosk.security.envelope import ENVELOPE_FIELDS, build_envelope, data_key, sign_text
from kiosk.security.seal import SealContext, parse_header, seal
from kiosk.security.sm import (
    Sm2PrivateKey,
    load_private_pem,
    load_public_pem,
    signature_to_der,
    sm2_verify,
    sm3,
    sm4_ecb_encrypt,
)

OPENSSL = shutil.which("openssl")


@pytest.fixture(scope="module", autouse=True)
def _need_openssl() -> None:
    if OPENSSL is None:
        if os.environ.get("CI") == "true":
            pytest.fail("openssl command line is missing on the CI machine")
        pytest.skip("no openssl command line")


def ossl(*args: str, data: bytes | None = None) -> bytes:
    r = subprocess.run([OPENSSL, *args], input=data, capture_output=True, timeout=30)
    assert r.returncode == 0, r.stderr.decode()
    return r.stdout


DISTID = "distid:1234567812345678"


def test_openssl_verifies_our_sm2_signature(tmp_path: Path) -> None:
    key = Sm2PrivateKey.generate()
    (tmp_path / "pub.pem").write_text(key.public_key().to_pem())
    (tmp_path / "key.pem").write_text(key.to_pem())
    msg = "appId=X&data={\"a\":\"1\"}&key=S".encode()
    (tmp_path / "msg").write_bytes(msg)
    (tmp_path / "sig").write_bytes(signature_to_der(key.sign(msg)))
    out = ossl("pkeyutl", "-verify", "-pubin", "-inkey", str(tmp_path / "pub.pem"), "-rawin", "-digest", "sm3",
               "-pkeyopt", DISTID, "-in", str(tmp_path / "msg"), "-sigfile", str(tmp_path / "sig"))
    assert b"Verified Successfully" in out
    # OpenSSL reads our PKCS#8 private key as an SM2 key and derives the same public key
    assert ossl("pkey", "-in", str(tmp_path / "key.pem"), "-pubout").decode() == key.public_key().to_pem()
    # and refuses a signature over a different message
    (tmp_path / "msg").write_bytes(msg + b"x")
    r = subprocess.run([OPENSSL, "pkeyutl", "-verify", "-pubin", "-inkey", str(tmp_path / "pub.pem"), "-rawin",
                        "-digest", "sm3", "-pkeyopt", DISTID, "-in", str(tmp_path / "msg"),
                        "-sigfile", str(tmp_path / "sig")], capture_output=True, timeout=30)
    assert r.returncode != 0


@pytest.mark.parametrize("genkey", [["genpkey", "-algorithm", "SM2"], ["ecparam", "-name", "SM2", "-genkey", "-noout"],
                                    ["ecparam", "-name", "SM2", "-genkey"]])  # with an 'SM2 PARAMETERS' block first
def test_we_verify_openssl_sm2_signatures_and_load_its_keys(tmp_path: Path, genkey: list[str]) -> None:
    kp = tmp_path / "k.pem"
    ossl(*genkey, "-out", str(kp))
    key = load_private_pem(kp.read_text())
    pub = load_public_pem(ossl("pkey", "-in", str(kp), "-pubout"))
    assert pub == key.public_key()
    both = kp.read_bytes() + ossl("pkey", "-in", str(kp), "-pubout")  # one file with both halves
    assert load_public_pem(both) == pub and load_private_pem(both) == key
    msg = b"signed by openssl"
    (tmp_path / "m").write_bytes(msg)
    sig = ossl("pkeyutl", "-sign", "-inkey", str(kp), "-rawin", "-digest", "sm3", "-pkeyopt", DISTID, "-in", str(tmp_path / "m"))
    assert sm2_verify(pub, msg, sig)
    assert not sm2_verify(pub, msg + b"!", sig)


def test_sm3_and_sm4_match_openssl() -> None:
    data = "医保 settlement 2207".encode() * 7
    assert ossl("dgst", "-sm3", "-binary", data=data) == sm3(data)
    key = b"0123456789ABCDEF"
    ct = sm4_ecb_encrypt(key, data)
    assert ossl("enc", "-d", "-sm4-ecb", "-K", key.hex(), data=ct) == data
    assert ossl("enc", "-sm4-ecb", "-K", key.hex(), data=data) == ct


def test_openssl_opens_an_envelope(tmp_path: Path) -> None:
    app_id, secret = "43AF047BBA47FC8A1AE8EFB232BDBBCB", "4117E877F5FA0A0188891283E4B617D5"
    key = Sm2PrivateKey.generate()
    payload = {"psn_no": "P1", "amt": "12.30"}
    env = build_envelope(payload, app_id=app_id, app_secret=secret, sm2_key=key)
    # data key: openssl SM4-ECB of appSecret keyed by appId[:16], first 16 upper-case hex characters
    dk = ossl("enc", "-sm4-ecb", "-K", app_id[:16].encode().hex(), data=secret.encode()).hex().upper()[:16]
    assert dk.encode() == data_key(app_id, secret)
    plain = ossl("enc", "-d", "-sm4-ecb", "-K", dk.encode().hex(), data=bytes.fromhex(env["encData"]))
    assert json.loads(plain) == payload
    (tmp_path / "pub.pem").write_text(key.public_key().to_pem())
    (tmp_path / "text").write_bytes(sign_text({**{k: env[k] for k in ENVELOPE_FIELDS}, "data": payload}, secret).encode())
    (tmp_path / "sig").write_bytes(signature_to_der(base64.b64decode(env["signData"])))
    out = ossl("pkeyutl", "-verify", "-pubin", "-inkey", str(tmp_path / "pub.pem"), "-rawin", "-digest", "sm3",
               "-pkeyopt", DISTID, "-in", str(tmp_path / "text"), "-sigfile", str(tmp_path / "sig"))
    assert b"Verified Successfully" in out


def test_openssl_derives_the_seal_key(tmp_path: Path) -> None:
    """OpenSSL does the X25519 agreement and HKDF of a sealed blob; AES-GCM with that key opens it."""
    rec = X25519PrivateKey.generate()
    ctx = SealContext("KIOSK-1", "S-1", "face-template")
    blob = seal(b"template", rec.public_key(), "v0001-aa", ctx)
    h = parse_header(blob)
    (tmp_path / "rec.pem").write_bytes(rec.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()))
    (tmp_path / "eph.pem").write_bytes(X25519PublicKey.from_public_bytes(h.ephemeral).public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    shared = ossl("pkeyutl", "-derive", "-inkey", str(tmp_path / "rec.pem"), "-peerkey", str(tmp_path / "eph.pem"))
    rec_pub = rec.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    info = b"kiosk/seal/v1\x00" + ctx.encode()
    key_hex = ossl("kdf", "-keylen", "32", "-kdfopt", "digest:SHA256", "-kdfopt", f"hexkey:{shared.hex()}",
                   "-kdfopt", f"hexsalt:{(h.ephemeral + rec_pub).hex()}", "-kdfopt", f"hexinfo:{info.hex()}", "HKDF")
    key = bytes.fromhex(key_hex.decode().strip().replace(":", ""))
    aad = blob[: h.header_len] + ctx.encode()
    assert AESGCM(key).decrypt(h.nonce, blob[h.header_len:], aad) == b"template"


@pytest.mark.parametrize("enc", [
    ["pkey", "-aes-256-cbc"],  # PKCS#8 PBES2, PBKDF2-HMAC-SHA256, AES-256-CBC (OpenSSL 3 default)
    ["pkcs8", "-topk8", "-v2", "sm4-cbc"],  # national-standard cipher
    ["pkcs8", "-topk8", "-v2", "aes-128-cbc", "-v2prf", "hmacWithSHA1"],
    ["pkcs8", "-topk8", "-scrypt"],
    ["ec", "-aes256"],  # traditional 'SM2 PRIVATE KEY' with Proc-Type/DEK-Info
    ["ec", "-sm4-cbc"],
])
def test_we_load_openssl_encrypted_keys(tmp_path: Path, enc: list[str]) -> None:
    plain = tmp_path / "k.pem"
    ossl("genpkey", "-algorithm", "SM2", "-out", str(plain))
    ossl(*enc, "-in", str(plain), "-passout", "pass:s3cret pw", "-out", str(tmp_path / "e.pem"))
    text = (tmp_path / "e.pem").read_bytes()
    assert b"ENCRYPTED" in text
    assert load_private_pem(text, "s3cret pw") == load_private_pem(plain.read_text())
    with pytest.raises(InputError, match="wrong passphrase") as e:
        load_private_pem(text, "s3cret pX")
    assert e.value.field == "sm2_key"
    with pytest.raises(InputError, match="passphrase is needed"):
        load_private_pem(text)


def test_unsupported_key_encryption_is_named(tmp_path: Path) -> None:
    ossl("genpkey", "-algorithm", "SM2", "-out", str(tmp_path / "k.pem"))
    ossl("pkcs8", "-topk8", "-v1", "PBE-SHA1-3DES", "-in", str(tmp_path / "k.pem"), "-passout", "pass:pw",
         "-out", str(tmp_path / "e.pem"))
    with pytest.raises(InputError, match="only PBES2"):
        load_private_pem((tmp_path / "e.pem").read_text(), "pw")
