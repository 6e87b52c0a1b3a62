"""Append-only, hash-chained audit log of security events (JSON lines).

Each line: {"seq", "time", "event", "data", "prev", "mac"}. `prev` is the
SHA-256 of the previous line's canonical form (genesis: 64 zeros); `mac` is
HMAC-SHA256 under the device's audit key over the canonical form of the record
without `mac`. Editing a record breaks its MAC; deleting or reordering one breaks
`seq`/`prev` of the next; cutting the tail is caught by the sidecar `<path>.head`
(last seq + hash, MACed), rewritten on every append. `verify` names the FIRST
bad record.

The log refuses personal data: images, templates, raw bytes, float vectors and
full ID numbers are rejected (InputError code "privacy_violation"); ID numbers
go in masked (`mask_id_number`: first 6 + last 4 digits).
"""
from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import os
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Mapping

from kiosk.clock import Clock, SystemClock
from kiosk.errors import InputError, IntegrityError

GENESIS = "0" * 64
# Typical events; any lower-case dotted/underscored name is accepted.
EVENTS = ("activation", "payment", "refund", "key_rotation", "liveness_failed", "admin_action", "login_failed")
_EVENT_RE = re.compile(r"^[a-z][a-z0-9_.]{0,63}$")
_ID_RE = re.compile(r"(?<![0-9A-Za-z])(\d{17}[\dXx]|\d{15})(?![0-9A-Za-z])")
# The same number grouped as on forms: 6 (region) - 8 (birth date) - 4, by one space or dash.
_ID_GROUPED_RE = re.compile(r"(?<![0-9A-Za-z])\d{6}[ -]\d{8}[ -]\d{3}[\dXx](?![0-9A-Za-z])")
# Glued to letters ("psn110101199003074514"): only a valid GB 11643 number with a real birth date
# counts, so hex digests and tokens (which can hold 18 digits in a row) are not mistaken for one.
_ID_GLUED_RE = re.compile(r"(?<!\d)(\d{17}[\dXx])(?!\d)")
_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_B64_RE = re.compile(r"^[A-Za-z0-9+/=_-]{200,}$")
_HEX_RE = re.compile(r"^[0-9A-Fa-f]{256,}$")
_FORBIDDEN_KEY = re.compile(r"image|photo|picture|crop|frame|template|embedding|feature|biometric|face_data|jpeg|png", re.I)


def mask_id_number(id_number: str) -> str:
    """'110101199003071234' -> '110101********1234' (first 6 and last 4 kept)."""
    s = str(id_number).strip()
    if len(s) <= 10:
        raise InputError("ID number too short to mask", field="id_number")
    return s[:6] + "*" * (len(s) - 10) + s[-4:]


def _real_id_number(s: str) -> bool:
    """GB 11643: mod-11 check character and a birth date (digits 7-14) that exists."""
    if "10X98765432"[sum(int(c) * w for c, w in zip(s, _ID_WEIGHTS)) % 11] != s[17].upper():
        return False
    try:
        born = datetime.strptime(s[6:14], "%Y%m%d")
    except ValueError:
        return False
    return 1900 <= born.year <= 2100


def _has_id_number(text: str) -> bool:
    return bool(_ID_RE.search(text) or _ID_GROUPED_RE.search(text)
                or any(_real_id_number(m.group(1)) for m in _ID_GLUED_RE.finditer(text)))


