"""The hand-off between the counter flow and the patient's screen.

The flow (any thread, or the event loop) calls `publish`/`update` with a new
ScreenState and `publish_frame` with the camera's current frame. Open screens
are woken at once (SSE), so the page reacts within one event-loop turn. Only the
latest state and the latest frame are kept, in memory; a frame is never
written anywhere, and it is dropped when the camera phase ends.
"""
from __future__ import annotations

import asyncio
import threading
from typing import Any

import numpy as np

from kiosk.app.screen.model import Peripherals, ScreenState
from kiosk.errors import InputError


class _Subscriber:
    __slots__ = ("loop", "event")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.event = asyncio.Event()


class ScreenBus:
    """Latest ScreenState + latest camera frame, with wake-ups for open screens."""

    def __init__(self, initial: ScreenState | None = None) -> None:
        self._lock = threading.Lock()
        self._state = (initial or ScreenState()).model_copy(update={"seq": 0})
        self._subs: set[_Subscriber] = set()
        self._frame: np.ndarray | None = None
        self._frame_seq = 0
        self._closed = False

    # --- state -----------------------------------------------------------
    def current(self) -> ScreenState:
        with self._lock:
            return self._state

    def publish(self, state: ScreenState) -> ScreenState:
        """Show `state` (its seq is replaced by the next number)."""
        if not isinstance(state, ScreenState):
            raise InputError("must be a ScreenState", field="state")
        with self._lock:
            new = state.model_copy(update={"seq": self._state.seq + 1})
            self._state = new
            subs = list(self._subs)
            if not new.camera:
                self._frame = None  # the preview ends with the camera phase
        self._wake(subs)
        return new

    def update(self, **changes: Any) -> ScreenState:
        """Publish the current state with some fields changed (validated)."""
        with self._lock:
            data = self._state.model_dump()
        data.update({k: (v.model_dump() if hasattr(v, "model_dump") else v) for k, v in changes.items()})
        try:
            state = ScreenState.model_validate(data)
        except ValueError as e:  # pydantic ValidationError is a ValueError
            raise InputError(str(e).splitlines()[0] + ": " + _first_error(e), field="screen_state") from None
        return self.publish(state)

    def set_peripherals(self, **status: Any) -> ScreenState:
        """Change some status-bar lights, e.g. set_peripherals(printer="error", printer_detail="paper_out")."""
        cur = self.current().peripherals.model_dump()
        cur.update(status)
        return self.update(peripherals=Peripherals.model_validate(cur))

    # --- camera preview ----------------------------------------------------
    def publish_frame(self, frame: np.ndarray) -> None:
        """Offer the camera's current frame (BGR or grey uint8). Kept in memory only."""
        if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim not in (2, 3):
            raise InputError("must be a uint8 image array (H, W[, 3])", field="frame")
        if frame.ndim == 3 and frame.shape[2] not in (1, 3):
            raise InputError("must have 1 or 3 channels", field="frame")
        with self._lock:
            self._frame = frame
            self._frame_seq += 1

    def clear_frame(self) -> None:
        with self._lock:
            self._frame = None

    def latest_frame(self) -> tuple[int, np.ndarray | None]:
        with self._lock:
            return self._frame_seq, self._frame

    # --- subscriptions (used by the SSE endpoint) ----------------------------
    def subscribe(self) -> _Subscriber:
        sub = _Subscriber(asyncio.get_running_loop())
        with self._lock:
            self._subs.add(sub)
        return sub

    def unsubscribe(self, sub: _Subscriber) -> None:
        with self._lock:
            self._subs.discard(sub)

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Wake and end every open stream (on shutdown)."""
        with self._lock:
            self._closed = True
            subs = list(self._subs)
        self._wake(subs)

    @staticmethod
    def _wake(subs: list[_Subscriber]) -> None:
        for s in subs:
            try:
                s.loop.call_soon_threadsafe(s.event.set)
            except RuntimeError:  # loop closed: the stream is gone
                pass


def _first_error(e: ValueError) -> str:
    errs = getattr(e, "errors", None)
    if callable(errs):
        try:
            first = errs()[0]
            loc = ".".join(str(x) for x in first.get("loc", ()))
            return f"{loc}: {first.get('msg', '')}"
        except Exception:  # pragma: no cover - defensive
            pass
    return str(e)
