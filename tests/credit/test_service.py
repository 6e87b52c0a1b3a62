"""CreditService on real databases (SQLite and PostgreSQL)."""
from __future__ import annotations

import threading
from datetime import date, datetime, timezone
from pathlib import Path

import pytest

from kiosk.clock import SHANGHAI, ManualClock
from kiosk.credit import CreditService
from kiosk.credit.service import TOPIC_DUE_SOON, TOPIC_MEMBER_DRAW, TOPIC_OVERDUE
from kiosk.errors import ConflictError, InputError, StorageError
from kiosk.storage import Database, OutboxMessage


def at(y: int, m: int, d: int, h: int = 12) -> datetime:
    return datetime(y, m, d, h, tzinfo=SHANGHAI)


def service(db: Database, when: datetime | None = None) -> tuple[CreditService, ManualClock]:
    clock = ManualClock(when or at(2026, 1, 1))
    return CreditService(db, clock), clock


def counts(svc: CreditService) -> tuple[int, int]:
    return svc.db.read(lambda tx: (tx.scalar("SELECT COUNT(*) FROM credit_entries"),
                                   tx.scalar("SELECT COUNT(*) FROM credit_postings")))


def test_retries_with_the_same_key_move_money_once(db: Database) -> None:
    svc, clock = service(db)
    assert svc.open("o1", "h", date(1990, 1, 1), 5).ok
    first = svc.draw("k-draw", "h", 12_345, "bill-1")
    before = counts(svc)
    again = svc.draw("k-draw", "h", 12_345, "bill-1")
    assert again == first and counts(svc) == before
    assert svc.repay("k-repay", "h", 10_000).ok
    assert svc.repay("k-repay", "h", 10_000).ok
    assert svc.refund("k-refund", "bill-1", 2_000).ok
    clock.advance(days=3)  # a retry on a later day still replays the first result
    assert svc.refund("k-refund", "bill-1", 2_000).detail == {"principal": "20.00", "cash": "0.00"}
    st = svc.state("h")
    assert (st.principal_outstanding, st.refunded_cash) == (12_345 - 10_000 - 2_000, 0)
    # a refused result is replayed too, not re-decided
    assert svc.repay("k-over", "h", 10**6).code == "overpayment"
    assert svc.repay("k-over", "h", 10**6).code == "overpayment"
    with pytest.raises(ConflictError) as e:
        svc.draw("k-draw", "h", 99, "bill-1")
    assert e.value.code == "idempotency_conflict"
    assert svc.check().ok


def test_concurrent_counters_never_exceed_the_family_limit(db: Database) -> None:
    """8 counters (holder + members, own connections) draw 30.00 at once on a 2,000 line."""
    svc, _ = service(db)
    assert svc.open("o", "h", date(1990, 1, 1), 0).ok  # limit 2,000.00
    payers = ["h"] + [f"m{i}" for i in range(7)]
    for p in payers[1:]:
        assert svc.bind(f"b-{p}", "h", p, "child", True, None).ok
    results: list[str] = []
    lock = threading.Lock()
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(payers))

    def counter(payer: str) -> None:
        try:
            barrier.wait()
            for i in range(10):
                r = svc.draw(f"{payer}-{i}", payer, 3_000, f"{payer}-bill-{i}")
                with lock:
                    results.append(r.code)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=counter, args=(p,)) for p in payers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    ok = results.count("ok")
    assert ok == 66 and results.count("exceeds_available") == 80 - 66  # floor(2000 / 30)
    st = svc.state("h")
    assert st.principal_outstanding == ok * 3_000 and st.available == 200_000 - ok * 3_000 >= 0
    report = svc.check()
    assert report.ok, report.problems
    member_draws = [m for m in svc.outbox.pending(db, 1000) if m.topic == TOPIC_MEMBER_DRAW]
    assert len(member_draws) == ok - results_for_holder(svc)


def results_for_holder(svc: CreditService) -> int:
    return svc.db.read(lambda tx: tx.scalar("SELECT COUNT(*) FROM credit_draws WHERE payer = 'h'"))


