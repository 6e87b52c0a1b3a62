"""Silent RGB liveness: the MiniFASNet pair (V2 at crop scale 2.7, V1SE at 4.0) as an ensemble.

Crops follow Silent-Face-Anti-Spoofing's `CropImage` exactly: the face box is
scaled about its centre (clamped to the frame), shifted inside the frame,
cut and resized to 80x80; the input is BGR 0-255, no normalisation. The two
softmax outputs are averaged; class 1 is "live". A person is judged over
several frames (`liveness_frames`), comparing the mean live probability with
the calibrated `liveness_live` threshold from the manifest; a mean within
`liveness_borderline` of the threshold asks for more frames (up to
`liveness_max_frames`) instead of deciding on three.

A face that fills the frame makes the intended crop (the box times 2.7 or 4.0)
run past the image edges; Silent-Face then clamps the scale and shifts the
crop, and the models see a context they were not trained on (a live face
scored as a spoof). `crop_outside_fraction` measures that; the quality gate
refuses such a frame as `too_close` (limits `max_liveness_crop_outside` in the
manifest) and `LivenessModel.score` refuses to run on it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from kiosk.errors import ConfigError, IntegrityError
from kiosk.vision.detect import Face
from models.loader import ModelPack

MODELS = ("liveness_v2", "liveness_v1se")


def silentface_box(src_w: int, src_h: int, box: np.ndarray, scale: float) -> tuple[int, int, int, int]:
    """Silent-Face `CropImage._get_new_box`: box (x, y, w, h) -> (x0, y0, x1, y1) inclusive."""
    x, y, box_w, box_h = (float(v) for v in box)
    box_w, box_h = max(box_w, 1.0), max(box_h, 1.0)
    scale = min((src_h - 1) / box_h, min((src_w - 1) / box_w, scale))
    new_w, new_h = box_w * scale, box_h * scale
    cx, cy = box_w / 2 + x, box_h / 2 + y
    x0, y0 = cx - new_w / 2, cy - new_h / 2
    x1, y1 = cx + new_w / 2, cy + new_h / 2
    if x0 < 0:
        x1 -= x0
        x0 = 0
    if y0 < 0:
        y1 -= y0
        y0 = 0
    if x1 > src_w - 1:
        x0 -= x1 - src_w + 1
        x1 = src_w - 1
    if y1 > src_h - 1:
        y0 -= y1 - src_h + 1
        y1 = src_h - 1
    return int(x0), int(y0), int(x1), int(y1)


def crop_outside_fraction(src_w: int, src_h: int, box: np.ndarray, scale: float) -> float:
    """Share of the intended crop (the box scaled about its centre, before Silent-Face clamps and shifts
    it) that lies outside the frame: 0 = all inside, 0.5 = half of what the model expects is missing."""
    x, y, w, h = (float(v) for v in box)
    w, h = max(w, 1.0) * scale, max(h, 1.0) * scale
    cx, cy = float(box[0]) + float(box[2]) / 2, float(box[1]) + float(box[3]) / 2
    ix = max(0.0, min(float(src_w), cx + w / 2) - max(0.0, cx - w / 2))
    iy = max(0.0, min(float(src_h), cy + h / 2) - max(0.0, cy - h / 2))
    return 1.0 - (ix * iy) / (w * h)


def crop_limits(thresholds: dict) -> dict[float, float]:
    """`max_liveness_crop_outside` from the manifest: crop scale -> largest share outside the frame."""
    raw = thresholds.get("max_liveness_crop_outside") or {}
    try:
        return {float(k): float(v) for k, v in dict(raw).items()}
    except (TypeError, ValueError):
        raise ConfigError("max_liveness_crop_outside must map crop scales to fractions, e.g. {\"2.7\": 0.5}",
                          code="threshold_invalid", field="max_liveness_crop_outside") from None


def silentface_crop(img: np.ndarray, box: np.ndarray, scale: float, out_w: int, out_h: int) -> np.ndarray:
    h, w = img.shape[:2]
    x0, y0, x1, y1 = silentface_box(w, h, box, scale)
    patch = img[max(0, y0): y1 + 1, max(0, x0): x1 + 1]
    return cv2.resize(patch, (out_w, out_h))


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


class _OrtRunner:
    def __init__(self, pack: ModelPack, key: str) -> None:
        self._sess = pack.session(key)
        self._name = self._sess.get_inputs()[0].name

    def __call__(self, blob: np.ndarray) -> np.ndarray:
        return self._sess.run(None, {self._name: blob})[0]


class _Cv2DnnRunner:
    """OpenCV's DNN on the same verified bytes: identical logits (|diff| < 2e-6) and, measured on the
    dev box, ~1.3 ms per MiniFASNet call against ~4 ms for onnxruntime 1.32 on one thread."""

    def __init__(self, pack: ModelPack, key: str) -> None:
        from kiosk.errors import ConfigError

        try:
            self._net = cv2.dnn.readNetFromONNX(np.frombuffer(pack.read(key), np.uint8))
        except cv2.error as e:
            raise ConfigError(f"cv2.dnn cannot load {pack.entry(key)['file']}: {e}", code="model_unloadable",
                              field=pack.entry(key)["file"]) from None

    def __call__(self, blob: np.ndarray) -> np.ndarray:
        self._net.setInput(blob)
        return self._net.forward()


class LivenessModel:
    """Per-frame live probability: mean of the two models' softmax[live]."""

    def __init__(self, pack: ModelPack) -> None:
        self._models = []
        self.limits = crop_limits(pack.thresholds)
        for key in MODELS:
            entry = pack.entry(key)
            runner = _Cv2DnnRunner(pack, key) if entry.get("engine") == "cv2.dnn" else _OrtRunner(pack, key)
            w, h = entry["input_size"]
            scale = float(entry["crop_scale"])
            if self.limits and scale not in self.limits:
                raise ConfigError(f"no max_liveness_crop_outside limit for crop scale {scale} ({key})",
                                  code="threshold_missing", field="max_liveness_crop_outside")
            self._models.append((runner, scale, int(w), int(h), int(entry.get("live_class", 1))))

    @property
    def scales(self) -> tuple[float, ...]:
        return tuple(m[1] for m in self._models)

    def crop_fits(self, frame: np.ndarray, face: Face) -> bool:
        """Every crop is inside the frame enough for its model (the `too_close` gate's own test)."""
        fh, fw = frame.shape[:2]
        return all(crop_outside_fraction(fw, fh, face.box, s) <= self.limits.get(s, 1.0) for s in self.scales)

    def score(self, frame: np.ndarray, face: Face) -> float:
        if not self.crop_fits(frame, face):  # the quality gate refuses these first: reaching here is a bug
            raise IntegrityError("liveness asked to score a crop mostly outside the frame (too close)",
                                 code="liveness_crop_outside")
        total = 0.0
        for run, scale, w, h, live in self._models:
            crop = silentface_crop(frame, face.box, scale, w, h)
            blob = np.ascontiguousarray(crop.transpose(2, 0, 1)[None], dtype=np.float32)
            total += float(_softmax(run(blob).reshape(1, -1))[0, live])
        return total / len(self._models)


