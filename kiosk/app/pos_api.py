"""The POS/HIS API of the terminal (FastAPI, 127.0.0.1:8740, OpenAPI at /openapi.json).

    POST /pos/v1/orders                          create a payment order with the itemised bill
    GET  /pos/v1/orders/{order_id}?wait=S        query (long-poll up to S seconds for the result)
    POST /pos/v1/orders/{order_id}/cancel        cancel before money moves
    POST /pos/v1/orders/{order_id}/returns       item-level return (lines): re-settles the kept lines
    GET  /pos/v1/orders/{order_id}/returns/{id}  query a return (?wait=S long-poll)
    POST /pos/v1/orders/{order_id}/refunds       refund whole (no amount) or partial: 201 refunded,
                                                 202 refund_pending (completes by itself), 409 refund_failed
    GET  /pos/v1/reconciliation?day=YYYY-MM-DD   the day's orders and refunds, JSON or CSV
    POST /pos/v1/visits                          register an outpatient visit (the patient's face once,
                                                 a standing mandate for senseless payment)
    GET  /pos/v1/visits/{visit_id}?wait=S        the visit: state, mandate, charges
    POST /pos/v1/visits/{visit_id}/charges       a charge paid without the patient: 201 paid, 202 pending,
                                                 409 needs_patient (the counter order it became)
    POST /pos/v1/visits/{visit_id}/close         the visit's end: summary printed and sent
    POST /pos/v1/visits/{visit_id}/revoke        the mandate revoked: later charges need the patient
    POST /pos/v1/mandates/revoke                 the patient revokes her mandates (every institution) by face

Every /pos request is signed per integrating system (kiosk.app.pos_auth).
Creating an order is idempotent by order id: the same body returns the first
answer (and, once known, the first result); another body is 409.
"""
from __future__ import annotations

import asyncio
import csv
import io
from datetime import date
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from kiosk import metrics
from kiosk.errors import ConflictError, InputError, KioskError, RemoteError, StorageError
from kiosk.money import fen_to_yuan, yuan_to_fen
from kiosk.app.bill_check import Catalogue, OrderLimits, check_codes, check_order
from kiosk.app.pos_auth import AuthError, PosAuth
from kiosk.app.store import CHARGE_PREFIX, REFUND_VIEW, RETURN_PREFIX, OrderRow
from kiosk.app.terminal import Terminal, order_from_request, return_view

_ID = r"^[A-Za-z0-9_.:-]{1,64}$"
_YUAN = r"^[0-9]{1,9}(\.[0-9]{1,2})?$"  # [0-9], not \d: the regex engine's \d takes "１０" and other digits


class ItemIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    code: str = Field(min_length=1, max_length=50, pattern=r"^[A-Za-z0-9_.-]+$",
                      description="catalogue code (med_list_codg); the centre knows its class A/B/C. A code "
                                  "not in the centre's catalogue is refused (422 unknown_code)")
    name: str | None = Field(default=None, max_length=80, description="shown on the screen and receipt")
    price: str = Field(pattern=r"^[0-9]{1,8}(\.[0-9]{1,4})?$",
                       description="yuan per unit, up to 4 dp, more than 0 (at most 10,000,000)")
    qty: str = Field(pattern=r"^[0-9]{1,7}(\.[0-9]{1,4})?$",
                     description="quantity, up to 4 dp, more than 0 (at most 1,000,000); price x qty at least 0.01")


class BillIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    med_type: Literal["11", "14", "41"] = Field(default="11", description="11 outpatient, 14 chronic, 41 pharmacy")
    items: list[ItemIn] = Field(min_length=1, max_length=500)


class OrderIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    order_id: str = Field(pattern=_ID, description="the POS's own id; retries reuse it")
    mode: Literal["outpatient", "admission", "discharge"] = "outpatient"
    bill: BillIn | None = Field(default=None, description="required for outpatient and discharge")
    deposit: str | None = Field(default=None, pattern=_YUAN,
                                description="admission only: amount to hold on the line, more than 0.00 and at "
                                            "most what a credit line can hold (20,000.00, or KIOSK_POS_MAX_DEPOSIT)")
    admission_order_id: str | None = Field(default=None, pattern=_ID, description="discharge: the admission order")


class RefundIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    refund_id: str = Field(pattern=_ID, description="the POS's id for this refund; retries reuse it (a refund that failed, or was cut off by a restart, is attempted again by the same request)")
    amount: str | None = Field(default=None, pattern=_YUAN,
                               description="yuan; absent = refund the whole order. A partial refund returns only "
                                           "the personal share (credit draw first, then cash), up to credit + cash")


class ReturnLineIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    code: str = Field(min_length=1, max_length=50, pattern=r"^[A-Za-z0-9_.-]+$",
                      description="a code on the original bill (once per return)")
    qty: str = Field(pattern=r"^[0-9]{1,7}(\.[0-9]{1,4})?$",
                     description="quantity returned: more than 0, at most what was bought")


class OperatorIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(pattern=r"^[A-Za-z0-9_.:-]{1,32}$", description="the cashier's staff id")
    name: str = Field(min_length=1, max_length=16, pattern=r"^[^\x00-\x1f\x7f]+$",
                      description="the cashier's name as printed on the receipt")


class ReturnIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    return_id: str = Field(pattern=_ID, description="the POS's id for this return; retries reuse it")
    lines: list[ReturnLineIn] = Field(min_length=1, max_length=500)
    confirm: Literal["face", "cashier"] = Field(
        default="face", description="face: the patient's face again (the original patient), then the confirm key; "
                                    "cashier: the cashier vouches for the patient (the fallback when the face "
                                    "fails): no face, the confirm key only; `operator` required, recorded in "
                                    "the journal, the audit chain and on the receipt")
    operator: OperatorIn | None = Field(default=None, description="who confirms (confirm=cashier only)")


class MandateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    per_visit: str = Field(pattern=_YUAN, description="cap of one visit's personal share (default 500.00)")
    per_day: str = Field(pattern=_YUAN, description="cap of a day's personal share (default 1000.00), >= per_visit")
    until: str = Field(pattern=r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$",
                       description="last Asia/Shanghai day the mandate is valid (default today + 90 days)")
    lines: Literal["own", "family", "own,family"] = Field(default="own", description="which credit lines may pay")


class VisitIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    visit_id: str = Field(pattern=_ID, description="the HIS's id of this outpatient visit; retries reuse it")
    mandate: MandateIn | None = Field(default=None, description="proposed terms (the screen offers lower presets); "
                                                                "absent: the defaults, never above the line")


class FaceRevokeIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    revoke_id: str = Field(pattern=_ID, description="the POS's id of this revocation; retries reuse it")


class ChargeIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    charge_id: str = Field(pattern=_ID, description="the HIS's id of this charge within the visit; retries reuse it")
    bill: BillIn = Field(description="the charge's itemised bill (checked as an order's; med_type 11 or 14)")


class OrderOut(BaseModel):
    order_id: str
    mode: str
    status: str = Field(description="pending | running | paid | held | captured (an admission whose hold a discharge settled) | failed | cancelled | reversing | refunded | partially_refunded | refund_pending (a refund's outcome at a party is not known yet; it completes by itself) | refund_failed (a party refused a refund after the other applied its part: see reason) | returning (an item-level return waits for the patient or is under way) | returned (the result is the kept lines' new settlement; result.returned.old the original) | return_failed (a party refused a return after the original was reversed: see reason) | revoked / not_revoked / revoke_pending (the patient's revocation of her mandates by face: result.mandates, each revoked, not_revoked or pending)")
    reason: str | None = Field(default=None, description="reason code when not paid (or a warning such as paper_out)")
    result: dict[str, Any] | None = None
    created_at: str
    updated_at: str


class ErrorOut(BaseModel):
    code: str
    message: str
    field: str | None = None


PAID_STATES = ("paid", "refunded", "partially_refunded", "refund_pending", "refund_failed",  # money moved once
               "returning", "returned", "return_failed")
# a visit id in the path is checked as the one registered was (no `~`, `/`, `%`): a clear 422 at the door
_VisitId = Annotated[str, Path(pattern=_ID, description="the HIS's id of the visit (as registered)")]

_STATUS = {InputError: 422, ConflictError: 409, RemoteError: 502, StorageError: 503, AuthError: 401}


def _err(e: KioskError) -> JSONResponse:
    status = 404 if e.code == "not_found" else next((s for t, s in _STATUS.items() if isinstance(e, t)), 400)
    return JSONResponse(e.to_dict(), status_code=status)


