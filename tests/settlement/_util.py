from __future__ import annotations

from typing import Any

from kiosk.settlement import parse_request, settle_request


def item(category: str, price: str, qty: str = "1", code: str = "X", **extra: str) -> dict[str, Any]:
    return {"code": code, "category": category, "price": price, "qty": qty, **extra}


def run(profile: str, level: int, items: list[dict[str, Any]], **rest: Any) -> dict[str, Any]:
    """Settle a request given in its JSON form; return the JSON result."""
    req = {"profile": profile, "institution_level": level, "items": items, **rest}
    return settle_request(parse_request(req)).to_json()
