"""Adaptive symmetric score normalisation (AS-norm) against a cohort of other people.

A raw cosine means different things for different faces: some faces (and the
faces of a population the recognizer saw little of in training) score high
against everyone. AS-norm standardises each side of a comparison by how it
scores against a cohort of OTHER people:

    s_norm = 0.5 * ((s - mu_p) / sd_p + (s - mu_e) / sd_e)

where (mu_p, sd_p) are the mean and standard deviation of the probe's K
highest cosines against the cohort, and (mu_e, sd_e) the same for the enrolled
template. The claimed identity (1:1) or the candidate (1:N) is never in its own
cohort: leaving it in would put its genuine score into the statistics. The
cohort must come from the population being served (the centre uses the
region's own gallery); no research data set ships as a cohort.

Pure numpy; the callers supply cohort scores (the centre from its int8
Gallery search, `kiosk face eval` and calibration from score matrices).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# a cohort of near-identical templates (duplicates, synthetic data) has a tiny spread; dividing by it would
# turn any raw difference into a huge normalised score, so the spread is floored (typical top-50 sd: 0.03-0.06)
SIGMA_FLOOR = 0.01


@dataclass(frozen=True)
class CohortRule:
    """Normalised decisions: threshold and 1:N margin in normalised units, the top-K size, and the
    cohort's size. The cohort is a FIXED number of people (`min_cohort`): a top-K mean rises with the
    cohort's size (K=50 of 300 people is the top 17%, of 800 the top 6%), and with it the threshold a
    false-accept rate needs (measured 3.8 at 300, 3.1 at 800 people, the same on LFW and East Asian
    faces), so a threshold is only valid at the size it was calibrated at. A region uses the first
    `min_cohort` cohort people it has; one with fewer decides on raw cosines (MatchRule)."""

    k: int
    min_cohort: int
    threshold: float
    margin: float

    def __post_init__(self) -> None:
        if self.k < 2 or self.min_cohort < self.k:
            raise ValueError("cohort top-K must be >= 2 and the cohort at least K people")

    def applies(self, cohort_size: int) -> bool:
        """`cohort_size`: distinct people in the cohort once the claimed person is left out."""
        return cohort_size >= self.min_cohort

    @classmethod
    def from_thresholds(cls, t: dict) -> CohortRule | None:
        """From the manifest's thresholds; None when the pack carries no normalised thresholds."""
        if "match_norm_threshold" not in t:
            return None
        return cls(k=int(t["cohort_top_k"]), min_cohort=int(t["cohort_min_size"]),
                   threshold=float(t["match_norm_threshold"]), margin=float(t["match_norm_margin"]))


def cohort_order(names: list[str]) -> list[int]:
    """A fixed, content-free order of people (sha256 of the name) for choosing a cohort sample
    from a set of identities: evaluation and calibration take the first `min_cohort` (+ 2) of it."""
    import hashlib

    return sorted(range(len(names)), key=lambda i: hashlib.sha256(names[i].encode()).digest())


