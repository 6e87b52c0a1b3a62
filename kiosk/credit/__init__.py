"""Credit line (医保信用支付), family pay and the double-entry ledger.

    svc = CreditService(open_database(url), clock)
    svc.open(key, holder, birth_date, insured_years)
    svc.draw(key, payer, amount_fen, ref)          -> Result(code, detail)
"""
from __future__ import annotations

from kiosk.credit.service import CheckReport, CreditService, LineState, MandateUse, Owner, Result

__all__ = ["CheckReport", "CreditService", "LineState", "MandateUse", "Owner", "Result"]
