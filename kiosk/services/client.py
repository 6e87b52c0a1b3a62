"""Python clients the kiosk uses for the insurance centre and the bank.

    centre = CentreClient.connect("http://127.0.0.1:8710", app_id=..., app_secret=..., sm2_key=..., fixmedins_code=...)
    centre.sign_in("opter01")
    a = centre.authenticate(centre.seal_face(template, session_id, "auth"), session_id)
    if a.ok: token = a.output["ecToken"]

Every call builds the platform envelope (kiosk.security, with a fresh nonce),
posts it, checks the answer's SM2 signature and that it answers our msgid, and
returns an `Answer` value: refusals (`infcode` != 0) are values the caller
reads. Transport faults raise `RemoteError` with code `unreachable` (nothing was
sent), `timeout` / `connection_lost` (the message may or may not have been
applied: retry with the SAME msgid, or reverse it) or `bad_answer`.
`uncertain` on the exception says which.
"""
from __future__ import annotations

import base64
import json
import threading
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx
import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

from kiosk.clock import Clock, SystemClock
from kiosk.errors import KioskError, RemoteError
from kiosk.security.seal import SealContext, seal
from kiosk.security.sm import Sm2PrivateKey, Sm2PublicKey
from kiosk.services import envelope as env
from kiosk.services.protocol import Answer, MsgidSequence, platform_time
from kiosk.services.transport import JsonTransport, StaleConnection, TransportError, dumps_compact

CENTRE_URL = "http://127.0.0.1:8710"
BANK_URL = "http://127.0.0.1:8720"


class RemoteRefusal(RemoteError):
    """A refusal turned into an exception by `Answer.raise_for_refusal`-style callers."""

    def __init__(self, answer: Answer) -> None:
        super().__init__(answer.err_msg or "refused", code=answer.err_code or f"infcode_{answer.infcode}")
        self.answer = answer
        self.infcode = answer.infcode


def _remote(message: str, code: str, uncertain: bool) -> RemoteError:
    e = RemoteError(message, code=code)
    e.uncertain = uncertain  # type: ignore[attr-defined]
    return e


class RawAnswer:
    """An HTTP answer from the lean transport; reads like the parts of `httpx.Response` `read_answer` uses."""

    __slots__ = ("status_code", "content")

    def __init__(self, status_code: int, content: bytes) -> None:
        self.status_code = status_code
        self.content = content

    def json(self) -> Any:
        return json.loads(self.content)


@dataclass
class ServiceIdentity:
    """What a terminal holds for one service."""

    app_id: str
    app_secret: str
    sm2_key: Sm2PrivateKey
    fixmedins_code: str
    service_sm2_public: str = ""  # hex; fetched from /keys when empty
    service_x25519: str = ""
    service_kid: str = ""


