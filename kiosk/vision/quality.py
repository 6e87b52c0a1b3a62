"""Quality gates with named reasons, checked before liveness and recognition.

Each gate returns a reason code the screen turns into an instruction:
no_face, multiple_faces ("only one person, please"), face_too_small,
too_close ("please step back a little"), off_centre, pose, blurred, too_dark,
backlit, over_exposed. Thresholds come from the manifest so a deployment can
tune them without code.

`too_close` protects liveness: a face that fills the frame (an elderly patient
leaning in to read the screen) leaves the liveness crops (2.7x and 4.0x the
face box) mostly outside the image, and the models then call a live person a
spoof. It is decided from the face's share of the frame and from how much of
each crop falls outside (`kiosk.vision.liveness.crop_outside_fraction`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from kiosk.vision.detect import Face
from kiosk.vision.liveness import crop_limits, crop_outside_fraction

MESSAGES = {
    "no_face": "please look at the camera",
    "multiple_faces": "only one person, please",
    "face_too_small": "please come closer",
    "too_close": "please step back a little",
    "off_centre": "please move to the centre",
    "pose": "please face the camera",
    "blurred": "please hold still",
    "too_dark": "too dark, please face the light",
    "backlit": "strong light behind you, please turn around",
    "over_exposed": "too bright, please step out of direct light",
}

# arcface template puts the nose at 0.494 of eye->mouth; YuNet's nose-tip landmark sits lower: frontal NUAA
# webcam faces give a median of 0.58, used as zero pitch
_NOSE_T_FRONTAL = 0.58
# nose-tip depth relative to the eye distance and to the eye->mouth height (average adult face)
_NOSE_DEPTH_OVER_IOD = 0.6
_NOSE_DEPTH_OVER_EYE_MOUTH = 0.5


# reasons more light fixes; a "blurred" face darker than DIM_FACE (mean grey) is one too: a face under a good
# light sits at 110-160, and the same CASIA face dimmed until the sharpness gate fails at 55-77 (its
# contrast, which the Laplacian measures, went with the light; a real camera also exposes longer and smears)
# A frame with no face found whose mean grey is below DARK_FRAME may hide a face in the dark: light it too.
LIGHT_REASONS = frozenset({"too_dark", "backlit"})
DIM_FACE = 100.0
DARK_FRAME = 50.0


def wants_light(reason: str, brightness: float) -> bool:
    """Would the fill light fix this frame (rather than asking the patient)? `brightness` is the face's
    mean grey, or the whole frame's for no_face."""
    return (reason in LIGHT_REASONS or (reason == "blurred" and 0 < brightness < DIM_FACE)
            or (reason == "no_face" and brightness < DARK_FRAME))


@dataclass(frozen=True)
class QualityConfig:
    min_face_px: float = 80.0
    max_centre_offset: float = 0.25
    max_yaw_deg: float = 30.0
    max_pitch_deg: float = 30.0
    min_sharpness: float = 40.0
    min_brightness: float = 60.0
    max_saturated_fraction: float = 0.25
    backlight_delta: float = 70.0
    second_face_ratio: float = 0.5
    # face's shorter side over the frame's shorter side, and per liveness crop scale the largest share
    # of the crop outside the frame (dev live frames as captured reach 0.48 / 0.45 / 0.72; the same
    # faces leaning in, 0.70 / 0.74 / 0.88)
    max_face_fraction: float = 0.6
    max_crop_outside: tuple[tuple[float, float], ...] = ((2.7, 0.5), (4.0, 0.8))

    @classmethod
    def from_thresholds(cls, t: dict[str, Any]) -> QualityConfig:
        names = cls.__dataclass_fields__
        kw: dict[str, Any] = {k: float(v) for k, v in t.items() if k in names and k != "max_crop_outside"}
        limits = crop_limits(t)
        if limits:
            kw["max_crop_outside"] = tuple(sorted(limits.items()))
        return cls(**kw)


@dataclass(frozen=True)
class Quality:
    reason: str | None  # None = passed
    face: Face | None
    yaw: float = 0.0
    pitch: float = 0.0
    sharpness: float = 0.0
    brightness: float = 0.0  # face mean grey (no_face: the frame's)

    @property
    def ok(self) -> bool:
        return self.reason is None


def head_pose(kps: np.ndarray) -> tuple[float, float]:
    """Approximate yaw and pitch in degrees from the 5 landmarks (roll removed first)."""
    le, re, nose, lm, rm = (kps[i].astype(np.float64) for i in range(5))
    d = re - le
    iod = math.hypot(d[0], d[1])
    if iod < 1e-6:
        return 90.0, 90.0
    c, s = d[0] / iod, d[1] / iod
    rot = np.array([[c, s], [-s, c]])  # undo roll
    eye_mid = (le + re) / 2
    mouth_mid = rot @ ((lm + rm) / 2 - eye_mid)
    n = rot @ (nose - eye_mid)
    yaw = math.degrees(math.atan((n[0] / iod) / _NOSE_DEPTH_OVER_IOD))
    h = mouth_mid[1]
    if h <= 1e-6:
        return yaw, 90.0
    pitch = math.degrees(math.atan((n[1] / h - _NOSE_T_FRONTAL) / _NOSE_DEPTH_OVER_EYE_MOUTH))
    return yaw, pitch


