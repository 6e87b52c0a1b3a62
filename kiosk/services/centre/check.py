"""Consistency check of the centre's books (read-only), for operators and the load tool.

- every personal account: balc = balc_opening + sum(its journal rows);
- every settlement: its journal rows net to -(acct_pay + acct_mulaid_pay) while
  settled and to 0 once reversed; medfee = fund + account + mutual aid + cash;
- every year-to-date record equals the sum over the settlements still standing;
- no msgid settled twice (the UNIQUE constraint; counted anyway).
"""
from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

from kiosk.storage import Database, Transaction


def check_centre(db: Database) -> dict[str, Any]:
    def work(tx: Transaction) -> dict[str, Any]:
        bad_accounts = tx.fetch_all(
            "SELECT p.psn_no FROM centre_persons p LEFT JOIN (SELECT psn_no, SUM(amount) AS s FROM "
            "centre_account_moves GROUP BY psn_no) m ON m.psn_no = p.psn_no "
            "WHERE p.balc <> p.balc_opening + COALESCE(m.s, 0) OR p.balc < 0")
        moves: dict[str, int] = {r[0]: int(r[1]) for r in tx.fetch_all(
            "SELECT setl_id, SUM(amount) FROM centre_account_moves GROUP BY setl_id")}
        rows = tx.fetch_all("SELECT setl_id, psn_no, profile, year, state, result, medfee_sumamt, fund_pay_sumamt, "
                            "acct_pay, acct_mulaid_pay, psn_cash_pay FROM centre_settlements")
        ytd_expected: dict[tuple[str, str, int], list[int]] = defaultdict(lambda: [0, 0])
        bad_settlements = []
        settled = reversed_ = 0
        for setl_id, psn, profile, year, state, result, medfee, fund, acct, mulaid, cash in rows:
            net = moves.pop(setl_id, 0)
            ok = medfee == fund + acct + mulaid + cash
            if state == "settled":
                settled += 1
                ok = ok and net == -(acct + mulaid)
                r = json.loads(result)["setlinfo"]
                e = ytd_expected[(psn, profile, int(year))]
                e[0] += _fen(r["act_pay_dedc"])
                e[1] += _fen(r["hifp_pay"])
            else:
                reversed_ += 1
                ok = ok and net == 0
            if not ok:
                bad_settlements.append(setl_id)
        orphan_moves = sorted(moves)
        bad_ytd = []
        for psn, profile, year, ded, pool in tx.fetch_all(
                "SELECT psn_no, profile, year, deductible_used, pool_paid FROM centre_ytd"):
            e = ytd_expected.pop((psn, profile, int(year)), [0, 0])
            if [int(ded), int(pool)] != e:
                bad_ytd.append(f"{psn}/{profile}/{year}")
        bad_ytd += [f"{k[0]}/{k[1]}/{k[2]} (missing)" for k, v in ytd_expected.items() if v != [0, 0]]
        dup = tx.scalar("SELECT COUNT(*) FROM (SELECT msgid FROM centre_settlements GROUP BY msgid "
                        "HAVING COUNT(*) > 1) d", default=0)
        return {
            "settled": settled, "reversed": reversed_,
            "bad_accounts": [r[0] for r in bad_accounts][:20], "bad_settlements": bad_settlements[:20],
            "orphan_moves": orphan_moves[:20], "bad_ytd": bad_ytd[:20], "duplicate_msgids": int(dup),
            "balanced": not (bad_accounts or bad_settlements or orphan_moves or bad_ytd or dup),
        }

    return db.read(work)


def _fen(yuan: str) -> int:
    from kiosk.money import yuan_to_fen

    return yuan_to_fen(yuan, "setlinfo")
