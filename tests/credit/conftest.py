from __future__ import annotations

from collections.abc import Iterator

import pytest

from kiosk.storage import Database
from kiosk.storage.testing import scratch_database
from tests.storage.conftest import require_pg


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest) -> Iterator[Database]:
    """A fresh database of each kind (PostgreSQL from $KIOSK_TEST_PG_URL)."""
    base = require_pg() if request.param == "postgresql" else None
    with scratch_database(request.param, base) as d:
        yield d
