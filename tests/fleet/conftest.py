"""Fleet fixtures: a FleetService on a fresh database (SQLite and PostgreSQL), a ManualClock
shared by the service and the simulated terminals, terminals with real Ed25519 device keys."""
from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
import httpx

from kiosk.clock import ManualClock
from kiosk.fleet.agent import FleetAgent, StaticStatus
from kiosk.fleet.app import create_app
from kiosk.fleet.models import Registration
from kiosk.fleet.notify import RecordingNotifier
from kiosk.fleet.rules import load_rules
from kiosk.security.replay import RequestSigner
from kiosk.storage import Database
from kiosk.storage.testing import PG_ENV, scratch_database
from tests.app.screen.server import serve

TOKEN = "fleet-test-operator-token"


def require_pg() -> str:
    url = os.environ.get(PG_ENV)
    if not url:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"{PG_ENV} is not set under CI")
        pytest.skip("NOT TESTED ON POSTGRESQL - start it with eval \"$(scripts/postgres start)\"")
    return url


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Database]:
    # heartbeats are not money: the fleet service runs SQLite at NORMAL (kiosk fleet serve does too)
    monkeypatch.setenv("KIOSK_SQLITE_SYNCHRONOUS", "NORMAL")
    base = require_pg() if request.param == "postgresql" else None
    with scratch_database(request.param, base) as d:
        yield d


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(datetime(2026, 12, 4, 2, 0, tzinfo=timezone.utc))


@pytest.fixture
def operator_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@dataclass
class Fleet:
    app: object
    client: httpx.Client
    clock: ManualClock
    notifier: RecordingNotifier
    operator_key: Ed25519PrivateKey
    url: str = "http://testserver"

    @property
    def svc(self):  # type: ignore[no-untyped-def]
        return self.app.state.service  # type: ignore[attr-defined]

    def admin(self, method: str, path: str, **kw):  # type: ignore[no-untyped-def]
        return self.client.request(method, path, headers={"X-Admin-Token": TOKEN}, **kw)

    def terminal(self, tid: str, *, institution: str = "H37020200001", district: str = "370202",
                 state_dir: Path | None = None, register: bool = True) -> FleetAgent:
        key = Ed25519PrivateKey.generate()
        signer = RequestSigner(key, device_id=tid, key_id="v0001-test", clock=self.clock)
        if register:
            self.svc.register(Registration(
                terminal_id=tid, institution=institution, district=district, key_id="v0001-test",
                public_key=key.public_key().public_bytes(serialization.Encoding.Raw,
                                                         serialization.PublicFormat.Raw).hex()))
        agent = FleetAgent(self.url, signer, StaticStatus(), trust_key=self.operator_key.public_key(),
                           state_dir=state_dir, http=self.client)
        agent.key = key  # type: ignore[attr-defined]
        return agent


@pytest.fixture
def fleet(db: Database, clock: ManualClock, operator_key: Ed25519PrivateKey, tmp_path: Path,
          monkeypatch: pytest.MonkeyPatch) -> Iterator[Fleet]:
    monkeypatch.setenv("KIOSK_FLEET_ADMIN_TOKEN", TOKEN)
    notifier = RecordingNotifier()
    app = create_app(db, data_dir=tmp_path, clock=clock, rules=load_rules(), notifier=notifier,
                     operator_pub=None, window_s=300, job=False)
    app.state.service.operator_key = operator_key.public_key()
    with serve(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        yield Fleet(app, client, clock, notifier, operator_key, url)
