"""Privacy guard: find face images or template-like data left on disk.

Used after a face session (tests, a technician check) on the data dir, logs and
temp dir. It looks *inside* every file (SQLite pages, WAL files, logs), not just
at names, for:
- image containers anywhere in a file: JPEG (SOI + JFIF/Exif/DQT), PNG, GIF,
  BMP (full header check), WebP, TIFF, binary PGM/PPM, NumPy .npy, and Base64-encoded JPEG/PNG;
- float vectors: >= 128 consecutive float32 (or >= 64 float64) values all finite
  with 1e-6 <= |x| < 64 at one alignment -- what an embedding looks like; random
  ciphertext passes that test per value ~10% of the time, text almost never,
  so a run of 128 is not an accident;
- text lists of >= 64 decimal numbers (a template dumped as JSON).

Sealed blobs (AES-GCM) and ordinary rows do not trigger it.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from kiosk.errors import IntegrityError

MIN_F32_RUN = 128
MIN_F64_RUN = 64
MAX_FILE_BYTES = 256 * 1024 * 1024

_JPEG = re.compile(rb"\xff\xd8\xff(?:\xe0..JFIF\x00|\xe1..Exif\x00|\xdb\x00[\x43\x84]|\xee..Adobe)", re.S)
_PNG = re.compile(rb"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR")
_GIF = re.compile(rb"GIF8[79]a")
_BMP = re.compile(rb"BM.{4}\x00\x00\x00\x00.{4}(?:\x0c|\x28|\x38|\x40|\x6c|\x7c)\x00\x00\x00", re.S)
_WEBP = re.compile(rb"RIFF.{4}WEBPVP8", re.S)
_TIFF = re.compile(rb"(?:II\x2a\x00|MM\x00\x2a)")
_PNM = re.compile(rb"P[56][ \t\r\n]+(?:#[^\n]*\n[ \t\r\n]*)*[1-9]\d{0,4}[ \t\r\n]+[1-9]\d{0,4}[ \t\r\n]+(?:255|65535)[ \t\r\n]")
_NPY = re.compile(rb"\x93NUMPY[\x01-\x03]\x00")
_B64IMG = re.compile(rb"/9j/4[A-Za-z0-9+/]{40}|iVBORw0KGgo[A-Za-z0-9+/]{40}")
_NUM = rb"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?"
_FLOAT_LIST = re.compile(rb"\[\s*" + _NUM + rb"(?:\s*,\s*" + _NUM + rb"){63,}")

_SIGNATURES = (("jpeg", _JPEG), ("png", _PNG), ("gif", _GIF), ("bmp", _BMP), ("webp", _WEBP), ("pgm_ppm", _PNM),
               ("npy", _NPY), ("base64_image", _B64IMG), ("float_list_text", _FLOAT_LIST))


@dataclass(frozen=True)
class Finding:
    path: str
    offset: int
    kind: str

    def __str__(self) -> str:
        return f"{self.path}@{self.offset}: {self.kind}"


def _float_runs(data: bytes, dtype: str, itemsize: int, min_run: int) -> Iterable[int]:
    for phase in range(itemsize):
        n = (len(data) - phase) // itemsize
        if n < min_run:
            continue
        v = np.frombuffer(data, dtype=dtype, count=n, offset=phase)
        with np.errstate(invalid="ignore", over="ignore"):
            a = np.abs(v)
            good = np.isfinite(v) & (a >= 1e-6) & (a < 64.0)
        if not good.any():
            continue
        # run lengths of True
        d = np.diff(np.concatenate(([0], good.view(np.int8), [0])))
        starts, ends = np.flatnonzero(d == 1), np.flatnonzero(d == -1)
        for s, e in zip(starts, ends):
            if e - s >= min_run and np.unique(v[s:e]).size > min_run // 4:
                yield phase + int(s) * itemsize
                break


def scan_bytes(data: bytes, name: str = "<bytes>") -> list[Finding]:
    out: list[Finding] = []
    for kind, rx in _SIGNATURES:
        m = rx.search(data)
        if m:
            out.append(Finding(name, m.start(), kind))
    for m in _TIFF.finditer(data):  # 4-byte magic: also require a sane first-IFD offset
        o = m.start()
        if o + 8 <= len(data):
            ifd = int.from_bytes(data[o + 4 : o + 8], "little" if data[o] == 0x49 else "big")
            if 8 <= ifd < len(data) - o and ifd % 2 == 0:
                count = data[o + ifd : o + ifd + 2]
                if len(count) == 2 and 0 < int.from_bytes(count, "little" if data[o] == 0x49 else "big") < 64:
                    out.append(Finding(name, o, "tiff"))
                    break
    for off in _float_runs(data, "<f4", 4, MIN_F32_RUN):
        out.append(Finding(name, off, "float32_vector"))
        break
    for off in _float_runs(data, "<f8", 8, MIN_F64_RUN):
        out.append(Finding(name, off, "float64_vector"))
        break
    return out


def scan_paths(*paths: str | Path, skip: Iterable[str | Path] = ()) -> list[Finding]:
    """Scan files and directory trees (symlinks not followed). Missing paths are skipped."""
    skipped = {Path(p).resolve() for p in skip}
    out: list[Finding] = []
    for root in map(Path, paths):
        if not root.exists():
            continue
        files = [root] if root.is_file() else sorted(
            Path(dp) / f for dp, _, fs in os.walk(root, followlinks=False) for f in fs
        )
        for f in files:
            if f.is_symlink() or not f.is_file() or f.resolve() in skipped or any(s in f.resolve().parents for s in skipped):
                continue
            try:
                with f.open("rb") as fh:
                    data = fh.read(MAX_FILE_BYTES)
            except OSError:
                continue
            out.extend(scan_bytes(data, str(f)))
    return out


def assert_no_biometrics(*paths: str | Path, skip: Iterable[str | Path] = ()) -> None:
    """Raise IntegrityError naming every finding (first 20)."""
    found = scan_paths(*paths, skip=skip)
    if found:
        listing = "; ".join(map(str, found[:20]))
        raise IntegrityError(f"{len(found)} image/template-like item(s) on disk: {listing}", code="privacy_violation")
