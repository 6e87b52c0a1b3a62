"""The request pipeline both services share: envelope -> anti-replay -> msgid idempotency -> handler.

    body bytes --open envelope (SM2 verify, SM4 decrypt; kiosk.security)--> payload
      --timestamp fresh & nonce unused (kiosk.security ReplayGuard, DatabaseNonceStore)--> PlatformRequest
      (pydantic)
      --msgid claimed (kiosk.storage.IdempotencyStore)--> handler(ctx, tx, input) --> output
      --answer stored under the msgid, same transaction--> sealed answer envelope

Exactly-once: the msgid claim, the business rows and the stored answer commit in
one transaction. On PostgreSQL that transaction costs few round trips: BEGIN, the
nonce claim and the msgid claim travel together (`Transaction.fetch_each`), and the
stored answer travels with COMMIT (`Transaction.execute_at_commit`). A msgid seen before with the same body replays the
first answer; with another body it is refused (infcode 1003). A refusal raised
by a handler rolls its work back and is then stored under the msgid on its own,
so a retry of a refused message gets the same refusal.

Workers hold no state that matters: terminals and keys are cached read-only,
everything else is in the database, so any number can serve one database.
"""
from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import BaseModel

from kiosk.clock import Clock
from kiosk.errors import ConflictError, InputError, IntegrityError, KioskError, StorageError
from kiosk.services import envelope as env
from kiosk.services.protocol import (
    MAX_JSON_DEPTH,
    InfCode,
    PlatformRequest,
    Refusal,
    check_json_shape,
    ok,
    parse_model,
    refused,
)
from kiosk.security.replay import DatabaseNonceStore, ReplayGuard
from kiosk.storage import Database, IdempotencyStore, Migration, Transaction

log = logging.getLogger("kiosk.services")


def gateway_migration(service: str) -> Migration:
    """Per-service table of registered terminals (nonces live in kiosk.security's DatabaseNonceStore)."""
    return Migration(f"{service}.000_gateway", [
        f"""CREATE TABLE {service}_terminals (
            app_id TEXT PRIMARY KEY,
            app_secret TEXT NOT NULL,
            sm2_public TEXT NOT NULL,
            fixmedins_code TEXT NOT NULL,
            created_at TEXT NOT NULL)""",
    ])


# appId: the envelope keys the data key with its first 16 characters (kiosk.security.envelope.data_key
# refuses fewer, or non-ASCII ones) and signs it as `appId=<v>&...`, so it must have at least 16
# characters and none that could read as a separator ('&', '=', spaces); the services key msgids and
# nonces by it. Letters, digits, '_' and '-' (KeyStore device ids, the platform's hex ids) fit.
APP_ID_RE = re.compile(r"[A-Za-z0-9_-]{16,64}")
# appSecret: the end of the signed text (`&key=<secret>`) and the data key's plaintext; printable
# ASCII without spaces, long enough not to be guessed.
APP_SECRET_RE = re.compile(r"[!-~]{16,128}")
# fixmedins_code: the platform's 12-character institution code, H (medical institution) or
# P (retail pharmacy) and 11 digits, the first 6 its area code (H37020200001).
FIXMEDINS_RE = re.compile(r"[HP]\d{11}")


def check_registration(app_id: object, app_secret: object, sm2_public: object, fixmedins_code: object) -> None:
    """Refuse (InputError naming the field) a terminal registration that could never talk on the wire."""
    if not isinstance(app_id, str) or not APP_ID_RE.fullmatch(app_id):
        raise InputError("must be 16 to 64 characters, letters, digits, '_' or '-' (the envelope keys its "
                         "data key with the first 16)", field="app_id")
    if not isinstance(app_secret, str) or not APP_SECRET_RE.fullmatch(app_secret):
        raise InputError("must be 16 to 128 printable ASCII characters without spaces", field="app_secret")
    if not isinstance(fixmedins_code, str) or not FIXMEDINS_RE.fullmatch(fixmedins_code):
        raise InputError("must be the platform's 12-character institution code: H or P and 11 digits "
                         "(e.g. H37020200001)", field="fixmedins_code")
    if not isinstance(sm2_public, str) or not 128 <= len(sm2_public.strip()) <= 2048:
        raise InputError("must be an SM2 public key: hex 04||x||y (130 hex digits) or a PEM", field="sm2_public")
    try:
        env.check_public_key(sm2_public)
    except KioskError as e:  # not hex/PEM, wrong length, not a point on the curve
        raise InputError(f"is not a usable SM2 public key ({e.message})", field="sm2_public") from None