class _Client:
    service = "service"

    def __init__(self, base_url: str, ident: ServiceIdentity, *, clock: Clock | None = None, timeout: float = 10.0,
                 http: httpx.Client | None = None, window_s: int = 300, opter: str = "kiosk",
                 mdtrtarea_admvs: str = "") -> None:
        self.base_url = base_url.rstrip("/")
        self.ident = ident
        self.clock = clock or SystemClock()
        self.timeout = timeout
        # An injected httpx client (tests pass TestClient(app)) is used exactly as before; otherwise
        # messages go through the lean keep-alive transport (about a third of httpx's CPU per request).
        self._http = http
        self._transport = None if http is not None else JsonTransport(self.base_url, timeout)
        self.window_s = window_s
        self.opter = opter
        self.mdtrtarea_admvs = mdtrtarea_admvs
        self.sign_no = ""
        self._lock = threading.Lock()
        self._pub: Sm2PublicKey | None = None
        self._msgids = MsgidSequence(ident.fixmedins_code)

    @property
    def http(self) -> httpx.Client:
        """The injected httpx client, or one made on first use for ad-hoc requests (e.g. /openapi.json)."""
        if self._http is None:
            self._http = httpx.Client(base_url=self.base_url, timeout=self.timeout)
        return self._http

    # -- keys ----------------------------------------------------------------------------------
    def service_keys(self) -> dict[str, str]:
        if not self.ident.service_sm2_public or not self.ident.service_x25519:
            try:
                if self._transport is not None:
                    status, content = self._transport.get_json("/keys")
                    if status >= 400:
                        raise ValueError(f"HTTP {status}")
                    keys = json.loads(content)
                else:
                    r = self.http.get("/keys")
                    r.raise_for_status()
                    keys = r.json()
            except (httpx.HTTPError, TransportError, ValueError) as e:
                raise _remote(f"{self.service}: cannot fetch its public keys: {e}", "unreachable", False) from None
            self.ident.service_sm2_public = keys["sm2"]
            self.ident.service_x25519 = keys["x25519"]
            self.ident.service_kid = keys["kid"]
        return {"sm2": self.ident.service_sm2_public, "x25519": self.ident.service_x25519,
                "kid": self.ident.service_kid}

    def _service_public(self) -> Sm2PublicKey:
        if self._pub is None:
            self._pub = env.public_key(self.service_keys()["sm2"])
        return self._pub

    # -- one message -----------------------------------------------------------------------------
    def new_msgid(self) -> str:
        return self._msgids.next(self.clock.now())

    def request(self, infno: str, data: dict[str, Any], msgid: str | None = None) -> dict[str, Any]:
        now = self.clock.now()
        return {
            "infno": infno, "msgid": msgid or self.new_msgid(), "mdtrtarea_admvs": self.mdtrtarea_admvs,
            "insuplc_admdvs": "", "recer_sys_code": "KIOSK", "dev_no": self.ident.app_id, "signtype": "SM2",
            "infver": "V1.0", "opter_type": "1", "opter": self.opter, "opter_name": self.opter,
            "inf_time": platform_time(now), "fixmedins_code": self.ident.fixmedins_code,
            "fixmedins_name": "", "sign_no": self.sign_no, "input": data,
        }

    def post_envelope(self, infno: str, envelope: dict[str, Any]) -> httpx.Response | RawAnswer:
        if self._transport is not None:
            try:
                status, content = self._transport.post_json(f"/fsi/api/{infno}", dumps_compact(envelope),
                                                            resend=False)
            except TransportError as e:
                what = {"unreachable": "unreachable", "timeout": "did not answer in time"}.get(e.code, "connection lost")
                err = _remote(f"{self.service} {what}: {e}", e.code, e.uncertain)
                err.stale = isinstance(e, StaleConnection)  # type: ignore[attr-defined]
                raise err from None
            return RawAnswer(status, content)
        try:
            return self.http.post(f"/fsi/api/{infno}", json=envelope)
        except httpx.ConnectError as e:
            raise _remote(f"{self.service} unreachable: {e}", "unreachable", False) from None
        except httpx.TimeoutException as e:
            raise _remote(f"{self.service} did not answer in time: {e}", "timeout", True) from None
        except httpx.HTTPError as e:
            raise _remote(f"{self.service} connection lost: {e}", "connection_lost", True) from None

    def call(self, infno: str, data: dict[str, Any], msgid: str | None = None) -> Answer:
        """Send one message; same `msgid` for a retry of the same message."""
        req = self.request(infno, data, msgid)
        try:
            r = self.post_envelope(infno, self._envelope(req))
        except RemoteError as e:
            if not getattr(e, "stale", False):
                raise
            # A kept-alive connection the service had closed while idle (uvicorn: after 5 s) failed before
            # any byte of the answer came back. Send once more on a fresh connection - a NEW envelope (fresh
            # nonce: the same bytes would be refused as replayed) with the SAME msgid, so a message that did
            # arrive gets its first answer from the services' msgid store, never a second effect.
            try:
                r = self.post_envelope(infno, self._envelope(req))
            except RemoteError as e2:
                if e2.code == "unreachable":  # the first send may have landed: not "nothing was sent"
                    raise _remote(f"{self.service} connection lost, then {e2}", "connection_lost", True) from None
                raise
        return self.read_answer(r, req["msgid"])

    def _envelope(self, req: dict[str, Any]) -> dict[str, Any]:
        return env.client_envelope(req, app_id=self.ident.app_id, app_secret=self.ident.app_secret,
                                   sm2_key=self.ident.sm2_key, now=self.clock.now())

    def read_answer(self, r: httpx.Response | RawAnswer, msgid: str) -> Answer:
        try:
            body = r.json()
        except ValueError:
            raise _remote(f"{self.service} answered HTTP {r.status_code} without JSON", "bad_answer", True) from None
        if not isinstance(body, dict):
            raise _remote(f"{self.service} answered a non-object", "bad_answer", True)
        if "encData" in body:
            try:
                body = env.client_open(body, app_id=self.ident.app_id, app_secret=self.ident.app_secret,
                                       service_public=self._service_public(), now=self.clock.now(),
                                       window_s=self.window_s)
            except KioskError as e:
                raise _remote(f"{self.service} answer failed its check: {e}", "bad_answer", True) from None
            ref = body.get("inf_refmsgid", "")
            if ref and ref != msgid:
                raise _remote(f"{self.service} answered message {ref}, not {msgid}", "bad_answer", True)
        infcode = body.get("infcode")
        if not isinstance(infcode, int):
            raise _remote(f"{self.service} answer has no infcode", "bad_answer", True)
        return Answer(infcode=infcode, err_code=str(body.get("err_code", "")), err_msg=str(body.get("err_msg", "")),
                      output=body.get("output") or {}, msgid=msgid)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
        if self._http is not None:
            self._http.close()


