"""Property tests of the published POS/HIS OpenAPI with schemathesis: whatever a
signed integrating system sends, the API never answers 500, and its answers
conform to the schema it publishes. Served over real HTTP on a free port; the
counter worker is not started, so orders stay pending (no camera needed)."""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from kiosk.clock import SystemClock
from kiosk.storage import open_database
from kiosk.app.pos_api import create_app
from kiosk.app.pos_auth import PosAuth, sign
from kiosk.app.runtime import ServerThread
from kiosk.app.session import Deps
from kiosk.app.store import Store
from kiosk.app.terminal import Terminal

from tests.app.conftest import free_port

KEY = "k" * 64


class Signed(requests.auth.AuthBase):
    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        body = r.body or b""
        if isinstance(body, str):
            body = body.encode()
        ts = str(int(SystemClock().now().timestamp()))
        r.headers.update({"X-Pos-System": "fuzz-pos", "X-Pos-Timestamp": ts,
                          "X-Pos-Signature": sign(KEY, ts, r.method or "GET", r.path_url, body)})
        return r


def _app(tmp_dir):  # noqa: ANN001
    db = open_database(f"sqlite:///{tmp_dir / 'pos.db'}")
    store = Store(db, SystemClock())
    deps = Deps(camera=None, vision=None, centre=None, bank=None, keypad=None, printer=None)  # type: ignore[arg-type]
    return create_app(Terminal(store, deps, SystemClock()), PosAuth({"fuzz-pos": KEY}))


# built at import: schemathesis parametrizes the test per operation at collection time
_TMP = Path(tempfile.mkdtemp(prefix="pos_openapi_"))
APP = _app(_TMP)
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)


@pytest.fixture(scope="module")
def pos_server():
    port = free_port()
    server = ServerThread(APP, port=port).start()
    yield APP, f"http://127.0.0.1:{port}"
    server.stop()
    shutil.rmtree(_TMP, ignore_errors=True)


@pytest.fixture(scope="module")
def session():
    s = requests.Session()
    s.auth = Signed()
    yield s
    s.close()


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_errors(case, pos_server, session):
    _app, url = pos_server
    case.call_and_validate(base_url=url, session=session, checks=[not_a_server_error])


def test_the_published_contract_states_retries_conflicts_and_what_a_partial_refund_returns():
    doc = APP.openapi()
    create = doc["paths"]["/pos/v1/orders"]["post"]["description"]
    assert "same order_id" in create and "409" in create
    refund = doc["paths"]["/pos/v1/orders/{order_id}/refunds"]["post"]["description"]
    assert "only the personal share" in refund and "credit draw first, then cash" in refund
    assert "personal share" in doc["components"]["schemas"]["RefundIn"]["properties"]["amount"]["description"]
