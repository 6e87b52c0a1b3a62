"""Injected time. Domain code never calls `datetime.now()` itself.

Calendar days (interest, monthly caps, reconciliation) are Asia/Shanghai days.
"""
from __future__ import annotations

import threading
from datetime import date, datetime, timedelta, timezone
from typing import Protocol
from zoneinfo import ZoneInfo

SHANGHAI = ZoneInfo("Asia/Shanghai")


class Clock(Protocol):
    def now(self) -> datetime:
        """An aware datetime."""
        ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(timezone.utc)


class ManualClock:
    """A clock the tests and the replay tool move by hand."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2026, 1, 1, tzinfo=SHANGHAI)
        if self._now.tzinfo is None:
            raise ValueError("ManualClock needs an aware datetime")
        self._lock = threading.Lock()

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def set(self, when: datetime) -> None:
        with self._lock:
            self._now = when

    def advance(self, **kw: float) -> datetime:
        with self._lock:
            self._now = self._now + timedelta(**kw)
            return self._now


def local_day(clock_or_dt: Clock | datetime) -> date:
    """The Asia/Shanghai calendar day of an instant."""
    dt = clock_or_dt if isinstance(clock_or_dt, datetime) else clock_or_dt.now()
    return dt.astimezone(SHANGHAI).date()
