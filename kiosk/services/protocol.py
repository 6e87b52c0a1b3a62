"""The national platform's transaction model, shared by the centre, the bank and their clients.

A request names its transaction (`infno`), carries a unique `msgid` and the
institution's header fields, and puts the transaction's data in `input`. An
answer carries `infcode` (0 = success), `inf_refmsgid` (the msgid answered),
`err_msg` and `output`. Field names are the platform's, kept verbatim.

Failures are answers, not HTTP errors: every refusal has a non-zero `infcode`,
a machine `err_code` and a human `err_msg` naming the field.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
import secrets
import threading
from dataclasses import dataclass
from datetime import datetime
from enum import IntEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from kiosk.clock import SHANGHAI
from kiosk.errors import (
    ConflictError,
    InputError,
    IntegrityError,
    KioskError,
    RemoteError,
    StorageError,
)

MSGID_RE = re.compile(r"^[A-Z0-9]{12}\d{14}\d{4}$")
ADMDVS_RE = re.compile(r"^\d{6}$")


class InfCode(IntEnum):
    """Answer codes. 0 is success; everything else is a refusal with a reason."""

    OK = 0
    INVALID_INPUT = 1001
    UNKNOWN_TRANSACTION = 1002
    MSGID_CONFLICT = 1003
    BAD_ENVELOPE = 1004
    REPLAYED = 1005
    NOT_SIGNED_IN = 1006
    UNKNOWN_TERMINAL = 1007
    NOT_FOUND = 2001
    IDENTITY_MISMATCH = 2002
    NOT_ACTIVATED = 2003
    FACE_RETRY = 2004
    LOCKED = 2005
    FACE_NOT_MATCHED = 2006
    ALREADY_REVERSED = 3001
    RELATION_NOT_ALLOWED = 3002
    NO_AUTHORISATION = 3003
    BUSINESS_REFUSED = 3004
    STORAGE = 9001
    INTERNAL = 9999


class Refusal(KioskError):
    """A transaction refused with a platform answer code (an expected outcome at the edge)."""

    def __init__(self, infcode: InfCode, message: str, *, code: str | None = None, field: str | None = None) -> None:
        super().__init__(message, code=code or infcode.name.lower(), field=field)
        self.infcode = infcode


def infcode_for(exc: BaseException) -> InfCode:
    """Map a project fault onto an answer code."""
    if isinstance(exc, Refusal):
        return exc.infcode
    if isinstance(exc, ConflictError):
        return InfCode.MSGID_CONFLICT
    if isinstance(exc, InputError):
        return InfCode.INVALID_INPUT
    if isinstance(exc, IntegrityError):
        return InfCode.BAD_ENVELOPE
    if isinstance(exc, StorageError):
        return InfCode.STORAGE
    return InfCode.INTERNAL


def validation_message(err: ValidationError, prefix: str = "input") -> tuple[str, str]:
    """First pydantic error as (field path, one clear sentence)."""
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first.get("loc", ()) if p != "__root__")
    field = f"{prefix}.{loc}" if loc and prefix else (loc or prefix)
    msg = str(first.get("msg", "is invalid"))
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    return field, msg


def parse_model(model: type[BaseModel], data: Any, prefix: str = "input") -> Any:
    """Validate `data` against `model`; a failure becomes InputError naming the field."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        field, msg = validation_message(e, prefix)
        raise InputError(msg, field=field) from None