@dataclass
class LivenessVote:
    """Accumulates per-frame scores; decides once `frames` scores are in, unless their mean lies within
    `borderline` of the threshold: then it waits for more frames, up to `max_frames`, and decides on the
    mean of all of them (more evidence, same threshold: a camera unlike the calibration data scores live
    faces nearer the threshold, and a lower threshold would let more attacks through)."""

    threshold: float
    frames: int = 3
    borderline: float = 0.0
    max_frames: int = 0  # 0 = `frames`
    scores: list[float] = field(default_factory=list, repr=False)  # never in a log line

    def add(self, score: float) -> None:
        self.scores.append(float(score))

    @property
    def _limit(self) -> int:
        return max(self.frames, self.max_frames)

    def _mean(self) -> float:
        return float(np.mean(self.scores[-self._limit:]))

    @property
    def ready(self) -> bool:
        n = len(self.scores)
        if n < self.frames:
            return False
        return n >= self._limit or abs(self._mean() - self.threshold) > self.borderline

    @property
    def live(self) -> bool:
        return bool(self.scores) and self._mean() >= self.threshold


def summarise_live_scores(scores: list[float] | np.ndarray, threshold: float) -> dict[str, float | int]:
    """Summary statistics of live-person scores (never the scores themselves): what provisioning keeps
    of the technician's face on this terminal's camera, and what calibration keeps of its live frames."""
    a = np.asarray(scores, np.float64)
    if a.size == 0:
        return {"frames": 0}
    p10, p50, p90 = np.percentile(a, [10, 50, 90])
    return {"frames": int(a.size), "mean": round(float(a.mean()), 3), "p10": round(float(p10), 3),
            "p50": round(float(p50), 3), "p90": round(float(p90), 3),
            "below_threshold": round(float((a < threshold).mean()), 3)}


def far_from_calibration(camera: dict, calibration: dict) -> str | None:
    """Why this camera's live scores sit far from the calibration data's, or None. Far = the median live
    face scores below the calibration's 10th percentile, or more than three times the calibration's share
    of live frames (and at least a quarter) falls below the threshold: the models were not calibrated
    for this camera and patients would be called spoofs."""
    if not camera.get("frames") or not calibration.get("frames"):
        return None
    # the reason names no number: it is printed on the technician's console (the figures stay in the state file)
    if camera["p50"] < calibration["p10"]:
        return "the technician's median live score is below the calibration data's 10th percentile"
    if camera["below_threshold"] > max(0.25, 3 * float(calibration["below_threshold"])):
        return "over three times the calibration data's share of live frames falls below the threshold"
    return None
