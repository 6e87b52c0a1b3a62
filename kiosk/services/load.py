"""Load test of both services: N terminal processes on loopback (scripts/load_services).

Each terminal loops: face authentication (activation with the ID number on a
person's first visit) -> pre-settlement -> settlement -> credit draw of the cash
share -> now and then a refund (2208 at the centre + credit.refund at the bank).
Every message is a real envelope (SM4 + SM2, fresh nonce) through HTTP to
uvicorn workers. Afterwards both books are checked and every settlement a
terminal saw committed is looked up: none may be missing (lost) or present
without a terminal having seen it, twice, or with a second draw (duplicated).
The last line printed is one JSON object.
"""
from __future__ import annotations

import argparse
import atexit
import json
import multiprocessing as mp
import os
import random
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import numpy as np

CATALOGUE_CODES = ["XA01", "XA02", "XA03", "XA04", "XB01", "XB02", "XB03", "XC01", "F001", "F002", "F003"]
INSTITUTION = "H37020200002"
REGION = "370202"


def _pct(xs: list[float], q: float) -> float:
    if not xs:
        return 0.0
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, int(round(q / 100 * len(s))) - 1))]


def _bill(rng: random.Random) -> tuple[str, list[dict[str, str]]]:
    out, total = [], Decimal(0)
    for i in range(rng.randint(1, 4)):
        price = Decimal(rng.randint(50, 6000)) / 100
        qty = Decimal(rng.randint(1, 3))
        amt = (price * qty).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
        total += amt
        out.append({"feedetl_sn": str(i + 1), "med_list_codg": rng.choice(CATALOGUE_CODES), "pric": str(price),
                    "cnt": str(qty), "det_item_fee_sumamt": str(amt)})
    return str(total), out


