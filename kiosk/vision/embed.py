"""Alignment (insightface `norm_crop` to the arcface 5-point template) and the MobileFaceNet embedding.

Templates are L2-normalised float32 vectors of the manifest's `embedding_dim`
(128); cosine similarity is then a dot product.
"""
from __future__ import annotations

import warnings

import numpy as np
from insightface.utils.face_align import norm_crop

from kiosk.vision.detect import Face
from models.loader import ModelPack


def l2_normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.maximum(n, 1e-12)).astype(np.float32)


class Embedder:
    def __init__(self, pack: ModelPack) -> None:
        entry = pack.entry("recognizer")
        self._sess = pack.session("recognizer")
        self._input = self._sess.get_inputs()[0].name
        self.size = int(entry["input_size"][0])
        self.dim = int(entry.get("embedding_dim", 128))
        # per-channel (in `channel_order`) or scalar; foamliu/MobileFaceNet trains on RGB with torchvision's
        # ImageNet Normalize (data_gen.py), not insightface's 127.5: measured LFW/ORL EER is lower with it
        self._mean = np.asarray(entry.get("mean", 127.5), np.float32).reshape(-1)[None, None, :]
        self._scale = (1.0 / np.asarray(entry.get("std", 127.5), np.float32)).reshape(-1)[None, None, :]
        self._rgb = str(entry.get("channel_order", "RGB")).upper() == "RGB"

    def align(self, frame: np.ndarray, face: Face) -> np.ndarray:
        with warnings.catch_warnings():  # skimage's estimate() deprecation inside insightface
            warnings.simplefilter("ignore", FutureWarning)
            return norm_crop(frame, face.kps, image_size=self.size)

    def embed_aligned(self, crop: np.ndarray) -> np.ndarray:
        x = crop[:, :, ::-1] if self._rgb else crop
        blob = ((x.astype(np.float32) - self._mean) * self._scale).transpose(2, 0, 1)[None]
        out = self._sess.run(None, {self._input: np.ascontiguousarray(blob)})[0]
        return l2_normalise(out.reshape(-1))

    def embed(self, frame: np.ndarray, face: Face, *, flip: bool = False) -> np.ndarray:
        """`flip`: also embed the mirrored crop and average (still photos; the live path averages frames)."""
        crop = self.align(frame, face)
        e = self.embed_aligned(crop)
        if flip:
            e = l2_normalise(e + self.embed_aligned(np.ascontiguousarray(crop[:, ::-1])))
        return e