# What a platform message can hold. Real requests nest 4 levels deep (input.data.feedetail[i].pric);
# anything far deeper, or numbers no amount needs, is hostile or broken and is refused at the door
# (Python's JSON reader would otherwise raise RecursionError deep inside, and each later
# json.dumps/pydantic walk would recurse as deep again).
MAX_JSON_DEPTH = 32
MAX_JSON_INT = 10**18  # far above any amount in fen, below where big-integer arithmetic gets costly


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def loads_json(raw: bytes, field: str, prefix: str = "") -> Any:
    """Strict JSON from bytes: UTF-8 only, no NaN/Infinity, bounded depth and numbers. A failure is
    an InputError naming `field` (the whole text) or the path below `prefix` of the value at fault;
    never RecursionError or UnicodeDecodeError."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError("is not UTF-8 text", field=field) from None
    try:
        doc = json.loads(text, parse_constant=_no_constant)
    except RecursionError:
        raise InputError(f"is nested more than {MAX_JSON_DEPTH} levels deep", field=field) from None
    except ValueError:  # JSONDecodeError, NaN/Infinity, an integer past Python's digit limit
        raise InputError("is not valid JSON", field=field) from None
    check_json_shape(doc, prefix)
    return doc


def _key(k: object) -> str:
    s = str(k)
    return s if len(s) <= 40 and s.isprintable() else repr(s[:40]) + "..."


def _utf8(s: str) -> bool:
    if s.isascii():
        return True
    try:
        s.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def check_json_shape(doc: Any, field: str) -> None:
    """Iterative (no recursion of our own): depth at most MAX_JSON_DEPTH, finite numbers, integers
    below MAX_JSON_INT, text that is valid Unicode (JSON's \\ud800 escapes can spell lone surrogates,
    which no database or UTF-8 encoder takes). InputError names the path (below `field`) of the first offending value."""
    stack: list[tuple[Any, str, int]] = [(doc, field, 0)]
    while stack:
        v, path, depth = stack.pop()
        if isinstance(v, (dict, list)):
            if depth >= MAX_JSON_DEPTH:
                raise InputError(f"is nested more than {MAX_JSON_DEPTH} levels deep", field=path)
            items = v.items() if isinstance(v, dict) else enumerate(v)
            for k, x in items:
                if type(x) is str and x.isascii() and (type(k) is int or k.isascii()):
                    continue  # the common case, decided here
                sub = f"{path}[{k}]" if isinstance(v, list) else (f"{path}.{_key(k)}" if path else _key(k))
                if isinstance(k, str) and not _utf8(k):
                    raise InputError("has a name that is not valid Unicode (a lone surrogate)", field=sub)
                stack.append((x, sub, depth + 1))
        elif isinstance(v, str):
            if not _utf8(v):
                raise InputError("is not valid Unicode (a lone surrogate)", field=path)
        elif isinstance(v, float):
            if not math.isfinite(v):
                raise InputError("is not a finite number", field=path)
        elif isinstance(v, int) and not isinstance(v, bool) and not -MAX_JSON_INT < v < MAX_JSON_INT:
            raise InputError("is too large a number", field=path)


class PlatformRequest(BaseModel):
    """The decrypted request: the platform's header fields and `input`."""

    model_config = ConfigDict(extra="forbid")

    infno: str = Field(min_length=1, max_length=32, description="transaction code, e.g. 2207")
    msgid: str = Field(description="institution code (12) + yyyyMMddHHmmss + 4 digits = 30 characters")
    mdtrtarea_admvs: str = Field(default="", description="area code of the place of treatment (6 digits)")
    insuplc_admdvs: str = Field(default="", description="insured's area code (6 digits)")
    recer_sys_code: str = Field(default="KIOSK", max_length=20)
    dev_no: str = Field(default="", max_length=64)
    dev_safe_info: str = Field(default="", max_length=256)
    cainfo: str = Field(default="", max_length=1024)
    signtype: str = Field(default="SM2")
    infver: str = Field(default="V1.0")
    opter_type: str = Field(default="1", max_length=3)
    opter: str = Field(default="", max_length=30)
    opter_name: str = Field(default="", max_length=50)
    inf_time: str = Field(default="", description="yyyy-MM-dd HH:mm:ss")
    fixmedins_code: str = Field(default="", max_length=30)
    fixmedins_name: str = Field(default="", max_length=200)
    sign_no: str = Field(default="", max_length=64)
    input: dict[str, Any] = Field(default_factory=dict)

    @field_validator("msgid")
    @classmethod
    def _msgid(cls, v: str) -> str:
        if not MSGID_RE.match(v):
            raise ValueError("must be 30 characters: 12 institution-code characters, yyyyMMddHHmmss and 4 digits")
        return v

    @field_validator("mdtrtarea_admvs", "insuplc_admdvs")
    @classmethod
    def _admdvs(cls, v: str) -> str:
        if v and not ADMDVS_RE.match(v):
            raise ValueError("must be a 6-digit area code")
        return v

    @field_validator("infver")
    @classmethod
    def _infver(cls, v: str) -> str:
        if v != "V1.0":
            raise ValueError("only V1.0 is spoken")
        return v