def test_journal_is_append_only(db: Database) -> None:
    svc, _ = service(db)
    svc.open("o", "h", date(1990, 1, 1), 5)
    svc.draw("d", "h", 100, "r")
    for sql in ("UPDATE credit_postings SET amount = amount + 1", "DELETE FROM credit_postings",
                "UPDATE credit_entries SET kind = 'x'", "DELETE FROM credit_entries"):
        with pytest.raises(StorageError) as e:
            db.run(lambda tx, sql=sql: tx.execute(sql))
        assert e.value.code == "constraint_violation"
    assert svc.check().ok


def test_check_finds_a_projection_that_disagrees_with_the_journal(db: Database) -> None:
    svc, _ = service(db)
    svc.open("o", "h", date(1990, 1, 1), 5)
    svc.draw("d", "h", 10_000, "r")
    db.run(lambda tx: tx.execute("UPDATE credit_lines SET principal_fen = principal_fen - 1"))
    report = svc.check()
    assert not report.ok
    assert any("principal_outstanding is 9999 fen but the journal says 10000" in p for p in report.problems)


def test_holder_notifications_survive_a_sender_outage(db: Database) -> None:
    svc, clock = service(db)
    svc.open("o", "h", date(1990, 1, 1), 5)
    svc.bind("b", "h", "m", "parent", True, None)
    svc.draw("d1", "m", 5_000, "r1")       # member draw -> holder notified
    svc.draw("d2", "h", 1_000, "r2")       # the holder's own draw -> no notice
    clock.set(at(2026, 2, 22))             # day 52 of both: approaching day 59
    svc.sweep()
    clock.set(at(2026, 3, 2))              # day 60: overdue
    svc.sweep()
    svc.sweep()                            # idempotent: no duplicate notices

    def down(m: OutboxMessage) -> None:
        raise ConnectionError("SMS gateway down")

    assert svc.drain_notifications(down) == (0, 1)
    got: list[tuple[str, str]] = []
    assert svc.drain_notifications(lambda m: got.append((m.topic, m.payload["ref"]))) == (5, 0)
    assert got == [(TOPIC_MEMBER_DRAW, "r1"), (TOPIC_DUE_SOON, "r1"), (TOPIC_DUE_SOON, "r2"),
                   (TOPIC_OVERDUE, "r1"), (TOPIC_OVERDUE, "r2")]
    assert svc.drain_notifications(lambda m: got.append(("again", ""))) == (0, 0)


def test_monthly_cap_uses_shanghai_calendar_months(db: Database) -> None:
    # 2026-01-31 16:30 UTC is 2026-02-01 00:30 in Shanghai: a new month for the cap.
    svc, clock = service(db, datetime(2026, 1, 31, 3, 0, tzinfo=timezone.utc))
    svc.open("o", "h", date(1990, 1, 1), 5)
    svc.bind("b", "h", "m", "spouse", True, 1_000)
    assert svc.draw("d1", "m", 1_000, "r1").ok
    assert svc.draw("d2", "m", 1, "r2").code == "member_cap_exceeded"
    clock.set(datetime(2026, 1, 31, 16, 30, tzinfo=timezone.utc))
    assert svc.draw("d3", "m", 1_000, "r3").ok
    months = db.read(lambda tx: [r[0] for r in tx.fetch_all("SELECT month FROM credit_draws ORDER BY id")])
    assert months == ["2026-01", "2026-02"]


def test_bad_input_names_the_field(db: Database) -> None:
    svc, _ = service(db)
    svc.open("o", "h", date(1990, 1, 1), 5)
    cases = [
        (lambda: svc.draw("x1", "h", 0, "r"), "amount"),
        (lambda: svc.draw("x2", "h", 10, ""), "ref"),
        (lambda: svc.bind("x3", "h", "s", "sibling", True, None), "relation"),
        (lambda: svc.bind("x4", "h", "h", "spouse", True, None), "member"),
        (lambda: svc.open("x5", "z", date(1990, 1, 1), -1), "insured_years"),
        (lambda: svc.draw("", "h", 10, "r"), "idempotency_key"),
    ]
    for call, field in cases:
        with pytest.raises(InputError) as e:
            call()
        assert e.value.field == field
    assert svc.draw("x6", "h", 10, "dup").ok
    with pytest.raises(InputError) as e2:
        svc.draw("x7", "h", 10, "dup")
    assert e2.value.field == "ref"