def create_app(terminal: Terminal, auth: PosAuth, *, title: str = "Kiosk POS/HIS API",
               catalogue: Catalogue | None = None, limits: OrderLimits | None = None) -> FastAPI:
    """`catalogue`: the centre's, to refuse unknown codes at once (None: codes are left to the centre).
    `limits`: from the settings by default (kiosk.app.bill_check)."""
    limits = limits or OrderLimits.from_settings()
    app = FastAPI(title=title, version="1.0.0",
                  description="Payment orders from the pharmacy/hospital system to the face-pay terminal. "
                              "Amounts are yuan strings with two decimals. Requests are signed with the "
                              "system's key: X-Pos-System, X-Pos-Timestamp, X-Pos-Signature.")
    app.state.terminal = terminal
    metrics.instrument_kiosk_app(app, terminal)  # GET /metrics (kiosk.metrics)

    @app.exception_handler(KioskError)
    async def _kiosk_error(_: Request, e: KioskError) -> JSONResponse:
        return _err(e)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, e: RequestValidationError) -> JSONResponse:
        first = e.errors()[0] if e.errors() else {}
        field = ".".join(str(x) for x in first.get("loc", ())[1:]) or "body"
        return JSONResponse({"code": "invalid_input", "message": str(first.get("msg", "invalid request")),
                             "field": field}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, e: StarletteHTTPException) -> JSONResponse:
        # no route (a path a visit id with `/` or `..` made): the answer a missing object gets, in the same shape
        if e.status_code == 404:
            return JSONResponse({"code": "not_found", "message": "not found", "field": None}, status_code=404)
        return JSONResponse({"code": f"http_{e.status_code}", "message": str(e.detail), "field": None},
                            status_code=e.status_code, headers=getattr(e, "headers", None))

    async def system(request: Request) -> str:
        body = await request.body()
        path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return auth.verify(request.headers, request.method, path, body)

    responses: dict[int | str, dict[str, Any]] = {
        401: {"model": ErrorOut}, 404: {"model": ErrorOut}, 409: {"model": ErrorOut}, 422: {"model": ErrorOut},
        502: {"model": ErrorOut}, 503: {"model": ErrorOut}}

    def out(row: OrderRow) -> OrderOut:
        return OrderOut(**row.to_json())

    @app.get("/health", tags=["ops"])
    async def health() -> dict[str, Any]:
        return {"ok": True}

    @app.post("/pos/v1/orders", response_model=OrderOut, status_code=201, tags=["pos"], responses=responses,
              description="Creates a payment order (201). A retry with the same order_id and the same body "
                          "returns the first answer (200; its result once known); the same order_id with "
                          "another body is 409 order_conflict. An order that could never settle is refused "
                          "at once, before any patient session and with nothing stored: 422 naming the "
                          "field (amounts in ASCII digits, more than 0, bounded; codes in the centre's "
                          "catalogue; a deposit a credit line can hold).")
    async def create_order(body: OrderIn, sysid: str = Depends(system)) -> Any:
        req = body.model_dump(exclude_none=True)
        check_order(body.mode, body.bill.items if body.bill else None, body.deposit, body.admission_order_id,
                    limits)
        if catalogue is not None and body.bill is not None and terminal.store.get(sysid, body.order_id) is None:
            await asyncio.to_thread(check_codes, [it.code for it in body.bill.items], catalogue)
        if body.mode == "discharge":
            if not body.admission_order_id:
                raise InputError("is required for a discharge", field="admission_order_id")
            adm = terminal.store.get(sysid, body.admission_order_id)
            if adm is None or adm.status != "held" or not adm.result or not adm.result.get("hold_id"):
                raise ConflictError("the admission order has no hold to settle", code="no_hold",
                                    field="admission_order_id")
            req["hold_id"] = adm.result["hold_id"]
        row, created = await asyncio.to_thread(terminal.store.create_order, sysid, body.order_id, req, body.mode)
        if created:
            terminal.submit(sysid, order_from_request(body.order_id, req))
            return JSONResponse(out(row).model_dump(), status_code=201)
        return JSONResponse(out(row).model_dump(), status_code=200)

    @app.get("/pos/v1/orders/{order_id}", response_model=OrderOut, tags=["pos"], responses=responses)
    async def get_order(order_id: str, wait: float = Query(0, ge=0, le=60, description="seconds to wait for a result"),
                        sysid: str = Depends(system)) -> Any:
        row = await terminal.wait_async(sysid, order_id, wait) if wait else terminal.store.get(sysid, order_id)
        if row is None:
            raise InputError(f"no order {order_id!r}", code="not_found", field="order_id")
        return out(row)

    @app.post("/pos/v1/orders/{order_id}/cancel", response_model=OrderOut, tags=["pos"], responses=responses)
    async def cancel_order(order_id: str, sysid: str = Depends(system)) -> Any:
        row = await asyncio.to_thread(terminal.cancel, sysid, order_id)
        return out(row)

    @app.post("/pos/v1/orders/{order_id}/refunds", tags=["pos"], responses=responses,
              description="Whole refund (no amount): the centre reverses the settlement (fund and personal "
                          "account return) and the bank refunds the credit draw. Partial refund (amount): "
                          "returns only the personal share - the credit draw first, then cash handed back at "
                          "the counter - never the fund or account share, and a whole refund is refused once "
                          "a partial one was made. Idempotent per refund_id (retry: 200 with the first "
                          "answer; another body: 409 refund_conflict). 201 refunded; 202 refund_pending: a "
                          "party's answer is not known yet (lost or late), the order says refund_pending too and "
                          "the terminal completes it by itself by the refund's keys (query the order, or send the "
                          "same request again: never hand the money back another way meanwhile); 409 "
                          "refund_failed: a party definitively refused (the message names it and why).")
    async def refund(order_id: str, body: RefundIn, sysid: str = Depends(system)) -> Any:
        amount = yuan_to_fen(body.amount, "amount") if body.amount is not None else None
        result, replayed = await asyncio.to_thread(terminal.refund, sysid, order_id, body.refund_id, amount)
        if result.get("status") == "refund_pending":
            return JSONResponse(result, status_code=202)
        return JSONResponse(result, status_code=200 if replayed else 201)

    @app.post("/pos/v1/orders/{order_id}/returns", tags=["pos"], responses=responses,
              description="Item-level return: the lines given back (code and quantity, checked against the "
                          "original bill: 422 naming the field). The patient confirms at the terminal (face "
                          "again, then the confirm key; or confirm=cashier with the operator: no face, the "
                          "confirm key); the terminal reverses the original settlement and "
                          "settles the kept lines anew (fund, account and mutual aid move back through the "
                          "centre), refunds the original credit draw and draws the new cash share on the same "
                          "line. 202 with the return (query GET .../returns/{return_id}?wait=S): returned, "
                          "return_pending (a party's answer unknown: completes by itself), failed or cancelled "
                          "(nothing changed), return_failed (a party refused after the reversal: operator). "
                          "Keeping nothing is a whole refund (the refund's answer). Idempotent per return_id "
                          "(same body: 200 with the return; another body: 409 return_conflict).")
    async def create_return(order_id: str, body: ReturnIn, sysid: str = Depends(system)) -> Any:
        lines = [ln.model_dump() for ln in body.lines]
        if body.confirm == "cashier" and body.operator is None:
            raise InputError("is required when the cashier confirms the return", field="operator")
        if body.confirm == "face" and body.operator is not None:
            raise InputError("is only for confirm=cashier (the patient's face confirms this return)",
                             field="operator")
        operator = body.operator.model_dump() if body.operator else None
        answer, status = await asyncio.to_thread(terminal.submit_return, sysid, order_id, body.return_id, lines,
                                                 confirm=body.confirm, operator=operator)
        return JSONResponse(answer, status_code=status)

    @app.get("/pos/v1/orders/{order_id}/returns/{return_id}", tags=["pos"], responses=responses)
    async def get_return(order_id: str, return_id: str,
                         wait: float = Query(0, ge=0, le=60, description="seconds to wait for a result"),
                         sysid: str = Depends(system)) -> Any:
        rid = RETURN_PREFIX + return_id
        row = await terminal.wait_async(sysid, rid, wait) if wait else terminal.store.get(sysid, rid)
        if row is None or row.request.get("order_id") != order_id:
            raise InputError(f"no return {return_id!r} of order {order_id!r}", code="not_found", field="return_id")
        return return_view(row)

    # ------------------------------------------------------------ senseless payment (visits)
    def _visit_answer(row: Any, created: bool) -> JSONResponse:
        return JSONResponse(terminal.visits.view(row.system, row.visit_id), status_code=201 if created else 200)

    @app.post("/pos/v1/visits", tags=["visits"], responses=responses,
              description="Registers an outpatient visit: the patient is called to the terminal (face; the "
                          "mandate's caps on the screen, lower presets on the keypad; the confirm key). The "
                          "terminal records the mandate at the bank (credit.mandate) and the visit at the centre "
                          "(2201); an active mandate of this patient here with the same terms is reused. 201 with "
                          "the visit (state opening; query GET /pos/v1/visits/{visit_id}?wait=S: open | failed). "
                          "Idempotent per visit_id (same body: 200; another: 409 visit_conflict).")
    async def create_visit(body: VisitIn, sysid: str = Depends(system)) -> Any:
        m = None
        if body.mandate is not None:
            m = {"per_visit": yuan_to_fen(body.mandate.per_visit, "mandate.per_visit"),
                 "per_day": yuan_to_fen(body.mandate.per_day, "mandate.per_day"), "until": body.mandate.until,
                 "lines": body.mandate.lines}
        row, created = await asyncio.to_thread(terminal.visits.register, sysid, body.visit_id, m)
        return _visit_answer(row, created)

    @app.post("/pos/v1/mandates/revoke", response_model=OrderOut, tags=["visits"], responses=responses,
              description="The patient revokes her senseless-pay mandates, at every institution, by her face at "
                          "this terminal (any terminal: the bank takes her own word, ec.payauth mandate_revoke). "
                          "She is called to the counter: face, the list of her mandates in force (read on her word), "
                          "the confirm key, then each revoked by key and a slip. 201 with the order "
                          "(`mrevoke~<revoke_id>`; query GET /pos/v1/orders/{order_id}?wait=S: revoked | "
                          "not_revoked | revoke_pending (the bank's answer unknown: completes by itself) | failed "
                          "(reason no_mandates, not_matched, ...) | cancelled; result.mandates: each mandate_id, "
                          "fixmedins_code and result). Idempotent per revoke_id (a retry: 200 with the same order).")
    async def revoke_by_face(body: FaceRevokeIn, sysid: str = Depends(system)) -> Any:
        row, created = await asyncio.to_thread(terminal.visits.revoke_by_face, sysid, body.revoke_id)
        return JSONResponse(out(row).model_dump(), status_code=201 if created else 200)

    @app.get("/pos/v1/visits/{visit_id}", tags=["visits"], responses=responses)
    async def get_visit(visit_id: _VisitId, wait: float = Query(0, ge=0, le=60, description="seconds to wait while opening"),
                        sysid: str = Depends(system)) -> Any:
        v = terminal.store.get_visit(terminal.institution, sysid, visit_id)
        if v is None:
            raise InputError(f"no visit {visit_id!r}", code="not_found", field="visit_id")
        if wait and v.state == "opening" and terminal.counting:  # nothing changes while no counter runs
            await terminal.wait_async(sysid, v.order_id, wait)
        return await asyncio.to_thread(terminal.visits.view, sysid, visit_id)

    @app.post("/pos/v1/visits/{visit_id}/charges", tags=["visits"], responses=responses,
              description="A charge of an open visit, paid without the patient: 2206/2207 on the visit token, the "
                          "kiosk's caps on the personal share (atomic), the cash share drawn under the mandate. "
                          "201 paid; 202 pending (a party's answer unknown: completes by itself, query the visit); "
                          "409 needs_patient (a cap, expiry or revocation: `order_id` is the counter order it "
                          "became, which the patient pays at the terminal; track or cancel it as an order); 409 "
                          "charge_failed (nothing charged: post it again under a new charge_id); 409 visit_closed. "
                          "Idempotent per charge_id (same body: the first answer; another: 409 charge_conflict). "
                          "Refund a paid charge by POST /pos/v1/orders/{result.order_id}/refunds.")
    async def create_charge(visit_id: _VisitId, body: ChargeIn, sysid: str = Depends(system)) -> Any:
        if body.bill.med_type == "41":
            raise InputError("a visit's charge is an outpatient bill (11 or 14)", field="bill.med_type")
        check_order("outpatient", body.bill.items, None, None, limits)
        bill = body.bill.model_dump(exclude_none=True)
        oid_exists = terminal.store.get(sysid, f"{CHARGE_PREFIX}{visit_id}~{body.charge_id}") is not None
        if catalogue is not None and not oid_exists:
            await asyncio.to_thread(check_codes, [it.code for it in body.bill.items], catalogue)
        answer, status = await asyncio.to_thread(terminal.visits.charge, sysid, visit_id, body.charge_id, bill)
        return JSONResponse(answer, status_code=status)

    @app.post("/pos/v1/visits/{visit_id}/close", tags=["visits"], responses=responses,
              description="Ends the visit: no charge is taken afterwards (409 visit_closed), the centre closes it "
                          "(2202), the summary of all its charges is printed and sent to the patient's insurance "
                          "app (ec.notify visit_summary). A second close answers the summary again.")
    async def close_visit(visit_id: _VisitId, sysid: str = Depends(system)) -> Any:
        return await asyncio.to_thread(terminal.visits.close, sysid, visit_id)

    @app.post("/pos/v1/visits/{visit_id}/revoke", tags=["visits"], responses=responses,
              description="Revokes the mandate the visit runs under (at the kiosk at once, then at the bank: "
                          "credit.mandate_revoke). Later charges need the patient. 200, or 202 while the bank has "
                          "not confirmed (sent again by the terminal until it does).")
    async def revoke_visit(visit_id: _VisitId, sysid: str = Depends(system)) -> Any:
        answer, status = await asyncio.to_thread(terminal.visits.revoke, sysid, visit_id)
        return JSONResponse(answer, status_code=status)

    @app.get("/pos/v1/reconciliation", tags=["pos"], responses=responses)
    async def reconciliation(day: date = Query(description="Asia/Shanghai calendar day"),
                             format: Literal["json", "csv"] = "json", sysid: str = Depends(system)) -> Any:
        orders = terminal.store.orders_of_day(sysid, day.isoformat())
        refunds = terminal.store.refunds_of_day(sysid, day.isoformat())
        rows = []
        for o in orders:
            if o.mode in ("return", "register", "mandate_revoke"):
                continue  # a return shows on its order; a registration or revocation moves no money
            r = o.result or {}
            by_state = {"refunded": 0, "refund_pending": 0}  # each refund by its true state
            for f in (terminal.store.refunds_of_order(sysid, o.order_id) if o.refunded_fen else []):
                view = REFUND_VIEW.get(f["status"], f["status"])
                if view in by_state:
                    by_state[view] += f["amount_fen"]
            rows.append({"order_id": o.order_id, "mode": o.mode, "status": o.status, "reason": o.reason or "",
                         "setl_id": r.get("setl_id") or "", "medfee_sumamt": r.get("medfee_sumamt", "0.00"),
                         "fund_pay_sumamt": r.get("fund_pay_sumamt", "0.00"), "acct_pay": r.get("acct_pay", "0.00"),
                         "acct_mulaid_pay": r.get("acct_mulaid_pay", "0.00"),
                         "credit_draw": r.get("credit_draw", "0.00"), "cash_pay": r.get("cash_pay", "0.00"),
                         "refunded": fen_to_yuan(by_state["refunded"]),
                         "refund_pending": fen_to_yuan(by_state["refund_pending"])})
        paid = [r for r in rows if r["status"] in PAID_STATES]
        totals = {k: _sum(paid, k) for k in ("medfee_sumamt", "fund_pay_sumamt", "acct_pay", "acct_mulaid_pay",
                                             "credit_draw", "cash_pay", "refunded", "refund_pending")}
        if format == "csv":
            buf = io.StringIO()
            w = csv.DictWriter(buf, fieldnames=list(rows[0].keys()) if rows else ["order_id"])
            w.writeheader()
            w.writerows(rows)
            return Response(buf.getvalue(), media_type="text/csv; charset=utf-8")
        return {"day": day.isoformat(), "system": sysid, "orders": rows, "refunds": [
            {**{k: v for k, v in x.items() if k not in ("amount_fen", "status")}, "amount": fen_to_yuan(x["amount_fen"]),
             "status": REFUND_VIEW.get(x["status"], x["status"])} for x in refunds], "totals": totals,
            "count_paid": len(paid)}

    return app


def _sum(rows: list[dict[str, Any]], key: str) -> str:
    return fen_to_yuan(sum(yuan_to_fen(r[key], key) for r in rows))
