"""FastAPI shell shared by the centre and the bank: one POST route per transaction.

`POST /fsi/api/{infno}` takes the platform envelope (JSON) and answers with an
envelope; the decrypted request and answer schemas of each transaction are
published in the OpenAPI document under `components.schemas` (`<infno>.input`)
and linked from each route's description. Nothing here can answer 500 for bad
input: bodies are read raw and every refusal is an `infcode` answer.
"""
from __future__ import annotations

import hmac
import json
import secrets
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from kiosk import metrics
from kiosk.errors import InputError, KioskError
from kiosk.security.keystore import operator_token
from kiosk.services.envelope import MAX_BODY
from kiosk.services.gateway import Gateway
from kiosk.services.protocol import (
    InfCode,
    PlatformRequest,
    PlatformResponse,
    Refusal,
    loads_json,
    parse_model,
    refused,
)


class Envelope(BaseModel):
    """The platform envelope (kiosk.security.envelope): SM4 `encData`, SM2 `signData`."""

    appId: str = Field(description="the terminal's appId (at least 16 characters)")
    encType: str = Field("SM4")
    signType: str = Field("SM2")
    timestamp: str = Field(description="milliseconds since the epoch; must be within the replay window")
    version: str = Field("1.0.0")
    encData: str = Field(description="upper-case hex SM4-ECB of the JSON request (PlatformRequest + nonce)")
    signData: str = Field(description="Base64 SM2 signature over the sorted fields with &key=appSecret")


class TerminalRegistration(BaseModel):
    """Checked again, whole, by kiosk.services.gateway.check_registration (the CLI's path too)."""

    model_config = ConfigDict(extra="forbid")

    app_id: str = Field(min_length=16, max_length=64, pattern=r"^[A-Za-z0-9_-]+$",
                        description="at least 16 characters: the envelope keys its data key with the first 16")
    sm2_public: str = Field(min_length=128, max_length=2048, description="hex 04||x||y or PEM: a point on SM2")
    fixmedins_code: str = Field(min_length=12, max_length=12, pattern=r"^[HP][0-9]{11}$",
                                description="the platform's institution code, e.g. H37020200001")
    app_secret: str = Field(default="", max_length=128, description="empty: the service makes one; else 16-128 "
                            "printable ASCII characters without spaces")


MAX_ADMIN_BODY = 16 * 1024


def admin_token(data_dir: Path) -> str:
    """The operator's token for /admin routes: KIOSK_SERVICES_ADMIN_TOKEN, else a 0600 file made once."""
    return operator_token(Path(data_dir) / "services" / "admin.token", "KIOSK_SERVICES_ADMIN_TOKEN")


def admin_refusal(given: str, token: str, now: Any) -> JSONResponse | None:
    """The 401 answer of an /admin route when the operator token is missing or wrong, else None."""
    if hmac.compare_digest(given.encode(), token.encode()):
        return None
    return _json(401, refused("", Refusal(InfCode.UNKNOWN_TERMINAL, "admin token missing or wrong",
                                          field="x-admin-token"), now))


def _json(status: int, body: dict[str, Any]) -> JSONResponse:
    return JSONResponse(body, status_code=status)


