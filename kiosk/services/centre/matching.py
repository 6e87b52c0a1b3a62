"""Face decisions at the centre: 1:1 (activation, verification) and 1:N, cohort-normalised.

Each region's activated people form two in-memory galleries per worker, grown
from `activation_seq` (never rebuilt): the 1:N search gallery (everyone
activated) and the COHORT (activated people whose enrolled template comes from
a real face: `centre_persons.cohort_member`; the seed's synthetic people are
random unit vectors, which say nothing about how a real face scores, so they
are left out). Decisions (kiosk.vision.norm, AS-norm):

- 1:1: raw cosine s of probe and the claimed person's enrolled template;
  probe statistics = mean/sd of its top-K cosines against the cohort without
  the claimed person, computed now (one int8 Gallery search); enrolled
  statistics = the same for the enrolled template, cached per person;
  matched iff 0.5*((s-mu_p)/sd_p + (s-mu_e)/sd_e) >= the normalised threshold.
- 1:N: the 1:N search's best distinct candidates (raw top 8) are each
  normalised (the probe's statistics leave out that candidate; one probe
  search serves all candidates), re-ranked, and the margin rule applies to
  the normalised scores (threshold and margin in normalised units); a match
  whose raw cosine is within the raw margin of another person's is ambiguous
  too (near twins), so the phone digits are asked for either way.
- A region whose cohort, less the claimed person, has fewer than
  `cohort_min_size` people decides on raw cosines at the raw threshold and
  margin (`match_cosine`, `match_margin`): a new region, or the demo (its
  synthetic people are not cohort members; its few named people too few).

The cohort is the region's first `cohort_min_size` (+1) cohort people by
activation order, then fixed: normalised thresholds hold only at the cohort
size they were calibrated at (kiosk.vision.norm.CohortRule). So a person's
statistics, computed when they activate or are first matched in this worker
(one search), stay valid; they are recomputed only while a cohort is still
being filled (then decisions are raw anyway). They live in worker memory,
like the galleries: cheaper to recompute than to share. Scores and statistics
never leave this module: the handlers get outcomes.
"""
from __future__ import annotations

import threading
from collections.abc import Collection, Callable
from dataclasses import dataclass, field

import numpy as np

from kiosk.vision.match import DIM, Candidate, Gallery, MatchRule, cosine
from kiosk.vision.norm import as_norm, side_stats

_EXTRA = 8  # cohort rows fetched beyond K: room to leave out the claimed person (and any duplicate row)


@dataclass
class Region:
    """One region's galleries and cached per-person cohort statistics (one worker)."""

    search: Gallery
    cohort: Gallery
    seen: int = 0
    stats: dict[str, tuple[float, float, int]] = field(default_factory=dict, repr=False)  # psn -> (mu, sd, rows)


class RegionGalleries:
    """Per-worker galleries of activated people, grown from `activation_seq`."""

    def __init__(self, open_template: Callable[[str, str], np.ndarray], cohort_size: int | None = None) -> None:
        """`cohort_size`: the rule's cohort size; the cohort keeps its first cohort_size + 1 people (one
        more than needed, so that leaving out a claimed person who is in it still leaves enough)."""
        self._open = open_template
        self._cap = cohort_size + 1 if cohort_size else 0
        self._g: dict[str, Region] = {}
        self._lock = threading.Lock()

    def get(self, tx, admdvs: str) -> Region:  # noqa: ANN001 - kiosk.storage Transaction
        with self._lock:
            region = self._g.get(admdvs)
            seen = region.seen if region else 0
            rows = tx.fetch_all(
                "SELECT psn_no, template_seal, activation_seq, cohort_member FROM centre_persons "
                "WHERE admdvs = ? AND activated = 1 AND activation_seq > ? ORDER BY activation_seq",
                (admdvs, seen))
            if region is None:
                cap = max(1024, len(rows))
                region = Region(Gallery(DIM, capacity=cap), Gallery(DIM, capacity=cap))
                self._g[admdvs] = region
            if rows:
                ids = [r[0] for r in rows]
                vecs = np.stack([self._open(r[0], r[1]) for r in rows])
                region.search.add_many(ids, vecs)
                room = self._cap - len(region.cohort)
                member = np.flatnonzero([bool(r[3]) for r in rows])[:max(0, room)]
                if member.size:
                    region.cohort.add_many([ids[i] for i in member], vecs[member])
                region.seen = int(rows[-1][2])
            return region


