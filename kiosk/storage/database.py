"""Connections, transactions and error translation for SQLite and PostgreSQL.

Isolation for money (documented choice):
- SQLite: every write transaction is `BEGIN IMMEDIATE`, so writers are fully
  serialised by the database file lock (WAL lets readers go on); waits are
  bounded by `busy_timeout`.
- PostgreSQL: `READ COMMITTED` plus explicit row locks (`tx.for_update`, i.e.
  `SELECT ... FOR UPDATE` on the row that guards an invariant, such as a credit
  line). Callers that prefer it can ask for `serializable=True`; either way
  `Database.run` retries the whole unit of work on serialization failure or
  deadlock (SQLSTATE 40001/40P01), and on SQLite `busy`.

Connections are per thread (a thread reuses its own); `sqlite:///:memory:` is
one shared connection guarded by a lock, so every thread sees the same data.
"""
from __future__ import annotations

import contextlib
import json
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from kiosk.errors import StorageError
from kiosk.storage.sql import POSTGRESQL, SQLITE, translate, translate_ddl

T = TypeVar("T")
Row = tuple[Any, ...]

RETRYABLE = frozenset({"serialization_failure", "busy"})


def _param(v: Any) -> Any:
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, datetime):
        return v.isoformat()
    if isinstance(v, date):
        return v.isoformat()
    return v


def _value(v: Any) -> Any:
    # PostgreSQL SUM(bigint) is NUMERIC; integral results come back as int on both.
    if isinstance(v, Decimal) and v == v.to_integral_value():
        return int(v)
    return v


def _row(r: Sequence[Any] | None) -> Row | None:
    return None if r is None else tuple(_value(v) for v in r)


def redact(url: str) -> str:
    """The URL without its password, for messages and logs."""
    try:
        p = urlsplit(url)
    except ValueError:
        return "<unparsable url>"
    if p.password:
        netloc = f"{p.username}:***@{p.hostname}" + (f":{p.port}" if p.port else "")
        return urlunsplit((p.scheme, netloc, p.path, p.query, p.fragment))
    return url


def translate_error(e: BaseException, dialect: str, context: str = "") -> StorageError:
    """A driver exception -> StorageError with a machine code."""
    where = f" ({context})" if context else ""
    if dialect == SQLITE:
        msg = str(e)
        if isinstance(e, sqlite3.IntegrityError):
            code = "unique_violation" if "UNIQUE" in msg else "constraint_violation"
        elif isinstance(e, sqlite3.OperationalError) and ("locked" in msg or "busy" in msg):
            code = "busy"
        elif isinstance(e, sqlite3.OperationalError) and "unable to open" in msg:
            code = "unavailable"
        else:
            code = "sql_error"
        err = StorageError(f"sqlite: {msg}{where}", code=code)
        err.sqlstate = None  # type: ignore[attr-defined]
        return err
    import psycopg

    state = getattr(e, "sqlstate", None)
    if state in ("40001", "40P01"):
        code = "serialization_failure"
    elif state == "23505":
        code = "unique_violation"
    elif state and state.startswith("23"):
        code = "constraint_violation"
    elif isinstance(e, psycopg.OperationalError) and not state:
        code = "unavailable"
    elif state and state.startswith("08"):
        code = "unavailable"
    else:
        code = "sql_error"
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    err = StorageError(f"postgresql: {first}{where}", code=code)
    err.sqlstate = state  # type: ignore[attr-defined]
    return err