class CentreClient(_Client):
    service = "insurance centre"

    def sign_in(self, opter_no: str = "kiosk", mac: str = "", ip: str = "") -> str:
        a = self.call("9001", {"signIn": {"opter_no": opter_no, "mac": mac, "ip": ip}})
        if not a.ok:
            raise RemoteRefusal(a)
        self.sign_no = a.output["signinoutb"]["sign_no"]
        return self.sign_no

    def seal_face(self, template: np.ndarray, session_id: str, purpose: str) -> str:
        """Seal a template to the centre, bound to this terminal, the session and the purpose."""
        keys = self.service_keys()
        pub = X25519PublicKey.from_public_bytes(bytes.fromhex(keys["x25519"]))
        raw = np.asarray(template, "<f4").reshape(-1).tobytes()
        return base64.b64encode(seal(raw, pub, keys["kid"], SealContext(self.ident.app_id, session_id, purpose))
                                ).decode("ascii")

    def activate(self, face_seal: str, certno: str, session_id: str, msgid: str | None = None) -> Answer:
        return self.call("ec.activate", {"data": {"certno": certno, "face_seal": face_seal,
                                                  "session_id": session_id}}, msgid)

    def authenticate(self, face_seal: str, session_id: str, *, psn_no: str = "", phone_last4: str = "",
                     msgid: str | None = None) -> Answer:
        return self.call("ec.auth", {"data": {"face_seal": face_seal, "session_id": session_id, "psn_no": psn_no,
                                              "phone_last4": phone_last4}}, msgid)

    def person_info(self, ec_token: str = "", certno: str = "", msgid: str | None = None) -> Answer:
        d = {"mdtrt_cert_type": "01", "mdtrt_cert_no": ec_token} if ec_token else \
            {"mdtrt_cert_type": "02", "mdtrt_cert_no": certno}
        return self.call("1101", {"data": d}, msgid)

    @staticmethod
    def settle_input(head: dict[str, Any], lines: list[dict[str, Any]], pharmacy: bool) -> dict[str, Any]:
        if pharmacy:
            return {"druginfo": head, "drugdetail": lines}
        return {"data": {**head, "feedetail": lines}}

    def presettle(self, head: dict[str, Any], lines: list[dict[str, Any]], *, pharmacy: bool = False,
                  msgid: str | None = None) -> Answer:
        return self.call("2101" if pharmacy else "2206", self.settle_input(head, lines, pharmacy), msgid)

    def settle(self, head: dict[str, Any], lines: list[dict[str, Any]], *, pharmacy: bool = False,
               msgid: str | None = None) -> Answer:
        """Commit a settlement. Keep `msgid` in the journal BEFORE calling: it is how a lost answer is resolved."""
        return self.call("2102" if pharmacy else "2207", self.settle_input(head, lines, pharmacy), msgid)

    def reverse(self, setl_id: str, psn_no: str, *, pharmacy: bool = False, msgid: str | None = None) -> Answer:
        return self.call("2103" if pharmacy else "2208", {"data": {"setl_id": setl_id, "psn_no": psn_no}}, msgid)

    def reverse_message(self, psn_no: str, omsgid: str, oinfno: str = "2207", msgid: str | None = None) -> Answer:
        """2601: undo message `omsgid` whether or not it was applied; a late arrival is then refused."""
        return self.call("2601", {"data": {"psn_no": psn_no, "omsgid": omsgid, "oinfno": oinfno}}, msgid)

    def pay_auth(self, psn_no: str, ec_token: str, amount: str, ref: str, purpose: str = "hold",
                 msgid: str | None = None) -> Answer:
        """ec.payauth: the centre's signed authorisation of a payment with no settlement (a deposit hold)."""
        return self.call("ec.payauth", {"data": {"psn_no": psn_no, "mdtrt_cert_type": "01", "mdtrt_cert_no": ec_token,
                                                 "purpose": purpose, "amount": amount, "ref": ref}}, msgid)

    def query(self, psn_no: str, *, setl_id: str = "", omsgid: str = "") -> Answer:
        return self.call("5203", {"data": {"psn_no": psn_no, "setl_id": setl_id, "omsgid": omsgid}})

    def catalogue_page(self, page_num: int = 1, page_size: int = 1000) -> Answer:
        """1312: one page of the centre's catalogue (hilist_code, hilist_name, chrgitm_lv)."""
        return self.call("1312", {"data": {"page_num": page_num, "page_size": page_size}})

    def open_visit(self, psn_no: str, ec_token: str, insutype: str = "310", *, begntime: str = "",
                   msgid: str | None = None) -> Answer:
        """2201: the patient's face (ecToken at this terminal) opens an outpatient visit; the answer's
        `visit_token` (with `mdtrt_id`) settles the visit's charges (2206/2207) until `exp`, the end of the
        Asia/Shanghai day, or until 2202 closes it."""
        return self.call("2201", {"data": {"psn_no": psn_no, "insutype": insutype, "med_type": "11",
                                           "mdtrt_cert_type": "01", "mdtrt_cert_no": ec_token,
                                           "begntime": begntime}}, msgid)

    def close_visit(self, psn_no: str, mdtrt_id: str, msgid: str | None = None) -> Answer:
        """2202: close the visit (this terminal opened it); its token settles nothing more."""
        return self.call("2202", {"data": {"psn_no": psn_no, "mdtrt_id": mdtrt_id}}, msgid)

    def notify(self, notice: dict[str, Any], msgid: str | None = None) -> Answer:
        """ec.notify: {notice_id, psn_no, setl_id, mdtrt_id, kind senseless_charge|visit_summary, medfee_sumamt,
        fund_pay_sumamt, acct_pay, psn_cash_pay, text} into the person's insurance-app inbox."""
        return self.call("ec.notify", {"data": notice}, msgid)

    def mulaid_revoke(self, psn_no: str, auth_psn_no: str, ec_token: str, msgid: str | None = None) -> Answer:
        """Withdraw a mutual-aid authorisation: `ec_token` is the patient's or the relative's."""
        return self.call("mulaid.revoke", {"data": {"psn_no": psn_no, "auth_psn_no": auth_psn_no,
                                                    "mdtrt_cert_type": "01", "mdtrt_cert_no": ec_token}}, msgid)

    def mulaid_authorise(self, psn_no: str, auth_psn_no: str, auth_certno: str, relation: str,
                         msgid: str | None = None, *, ec_token: str = "") -> Answer:
        """`ec_token`: the patient's (face at this terminal); `auth_certno` typed by the relative as consent."""
        return self.call("mulaid.auth", {"data": {"psn_no": psn_no, "mdtrt_cert_type": "01", "mdtrt_cert_no": ec_token,
                                                  "auth_psn_no": auth_psn_no,
                                                  "auth_certno": auth_certno, "relation": relation}}, msgid)


