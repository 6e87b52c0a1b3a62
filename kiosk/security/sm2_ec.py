"""Fast elliptic-curve arithmetic for SM2 signing and verifying (used by kiosk.security.sm).

Short-Weierstrass prime curves y^2 = x^3 + a*x + b over GF(p), numbers as gmpy2 `mpz`.
Everything here is a *sum of precomputed affine points*: a scalar k is cut into
fixed-width windows, window i with digit d contributes d * 2^(w*i) * B, read from a
table, and the points are accumulated in Jacobian coordinates with mixed
(Jacobian + affine) additions. No doubling is needed outside the rare case of adding
a point to itself.

- G: w = 8, one window per byte of k: 32 windows x 255 multiples (8160 affine points
  as mpz, about 1.5 MB, built once per process and curve on first use in 25-45 ms);
  k*G = at most 32 mixed additions.
- A public key P: signed digits of w = 5 (each in [-16, 15], -d*B = (x, p - y)):
  52 windows x 16 multiples = 832 affine points as Python ints, about 113 KB per key
  (sys.getsizeof), in two flat lists (a tuple per point would add 56 bytes each);
  ~3 ms to build.

Tables are made affine with Montgomery's trick (one modular inversion per window).
The result is checked against python-ecdsa in tests/security/test_sm2_tables.py.
"""
from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING, Iterable

from gmpy2 import invert, mpz

if TYPE_CHECKING:  # pragma: no cover
    from kiosk.security.sm import Sm2Curve

_ZERO = mpz(0)
_ONE = mpz(1)

# (X, Y, Z) Jacobian: x = X/Z^2, y = Y/Z^3; Z == 0 is the point at infinity.
Jac = tuple  # of three mpz

_G_W = 8
_P_W = 5
_P_HALF = 1 << (_P_W - 1)  # 16


class _Ctx:
    """Per-curve constants."""

    __slots__ = ("p", "a", "n", "nbits", "gx", "gy")

    def __init__(self, c: Sm2Curve) -> None:
        self.p, self.a, self.n = mpz(c.p), mpz(c.a), mpz(c.n)
        self.nbits = c.n.bit_length()
        self.gx, self.gy = mpz(c.gx), mpz(c.gy)


@lru_cache(maxsize=None)
def _ctx(c: Sm2Curve) -> _Ctx:
    return _Ctx(c)


# ---------------------------------------------------------------- point arithmetic


def _double(p: mpz, a: mpz, X1: mpz, Y1: mpz, Z1: mpz) -> Jac:
    """Jacobian doubling for any a (dbl-2007-bl shape); only on the rare path."""
    if not Z1 or not Y1:
        return _ZERO, _ONE, _ZERO
    XX = X1 * X1 % p
    YY = Y1 * Y1 % p
    ZZ = Z1 * Z1 % p
    S = 4 * X1 * YY % p
    M = (3 * XX + a * ZZ * ZZ) % p
    X3 = (M * M - 2 * S) % p
    Y3 = (M * (S - X3) - 8 * YY * YY) % p
    Z3 = 2 * Y1 * Z1 % p
    return X3, Y3, Z3


def _madd(p: mpz, a: mpz, X1: mpz, Y1: mpz, Z1: mpz, x2: mpz, y2: mpz) -> Jac:
    """(X1, Y1, Z1) + (x2, y2, 1), handling infinity, P + P and P + (-P)."""
    if not Z1:
        return x2, y2, _ONE
    Z1Z1 = Z1 * Z1 % p
    H = (x2 * Z1Z1 - X1) % p
    r = (y2 * Z1 % p * Z1Z1 - Y1) % p
    if not H:
        if r:
            return _ZERO, _ONE, _ZERO  # P + (-P)
        return _double(p, a, X1, Y1, Z1)
    HH = H * H % p
    HHH = H * HH % p
    V = X1 * HH % p
    X3 = (r * r - HHH - 2 * V) % p
    return X3, (r * (V - X3) - Y1 * HHH) % p, Z1 * H % p


