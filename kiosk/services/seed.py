"""Seed data for the centre: institutions, policy mapping, catalogue, insured people.

Synthetic people get a random unit template derived from their psn_no
(`synthetic_template`), so a load generator can present "their face" without
reading the registry. Named demo people get templates computed by kiosk.vision
from the shared development images; only the sealed template is stored, never
the image. Seeding is idempotent (rows that exist are left alone).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from kiosk.services.centre.service import seal_template
from kiosk.services.envelope import ServiceKeys
from kiosk.storage import Database, Transaction
from kiosk.vision.match import DIM

# fixmedins_code -> (name, admdvs, level)
INSTITUTIONS = {
    "H37020200001": ("青岛市市南区社区卫生服务中心 (demo clinic)", "370202", 1),
    "H37020200002": ("青岛市第二人民医院 (demo hospital)", "370202", 2),
    "P37020200001": ("青岛海王大药房 (demo pharmacy)", "370202", 1),
    "H37060200001": ("烟台市芝罘区社区卫生服务中心 (demo clinic)", "370602", 1),
    "P37060200001": ("烟台同康大药房 (demo pharmacy)", "370602", 1),
}

# (admdvs, insutype, med_type) -> profile
REGION_PROFILES = {
    ("370202", "310", "11"): "qingdao-employee-outpatient",
    ("370202", "310", "41"): "qingdao-employee-outpatient",
    ("370602", "390", "11"): "yantai-resident-outpatient",
    ("370602", "390", "41"): "yantai-resident-outpatient",
    ("370602", "390", "14"): "yantai-resident-chronic-htn-dm",
}
REGION_INSUTYPE = {"370202": "310", "370602": "390"}

# code -> (name, category, selfpay_prop, price ceiling yuan)
CATALOGUE: dict[str, tuple[str, str, str | None, str | None]] = {
    "XA01": ("阿莫西林胶囊 amoxicillin 0.25g", "A", None, None),
    "XA02": ("布洛芬缓释胶囊 ibuprofen SR 0.3g", "A", None, "30.00"),
    "XA03": ("二甲双胍片 metformin 0.5g", "A", None, None),
    "XA04": ("硝苯地平缓释片 nifedipine SR 10mg", "A", None, "25.00"),
    "XB01": ("阿托伐他汀钙片 atorvastatin 20mg", "B", "0.10", None),
    "XB02": ("氯沙坦钾片 losartan 50mg", "B", "0.05", "40.00"),
    "XB03": ("头孢克洛胶囊 cefaclor 0.25g", "B", "0.20", None),
    "XB04": ("胰岛素注射液 insulin 300IU", "B", "0.10", "80.00"),
    "XC01": ("维生素C泡腾片 vitamin C (not covered)", "C", None, None),
    "XC02": ("保健按摩 massage (not covered)", "C", None, None),
    "F001": ("普通门诊诊查费 consultation", "A", None, "10.00"),
    "F002": ("血常规 blood count", "A", None, None),
    "F003": ("彩超 ultrasound", "B", "0.10", "120.00"),
}

SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗"
GIVEN = "伟芳娜敏静丽强磊军洋勇艳杰娟涛明超秀霞平刚桂英华"


def synthetic_template(psn_no: str) -> np.ndarray:
    """The enrolled template of a synthetic person: a unit vector seeded by the psn_no."""
    seed = int.from_bytes(hashlib.sha256(psn_no.encode()).digest()[:8], "big")
    v = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
    return v / np.linalg.norm(v)


def synthetic_capture(psn_no: str, rng: np.random.Generator, noise: float = 0.25) -> np.ndarray:
    """What a camera would produce for a synthetic person: the template plus noise, renormalised."""
    v = synthetic_template(psn_no) + rng.standard_normal(DIM).astype(np.float32) * (noise / np.sqrt(DIM))
    return (v / np.linalg.norm(v)).astype(np.float32)


def certno_for(admdvs: str, born: date, seq: int, female: bool) -> str:
    """A syntactically valid 18-character ID number (GB 11643 check character)."""
    order = (seq % 499) * 2 + (0 if female else 1)
    body = f"{admdvs}{born:%Y%m%d}{order:03d}"
    weights = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
    return body + "10X98765432"[sum(int(c) * w for c, w in zip(body, weights)) % 11]


@dataclass(frozen=True)
class SeedPerson:
    psn_no: str
    psn_name: str
    certno: str
    gend: str
    brdy: str
    insutype: str
    admdvs: str
    insu_date: str
    phone_last4: str
    conditions: str
    balc: int


def seed_reference(tx: Transaction) -> None:
    for code, (name, admdvs, level) in INSTITUTIONS.items():
        tx.execute("INSERT INTO centre_institutions (fixmedins_code, fixmedins_name, admdvs, level) VALUES "
                   "(?, ?, ?, ?) ON CONFLICT (fixmedins_code) DO NOTHING", (code, name, admdvs, level))
    for (admdvs, insutype, med_type), profile in REGION_PROFILES.items():
        tx.execute("INSERT INTO centre_region_profiles (admdvs, insutype, med_type, profile) VALUES (?, ?, ?, ?) "
                   "ON CONFLICT (admdvs, insutype, med_type) DO NOTHING", (admdvs, insutype, med_type, profile))
    for code, (name, cat, prop, ceil) in CATALOGUE.items():
        tx.execute("INSERT INTO centre_catalogue (code, name, category, selfpay_prop, pric_uplmt_amt) VALUES "
                   "(?, ?, ?, ?, ?) ON CONFLICT (code) DO NOTHING", (code, name, cat, prop, ceil))


def insert_person(tx: Transaction, keys: ServiceKeys, p: SeedPerson, template: np.ndarray | None, *,
                  real_face: bool = True) -> bool:
    """`real_face=False` (synthetic templates): kept out of the region's matching cohort, whose
    statistics must describe how real faces score (kiosk.services.centre.matching)."""
    sealed = seal_template(keys, p.psn_no, template) if template is not None else None
    n = tx.execute(
        "INSERT INTO centre_persons (psn_no, psn_name, certno, gend, brdy, insutype, psn_type, admdvs, insu_date, "
        "phone_last4, conditions, balc_opening, balc, template_seal, activated, cohort_member) VALUES "
        "(?, ?, ?, ?, ?, ?, '11', ?, ?, ?, ?, ?, ?, ?, 0, ?) ON CONFLICT (psn_no) DO NOTHING",
        (p.psn_no, p.psn_name, p.certno, p.gend, p.brdy, p.insutype, p.admdvs, p.insu_date, p.phone_last4,
         p.conditions, p.balc, p.balc, sealed, 1 if real_face else 0))
    return n == 1


def synthetic_people(n: int, admdvs: str, seed: int = 7) -> list[SeedPerson]:
    rng = np.random.default_rng(seed + int(admdvs))
    insutype = REGION_INSUTYPE.get(admdvs, "310")
    out = []
    for i in range(n):
        female = bool(rng.integers(0, 2))
        born = date(1966, 1, 1) + timedelta(days=int(rng.integers(0, 40 * 365)))
        psn = f"P{admdvs}{i:08d}"
        cond = "" if insutype == "310" else ["", "htn", "dm", "htn,dm"][int(rng.integers(0, 4))]
        out.append(SeedPerson(
            psn_no=psn, psn_name=SURNAMES[int(rng.integers(0, len(SURNAMES)))] + GIVEN[int(rng.integers(0, len(GIVEN)))],
            certno=certno_for(admdvs, born, i, female), gend="2" if female else "1", brdy=born.isoformat(),
            insutype=insutype, admdvs=admdvs,
            insu_date=(date(2010, 1, 1) + timedelta(days=int(rng.integers(0, 15 * 365)))).isoformat(),
            phone_last4=f"{int(rng.integers(0, 10000)):04d}", conditions=cond,
            balc=int(rng.integers(0, 200_000)),
        ))
    return out


def seed_region(db: Database, keys: ServiceKeys, n: int, admdvs: str, *, batch: int = 500) -> int:
    """N synthetic people in `admdvs` (spouses paired: 2k and 2k+1), enrolled, not yet activated."""
    db.run(seed_reference)
    people = synthetic_people(n, admdvs)
    added = 0
    for start in range(0, len(people), batch):
        chunk = people[start:start + batch]

        def work(tx: Transaction, chunk: list[SeedPerson] = chunk) -> int:
            k = 0
            for p in chunk:
                k += insert_person(tx, keys, p, synthetic_template(p.psn_no), real_face=False)
            for a, b in zip(chunk[0::2], chunk[1::2]):
                for x, y in ((a, b), (b, a)):
                    tx.execute("INSERT INTO centre_relations (psn_no, rel_psn_no, relation) VALUES (?, ?, 'spouse') "
                               "ON CONFLICT (psn_no, rel_psn_no) DO NOTHING", (x.psn_no, y.psn_no))
            return k

        added += db.run(work)
    return added


# named demo people: (psn_no, name, image relative to faces/, admdvs, gend, brdy, balc fen, conditions)
DEMO_PEOPLE = [
    ("D370202000001", "张伟", "casia-facev5-dev/000/000_0.png", "370202", "1", "1978-03-14", 52_000, ""),
    ("D370202000002", "李娜", "casia-facev5-dev/001/001_0.png", "370202", "2", "1981-09-02", 1_500, ""),
    ("D370202000003", "王建国", "casia-facev5-dev/002/002_0.png", "370202", "1", "1950-05-20", 0, ""),
    ("D370202000004", "刘芳", "casia-facev5-dev/003/003_0.png", "370202", "2", "1952-11-11", 80_000, ""),
    ("D370602000001", "陈静", "casia-facev5-dev/004/004_0.png", "370602", "2", "1969-07-07", 30_000, "htn,dm"),
    ("D370202000005", "Barack Obama (demo)", "misc/examples_knn_examples_train_obama_obama.jpg", "370202", "1",
     "1961-08-04", 20_000, ""),
    ("D370202000006", "Al Pacino (demo)", "lfw-dev/images/Al_Pacino/Al_Pacino_0001.jpg", "370202", "1",
     "1966-04-25", 5_000, ""),
]
# relation rows: (psn_no, rel_psn_no, what rel is to psn)
DEMO_RELATIONS = [
    ("D370202000003", "D370202000004", "spouse"), ("D370202000004", "D370202000003", "spouse"),
    ("D370202000003", "D370202000001", "child"), ("D370202000001", "D370202000003", "parent"),
    ("D370202000002", "D370202000001", "spouse"), ("D370202000001", "D370202000002", "spouse"),
]


def demo_people(faces_dir: Path) -> list[tuple[SeedPerson, Path]]:
    out = []
    for i, (psn, name, img, admdvs, gend, brdy, balc, cond) in enumerate(DEMO_PEOPLE):
        born = date.fromisoformat(brdy)
        out.append((SeedPerson(psn, name, certno_for(admdvs, born, 900 + i, gend == "2"), gend, brdy,
                               REGION_INSUTYPE[admdvs], admdvs, "2012-01-01", f"{1000 + i:04d}", cond, balc),
                    Path(faces_dir) / img))
    return out


def seed_demo(db: Database, keys: ServiceKeys, faces_dir: Path, pipeline: Any = None) -> list[dict[str, str]]:
    """Named demo people with templates from the shared face images (kiosk.vision, in process only)."""
    import cv2

    from kiosk.errors import ConfigError
    from kiosk.vision.pipeline import FacePipeline

    db.run(seed_reference)
    pipe = pipeline or FacePipeline.from_settings()
    report = []
    for p, img_path in demo_people(faces_dir):
        img = cv2.imread(str(img_path))
        if img is None:
            raise ConfigError(f"demo face image missing: {img_path}", code="demo_face_missing")
        probe = pipe.enrol_image(img)
        if not probe.ok:
            raise ConfigError(f"no usable face in {img_path.name}: {probe.reason}", code="demo_face_unusable")
        tmpl = probe.template
        db.run(lambda tx, p=p, t=tmpl: insert_person(tx, keys, p, t))
        report.append({"psn_no": p.psn_no, "psn_name": p.psn_name, "certno": p.certno, "admdvs": p.admdvs,
                       "image": str(img_path.relative_to(faces_dir))})
        del tmpl
    for a, b, rel in DEMO_RELATIONS:
        db.run(lambda tx, a=a, b=b, rel=rel: tx.execute(
            "INSERT INTO centre_relations (psn_no, rel_psn_no, relation) VALUES (?, ?, ?) "
            "ON CONFLICT (psn_no, rel_psn_no) DO NOTHING", (a, b, rel)))
    return report
