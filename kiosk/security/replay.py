"""Signed requests with nonce + timestamp, and a receiver that refuses replays and stale messages.

The sender signs a canonical string binding method, path, SHA-256 of the body,
device id, key id, nonce and timestamp (Ed25519 by default, SM2 accepted). The
receiver checks, in this order: headers present, key known, signature valid,
timestamp inside the window, nonce never seen in that window. The nonce is
remembered only after the signature checked, so forged traffic cannot burn
nonces. Nonces live `2 * window` (anything older is refused as stale anyway).

Nonce stores are pluggable: `MemoryNonceStore` (LRU with TTL, one process) and
`SqliteNonceStore` (stdlib sqlite3, WAL; survives restarts, shared by processes).
"""
from __future__ import annotations

import base64
import hashlib
import secrets
import sqlite3
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Union

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from kiosk.clock import Clock, SystemClock
from kiosk.errors import ConfigError, IntegrityError, StorageError
from kiosk.security.sm import Sm2PrivateKey, Sm2PublicKey, sm2_sign, sm2_verify

H_DEVICE = "X-Kiosk-Device"
H_KEY = "X-Kiosk-Key"
H_ALG = "X-Kiosk-Alg"
H_NONCE = "X-Kiosk-Nonce"
H_TIMESTAMP = "X-Kiosk-Timestamp"
H_SIGNATURE = "X-Kiosk-Signature"
HEADERS = (H_DEVICE, H_KEY, H_ALG, H_NONCE, H_TIMESTAMP, H_SIGNATURE)

PublicKey = Union[Ed25519PublicKey, Sm2PublicKey]
PrivateKey = Union[Ed25519PrivateKey, Sm2PrivateKey]


def canonical_request(method: str, path: str, body: bytes, device_id: str, key_id: str, alg: str, nonce: str, ts_ms: int) -> bytes:
    return "\n".join([
        "KIOSK-REQ-V1", method.upper(), path, hashlib.sha256(body).hexdigest(), device_id, key_id, alg, nonce, str(ts_ms),
    ]).encode("utf-8")


def _now_ms(clock: Clock) -> int:
    return int(clock.now().timestamp() * 1000)


class RequestSigner:
    """Adds the X-Kiosk-* headers to an outgoing request (or response)."""

    def __init__(self, key: PrivateKey, *, device_id: str, key_id: str, clock: Clock | None = None) -> None:
        self.key, self.device_id, self.key_id = key, device_id, key_id
        self.alg = "SM2" if isinstance(key, Sm2PrivateKey) else "Ed25519"
        self.clock = clock or SystemClock()

    def headers(self, method: str, path: str, body: bytes = b"") -> dict[str, str]:
        nonce = secrets.token_urlsafe(16)
        ts = _now_ms(self.clock)
        msg = canonical_request(method, path, body, self.device_id, self.key_id, self.alg, nonce, ts)
        sig = sm2_sign(self.key, msg) if isinstance(self.key, Sm2PrivateKey) else self.key.sign(msg)
        return {
            H_DEVICE: self.device_id, H_KEY: self.key_id, H_ALG: self.alg,
            H_NONCE: nonce, H_TIMESTAMP: str(ts), H_SIGNATURE: base64.b64encode(sig).decode("ascii"),
        }


class NonceStore(Protocol):
    def add(self, scope: str, nonce: str, now_ms: int, ttl_ms: int) -> bool:
        """Remember (scope, nonce) until now+ttl; False if it is already remembered and alive."""
        ...


class MemoryNonceStore:
    """In-process LRU with TTL. Bounded: when full the oldest entry is dropped
    (those are the ones closest to leaving the window anyway)."""

    def __init__(self, max_items: int = 200_000) -> None:
        self.max_items = max_items
        self._d: OrderedDict[tuple[str, str], int] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, scope: str, nonce: str, now_ms: int, ttl_ms: int) -> bool:
        k = (scope, nonce)
        with self._lock:
            exp = self._d.get(k)
            if exp is not None and exp > now_ms:
                return False
            self._d[k] = now_ms + ttl_ms
            self._d.move_to_end(k)
            while self._d:  # drop expired from the old end, then enforce the bound
                old_k, old_exp = next(iter(self._d.items()))
                if old_exp <= now_ms or len(self._d) > self.max_items:
                    self._d.popitem(last=False)
                else:
                    break
            return True

    def __len__(self) -> int:
        return len(self._d)


