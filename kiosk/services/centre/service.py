"""The insurance centre's transactions: identity, activation, settlement, reversal.

Each handler runs inside the gateway's transaction (msgid claim + work + stored
answer commit together). The arithmetic is kiosk.settlement's engine; this
module only finds the inputs (catalogue, profile, level, balances, year-to-date
accumulators) and commits the result: account debits as journal rows, the
accumulators, the settlement record.

Locking: a settlement, reversal or message reversal first locks the person rows
it touches (patient and mutual-aid relative, in psn_no order), so a 2601 and a
late 2207 of the same message serialise, and two counters cannot spend one
account twice.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

import numpy as np

from kiosk.clock import SHANGHAI, local_day
from kiosk.errors import InputError, IntegrityError, KioskError, StorageError
from kiosk.money import fen_to_yuan, round_fen, yuan_to_fen
from kiosk.security.seal import SealContext
from kiosk.services import payauth
from kiosk.services.centre import dayend, models as m
from kiosk.services.envelope import ServiceKeys
from kiosk.services.gateway import Ctx, Route, Terminal
from kiosk.services.protocol import InfCode, Refusal
from kiosk.settlement.bill import Bill, Category, Item, Ytd
from kiosk.settlement.engine import Settlement, reverse, settle
from kiosk.settlement.profiles import Profile, get_profile
from kiosk.storage import Database, Transaction
from kiosk.services.centre.matching import Matcher, RegionGalleries
from kiosk.vision.match import DIM, MatchRule

TOKEN_TTL = timedelta(minutes=15)
PAY_AUTH_TTL = timedelta(minutes=10)  # a settlement's cash share is drawn seconds later; 5203 re-issues it
RETURN_WINDOW = timedelta(days=30)  # KIOSK_CENTRE_RETURN_WINDOW_DAYS (kiosk.config)
MAX_FAILED_ACTIVATIONS = 3
LOCK_FOR = timedelta(minutes=30)
TEMPLATE_PURPOSE = "enrolled-face-template"
CACHE_TTL_S = 30.0

FUND_TYPE = {"310": "310100", "390": "390100"}  # pooling fund paying for each insurance type
ACCOUNT_FUND_TYPE = "310200"


def qmsgid(ctx: Ctx, msgid: str) -> str:
    """A msgid is unique per sending terminal: stored qualified by its appId."""
    return f"{ctx.terminal.app_id}/{msgid}"


def _cat(chrgitm: str) -> Category:
    return Category(chrgitm)


@dataclass(frozen=True)
class Person:
    psn_no: str
    psn_name: str
    certno: str
    gend: str
    brdy: str
    insutype: str
    psn_type: str
    admdvs: str
    insu_date: str
    phone_last4: str
    conditions: str
    balc: int
    template_seal: str | None
    activated: bool
    fail_count: int
    locked_until: str | None


@dataclass(frozen=True)
class _Original:
    """What a return's re-settlement keeps of the settlement returned (CentreService._return_authority)."""

    by_face: bool           # an ecToken proves the patient now (else the original alone is the authority)
    profile: str            # the policy profile it was settled under (its med_type)
    mulaid_psn: str | None  # the relative whose account it used
    cash: int               # its cash share (fen): what the patient authorised to be drawn
    visit: str | None       # a charge of a visit (its cash authorised `senseless`): that mdtrt_id


_PERSON_COLS = ("psn_no, psn_name, certno, gend, brdy, insutype, psn_type, admdvs, insu_date, phone_last4, "
                "conditions, balc, template_seal, activated, fail_count, locked_until")


def _person(row: tuple[Any, ...] | None) -> Person | None:
    if row is None:
        return None
    r = list(row)
    r[13] = bool(r[13])
    return Person(*r)


_AUTH_PREFIX = {"hold": "PH", "bind": "PB", "line": "PL", "apply": "PA", "unbind": "PU", "statement": "PS",
                "repay": "PR", "mandate": "PAM", "mandate_revoke": "PMR"}
VISIT_AUTH_PREFIX = "PV"  # a senseless draw's authorisation: "PV" + setl_id (a counter draw's is "PD" + setl_id)


def end_of_day(now: datetime) -> int:
    """Unix seconds of the last second of `now`'s Asia/Shanghai day: a visit's token lasts until then."""
    d = now.astimezone(SHANGHAI).date()
    return int((datetime(d.year, d.month, d.day, tzinfo=SHANGHAI) + timedelta(days=1)).timestamp()) - 1


def _years_insured(insu_date: str, now: datetime) -> int:
    """Full years from the insurance start date (registry, yyyy-mm-dd) to today in Shanghai."""
    try:
        start = date.fromisoformat(str(insu_date)[:10])
    except ValueError:
        return 0
    today = now.astimezone(SHANGHAI).date()
    return max(0, today.year - start.year - ((today.month, today.day) < (start.month, start.day)))


def seal_template(keys: ServiceKeys, psn_no: str, vec: np.ndarray) -> str:
    v = np.asarray(vec, np.float32).reshape(-1)
    if v.shape[0] != DIM or not np.all(np.isfinite(v)):
        raise InputError(f"template must be {DIM} finite values", field="template")
    blob = keys.seal_at_rest(v.tobytes(), purpose=TEMPLATE_PURPOSE, record_id=psn_no)
    return base64.b64encode(blob).decode("ascii")


def open_template(keys: ServiceKeys, psn_no: str, sealed: str) -> np.ndarray:
    raw = keys.open_at_rest(base64.b64decode(sealed), purpose=TEMPLATE_PURPOSE, record_id=psn_no)
    return np.frombuffer(raw, np.float32).copy()


def template_from_bytes(raw: bytes, field: str) -> np.ndarray:
    if len(raw) != DIM * 4:
        raise InputError(f"sealed face data must hold {DIM} float32 values", field=field)
    v = np.frombuffer(raw, "<f4").astype(np.float32)
    n = float(np.linalg.norm(v))
    if not np.all(np.isfinite(v)) or n < 1e-6:
        raise InputError("face template is not a usable vector", field=field)
    return v / n


