"""Throw-away databases for tests, benchmarks and the replay tool.

`scratch_database("sqlite")` is a fresh SQLite file in a temporary directory;
`scratch_database("postgresql", base_url)` is a fresh schema in the server at
`base_url` (usually $KIOSK_TEST_PG_URL from scripts/postgres), selected through
the connection's search_path and dropped afterwards, so concurrent test runs
never see each other's tables.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
import uuid
from collections.abc import Iterator
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from kiosk.errors import StorageError
from kiosk.storage.database import Database, open_database, redact

PG_ENV = "KIOSK_TEST_PG_URL"


def pg_url_with_schema(base_url: str, schema: str) -> str:
    p = urlsplit(base_url)
    q = [(k, v) for k, v in parse_qsl(p.query) if k != "options"]
    q.append(("options", f"-csearch_path={schema}"))
    return urlunsplit((p.scheme, p.netloc, p.path, urlencode(q), p.fragment))


@contextlib.contextmanager
def pg_schema(base_url: str, prefix: str = "t") -> Iterator[str]:
    """Create a fresh schema; yields a URL that uses it; drops it at the end."""
    import psycopg

    schema = f"{prefix}_{uuid.uuid4().hex[:12]}"
    try:
        with psycopg.connect(base_url, autocommit=True, connect_timeout=10) as c:
            c.execute(f'CREATE SCHEMA "{schema}"')
    except psycopg.Error as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise StorageError(f"cannot create a scratch schema on {redact(base_url)}: {first}",
                           code="unavailable") from e
    try:
        yield pg_url_with_schema(base_url, schema)
    finally:
        with contextlib.suppress(Exception), psycopg.connect(base_url, autocommit=True, connect_timeout=10) as c:
            c.execute(f'DROP SCHEMA "{schema}" CASCADE')


@contextlib.contextmanager
def scratch_database(kind: str = "sqlite", base_url: str | None = None) -> Iterator[Database]:
    """A fresh, empty Database of `kind` ("sqlite" or "postgresql"), closed and removed afterwards."""
    if kind == "sqlite":
        with tempfile.TemporaryDirectory(prefix="kiosk-db-") as d:
            db = open_database(f"sqlite:///{os.path.join(d, 'scratch.db')}")
            try:
                yield db
            finally:
                db.close()
    elif kind == "postgresql":
        base = base_url or os.environ.get(PG_ENV)
        if not base:
            raise StorageError(f"{PG_ENV} is not set (run: eval \"$(scripts/postgres start)\")",
                               code="unavailable", field=PG_ENV)
        with pg_schema(base) as url:
            db = open_database(url)
            try:
                yield db
            finally:
                db.close()
    else:
        raise StorageError(f"unknown database kind {kind!r}", code="bad_url")
