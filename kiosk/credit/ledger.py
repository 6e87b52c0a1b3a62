"""The append-only double-entry journal of a credit line.

Every movement is one entry whose postings sum to zero (debit +, credit -).
Balances are derived from the postings; the line/draw/hold tables are a
projection kept in the same transaction, and `check` proves they agree.
Nothing is ever updated or deleted (database triggers refuse it); a mistake
is to be fixed by a correcting entry that names the entry it corrects
(`Entry.corrects`; no service operation posts one yet).

Accounts (per line):
    principal            receivable principal owed by the holder (draw +, repay -, refund -)
    merchant_clearing    paid to / returned by the counter (draw -, refund +)
    holds                open holds (hold +, capture/release -)
    hold_commitments     counterpart of holds (hold -, capture/release +)
    interest_receivable  accrued unpaid interest (accrual +, repay -)
    interest_income      interest earned (accrual -)
    repayment_cash       cash received from the holder (repay +)
    refund_cash          cash paid back to the patient (refund -)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date

from kiosk.errors import IntegrityError
from kiosk.money import Fen

PRINCIPAL = "principal"
MERCHANT = "merchant_clearing"
HOLDS = "holds"
HOLD_COMMITMENTS = "hold_commitments"
INTEREST_RECEIVABLE = "interest_receivable"
INTEREST_INCOME = "interest_income"
REPAYMENT_CASH = "repayment_cash"
REFUND_CASH = "refund_cash"
ACCOUNTS = (PRINCIPAL, MERCHANT, HOLDS, HOLD_COMMITMENTS, INTEREST_RECEIVABLE, INTEREST_INCOME,
            REPAYMENT_CASH, REFUND_CASH)


@dataclass(frozen=True)
class Posting:
    account: str
    amount: Fen  # debit positive, credit negative
    draw_id: int | None = None
    hold_id: int | None = None


@dataclass
class Entry:
    kind: str
    day: date
    ref: str | None = None
    postings: list[Posting] = field(default_factory=list)
    corrects: int | None = None

    def post(self, account: str, amount: Fen, *, draw_id: int | None = None, hold_id: int | None = None) -> Entry:
        if account not in ACCOUNTS:
            raise IntegrityError(f"unknown ledger account {account!r}", field="account")
        if amount:
            self.postings.append(Posting(account, amount, draw_id, hold_id))
        return self

    def balanced(self) -> bool:
        return sum(p.amount for p in self.postings) == 0

    def require_balanced(self) -> None:
        if not self.balanced():
            raise IntegrityError(f"unbalanced {self.kind} entry: {self.postings}", code="unbalanced_entry")


def draw_entry(day: date, ref: str, draw_id: int, amount: Fen) -> Entry:
    return Entry("draw", day, ref).post(PRINCIPAL, amount, draw_id=draw_id).post(MERCHANT, -amount, draw_id=draw_id)


def hold_entry(day: date, ref: str, hold_id: int, amount: Fen) -> Entry:
    return Entry("hold", day, ref).post(HOLDS, amount, hold_id=hold_id).post(HOLD_COMMITMENTS, -amount, hold_id=hold_id)


def hold_close_entry(kind: str, day: date, ref: str, hold_id: int, amount: Fen) -> Entry:
    return Entry(kind, day, ref).post(HOLDS, -amount, hold_id=hold_id).post(HOLD_COMMITMENTS, amount, hold_id=hold_id)


def accrual_entry(day: date, parts: list[tuple[int, int, Fen]]) -> Entry:
    e = Entry("accrual", day)
    for draw_id, _days, fen in parts:
        e.post(INTEREST_RECEIVABLE, fen, draw_id=draw_id).post(INTEREST_INCOME, -fen, draw_id=draw_id)
    return e


def repay_entry(day: date, amount: Fen, interest: Fen, principal: tuple[tuple[int, Fen], ...]) -> Entry:
    e = Entry("repay", day).post(REPAYMENT_CASH, amount).post(INTEREST_RECEIVABLE, -interest)
    for draw_id, fen in principal:
        e.post(PRINCIPAL, -fen, draw_id=draw_id)
    return e


def refund_entry(day: date, ref: str, draw_id: int, principal: Fen, cash: Fen) -> Entry:
    return (Entry("refund", day, ref).post(MERCHANT, principal + cash, draw_id=draw_id)
            .post(PRINCIPAL, -principal, draw_id=draw_id).post(REFUND_CASH, -cash, draw_id=draw_id))
