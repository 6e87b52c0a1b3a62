"""The bank (credit-line service) as a FastAPI app (127.0.0.1:8720 by default).

    uvicorn --factory kiosk.services.bank.app:app_from_env --workers 4

Configuration: `KIOSK_BANK_DB` (default `sqlite:///<data_dir>/bank.db`),
`KIOSK_DATA_DIR` (keys under `<data_dir>/services/bank-keys`), `KIOSK_REPLAY_WINDOW_S`,
`KIOSK_CENTRE_SM2_PUBLIC` (hex 04||x||y: the insurance centre's key pay_auths are checked
with; default: `<data_dir>/services/centre-public.json`, which the centre writes at start).
"""
from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterable
from datetime import date
from pathlib import Path
from typing import Any

from fastapi import Body, FastAPI, Header
from fastapi.responses import JSONResponse

from kiosk.clock import Clock, SystemClock
from kiosk.config import load
from kiosk.errors import ConflictError, KioskError
from kiosk.services.bank.clearing import Clearing, statement as clearing_statement
from kiosk.services.bank.service import (BankService, OperatorApply, OperatorBind, OperatorLine, OperatorMandate,
                                         OperatorMandateRevoke, OperatorRepay, OperatorStatement, OperatorUnbind)
from kiosk.security.sm import Sm2PublicKey
from kiosk.services import envelope as env
from kiosk.services.envelope import ServiceKeys
from kiosk.services.gateway import Gateway
from kiosk.services.http import admin_refusal, admin_token, build_app
from kiosk.services.protocol import InfCode, Refusal, parse_model, refused
from kiosk.storage import Database, open_database

PORT = 8720


def bank_db_url(data_dir: Path) -> str:
    return os.environ.get("KIOSK_BANK_DB") or load().database_url or f"sqlite:///{Path(data_dir) / 'bank.db'}"


def bank_keys(data_dir: Path) -> ServiceKeys:
    return ServiceKeys.open_or_init(Path(data_dir) / "services" / "bank-keys", device_id="BANK-0001")


def centre_key(data_dir: Path, sm2_public: str | None = None) -> Callable[[], Sm2PublicKey | None]:
    """The insurance centre's SM2 public key, pinned on first sight: given here, from
    `KIOSK_CENTRE_SM2_PUBLIC`, or from the file the centre publishes in the shared data directory
    (read when first needed, so the bank may start before the centre). Never re-read once pinned."""
    pinned: list[Sm2PublicKey] = []
    lock = threading.Lock()

    def get() -> Sm2PublicKey | None:
        with lock:
            if pinned:
                return pinned[0]
            text = sm2_public or os.environ.get("KIOSK_CENTRE_SM2_PUBLIC", "")
            if not text:
                from kiosk.services.centre.app import centre_public_path

                try:
                    text = json.loads(centre_public_path(data_dir).read_text())["sm2"]
                except (OSError, ValueError, KeyError, TypeError):
                    return None
            pinned.append(env.public_key(text))
            return pinned[0]

    return get


def build_bank(db: Database, data_dir: Path, clock: Clock | None = None,
               window_s: int = 300, centre_sm2_public: str | None = None) -> tuple[BankService, Gateway]:
    clock = clock or SystemClock()
    service = BankService(db, clock, centre_key(data_dir, centre_sm2_public))
    gw = Gateway("bank", db, clock, bank_keys(data_dir), service.routes(), window_s=window_s)
    return service, gw