@dataclass(frozen=True)
class Terminal:
    app_id: str
    app_secret: str
    sm2_public: str  # PEM
    fixmedins_code: str


@dataclass(frozen=True)
class Ctx:
    """What a handler knows about the message it serves."""

    request: PlatformRequest
    terminal: Terminal
    now: datetime


Handler = Callable[[Ctx, Transaction, Any], "dict[str, Any] | KioskError"]


@dataclass(frozen=True)
class Route:
    infno: str
    model: type[BaseModel]
    handler: Handler
    summary: str
    mutating: bool = True  # read-only transactions skip the msgid store only when False
    needs_sign_in: bool = True


class Gateway:
    def __init__(
        self,
        service: str,
        db: Database,
        clock: Clock,
        keys: env.ServiceKeys,
        routes: dict[str, Route],
        *,
        window_s: int = 300,
        check_sign_no: Callable[[Terminal, str], bool] | None = None,
    ) -> None:
        self.service = service
        self.db = db
        self.clock = clock
        self.keys = keys
        self.routes = routes
        self.window_s = window_s
        self.check_sign_no = check_sign_no
        self.idem = IdempotencyStore(f"{service}.msgid")
        self.nonces = DatabaseNonceStore(db)
        self.guard = ReplayGuard(self.nonces, window_s=window_s, clock=clock)
        self._terminals: dict[str, Terminal] = {}
        self._lock = threading.Lock()
        db.migrate([gateway_migration(service)])

    # -- terminals -------------------------------------------------------------------------------
    def register_terminal(self, app_id: str, app_secret: str, sm2_public_pem: str, fixmedins_code: str) -> Terminal:
        """Register (or re-key) a terminal. Idempotent for identical values. InputError naming the
        field when a value could never work on the wire (`check_registration`); nothing is stored then."""
        check_registration(app_id, app_secret, sm2_public_pem, fixmedins_code)
        t = Terminal(app_id, app_secret, sm2_public_pem, fixmedins_code)

        def work(tx: Transaction) -> None:
            tx.execute(
                f"INSERT INTO {self.service}_terminals (app_id, app_secret, sm2_public, fixmedins_code, created_at) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (app_id) DO UPDATE SET app_secret = excluded.app_secret, "
                "sm2_public = excluded.sm2_public, fixmedins_code = excluded.fixmedins_code",
                (app_id, app_secret, sm2_public_pem, fixmedins_code, self.clock.now().isoformat()),
            )

        self.db.run(work)
        with self._lock:
            self._terminals[app_id] = t
        return t

    def terminal(self, app_id: str) -> Terminal | None:
        with self._lock:
            t = self._terminals.get(app_id)
        if t is not None:
            return t
        row = self.db.read(lambda tx: tx.fetch_one(
            f"SELECT app_id, app_secret, sm2_public, fixmedins_code FROM {self.service}_terminals WHERE app_id = ?",
            (app_id,)))
        if row is None:
            return None
        t = Terminal(*row)
        with self._lock:
            self._terminals[app_id] = t
        return t

    # -- the pipeline ----------------------------------------------------------------------------
    def handle(self, raw: bytes, path_infno: str | None = None) -> tuple[int, dict[str, Any]]:
        """One HTTP body in, (HTTP status, JSON body) out. Never raises."""
        now = self.clock.now()
        try:
            outer = env.parse_outer(raw)
        except KioskError as e:
            return 400, refused("", e, now)
        terminal = self.terminal(outer.app_id)
        if terminal is None:
            return 401, refused("", Refusal(InfCode.UNKNOWN_TERMINAL, f"appId {outer.app_id!r} is not registered",
                                            field="appId"), now)
        try:
            payload = env.open_request(outer, terminal, self.keys, now, self.window_s)
        except KioskError as e:
            return 401, refused("", Refusal(InfCode.BAD_ENVELOPE, e.message, code=e.code, field=e.field), now)
        except RecursionError:  # decrypts to JSON too deep to read or to verify: not a usable envelope
            return 400, refused("", InputError(f"decrypts to JSON nested more than {MAX_JSON_DEPTH} levels deep",
                                               field="encData"), now)
        msgid = payload.get("msgid", "")
        msgid = msgid if isinstance(msgid, str) else ""
        msg = _Msg(terminal, outer.nonce, outer.ts_ms, now)
        try:
            answer = self._serve(payload, msg, path_infno)
            status = 409 if answer.get("infcode") == InfCode.MSGID_CONFLICT else 200
        except _Replayed as e:
            return 401, refused(msgid, e.refusal, now)
        except Exception as e:  # a fault is still an answer, never a 500
            if not isinstance(e, KioskError):
                log.exception("%s: unexpected fault serving %s", self.service, msgid)
                e = KioskError("internal error; the message was not applied", code="internal")
            elif isinstance(e, StorageError):  # the terminal gets a generic sentence (protocol.refused)
                log.error("%s: database fault serving %s: %s", self.service, msgid, e)
            answer = refused(msgid, e, now)
            status = 200
        try:
            return status, env.seal_response(answer, terminal, self.keys, now)
        except KioskError as e:  # pragma: no cover - our own key failed
            log.error("%s: cannot seal answer: %s", self.service, e)
            return 500, refused(msgid, e, now)

    def _claim_nonce(self, msg: "_Msg") -> None:
        """kiosk.security's ReplayGuard; inside a transaction its nonce row joins that transaction."""
        try:
            self.guard.check(self._nonce_scope(msg), msg.nonce, msg.ts_ms)
        except IntegrityError as e:
            raise self._replayed(e) from None

    def _nonce_scope(self, msg: "_Msg") -> str:
        return f"{self.service}:{msg.terminal.app_id}"

    @staticmethod
    def _replayed(e: IntegrityError) -> "_Replayed":
        code = InfCode.REPLAYED if e.code == "replayed" else InfCode.BAD_ENVELOPE
        # e.message, not str(e): str names kiosk.security's header (X-Kiosk-Nonce); here it is a payload field
        return _Replayed(Refusal(code, e.message, code=e.code, field="nonce" if e.code in ("replayed", "bad_nonce")
                                 else "timestamp"))

    def _claim(self, tx: Transaction, msg: "_Msg", key: str, request_key: dict[str, Any]) -> dict[str, Any] | None:
        """The nonce (anti-replay) and the msgid (exactly-once) claimed together, in one round trip
        on PostgreSQL; returns the stored answer of an earlier identical message, else None."""
        try:
            now_ms = self.guard.fresh(msg.nonce, msg.ts_ms)
        except IntegrityError as e:
            raise self._replayed(e) from None
        scope, ttl = self._nonce_scope(msg), self.guard.ttl_ms
        k_sql, k_params, h = self.idem.claim_statement(key, request_key)
        n_row, k_row = tx.fetch_each([self.nonces.claim_statement(scope, msg.nonce, now_ms, ttl), (k_sql, k_params)])
        if not self.nonces.resolve(tx, n_row, scope, msg.nonce, now_ms, ttl):
            raise self._replayed(self.guard.replayed())
        return self.idem.resolve(tx, key, h, k_row)

    def _serve(self, payload: dict[str, Any], msg: "_Msg", path_infno: str | None) -> dict[str, Any]:
        now = msg.now
        try:
            check_json_shape(payload, "")  # depth and numbers, before any recursive walk of the payload
            req = parse_model(PlatformRequest, payload, prefix="")
            if path_infno is not None and req.infno != path_infno:
                raise InputError(f"is {req.infno!r} but was posted to the route of {path_infno!r}", field="infno")
            if req.fixmedins_code != msg.terminal.fixmedins_code:
                # the institution a message acts for is the one its terminal is registered with, never
                # what the message says; a message that says otherwise is refused, not silently re-labelled
                raise Refusal(InfCode.INVALID_INPUT, "is not the institution this terminal is registered for",
                              code="institution_mismatch", field="fixmedins_code")
            route = self.routes.get(req.infno)
            if route is None:
                raise Refusal(InfCode.UNKNOWN_TRANSACTION, f"unknown transaction {req.infno!r}", field="infno")
            if route.needs_sign_in and self.check_sign_no is not None and not self.check_sign_no(msg.terminal,
                                                                                                  req.sign_no):
                raise Refusal(InfCode.NOT_SIGNED_IN, "sign_no is missing or not issued to this terminal; "
                              "sign in (9001) first", field="sign_no")
        except KioskError as e:  # not stored under the msgid: the same msgid may be retried when fixed
            self._claim_nonce(msg)
            return refused(payload.get("msgid", "") if isinstance(payload.get("msgid"), str) else "", e, now)
        try:
            data = parse_model(route.model, req.input, prefix="input")
        except InputError as e:
            return self._store_refusal(req, msg, e)
        ctx = Ctx(req, msg.terminal, now)
        request_key = {"infno": req.infno, "input": req.input}
        key = f"{msg.terminal.app_id}/{req.msgid}"

        def work(tx: Transaction) -> dict[str, Any]:
            prior = self._claim(tx, msg, key, request_key)
            if prior is not None:
                return prior
            out = route.handler(ctx, tx, data)
            # a handler returns (not raises) a refusal whose side effects must commit (failed-attempt counts)
            answer = refused(req.msgid, out, now) if isinstance(out, KioskError) else ok(req.msgid, out, now)
            self.idem.finish(tx, key, answer, at_commit=True)
            return answer

        try:
            return self.db.run(work)
        except ConflictError as e:
            return self._conflict(req, e, now)
        except (Refusal, InputError, IntegrityError) as e:  # rolled back; the refusal itself is stored
            return self._store_refusal(req, msg, e)

    def _conflict(self, req: PlatformRequest, e: ConflictError, now: datetime) -> dict[str, Any]:
        return refused(req.msgid, Refusal(InfCode.MSGID_CONFLICT, f"msgid {req.msgid} was already used for a "
                                          "different request", code=e.code, field="msgid"), now)

    def _store_refusal(self, req: PlatformRequest, msg: "_Msg", exc: KioskError) -> dict[str, Any]:
        answer = refused(req.msgid, exc, msg.now)
        request_key = {"infno": req.infno, "input": req.input}
        key = f"{msg.terminal.app_id}/{req.msgid}"

        def work(tx: Transaction) -> dict[str, Any]:
            prior = self._claim(tx, msg, key, request_key)
            if prior is not None:
                return prior
            self.idem.finish(tx, key, answer, at_commit=True)
            return answer

        try:
            return self.db.run(work)
        except ConflictError as e:
            return self._conflict(req, e, msg.now)


@dataclass(frozen=True)
class _Msg:
    terminal: Terminal
    nonce: str
    ts_ms: int
    now: datetime


class _Replayed(Exception):
    def __init__(self, refusal: Refusal) -> None:
        super().__init__(str(refusal))
        self.refusal = refusal


def wait_for(url: str, seconds: float = 20.0) -> None:
    """Block until `url` answers (used by the CLI, the load tool and tests)."""
    import httpx

    deadline = time.monotonic() + seconds
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1.0)
            return
        except Exception as e:  # noqa: BLE001 - retry until the deadline
            last = e
            time.sleep(0.1)
    raise StorageError(f"{url} did not answer within {seconds:.0f} s: {last}", code="unavailable")


def dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
