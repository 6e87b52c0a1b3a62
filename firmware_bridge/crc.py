"""CRC-16/CCITT-FALSE, the frame check of the serial protocol.

Parameters (Rocksoft model): width 16, poly 0x1021, init 0xFFFF, refin false,
refout false, xorout 0x0000, check("123456789") = 0x29B1. Transmitted high
byte first. The hot path uses ``binascii.crc_hqx`` (C, same polynomial,
non-reflected, init given); ``crc16_reference`` is the bit-by-bit definition
a device author can port, and the tests hold the two equal.
"""
from __future__ import annotations

import binascii

POLY = 0x1021
INIT = 0xFFFF
XOROUT = 0x0000
CHECK = 0x29B1


def crc16(data: bytes | bytearray | memoryview, crc: int = INIT) -> int:
    """CRC-16/CCITT-FALSE of ``data``; pass a previous result to continue."""
    return binascii.crc_hqx(data, crc) ^ XOROUT


def crc16_reference(data: bytes | bytearray | memoryview, crc: int = INIT) -> int:
    """The same CRC, one bit at a time, MSB first (the definition)."""
    for byte in bytes(data):
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ POLY) & 0xFFFF if crc & 0x8000 else (crc << 1) & 0xFFFF
    return crc ^ XOROUT
