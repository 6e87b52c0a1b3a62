"""ESC/POS receipt bytes (pure). The MCU passes them to the printer unchanged.

Only the commands every 58/80 mm thermal printer sold in China knows:
ESC @ (init), FS & (Chinese character mode, GB18030 text), ESC a (align),
ESC E (bold), GS ! (character size), ESC d (feed lines), GS V 66 (feed & cut).
"""
from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field

ESC, GS, FS, LF = 0x1B, 0x1D, 0x1C, 0x0A
INIT = b"\x1b@"
CHINESE_ON = b"\x1c&"
ALIGN = {"left": 0, "center": 1, "right": 2}


def width(s: str) -> int:
    """Printed columns: CJK (wide/full-width) characters take two."""
    return sum(2 if unicodedata.east_asian_width(c) in ("W", "F") else 1 for c in s)


def align(where: str) -> bytes:
    return bytes((ESC, ord("a"), ALIGN[where]))


def bold(on: bool) -> bytes:
    return bytes((ESC, ord("E"), 1 if on else 0))


def size(w: int = 1, h: int = 1) -> bytes:
    if not (1 <= w <= 8 and 1 <= h <= 8):
        raise ValueError("character size is 1..8")
    return bytes((GS, ord("!"), ((w - 1) << 4) | (h - 1)))


def feed(lines: int) -> bytes:
    return bytes((ESC, ord("d"), max(0, min(lines, 255))))


def cut() -> bytes:
    return bytes((GS, ord("V"), 66, 0))  # feed to the cutter, then partial cut


@dataclass
class Receipt:
    """A receipt builder: ``Receipt(32).title(...).kv(...).rule().bytes()``."""

    columns: int = 32  # 58 mm paper, font A
    encoding: str = "gb18030"
    _out: bytearray = field(default_factory=lambda: bytearray(INIT + CHINESE_ON))

    def text(self, s: str, *, where: str = "left", strong: bool = False) -> Receipt:
        self._out += align(where)
        if strong:
            self._out += bold(True)
        self._out += s.encode(self.encoding, "replace") + bytes((LF,))
        if strong:
            self._out += bold(False)
        return self

    def title(self, s: str) -> Receipt:
        self._out += size(2, 2)
        self.text(s, where="center", strong=True)
        self._out += size(1, 1)
        return self

    def kv(self, left: str, right: str) -> Receipt:
        pad = max(1, self.columns - width(left) - width(right))
        return self.text(left + " " * pad + right)

    def rule(self, ch: str = "-") -> Receipt:
        return self.text(ch * self.columns)

    def finish(self, feed_lines: int = 3) -> bytes:
        return bytes(self._out + feed(feed_lines) + cut())