def _cohort_scores(cohort: Gallery, vec: np.ndarray, k: int, exclude: Collection[str]) -> tuple[np.ndarray,
                                                                                                  np.ndarray]:
    """Enough of the best cohort rows that K distinct people remain after leaving out `exclude`."""
    n = len(cohort)
    want = k + _EXTRA + len(exclude)
    while True:
        ids, scores = cohort.top_scores(vec, min(want, n))
        if want >= n or len(np.unique(ids[~np.isin(ids, np.array([e.encode() for e in exclude], "S24"))])) >= k:
            return ids, scores
        want *= 2


class Matcher:
    """The centre's face decisions for one MatchRule (the pack's thresholds)."""

    def __init__(self, rule: MatchRule) -> None:
        self.rule = rule

    def _cohort_size(self, region: Region | None, exclude: str | None) -> int:
        if region is None:
            return 0
        n = len(region.cohort)
        return n - 1 if exclude is not None and n else n  # the claimed person may be in it (an upper bound)

    def normalises(self, region: Region | None, exclude: str | None = None) -> bool:
        c = self.rule.cohort
        return c is not None and c.applies(self._cohort_size(region, exclude))

    def person_stats(self, region: Region, psn_no: str, template: np.ndarray) -> tuple[float, float]:
        """The enrolled template's cohort statistics, cached for as long as the cohort is unchanged."""
        rows = len(region.cohort)
        hit = region.stats.get(psn_no)
        if hit is not None and hit[2] == rows:
            return hit[0], hit[1]
        k = self.rule.cohort.k
        ids, scores = _cohort_scores(region.cohort, template, k, [psn_no])
        mu, sd = side_stats(scores, ids, psn_no.encode(), k)
        region.stats[psn_no] = (mu, sd, rows)
        return mu, sd

    def verify(self, region: Region | None, probe: np.ndarray, psn_no: str, template: np.ndarray) -> bool:
        """1:1: the probe against the claimed person's enrolled template."""
        raw = cosine(probe, template)
        if not self.normalises(region, psn_no):
            return raw >= self.rule.threshold
        k = self.rule.cohort.k
        ids, scores = _cohort_scores(region.cohort, probe, k, [psn_no])
        mu_p, sd_p = side_stats(scores, ids, psn_no.encode(), k)
        mu_e, sd_e = self.person_stats(region, psn_no, template)
        return float(as_norm(raw, mu_p, sd_p, mu_e, sd_e)) >= self.rule.cohort.threshold

    def identify(self, region: Region, probe: np.ndarray, *, restrict_to: Collection[str] | None = None,
                 template_of: Callable[[str], np.ndarray]) -> tuple[str, str | None]:
        """1:N over the region's activated people: matched / not_matched / ambiguous.
        `template_of(psn)`: the enrolled template, needed only when a candidate's statistics are computed."""
        candidates = region.search.search(probe, restrict_to=restrict_to)
        if not candidates or not self.normalises(region, candidates[0].person_id):
            return self.rule.identify(candidates)
        k = self.rule.cohort.k
        ids, scores = _cohort_scores(region.cohort, probe, k, [c.person_id for c in candidates])
        normed = []
        for c in candidates:
            mu_p, sd_p = side_stats(scores, ids, c.person_id.encode(), k)
            mu_e, sd_e = self.person_stats(region, c.person_id, template_of(c.person_id))
            normed.append(Candidate(c.person_id, float(as_norm(c.score, mu_p, sd_p, mu_e, sd_e))))
        outcome, who = self.rule.identify_normalised(normed)
        if outcome == "matched":
            # a near twin is near in raw cosines whatever the statistics say (twins sit in each other's
            # cohort, and one's statistics may predate the other's enrolment): ask for the phone digits
            raw = {c.person_id: c.score for c in candidates}
            rest = [s for p, s in raw.items() if p != who]
            if rest and raw[who] - max(rest) < self.rule.margin:
                return "ambiguous", None
        return outcome, who
