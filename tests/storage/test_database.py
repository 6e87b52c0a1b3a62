"""The storage contract, run on both SQLite and PostgreSQL."""
from __future__ import annotations

import threading

import pytest

from kiosk.errors import ConflictError, StorageError
from kiosk.storage import Database, IdempotencyStore, Migration, Outbox, open_database

ACCOUNTS = [
    Migration("test.001_accounts", [
        "CREATE TABLE accounts (id SERIAL_PK, name TEXT NOT NULL UNIQUE, balance BIGINT NOT NULL, data BLOB)",
        "CREATE INDEX accounts_balance ON accounts (balance)",
    ]),
]


def test_migrations_apply_once_and_are_recorded(db: Database) -> None:
    assert db.migrate(ACCOUNTS) == ["test.001_accounts"]
    assert db.migrate(ACCOUNTS) == []
    names = db.read(lambda tx: [r[0] for r in tx.fetch_all("SELECT name FROM schema_migrations ORDER BY name")])
    assert names == ["storage.001_idempotency", "storage.002_outbox", "test.001_accounts"]


def test_changed_migration_is_refused(db: Database) -> None:
    db.migrate(ACCOUNTS)
    changed = [Migration("test.001_accounts", ["CREATE TABLE other (x INTEGER)"])]
    with pytest.raises(StorageError) as e:
        db.migrate(changed)
    assert e.value.code == "migration_changed"


def test_roundtrip_types_and_returning(db: Database) -> None:
    db.migrate(ACCOUNTS)
    with db.transaction() as tx:
        new_id = tx.scalar("INSERT INTO accounts (name, balance, data) VALUES (?, ?, ?) RETURNING id",
                           ("a", 2**40, b"\x00\xff"))
        tx.execute("INSERT INTO accounts (name, balance) VALUES (?, ?)", ("b", -5))
    assert isinstance(new_id, int)
    rows = db.read(lambda tx: tx.fetch_all("SELECT name, balance FROM accounts ORDER BY name"))
    assert rows == [("a", 2**40), ("b", -5)]
    total = db.read(lambda tx: tx.scalar("SELECT SUM(balance) FROM accounts"))
    assert total == 2**40 - 5 and isinstance(total, int)
    data = db.read(lambda tx: tx.scalar("SELECT data FROM accounts WHERE name = ?", ("a",)))
    assert bytes(data) == b"\x00\xff"
    dicts = db.read(lambda tx: tx.fetch_dicts("SELECT name, balance FROM accounts WHERE balance < ?", (0,)))
    assert dicts == [{"name": "b", "balance": -5}]
    # a literal percent sign, with and without parameters
    assert db.read(lambda tx: tx.fetch_one("SELECT '5%' || ?", ("x",))) == ("5%x",)
    assert db.read(lambda tx: tx.scalar("SELECT '5%'")) == "5%"


def test_rollback_on_exception_and_unique_violation_translated(db: Database) -> None:
    db.migrate(ACCOUNTS)
    with pytest.raises(RuntimeError), db.transaction() as tx:
        tx.execute("INSERT INTO accounts (name, balance) VALUES (?, ?)", ("x", 1))
        raise RuntimeError("boom")
    assert db.read(lambda tx: tx.scalar("SELECT COUNT(*) FROM accounts")) == 0
    db.run(lambda tx: tx.execute("INSERT INTO accounts (name, balance) VALUES (?, ?)", ("x", 1)))
    with pytest.raises(StorageError) as e:
        db.run(lambda tx: tx.execute("INSERT INTO accounts (name, balance) VALUES (?, ?)", ("x", 2)))
    assert e.value.code == "unique_violation"
    with pytest.raises(StorageError) as e2:
        db.run(lambda tx: tx.execute("SELEC nonsense"))
    assert e2.value.code == "sql_error"
    # the connection is still usable afterwards
    assert db.read(lambda tx: tx.scalar("SELECT balance FROM accounts WHERE name = ?", ("x",))) == 1