def terminal_main(cfg: dict[str, Any]) -> dict[str, Any]:
    """One terminal process: loop until the deadline; report latencies and what it saw committed."""
    from kiosk.security.sm import Sm2PrivateKey
    from kiosk.services.client import BankClient, CentreClient, ServiceIdentity
    from kiosk.services.protocol import InfCode
    from kiosk.services.seed import synthetic_capture

    key = Sm2PrivateKey.from_bytes(bytes.fromhex(cfg["key"]))
    ident = ServiceIdentity(cfg["app_id"], cfg["centre_secret"], key, INSTITUTION)
    bident = ServiceIdentity(cfg["app_id"], cfg["bank_secret"], key, INSTITUTION)
    centre = CentreClient(cfg["centre_url"], ident, timeout=30)
    bank = BankClient(cfg["bank_url"], bident, timeout=30)
    rng = random.Random(cfg["seed"])
    nrng = np.random.default_rng(cfg["seed"])
    centre.sign_in(f"load{cfg['index']}")
    lat: dict[str, list[float]] = {k: [] for k in ("auth", "activate", "2206", "2207", "draw", "settlement",
                                                   "2208", "refund")}
    errors: list[str] = []
    n_err = 0
    settled: dict[str, int] = {}
    refunded: list[str] = []
    reversed_after_decline: list[str] = []
    declined = 0
    people = cfg["people"]
    activated: set[str] = {p[0] for p in people if p[4]}
    while time.time() < cfg["start_at"]:
        time.sleep(0.005)
    deadline = cfg["start_at"] + cfg["seconds"]

    def err(what: str, a: Any) -> None:
        nonlocal n_err
        n_err += 1
        if len(errors) < 5:
            errors.append(f"{what}: {getattr(a, 'infcode', '')} {getattr(a, 'err_code', '')} "
                          f"{getattr(a, 'err_msg', a)}")

    while time.time() < deadline:
        psn_no, certno, insutype, phone, _pre = people[rng.randrange(len(people))]
        try:
            sid = secrets.token_hex(6)
            t = time.perf_counter()
            if psn_no not in activated:
                a = centre.activate(centre.seal_face(synthetic_capture(psn_no, nrng), sid, "activate"), certno, sid)
                lat["activate"].append(time.perf_counter() - t)
                activated.add(psn_no)
            else:
                a = centre.authenticate(centre.seal_face(synthetic_capture(psn_no, nrng), sid, "auth"), sid)
                if a.infcode == InfCode.FACE_RETRY:
                    sid = secrets.token_hex(6)
                    a = centre.authenticate(centre.seal_face(synthetic_capture(psn_no, nrng), sid, "auth"), sid,
                                            phone_last4=phone)
                lat["auth"].append(time.perf_counter() - t)
            if not a.ok or a.output.get("psn_no") != psn_no:
                err("face", a)
                continue
            medfee, lines = _bill(rng)
            head = {"psn_no": psn_no, "mdtrt_cert_type": "01", "mdtrt_cert_no": a.output["ecToken"],
                    "medfee_sumamt": medfee, "insutype": insutype,
                    # most patients keep their personal account for later: the cash share goes to the credit line
                    "acct_used_flag": "1" if rng.random() < 0.3 else "0"}
            t = time.perf_counter()
            pre = centre.presettle(head, lines)
            lat["2206"].append(time.perf_counter() - t)
            if not pre.ok:
                err("2206", pre)
                continue
            msgid = centre.new_msgid()
            t0 = time.perf_counter()
            st = centre.settle(head, lines, msgid=msgid)
            t1 = time.perf_counter()
            lat["2207"].append(t1 - t0)
            if not st.ok:
                err("2207", st)
                continue
            s = st.output["setlinfo"]
            setl_id, cash = s["setl_id"], s["psn_cash_pay"]
            cash_fen = int(Decimal(cash) * 100)
            if cash_fen > 0:
                d = bank.draw(psn_no, cash, setl_id, f"draw-{msgid}", pay_auth=st.output.get("pay_auth", ""))
                t2 = time.perf_counter()
                lat["draw"].append(t2 - t1)
                if not d.ok:
                    # declined: the linkage protocol reverses the settlement (the patient pays cash instead)
                    declined += 1
                    rv = centre.reverse(setl_id, psn_no)
                    if rv.ok:
                        reversed_after_decline.append(setl_id)
                    else:
                        err("2208 after decline", rv)
                    continue
            else:
                t2 = time.perf_counter()
            lat["settlement"].append(t2 - t0)
            settled[setl_id] = cash_fen
            if rng.random() < cfg["refund_rate"]:
                t = time.perf_counter()
                rv = centre.reverse(setl_id, psn_no)
                lat["2208"].append(time.perf_counter() - t)
                if not rv.ok:
                    err("2208", rv)
                    continue
                if cash_fen > 0:
                    t = time.perf_counter()
                    rf = bank.refund(setl_id, cash, f"refund-{setl_id}")
                    lat["refund"].append(time.perf_counter() - t)
                    if not rf.ok:
                        err("refund", rf)
                        continue
                refunded.append(setl_id)
                del settled[setl_id]
        except Exception as e:  # noqa: BLE001 - a transport fault is an error of the run, not a crash
            err(type(e).__name__, e)
    return {"lat": lat, "errors": errors, "n_errors": n_err, "settled": settled, "refunded": refunded,
            "reversed_after_decline": reversed_after_decline, "declined": declined,
            "elapsed": time.time() - cfg["start_at"]}


def _proc_cpu(pid: int | str) -> float:
    """CPU seconds (user + system) of one process so far, from /proc; 0 once it is gone."""
    try:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def _children(pid: int) -> list[int]:
    try:
        return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _cpu_seconds(pid: int) -> float:
    """CPU time of a process and its children (uvicorn workers)."""
    return sum(_proc_cpu(p) for p in [pid, *_children(pid)])