def create_app(db: Database | str | None = None, *, data_dir: Path | None = None, clock: Clock | None = None,
               window_s: int | None = None, centre_sm2_public: str | None = None) -> FastAPI:
    data_dir = Path(data_dir or load().data_dir)
    if not isinstance(db, Database):
        db = open_database(db or bank_db_url(data_dir))
    window = window_s or int(load().replay_window_s)
    service, gw = build_bank(db, data_dir, clock, window, centre_sm2_public)
    app = build_app("Bank: medical-insurance credit line", gw, data_dir, description=__doc__.splitlines()[0])
    token = admin_token(data_dir)

    @app.post("/admin/notifications", tags=["admin"],
              summary="the operator's sender drains holder notifications (member draws, due soon, overdue)")
    def notifications(limit: int = 100, x_admin_token: str = Header(default="")) -> JSONResponse:
        now = gw.clock.now()
        denied = admin_refusal(x_admin_token, token, now)
        if denied is not None:
            return denied
        if not 1 <= limit <= 1000:
            return JSONResponse(refused("", Refusal(InfCode.INVALID_INPUT, "must be 1..1000", field="limit"), now),
                                status_code=400)
        out = db.run(lambda tx: service.hand_over(tx, now, limit))
        return JSONResponse({"infcode": 0, "err_msg": "", "output": out})

    def operator(model: type, act: Callable[[Any], Any]) -> Callable[..., JSONResponse]:
        """An act of the bank's own channel: the operator token, the body checked like a message's."""
        def handle(body: dict[str, Any] = Body(...), x_admin_token: str = Header(default="")) -> JSONResponse:
            now = gw.clock.now()
            denied = admin_refusal(x_admin_token, token, now)
            if denied is not None:
                return denied
            try:
                out = act(parse_model(model, body, prefix=""))
            except ConflictError as e:
                return JSONResponse(refused("", Refusal(InfCode.MSGID_CONFLICT, "key was already used for a "
                                                        "different request", code=e.code, field="key"), now),
                                    status_code=409)
            except KioskError as e:
                return JSONResponse(refused("", e, now), status_code=400)
            if isinstance(out, Refusal):
                return JSONResponse(refused("", out, now))
            return JSONResponse({"infcode": 0, "err_msg": "", "output": out})
        return handle

    # the bank's own channel (its app or branch authenticates the person itself): terminals do these
    # only with the person's pay_auth from the centre (docs/remote-parties.md, "Who may act on what")
    for path, model, act, summary in (
            ("bind", OperatorBind, service.bind_by_operator, "record a family binding the holder made"),
            ("unbind", OperatorUnbind, service.unbind_by_operator, "end a family binding"),
            ("apply", OperatorApply, service.apply_by_operator, "open a line the applicant asked for"),
            ("line", OperatorLine, service.line_for_operator, "the whole line a payer uses (limit, balances)"),
            ("repay", OperatorRepay, service.repay_by_operator, "record a repayment made to the bank"),
            ("statement", OperatorStatement, lambda d: service.statement_for(d.holder), "a holder's statement"),
            ("mandate/revoke", OperatorMandateRevoke, service.mandate_revoke_by_operator,
             "revoke a senseless-payment mandate the payer asked the bank to end"),
            ("mandate", OperatorMandate, service.mandate_for_operator, "any mandate: state, caps, used today")):
        app.post(f"/admin/{path}", tags=["admin"], summary=f"{summary} (operator token)")(operator(model, act))

    @app.get("/admin/clearing", tags=["admin"],
             summary="the clearing statement of any institution for an Asia/Shanghai day (operator token)")
    def admin_clearing(fixmedins_code: str, day: str, x_admin_token: str = Header(default="")) -> JSONResponse:
        now = gw.clock.now()
        denied = admin_refusal(x_admin_token, token, now)
        if denied is not None:
            return denied
        try:
            d = parse_model(Clearing, {"day": day, "fixmedins_code": fixmedins_code}, prefix="")
        except KioskError as e:
            return JSONResponse(refused("", e, now), status_code=400)
        if not d.fixmedins_code:
            return JSONResponse(refused("", Refusal(InfCode.INVALID_INPUT, "is required", field="fixmedins_code"),
                                        now), status_code=400)
        out = db.read(lambda tx: clearing_statement(tx, d.fixmedins_code, d.day))
        return JSONResponse({"infcode": 0, "err_msg": "", "output": out})

    app.state.service = service
    app.state.gateway = gw
    app.state.db = db
    return app


def app_from_env() -> FastAPI:
    return create_app()


def open_lines(db: Database, data_dir: Path, people: Iterable[tuple[str, str]], insured_years: int = 6,
               clock: Clock | None = None) -> int:
    """Open a credit line for each (psn_no, birth date) that is eligible (seeding for demos and load tests)."""
    service, _gw = build_bank(db, data_dir, clock)
    opened = 0
    for psn_no, brdy in people:
        r = service.credit.open(f"seed-line/{psn_no}", psn_no, date.fromisoformat(brdy), insured_years)
        opened += r.ok
    return opened


def check_bank(db: Database, *, expect_draws: dict[str, int] | None = None,
               refunded: Iterable[str] = ()) -> dict[str, Any]:
    """kiosk.credit's journal check, plus (given the draws a load run saw) one draw per settlement."""
    from kiosk.credit import CreditService

    report = CreditService(db, SystemClock()).check()
    out: dict[str, Any] = {"lines": report.lines, "entries": report.entries, "problems": report.problems[:20]}
    balanced = report.ok
    if expect_draws is not None:
        rows = db.read(lambda tx: tx.fetch_all(
            "SELECT ref, original_fen, refunded_fen FROM credit_draws"))
        by_ref: dict[str, list[tuple[int, int]]] = {}
        for ref, orig, ref_fen in rows:
            by_ref.setdefault(ref, []).append((int(orig), int(ref_fen)))
        refunded = set(refunded)
        missing = sum(1 for ref, amt in expect_draws.items() if [o for o, _ in by_ref.get(ref, [])] != [amt])
        missing += sum(1 for ref in refunded if ref in by_ref and any(o != r for o, r in by_ref[ref]))
        dup = sum(len(v) - 1 for v in by_ref.values() if len(v) > 1)
        dup += sum(1 for ref in by_ref if ref not in expect_draws and ref not in refunded)
        out.update(missing_draws=missing, duplicate_draws=dup, draws=len(rows))
        balanced = balanced and missing == 0 and dup == 0
    out["balanced"] = balanced
    return out
