"""The centre's cohort-normalised face decisions (kiosk.services.centre.matching).

Geometry used below: every face shares a common direction `u` to some degree, as real embeddings do;
a "hub" face has a lot of it and so scores high against everyone. Raw cosines let a hub be matched by
strangers; AS-norm against the region's cohort does not, and the claimed person never sits in their
own cohort."""
from __future__ import annotations

import numpy as np
import pytest

from kiosk.services.centre.matching import Matcher, Region, RegionGalleries
from kiosk.vision.embed import l2_normalise
from kiosk.vision.match import DIM, Gallery, MatchRule
from kiosk.vision.norm import CohortRule, as_norm, topk_stats

RULE = MatchRule(0.5, 0.1, CohortRule(k=20, min_cohort=100, threshold=3.0, margin=1.0))


def _faces(rng: np.random.Generator, n: int, common: float) -> np.ndarray:
    u = np.zeros(DIM, np.float32)
    u[0] = 1.0
    return l2_normalise(common * u + rng.standard_normal((n, DIM)).astype(np.float32) / np.sqrt(DIM))


def _region(templates: np.ndarray, ids: list[str], cohort: bool = True) -> Region:
    r = Region(Gallery(), Gallery())
    r.search.add_many(ids, templates)
    if cohort:
        r.cohort.add_many(ids, templates)
    return r


def _near(rng: np.random.Generator, t: np.ndarray, noise: float) -> np.ndarray:
    return l2_normalise(t + noise * rng.standard_normal(DIM).astype(np.float32) / np.sqrt(DIM))


def test_small_region_falls_back_to_the_raw_threshold():
    rng = np.random.default_rng(1)
    t = _faces(rng, 50, 0.6)
    region = _region(t, [f"P{i:03d}" for i in range(50)])
    m = Matcher(RULE)
    assert not m.normalises(region, "P001")
    probe = _near(rng, t[1], 0.7)
    raw = float(probe @ t[1])
    assert m.verify(region, probe, "P001", t[1]) == (raw >= RULE.threshold)
    assert m.verify(None, probe, "P001", t[1]) == (raw >= RULE.threshold)
    assert region.stats == {}  # no statistics computed for a raw decision


def test_hub_face_raw_accepts_a_stranger_normalised_refuses_and_genuine_still_matches():
    rng = np.random.default_rng(2)
    ids = [f"P{i:04d}" for i in range(400)]
    # a population with more and less of the common direction; P0007 has a lot of it (a hub)
    t = np.concatenate([_faces(rng, 1, c) for c in rng.uniform(0.2, 1.5, 400)])
    hub = _faces(rng, 1, 1.5)[0]
    t[7] = hub
    region = _region(t, ids)
    m = Matcher(RULE)
    assert m.normalises(region, "P0007")
    stranger = _faces(rng, 1, 1.5)[0]  # not enrolled, also hub-like
    assert float(stranger @ hub) >= RULE.threshold  # raw cosine would let them in
    assert not m.verify(region, stranger, "P0007", hub)
    assert m.verify(region, _near(rng, hub, 0.7), "P0007", hub)  # the hub's own face still matches


def test_claimed_person_is_left_out_of_both_cohort_statistics():
    rng = np.random.default_rng(3)
    ids = [f"P{i:04d}" for i in range(300)]
    t = _faces(rng, 300, 0.8)
    region = _region(t, ids)
    m = Matcher(RULE)
    probe = _near(rng, t[5], 0.6)
    raw = float(probe @ t[5])
    others = np.delete(t, 5, axis=0)
    mp, sp = topk_stats((others @ probe)[None], RULE.cohort.k)
    me, se = topk_stats((others @ t[5])[None], RULE.cohort.k)
    want = float(as_norm(raw, mp[0], sp[0], me[0], se[0]))
    mu_e, sd_e = m.person_stats(region, "P0005", t[5])
    assert mu_e == pytest.approx(me[0], abs=0.01) and sd_e == pytest.approx(se[0], abs=0.01)
    # the decision flips around the hand-computed normalised score (int8 gallery rounding: within 0.5)
    for thr, expect in ((want - 0.5, True), (want + 0.5, False)):
        r = MatchRule(0.5, 0.1, CohortRule(k=20, min_cohort=100, threshold=thr, margin=1.0))
        assert Matcher(r).verify(region, probe, "P0005", t[5]) is expect


def test_person_statistics_are_cached_while_the_cohort_is_unchanged():
    rng = np.random.default_rng(4)
    t = _faces(rng, 500, 0.8)
    ids = [f"P{i:04d}" for i in range(500)]
    region = _region(t[:400], ids[:400])
    m = Matcher(RULE)
    first = m.person_stats(region, "P0001", t[1])
    assert region.stats["P0001"][2] == 400
    region.stats["P0001"] = (9.0, 1.0, 400)  # a cached value is used as it is
    assert m.person_stats(region, "P0001", t[1]) == (9.0, 1.0)
    region.cohort.add_many(ids[400:404], t[400:404])  # the cohort changed: recomputed
    again = m.person_stats(region, "P0001", t[1])
    assert region.stats["P0001"][2] == 404 and again[0] == pytest.approx(first[0], abs=0.02)


def test_the_region_cohort_is_its_first_people_and_then_fixed():
    rows = [(f"P{i:03d}", f"s{i}", i + 1, 1) for i in range(30)]

    class Tx:
        def fetch_all(self, sql, args):
            return [r for r in rows if r[2] > args[1]]

    rng = np.random.default_rng(6)
    vecs = {f"s{i}": v for i, v in enumerate(_faces(rng, 30, 0.5))}
    g = RegionGalleries(lambda psn, sealed: vecs[sealed], cohort_size=10)
    r = g.get(Tx(), "370202")
    assert len(r.search) == 30 and len(r.cohort) == 11  # one spare: the claimed person may be in it
    rows.append(("P999", "s0", 99, 1))
    r = g.get(Tx(), "370202")
    assert len(r.search) == 31 and len(r.cohort) == 11


