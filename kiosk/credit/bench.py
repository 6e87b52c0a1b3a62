"""Draw throughput on SQLite and PostgreSQL (run by scripts/bench_credit).

For each database, each mode (one family line shared by every payer, or one
independent line per payer) and each concurrency (1, 4, 16 payers, each a
thread with its own connection), a fresh database takes `--draws` draws.
Afterwards it verifies that nothing was lost or doubled: every ok result is
exactly one draw row and one balanced journal entry, the line principal equals
the sum of ok amounts, retried keys moved nothing, and `check` passes.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from dataclasses import dataclass
from datetime import date, datetime

from kiosk.clock import SHANGHAI, ManualClock
from kiosk.credit.service import CreditService
from kiosk.storage.testing import PG_ENV, scratch_database

AMOUNT = 100  # fen per draw; a 20,000 yuan line takes 20,000 of them


@dataclass
class Run:
    db: str
    mode: str
    payers: int
    draws: int
    seconds: float
    lat_ms: list[float]
    verified: str

    @property
    def rate(self) -> float:
        return self.draws / self.seconds if self.seconds else 0.0


def _pct(xs: list[float], q: float) -> float:
    if not xs:
        return 0.0
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def one(kind: str, mode: str, payers: int, total: int, pg_url: str | None) -> Run:
    with scratch_database(kind, pg_url) as db:
        clock = ManualClock(datetime(2026, 1, 5, 12, tzinfo=SHANGHAI))
        svc = CreditService(db, clock)
        names = [f"p{i}" for i in range(payers)]
        if mode == "family":
            svc.open("open-h", "h", date(1990, 1, 1), 5)
            for n in names:
                svc.bind(f"bind-{n}", "h", n, "child", True, None)
            holder_of = {n: "h" for n in names}
        else:
            for n in names:
                svc.open(f"open-{n}", n, date(1990, 1, 1), 5)
            holder_of = {n: n for n in names}
        per = total // payers
        lats: list[list[float]] = [[] for _ in names]
        oks = [0] * payers
        errors: list[BaseException] = []
        barrier = threading.Barrier(payers + 1)

        def payer(i: int) -> None:
            n = names[i]
            try:
                barrier.wait()
                for k in range(per):
                    t0 = time.perf_counter()
                    r = svc.draw(f"{n}-{k}", n, AMOUNT, f"{n}-bill-{k}", holder=holder_of[n])
                    lats[i].append((time.perf_counter() - t0) * 1000)
                    oks[i] += r.ok
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=payer, args=(i,)) for i in range(payers)]
        for t in threads:
            t.start()
        barrier.wait()
        t0 = time.perf_counter()
        for t in threads:
            t.join()
        seconds = time.perf_counter() - t0
        if errors:
            raise errors[0]
        # retries of a sample of keys must replay, not move money again
        for n in names:
            for k in range(0, per, max(1, per // 5)):
                svc.draw(f"{n}-{k}", n, AMOUNT, f"{n}-bill-{k}", holder=holder_of[n])
        ok = sum(oks)
        rows, entries, principal = db.read(lambda tx: (
            tx.scalar("SELECT COUNT(*) FROM credit_draws"),
            tx.scalar("SELECT COUNT(*) FROM credit_entries WHERE kind = 'draw'"),
            tx.scalar("SELECT SUM(principal_fen) FROM credit_lines", default=0)))
        report = svc.check()
        good = ok == per * payers and rows == ok and entries == ok and principal == ok * AMOUNT and report.ok
        verified = "ok" if good else f"FAILED ok={ok} rows={rows} entries={entries} principal={principal} {report.problems[:2]}"
        return Run(kind, mode, payers, per * payers, seconds, [x for xs in lats for x in xs], verified)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--draws", type=int, default=1600, help="draws per configuration (default 1600)")
    ap.add_argument("--payers", default="1,4,16")
    ap.add_argument("--db", default="sqlite,postgresql")
    args = ap.parse_args(argv)
    kinds = args.db.split(",")
    pg = os.environ.get(PG_ENV)
    if "postgresql" in kinds and not pg:
        print(f"bench_credit: {PG_ENV} is not set (scripts/bench_credit starts it)", file=sys.stderr)
        return 2
    runs: list[Run] = []
    print(f"{'db':<11}{'mode':<13}{'payers':>7}{'draws':>7}{'sec':>8}{'draws/s':>9}{'p50 ms':>8}{'p95 ms':>8}  verified")
    for kind in kinds:
        for mode in ("independent", "family"):
            for n in (int(x) for x in args.payers.split(",")):
                r = one(kind, mode, n, args.draws, pg)
                runs.append(r)
                print(f"{r.db:<11}{r.mode:<13}{r.payers:>7}{r.draws:>7}{r.seconds:>8.2f}{r.rate:>9.0f}"
                      f"{_pct(r.lat_ms, .5):>8.2f}{_pct(r.lat_ms, .95):>8.2f}  {r.verified}", flush=True)
    print("\nratios (family line / independent lines, same db and payers):")
    for kind in kinds:
        for n in (int(x) for x in args.payers.split(",")):
            ind = next(r for r in runs if (r.db, r.mode, r.payers) == (kind, "independent", n))
            fam = next(r for r in runs if (r.db, r.mode, r.payers) == (kind, "family", n))
            print(f"  {kind:<11} {n:>2} payers: {fam.rate / ind.rate:.2f}")
    print("scaling (draws/s at N payers / at 1 payer):")
    for kind in kinds:
        for mode in ("independent", "family"):
            base = next(r for r in runs if (r.db, r.mode) == (kind, mode))
            parts = [f"{r.payers}: {r.rate / base.rate:.2f}" for r in runs if (r.db, r.mode) == (kind, mode)]
            print(f"  {kind:<11} {mode:<12} " + ", ".join(parts))
    if "postgresql" in kinds:
        import psycopg

        with psycopg.connect(pg, autocommit=True) as c:
            sc = c.execute("SHOW synchronous_commit").fetchone()[0]
            fs = c.execute("SHOW fsync").fetchone()[0]
        print(f"postgresql: synchronous_commit={sc} fsync={fs}")
    if "sqlite" in kinds:
        from kiosk.config import load

        print(f"sqlite: WAL, synchronous={load().sqlite_synchronous.upper()} (KIOSK_SQLITE_SYNCHRONOUS)")
    targets = {"sqlite": 1000, "postgresql": 500}
    failed = [r for r in runs if r.verified != "ok"]
    for kind, want in targets.items():
        best = [r.rate for r in runs if r.db == kind and r.mode == "independent"]
        if best:
            print(f"target {kind} independent >= {want}/s: best {max(best):.0f}/s "
                  f"{'met' if max(best) >= want else 'MISSED'}; median "
                  f"{statistics.median(best):.0f}/s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
