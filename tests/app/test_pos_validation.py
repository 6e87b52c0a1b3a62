"""The POS API refuses at the door (422 naming the field, nothing stored, no session started) every
order that could only fail after the patient has gone through the face session; and any bill it
accepts is one the centre takes and the settlement engine settles (property test).

The catalogue is the real centre's (transaction 1312 over the platform envelope), fetched and cached
by the terminal (kiosk.app.bill_check.Catalogue)."""
from __future__ import annotations

import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any, Iterator

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from kiosk.app.adapters.centre import CentreAdapter, fee_lines
from kiosk.app.bill_check import Catalogue, OrderLimits
from kiosk.app.pos_api import create_app
from kiosk.app.pos_auth import PosAuth
from kiosk.app.pos_client import PosClient
from kiosk.app.session import Deps
from kiosk.app.store import Store
from kiosk.app.terminal import Terminal
from kiosk.clock import SystemClock
from kiosk.money import yuan_to_fen
from kiosk.services import seed
from kiosk.services.centre import models as m
from kiosk.services.protocol import parse_model
from kiosk.settlement import Bill, Category, Item, Ytd, get_profile, settle
from kiosk.storage import open_database
from tests.services.conftest import Centre, make_centre

KEY = "v" * 64
SYSTEM = "his-1"


class Pos:
    def __init__(self, tmp: Path, catalogue: Catalogue | None, limits: OrderLimits | None = None) -> None:
        self.db = open_database(f"sqlite:///{tmp / f'pos-{uuid.uuid4().hex[:6]}.db'}")
        self.store = Store(self.db, SystemClock())
        deps = Deps(camera=None, vision=None, centre=None, bank=None, keypad=None, printer=None)  # type: ignore[arg-type]
        self.terminal = Terminal(self.store, deps, SystemClock())  # not started: accepted orders stay pending
        self.submitted: list[str] = []
        real_submit = self.terminal.submit
        self.terminal.submit = lambda system, order: (self.submitted.append(order.order_id),  # type: ignore[method-assign]
                                                      real_submit(system, order))
        app = create_app(self.terminal, PosAuth({SYSTEM: KEY}), catalogue=catalogue,
                         limits=limits or OrderLimits())
        self.client = PosClient("http://testserver", SYSTEM, KEY, http=TestClient(app))

    def post(self, body: dict[str, Any]) -> Any:
        return self.client.create(body)

    def refused(self, body: dict[str, Any], field_has: str, status: int = 422) -> dict[str, Any]:
        body = {"order_id": "R-" + uuid.uuid4().hex[:10], **body}
        r = self.post(body)
        assert r.status_code == status, (body, r.status_code, r.text)
        out = r.json()
        assert set(out) >= {"code", "message", "field"} and field_has in out["field"], out
        assert self.store.get(SYSTEM, body["order_id"]) is None  # nothing stored
        assert body["order_id"] not in self.submitted  # no session started
        return out


@pytest.fixture(scope="module")
def centre(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Centre]:
    tmp = tmp_path_factory.mktemp("centre")
    c = make_centre(f"sqlite:///{tmp}/centre.db", tmp, people=2)
    yield c
    c.http.close()
    c.db.close()


@pytest.fixture(scope="module")
def catalogue(centre: Centre, tmp_path_factory: pytest.TempPathFactory) -> Catalogue:
    cat = Catalogue(tmp_path_factory.mktemp("terminal"), CentreAdapter(centre.client))
    assert cat.refresh() and cat.loaded
    return cat


@pytest.fixture
def pos(tmp_path: Path, catalogue: Catalogue) -> Pos:
    return Pos(tmp_path, catalogue)


def item(code: str = "XA01", price: str = "12.50", qty: str = "2") -> dict[str, str]:
    return {"code": code, "price": price, "qty": qty}


def bill(*items: dict[str, str], med_type: str = "11") -> dict[str, Any]:
    return {"med_type": med_type, "items": list(items) or [item()]}


# ---------------------------------------------------------------- what is refused, and where

@pytest.mark.parametrize("body,field", [
    ({"bill": bill(item(price="１０"))}, "price"),                 # full-width digits
    ({"bill": bill(item(qty="１"))}, "qty"),
    ({"bill": bill(item(price="٣"))}, "price"),                   # Arabic-Indic
    ({"bill": bill(item(price="-1.00"))}, "price"),
    ({"bill": bill(item(qty="-2"))}, "qty"),
    ({"bill": bill(item(price="0"))}, "bill.items[0].price"),     # a 0.00 order must never be "paid"
    ({"bill": bill(item(price="0.0000"))}, "bill.items[0].price"),
    ({"bill": bill(item(), item(qty="0"))}, "bill.items[1].qty"),
    ({"bill": bill(item(price="0.0001", qty="1"))}, "bill.items[0]"),  # comes to 0.00
    ({"bill": bill(item(price="10000000.0001"))}, "bill.items[0].price"),
    ({"bill": bill(item(qty="1000000.5"))}, "bill.items[0].qty"),
    ({"bill": bill(item(price="9999999", qty="999999"))}, "bill.items"),  # above the bill cap
    ({"bill": {"items": []}}, "bill.items"),
    ({"bill": bill(*[item()] * 501)}, "bill.items"),
    ({"bill": bill(item(code="NOPE99"))}, "bill.items[0].code"),   # not in the centre's catalogue
    ({"bill": bill(item(), item(code="XA99"))}, "bill.items[1].code"),
    ({"mode": "admission", "deposit": "999999999.99"}, "deposit"),
    ({"mode": "admission", "deposit": "20000.01"}, "deposit"),    # above what a credit line can hold
    ({"mode": "admission", "deposit": "0.00"}, "deposit"),
    ({"mode": "admission", "deposit": "１０"}, "deposit"),
    ({"mode": "admission"}, "deposit"),
    ({"mode": "admission", "deposit": "100.00", "bill": bill()}, "bill"),
    ({"bill": bill(), "deposit": "100.00"}, "deposit"),
    ({"bill": bill(), "admission_order_id": "A-1"}, "admission_order_id"),
    ({}, "bill"),
])
def test_orders_that_could_never_settle_are_refused_at_the_door(pos: Pos, body: dict, field: str) -> None:
    pos.refused(body, field)


