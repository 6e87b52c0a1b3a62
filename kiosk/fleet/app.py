"""The fleet service over HTTP (FastAPI; 127.0.0.1:8750 by default).

    uvicorn --factory kiosk.fleet.app:app_from_env

Terminals: `POST /v1/heartbeat` and `GET /v1/artifacts/{sha256}`, signed with the
device key (kiosk.security.replay headers); every refusal is the same 401.
Operator: `/admin/...` with `X-Admin-Token` (KIOSK_FLEET_ADMIN_TOKEN, else the
0600 file `<data_dir>/fleet/admin.token`), and the page `/fleet/` (the token
typed once at `/fleet/login`, kept in an HttpOnly SameSite=Strict cookie; the
cookie opens only the read-only page, never an /admin action).
Configuration: KIOSK_FLEET_DB (default `sqlite:///<data_dir>/fleet.db`),
KIOSK_FLEET_RULES, KIOSK_FLEET_OPERATOR_PUB (operator public key PEM file),
KIOSK_FLEET_WEBHOOK (alert webhook URL), KIOSK_FLEET_JOB=1 to run the periodic
job in this process (`kiosk fleet serve` runs it once, beside the workers).
"""
from __future__ import annotations

import base64
import hmac
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from fastapi import FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from kiosk import metrics
from kiosk.clock import Clock
from kiosk.config import load
from kiosk.errors import ConflictError, InputError, KioskError
from kiosk.fleet import artifacts as art
from kiosk.fleet.models import Publish, Registration, RolloutCreate
from kiosk.fleet.notify import LogNotifier, Notifier, WebhookNotifier
from kiosk.fleet.page import render_page, render_login
from kiosk.fleet.rules import Rules, load_rules
from kiosk.fleet.service import FleetService, Refused
from kiosk.security.keystore import operator_token
from kiosk.storage import Database, open_database

PORT = 8750
MAX_BEAT = 64 * 1024
REFUSED = {"code": "unauthorized", "message": "request refused"}
COOKIE = "fleet_admin"
log = logging.getLogger("kiosk.fleet")


def fleet_db_url(data_dir: Path) -> str:
    return os.environ.get("KIOSK_FLEET_DB") or f"sqlite:///{Path(data_dir) / 'fleet.db'}"


def admin_token(data_dir: Path) -> str:
    """The operator's token for the fleet's /admin routes and page: KIOSK_FLEET_ADMIN_TOKEN, else a 0600 file."""
    return operator_token(Path(data_dir) / "fleet" / "admin.token", "KIOSK_FLEET_ADMIN_TOKEN")


def notifier_from_env() -> Notifier:
    url = os.environ.get("KIOSK_FLEET_WEBHOOK", "")
    return WebhookNotifier(url) if url else LogNotifier()


class Job:
    """The periodic job: `service.evaluate()` every `rules.evaluate_every_s` in a thread."""

    def __init__(self, service: FleetService, every_s: float | None = None) -> None:
        self.service = service
        self.every_s = every_s or service.rules.evaluate_every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="fleet-job", daemon=True)

    def start(self) -> Job:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                self.service.evaluate()
            except KioskError as e:
                log.error("fleet job pass failed: %s", e)


def _err(status: int, e: KioskError) -> JSONResponse:
    return JSONResponse(e.to_dict(), status_code=status)


