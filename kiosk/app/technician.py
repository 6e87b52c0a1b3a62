"""The technician's local page: health, versions, last errors, the bridge's last
raw frames, and a log bundle to send to support.

Mounted by `mount_screen` on the kiosk app (127.0.0.1:8740) under /technician/:

    GET  /technician/healthz      unauthenticated "ok" for the systemd watchdog (no details)
    GET  /technician/             login form, or the page once logged in
    POST /technician/login        form field `pin`; sets an HttpOnly, SameSite=Strict session cookie
    POST /technician/logout
    GET  /technician/api/status   health + versions + last errors + bridge frames (JSON)
    GET  /technician/bundle.zip   the log bundle, built in memory, masked, with no face data

Every route but healthz answers only to loopback clients and, except the login
form, only with a valid session cookie or `Authorization: Bearer <PIN>`. The PIN
is set by `kiosk provision` and stored as an scrypt hash (0600); five wrong PINs
lock the page for five minutes, and the count and the lock live in the data dir
(provision/technician-lockout.json, 0600), so restarting the app does not reset them.
"""
from __future__ import annotations

import asyncio
import collections
import hashlib
import hmac
import html
import io
import json
import logging
import os
import platform
import re
import secrets
import shutil
import threading
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from kiosk.clock import Clock, SystemClock
from kiosk.config import ROOT, Settings, load
from kiosk.errors import ConfigError, InputError, KioskError

log = logging.getLogger("kiosk.technician")

PIN_FILE = "technician.json"
SESSION_S = 15 * 60
MAX_FAILURES = 5
LOCKOUT_S = 5 * 60
COOKIE = "kiosk_tech"
LOOPBACK = {"127.0.0.1", "::1", "localhost"}
NO_STORE = {"Cache-Control": "no-store", "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer",
            "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'"}

# ----------------------------------------------------------------------------- masking

_ID18 = re.compile(r"(?<![0-9A-Za-z])(\d{6})(\d{8})(\d{3}[0-9Xx])(?![0-9A-Za-z])")
_ID15 = re.compile(r"(?<![0-9A-Za-z*])(\d{6})(\d{5})(\d{4})(?![0-9A-Za-z*])")  # pre-1999 ID numbers
_PHONE = re.compile(r"(?<!\d)((?:86)?1[3-9]\d)(\d{4})(\d{4})(?!\d)")
_CJK_NAME = r"([\u3400-\u9fff])([\u3400-\u9fff\u00b7]{1,15})"
_NAME_KV = re.compile(r"(?i)(\w*name[\"']?\s*[:=]\s*[\"']?)" + _CJK_NAME)
_SECRET_KV = re.compile(r"(?i)((?:app_?secret|secret|token|password|passphrase|pin|x-admin-token|authorization)"
                        r"[\"']?\s*[:=]\s*[\"']?)([^\s\"',;&}]+)")
_BLOB = re.compile(r"[A-Za-z0-9+/=_-]{80,}")
_URL_CRED = re.compile(r"(\w+://[^:/@\s]+:)([^@\s]+)(@)")


def mask_text(s: str) -> str:
    """Mask what a log must not carry: ID numbers (18 or 15 digits; first 6 + last 4 kept), phone numbers,
    Chinese personal names in name fields (first character kept), secrets in key=value form,
    credentials in URLs, and long opaque blobs (templates, keys)."""
    s = _URL_CRED.sub(r"\1***\3", s)
    s = _SECRET_KV.sub(r"\1***", s)
    s = _BLOB.sub(lambda m: f"[blob {len(m.group(0))} chars]", s)
    s = _ID18.sub(lambda m: m.group(1) + "*" * 8 + m.group(3), s)
    s = _ID15.sub(lambda m: m.group(1) + "*" * 5 + m.group(3), s)
    s = _PHONE.sub(r"\1****\3", s)
    s = _NAME_KV.sub(lambda m: m.group(1) + m.group(2) + "*" * len(m.group(3)), s)  # a person's name: 张*
    return s