def _cpu_of_others(exclude: set[int]) -> dict[str, float]:
    """CPU seconds so far of this run's terminal processes (our children other than the services)
    and of every PostgreSQL process on the machine (the test server's backends)."""
    out = {"terminals": sum(_proc_cpu(k) for k in _children(os.getpid()) if k not in exclude), "postgres": 0.0}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if (d / "comm").read_text().strip() in ("postgres", "postmaster"):
                    out["postgres"] += _proc_cpu(d.name)
            except OSError:
                pass
    return out


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pg_base() -> str:
    url = os.environ.get("KIOSK_TEST_PG_URL", "")
    if url:
        return url
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([str(root / "scripts" / "postgres"), "start"], capture_output=True, text=True, check=True)
    for line in out.stdout.splitlines():
        if line.startswith("export KIOSK_TEST_PG_URL="):
            return line.split("=", 1)[1].strip().strip("'\"")
    raise RuntimeError("scripts/postgres start printed no URL")


def _pg_drop(url: str) -> None:
    """Drop the run's private schema (the server is a throw-away one, but keep it small)."""
    import psycopg

    schema = url.rsplit("search_path%3D", 1)[-1]
    base = url.split("?options=")[0].split("&options=")[0]
    try:
        with psycopg.connect(base, autocommit=True) as c:
            c.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    except psycopg.Error:
        pass


def _pg_fresh(url: str) -> str:
    import psycopg

    schema = "load_" + uuid.uuid4().hex[:10]
    with psycopg.connect(url, autocommit=True) as c:
        c.execute(f"CREATE SCHEMA {schema}")
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}options=-csearch_path%3D{schema}"


def preactivate(db: Any, psn_nos: set[str]) -> None:
    """Mark people as activated earlier (as `ec.activate` would), for a realistic visit mix."""
    def work(tx: Any) -> None:
        for psn in sorted(psn_nos):
            seq = tx.scalar("UPDATE centre_activation_seq SET last = last + 1 WHERE id = 1 RETURNING last")
            tx.execute("UPDATE centre_persons SET activated = 1, activated_at = ?, activation_seq = ? "
                       "WHERE psn_no = ?", ("2026-01-01T00:00:00+08:00", int(seq), psn))
    db.run(work)