def test_one_to_n_applies_the_margin_to_normalised_scores():
    rng = np.random.default_rng(5)
    ids = [f"P{i:04d}" for i in range(300)]
    t = _faces(rng, 300, 0.8)
    region = _region(t, ids)
    m = Matcher(RULE)
    templates = dict(zip(ids, t))
    probe = _near(rng, t[42], 0.5)
    assert m.identify(region, probe, template_of=templates.__getitem__) == ("matched", "P0042")
    # a near twin enrolled too: ambiguous, and the phone digits narrow it to one
    twin = _near(rng, t[42], 0.05)
    region.search.add("TWIN", twin)
    region.cohort.add("TWIN", twin)
    templates["TWIN"] = twin
    assert m.identify(region, probe, template_of=templates.__getitem__)[0] == "ambiguous"
    assert m.identify(region, probe, restrict_to=["P0042", "P0001"],
                      template_of=templates.__getitem__) == ("matched", "P0042")
    stranger = _faces(rng, 1, 0.8)[0]
    assert m.identify(region, stranger, template_of=templates.__getitem__) == ("not_matched", None)


def test_synthetic_people_stay_out_of_the_cohort():
    class Tx:
        def fetch_all(self, sql, args):
            assert "cohort_member" in sql
            return [("P1", "s1", 1, 0), ("D1", "s2", 2, 1)]

    vecs = {"s1": np.eye(DIM, dtype=np.float32)[1], "s2": np.eye(DIM, dtype=np.float32)[2]}
    g = RegionGalleries(lambda psn, sealed: vecs[sealed], cohort_size=10)
    r = g.get(Tx(), "370202")
    assert len(r.search) == 2 and len(r.cohort) == 1 and r.seen == 2


def test_centre_normalises_once_the_region_has_a_real_face_cohort(tmp_path, monkeypatch):
    """Through ec.activate / ec.auth: synthetic people never join the cohort; once enough real-face
    people are activated the decisions are normalised (statistics appear), a stranger who shares the
    common look is refused, and the claimed person is still recognised 1:1 and 1:N."""
    from datetime import date

    from kiosk.services import seed
    from kiosk.services.centre import app as centre_app
    from kiosk.services.protocol import InfCode

    from .conftest import make_centre

    rule = MatchRule(0.5, 0.1, CohortRule(k=5, min_cohort=20, threshold=3.0, margin=1.0))
    monkeypatch.setattr(centre_app, "match_rule", lambda: rule)
    c = make_centre(f"sqlite:///{tmp_path}/centre.db", tmp_path, people=6)  # 6 synthetic people
    try:
        for p in c.people:  # activated synthetic people: in the 1:N gallery, not in the cohort
            c.activate(p)
        rng = np.random.default_rng(11)
        faces = np.concatenate([_faces(rng, 1, x) for x in rng.uniform(0.2, 1.5, 30)])
        born = date(1970, 1, 1)
        real = [seed.SeedPerson(f"R370202{i:06d}", "张三", seed.certno_for("370202", born, 500 + i, False),
                                "1", "1970-01-01", "310", "370202", "2015-01-01", f"{i:04d}", "", 100)
                for i in range(30)]
        c.db.run(lambda tx: [seed.insert_person(tx, c.service.keys, p, f) for p, f in zip(real, faces)])
        cl = c.client
        for i, (p, f) in enumerate(zip(real, faces)):
            a = cl.activate(cl.seal_face(_near(rng, f, 0.3), f"a{i}", "activate"), p.certno, f"a{i}")
            assert a.ok, (i, a)
        region = c.db.read(lambda tx: c.service.galleries.get(tx, "370202"))
        assert len(region.search) == 36 and len(region.cohort) == 21  # first 20 + 1 real people only
        assert not any(i.startswith(b"P") for i in region.cohort._ids[: len(region.cohort)])
        # 1:N face-only for a real person: normalised (their statistics are computed), matched
        who = real[25]
        ok = cl.authenticate(cl.seal_face(_near(rng, faces[25], 0.3), "n1", "auth"), "n1")
        assert ok.ok and ok.output["psn_no"] == who.psn_no
        assert who.psn_no in region.stats
        # a stranger with much of the common look is refused, 1:1 and 1:N, never told a score
        hub = int(np.argmax(faces[:, 0]))
        stranger = _faces(rng, 1, 1.5)[0]
        assert float(stranger @ faces[hub]) >= rule.threshold  # raw cosine alone would accept
        bad = cl.authenticate(cl.seal_face(stranger, "n2", "auth"), "n2", psn_no=real[hub].psn_no)
        assert bad.infcode == InfCode.FACE_NOT_MATCHED and "score" not in str(bad).lower()
        # a synthetic person (demo, load runs) is still recognised, now against the real-face cohort
        p0 = c.people[0]
        s = cl.authenticate(cl.seal_face(c.capture(p0.psn_no), "n3", "auth"), "n3", psn_no=p0.psn_no)
        assert s.ok
    finally:
        c.http.close()
        c.db.close()


def test_region_repr_shows_no_statistics():
    rng = np.random.default_rng(8)
    t = _faces(rng, 150, 0.8)
    region = _region(t, [f"P{i:03d}" for i in range(150)])
    mu, sd = Matcher(RULE).person_stats(region, "P001", t[1])
    assert repr(mu)[:6] not in repr(region) and "stats" not in repr(region)