def _mask_name(v: str) -> str:
    m = re.fullmatch(_CJK_NAME, v.strip())
    return m.group(1) + "*" * len(m.group(2)) if m else mask_text(v)


def mask_obj(o: Any) -> Any:
    if isinstance(o, str):
        return mask_text(o)
    if isinstance(o, dict):
        return {k: ("***" if re.search(r"(?i)secret|token|password|passphrase|pin_hash|salt", str(k))
                    else _mask_name(v) if isinstance(v, str) and str(k).lower().endswith("name")
                    else mask_obj(v)) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [mask_obj(v) for v in o]
    return o


_IMAGE_MAGIC = (b"\xff\xd8\xff", b"\x89PNG", b"BM", b"RIFF", b"GIF8", b"\x93NUMPY", b"II*\x00", b"MM\x00*")


def looks_binary(head: bytes) -> bool:
    """Images, numpy arrays and anything with NUL bytes are not logs: they never enter a bundle."""
    return head.startswith(_IMAGE_MAGIC) or b"\0" in head


# ----------------------------------------------------------------------------- last errors

class ErrorRing(logging.Handler):
    """The last WARNING+ records of this process, masked, in memory."""

    def __init__(self, size: int = 100) -> None:
        super().__init__(level=logging.WARNING)
        self.records: collections.deque[dict[str, str]] = collections.deque(maxlen=size)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = record.getMessage()
            if record.exc_info and record.exc_info[1] is not None:
                msg += f" ({type(record.exc_info[1]).__name__}: {record.exc_info[1]})"
            self.records.append({
                "at": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="seconds"),
                "level": record.levelname, "logger": record.name, "message": mask_text(msg)[:500]})
        except Exception:  # a log handler must never raise
            pass


_ring_lock = threading.Lock()
_ring: ErrorRing | None = None


def error_ring() -> ErrorRing:
    """The process's ring, attached to the root logger once."""
    global _ring
    with _ring_lock:
        if _ring is None:
            _ring = ErrorRing()
            logging.getLogger().addHandler(_ring)
        return _ring


# ----------------------------------------------------------------------------- audit

def audit(data_dir: Path, event: str, clock: Clock | None = None, **data: Any) -> bool:
    """Append a technician action to the device's hash-chained audit log (<data_dir>/audit.log,
    kiosk.security). False when the terminal has no key store yet (nothing to chain with)."""
    try:
        from kiosk.security.audit import AuditLog
        from kiosk.security.keystore import KeyStore

        ks = KeyStore.open(Path(data_dir) / "keys")
        AuditLog(Path(data_dir) / "audit.log", ks.audit_key(), clock).append(event, **data)
        return True
    except KioskError as e:
        log.warning("audit record %s not written: %s", event, e)
        return False


# ----------------------------------------------------------------------------- PIN

def pin_path(data_dir: Path) -> Path:
    return Path(data_dir) / "provision" / PIN_FILE


def _scrypt(pin: str, salt: bytes) -> bytes:
    return hashlib.scrypt(pin.encode(), salt=salt, n=2**14, r=8, p=1, dklen=32)


