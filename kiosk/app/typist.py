"""The scripted patient at the keypad (demo, tests, bench): types into the
firmware-bridge simulator when the session reaches a state.

    typist = Typist(send=lambda line: bridge_client.sim(line))
    typist.plan("id_entry", "110105194912310021<enter>")   # first ID attempt
    typist.plan("confirm", "<enter>")
    runtime.listeners.append(typist.on_snapshot)

Each planned entry is used once, in order, each time the session switches
the keypad on in that state (`info.keypad_on`, `info.keypad_entry`). Keys go
through the simulated MCU as real KEY events over the serial link.
"""
from __future__ import annotations

import queue
import re
import threading
import time
from collections import defaultdict, deque
from typing import Any, Callable

_SENT = re.compile(r"keys sent: (\d+)")


def key_count(keys: str) -> int:
    return len(re.sub(r"<(bs|enter|cancel)>", "k", keys).replace(" ", ""))


class Typist:
    def __init__(self, send: Callable[[str], str], *, retry_s: float = 3.0) -> None:
        self.send = send
        self.retry_s = retry_s
        self._plans: dict[str, deque[str]] = defaultdict(deque)
        self._q: queue.Queue[str | None] = queue.Queue()
        self._done: set[tuple[str, Any]] = set()
        self._lock = threading.Lock()
        self.typed: list[tuple[str, str]] = []
        self.errors: list[str] = []
        self._t = threading.Thread(target=self._run, name="typist", daemon=True)
        self._t.start()

    def plan(self, state: str, keys: str) -> "Typist":
        with self._lock:
            self._plans[state].append(keys)
        return self

    def clear(self) -> None:
        with self._lock:
            self._plans.clear()

    def on_snapshot(self, snap: Any) -> None:
        """Type the next plan of a state each time the session switches the keypad on in it."""
        state = getattr(snap, "state", None)
        sid = getattr(snap, "session_id", "")
        info = getattr(snap, "info", {}) or {}
        if not info.get("keypad_on"):
            return
        entry = (sid, info.get("keypad_entry"))
        with self._lock:
            if entry in self._done or not self._plans.get(state):
                return
            self._done.add(entry)
            keys = self._plans[state].popleft()
        self._q.put(keys)

    def stop(self) -> None:
        self._q.put(None)

    def _run(self) -> None:
        while True:
            keys = self._q.get()
            if keys is None:
                return
            want = key_count(keys)
            end = time.monotonic() + self.retry_s
            while True:
                try:
                    out = self.send(f"keys {keys}")
                except Exception as e:  # noqa: BLE001 - reported, the session times out
                    self.errors.append(str(e))
                    break
                m = _SENT.search(out or "")
                n = int(m.group(1)) if m else 0
                if n == want:
                    self.typed.append(("ok", keys))
                    break
                if n:  # keypad switched on mid-way: the rest was dropped; not expected
                    self.errors.append(f"only {n}/{want} keys taken")
                    break
                if time.monotonic() > end:
                    self.errors.append(f"keypad never switched on for {keys!r}")
                    break
                time.sleep(0.01)