class BankClient(_Client):
    service = "bank"

    def apply(self, holder: str, birth_date: str, insured_years: int, msgid: str | None = None, *,
              pay_auth: str = "") -> Answer:
        """Open a line: `pay_auth` is the applicant's (ec.payauth purpose apply), whose ref and amount are
        the birth date and years insured to send."""
        return self.call("credit.apply", _with_auth({"holder": holder, "birth_date": birth_date,
                                                     "insured_years": insured_years}, pay_auth), msgid)

    def bind(self, holder: str, member: str, relation: str, consent: bool, monthly_cap: str | None = None,
             msgid: str | None = None, *, pay_auth: str = "") -> Answer:
        """Lend the holder's line to `member`: `pay_auth` is the holder's (centre ec.payauth, purpose bind,
        ref = member, amount = monthly_cap or 0.00)."""
        return self.call("credit.bind", _with_auth({"holder": holder, "member": member, "relation": relation,
                                                    "consent": consent, "monthly_cap": monthly_cap}, pay_auth), msgid)

    def unbind(self, holder: str, member: str, msgid: str | None = None, *, pay_auth: str = "") -> Answer:
        return self.call("credit.unbind", _with_auth({"holder": holder, "member": member}, pay_auth), msgid)

    def line(self, payer: str, amount: str, *, pay_auth: str = "") -> Answer:
        """Which line pays `amount` for the face-proved payer (ec.payauth purpose line, this amount)."""
        return self.call("credit.line", _with_auth({"payer": payer, "amount": amount}, pay_auth))

    def draw(self, payer: str, amount: str, ref: str, key: str, msgid: str | None = None, *,
             pay_auth: str = "", mandate_id: str = "", visit: str = "") -> Answer:
        """Charge `amount` (yuan) to the line `payer` may use; `ref` is the settlement's setl_id, `key` the
        idempotency key (same key + same draw = the first answer, never a second charge), `pay_auth` the
        centre's authorisation from the settlement's answer (the bank refuses a draw without one). A visit's
        charge without the patient (pay_auth purpose senseless) also names `mandate_id` and `visit` (mdtrt_id)."""
        data = {"payer": payer, "amount": amount, "ref": ref, "key": key}
        if mandate_id or visit:
            data.update(mandate_id=mandate_id, visit=visit)
        return self.call("credit.draw", _with_auth(data, pay_auth), msgid)

    def mandate(self, payer: str, key: str, pay_auth: str, msgid: str | None = None) -> Answer:
        """Record the payer's standing authorisation (pay_auth purpose mandate from ec.payauth; its ref holds
        the terms): mandate_id, per_visit, per_day, until, lines, holders."""
        return self.call("credit.mandate", {"payer": payer, "key": key, "pay_auth": pay_auth}, msgid)

    def mandate_revoke(self, mandate_id: str, key: str, msgid: str | None = None, *, pay_auth: str = "") -> Answer:
        """End a mandate: as its institution (no pay_auth), or with the payer's word (purpose mandate_revoke)."""
        return self.call("credit.mandate_revoke", _with_auth({"mandate_id": mandate_id, "key": key}, pay_auth), msgid)

    def mandate_get(self, mandate_id: str, visit: str = "") -> Answer:
        """The institution's own mandate: state, caps, used_today (and used_visit for `visit`)."""
        return self.call("credit.mandate_get", {"mandate_id": mandate_id, **({"visit": visit} if visit else {})})

    def reverse_draw(self, key: str, payer: str, msgid: str | None = None, *, ref: str = "") -> Answer:
        """Undo the draw made with `key` (a full refund); a draw with that key arriving later is refused.
        With `ref` (the setl_id the draw was for), a key that drew for another ref is left alone."""
        return self.call("credit.draw_reverse", {"key": key, "payer": payer, **({"ref": ref} if ref else {})}, msgid)

    def hold(self, payer: str, amount: str, ref: str, key: str, msgid: str | None = None, *,
             pay_auth: str = "") -> Answer:
        """Hold a deposit; `pay_auth` from the centre's ec.payauth (purpose hold, same ref and amount)."""
        return self.call("credit.hold", _with_auth({"payer": payer, "amount": amount, "ref": ref, "key": key},
                                                   pay_auth), msgid)

    def capture(self, ref: str, amount: str, key: str, msgid: str | None = None) -> Answer:
        return self.call("credit.capture", {"ref": ref, "amount": amount, "key": key}, msgid)

    def release(self, ref: str, key: str, msgid: str | None = None) -> Answer:
        return self.call("credit.release", {"ref": ref, "key": key}, msgid)

    def repay(self, holder: str, amount: str, key: str, msgid: str | None = None, *, pay_auth: str = "") -> Answer:
        return self.call("credit.repay", _with_auth({"holder": holder, "amount": amount, "key": key}, pay_auth),
                         msgid)

    def refund(self, ref: str, amount: str, key: str, msgid: str | None = None) -> Answer:
        return self.call("credit.refund", {"ref": ref, "amount": amount, "key": key}, msgid)

    def statement(self, holder: str, *, pay_auth: str = "") -> Answer:
        return self.call("credit.statement", _with_auth({"holder": holder}, pay_auth))



