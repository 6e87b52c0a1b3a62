"""JPEG for the live preview, encoded in memory from the current frame.

The bytes go straight into the HTTP response; nothing touches the disk. Frames
are scaled down to at most 640 px wide: the preview is for framing, not detail.
"""
from __future__ import annotations

import cv2
import numpy as np

MAX_WIDTH = 640
QUALITY = 70


def encode_jpeg(frame: np.ndarray, *, max_width: int = MAX_WIDTH, quality: int = QUALITY) -> bytes:
    img = frame[:, :, 0] if frame.ndim == 3 and frame.shape[2] == 1 else frame
    h, w = img.shape[:2]
    if w > max_width:
        img = cv2.resize(img, (max_width, max(1, round(h * max_width / w))), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", img, [int(cv2.IMWRITE_JPEG_QUALITY), quality])
    if not ok:  # pragma: no cover - cv2 fails only on invalid arrays, checked by the bus
        raise ValueError("JPEG encoding failed")
    return buf.tobytes()
