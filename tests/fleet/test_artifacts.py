"""Model packs as the fleet carries them: the real layout (files in sub-directories) round-trips,
and a tar that would write outside the version's directory is refused before anything is written."""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from kiosk.errors import IntegrityError
from kiosk.fleet import artifacts as art


def _tar(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_a_pack_with_files_in_sub_directories_round_trips(tmp_path: Path) -> None:
    import hashlib

    src = tmp_path / "src"
    (src / "detection").mkdir(parents=True)
    (src / "detection" / "det.onnx").write_bytes(b"weights" * 100)
    (src / "manifest.json").write_text(json.dumps({"models": {"det": {
        "file": "detection/det.onnx", "sha256": hashlib.sha256(b"weights" * 100).hexdigest()}}}))
    art.unpack_pack(art.pack_tar(src), tmp_path / "out")
    assert (tmp_path / "out" / "detection" / "det.onnx").read_bytes() == b"weights" * 100


@pytest.mark.parametrize("name", ["../escape.onnx", "/etc/escape.onnx", "a/../../escape.onnx", ".hidden/x.onnx",
                                  "a/.x", "a/b/c/d.onnx", "a//b.onnx"])
def test_a_member_name_that_is_not_a_plain_relative_path_is_refused(tmp_path: Path, name: str) -> None:
    blob = _tar({"manifest.json": json.dumps({"models": {}}).encode(), name: b"x"})
    with pytest.raises(IntegrityError) as e:
        art.unpack_pack(blob, tmp_path / "out")
    assert e.value.code == "pack_layout"
    assert not (tmp_path / "escape.onnx").exists() and not list((tmp_path / "out").rglob("*"))