def _with_auth(data: dict[str, Any], pay_auth: str) -> dict[str, Any]:
    return {**data, "pay_auth": pay_auth} if pay_auth else data


def operator_call(base_url: str, admin_token: str, act: str, body: dict[str, Any], *,
                  http: httpx.Client | None = None, timeout: float = 10.0) -> dict[str, Any]:
    """The bank's own channel (`POST /admin/<act>`, operator token): apply, bind, unbind, line, repay,
    statement for a person the bank authenticated itself. Returns the answer (infcode, output, ...)."""
    try:
        if http is not None:
            r = http.post(f"/admin/{act}", json=body, headers={"x-admin-token": admin_token})
        else:
            r = httpx.post(f"{base_url.rstrip('/')}/admin/{act}", json=body, headers={"x-admin-token": admin_token},
                           timeout=timeout)
        out = r.json()
    except (httpx.HTTPError, ValueError) as e:
        raise _remote(f"cannot reach the bank at {base_url}: {e}", "unreachable", True) from None
    return dict(out)


def operator_bind(base_url: str, admin_token: str, holder: str, member: str, relation: str, consent: bool,
                  monthly_cap: str | None, key: str, *, http: httpx.Client | None = None,
                  timeout: float = 10.0) -> dict[str, Any]:
    """The bank's own channel: record a family binding the holder made there (operator token)."""
    body = {"holder": holder, "member": member, "relation": relation, "consent": consent,
            "monthly_cap": monthly_cap, "key": key}
    return operator_call(base_url, admin_token, "bind", body, http=http, timeout=timeout)


