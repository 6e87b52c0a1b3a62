"""The terminal's own identity: versioned key pairs in a directory only the service user reads.

Layout (dir 0700, files 0600, written atomically):

    <dir>/device.json        device id, current key id
    <dir>/keys/<kid>.json    one key version: Ed25519 (signing), X25519 (agreement),
                             SM2 (platform signatures); public halves in clear,
                             private halves in clear or, with a passphrase, sealed
                             with AES-256-GCM under scrypt(passphrase)
    <dir>/audit.key          HMAC key of the audit chain (never rotates: the chain must stay checkable)

Rotation adds a new version and makes it current; old versions stay, so blobs
sealed to an old agreement key (their header names the key id) still open.
"""
from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import os
import re
import secrets
import stat
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from kiosk.errors import ConfigError, IntegrityError, InputError
from kiosk.security.seal import SealContext, open_sealed, seal
from kiosk.security.sm import Sm2PrivateKey

_RAW_PRIV = (serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
_RAW_PUB = (serialization.Encoding.Raw, serialization.PublicFormat.Raw)
_SCRYPT_N = 2**14
_KID_RE = re.compile(r"v\d{4,}-[0-9a-f]{8}")  # what _add_version writes; never a path


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode("ascii")


def _unb64(s: str) -> bytes:
    return base64.b64decode(s.encode("ascii"), validate=True)


def _write_private(path: Path, data: bytes) -> None:
    """Atomic write of a 0600 file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


@dataclass(frozen=True)
class KeyVersion:
    kid: str
    created: str
    signing: Ed25519PrivateKey
    agreement: X25519PrivateKey
    sm2: Sm2PrivateKey

    def public(self) -> dict[str, str]:
        return {
            "kid": self.kid,
            "created": self.created,
            "ed25519": self.signing.public_key().public_bytes(*_RAW_PUB).hex(),
            "x25519": self.agreement.public_key().public_bytes(*_RAW_PUB).hex(),
            "sm2": self.sm2.public_key().to_bytes().hex(),
        }


class KeyStore:
    """Open with `KeyStore.open(dir)`, create with `KeyStore.init(dir)`."""

    def __init__(self, path: Path, device_id: str, current: str, passphrase: bytes | None) -> None:
        self.path = path
        self.device_id = device_id
        self._current = current
        self._passphrase = passphrase
        self._cache: dict[str, KeyVersion] = {}

    # ------------------------------------------------------------ lifecycle
    @classmethod
    def init(cls, path: str | Path, *, device_id: str | None = None, passphrase: str | bytes | None = None) -> KeyStore:
        """Generate the device identity. Refuses to overwrite an existing store."""
        path = Path(path)
        if (path / "device.json").exists():
            raise ConfigError(f"key store {path} already exists", code="keystore_exists")
        try:
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(path, 0o700)
        except OSError as e:
            raise ConfigError(f"cannot create key store {path}: {e.strerror}", code="keystore_unwritable",
                              field="key_store") from None
        with _locked(path):  # two provisioning processes: one creates, the other is told it exists
            if (path / "device.json").exists():
                raise ConfigError(f"key store {path} already exists", code="keystore_exists")
            (path / "keys").mkdir(mode=0o700, exist_ok=True)
            os.chmod(path / "keys", 0o700)
            dev = device_id or f"KIOSK-{uuid.uuid4().hex[:12].upper()}"
            ks = cls(path, dev, "", _pp(passphrase))
            _write_private(path / "audit.key", secrets.token_bytes(32))
            ks._add_version()
        return ks

    @classmethod
    def open(cls, path: str | Path, *, passphrase: str | bytes | None = None) -> KeyStore:
        path = Path(path)
        meta_path = path / "device.json"
        if not meta_path.exists():
            raise ConfigError(f"no key store at {path} (run `kiosk keys init`)", code="keystore_missing")
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise ConfigError(f"key store {path} is accessible by group/others (mode {mode:o}); chmod 700 it",
                              code="keystore_permissions")
        ks = cls(path, "", "", _pp(passphrase))
        meta = ks._read_meta()
        ks.device_id, ks._current = meta["device_id"], meta["current"]
        return ks

    def _read_meta(self) -> dict[str, str]:
        try:
            meta = json.loads((self.path / "device.json").read_text())
            if not (isinstance(meta["device_id"], str) and isinstance(meta["current"], str)):
                raise TypeError
            return meta
        except (OSError, ValueError, KeyError, TypeError):
            raise IntegrityError(f"key store {self.path}: device.json is unreadable or damaged",
                                 code="keystore_corrupt") from None

    @classmethod
    def open_or_init(cls, path: str | Path, **kw: Any) -> KeyStore:
        path = Path(path)
        if not (path / "device.json").exists():
            try:
                return cls.init(path, **kw)
            except ConfigError as e:
                if e.code != "keystore_exists":
                    raise
        return cls.open(path, passphrase=kw.get("passphrase"))

    def rotate(self) -> str:
        """New key version becomes current; old ones stay for opening old blobs.

        The current version is unlocked first, so a passphrase-protected store is
        never extended with a key written in clear (no passphrase given) or under
        a mistyped passphrase."""
        with _locked(self.path):
            self._current = self._read_meta()["current"]  # another process may have rotated
            self.version(self._current)
            return self._add_version()

    # ------------------------------------------------------------ access
    @property
    def current_kid(self) -> str:
        return self._current

    def kids(self) -> list[str]:
        return sorted(p.stem for p in (self.path / "keys").glob("*.json"))

    def version(self, kid: str | None = None) -> KeyVersion:
        kid = kid or self._current
        if kid not in self._cache:
            self._cache[kid] = self._load(kid)
        return self._cache[kid]

    def signing_key(self, kid: str | None = None) -> Ed25519PrivateKey:
        return self.version(kid).signing

    def agreement_key(self, kid: str | None = None) -> X25519PrivateKey:
        return self.version(kid).agreement

    def sm2_key(self, kid: str | None = None) -> Sm2PrivateKey:
        return self.version(kid).sm2

    def public_identity(self, kid: str | None = None) -> dict[str, str]:
        """What the operator registers for this terminal."""
        return {"device_id": self.device_id, **self.version(kid).public()}

    def audit_key(self) -> bytes:
        p = self.path / "audit.key"
        if not p.exists():
            _write_private(p, secrets.token_bytes(32))
        return p.read_bytes()

    # ------------------------------------------------------------ at-rest encryption
    def encrypt_at_rest(self, data: bytes, *, purpose: str, record_id: str) -> bytes:
        """Seal `data` (e.g. an enrolment-cache template) to this device's current agreement key."""
        v = self.version()
        return seal(data, v.agreement.public_key(), v.kid, SealContext(self.device_id, record_id, purpose))

    def decrypt_at_rest(self, blob: bytes, *, purpose: str, record_id: str) -> bytes:
        return open_sealed(blob, self._lookup, SealContext(self.device_id, record_id, purpose))

    def open_sealed(self, blob: bytes, context: SealContext) -> bytes:
        """Open a blob sealed to any version of this device's agreement key."""
        return open_sealed(blob, self._lookup, context)

    def _lookup(self, kid: str) -> X25519PrivateKey:
        if kid not in self.kids():
            raise KeyError(kid)
        return self.agreement_key(kid)

    # ------------------------------------------------------------ internals
    def _kek(self, salt: bytes) -> bytes:
        assert self._passphrase is not None
        return Scrypt(salt=salt, length=32, n=_SCRYPT_N, r=8, p=1).derive(self._passphrase)

    def _add_version(self) -> str:
        sign, agree, sm2 = Ed25519PrivateKey.generate(), X25519PrivateKey.generate(), Sm2PrivateKey.generate()
        pubs = sign.public_key().public_bytes(*_RAW_PUB) + agree.public_key().public_bytes(*_RAW_PUB) + sm2.public_key().to_bytes()
        n = len(self.kids()) + 1
        kid = f"v{n:04d}-{hashlib.sha256(pubs).hexdigest()[:8]}"
        created = datetime.now(timezone.utc).isoformat(timespec="seconds")
        v = KeyVersion(kid, created, sign, agree, sm2)
        secret = json.dumps({
            "ed25519": sign.private_bytes(*_RAW_PRIV).hex(),
            "x25519": agree.private_bytes(*_RAW_PRIV).hex(),
            "sm2": sm2.to_bytes().hex(),
        }).encode()
        doc: dict[str, Any] = {"public": v.public()}
        if self._passphrase is None:
            doc["private"] = json.loads(secret)
        else:
            salt, nonce = secrets.token_bytes(16), secrets.token_bytes(12)
            ct = AESGCM(self._kek(salt)).encrypt(nonce, secret, kid.encode())
            doc["private_sealed"] = {"kdf": "scrypt", "n": _SCRYPT_N, "salt": _b64(salt), "nonce": _b64(nonce), "ct": _b64(ct)}
        _write_private(self.path / "keys" / f"{kid}.json", json.dumps(doc, indent=1).encode())
        _write_private(self.path / "device.json", json.dumps({"device_id": self.device_id, "current": kid}).encode())
        self._current = kid
        self._cache[kid] = v
        return kid

    def _load(self, kid: str) -> KeyVersion:
        if not _KID_RE.fullmatch(kid):
            raise InputError(f"malformed key version id {kid!r}", field="kid")
        p = self.path / "keys" / f"{kid}.json"
        if not p.exists():
            raise InputError(f"no key version {kid!r} in {self.path}", field="kid")
        try:
            doc = json.loads(p.read_text())
        except (OSError, ValueError):
            raise IntegrityError(f"key file {p.name} is unreadable or damaged", code="keystore_corrupt") from None
        if "private" in doc:
            priv = doc["private"]
        else:
            if self._passphrase is None:
                raise ConfigError("key store is passphrase-protected; set KIOSK_KEY_PASSPHRASE", code="keystore_locked")
            s = doc["private_sealed"]
            try:
                priv = json.loads(AESGCM(self._kek(_unb64(s["salt"]))).decrypt(_unb64(s["nonce"]), _unb64(s["ct"]), kid.encode()))
            except InvalidTag:
                raise IntegrityError(f"key {kid} does not decrypt: wrong passphrase or tampered file", code="keystore_locked") from None
        v = KeyVersion(
            kid,
            doc["public"]["created"],
            Ed25519PrivateKey.from_private_bytes(bytes.fromhex(priv["ed25519"])),
            X25519PrivateKey.from_private_bytes(bytes.fromhex(priv["x25519"])),
            Sm2PrivateKey.from_bytes(bytes.fromhex(priv["sm2"])),
        )
        if v.public() != doc["public"]:
            raise IntegrityError(f"key file {p.name}: private and public halves disagree", code="keystore_corrupt")
        return v


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    fd = os.open(path / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _pp(passphrase: str | bytes | None) -> bytes | None:
    if passphrase is None or passphrase == "" or passphrase == b"":
        return None
    return passphrase.encode("utf-8") if isinstance(passphrase, str) else passphrase


def operator_token(path: Path, env_var: str) -> str:
    """An operator's token for a service's /admin routes: `$env_var` when set, else a random token made once
    in `path` (0600, created exclusively, so two workers starting together end up with the same one)."""
    env = os.environ.get(env_var)
    if env:
        return env
    path = Path(path)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            os.write(fd, secrets.token_urlsafe(24).encode())
            os.close(fd)
    return path.read_text().strip()
