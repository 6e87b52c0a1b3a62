"""An order's external keys are scoped by its owner: (institution, POS system, order id) + step."""
from __future__ import annotations

from kiosk.app.order_key import scoped_key
from kiosk.app.session import Order


def test_keys_differ_by_every_part_of_the_identity_and_by_step():
    base = scoped_key("H37020200001", "pos-a", "E-1", "draw")
    others = [scoped_key("H37020200001", "pos-b", "E-1", "draw"),   # another POS system, same order id
              scoped_key("H37020200002", "pos-a", "E-1", "draw"),   # another institution
              scoped_key("H37020200001", "pos-a", "E-2", "draw"),
              scoped_key("H37020200001", "pos-a", "E-1", "hold")]
    assert len({base, *others}) == 5
    assert base == scoped_key("H37020200001", "pos-a", "E-1", "draw")  # deterministic: a retry is the same key
    assert len(base) == 41 and base.startswith("k") and all(c in "0123456789abcdef" for c in base[1:])


def test_no_separator_can_make_two_identities_meet():
    assert scoped_key("H1", "a:b", "c") != scoped_key("H1", "a", "b:c")
    assert scoped_key("H1", 'a","b', "c") != scoped_key("H1", "a", 'b","c')
    assert scoped_key("H1", "a", "b", "refund", "R1") != scoped_key("H1", "a", "b", "refund:R1")


def test_the_sessions_order_derives_its_keys_from_its_owner():
    o = Order("E-1", {}, system="pos-a", institution="H37020200001")
    assert o.key("draw") == scoped_key("H37020200001", "pos-a", "E-1", "draw")
    assert o.key("hold-ref") != Order("E-1", {}, system="pos-b", institution="H37020200001").key("hold-ref")
