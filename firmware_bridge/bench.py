"""Serial-link benchmark: round-trip latency and throughput over a real pty.

The simulated MCU runs in its own process (like a real MCU on its own CPU);
the host side is the production ``Link``. A pty does not emulate the line
rate, so the figures are software latency; on a real 115200-baud UART add the
line time printed beside them (10 bits per byte).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from firmware_bridge.frame import OVERHEAD, Deframer, Frame, FrameType
from firmware_bridge.messages import Cmd
from firmware_bridge.session import Link, Timing

ROOT = Path(__file__).resolve().parent.parent


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def line_ms(req_payload: int, rsp_payload: int, baud: int) -> float:
    return (2 * OVERHEAD + req_payload + rsp_payload) * 10 / baud * 1000


def http_stage(n: int) -> None:
    """What the kiosk app sees: BridgeClient -> bridge process (HTTP) -> pty -> simulated MCU."""
    import socket

    from firmware_bridge.client import BridgeClient
    from kiosk.errors import DeviceError

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    import tempfile

    run_dir = tempfile.TemporaryDirectory(prefix="bench-bridge-")
    token_file = Path(run_dir.name) / "token"
    proc = subprocess.Popen(
        [sys.executable, "-m", "firmware_bridge.service", "--serial", "sim", "--port", str(port),
         "--token-file", str(token_file), "--firmware-dir", str(Path(run_dir.name) / "firmware")], cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        with BridgeClient(f"http://127.0.0.1:{port}", timeout=5, token_file=token_file) as c:
            deadline = time.monotonic() + 30
            while True:
                try:
                    if c.status()["state"] == "connected":
                        break
                except DeviceError:
                    pass
                if time.monotonic() > deadline:
                    print("http stage: bridge did not come up")
                    return
                time.sleep(0.1)
            print(f"\n{'through the bridge HTTP API':<28}{'n':>8}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'max ms':>9}")
            e = c.start_id_entry()
            calls = [
                ("GET /v1/status (no MCU I/O)", c.status),
                ("POST /v1/buzzer", lambda: c.buzz("short")),
                ("GET /v1/keypad/id-entry/ID", lambda: c.id_entry(e["session_id"])),
                ("POST /v1/print (64 B)", lambda: c.print_escpos(b"\x1b@" + b"x" * 61 + b"\n")),
            ]
            for name, fn in calls:
                for _ in range(20):
                    fn()
                xs = []
                for _ in range(n):
                    t = time.perf_counter()
                    fn()
                    xs.append((time.perf_counter() - t) * 1000)
                print(f"{name:<28}{n:>8}{pct(xs, 50):>9.3f}{pct(xs, 95):>9.3f}{pct(xs, 99):>9.3f}{max(xs):>9.3f}")
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        run_dir.cleanup()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="scripts/bench_bridge", description=__doc__)
    ap.add_argument("--frames", type=int, default=20_000, help="ECHO exchanges in the zero-loss run (each is a REQ and a RSP frame)")
    ap.add_argument("--rtt", type=int, default=3000, help="samples per latency stage")
    ap.add_argument("--baud", type=int, default=115200)
    ap.add_argument("--threads", type=int, default=4, help="concurrent callers in the pipelined run (window 8)")
    ap.add_argument("--http", type=int, default=500, help="samples through the bridge process's HTTP API (0 = skip)")
    a = ap.parse_args(argv)

    sim = subprocess.Popen(
        [sys.executable, "-m", "firmware_bridge.sim"], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        first = sim.stdout.readline().split()
        assert first and first[0] == "URL", f"simulator said {first!r}"
        url = first[1]
        t0 = time.perf_counter()
        link = Link(url, baudrate=a.baud, timing=Timing(heartbeat=5.0)).start()
        link.ring.enabled = False  # the technician ring buffer costs ~2 us per frame; off for the bench
        link.wait_connected(10)
        connect_ms = (time.perf_counter() - t0) * 1000
        print(f"bench_bridge: pty {url}, {a.baud} baud (termios), sim in its own process, Python {sys.version.split()[0]}")
        print(f"connect + HELLO: {connect_ms:.1f} ms\n")
        print(f"{'stage':<28}{'n':>8}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'max ms':>9}{'+line ms':>10}")
        stages = [("PING (0 B -> 4 B)", Cmd.PING, b"", 4), ("ECHO 16 B", Cmd.ECHO, b"x" * 16, 16), ("ECHO 256 B", Cmd.ECHO, b"y" * 256, 256), ("ECHO 1023 B (max frame)", Cmd.ECHO, b"z" * 1023, 1023)]
        results = {}
        for name, cmd, payload, rsp_len in stages:
            for _ in range(100):  # warm-up
                link.request(cmd, payload)
            xs = []
            n = a.rtt if len(payload) < 512 else max(200, a.rtt // 5)
            for _ in range(n):
                t = time.perf_counter()
                rsp = link.request(cmd, payload)
                xs.append((time.perf_counter() - t) * 1000)
                assert rsp.ok
            results[name] = xs
            print(f"{name:<28}{n:>8}{pct(xs, 50):>9.3f}{pct(xs, 95):>9.3f}{pct(xs, 99):>9.3f}{max(xs):>9.3f}{line_ms(len(payload), rsp_len + 1, a.baud):>10.2f}")

        # pure framer throughput (no I/O)
        wire = b"".join(Frame(FrameType.RSP, i & 0xFF, 3, b"\x00" + bytes(16)).encode() for i in range(20000))
        d = Deframer()
        t = time.perf_counter()
        got = sum(len(d.feed(wire[i : i + 4096])) for i in range(0, len(wire), 4096))
        parse_fps = got / (time.perf_counter() - t)

        # zero-loss run, stop-and-wait
        st0 = link.stats.retransmits
        lost = 0
        t = time.perf_counter()
        for i in range(a.frames):
            payload = i.to_bytes(4, "little")
            try:
                rsp = link.request(Cmd.ECHO, payload)
                if rsp.data != payload:
                    lost += 1
            except Exception:  # noqa: BLE001 - counted as a lost frame
                lost += 1
        dt = time.perf_counter() - t
        seq_fps = 2 * a.frames / dt
        seq_retx = link.stats.retransmits - st0

        # pipelined: several callers, up to 8 requests in flight
        per = a.frames // a.threads
        lost_p = [0]
        lock = threading.Lock()

        def worker(k: int) -> None:
            bad = 0
            for i in range(per):
                payload = (k << 24 | i).to_bytes(4, "little")
                try:
                    if link.request(Cmd.ECHO, payload).data != payload:
                        bad += 1
                except Exception:  # noqa: BLE001
                    bad += 1
            with lock:
                lost_p[0] += bad

        st1 = link.stats.retransmits
        threads = [threading.Thread(target=worker, args=(k,)) for k in range(a.threads)]
        t = time.perf_counter()
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        dtp = time.perf_counter() - t
        pipe_fps = 2 * per * a.threads / dtp
        pipe_retx = link.stats.retransmits - st1

        print()
        print(f"{'run':<40}{'exchanges':>10}{'frames':>9}{'lost':>6}{'retx':>6}{'frames/s':>10}{'secs':>7}")
        print(f"{'stop-and-wait ECHO 4 B':<40}{a.frames:>10}{2 * a.frames:>9}{lost:>6}{seq_retx:>6}{seq_fps:>10.0f}{dt:>7.1f}")
        print(f"{f'{a.threads} callers, window 8, ECHO 4 B':<40}{per * a.threads:>10}{2 * per * a.threads:>9}{lost_p[0]:>6}{pipe_retx:>6}{pipe_fps:>10.0f}{dtp:>7.1f}")
        print(f"{'framer only (no I/O), 26-byte frames':<40}{'':>10}{got:>9}{'':>6}{'':>6}{parse_fps:>10.0f}")
        line_cap = a.baud / 10 / (OVERHEAD + 5)
        print(f"\n115200-baud line capacity for the 4 B ECHO response (18 B): {line_cap:.0f} frames/s one way")
        p95 = pct(results["PING (0 B -> 4 B)"], 95)
        ok = p95 <= 5.0 and lost == 0 and lost_p[0] == 0
        print(f"target: short command p95 <= 5 ms over a pty ({p95:.3f} ms), zero frames lost ({lost + lost_p[0]}): {'PASS' if ok else 'FAIL'}")
        link.stop()
        if a.http:
            http_stage(a.http)
        return 0 if ok else 1
    finally:
        sim.terminate()
        sim.wait(timeout=10)


if __name__ == "__main__":
    raise SystemExit(main())
