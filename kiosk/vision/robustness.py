"""Measurements behind issue 15's capture work, on the development data only (`scripts/liveness_robustness`).

    vote   borderline liveness votes: BPCER/APCER of 3-frame decisions against decisions that take up to
           `max_frames` when the 3-frame mean is within a band of the threshold (NUAA sessions, the
           SYNTHETIC screen replays of calibrate.py, as captured and after camera changes)
    dark   dim faces (`shifts.darken` of the dev portraits) with and without a fill-light step
           (`shifts.fill_light`, the model the simulated camera uses): failure to enrol, quality
           rejects and FRR against the person's undimmed enrolment photo, per darkness level

Aggregates only are printed; frames are made in memory and dropped.
"""
from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import numpy as np

from kiosk.config import SHARED
from kiosk.vision import shifts, synthetic
from kiosk.vision.evaluate import identity_folders
from kiosk.vision.frames import read_image
from kiosk.vision.pipeline import FacePipeline
from kiosk.vision.quality import assess, wants_light

DATA = SHARED / "data"


# ----------------------------------------------------------------------------- borderline votes
def sequential_decisions(scores: list[float], threshold: float, frames: int, band: float,
                         max_frames: int) -> list[tuple[bool, int]]:
    """(live?, frames used) for consecutive decisions along one session, as `LivenessVote` takes them."""
    from kiosk.vision.liveness import LivenessVote

    out, i = [], 0
    while i + frames <= len(scores):
        vote = LivenessVote(threshold, frames, band, max_frames)
        j = i
        while j < len(scores):
            vote.add(scores[j])
            j += 1
            if vote.ready:
                break
        out.append((vote.live, j - i))
        i = j
    return out


def _session_scores(pipe: FacePipeline, kind: str, transform=None) -> dict[str, list[float]]:
    from kiosk.vision.calibrate import nuaa_sessions, score_sessions

    return score_sessions(pipe, nuaa_sessions(kind), transform=transform)


def vote_study(pipe: FacePipeline, bands=(0.0, 0.05, 0.1, 0.15, 0.2), max_frames: int = 6, seed: int = 0) -> list[dict]:
    thr = float(pipe.pack.thresholds["liveness_live"])
    rows = []
    cams = {"as captured": None, "1/2 resolution + jpeg q50": shifts.CAMERA_SHIFTS["1/2 resolution + jpeg q50"],
            "blur sigma 2": shifts.CAMERA_SHIFTS["blur sigma 2"]}
    for cam, shift in cams.items():
        rng = np.random.default_rng(seed)
        live = _session_scores(pipe, "live", shift)
        spoof = _session_scores(pipe, "spoof", shift)
        screen = _session_scores(pipe, "live", (lambda im: synthetic.screen_replay(shift(im) if shift else im, rng)))
        for band in bands:
            mf = max_frames if band > 0 else 3
            d_live = [d for s in live.values() for d in sequential_decisions(s, thr, 3, band, mf)]
            d_spoof = [d for s in spoof.values() for d in sequential_decisions(s, thr, 3, band, mf)]
            d_screen = [d for s in screen.values() for d in sequential_decisions(s, thr, 3, band, mf)]
            rows.append({
                "camera": cam, "band": band, "max_frames": mf,
                "bpcer": round(float(np.mean([not ok for ok, _ in d_live])), 4),
                "apcer_print": round(float(np.mean([ok for ok, _ in d_spoof])), 4),
                "apcer_screen_SYNTHETIC": round(float(np.mean([ok for ok, _ in d_screen])), 4),
                "mean_frames_live": round(float(np.mean([n for _, n in d_live])), 2),
                "decisions_live": len(d_live),
            })
    return rows


# ----------------------------------------------------------------------------- dim faces
DARK_LEVELS = ((1.0, 1.0), (0.5, 1.0), (0.25, 1.0), (0.125, 1.0), (0.25, 1.6), (0.0625, 1.0), (0.125, 1.6))
FILL_STEPS = (0.5, 1.0)  # the capture loop's levels 50% then 100%


