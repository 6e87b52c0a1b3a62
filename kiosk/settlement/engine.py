"""Splitting a bill into the fund share and the personal share (pure, no I/O).

The arithmetic is `shared/docs/settlement-rules.md`, step by step: item fields
first (each rounded half-up to fen once), bill totals as their sums, then the
deductible, the pooling fund (capped by what is left of the annual cap), the
personal account, family mutual aid and the cash/credit rest. Field names are
those of the national platform's `setlinfo` / `detlcutinfo` so a result can be
handed on unchanged.
"""
from __future__ import annotations

import decimal
from dataclasses import dataclass, fields
from decimal import Decimal
from typing import Any, Mapping

from kiosk.errors import InputError, IntegrityError
from kiosk.money import Fen, fen_to_yuan, mul_fen, round_fen, yuan_to_fen

from .bill import Bill, Category, Item, SettleRequest, Ytd
from .profiles import Profile, get_profile

# Prices and quantities have at most 4 dp and bounded size; this precision keeps
# every product exact before the single rounding step.
_EXACT = decimal.Context(prec=60, rounding=decimal.ROUND_HALF_UP)


@dataclass(frozen=True)
class ItemSplit:
    """detlcutinfo of one line; the four parts add up to det_item_fee_sumamt."""

    det_item_fee_sumamt: Fen
    fulamt_ownpay_amt: Fen
    overlmt_amt: Fen
    preselfpay_amt: Fen
    inscp_scp_amt: Fen

    def to_json(self) -> dict[str, str]:
        return {f.name: fen_to_yuan(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any], field: str = "detlcutinfo") -> "ItemSplit":
        return cls(**{f.name: yuan_to_fen(data[f.name], f"{field}.{f.name}") for f in fields(cls)})


# setlinfo field order as printed
SETLINFO_FIELDS = (
    "medfee_sumamt",
    "fulamt_ownpay_amt",
    "overlmt_selfpay",
    "preselfpay_amt",
    "inscp_scp_amt",
    "act_pay_dedc",
    "hifp_pay",
    "fund_pay_sumamt",
    "psn_part_amt",
    "acct_pay",
    "acct_mulaid_pay",
    "psn_cash_pay",
    "balc",
)