def test_members_belong_to_one_line_and_draw_from_it(db: Database) -> None:
    svc, _ = service(db)
    svc.open("o1", "h1", date(1990, 1, 1), 5)
    svc.open("o2", "h2", date(1985, 1, 1), 0)
    assert svc.open("o3", "h2", date(1985, 1, 1), 0).code == "already_open"
    assert svc.bind("b1", "h1", "kid", "child", True, None).ok
    assert svc.bind("b2", "h2", "kid", "child", True, None).code == "already_bound"
    assert svc.draw("d1", "kid", 700, "k1").ok            # resolves to h1's line
    assert svc.draw("d2", "kid", 700, "k2", holder="h2").code == "not_bound"
    assert svc.draw("d3", "stranger", 700, "k3").code == "not_bound"
    assert svc.draw("d4", "h2", 1, "k4", holder="nobody").code == "no_line"
    assert svc.state("h1").principal_outstanding == 700 and svc.state("h2").principal_outstanding == 0
    stmt = svc.statement("h1")
    assert stmt["draws"][0]["payer"] == "kid" and stmt["draws"][0]["original"] == "7.00"
    assert svc.check().ok


def test_refs_are_unique_across_draws_and_holds(db: Database) -> None:
    svc, _ = service(db)
    svc.open("o", "h", date(1990, 1, 1), 5)
    assert svc.draw("a", "h", 100, "d").ok and svc.hold("b", "h", 100, "hh").ok
    for call in (lambda: svc.draw("c", "h", 1, "d"), lambda: svc.draw("e", "h", 1, "hh"),
                 lambda: svc.hold("f", "h", 1, "d"), lambda: svc.hold("g", "h", 1, "hh")):
        with pytest.raises(InputError) as e:
            call()
        assert e.value.field == "ref"
    assert svc.capture("i", "hh", 60, holder="h").ok  # the captured hold keeps its ref as a draw
    assert svc.refund("j", "hh", 60).detail == {"principal": "0.60", "cash": "0.00"}
    assert svc.check().ok


def test_racing_binds_of_one_member_to_two_lines_give_one_binding(db: Database) -> None:
    """Two lines bind the same member at once: each holds only its own line lock, so the
    loser meets the one-active-binding index. It must get `already_bound`, not a StorageError."""
    svc, _ = service(db)
    assert svc.open("o1", "h1", date(1990, 1, 1), 5).ok and svc.open("o2", "h2", date(1985, 1, 1), 5).ok
    first_inserted = threading.Event()
    second: list[object] = []

    def other_counter() -> None:
        first_inserted.wait(10)
        try:
            second.append(svc.bind("b2", "h2", "kid", "child", True, None).code)
        except BaseException as e:  # pragma: no cover - the failure this test is about
            second.append(e)

    t = threading.Thread(target=other_counter)
    t.start()
    with db.transaction():  # h1's bind is in but not committed while h2's runs its checks
        assert svc.bind("b1", "h1", "kid", "child", True, 10_000).ok
        first_inserted.set()
        t.join(0.5)  # PostgreSQL: h2's insert now waits on our index entry; SQLite: on the write lock
    t.join(30)
    assert second == ["already_bound"]
    active = db.read(lambda tx: tx.fetch_all("SELECT line_id, monthly_cap_fen FROM credit_members WHERE active = 1"))
    assert len(active) == 1 and active[0][1] == 10_000
    assert svc.draw("d", "kid", 100, "k").ok and svc.state("h1").principal_outstanding == 100
    assert svc.bind("b2", "h2", "kid", "child", True, None).code == "already_bound"  # the key replays


