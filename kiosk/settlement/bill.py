"""The bill a counter sends to be split, parsed from its JSON form.

Parsing is strict and names the offending field (`items[2].qty: has more than
4 decimal places`) so an integrator can fix the request without reading code.
Money arrives as yuan strings; prices and quantities keep their exact decimal
value (up to 4 places) because the rules round only after multiplying.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from decimal import Decimal
from enum import Enum
from typing import Any, Mapping

from kiosk.errors import InputError
from kiosk.money import Fen, fen_to_yuan, parse_decimal, yuan_to_fen

from .profiles import LEVELS, KNOWN_CONDITIONS

# Sanity bounds: far above any counter bill, low enough that Decimal stays exact.
MAX_PRICE = Decimal("10000000")  # yuan per unit
MAX_QTY = Decimal("1000000")
MAX_ITEMS = 10_000
MAX_BALANCE_FEN = 10**13


class Category(str, Enum):
    """Charge-item class (chrgitm_lv): A 甲类 01, B 乙类 02, C 丙类 03."""

    A = "A"
    B = "B"
    C = "C"

    @property
    def chrgitm_lv(self) -> str:
        return {"A": "01", "B": "02", "C": "03"}[self.value]


@dataclass(frozen=True)
class Item:
    """One bill line. `selfpay_prop` None means the profile's Class B default."""

    code: str
    category: Category
    price: Decimal  # yuan per unit, up to 4 dp
    qty: Decimal  # up to 4 dp
    selfpay_prop: Decimal | None = None
    price_ceiling: Decimal | None = None  # pric_uplmt_amt, yuan per unit

    def __post_init__(self) -> None:
        # Guards code that builds Items directly (parse_item already checked, naming the index).
        where = f"item {self.code!r}"
        if not isinstance(self.category, Category):
            raise InputError(f"must be a Category, got {self.category!r}", field=f"{where}.category")
        for name in ("price", "qty", "selfpay_prop", "price_ceiling"):
            v = getattr(self, name)
            if v is None and name in ("selfpay_prop", "price_ceiling"):
                continue
            if not isinstance(v, Decimal) or not v.is_finite() or v < 0 or v.as_tuple().exponent < -4:  # type: ignore[operator]
                raise InputError(f"must be a non-negative Decimal with at most 4 places, got {v!r}", field=f"{where}.{name}")
        if self.qty == 0:
            raise InputError("must be greater than 0", field=f"{where}.qty")
        if self.selfpay_prop is not None and self.selfpay_prop > 1:
            raise InputError("must be at most 1", field=f"{where}.selfpay_prop")

    @property
    def chrgitm_lv(self) -> str:
        return self.category.chrgitm_lv

    def to_json(self) -> dict[str, str]:
        d = {"code": self.code, "category": self.category.value, "price": _plain(self.price), "qty": _plain(self.qty)}
        if self.selfpay_prop is not None:
            d["selfpay_prop"] = _plain(self.selfpay_prop)
        if self.price_ceiling is not None:
            d["price_ceiling"] = _plain(self.price_ceiling)
        return d


def _plain(d: Decimal) -> str:
    return format(d, "f")


@dataclass(frozen=True)
class Bill:
    """What is being settled, independent of the patient's balances."""

    profile: str
    institution_level: int
    items: tuple[Item, ...]
    conditions: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if isinstance(self.institution_level, bool) or self.institution_level not in LEVELS:
            raise InputError(f"must be 1, 2 or 3, got {self.institution_level!r}", field="institution_level")
        if not self.items:
            raise InputError("the bill is empty (no items)", field="items")
        if not isinstance(self.conditions, frozenset):
            object.__setattr__(self, "conditions", frozenset(self.conditions))

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "profile": self.profile,
            "institution_level": self.institution_level,
            "items": [it.to_json() for it in self.items],
        }
        if self.conditions:
            d["conditions"] = sorted(self.conditions)
        return d


