"""ID-number entry on the terminal keypad (pure).

The MCU only reports key presses; the entry session lives here: masked
display, backspace, cancel, and the 18-character resident identity number
(GB 11643-1999) validated before it is accepted: 6-digit region code, 8-digit
birth date, 3-digit sequence, check character by ISO 7064 MOD 11-2
(weights 2^(17-i) mod 11, value -> "10X98765432").
"""
from __future__ import annotations

import datetime as _dt
import enum
from dataclasses import dataclass, field

from firmware_bridge.messages import KEY_BACKSPACE, KEY_CANCEL, KEY_ENTER

ID_LEN = 18
WEIGHTS = tuple(pow(2, 17 - i, 11) for i in range(17))  # 7 9 10 5 8 4 2 1 6 3 7 9 10 5 8 4 2
CHECK_CHARS = "10X98765432"


def id_check_char(first17: str) -> str:
    """ISO 7064 MOD 11-2 check character of the first 17 digits."""
    if len(first17) != 17 or not first17.isdigit():
        raise ValueError("need exactly 17 digits")
    return CHECK_CHARS[sum(int(c) * w for c, w in zip(first17, WEIGHTS)) % 11]


def check_id(value: str) -> tuple[str, str] | None:
    """``(code, message)`` saying why ``value`` is not a valid ID number, or None when it is.

    Codes: ``empty``, ``length``, ``format``, ``region``, ``birth_date``, ``checksum``.
    """
    v = value.upper()
    if not v:
        return "empty", "an ID number has 18 characters, 0 entered"
    if len(v) != ID_LEN:
        return "length", f"an ID number has 18 characters, {len(v)} entered"
    if not v[:17].isdigit() or not (v[17].isdigit() or v[17] == "X"):
        return "format", "an ID number is 17 digits followed by a digit or X"
    if v[0] == "0":
        return "region", "the region code cannot start with 0"
    try:
        born = _dt.date(int(v[6:10]), int(v[10:12]), int(v[12:14]))
    except ValueError:
        return "birth_date", "the birth date in the ID number is not a real date"
    if born.year < 1880:
        return "birth_date", "the birth date in the ID number is not plausible"
    if id_check_char(v[:17]) != v[17]:
        return "checksum", "the check character does not match; please check the number"
    return None


def id_problem(value: str) -> str | None:
    """Why ``value`` is not a valid 18-character ID number, or None when it is."""
    p = check_id(value)
    return p[1] if p else None


class EntryState(str, enum.Enum):
    ACTIVE = "active"
    ACCEPTED = "accepted"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"


@dataclass
class IdEntry:
    """One ID-number entry session fed with key codes from KEY events."""

    reveal_last: int = 1  # characters left visible at the end of the masked display
    mask: str = "*"
    state: EntryState = EntryState.ACTIVE
    error: str | None = None  # why the last key was refused (shown on screen)
    error_code: str | None = None  # machine-readable: see check_id, plus "too_long", "x_position"
    keys: int = 0
    _chars: list[str] = field(default_factory=list)

    @property
    def length(self) -> int:
        return len(self._chars)

    @property
    def display(self) -> str:
        n = len(self._chars)
        shown = min(self.reveal_last, n) if self.state == EntryState.ACTIVE else 0
        return self.mask * (n - shown) + "".join(self._chars[n - shown :])

    @property
    def value(self) -> str | None:
        """The accepted ID number (only once validated)."""
        return "".join(self._chars) if self.state == EntryState.ACCEPTED else None

    def press(self, key: int) -> None:
        if self.state != EntryState.ACTIVE:
            return
        self.keys += 1
        if key == KEY_CANCEL:
            self.state = EntryState.CANCELLED
            self._chars.clear()
        elif key == KEY_BACKSPACE:
            if self._chars:
                self._chars.pop()
            self.error = self.error_code = None
        elif key == KEY_ENTER:
            problem = check_id("".join(self._chars))
            self.error_code, self.error = problem if problem else (None, None)
            if problem is None:
                self.state = EntryState.ACCEPTED
        elif 0x30 <= key <= 0x39 or key == ord("X"):
            if key == ord("X") and len(self._chars) != ID_LEN - 1:
                self.error_code, self.error = "x_position", "X can only be the last character"
                return
            if len(self._chars) >= ID_LEN:
                self.error_code, self.error = "too_long", "an ID number has 18 characters"
                return
            self._chars.append(chr(key))
            self.error = self.error_code = None

    def expire(self) -> None:
        if self.state == EntryState.ACTIVE:
            self.state = EntryState.TIMED_OUT
            self._chars.clear()
