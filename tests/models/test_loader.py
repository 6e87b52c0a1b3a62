from __future__ import annotations

import re
from pathlib import Path

import pytest

from kiosk.errors import ConfigError, IntegrityError
from models.loader import MANIFEST_PATH, check_providers, load_manifest, load_pack


def _clone_pack(src: Path, dst: Path) -> Path:
    """Symlink every file of the shared pack into dst (no weights copied)."""
    for f in src.rglob("*.onnx"):
        target = dst / f.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(f)
    return dst


def test_manifest_lists_every_model_with_digest_size_and_calibrated_thresholds():
    m = load_manifest()
    for key, e in m["models"].items():
        assert re.fullmatch(r"[0-9a-f]{64}", e["sha256"]), key
        assert len(e["input_size"]) == 2
    t = m["thresholds"]
    assert 0.3 < t["match_cosine"] < 0.8
    assert 0.0 < t["liveness_live"] < 1.0
    assert m["calibration"]["recognition"]["shipped"] == t["match_cosine"]
    assert m["calibration"]["liveness"]["shipped"] == t["liveness_live"]
    # cohort-normalised matching: threshold, margin, top-K and cohort size from the same calibration record
    rec = m["calibration"]["recognition"]
    assert t["match_norm_threshold"] == rec["shipped_normalised"] and t["match_norm_margin"] == rec["margin_normalised"]
    assert (t["cohort_top_k"], t["cohort_min_size"]) == (rec["cohort_top_k"], rec["cohort_min_size"])
    assert 2 <= t["cohort_top_k"] <= t["cohort_min_size"]


def test_cohort_thresholds_come_all_together_and_sane(tmp_path):
    import json

    base = json.loads(MANIFEST_PATH.read_text(encoding="utf-8"))
    for change, field in (({"cohort_top_k": None}, "thresholds.cohort_top_k"),
                          ({"cohort_min_size": 10, "cohort_top_k": 50}, "thresholds.cohort_min_size"),
                          ({"match_norm_margin": "x"}, "thresholds.cohort_top_k")):
        t = dict(base["thresholds"])
        for k, v in change.items():
            if v is None:
                t.pop(k)
            else:
                t[k] = v
        p = tmp_path / "manifest.json"
        p.write_text(json.dumps({**base, "thresholds": t}))
        with pytest.raises(ConfigError) as e:
            load_manifest(p)
        assert e.value.field == field
    raw_only = {k: v for k, v in base["thresholds"].items() if not k.startswith(("cohort_", "match_norm"))}
    p.write_text(json.dumps({**base, "thresholds": raw_only}))
    assert "cohort_top_k" not in load_manifest(p)["thresholds"]  # a pack without them decides raw


def test_shared_pack_verifies(shared_dir):
    pack = load_pack(shared_dir / "models")
    assert len(pack.verify_all()) == len(pack.manifest["models"])


def test_altered_model_file_is_refused_naming_the_file(shared_dir, tmp_path):
    root = _clone_pack(shared_dir / "models", tmp_path / "pack")
    victim = root / "recognition" / "mobilefacenet.onnx"
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x01  # one flipped bit
    victim.unlink()
    victim.write_bytes(bytes(data))
    with pytest.raises(IntegrityError) as e:
        load_pack(root)
    assert e.value.field == "recognition/mobilefacenet.onnx"
    assert "mobilefacenet.onnx" in str(e.value)


def test_missing_model_file_is_a_config_error_naming_the_file(shared_dir, tmp_path):
    root = _clone_pack(shared_dir / "models", tmp_path / "pack")
    (root / "antispoof" / "4_0_0_80x80_MiniFASNetV1SE.onnx").unlink()
    with pytest.raises(ConfigError) as e:
        load_pack(root)
    assert e.value.field == "antispoof/4_0_0_80x80_MiniFASNetV1SE.onnx"


def test_missing_pack_dir_and_broken_manifest(tmp_path):
    with pytest.raises(ConfigError):
        load_pack(tmp_path / "nowhere")
    bad = tmp_path / "manifest.json"
    bad.write_text('{"models": {"x": {"file": "a.onnx"}}, "thresholds": {}}')
    with pytest.raises(ConfigError) as e:
        load_manifest(bad)
    assert e.value.field == "models.x"


def test_providers_are_checked_at_start_up(shared_dir):
    assert check_providers("CPUExecutionProvider") == ["CPUExecutionProvider"]
    with pytest.raises(ConfigError) as e:
        load_pack(shared_dir / "models", providers="NoSuchExecutionProvider,CPUExecutionProvider")
    assert e.value.field == "onnx_providers"
    with pytest.raises(ConfigError):
        check_providers(" , ")


def test_manifest_is_in_the_repo_but_weights_are_not():
    repo = MANIFEST_PATH.parent.parent
    assert MANIFEST_PATH.is_file()
    assert not list((repo / "models").rglob("*.onnx"))


def test_production_pack_without_the_dev_only_scrfd_loads(shared_dir, tmp_path):
    # det_500m is non-commercial (tests/dev only): a licensed terminal's pack leaves it out and must still
    # load with the default YuNet detector; present but altered, it is still refused
    from kiosk.vision.pipeline import FacePipeline

    root = _clone_pack(shared_dir / "models", tmp_path / "pack")
    scrfd = root / "detection" / "det_500m.onnx"
    scrfd.unlink()
    pack = load_pack(root)
    assert "detection/det_500m.onnx" not in pack.verify_all()
    FacePipeline(pack)  # yunet by default
    with pytest.raises(ConfigError) as e:
        FacePipeline(pack, detector="scrfd")
    assert e.value.field == "detection/det_500m.onnx"
    scrfd.write_bytes(b"not the weights")
    with pytest.raises(IntegrityError) as e:
        load_pack(root)
    assert e.value.field == "detection/det_500m.onnx"