class SqliteNonceStore:
    """Nonces in a SQLite file (stdlib sqlite3): survive a restart and are shared between processes."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=5)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS security_nonce (scope TEXT NOT NULL, nonce TEXT NOT NULL,"
                " expires_ms INTEGER NOT NULL, PRIMARY KEY (scope, nonce))"
            )
        except sqlite3.Error as e:
            raise StorageError(f"nonce store {self.path}: {e}") from None
        self._adds = 0

    def add(self, scope: str, nonce: str, now_ms: int, ttl_ms: int) -> bool:
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    row = self._db.execute("SELECT expires_ms FROM security_nonce WHERE scope=? AND nonce=?", (scope, nonce)).fetchone()
                    if row is not None and row[0] > now_ms:
                        fresh = False
                    else:
                        self._db.execute("INSERT OR REPLACE INTO security_nonce VALUES (?,?,?)", (scope, nonce, now_ms + ttl_ms))
                        fresh = True
                    self._adds += 1
                    if self._adds % 1000 == 0:
                        self._db.execute("DELETE FROM security_nonce WHERE expires_ms <= ?", (now_ms,))
                    self._db.execute("COMMIT")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                return fresh
            except sqlite3.Error as e:
                raise StorageError(f"nonce store {self.path}: {e}") from None

    def close(self) -> None:
        self._db.close()


NONCE_MIGRATIONS_NAME = "security.001_nonces"


def nonce_migrations() -> list:
    from kiosk.storage import Migration

    return [Migration(NONCE_MIGRATIONS_NAME, [
        "CREATE TABLE IF NOT EXISTS security_nonces (scope TEXT NOT NULL, nonce TEXT NOT NULL,"
        " expires_ms BIGINT NOT NULL, PRIMARY KEY (scope, nonce))",
    ])]


class DatabaseNonceStore:
    """Nonces in the project database (`kiosk.storage`: SQLite or PostgreSQL), so every
    worker process of a service shares one replay window. The claim is one
    INSERT .. ON CONFLICT DO NOTHING, so two concurrent receivers of the same
    message cannot both accept it."""

    def __init__(self, db: object) -> None:
        from kiosk.storage import Database

        if not isinstance(db, Database):
            raise TypeError("DatabaseNonceStore needs a kiosk.storage.Database")
        self.db = db
        db.migrate(nonce_migrations())
        self._adds = 0

    def add(self, scope: str, nonce: str, now_ms: int, ttl_ms: int) -> bool:
        def work(tx: object) -> bool:
            sql, params = self.claim_statement(scope, nonce, now_ms, ttl_ms)
            return self.resolve(tx, tx.fetch_one(sql, params), scope, nonce, now_ms, ttl_ms)  # type: ignore[attr-defined]

        return bool(self.db.run(work))  # type: ignore[attr-defined]

    @staticmethod
    def claim_statement(scope: str, nonce: str, now_ms: int, ttl_ms: int) -> tuple[str, tuple[Any, ...]]:
        """The claim as (sql, params), for a caller that sends it with other statements in one
        round trip (kiosk.storage `Transaction.fetch_each`); hand its row to `resolve`."""
        return ("INSERT INTO security_nonces (scope, nonce, expires_ms) VALUES (?, ?, ?) "
                "ON CONFLICT (scope, nonce) DO NOTHING RETURNING nonce", (scope, nonce, now_ms + ttl_ms))

    def resolve(self, tx: Any, claimed: Any, scope: str, nonce: str, now_ms: int, ttl_ms: int) -> bool:
        """True when the nonce is ours: newly claimed, or taken before but expired (re-claimed
        atomically here). Every 1000th claim also purges expired nonces."""
        fresh = claimed is not None
        if not fresh:
            n = tx.execute("UPDATE security_nonces SET expires_ms = ? WHERE scope = ? AND nonce = ? AND expires_ms <= ?",
                           (now_ms + ttl_ms, scope, nonce, now_ms))
            fresh = n == 1
        self._adds += 1
        if self._adds % 1000 == 0:
            tx.execute("DELETE FROM security_nonces WHERE expires_ms <= ?", (now_ms,))
        return fresh


class ReplayGuard:
    """Freshness + uniqueness of (scope, nonce) within `window_s` of the receiver's clock."""

    def __init__(self, store: NonceStore | None = None, *, window_s: float | None = None, clock: Clock | None = None) -> None:
        """`window_s` defaults to Settings.replay_window_s (KIOSK_REPLAY_WINDOW_S, 300 s)."""
        if window_s is None:
            from kiosk import config

            window_s = config.load().replay_window_s
        if not 0 < window_s <= 86400:
            raise ConfigError(f"anti-replay window must be in (0, 86400] seconds, got {window_s:g}",
                              code="bad_replay_window", field="replay_window_s")
        self.store = store if store is not None else MemoryNonceStore()
        self.window_ms = int(window_s * 1000)
        self.clock = clock or SystemClock()

    def check(self, scope: str, nonce: str, ts_ms: int) -> None:
        """Raises IntegrityError code 'stale' or 'replayed'; returns None for a fresh message."""
        now = self.fresh(nonce, ts_ms)
        if not self.store.add(scope, nonce, now, self.ttl_ms):
            raise self.replayed()

    def fresh(self, nonce: str, ts_ms: int) -> int:
        """The checks before the nonce store: a usable nonce and a timestamp inside the window
        (IntegrityError 'bad_nonce' / 'stale'); returns the receiver's now in ms."""
        if not nonce or len(nonce) > 128:
            raise IntegrityError("nonce is empty or longer than 128 characters", code="bad_nonce", field=H_NONCE)
        now = _now_ms(self.clock)
        if abs(now - ts_ms) > self.window_ms:
            raise IntegrityError(
                f"message timestamp is {abs(now - ts_ms) / 1000:.0f} s from now, outside the {self.window_ms / 1000:g} s window",
                code="stale", field=H_TIMESTAMP,
            )
        return now

    @property
    def ttl_ms(self) -> int:
        """How long a nonce is remembered: twice the window (a timestamp may be early or late)."""
        return 2 * self.window_ms

    @staticmethod
    def replayed() -> IntegrityError:
        return IntegrityError("nonce was already used: replayed message", code="replayed", field=H_NONCE)


