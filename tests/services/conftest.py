"""Fixtures: the real centre/bank apps on a real database, reached over HTTP through TestClient."""
from __future__ import annotations

import os
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
from fastapi.testclient import TestClient

from kiosk.clock import SHANGHAI, ManualClock
from kiosk.security.sm import Sm2PrivateKey
from kiosk.services import seed
from kiosk.services.client import BankClient, CentreClient, ServiceIdentity
from kiosk.storage import Database, open_database

INSTITUTION = "H37020200002"  # level-2 hospital in 370202 (Qingdao): deductible applies


def pg_url() -> str | None:
    url = os.environ.get("KIOSK_TEST_PG_URL")
    if not url and os.environ.get("CI") == "true":
        pytest.fail("KIOSK_TEST_PG_URL is not set under CI (scripts/test starts PostgreSQL)")
    return url


def fresh_pg(url: str) -> str:
    """A private schema in the test PostgreSQL so runs never see each other's rows."""
    import psycopg

    schema = "svc_" + uuid.uuid4().hex[:10]
    with psycopg.connect(url, autocommit=True) as c:
        c.execute(f"CREATE SCHEMA {schema}")
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}options=-csearch_path%3D{schema}"


@dataclass
class Centre:
    client: CentreClient
    http: TestClient
    db: Database
    service: Any
    gateway: Any
    clock: ManualClock
    people: list[seed.SeedPerson]
    key: Sm2PrivateKey
    app_id: str
    app_secret: str

    def capture(self, psn_no: str, rng: np.random.Generator | None = None) -> np.ndarray:
        return seed.synthetic_capture(psn_no, rng or np.random.default_rng(0))

    def activate(self, p: seed.SeedPerson) -> str:
        sid = secrets.token_hex(4)
        a = self.client.activate(self.client.seal_face(self.capture(p.psn_no), sid, "activate"), p.certno, sid)
        assert a.ok, a
        return a.output["ecToken"]


def make_centre(db_url: str, tmp: Path, people: int = 24) -> Centre:
    from kiosk.services.centre.app import create_app

    clock = ManualClock(datetime(2026, 3, 10, 10, 0, tzinfo=SHANGHAI))
    db = open_database(db_url)
    app = create_app(db, data_dir=tmp, clock=clock)
    service, gw = app.state.service, app.state.gateway
    seed.seed_region(db, service.keys, people, "370202")
    key = Sm2PrivateKey.generate()
    app_id, secret = "KIOSKTEST" + secrets.token_hex(6).upper(), secrets.token_hex(16)
    gw.register_terminal(app_id, secret, key.public_key().to_bytes().hex(), INSTITUTION)
    http = TestClient(app)
    client = CentreClient("http://testserver", ServiceIdentity(app_id, secret, key, INSTITUTION), http=http,
                          clock=clock)
    client.sign_in("tester")
    return Centre(client, http, db, service, gw, clock, seed.synthetic_people(people, "370202"), key, app_id, secret)


@pytest.fixture(scope="module")
def centre(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Centre]:
    tmp = tmp_path_factory.mktemp("centre")
    c = make_centre(f"sqlite:///{tmp}/centre.db", tmp)
    yield c
    c.http.close()
    c.db.close()


def lines(*spec: tuple[str, str, str]) -> tuple[str, list[dict[str, str]]]:
    """(code, price, qty) lines -> (medfee_sumamt, feedetail) as the platform writes them."""
    from decimal import ROUND_HALF_UP, Decimal

    out, total = [], Decimal(0)
    for i, (code, price, qty) in enumerate(spec):
        amt = (Decimal(price) * Decimal(qty)).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
        total += amt
        out.append({"feedetl_sn": str(i + 1), "med_list_codg": code, "pric": price, "cnt": qty,
                    "det_item_fee_sumamt": str(amt)})
    return str(total), out


def head(p: seed.SeedPerson, token: str, medfee: str, **kw: str) -> dict[str, str]:
    return {"psn_no": p.psn_no, "mdtrt_cert_type": "01", "mdtrt_cert_no": token, "medfee_sumamt": medfee,
            "insutype": p.insutype, **kw}


def bank_identity(app_id: str, secret: str, key: Sm2PrivateKey) -> ServiceIdentity:
    return ServiceIdentity(app_id, secret, key, INSTITUTION)


def pay_auth(c: Centre, payer: str, ref: str, amount: str, *, purpose: str = "draw", app_id: str | None = None,
             institution: str = INSTITUTION, minutes: int = 10, auth_id: str | None = None) -> str:
    """A pay_auth signed with the centre's own key, as 2207 or ec.payauth would issue it (for bank tests
    that need no settlement; the settlement path is tested end to end)."""
    from decimal import Decimal

    from kiosk.services import payauth

    exp = int(c.clock.now().timestamp()) + 60 * minutes
    a = payauth.PayAuth(id=auth_id or "PT" + secrets.token_hex(8), psn_no=payer, fixmedins_code=institution,
                        app_id=app_id or c.app_id, ref=ref, amount=int(Decimal(amount) * 100), purpose=purpose,
                        exp=exp, kid=c.service.keys.store.current_kid)
    return payauth.sign(a, c.service.keys.sm2)


def apply_auth(c: Centre, holder: str, birth_date: str, years: int, *, app_id: str | None = None,
               institution: str = INSTITUTION, minutes: int = 10) -> str:
    """The applicant's pay_auth of purpose apply as ec.payauth issues it: ref = the birth date, amount = the
    full years insured (both the centre's)."""
    from kiosk.services import payauth

    a = payauth.PayAuth(id="PA" + secrets.token_hex(8), psn_no=holder, fixmedins_code=institution,
                        app_id=app_id or c.app_id, ref=birth_date, amount=years, purpose="apply",
                        exp=int(c.clock.now().timestamp()) + 60 * minutes, kid=c.service.keys.store.current_kid)
    return payauth.sign(a, c.service.keys.sm2)


__all__ = ["BankClient", "apply_auth", "Centre", "bank_identity", "fresh_pg", "head", "lines", "make_centre", "pay_auth", "pg_url"]
