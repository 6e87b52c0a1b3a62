"""Calibrate the match and liveness thresholds on ../shared/data and write them into models/manifest.json.

Splits are by subject, never by frame:
- match threshold: the highest of the per-data-set thresholds at FAR 0.1%
  (CASIA-FaceV5 Asian subjects, all 20, and LFW identities whose name hashes
  into the calibration half), so one threshold holds on both populations;
  checked on data never used to choose it: LFW's other half and ORL.
- 1:N margin: the largest of 0.02..0.10 that asks at most 5% of correct
  top-1 identifications for phone digits, in a closed-set search on CASIA+LFW.
- liveness threshold: NUAA subjects 0001-0006 calibrate, 0007-0009 are held
  out. Decisions are 3-frame means within one session (as the kiosk decides).
  Threshold: minimum of BPCER + mean APCER over the real NUAA print attacks and
  SYNTHETIC screen replays made in memory from calibration live frames (equal
  weights, BPCER at most 10%), so the threshold is not fitted to printed photos
  only; the synthetic print imitation is reported but not used (the models
  do not separate it, so it carries no information about the threshold).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import re
from pathlib import Path

import numpy as np

from kiosk.config import SHARED
from kiosk.vision import synthetic
from kiosk.vision.evaluate import (Cohort, Embeddings, _dots, eer, embed_identities, identity_folders, image_files,
                                   normalised_pair_scores, pair_indices, threshold_at_far)
from kiosk.vision.norm import as_norm, cohort_order, side_stats
from kiosk.vision.frames import read_image
from kiosk.vision.pipeline import FacePipeline
from models.loader import MANIFEST_PATH

DATA = SHARED / "data"
LIVE_CALIB_SUBJECTS = {"0001", "0002", "0003", "0004", "0005", "0006"}
TARGET_FAR = 1e-3
MAX_BPCER = 0.10
LIVE_FRAMES = 3


def lfw_half(name: str) -> str:
    return "calib" if hashlib.sha256(name.encode()).digest()[0] % 2 == 0 else "holdout"


def lfw_split() -> dict[str, dict[str, list[Path]]]:
    folders = identity_folders(DATA / "faces" / "lfw-dev" / "images")
    out: dict[str, dict[str, list[Path]]] = {"calib": {}, "holdout": {}}
    for k, v in folders.items():
        out[lfw_half(k)][k] = v
    return out


def nuaa_sessions(kind: str) -> dict[str, list[Path]]:
    """session key -> frames in order (NUAA name: subject_subject_glasses_?_session_frame.jpg)."""
    out: dict[str, list[Path]] = {}
    for p in image_files(DATA / "liveness" / "nuaa-train" / kind):
        m = re.match(r"^(.*)_(\d+)$", p.stem)
        out.setdefault(m.group(1), []).append(p)
    for k in out:
        out[k].sort(key=lambda p: int(p.stem.rsplit("_", 1)[1]))
    return out


def session_means(scores: list[float], k: int = LIVE_FRAMES) -> list[float]:
    """Non-overlapping windows of k consecutive frames of one session."""
    return [float(np.mean(scores[i:i + k])) for i in range(0, len(scores) - k + 1, k)]


def score_sessions(pipe: FacePipeline, sessions: dict[str, list[Path]], transform=None) -> dict[str, list[float]]:
    from kiosk.vision.evaluate import liveness_score_image

    out = {}
    for key, paths in sessions.items():
        s = []
        for p in paths:
            img = read_image(p)
            if transform is not None:
                img = transform(img)
            v = liveness_score_image(pipe, img)
            s.append(0.0 if v is None else v)  # no face: rejected
        out[key] = s
    return out


def margin_stats(emb: Embeddings, threshold: float) -> dict[float, dict[str, float]]:
    """Closed-set search: gallery = first image of each person, probes = the others."""
    lab, v = emb.labels, emb.vectors
    first = {}
    for i, person in enumerate(lab):
        first.setdefault(int(person), i)
    g_idx = np.array(sorted(first.values()))
    g_lab = lab[g_idx]
    probes = np.array([i for i in range(len(lab)) if i not in set(g_idx.tolist())])
    s = v[probes] @ v[g_idx].T
    order = np.argsort(-s, axis=1)[:, :2]
    top1 = s[np.arange(len(probes)), order[:, 0]]
    top2 = s[np.arange(len(probes)), order[:, 1]]
    correct = g_lab[order[:, 0]] == lab[probes]
    above = top1 >= threshold
    out = {}
    for m in (0.02, 0.04, 0.06, 0.08, 0.10):
        amb = (top1 - top2) < m
        out[m] = {
            "ambiguous_among_correct": float((amb & correct & above).sum() / max(1, (correct & above).sum())),
            "wrong_accepted": float((~amb & ~correct & above).sum() / max(1, len(probes))),
            "wrong_above_threshold": float((~correct & above).sum() / max(1, len(probes))),
        }
    return out


COHORT_K = 50
# people in a region's cohort (and the least a region needs to normalise): the thresholds hold only at
# the size they are calibrated at; 700 is what the Asian dev set's halves (~800 people) can calibrate.
# Measured (dev, FAR 1e-3): normalised threshold 3.8 at 300 people, 3.1-3.25 at 700-800, the same on LFW
# and East Asian faces; Asian TAR@1e-4 0.51 (300) -> 0.58 (700) -> 0.60 (800)
COHORT_SIZE = 700
NORM_MARGINS = (0.25, 0.5, 0.75, 1.0, 1.25, 1.5)


def name_half(name: str) -> str:
    return lfw_half(name)


def split_by_name(root: Path) -> dict[str, dict[str, list[Path]]]:
    out: dict[str, dict[str, list[Path]]] = {"calib": {}, "holdout": {}}
    for k, v in identity_folders(root).items():
        out[name_half(k)][k] = v
    return out


def _joined(a: Embeddings, b: Embeddings) -> Embeddings:
    """Two sets as one label space (b's labels after a's)."""
    return Embeddings(np.concatenate([a.labels, b.labels + len(a.people)]), np.concatenate([a.vectors, b.vectors]),
                      list(a.people) + list(b.people), a.failed_to_enrol + b.failed_to_enrol, a.images + b.images)


def _norm_margin_stats(emb: Embeddings, k: int, size: int, raw_margin: float,
                       norm_thr: float) -> dict[float, dict[str, float]]:
    """Closed-set 1:N as the centre decides it: gallery = first image of each person, cohort = the first
    `size` + 1 gallery people (cohort_order), probes = the other images; the raw top-8 candidates are
    normalised (probe statistics without the candidate) and re-ranked; a match within the raw margin of
    another person is ambiguous too."""
    lab, v = emb.labels, emb.vectors
    people, first = np.unique(lab, return_index=True)
    gal, glab = v[first], people
    cidx = np.array(cohort_order([emb.people[int(x)] for x in people])[: size + 1])
    coh, clab = gal[cidx], glab[cidx]
    probes = np.setdiff1d(np.arange(len(lab)), first)
    sc = v[probes] @ gal.T
    top = np.argsort(-sc, axis=1)[:, :8]
    gstats = {}
    for g in np.unique(top):
        s_g = coh @ gal[g]
        gstats[g] = side_stats(s_g, clab, glab[g], k)
    out: dict[float, dict[str, float]] = {m: {"amb": 0, "wrong": 0, "correct_above": 0} for m in NORM_MARGINS}
    for r, pi in enumerate(probes):
        ps = coh @ v[pi]
        cands = []
        for g in top[r]:
            mu_p, sd_p = side_stats(ps, clab, glab[g], k)
            mu_e, sd_e = gstats[g]
            cands.append((float(as_norm(sc[r, g], mu_p, sd_p, mu_e, sd_e)), float(sc[r, g]), int(glab[g])))
        cands.sort(reverse=True)
        if cands[0][0] < norm_thr:
            continue
        raw_close = cands[0][1] - max(c[1] for c in cands[1:]) < raw_margin
        correct = cands[0][2] == lab[pi]
        for m in NORM_MARGINS:
            amb = raw_close or cands[0][0] - cands[1][0] < m
            o = out[m]
            if correct:
                o["correct_above"] += 1
                o["amb"] += amb
            elif not amb:
                o["wrong"] += 1
    return {m: {"ambiguous_among_correct": o["amb"] / max(1, o["correct_above"]),
                "wrong_accepted": o["wrong"] / max(1, len(probes))} for m, o in out.items()}


def recognition_report(casia: Embeddings, lfw_cal: Embeddings, lfw_hold: Embeddings, orl: Embeddings,
                       asian_cal: Embeddings, asian_hold: Embeddings, *, k: int = COHORT_K,
                       size: int = COHORT_SIZE) -> dict:
    """Raw and normalised thresholds at FAR 0.1%, each the highest over LFW (calib half), CASIA and the
    Asian dev set (calib half), so one threshold holds on every population; checked on the other halves.
    Cohorts: the set's own other people (fixed sample of `size`, each pair's own left out); CASIA's
    20 people are too few, so CASIA takes the Asian dev set's people of the same half alongside."""
    sets = {"lfw_calib": (lfw_cal, lfw_cal), "lfw_holdout": (lfw_hold, lfw_hold),
            "asian_calib": (asian_cal, asian_cal), "asian_holdout": (asian_hold, asian_hold),
            "casia": (casia, _joined(casia, asian_cal)),
            "casia_asian_holdout_cohort": (casia, _joined(casia, asian_hold)),
            "orl_holdout": (orl, None)}
    calib = ("lfw_calib", "asian_calib", "casia")
    scores: dict[str, dict] = {}
    for name, (emb, cset) in sets.items():
        idx = pair_indices(emb)
        rg, ri = _dots(emb.vectors, *idx[:2]), _dots(emb.vectors, *idx[2:])
        entry = {"raw": (rg, ri), "norm": None, "emb": emb}
        if cset is not None and len(cset.people) >= size + 2:
            co = Cohort.from_identities(cset, size)  # a joined set numbers `emb`'s people first: same labels
            entry["norm"] = normalised_pair_scores(emb, co, k, idx)
        scores[name] = entry
    t_raw = {n: threshold_at_far(scores[n]["raw"][1], TARGET_FAR) for n in calib}
    t_norm = {n: threshold_at_far(scores[n]["norm"][1], TARGET_FAR) for n in calib if scores[n]["norm"] is not None}
    raw_t = round(max(t_raw.values()), 3)
    # CASIA's 20 people cannot be their own cohort: its normalised scores use web portraits as the cohort,
    # which do not share CASIA's studio capture (its impostor pairs do), so they are reported, not used;
    # a region's cohort is its own gallery, and CASIA-sized sets decide raw (fewer than COHORT_SIZE people)
    norm_t = round(max(v for n, v in t_norm.items() if n != "casia"), 2)
    rec: dict = {"rule": "raw threshold = highest over LFW calib half, Asian dev calib half and CASIA of the "
                         f"threshold at FAR {TARGET_FAR}; normalised: AS-norm, top-{k} of a fixed cohort of "
                         f"{size} other people of the same data set (each pair's own people left out), highest "
                         "over LFW and Asian calib halves (CASIA, 20 people, has no cohort of its own: shown "
                         "with web portraits as cohort, not used)",
                 "threshold_at_far_0.001": {"raw": {n: round(v, 4) for n, v in t_raw.items()},
                                            "normalised": {n: round(v, 3) for n, v in t_norm.items()}},
                 "shipped": raw_t, "shipped_normalised": norm_t, "cohort_top_k": k, "cohort_min_size": size}
    for name, e in scores.items():
        emb = e["emb"]
        row = {}
        for kind, thr in (("raw", raw_t), ("norm", norm_t)):
            if e[kind] is None:
                continue
            g, i = e[kind]
            tar = {}
            for f in (1e-3, 1e-4):
                t = threshold_at_far(i, f)
                tar[str(f)] = round(float((g >= t).mean()), 4) if i.size * f >= 1 else None
            row[kind] = {"far": round(float((i >= thr).mean()), 5), "frr": round(float((g < thr).mean()), 5),
                         "tar_at_far": tar, "eer": round(eer(g, i)[0], 4)}
        rec[name] = {"genuine": int(e["raw"][0].size), "impostor": int(e["raw"][1].size),
                     "fte": emb.failed_to_enrol, **row}
    # CASIA 2-fold by subject (normalised, Asian calib cohort): threshold from one half, measured on the other
    cas = scores["casia"]
    gi, gj, ii, ij = pair_indices(casia)
    cv = []
    for a_half in (0, 1):
        in_a = lambda x: (casia.labels[x] % 2) == a_half  # noqa: E731
        ta = threshold_at_far(cas["norm"][1][in_a(ii) & in_a(ij)], TARGET_FAR)
        gb = cas["norm"][0][~in_a(gi)]
        ib = cas["norm"][1][~in_a(ii) & ~in_a(ij)]
        cv.append({"threshold": round(ta, 3), "far_other_half": round(float((ib >= ta).mean()), 5),
                   "frr_other_half": round(float((gb < ta).mean()), 5)})
    rec["casia_2fold_by_subject_normalised"] = cv
    ms = margin_stats(_joined(casia, lfw_cal), raw_t)
    margin = max([m for m, v in ms.items() if v["ambiguous_among_correct"] <= 0.05] or [0.02])
    rec["margin_stats"] = {str(m): {kk: round(vv, 4) for kk, vv in v.items()} for m, v in ms.items()}
    rec["margin"] = margin
    nms = _norm_margin_stats(_joined(asian_cal, lfw_cal), k, size, margin, norm_t)
    rec["margin_stats_normalised"] = {str(m): {kk: round(vv, 4) for kk, vv in v.items()} for m, v in nms.items()}
    # with the raw-margin twin check in force the normalised margin costs little: the largest one that asks
    # at most one point more correct identifications for digits than the smallest
    floor = nms[NORM_MARGINS[0]]["ambiguous_among_correct"]
    rec["margin_normalised"] = max(m for m, v in nms.items() if v["ambiguous_among_correct"] <= floor + 0.01)
    return rec