class PlatformResponse(BaseModel):
    """The decrypted answer."""

    infcode: int = Field(description="0 = success; anything else is a refusal")
    inf_refmsgid: str = Field(default="", description="the msgid this answers")
    refmsg_time: str = ""
    respond_time: str = ""
    err_code: str = Field(default="", description="machine reason code (empty on success)")
    err_field: str = Field(default="", description="the input field at fault, when known")
    err_msg: str = ""
    output: dict[str, Any] = Field(default_factory=dict)


def platform_time(dt: datetime) -> str:
    return dt.astimezone(SHANGHAI).strftime("%Y-%m-%d %H:%M:%S")


class MsgidSequence:
    """msgids of one sender: institution code (12) + local second + a 4-digit counter.

    Unique per sender for up to 10,000 messages a second (the receiver keys
    msgids by the sender's appId); the counter starts at a random point so a
    restarted terminal does not reuse the numbers of the same second.
    """

    def __init__(self, institution: str) -> None:
        self.inst = re.sub(r"[^A-Z0-9]", "0", institution.upper())[:12].ljust(12, "0")
        self._n = secrets.randbelow(10000)
        self._lock = threading.Lock()

    def next(self, now: datetime) -> str:
        with self._lock:
            self._n = (self._n + 1) % 10000
            n = self._n
        return self.inst + now.astimezone(SHANGHAI).strftime("%Y%m%d%H%M%S") + f"{n:04d}"


def new_msgid(institution: str, now: datetime) -> str:
    """A one-off msgid (random 4 digits); a sender that sends many uses MsgidSequence."""
    return MsgidSequence(institution).next(now)


def body_digest(infno: str, data: dict[str, Any]) -> str:
    """Digest of what a message asks for: a msgid replayed with another digest is a conflict."""
    canon = json.dumps({"infno": infno, "input": data}, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canon.encode()).hexdigest()


def ok(req_msgid: str, output: dict[str, Any], now: datetime) -> dict[str, Any]:
    t = platform_time(now)
    return PlatformResponse(infcode=0, inf_refmsgid=req_msgid, refmsg_time=t, respond_time=t, output=output).model_dump()


STORAGE_MESSAGE = ("the service's database did not answer ({code}); the message may not have been applied: "
                   "send it again with the same msgid (a retry is never applied twice)")


def refused(req_msgid: str, exc: KioskError, now: datetime) -> dict[str, Any]:
    t = platform_time(now)
    # a database fault's own text names hosts, URLs and SQL: it stays in the service's log
    storage = isinstance(exc, StorageError)
    return PlatformResponse(
        infcode=int(infcode_for(exc)),
        inf_refmsgid=req_msgid,
        refmsg_time=t,
        respond_time=t,
        err_code=exc.code,
        err_field="" if storage else exc.field or "",
        err_msg=STORAGE_MESSAGE.format(code=exc.code) if storage else str(exc),
    ).model_dump()


@dataclass(frozen=True)
class Answer:
    """An answer as a client sees it; `raise_for_refusal` turns a refusal into RemoteError."""

    infcode: int
    err_code: str
    err_msg: str
    output: dict[str, Any]
    msgid: str

    @property
    def ok(self) -> bool:
        return self.infcode == 0

    def raise_for_refusal(self) -> "Answer":
        if self.infcode != 0:
            raise RemoteError(self.err_msg or "refused", code=self.err_code or f"infcode_{self.infcode}")
        return self