def too_close(frame_w: int, frame_h: int, face: Face, cfg: QualityConfig) -> bool:
    """The face fills the frame, or a liveness crop would be mostly outside it."""
    return face_fills_frame(frame_w, frame_h, face, cfg) or crops_outside(frame_w, frame_h, face, cfg)


def face_fills_frame(frame_w: int, frame_h: int, face: Face, cfg: QualityConfig) -> bool:
    return face.size > cfg.max_face_fraction * min(frame_w, frame_h)


def crops_outside(frame_w: int, frame_h: int, face: Face, cfg: QualityConfig) -> bool:
    return any(crop_outside_fraction(frame_w, frame_h, face.box, s) > limit for s, limit in cfg.max_crop_outside)


def _face_region(grey: np.ndarray, face: Face) -> np.ndarray:
    x, y, w, h = face.box
    x0, y0 = max(0, int(x)), max(0, int(y))
    x1, y1 = min(grey.shape[1], int(x + w)), min(grey.shape[0], int(y + h))
    if x1 - x0 < 4 or y1 - y0 < 4:
        return grey[0:0, 0:0]
    return grey[y0:y1, x0:x1]


def sharpness(face_grey: np.ndarray) -> float:
    """Variance of the Laplacian on the face resized to 96x96 (scale-independent)."""
    if face_grey.size == 0:
        return 0.0
    roi = cv2.resize(face_grey, (96, 96), interpolation=cv2.INTER_AREA)
    return float(cv2.Laplacian(roi, cv2.CV_32F).var())


def assess(frame: np.ndarray, faces: list[Face], cfg: QualityConfig, *, enrolment: bool = False) -> Quality:
    """Run the gates in the order a person can act on them. `enrolment` skips frame-position gates
    (tight crops of a photo), keeping only the one-face and image checks."""
    if not faces:  # the frame's own brightness: a dark scene may hide a face (the fill light's cue)
        return Quality("no_face", None, brightness=float(frame[::8, ::8].mean()))
    face = faces[0]  # largest
    if len(faces) > 1 and faces[1].area >= cfg.second_face_ratio * face.area:
        return Quality("multiple_faces", face)
    fh, fw = frame.shape[:2]
    if not enrolment:
        if face.size < cfg.min_face_px:
            return Quality("face_too_small", face)
        if face_fills_frame(fw, fh, face, cfg):
            return Quality("too_close", face)
        cx = face.box[0] + face.box[2] / 2
        cy = face.box[1] + face.box[3] / 2
        if abs(cx / fw - 0.5) > cfg.max_centre_offset or abs(cy / fh - 0.5) > cfg.max_centre_offset:
            return Quality("off_centre", face)
        # centred yet a crop runs out of the frame: still too close for liveness (checked after off_centre,
        # so a face at the edge is asked to move to the centre, not back)
        if crops_outside(fw, fh, face, cfg):
            return Quality("too_close", face)
    yaw, pitch = head_pose(face.kps)
    if abs(yaw) > cfg.max_yaw_deg or abs(pitch) > cfg.max_pitch_deg:
        return Quality("pose", face, yaw, pitch)
    grey = frame if frame.ndim == 2 else cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
    roi = _face_region(grey, face)
    if roi.size == 0:
        return Quality("off_centre", face, yaw, pitch)
    bright = float(roi.mean())
    sharp = sharpness(roi)
    saturated = float((roi >= 250).mean())
    if saturated > cfg.max_saturated_fraction:
        return Quality("over_exposed", face, yaw, pitch, sharp, bright)
    if bright < cfg.min_brightness:
        # a dark face in a bright frame is a backlit scene, not a dark room
        if not enrolment and float(grey.mean()) - bright > cfg.backlight_delta * 0.5 and float(grey.mean()) > 100:
            return Quality("backlit", face, yaw, pitch, sharp, bright)
        return Quality("too_dark", face, yaw, pitch, sharp, bright)
    if not enrolment:
        background = _background_brightness(grey, face)
        if background - bright > cfg.backlight_delta:
            return Quality("backlit", face, yaw, pitch, sharp, bright)
    if sharp < cfg.min_sharpness:
        return Quality("blurred", face, yaw, pitch, sharp, bright)
    return Quality(None, face, yaw, pitch, sharp, bright)


def _background_brightness(grey: np.ndarray, face: Face) -> float:
    """Mean of the frame outside an enlarged face box (the light behind the person)."""
    mask = np.ones(grey.shape, bool)
    x, y, w, h = face.box
    x0, y0 = max(0, int(x - 0.25 * w)), max(0, int(y - 0.25 * h))
    x1, y1 = min(grey.shape[1], int(x + 1.25 * w)), min(grey.shape[0], int(y + 1.25 * h))
    mask[y0:y1, x0:x1] = False
    if not mask.any():
        return float(grey.mean())
    small = grey[::4, ::4]
    return float(small[mask[::4, ::4]].mean())
