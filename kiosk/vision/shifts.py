"""Changes of camera, distance and light made in memory from real frames, for measurement only.

None of these frames is written anywhere: they are built from the development
images, scored and dropped. They model what the field does to a frame:

- `close_up`: a patient leaning in (issue 18): the frame cut to the face box
  plus 15% per side and resized to 480 px wide, so the face fills it.
- `CAMERA_SHIFTS`: a camera unlike the calibration data's webcam: lower
  resolution (down- and up-scaled), JPEG at quality 30-90, colour balance
  (warm/cool white balance, a green cast), defocus blur, sensor noise.
- `darken`: a dim counter: exposure times `gain` (linear light) then gamma
  `gamma` (> 1 darkens mid-tones, as a cheap sensor's tone curve in low
  light), the Yale B-like dark faces of issue 15.
- `fill_light`: the terminal's fill light modelled as what it does to the
  frame: a linear gain on the scene light (the LED adds light in proportion
  to what it illuminates, the face most), applied in linear light so
  saturation clips as on a real sensor. It is a model, not a measurement of
  the LED: the simulated camera (`kiosk.app.adapters.camera.ImageCamera`)
  uses the same function so the capture loop's response is testable.
"""
from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np


def close_up(img: np.ndarray, box: np.ndarray, *, margin: float = 0.15, width: int = 480) -> np.ndarray:
    """The face box plus `margin` of its size on each side (clipped to the frame), resized to `width`."""
    x, y, w, h = (float(v) for v in box)
    H, W = img.shape[:2]
    x0, y0 = int(max(0.0, x - margin * w)), int(max(0.0, y - margin * h))
    x1, y1 = int(min(W, x + (1 + margin) * w)), int(min(H, y + (1 + margin) * h))
    crop = img[y0:y1, x0:x1]
    if crop.size == 0:
        return img
    return cv2.resize(crop, (width, max(1, round(crop.shape[0] * width / crop.shape[1]))),
                      interpolation=cv2.INTER_AREA if crop.shape[1] > width else cv2.INTER_LINEAR)


def _to_linear(img: np.ndarray) -> np.ndarray:
    x = img.astype(np.float32) / 255.0
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)


def _to_srgb(lin: np.ndarray) -> np.ndarray:
    lin = np.clip(lin, 0.0, 1.0)
    x = np.where(lin <= 0.0031308, lin * 12.92, 1.055 * np.power(lin, 1 / 2.4) - 0.055)
    return np.clip(x * 255.0 + 0.5, 0, 255).astype(np.uint8)


def darken(img: np.ndarray, gain: float, gamma: float = 1.0) -> np.ndarray:
    """Less light on the scene: linear-light exposure times `gain`, then the tone curve bent by `gamma`."""
    lin = _to_linear(img) * float(gain)
    out = _to_srgb(lin).astype(np.float32) / 255.0
    if gamma != 1.0:
        out = np.power(out, float(gamma))
    return np.clip(out * 255.0 + 0.5, 0, 255).astype(np.uint8)


def fill_light(img: np.ndarray, level: float) -> np.ndarray:
    """The fill light at `level` (0 = off, 1 = full) as a linear-light gain of 1 + 2*level (up to +1.6 EV)."""
    if level <= 0:
        return img
    return _to_srgb(_to_linear(img) * (1.0 + 2.0 * float(level)))


def downscale(img: np.ndarray, factor: float) -> np.ndarray:
    """A lower-resolution sensor: down by `factor`, back up to the frame size (the detector sees the loss)."""
    h, w = img.shape[:2]
    small = cv2.resize(img, (max(8, round(w / factor)), max(8, round(h / factor))), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    ok, enc = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    return cv2.imdecode(enc, cv2.IMREAD_COLOR) if ok else img


def colour_balance(img: np.ndarray, b: float, g: float, r: float) -> np.ndarray:
    """Per-channel gains (BGR order) in linear light: a white balance the calibration camera did not have."""
    return _to_srgb(_to_linear(img) * np.array([b, g, r], np.float32))


def blur(img: np.ndarray, sigma: float) -> np.ndarray:
    return cv2.GaussianBlur(img, (0, 0), float(sigma))


def noise(img: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(img.astype(np.float32) + rng.normal(0, sigma, img.shape), 0, 255).astype(np.uint8)


Shift = Callable[[np.ndarray], np.ndarray]

# name -> transform; a plausible range of each change, mild to severe
CAMERA_SHIFTS: dict[str, Shift] = {
    "as captured": lambda im: im,
    "resolution 1/2 (320x240)": lambda im: downscale(im, 2.0),
    "resolution 1/3 (213x160)": lambda im: downscale(im, 3.0),
    "resolution 1/4 (160x120)": lambda im: downscale(im, 4.0),
    "jpeg q90": lambda im: jpeg(im, 90),
    "jpeg q60": lambda im: jpeg(im, 60),
    "jpeg q30": lambda im: jpeg(im, 30),
    "warm white balance (r x1.3, b x0.75)": lambda im: colour_balance(im, 0.75, 1.0, 1.3),
    "cool white balance (r x0.75, b x1.3)": lambda im: colour_balance(im, 1.3, 1.0, 0.75),
    "green cast (g x1.25)": lambda im: colour_balance(im, 1.0, 1.25, 1.0),
    "blur sigma 1": lambda im: blur(im, 1.0),
    "blur sigma 2": lambda im: blur(im, 2.0),
    "blur sigma 3": lambda im: blur(im, 3.0),
    "sensor noise sigma 8": lambda im: noise(im, 8.0),
    "1/2 resolution + jpeg q50": lambda im: jpeg(downscale(im, 2.0), 50),
}
