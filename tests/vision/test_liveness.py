"""Liveness at the shipped threshold on NUAA subjects held out from calibration (0007-0009)."""
from __future__ import annotations

import numpy as np

from kiosk.vision.liveness import silentface_box
from kiosk.vision.pipeline import NOT_MATCHED, Decision, _refusal

from .conftest import HELD_OUT, load, nuaa_sessions


def test_silentface_box_golden():
    # hand-worked from Silent-Face CropImage._get_new_box
    # 640x480 frame, box (300, 200, 100, 120), scale 2.7: w=270, h=324, centre (350, 260)
    assert silentface_box(640, 480, np.array([300, 200, 100, 120]), 2.7) == (215, 98, 485, 422)
    # scale 4.0 clamps to (480-1)/120 = 3.9917: h=479, w=399.17; y 20.5..499.5 is shifted up to 0..479;
    # x = 350 -/+ 199.58
    assert silentface_box(640, 480, np.array([300, 200, 100, 120]), 4.0) == (150, 0, 549, 479)
    # box near the left edge is shifted right inside the frame
    x0, y0, x1, y1 = silentface_box(640, 480, np.array([10, 200, 100, 120]), 2.7)
    assert x0 == 0 and x1 == 270


def _windows(paths, k=3, per_session=2):
    return [paths[i:i + k] for i in range(0, min(len(paths), k * per_session) - k + 1, k)]


def test_held_out_live_sessions_are_accepted(pipe, data):
    sessions = nuaa_sessions(data, "live", HELD_OUT)
    results = []
    for paths in sessions.values():
        for w in _windows(paths[::2]):
            results.append(pipe.probe_template(load(p) for p in w).reason)
    assert len(results) >= 10
    accepted = results.count("ok")
    assert "spoof_suspected" not in results or results.count("spoof_suspected") <= 0.2 * len(results), results
    assert accepted >= 0.75 * len(results), results


def test_held_out_printed_photo_attacks_are_rejected(pipe, data):
    sessions = nuaa_sessions(data, "spoof", HELD_OUT)
    results = []
    for paths in list(sessions.values())[::2]:
        for w in _windows(paths, per_session=1):
            results.append(pipe.probe_template(load(p) for p in w).reason)
    assert len(results) >= 6
    assert "ok" not in results, results
    assert results.count("spoof_suspected") >= 0.7 * len(results), results


def test_silentface_samples(pipe, data):
    d = data / "liveness" / "silentface-samples"
    live = load(d / "image_T1.jpg")
    assert pipe.probe_template([live] * 3).ok
    spoof = load(d / "image_F2.jpg")
    assert pipe.probe_template([spoof] * 3).reason == "spoof_suspected"


def test_spoof_decision_is_not_matched():
    assert _refusal("spoof_suspected") == Decision(NOT_MATCHED, "spoof_suspected")


def test_borderline_vote_takes_more_frames_not_a_lower_threshold():
    from kiosk.vision.liveness import LivenessVote

    clear = LivenessVote(0.35, 3, borderline=0.1, max_frames=6)
    for s in (0.9, 0.8, 0.95):
        clear.add(s)
    assert clear.ready and clear.live  # far from the threshold: three frames decide, as before
    near = LivenessVote(0.35, 3, borderline=0.1, max_frames=6)
    for s in (0.3, 0.4, 0.3):  # mean 0.333: within 0.1 of 0.35
        near.add(s)
    assert not near.ready
    for s in (0.6, 0.7):
        near.add(s)
    assert near.ready and near.live  # five frames, mean 0.46: out of the band, decided on all of them
    capped = LivenessVote(0.35, 3, borderline=0.1, max_frames=6)
    for s in (0.3, 0.32, 0.3, 0.33, 0.31, 0.34):
        capped.add(s)
    assert capped.ready and not capped.live  # six frames and still borderline: the threshold decides
    assert LivenessVote(0.35, 3).threshold == 0.35  # the threshold itself never moves


def test_a_borderline_capture_cut_short_by_the_source_still_decides(pipe, data):
    d = data / "liveness" / "silentface-samples"
    live = load(d / "image_T1.jpg")
    pipe2 = object.__new__(type(pipe))
    pipe2.__dict__.update(pipe.__dict__, live_borderline=1.0, live_max_frames=6)  # every vote is borderline
    assert pipe2.probe_template([live] * 4).ok  # four good frames, source ends: decided, not too_few_frames
    assert pipe2.probe_template([live] * 2).reason == "too_few_frames"
