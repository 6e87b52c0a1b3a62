from __future__ import annotations

import cv2
import numpy as np
import pytest

from kiosk.errors import InputError
from kiosk.vision.frames import (ImageFolderSource, VideoFileSource, decode_image, frames, open_source,
                                 read_image)


def test_image_folder_plays_files_as_frames(data):
    src = open_source(data / "faces" / "orl" / "s1")
    got = list(frames(src))
    assert len(got) == 10
    assert all(f.shape == (112, 92, 3) and f.dtype == np.uint8 for f in got)  # greyscale expanded to BGR


def test_single_image_and_loop(data):
    src = ImageFolderSource([data / "liveness" / "silentface-samples" / "image_T1.jpg"], loop=True)
    assert len(list(frames(src, 5))) == 5


def test_video_file_source(tmp_path):
    path = tmp_path / "clip.avi"  # a synthetic gradient clip, no face data
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    for i in range(4):
        w.write(np.full((48, 64, 3), i * 40, np.uint8))
    w.release()
    got = list(frames(VideoFileSource(path)))
    assert len(got) == 4 and got[0].shape == (48, 64, 3)


def test_bad_inputs_are_input_errors(tmp_path):
    with pytest.raises(InputError):
        decode_image(b"not an image")
    with pytest.raises(InputError):
        VideoFileSource(tmp_path / "missing.avi")
    with pytest.raises(InputError):
        ImageFolderSource(tmp_path)  # empty folder


def test_empty_file_is_an_input_error_not_a_cv2_crash(tmp_path):
    # cv2.imdecode asserts on an empty buffer (cv2.error); an empty image file is unusable input
    with pytest.raises(InputError):
        decode_image(b"")
    p = tmp_path / "empty.png"
    p.write_bytes(b"")
    with pytest.raises(InputError):
        read_image(p)
