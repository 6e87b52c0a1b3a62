"""Benchmark of the security layer (run by scripts/bench_crypto).

Prints one row per operation: ops/s, wall-clock p50 and p95 and CPU-time p95 in
milliseconds, and checks the target that building or opening a platform envelope
takes at most 2 ms p95. On a machine busier than its cores (load >= cores) the
wall tail measures waiting for a core, so the CPU-time p95 is what is judged there,
and the line says so.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from kiosk.security.audit import AuditLog
from kiosk.security.envelope import build_envelope, open_envelope
from kiosk.security.replay import MemoryNonceStore, ReplayGuard, RequestSigner, RequestVerifier
from kiosk.security.seal import SealContext, open_sealed, seal
from kiosk.security.sm import Sm2PrivateKey, sm2_verify, sm3, sm4_ecb_encrypt

TARGET_MS = 2.0


def _time(fn: Callable[[], object], n: int) -> tuple[list[float], list[float]]:
    """Wall-clock and this thread's CPU time per call, in ms."""
    for _ in range(max(5, n // 20)):
        fn()  # warm-up (fills the per-key precomputation caches)
    wall, cpu = [], []
    for _ in range(n):
        c = time.thread_time_ns()
        t = time.perf_counter_ns()
        fn()
        wall.append((time.perf_counter_ns() - t) / 1e6)
        cpu.append((time.thread_time_ns() - c) / 1e6)
    return wall, cpu


Row = tuple[str, float, float, float, float]


def _row(name: str, timed: tuple[list[float], list[float]]) -> Row:
    wall, cpu = timed
    q = statistics.quantiles(wall, n=100, method="inclusive")
    qc = statistics.quantiles(cpu, n=100, method="inclusive")
    return name, 1000.0 / statistics.fmean(wall), q[49], q[94], qc[94]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=500, help="iterations per operation")
    args = ap.parse_args(argv)
    n = args.n

    app_id, secret = "43AF047BBA47FC8A1AE8EFB232BDBBCB", "4117E877F5FA0A0188891283E4B617D5"
    sm2 = Sm2PrivateKey.generate()
    pub = sm2.public_key()
    payload = {  # a 2207 outpatient settlement request body, about 600 bytes of JSON
        "psn_no": "37000000000000000001", "mdtrt_cert_type": "01", "mdtrt_cert_no": "ecToken-" + "A" * 40,
        "med_type": "11", "medfee_sumamt": "268.50", "psn_setlway": "01", "mdtrt_id": "370000G0000001",
        "chrg_bchno": "CB202601010001", "insutype": "310", "acct_used_flag": "1",
        "fulamt_ownpay_amt": "12.00", "overlmt_selfpay": "0.00", "preselfpay_amt": "8.30", "inscp_scp_amt": "248.20",
        "feedetl": [{"feedetl_sn": f"{i:04d}", "med_list_codg": "XA01BAB001A001010100000", "cnt": "1",
                     "pric": "26.85"} for i in range(4)],
    }
    env = build_envelope(payload, app_id=app_id, app_secret=secret, sm2_key=sm2)
    msg = b"x" * 512
    sig = sm2.sign(msg)
    cold = iter([(k.public_key(), k.sign(msg)) for k in  # one key per call, each verified once
                 (Sm2PrivateKey.generate() for _ in range(n + max(5, n // 20)))])

    def verify_cold() -> bool:
        key, signature = next(cold)
        return sm2_verify(key, msg, signature)
    rec = X25519PrivateKey.generate()
    ctx = SealContext("KIOSK-0001", "S-20260101-0001", "face-template")
    template = os.urandom(2048)  # 512 float32
    blob = seal(template, rec.public_key(), "v0001-aa", ctx)
    ed = Ed25519PrivateKey.generate()
    signer = RequestSigner(ed, device_id="KIOSK-0001", key_id="v0001-aa")
    verifier = RequestVerifier({("KIOSK-0001", "v0001-aa"): ed.public_key()}, ReplayGuard(MemoryNonceStore()))
    body = b"{" + b'"k":"v",' * 100 + b'"z":1}'

    rows = [
        _row("sm3 (1 KiB)", _time(lambda: sm3(msg * 2), n)),
        _row("sm4-ecb encrypt (1 KiB)", _time(lambda: sm4_ecb_encrypt(b"0123456789ABCDEF", msg * 2), n)),
        _row("sm2 sign", _time(lambda: sm2.sign(msg), n)),
        _row("sm2 verify (known key)", _time(lambda: sm2_verify(pub, msg, sig), n)),
        _row("sm2 verify (one-off key)", _time(verify_cold, n)),
        _row("envelope build (SM4+SM2)", _time(lambda: build_envelope(payload, app_id=app_id, app_secret=secret, sm2_key=sm2), n)),
        _row("envelope open (SM4+SM2)", _time(lambda: open_envelope(env, app_secret=secret, sm2_public_key=pub), n)),
        _row("seal 2 KiB template", _time(lambda: seal(template, rec.public_key(), "v0001-aa", ctx), n)),
        _row("open sealed template", _time(lambda: open_sealed(blob, rec, ctx), n)),
        _row("request sign (Ed25519)", _time(lambda: signer.headers("POST", "/api/2207", body), n)),
    ]
    hs = [signer.headers("POST", "/api/2207", body) for _ in range(n + max(5, n // 20))]
    it = iter(hs)
    rows.append(_row("request verify + anti-replay", _time(lambda: verifier.verify("POST", "/api/2207", body, next(it)), n)))
    with tempfile.TemporaryDirectory() as d:
        log = AuditLog(Path(d) / "audit.log", b"k" * 32)
        rows.append(_row("audit append (fsync)", _time(lambda: log.append("payment", order="O1", amount="12.30"), min(n, 300))))
        rows.append(_row("audit verify (whole log)", _time(log.verify, 20)))

    print(f"{'operation':34s} {'ops/s':>10s} {'p50 ms':>9s} {'p95 ms':>9s} {'p95 cpu ms':>11s}")
    for name, ops, p50, p95, cpu95 in rows:
        print(f"{name:34s} {ops:10.0f} {p50:9.3f} {p95:9.3f} {cpu95:11.3f}")
    env = [r for r in rows if r[0].startswith("envelope")]
    wall, cpu = max(r[3] for r in env), max(r[4] for r in env)
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    where = f"n={n}, python {sys.version.split()[0]}, load {load:.1f} on {cores} cores"
    if wall <= TARGET_MS:
        print(f"\nenvelope p95 {wall:.3f} ms (cpu {cpu:.3f} ms) vs target {TARGET_MS} ms: OK  ({where})")
        return 0
    if cpu <= TARGET_MS and load >= cores:
        # the crypto itself is within budget; the wall tail is this process waiting for a core
        print(f"\nenvelope p95 cpu {cpu:.3f} ms vs target {TARGET_MS} ms: OK; wall p95 {wall:.3f} ms is scheduler "
              f"wait on a busy machine ({where}): rerun when idle")
        return 0
    print(f"\nenvelope p95 {wall:.3f} ms (cpu {cpu:.3f} ms) vs target {TARGET_MS} ms: MISSED  ({where})")
    return 1


if __name__ == "__main__":
    sys.exit(main())
