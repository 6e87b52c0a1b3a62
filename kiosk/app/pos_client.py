"""A signing client of the POS/HIS API: what a pharmacy POS would run (demo, tests, bench)."""
from __future__ import annotations

import json
from typing import Any

import httpx

from kiosk.app.pos_auth import signed_headers


class PosClient:
    def __init__(self, base_url: str, system: str, key: str, *, timeout: float = 70.0,
                 http: httpx.Client | None = None) -> None:
        self.system, self.key = system, key
        self.http = http or httpx.Client(base_url=base_url, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def request(self, method: str, path: str, body: Any = None, params: dict[str, Any] | None = None) -> httpx.Response:
        data = b"" if body is None else json.dumps(body, ensure_ascii=False).encode()
        full = path
        if params:
            full = path + "?" + str(httpx.QueryParams(params))
        headers = signed_headers(self.system, self.key, method, full, data)
        if body is not None:
            headers["Content-Type"] = "application/json"
        return self.http.request(method, full, content=data, headers=headers)

    def create(self, order: dict[str, Any]) -> httpx.Response:
        return self.request("POST", "/pos/v1/orders", order)

    def get(self, order_id: str, wait: float = 0) -> httpx.Response:
        return self.request("GET", f"/pos/v1/orders/{order_id}", params={"wait": wait} if wait else None)

    def cancel(self, order_id: str) -> httpx.Response:
        return self.request("POST", f"/pos/v1/orders/{order_id}/cancel")

    def refund(self, order_id: str, refund_id: str, amount: str | None = None) -> httpx.Response:
        body: dict[str, Any] = {"refund_id": refund_id}
        if amount is not None:
            body["amount"] = amount
        return self.request("POST", f"/pos/v1/orders/{order_id}/refunds", body)

    def return_lines(self, order_id: str, return_id: str, lines: list[dict[str, str]], *,
                     operator: dict[str, str] | None = None) -> httpx.Response:
        """An item-level return; with `operator` ({id, name}) the cashier confirms it (confirm=cashier)."""
        body: dict[str, object] = {"return_id": return_id, "lines": lines}
        if operator is not None:
            body.update(confirm="cashier", operator=operator)
        return self.request("POST", f"/pos/v1/orders/{order_id}/returns", body)

    def get_return(self, order_id: str, return_id: str, wait: float = 0) -> httpx.Response:
        return self.request("GET", f"/pos/v1/orders/{order_id}/returns/{return_id}",
                            params={"wait": wait} if wait else None)

    def reconciliation(self, day: str, fmt: str = "json") -> httpx.Response:
        return self.request("GET", "/pos/v1/reconciliation", params={"day": day, "format": fmt})

    # -- senseless payment (visits)
    def open_visit(self, visit_id: str, mandate: dict[str, str] | None = None) -> httpx.Response:
        body: dict[str, Any] = {"visit_id": visit_id}
        if mandate is not None:
            body["mandate"] = mandate
        return self.request("POST", "/pos/v1/visits", body)

    def visit(self, visit_id: str, wait: float = 0) -> httpx.Response:
        return self.request("GET", f"/pos/v1/visits/{visit_id}", params={"wait": wait} if wait else None)

    def charge(self, visit_id: str, charge_id: str, bill: dict[str, Any]) -> httpx.Response:
        return self.request("POST", f"/pos/v1/visits/{visit_id}/charges", {"charge_id": charge_id, "bill": bill})

    def close_visit(self, visit_id: str) -> httpx.Response:
        return self.request("POST", f"/pos/v1/visits/{visit_id}/close")

    def revoke_by_face(self, revoke_id: str) -> httpx.Response:
        """The patient revokes her senseless-pay mandates at the counter (face); the order is
        `mrevoke~<revoke_id>`."""
        return self.request("POST", "/pos/v1/mandates/revoke", {"revoke_id": revoke_id})

    def revoke_visit(self, visit_id: str) -> httpx.Response:
        return self.request("POST", f"/pos/v1/visits/{visit_id}/revoke")