def check_privacy(data: Any, path: str = "data") -> None:
    """Raise InputError(code='privacy_violation') for anything that looks like
    a face image, template or full ID number. Strings of masked IDs pass."""

    def bad(why: str, where: str) -> InputError:
        return InputError(f"refusing to log {why}", code="privacy_violation", field=where)

    if isinstance(data, (bytes, bytearray, memoryview)):
        raise bad("raw bytes (images/templates never go in the audit log)", path)
    if hasattr(data, "__array__") and not isinstance(data, (str, int, float)):
        raise bad("an array (looks like a template)", path)
    if isinstance(data, Mapping):
        for k, v in data.items():
            if not isinstance(k, str):
                raise bad("a non-string key", path)
            if _has_id_number(k):
                raise bad("an unmasked ID number as a key (use mask_id_number)", path)
            if _FORBIDDEN_KEY.search(k):
                raise bad(f"field {k!r} (image/template-like name)", f"{path}.{k}")
            check_privacy(v, f"{path}.{k}")
    elif isinstance(data, (list, tuple)):
        if sum(isinstance(x, float) for x in data) >= 16:
            raise bad("a vector of floats (looks like a template)", path)
        for i, v in enumerate(data):
            check_privacy(v, f"{path}[{i}]")
    elif isinstance(data, str):
        if _has_id_number(data):
            raise bad("an unmasked ID number (use mask_id_number)", path)
        if _B64_RE.match(data) or _HEX_RE.match(data) or data.startswith("data:image"):
            raise bad("a long encoded blob (looks like an image or template)", path)
    elif isinstance(data, int) and not isinstance(data, bool) and _ID_RE.fullmatch(str(data)):
        raise bad("an unmasked ID number given as an integer (use mask_id_number)", path)
    elif data is None or isinstance(data, (bool, int, float)):
        return
    else:
        raise bad(f"a value of type {type(data).__name__}", path)


def _canon(obj: Mapping[str, Any]) -> bytes:
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _hash(obj: Mapping[str, Any]) -> str:
    return hashlib.sha256(_canon(obj)).hexdigest()


def _mac(key: bytes, body: Mapping[str, Any]) -> str:
    return hmac.new(key, _canon(body), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class AuditRecord:
    seq: int
    time: str
    event: str
    data: dict[str, Any]
    prev: str
    mac: str

    def body(self) -> dict[str, Any]:
        return {"seq": self.seq, "time": self.time, "event": self.event, "data": self.data, "prev": self.prev}

    def line_hash(self) -> str:
        return _hash({**self.body(), "mac": self.mac})


@dataclass(frozen=True)
class AuditReport:
    ok: bool
    records: int
    first_bad_seq: int | None = None  # seq (1-based) of the first bad or missing record
    line: int | None = None  # 1-based line number where it was detected
    reason: str = ""

    def __str__(self) -> str:
        if self.ok:
            return f"audit chain intact: {self.records} records"
        return f"audit chain broken at record {self.first_bad_seq} (line {self.line}): {self.reason}"


class AuditLog:
    """Appends are serialised across processes with flock on the log file."""

    def __init__(self, path: str | Path, key: bytes, clock: Clock | None = None) -> None:
        if len(key) < 16:
            raise InputError("audit key must be at least 16 bytes", field="key")
        self.path = Path(path)
        self.key = key
        self.clock = clock or SystemClock()
        self.path.parent.mkdir(parents=True, exist_ok=True)

    @property
    def head_path(self) -> Path:
        return self.path.with_name(self.path.name + ".head")

    def append(self, event: str, **data: Any) -> AuditRecord:
        if not isinstance(event, str) or not _EVENT_RE.match(event):
            raise InputError("event must be a lower-case name like 'payment'", field="event")
        check_privacy(data)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "r+b") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                seq, prev = self._tail(f)
                rec_body = {"seq": seq + 1, "time": self.clock.now().isoformat(timespec="milliseconds"),
                            "event": event, "data": json.loads(_canon(data)), "prev": prev}
                rec = AuditRecord(**rec_body, mac=_mac(self.key, rec_body))
                line = _canon({**rec.body(), "mac": rec.mac}) + b"\n"
                f.write(line)
                f.flush()
                os.fsync(f.fileno())
                self._write_head(rec.seq, rec.line_hash())
                return rec
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _tail(self, f: Any) -> tuple[int, str]:
        """(seq, hash) of the last record, reading only the end of the file."""
        f.seek(0, os.SEEK_END)
        size = f.tell()
        if size == 0:
            return 0, GENESIS
        chunk = min(size, 65536)
        f.seek(size - chunk)
        tail = f.read(chunk).rstrip(b"\n").rsplit(b"\n", 1)[-1]
        try:
            last = json.loads(tail)
            return int(last["seq"]), _hash(last)
        except (ValueError, KeyError, TypeError):
            raise IntegrityError(f"audit log {self.path} ends with an unreadable record; run `kiosk audit verify`",
                                 code="audit_broken") from None

    def _write_head(self, seq: int, h: str) -> None:
        body = {"seq": seq, "hash": h}
        tmp = self.head_path.with_name(self.head_path.name + ".tmp")
        tmp.write_bytes(_canon({**body, "mac": _mac(self.key, body)}))
        os.replace(tmp, self.head_path)

    def verify(self) -> AuditReport:
        return verify_log(self.path, self.key)