def drain_notifications(base_url: str, admin_token: str, limit: int = 100, *,
                        http: httpx.Client | None = None, timeout: float = 10.0) -> list[dict[str, Any]]:
    """Operator's sender: take queued holder notifications (member draws, due soon, overdue)
    from the bank; they are marked sent."""
    try:
        if http is not None:
            r = http.post("/admin/notifications", params={"limit": limit}, headers={"x-admin-token": admin_token})
        else:
            r = httpx.post(f"{base_url.rstrip('/')}/admin/notifications", params={"limit": limit},
                           headers={"x-admin-token": admin_token}, timeout=timeout)
        body = r.json()
    except (httpx.HTTPError, ValueError) as e:
        raise _remote(f"cannot reach the bank at {base_url}: {e}", "unreachable", True) from None
    if body.get("infcode") != 0:
        raise RemoteError(f"notifications refused: {body.get('err_msg')}", code=str(body.get("err_code", "refused")))
    return list(body["output"]["messages"])


def register_terminal(base_url: str, admin_token: str, app_id: str, sm2_public_hex: str, fixmedins_code: str,
                      *, app_secret: str = "", timeout: float = 10.0) -> dict[str, Any]:
    """Operator step: register a terminal's SM2 public key; returns app_secret and the service's keys."""
    try:
        r = httpx.post(f"{base_url.rstrip('/')}/admin/terminals", headers={"x-admin-token": admin_token},
                       json={"app_id": app_id, "sm2_public": sm2_public_hex, "fixmedins_code": fixmedins_code,
                             "app_secret": app_secret}, timeout=timeout)
        body = r.json()
    except (httpx.HTTPError, ValueError) as e:
        raise _remote(f"cannot register terminal at {base_url}: {e}", "unreachable", False) from None
    if body.get("infcode") != 0:
        raise RemoteError(f"registration refused: {body.get('err_msg')}", code=str(body.get("err_code", "refused")))
    return body["output"]


def _now(clock: Clock) -> datetime:
    return clock.now()
