"""Face detection with 5 landmarks: YuNet (cv2.FaceDetectorYN) by default, SCRFD as alternative.

Landmark order (both detectors): the eye, eye, nose tip, mouth corner, mouth
corner as they appear left-to-right in the image (insightface's arcface order).
A frame is detected at a reduced size (`max_side`, default the manifest's
input size, 320 px) because the kiosk face is large; boxes are mapped back.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass

import cv2
import numpy as np

from kiosk.errors import ConfigError
from models.loader import ModelPack


@dataclass(frozen=True)
class Face:
    box: np.ndarray  # x, y, w, h (float32, frame pixels)
    kps: np.ndarray  # (5, 2) float32
    score: float

    @property
    def size(self) -> float:
        return float(min(self.box[2], self.box[3]))

    @property
    def area(self) -> float:
        return float(self.box[2] * self.box[3])


class YuNetDetector:
    name = "yunet"

    def __init__(self, pack: ModelPack, *, score_threshold: float | None = None, max_side: int | None = None) -> None:
        entry = pack.entry("detector")
        data = np.frombuffer(pack.read("detector"), np.uint8)
        thr = float(score_threshold if score_threshold is not None else pack.thresholds.get("detection_score", 0.6))
        self.max_side = int(max_side if max_side is not None else max(entry["input_size"]))
        self._size = (int(entry["input_size"][0]), int(entry["input_size"][1]))
        self._lock = threading.Lock()
        try:
            # OpenCV 5's graph engine warns once that it ignores the (default) target: not a fault
            cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
            self._det = cv2.FaceDetectorYN.create("onnx", data, np.empty(0, np.uint8), self._size, thr, 0.3, 50)
        except cv2.error as e:
            raise ConfigError(f"cv2.FaceDetectorYN cannot load {entry['file']}: {e}", code="model_unloadable",
                              field=entry["file"]) from None

    def detect(self, img: np.ndarray, *, max_side: int | None = None) -> list[Face]:
        h, w = img.shape[:2]
        limit = self.max_side if max_side is None else max_side
        scale = min(1.0, limit / max(h, w)) if limit else 1.0
        if scale < 1.0:
            small = cv2.resize(img, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
        else:
            small, scale = img, 1.0
        size = (small.shape[1], small.shape[0])
        with self._lock:  # the OpenCV detector keeps its input size: one frame at a time
            if size != self._size:
                self._det.setInputSize(size)
                self._size = size
            _, out = self._det.detect(small)
        if out is None:
            return []
        faces = []
        for row in out:
            box = (row[0:4] / scale).astype(np.float32)
            kps = (row[4:14].reshape(5, 2) / scale).astype(np.float32)
            faces.append(Face(box=box, kps=kps, score=float(row[14])))
        faces.sort(key=lambda f: -f.area)
        return faces


class ScrfdDetector:
    """SCRFD-500M through insightface (dev/test only: the weights are non-commercial)."""

    name = "scrfd"

    def __init__(self, pack: ModelPack, *, score_threshold: float | None = None, max_side: int | None = None) -> None:
        from insightface.model_zoo import model_zoo

        pack.read("detector_scrfd")  # digest check before insightface opens the path
        entry = pack.entry("detector_scrfd")
        self.max_side = int(max_side if max_side is not None else max(entry["input_size"]))
        thr = float(score_threshold if score_threshold is not None else pack.thresholds.get("detection_score", 0.6))
        so_providers = list(pack.providers)
        self._model = model_zoo.get_model(str(pack.path("detector_scrfd")), providers=so_providers)
        self._model.prepare(-1, input_size=(self.max_side, self.max_side), det_thresh=thr)

    def detect(self, img: np.ndarray, *, max_side: int | None = None) -> list[Face]:
        side = self.max_side if max_side is None else max_side
        side = max(32, int(round(side / 32)) * 32)
        bboxes, kpss = self._model.detect(img, input_size=(side, side))
        faces = []
        for i in range(bboxes.shape[0]):
            x1, y1, x2, y2, s = bboxes[i]
            faces.append(Face(box=np.array([x1, y1, x2 - x1, y2 - y1], np.float32),
                              kps=np.asarray(kpss[i], np.float32), score=float(s)))
        faces.sort(key=lambda f: -f.area)
        return faces


def make_detector(pack: ModelPack, name: str = "yunet", **kw) -> YuNetDetector | ScrfdDetector:
    if name == "yunet":
        return YuNetDetector(pack, **kw)
    if name == "scrfd":
        return ScrfdDetector(pack, **kw)
    raise ConfigError(f"unknown face detector {name!r} (yunet or scrfd)", code="detector_unknown", field="face_detector")