def _read_head(path: Path, key: bytes) -> tuple[dict[str, Any] | None, str]:
    """(head, "") when the sidecar is present and its MAC holds, else (None, why)."""
    if not path.exists():
        return None, f"head file {path.name} is missing: records at the end may have been removed"
    try:
        head = json.loads(path.read_bytes())
        body = {"seq": head["seq"], "hash": head["hash"]}
        ok = isinstance(body["seq"], int) and hmac.compare_digest(str(head["mac"]), _mac(key, body))
    except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError):
        ok = False
    return (head, "") if ok else (None, "head file is altered (MAC mismatch)")


def verify_log(path: str | Path, key: bytes) -> AuditReport:
    """Walk the chain; report the first record that is altered, missing or out of place.

    The MACed head sidecar (last seq + hash) catches records cut from the end; it
    must exist once the log has a record (AuditLog writes it on every append).
    """
    path = Path(path)
    if not path.exists():
        return AuditReport(False, 0, 1, 1, f"log file {path} does not exist")
    if not path.is_file():
        raise InputError(f"{path} is not an audit log file", field="path")
    head_path = path.with_name(path.name + ".head")
    head, head_problem = _read_head(head_path, key)
    prev, expected, n = GENESIS, 1, 0
    try:
        f = path.open("rb")
    except OSError as e:
        raise InputError(f"cannot read {path}: {e.strerror}", field="path") from None
    with f:
        for lineno, raw in enumerate(f, 1):
            try:
                obj = json.loads(raw)
                rec = AuditRecord(seq=obj["seq"], time=obj["time"], event=obj["event"], data=obj["data"],
                                  prev=obj["prev"], mac=obj["mac"])
                if set(obj) != {"seq", "time", "event", "data", "prev", "mac"} or not isinstance(rec.seq, int):
                    raise ValueError
            except (ValueError, KeyError, TypeError, UnicodeDecodeError):
                return AuditReport(False, n, expected, lineno, "record is not valid JSON with the audit fields")
            if not hmac.compare_digest(str(rec.mac), _mac(key, rec.body())):
                if rec.seq == expected and rec.prev == prev:
                    return AuditReport(False, n, expected, lineno, "record content was altered (MAC mismatch)")
                return AuditReport(False, n, expected, lineno, f"record {expected} is altered or missing (MAC mismatch)")
            if rec.seq != expected:
                return AuditReport(False, n, expected, lineno,
                                   f"record {expected} is missing (found seq {rec.seq})" if rec.seq > expected
                                   else f"record seq {rec.seq} is out of order or duplicated (expected {expected})")
            if rec.prev != prev:
                return AuditReport(False, n, expected, lineno, "previous-record hash does not match: a record before it was removed or replaced")
            prev, expected, n = _hash(obj), expected + 1, n + 1
            if head is not None and head["seq"] == n and head["hash"] != prev:
                return AuditReport(False, n, n, lineno, "record does not match the head hash")
    if head is None:
        if n == 0 and not head_path.exists():
            return AuditReport(True, 0)  # a log that was never appended to
        return AuditReport(False, n, n + 1, n + 1, head_problem)
    if head["seq"] > n:
        return AuditReport(False, n, n + 1, n + 1, f"records {n + 1}..{head['seq']} were removed from the end")
    return AuditReport(True, n)
