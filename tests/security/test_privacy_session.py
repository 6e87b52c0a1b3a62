"""Privacy guard over a whole face session: real models on real faces, then the data dir,
the logs and the temp dir are scanned for image or template bytes (issue 5, "privacy guard").

The session does what a terminal does with a face: capture a live person over several frames,
match against the enrolment template, seal the probe to the centre, cache the enrolment template
encrypted at rest, journal the request, write the audit trail (masked ID), and refuse a spoof.
Everything it leaves behind must be free of biometrics; a control plants one template to show
the scan would have seen it.
"""
from __future__ import annotations

import base64
import logging
import sqlite3
import tempfile
from pathlib import Path

import numpy as np
import pytest

from kiosk.security.audit import AuditLog, mask_id_number, verify_log
from kiosk.security.keystore import KeyStore
from kiosk.security.privacy import scan_paths
from kiosk.security.seal import SealContext, seal


@pytest.fixture(scope="module")
def pipe(shared_dir: Path):
    from kiosk.vision.pipeline import FacePipeline
    from models.loader import load_pack

    return FacePipeline(load_pack(shared_dir / "models"))


def test_whole_face_session_leaves_no_biometrics(pipe, shared_dir: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from kiosk.vision.frames import read_image

    data_dir, tmp = tmp_path / "var", tmp_path / "tmp"
    logs = data_dir / "logs"
    for d in (logs, tmp):
        d.mkdir(parents=True)
    monkeypatch.setenv("KIOSK_DATA_DIR", str(data_dir))
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))  # everything the session puts in "temp" lands here
    handler = logging.FileHandler(logs / "kiosk.log")
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)  # the most talkative setting: nothing biometric even then
    try:
        samples = shared_dir / "data" / "liveness" / "silentface-samples"
        live = read_image(samples / "image_T1.jpg")
        spoof = read_image(samples / "image_F2.jpg")

        keys = KeyStore.init(data_dir / "keys", device_id="KIOSK-PRIV-1")
        centre = KeyStore.init(tmp_path / "centre-keys", device_id="CENTRE")  # the recipient, off the terminal
        audit = AuditLog(data_dir / "audit.log", keys.audit_key())
        db = sqlite3.connect(data_dir / "kiosk.db")
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE enrol_cache (record_id TEXT PRIMARY KEY, blob BLOB)")
        db.execute("CREATE TABLE journal (session_id TEXT, request TEXT)")

        # enrolment (activation): template from the photo, cached encrypted at rest
        enrolled = pipe.enrol_image(live)
        assert enrolled.ok
        db.execute("INSERT INTO enrol_cache VALUES (?, ?)", ("P1", keys.encrypt_at_rest(
            enrolled.template.astype(np.float32).tobytes(), purpose="enrol-cache", record_id="P1")))
        audit.append("activation", person="P1", id_number=mask_id_number("11010119900307123X"))

        # a payment session: live capture over frames, 1:1 match, probe sealed to the centre
        probe = pipe.probe_template([live] * 6)
        assert probe.ok
        assert pipe.verify_template(probe.template, enrolled.template).outcome == "matched"
        ctx = SealContext(keys.device_id, "S-1", "face-template")
        blob = seal(probe.template.astype(np.float32).tobytes(), centre.agreement_key().public_key(),
                    centre.current_kid, ctx)
        db.execute("INSERT INTO journal VALUES (?, ?)",
                   ("S-1", '{"infno":"2207","face":"' + base64.b64encode(blob).decode() + '"}'))
        assert np.frombuffer(centre.open_sealed(blob, ctx), np.float32).shape == probe.template.shape
        audit.append("payment", order="O-1", amount="12.30", person="P1")

        # a spoof attempt is refused and recorded without any face data
        assert pipe.probe_template([spoof] * 6).reason == "spoof_suspected"
        audit.append("liveness_failed", session="S-2")
        db.commit()
        db.close()
        logging.getLogger("kiosk").info("session S-1 paid, S-2 refused")
    finally:
        root.removeHandler(handler)
        handler.close()
        root.setLevel(old_level)

    assert verify_log(data_dir / "audit.log", keys.audit_key()).ok
    files = [f for d in (data_dir, logs, tmp) for f in d.rglob("*") if f.is_file()]
    assert any(p.name.startswith("kiosk.db") for p in files) and (logs / "kiosk.log").exists()
    assert scan_paths(data_dir, logs, tmp) == []
    # control: the same scan sees a template that does reach the disk
    (tmp / "leak.bin").write_bytes(b"row:" + probe.template.astype(np.float32).tobytes())
    assert {f.kind for f in scan_paths(data_dir, logs, tmp)} == {"float32_vector"}
