"""Evaluation of the face pipeline on folders of images (ISO/IEC 30107-3 / 19795 terms).

Verification: DIR/<person>/<image>; genuine pairs = all same-person pairs,
impostor pairs = all cross-person pairs (or a seeded sample of at least
100,000 when there are more than `max_impostors`). An image with no usable face
is a failure to enrol, counted, not raised. Liveness: DIR/live/*, DIR/spoof/*
(sub-folders allowed); the per-image score is the ensemble live probability of
the largest face; a spoof with no face counts as rejected, a live image with no
face as a bona fide rejection. An image whose face is too close for liveness
(the `too_close` quality gate: the crops would be mostly outside the frame) is
not scored, as on the kiosk: it is counted under its quality reason and left
out of both APCER and BPCER. Results and the PNG report are aggregate
numbers only: no image or crop is written.
"""
from __future__ import annotations

import time
from collections.abc import Iterable
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kiosk.errors import InputError
from kiosk.vision.frames import IMAGE_SUFFIXES, read_image
from kiosk.vision.norm import CohortRule, as_norm, cohort_order, pair_cohort_stats
from kiosk.vision.pipeline import FacePipeline, pad_tight_crop

FAR_POINTS = ("0.01", "0.001", "0.0001")


def image_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def identity_folders(root: Path) -> dict[str, list[Path]]:
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"identities directory not found: {root}", code="not_a_directory", field="identities")
    out = {d.name: image_files(d) for d in sorted(root.iterdir()) if d.is_dir()}
    out = {k: v for k, v in out.items() if v}
    if not out:
        raise InputError(f"no <person>/<image> folders under {root}", code="no_identities", field="identities")
    return out


@dataclass
class Embeddings:
    labels: np.ndarray  # int person index per enrolled image
    vectors: np.ndarray  # (n, 128) float32
    people: list[str]
    failed_to_enrol: int
    images: int


def embed_identities(pipe: FacePipeline, folders: dict[str, list[Path]]) -> Embeddings:
    labels, vecs, fte, n = [], [], 0, 0
    people = list(folders)
    for pi, person in enumerate(people):
        for path in folders[person]:
            n += 1
            t0 = time.perf_counter()
            try:
                img = read_image(path)
            except InputError:
                fte += 1
                continue
            pipe.timer.add("decode", t0)
            probe = pipe.enrol_image(img)
            if not probe.ok:
                fte += 1
                continue
            labels.append(pi)
            vecs.append(probe.template)
    vectors = np.asarray(vecs, np.float32).reshape(-1, pipe.embedder.dim)
    return Embeddings(np.asarray(labels, np.int64), vectors, people, fte, n)


