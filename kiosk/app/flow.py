"""The state machine of one payment session at the counter (pure, no I/O).

    bill_received -> face_capture -> liveness -> match [-> phone_entry -> match]
        -> [first visit: id_entry -> activation] -> presettled -> confirm
        -> settling -> printing -> done
    (a return the cashier confirms: bill_received -> presettled, no face)
    any state before settling -> failed | cancelled
    settling | printing -> pending (a party's answer is unknown, or a fault while money moved: recovery
    completes it by key from the journal; never "failed" for what may have happened)

Every state has a timeout (seconds, configurable) and accepts a cancel until
money starts to move (`settling`): from then on the session finishes or is
reversed by the journal, never abandoned half-way. The machine only records
and checks transitions; `kiosk.app.session` performs the work of each state.
Observers (the screen) receive an immutable `Snapshot` on every change.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Callable, Mapping

from kiosk.clock import Clock
from kiosk.errors import IntegrityError
from kiosk.app.prompts import REASONS, reason_prompt, state_prompt


class State(StrEnum):
    BILL_RECEIVED = "bill_received"
    FACE_CAPTURE = "face_capture"
    LIVENESS = "liveness"
    MATCH = "match"
    PHONE_ENTRY = "phone_entry"
    ID_ENTRY = "id_entry"
    ACTIVATION = "activation"
    PRESETTLED = "presettled"
    CONFIRM = "confirm"
    SETTLING = "settling"
    PRINTING = "printing"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"
    PENDING = "pending"  # the outcome is not known yet (a lost answer): recovery resolves it by key


TERMINAL = frozenset({State.DONE, State.FAILED, State.CANCELLED, State.PENDING})
# Once money moves the patient can no longer walk away from the session.
COMMITTING = frozenset({State.SETTLING, State.PRINTING})

_S = State
TRANSITIONS: Mapping[State, frozenset[State]] = {
    _S.BILL_RECEIVED: frozenset({_S.FACE_CAPTURE, _S.PRESETTLED}),  # presettled at once: a cashier-confirmed return
    _S.FACE_CAPTURE: frozenset({_S.LIVENESS}),
    _S.LIVENESS: frozenset({_S.MATCH, _S.FACE_CAPTURE}),
    _S.MATCH: frozenset({_S.ID_ENTRY, _S.PRESETTLED, _S.PHONE_ENTRY}),
    _S.PHONE_ENTRY: frozenset({_S.MATCH}),
    _S.ID_ENTRY: frozenset({_S.ACTIVATION}),
    _S.ACTIVATION: frozenset({_S.PRESETTLED, _S.ID_ENTRY}),
    _S.PRESETTLED: frozenset({_S.CONFIRM}),
    _S.CONFIRM: frozenset({_S.SETTLING}),
    _S.SETTLING: frozenset({_S.PRINTING, _S.PENDING}),
    _S.PRINTING: frozenset({_S.DONE, _S.PENDING}),
    _S.DONE: frozenset(),
    _S.FAILED: frozenset(),
    _S.CANCELLED: frozenset(),
    _S.PENDING: frozenset(),
}

# Seconds a state may last before the session times out.
DEFAULT_TIMEOUTS_S: Mapping[State, float] = {
    _S.BILL_RECEIVED: 120.0,   # waiting for the patient to step up
    _S.FACE_CAPTURE: 30.0,
    _S.LIVENESS: 10.0,
    _S.MATCH: 10.0,
    _S.PHONE_ENTRY: 60.0,
    _S.ID_ENTRY: 90.0,
    _S.ACTIVATION: 15.0,
    _S.PRESETTLED: 15.0,
    _S.CONFIRM: 60.0,
    _S.SETTLING: 30.0,
    _S.PRINTING: 20.0,
}


@dataclass(frozen=True)
class Snapshot:
    """What the screen shows: one state of one session. Amounts are yuan strings."""

    session_id: str
    order_id: str
    seq: int
    state: str
    prompt_zh: str
    prompt_en: str
    reason: str | None = None
    reason_zh: str | None = None
    reason_en: str | None = None
    amounts: Mapping[str, str] = field(default_factory=dict)
    info: Mapping[str, object] = field(default_factory=dict)
    entered_at: str = ""
    deadline: str | None = None
    terminal: bool = False

    def to_dict(self) -> dict[str, object]:
        return {
            "session_id": self.session_id, "order_id": self.order_id, "seq": self.seq,
            "state": self.state, "prompt": {"zh": self.prompt_zh, "en": self.prompt_en},
            "reason": self.reason,
            "reason_text": ({"zh": self.reason_zh, "en": self.reason_en} if self.reason else None),
            "amounts": dict(self.amounts), "info": dict(self.info),
            "entered_at": self.entered_at, "deadline": self.deadline, "terminal": self.terminal,
        }


class Machine:
    """Legal transitions, deadlines and cancel requests of one session (thread-safe)."""

    def __init__(self, session_id: str, order_id: str, clock: Clock, *,
                 timeouts: Mapping[State, float] | None = None,
                 on_change: Callable[[Snapshot], None] | None = None, kind: str = "pay") -> None:
        self.session_id = session_id
        self.kind = kind  # 'pay' | 'return' | 'return_cashier' | 'register' | 'revoke': which texts the patient reads (kiosk.app.prompts)
        self.order_id = order_id
        self._clock = clock
        self._timeouts = {**DEFAULT_TIMEOUTS_S, **(timeouts or {})}
        self._on_change = on_change
        self._lock = threading.RLock()
        self._seq = 0
        self._cancel_by: str | None = None
        self.state = State.BILL_RECEIVED
        self.reason: str | None = None
        self.reason_args: dict[str, object] = {}
        self.amounts: dict[str, str] = {}
        self.info: dict[str, object] = ({"kind": "return"} if kind.startswith("return") else
                                        {"kind": kind} if kind in ("register", "revoke") else {})
        self.history: list[tuple[State, datetime]] = []
        self._enter(State.BILL_RECEIVED)

    # -- queries --------------------------------------------------------
    @property
    def deadline(self) -> datetime | None:
        with self._lock:
            if self.state in TERMINAL:
                return None
            return self.history[-1][1] + timedelta(seconds=self._timeouts[self.state])

    def expired(self) -> bool:
        d = self.deadline
        return d is not None and self._clock.now() >= d

    def seconds_left(self) -> float:
        d = self.deadline
        if d is None:
            return 0.0
        return max(0.0, (d - self._clock.now()).total_seconds())

    @property
    def cancel_requested(self) -> str | None:
        """'patient' or 'cashier' when a cancel is pending and still allowed."""
        with self._lock:
            return self._cancel_by

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL

    # -- transitions ----------------------------------------------------
    def go(self, to: State, *, reason: str | None = None, reason_args: dict[str, object] | None = None,
           **info: object) -> None:
        """Move to `to`; an illegal move is a bug in the caller, reported loudly.

        `reason` is a hint shown in the new state (a retry after "id_mismatch",
        a receipt warning on "done")."""
        with self._lock:
            if to not in TRANSITIONS[self.state]:
                raise IntegrityError(f"illegal transition {self.state} -> {to}", code="illegal_transition")
            if reason is not None and reason not in REASONS:
                raise IntegrityError(f"unknown reason code {reason!r}", code="unknown_reason")
            self.reason, self.reason_args = reason, dict(reason_args or {})
            self.info.update(info)
            self._enter(to)

    def prompt(self, reason: str | None, **args: object) -> None:
        """Show a hint in the current state (quality prompt, tries left) without moving."""
        with self._lock:
            if reason is not None and reason not in REASONS:
                raise IntegrityError(f"unknown reason code {reason!r}", code="unknown_reason")
            if reason == self.reason and args == self.reason_args:
                return
            self.reason, self.reason_args = reason, dict(args)
            self._publish()

    def set_info(self, **info: object) -> None:
        with self._lock:
            self.info.update(info)
            self._publish()

    def set_amounts(self, **amounts: str) -> None:
        with self._lock:
            self.amounts.update(amounts)
            self._publish()

    def fail(self, reason: str, **args: object) -> None:
        """End the session with a reason the patient can act on.

        From `settling` this is only called after the money was put back (or
        left to the journal to put back)."""
        with self._lock:
            if reason not in REASONS:
                raise IntegrityError(f"unknown reason code {reason!r}", code="unknown_reason")
            if self.state in TERMINAL:
                raise IntegrityError(f"session already ended ({self.state})", code="illegal_transition")
            self.reason, self.reason_args = reason, dict(args)
            self._enter(State.FAILED)

    def pend(self, reason: str, **args: object) -> None:
        """End the session with its outcome not yet known (a party's answer was lost; recovery sends the
        same key again): the patient reads "pending", never "failed" for something that may have happened."""
        with self._lock:
            if reason not in REASONS:
                raise IntegrityError(f"unknown reason code {reason!r}", code="unknown_reason")
            if State.PENDING not in TRANSITIONS[self.state]:
                raise IntegrityError(f"illegal transition {self.state} -> pending", code="illegal_transition")
            self.reason, self.reason_args = reason, dict(args)
            self._enter(State.PENDING)

    def finish_cancelled(self) -> None:
        with self._lock:
            if self.state in TERMINAL or self.state in COMMITTING:
                raise IntegrityError(f"cannot cancel in {self.state}", code="illegal_transition")
            by = self._cancel_by or "patient"
            self.reason, self.reason_args = f"cancelled_by_{by}", {}
            self._enter(State.CANCELLED)

    def finish_timeout(self) -> None:
        with self._lock:
            if self.state in TERMINAL or self.state in COMMITTING:
                raise IntegrityError(f"cannot time out in {self.state}", code="illegal_transition")
            self.info["timed_out_in"] = str(self.state)
            self.reason, self.reason_args = "timeout", {}
            self._enter(State.FAILED)

    def request_cancel(self, by: str = "patient") -> bool:
        """Ask the session to stop; False when it is too late (money is moving or it ended)."""
        if by not in ("patient", "cashier"):
            raise IntegrityError(f"unknown canceller {by!r}")
        with self._lock:
            if self.state in TERMINAL or self.state in COMMITTING:
                return False
            if self._cancel_by is None:
                self._cancel_by = by
            return True

    def snapshot(self) -> Snapshot:
        with self._lock:
            sp = state_prompt(self.state, self.kind)
            rp = reason_prompt(self.reason, kind=self.kind, **self.reason_args) if self.reason else None
            d = self.deadline
            return Snapshot(
                session_id=self.session_id, order_id=self.order_id, seq=self._seq,
                state=str(self.state), prompt_zh=sp.zh, prompt_en=sp.en,
                reason=self.reason, reason_zh=rp.zh if rp else None, reason_en=rp.en if rp else None,
                amounts=dict(self.amounts), info=dict(self.info),
                entered_at=self.history[-1][1].isoformat(), deadline=d.isoformat() if d else None,
                terminal=self.state in TERMINAL,
            )

    # -- internals ------------------------------------------------------
    def _enter(self, to: State) -> None:
        self.state = to
        self.history.append((to, self._clock.now()))
        self._publish()

    def _publish(self) -> None:
        self._seq += 1
        if self._on_change is not None:
            self._on_change(self.snapshot())
