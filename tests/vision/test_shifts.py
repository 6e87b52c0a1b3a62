"""Camera, distance and light changes made in memory (kiosk.vision.shifts) and `kiosk face camera-shift`."""
from __future__ import annotations

import json

import numpy as np

from kiosk.cli import main
from kiosk.vision import shifts
from kiosk.vision.evaluate import image_files

from .conftest import load


def test_darken_and_fill_light_are_monotonic_and_the_light_undoes_a_stop(data):
    img = load(data / "liveness" / "silentface-samples" / "image_T1.jpg")
    half = shifts.darken(img, 0.5)
    assert half.mean() < img.mean() and shifts.darken(img, 0.5, 1.6).mean() < half.mean()
    assert shifts.fill_light(half, 0.0) is half
    # full light is x3 in linear light: a frame at half exposure comes back brighter than the original
    assert shifts.fill_light(half, 0.5).mean() > half.mean() * 1.2
    assert shifts.fill_light(half, 1.0).mean() > img.mean()


def test_close_up_fills_the_frame(pipe, data):
    img = load(data / "liveness" / "nuaa-train" / "live" / "0001_0001_00_00_01_0.jpg")
    face = pipe.detect(img)[0]
    c = shifts.close_up(img, face.box)
    assert c.shape[1] == 480
    f2 = pipe.detect(c)[0]
    assert f2.box[2] / c.shape[1] > 0.65  # the face is most of the width


def test_camera_shift_cli_prints_a_bpcer_row_per_change(data, tmp_path, capsys):
    root = tmp_path / "liv"
    for kind in ("live", "spoof"):
        (root / kind).mkdir(parents=True)
        for p in image_files(data / "liveness" / "nuaa-train" / kind)[::100][:2]:
            (root / kind / p.name).symlink_to(p)
    assert main(["face", "camera-shift", "--liveness", str(root), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["camera"] for r in out["rows"]] == list(shifts.CAMERA_SHIFTS)
    assert all(r["live"] == 2 and 0 <= r["bpcer"] <= 1 for r in out["rows"])
    assert main(["face", "camera-shift", "--liveness", str(root)]) == 0
    text = capsys.readouterr().out
    assert "BPCER" in text and "jpeg q30" in text and "as captured" in text
    assert not any(np.isnan(r["bpcer"]) for r in out["rows"])