def test_nested_transaction_joins_outer(db: Database) -> None:
    db.migrate(ACCOUNTS)
    with pytest.raises(RuntimeError), db.transaction() as tx:
        tx.execute("INSERT INTO accounts (name, balance) VALUES (?, ?)", ("outer", 1))
        with db.transaction() as inner:
            inner.execute("INSERT INTO accounts (name, balance) VALUES (?, ?)", ("inner", 1))
        raise RuntimeError("abort both")
    assert db.read(lambda tx: tx.scalar("SELECT COUNT(*) FROM accounts")) == 0


def test_concurrent_increments_are_never_lost(db: Database) -> None:
    """Read-modify-write under the row lock from 8 threads with their own connections."""
    db.migrate(ACCOUNTS)
    db.run(lambda tx: tx.execute("INSERT INTO accounts (name, balance) VALUES ('c', 0)"))

    def bump(tx):  # type: ignore[no-untyped-def]
        v = tx.scalar("SELECT balance FROM accounts WHERE name = 'c'" + tx.for_update)
        tx.execute("UPDATE accounts SET balance = ? WHERE name = 'c'", (v + 1,))

    errors: list[BaseException] = []

    def worker() -> None:
        try:
            for _ in range(25):
                db.run(bump)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert db.read(lambda tx: tx.scalar("SELECT balance FROM accounts WHERE name = 'c'")) == 200