def calibrate(pipe: FacePipeline, *, n_lfw: int | None = None, seed: int = 0, liveness: bool = True) -> dict:
    rng = np.random.default_rng(seed)
    report: dict = {"splits": "by subject; NUAA 0001-0006 calib, 0007-0009 held out; LFW and asian-dev by name "
                              "hash; ORL held out; CASIA 20 subjects calib (2-fold by subject for the check)"}
    # --- recognition -------------------------------------------------------------------
    casia = embed_identities(pipe, identity_folders(DATA / "faces" / "casia-facev5-dev"))
    lfw = lfw_split()
    if n_lfw:
        lfw = {k: dict(list(v.items())[:n_lfw]) for k, v in lfw.items()}
    asian = split_by_name(DATA / "faces" / "asian-dev")
    report["recognition"] = recognition_report(
        casia, embed_identities(pipe, lfw["calib"]), embed_identities(pipe, lfw["holdout"]),
        embed_identities(pipe, identity_folders(DATA / "faces" / "orl")),
        embed_identities(pipe, asian["calib"]), embed_identities(pipe, asian["holdout"]))
    if not liveness:
        return report
    # --- liveness -------------------------------------------------------------------------
    live_s = nuaa_sessions("live")
    spoof_s = nuaa_sessions("spoof")

    def part(sess, calib):
        return {k: v for k, v in sess.items() if (k[:4] in LIVE_CALIB_SUBJECTS) == calib}

    live_cal = score_sessions(pipe, part(live_s, True))
    live_hold = score_sessions(pipe, part(live_s, False))
    spoof_cal = score_sessions(pipe, part(spoof_s, True))
    spoof_hold = score_sessions(pipe, part(spoof_s, False))
    synth = {}
    for kind in synthetic.KINDS:
        synth[kind] = score_sessions(pipe, part(live_s, True), transform=lambda im, k=kind: synthetic.make(k, im, rng))

    def win(d):
        return np.array([m for v in d.values() for m in session_means(v)])

    def frames(d):
        return np.array([x for v in d.values() for x in v])

    lc = win(live_cal)
    attacks = [win(spoof_cal), win(synth["synthetic_screen"])]
    table = {}
    for t in np.round(np.arange(0.05, 0.96, 0.01), 2):
        bp = float((lc < t).mean())
        ap = float(np.mean([(a >= t).mean() for a in attacks]))
        table[float(t)] = (bp, ap)
    ok = {t: v for t, v in table.items() if v[0] <= MAX_BPCER}
    live_t = min(ok, key=lambda t: (ok[t][0] + ok[t][1], -t)) if ok else 0.5
    liv = {"shipped": live_t,
           "rule": f"minimum (BPCER + mean APCER[NUAA print, SYNTHETIC screen]) of 3-frame decisions on calib "
                   f"subjects, BPCER <= {MAX_BPCER}",
           "curve_3frame_bpcer_apcer": {str(t): [round(v[0], 4), round(v[1], 4)] for t, v in table.items()
                                        if round(t * 100) % 5 == 0}}
    for name, d, is_live in (("nuaa_live_calib", live_cal, True), ("nuaa_live_holdout", live_hold, True),
                             ("nuaa_spoof_calib", spoof_cal, False), ("nuaa_spoof_holdout", spoof_hold, False),
                             *[(f"{k}_calib_SYNTHETIC", v, False) for k, v in synth.items()]):
        w, f = win(d), frames(d)
        key = "bpcer" if is_live else "apcer"
        liv[name] = {"frames": int(f.size), f"{key}_per_frame": round(float(((f < live_t) if is_live else
                                                                              (f >= live_t)).mean()), 4),
                     "windows": int(w.size), f"{key}_3frame": round(float(((w < live_t) if is_live else
                                                                          (w >= live_t)).mean()), 4),
                     "percentiles_5_50_95": [round(float(x), 3) for x in np.percentile(f, [5, 50, 95])]}
    liv["live_score_stats"] = live_score_stats(live_cal, live_t)
    report["liveness"] = liv
    return report


