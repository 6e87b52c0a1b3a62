"""`kiosk credit check`: the journal balances and the projection matches it.

Recomputes every balance from the append-only postings and compares it with
the line/draw/hold tables the service keeps for fast decisions.
"""
from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING

from kiosk.credit import ledger

if TYPE_CHECKING:
    from kiosk.credit.service import CheckReport
    from kiosk.storage import Transaction


def run_check(tx: Transaction) -> CheckReport:
    from kiosk.credit.service import CheckReport

    problems: list[str] = []
    for entry_id, total in tx.fetch_all(
            "SELECT entry_id, SUM(amount) FROM credit_postings GROUP BY entry_id HAVING SUM(amount) <> 0"):
        problems.append(f"entry {entry_id} does not balance (sum {total})")
    grand = tx.scalar("SELECT SUM(amount) FROM credit_postings", default=0)
    if grand != 0:
        problems.append(f"the journal does not balance overall (sum {grand})")
    for pid, acct in tx.fetch_all("SELECT id, account FROM credit_postings"):
        if acct not in ledger.ACCOUNTS:
            problems.append(f"posting {pid} uses unknown account {acct!r}")

    bal: dict[tuple[int, str], int] = defaultdict(int)
    for line_id, account, total in tx.fetch_all(
            "SELECT line_id, account, SUM(amount) FROM credit_postings GROUP BY line_id, account"):
        bal[(line_id, account)] = total
    lines = tx.fetch_all("SELECT id, holder, limit_fen, principal_fen, holds_fen, interest_unpaid_fen, "
                         "interest_paid_fen, refunded_cash_fen FROM credit_lines ORDER BY id")
    for lid, holder, limit, principal, holds, i_unpaid, i_paid, refunded in lines:
        def b(acct: str, lid: int = lid) -> int:
            return bal[(lid, acct)]

        derived = {
            "principal_outstanding": (principal, b(ledger.PRINCIPAL)),
            "holds_open": (holds, b(ledger.HOLDS)),
            "interest_unpaid": (i_unpaid, b(ledger.INTEREST_RECEIVABLE)),
            "interest_paid": (i_paid, -b(ledger.INTEREST_INCOME) - b(ledger.INTEREST_RECEIVABLE)),
            "refunded_cash": (refunded, -b(ledger.REFUND_CASH)),
            "hold_commitments": (-holds, b(ledger.HOLD_COMMITMENTS)),
        }
        for name, (kept, from_journal) in derived.items():
            if kept != from_journal:
                problems.append(f"line {holder}: {name} is {kept} fen but the journal says {from_journal}")
        if limit - principal - holds < 0:
            problems.append(f"line {holder}: available is negative ({limit - principal - holds} fen)")
        if not 0 < limit <= 2_000_000:
            problems.append(f"line {holder}: limit {limit} fen outside (0, 20000 yuan]")
        if principal < 0 or holds < 0 or i_unpaid < 0:
            problems.append(f"line {holder}: a balance is negative")

    by_draw: dict[tuple[int, str], int] = defaultdict(int)
    for draw_id, account, total in tx.fetch_all(
            "SELECT draw_id, account, SUM(amount) FROM credit_postings WHERE draw_id IS NOT NULL "
            "GROUP BY draw_id, account"):
        by_draw[(draw_id, account)] = total
    per_line_unpaid: dict[int, int] = defaultdict(int)
    for did, lid, ref, original, unpaid, refunded in tx.fetch_all(
            "SELECT id, line_id, ref, original_fen, unpaid_fen, refunded_fen FROM credit_draws"):
        per_line_unpaid[lid] += unpaid
        if unpaid != by_draw[(did, ledger.PRINCIPAL)]:
            problems.append(f"draw {ref}: unpaid {unpaid} but the journal says {by_draw[(did, ledger.PRINCIPAL)]}")
        if refunded != original + by_draw[(did, ledger.MERCHANT)]:
            problems.append(f"draw {ref}: refunded {refunded} disagrees with the journal")
        if not (0 <= unpaid <= original) or not (0 <= refunded <= original):
            problems.append(f"draw {ref}: unpaid/refunded outside [0, original]")
    for lid, _holder, _limit, principal, *_ in lines:
        if per_line_unpaid[lid] != principal:
            problems.append(f"line {lid}: draws' unpaid sum {per_line_unpaid[lid]} != principal {principal}")

    hold_bal = dict(((r[0], r[1]) for r in tx.fetch_all(
        "SELECT hold_id, SUM(amount) FROM credit_postings WHERE hold_id IS NOT NULL AND account = ? GROUP BY hold_id",
        (ledger.HOLDS,))))
    for hid, ref, amount, status in tx.fetch_all("SELECT id, ref, amount_fen, status FROM credit_holds"):
        want = amount if status == "open" else 0
        if hold_bal.get(hid, 0) != want:
            problems.append(f"hold {ref} ({status}): journal holds {hold_bal.get(hid, 0)}, expected {want}")

    entries = tx.scalar("SELECT COUNT(*) FROM credit_entries", default=0)
    postings = tx.scalar("SELECT COUNT(*) FROM credit_postings", default=0)
    return CheckReport(not problems, len(lines), entries, postings, problems)