@dataclass(frozen=True)
class Ytd:
    """Year-to-date accumulators of one insured person under one profile."""

    deductible_used: Fen = 0
    pool_paid: Fen = 0

    def __post_init__(self) -> None:
        for name in ("deductible_used", "pool_paid"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise InputError(f"must be a non-negative integer of fen, got {v!r}", field=f"ytd.{name}")

    def to_json(self) -> dict[str, str]:
        return {"deductible_used": fen_to_yuan(self.deductible_used), "pool_paid": fen_to_yuan(self.pool_paid)}

    @classmethod
    def from_json(cls, data: object, field: str = "ytd") -> "Ytd":
        obj = _object(data, field, required=(), optional=("deductible_used", "pool_paid"))
        return cls(
            deductible_used=_yuan(obj.get("deductible_used", "0"), f"{field}.deductible_used"),
            pool_paid=_yuan(obj.get("pool_paid", "0"), f"{field}.pool_paid"),
        )


@dataclass(frozen=True)
class SettleRequest:
    """A bill plus the patient's state, as the `kiosk settle` JSON carries it."""

    bill: Bill
    ytd: Ytd = field(default_factory=Ytd)
    account_balance: Fen = 0
    use_account: bool = True
    mutual_aid_balance: Fen = 0

    def to_json(self) -> dict[str, Any]:
        """The JSON form `parse_request` reads (e.g. to send to the insurance centre)."""
        return {
            **self.bill.to_json(),
            "ytd": self.ytd.to_json(),
            "account_balance": fen_to_yuan(self.account_balance),
            "use_account": self.use_account,
            "mutual_aid_balance": fen_to_yuan(self.mutual_aid_balance),
        }


_ITEM_REQUIRED = ("code", "category", "price", "qty")
_ITEM_OPTIONAL = ("selfpay_prop", "price_ceiling")
_REQ_REQUIRED = ("profile", "institution_level", "items")
_REQ_OPTIONAL = ("ytd", "account_balance", "use_account", "mutual_aid_balance", "conditions")


def _object(data: object, field: str, *, required: tuple[str, ...], optional: tuple[str, ...]) -> Mapping[str, Any]:
    where = field or "bill"
    if not isinstance(data, dict):
        raise InputError(f"must be a JSON object, got {_kind(data)}", field=where)
    for key in required:
        if key not in data:
            raise InputError("is required", field=_join(field, key))
    for key in data:
        if key not in required and key not in optional:
            raise InputError(f"unknown field; allowed: {', '.join(required + optional)}", field=_join(field, str(key)))
    return data


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _kind(v: object) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(v), type(v).__name__
    )


def _yuan(value: object, field: str) -> Fen:
    fen = yuan_to_fen(value, field)
    if fen > MAX_BALANCE_FEN:
        raise InputError(f"is implausibly large: {value!r}", field=field)
    return fen


def _bounded(value: object, field: str, upper: Decimal) -> Decimal:
    d = parse_decimal(value, field)
    if d > upper:
        raise InputError(f"must be at most {upper}, got {value!r}", field=field)
    return d


def parse_item(data: object, field: str) -> Item:
    obj = _object(data, field, required=_ITEM_REQUIRED, optional=_ITEM_OPTIONAL)
    code = obj["code"]
    if not isinstance(code, str) or not code.strip():
        raise InputError("must be a non-empty string", field=f"{field}.code")
    cat = obj["category"]
    if not isinstance(cat, str) or cat not in Category.__members__:
        raise InputError(f"must be one of \"A\", \"B\", \"C\", got {cat!r}", field=f"{field}.category")
    category = Category(cat)
    price = _bounded(obj["price"], f"{field}.price", MAX_PRICE)
    qty = _bounded(obj["qty"], f"{field}.qty", MAX_QTY)
    if qty == 0:
        raise InputError("must be greater than 0", field=f"{field}.qty")
    prop = None
    if obj.get("selfpay_prop") is not None:
        prop = _bounded(obj["selfpay_prop"], f"{field}.selfpay_prop", Decimal(1))
        if category is Category.A and prop != 0:
            raise InputError("Class A items have no first self-pay ratio (must be 0 or absent)", field=f"{field}.selfpay_prop")
    ceiling = None
    if obj.get("price_ceiling") is not None:
        ceiling = _bounded(obj["price_ceiling"], f"{field}.price_ceiling", MAX_PRICE)
    return Item(code=code, category=category, price=price, qty=qty, selfpay_prop=prop, price_ceiling=ceiling)