def _write_0600(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def set_pin(data_dir: Path, pin: str, clock: Clock | None = None) -> None:
    """Store the technician PIN (6-12 digits) as an scrypt hash, readable by the service user only."""
    if not re.fullmatch(r"\d{6,12}", pin or ""):
        raise InputError("must be 6 to 12 digits", field="technician_pin")
    salt = secrets.token_bytes(16)
    rec = {"scheme": "scrypt-n16384-r8-p1", "salt": salt.hex(), "hash": _scrypt(pin, salt).hex(),
           "set_at": (clock or SystemClock()).now().isoformat(timespec="seconds")}
    _write_0600(pin_path(data_dir), json.dumps(rec).encode())


def pin_is_set(data_dir: Path) -> bool:
    return pin_path(data_dir).is_file()


def check_pin(data_dir: Path, pin: str) -> bool:
    p = pin_path(data_dir)
    try:
        rec = json.loads(p.read_text())
        want = bytes.fromhex(rec["hash"])
        got = _scrypt(pin or "", bytes.fromhex(rec["salt"]))
    except FileNotFoundError:
        return False
    except (OSError, ValueError, KeyError) as e:
        raise ConfigError(f"technician PIN file {p} is unreadable: {e}", code="pin_file_invalid") from None
    return hmac.compare_digest(want, got)


LOCKOUT_FILE = "technician-lockout.json"


def lockout_path(data_dir: Path) -> Path:
    return Path(data_dir) / "provision" / LOCKOUT_FILE


class Lockout:
    """Wrong-PIN count and lock-until, kept in the terminal's data dir so a restart (or a crash
    the guesser provokes) does not clear them. Written atomically, 0600. A file that cannot be
    read or makes no sense fails closed: the page is locked for LOCKOUT_S from the moment that is
    noticed (and the file is rewritten, so the lock ends rather than bricking the page)."""

    def __init__(self, data_dir: Path) -> None:
        self.path = lockout_path(data_dir)
        self._mem_until = 0.0  # a lock that could not be written down still holds in this process

    def load(self, now: float) -> tuple[list[float], float]:
        """(failure times within the window, locked-until), both epoch seconds."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return [], self._mem_until
        except OSError as e:
            return self._corrupt(now, f"unreadable: {e.strerror or e}")
        try:
            rec = json.loads(raw)
            fails, until = rec["failures"], rec["locked_until"]
            if not (isinstance(fails, list) and len(fails) <= MAX_FAILURES
                    and all(_finite(t) for t in fails) and _finite(until)):
                raise ValueError("unexpected content")
        except (ValueError, KeyError, TypeError, RecursionError) as e:
            return self._corrupt(now, f"invalid ({type(e).__name__})")
        # a clock set back must not stretch a lock: never more than LOCKOUT_S from now
        if until > now + LOCKOUT_S:
            until = now + LOCKOUT_S
            self.save([], until, now)
        fails = [float(t) for t in fails if abs(now - float(t)) < LOCKOUT_S]
        return fails, max(until, self._mem_until)

    def save(self, failures: list[float], locked_until: float, now: float) -> None:
        try:
            _write_0600(self.path, json.dumps({"failures": failures, "locked_until": locked_until}).encode())
        except OSError as e:  # cannot remember the count: lock now rather than allow unlimited guesses
            log.error("technician lockout state not written (%s): page locked for %d s", e.strerror or e, LOCKOUT_S)
            self._mem_until = max(self._mem_until, now + LOCKOUT_S)

    def _corrupt(self, now: float, why: str) -> tuple[list[float], float]:
        log.warning("technician lockout file %s is %s: failing closed, page locked for %d s", self.path, why,
                    LOCKOUT_S)
        until = now + LOCKOUT_S
        try:
            if self.path.is_symlink() or self.path.is_dir():
                raise OSError("not a regular file")
            self.save([], until, now)
        except OSError:
            pass
        self._mem_until = max(self._mem_until, until)
        return [], until


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and abs(v) < 1e12


class Gate:
    """Sessions (process memory: a restart logs everyone out) and the wrong-PIN lockout
    (the data dir: a restart keeps it, see `Lockout`)."""

    def __init__(self, data_dir: Path, clock: Clock) -> None:
        self.data_dir = data_dir
        self.clock = clock
        self._lock = threading.Lock()
        # one PIN check at a time: parallel guesses cannot all start before the lock engages
        self._checking = threading.Lock()
        self._sessions: dict[str, float] = {}
        self.lockout = Lockout(data_dir)

    def _now(self) -> float:
        return self.clock.now().timestamp()

    def locked_for(self) -> float:
        now = self._now()
        with self._lock:
            return max(0.0, self.lockout.load(now)[1] - now)

    def login(self, pin: str, *, record: bool = True) -> str | None:
        """A session token, or None (wrong PIN, locked, or no PIN set). Failures are always audited;
        a success only when `record` (not for every API call authenticated by header)."""
        with self._checking:
            return self._login(pin, record)

    def _login(self, pin: str, record: bool) -> str | None:
        if self.locked_for() > 0 or not pin_is_set(self.data_dir):
            return None
        ok = check_pin(self.data_dir, pin)
        now = self._now()
        with self._lock:
            failures, until = self.lockout.load(now)
            if until > now:  # locked by another process meanwhile
                return None
            if not ok:
                audit(self.data_dir, "login_failed", self.clock, who="technician", page="technician")
                failures.append(now)
                if len(failures) >= MAX_FAILURES:
                    self.lockout.save([], now + LOCKOUT_S, now)
                    log.warning("technician page locked for %d s after %d wrong PINs", LOCKOUT_S, MAX_FAILURES)
                else:
                    self.lockout.save(failures, 0.0, now)
                    log.warning("technician login failed (%d of %d)", len(failures), MAX_FAILURES)
                return None
            if failures:
                self.lockout.save([], 0.0, now)
            if record:
                audit(self.data_dir, "admin_action", self.clock, action="technician_login")
            tok = secrets.token_urlsafe(32)
            self._sessions = {k: v for k, v in self._sessions.items() if v > now}
            self._sessions[tok] = now + SESSION_S
            return tok

    def valid(self, token: str | None) -> bool:
        if not token:
            return False
        with self._lock:
            exp = self._sessions.get(token)
            return exp is not None and exp > self._now()

    def logout(self, token: str | None) -> None:
        with self._lock:
            self._sessions.pop(token or "", None)


# ----------------------------------------------------------------------------- facts

HealthCheck = Callable[[], tuple[bool, str]]
_extra_checks: dict[str, HealthCheck] = {}


def add_health_check(name: str, fn: HealthCheck) -> None:
    """Let another part of the app (the counter flow, say) report on the page: fn() -> (ok, detail)."""
    _extra_checks[name] = fn


@dataclass
class TechnicianConfig:
    settings: Settings = field(default_factory=load)
    bridge_url: str = "http://127.0.0.1:8730"
    centre_url: str | None = None  # default: the one `kiosk provision` registered with
    clock: Clock = field(default_factory=SystemClock)

    @property
    def data_dir(self) -> Path:
        return Path(self.settings.data_dir)


def provision_record(data_dir: Path) -> dict[str, Any]:
    p = Path(data_dir) / "provision" / "state.json"
    try:
        return json.loads(p.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        return {"error": f"unreadable: {e}"}


def _git_commit() -> str | None:
    head = ROOT / ".git" / "HEAD"
    try:
        ref = head.read_text().strip()
        if ref.startswith("ref: "):
            p = ROOT / ".git" / ref[5:]
            if p.exists():
                return p.read_text().strip()[:12]
            packed = (ROOT / ".git" / "packed-refs").read_text()
            for line in packed.splitlines():
                if line.endswith(ref[5:]):
                    return line.split()[0][:12]
            return None
        return ref[:12]
    except OSError:
        return None


_pack_cache: dict[tuple[str, ...], tuple[bool, str]] = {}


def check_model_pack(root: Path) -> tuple[bool, str]:
    """sha256 of every manifest file (cached while the files' sizes and mtimes stay the same)."""
    try:
        from models.loader import load_manifest

        man = load_manifest()
        files = [Path(root) / e["file"] for e in man["models"].values()]
        key = tuple([str(root)] + [f"{f}:{f.stat().st_size}:{f.stat().st_mtime_ns}" if f.exists() else f"{f}:-"
                                   for f in files])
        if key not in _pack_cache:
            bad = []
            for e in man["models"].values():
                f = Path(root) / e["file"]
                if not f.exists():
                    bad.append(f"{e['file']} missing")
                elif hashlib.sha256(f.read_bytes()).hexdigest() != e["sha256"].lower():
                    bad.append(f"{e['file']} altered")
            _pack_cache.clear()
            _pack_cache[key] = (not bad, "; ".join(bad) or f"{len(files)} files verified (sha256) in {root}")
        return _pack_cache[key]
    except KioskError as e:
        return False, str(e)
    except OSError as e:
        return False, f"{root}: {e}"


def _bridge_status(url: str) -> dict[str, Any] | None:
    try:
        from firmware_bridge.client import BridgeClient

        with BridgeClient(url, timeout=1.0, token_file="") as c:  # status is open: no token needed
            return c.status()
    except Exception as e:  # noqa: BLE001 - any failure means "not reachable" here
        return {"state": "unreachable", "last_error": str(e)}


def _bridge_frames(url: str, token_file: Path, limit: int = 50) -> list[dict[str, Any]]:
    try:
        from firmware_bridge.client import BridgeClient

        with BridgeClient(url, timeout=1.0, token_file=token_file) as c:  # raw frames need the bridge's token
            frames = c.frames(limit)
    except Exception as e:  # noqa: BLE001
        return [{"error": mask_text(str(e))}]
    out = []
    for f in frames:
        hexs = str(f.get("hex", ""))
        nbytes = len(hexs.split())
        if nbytes > 16:  # headers are enough to debug framing; payloads may carry receipt text
            hexs = " ".join(hexs.split()[:16]) + f" …(+{nbytes - 16} bytes)"
        out.append({"t": f.get("t"), "direction": f.get("direction"), "hex": hexs,
                    "summary": mask_text(str(f.get("summary", "")))})
    return out


def _http_ok(url: str) -> tuple[bool, str]:
    import httpx

    try:
        r = httpx.get(url, timeout=1.0)
        return r.status_code < 400, f"{url} answered {r.status_code}"
    except httpx.HTTPError as e:
        return False, f"{url}: {type(e).__name__}"


def health(cfg: TechnicianConfig, bus: Any = None) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []

    def add(name: str, fn: Callable[[], tuple[bool, str]]) -> None:
        t0 = time.perf_counter()
        try:
            ok, detail = fn()
        except Exception as e:  # noqa: BLE001 - a broken check is a failed check, not a 500
            ok, detail = False, f"{type(e).__name__}: {e}"
        rows.append({"name": name, "ok": bool(ok), "detail": mask_text(str(detail)),
                     "ms": round((time.perf_counter() - t0) * 1000, 1)})

    rec = provision_record(cfg.data_dir)

    def provisioning() -> tuple[bool, str]:
        steps = rec.get("steps") or {}
        if not steps:
            return False, "not provisioned (run `kiosk provision`)"
        bad = [n for n, s in steps.items() if s.get("status") != "ok"]
        return not bad, ("all steps ok" if not bad else "not ok: " + ", ".join(bad))

    def keys() -> tuple[bool, str]:
        from kiosk.security.keystore import KeyStore

        ks = KeyStore.open(cfg.data_dir / "keys")
        return True, f"device {ks.device_id}, key {ks.current_kid}"

    def bridge() -> tuple[bool, str]:
        st = _bridge_status(cfg.bridge_url) or {}
        detail = f"{st.get('state')}; firmware {st.get('firmware')}; last error {st.get('last_error')}"
        if st.get("state") == "connected":
            probe = _bridge_frames(cfg.bridge_url, cfg.settings.bridge_token_path(), limit=1)
            if probe and "error" in probe[0]:  # it runs, but the app could not use keypad or printer
                return False, f"{detail}; {probe[0]['error']}"
        return st.get("state") == "connected", detail

    def centre() -> tuple[bool, str]:
        url = cfg.centre_url or ((rec.get("steps") or {}).get("register", {}).get("detail", {}).get("centre_url"))
        if not url:
            return False, "no centre registered yet"
        return _http_ok(url.rstrip("/") + "/health")

    def disk() -> tuple[bool, str]:
        cfg.data_dir.mkdir(parents=True, exist_ok=True)
        u = shutil.disk_usage(cfg.data_dir)
        return u.free > 500 * 2**20, f"{u.free / 2**30:.1f} GiB free of {u.total / 2**30:.1f} GiB in {cfg.data_dir}"

    add("provisioning", provisioning)
    add("keys", keys)
    add("model_pack", lambda: check_model_pack(Path(cfg.settings.model_pack)))
    add("bridge", bridge)
    add("centre", centre)
    add("disk", disk)
    if bus is not None:
        p = bus.current().peripherals
        add("screen", lambda: (True, f"phase {bus.current().phase}; printer {p.printer}, keypad {p.keypad}, "
                                     f"network {p.network}, camera {p.camera}"))
    for name, fn in list(_extra_checks.items()):
        add(name, fn)
    return rows


def versions(cfg: TechnicianConfig) -> dict[str, Any]:
    libs = {}
    for dist in ("kiosk", "numpy", "opencv-python-headless", "onnxruntime", "insightface", "cryptography",
                 "fastapi", "uvicorn", "pydantic", "pyserial", "psycopg"):
        try:
            libs[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            libs[dist] = None
    models: dict[str, str] = {}
    try:
        from models.loader import load_manifest

        man = load_manifest()
        models = {k: f"{e['file']} sha256:{e['sha256'][:12]}" for k, e in man["models"].items()}
    except KioskError as e:
        models = {"error": str(e)}
    st = _bridge_status(cfg.bridge_url) or {}
    return {"software": {"git_commit": _git_commit(), "python": platform.python_version(), **libs},
            "models": models,
            "firmware": {k: st.get(k) for k in ("firmware", "protocol", "model", "device_serial", "state")},
            "host": {"system": platform.system(), "release": platform.release(), "machine": platform.machine()}}


def status(cfg: TechnicianConfig, bus: Any = None) -> dict[str, Any]:
    rec = provision_record(cfg.data_dir)
    return mask_obj({"at": cfg.clock.now().isoformat(timespec="seconds"), "health": health(cfg, bus),
                     "versions": versions(cfg), "provisioning": rec,
                     "last_errors": list(error_ring().records)[::-1],
                     "bridge_frames": _bridge_frames(cfg.bridge_url, cfg.settings.bridge_token_path())})


def log_bundle(cfg: TechnicianConfig, bus: Any = None, *, max_file_bytes: int = 1_000_000) -> bytes:
    """A zip, built in memory: status, masked settings and the tails of the data dir's *.log files.

    Never included: key store, databases, model files, anything that looks like an image or array."""
    buf = io.BytesIO()
    st = status(cfg, bus)
    settings = mask_obj(cfg.settings.as_dict())
    included, skipped = [], []
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("status.json", json.dumps(st, ensure_ascii=False, indent=2))
        z.writestr("settings.json", json.dumps(settings, ensure_ascii=False, indent=2))
        root = cfg.data_dir
        logs = sorted(root.rglob("*.log")) if root.is_dir() else []
        for p in logs:
            rel = p.relative_to(root)
            if rel.parts[0] in ("keys", "models") or not p.is_file():
                skipped.append(f"{rel} (not a log)")
                continue
            size = p.stat().st_size
            with p.open("rb") as f:
                head = f.read(4096)
                if looks_binary(head):
                    skipped.append(f"{rel} (binary: never bundled)")
                    continue
                f.seek(max(0, size - max_file_bytes))
                data = f.read()
            text = data.decode("utf-8", errors="replace")
            if size > max_file_bytes:
                text = text.split("\n", 1)[-1]  # drop the partial first line
            z.writestr(f"logs/{rel}", "\n".join(mask_text(line) for line in text.split("\n")))
            included.append(str(rel))
        z.writestr("MANIFEST.json", json.dumps({
            "created": cfg.clock.now().isoformat(timespec="seconds"), "logs": included, "skipped": skipped,
            "masking": "ID numbers (first 6 + last 4), phone numbers, names, secrets, URL credentials, "
                       "blobs >= 80 chars",
            "face_data": "none: no images, crops or templates are ever bundled"}, indent=2))
    return buf.getvalue()


# ----------------------------------------------------------------------------- page

_CSS = """body{font:16px/1.4 system-ui,sans-serif;margin:1.5rem;background:#fff;color:#111}
table{border-collapse:collapse;margin:.5rem 0 1.5rem}td,th{border:1px solid #bbb;padding:.25rem .5rem;text-align:left;
vertical-align:top}th{background:#eee}.ok{color:#06672f;font-weight:700}.bad{color:#b00020;font-weight:700}
code,pre{font:13px/1.3 monospace}h1{font-size:1.4rem}h2{font-size:1.1rem;margin-top:1.5rem}
form.inline{display:inline}input,button{font:inherit;padding:.3rem .6rem}"""


def _page(title: str, body: str) -> HTMLResponse:
    return HTMLResponse(f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{html.escape(title)}</title>"
                        f"<style>{_CSS}</style></head><body>{body}</body></html>", headers=NO_STORE)


def _login_page(msg: str = "", status_code: int = 200) -> HTMLResponse:
    r = _page("Technician login", f"<h1>Technician page</h1><p>{html.escape(msg)}</p>"
              "<form method=post action=login><label>PIN <input name=pin type=password inputmode=numeric "
              "autocomplete=off autofocus></label> <button>Log in</button></form>")
    r.status_code = status_code
    return r


def _table(rows: list[dict[str, Any]], cols: list[str]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = ""
    for r in rows:
        cells = ""
        for c in cols:
            v = r.get(c)
            if c == "ok":
                cells += f"<td class={'ok' if v else 'bad'}>{'OK' if v else 'FAIL'}</td>"
            else:
                cells += f"<td>{html.escape('' if v is None else str(v))}</td>"
        body += f"<tr>{cells}</tr>"
    return f"<table><tr>{head}</tr>{body}</table>"


def _dashboard(st: dict[str, Any]) -> HTMLResponse:
    v = st["versions"]
    ver_rows = [{"item": f"{sec}.{k}", "value": val} for sec in ("software", "firmware", "host", "models")
                for k, val in (v.get(sec) or {}).items()]
    steps = [{"step": n, **{k: s.get(k) for k in ("status", "summary", "at")}}
             for n, s in ((st.get("provisioning") or {}).get("steps") or {}).items()]
    body = (f"<h1>Technician page</h1><p>{html.escape(st['at'])} · "
            "<a href=bundle.zip>Download log bundle (zip)</a> · "
            "<form class=inline method=post action=logout><button>Log out</button></form></p>"
            "<h2>Health</h2>" + _table(st["health"], ["name", "ok", "detail", "ms"]) +
            "<h2>Provisioning</h2>" + (_table(steps, ["step", "status", "summary", "at"]) if steps else
                                       "<p>Not provisioned: run <code>kiosk provision</code>.</p>") +
            "<h2>Versions</h2>" + _table(ver_rows, ["item", "value"]) +
            "<h2>Last errors</h2>" + (_table(st["last_errors"], ["at", "level", "logger", "message"])
                                      if st["last_errors"] else "<p>None since start.</p>") +
            "<h2>Bridge: last raw frames</h2>" + _table(st["bridge_frames"][::-1],
                                                         ["t", "direction", "hex", "summary", "error"]))
    return _page("Technician page", body)


def build_router(cfg: TechnicianConfig, bus: Any = None, prefix: str = "/technician") -> APIRouter:
    gate = Gate(cfg.data_dir, cfg.clock)
    r = APIRouter(prefix=prefix, tags=["technician"])
    error_ring()

    def loopback(request: Request) -> bool:
        return bool(request.client) and request.client.host in LOOPBACK

    def authed(request: Request) -> bool:
        if gate.valid(request.cookies.get(COOKIE)):
            return True
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            return gate.login(auth[7:].strip(), record=False) is not None
        return False

    def refuse(request: Request, api: bool) -> Response:
        if not loopback(request):
            return JSONResponse({"code": "forbidden", "message": "the technician page answers on loopback only"},
                                status_code=403, headers=NO_STORE)
        if api:
            return JSONResponse({"code": "unauthorized", "message": "log in with the technician PIN"},
                                status_code=401, headers=NO_STORE)
        return RedirectResponse(prefix + "/", status_code=303)

    @r.get("/healthz", include_in_schema=False)
    async def healthz() -> JSONResponse:
        return JSONResponse({"status": "ok"}, headers=NO_STORE)

    @r.get("", include_in_schema=False)
    async def root() -> RedirectResponse:
        return RedirectResponse(prefix + "/")

    @r.get("/", include_in_schema=False)
    def page(request: Request) -> Response:
        if not loopback(request):
            return refuse(request, True)
        if not gate.valid(request.cookies.get(COOKIE)):
            if not pin_is_set(cfg.data_dir):
                return _login_page("No technician PIN is set on this terminal: run `kiosk provision`.")
            return _login_page()
        return _dashboard(status(cfg, bus))

    @r.post("/login", include_in_schema=False)
    async def login(request: Request) -> Response:
        if not loopback(request):
            return refuse(request, True)
        body = await request.body()
        if len(body) > 1024:
            return _login_page("Request too large.", 413)
        pin = (parse_qs(body.decode("utf-8", "replace")).get("pin") or [""])[0][:32]
        left = gate.locked_for()
        if left > 0:
            return _login_page(f"Locked after too many wrong PINs; try again in {int(left) + 1} s.", 429)
        tok = await asyncio.to_thread(gate.login, pin)  # scrypt: off the event loop
        if tok is None:
            left = gate.locked_for()
            msg = (f"Locked after too many wrong PINs; try again in {int(left) + 1} s." if left > 0
                   else "Wrong PIN." if pin_is_set(cfg.data_dir) else "No PIN set: run `kiosk provision`.")
            return _login_page(msg, 429 if left > 0 else 401)
        resp = RedirectResponse(prefix + "/", status_code=303)
        resp.set_cookie(COOKIE, tok, max_age=SESSION_S, httponly=True, samesite="strict", path=prefix)
        return resp

    @r.post("/logout", include_in_schema=False)
    def logout(request: Request) -> Response:
        gate.logout(request.cookies.get(COOKIE))
        resp = RedirectResponse(prefix + "/", status_code=303)
        resp.delete_cookie(COOKIE, path=prefix)
        return resp

    @r.get("/api/status")
    def api_status(request: Request) -> Response:
        if not (loopback(request) and authed(request)):
            return refuse(request, True)
        return JSONResponse(status(cfg, bus), headers=NO_STORE)

    @r.get("/bundle.zip")
    def bundle(request: Request) -> Response:
        if not (loopback(request) and authed(request)):
            return refuse(request, True)
        data = log_bundle(cfg, bus)
        log.info("technician downloaded a log bundle (%d bytes)", len(data))
        audit(cfg.data_dir, "admin_action", cfg.clock, action="log_bundle_export", bytes=len(data))
        name = f"kiosk-logs-{cfg.clock.now().strftime('%Y%m%dT%H%M%S')}.zip"
        return Response(data, media_type="application/zip",
                        headers={**NO_STORE, "Content-Disposition": f'attachment; filename="{name}"'})

    return r


def mount_technician(app: FastAPI, *, bus: Any = None, config: TechnicianConfig | None = None,
                     prefix: str = "/technician") -> None:
    app.include_router(build_router(config or TechnicianConfig(), bus, prefix))
