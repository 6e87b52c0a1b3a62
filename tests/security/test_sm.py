"""Known-answer tests from the standards for SM4, SM3 and SM2, plus SM2 properties."""
from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given, settings
from hypothesis import strategies as st

from kiosk.errors import InputError, IntegrityError
from kiosk.security.sm import (
    SM2_TEST_FP256,
    SM2P256V1,
    Sm2PrivateKey,
    Sm2PublicKey,
    decode_signature,
    load_private_pem,
    load_public_pem,
    signature_to_der,
    sm2_sign,
    sm2_verify,
    sm3,
    sm4_ecb_decrypt,
    sm4_ecb_encrypt,
    za,
)

SM4_KEY = bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")


def test_sm4_gbt32907_example_1() -> None:
    # GB/T 32907-2016 Appendix A, example 1: key = plaintext
    assert sm4_ecb_encrypt(SM4_KEY, SM4_KEY, pad=False).hex().upper() == "681EDF34D206965E86B3E94F536E4246"
    assert sm4_ecb_decrypt(SM4_KEY, bytes.fromhex("681EDF34D206965E86B3E94F536E4246"), pad=False) == SM4_KEY


def test_sm4_gbt32907_example_2_million_rounds() -> None:
    # Appendix A, example 2: encrypt the block 1,000,000 times with the same key
    enc = Cipher(algorithms.SM4(SM4_KEY), modes.ECB()).encryptor()
    block = SM4_KEY
    for _ in range(1_000_000):
        block = enc.update(block)
    assert block.hex().upper() == "595298C7C6FD271F0402F804C33D3F66"


def test_sm4_pkcs7_padding_and_errors() -> None:
    ct = sm4_ecb_encrypt(SM4_KEY, b"")
    assert len(ct) == 16 and sm4_ecb_decrypt(SM4_KEY, ct) == b""
    ct = sm4_ecb_encrypt(SM4_KEY, b"x" * 16)
    assert len(ct) == 32  # a full block of padding
    with pytest.raises(IntegrityError):
        sm4_ecb_decrypt(SM4_KEY, ct[:-1])
    with pytest.raises(IntegrityError, match="padding"):
        sm4_ecb_decrypt(bytes(16), ct)  # wrong key: garbage padding (1/256 false accept is impossible here: fixed data)
    with pytest.raises(InputError):
        sm4_ecb_encrypt(b"short", b"x")


def test_sm3_gbt32905_examples() -> None:
    assert sm3(b"abc").hex() == "66c7f0f462eeedd9d1f2d46bdc10e4e24167c4875cf2f7a2297da02b8f4ba8e0"
    assert sm3(b"abcd" * 16).hex() == "debe9ff92275b8a138604889c18e5a4d6fdb70e5387e5765293dcba39c0c5732"


# GB/T 32918.2-2016 Annex A.2 (Fp-256 example curve)
A2_ID = b"ALICE123@YAHOO.COM"
A2_D = 0x128B2FA8BD433C6C068C8D803DFF79792A519A55171B1B650C23661D15897263
A2_K = 0x6CB28D99385C175C94F94E934817663FC176D925DD72B727260DBAAE1FB2F96F


def test_sm2_gbt32918_annex_a_signature() -> None:
    key = Sm2PrivateKey(A2_D, SM2_TEST_FP256)
    pub = key.public_key()
    assert pub.x == 0x0AE4C7798AA0F119471BEE11825BE46202BB79E2A5844495E97C04FF4DF2548A
    assert pub.y == 0x7C0240F88F1CD4E16352A73C17B7F16F07353E53A176D684A9FE0C6BB798E857
    assert za(pub, A2_ID).hex().upper() == "F4A38489E32B45B6F876E3AC2168CA392362DC8F23459C1D1146FC3DBFB7BC9A"
    sig = sm2_sign(key, b"message digest", A2_ID, _k=A2_K)
    assert sig.hex().upper() == (
        "40F1EC59F793D9F49E09DCEF49130D4194F79FB1EED2CAA55BACDB49C4E755D1"
        "6FC6DAC32C5D5CF10C77DFB20F7C2EB667A457872FB09EC56327A67EC7DEEBE7"
    )
    assert sm2_verify(pub, b"message digest", sig, A2_ID)
    assert not sm2_verify(pub, b"message digest", sig, b"BOB@YAHOO.COM")  # Z_A binds the identity
    assert not sm2_verify(pub, b"message digesT", sig, A2_ID)


def test_sm2_recommended_curve_parameters_are_consistent() -> None:
    c = SM2P256V1
    assert (c.gy ** 2 - (c.gx ** 3 + c.a * c.gx + c.b)) % c.p == 0
    minus_g = c.g * (c.n - 1)  # (n-1)G = -G: n is the order of G
    assert (minus_g.x(), minus_g.y()) == (c.gx, c.p - c.gy)


KEY = Sm2PrivateKey.generate()


@settings(max_examples=25, deadline=None)
@given(msg=st.binary(max_size=300), flip=st.integers(min_value=0))
def test_sm2_sign_verify_property(msg: bytes, flip: int) -> None:
    sig = KEY.sign(msg)
    pub = KEY.public_key()
    assert sm2_verify(pub, msg, sig)
    i = flip % (len(msg) + 1)
    other = msg[:i] + bytes([(msg[i] ^ 1) if i < len(msg) else 0]) + msg[i + 1:]
    assert not sm2_verify(pub, other, sig)


def test_sm2_every_signature_byte_flip_is_refused() -> None:
    msg = b"settle 2207 psn_cash_pay=12.30"
    sig = KEY.sign(msg)
    pub = KEY.public_key()
    for i in range(len(sig)):
        bad = bytearray(sig)
        bad[i] ^= 0x01
        assert not sm2_verify(pub, msg, bytes(bad)), i
    assert not sm2_verify(pub, msg, sig[:-1])
    assert not sm2_verify(pub, msg, b"")


def test_sm2_der_roundtrip_and_randomised_signatures() -> None:
    msg = b"abc"
    s1, s2 = KEY.sign(msg), KEY.sign(msg)
    assert s1 != s2  # fresh k every time
    der = signature_to_der(s1)
    assert der[0] == 0x30 and decode_signature(der) == decode_signature(s1)
    assert sm2_verify(KEY.public_key(), msg, der)


def test_sm2_keys_pem_roundtrip_and_validation() -> None:
    pem = KEY.to_pem()
    assert load_private_pem(pem).d == KEY.d
    pub = KEY.public_key()
    assert load_public_pem(pub.to_pem()) == pub
    assert Sm2PublicKey.from_bytes(pub.to_bytes()) == pub
    with pytest.raises(IntegrityError, match="not a point"):
        Sm2PublicKey(pub.x, pub.y + 1)
    with pytest.raises(InputError):
        Sm2PrivateKey(0)
    with pytest.raises(InputError):
        load_private_pem("-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n")
    assert "d=" not in repr(KEY) and str(KEY.d) not in repr(KEY)