def topk_stats(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (floored, population) standard deviation of the k highest values of each row.

    `scores`: (n, m) cohort scores with the excluded identities already removed (or set to -inf);
    rows with fewer than k finite values use the finite ones they have."""
    s = np.atleast_2d(np.asarray(scores, np.float64))
    if s.shape[1] == 0:
        raise ValueError("empty cohort")
    kk = min(k, s.shape[1])
    top = -np.partition(-s, kk - 1, axis=1)[:, :kk] if kk < s.shape[1] else s
    finite = np.isfinite(top)
    n = finite.sum(axis=1)
    if np.any(n == 0):
        raise ValueError("a row has no cohort score")
    t0 = np.where(finite, top, 0.0)
    mu = t0.sum(axis=1) / n
    var = (np.where(finite, (top - mu[:, None]) ** 2, 0.0)).sum(axis=1) / n
    return mu, np.maximum(np.sqrt(var), SIGMA_FLOOR)


def as_norm(raw: np.ndarray | float, mu_p: np.ndarray | float, sd_p: np.ndarray | float,
            mu_e: np.ndarray | float, sd_e: np.ndarray | float) -> np.ndarray:
    """Symmetric normalisation of raw cosines, element-wise (numpy broadcasting)."""
    raw = np.asarray(raw, np.float64)
    return 0.5 * ((raw - mu_p) / np.maximum(sd_p, SIGMA_FLOOR) + (raw - mu_e) / np.maximum(sd_e, SIGMA_FLOOR))


def side_stats(cohort_scores: np.ndarray, cohort_ids: np.ndarray, exclude: object, k: int) -> tuple[float, float]:
    """One side's (mu, sd) from its scores against the cohort, leaving out every row of `exclude`
    (the claimed person / the candidate) and counting each other person once (their best row)."""
    s = np.asarray(cohort_scores, np.float64).reshape(-1)
    ids = np.asarray(cohort_ids).reshape(-1)
    keep = ids != exclude
    s, ids = s[keep], ids[keep]
    if s.size == 0:
        raise ValueError("empty cohort")
    order = np.argsort(-s, kind="stable")
    _, first = np.unique(ids[order], return_index=True)  # best row of each person
    best = s[order][np.sort(first)]
    mu, sd = topk_stats(best[None, :], k)
    return float(mu[0]), float(sd[0])


@dataclass
class PairCohortStats:
    """Per-image top-K statistics against a labelled cohort, excluding any two identities per pair.

    For image i (identity a) and a pair partner of identity b, the statistics are over i's K best
    cohort scores among people other than a and b: what the centre computes when the claimed person
    (and, for the probe, the person it claims) is left out. Precomputed as i's best K + (largest
    identity size) cohort scores without a, so removing b afterwards is a lookup, not a rescore.
    """

    k: int
    mu: np.ndarray  # (n,) excluding the image's own identity only
    sd: np.ndarray
    _keys: np.ndarray  # sorted i * L + b for the (i, b) whose top-K contained b
    _mu_x: np.ndarray
    _sd_x: np.ndarray
    _n_labels: int
    cohort_people: int

    def pair(self, i: np.ndarray, other_label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(mu, sd) of images i, each leaving out the matching `other_label` too."""
        i = np.asarray(i, np.int64)
        mu, sd = self.mu[i].copy(), self.sd[i].copy()
        if self._keys.size:
            key = i * self._n_labels + np.asarray(other_label, np.int64)
            pos = np.clip(np.searchsorted(self._keys, key), 0, self._keys.size - 1)
            hit = self._keys[pos] == key
            mu[hit] = self._mu_x[pos[hit]]
            sd[hit] = self._sd_x[pos[hit]]
        return mu, sd


def pair_cohort_stats(vectors: np.ndarray, labels: np.ndarray, cohort: np.ndarray, cohort_labels: np.ndarray,
                      k: int, *, block: int = 2048) -> PairCohortStats:
    """Statistics of each row of `vectors` against `cohort` (one template per cohort person, as in the
    centre's gallery; labels share one space, so an evaluated person who is also in the cohort is left
    out of their own statistics and out of their partners')."""
    v = np.asarray(vectors, np.float32)
    c = np.asarray(cohort, np.float32)
    lab = np.asarray(labels, np.int64)
    clab = np.asarray(cohort_labels, np.int64)
    if np.unique(clab).size != clab.size:
        raise ValueError("one cohort template per person")
    n_labels = int(max(lab.max(initial=-1), clab.max(initial=-1))) + 1
    width = min(c.shape[0], k + 1)  # own identity removed, then at most one more person
    drop = np.array([[j for j in range(width) if j != x] for x in range(min(k, width))], np.int64)
    mu = np.empty(len(v))
    sd = np.empty(len(v))
    keys, mux, sdx = [], [], []
    for s0 in range(0, len(v), block):
        sc = v[s0:s0 + block] @ c.T
        sc[lab[s0:s0 + block, None] == clab[None, :]] = -np.inf
        idx = np.argpartition(-sc, width - 1, axis=1)[:, :width] if width < c.shape[0] else \
            np.broadcast_to(np.arange(c.shape[0]), sc.shape)
        top = np.take_along_axis(sc, idx, axis=1)
        order = np.argsort(-top, axis=1, kind="stable")
        top = np.take_along_axis(top, order, axis=1)
        tl = clab[np.take_along_axis(idx, order, axis=1)]
        m, d = topk_stats(top[:, :k], k)
        mu[s0:s0 + block], sd[s0:s0 + block] = m, d
        # leaving out the person at position j < k of a row: its best k among the other width-1
        rows, cols = np.nonzero(np.isfinite(top[:, :drop.shape[0]]))
        if rows.size and width > 1:
            mm, dd = topk_stats(top[rows[:, None], drop[cols]], k)
            keys.append((s0 + rows) * n_labels + tl[rows, cols])
            mux.append(mm)
            sdx.append(dd)
    keys_a = np.concatenate(keys) if keys else np.empty(0, np.int64)
    o = np.argsort(keys_a)
    return PairCohortStats(k, mu, sd, keys_a[o], np.concatenate(mux)[o] if keys else np.empty(0),
                           np.concatenate(sdx)[o] if keys else np.empty(0), n_labels, int(clab.size))
