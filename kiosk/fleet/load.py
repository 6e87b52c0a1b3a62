"""Load test of the fleet service (`scripts/load_fleet`): many simulated terminals, real signed beats.

The service runs as uvicorn worker processes on loopback (SQLite by default, at
synchronous=NORMAL as `kiosk fleet serve` runs it; `--db postgresql://...`).
N terminals are registered with their own Ed25519 keys; a small asyncio client
keeps `--connections` keep-alive connections and sends each terminal's beats in
turn (a real heartbeat body, fresh nonce, rising seq, Ed25519 signature through
`RequestSigner`), as fast as the service answers (closed loop) or at `--rate`
beats/s. Bounded in time (`--seconds`). Afterwards the stored history is counted:
every accepted beat must be there once. Prints beats/s and p50/p95/p99 latency;
the last line is one JSON object.

A city of 5,000 terminals beating once a minute is ~85 beats/s; the aim is 20x.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from kiosk.security.replay import RequestSigner

TOKEN = "load-fleet-token"
PATH = "/v1/heartbeat"


def _pct(xs: list[float], q: float) -> float:
    if not xs:
        return 0.0
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, int(round(q / 100 * len(s))) - 1))]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class SimTerminal:
    """One simulated terminal: its key, its sequence, a plausible beat."""

    def __init__(self, tid: str, rng: random.Random) -> None:
        self.tid = tid
        self.key = Ed25519PrivateKey.generate()
        self.signer = RequestSigner(self.key, device_id=tid, key_id="v0001-load")
        self.seq = 0
        self.rng = rng

    @property
    def public_hex(self) -> str:
        return self.key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()

    def request(self, host: str) -> bytes:
        self.seq += 1
        r = self.rng
        paid = r.randint(0, 4)
        body = json.dumps({
            "terminal_id": self.tid, "seq": self.seq, "uptime_s": 3600 + self.seq * 60,
            "versions": {"app": "0.1.0", "model_pack": "a" * 64, "mcu_firmware": "1.0.0"},
            "peripherals": {"paper": "ok" if r.random() > 0.01 else "low", "cover": "closed", "camera": "ok",
                            "bridge": "connected"},
            "counts": {"sessions": [{"outcome": "paid", "reason": "", "n": paid}] if paid else [],
                       "liveness_rejects": int(r.random() < 0.05), "match_rejects": 0, "activation_lockouts": 0,
                       "crashes": 0},
            "journal": {"unresolved": 0, "refunds_pending": 0},
            "day_end": {"day": None, "result": "not_run"},
        }, separators=(",", ":")).encode()
        h = self.signer.headers("POST", PATH, body)
        head = "".join(f"{k}: {v}\r\n" for k, v in h.items())
        return (f"POST {PATH} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n{head}\r\n").encode() + body


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for ln in lines[1:]:
        if ln[:15].lower() == b"content-length:":
            length = int(ln[15:].strip())
    if length:
        await reader.readexactly(length)
    return status


async def _drive(port: int, terminals: list[SimTerminal], seconds: float, connections: int,
                 rate: float | None) -> dict[str, Any]:
    host = f"127.0.0.1:{port}"
    lat: list[float] = []
    codes: dict[int, int] = {}
    deadline = time.monotonic() + seconds
    nxt = 0
    interval = connections / rate if rate else 0.0

    async def conn_loop(ci: int) -> None:
        nonlocal nxt
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        due = time.monotonic() + (interval * ci / connections if interval else 0)
        try:
            while True:
                if interval:
                    due += interval
                    pause = due - time.monotonic()
                    if pause > 0:
                        await asyncio.sleep(pause)
                if time.monotonic() >= deadline:
                    return
                t = terminals[nxt % len(terminals)]
                nxt += 1
                req = t.request(host)
                t0 = time.perf_counter()
                writer.write(req)
                status = await _read_response(reader)
                lat.append(time.perf_counter() - t0)
                codes[status] = codes.get(status, 0) + 1
        finally:
            writer.close()

    t0 = time.monotonic()
    await asyncio.gather(*(conn_loop(i) for i in range(connections)))
    wall = time.monotonic() - t0
    return {"lat": lat, "codes": codes, "wall": wall}


def _cpu_of(pids: list[int]) -> float:
    """CPU seconds used so far by these processes and their children (from /proc)."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for pid in pids:
        try:
            kids = [pid] + [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
        except OSError:
            kids = [pid]
        for k in kids:
            try:
                f = Path(f"/proc/{k}/stat").read_text().rsplit(")", 1)[1].split()
                total += (int(f[11]) + int(f[12])) / tick
            except (OSError, IndexError):
                pass
    return total


def run(terminals: int = 5000, seconds: float = 10.0, connections: int = 32, workers: int = 1,
        db_url: str = "", rate: float | None = None, quiet: bool = False) -> dict[str, Any]:
    from kiosk.fleet.models import Registration
    from kiosk.fleet.service import FleetService
    from kiosk.storage import open_database

    import contextlib

    from kiosk.storage.testing import pg_schema

    tmp = tempfile.TemporaryDirectory(prefix="kiosk-fleet-load-")
    stack = contextlib.ExitStack()
    # PostgreSQL: a fresh schema on that server, dropped afterwards (never the database's own tables)
    url = stack.enter_context(pg_schema(db_url, "fleetload")) if db_url else f"sqlite:///{tmp.name}/fleet.db"
    env = dict(os.environ, KIOSK_FLEET_DB=url, KIOSK_DATA_DIR=tmp.name, KIOSK_FLEET_ADMIN_TOKEN=TOKEN)
    env.setdefault("KIOSK_SQLITE_SYNCHRONOUS", "NORMAL")
    os.environ.setdefault("KIOSK_SQLITE_SYNCHRONOUS", env["KIOSK_SQLITE_SYNCHRONOUS"])
    rng = random.Random(7)
    sims = [SimTerminal(f"LOAD-{i:06d}", rng) for i in range(terminals)]
    t0 = time.monotonic()
    with open_database(url) as db:
        svc = FleetService(db)
        for s in sims:
            svc.register(Registration(terminal_id=s.tid, institution=f"H3702020{int(s.tid[-6:]) % 400:04d}",
                                      district=f"3702{int(s.tid[-6:]) % 12:02d}", key_id="v0001-load",
                                      public_key=s.public_hex))
    reg_s = time.monotonic() - t0
    port = _free_port()
    cmd = [sys.executable, "-m", "uvicorn", "--factory", "kiosk.fleet.app:app_from_env", "--host", "127.0.0.1",
           "--port", str(port), "--workers", str(workers), "--no-access-log", "--log-level", "warning"]
    proc = subprocess.Popen(cmd, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=None if not quiet else subprocess.DEVNULL)
    try:
        import httpx

        end = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > end or proc.poll() is not None:
                raise RuntimeError("fleet service did not start")
            time.sleep(0.1)
        cpu0, me0 = _cpu_of([proc.pid]), time.process_time()
        res = asyncio.run(_drive(port, sims, seconds, connections, rate))
        cpu_srv, cpu_cli = _cpu_of([proc.pid]) - cpu0, time.process_time() - me0
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
    ok = res["codes"].get(200, 0)
    with open_database(url) as db:
        stored = db.read(lambda tx: tx.scalar("SELECT COUNT(*) FROM fleet_heartbeats"))
        dup = db.read(lambda tx: tx.scalar(
            "SELECT COUNT(*) FROM (SELECT terminal_id, seq FROM fleet_heartbeats GROUP BY terminal_id, seq"
            " HAVING COUNT(*) > 1) d"))
    stack.close()
    tmp.cleanup()
    lat = [x * 1000 for x in res["lat"]]
    n = len(lat)
    out = {
        "terminals": terminals, "seconds": round(res["wall"], 1), "connections": connections, "workers": workers,
        "db": url.split(":", 1)[0], "heartbeats": n, "heartbeats_per_s": round(ok / res["wall"], 1),
        "p50_ms": round(_pct(lat, 50), 2), "p95_ms": round(_pct(lat, 95), 2), "p99_ms": round(_pct(lat, 99), 2),
        "errors": n - ok, "status": {str(k): v for k, v in sorted(res["codes"].items())},
        "stored": int(stored), "lost": max(0, ok - int(stored)), "duplicated": int(dup),
        "server_cpu_ms_per_beat": round(cpu_srv * 1000 / max(ok, 1), 3),
        "client_cpu_ms_per_beat": round(cpu_cli * 1000 / max(n, 1), 3),
        "register_s": round(reg_s, 1),
        "city_5000_at_1_per_min": round(ok / res["wall"] / (5000 / 60), 1),
    }
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="scripts/load_fleet", description=__doc__.splitlines()[0])
    ap.add_argument("--terminals", type=int, default=5000)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--db", default="", help="postgresql://... (default: a temporary SQLite file)")
    ap.add_argument("--rate", type=float, default=None, help="beats/s to offer (default: as fast as answered)")
    a = ap.parse_args(argv)
    r = run(a.terminals, a.seconds, a.connections, a.workers, a.db, a.rate)
    print(f"{r['heartbeats_per_s']} heartbeats/s over {r['seconds']} s from {r['terminals']} terminals "
          f"({r['connections']} connections, {r['workers']} worker(s), {r['db']}): p50 {r['p50_ms']} ms, "
          f"p95 {r['p95_ms']} ms, p99 {r['p99_ms']} ms; errors {r['errors']}, lost {r['lost']}, "
          f"duplicated {r['duplicated']}; {r['city_5000_at_1_per_min']}x a 5,000-terminal city at one beat a minute; "
          f"server CPU {r['server_cpu_ms_per_beat']} ms/beat, client {r['client_cpu_ms_per_beat']} ms/beat")
    print(json.dumps(r))
    return 0 if r["errors"] == 0 and r["lost"] == 0 and r["duplicated"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