KeyResolver = Callable[[str, str], "PublicKey | None"]


@dataclass(frozen=True)
class VerifiedRequest:
    device_id: str
    key_id: str
    nonce: str
    timestamp_ms: int


class RequestVerifier:
    """Receiver side. `keys(device_id, key_id)` returns the registered public key or None
    (a dict {(device_id, key_id): key} works too)."""

    def __init__(self, keys: KeyResolver | Mapping[tuple[str, str], PublicKey], guard: ReplayGuard) -> None:
        self._keys = keys
        self.guard = guard

    def _resolve(self, device_id: str, key_id: str) -> PublicKey | None:
        if isinstance(self._keys, Mapping):
            return self._keys.get((device_id, key_id))
        return self._keys(device_id, key_id)

    def verify(self, method: str, path: str, body: bytes, headers: Mapping[str, str]) -> VerifiedRequest:
        """Raises IntegrityError (codes: missing_header, unknown_key, bad_signature, stale, replayed)."""
        low = {k.lower(): v for k, v in headers.items()}
        vals = {}
        for h in HEADERS:
            v = low.get(h.lower())
            if not v:
                raise IntegrityError(f"header {h} is missing", code="missing_header", field=h)
            vals[h] = v
        ts_s = vals[H_TIMESTAMP]
        if not (ts_s.isascii() and ts_s.isdigit()):
            raise IntegrityError("timestamp must be milliseconds since the epoch", code="bad_timestamp", field=H_TIMESTAMP)
        ts = int(ts_s)
        dev, kid, alg = vals[H_DEVICE], vals[H_KEY], vals[H_ALG]
        pub = self._resolve(dev, kid)
        if pub is None:
            raise IntegrityError(f"no registered key {kid!r} for device {dev!r}", code="unknown_key", field=H_KEY)
        try:
            sig = base64.b64decode(vals[H_SIGNATURE], validate=True)
        except ValueError:
            sig = b""
        msg = canonical_request(method, path, body, dev, kid, alg, vals[H_NONCE], ts)
        ok = False
        if alg == "SM2" and isinstance(pub, Sm2PublicKey):
            ok = sm2_verify(pub, msg, sig)
        elif alg == "Ed25519" and isinstance(pub, Ed25519PublicKey):
            try:
                pub.verify(sig, msg)
                ok = True
            except InvalidSignature:
                ok = False
        if not ok:
            raise IntegrityError("request signature does not verify", code="bad_signature", field=H_SIGNATURE)
        self.guard.check(dev, vals[H_NONCE], ts)
        return VerifiedRequest(dev, kid, vals[H_NONCE], ts)
