from __future__ import annotations

import pytest

from firmware_bridge.escpos import Receipt, cut, size, width


def test_receipt_exact_bytes() -> None:
    got = Receipt(columns=16).title("OK").kv("合计", "1.00").finish()
    expected = (
        b"\x1b\x40"  # ESC @ init
        + b"\x1c\x26"  # FS & Chinese mode
        + b"\x1d\x21\x11"  # GS ! double width+height
        + b"\x1b\x61\x01"  # ESC a centre
        + b"\x1b\x45\x01" + b"OK\n" + b"\x1b\x45\x00"  # bold on, text, bold off
        + b"\x1d\x21\x00"  # normal size
        + b"\x1b\x61\x00"  # left
        + bytes.fromhex("bacf bcc6")  # 合计 in GB18030
        + b" " * 8 + b"1.00\n"  # 16 columns - 4 (two CJK) - 4
        + b"\x1b\x64\x03"  # feed 3
        + b"\x1d\x56\x42\x00"  # GS V 66 0: feed and cut
    )
    assert got == expected


def test_width_counts_cjk_double() -> None:
    assert width("医保 ok") == 7


def test_size_bounds_and_cut() -> None:
    assert cut() == b"\x1dV\x42\x00"
    with pytest.raises(ValueError):
        size(9, 1)
