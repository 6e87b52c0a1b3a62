"""Calendar days are Asia/Shanghai days whatever zone an instant is given in."""
from __future__ import annotations

from datetime import date, datetime, timezone

import pytest

from kiosk.clock import SHANGHAI, ManualClock, local_day


def test_shanghai_midnight_is_16_00_utc():
    assert local_day(datetime(2026, 3, 1, 15, 59, 59, tzinfo=timezone.utc)) == date(2026, 3, 1)
    assert local_day(datetime(2026, 3, 1, 16, 0, 0, tzinfo=timezone.utc)) == date(2026, 3, 2)


def test_manual_clock_moves_and_refuses_naive_time():
    c = ManualClock(datetime(2026, 1, 31, 23, 30, tzinfo=SHANGHAI))
    assert local_day(c) == date(2026, 1, 31)
    c.advance(minutes=30)
    assert local_day(c) == date(2026, 2, 1)
    with pytest.raises(ValueError):
        ManualClock(datetime(2026, 1, 1))