class CentreService:
    def __init__(self, db: Database, keys: ServiceKeys, rule: MatchRule, *,
                 return_window: timedelta = RETURN_WINDOW) -> None:
        self.db = db
        self.return_window = return_window  # a settlement may be returned (re-settled in part) this long
        self.keys = keys
        self.rule = rule
        self.matcher = Matcher(rule)
        self.galleries = RegionGalleries(lambda psn, sealed: open_template(keys, psn, sealed),
                                         rule.cohort.min_cohort if rule.cohort else None)
        self._mac = keys.mac_key()
        self._cache: dict[str, tuple[float, Any]] = {}
        self._cache_lock = threading.Lock()

    # ---- stateless tokens (any worker checks them) --------------------------------------------
    def _sig(self, text: str) -> str:
        return hmac.new(self._mac, text.encode(), hashlib.sha256).hexdigest()[:24]

    def issue_sign_no(self, terminal: Terminal, now: datetime) -> str:
        head = now.astimezone(SHANGHAI).strftime("%Y%m%d") + secrets.token_hex(6)
        return head + self._sig(f"sign|{terminal.app_id}|{head}")

    def check_sign_no(self, terminal: Terminal, sign_no: str) -> bool:
        if len(sign_no) != 20 + 24:
            return False
        return hmac.compare_digest(sign_no[20:], self._sig(f"sign|{terminal.app_id}|{sign_no[:20]}"))

    def issue_token(self, terminal: Terminal, psn_no: str, now: datetime) -> str:
        exp = int((now + TOKEN_TTL).timestamp())
        body = f"{psn_no}.{exp}"
        return f"EC.{body}.{self._sig(f'ec|{terminal.app_id}|{body}')}"

    def token_psn(self, terminal: Terminal, token: str, now: datetime, field: str) -> str:
        parts = token.split(".")
        if len(parts) != 4 or parts[0] != "EC" or not parts[2].isdigit():
            raise Refusal(InfCode.INVALID_INPUT, "is not an e-voucher token from face authentication", field=field)
        body = f"{parts[1]}.{parts[2]}"
        if not hmac.compare_digest(parts[3], self._sig(f"ec|{terminal.app_id}|{body}")):
            raise Refusal(InfCode.IDENTITY_MISMATCH, "e-voucher token was not issued to this terminal", field=field)
        if int(parts[2]) < now.timestamp():
            raise Refusal(InfCode.IDENTITY_MISMATCH, "e-voucher token has expired; authenticate the face again",
                          code="token_expired", field=field)
        return parts[1]

    def issue_visit_token(self, terminal: Terminal, psn_no: str, mdtrt_id: str, exp: int) -> str:
        body = f"{psn_no}.{mdtrt_id}.{exp}"
        return f"VT.{body}.{self._sig(f'vt|{terminal.app_id}|{body}')}"

    def _visit_of(self, ctx: Ctx, tx: Transaction, head: m._SettleHead, *, lock: bool) -> str:
        """The open visit a visit_token proves (2206/2207 without a fresh face): issued to this terminal,
        for this person and this mdtrt_id, before the end of its day, the visit still open. One refusal,
        `face_auth_required`, for anything that is not such a token (another terminal's, forged, another
        person's or visit's), so nothing is learnt about other visits; `visit_expired` and `visit_closed`
        only for this terminal's own genuine token. Returns the mdtrt_id."""
        field = "input.mdtrt_cert_no"
        refused = Refusal(InfCode.IDENTITY_MISMATCH, "this terminal's face authentication (ecToken) or its own "
                          "open visit's token is required", code="face_auth_required", field=field)
        parts = head.mdtrt_cert_no.split(".")
        if (ctx.request.infno not in ("2206", "2207") or len(parts) != 5 or parts[0] != "VT"
                or not parts[3].isdigit()):
            raise refused
        body = ".".join(parts[1:4])
        if not hmac.compare_digest(parts[4], self._sig(f"vt|{ctx.terminal.app_id}|{body}")):
            raise refused
        psn_no, mdtrt_id, exp = parts[1], parts[2], int(parts[3])
        if psn_no != head.psn_no or mdtrt_id != head.mdtrt_id:
            raise refused
        if exp < int(ctx.now.timestamp()):
            raise Refusal(InfCode.IDENTITY_MISMATCH, "the visit ended with its day; the patient's face is needed",
                          code="visit_expired", field=field)
        row = tx.fetch_one("SELECT psn_no, fixmedins_code, app_id, state FROM centre_visits WHERE mdtrt_id = ?"
                           + (tx.for_update if lock else ""), (mdtrt_id,))  # vs a 2202 in flight
        if row is None or (row[0], row[1], row[2]) != (psn_no, ctx.terminal.fixmedins_code, ctx.terminal.app_id):
            raise refused
        if row[3] != "open":
            raise Refusal(InfCode.IDENTITY_MISMATCH, "the visit is closed; the patient's face is needed",
                          code="visit_closed", field=field)
        return mdtrt_id

    def _settle_proof(self, ctx: Ctx, tx: Transaction, head: m._SettleHead, commit: bool) -> str | None:
        """Who proved the patient for a settlement: this terminal's ecToken (None), or the visit_token of the
        patient's open visit here (its mdtrt_id: a charge of the visit without the patient, 2206/2207 only)."""
        if head.mdtrt_cert_type != "01":
            return None
        if head.mdtrt_cert_no.startswith("VT."):
            return self._visit_of(ctx, tx, head, lock=commit)
        who = self.token_psn(ctx.terminal, head.mdtrt_cert_no, ctx.now, "input.mdtrt_cert_no")
        if who != head.psn_no:
            raise Refusal(InfCode.IDENTITY_MISMATCH, "the e-voucher token belongs to another person",
                          field="input.mdtrt_cert_no")
        return None

    def _cash_auth(self, ctx: Ctx, tx: Transaction, setl_id: str, psn_no: str, cash: int, visit: str | None,
                   orig_setl_id: str | None = None) -> str:
        """The cash share's pay_auth: `draw` when the face proved the payer now; `senseless` (ref =
        setl_id/mdtrt_id) for a charge of an open visit, which the bank draws only under the payer's mandate.
        A return's re-settlement links its id to the settlement it replaces (payauth.return_auth_id): the bank
        draws it only once that one's draw is refunded in full."""
        def aid(base: str) -> str:
            return payauth.return_auth_id(base, orig_setl_id) if orig_setl_id else base
        if visit is None:
            return self._pay_auth(ctx, tx, aid("PD" + setl_id), psn_no, setl_id, cash, "draw")[0]
        return self._pay_auth(ctx, tx, aid(VISIT_AUTH_PREFIX + setl_id), psn_no,
                              payauth.senseless_ref(setl_id, visit), cash, "senseless")[0]

    # ---- pay_auth: the signed word the bank charges a line on (kiosk.services.payauth) ---------------
    def _pay_auth(self, ctx: Ctx, tx: Transaction, auth_id: str, psn_no: str, ref: str, amount: int,
                  purpose: str, *, app_id: str | None = None, record: bool = True) -> tuple[str, int]:
        """Sign a pay_auth for this terminal and institution (recorded once per auth id); (token, exp)."""
        exp = int((ctx.now + PAY_AUTH_TTL).timestamp())
        auth = payauth.PayAuth(id=auth_id, psn_no=psn_no, fixmedins_code=ctx.terminal.fixmedins_code,
                               app_id=app_id or ctx.terminal.app_id, ref=ref, amount=amount, purpose=purpose,
                               exp=exp, kid=self.keys.store.current_kid)
        if record:
            tx.execute_at_commit(
                "INSERT INTO centre_pay_auths (auth_id, purpose, ref, psn_no, amount, fixmedins_code, app_id, "
                "issued_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (auth_id) DO NOTHING",
                (auth_id, purpose, ref, psn_no, amount, auth.fixmedins_code, auth.app_id, ctx.now.isoformat()))
        return payauth.sign(auth, self.keys.sm2), exp

    def request_pay_auth(self, ctx: Ctx, tx: Transaction, data: m.PayAuthRequest) -> dict[str, Any]:
        """ec.payauth: an act on a person's credit line that no settlement carries (a deposit hold, a family
        binding, a line query, opening a line, a statement, a repayment); the person's ecToken (face
        authentication at this terminal) is the proof. For `apply` the centre itself writes what the bank
        decides on (birth date, full years insured), so no terminal can claim a younger or longer-insured
        applicant."""
        d = data.data
        who = self.token_psn(ctx.terminal, d.mdtrt_cert_no, ctx.now, "input.data.mdtrt_cert_no")
        if who != d.psn_no:
            raise Refusal(InfCode.IDENTITY_MISMATCH, "the e-voucher token belongs to another person",
                          field="input.data.mdtrt_cert_no")
        p = self.person(tx, d.psn_no, field="input.data.psn_no")
        amount = yuan_to_fen(d.amount, "input.data.amount")
        ref = d.ref
        if d.purpose == "hold" and payauth.is_settlement_id(d.ref):
            raise Refusal(InfCode.INVALID_INPUT, "must be the admission's reference, never a settlement id",
                          field="input.data.ref")
        if d.purpose in ("bind", "unbind"):
            self.person(tx, d.ref, field="input.data.ref")  # the member: an insured person
        elif d.purpose == "statement" and d.ref != d.psn_no:
            raise Refusal(InfCode.INVALID_INPUT, "must be the holder's own psn_no (a statement is the holder's)",
                          field="input.data.ref")
        elif d.purpose == "apply":
            ref, amount = p.brdy, _years_insured(p.insu_date, ctx.now)
        elif d.purpose == "mandate":
            ref = self._mandate_terms(ctx, d.ref, amount)
        elif d.purpose == "mandate_revoke" and not payauth.MANDATE_ID.fullmatch(d.ref):
            raise Refusal(InfCode.INVALID_INPUT, "must be the mandate_id the bank gave (M + 20 hex digits)",
                          field="input.data.ref")
        if d.purpose in ("unbind", "statement", "mandate_revoke") and amount:
            raise Refusal(InfCode.INVALID_INPUT, "must be 0.00 for this purpose", field="input.data.amount")
        auth_id = _AUTH_PREFIX[d.purpose] + secrets.token_hex(12).upper()
        token, exp = self._pay_auth(ctx, tx, auth_id, d.psn_no, ref, amount, d.purpose)
        return {"pay_auth": token, "auth_id": auth_id, "purpose": d.purpose, "ref": ref,
                "amount": str(amount) if d.purpose == "apply" else fen_to_yuan(amount), "exp": str(exp)}

    @staticmethod
    def _mandate_terms(ctx: Ctx, ref: str, amount: int) -> str:
        """A mandate's terms as the patient confirmed them (payauth.parse_terms: caps > 0, day >= visit, at most
        20,000.00, today <= until <= today + 366 days); amount = the per-visit cap. The canonical text."""
        try:
            terms = payauth.parse_terms(ref, local_day(ctx.now), field="input.data.ref")
        except InputError as e:
            raise Refusal(InfCode.INVALID_INPUT, e.message, field="input.data.ref") from None
        if amount != terms.visit:
            raise Refusal(InfCode.INVALID_INPUT, "must equal the per-visit cap of the terms (visit=)",
                          field="input.data.amount")
        return terms.text()

    def _not_yours(self, ctx: Ctx, tx: Transaction, object_id: str, refusal: Refusal) -> Refusal:
        """The answer for an object of another institution: the very refusal "not found" gets (returned,
        not raised, so the audit row commits with it). Ids only: no person data."""
        tx.execute("INSERT INTO centre_audit (at, event, app_id, fixmedins_code, infno, msgid, object_id) "
                   "VALUES (?, 'foreign_object', ?, ?, ?, ?, ?)",
                   (ctx.now.isoformat(), ctx.terminal.app_id, ctx.terminal.fixmedins_code, ctx.request.infno,
                    ctx.request.msgid, object_id))
        return refusal

    # ---- small read-mostly tables, cached per worker ------------------------------------------
    def _cached(self, key: str, load) -> Any:  # noqa: ANN001
        now = time.monotonic()
        with self._cache_lock:
            hit = self._cache.get(key)
            if hit and now - hit[0] < CACHE_TTL_S:
                return hit[1]
        value = load()
        with self._cache_lock:
            self._cache[key] = (now, value)
        return value

    def institution(self, tx: Transaction, code: str) -> tuple[str, int]:
        def load() -> dict[str, tuple[str, int]]:
            return {r[0]: (r[1], int(r[2])) for r in tx.fetch_all(
                "SELECT fixmedins_code, admdvs, level FROM centre_institutions")}
        inst = self._cached("institutions", load).get(code)
        if inst is None:
            with self._cache_lock:
                self._cache.pop("institutions", None)
            inst = self._cached("institutions", load).get(code)
        if inst is None:
            raise Refusal(InfCode.NOT_FOUND, f"institution {code!r} is not registered with the centre",
                          field="fixmedins_code")
        return inst

    def catalogue(self, tx: Transaction) -> dict[str, tuple[str, str | None, str | None]]:
        return self._cached("catalogue", lambda: {r[0]: (r[1], r[2], r[3]) for r in tx.fetch_all(
            "SELECT code, category, selfpay_prop, pric_uplmt_amt FROM centre_catalogue")})

    def profile_for(self, tx: Transaction, admdvs: str, insutype: str, med_type: str) -> Profile:
        table = self._cached("profiles", lambda: {(r[0], r[1], r[2]): r[3] for r in tx.fetch_all(
            "SELECT admdvs, insutype, med_type, profile FROM centre_region_profiles")})
        name = table.get((admdvs, insutype, med_type))
        if name is None:
            raise Refusal(InfCode.BUSINESS_REFUSED,
                          f"no policy profile for area {admdvs}, insutype {insutype}, med_type {med_type}",
                          code="no_profile", field="med_type")
        return get_profile(name)

    # ---- registry helpers ---------------------------------------------------------------------------
    def person(self, tx: Transaction, psn_no: str, *, lock: bool = False, field: str = "psn_no") -> Person:
        p = _person(tx.fetch_one(f"SELECT {_PERSON_COLS} FROM centre_persons WHERE psn_no = ?"
                                 + (tx.for_update if lock else ""), (psn_no,)))
        if p is None:
            raise Refusal(InfCode.NOT_FOUND, f"no insured person {psn_no!r}", field=field)
        return p

    def _lock_people(self, tx: Transaction, *psn_nos: str,
                     also: tuple[str, tuple[Any, ...]] | None = None) -> dict[str, Person]:
        """Lock the people's rows (always in psn_no order: no deadlock between two settlements);
        `also`, a read that needs no lock, travels in the same round trip: its row is under key ""."""
        order = sorted(set(psn_nos))
        stmts = [(f"SELECT {_PERSON_COLS} FROM centre_persons WHERE psn_no = ?" + tx.for_update, (p,)) for p in order]
        rows = tx.fetch_each(stmts + ([also] if also else []))
        out: dict[str, Any] = {}
        for p, row in zip(order, rows):
            person = _person(row)
            if person is None:
                raise Refusal(InfCode.NOT_FOUND, f"no insured person {p!r}", field="psn_no")
            out[p] = person
        if also:
            out[""] = rows[-1]
        return out

    # ---- 9001 -------------------------------------------------------------------------------------------
    def sign_in(self, ctx: Ctx, tx: Transaction, data: m.SignIn9001) -> dict[str, Any]:
        self.institution(tx, ctx.terminal.fixmedins_code)
        sign_no = self.issue_sign_no(ctx.terminal, ctx.now)
        tx.execute("INSERT INTO centre_signins (sign_no, app_id, opter, created_at) VALUES (?, ?, ?, ?)",
                   (sign_no, ctx.terminal.app_id, data.signIn.opter_no, ctx.now.isoformat()))
        return {"signinoutb": {"sign_time": ctx.now.astimezone(SHANGHAI).strftime("%Y-%m-%d %H:%M:%S"),
                               "sign_no": sign_no}}

    # ---- 1101 -------------------------------------------------------------------------------------------
    def person_info(self, ctx: Ctx, tx: Transaction, data: m.PersonInfo1101) -> dict[str, Any]:
        """Only for the ecToken this terminal's face authentication issued: a typed ID number proves
        nothing about who is at the counter. Every other case gets one and the same refusal, and
        the answer holds what a counter needs to greet the person, not their birth date, balance
        or conditions (kiosk.app itself does not use 1101)."""
        d = data.data
        refusal = Refusal(InfCode.IDENTITY_MISMATCH, "person data is given only for an e-voucher token from this "
                          "terminal's face authentication", code="face_auth_required", field="input.data.mdtrt_cert_no")
        if d.mdtrt_cert_type != "01":
            raise refusal
        try:
            psn_no = self.token_psn(ctx.terminal, d.mdtrt_cert_no, ctx.now, "input.data.mdtrt_cert_no")
        except Refusal:
            raise refusal from None
        p = self.person(tx, psn_no)
        return {
            "baseinfo": {"psn_no": p.psn_no, "psn_cert_type": "01", "certno": m.mask_certno(p.certno),
                         "psn_name": p.psn_name},
            "insuinfo": [{"insutype": p.insutype, "psn_type": p.psn_type, "psn_insu_stas": "1",
                          "insuplc_admdvs": p.admdvs, "ec_activated": "1" if p.activated else "0"}],
            "idetinfo": [],
        }

    # ---- face activation / authentication ---------------------------------------------------------------
    def _probe(self, ctx: Ctx, sealed_b64: str, session_id: str, purpose: str) -> np.ndarray:
        try:
            blob = base64.b64decode(sealed_b64, validate=True)
        except ValueError:
            raise InputError("is not Base64", field="input.data.face_seal") from None
        try:
            raw = self.keys.open_sealed(blob, SealContext(ctx.terminal.app_id, session_id, purpose))
        except IntegrityError as e:
            raise Refusal(InfCode.BAD_ENVELOPE, f"sealed face data does not open for this terminal, session and "
                          f"purpose: {e.message}", code="seal_invalid", field="input.data.face_seal") from None
        return template_from_bytes(raw, "input.data.face_seal")

    def activate(self, ctx: Ctx, tx: Transaction, data: m.FaceActivate) -> dict[str, Any] | KioskError:
        d = data.data
        probe = self._probe(ctx, d.face_seal, d.session_id, "activate")
        # the lockout is this institution's, for this typed number, whoever holds it (before: one per person,
        # so any terminal could lock anyone's activation everywhere with three random faces, and an ID number
        # that locked was one the centre knows)
        lock_key = (ctx.terminal.fixmedins_code, self._sig(f"certno|{d.certno}"))
        tx.execute("INSERT INTO centre_activation_fails (fixmedins_code, certno_key, fail_count, locked_until) "
                   "VALUES (?, ?, 0, NULL) ON CONFLICT (fixmedins_code, certno_key) DO NOTHING", lock_key)
        fails, locked_until = tx.fetch_one("SELECT fail_count, locked_until FROM centre_activation_fails WHERE "
                                           "fixmedins_code = ? AND certno_key = ?" + tx.for_update, lock_key)
        if locked_until and datetime.fromisoformat(locked_until) > ctx.now:
            return Refusal(InfCode.LOCKED, f"too many failed attempts; try again after "
                           f"{datetime.fromisoformat(locked_until).astimezone(SHANGHAI):%H:%M}",
                           field="input.data.certno")
        row = tx.fetch_one(f"SELECT {_PERSON_COLS} FROM centre_persons WHERE certno = ?" + tx.for_update,
                           (d.certno,))
        p = _person(row)
        if p is None or p.template_seal is None or not self._verify(tx, probe, p):
            fails = int(fails) + 1
            locked = (ctx.now + LOCK_FOR).isoformat() if fails >= MAX_FAILED_ACTIVATIONS else None
            tx.execute("UPDATE centre_activation_fails SET fail_count = ?, locked_until = ? WHERE fixmedins_code = ? "
                       "AND certno_key = ?", (0 if locked else fails, locked, *lock_key))
            if locked:
                return Refusal(InfCode.LOCKED, "third failed attempt: activation locked for 30 minutes",
                               field="input.data.certno")
            return Refusal(InfCode.IDENTITY_MISMATCH, "the face does not match the person with this ID number",
                           field="input.data.certno")
        tx.execute("DELETE FROM centre_activation_fails WHERE fixmedins_code = ? AND certno_key = ?", lock_key)
        if p.activated:  # already in the galleries: a new activation_seq would add them twice
            return self._identified(ctx, p)
        seq = tx.scalar("UPDATE centre_activation_seq SET last = last + 1 WHERE id = 1 RETURNING last")
        tx.execute("UPDATE centre_persons SET activated = 1, activated_at = COALESCE(activated_at, ?), "
                   "activation_seq = ?, fail_count = 0, locked_until = NULL WHERE psn_no = ?",
                   (ctx.now.isoformat(), int(seq), p.psn_no))
        return self._identified(ctx, p)

    def _verify(self, tx: Transaction, probe: np.ndarray, p: Person) -> bool:
        """1:1 against the person's enrolled template, normalised against their region's cohort."""
        template = open_template(self.keys, p.psn_no, p.template_seal or "")
        region = self.galleries.get(tx, p.admdvs) if self.rule.cohort else None  # no cohort keys: raw
        return self.matcher.verify(region, probe, p.psn_no, template)

    def _template_of(self, tx: Transaction, psn_no: str) -> np.ndarray:
        sealed = tx.scalar("SELECT template_seal FROM centre_persons WHERE psn_no = ?", (psn_no,))
        return open_template(self.keys, psn_no, sealed)

    def _identified(self, ctx: Ctx, p: Person) -> dict[str, Any]:
        return {"psn_no": p.psn_no, "psn_name": p.psn_name, "insutype": p.insutype, "insuplc_admdvs": p.admdvs,
                "ecToken": self.issue_token(ctx.terminal, p.psn_no, ctx.now), "activated": "1"}

    def authenticate(self, ctx: Ctx, tx: Transaction, data: m.FaceAuth) -> dict[str, Any]:
        d = data.data
        probe = self._probe(ctx, d.face_seal, d.session_id, "auth")
        no_match = Refusal(InfCode.FACE_NOT_MATCHED, "face not recognised; activate with the ID number first "
                           "or use the manual channel", field="input.data.face_seal")
        if d.psn_no:
            p = self.person(tx, d.psn_no, field="input.data.psn_no")
            if not p.activated or p.template_seal is None:
                raise Refusal(InfCode.NOT_ACTIVATED, "insurance code is not activated; activate first",
                              field="input.data.psn_no")
            if not self._verify(tx, probe, p):
                raise no_match
            return self._identified(ctx, p)
        admdvs, _level = self.institution(tx, ctx.terminal.fixmedins_code)
        region = self.galleries.get(tx, admdvs)
        restrict = None
        if d.phone_last4:
            restrict = [r[0] for r in tx.fetch_all(
                "SELECT psn_no FROM centre_persons WHERE admdvs = ? AND activated = 1 AND phone_last4 = ?",
                (admdvs, d.phone_last4))]
            if not restrict:
                raise no_match
        outcome, psn_no = self.matcher.identify(region, probe, restrict_to=restrict,
                                                template_of=lambda psn: self._template_of(tx, psn))
        if outcome == "ambiguous":
            raise Refusal(InfCode.FACE_RETRY, "more than one person looks alike; enter the last 4 digits of the "
                          "phone number", code="need_phone_digits", field="input.data.phone_last4")
        if outcome != "matched" or psn_no is None:
            raise no_match
        return self._identified(ctx, self.person(tx, psn_no))

    # ---- family mutual aid ------------------------------------------------------------------------------
    def _face_of(self, ctx: Ctx, token: str, *psn_nos: str) -> str:
        """The person this terminal's ecToken proves, who must be one of `psn_nos`; one refusal otherwise
        (checked before any person is looked up: no oracle on people, ID numbers or authorisations)."""
        field = "input.data.mdtrt_cert_no"
        who = self.token_psn(ctx.terminal, token, ctx.now, field)
        if who not in psn_nos:
            raise Refusal(InfCode.IDENTITY_MISMATCH, "the e-voucher token is not this person's: authenticate "
                          "the face at this terminal", code="face_auth_required", field=field)
        return who

    def mulaid_auth(self, ctx: Ctx, tx: Transaction, data: m.MutualAidAuth) -> dict[str, Any]:
        """The patient, face-proved at this terminal, with the relative's typed ID number as consent.
        (Without the face, any terminal could try ID numbers against a person number and learn
        which is whose, and bind a relative's account for anyone.)"""
        d = data.data
        self._face_of(ctx, d.mdtrt_cert_no, d.psn_no)
        if d.psn_no == d.auth_psn_no:
            raise InputError("a person cannot authorise their own account", field="input.data.auth_psn_no")
        patient = self.person(tx, d.psn_no, lock=True, field="input.data.psn_no")  # vs a settlement in flight
        rel = self.person(tx, d.auth_psn_no, field="input.data.auth_psn_no")
        if not hmac.compare_digest(rel.certno, d.auth_certno):
            raise Refusal(InfCode.IDENTITY_MISMATCH, "the ID number typed is not the authorising relative's",
                          field="input.data.auth_certno")
        recorded = tx.scalar("SELECT relation FROM centre_relations WHERE psn_no = ? AND rel_psn_no = ?",
                             (d.psn_no, d.auth_psn_no))
        if recorded is None:
            raise Refusal(InfCode.RELATION_NOT_ALLOWED, "no family relation between these people is on record",
                          code="not_a_relative", field="input.data.relation")
        if recorded != d.relation:
            raise Refusal(InfCode.RELATION_NOT_ALLOWED, f"the record says {recorded}, not {d.relation}",
                          code="relation_mismatch", field="input.data.relation")
        if recorded not in m.RELATIONS:
            raise Refusal(InfCode.RELATION_NOT_ALLOWED, f"relation {recorded!r} may not share an account",
                          code="relation_not_allowed", field="input.data.relation")
        if patient.admdvs[:2] != rel.admdvs[:2]:
            raise Refusal(InfCode.RELATION_NOT_ALLOWED, "mutual aid is only allowed within one province",
                          code="other_province", field="input.data.auth_psn_no")
        tx.execute("INSERT INTO centre_mulaid (psn_no, auth_psn_no, relation, created_at) VALUES (?, ?, ?, ?) "
                   "ON CONFLICT (psn_no) DO UPDATE SET auth_psn_no = excluded.auth_psn_no, "
                   "relation = excluded.relation, created_at = excluded.created_at",
                   (d.psn_no, d.auth_psn_no, d.relation, ctx.now.isoformat()))
        return {"psn_no": d.psn_no, "auth_psn_no": d.auth_psn_no, "relation": d.relation, "authorised": "1"}

    def mulaid_revoke(self, ctx: Ctx, tx: Transaction, data: m.MutualAidRevoke) -> dict[str, Any]:
        """Only the patient or the relative, face-proved at this terminal (before: any terminal could end
        any family's authorisation, and learn from the answer whether one existed)."""
        self._face_of(ctx, data.data.mdtrt_cert_no, data.data.psn_no, data.data.auth_psn_no)
        tx.fetch_one("SELECT 1 FROM centre_persons WHERE psn_no = ?" + tx.for_update,  # waits for a settlement
                     (data.data.psn_no,))                                                # in flight
        n = tx.execute("DELETE FROM centre_mulaid WHERE psn_no = ? AND auth_psn_no = ?",
                       (data.data.psn_no, data.data.auth_psn_no))
        if n == 0:
            raise Refusal(InfCode.NO_AUTHORISATION, "no such mutual-aid authorisation", field="input.data.psn_no")
        return {"revoked": "1"}

    # ---- settlement ------------------------------------------------------------------------------------------
    def _bill(self, tx: Transaction, head: m._SettleHead, lines: list[m.FeeDetail], where: str,
              profile: Profile, level: int, conditions: frozenset[str]) -> Bill:
        cat = self.catalogue(tx)
        items = []
        total = 0
        for i, ln in enumerate(lines):
            entry = cat.get(ln.med_list_codg)
            if entry is None:
                raise InputError(f"code {ln.med_list_codg!r} is not in the centre's catalogue",
                                 field=f"input.{where}[{i}].med_list_codg")
            category, prop, ceiling = entry
            price, qty = Decimal(ln.pric), Decimal(ln.cnt)
            line = round_fen(price * qty)
            if line != round_fen(Decimal(ln.det_item_fee_sumamt)):
                raise InputError(f"is {ln.det_item_fee_sumamt} but pric x cnt = {fen_to_yuan(line)}",
                                 field=f"input.{where}[{i}].det_item_fee_sumamt")
            total += line
            items.append(Item(code=ln.med_list_codg, category=_cat(category), price=price, qty=qty,
                              selfpay_prop=Decimal(prop) if prop is not None and category == "B" else None,
                              price_ceiling=Decimal(ceiling) if ceiling is not None else None))
        if round_fen(Decimal(head.medfee_sumamt)) != total:
            raise InputError(f"is {head.medfee_sumamt} but the lines add up to {fen_to_yuan(total)}",
                             field="input.medfee_sumamt")
        return Bill(profile=profile.name, institution_level=level, items=tuple(items), conditions=conditions)

    def _split(self, ctx: Ctx, tx: Transaction, head: m._SettleHead, med_type: str, lines: list[m.FeeDetail],
               where: str, *, commit: bool) -> dict[str, Any]:
        if head.mdtrt_cert_type == "02":
            # a typed ID number proves nothing (ID numbers are not secret): with it any terminal spent a
            # person's account (and a relative's) and read the balance from a pre-settlement. Terminals of
            # this network prove the person by the face; the same answer as 1101 gives, before any lookup.
            raise Refusal(InfCode.IDENTITY_MISMATCH, "this terminal's face authentication (ecToken, 01) is "
                          "required; a typed ID number is not proof of the person", code="face_auth_required",
                          field="input.mdtrt_cert_type")
        visit = None  # a charge of an open visit (its mdtrt_id) when the visit token proves the patient
        orig: _Original | None = None  # a return's re-settlement: the returned settlement is the authority
        if head.orig_setl_id:
            got = self._return_authority(ctx, tx, head, lines, where, commit=commit)
            if isinstance(got, Refusal):
                return got  # type: ignore[return-value]
            orig = got
            visit = None if orig.by_face else orig.visit  # a senseless original's part stays senseless
        else:
            visit = self._settle_proof(ctx, tx, head, commit)
        mulaid_psn = None
        if head.acct_mulaid_flag == "1":
            mulaid_psn = tx.scalar("SELECT auth_psn_no FROM centre_mulaid WHERE psn_no = ?", (head.psn_no,))
            if mulaid_psn is None or (orig is not None and not orig.by_face and mulaid_psn != orig.mulaid_psn):
                # without the patient's face a return never starts spending a relative's account
                raise Refusal(InfCode.NO_AUTHORISATION, "no relative has authorised mutual aid for this person"
                              + (" for this return (the original did not use this relative's account)"
                                 if mulaid_psn else ""), field="input.acct_mulaid_flag")
        tombstone = None
        if commit:  # the 2601 tombstone is read with the locks, in one round trip (checked below, in order)
            people = self._lock_people(tx, head.psn_no, *([mulaid_psn] if mulaid_psn else []),
                                       also=("SELECT 1 FROM centre_tombstones WHERE msgid = ?",
                                             (qmsgid(ctx, ctx.request.msgid),)))
            tombstone = people.pop("")
        else:
            people = {p: self.person(tx, p) for p in [head.psn_no] + ([mulaid_psn] if mulaid_psn else [])}
        if commit and mulaid_psn:  # authorisation re-read under the patient's lock (auth/revoke take it too)
            now_auth = tx.scalar("SELECT auth_psn_no FROM centre_mulaid WHERE psn_no = ?", (head.psn_no,))
            if now_auth is None:
                raise Refusal(InfCode.NO_AUTHORISATION, "the relative withdrew the mutual-aid authorisation",
                              field="input.acct_mulaid_flag")
            if now_auth != mulaid_psn:  # another relative was authorised meanwhile: start again, locking them
                raise StorageError("mutual-aid relative changed while locking", code="serialization_failure")
        p = people[head.psn_no]
        if head.mdtrt_cert_type == "02" and not hmac.compare_digest(p.certno, head.mdtrt_cert_no.upper()):
            raise Refusal(InfCode.IDENTITY_MISMATCH, "ID number does not belong to psn_no", field="input.mdtrt_cert_no")
        if commit and tombstone is not None:
            raise Refusal(InfCode.ALREADY_REVERSED, "this message was reversed (2601) before it arrived; "
                          "it is not applied", code="message_reversed", field="msgid")
        if head.insutype != p.insutype:
            raise Refusal(InfCode.BUSINESS_REFUSED, f"person is insured under {p.insutype}, not {head.insutype}",
                          code="insutype_mismatch", field="input.insutype")
        _admdvs, level = self.institution(tx, ctx.terminal.fixmedins_code)
        profile = self.profile_for(tx, p.admdvs, p.insutype, med_type)
        if orig is not None and profile.name != orig.profile:
            raise Refusal(InfCode.BUSINESS_REFUSED, f"settlement {head.orig_setl_id} was settled under "
                          f"{orig.profile}, not {profile.name}: a return keeps the original's med_type",
                          code="not_as_original", field="input.med_type")
        conditions = frozenset(c for c in p.conditions.split(",") if c) if profile.is_chronic else frozenset()
        if profile.is_chronic and not conditions:
            raise Refusal(InfCode.BUSINESS_REFUSED, "person has no recognised chronic condition for med_type 14",
                          code="no_condition", field="input.med_type")
        bill = self._bill(tx, head, lines, where, profile, level, conditions)
        year = local_day(ctx.now).year
        yrow = tx.fetch_one("SELECT deductible_used, pool_paid FROM centre_ytd WHERE psn_no = ? AND profile = ? "
                            "AND year = ?" + (tx.for_update if commit else ""), (p.psn_no, profile.name, year))
        ytd = Ytd(int(yrow[0]), int(yrow[1])) if yrow else Ytd()
        rel_balc = people[mulaid_psn].balc if mulaid_psn else 0
        s = settle(bill, profile, ytd, p.balc, head.acct_used_flag == "1", rel_balc)
        setl_id = ""
        if commit:
            setl_id = "S" + ctx.now.astimezone(SHANGHAI).strftime("%Y%m%d") + secrets.token_hex(8).upper()
            self._commit(ctx, tx, s, setl_id, p, profile, year, head, mulaid_psn if s.acct_mulaid_pay else None,
                         yrow is not None)
            self._keep_lines(tx, setl_id, lines)
        out = self._answer(s, setl_id, p, head, profile)
        if orig is not None and not orig.by_face:  # no face, no balance: the account is the patient's business
            out["setlinfo"].pop("balc", None)
        if commit and s.psn_cash_pay > 0 and head.mdtrt_cert_type == "01" and (
                orig is None or orig.by_face or s.psn_cash_pay <= orig.cash):
            # (without the face a return's part is authorised to be drawn up to what the patient authorised
            # for the whole; more, e.g. after the account was spent meanwhile, is paid at the counter)
            out["pay_auth"] = self._cash_auth(ctx, tx, setl_id, p.psn_no, s.psn_cash_pay, visit,
                                              head.orig_setl_id if orig is not None else None)
        return out

    def _commit(self, ctx: Ctx, tx: Transaction, s: Settlement, setl_id: str, p: Person, profile: Profile,
                year: int, head: m._SettleHead, mulaid_psn: str | None, ytd_exists: bool) -> None:
        now = ctx.now.isoformat()
        # the settlement row and the accumulators are read by nothing later in this transaction: they
        # travel with COMMIT (one PostgreSQL round trip); the account moves check their row count now
        tx.execute_at_commit(
            "INSERT INTO centre_settlements (setl_id, msgid, infno, psn_no, profile, year, fixmedins_code, mdtrt_id, "
            "state, result, medfee_sumamt, fund_pay_sumamt, acct_pay, mulaid_psn_no, acct_mulaid_pay, psn_cash_pay, "
            "created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'settled', ?, ?, ?, ?, ?, ?, ?, ?)",
            (setl_id, qmsgid(ctx, ctx.request.msgid), ctx.request.infno, p.psn_no, profile.name, year,
             ctx.terminal.fixmedins_code, head.mdtrt_id, _dumps(s.to_json()), s.medfee_sumamt, s.fund_pay_sumamt,
             s.acct_pay, mulaid_psn, s.acct_mulaid_pay, s.psn_cash_pay, now))
        if ytd_exists:
            tx.execute_at_commit("UPDATE centre_ytd SET deductible_used = ?, pool_paid = ? WHERE psn_no = ? AND "
                                 "profile = ? AND year = ?", (s.ytd_after.deductible_used, s.ytd_after.pool_paid,
                                                              p.psn_no, profile.name, year))
        else:
            tx.execute_at_commit("INSERT INTO centre_ytd (psn_no, profile, year, deductible_used, pool_paid) "
                                 "VALUES (?, ?, ?, ?, ?)",
                                 (p.psn_no, profile.name, year, s.ytd_after.deductible_used, s.ytd_after.pool_paid))
        self._move(tx, p.psn_no, setl_id, -s.acct_pay, "acct_pay", now)
        if mulaid_psn:
            self._move(tx, mulaid_psn, setl_id, -s.acct_mulaid_pay, "acct_mulaid_pay", now)

    @staticmethod
    def _move(tx: Transaction, psn_no: str, setl_id: str, amount: int, kind: str, now: str) -> None:
        if amount == 0:
            return
        tx.execute("INSERT INTO centre_account_moves (psn_no, setl_id, amount, kind, created_at) "
                   "VALUES (?, ?, ?, ?, ?)", (psn_no, setl_id, amount, kind, now))
        n = tx.execute("UPDATE centre_persons SET balc = balc + ? WHERE psn_no = ? AND balc + ? >= 0",
                       (amount, psn_no, amount))
        if n != 1:
            raise IntegrityError(f"personal account of {psn_no} would go negative", code="account_negative")

    @staticmethod
    def _answer(s: Settlement, setl_id: str, p: Person, head: m._SettleHead, profile: Profile) -> dict[str, Any]:
        j = s.to_json()
        setlinfo = dict(j["setlinfo"])
        zero = "0.00"
        setlinfo.update({
            "setl_id": setl_id, "psn_no": p.psn_no, "psn_name": p.psn_name, "insutype": p.insutype,
            "mdtrt_id": head.mdtrt_id, "medins_setl_id": head.chrg_bchno, "clr_way": "1", "clr_type": "11",
            "pool_prop_selfpay": fen_to_yuan(s.inscp_scp_amt - s.act_pay_dedc - s.hifp_pay),
            "cvlserv_pay": zero, "hifes_pay": zero, "hifmi_pay": zero, "hifob_pay": zero, "maf_pay": zero,
            "oth_pay": zero, "hosp_part_amt": zero, "profile": profile.name,
        })
        setldetail = []
        if s.hifp_pay:
            setldetail.append({"fund_pay_type": FUND_TYPE.get(p.insutype, "310100"),
                               "fund_payamt": fen_to_yuan(s.hifp_pay)})
        if s.acct_pay:
            setldetail.append({"fund_pay_type": ACCOUNT_FUND_TYPE, "fund_payamt": fen_to_yuan(s.acct_pay)})
        return {"setlinfo": setlinfo, "setldetail": setldetail, "detlcutinfo": j["detlcutinfo"],
                "ytd_after": j["ytd_after"]}

    # ---- a return's re-settlement: the original face-proved settlement is its authority -----------------------
    _RESETTLED_BY = {"2206": "2207", "2207": "2207", "2101": "2102", "2102": "2102"}

    def _return_authority(self, ctx: Ctx, tx: Transaction, head: m._SettleHead, lines: list[m.FeeDetail],
                          where: str, *, commit: bool) -> Refusal | _Original:
        """May this pre-settlement / settlement of a return's kept lines go on, on the authority of the
        settlement being returned (`orig_setl_id`) rather than a fresh ecToken? Checked where the original
        is stored: it is this institution's (else the answer "not found" gets, returned for the audit
        row), this person's, made by the matching transaction, itself face-proved (not a re-settlement
        made without the face), inside the return window, reversed first (settlement only; without the
        face: reversed by this terminal after it pre-settled the kept lines, the return's announcement,
        so a whole refund or a cancelled payment is never charged again), re-settled
        at most once (claimed here by this msgid: a retry of the same msgid is replayed by the gateway
        and never gets here), and the new lines are a part of the original's (nobody can charge what the
        patient did not buy). With mdtrt_cert_no = orig_setl_id no token is needed; an ecToken (01) in
        mdtrt_cert_no is checked as for any settlement. Go on: what the re-settlement must keep of it (its
        profile; without the face: no relative's account it did not use, a cash authorisation no larger
        than its cash share and, for a charge of a visit, of purpose senseless, as its own was)."""
        by_face = head.mdtrt_cert_no != head.orig_setl_id
        if by_face:
            who = self.token_psn(ctx.terminal, head.mdtrt_cert_no, ctx.now, "input.mdtrt_cert_no")
            if who != head.psn_no:
                raise Refusal(InfCode.IDENTITY_MISMATCH, "the e-voucher token belongs to another person",
                              field="input.mdtrt_cert_no")
        oid = head.orig_setl_id
        missing = Refusal(InfCode.NOT_FOUND, "no such settlement for this person", field="input.orig_setl_id")
        row = tx.fetch_one("SELECT psn_no, fixmedins_code, infno, state, created_at, msgid, profile, mulaid_psn_no, "
                           "psn_cash_pay, mdtrt_id, rev_msgid FROM centre_settlements WHERE setl_id = ?", (oid,))
        if row is not None and row[1] != ctx.terminal.fixmedins_code:
            return self._not_yours(ctx, tx, oid, missing)
        if row is None or row[0] != head.psn_no:
            raise missing
        _psn, _inst, infno, state, created, omsgid, profile, mulaid_psn, cash, mdtrt_id, rev_msgid = row
        want = self._RESETTLED_BY[ctx.request.infno]
        if infno != want:
            raise InputError(f"settlement {oid} was made by {infno}; its return is re-settled by "
                             f"{'2207' if infno == '2207' else '2102'}", field="infno")
        made = tx.fetch_one("SELECT by_face FROM centre_resettlements WHERE msgid = ?", (omsgid,))
        if made is not None and not int(made[0]):
            raise Refusal(InfCode.BUSINESS_REFUSED, f"settlement {oid} was itself made on a returned settlement's "
                          "authority, without the face: it is no authority for another return",
                          code="not_face_proved", field="input.orig_setl_id")
        if ctx.now > datetime.fromisoformat(str(created)) + self.return_window:
            raise Refusal(InfCode.BUSINESS_REFUSED, f"settlement {oid} is older than the return window "
                          f"({self.return_window.days} days)", code="return_window_closed",
                          field="input.orig_setl_id")
        if commit and state != "reversed":
            raise Refusal(InfCode.BUSINESS_REFUSED, f"settlement {oid} still stands: reverse it (2208/2103) "
                          "before its return is re-settled", code="not_reversed", field="input.orig_setl_id")
        self._within_original(tx, oid, lines, where)
        app = ctx.terminal.app_id
        if not commit and state == "settled":  # the return announced while the original stands (see below)
            tx.execute("INSERT INTO centre_return_intents (orig_setl_id, app_id, created_at) VALUES (?, ?, ?) "
                       "ON CONFLICT (orig_setl_id, app_id) DO NOTHING", (oid, app, ctx.now.isoformat()))
        if commit and not by_face and not (
                str(rev_msgid or "").startswith(app + "/") and tx.fetch_one(
                    "SELECT 1 FROM centre_return_intents WHERE orig_setl_id = ? AND app_id = ?", (oid, app))):
            # a reversal is a return's only when this terminal pre-settled the kept lines before making it; a
            # whole refund, a cancelled payment (2601) or another terminal's reversal charges nothing again
            # without the patient's face
            raise Refusal(InfCode.BUSINESS_REFUSED, f"settlement {oid} was not reversed for a return at this "
                          "terminal (its kept lines pre-settled here before the reversal): the patient's face "
                          "is needed", code="not_a_return", field="input.orig_setl_id")
        senseless = tx.fetch_one("SELECT 1 FROM centre_pay_auths WHERE auth_id = ?", (VISIT_AUTH_PREFIX + oid,))
        if commit:
            n = tx.execute("INSERT INTO centre_resettlements (orig_setl_id, msgid, psn_no, fixmedins_code, by_face, "
                           "created_at) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (orig_setl_id) DO NOTHING",
                           (oid, qmsgid(ctx, ctx.request.msgid), head.psn_no, ctx.terminal.fixmedins_code,
                            int(by_face), ctx.now.isoformat()))
            if n != 1:
                raise Refusal(InfCode.BUSINESS_REFUSED, f"settlement {oid} was already re-settled by another "
                              "message (one re-settlement per returned settlement)", code="already_resettled",
                              field="input.orig_setl_id")
        return _Original(by_face=by_face, profile=str(profile), mulaid_psn=mulaid_psn, cash=int(cash),
                         visit=str(mdtrt_id) if senseless else None)

    @staticmethod
    def _within_original(tx: Transaction, oid: str, lines: list[m.FeeDetail], where: str) -> None:
        """The new lines are a sub-multiset of the original's: each code at the same unit price, in all no
        more than the original's quantity and no more than its amount (each line is rounded to the fen:
        a line split into many small ones would otherwise round up to more than was paid)."""
        left: dict[tuple[str, Decimal], Decimal] = {}
        money: dict[tuple[str, Decimal], int] = {}
        for code, pric, cnt in tx.fetch_all("SELECT code, pric, cnt FROM centre_settlement_lines WHERE setl_id = ?",
                                            (oid,)):
            k = (str(code), Decimal(pric))
            left[k] = left.get(k, Decimal(0)) + Decimal(cnt)
            money[k] = money.get(k, 0) + round_fen(Decimal(pric) * Decimal(cnt))
        if not left:
            raise Refusal(InfCode.BUSINESS_REFUSED, f"the lines of settlement {oid} are not on record (settled "
                          "before returns were kept): return it whole", code="lines_unknown",
                          field="input.orig_setl_id")
        for i, ln in enumerate(lines):
            k = (ln.med_list_codg, Decimal(ln.pric))
            if k not in left:
                raise Refusal(InfCode.BUSINESS_REFUSED, f"{ln.med_list_codg} at {ln.pric} is not on settlement "
                              f"{oid}", code="not_on_original", field=f"input.{where}[{i}].med_list_codg")
            left[k] -= Decimal(ln.cnt)
            money[k] -= round_fen(Decimal(ln.pric) * Decimal(ln.cnt))
            if left[k] < 0:
                raise Refusal(InfCode.BUSINESS_REFUSED, f"is more {ln.med_list_codg} than settlement {oid} "
                              "settled", code="more_than_original", field=f"input.{where}[{i}].cnt")
            if money[k] < 0:
                raise Refusal(InfCode.BUSINESS_REFUSED, f"{ln.med_list_codg} comes to more than on settlement "
                              f"{oid} (lines split smaller round up)", code="more_than_original",
                              field=f"input.{where}[{i}].det_item_fee_sumamt")

    @staticmethod
    def _keep_lines(tx: Transaction, setl_id: str, lines: list[m.FeeDetail]) -> None:
        """The settlement's lines (code, unit price, quantity), with COMMIT: what a return may keep."""
        marks = ", ".join(["(?, ?, ?, ?, ?)"] * len(lines))
        params: list[Any] = []
        for i, ln in enumerate(lines):
            params += [setl_id, i, ln.med_list_codg, ln.pric, ln.cnt]
        tx.execute_at_commit(f"INSERT INTO centre_settlement_lines (setl_id, line_no, code, pric, cnt) VALUES {marks}",
                             params)

    def presettle_outpatient(self, ctx: Ctx, tx: Transaction, data: m.Outpatient2206) -> dict[str, Any]:
        return self._split(ctx, tx, data.data, data.data.med_type, data.data.feedetail, "data.feedetail",
                           commit=False)

    def settle_outpatient(self, ctx: Ctx, tx: Transaction, data: m.Outpatient2206) -> dict[str, Any]:
        return self._split(ctx, tx, data.data, data.data.med_type, data.data.feedetail, "data.feedetail",
                           commit=True)

    def presettle_pharmacy(self, ctx: Ctx, tx: Transaction, data: m.Pharmacy2101) -> dict[str, Any]:
        return self._split(ctx, tx, data.druginfo, "41", data.drugdetail, "drugdetail", commit=False)

    def settle_pharmacy(self, ctx: Ctx, tx: Transaction, data: m.Pharmacy2101) -> dict[str, Any]:
        return self._split(ctx, tx, data.druginfo, "41", data.drugdetail, "drugdetail", commit=True)

    # ---- reversal ----------------------------------------------------------------------------------------------
    def _reverse_row(self, ctx: Ctx, tx: Transaction, row: tuple[Any, ...]) -> dict[str, Any]:
        setl_id, psn_no, profile, year, state, result, mulaid_psn = row
        if state != "settled":
            raise Refusal(InfCode.ALREADY_REVERSED, f"settlement {setl_id} is already reversed",
                          field="input.data.setl_id")
        s = Settlement.from_json(_loads(result))
        yrow = tx.fetch_one("SELECT deductible_used, pool_paid FROM centre_ytd WHERE psn_no = ? AND profile = ? "
                            "AND year = ?" + tx.for_update, (psn_no, profile, year))
        if yrow is None:
            raise IntegrityError(f"settlement {setl_id} has no year-to-date record", code="ytd_missing")
        back = reverse(s, Ytd(int(yrow[0]), int(yrow[1])))
        tx.execute("UPDATE centre_ytd SET deductible_used = ?, pool_paid = ? WHERE psn_no = ? AND profile = ? "
                   "AND year = ?", (back.deductible_used, back.pool_paid, psn_no, profile, year))
        now = ctx.now.isoformat()
        self._move(tx, psn_no, setl_id, s.acct_pay, "reversal", now)
        if mulaid_psn:
            self._move(tx, mulaid_psn, setl_id, s.acct_mulaid_pay, "reversal", now)
        n = tx.execute("UPDATE centre_settlements SET state = 'reversed', reversed_at = ?, rev_msgid = ? "
                       "WHERE setl_id = ? AND state = 'settled'", (now, qmsgid(ctx, ctx.request.msgid), setl_id))
        if n != 1:  # pragma: no cover - the person lock makes this unreachable
            raise IntegrityError(f"settlement {setl_id} changed during reversal", code="reversal_race")
        neg = {k: fen_to_yuan(-v) for k, v in s.setlinfo().items() if k != "balc"}
        balc = tx.scalar("SELECT balc FROM centre_persons WHERE psn_no = ?", (psn_no,))
        return {"setlinfo": {**neg, "setl_id": setl_id, "psn_no": psn_no, "balc": fen_to_yuan(int(balc)),
                             "rev_state": "reversed"}}

    _SETL_COLS = "setl_id, psn_no, profile, year, state, result, mulaid_psn_no"  # + infno, fixmedins_code

    def _locked_settlement(self, tx: Transaction, psn_no: str, where: str, value: str,
                           mine: str) -> tuple[Any, ...] | None:
        """The settlement row (+ infno), read again once the patient and any mutual-aid relative are locked
        in psn_no order - the order a settlement locks them in (any other order deadlocks with it)."""
        self.person(tx, psn_no, field="input.data.psn_no")
        sql = f"SELECT {self._SETL_COLS}, infno, fixmedins_code FROM centre_settlements WHERE {where} = ?"
        row = tx.fetch_one(sql, (value,))
        if row is not None and row[8] != mine:
            return row  # another institution's: refused by the caller, nothing locked
        extra = [row[6]] if row is not None and row[1] == psn_no and row[6] else []  # never changes once set
        self._lock_people(tx, psn_no, *extra)
        return tx.fetch_one(sql, (value,))

    def reverse_settlement(self, ctx: Ctx, tx: Transaction, data: m.Reversal2208) -> dict[str, Any]:
        d = data.data
        row = self._locked_settlement(tx, d.psn_no, "setl_id", d.setl_id, ctx.terminal.fixmedins_code)
        missing = Refusal(InfCode.NOT_FOUND, "no such settlement for this person", field="input.data.setl_id")
        if row is not None and row[8] != ctx.terminal.fixmedins_code:
            return self._not_yours(ctx, tx, d.setl_id, missing)  # type: ignore[return-value]
        if row is None or row[1] != d.psn_no:
            raise missing
        want = {"2208": "2207", "2103": "2102"}[ctx.request.infno]
        if row[7] != want:
            raise InputError(f"settlement {d.setl_id} was made by {row[7]}; reverse it with "
                             f"{'2208' if row[7] == '2207' else '2103'}", field="infno")
        return self._reverse_row(ctx, tx, row[:7])

    def reverse_message(self, ctx: Ctx, tx: Transaction, data: m.MessageReversal2601) -> dict[str, Any]:
        d = data.data
        if d.oinfno not in ("2207", "2102"):
            raise InputError("only settlement messages (2207, 2102) are reversed by message here", field="input.data.oinfno")
        # the msgid is this terminal's own (qmsgid); its institution is checked too (a terminal re-registered
        # for another institution keeps its appId but not the old institution's settlements)
        row = self._locked_settlement(tx, d.psn_no, "msgid", qmsgid(ctx, d.omsgid), ctx.terminal.fixmedins_code)
        other = Refusal(InfCode.NOT_FOUND, "message belongs to another person", field="input.data.omsgid")
        if row is not None and row[8] != ctx.terminal.fixmedins_code:
            return self._not_yours(ctx, tx, d.omsgid, other)  # type: ignore[return-value]
        if row is not None and row[1] != d.psn_no:
            raise other
        if row is None:
            tx.execute("INSERT INTO centre_tombstones (msgid, created_at) VALUES (?, ?) ON CONFLICT (msgid) DO NOTHING",
                       (qmsgid(ctx, d.omsgid), ctx.now.isoformat()))
            return {"omsgid": d.omsgid, "result": "not_applied", "setl_id": ""}
        if row[4] != "settled":
            return {"omsgid": d.omsgid, "result": "already_reversed", "setl_id": row[0]}
        out = self._reverse_row(ctx, tx, row[:7])
        return {"omsgid": d.omsgid, "result": "reversed", "setl_id": row[0], "setlinfo": out["setlinfo"]}

    def query_settlement(self, ctx: Ctx, tx: Transaction, data: m.SettlementQuery5203) -> dict[str, Any]:
        d = data.data
        cols = ("SELECT s.setl_id, s.psn_no, s.state, s.result, s.msgid, s.infno, s.reversed_at, s.fixmedins_code, "
                "s.psn_cash_pay, a.app_id, a.auth_id, a.purpose, a.ref FROM centre_settlements s LEFT JOIN "
                "centre_resettlements r ON r.msgid = s.msgid LEFT JOIN centre_pay_auths a ON a.auth_id IN "
                "('PD' || s.setl_id, 'PV' || s.setl_id, 'PD' || s.setl_id || '~' || r.orig_setl_id, "
                "'PV' || s.setl_id || '~' || r.orig_setl_id) WHERE ")
        if d.setl_id:
            row = tx.fetch_one(cols + "s.setl_id = ?", (d.setl_id,))
        else:
            row = tx.fetch_one(cols + "s.msgid = ?", (qmsgid(ctx, d.omsgid),))
        foreign = row is not None and row[7] != ctx.terminal.fixmedins_code
        if foreign or row is None or row[1] != d.psn_no:
            if d.omsgid and tx.scalar("SELECT 1 FROM centre_tombstones WHERE msgid = ?", (qmsgid(ctx, d.omsgid),)):
                return {"setl_state": "not_applied", "omsgid": d.omsgid}
            missing = Refusal(InfCode.NOT_FOUND, "no such settlement for this person",
                              field="input.data.setl_id" if d.setl_id else "input.data.omsgid")
            if foreign:
                return self._not_yours(ctx, tx, d.setl_id or d.omsgid, missing)  # type: ignore[return-value]
            raise missing
        res = _loads(row[3])
        out = {"setl_state": row[2], "setl_id": row[0], "omsgid": row[4].split("/", 1)[-1], "oinfno": row[5],
               "setlinfo": {**res["setlinfo"], "setl_id": row[0]}, "reversed_at": row[6] or ""}
        if row[2] == "settled" and row[9] == ctx.terminal.app_id and int(row[8]) > 0:
            # the terminal that settled it lost the answer (or let its pay_auth expire): the same
            # authorisation again (same id: the bank still draws once), newly signed and dated
            out["pay_auth"], _exp = self._pay_auth(ctx, tx, row[10], row[1], row[12], int(row[8]), row[11],
                                                   record=False)
        return out

    # ---- outpatient visits (senseless payment) --------------------------------------------------------------------
    def open_visit(self, ctx: Ctx, tx: Transaction, data: m.VisitOpen2201) -> dict[str, Any]:
        """2201: registration by the patient's face at this terminal opens an outpatient visit; nothing is
        charged. Its visit_token (bound to this terminal, to the end of the Asia/Shanghai day) stands in for
        the face at the visit's 2206/2207."""
        d = data.data
        who = self.token_psn(ctx.terminal, d.mdtrt_cert_no, ctx.now, "input.data.mdtrt_cert_no")
        if who != d.psn_no:
            raise Refusal(InfCode.IDENTITY_MISMATCH, "the e-voucher token belongs to another person",
                          code="face_auth_required", field="input.data.mdtrt_cert_no")
        p = self.person(tx, d.psn_no, field="input.data.psn_no")
        if d.insutype != p.insutype:
            raise Refusal(InfCode.BUSINESS_REFUSED, f"person is insured under {p.insutype}, not {d.insutype}",
                          code="insutype_mismatch", field="input.data.insutype")
        self.institution(tx, ctx.terminal.fixmedins_code)
        mdtrt_id = "V" + ctx.now.astimezone(SHANGHAI).strftime("%Y%m%d") + secrets.token_hex(6).upper()
        exp = end_of_day(ctx.now)
        tx.execute("INSERT INTO centre_visits (mdtrt_id, psn_no, fixmedins_code, app_id, insutype, opened_at, exp, "
                   "state) VALUES (?, ?, ?, ?, ?, ?, ?, 'open')",
                   (mdtrt_id, p.psn_no, ctx.terminal.fixmedins_code, ctx.terminal.app_id, p.insutype,
                    ctx.now.isoformat(), exp))
        return {"mdtrt_id": mdtrt_id, "psn_no": p.psn_no, "visit_token": self.issue_visit_token(
            ctx.terminal, p.psn_no, mdtrt_id, exp), "exp": str(exp), "state": "open"}

    def close_visit(self, ctx: Ctx, tx: Transaction, data: m.VisitClose2202) -> dict[str, Any] | Refusal:
        """2202: the registering terminal closes the visit (again: the same answer). Anyone else, another
        person's or an unknown mdtrt_id: the answer of a visit that does not exist."""
        d = data.data
        row = tx.fetch_one("SELECT psn_no, fixmedins_code, app_id, state, closed_at FROM centre_visits "
                           "WHERE mdtrt_id = ?" + tx.for_update, (d.mdtrt_id,))
        missing = Refusal(InfCode.NOT_FOUND, "no such visit for this person", field="input.data.mdtrt_id")
        if row is not None and row[1] != ctx.terminal.fixmedins_code:
            return self._not_yours(ctx, tx, d.mdtrt_id, missing)
        if row is None or row[0] != d.psn_no or row[2] != ctx.terminal.app_id:
            raise missing
        closed_at = row[4]
        if row[3] == "open":
            closed_at = ctx.now.isoformat()
            tx.execute("UPDATE centre_visits SET state = 'closed', closed_at = ? WHERE mdtrt_id = ?",
                       (closed_at, d.mdtrt_id))
        return {"mdtrt_id": d.mdtrt_id, "psn_no": d.psn_no, "state": "closed", "closed_at": closed_at}

    def notify(self, ctx: Ctx, tx: Transaction, data: m.Notify) -> dict[str, Any] | Refusal:
        """ec.notify: a notice into the person's insurance-app inbox, about this institution's own settlement
        (or visit) of that person only; stored once per (institution, notice_id). Anything else: the answer
        of a settlement that does not exist (a terminal cannot write into strangers' inboxes)."""
        d = data.data
        mine = ctx.terminal.fixmedins_code
        if d.setl_id:
            field, obj = "input.data.setl_id", d.setl_id
            row = tx.fetch_one("SELECT fixmedins_code, psn_no, mdtrt_id, medfee_sumamt, fund_pay_sumamt, acct_pay, "
                               "psn_cash_pay FROM centre_settlements WHERE setl_id = ?", (d.setl_id,))
            fits = row is not None and row[1] == d.psn_no and (not d.mdtrt_id or d.mdtrt_id == row[2])
        else:
            field, obj = "input.data.mdtrt_id", d.mdtrt_id
            row = tx.fetch_one("SELECT fixmedins_code, psn_no FROM centre_visits WHERE mdtrt_id = ?", (d.mdtrt_id,))
            fits = row is not None and row[1] == d.psn_no
        missing = Refusal(InfCode.NOT_FOUND, "no such settlement or visit of this person", field=field)
        if row is not None and row[0] != mine:
            return self._not_yours(ctx, tx, obj, missing)
        if not fits:
            return missing
        if d.kind == "senseless_charge" and row is not None:  # the patient is told what the settlement says
            said = tuple(yuan_to_fen(getattr(d, k), f"input.data.{k}")
                         for k in ("medfee_sumamt", "fund_pay_sumamt", "acct_pay", "psn_cash_pay"))
            if said != tuple(int(v) for v in row[3:7]):
                return Refusal(InfCode.INVALID_INPUT, f"the amounts are not those of settlement {d.setl_id} "
                               f"(medfee_sumamt {fen_to_yuan(int(row[3]))}, fund_pay_sumamt {fen_to_yuan(int(row[4]))}, "
                               f"acct_pay {fen_to_yuan(int(row[5]))}, psn_cash_pay {fen_to_yuan(int(row[6]))})",
                               code="notice_amounts", field="input.data.medfee_sumamt")
        body = _dumps(d.model_dump())
        stored = tx.fetch_one(
            "INSERT INTO centre_notices (fixmedins_code, notice_id, app_id, psn_no, kind, setl_id, mdtrt_id, body, "
            "created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (fixmedins_code, notice_id) DO NOTHING "
            "RETURNING notice_id", (mine, d.notice_id, ctx.terminal.app_id, d.psn_no, d.kind, d.setl_id, d.mdtrt_id,
                                    body, ctx.now.isoformat()))
        if stored is None and tx.scalar("SELECT body FROM centre_notices WHERE fixmedins_code = ? AND notice_id = ?",
                                        (mine, d.notice_id)) != body:
            return Refusal(InfCode.MSGID_CONFLICT, "notice_id was already used for another notice",
                           code="notice_conflict", field="input.data.notice_id")
        return {"notice_id": d.notice_id, "psn_no": d.psn_no, "stored": "1"}

    # ---- routes ---------------------------------------------------------------------------------------------------
    def query_catalogue(self, ctx: Ctx, tx: Transaction, data: m.CatalogueQuery1312) -> dict[str, Any]:
        """1312: one page of the catalogue, by code (read-only; terminals cache it to check POS bills)."""
        page, size = data.data.page_num, data.data.page_size
        total = int(tx.scalar("SELECT COUNT(*) FROM centre_catalogue") or 0)
        rows = tx.fetch_all("SELECT code, name, category FROM centre_catalogue ORDER BY code LIMIT ? OFFSET ?",
                            (size, (page - 1) * size))
        return {"pageNum": page, "pageSize": size, "recordCounts": total, "pages": -(-total // size),
                "data": [{"hilist_code": r[0], "hilist_name": r[1], "chrgitm_lv": _cat(r[2]).chrgitm_lv}
                         for r in rows]}

    def routes(self) -> dict[str, Route]:
        h = {
            "9001": self.sign_in, "1101": self.person_info, "ec.activate": self.activate,
            "ec.auth": self.authenticate, "mulaid.auth": self.mulaid_auth, "mulaid.revoke": self.mulaid_revoke,
            "2206": self.presettle_outpatient, "2207": self.settle_outpatient, "2208": self.reverse_settlement,
            "2101": self.presettle_pharmacy, "2102": self.settle_pharmacy, "2103": self.reverse_settlement,
            "2601": self.reverse_message, "5203": self.query_settlement, "1312": self.query_catalogue,
            "ec.payauth": self.request_pay_auth, "2201": self.open_visit, "2202": self.close_visit,
            "ec.notify": self.notify,
            "3201": dayend.reconcile_totals, "3202": dayend.settlement_list,
        }
        return {code: Route(code, m.TRANSACTIONS[code][0], fn, m.TRANSACTIONS[code][1],
                            needs_sign_in=(code != "9001"))
                for code, fn in h.items()}


def _dumps(obj: Any) -> str:
    import json

    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _loads(s: str) -> Any:
    import json

    return json.loads(s)


def notices_of(db: Database, psn_no: str, limit: int = 100) -> list[dict[str, Any]]:
    """The person's insurance-app inbox (ec.notify), newest first: what `kiosk services notices` prints."""
    rows = db.read(lambda tx: tx.fetch_all(
        "SELECT fixmedins_code, notice_id, body, created_at FROM centre_notices WHERE psn_no = ? "
        "ORDER BY created_at DESC, notice_id LIMIT ?", (psn_no, limit)))
    return [{"fixmedins_code": r[0], "created_at": r[3], **_loads(r[2])} for r in rows]