def run_once(*, seconds: float, terminals: int, db: str, workers: int, people: int,
             refund_rate: float = 0.05, pre_activated: float = 0.8, verbose: bool = True) -> dict[str, Any]:
    from kiosk.security.sm import Sm2PrivateKey
    from kiosk.services.bank.app import check_bank, open_lines
    from kiosk.services.centre.app import build_centre
    from kiosk.services.centre.check import check_centre
    from kiosk.services.cli import db_urls, start_services, stop_services
    from kiosk.services.client import register_terminal
    from kiosk.services.http import admin_token
    from kiosk.services.seed import synthetic_people
    from kiosk.services.seed import seed_region
    from kiosk.storage import open_database

    tmp = Path(tempfile.mkdtemp(prefix="kiosk-load-"))
    url = f"sqlite:///{tmp}/load.db" if db == "sqlite" else _pg_fresh(_pg_base())
    centre_url, bank_url = db_urls(url, tmp)
    procs: list[subprocess.Popen] = []
    results: list[dict[str, Any]] = []
    try:
        t0 = time.perf_counter()
        roster = synthetic_people(people, REGION)
        with open_database(centre_url) as cdb:
            service, _gw = build_centre(cdb, tmp)
            seed_region(cdb, service.keys, people, REGION)
            # most people are returning patients (face only); the rest activate on their first visit
            pre = {p.psn_no for p in roster if random.Random(p.psn_no).random() < pre_activated}
            preactivate(cdb, pre)
        with open_database(bank_url) as bdb:
            open_lines(bdb, tmp, [(p.psn_no, p.brdy) for p in roster])
        cport, bport = _free_port(), _free_port()
        procs = start_services(url, tmp, workers=workers, centre_port=cport, bank_port=bport)
        token = admin_token(tmp)
        cfgs = []
        start_at = time.time() + 1.0 + 0.15 * terminals
        for i in range(terminals):
            key = Sm2PrivateKey.generate()
            app_id = f"LOADTERM{i:04d}{secrets.token_hex(4).upper()}"
            pub = key.public_key().to_bytes().hex()
            c = register_terminal(f"http://127.0.0.1:{cport}", token, app_id, pub, INSTITUTION)
            b = register_terminal(f"http://127.0.0.1:{bport}", token, app_id, pub, INSTITUTION)
            mine = [(p.psn_no, p.certno, p.insutype, p.phone_last4, p.psn_no in pre) for p in roster[i::terminals]]
            cfgs.append({"index": i, "key": key.to_bytes().hex(), "app_id": app_id, "centre_secret": c["app_secret"],
                         "bank_secret": b["app_secret"], "centre_url": f"http://127.0.0.1:{cport}",
                         "bank_url": f"http://127.0.0.1:{bport}", "people": mine, "seed": 1000 + i,
                         "seconds": seconds, "start_at": start_at, "refund_rate": refund_rate})
        setup_s = time.perf_counter() - t0
        with mp.get_context("spawn").Pool(terminals) as pool:
            pending = pool.map_async(terminal_main, cfgs)
            while time.time() < start_at:
                time.sleep(0.01)
            cpu0 = [_cpu_seconds(p.pid) for p in procs]
            other0 = _cpu_of_others({p.pid for p in procs})
            results = pending.get()
            cpu1 = [_cpu_seconds(p.pid) for p in procs]
            other1 = _cpu_of_others({p.pid for p in procs})
    finally:
        stop_services(procs)
        if db != "sqlite":
            atexit.register(_pg_drop, url)
    # ---- books and cross-checks -----------------------------------------------------------------
    lat: dict[str, list[float]] = {}
    for r in results:
        for k, v in r["lat"].items():
            lat.setdefault(k, []).extend(v)
    settled: dict[str, int] = {}
    refunded: set[str] = set()
    rev_declined: set[str] = set()
    for r in results:
        settled.update(r["settled"])
        refunded.update(r["refunded"])
        rev_declined.update(r["reversed_after_decline"])
    with open_database(centre_url) as cdb:
        centre_books = check_centre(cdb)
        rows = cdb.read(lambda tx: tx.fetch_all("SELECT setl_id, state, psn_cash_pay FROM centre_settlements"))
    with open_database(bank_url) as bdb:
        bank_books = check_bank(bdb, expect_draws={k: v for k, v in settled.items() if v > 0},
                                refunded=refunded)
    db_state = {r[0]: r[1] for r in rows}
    lost = sum(1 for s in settled if db_state.get(s) != "settled")
    lost += sum(1 for s in refunded | rev_declined if db_state.get(s) != "reversed")
    seen = set(settled) | refunded | rev_declined
    duplicated = sum(1 for s in db_state if s not in seen) + centre_books["duplicate_msgids"]
    duplicated += bank_books.get("duplicate_draws", 0)
    lost += bank_books.get("missing_draws", 0)
    elapsed = max(r["elapsed"] for r in results)
    n_settlements = len(lat.get("settlement", []))
    errors = sum(r["n_errors"] for r in results)
    out = {
        "settlements_per_s": round(n_settlements / elapsed, 1),
        "p50_ms": round(_pct(lat.get("settlement", []), 50) * 1000, 1),
        "p95_ms": round(_pct(lat.get("settlement", []), 95) * 1000, 1),
        "p99_ms": round(_pct(lat.get("settlement", []), 99) * 1000, 1),
        "errors": errors, "lost": lost, "duplicated": duplicated,
        "ledger_balanced": bool(centre_books["balanced"] and bank_books["balanced"]),
    }
    cpu_centre, cpu_bank = cpu1[0] - cpu0[0], cpu1[1] - cpu0[1]
    per = 1000 * (cpu_centre + cpu_bank) / max(1, n_settlements)
    n1 = max(1, n_settlements)
    split = {"terminals": other1["terminals"] - other0["terminals"], "centre": cpu_centre, "bank": cpu_bank,
             "postgres": (other1["postgres"] - other0["postgres"]) if db != "sqlite" else 0.0}
    total = sum(split.values())
    if verbose:
        print(f"# db={db} workers={workers} terminals={terminals} seconds={seconds:g} people={people} "
              f"(setup {setup_s:.1f} s)")
        print(f"{'stage':<12}{'n':>8}{'p50 ms':>10}{'p95 ms':>10}{'p99 ms':>10}")
        for k in ("activate", "auth", "2206", "2207", "draw", "settlement", "2208", "refund"):
            v = lat.get(k, [])
            print(f"{k:<12}{len(v):>8}{_pct(v, 50) * 1000:>10.1f}{_pct(v, 95) * 1000:>10.1f}{_pct(v, 99) * 1000:>10.1f}")
        print(f"server CPU: centre {cpu_centre:.1f} s, bank {cpu_bank:.1f} s = {per:.1f} ms per settlement "
              f"(capacity ~{2000 / per if per else 0:.0f} settlements/s on 2 dedicated cores); load average "
              f"{os.getloadavg()[0]:.1f}")
        print("CPU per settlement: " + ", ".join(f"{k} {1000 * v / n1:.1f} ms" for k, v in split.items())
              + f" = {1000 * total / n1:.1f} ms (all on this machine: ~{2 * n1 / total if total else 0:.0f} "
              "settlements/s if the 2 cores did nothing else)")
        print(f"settlements {n_settlements} in {elapsed:.1f} s; refunds {len(refunded)}; declined draws "
              f"{sum(r['declined'] for r in results)}; errors {errors}")
        for r in results:
            for e in r["errors"]:
                print(f"  error: {e}")
        print(f"centre books: {json.dumps({k: v for k, v in centre_books.items() if v})}")
        print(f"bank books: {json.dumps({k: v for k, v in bank_books.items() if v})}")
    shutil.rmtree(tmp, ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="load_services", description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--terminals", type=int, default=4)
    ap.add_argument("--db", choices=("sqlite", "postgres"), default="sqlite")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--people", type=int, default=2000)
    ap.add_argument("--refund-rate", type=float, default=0.05)
    ap.add_argument("--matrix", action="store_true",
                    help="run SQLite and PostgreSQL with 1, 2 and 4 workers; the JSON line is the last run")
    a = ap.parse_args(argv)
    import signal

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a killed run still stops the services it started
    if not (1 <= a.terminals <= 64 and 1 <= a.workers <= 16 and 0 < a.seconds <= 3600 and a.people >= a.terminals):
        print("load_services: --terminals 1-64, --workers 1-16, --seconds (0, 3600], --people >= terminals",
              file=sys.stderr)
        return 2
    runs = [(d, w) for d in ("sqlite", "postgres") for w in (1, 2, 4)] if a.matrix else [(a.db, a.workers)]
    table = []
    out: dict[str, Any] = {}
    for d, w in runs:
        out = run_once(seconds=a.seconds, terminals=a.terminals, db=d, workers=w, people=a.people,
                       refund_rate=a.refund_rate)
        table.append((d, w, out))
        print(json.dumps({"db": d, "workers": w, **out}), flush=True)
    if a.matrix:
        print(f"{'db':<10}{'workers':>8}{'settl/s':>10}{'p50':>8}{'p95':>8}{'p99':>8}{'err':>6}{'lost':>6}{'dup':>6}")
        for d, w, o in table:
            print(f"{d:<10}{w:>8}{o['settlements_per_s']:>10}{o['p50_ms']:>8}{o['p95_ms']:>8}{o['p99_ms']:>8}"
                  f"{o['errors']:>6}{o['lost']:>6}{o['duplicated']:>6}")
    print(json.dumps(out), flush=True)
    ok = out["errors"] == 0 and out["lost"] == 0 and out["duplicated"] == 0 and out["ledger_balanced"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
