from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from firmware_bridge.crc import CHECK, crc16, crc16_reference


# published CRC-16/CCITT-FALSE values (reveng catalogue "check", and widely quoted vectors)
@pytest.mark.parametrize(
    ("data", "expected"),
    [(b"123456789", 0x29B1), (b"", 0xFFFF), (b"A", 0xB915), (b"\x00", 0xE1F0)],
)
@pytest.mark.parametrize("fn", [crc16, crc16_reference])
def test_vectors(fn, data: bytes, expected: int) -> None:
    assert fn(data) == expected


def test_check_constant() -> None:
    assert CHECK == crc16(b"123456789")


@given(st.binary(max_size=300))
def test_fast_equals_reference(data: bytes) -> None:
    assert crc16(data) == crc16_reference(data)


@given(st.binary(max_size=300), st.binary(max_size=300))
def test_incremental(a: bytes, b: bytes) -> None:
    assert crc16(b, crc16(a)) == crc16(a + b)


@given(st.binary(max_size=300))
def test_residue_zero_when_crc_appended_high_byte_first(data: bytes) -> None:
    c = crc16(data)
    assert crc16(data + bytes((c >> 8, c & 0xFF))) == 0
