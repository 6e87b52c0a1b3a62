"""The bank's clearing statement: what it owes an institution for one Asia/Shanghai day.

Read from the credit journal itself (no second source of truth): every posting
to `merchant_clearing` on that day's entries, on draws the institution made
(credit_draws.fixmedins_code, written by the bank at the draw). A draw posts
-amount to merchant_clearing (the bank owes the institution), a refund (also
the full refund that credit.draw_reverse makes) posts +amount (the institution
gives it back), so the net amount due is minus their sum; a draw from a hold is
a discharge's capture. The day is the entry's day, which kiosk.credit dates in
Asia/Shanghai when it books it.
"""
from __future__ import annotations

from datetime import date
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from kiosk.credit.ledger import MERCHANT
from kiosk.money import fen_to_yuan
from kiosk.storage import Transaction


class Clearing(BaseModel):
    """credit.clearing input: the day; `fixmedins_code`, if given, must be the caller's own."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)
    day: str = Field(pattern=r"^\d{4}-\d{2}-\d{2}$", description="Asia/Shanghai day, yyyy-MM-dd")
    fixmedins_code: str = Field(default="", max_length=30)

    @field_validator("day")
    @classmethod
    def _real(cls, v: str) -> str:
        try:
            date.fromisoformat(v)
        except ValueError:
            raise ValueError("must be a real date (yyyy-MM-dd)") from None
        return v


# the day's entries (index credit_entries_day, credit.004), their postings (credit_postings_entry) and draws
# (primary key), kept to the institution's
CLEARING_SQL = (
    "SELECT e.id, e.kind, e.created_at, p.amount, d.ref, d.payer, d.from_hold, d.app_id "
    "FROM credit_entries e JOIN credit_postings p ON p.entry_id = e.id "
    "JOIN credit_draws d ON d.id = p.draw_id "
    "WHERE e.day = ? AND p.account = ? AND d.fixmedins_code = ? ORDER BY e.id")


def statement(tx: Transaction, institution: str, day: str, *, readable: bool = True) -> dict[str, Any]:
    """The clearing statement of `institution` for `day`; not `readable` (a caller asking for another
    institution's): the answer an institution with no credit payments that day gets, read from nothing."""
    rows = [] if not readable else tx.fetch_all(CLEARING_SQL, (day, MERCHANT, institution))
    sums = {"draw": [0, 0], "capture": [0, 0], "refund": [0, 0]}
    entries = []
    marks = _senseless(tx, institution, day) if rows else {}
    for entry_id, kind, at, amount, ref, payer, from_hold, app_id in rows:
        due = -int(amount)  # what this entry adds to the amount due to the institution
        what = "refund" if due < 0 else ("capture" if from_hold else "draw")
        if kind not in ("draw", "refund"):  # a correcting entry keeps the sign rule; name it by its own kind
            what = kind
        s = sums.setdefault(what, [0, 0])
        s[0] += 1
        s[1] += abs(due)
        entries.append({"entry_id": int(entry_id), "kind": what, "ref": ref, "payer": payer,
                        "amount": fen_to_yuan(abs(due)), "due": fen_to_yuan(due), "at": at, "app_id": app_id or "",
                        **marks.get(ref, {})})
    net = -sum(int(r[3]) for r in rows)
    return {"fixmedins_code": institution, "day": day,
            "draws": {"count": sums["draw"][0], "amount": fen_to_yuan(sums["draw"][1])},
            "captures": {"count": sums["capture"][0], "amount": fen_to_yuan(sums["capture"][1])},
            "refunds": {"count": sums["refund"][0], "amount": fen_to_yuan(sums["refund"][1])},
            "net_due": fen_to_yuan(net), "entries": entries}


def _senseless(tx: Transaction, institution: str, day: str) -> dict[str, dict[str, str]]:
    """The day's draws of the institution made under a mandate (senseless payment): ref -> mandate, visit."""
    rows = tx.fetch_all("SELECT d.ref, d.mandate_id, d.visit FROM credit_draws d WHERE d.fixmedins_code = ? AND "
                        "d.mandate_id IS NOT NULL AND EXISTS (SELECT 1 FROM credit_entries e WHERE e.ref = d.ref "
                        "AND e.day = ?)", (institution, day))
    return {r[0]: {"mandate_id": r[1], "visit": r[2]} for r in rows}