def parse_bill(data: object) -> Bill:
    """The bill part of a request (profile, level, items, conditions)."""
    obj = _object(data, "", required=_REQ_REQUIRED, optional=_REQ_OPTIONAL)
    profile = obj["profile"]
    if not isinstance(profile, str) or not profile:
        raise InputError("must be a non-empty string", field="profile")
    level = obj["institution_level"]
    if isinstance(level, bool) or not isinstance(level, int) or level not in LEVELS:
        raise InputError(f"must be 1, 2 or 3, got {level!r}", field="institution_level")
    raw_items = obj["items"]
    if not isinstance(raw_items, list):
        raise InputError(f"must be an array, got {_kind(raw_items)}", field="items")
    if not raw_items:
        raise InputError("the bill is empty (no items)", field="items")
    if len(raw_items) > MAX_ITEMS:
        raise InputError(f"at most {MAX_ITEMS} items per bill", field="items")
    items = tuple(parse_item(it, f"items[{i}]") for i, it in enumerate(raw_items))
    conditions = _conditions(obj.get("conditions", []))
    return Bill(profile=profile, institution_level=level, items=items, conditions=conditions)


def _conditions(raw: object) -> frozenset[str]:
    if raw is None:
        return frozenset()
    if not isinstance(raw, list):
        raise InputError(f"must be an array, got {_kind(raw)}", field="conditions")
    seen: set[str] = set()
    for i, c in enumerate(raw):
        if not isinstance(c, str) or c not in KNOWN_CONDITIONS:
            raise InputError(f"must be one of {sorted(KNOWN_CONDITIONS)}, got {c!r}", field=f"conditions[{i}]")
        if c in seen:
            raise InputError(f"{c!r} is listed twice", field=f"conditions[{i}]")
        seen.add(c)
    return frozenset(seen)


def parse_request(data: object) -> SettleRequest:
    """A full `kiosk settle` request: the bill and the patient's state."""
    bill = parse_bill(data)
    assert isinstance(data, dict)
    ytd = Ytd.from_json(data["ytd"]) if data.get("ytd") is not None else Ytd()
    balance = _yuan(data.get("account_balance", "0"), "account_balance")
    use = data.get("use_account", True)
    if not isinstance(use, bool):
        raise InputError(f"must be true or false, got {use!r}", field="use_account")
    aid = _yuan(data.get("mutual_aid_balance", "0"), "mutual_aid_balance")
    return SettleRequest(bill=bill, ytd=ytd, account_balance=balance, use_account=use, mutual_aid_balance=aid)


def loads_request(text: str | bytes) -> SettleRequest:
    """Decode JSON text and parse it; malformed JSON is an InputError too."""
    try:
        data = json.loads(text, parse_constant=_no_constant, object_pairs_hook=_no_duplicates)
    except json.JSONDecodeError as e:
        raise InputError(f"not valid JSON: {e.msg} at line {e.lineno} column {e.colno}", field="bill") from None
    except UnicodeDecodeError:
        raise InputError("not valid UTF-8 text", field="bill") from None
    except RecursionError:
        raise InputError("not valid JSON: nested too deeply", field="bill") from None
    except ValueError:  # an integer literal past Python's int digit limit (4300)
        raise InputError("not valid JSON: a number has too many digits", field="bill") from None
    return parse_request(data)


def _no_constant(name: str) -> object:
    raise InputError(f"not valid JSON: {name} is not allowed", field="bill")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A key given twice ({"price": "1", "price": "9"}) is ambiguous: refuse it rather than keep the last."""
    d: dict[str, Any] = {}
    for k, v in pairs:
        if k in d:
            raise InputError(f"not valid JSON: key {k!r} appears twice in one object", field="bill")
        d[k] = v
    return d
