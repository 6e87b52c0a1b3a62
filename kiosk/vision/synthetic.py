"""SYNTHETIC presentation attacks, generated in memory from live frames (never written to disk).

Labelled extra data for calibration only, never mixed into the real-data
figures: a face re-photographed from a screen (pixel grid, moire, backlight
colour cast, glare, bezel) and a printed-and-scanned photo (halftone dots,
reduced gamut, paper tint, blur, JPEG). They imitate attack types that are
absent from ../shared/data so the threshold is not fitted to printed photos only.
"""
from __future__ import annotations

import cv2
import numpy as np

KINDS = ("synthetic_screen", "synthetic_print")


def screen_replay(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    h, w = img.shape[:2]
    # the display shows the face smaller, inside a dark bezel, re-photographed
    k = rng.uniform(0.75, 0.95)
    inner = cv2.resize(img, (int(w * k), int(h * k)), interpolation=cv2.INTER_AREA)
    # pixel grid of the display: downsample then nearest upsample
    f = rng.uniform(0.35, 0.6)
    small = cv2.resize(inner, (max(8, int(inner.shape[1] * f)), max(8, int(inner.shape[0] * f))),
                       interpolation=cv2.INTER_AREA)
    inner = cv2.resize(small, (inner.shape[1], inner.shape[0]), interpolation=cv2.INTER_NEAREST).astype(np.float32)
    yy, xx = np.mgrid[0:inner.shape[0], 0:inner.shape[1]].astype(np.float32)
    ang = rng.uniform(0, np.pi)
    period = rng.uniform(3.0, 7.0)
    moire = np.sin((xx * np.cos(ang) + yy * np.sin(ang)) * 2 * np.pi / period)
    inner += (rng.uniform(6, 14) * moire)[..., None]
    inner *= np.array([rng.uniform(1.0, 1.15), rng.uniform(0.95, 1.05), rng.uniform(0.8, 0.95)], np.float32)  # blue cast
    cx, cy = rng.uniform(0, inner.shape[1]), rng.uniform(0, inner.shape[0])
    glare = np.exp(-(((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * (0.25 * inner.shape[1]) ** 2)))
    inner += (rng.uniform(20, 60) * glare)[..., None]
    out = np.full((h, w, 3), rng.uniform(10, 40), np.float32)
    y0, x0 = (h - inner.shape[0]) // 2, (w - inner.shape[1]) // 2
    out[y0:y0 + inner.shape[0], x0:x0 + inner.shape[1]] = inner
    out = cv2.GaussianBlur(out, (0, 0), rng.uniform(0.6, 1.2))
    return np.clip(out, 0, 255).astype(np.uint8)


def print_attack(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    x = img.astype(np.float32)
    grey = x.mean(axis=2, keepdims=True)
    x = grey + (x - grey) * rng.uniform(0.5, 0.8)  # reduced gamut
    x = 40 + x * rng.uniform(0.6, 0.8)  # paper white and ink black compress contrast
    x *= np.array([rng.uniform(0.85, 0.95), rng.uniform(0.95, 1.0), rng.uniform(1.0, 1.1)], np.float32)  # warm paper
    yy, xx = np.mgrid[0:img.shape[0], 0:img.shape[1]].astype(np.float32)
    period = rng.uniform(2.5, 4.5)
    dots = np.sin(xx * 2 * np.pi / period) * np.sin(yy * 2 * np.pi / period)
    x += (rng.uniform(5, 12) * dots)[..., None]
    x = cv2.GaussianBlur(x, (0, 0), rng.uniform(0.8, 1.6))
    x += rng.normal(0, 3, x.shape).astype(np.float32)
    out = np.clip(x, 0, 255).astype(np.uint8)
    ok, enc = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(30, 60))])
    return cv2.imdecode(enc, cv2.IMREAD_COLOR) if ok else out


def make(kind: str, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if kind == "synthetic_screen":
        return screen_replay(img, rng)
    if kind == "synthetic_print":
        return print_attack(img, rng)
    raise ValueError(kind)
