"""The national ID number (GB 11643-1999): 17 digits + a mod-11 check character.

Checked on the terminal before anything is sent, so a typo costs the patient
no attempt at the centre.
"""
from __future__ import annotations

_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_CHECK = "10X98765432"


def check_char(first17: str) -> str:
    return _CHECK[sum(int(c) * w for c, w in zip(first17, _WEIGHTS)) % 11]


def valid_id_number(s: str) -> bool:
    if len(s) != 18 or not s[:17].isdigit():
        return False
    return s[17].upper() == check_char(s[:17])
