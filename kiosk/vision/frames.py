"""Frame sources behind one interface: camera, video file, folder of images.

The demo's simulated camera plays image files through `ImageFolderSource`, the
same `FrameSource` path the hardware camera uses. Frames are BGR uint8 arrays
held in memory only.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from kiosk.errors import DeviceError, InputError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".pgm", ".ppm", ".webp", ".tif", ".tiff")


class FrameSource(Protocol):
    def read(self) -> np.ndarray | None:
        """The next BGR frame, or None when the source is exhausted."""

    def close(self) -> None: ...


def decode_image(data: bytes | np.ndarray, *, name: str = "image") -> np.ndarray:
    """Decode encoded image bytes to a 3-channel BGR array (greyscale is expanded)."""
    buf = np.frombuffer(data, np.uint8) if isinstance(data, (bytes, bytearray, memoryview)) else data
    img = None
    if buf.size:  # cv2.imdecode asserts (cv2.error) on an empty buffer
        try:
            img = cv2.imdecode(buf, cv2.IMREAD_COLOR)
        except cv2.error:
            img = None
    if img is None:
        raise InputError(f"cannot decode {name} as an image", code="image_undecodable", field=name)
    return img


def read_image(path: Path | str) -> np.ndarray:
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise InputError(f"cannot read {path}: {e}", code="image_unreadable", field=str(path)) from None
    return decode_image(data, name=str(path))


def list_images(folder: Path | str) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"not a directory: {folder}", code="not_a_directory", field=str(folder))
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


class ImageFolderSource:
    """Plays the images of a folder (or an explicit list) as camera frames, optionally looping."""

    def __init__(self, images: Path | str | list[Path], *, loop: bool = False) -> None:
        self.paths = list_images(images) if isinstance(images, (str, Path)) else [Path(p) for p in images]
        if not self.paths:
            raise InputError("no images to play", code="no_images", field="images")
        self.loop = loop
        self._i = 0

    def read(self) -> np.ndarray | None:
        if self._i >= len(self.paths):
            if not self.loop:
                return None
            self._i = 0
        path = self.paths[self._i]
        self._i += 1
        return read_image(path)

    def close(self) -> None:
        self._i = len(self.paths)


class _CaptureSource:
    def __init__(self, cap: cv2.VideoCapture, what: str) -> None:
        if not cap.isOpened():
            raise DeviceError(f"cannot open {what}", code="camera_unavailable", field="camera")
        self._cap = cap

    def read(self) -> np.ndarray | None:
        ok, frame = self._cap.read()
        if not ok or frame is None:
            return None
        if frame.ndim == 2:
            frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
        return frame

    def close(self) -> None:
        self._cap.release()


class CameraSource(_CaptureSource):
    """A camera by OpenCV device index (the kiosk's USB camera), at 640x480 by default."""

    def __init__(self, index: int = 0, *, width: int = 640, height: int = 480) -> None:
        cap = cv2.VideoCapture(int(index))
        cap.set(cv2.CAP_PROP_FRAME_WIDTH, width)
        cap.set(cv2.CAP_PROP_FRAME_HEIGHT, height)
        super().__init__(cap, f"camera {index}")


class VideoFileSource(_CaptureSource):
    def __init__(self, path: Path | str) -> None:
        if not Path(path).is_file():
            raise InputError(f"video file not found: {path}", code="video_missing", field=str(path))
        super().__init__(cv2.VideoCapture(str(path)), f"video {path}")


def open_source(spec: str | int | Path, *, loop: bool = False) -> FrameSource:
    """'0' or 0 -> camera; a directory -> its images; a file -> video (or a single image)."""
    if isinstance(spec, int) or (isinstance(spec, str) and spec.isdigit()):
        return CameraSource(int(spec))
    path = Path(spec)
    if path.is_dir():
        return ImageFolderSource(path, loop=loop)
    if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
        return ImageFolderSource([path], loop=loop)
    return VideoFileSource(path)


def frames(source: FrameSource, limit: int | None = None) -> Iterator[np.ndarray]:
    """Iterate a source, at most `limit` frames."""
    n = 0
    while limit is None or n < limit:
        frame = source.read()
        if frame is None:
            return
        n += 1
        yield frame
