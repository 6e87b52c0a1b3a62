"""A simulated camera for the demo and the tests: it plays still images.

`show(paths)` puts a "scene" in front of the lens (a person's photos, a
printed-photo attack, two people); frames come at `fps` like a real camera
(each image repeated `hold` frames), looping until the next scene. Images are
read from ../shared/data and kept in memory only.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from kiosk.errors import InputError
from kiosk.vision.frames import read_image


class ImageCamera:
    def __init__(self, fps: float = 30.0, hold: int = 4) -> None:
        self.fps = fps
        self.hold = max(1, hold)
        self._lock = threading.Lock()
        self._frames: list[np.ndarray] = []
        self._i = 0
        self._next = 0.0
        self._cache: dict[str, np.ndarray] = {}

    def show(self, images: Sequence[Path | str]) -> None:
        """Put these images in front of the camera (empty = nobody there)."""
        frames = []
        for p in images:
            key = str(p)
            if key not in self._cache:
                if not Path(p).is_file():
                    raise InputError(f"no such image {p}", field="camera.image")
                self._cache[key] = read_image(p)
            frames.append(self._cache[key])
        with self._lock:
            self._frames = frames
            self._i = 0

    def clear(self) -> None:
        self.show([])

    def read(self) -> np.ndarray | None:
        now = time.monotonic()
        with self._lock:
            if not self._frames or now < self._next:
                wait = self._next - now if self._frames else None
            else:
                wait = None
                frame = self._frames[(self._i // self.hold) % len(self._frames)]
                self._i += 1
                self._next = max(now, self._next) + 1.0 / self.fps if self.fps > 0 else now
                return frame
        if wait:
            time.sleep(min(wait, 0.05))
        return None
