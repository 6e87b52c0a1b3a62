"""The Decision API: frames in, `Decision(outcome, reason, person_id)` out.

    pipe = FacePipeline.from_settings()
    pipe.verify(frames, enrolled_template)          # 1:1, ID number typed at activation
    pipe.identify(frames, gallery)                  # 1:N; may answer retry/need_phone_digits
    pipe.identify(frames, gallery, restrict_to=ids) # after the last 4 phone digits narrowed it
    pipe.probe_template(frames)                     # template for sealing/enrolment, in process only

Outcomes: matched | not_matched | retry. Reasons: ok, no_match, spoof_suspected,
need_phone_digits, too_few_frames (the source ended first), and the quality reasons (no_face, multiple_faces,
face_too_small, too_close, off_centre, pose, blurred, too_dark, backlit, over_exposed).
Similarity and liveness scores never leave this module's objects.
"""
from __future__ import annotations

import time
import warnings
from collections import Counter, defaultdict
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field

import numpy as np

from kiosk.vision.detect import Face, make_detector
from kiosk.vision.embed import Embedder, l2_normalise
from kiosk.vision.liveness import LivenessModel, LivenessVote
from kiosk.vision.match import Gallery, MatchRule
from kiosk.vision.quality import Quality, QualityConfig, assess
from models.loader import ModelPack, load_pack

warnings.filterwarnings("ignore", category=FutureWarning, module="insightface.utils.face_align")

MATCHED, NOT_MATCHED, RETRY = "matched", "not_matched", "retry"


@dataclass(frozen=True)
class Decision:
    outcome: str
    reason: str
    person_id: str | None = None

    def to_dict(self) -> dict[str, str | None]:
        return {"outcome": self.outcome, "reason": self.reason, "person_id": self.person_id}


@dataclass(frozen=True)
class FrameResult:
    quality: Quality
    live_score: float | None = field(default=None, repr=False)  # never in a log line or message
    template: np.ndarray | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Probe:
    """A captured person: `template` is set when `reason` is "ok"."""

    reason: str
    template: np.ndarray | None = field(default=None, repr=False)  # never in a log line or message

    @property
    def ok(self) -> bool:
        return self.reason == "ok"


@dataclass
class StageTimer:
    """Per-stage durations in ms, kept only when enabled (eval/bench)."""

    enabled: bool = False
    samples: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))

    def add(self, stage: str, t0: float) -> float:
        now = time.perf_counter()
        if self.enabled:
            self.samples[stage].append((now - t0) * 1000.0)
        return now

    def summary(self) -> dict[str, dict[str, float]]:
        return {k: {"p50": round(float(np.percentile(v, 50)), 3), "p95": round(float(np.percentile(v, 95)), 3),
                    "n": len(v)} for k, v in self.samples.items() if v}


