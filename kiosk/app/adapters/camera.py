"""A simulated camera for the demo and the tests: it plays still images.

`show(paths)` puts a "scene" in front of the lens (a person's photos, a
printed-photo attack, two people); frames come at `fps` like a real camera
(each image repeated `hold` frames), looping until the next scene. Images are
read from ../shared/data and kept in memory only.

Frames are the camera's size (640x480): a still smaller than that (a tightly
cropped portrait such as CASIA's 168x193) is a head seen from the usual
distance, so it is placed in the middle of the frame with its own edge pixels
continued outwards as the backdrop. Played as-is it would be a face filling
the frame, which the quality gate rightly calls `too_close`; a black border
instead reads as a screen's bezel to the liveness models.

Light: `ambient` (a gain on the scene light, 1 = as photographed) darkens the
scene for a dim counter; `set_fill_light(level)` is what the terminal's fill
light does to the frame, modelled as `kiosk.vision.shifts.fill_light` (a
linear-light gain). The kiosk's light adapter calls it when it sets the
bridge's fill light, as the LED would light the real scene.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from kiosk.errors import InputError
from kiosk.vision.frames import read_image
from kiosk.vision.shifts import darken, fill_light

FRAME_W, FRAME_H = 640, 480


def camera_frame(img: np.ndarray, width: int = FRAME_W, height: int = FRAME_H) -> np.ndarray:
    """A still no larger than the frame, centred with its edges continued; larger stills pass unchanged."""
    h, w = img.shape[:2]
    if w >= width or h >= height:
        return img
    top, left = (height - h) // 2, (width - w) // 2
    return cv2.copyMakeBorder(img, top, height - h - top, left, width - w - left, cv2.BORDER_REPLICATE)


class ImageCamera:
    def __init__(self, fps: float = 30.0, hold: int = 4, *, ambient: float = 1.0) -> None:
        self.fps = fps
        self.hold = max(1, hold)
        self._lock = threading.Lock()
        self._frames: list[np.ndarray] = []
        self._i = 0
        self._next = 0.0
        self._cache: dict[str, np.ndarray] = {}
        self.ambient = float(ambient)
        self.fill = 0  # fill-light level 0..100 (%), as last set through the bridge

    def show(self, images: Sequence[Path | str]) -> None:
        """Put these images in front of the camera (empty = nobody there)."""
        frames = []
        for p in images:
            key = str(p)
            if key not in self._cache:
                if not Path(p).is_file():
                    raise InputError(f"no such image {p}", field="camera.image")
                self._cache[key] = camera_frame(read_image(p))
            frames.append(self._cache[key])
        with self._lock:
            self._frames = frames
            self._i = 0

    def show_frames(self, frames: Sequence[np.ndarray]) -> None:
        """Put frames made in memory in front of the camera, as they are (tests: close-ups, dark scenes)."""
        with self._lock:
            self._frames = [np.ascontiguousarray(f) for f in frames]
            self._i = 0

    def clear(self) -> None:
        self.show([])

    def set_fill_light(self, level: int) -> None:
        """The fill light now shines at `level` % (0 = off)."""
        self.fill = max(0, min(100, int(level)))

    def _lit(self, frame: np.ndarray) -> np.ndarray:
        if self.ambient != 1.0:
            frame = darken(frame, self.ambient)
        return fill_light(frame, self.fill / 100.0) if self.fill else frame

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
                return self._lit(frame)
        if wait:
            time.sleep(min(wait, 0.05))
        return None