def _sum_affine(p: mpz, a: mpz, xs: Iterable[mpz], ys: Iterable[mpz]) -> Jac:
    """Sum of affine points given as parallel sequences; the hot loop (add-1998-cmo-2
    with Z2 = 1, inlined; the equal / opposite cases go through `_madd`)."""
    X1 = Y1 = Z1 = _ZERO
    for x2, y2 in zip(xs, ys):
        if not Z1:
            X1, Y1, Z1 = x2, y2, _ONE
            continue
        Z1Z1 = Z1 * Z1 % p
        H = (x2 * Z1Z1 - X1) % p
        r = (y2 * Z1 % p * Z1Z1 - Y1) % p
        if not H:
            X1, Y1, Z1 = _madd(p, a, X1, Y1, Z1, x2, y2)
            continue
        HH = H * H % p
        HHH = H * HH % p
        V = X1 * HH % p
        X3 = (r * r - HHH - 2 * V) % p
        Y1 = (r * (V - X3) - Y1 * HHH) % p
        Z1 = Z1 * H % p
        X1 = X3
    return X1, Y1, Z1


def _to_affine(p: mpz, pts: list[Jac]) -> list[tuple[mpz, mpz]]:
    """Batch conversion (Montgomery's trick: one inversion for the whole list).
    Every Z must be non-zero."""
    prefix = []
    acc = _ONE
    for _, _, z in pts:
        prefix.append(acc)
        acc = acc * z % p
    inv = invert(acc, p)
    out: list[tuple[mpz, mpz]] = [None] * len(pts)  # type: ignore[list-item]
    for i in range(len(pts) - 1, -1, -1):
        X, Y, Z = pts[i]
        zi = inv * prefix[i] % p  # 1/Z_i
        inv = inv * Z % p
        zi2 = zi * zi % p
        out[i] = (X * zi2 % p, Y * zi2 % p * zi % p)
    return out


def affine_x(p: mpz, P: Jac) -> int | None:
    """x of a Jacobian point as int, None for infinity."""
    X, _, Z = P
    if not Z:
        return None
    zi = invert(Z, p)
    return int(X * zi % p * zi % p)


def affine_xy(p: mpz, P: Jac) -> tuple[int, int] | None:
    X, Y, Z = P
    if not Z:
        return None
    zi = invert(Z, p)
    zi2 = zi * zi % p
    return int(X * zi2 % p), int(Y * zi2 % p * zi % p)


# ---------------------------------------------------------------- window tables


class _Table:
    """Affine multiples j * 2^(w*i) * B for windows i and j = 1..m, in flat lists:
    entry (i, j) at index i*m + (j-1)."""

    __slots__ = ("xs", "ys", "m", "nwin")

    def __init__(self, xs: list[mpz], ys: list[mpz], m: int, nwin: int) -> None:
        self.xs, self.ys, self.m, self.nwin = xs, ys, m, nwin


def _build_table(ctx: _Ctx, bx: mpz, by: mpz, w: int, m: int, nwin: int, conv: type = mpz) -> _Table | None:
    """Per window: m multiples by mixed additions plus 2^w * B (the next window's base)
    by doublings, then one batch inversion. None if a base turns out to have small
    order (impossible on a prime-order curve; the caller then uses python-ecdsa).
    `conv=int` stores Python ints: 60 bytes each where an mpz from gmpy2's object
    cache holds 104-168 (a key table ~113 KB instead of ~170 KB, verify ~6% slower)."""
    p, a = ctx.p, ctx.a
    xs: list[mpz] = []
    ys: list[mpz] = []
    for i in range(nwin):
        jac: list[Jac] = []
        P: Jac = (bx, by, _ONE)
        jac.append(P)
        for _ in range(m - 1):
            P = _madd(p, a, P[0], P[1], P[2], bx, by)
            if not P[2]:
                return None
            jac.append(P)
        last = i == nwin - 1
        if not last:  # next base: 2^w * B, from the largest multiple that is a power of two
            top = 1 << (m.bit_length() - 1)
            Q = jac[top - 1]
            for _ in range(w - (top.bit_length() - 1)):
                Q = _double(p, a, *Q)
            if not Q[2]:
                return None
            jac.append(Q)
        aff = _to_affine(p, jac)
        for x, y in aff[:m]:
            xs.append(conv(x))
            ys.append(conv(y))
        if not last:
            bx, by = aff[m]
    return _Table(xs, ys, m, nwin)