def test_out_of_range_numbers_are_input_errors_not_storage_faults(db: Database) -> None:
    svc, _ = service(db)
    with pytest.raises(InputError) as e:
        svc.open("o", "h", date(1990, 1, 1), 10**30)
    assert e.value.field == "insured_years"
    assert svc.open("o", "h", date(1990, 1, 1), 5).ok
    with pytest.raises(InputError) as e:
        svc.bind("b", "h", "m", "spouse", True, 10**30)
    assert e.value.field == "monthly_cap"
    assert svc.bind("b", "h", "m", "spouse", True, 10**12).ok


_PAYER_PROCESS = """
import json, os, sys, time
from datetime import datetime
from kiosk.clock import SHANGHAI, ManualClock
from kiosk.credit import CreditService
from kiosk.storage import open_database
url, payer, barrier, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
svc = CreditService(open_database(url), ManualClock(datetime(2026, 1, 1, 12, tzinfo=SHANGHAI)))
open(os.path.join(barrier, payer), "w").close()
deadline = time.monotonic() + 60
while len(os.listdir(barrier)) < n and time.monotonic() < deadline:  # all connected: start together
    time.sleep(0.001)
t0 = time.time()
codes = [svc.draw(f"{payer}-{i}", payer, 1_000, f"{payer}-bill-{i}").code for i in range(75)]
print(json.dumps({"codes": codes, "span": [t0, time.time()]}))
"""


def test_counters_in_separate_processes_never_exceed_the_family_limit(db: Database, tmp_path: Path) -> None:
    """Like the bank's uvicorn workers: 4 OS processes, each with its own connection, draw 10.00
    at the same moment from one 2,000 family line (300 attempts, room for 200)."""
    import json
    import subprocess
    import sys

    svc, _ = service(db)
    assert svc.open("o", "h", date(1990, 1, 1), 0).ok
    payers = ["h", "m0", "m1", "m2"]
    for p in payers[1:]:
        assert svc.bind(f"b-{p}", "h", p, "parent", True, None).ok
    procs = [subprocess.Popen([sys.executable, "-c", _PAYER_PROCESS, db.url, p, str(tmp_path), str(len(payers))],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for p in payers]
    outs = [pr.communicate(timeout=120) for pr in procs]
    assert all(pr.returncode == 0 for pr in procs), [e for _, e in outs]
    runs = [json.loads(out) for out, _ in outs]
    codes = [c for r in runs for c in r["codes"]]
    assert codes.count("ok") == 200 and codes.count("exceeds_available") == 100
    assert max(r["span"][0] for r in runs) < min(r["span"][1] for r in runs)  # they really overlapped
    st = svc.state("h")
    assert st.principal_outstanding == 200_000 and st.available == 0
    assert svc.check().ok


def test_a_hold_and_a_draw_on_two_lines_racing_for_one_ref_do_not_both_win(db: Database) -> None:
    """Refs are unique across draws and holds. The hold's table is checked by NOT EXISTS, which
    under READ COMMITTED does not see another line's uncommitted hold (the line locks differ), so
    both won on PostgreSQL and the hold could then never be captured (its draw's ref was taken)."""
    svc, _ = service(db)
    assert svc.open("o1", "h1", date(1990, 1, 1), 5).ok and svc.open("o2", "h2", date(1985, 1, 1), 5).ok
    hold_in = threading.Event()
    second: list[object] = []

    def other_counter() -> None:
        hold_in.wait(10)
        try:
            second.append(svc.draw("d", "h2", 500, "bill-x").code)
        except InputError as e:
            second.append(e.field)

    t = threading.Thread(target=other_counter)
    t.start()
    with db.transaction():  # h1's hold is in but not committed while h2's draw runs its checks
        assert svc.hold("h", "h1", 1_000, "bill-x").ok
        hold_in.set()
        t.join(0.5)
    t.join(30)
    assert second == ["ref"]
    assert svc.state("h2").principal_outstanding == 0
    assert svc.capture("c", "bill-x", 600).ok and svc.state("h1").principal_outstanding == 600
    assert svc.check().ok