def create_app(db: Database | str | None = None, *, data_dir: Path | None = None, clock: Clock | None = None,
               rules: Rules | None = None, notifier: Notifier | None = None, operator_pub: Path | bytes | None = None,
               window_s: float | None = None, job: bool | None = None) -> FastAPI:
    data_dir = Path(data_dir or load().data_dir)
    if not isinstance(db, Database):
        db = open_database(db or fleet_db_url(data_dir))
    svc = FleetService(db, clock=clock, rules=rules or load_rules(), notifier=notifier or notifier_from_env(),
                       window_s=window_s)
    svc.warm_keys()
    pub = operator_pub or os.environ.get("KIOSK_FLEET_OPERATOR_PUB")
    if pub:
        svc.operator_key = art.load_public(Path(pub) if isinstance(pub, str) else pub)
    token = admin_token(data_dir)
    beats = metrics.counter("kiosk_fleet_heartbeats_total", "heartbeats by result", ("result",))
    beat_s = metrics.histogram("kiosk_fleet_heartbeat_seconds", "heartbeat handling time (verify + store)",
                               buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1))
    svc.on_heartbeat = lambda result, s: (beats.labels(result).inc(), beat_s.observe(s))
    g_terms = metrics.gauge("kiosk_fleet_terminals", "terminals by state", ("state",))
    g_alerts = metrics.gauge("kiosk_fleet_open_alerts", "open alerts by rule", ("rule",))

    def probe() -> None:
        s = svc.summary()
        for st in ("ok", "alerting", "offline", "revoked"):
            g_terms.labels(st).set(s["terminals"].get(st, 0))
        for rule in [r.name for r in svc.rules.rules] + ["rollout_halted"]:
            g_alerts.labels(rule).set(s["open_alerts"].get(rule, 0))

    metrics.on_scrape(probe)

    app = FastAPI(title="Fleet service (terminal health, alerts, staged rollout)", version="1",
                  description=__doc__.splitlines()[0])
    app.state.service, app.state.db = svc, db

    def operator(given: str) -> JSONResponse | None:
        if given and hmac.compare_digest(given.encode(), token.encode()):
            return None
        return JSONResponse(REFUSED, status_code=401)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        field = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
        return _err(422, InputError(str(first.get("msg", "invalid")), field=field))

    @app.exception_handler(KioskError)
    async def _kiosk(request: Request, exc: KioskError) -> JSONResponse:
        status = 409 if isinstance(exc, ConflictError) else 404 if exc.code == "not_found" else 422
        return _err(status, exc)

    @app.get("/health", tags=["ops"])
    def health() -> dict[str, str]:
        return {"status": "ok", "service": "fleet"}

    metrics.mount(app)

    @app.post("/v1/heartbeat", tags=["terminal"], summary="signed heartbeat (see HeartbeatAnswer)")
    async def heartbeat(request: Request) -> Response:
        raw = await request.body()
        status, body = await run_in_threadpool(handle_beat, svc, raw, request.headers, request.url.path)
        return Response(body, status_code=status, media_type="application/json")

    @app.get("/v1/artifacts/{sha256}", tags=["terminal"], summary="artifact bytes (signed GET)")
    def artifact(sha256: str, request: Request) -> Response:
        try:
            blob, meta = svc.artifact(sha256, b"", request.headers, request.url.path)
        except Refused:
            return JSONResponse(REFUSED, status_code=401)
        return Response(blob, media_type="application/octet-stream",
                        headers={"X-Artifact-Kind": meta["kind"], "X-Artifact-Version": meta["version"]})

    # ------------------------------------------------------------ operator
    @app.post("/admin/terminals", tags=["admin"])
    def register(reg: Registration, x_admin_token: str = Header(default="")) -> Any:
        return operator(x_admin_token) or svc.register(reg)

    @app.post("/admin/terminals/{terminal_id}/revoke", tags=["admin"])
    def revoke(terminal_id: str, x_admin_token: str = Header(default="")) -> Any:
        denied = operator(x_admin_token)
        if denied:
            return denied
        if not svc.revoke(terminal_id):
            raise InputError("no such terminal", code="not_found", field="terminal_id")
        return {"terminal_id": terminal_id, "status": "revoked"}

    @app.get("/admin/terminals", tags=["admin"])
    def terminals(institution: str = "", district: str = "", state: str = "", q: str = "",
                  x_admin_token: str = Header(default="")) -> Any:
        return operator(x_admin_token) or svc.terminals(institution=institution, district=district, state=state, q=q)

    @app.get("/admin/alerts", tags=["admin"])
    def alerts(x_admin_token: str = Header(default="")) -> Any:
        return operator(x_admin_token) or svc.open_alerts()

    @app.post("/admin/evaluate", tags=["admin"], summary="run the periodic job now")
    def evaluate(x_admin_token: str = Header(default="")) -> Any:
        return operator(x_admin_token) or svc.evaluate()

    @app.post("/admin/artifacts", tags=["admin"], summary="publish an operator-signed artifact")
    def publish(pub: Publish, x_admin_token: str = Header(default="")) -> Any:
        denied = operator(x_admin_token)
        if denied:
            return denied
        try:
            blob = base64.b64decode(pub.blob_b64, validate=True)
        except ValueError:
            raise InputError("blob_b64 is not base64", field="blob_b64") from None
        return svc.publish(pub, blob)

    @app.post("/admin/rollouts", tags=["admin"], summary="start a staged rollout (first stage)")
    def start(req: RolloutCreate, x_admin_token: str = Header(default="")) -> Any:
        return operator(x_admin_token) or svc.start_rollout(req.artifact_sha256, req.kind)

    @app.get("/admin/rollouts", tags=["admin"])
    def rollouts(x_admin_token: str = Header(default="")) -> Any:
        return operator(x_admin_token) or svc.rollouts()

    @app.get("/admin/rollouts/{rollout_id}", tags=["admin"])
    def rollout(rollout_id: int, x_admin_token: str = Header(default="")) -> Any:
        return operator(x_admin_token) or svc.rollout(rollout_id)

    @app.post("/admin/rollouts/{rollout_id}/{action}", tags=["admin"], summary="advance | halt | close")
    def rollout_action(rollout_id: int, action: str, x_admin_token: str = Header(default="")) -> Any:
        denied = operator(x_admin_token)
        if denied:
            return denied
        if action == "advance":
            return svc.advance(rollout_id)
        if action in ("halt", "close"):
            ok = svc.halt(rollout_id, "halted by the operator") if action == "halt" else svc.close(rollout_id)
            if not ok:
                raise ConflictError(f"rollout {rollout_id} cannot be {action}ed now", code="rollout_state")
            return svc.rollout(rollout_id)
        raise InputError("action must be advance, halt or close", code="not_found", field="action")

    # ------------------------------------------------------------ page
    @app.get("/fleet/login", include_in_schema=False)
    def login_form() -> HTMLResponse:
        return HTMLResponse(render_login(""))

    @app.post("/fleet/login", include_in_schema=False)
    async def login(request: Request) -> Response:
        form = parse_qs((await request.body()).decode("utf-8", "replace"))
        given = (form.get("token") or [""])[0]
        if operator(given) is not None:
            return HTMLResponse(render_login("wrong token"), status_code=401)
        r = RedirectResponse("/fleet/", status_code=303)
        r.set_cookie(COOKIE, given, httponly=True, samesite="strict", path="/fleet")
        return r

    @app.get("/fleet/", include_in_schema=False)
    def page(request: Request, institution: str = "", district: str = "", state: str = "", q: str = "") -> Response:
        given = request.headers.get("x-admin-token") or request.cookies.get(COOKIE, "")
        if operator(given) is not None:
            return RedirectResponse("/fleet/login", status_code=303)
        rows = svc.terminals(institution=institution, district=district, state=state, q=q)
        everyone = svc.terminals()
        html = render_page(rows, everyone, svc.rollouts()[:5],
                           {"institution": institution, "district": district, "state": state, "q": q},
                           now_ms=int(svc.clock.now().timestamp() * 1000))
        return HTMLResponse(html, headers={"Cache-Control": "no-store"})

    run_job = job if job is not None else os.environ.get("KIOSK_FLEET_JOB") == "1"
    if run_job:
        j = Job(svc).start()
        app.state.job = j
    app.add_middleware(FastBeat, service=svc)
    return app


