"""The window-table arithmetic of kiosk.security.sm2_ec against python-ecdsa (the reference),
and SM2 signatures crossed between the fast path and a reference sign/verify."""
from __future__ import annotations

import secrets

import pytest
from ecdsa.ellipticcurve import INFINITY, PointJacobi
from hypothesis import example, given, settings
from hypothesis import strategies as st

from kiosk.security import sm, sm2_ec
from kiosk.security.sm import (
    DEFAULT_USER_ID,
    SM2_TEST_FP256,
    SM2P256V1,
    Sm2PrivateKey,
    decode_signature,
    sm2_verify,
    sm3,
    za,
)

C = SM2P256V1
N = C.n
FF = int("ff" * 32, 16)
SPECIAL = [1, 2, 3, 255, 256, N - 1, N - 2, N - 3, 2**255, 1 << 248, int("ff" * 31, 16), FF % N,
           int("ff00" * 16, 16) % N, int("00ff" * 16, 16), 16, 17, 31, 32, 15 * 32 + 16]

scalars = st.one_of(st.sampled_from(SPECIAL), st.integers(min_value=1, max_value=N - 1),
                    st.integers(min_value=0, max_value=31).map(lambda k: k << 224))


def _ref(pt: PointJacobi) -> tuple[int, int] | None:
    return None if pt == INFINITY else (pt.x(), pt.y())


def _fast(curve: sm.Sm2Curve, jac: tuple | None) -> tuple[int, int] | None:
    assert jac is not None  # a table exists for both curves
    return sm2_ec.affine_xy(curve.p, jac)


@settings(max_examples=150, deadline=None)
@given(k=scalars)
def test_k_times_g_matches_python_ecdsa(k: int) -> None:
    assert _fast(C, sm2_ec.mul_g(C, k)) == _ref(C.g * k)


@pytest.mark.parametrize("k", [0, N, 2 * N, N + 1, FF])
def test_k_times_g_reduces_mod_n_and_infinity(k: int) -> None:
    got = _fast(C, sm2_ec.mul_g(C, k))
    assert got == (None if k % N == 0 else _ref(C.g * (k % N)))


@pytest.mark.parametrize("k", [1, 2, 3, SM2_TEST_FP256.n - 1, 0xABCDEF << 200, SM2_TEST_FP256.n // 3])
def test_other_curve_uses_its_own_table(k: int) -> None:
    c = SM2_TEST_FP256
    assert _fast(c, sm2_ec.mul_g(c, k)) == _ref(c.g * k)


D = secrets.randbelow(N - 2) + 1
P_REF = C.g * D
P_TABLE = sm2_ec.key_table(C, P_REF.x(), P_REF.y())


@settings(max_examples=150, deadline=None)
@given(s=scalars, t=scalars)
def test_mul_add_matches_python_ecdsa(s: int, t: int) -> None:
    assert _fast(C, sm2_ec.mul_add(C, s, P_TABLE, t)) == _ref(C.g.mul_add(s, P_REF, t))


@pytest.mark.parametrize("t", [1, 2, N - 1, 12345])
def test_mul_add_equal_and_opposite_points(t: int) -> None:
    same = t * D % N  # s*G == t*P: the accumulation must double
    assert _fast(C, sm2_ec.mul_add(C, same, P_TABLE, t)) == _ref(C.g * (2 * same % N))
    assert _fast(C, sm2_ec.mul_add(C, N - same, P_TABLE, t)) is None  # s*G == -t*P: infinity
    assert _fast(C, sm2_ec.mul_add(C, 0, P_TABLE, t)) == _ref(P_REF * t)


def test_cold_point_through_extra_matches() -> None:
    s, t = secrets.randbelow(N), secrets.randbelow(N)
    tp = P_REF * t
    assert _fast(C, sm2_ec.mul_add(C, s, None, t, (tp.x(), tp.y()))) == _ref(C.g.mul_add(s, P_REF, t))


# ---------------------------------------------------------------- signatures, crossed with a reference


def ref_verify(pub: sm.Sm2PublicKey, msg: bytes, sig: bytes, uid: bytes = DEFAULT_USER_ID) -> bool:
    """GB/T 32918.2 7.1 straight on python-ecdsa (the code path before the tables)."""
    r, s = decode_signature(sig)
    c = pub.curve
    if not (1 <= r < c.n and 1 <= s < c.n) or (r + s) % c.n == 0:
        return False
    e = int.from_bytes(sm3(za(pub, uid) + msg), "big")
    pt = c.g.mul_add(s, PointJacobi(c.curve, pub.x, pub.y, 1, c.n), (r + s) % c.n)
    return pt != INFINITY and (e + pt.x()) % c.n == r


def ref_sign(key: Sm2PrivateKey, msg: bytes, uid: bytes = DEFAULT_USER_ID) -> bytes:
    c = key.curve
    e = int.from_bytes(sm3(za(key.public_key(), uid) + msg), "big")
    while True:
        k = secrets.randbelow(c.n - 1) + 1
        r = (e + (c.g * k).x()) % c.n
        s = pow(1 + key.d, -1, c.n) * (k - r * key.d) % c.n
        if r and r + k != c.n and s:
            return r.to_bytes(32, "big") + s.to_bytes(32, "big")


@settings(max_examples=30, deadline=None)
@given(msg=st.binary(max_size=200), flip=st.integers(min_value=0, max_value=10_000))
def test_signatures_cross_verify_hot_and_cold(msg: bytes, flip: int) -> None:
    key = Sm2PrivateKey.generate()
    pub = key.public_key()
    new_sig, old_sig = key.sign(msg), ref_sign(key, msg)
    for _ in range(sm._HOT_AFTER + 1):  # the first calls take the cold path, then the key's table
        assert sm2_verify(pub, msg, old_sig)
        assert sm2_verify(pub, msg, new_sig)
    assert ref_verify(pub, msg, new_sig)
    bad = bytearray(new_sig)
    bad[flip % 64] ^= 1 << (flip % 8)
    assert not sm2_verify(pub, msg, bytes(bad))
    assert not ref_verify(pub, msg, bytes(bad))
    assert not sm2_verify(pub, msg + b"!", new_sig)
    assert not sm2_verify(pub, msg, old_sig, b"another-user-id")


def test_hot_key_gets_a_table_and_the_cache_is_bounded() -> None:
    key = Sm2PrivateKey.generate()
    pub, sig = key.public_key(), key.sign(b"m")
    before = sm._key_table.cache_info()
    for _ in range(sm._HOT_AFTER + 2):
        assert sm2_verify(pub, b"m", sig)
    after = sm._key_table.cache_info()
    assert after.currsize == before.currsize + 1 and after.hits >= before.hits + 2
    assert after.maxsize == 512


def test_key_table_shape() -> None:
    assert (P_TABLE.nwin, P_TABLE.m, len(P_TABLE.xs)) == (52, 16, 832)
    assert all(type(v) is int for v in P_TABLE.xs[:10])  # ints: 60 bytes, not mpz's 104+
