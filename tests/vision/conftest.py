from __future__ import annotations

import re
from pathlib import Path

import pytest

from kiosk.vision.frames import read_image


@pytest.fixture(scope="session")
def pipe(shared_dir):
    """One pipeline (verified pack, onnxruntime sessions) for the whole test session."""
    from kiosk.vision.pipeline import FacePipeline
    from models.loader import load_pack

    return FacePipeline(load_pack(shared_dir / "models"))


@pytest.fixture(scope="session")
def data(shared_dir) -> Path:
    return shared_dir / "data"


def nuaa_sessions(data: Path, kind: str, subjects: set[str]) -> dict[str, list[Path]]:
    out: dict[str, list[Path]] = {}
    for p in sorted((data / "liveness" / "nuaa-train" / kind).glob("*.jpg")):
        m = re.match(r"^(.*)_(\d+)$", p.stem)
        if p.name[:4] in subjects:
            out.setdefault(m.group(1), []).append(p)
    for v in out.values():
        v.sort(key=lambda p: int(p.stem.rsplit("_", 1)[1]))
    return out


HELD_OUT = {"0007", "0008", "0009"}  # NUAA subjects never used by scripts/calibrate_face


def load(path: Path):
    return read_image(path)
