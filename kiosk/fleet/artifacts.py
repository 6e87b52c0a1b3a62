"""Operator-signed artifacts (model packs, MCU firmware) and the checks a terminal runs before use.

The operator signs a short statement with an Ed25519 key kept off the fleet
service (`kiosk fleet keygen`); the service only stores and hands out what was
signed, so a compromised fleet server cannot push its own bytes:

    KIOSK-ARTIFACT-V1 \\n kind \\n version \\n sha256(blob) \\n size

A model pack travels as a plain tar of `manifest.json` plus the model files it
names; after the statement checks, every file is checked against the manifest's
sha256 (as `models.loader` does at start), so a pack is used whole or not at all.
An MCU image is a `.kfw` (firmware_bridge.firmware): its own digest (and, with
the firmware trust key, its signature) is checked again before flashing.
"""
from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from kiosk.errors import ConfigError, IntegrityError, InputError

KINDS = ("model_pack", "mcu_firmware")
MAX_FILES = 64
# a pack member: at most three plain path parts (the manifest names e.g. "detection/yunet_s_dynamic.onnx"),
# none hidden, none "..", no absolute path
_PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}(/[A-Za-z0-9][A-Za-z0-9._+-]{0,127}){0,2}")


def statement(kind: str, version: str, sha256: str, size: int) -> bytes:
    if kind not in KINDS:
        raise InputError(f"unknown artifact kind {kind!r}", field="kind")
    return "\n".join(["KIOSK-ARTIFACT-V1", kind, version, sha256, str(int(size))]).encode()


@dataclass(frozen=True)
class SignedArtifact:
    kind: str
    version: str
    sha256: str
    size: int
    signature: str  # base64
    blob: bytes


def sign_artifact(key: Ed25519PrivateKey, kind: str, version: str, blob: bytes) -> SignedArtifact:
    digest = hashlib.sha256(blob).hexdigest()
    sig = key.sign(statement(kind, version, digest, len(blob)))
    return SignedArtifact(kind, version, digest, len(blob), base64.b64encode(sig).decode(), blob)


def verify_statement(pub: Ed25519PublicKey, kind: str, version: str, sha256: str, size: int, signature: str) -> bool:
    try:
        pub.verify(base64.b64decode(signature, validate=True), statement(kind, version, sha256, size))
        return True
    except (InvalidSignature, ValueError):
        return False


def verify_blob(pub: Ed25519PublicKey, kind: str, version: str, sha256: str, size: int, signature: str,
                blob: bytes) -> None:
    """IntegrityError `artifact_digest` or `artifact_signature` unless the bytes are what was signed."""
    if len(blob) != size or hashlib.sha256(blob).hexdigest() != sha256:
        raise IntegrityError("artifact bytes do not match the signed sha256/size", code="artifact_digest",
                             field="sha256")
    if not verify_statement(pub, kind, version, sha256, size, signature):
        raise IntegrityError("artifact signature does not verify with the operator key", code="artifact_signature",
                             field="signature")


# ---------------------------------------------------------------- operator key files
def write_keypair(directory: Path) -> tuple[Path, Path]:
    """operator.key (PKCS#8 PEM, 0600) and operator.pub (SPKI PEM) in `directory`."""
    import os

    directory.mkdir(parents=True, exist_ok=True)
    priv, pub = directory / "operator.key", directory / "operator.pub"
    if priv.exists():
        raise ConfigError(f"{priv} already exists", code="key_exists")
    key = Ed25519PrivateKey.generate()
    fd = os.open(priv, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    pub.write_bytes(public_pem(key.public_key()))
    return priv, pub


def public_pem(pub: Ed25519PublicKey) -> bytes:
    return pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_private(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read operator key {path}: {e}", code="bad_key", field="key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError("operator key must be Ed25519", code="bad_key", field="key")
    return key


def load_public(data: bytes | Path) -> Ed25519PublicKey:
    try:
        raw = Path(data).read_bytes() if isinstance(data, Path) else data
        key = serialization.load_pem_public_key(raw)
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read operator public key: {e}", code="bad_key", field="trust_key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError("operator trust key must be Ed25519", code="bad_key", field="trust_key")
    return key


# ---------------------------------------------------------------- model packs as tar
def pack_tar(root: Path, manifest: Path | None = None) -> bytes:
    """A model pack directory -> tar bytes (manifest.json + the files it names, sorted, no mtimes)."""
    root = Path(root)
    mpath = Path(manifest) if manifest else root / "manifest.json"
    man = json.loads(mpath.read_text())
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        names = [("manifest.json", mpath)] + sorted((e["file"], root / e["file"]) for e in man["models"].values()
                                                    if (root / e["file"]).exists())
        for name, path in names:
            data = path.read_bytes()
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def unpack_pack(blob: bytes, dest: Path) -> str:
    """Extract a pack tar into `dest` (must not exist) and check every file against the manifest.
    Returns the manifest's sha256. Only plain files with plain relative names (up to
    three parts, none hidden, no "..") are accepted."""
    dest = Path(dest)
    dest.mkdir(parents=True)
    files: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(blob), mode="r:") as tar:
            for m in tar.getmembers():
                if not m.isfile() or not _PLAIN_NAME.fullmatch(m.name) or len(files) >= MAX_FILES:
                    raise IntegrityError(f"model pack member {m.name!r} is not a plain file name", code="pack_layout",
                                         field="artifact")
                f = tar.extractfile(m)
                files[m.name] = f.read() if f else b""
    except tarfile.TarError as e:
        raise IntegrityError(f"model pack is not a tar: {e}", code="pack_layout", field="artifact") from None
    if "manifest.json" not in files:
        raise IntegrityError("model pack has no manifest.json", code="pack_layout", field="artifact")
    try:
        man = json.loads(files["manifest.json"])
        entries = list(man["models"].values())
    except (ValueError, KeyError, AttributeError, TypeError):
        raise IntegrityError("model pack manifest is unreadable", code="pack_layout", field="manifest.json") from None
    for e in entries:
        name = e.get("file", "")
        if name not in files:
            if e.get("dev_only"):
                continue
            raise IntegrityError(f"model pack lacks {name}", code="pack_incomplete", field=name)
        if hashlib.sha256(files[name]).hexdigest() != e.get("sha256"):
            raise IntegrityError(f"{name} does not match its manifest sha256", code="pack_digest", field=name)
    for name, data in files.items():
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        (dest / name).write_bytes(data)
    return hashlib.sha256(files["manifest.json"]).hexdigest()