def handle_beat(svc: FleetService, raw: bytes, headers: Any, path: str) -> tuple[int, bytes]:
    if len(raw) > MAX_BEAT:
        return 413, json.dumps({"code": "too_large", "message": "heartbeat too large"}).encode()
    try:
        answer = svc.heartbeat(raw, headers, path)
    except Refused as r:
        log.info("heartbeat refused: %s", r.reason)
        return 401, json.dumps(REFUSED).encode()
    except InputError as e:
        return 422, json.dumps(e.to_dict()).encode()
    except KioskError as e:
        log.error("heartbeat not stored: %s", e)
        return 503, json.dumps({"code": "unavailable", "message": "try again"}).encode()
    return 200, json.dumps(answer, separators=(",", ":")).encode()


class FastBeat:
    """Pure ASGI path for `POST /v1/heartbeat` (the one hot route), without FastAPI's
    per-request machinery. Verification runs per request; the writes are group-committed:
    the beats that arrived together are stored in one transaction. On SQLite (writers are
    serialised anyway) the batch runs on the event loop; on PostgreSQL in a thread."""

    PATH = "/v1/heartbeat"
    MAX_BATCH = 256

    def __init__(self, app: Any, service: FleetService) -> None:
        self.app, self.svc = app, service
        self.inline = service.db.dialect == "sqlite"
        self._pending: list[tuple[Any, Any]] = []
        self._flushing = False

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST" or scope.get("path") != self.PATH:
            await self.app(scope, receive, send)
            return
        chunks, size = [], 0
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            chunk = msg.get("body", b"")
            size += len(chunk)
            if size > MAX_BEAT:
                chunks = [b"x" * (MAX_BEAT + 1)]
                break
            chunks.append(chunk)
            if not msg.get("more_body", False):
                break
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", [])}
        status, body = await self._handle(b"".join(chunks), headers)
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    async def _handle(self, raw: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        import asyncio

        if len(raw) > MAX_BEAT:
            return handle_beat(self.svc, raw, headers, self.PATH)
        try:
            # CPU only (signature, window, nonce, body) once the terminal's key is cached: on the loop
            beat = self.svc.prepare(raw, headers, self.PATH)
        except Refused as r:
            log.info("heartbeat refused: %s", r.reason)
            return 401, json.dumps(REFUSED).encode()
        except InputError as e:
            return 422, json.dumps(e.to_dict()).encode()
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._pending.append((beat, fut))
        if not self._flushing:
            self._flushing = True
            loop.call_soon(lambda: loop.create_task(self._flush()))
        result = await fut
        if isinstance(result, Refused):
            log.info("heartbeat refused: %s", result.reason)
            return 401, json.dumps(REFUSED).encode()
        if isinstance(result, KioskError):
            log.error("heartbeat not stored: %s", result)
            return 503, json.dumps({"code": "unavailable", "message": "try again"}).encode()
        return 200, json.dumps(result, separators=(",", ":")).encode()

    async def _flush(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending[:self.MAX_BATCH], self._pending[self.MAX_BATCH:]
                beats = [b for b, _ in batch]
                try:
                    if self.inline:
                        results: list[Any] = self.svc.store_batch(beats)
                    else:
                        results = await run_in_threadpool(self.svc.store_batch, beats)
                except KioskError as e:
                    results = [e] * len(batch)
                except Exception as e:  # noqa: BLE001 - every waiting beat gets an answer
                    log.exception("heartbeat batch failed")
                    results = [KioskError(str(e), code="internal")] * len(batch)
                for (_, fut), r in zip(batch, results):
                    if not fut.done():
                        fut.set_result(r)
        finally:
            self._flushing = False


def app_from_env() -> FastAPI:
    return create_app()
