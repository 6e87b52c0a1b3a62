"""Signed firmware images and the chunked, resumable update.

Image file (``.kfw``)::

    "KFW1" | version 3*u8 | size u32 LE | sha256(image) 32 | Ed25519 signature 64 | image

The signature covers the first 43 bytes (magic, version, size, digest), so the
device can check it after the last chunk without holding the image in RAM
twice. The device verifies digest and signature *before* it switches slots
(FW_COMMIT); a bad image leaves the running firmware untouched. Resume:
FW_BEGIN with the same digest answers the offset already received, even after
a cable pull or a reboot (the staging area is flash).
"""
from __future__ import annotations

import hashlib
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from firmware_bridge.messages import Cmd, FwBegin, Status, Version, fmt_version, read_u32, u32
from kiosk.errors import DeviceError, IntegrityError, InputError

MAGIC = b"KFW1"
HEAD_LEN = 4 + 3 + 4 + 32
SIG_LEN = 64


def signed_header(version: Version, size: int, digest: bytes) -> bytes:
    return MAGIC + bytes(version) + struct.pack("<I", size) + digest


@dataclass(frozen=True)
class SignedImage:
    version: Version
    data: bytes
    sha256: bytes
    signature: bytes

    @property
    def header(self) -> bytes:
        return signed_header(self.version, len(self.data), self.sha256)

    def to_bytes(self) -> bytes:
        return self.header + self.signature + self.data

    @classmethod
    def from_bytes(cls, blob: bytes) -> SignedImage:
        if len(blob) < HEAD_LEN + SIG_LEN or blob[:4] != MAGIC:
            raise InputError("not a KFW1 firmware image", field="image")
        version = (blob[4], blob[5], blob[6])
        (size,) = struct.unpack("<I", blob[7:11])
        digest = blob[11:43]
        sig = blob[43:107]
        data = blob[107:]
        if len(data) != size:
            raise IntegrityError(f"firmware image truncated: header says {size} bytes, file has {len(data)}", field="image")
        if hashlib.sha256(data).digest() != digest:
            raise IntegrityError("firmware image digest does not match its header", field="image")
        return cls(version, data, digest, sig)

    def verify(self, key: Ed25519PublicKey) -> bool:
        try:
            key.verify(self.signature, self.header)
            return True
        except InvalidSignature:
            return False


def sign_image(key: Ed25519PrivateKey, version: Version, data: bytes) -> SignedImage:
    digest = hashlib.sha256(data).digest()
    return SignedImage(version, bytes(data), digest, key.sign(signed_header(version, len(data), digest)))


def load_public_key(pem: bytes) -> Ed25519PublicKey:
    key = serialization.load_pem_public_key(pem)
    if not isinstance(key, Ed25519PublicKey):
        raise InputError("firmware trust key must be an Ed25519 public key", field="trust_key")
    return key


@dataclass(frozen=True)
class UpdateResult:
    version: str
    resumed_from: int
    chunks_sent: int
    complete: bool


class FirmwareUpdater:
    """Host side of the update: FW_BEGIN, FW_CHUNK..., FW_COMMIT, wait for the new version."""

    def __init__(self, link, *, chunk_size: int | None = None) -> None:  # link: session.Link (duck-typed)
        self.link = link
        self.chunk_size = chunk_size

    def update(
        self,
        image: SignedImage,
        *,
        stop_after_chunks: int | None = None,
        progress: Callable[[int, int], None] | None = None,
        reboot_timeout: float = 5.0,
    ) -> UpdateResult:
        link = self.link
        max_payload = link.info.max_payload if link.info else 1024
        chunk = min(self.chunk_size or max_payload - 4, max_payload - 4)
        size = len(image.data)
        begin = FwBegin(size, image.version, image.sha256).encode()
        offset = read_u32(link.request(Cmd.FW_BEGIN, begin).check("firmware begin"), "FW_BEGIN response")
        resumed_from = offset
        sent = 0
        while offset < size:
            if stop_after_chunks is not None and sent >= stop_after_chunks:
                return UpdateResult(fmt_version(image.version), resumed_from, sent, False)
            rsp = link.request(Cmd.FW_CHUNK, u32(offset) + image.data[offset : offset + chunk])
            sent += 1
            if rsp.status == Status.FW_BAD_OFFSET:  # device knows better where we are
                offset = read_u32(rsp.data, "FW_CHUNK response")
                continue
            offset = read_u32(rsp.check("firmware chunk"), "FW_CHUNK response")
            if progress:
                progress(offset, size)
        link.request(Cmd.FW_COMMIT, image.signature, exec_timeout=10.0).check("firmware commit")
        deadline = time.monotonic() + reboot_timeout
        while time.monotonic() < deadline:
            if link.info is not None and link.info.firmware == image.version and link.state.value == "connected":
                return UpdateResult(fmt_version(image.version), resumed_from, sent, True)
            time.sleep(0.01)
        raise DeviceError(f"device did not come back with firmware {fmt_version(image.version)}", code="firmware_not_switched")


def _main(argv: list[str] | None = None) -> int:
    import argparse
    import sys
    from pathlib import Path

    from firmware_bridge.messages import parse_version

    ap = argparse.ArgumentParser(prog="python -m firmware_bridge.firmware", description="make and sign MCU firmware images")
    sub = ap.add_subparsers(dest="cmd", required=True)
    k = sub.add_parser("keygen", help="write an Ed25519 key pair (PEM)")
    k.add_argument("private", type=Path)
    k.add_argument("public", type=Path)
    s = sub.add_parser("sign", help="wrap a raw image into a signed .kfw")
    s.add_argument("--key", type=Path, required=True)
    s.add_argument("--version", required=True)
    s.add_argument("raw", type=Path)
    s.add_argument("out", type=Path)
    a = ap.parse_args(argv)
    if a.cmd == "keygen":
        key = Ed25519PrivateKey.generate()
        a.private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        a.private.chmod(0o600)
        a.public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
        return 0
    priv = serialization.load_pem_private_key(a.key.read_bytes(), password=None)
    if not isinstance(priv, Ed25519PrivateKey):
        print("sign: --key must be an Ed25519 private key", file=sys.stderr)
        return 2
    a.out.write_bytes(sign_image(priv, parse_version(a.version), a.raw.read_bytes()).to_bytes())
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
