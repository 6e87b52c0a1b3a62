"""Framing: pure encode/decode with length-based resynchronisation.

Wire layout (all multi-byte integers little-endian except the CRC)::

    0     1     2     3     4       5       6     7 .. 7+LEN-1   7+LEN  8+LEN
    SOF   TYPE  SEQ   CMD   LEN_lo  LEN_hi  HCS   PAYLOAD        CRC_hi CRC_lo

SOF is 0xA5. HCS is the one's complement of the 8-bit sum of bytes 1..5, a
cheap header pre-filter so that a stray 0xA5 with a bogus length is rejected
without waiting for LEN bytes. CRC is CRC-16/CCITT-FALSE over bytes 1 ..
6+LEN (everything after SOF), high byte first. No byte stuffing: a receiver
resyncs by length. When a candidate frame fails (bad header, bad CRC) the
receiver drops only its SOF byte and rescans from the next byte, so a real
frame hidden behind garbage is never lost.

``Deframer`` is a bounded, exception-free parser: it never holds more than
``MAX_FRAME`` bytes between calls, whatever it is fed.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field

from firmware_bridge.crc import crc16

SOF = 0xA5
HEADER_LEN = 7
CRC_LEN = 2
OVERHEAD = HEADER_LEN + CRC_LEN
MAX_PAYLOAD = 1024
MAX_FRAME = OVERHEAD + MAX_PAYLOAD


class FrameType(enum.IntEnum):
    REQ = 0x01  # host -> device command; answered by RSP (and ACK if slow)
    RSP = 0x02  # device -> host response; same SEQ as the REQ; implies ACK
    EVT = 0x03  # device -> host event; answered by ACK
    ACK = 0x04  # "received SEQ"; no payload
    NAK = 0x05  # "frame SEQ arrived damaged, resend"; payload: reason (1 byte)


_TYPES = frozenset(int(t) for t in FrameType)


class NakReason(enum.IntEnum):
    BAD_CRC = 0x01
    TOO_LONG = 0x02


def header_check(type_: int, seq: int, cmd: int, length: int) -> int:
    return (~(type_ + seq + cmd + (length & 0xFF) + (length >> 8))) & 0xFF


@dataclass(frozen=True, slots=True)
class Frame:
    type: FrameType
    seq: int
    cmd: int
    payload: bytes = b""

    def encode(self) -> bytes:
        return encode(self.type, self.seq, self.cmd, self.payload)

    def __str__(self) -> str:
        return f"{self.type.name} seq={self.seq} cmd=0x{self.cmd:02X} len={len(self.payload)}"


@dataclass(frozen=True, slots=True)
class Damaged:
    """A frame whose header was plausible but whose CRC failed (NAK-able)."""

    type: int
    seq: int
    cmd: int
    reason: NakReason = NakReason.BAD_CRC


def encode(type_: int, seq: int, cmd: int, payload: bytes = b"", *, max_payload: int = MAX_PAYLOAD) -> bytes:
    """One frame's bytes. Raises ValueError on out-of-range fields (a programming error)."""
    n = len(payload)
    if n > max_payload:
        raise ValueError(f"payload of {n} bytes exceeds the maximum of {max_payload}")
    if not (0 <= seq <= 0xFF and 0 <= cmd <= 0xFF) or int(type_) not in _TYPES:
        raise ValueError(f"bad frame fields type={type_} seq={seq} cmd={cmd}")
    body = bytes((int(type_), seq, cmd, n & 0xFF, n >> 8, header_check(int(type_), seq, cmd, n))) + bytes(payload)
    c = crc16(body)
    return bytes((SOF,)) + body + bytes((c >> 8, c & 0xFF))


@dataclass
class DeframerStats:
    frames: int = 0
    crc_errors: int = 0
    header_errors: int = 0
    garbage_bytes: int = 0
    expired: int = 0


@dataclass
class Deframer:
    """Incremental parser: ``feed`` bytes, get back ``Frame`` and ``Damaged`` items."""

    max_payload: int = MAX_PAYLOAD
    stats: DeframerStats = field(default_factory=DeframerStats)
    _buf: bytearray = field(default_factory=bytearray)

    @property
    def max_frame(self) -> int:
        return OVERHEAD + self.max_payload

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame | Damaged]:
        out: list[Frame | Damaged] = []
        step = self.max_frame
        mv = memoryview(bytes(data))
        for i in range(0, len(mv), step):  # bounded: never buffer more than 2 frames' worth
            self._buf += mv[i : i + step]
            self._parse(out)
        return out

    def expire(self) -> list[Frame | Damaged]:
        """The line went quiet with a partial frame buffered: give up on its SOF and rescan."""
        out: list[Frame | Damaged] = []
        if self._buf:
            self.stats.expired += 1
            self.stats.garbage_bytes += 1
            del self._buf[:1]
            self._parse(out)
        return out

    def _parse(self, out: list[Frame | Damaged]) -> None:
        buf = self._buf
        pos = 0
        end = len(buf)
        st = self.stats
        while True:
            i = buf.find(SOF, pos)
            if i < 0:
                st.garbage_bytes += end - pos
                pos = end
                break
            st.garbage_bytes += i - pos
            pos = i
            if end - pos < HEADER_LEN:
                break
            t, seq, cmd, lo, hi, hcs = buf[pos + 1 : pos + 7]
            n = lo | (hi << 8)
            if t not in _TYPES or n > self.max_payload or hcs != header_check(t, seq, cmd, n):
                st.header_errors += 1
                st.garbage_bytes += 1
                pos += 1
                continue
            total = OVERHEAD + n
            if end - pos < total:
                break
            rx = (buf[pos + total - 2] << 8) | buf[pos + total - 1]
            if crc16(buf[pos + 1 : pos + total - 2]) != rx:
                st.crc_errors += 1
                st.garbage_bytes += 1
                out.append(Damaged(t, seq, cmd))
                pos += 1
                continue
            out.append(Frame(FrameType(t), seq, cmd, bytes(buf[pos + HEADER_LEN : pos + HEADER_LEN + n])))
            st.frames += 1
            pos += total
        del buf[:pos]