def test_unknown_codes_say_so(pos: Pos) -> None:
    out = pos.refused({"bill": bill(item(code="NOPE99"))}, "code")
    assert out["code"] == "unknown_code" and "catalogue" in out["message"]


def test_what_can_settle_is_still_accepted(pos: Pos) -> None:
    for body in ({"bill": bill(item(), item("XB01", "30.00", "1"), item("F001", "0.01", "1"))},
                 {"bill": bill(item("XC01", "0.0050", "2"), med_type="41")},  # 0.01 after rounding
                 {"mode": "admission", "deposit": "20000.00"},
                 {"mode": "admission", "deposit": "0.01"}):
        r = pos.post({"order_id": "OK-" + uuid.uuid4().hex[:8], **body})
        assert r.status_code == 201, (body, r.text)


def test_the_deposit_cap_is_configurable_but_never_above_the_credit_ceiling(tmp_path: Path, catalogue: Catalogue,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from kiosk.config import Settings

    monkeypatch.setenv("KIOSK_POS_MAX_DEPOSIT", "100000.00")
    assert OrderLimits.from_settings(Settings()).max_deposit_fen == 2_000_000  # 20,000.00: a hold on the line
    monkeypatch.setenv("KIOSK_POS_MAX_DEPOSIT", "5000.00")
    low = Pos(tmp_path, catalogue, OrderLimits.from_settings(Settings()))
    low.refused({"mode": "admission", "deposit": "5000.01"}, "deposit")
    assert low.post({"order_id": "ADM-5000", "mode": "admission", "deposit": "5000.00"}).status_code == 201
    monkeypatch.setenv("KIOSK_POS_MAX_LINES", "2")
    few = Pos(tmp_path, catalogue, OrderLimits.from_settings(Settings()))
    few.refused({"bill": bill(item(), item(), item())}, "bill.items")


def test_a_retry_of_an_accepted_order_replays_it(pos: Pos) -> None:
    body = {"order_id": "RETRY-1", "bill": bill()}
    assert pos.post(body).status_code == 201
    assert pos.post(body).status_code == 200


# ---------------------------------------------------------------- the catalogue copy

def test_the_catalogue_is_cached_in_the_data_dir_and_survives_a_restart(centre: Centre, tmp_path: Path) -> None:
    cat = Catalogue(tmp_path, CentreAdapter(centre.client))
    assert cat.refresh()
    offline = Catalogue(tmp_path, None)  # a restart with the centre unreachable
    assert offline.loaded and offline.unknown(["XA01", "F003", "NOPE"]) == ["NOPE"]
    assert set(seed.CATALOGUE) <= set(offline._codes or {})  # noqa: SLF001 - every seeded code came over


def test_no_catalogue_and_no_centre_is_a_retryable_refusal_with_nothing_stored(tmp_path: Path) -> None:
    pos = Pos(tmp_path, Catalogue(tmp_path / "empty", None))
    out = pos.refused({"bill": bill()}, "bill.items", status=502)
    assert out["code"] == "catalogue_unavailable"


def test_a_code_the_centre_added_since_the_last_fetch_is_accepted(centre: Centre, tmp_path: Path) -> None:
    cat = Catalogue(tmp_path, CentreAdapter(centre.client), retry_s=0)
    assert cat.refresh()
    centre.db.run(lambda tx: tx.execute(
        "INSERT INTO centre_catalogue (code, name, category, selfpay_prop, pric_uplmt_amt) VALUES "
        "('XN01', 'new item', 'A', NULL, NULL)"))
    try:
        pos = Pos(tmp_path, cat)
        assert pos.post({"order_id": "NEW-CODE", "bill": bill(item("XN01"))}).status_code == 201
    finally:
        centre.db.run(lambda tx: tx.execute("DELETE FROM centre_catalogue WHERE code = 'XN01'"))


def test_a_corrupt_catalogue_copy_is_fetched_again(centre: Centre, tmp_path: Path) -> None:
    (tmp_path / "catalogue.json").write_text("{not json")
    cat = Catalogue(tmp_path, CentreAdapter(centre.client))
    assert not cat.loaded and cat.unknown(["XA01"]) == [] and cat.loaded


# ---------------------------------------------------------------- accepted => settles

DIGITS = st.sampled_from(["0", "1", "9", "١", "５", "٣"])  # ASCII and not
NUMBER = st.one_of(
    st.decimals(min_value=Decimal("0.0001"), max_value=Decimal("20000"), places=4).map(str),
    st.decimals(min_value=Decimal("0"), max_value=Decimal("0.01"), places=4).map(str),
    st.integers(min_value=-5, max_value=10**9).map(str),
    st.lists(DIGITS, min_size=1, max_size=4).map("".join),
    st.sampled_from(["0", "0.00", "1e3", "1_0", " 1", "1.", ".5", "00001.5000", "12.34567"]),
)
CODES = st.one_of(st.sampled_from(sorted(seed.CATALOGUE)), st.sampled_from(["NOPE1", "XA1", "xa01"]))
ANY_ITEM = st.fixed_dictionaries({"code": CODES, "price": NUMBER, "qty": NUMBER})
GOOD_ITEM = st.fixed_dictionaries({  # mostly settleable, with edges (rounding to 0.00, ceilings, big lines)
    "code": st.sampled_from(sorted(seed.CATALOGUE)),
    "price": st.decimals(min_value=Decimal("0.0001"), max_value=Decimal("100000"), places=4).map(str),
    "qty": st.decimals(min_value=Decimal("0.0001"), max_value=Decimal("1000"), places=4).map(str)})
ITEM = st.one_of(GOOD_ITEM, GOOD_ITEM, GOOD_ITEM, GOOD_ITEM, GOOD_ITEM, ANY_ITEM)
BODY = st.one_of(
    st.fixed_dictionaries({"mode": st.just("outpatient"),
                           "bill": st.fixed_dictionaries({"med_type": st.sampled_from(["11", "14", "41"]),
                                                          "items": st.lists(ITEM, min_size=0, max_size=5)})}),
    st.fixed_dictionaries({"mode": st.just("outpatient"),
                           "bill": st.fixed_dictionaries({"items": st.lists(GOOD_ITEM, min_size=1, max_size=3)})}),
    st.fixed_dictionaries({"mode": st.just("admission"), "deposit": NUMBER}),
)


def _settles(req: dict[str, Any]) -> None:
    """What the centre does with the terminal's fee lines (kiosk.services.centre: its models, its catalogue,
    then the engine) -- on the bill exactly as the POS API stored it."""
    if req.get("mode") == "admission":
        fen = yuan_to_fen(req["deposit"], "deposit")
        assert 0 < fen <= 2_000_000
        return
    b = req["bill"]
    lines, total = fee_lines(b)
    head = {"psn_no": "P1", "mdtrt_cert_no": "t", "medfee_sumamt": f"{Decimal(total) / 100:.2f}"}
    if b.get("med_type") == "41":
        parse_model(m.Pharmacy2101, {"druginfo": head, "drugdetail": lines})
    else:
        parse_model(m.Outpatient2206, {"data": {**head, "med_type": b.get("med_type", "11"), "feedetail": lines}})
    items = []
    for ln in lines:
        _name, cat, prop, ceil = seed.CATALOGUE[ln["med_list_codg"]]
        items.append(Item(code=ln["med_list_codg"], category=Category(cat), price=Decimal(ln["pric"]),
                          qty=Decimal(ln["cnt"]), selfpay_prop=Decimal(prop) if prop and cat == "B" else None,
                          price_ceiling=Decimal(ceil) if ceil else None))
    chronic = b.get("med_type") == "14"
    profile = get_profile("yantai-resident-chronic-htn-dm" if chronic else "qingdao-employee-outpatient")
    s = settle(Bill(profile.name, 2, tuple(items), frozenset({"htn"}) if chronic else frozenset()), profile, Ytd(),
               account_balance=5_000)
    assert s.medfee_sumamt == total > 0
    assert s.medfee_sumamt == s.fund_pay_sumamt + s.psn_part_amt
    assert s.psn_part_amt == s.acct_pay + s.acct_mulaid_pay + s.psn_cash_pay


@pytest.fixture(scope="module")
def fuzz_pos(tmp_path_factory: pytest.TempPathFactory, catalogue: Catalogue) -> Pos:
    return Pos(tmp_path_factory.mktemp("fuzz"), catalogue)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=BODY)
def test_any_order_the_pos_api_accepts_is_one_the_centre_and_the_engine_settle(fuzz_pos: Pos, body: dict) -> None:
    body = {"order_id": "F-" + uuid.uuid4().hex[:12], **body}
    r = fuzz_pos.post(body)
    assert r.status_code in (201, 422), (body, r.status_code, r.text)
    event(f"{body['mode']} {r.status_code}")
    if r.status_code == 422:
        assert r.json()["field"] and fuzz_pos.store.get(SYSTEM, body["order_id"]) is None
        return
    row = fuzz_pos.store.get(SYSTEM, body["order_id"])
    assert row is not None
    _settles(row.request)
