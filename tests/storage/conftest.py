"""`db` fixture: every storage test runs on SQLite AND PostgreSQL.

PostgreSQL comes from $KIOSK_TEST_PG_URL (scripts/test starts it). Missing under
CI=true is a failure; locally it is a loud skip.
"""
from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from kiosk.storage import Database
from kiosk.storage.testing import PG_ENV, scratch_database


def require_pg() -> str:
    url = os.environ.get(PG_ENV)
    if not url:
        msg = f"{PG_ENV} is not set: PostgreSQL tests cannot run (use ./scripts/test, or eval \"$(scripts/postgres start)\")"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(msg)
        pytest.skip("NOT TESTED ON POSTGRESQL - " + msg)
    return url


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest) -> Iterator[Database]:
    base = require_pg() if request.param == "postgresql" else None
    with scratch_database(request.param, base) as d:
        yield d