class Transaction:
    """One unit of work on one connection. SQL uses `?` placeholders."""

    def __init__(self, db: Database, conn: Any, begin: str | None = None) -> None:
        self.db = db
        self.dialect = db.dialect
        self._conn = conn
        # PostgreSQL: BEGIN travels with the first statement (one round trip, not two)
        self._begin = begin
        self._at_commit: list[tuple[str, Sequence[Any]]] = []

    @property
    def started(self) -> bool:
        """False while a PostgreSQL transaction has sent nothing yet (COMMIT/ROLLBACK have nothing to do)."""
        return self._begin is None

    def _commit(self) -> None:
        """COMMIT (PostgreSQL: with the statements kept for it, in one round trip)."""
        if not self._at_commit:
            self._conn.execute("COMMIT")
            return
        pending, self._at_commit = self._at_commit, []
        self._pg_send(pending, commit=True)

    def _pg_send(self, statements: Sequence[tuple[str, Sequence[Any]]], *, commit: bool = False) -> list[Any]:
        """PostgreSQL: a BEGIN not yet sent, the statements and (if asked) COMMIT in one round trip;
        returns a cursor per statement. Driver errors are the caller's to translate."""
        begin, self._begin = self._begin, None
        if begin is None and len(statements) == 1 and not commit:  # nothing to batch
            sql, params = statements[0]
            cur = self._conn.cursor()
            self._pg_execute(cur, sql, translate(sql, self.dialect), tuple(_param(v) for v in params))
            return [cur]
        curs = []
        with self._conn.pipeline():
            if begin is not None:
                self._conn.execute(begin)
            for sql, params in statements:
                cur = self._conn.cursor()
                self._pg_execute(cur, sql, translate(sql, self.dialect), tuple(_param(v) for v in params))
                curs.append(cur)
            if commit:
                self._conn.execute("COMMIT")
        return curs

    @property
    def for_update(self) -> str:
        """Suffix that row-locks a SELECT on PostgreSQL (SQLite already serialises writers)."""
        return " FOR UPDATE" if self.dialect == POSTGRESQL else ""

    def _cursor(self, sql: str, params: Sequence[Any]) -> Any:
        try:
            if self.dialect == SQLITE:
                return self._conn.execute(translate(sql, self.dialect), tuple(_param(v) for v in params))
            return self._pg_send([(sql, params)])[0]
        except Exception as e:  # translated at the boundary
            raise self.db._translate(e, sql) from e

    @staticmethod
    def _pg_execute(cur: Any, sql: str, q: str, p: tuple[Any, ...]) -> None:
        if p:
            cur.execute(q, p)
        else:  # no parameters: psycopg must not interpret % at all
            cur.execute(sql.encode())

    def _send_begin(self) -> None:
        if self._begin is not None:
            begin, self._begin = self._begin, None
            try:
                self._conn.execute(begin)
            except Exception as e:
                raise self.db._translate(e, begin) from e

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run a statement; returns the affected row count."""
        cur = self._cursor(sql, params)
        return int(cur.rowcount)

    def fetch_each(self, statements: Sequence[tuple[str, Sequence[Any]]]) -> list[Row | None]:
        """Run independent statements in order; the first row of each (None when it has none).
        On PostgreSQL they travel in one round trip (pipeline), with BEGIN if not yet sent."""
        if self.dialect == SQLITE or len(statements) < 2:
            return [_row(self._cursor(sql, params).fetchone()) for sql, params in statements]
        try:
            return [_row(c.fetchone()) if c.description else None for c in self._pg_send(statements)]
        except Exception as e:
            raise self.db._translate(e, statements[0][0]) from e

    def execute_at_commit(self, sql: str, params: Sequence[Any] = ()) -> None:
        """A write nothing later in this transaction reads (e.g. the stored answer of a message):
        on PostgreSQL it is sent with COMMIT, in the same round trip; on SQLite it runs now.
        If it fails, the transaction does not commit."""
        if self.dialect == SQLITE:
            self._cursor(sql, params)
        else:
            self._at_commit.append((sql, params))

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        q = translate(sql, self.dialect)
        data = [tuple(_param(v) for v in r) for r in rows]
        if not data:
            return
        try:
            if self.dialect == SQLITE:
                self._conn.executemany(q, data)
            else:
                self._send_begin()
                with self._conn.cursor() as cur:
                    cur.executemany(q, data)
        except Exception as e:
            raise self.db._translate(e, sql) from e

    def fetch_one(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        cur = self._cursor(sql, params)
        try:
            return _row(cur.fetchone())
        except Exception as e:
            raise self.db._translate(e, sql) from e

    def fetch_all(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        cur = self._cursor(sql, params)
        try:
            return [_row(r) for r in cur.fetchall()]  # type: ignore[misc]
        except Exception as e:
            raise self.db._translate(e, sql) from e

    def fetch_dicts(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        cur = self._cursor(sql, params)
        try:
            names = [d[0] for d in cur.description]
            return [dict(zip(names, _row(r) or ())) for r in cur.fetchall()]
        except Exception as e:
            raise self.db._translate(e, sql) from e

    def scalar(self, sql: str, params: Sequence[Any] = (), default: Any = None) -> Any:
        r = self.fetch_one(sql, params)
        return default if r is None or r[0] is None else r[0]


@dataclass
class _Local(threading.local):
    conn: Any = None
    tx: Transaction | None = None


class Database:
    """A database opened by URL. Thread-safe: each thread uses its own connection."""

    def __init__(self, url: str, dialect: str, connect: Callable[[], Any], *, shared: bool = False,
                 lock_timeout_s: float = 30.0) -> None:
        self.url = url
        self.dialect = dialect
        self._connect = connect
        self._local = _Local()
        self._all: list[Any] = []
        self._all_lock = threading.Lock()
        self._shared = shared  # one connection for all threads (sqlite :memory:)
        self._shared_lock = threading.RLock()
        self._shared_conn: Any = None
        self._closed = False
        # SQLite allows one writer: threads of this process queue on a lock instead of
        # polling the file lock (the busy handler sleeps 1..100 ms between tries).
        self._write_lock = threading.Lock() if dialect == SQLITE and not shared else None
        self._lock_timeout_s = lock_timeout_s

    def __repr__(self) -> str:
        return f"Database({redact(self.url)!r})"

    # -- connections -------------------------------------------------------
    def _translate(self, e: BaseException, sql: str = "") -> StorageError:
        ctx = " ".join(sql.split())[:80] if sql else ""
        return translate_error(e, self.dialect, ctx)

    def _conn(self) -> Any:
        if self._closed:
            raise StorageError("database is closed", code="closed")
        if self._shared:
            if self._shared_conn is None:
                self._shared_conn = self._open()
            return self._shared_conn
        if self._local.conn is None:
            self._local.conn = self._open()
        return self._local.conn

    def _open(self) -> Any:
        try:
            conn = self._connect()
        except StorageError:
            raise
        except Exception as e:
            err = self._translate(e)
            raise StorageError(f"cannot open {redact(self.url)}: {err.message}", code="unavailable") from e
        with self._all_lock:
            self._all.append(conn)
        return conn

    def _discard(self) -> None:
        conn = self._shared_conn if self._shared else self._local.conn
        if conn is None:
            return
        with contextlib.suppress(Exception):
            conn.close()
        with self._all_lock:
            if conn in self._all:
                self._all.remove(conn)
        if self._shared:
            self._shared_conn = None
        else:
            self._local.conn = None

    def close(self) -> None:
        """Close every connection this Database opened (all threads)."""
        self._closed = True
        with self._all_lock:
            conns, self._all = self._all, []
        for c in conns:
            with contextlib.suppress(Exception):
                c.close()

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transactions --------------------------------------------------------
    @contextlib.contextmanager
    def transaction(self, *, serializable: bool = False, readonly: bool = False) -> Iterator[Transaction]:
        """A transaction; commits on normal exit, rolls back on any exception.

        A transaction opened inside another on the same thread joins the outer one.
        """
        if self._local.tx is not None:
            yield self._local.tx
            return
        if self._shared:
            lock: Any = self._shared_lock
        elif self._write_lock is not None and not readonly:
            lock = self._writer_slot()
        else:
            lock = contextlib.nullcontext()
        with lock:
            conn = self._conn()
            begin = self._begin_sql(serializable, readonly)
            if self.dialect == POSTGRESQL and conn.closed:
                self._discard()
                conn = self._conn()
            if self.dialect == SQLITE:  # takes the write lock now; in-process, no round trip
                try:
                    conn.execute(begin)
                except Exception as e:
                    raise self._translate(e, begin) from e
                tx = Transaction(self, conn)
            else:
                tx = Transaction(self, conn, begin)
            self._local.tx = tx
            try:
                yield tx
            except BaseException:
                self._local.tx = None
                if tx.started:
                    self._rollback(conn)
                raise
            self._local.tx = None
            if not tx.started and not tx._at_commit:
                return
            try:
                tx._commit()
            except Exception as e:
                self._rollback(conn)
                err = self._translate(e, "COMMIT")
                if err.code == "unavailable" or self.dialect == POSTGRESQL and conn.closed:
                    self._discard()
                raise err from e

    @contextlib.contextmanager
    def _writer_slot(self) -> Iterator[None]:
        """The in-process SQLite writer lock, bounded like busy_timeout (never an endless wait)."""
        assert self._write_lock is not None
        if not self._write_lock.acquire(timeout=self._lock_timeout_s):
            raise StorageError(f"database is busy: no write slot within {self._lock_timeout_s:.0f} s", code="busy")
        try:
            yield
        finally:
            self._write_lock.release()

    def _begin_sql(self, serializable: bool, readonly: bool) -> str:
        if self.dialect == SQLITE:
            return "BEGIN DEFERRED" if readonly else "BEGIN IMMEDIATE"
        level = "SERIALIZABLE" if serializable else "READ COMMITTED"
        return f"BEGIN ISOLATION LEVEL {level}" + (" READ ONLY" if readonly else "")

    def _rollback(self, conn: Any) -> None:
        try:
            conn.execute("ROLLBACK")
        except Exception:
            self._discard()  # a broken connection is replaced on next use

    def run(self, work: Callable[[Transaction], T], *, retries: int = 10, serializable: bool = False) -> T:
        """Run `work(tx)` in a write transaction, re-running it on retryable conflicts."""
        if self._local.tx is not None:
            return work(self._local.tx)
        attempt = 0
        while True:
            try:
                with self.transaction(serializable=serializable) as tx:
                    return work(tx)
            except StorageError as e:
                if e.code not in RETRYABLE or attempt >= retries:
                    raise
                attempt += 1
                time.sleep(random.uniform(0, 0.002 * 2 ** min(attempt, 6)))

    def read(self, work: Callable[[Transaction], T]) -> T:
        """Run `work(tx)` in a read-only transaction (a consistent snapshot on PostgreSQL)."""
        with self.transaction(readonly=True) as tx:
            return work(tx)

    # -- schema -------------------------------------------------------------
    def migrate(self, migrations: Sequence[Any]) -> list[str]:
        """Apply the migrations not yet recorded; returns the names applied now."""
        from kiosk.storage.migrations import apply

        return apply(self, migrations)

    def ddl(self, sql: str) -> str:
        return translate_ddl(sql, self.dialect)


# ---------------------------------------------------------------------------
SQLITE_SYNC_LEVELS = ("FULL", "EXTRA", "NORMAL")


def _sqlite_sync() -> str:
    """`KIOSK_SQLITE_SYNCHRONOUS` (FULL by default): with WAL, FULL fsyncs the log at every
    commit, so a payment step that committed survives a power cut, not only a crash.
    NORMAL (faster, may lose the last commits on power loss) is for benchmarks and tests."""
    from kiosk.config import load

    level = load().sqlite_synchronous.upper()
    if level not in SQLITE_SYNC_LEVELS:
        raise StorageError(f"KIOSK_SQLITE_SYNCHRONOUS must be one of {', '.join(SQLITE_SYNC_LEVELS)}, "
                           f"not {level!r}", code="bad_config", field="sqlite_synchronous")
    return level


def _sqlite_connect(path: str, busy_timeout_ms: int) -> Callable[[], Any]:
    sync = _sqlite_sync()

    def connect() -> sqlite3.Connection:
        if path != ":memory:":
            parent = Path(path).parent
            parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False,
                               timeout=busy_timeout_ms / 1000)
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        if path != ":memory:":
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute(f"PRAGMA synchronous = {sync}")
        conn.execute("PRAGMA foreign_keys = ON")
        return conn

    return connect


def _pg_connect(url: str) -> Callable[[], Any]:
    def connect() -> Any:
        import psycopg

        return psycopg.connect(url, autocommit=True, connect_timeout=10)

    return connect


def open_database(url: str, *, busy_timeout_ms: int = 30000) -> Database:
    """Open `sqlite:///path` (relative), `sqlite:////abs/path`, `sqlite:///:memory:`
    or `postgresql://user[:pw]@host:port/dbname`, and apply the storage core tables."""
    if not isinstance(url, str) or not url:
        raise StorageError("database URL is empty", code="bad_url", field="database_url")
    if url.startswith("sqlite:///"):
        path = url[len("sqlite:///"):]
        if not path:
            raise StorageError("sqlite URL names no file", code="bad_url", field="database_url")
        db = Database(url, SQLITE, _sqlite_connect(path, busy_timeout_ms), shared=(path == ":memory:"),
                      lock_timeout_s=busy_timeout_ms / 1000)
    elif url.startswith(("postgresql://", "postgres://")):
        db = Database(url, POSTGRESQL, _pg_connect(url))
    else:
        raise StorageError(f"unsupported database URL {redact(url)!r} (sqlite:///... or postgresql://...)",
                           code="bad_url", field="database_url")
    from kiosk.storage.migrations import CORE_MIGRATIONS

    db.migrate(CORE_MIGRATIONS)
    return db


def utc_now_text() -> str:
    return datetime.now(timezone.utc).isoformat()


def dumps(obj: Any) -> str:
    """Canonical JSON (sorted keys, no spaces) used for hashes and stored payloads."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


__all__ = ["RETRYABLE", "Database", "Transaction", "dumps", "open_database", "redact", "translate_error"]