def _people(root: Path, min_images: int = 2, max_people: int | None = None) -> dict[str, list[Path]]:
    folders = {k: v for k, v in identity_folders(root).items() if len(v) >= min_images}
    return dict(list(folders.items())[:max_people]) if max_people else folders


def dark_study(pipe: FacePipeline, sets: dict[str, Path], *, max_people: int | None = None) -> list[dict]:
    """Per data set and darkness level: the first image of each person enrolled undimmed (the ID photo);
    every other image dimmed, then (with the fill light) lit one step at a time while the gates say
    too dark / backlit / dim-blurred, as the capture loop does."""
    cfg = pipe.quality_cfg
    thr = float(pipe.pack.thresholds["match_cosine"])
    rows = []
    for name, root in sets.items():
        people = _people(root, max_people=max_people)
        enrolled, probes = {}, []
        for person, paths in people.items():
            e = pipe.enrol_image(read_image(paths[0]))
            if e.ok:
                enrolled[person] = e.template
                probes += [(person, p) for p in paths[1:]]
        images = [(person, read_image(p)) for person, p in probes]
        for gain, gamma in DARK_LEVELS:
            for fill in (False, True):
                fte = rejects = false_rejects = lit = 0
                reasons: Counter = Counter()
                for person, img in images:
                    dim = shifts.darken(img, gain, gamma)
                    frame = dim
                    q = _quality(pipe, frame, cfg)
                    if fill:
                        for level in FILL_STEPS:
                            if q.ok or not wants_light(q.reason, q.brightness):
                                break
                            frame = shifts.fill_light(dim, level)
                            q = _quality(pipe, frame, cfg)
                            lit += level == FILL_STEPS[0]
                    probe = pipe.enrol_image(frame)
                    if not probe.ok:
                        fte += 1
                        continue
                    if not q.ok:
                        rejects += 1
                        reasons[q.reason] += 1
                    if float(probe.template @ enrolled[person]) < thr:
                        false_rejects += 1
                n = len(images)
                rows.append({"set": name, "gain": gain, "gamma": gamma, "fill_light": fill, "probes": n,
                             "fte": round(fte / n, 4), "quality_reject": round(rejects / n, 4),
                             "frr": round(false_rejects / max(1, n - fte), 4), "lit": lit,
                             "top_reasons": dict(reasons.most_common(3))})
    return rows


def _quality(pipe: FacePipeline, img: np.ndarray, cfg):
    """The image-quality gates a still can be judged by (position gates off: tight portraits)."""
    from kiosk.vision.pipeline import pad_tight_crop

    img = pad_tight_crop(img)
    faces = pipe.detect(img, max_side=min(640, max(img.shape[:2])))
    return assess(img, faces, cfg, enrolment=True)


def _table(rows: list[dict], cols: list[str]) -> str:
    def fmt(v):
        if isinstance(v, float) and not isinstance(v, bool) and 0 <= v <= 1 and v not in (0.0, 1.0):
            return f"{100 * v:.1f}%"
        return str(v)

    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join(fmt(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="liveness_robustness", description=__doc__.splitlines()[0])
    ap.add_argument("study", choices=("vote", "dark"))
    ap.add_argument("--max-people", type=int, default=None, help="dark: at most this many people per set")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    pipe = FacePipeline.from_settings()
    if args.study == "vote":
        rows = vote_study(pipe)
        cols = ["camera", "band", "max_frames", "bpcer", "apcer_print", "apcer_screen_SYNTHETIC",
                "mean_frames_live", "decisions_live"]
    else:
        faces = DATA / "faces"
        rows = dark_study(pipe, {"casia": faces / "casia-facev5-dev", "asian-dev": faces / "asian-dev"},
                          max_people=args.max_people)
        cols = ["set", "gain", "gamma", "fill_light", "probes", "fte", "quality_reject", "frr", "lit", "top_reasons"]
    print(json.dumps(rows, indent=2) if args.json else _table(rows, cols))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
