"""The face capture port over kiosk.vision's FacePipeline.

The pipeline's own `probe_template` does the capture (quality gates, liveness
vote over several frames, mean template); this adapter only listens to each
frame's quality verdict for the screen and seals the template before it is
returned, so no score and no clear template reach the counter flow.

Light before rejection: when a frame is too dark or backlit and the terminal
has a fill light (`light`, the bridge's LIGHT_SET), the light is raised one
step and the next frames are judged before the patient is told anything;
only with the light at full (or no light, or the bridge not answering) does
"too dark"/"backlit" reach the screen. A "blurred" frame whose face is dim,
or a frame with no face in a dark scene, is treated the same: in low light the face loses the
contrast the sharpness gate measures (and a real camera exposes longer, so it
smears), and "please hold still" would be the wrong request
(`kiosk.vision.quality.wants_light`). An over-exposed
frame with the light raised steps it back down. The light returns to off when
the capture ends.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Iterator, Protocol

import numpy as np

from kiosk.app.ports import Capture
from kiosk.errors import KioskError
from kiosk.vision.pipeline import FacePipeline, FrameResult
from kiosk.vision.quality import wants_light

log = logging.getLogger(__name__)


class FillLight(Protocol):
    def set(self, level: int) -> None:
        """Fill light at `level` % (0 = off); raises KioskError when the bridge cannot do it."""


class LightControl:
    """Steps the fill light through `levels` while frames are too dark, waiting `settle` frames after each
    change (a camera's exposure follows the light within a few frames) before judging again."""

    def __init__(self, light: FillLight, levels: tuple[int, ...] = (0, 50, 100), settle: int = 2) -> None:
        self.light, self.levels, self.settle = light, levels, max(0, settle)
        self.step = 0
        self._wait = 0
        self.broken = False
        self._ceiling = len(levels) - 1  # lowered after an over-exposure: no see-saw between two steps

    @property
    def level(self) -> int:
        return self.levels[self.step]

    def absorbs(self, reason: str, brightness: float = 0.0) -> bool:
        """True when this frame's reason is the light's to fix (the patient is not told)."""
        if self.broken:
            return False
        dark = wants_light(reason, brightness)
        if self._wait > 0:
            self._wait -= 1
            return dark or reason == "over_exposed"
        if dark and self.step < self._ceiling:
            return self._move(+1)
        if reason == "over_exposed" and self.step > 0:
            self._ceiling = self.step - 1
            return self._move(-1)
        return False

    def _move(self, d: int) -> bool:
        try:
            self.light.set(self.levels[self.step + d])
        except KioskError as e:  # no light to help: the patient gets the reason as before
            log.warning("fill light unavailable (%s): prompting the patient instead", e.code)
            self.broken = True
            return False
        self.step += d
        self._wait = self.settle
        return True

    def off(self) -> None:
        if self.step and not self.broken:
            try:
                self.light.set(self.levels[0])
            except KioskError as e:
                log.warning("fill light not switched back off (%s)", e.code)
        self.step = 0


class _Observed:
    """The pipeline, with each frame's quality reason reported to `on_frame` (unless the light fixes it)."""

    def __init__(self, pipe: FacePipeline, on_frame: Callable[[str], None], light: LightControl | None = None) -> None:
        self._pipe = pipe
        self._on_frame = on_frame
        self._light = light

    def analyse(self, frame: np.ndarray, *, want_template: bool = True) -> FrameResult:
        r = self._pipe.analyse(frame, want_template=want_template)
        reason = "ok" if r.quality.ok else r.quality.reason
        if self._light is not None and reason != "ok" and self._light.absorbs(reason, r.quality.brightness):
            return r
        self._on_frame(reason)
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

    def __init__(self, pipe: FacePipeline, seal: Callable[[np.ndarray, str, str], str], *,
                 light: FillLight | None = None) -> None:
        self.pipe = pipe
        self.seal = seal
        self.light = light

    def capture(self, frames: Iterator[np.ndarray], on_frame: Callable[[str], None], session_id: str) -> Capture:
        control = LightControl(self.light) if self.light is not None else None
        try:
            probe = FacePipeline.probe_template(_Observed(self.pipe, on_frame, control), frames)  # type: ignore[arg-type]
        finally:
            if control is not None:
                control.off()
        if not probe.ok or probe.template is None:
            return Capture(probe.reason)
        return Capture("ok", SealingProbe(probe.template, self.seal, session_id))
