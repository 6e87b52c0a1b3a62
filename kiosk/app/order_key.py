"""External keys of an order: scoped by who owns the order.

An order id is unique only within its POS system, and a POS system only within
its institution, so an order is (institution fixmedins_code, POS system, order
id). Every key the terminal sends to a party for an order (the bank's draw and
hold keys, the hold's reference, refund keys) is derived from that whole
identity plus the step, never from the order id alone: two POS systems (or two
institutions) using one order id can never meet at the centre or the bank, and
an undo by key can only touch what its own order made.

Keys are written to the journal before they are used; recovery reads them back
from there and never re-derives them (orders journaled by older versions keep
the keys they used).
"""
from __future__ import annotations

import hashlib
import json

PREFIX = "k"  # 'k' + 40 hex: 41 characters, inside every party's key and ref limits (ref <= 64)


def scoped_key(institution: str, system: str, order_id: str, *step: str) -> str:
    """SHA-256 over the JSON list [institution, system, order_id, *step] (unambiguous: no separator
    inside a value can make two identities meet), 160 bits kept."""
    raw = json.dumps([institution, system, order_id, *step], ensure_ascii=False, separators=(",", ":"))
    return PREFIX + hashlib.sha256(raw.encode()).hexdigest()[:40]
