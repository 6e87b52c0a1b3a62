from __future__ import annotations

import pytest

from firmware_bridge.keypad import WEIGHTS, EntryState, IdEntry, id_check_char, id_problem
from firmware_bridge.messages import KEY_BACKSPACE, KEY_CANCEL, KEY_ENTER


def test_weights_are_the_gb11643_table() -> None:
    assert WEIGHTS == (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)


# Hand-worked: 1101051949123100 2 -> weighted sum 167, 167 mod 11 = 2 -> 'X'
#              4405241880010100 1 -> weighted sum 195, 195 mod 11 = 8 -> '4'
@pytest.mark.parametrize(("first17", "check"), [("11010519491231002", "X"), ("44052418800101001", "4")])
def test_check_char_hand_worked(first17: str, check: str) -> None:
    assert id_check_char(first17) == check
    assert id_problem(first17 + check) is None


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("110105194912310021", "check character"),  # wrong check digit
        ("11010519491231002", "18 characters"),
        ("1101051949123100X2", "17 digits"),
        ("110105194902300021", "real date"),  # 30 February
        ("010105194912310021", "region"),
    ],
)
def test_rejections_name_the_problem(value: str, words: str) -> None:
    problem = id_problem(value)
    assert problem is not None and words in problem


def press(e: IdEntry, s: str) -> None:
    for ch in s:
        e.press({"<": KEY_BACKSPACE, "!": KEY_ENTER, "~": KEY_CANCEL}.get(ch, ord(ch)))


def test_entry_masks_backspaces_and_accepts_only_a_valid_number() -> None:
    e = IdEntry(reveal_last=1)
    press(e, "1101")
    assert e.display == "***1" and e.value is None
    press(e, "9<")
    assert e.display == "***1"
    press(e, "0519491231002X")
    assert e.length == 18
    press(e, "!")
    assert e.state == EntryState.ACCEPTED and e.value == "11010519491231002X"
    assert e.display == "*" * 18  # nothing revealed once done


def test_entry_with_bad_checksum_stays_open_with_an_error() -> None:
    e = IdEntry()
    press(e, "!")
    assert e.error_code == "empty" and e.error == "an ID number has 18 characters, 0 entered"
    press(e, "110105194912310021!")
    assert e.state == EntryState.ACTIVE and "check character" in (e.error or "") and e.error_code == "checksum"
    press(e, "<X!")
    assert e.state == EntryState.ACCEPTED


def test_x_only_in_last_place_and_cancel_clears() -> None:
    e = IdEntry(reveal_last=0)
    press(e, "X")
    assert e.length == 0 and e.error_code == "x_position"
    press(e, "123")
    assert e.display == "***"
    press(e, "~")
    assert e.state == EntryState.CANCELLED and e.length == 0 and e.value is None
    press(e, "4")
    assert e.length == 0  # closed sessions ignore keys


def test_expire() -> None:
    e = IdEntry()
    press(e, "12")
    e.expire()
    assert e.state == EntryState.TIMED_OUT and e.length == 0
