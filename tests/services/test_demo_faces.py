"""Named demo people enrolled from the shared face images; activation with another photo of them."""
from __future__ import annotations

from pathlib import Path

import cv2
import pytest

from kiosk.services.protocol import InfCode
from kiosk.services.seed import seed_demo

from .conftest import Centre, make_centre


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory, shared_dir: Path):
    from kiosk.vision.pipeline import FacePipeline

    tmp = tmp_path_factory.mktemp("demo")
    c = make_centre(f"sqlite:///{tmp}/centre.db", tmp, people=4)
    pipe = FacePipeline.from_settings()
    people = seed_demo(c.db, c.service.keys, shared_dir / "data" / "faces", pipe)
    yield c, pipe, {p["psn_no"]: p for p in people}, shared_dir / "data" / "faces"
    c.http.close()
    c.db.close()


def _template(pipe, path: Path):
    probe = pipe.enrol_image(cv2.imread(str(path)))
    assert probe.ok, path
    return probe.template


def test_demo_person_activates_with_another_photo_and_not_with_someone_elses(demo) -> None:
    c, pipe, people, faces = demo
    zhang, li = people["D370202000001"], people["D370202000002"]
    assert zhang["image"].endswith("000_0.png")
    cl = c.client
    # someone else's face with 张伟's ID number: refused
    other = _template(pipe, faces / "casia-facev5-dev" / "001" / "001_2.png")
    bad = cl.activate(cl.seal_face(other, "d1", "activate"), zhang["certno"], "d1")
    assert bad.infcode == InfCode.IDENTITY_MISMATCH
    # 张伟 from a different photo than the enrolled one: activated, then recognised face-only (1:N)
    mine = _template(pipe, faces / "casia-facev5-dev" / "000" / "000_3.png")
    ok = cl.activate(cl.seal_face(mine, "d2", "activate"), zhang["certno"], "d2")
    assert ok.ok and ok.output["psn_no"] == "D370202000001"
    again = _template(pipe, faces / "casia-facev5-dev" / "000" / "000_1.png")
    auth = cl.authenticate(cl.seal_face(again, "d3", "auth"), "d3")
    assert auth.ok and auth.output["psn_no"] == "D370202000001"
    # 李娜 is enrolled but not activated: her face is not found face-only
    hers = _template(pipe, faces / "casia-facev5-dev" / "001" / "001_1.png")
    n = cl.authenticate(cl.seal_face(hers, "d4", "auth"), "d4")
    assert n.infcode == InfCode.FACE_NOT_MATCHED
    assert li["certno"] != zhang["certno"]


def test_templates_are_stored_sealed_only(demo) -> None:
    c, _pipe, _people, _faces = demo
    rows = c.db.read(lambda tx: tx.fetch_all(
        "SELECT psn_no, template_seal FROM centre_persons WHERE psn_no LIKE 'D%'"))
    assert len(rows) == 7
    import base64

    for _psn, sealed in rows:
        blob = base64.b64decode(sealed)
        assert blob[:2] == b"KS" and len(blob) > 512  # kiosk.security sealed blob, not 512 raw float bytes