def pair_indices(emb: Embeddings, *, max_impostors: int = 2_000_000,
                 seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(gen_i, gen_j, imp_i, imp_j): all same-person pairs; all cross pairs, or a seeded sample."""
    lab = emb.labels
    n = len(lab)
    e = np.empty(0, np.int64)
    if n < 2:
        return e, e, e, e
    n_cross = (n * (n - 1)) // 2 - int(sum(c * (c - 1) // 2 for c in np.bincount(lab)))
    gi, gj = [], []
    order = np.argsort(lab, kind="stable")
    bounds = np.flatnonzero(np.diff(lab[order])) + 1
    for grp in np.split(order, bounds):
        if grp.size > 1:
            a, b = np.triu_indices(grp.size, 1)
            x, y = np.sort(grp)[a], np.sort(grp)[b]
            gi.append(x)
            gj.append(y)
    gen_i = np.concatenate(gi) if gi else e
    gen_j = np.concatenate(gj) if gj else e
    if n_cross <= max_impostors:
        ii, ij = [], []
        step = max(1, min(2048, (1 << 23) // n))
        for i in range(0, n, step):
            rows = np.arange(i, min(n, i + step))[:, None]
            mask = (np.arange(n)[None, :] > rows) & (lab[rows] != lab[None, :])
            r, c = np.nonzero(mask)
            ii.append(r + i)
            ij.append(c)
        return gen_i, gen_j, np.concatenate(ii), np.concatenate(ij)
    rng = np.random.default_rng(seed)
    want = max(100_000, max_impostors)
    a = rng.integers(0, n, want * 2)
    b = rng.integers(0, n, want * 2)
    keep = (a != b) & (lab[a] != lab[b])
    return gen_i, gen_j, a[keep][:want], b[keep][:want]


def pair_scores(emb: Embeddings, *, max_impostors: int = 2_000_000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Genuine scores (all same-person pairs) and impostor scores (all cross pairs, or a seeded sample)."""
    gi, gj, ii, ij = pair_indices(emb, max_impostors=max_impostors, seed=seed)
    return _dots(emb.vectors, gi, gj), _dots(emb.vectors, ii, ij)


def _dots(v: np.ndarray, i: np.ndarray, j: np.ndarray, step: int = 1 << 20) -> np.ndarray:
    out = np.empty(i.size, np.float32)
    for s0 in range(0, i.size, step):
        out[s0:s0 + step] = np.einsum("ij,ij->i", v[i[s0:s0 + step]], v[j[s0:s0 + step]])
    return out


@dataclass
class Cohort:
    """Cohort templates (one per person) with labels in the evaluated set's label space: a cohort
    person who is also evaluated carries their label, so they are left out of their own pairs."""

    vectors: np.ndarray
    labels: np.ndarray
    source: str
    available: int = 0  # people the cohort was drawn from

    @classmethod
    def from_identities(cls, emb: Embeddings, size: int | None = None,
                        source: str = "evaluated identities") -> Cohort:
        """The first enrolled image of each evaluated person (the centre's gallery holds one template
        each); with `size`, a fixed sample of size + 2 of them (kiosk.vision.norm.cohort_order), so that
        leaving out a pair's two people leaves at least `size`, as in a region's fixed-size cohort."""
        labels, first = np.unique(emb.labels, return_index=True)
        pick = np.arange(labels.size)
        if size is not None and emb.people:
            order = cohort_order([emb.people[int(x)] for x in labels])
            pick = np.array(order[: size + 2], np.int64)
        return cls(emb.vectors[first[pick]], labels[pick], source, int(labels.size))

    def sample(self, size: int, names: list[str]) -> Cohort:
        """The same fixed sample from an external cohort (`names` per row)."""
        order = np.array(cohort_order(names)[: size + 2], np.int64)
        return Cohort(self.vectors[order], self.labels[order], self.source, len(names))


def normalised_pair_scores(emb: Embeddings, cohort: Cohort, k: int, idx: tuple[np.ndarray, ...]
                           ) -> tuple[np.ndarray, np.ndarray]:
    """AS-norm of the pairs `idx` (pair_indices) as the centre computes it: each side's top-K against
    the cohort without the pair's own identities."""
    stats = pair_cohort_stats(emb.vectors, emb.labels, cohort.vectors, cohort.labels, k)
    lab = emb.labels
    out = []
    for i, j in (idx[:2], idx[2:]):
        raw = _dots(emb.vectors, i, j)
        mu_i, sd_i = stats.pair(i, lab[j])
        mu_j, sd_j = stats.pair(j, lab[i])
        out.append(as_norm(raw, mu_i, sd_i, mu_j, sd_j).astype(np.float32))
    return out[0], out[1]


def threshold_at_far(imp: np.ndarray, far: float) -> float:
    """Smallest threshold whose false-accept rate (score >= t) is at most `far`."""
    if imp.size == 0:
        return 1.0
    s = np.sort(imp)[::-1]
    k = int(np.floor(far * s.size))  # number of impostors allowed at or above t
    if k >= s.size:
        return float(s[-1])
    return float(np.nextafter(s[k], np.float32(2.0)))


def eer(gen: np.ndarray, imp: np.ndarray) -> tuple[float, float]:
    """(EER, threshold) by sweeping every observed score."""
    if gen.size == 0 or imp.size == 0:
        return float("nan"), float("nan")
    ts = np.unique(np.concatenate([gen, imp]))
    g = np.sort(gen)
    i = np.sort(imp)
    frr = np.searchsorted(g, ts, side="left") / g.size
    far = 1.0 - np.searchsorted(i, ts, side="left") / i.size
    k = int(np.argmin(np.abs(frr - far)))
    return float((frr[k] + far[k]) / 2), float(ts[k])


def verification_metrics(gen: np.ndarray, imp: np.ndarray, threshold: float, fte: int) -> dict:
    tar = {}
    for f in FAR_POINTS:
        fv = float(f)
        if imp.size and imp.size * fv >= 1:
            t = threshold_at_far(imp, fv)
            tar[f] = round(float((gen >= t).mean()) if gen.size else float("nan"), 5)
        else:
            tar[f] = None  # too few impostor pairs to measure this FAR
    e, _ = eer(gen, imp)
    return {
        "genuine_pairs": int(gen.size), "impostor_pairs": int(imp.size), "threshold": threshold,
        "far": round(float((imp >= threshold).mean()), 6) if imp.size else None,
        "frr": round(float((gen < threshold).mean()), 6) if gen.size else None,
        "tar_at_far": tar, "eer": None if np.isnan(e) else round(e, 5), "failed_to_enrol": int(fte),
    }


def embed_cohort(pipe: FacePipeline, folders: dict[str, list[Path]], evaluated: list[str]) -> Cohort:
    """`--cohort DIR`: the first usable image of each person; a person also evaluated (same folder
    name) takes their evaluated label, so they are left out of their own pairs."""
    known = {name: i for i, name in enumerate(evaluated)}
    vecs, labels, names = [], [], []
    nxt = len(evaluated)
    for name, paths in folders.items():
        for path in paths:
            try:
                probe = pipe.enrol_image(read_image(path))
            except InputError:
                continue
            if probe.ok:
                vecs.append(probe.template)
                names.append(name)
                if name in known:
                    labels.append(known[name])
                else:
                    labels.append(nxt)
                    nxt += 1
                break
    if not vecs:
        raise InputError("no usable face in the cohort directory", code="no_identities", field="cohort")
    c = Cohort(np.asarray(vecs, np.float32), np.asarray(labels, np.int64), "cohort directory", len(vecs))
    rule = CohortRule.from_thresholds(pipe.pack.thresholds)
    return c.sample(rule.min_cohort, names) if rule is not None else c


def verification_report(emb: Embeddings, t: dict, cohort: Cohort | None = None, *, max_impostors: int = 2_000_000,
                        seed: int = 0) -> tuple[dict, np.ndarray, np.ndarray, float]:
    """The product's decisions on all pairs: normalised against the cohort (the evaluated people, one
    template each, without the pair's own identities; or `cohort`) at the normalised threshold when
    the cohort is big enough, else raw cosines at the raw threshold - as the centre decides. The
    top-level far/frr/tar are that decision's; `raw` and `normalised` give both side by side.
    -> (report, genuine scores, impostor scores, threshold) of the decision."""
    idx = pair_indices(emb, max_impostors=max_impostors, seed=seed)
    raw_g, raw_i = _dots(emb.vectors, *idx[:2]), _dots(emb.vectors, *idx[2:])
    raw_thr = float(t["match_cosine"])
    raw = verification_metrics(raw_g, raw_i, raw_thr, emb.failed_to_enrol)
    rule = CohortRule.from_thresholds(t)
    cs = cohort if cohort is not None else Cohort.from_identities(emb, rule.min_cohort if rule else None)
    people = cs.available
    normed = None
    gen, imp, thr = raw_g, raw_i, raw_thr
    if rule is not None and rule.applies(people - 2):  # a pair leaves out up to two people
        gen, imp = normalised_pair_scores(emb, cs, rule.k, idx)
        normed = verification_metrics(gen, imp, rule.threshold, emb.failed_to_enrol)
        thr = rule.threshold
    use_norm = gen is not raw_g
    out = dict(normed if use_norm else raw)
    out["decision"] = "normalised" if use_norm else "raw"
    out["cohort"] = {"people": people, "used": int(np.unique(cs.labels).size) if normed else 0, "source": cs.source,
                     **({"k": rule.k, "min_size": rule.min_cohort} if rule else {})}
    out["raw"] = {k: raw[k] for k in ("threshold", "far", "frr", "tar_at_far", "eer")}
    out["normalised"] = None if normed is None else {k: normed[k] for k in ("threshold", "far", "frr",
                                                                            "tar_at_far", "eer")}
    return out, gen, imp, thr


def liveness_gate(pipe: FacePipeline, img: np.ndarray) -> tuple[np.ndarray, object, str | None]:
    """(image as scored, largest face, refusal): "no_face", "too_close" (liveness would not run on the
    kiosk either: `kiosk.vision.quality.too_close`) or None."""
    from kiosk.vision.quality import too_close

    img = pad_tight_crop(img)
    faces = pipe.detect(img)  # the kiosk's detection size, as in the live path
    if not faces:
        return img, None, "no_face"
    if too_close(img.shape[1], img.shape[0], faces[0], pipe.quality_cfg):
        return img, faces[0], "too_close"
    return img, faces[0], None


def liveness_score_image(pipe: FacePipeline, img: np.ndarray) -> float | None:
    """The live probability, or None where the kiosk would not score it (no face, too close)."""
    img, face, refused = liveness_gate(pipe, img)
    if refused:
        return None
    t0 = time.perf_counter()
    s = pipe.liveness.score(img, face)
    pipe.timer.add("liveness", t0)
    return s


def liveness_scores(pipe: FacePipeline, paths: Iterable[Path], transform=None,
                    refused: Counter | None = None) -> tuple[np.ndarray, int]:
    """Scores of the images with a face, and how many had none. With `refused`, images a quality gate
    keeps from liveness (too close) are counted there by reason instead of as having no face."""
    scores, none = [], 0
    for p in paths:
        t0 = time.perf_counter()
        try:
            img = read_image(p)
        except InputError:  # unreadable: no usable face (live: a rejection; spoof: not accepted)
            none += 1
            continue
        pipe.timer.add("decode", t0)
        if transform is not None:
            img = transform(img)
        img, face, reason = liveness_gate(pipe, img)
        if reason is not None and reason != "no_face" and refused is not None:
            refused[reason] += 1
        elif reason is not None:
            none += 1
        else:
            t0 = time.perf_counter()
            scores.append(pipe.liveness.score(img, face))
            pipe.timer.add("liveness", t0)
    return np.asarray(scores, np.float64), none


def liveness_eval(pipe: FacePipeline, root: Path, *, transform=None, every: int = 1,
                  limit: int | None = None) -> tuple[dict, np.ndarray, np.ndarray]:
    """APCER/BPCER on DIR/live and DIR/spoof (every `every`-th image, at most `limit` of each), each image
    first passed through `transform` (in memory: `kiosk.vision.shifts`). Images refused by the too-close
    gate are reported under `live_quality`/`spoof_quality`, outside both rates."""
    if not (root / "live").is_dir() or not (root / "spoof").is_dir():
        raise InputError(f"{root} must hold live/ and spoof/", code="liveness_layout", field="liveness")
    picked = {k: image_files(root / k)[::max(1, every)][:limit] for k in ("live", "spoof")}
    lq: Counter = Counter()
    sq: Counter = Counter()
    live, ln = liveness_scores(pipe, picked["live"], transform, lq)
    spoof, sn = liveness_scores(pipe, picked["spoof"], transform, sq)
    m = liveness_metrics(live, ln, spoof, sn, float(pipe.pack.thresholds["liveness_live"]))
    m["live_quality"], m["spoof_quality"] = dict(lq), dict(sq)
    return m, live, spoof


def liveness_metrics(live: np.ndarray, live_noface: int, spoof: np.ndarray, spoof_noface: int,
                     threshold: float) -> dict:
    n_live = live.size + live_noface
    n_spoof = spoof.size + spoof_noface
    return {
        "threshold": threshold,
        "apcer": round(float((spoof >= threshold).sum() / n_spoof), 6) if n_spoof else None,
        "bpcer": round(float(((live < threshold).sum() + live_noface) / n_live), 6) if n_live else None,
        "live": int(n_live), "spoof": int(n_spoof),
        "live_no_face": int(live_noface), "spoof_no_face": int(spoof_noface),
    }


def write_report(out: Path, gen: np.ndarray, imp: np.ndarray, match_thr: float,
                 live: np.ndarray, spoof: np.ndarray, live_thr: float) -> list[Path]:
    """DET curve and live/spoof histograms (PNG) marking the shipped thresholds: aggregate plots only."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    files = []
    fig, ax = plt.subplots(1, 2, figsize=(11, 4.5))
    if gen.size and imp.size:
        ts = np.linspace(-1, 1, 801)
        g, i = np.sort(gen), np.sort(imp)
        frr = np.searchsorted(g, ts, side="left") / g.size
        far = 1.0 - np.searchsorted(i, ts, side="left") / i.size
        floor = 0.5 / max(i.size, g.size)
        ax[0].loglog(np.maximum(far, floor), np.maximum(frr, floor), label="DET")
        f0 = max(float((imp >= match_thr).mean()), floor)
        r0 = max(float((gen < match_thr).mean()), floor)
        ax[0].plot([f0], [r0], "ro", label=f"shipped threshold {match_thr:.3f}")
        ax[0].set_xlabel("false accept rate (FAR)")
        ax[0].set_ylabel("false reject rate (FRR)")
        ax[0].set_title(f"DET: {g.size} genuine / {i.size} impostor pairs")
        ax[0].legend()
        ax[0].grid(True, which="both", alpha=0.3)
        ax[1].hist(imp, bins=100, alpha=0.6, density=True, label="impostor")
        ax[1].hist(gen, bins=100, alpha=0.6, density=True, label="genuine")
        ax[1].axvline(match_thr, color="r", label="shipped threshold")
        ax[1].set_xlabel("cosine similarity")
        ax[1].legend()
    fig.tight_layout()
    p = out / "verification_det.png"
    fig.savefig(p, dpi=100)
    plt.close(fig)
    files.append(p)
    fig, ax = plt.subplots(figsize=(6, 4.5))
    bins = np.linspace(0, 1, 51)
    if live.size:
        ax.hist(live, bins=bins, alpha=0.6, label=f"live ({live.size})")
    if spoof.size:
        ax.hist(spoof, bins=bins, alpha=0.6, label=f"spoof ({spoof.size})")
    ax.axvline(live_thr, color="r", label=f"shipped threshold {live_thr:.3f}")
    ax.set_xlabel("ensemble live probability")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    p = out / "liveness_hist.png"
    fig.savefig(p, dpi=100)
    plt.close(fig)
    files.append(p)
    return files


def run_eval(pipe: FacePipeline, identities: Path | None, liveness: Path | None, *, report: Path | None = None,
             max_impostors: int = 2_000_000, seed: int = 0, cohort: Path | None = None, live_transform=None,
             every: int = 1, limit: int | None = None) -> dict:
    pipe.timer.enabled = True
    t = pipe.pack.thresholds
    result: dict = {}
    gen = imp = np.empty(0)
    match_thr = float(t["match_cosine"])
    if identities is not None:
        folders = identity_folders(Path(identities))
        emb = embed_identities(pipe, folders)
        cohort_set = None
        if cohort is not None:
            cohort_set = embed_cohort(pipe, identity_folders(Path(cohort)), list(folders))
        result["verification"], gen, imp, match_thr = verification_report(
            emb, t, cohort_set, max_impostors=max_impostors, seed=seed)
    live = spoof = np.empty(0)
    if liveness is not None:
        result["liveness"], live, spoof = liveness_eval(pipe, Path(liveness), transform=live_transform,
                                                        every=every, limit=limit)
    result["latency_ms"] = {k: {"p50": v["p50"], "p95": v["p95"]} for k, v in pipe.timer.summary().items()}
    if report is not None:
        result["report"] = [str(p) for p in write_report(Path(report), gen, imp, match_thr,
                                                         live, spoof, float(t["liveness_live"]))]
    return result
