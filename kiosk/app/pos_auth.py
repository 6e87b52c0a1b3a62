"""Per-system authentication of the POS/HIS API: an API key used as an HMAC key.

Each integrating system (a pharmacy's POS, a hospital's HIS) has an id and a
secret key. A request carries

    X-Pos-System:    the system id
    X-Pos-Timestamp: unix seconds (within WINDOW_S of the terminal's clock)
    X-Pos-Signature: hex HMAC-SHA256(key, "{timestamp}\\n{METHOD}\\n{path?query}\\n{sha256hex(body)}")

so the key never travels, a body cannot be altered and an old request cannot
be replayed outside the window (order ids make replays inside it harmless).
Keys live in `<data_dir>/pos_systems.json` ({"system": "hex key"}), written
by `kiosk pos-key add`.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import time
from pathlib import Path
from typing import Mapping

from kiosk.errors import ConfigError, KioskError

WINDOW_S = 300
_TS = re.compile(r"\d{1,12}")
_SIG = re.compile(r"[0-9a-fA-F]{64}")


class AuthError(KioskError):
    code = "unauthorised"


def sign(key: str, timestamp: str, method: str, path: str, body: bytes) -> str:
    msg = f"{timestamp}\n{method.upper()}\n{path}\n{hashlib.sha256(body).hexdigest()}".encode()
    return hmac.new(key.encode(), msg, hashlib.sha256).hexdigest()


def signed_headers(system: str, key: str, method: str, path: str, body: bytes, now: float | None = None) -> dict[str, str]:
    ts = str(int(now if now is not None else time.time()))
    return {"X-Pos-System": system, "X-Pos-Timestamp": ts, "X-Pos-Signature": sign(key, ts, method, path, body)}


class PosAuth:
    def __init__(self, systems: Mapping[str, str], *, window_s: int = WINDOW_S) -> None:
        self.systems = dict(systems)
        self.window_s = window_s

    def verify(self, headers: Mapping[str, str], method: str, path: str, body: bytes, now: float | None = None) -> str:
        system = headers.get("x-pos-system", "")
        ts = headers.get("x-pos-timestamp", "")
        sig = headers.get("x-pos-signature", "")
        if not system or not ts or not sig:
            raise AuthError("X-Pos-System, X-Pos-Timestamp and X-Pos-Signature headers are required", field="headers")
        key = self.systems.get(system)
        if key is None:
            raise AuthError(f"unknown system {system!r}", field="X-Pos-System")
        if not _TS.fullmatch(ts):  # digits only: no sign, spaces or 4000-digit numbers
            raise AuthError("must be unix seconds", field="X-Pos-Timestamp")
        if abs((now if now is not None else time.time()) - int(ts)) > self.window_s:
            raise AuthError(f"more than {self.window_s} s from the terminal's clock", field="X-Pos-Timestamp")
        if not _SIG.fullmatch(sig) or not hmac.compare_digest(sign(key, ts, method, path, body).encode(),
                                                               sig.lower().encode()):
            raise AuthError("signature does not match the request", field="X-Pos-Signature")
        return system


def systems_file(data_dir: Path) -> Path:
    return data_dir / "pos_systems.json"


def load_systems(data_dir: Path) -> dict[str, str]:
    p = systems_file(data_dir)
    if not p.exists():
        return {}
    mode = p.stat().st_mode & 0o777
    if mode & 0o077:
        raise ConfigError(f"holds API keys but is accessible by group/others (mode {mode:o}); chmod 600 it",
                          field=str(p))
    try:
        data = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"unreadable: {e}", field=str(p)) from None
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise ConfigError('must be {"system": "key", ...}', field=str(p))
    return data


def add_system(data_dir: Path, system: str) -> str:
    """Create (or return) the key of `system`; the file is readable by its owner only."""
    systems = load_systems(data_dir)
    if system not in systems:
        systems[system] = secrets.token_hex(32)
        data_dir.mkdir(parents=True, exist_ok=True)
        p = systems_file(data_dir)
        tmp = p.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)  # a leftover temp file keeps its old mode through O_CREAT
        with os.fdopen(fd, "w") as f:
            json.dump(systems, f, indent=1, sort_keys=True)
        os.replace(tmp, p)
    return systems[system]