def live_score_stats(sessions: dict[str, list[float]], threshold: float) -> dict:
    """Per-frame live scores of the calibration live frames, summarised: provisioning compares a new
    terminal's camera (the technician's face) with these (kiosk.vision.liveness.far_from_calibration)."""
    from kiosk.vision.liveness import summarise_live_scores

    return summarise_live_scores([x for v in sessions.values() for x in v], threshold)


def write_manifest(report: dict, path: Path = MANIFEST_PATH) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    data["thresholds"]["match_cosine"] = report["recognition"]["shipped"]
    data["thresholds"]["match_margin"] = report["recognition"]["margin"]
    data["thresholds"]["match_norm_threshold"] = report["recognition"]["shipped_normalised"]
    data["thresholds"]["match_norm_margin"] = report["recognition"]["margin_normalised"]
    data["thresholds"]["cohort_top_k"] = report["recognition"]["cohort_top_k"]
    data["thresholds"]["cohort_min_size"] = report["recognition"]["cohort_min_size"]
    if "liveness" in report:
        data["thresholds"]["liveness_live"] = report["liveness"]["shipped"]
        data["thresholds"]["liveness_frames"] = LIVE_FRAMES
    data["calibration"] = {**data.get("calibration", {}), **report}  # --recognition-only keeps the liveness record
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="calibrate_face", description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true", help="write the thresholds into models/manifest.json")
    ap.add_argument("--lfw-people", type=int, default=None, help="limit LFW identities per half (quick runs)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--recognition-only", action="store_true", help="match thresholds only (liveness untouched)")
    args = ap.parse_args(argv)
    pipe = FacePipeline.from_settings()
    report = calibrate(pipe, n_lfw=args.lfw_people, seed=args.seed, liveness=not args.recognition_only)
    print(json.dumps(report, indent=2))
    if args.write:
        write_manifest(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
