"""AS-norm (kiosk.vision.norm): a hand-worked example, exclusion of the claimed identity, invariances,
and the evaluation's pairwise statistics against a brute-force recomputation."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kiosk.vision.embed import l2_normalise
from kiosk.vision.match import Candidate, MatchRule
from kiosk.vision.norm import SIGMA_FLOOR, CohortRule, as_norm, pair_cohort_stats, side_stats, topk_stats


def test_hand_worked_example():
    # probe's cohort scores; the best 3 are 0.5, 0.4, 0.3: mean 0.4, population sd sqrt(0.02/3)
    mu, sd = topk_stats(np.array([[0.1, 0.5, 0.3, 0.4, 0.2]]), 3)
    assert mu[0] == pytest.approx(0.4)
    assert sd[0] == pytest.approx(np.sqrt(0.02 / 3))
    # enrolled side: best 3 of [0.2, 0.2, 0.2, 0.0] -> mean 0.2, sd 0 -> floored
    mu_e, sd_e = topk_stats(np.array([[0.2, 0.0, 0.2, 0.2]]), 3)
    assert mu_e[0] == pytest.approx(0.2) and sd_e[0] == SIGMA_FLOOR
    s = 0.6
    want = 0.5 * ((0.6 - 0.4) / np.sqrt(0.02 / 3) + (0.6 - 0.2) / 0.01)
    assert float(as_norm(s, mu[0], sd[0], mu_e[0], sd_e[0])) == pytest.approx(want)


def test_claimed_identity_in_the_cohort_is_left_out():
    rng = np.random.default_rng(3)
    scores = rng.uniform(-0.2, 0.4, 200)
    ids = np.array([f"P{i:04d}".encode() for i in range(200)], "S24")
    base = side_stats(scores, ids, b"P0007", 50)
    # the claimed person P0007 scores 0.99 (it is their own face): leaving them in would move the statistics
    with_self = scores.copy()
    with_self[7] = 0.99
    assert side_stats(with_self, ids, b"P0007", 50) == side_stats(np.delete(with_self, 7), np.delete(ids, 7),
                                                                  b"P0007", 50)
    assert side_stats(with_self, ids, b"P0007", 50) != side_stats(with_self, ids, b"nobody", 50)
    assert side_stats(scores, ids, b"P0007", 50) == base
    # a person with two rows counts once (their best)
    dup_s = np.append(with_self, 0.95)
    dup_i = np.append(ids, b"P0003")
    assert side_stats(dup_s, dup_i, b"P0007", 50) == side_stats(np.where(ids == b"P0003", max(with_self[3], 0.95),
                                                                         with_self), ids, b"P0007", 50)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32 - 1), st.floats(0.2, 5.0), st.floats(-0.5, 0.5))
def test_normalised_score_is_invariant_to_an_affine_change_of_scale(seed, a, b):
    """Scores on another scale (a*s + b for every score alike) give the same decision value."""
    rng = np.random.default_rng(seed)
    cp, ce = rng.uniform(-0.3, 0.5, (1, 80)), rng.uniform(-0.3, 0.5, (1, 80))
    raw = rng.uniform(-0.2, 0.9)
    mp, sp = topk_stats(cp, 20)
    me, se = topk_stats(ce, 20)
    mp2, sp2 = topk_stats(a * cp + b, 20)
    me2, se2 = topk_stats(a * ce + b, 20)
    if min(sp.min(), se.min(), sp2.min(), se2.min()) <= SIGMA_FLOOR:
        return  # the floor is not scale-free by design
    x = float(as_norm(raw, mp, sp, me, se)[0])
    y = float(as_norm(a * raw + b, mp2, sp2, me2, se2)[0])
    assert y == pytest.approx(x, rel=1e-6, abs=1e-6)
    # symmetric: swapping probe and enrolled changes nothing
    assert float(as_norm(raw, me, se, mp, sp)[0]) == pytest.approx(x)


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(2, 9))
def test_pair_statistics_match_a_brute_force_recomputation(seed, k):
    rng = np.random.default_rng(seed)
    n_people = 14
    labels = rng.integers(0, n_people, 40)
    vecs = l2_normalise(rng.standard_normal((40, 16)))
    cohort_labels = np.arange(n_people)
    cohort = l2_normalise(rng.standard_normal((n_people, 16)))
    st_ = pair_cohort_stats(vecs, labels, cohort, cohort_labels, k, block=7)
    i = np.repeat(np.arange(40), 40)
    j = np.tile(np.arange(40), 40)
    mu, sd = st_.pair(i, labels[j])
    for x in range(0, i.size, 37):
        keep = (cohort_labels != labels[i[x]]) & (cohort_labels != labels[j[x]])
        m, d = topk_stats((cohort[keep] @ vecs[i[x]])[None, :], k)
        assert mu[x] == pytest.approx(m[0], abs=1e-5) and sd[x] == pytest.approx(d[0], abs=1e-5)


def test_cohort_rule_from_the_manifest_and_its_minimum_size():
    assert CohortRule.from_thresholds({"match_cosine": 0.5}) is None
    r = CohortRule.from_thresholds({"match_norm_threshold": 3.1, "match_norm_margin": 0.5, "cohort_top_k": 50,
                                    "cohort_min_size": 200})
    assert (r.k, r.min_cohort, r.threshold, r.margin) == (50, 200, 3.1, 0.5)
    assert r.applies(200) and not r.applies(199)
    with pytest.raises(ValueError):
        CohortRule(k=50, min_cohort=10, threshold=1, margin=1)


def test_margin_rule_on_normalised_scores_reranks_the_candidates():
    rule = MatchRule(0.5, 0.1, CohortRule(k=2, min_cohort=2, threshold=3.0, margin=1.0))
    # raw order A, B; normalised order B, A with a clear margin: B
    assert rule.identify_normalised([Candidate("A", 2.0), Candidate("B", 4.5)]) == ("matched", "B")
    assert rule.identify_normalised([Candidate("A", 4.0), Candidate("B", 4.5)]) == ("ambiguous", None)
    assert rule.identify_normalised([Candidate("A", 2.9)]) == ("not_matched", None)
    with pytest.raises(ValueError):
        MatchRule(0.5, 0.1).identify_normalised([])