def test_serializable_mode_retries_conflicts(db: Database) -> None:
    db.migrate(ACCOUNTS)
    db.run(lambda tx: tx.execute("INSERT INTO accounts (name, balance) VALUES ('s', 0)"))

    def bump(tx):  # type: ignore[no-untyped-def]
        v = tx.scalar("SELECT balance FROM accounts WHERE name = 's'")
        tx.execute("UPDATE accounts SET balance = ? WHERE name = 's'", (v + 1,))

    threads = [threading.Thread(target=lambda: [db.run(bump, serializable=True, retries=50) for _ in range(10)])
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert db.read(lambda tx: tx.scalar("SELECT balance FROM accounts WHERE name = 's'")) == 40


def test_idempotency_replay_and_conflict(db: Database) -> None:
    store = IdempotencyStore("test")
    calls: list[int] = []

    def work(tx):  # type: ignore[no-untyped-def]
        calls.append(1)
        return {"n": len(calls)}

    assert store.execute(db, "k", {"amount": "1.00"}, work) == ({"n": 1}, False)
    assert store.execute(db, "k", {"amount": "1.00"}, work) == ({"n": 1}, True)
    assert len(calls) == 1
    with pytest.raises(ConflictError) as e:
        store.execute(db, "k", {"amount": "2.00"}, work)
    assert e.value.code == "idempotency_conflict"
    # other scope, same key: independent
    assert IdempotencyStore("other").execute(db, "k", {"amount": "2.00"}, work) == ({"n": 2}, False)


def test_idempotency_claim_rolls_back_with_failed_work(db: Database) -> None:
    store = IdempotencyStore("test")

    def fail(tx):  # type: ignore[no-untyped-def]
        raise RuntimeError("work failed")

    with pytest.raises(RuntimeError):
        store.execute(db, "k2", {"a": 1}, fail)
    assert store.execute(db, "k2", {"a": 1}, lambda tx: "done") == ("done", False)


def test_concurrent_same_key_runs_work_once(db: Database) -> None:
    store = IdempotencyStore("test")
    db.migrate(ACCOUNTS)
    db.run(lambda tx: tx.execute("INSERT INTO accounts (name, balance) VALUES ('i', 0)"))

    def work(tx):  # type: ignore[no-untyped-def]
        tx.execute("UPDATE accounts SET balance = balance + 1 WHERE name = 'i'")
        return "ok"

    results: list[tuple[object, bool]] = []
    threads = [threading.Thread(target=lambda: results.append(store.execute(db, "same", {"x": 1}, work)))
               for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r[1] for r in results) == [False] + [True] * 5
    assert db.read(lambda tx: tx.scalar("SELECT balance FROM accounts WHERE name = 'i'")) == 1


def test_outbox_survives_a_failing_sender(db: Database) -> None:
    box = Outbox("t.")
    db.run(lambda tx: box.put(tx, "t.a", {"n": 1}))
    db.run(lambda tx: box.put(tx, "t.b", {"n": 2}, dedupe_key="b"))
    assert db.run(lambda tx: box.put(tx, "t.b", {"n": 2}, dedupe_key="b")) is False
    db.run(lambda tx: box.put(tx, "other.c", {"n": 3}))

    def down(msg):  # type: ignore[no-untyped-def]
        raise ConnectionError("sender down")

    assert box.drain(db, down) == (0, 1)
    pending = box.pending(db)
    assert [m.payload["n"] for m in pending] == [1, 2] and pending[0].attempts == 1
    got: list[int] = []
    assert box.drain(db, lambda m: got.append(m.payload["n"])) == (2, 0)
    assert got == [1, 2] and box.pending(db) == []
    assert [m.topic for m in Outbox("other.").pending(db)] == ["other.c"]


def test_bad_urls_are_storage_errors(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(StorageError) as e:
        open_database("mysql://x")
    assert e.value.code == "bad_url" and e.value.field == "database_url"
    with pytest.raises(StorageError) as e2:
        open_database("postgresql://nobody@127.0.0.1:1/none")
    assert e2.value.code == "unavailable"
    db = open_database(f"sqlite:///{tmp_path}/sub/dir/k.db")
    assert db.read(lambda tx: tx.scalar("PRAGMA journal_mode")) == "wal"
    db.close()


def test_sqlite_commits_are_fsynced_by_default_and_the_level_is_checked(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A payment step that committed must survive a power cut: WAL + synchronous=FULL (2)."""
    monkeypatch.delenv("KIOSK_SQLITE_SYNCHRONOUS", raising=False)
    db = open_database(f"sqlite:///{tmp_path}/full.db")
    assert db.read(lambda tx: tx.scalar("PRAGMA synchronous")) == 2
    db.close()
    monkeypatch.setenv("KIOSK_SQLITE_SYNCHRONOUS", "normal")
    db = open_database(f"sqlite:///{tmp_path}/normal.db")
    assert db.read(lambda tx: tx.scalar("PRAGMA synchronous")) == 1
    db.close()
    monkeypatch.setenv("KIOSK_SQLITE_SYNCHRONOUS", "sometimes")
    with pytest.raises(StorageError) as e:
        open_database(f"sqlite:///{tmp_path}/bad.db")
    assert e.value.field == "sqlite_synchronous" and "FULL" in str(e.value)


def test_sqlite_memory_is_shared_across_threads() -> None:
    db = open_database("sqlite:///:memory:")
    db.migrate(ACCOUNTS)
    t = threading.Thread(target=lambda: db.run(
        lambda tx: tx.execute("INSERT INTO accounts (name, balance) VALUES ('m', 3)")))
    t.start()
    t.join()
    assert db.read(lambda tx: tx.scalar("SELECT balance FROM accounts")) == 3
    db.close()


def test_sqlite_writer_wait_is_bounded(tmp_path) -> None:  # type: ignore[no-untyped-def]
    db = open_database(f"sqlite:///{tmp_path}/b.db", busy_timeout_ms=200)
    db.migrate(ACCOUNTS)
    started = threading.Event()
    release = threading.Event()

    def holder() -> None:
        with db.transaction() as tx:
            tx.execute("INSERT INTO accounts (name, balance) VALUES ('w', 1)")
            started.set()
            release.wait(5)

    t = threading.Thread(target=holder)
    t.start()
    started.wait(5)
    try:
        with pytest.raises(StorageError) as e:
            db.run(lambda tx: tx.execute("INSERT INTO accounts (name, balance) VALUES ('x', 1)"), retries=0)
        assert e.value.code == "busy"
        # readers are not blocked by the writer (WAL)
        assert db.read(lambda tx: tx.scalar("SELECT COUNT(*) FROM accounts")) == 0
    finally:
        release.set()
        t.join()
    assert db.read(lambda tx: tx.scalar("SELECT COUNT(*) FROM accounts")) == 1
    db.close()


def test_scratch_schema_on_a_dead_server_is_one_line_without_the_password() -> None:
    from kiosk.storage.testing import scratch_database

    with pytest.raises(StorageError) as e, scratch_database("postgresql", "postgresql://u:s3cret@127.0.0.1:1/x"):
        pass  # pragma: no cover
    assert e.value.code == "unavailable" and "\n" not in str(e.value) and "s3cret" not in str(e.value)
