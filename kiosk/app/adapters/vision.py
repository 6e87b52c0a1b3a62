"""The face capture port over kiosk.vision's FacePipeline.

The pipeline's own `probe_template` does the capture (quality gates, liveness
vote over several frames, mean template); this adapter only listens to each
frame's quality verdict for the screen and seals the template before it is
returned, so no score and no clear template reach the counter flow.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator

import numpy as np

from kiosk.app.ports import Capture
from kiosk.vision.pipeline import FacePipeline, FrameResult


class _Observed:
    """The pipeline, with each frame's quality reason reported to `on_frame`."""

    def __init__(self, pipe: FacePipeline, on_frame: Callable[[str], None]) -> None:
        self._pipe = pipe
        self._on_frame = on_frame

    def analyse(self, frame: np.ndarray, *, want_template: bool = True) -> FrameResult:
        r = self._pipe.analyse(frame, want_template=want_template)
        self._on_frame("ok" if r.quality.ok else r.quality.reason)
        return r

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pipe, name)


class SealingProbe:
    """The template, kept in memory, sealed on demand for one purpose of one session."""

    __slots__ = ("_template", "_seal", "_session_id")

    def __init__(self, template: np.ndarray, seal: Callable[[np.ndarray, str, str], str], session_id: str) -> None:
        self._template, self._seal, self._session_id = template, seal, session_id

    def sealed(self, purpose: str) -> str:
        return self._seal(self._template, self._session_id, purpose)

    def __repr__(self) -> str:  # never print a template
        return "SealingProbe(<in memory>)"


class PipelineVision:
    """`seal(template, session_id, purpose) -> Base64` seals to the centre (kiosk.security)."""

    def __init__(self, pipe: FacePipeline, seal: Callable[[np.ndarray, str, str], str]) -> None:
        self.pipe = pipe
        self.seal = seal

    def capture(self, frames: Iterator[np.ndarray], on_frame: Callable[[str], None], session_id: str) -> Capture:
        probe = FacePipeline.probe_template(_Observed(self.pipe, on_frame), frames)  # type: ignore[arg-type]
        if not probe.ok or probe.template is None:
            return Capture(probe.reason)
        return Capture("ok", SealingProbe(probe.template, self.seal, session_id))