def build_app(title: str, gateway: Gateway, data_dir: Path, *, description: str = "",
              extra_schemas: dict[str, type[BaseModel]] | None = None) -> FastAPI:
    app = FastAPI(title=title, version="1.0", description=description)
    envelope_schema = Envelope.model_json_schema()
    token = admin_token(data_dir)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        field = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
        now = gateway.clock.now()
        return _json(400, refused("", InputError(str(first.get("msg", "invalid")), field=field), now))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        now = gateway.clock.now()
        code = InfCode.UNKNOWN_TRANSACTION if exc.status_code == 404 else InfCode.INVALID_INPUT
        msg = f"no route {request.method} {request.url.path}" if exc.status_code in (404, 405) else str(exc.detail)
        return _json(exc.status_code, refused("", Refusal(code, msg, code=f"http_{exc.status_code}"), now))

    @app.exception_handler(Exception)
    async def _fault(request: Request, exc: Exception) -> JSONResponse:  # pragma: no cover - last resort
        now = gateway.clock.now()
        return _json(200, refused("", KioskError("internal error; nothing was applied", code="internal"), now))

    def make(infno: str, summary: str, model: type[BaseModel]):  # noqa: ANN202
        async def endpoint(request: Request) -> JSONResponse:
            raw = await request.body()
            status, body = await run_in_threadpool(gateway.handle, raw, infno)
            return _json(status, body)

        endpoint.__name__ = f"txn_{infno.replace('.', '_')}"
        app.add_api_route(
            f"/fsi/api/{infno}", endpoint, methods=["POST"], summary=f"{infno}: {summary}",
            description=(f"Body: the platform envelope. Decrypted request: `PlatformRequest` with `infno` "
                         f"\"{infno}\" and `input` = schema `{infno}.input`. Decrypted answer: `PlatformResponse`."),
            openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
                "schema": {"$ref": "#/components/schemas/Envelope"}}}}},
            response_model=None, tags=["transactions"])

    for infno, route in gateway.routes.items():
        make(infno, route.summary, route.model)

    @app.get("/keys", tags=["keys"], summary="the service's public keys (SM2 to verify answers, X25519 to seal to)")
    def keys() -> dict[str, str]:
        return gateway.keys.public()

    @app.get("/health", tags=["ops"])
    def health() -> dict[str, str]:
        return {"status": "ok", "service": gateway.service}

    @app.post("/admin/terminals", tags=["admin"], summary="register or re-key a terminal (operator token)",
              description="Body: `TerminalRegistration`. 200 with the app_secret and the service's keys; "
                          "422 (infcode 1001, `err_field`) for a value that could never work on the wire "
                          "(appId under 16 characters or with separators, a key that is not an SM2 point, "
                          "an institution code not of the platform's form); 400 for a body that is not JSON.",
              openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
                  "schema": {"$ref": "#/components/schemas/TerminalRegistration"}}}}})
    async def register(request: Request, x_admin_token: str = Header(default="")) -> JSONResponse:
        now = gateway.clock.now()
        denied = admin_refusal(x_admin_token, token, now)
        if denied is not None:
            return denied
        raw = await request.body()
        try:
            if len(raw) > MAX_ADMIN_BODY:
                raise InputError(f"larger than {MAX_ADMIN_BODY} bytes", field="body")
            doc = loads_json(raw, "body")
        except InputError as e:
            return _json(400, refused("", e, now))
        try:
            reg = parse_model(TerminalRegistration, doc, prefix="")
            secret = reg.app_secret or secrets.token_hex(16)
            await run_in_threadpool(gateway.register_terminal, reg.app_id, secret, reg.sm2_public, reg.fixmedins_code)
        except InputError as e:
            return _json(422, refused("", e, now))
        return _json(200, {"infcode": 0, "err_msg": "", "output": {"app_id": reg.app_id, "app_secret": secret,
                                                                     "service_keys": gateway.keys.public()}})

    schemas: dict[str, Any] = {"Envelope": envelope_schema}
    for name, model in [("PlatformRequest", PlatformRequest), ("PlatformResponse", PlatformResponse),
                        ("TerminalRegistration", TerminalRegistration)]:
        schemas[name] = model.model_json_schema(ref_template="#/components/schemas/{model}")
    for infno, route in gateway.routes.items():
        s = route.model.model_json_schema(ref_template="#/components/schemas/{model}")
        for k, v in s.pop("$defs", {}).items():
            schemas.setdefault(k, v)
        schemas[f"{infno}.input"] = s
    for name, model in (extra_schemas or {}).items():
        schemas[name] = model.model_json_schema(ref_template="#/components/schemas/{model}")

    base_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        doc = base_openapi()
        doc.setdefault("components", {}).setdefault("schemas", {}).update(schemas)
        app.openapi_schema = doc
        return doc

    app.openapi = openapi  # type: ignore[method-assign]
    metrics.instrument_service(app, gateway)  # GET /metrics; counts every transaction by infno/infcode
    app.add_middleware(FastPath, gateway=gateway)
    return app


class FastPath:
    """Pure ASGI fast path for `POST /fsi/api/{infno}`: the same gateway call as the FastAPI
    route (which stays for OpenAPI and behaves the same), without FastAPI's per-request
    machinery (~0.6 ms CPU a message, measured in process). Anything else goes on to FastAPI."""

    PREFIX = "/fsi/api/"

    def __init__(self, app: Any, gateway: Gateway) -> None:
        self.app = app
        self.gateway = gateway
        # SQLite serialises writers anyway: run the short pipeline on the event loop (no thread hop,
        # ~0.35 ms CPU a message); PostgreSQL waits on the network, so a thread keeps the loop free.
        self.inline = gateway.db.dialect == "sqlite"

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        if (scope["type"] != "http" or scope.get("method") != "POST" or not path.startswith(self.PREFIX)
                or path[len(self.PREFIX):] not in self.gateway.routes):
            await self.app(scope, receive, send)
            return
        chunks = []
        size = 0
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            chunk = msg.get("body", b"")
            size += len(chunk)
            if size > MAX_BODY:  # parse_outer refuses it with a clear answer; stop reading
                chunks = [b"x" * (MAX_BODY + 1)]
                break
            chunks.append(chunk)
            if not msg.get("more_body", False):
                break
        raw, infno = b"".join(chunks), path[len(self.PREFIX):]
        if self.inline:
            status, body = self.gateway.handle(raw, infno)
        else:
            status, body = await run_in_threadpool(self.gateway.handle, raw, infno)
        data = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
        await send({"type": "http.response.body", "body": data})
