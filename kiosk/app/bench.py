"""Counter benchmark: "bill received" -> "result to POS" for the scripted session.

Runs the real stack (centre + bank processes, bridge on the MCU simulator,
kiosk app with the simulated camera at 30 fps through the real face pipeline)
in a temporary directory, activates the demo patient once, then times N
repeat payments from the POS's POST of the bill to the POS receiving the
result. Reports p50/p95 of the total, of the total without the confirm step
(the patient's key press, scripted here), of each flow state, and of the
screen's reaction (state published -> SSE event received by a browser-like
client on /screen/events).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from kiosk.app.demo import DEMO_BILL, DEMO_PATIENT, scene, seed_bank
from kiosk.app.stack import Ports, Stack
from kiosk.app.typist import Typist


def _pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs, dtype=float), q)) if xs else float("nan")


class ScreenWatch:
    """A browser-like SSE client: when did each state reach the screen?"""

    def __init__(self, url: str, token: str | None = None) -> None:
        self.url, self.token = url, token
        self.seen: dict[tuple[str, str], float] = {}
        self._stop = False
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self) -> None:
        with httpx.Client(timeout=None) as c, c.stream("GET", self.url, headers=self._headers()) as r:
            for line in r.iter_lines():
                if self._stop:
                    return
                if line.startswith("data: "):
                    st = json.loads(line[6:])
                    key = (st.get("session_id") or "", st.get("state") or "")
                    self.seen.setdefault(key, time.perf_counter())

    def _headers(self) -> dict[str, str]:
        from kiosk.app.screen.access import TOKEN_HEADER

        return {TOKEN_HEADER: self.token} if self.token else {}

    def stop(self) -> None:
        self._stop = True


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(runs: int, person: str, as_json: bool) -> int:
    tmp = Path(tempfile.mkdtemp(prefix="bench_counter_"))
    st = Stack(data_dir=tmp, ports=Ports(centre=_free_port(), bank=_free_port(), bridge=_free_port(),
                                         kiosk=_free_port()))
    published: dict[tuple[str, str], float] = {}
    try:
        print(f"bench_counter: starting the stack under {tmp}", file=sys.stderr)
        st.prepare(fresh=True)
        st.seed_centre()
        st.start_centre()
        has_bank = importlib.util.find_spec("kiosk.services.bank.app") is not None
        if has_bank:
            st.start_bank()
        else:
            print("bench_counter: WARNING: kiosk.services.bank is missing; only people whose account covers the "
                  "personal share can pay", file=sys.stderr)
        st.start_bridge()
        st.register_terminal()
        st.clients()
        if has_bank:
            seed_bank(st)
        rt = st.build_kiosk()
        typist = Typist(st.bridge.sim)
        rt.listeners.append(typist.on_snapshot)

        def on_snap(s: Any) -> None:
            published.setdefault((s.session_id, s.state), time.perf_counter())

        rt.listeners.append(on_snap)
        watch = ScreenWatch(st.url("kiosk") + "/screen/events", rt.screen_token) if rt.bus is not None else None
        pos = st.pos()
        p = st.person(person)
        images = scene(st, person)

        def one(order_id: str, first: bool) -> tuple[float, dict[str, Any]]:
            typist.clear()
            if first:
                typist.plan("id_entry", f"{p['certno']}<enter>")
            typist.plan("confirm", "<enter>")
            st.camera.show(images)
            t0 = time.perf_counter()
            r = pos.create({"order_id": order_id, "bill": DEMO_BILL})
            assert r.status_code == 201, r.text
            while True:
                got = pos.get(order_id, wait=30).json()
                if got["status"] not in ("pending", "running"):
                    break
            ms = (time.perf_counter() - t0) * 1000
            st.camera.clear()
            if got["status"] != "paid":
                raise SystemExit(f"bench_counter: run {order_id} ended {got['status']} ({got.get('reason')})")
            return ms, got["result"]

        one("BENCH-ACTIVATE", True)
        totals, excl, stages = [], [], {}  # type: ignore[var-annotated]
        for i in range(runs):
            ms, res = one(f"BENCH-{i:04d}", False)
            sm = res["stage_ms"]
            totals.append(ms)
            excl.append(ms - sm.get("confirm", 0.0))
            for k, v in sm.items():
                stages.setdefault(k, []).append(v)
        time.sleep(0.3)
        screen = [watch.seen[k] - t for k, t in published.items() if watch and k in watch.seen] if watch else []
        if watch:
            watch.stop()
        rows = [("total (bill -> result at POS)", totals), ("total without the confirm key", excl)]
        order = ["bill_received", "face_capture", "liveness", "match", "presettled", "confirm", "settling",
                 "printing", "done"]
        rows += [(f"  {k}", stages[k]) for k in order if k in stages]
        rows += [("screen reaction (state -> SSE)", [x * 1000 for x in screen])]
        print(f"{'stage':36s} {'p50 ms':>9s} {'p95 ms':>9s} {'n':>5s}")
        for name, xs in rows:
            print(f"{name:36s} {_pct(xs, 50):9.1f} {_pct(xs, 95):9.1f} {len(xs):5d}")
        target = _pct(excl, 95)
        print(f"target: p95 without the confirm key <= 1500 ms: {'met' if target <= 1500 else 'MISSED'} "
              f"({target:.0f} ms); screen p95 <= 100 ms: "
              f"{'met' if screen and _pct([x * 1000 for x in screen], 95) <= 100 else 'MISSED'}")
        print("note: 'confirm' is the scripted key press (typist + keypad polling), excluded from the target; "
              "face_capture+liveness include waiting for camera frames at 30 fps", file=sys.stderr)
        if as_json:
            print(json.dumps({name.strip(): {"p50": round(_pct(xs, 50), 1), "p95": round(_pct(xs, 95), 1),
                                             "n": len(xs)} for name, xs in rows}))
        pos.close()
        return 0
    finally:
        st.stop()
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)


def cli(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="scripts/bench_counter", description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--person", default=DEMO_PATIENT, help="demo psn_no (default: the demo patient)")
    ap.add_argument("--json", action="store_true", help="also print the figures as one JSON line")
    a = ap.parse_args(argv)
    return run(a.runs, a.person, a.json)


if __name__ == "__main__":
    raise SystemExit(cli())
