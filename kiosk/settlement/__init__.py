"""Settlement: split a medical bill into the fund share and the personal share.

Pure domain code (no I/O beyond loading the shipped profiles), following
`shared/docs/settlement-rules.md`. Amounts are int fen; `to_json` gives yuan.

Typical use (the insurance-centre service, the counter flow)::

    from kiosk.settlement import loads_request, parse_request, get_profile, settle, reverse, Ytd

    req = parse_request(bill_dict)            # InputError naming the field on bad input
    s = settle(req.bill, get_profile(req.bill.profile), ytd=Ytd(0, 0),
               account_balance=10_000, use_account=True, mutual_aid_balance=0)
    s.psn_cash_pay                            # fen the credit line (or cash) pays
    s.ytd_after                               # store when the payment commits
    ytd = reverse(s, s.ytd_after)             # == the ytd before, exactly
    s.to_json()                               # {"setlinfo": {...}, "detlcutinfo": [...], "ytd_after": {...}}
"""
from __future__ import annotations

from importlib.resources import files as _files

from .bill import Bill, Category, Item, SettleRequest, Ytd, loads_request, parse_bill, parse_request
from .engine import SETLINFO_FIELDS, ItemSplit, Settlement, reverse, settle, settle_request, split_item
from .profiles import KNOWN_CONDITIONS, Profile, get_profile, load_profile_file, load_profiles, profile_from_dict


def sample_bill_text() -> str:
    """The shipped sample pharmacy bill (JSON text), for the demo and docs."""
    return (_files(__package__) / "samples" / "pharmacy-bill.json").read_text(encoding="utf-8")


__all__ = [
    "Bill",
    "Category",
    "Item",
    "ItemSplit",
    "KNOWN_CONDITIONS",
    "Profile",
    "SETLINFO_FIELDS",
    "SettleRequest",
    "Settlement",
    "Ytd",
    "get_profile",
    "load_profile_file",
    "load_profiles",
    "loads_request",
    "parse_bill",
    "parse_request",
    "profile_from_dict",
    "reverse",
    "sample_bill_text",
    "settle",
    "settle_request",
    "split_item",
]