@lru_cache(maxsize=None)
def g_table(c: Sm2Curve) -> _Table | None:
    ctx = _ctx(c)
    nwin = (ctx.nbits + _G_W - 1) // _G_W
    return _build_table(ctx, ctx.gx, ctx.gy, _G_W, (1 << _G_W) - 1, nwin)


def p_nwin(c: Sm2Curve) -> int:
    # 5*nwin >= nbits + 2, so k + offset < 32^nwin for every k < 2^nbits (256 bits: 52)
    return (_ctx(c).nbits + 1) // _P_W + 1


def key_table(c: Sm2Curve, x: int, y: int) -> _Table | None:
    """Signed-digit table of a (validated) public key; ~3 ms to build."""
    ctx = _ctx(c)
    return _build_table(ctx, mpz(x), mpz(y), _P_W, _P_HALF, p_nwin(c), int)


# ---------------------------------------------------------------- scalar multiplication

_B32 = {ch: i for i, ch in enumerate("0123456789abcdefghijklmnopqrstuv")}


def _g_points(c: Sm2Curve, t: _Table, k: int, xs: list[mpz], ys: list[mpz]) -> None:
    """Append the table points whose sum is k*G (0 <= k < n)."""
    nb = (t.nwin * _G_W + 7) // 8
    txs, tys = t.xs, t.ys
    base = -1
    for d in reversed(k.to_bytes(nb, "big")):  # least significant byte = window 0
        if d:
            xs.append(txs[base + d])
            ys.append(tys[base + d])
        base += 255


def _offset(nwin: int) -> int:
    return sum(_P_HALF << (_P_W * i) for i in range(nwin))


@lru_cache(maxsize=None)
def _p_offset(nwin: int) -> mpz:
    return mpz(_offset(nwin))


def _p_points(ctx: _Ctx, t: _Table, k: int, xs: list[mpz], ys: list[mpz]) -> None:
    """Append the table points whose sum is k*P: k + 16*sum(32^i) written in base 32
    gives digits e_i with k = sum (e_i - 16) * 32^i, each e_i - 16 in [-16, 15]. The
    top digit is >= 16, so digits() prints exactly nwin of them (k < 2^nbits)."""
    p = ctx.p
    txs, tys = t.xs, t.ys
    base = -1  # index of multiple j in window i: i*16 + j - 1
    for ch in reversed((k + _p_offset(t.nwin)).digits(32)):
        d = _B32[ch] - _P_HALF
        if d > 0:
            xs.append(txs[base + d])
            ys.append(tys[base + d])
        elif d < 0:
            xs.append(txs[base - d])
            ys.append(p - tys[base - d])
        base += _P_HALF


def mul_g(c: Sm2Curve, k: int) -> Jac | None:
    """k*G (Jacobian), None when there is no table for this curve."""
    return mul_add(c, k, None, 0)


def mul_add(c: Sm2Curve, s: int, ptab: _Table | None, t: int, extra: tuple[int, int] | None = None) -> Jac | None:
    """s*G + t*P with P's table `ptab` (or, without a table, + the affine point `extra`,
    which the caller computed as t*P some other way). None: no G table."""
    gt = g_table(c)
    if gt is None:
        return None
    ctx = _ctx(c)
    xs: list[mpz] = []
    ys: list[mpz] = []
    _g_points(c, gt, int(s) % c.n, xs, ys)
    if ptab is not None:
        _p_points(ctx, ptab, int(t) % c.n, xs, ys)
    elif extra is not None:
        xs.append(mpz(extra[0]))
        ys.append(mpz(extra[1]))
    return _sum_affine(ctx.p, ctx.a, xs, ys)
