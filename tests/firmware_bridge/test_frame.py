from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_bridge.frame import (
    MAX_FRAME,
    MAX_PAYLOAD,
    SOF,
    Damaged,
    Deframer,
    Frame,
    FrameType,
    encode,
    header_check,
)


def test_exact_bytes_of_a_ping_request() -> None:
    # SOF, type REQ, seq 1, cmd PING, len 0 (LE), HCS = ~(1+1+2) & 0xFF = 0xFB, CRC-16 of 01 01 02 00 00 FB
    raw = encode(FrameType.REQ, 1, 0x02)
    assert raw == bytes.fromhex("a5 01 01 02 00 00 fb 52 fd")
    assert header_check(1, 1, 2, 0) == 0xFB


def test_exact_bytes_of_a_ping_response() -> None:
    # RSP seq 1 PING, payload: status 00 + uptime 10000 ms (10 27 00 00)
    raw = encode(FrameType.RSP, 1, 0x02, bytes.fromhex("00 10 27 00 00"))
    assert raw == bytes.fromhex("a5 02 01 02 05 00 f5 00 10 27 00 00 5f 6c")


def test_round_trip_and_split_anywhere() -> None:
    frames = [Frame(FrameType.EVT, i, 0x81, bytes([i]) * i) for i in range(20)]
    wire = b"".join(f.encode() for f in frames)
    for step in (1, 2, 3, 7, 64, len(wire)):
        d = Deframer()
        got = []
        for i in range(0, len(wire), step):
            got += d.feed(wire[i : i + step])
        assert got == frames
        assert d.buffered == 0


def test_garbage_between_frames_is_skipped() -> None:
    a, b = Frame(FrameType.REQ, 1, 2), Frame(FrameType.RSP, 1, 2, b"\x00")
    d = Deframer()
    got = d.feed(b"\x00\xff\xa5\xa5garbage" + a.encode() + b"\xa5\x01\x02" + b"noise" + b.encode())
    assert got == [a, b]
    assert d.stats.garbage_bytes > 0


def test_corrupted_crc_is_reported_with_its_seq_and_the_next_frame_survives() -> None:
    bad = bytearray(Frame(FrameType.RSP, 9, 0x04, b"\x00abc").encode())
    bad[8] ^= 0x40  # a payload bit
    good = Frame(FrameType.EVT, 3, 0x81, b"5")
    got = Deframer().feed(bytes(bad) + good.encode())
    assert got[0] == Damaged(FrameType.RSP, 9, 0x04)
    assert got[-1] == good


def test_truncated_frame_is_abandoned_after_a_gap_and_what_follows_is_found() -> None:
    a = Frame(FrameType.RSP, 5, 0x03, b"x" * 40).encode()
    b = Frame(FrameType.RSP, 6, 0x03, b"y").encode()
    d = Deframer()
    assert d.feed(a[:20] + b) == []  # b is swallowed by a's claimed length for now
    assert d.buffered == 20 + len(b)
    assert d.expire() == [Frame(FrameType.RSP, 6, 0x03, b"y")]
    assert d.buffered == 0


def test_length_over_maximum_is_not_a_frame() -> None:
    n = MAX_PAYLOAD + 1
    hdr = bytes((SOF, 1, 0, 2, n & 0xFF, n >> 8, header_check(1, 0, 2, n)))
    d = Deframer()
    assert d.feed(hdr) == []
    assert d.stats.header_errors == 1 and d.buffered == 0


def test_encode_refuses_out_of_range_fields() -> None:
    with pytest.raises(ValueError):
        encode(FrameType.REQ, 1, 2, bytes(MAX_PAYLOAD + 1))
    with pytest.raises(ValueError):
        encode(FrameType.REQ, 256, 2)
    with pytest.raises(ValueError):
        encode(0x09, 1, 2)


frames_st = st.builds(
    Frame,
    st.sampled_from(list(FrameType)),
    st.integers(0, 255),
    st.integers(0, 255),
    st.binary(max_size=300),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=3000), max_size=8))
def test_fuzz_never_raises_and_memory_is_bounded(chunks: list[bytes]) -> None:
    d = Deframer()
    for c in chunks:
        for it in d.feed(c):
            assert isinstance(it, (Frame, Damaged))
        assert d.buffered < MAX_FRAME
    while d.buffered:
        d.expire()


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000), frames_st, st.binary(max_size=50), st.integers(1, 64))
def test_fuzz_resync_after_garbage(garbage: bytes, frame: Frame, trailer: bytes, step: int) -> None:
    """Whatever comes before it, a valid frame is recovered (after at most a few gap expiries)."""
    wire = garbage + frame.encode() + trailer
    d = Deframer()
    got = []
    for i in range(0, len(wire), step):
        got += d.feed(wire[i : i + step])
        assert d.buffered < MAX_FRAME
    while d.buffered:
        got += d.expire()
    assert frame in got


@settings(max_examples=200, deadline=None)
@given(st.lists(frames_st, min_size=1, max_size=5), st.integers(0, 10_000))
def test_fuzz_single_bit_flip_never_yields_a_wrong_frame(frames: list[Frame], pos: int) -> None:
    wire = bytearray(b"".join(f.encode() for f in frames))
    bit = pos % (len(wire) * 8)
    wire[bit // 8] ^= 1 << (bit % 8)
    d = Deframer()
    got = d.feed(bytes(wire))
    while d.buffered:
        got += d.expire()
    # every decoded frame is one that was sent: CRC-16 catches all single-bit errors
    assert all(g in frames for g in got if isinstance(g, Frame))
