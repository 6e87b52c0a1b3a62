"""`kiosk face eval`'s verification report decides as the centre does (kiosk.vision.evaluate)."""
from __future__ import annotations

import numpy as np

from kiosk.vision.embed import l2_normalise
from kiosk.vision.evaluate import Cohort, Embeddings, pair_indices, pair_scores, verification_report
from kiosk.vision.norm import as_norm, cohort_order, topk_stats

T = {"match_cosine": 0.5, "match_margin": 0.1, "match_norm_threshold": 3.0, "match_norm_margin": 1.0,
     "cohort_top_k": 10, "cohort_min_size": 60}


def _set(n_people: int, seed: int = 0) -> Embeddings:
    rng = np.random.default_rng(seed)
    u = np.zeros(32, np.float32)
    u[0] = 1
    centres = l2_normalise(rng.uniform(0.2, 1.5, (n_people, 1)) * u + rng.standard_normal((n_people, 32)) / 6)
    labels = np.repeat(np.arange(n_people), 2)
    vecs = l2_normalise(centres[labels] + rng.standard_normal((labels.size, 32)).astype(np.float32) / 8)
    return Embeddings(labels, vecs.astype(np.float32), [f"person{i}" for i in range(n_people)], 1, labels.size + 1)


def test_pair_indices_give_the_same_scores_as_before():
    e = _set(30)
    g, i = pair_scores(e)
    gi, gj, ii, ij = pair_indices(e)
    assert g.size == 30 and i.size == 60 * 59 // 2 - 30
    assert np.allclose(np.sort(g), np.sort(np.einsum("ij,ij->i", e.vectors[gi], e.vectors[gj])))
    assert np.all(e.labels[ii] != e.labels[ij]) and np.all(e.labels[gi] == e.labels[gj])


def test_a_set_big_enough_is_judged_on_normalised_scores_with_raw_alongside():
    e = _set(80)
    rep, gen, imp, thr = verification_report(e, T)
    assert rep["decision"] == "normalised" and thr == 3.0 and rep["threshold"] == 3.0
    assert rep["cohort"] == {"people": 80, "used": 62, "source": "evaluated identities", "k": 10, "min_size": 60}
    assert rep["normalised"]["far"] == rep["far"] and rep["raw"]["threshold"] == 0.5
    assert set(rep["raw"]["tar_at_far"]) == set(rep["normalised"]["tar_at_far"]) == {"0.01", "0.001", "0.0001"}
    # one impostor pair recomputed by hand: cohort = the fixed 62-person sample without the pair's two people
    gi, gj, ii, ij = pair_indices(e)
    a, b = ii[5], ij[5]
    _, first = np.unique(e.labels, return_index=True)
    sample = np.array(cohort_order(e.people)[:62])
    keep = sample[(sample != e.labels[a]) & (sample != e.labels[b])]
    coh = e.vectors[first[keep]]
    ma, sa = topk_stats((coh @ e.vectors[a])[None], 10)
    mb, sb = topk_stats((coh @ e.vectors[b])[None], 10)
    want = as_norm(float(e.vectors[a] @ e.vectors[b]), ma[0], sa[0], mb[0], sb[0])
    assert abs(float(imp[5]) - float(want)) < 1e-4


def test_a_small_set_is_judged_raw_and_an_external_cohort_normalises_it():
    small = _set(20)
    rep, *_ = verification_report(small, T)
    assert rep["decision"] == "raw" and rep["normalised"] is None and rep["threshold"] == 0.5
    big = _set(80, seed=1)
    _, first = np.unique(big.labels, return_index=True)
    cohort = Cohort(big.vectors[first], np.arange(80) + 1000, "cohort directory", 80).sample(60, big.people)
    rep2, *_ = verification_report(small, T, cohort)
    assert rep2["decision"] == "normalised" and rep2["cohort"]["source"] == "cohort directory"
    assert rep2["raw"] == rep["raw"]
