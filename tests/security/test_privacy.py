"""Privacy guard: real face images and template-like vectors are found wherever they hide;
sealed blobs, audit logs and ordinary database rows are not flagged."""
from __future__ import annotations

import base64
import json
import os
import sqlite3
from pathlib import Path

import cv2
import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from kiosk.errors import IntegrityError
from kiosk.security.audit import AuditLog
from kiosk.security.privacy import assert_no_biometrics, scan_bytes, scan_paths
from kiosk.security.seal import SealContext, seal


@pytest.fixture(scope="module")
def faces(shared_dir: Path) -> dict[str, bytes]:
    f = shared_dir / "data" / "faces"
    return {
        "jpeg": (f / "misc" / "angelina_jolie.jpg").read_bytes(),
        "png": (f / "casia-facev5-dev" / "000" / "000_0.png").read_bytes(),
        "pgm": (f / "orl" / "s1" / "1.pgm").read_bytes(),
    }


def _embedding(seed: int = 0, dim: int = 512) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    return v / np.linalg.norm(v)  # what an L2-normalised face embedding looks like


def _kinds(found) -> set[str]:
    return {f.kind for f in found}


def test_real_face_files_are_found(faces: dict[str, bytes], tmp_path: Path) -> None:
    for kind, data in faces.items():
        (tmp_path / f"frame.{kind}").write_bytes(data)
    kinds = _kinds(scan_paths(tmp_path))
    assert {"jpeg", "png", "pgm_ppm"} <= kinds


def test_reencoded_crops_in_every_container(faces: dict[str, bytes]) -> None:
    img = cv2.imdecode(np.frombuffer(faces["jpeg"], np.uint8), cv2.IMREAD_COLOR)
    crop = img[40:152, 40:152]
    for ext, kind in ((".jpg", "jpeg"), (".png", "png"), (".bmp", "bmp"), (".webp", "webp"), (".tiff", "tiff"), (".ppm", "pgm_ppm")):
        ok, buf = cv2.imencode(ext, crop)
        assert ok
        assert kind in _kinds(scan_bytes(b"prefix-bytes" + buf.tobytes() + b"suffix")), ext


def test_images_and_templates_inside_a_database(faces: dict[str, bytes], tmp_path: Path) -> None:
    db = tmp_path / "kiosk.db"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, note TEXT, blob BLOB)")
    con.execute("INSERT INTO t (note, blob) VALUES (?, ?)", ("crop", faces["jpeg"]))
    con.execute("INSERT INTO t (note, blob) VALUES (?, ?)", ("tpl", _embedding().tobytes()))
    con.commit()
    con.close()
    assert {"jpeg", "float32_vector"} <= _kinds(scan_paths(tmp_path))


def test_template_shapes(tmp_path: Path) -> None:
    e = _embedding(1)
    assert "float32_vector" in _kinds(scan_bytes(b"\x01\x02\x03" + e.tobytes()))  # unaligned
    assert "float32_vector" in _kinds(scan_bytes((e * 23.0).tobytes()))  # not normalised
    assert "float64_vector" in _kinds(scan_bytes(e.astype(np.float64).tobytes()))
    np.save(tmp_path / "t.npy", e)
    assert "npy" in _kinds(scan_paths(tmp_path / "t.npy"))
    text = json.dumps({"embedding": [round(float(x), 6) for x in e]}).encode()
    assert "float_list_text" in _kinds(scan_bytes(text))


def test_base64_images_in_logs(faces: dict[str, bytes]) -> None:
    for kind in ("jpeg", "png"):
        line = b'{"event":"debug","img":"' + base64.b64encode(faces[kind]) + b'"}\n'
        assert "base64_image" in _kinds(scan_bytes(line)), kind


def test_no_false_positives_on_what_the_kiosk_legitimately_writes(faces: dict[str, bytes], tmp_path: Path) -> None:
    rec = X25519PrivateKey.generate()
    ctx = SealContext("KIOSK-1", "S1", "face-template")
    (tmp_path / "sealed.bin").write_bytes(b"".join(
        seal(_embedding(i).tobytes(), rec.public_key(), "v0001-aa", ctx) for i in range(50)))
    (tmp_path / "sealed_crop.bin").write_bytes(seal(faces["jpeg"], rec.public_key(), "v0001-aa", ctx))
    (tmp_path / "random.bin").write_bytes(os.urandom(2_000_000))
    log = AuditLog(tmp_path / "audit.log", b"k" * 32)
    for i in range(300):
        log.append("payment", order=f"O{i}", amount="12.30", id="110101********1234")
    con = sqlite3.connect(tmp_path / "orders.db")
    con.execute("CREATE TABLE o (id INTEGER PRIMARY KEY, amount_fen INTEGER, ratio REAL, note TEXT)")
    con.executemany("INSERT INTO o (amount_fen, ratio, note) VALUES (?,?,?)",
                    [(i * 37, i / 1000.0, f"order {i} settled at counter 3") for i in range(5000)])
    con.commit()
    con.close()
    (tmp_path / "app.log").write_text("\n".join(
        f"2026-01-01T00:00:{i % 60:02d} INFO settle bill={i} fund=12.34 cash=5.00 scores hidden" for i in range(3000)))
    assert scan_paths(tmp_path) == []
    assert_no_biometrics(tmp_path)


def test_assert_names_the_offending_file(faces: dict[str, bytes], tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "leak.dat").write_bytes(b"\x00" * 100 + faces["png"])
    with pytest.raises(IntegrityError, match=r"leak\.dat@100: png"):
        assert_no_biometrics(tmp_path)
    assert_no_biometrics(tmp_path, skip=[tmp_path / "sub"])
    assert scan_paths(tmp_path / "does-not-exist") == []
