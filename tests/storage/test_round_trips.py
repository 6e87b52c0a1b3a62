"""Statements that share a round trip on PostgreSQL (pipelined BEGIN, `fetch_each`,
`execute_at_commit`) keep the transaction's all-or-nothing meaning on both databases."""
from __future__ import annotations

import pytest

from kiosk.errors import StorageError
from kiosk.storage import Database


def _table(db: Database) -> None:
    db.run(lambda tx: tx.execute("CREATE TABLE rt (k TEXT PRIMARY KEY, v INTEGER NOT NULL)"))


def _rows(db: Database) -> list[tuple]:
    return [tuple(r) for r in db.read(lambda tx: tx.fetch_all("SELECT k, v FROM rt ORDER BY k"))]


def test_fetch_each_returns_first_rows_in_order(db: Database) -> None:
    _table(db)
    got = db.run(lambda tx: tx.fetch_each([
        ("INSERT INTO rt (k, v) VALUES (?, ?) ON CONFLICT (k) DO NOTHING RETURNING k", ("a", 1)),
        ("INSERT INTO rt (k, v) VALUES (?, ?) ON CONFLICT (k) DO NOTHING RETURNING k", ("a", 2)),
        ("SELECT v FROM rt WHERE k = ?", ("a",)),
        ("UPDATE rt SET v = v + 10 WHERE k = ?", ("a",)),
    ]))
    assert [tuple(r) if r is not None else None for r in got] == [("a",), None, (1,), None]
    assert _rows(db) == [("a", 11)]


def test_a_failing_statement_in_fetch_each_rolls_back_the_transaction(db: Database) -> None:
    _table(db)
    db.run(lambda tx: tx.execute("INSERT INTO rt (k, v) VALUES (?, ?)", ("a", 1)))

    def work(tx) -> None:  # noqa: ANN001
        tx.execute("INSERT INTO rt (k, v) VALUES (?, ?)", ("b", 1))
        tx.fetch_each([("INSERT INTO rt (k, v) VALUES (?, ?)", ("c", 1)), ("INSERT INTO rt (k, v) VALUES (?, ?)", ("a", 2))])

    with pytest.raises(StorageError) as e:
        db.run(work)
    assert e.value.code == "unique_violation"
    assert _rows(db) == [("a", 1)]
    db.run(lambda tx: tx.execute("INSERT INTO rt (k, v) VALUES (?, ?)", ("d", 4)))  # the connection still works
    assert _rows(db) == [("a", 1), ("d", 4)]


def test_execute_at_commit_lands_with_the_commit(db: Database) -> None:
    _table(db)

    def work(tx) -> int:  # noqa: ANN001
        tx.execute("INSERT INTO rt (k, v) VALUES (?, ?)", ("a", 1))
        tx.execute_at_commit("UPDATE rt SET v = ? WHERE k = ?", (7, "a"))
        return 1

    assert db.run(work) == 1
    assert _rows(db) == [("a", 7)]


def test_a_failing_at_commit_statement_commits_nothing(db: Database) -> None:
    _table(db)
    db.run(lambda tx: tx.execute("INSERT INTO rt (k, v) VALUES (?, ?)", ("a", 1)))

    def work(tx) -> None:  # noqa: ANN001
        tx.execute("INSERT INTO rt (k, v) VALUES (?, ?)", ("b", 2))
        tx.execute_at_commit("INSERT INTO rt (k, v) VALUES (?, ?)", ("a", 3))

    with pytest.raises(StorageError) as e:
        db.run(work)
    assert e.value.code == "unique_violation"
    assert _rows(db) == [("a", 1)]


def test_an_error_after_execute_at_commit_commits_nothing(db: Database) -> None:
    _table(db)

    def work(tx) -> None:  # noqa: ANN001
        tx.execute("INSERT INTO rt (k, v) VALUES (?, ?)", ("a", 1))
        tx.execute_at_commit("INSERT INTO rt (k, v) VALUES (?, ?)", ("b", 2))
        raise RuntimeError("handler failed")

    with pytest.raises(RuntimeError):
        db.run(work)
    assert _rows(db) == []


def test_at_commit_only_and_empty_transactions(db: Database) -> None:
    _table(db)
    assert db.run(lambda tx: None) is None  # sends nothing, commits nothing, no error
    db.run(lambda tx: tx.execute_at_commit("INSERT INTO rt (k, v) VALUES (?, ?)", ("z", 26)))
    assert _rows(db) == [("z", 26)]


def test_first_statement_failing_leaves_a_usable_connection(db: Database) -> None:
    _table(db)
    with pytest.raises(StorageError):
        db.run(lambda tx: tx.execute("INSERT INTO rt (k, v) VALUES (?, ?)", ("a", None)))  # NOT NULL
    db.run(lambda tx: tx.execute("INSERT INTO rt (k, v) VALUES (?, ?)", ("a", 1)))
    assert _rows(db) == [("a", 1)]
