"""Client CPU per request: httpx.Client vs the lean keep-alive transport, against a real uvicorn centre.

    python -m kiosk.services.bench_http [--calls 2000]

Times `centre.call("5203", ...)` (full call: envelope, SM2 sign, post, verify) and the post alone (envelopes
built beforehand), as time.process_time() of this process per call; the service runs in its own process.
"""
from __future__ import annotations

import argparse
import secrets
import socket
import tempfile
import time
from pathlib import Path

import httpx


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main(argv: list[str] | None = None) -> int:
    from kiosk.security.sm import Sm2PrivateKey
    from kiosk.services.centre.app import build_centre
    from kiosk.services.cli import start_services, stop_services
    from kiosk.services.client import CentreClient, ServiceIdentity, register_terminal
    from kiosk.services.http import admin_token
    from kiosk.services.seed import seed_region, synthetic_people
    from kiosk.storage import open_database

    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=2000)
    a = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="bench-http-"))
    people = synthetic_people(4, "370202")
    with open_database(f"sqlite:///{tmp}/svc-centre.db") as db:
        svc, _gw = build_centre(db, tmp)
        seed_region(db, svc.keys, 4, "370202")
    with open_database(f"sqlite:///{tmp}/svc-bank.db") as db:
        pass
    cport, bport = _port(), _port()
    procs = start_services(f"sqlite:///{tmp}/svc.db", tmp, workers=1, centre_port=cport, bank_port=bport)
    try:
        url = f"http://127.0.0.1:{cport}"
        key = Sm2PrivateKey.generate()
        app_id = "BENCHHTTP" + secrets.token_hex(6).upper()
        reg = register_terminal(url, admin_token(tmp), app_id, key.public_key().to_bytes().hex(), "H37020200002")
        psn = people[0].psn_no
        for name in ("httpx", "transport", "httpx", "transport"):
            http = httpx.Client(base_url=url, timeout=10.0) if name == "httpx" else None
            c = CentreClient(url, ServiceIdentity(app_id, reg["app_secret"], key, "H37020200002"), http=http)
            c.sign_in("bench")
            for _ in range(50):  # warm up
                c.query(psn, omsgid="NO-SUCH-MSG")
            t0, w0 = time.process_time(), time.perf_counter()
            for _ in range(a.calls):
                c.query(psn, omsgid="NO-SUCH-MSG")  # an answer (found or not) either way
            full = (time.process_time() - t0) / a.calls
            wall = (time.perf_counter() - w0) / a.calls
            envs = [c._envelope(c.request("5203", {"data": {"psn_no": psn, "setl_id": "", "omsgid": "NO-SUCH-MSG"}}))
                    for _ in range(a.calls)]
            t0 = time.process_time()
            for e in envs:
                c.post_envelope("5203", e)
            post = (time.process_time() - t0) / a.calls
            c.close()
            print(f"{name:9s} full call {full * 1e3:6.3f} ms CPU ({wall * 1e3:6.3f} ms wall)   "
                  f"post alone {post * 1e3:6.3f} ms CPU   per call, {a.calls} calls")
    finally:
        stop_services(procs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