class FacePipeline:
    def __init__(self, pack: ModelPack, *, detector: str = "yunet", max_frames: int = 30) -> None:
        import cv2

        t = pack.thresholds
        self.pack = pack
        cv2.setNumThreads(pack.intra_op_threads)  # OpenCV (YuNet, cv2.dnn) as single-threaded as onnxruntime
        self.detector = make_detector(pack, detector)
        self.liveness = LivenessModel(pack)
        self.embedder = Embedder(pack)
        self.quality_cfg = QualityConfig.from_thresholds(t)
        self.rule = MatchRule.from_thresholds(t)
        self.live_threshold = float(t["liveness_live"])
        self.live_frames = int(t.get("liveness_frames", 3))
        # a borderline mean waits for more frames (up to liveness_max_frames) instead of deciding on 3
        self.live_borderline = float(t.get("liveness_borderline", 0.0))
        self.live_max_frames = int(t.get("liveness_max_frames", self.live_frames))
        self.max_frames = max_frames
        # a still photo gets the mirrored crop averaged in (CASIA FRR 7.3% -> 5.2% at the same FAR)
        self.enrol_flip = bool(t.get("enrol_flip", True))
        self.timer = StageTimer()

    @classmethod
    def from_settings(cls, settings=None, **kw) -> FacePipeline:
        from kiosk.config import load

        s = settings or load()
        pack = load_pack(s.model_pack, providers=s.onnx_providers, intra_op_threads=s.onnx_threads)
        return cls(pack, detector=kw.pop("detector", s.face_detector), **kw)

    # --- per frame -----------------------------------------------------------------
    def detect(self, frame: np.ndarray, *, max_side: int | None = None) -> list[Face]:
        t0 = time.perf_counter()
        faces = self.detector.detect(frame, max_side=max_side)
        self.timer.add("detect", t0)
        return faces

    def analyse(self, frame: np.ndarray, *, want_template: bool = True) -> FrameResult:
        faces = self.detect(frame)
        t0 = time.perf_counter()
        q = assess(frame, faces, self.quality_cfg)
        t0 = self.timer.add("quality", t0)
        if not q.ok:
            return FrameResult(q)
        live = self.liveness.score(frame, q.face)
        t0 = self.timer.add("liveness", t0)
        tmpl = None
        if want_template:
            tmpl = self.embedder.embed(frame, q.face)
            self.timer.add("align_embed", t0)
        return FrameResult(q, live, tmpl)

    # --- over several frames ---------------------------------------------------------
    def probe_template(self, frames: Iterable[np.ndarray]) -> Probe:
        """Capture one live person over several good frames; the mean template, or a reason to retry."""
        vote = LivenessVote(self.live_threshold, self.live_frames, self.live_borderline, self.live_max_frames)
        templates: list[np.ndarray] = []
        failures: Counter[str] = Counter()
        for i, frame in enumerate(frames):
            if i >= self.max_frames:
                break
            r = self.analyse(frame)
            if not r.quality.ok:
                failures[r.quality.reason] += 1
                continue
            vote.add(r.live_score)
            templates.append(r.template)
            if vote.ready:
                break
        if len(vote.scores) < vote.frames:  # a borderline vote cut short by the source decides on what it has
            if failures:
                reason = failures.most_common(1)[0][0]
            else:
                reason = "too_few_frames" if vote.scores else "no_face"
            return Probe(reason)
        if not vote.live:
            return Probe("spoof_suspected")
        return Probe("ok", l2_normalise(np.mean(templates[-len(vote.scores):], axis=0)))

    def verify(self, frames: Iterable[np.ndarray], template: np.ndarray) -> Decision:
        probe = self.probe_template(frames)
        if not probe.ok:
            return _refusal(probe.reason)
        return self.verify_template(probe.template, template)

    def verify_template(self, probe: np.ndarray, template: np.ndarray) -> Decision:
        if self.rule.verify(probe, template):
            return Decision(MATCHED, "ok")
        return Decision(NOT_MATCHED, "no_match")

    def identify(self, frames: Iterable[np.ndarray], gallery: Gallery, *,
                 restrict_to: Collection[str] | None = None) -> Decision:
        probe = self.probe_template(frames)
        if not probe.ok:
            return _refusal(probe.reason)
        return self.identify_template(probe.template, gallery, restrict_to=restrict_to)

    def identify_template(self, probe: np.ndarray, gallery: Gallery, *,
                          restrict_to: Collection[str] | None = None) -> Decision:
        t0 = time.perf_counter()
        candidates = gallery.search(probe, restrict_to=restrict_to)
        self.timer.add("search", t0)
        outcome, person = self.rule.identify(candidates)
        if outcome == "matched":
            return Decision(MATCHED, "ok", person)
        if outcome == "ambiguous":
            return Decision(RETRY, "need_phone_digits")
        return Decision(NOT_MATCHED, "no_match")

    # --- enrolment from a still photo (ID photo, data sets) ----------------------------
    def enrol_image(self, image: np.ndarray) -> Probe:
        """Template from one photo (tight crops padded first): only the one-face gates apply;
        the mirrored crop is averaged in (`enrol_flip` in the manifest)."""
        img = pad_tight_crop(image)
        faces = self.detect(img, max_side=min(640, max(img.shape[:2])))
        q = assess(img, faces, self.quality_cfg, enrolment=True)
        if q.reason in ("no_face", "multiple_faces"):
            return Probe(q.reason)
        t0 = time.perf_counter()
        tmpl = self.embedder.embed(img, q.face, flip=self.enrol_flip)
        self.timer.add("align_embed", t0)
        return Probe("ok", tmpl)


def _refusal(reason: str) -> Decision:
    if reason == "spoof_suspected":
        return Decision(NOT_MATCHED, reason)
    return Decision(RETRY, reason)


def pad_tight_crop(img: np.ndarray, *, min_side: int = 320) -> np.ndarray:
    """A tightly cropped face (LFW 150x150, ORL 92x112) fills the frame, which detectors miss:
    pad it by half its size on every side (black) before detecting."""
    import cv2

    h, w = img.shape[:2]
    if max(h, w) >= min_side:
        return img
    py, px = h // 2, w // 2
    return cv2.copyMakeBorder(img, py, py, px, px, cv2.BORDER_CONSTANT, value=(0, 0, 0))