@dataclass(frozen=True)
class Settlement:
    """The split of one bill, all amounts in fen.

    medfee_sumamt = fund_pay_sumamt + psn_part_amt and
    psn_part_amt = acct_pay + acct_mulaid_pay + psn_cash_pay, exactly.
    `psn_cash_pay` is what the credit line (or cash) must pay. `ytd_after` is
    what the accumulators become when this settlement commits.
    """

    medfee_sumamt: Fen
    fulamt_ownpay_amt: Fen
    overlmt_selfpay: Fen
    preselfpay_amt: Fen
    inscp_scp_amt: Fen
    act_pay_dedc: Fen
    hifp_pay: Fen
    fund_pay_sumamt: Fen
    psn_part_amt: Fen
    acct_pay: Fen
    acct_mulaid_pay: Fen
    psn_cash_pay: Fen
    balc: Fen
    detlcutinfo: tuple[ItemSplit, ...]
    ytd_after: Ytd

    def setlinfo(self) -> dict[str, Fen]:
        return {name: getattr(self, name) for name in SETLINFO_FIELDS}

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form: yuan strings with two decimals."""
        return {
            "setlinfo": {k: fen_to_yuan(v) for k, v in self.setlinfo().items()},
            "detlcutinfo": [d.to_json() for d in self.detlcutinfo],
            "ytd_after": self.ytd_after.to_json(),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "Settlement":
        """Inverse of to_json (for a stored settlement that must be reversed)."""
        if not isinstance(data, Mapping) or not {"setlinfo", "detlcutinfo", "ytd_after"} <= set(data):
            raise InputError("must be an object with setlinfo, detlcutinfo, ytd_after", field="settlement")
        s = data["setlinfo"]
        try:
            amounts = {k: yuan_to_fen(s[k], f"setlinfo.{k}") for k in SETLINFO_FIELDS}
            details = tuple(
                ItemSplit.from_json(d, f"detlcutinfo[{i}]") for i, d in enumerate(data["detlcutinfo"])
            )
        except (KeyError, TypeError) as e:
            raise InputError(f"missing or malformed field {e}", field="settlement") from None
        s = cls(**amounts, detlcutinfo=details, ytd_after=Ytd.from_json(data["ytd_after"], "ytd_after"))
        s.check()
        return s

    def check(self) -> None:
        """Refuse a settlement whose figures do not add up (a tampered or corrupted record).

        A stored settlement is what `reverse` trusts to take the accumulators back;
        one that breaks the rules' identities must not move them.
        """
        bad: list[str] = []
        for i, d in enumerate(self.detlcutinfo):
            if d.fulamt_ownpay_amt + d.overlmt_amt + d.preselfpay_amt + d.inscp_scp_amt != d.det_item_fee_sumamt:
                bad.append(f"detlcutinfo[{i}] parts do not add up to det_item_fee_sumamt")
        for total, part in (
            ("medfee_sumamt", "det_item_fee_sumamt"),
            ("fulamt_ownpay_amt", "fulamt_ownpay_amt"),
            ("overlmt_selfpay", "overlmt_amt"),
            ("preselfpay_amt", "preselfpay_amt"),
            ("inscp_scp_amt", "inscp_scp_amt"),
        ):
            if getattr(self, total) != sum(getattr(d, part) for d in self.detlcutinfo):
                bad.append(f"{total} is not the sum of detlcutinfo {part}")
        if not self.detlcutinfo:
            bad.append("detlcutinfo is empty")
        if self.act_pay_dedc > self.inscp_scp_amt:
            bad.append("act_pay_dedc exceeds inscp_scp_amt")
        if self.fund_pay_sumamt != self.hifp_pay:
            bad.append("fund_pay_sumamt differs from hifp_pay")
        if self.medfee_sumamt != self.fund_pay_sumamt + self.psn_part_amt:
            bad.append("medfee_sumamt != fund_pay_sumamt + psn_part_amt")
        if self.psn_part_amt != self.acct_pay + self.acct_mulaid_pay + self.psn_cash_pay:
            bad.append("psn_part_amt != acct_pay + acct_mulaid_pay + psn_cash_pay")
        if self.ytd_after.deductible_used < self.act_pay_dedc or self.ytd_after.pool_paid < self.hifp_pay:
            bad.append("ytd_after is below what this settlement added")
        if bad:
            raise IntegrityError("; ".join(bad), code="settlement_inconsistent", field="settlement")


def split_item(item: Item, class_b_default: Decimal) -> ItemSplit:
    """Per-item fee detail (rules: 'Per item')."""
    with decimal.localcontext(_EXACT):
        total = round_fen(item.price * item.qty)
        if item.category is Category.C:
            return ItemSplit(total, total, 0, 0, 0)
        over = 0
        if item.price_ceiling is not None and item.price > item.price_ceiling:
            over = round_fen((item.price - item.price_ceiling) * item.qty)
        pre = 0
        if item.category is Category.B:
            prop = class_b_default if item.selfpay_prop is None else item.selfpay_prop
            pre = mul_fen(total - over, prop)
    return ItemSplit(total, 0, over, pre, total - over - pre)


def settle(
    bill: Bill,
    profile: Profile,
    ytd: Ytd = Ytd(),
    account_balance: Fen = 0,
    use_account: bool = True,
    mutual_aid_balance: Fen = 0,
) -> Settlement:
    """Split `bill` under `profile` for a patient with these accumulators and balances.

    Nothing is committed: the caller stores `ytd_after` when the payment
    succeeds, and `reverse` undoes it.
    """
    if bill.profile != profile.name:
        raise InputError(f"bill is for {bill.profile!r} but was settled with {profile.name!r}", field="profile")
    for name, v in (("account_balance", account_balance), ("mutual_aid_balance", mutual_aid_balance)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise InputError(f"must be a non-negative integer of fen, got {v!r}", field=name)
    level = bill.institution_level
    cap = profile.cap(bill.conditions)  # validates conditions against the profile

    details = tuple(split_item(it, profile.class_b_selfpay_prop) for it in bill.items)
    medfee = sum(d.det_item_fee_sumamt for d in details)
    fulamt = sum(d.fulamt_ownpay_amt for d in details)
    overlmt = sum(d.overlmt_amt for d in details)
    preself = sum(d.preselfpay_amt for d in details)
    inscp = sum(d.inscp_scp_amt for d in details)

    # 1. deductible (a level with deductible 0 neither needs nor uses any)
    deductible_left = max(0, profile.deductible(level) - ytd.deductible_used)
    dedc = min(inscp, deductible_left)
    # 2-3. pooling fund, capped by the annual cap left
    cap_left = max(0, cap - ytd.pool_paid)
    hifp = min(mul_fen(inscp - dedc, profile.ratio(level)), cap_left)
    fund = hifp
    # 4-6. personal share: own account, family mutual aid, then cash / credit
    psn_part = medfee - fund
    acct = min(psn_part, account_balance) if use_account else 0
    mulaid = min(psn_part - acct, mutual_aid_balance)
    cash = psn_part - acct - mulaid

    return Settlement(
        medfee_sumamt=medfee,
        fulamt_ownpay_amt=fulamt,
        overlmt_selfpay=overlmt,
        preselfpay_amt=preself,
        inscp_scp_amt=inscp,
        act_pay_dedc=dedc,
        hifp_pay=hifp,
        fund_pay_sumamt=fund,
        psn_part_amt=psn_part,
        acct_pay=acct,
        acct_mulaid_pay=mulaid,
        psn_cash_pay=cash,
        balc=account_balance - acct,
        detlcutinfo=details,
        ytd_after=Ytd(ytd.deductible_used + dedc, ytd.pool_paid + hifp),
    )


def settle_request(request: SettleRequest, profiles: Mapping[str, Profile] | None = None) -> Settlement:
    """Settle a parsed request, looking its profile up by name."""
    profile = get_profile(request.bill.profile, profiles)
    return settle(
        request.bill,
        profile,
        request.ytd,
        request.account_balance,
        request.use_account,
        request.mutual_aid_balance,
    )


def reverse(settlement: Settlement, ytd: Ytd) -> Ytd:
    """The accumulators after reversing a committed `settlement`.

    Reversal takes back exactly what the settlement added; accumulators that
    hold less than that cannot contain it (reversed twice, or another
    person's record), which is an IntegrityError rather than a negative total.
    """
    d = ytd.deductible_used - settlement.act_pay_dedc
    p = ytd.pool_paid - settlement.hifp_pay
    if d < 0:
        raise IntegrityError(
            f"reversal of {fen_to_yuan(settlement.act_pay_dedc)} exceeds deductible used "
            f"{fen_to_yuan(ytd.deductible_used)}",
            code="reversal_exceeds_ytd",
            field="ytd.deductible_used",
        )
    if p < 0:
        raise IntegrityError(
            f"reversal of {fen_to_yuan(settlement.hifp_pay)} exceeds pool paid {fen_to_yuan(ytd.pool_paid)}",
            code="reversal_exceeds_ytd",
            field="ytd.pool_paid",
        )
    return Ytd(d, p)
