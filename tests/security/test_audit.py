"""Hash-chained audit log: verify pinpoints the first altered, removed or reordered record."""
from __future__ import annotations

import json
import multiprocessing
import secrets
from pathlib import Path

import pytest

from kiosk.clock import ManualClock
from kiosk.errors import InputError
from kiosk.security.audit import AuditLog, check_privacy, mask_id_number, verify_log

KEY = secrets.token_bytes(32)


def _log(tmp_path: Path, n: int = 6) -> AuditLog:
    clock = ManualClock()
    log = AuditLog(tmp_path / "audit.log", KEY, clock)
    events = ["activation", "payment", "refund", "key_rotation", "liveness_failed", "admin_action"]
    for i in range(n):
        clock.advance(seconds=1)
        log.append(events[i % len(events)], order=f"O{i}", amount_fen=100 * i,
                   id=mask_id_number("11010119900307123X"), ok=i % 2 == 0)
    return log


def _lines(log: AuditLog) -> list[bytes]:
    return log.path.read_bytes().splitlines(keepends=True)


def test_intact_chain(tmp_path: Path) -> None:
    log = _log(tmp_path)
    r = log.verify()
    assert r.ok and r.records == 6 and "intact" in str(r)
    first = json.loads(_lines(log)[0])
    assert first["seq"] == 1 and first["prev"] == "0" * 64 and first["data"]["id"] == "110101********123X"
    assert not verify_log(log.path, secrets.token_bytes(32)).ok  # wrong key


def test_every_byte_flip_points_at_its_record(tmp_path: Path) -> None:
    log = _log(tmp_path, 3)
    original = log.path.read_bytes()
    lines = _lines(log)
    starts = [sum(len(x) for x in lines[:i]) for i in range(len(lines))]
    for pos in range(len(original)):
        if original[pos:pos + 1] == b"\n":
            continue
        bad = bytearray(original)
        bad[pos] ^= 0x01
        log.path.write_bytes(bytes(bad))
        r = verify_log(log.path, KEY)
        rec = max(i for i, s in enumerate(starts) if s <= pos) + 1
        assert not r.ok and r.first_bad_seq == rec and r.line == rec, (pos, r)
    log.path.write_bytes(original)
    assert verify_log(log.path, KEY).ok


@pytest.mark.parametrize("victim", [1, 3, 6])
def test_removed_record_is_named(tmp_path: Path, victim: int) -> None:
    log = _log(tmp_path)
    lines = _lines(log)
    log.path.write_bytes(b"".join(lines[: victim - 1] + lines[victim:]))
    r = verify_log(log.path, KEY)
    assert not r.ok and r.first_bad_seq == victim, r
    assert "missing" in r.reason or "removed" in r.reason


def test_reordered_and_truncated(tmp_path: Path) -> None:
    log = _log(tmp_path)
    lines = _lines(log)
    log.path.write_bytes(b"".join([lines[0], lines[2], lines[1]] + lines[3:]))
    r = verify_log(log.path, KEY)
    assert not r.ok and r.first_bad_seq == 2
    log.path.write_bytes(b"".join(lines[:4]))  # tail cut: the head file notices
    r = verify_log(log.path, KEY)
    assert not r.ok and r.first_bad_seq == 5 and "removed from the end" in r.reason
    log.path.write_bytes(b"".join(lines))
    head = json.loads(log.head_path.read_text())
    log.head_path.write_text(json.dumps({**head, "seq": 2}))
    assert "head file is altered" in verify_log(log.path, KEY).reason


def test_appending_continues_the_chain_after_reopen(tmp_path: Path) -> None:
    _log(tmp_path, 2)
    log2 = AuditLog(tmp_path / "audit.log", KEY)
    rec = log2.append("payment", order="O9")
    assert rec.seq == 3 and log2.verify().ok


def _append_many(path: str, key: bytes, who: str) -> None:
    log = AuditLog(path, key)
    for i in range(25):
        log.append("payment", order=f"{who}{i}")


def test_concurrent_processes_keep_one_chain(tmp_path: Path) -> None:
    path = str(tmp_path / "audit.log")
    ctx = multiprocessing.get_context("fork")
    ps = [ctx.Process(target=_append_many, args=(path, KEY, w)) for w in "ab"]
    for p in ps:
        p.start()
    for p in ps:
        p.join(30)
    r = verify_log(path, KEY)
    assert r.ok and r.records == 50, r


def test_mask_id_number() -> None:
    assert mask_id_number("110101199003071234") == "110101********1234"
    assert mask_id_number("11010119900307123X") == "110101********123X"
    assert mask_id_number("110101900307123") == "110101*****7123"
    with pytest.raises(InputError):
        mask_id_number("12345")


@pytest.mark.parametrize("fields", [
    {"id": "110101199003071234"},
    {"note": "patient 11010119900307123x at counter"},
    {"face_image": "x"},
    {"template": [0.1] * 4},
    {"emb": [0.01 * i for i in range(128)]},
    {"blob": b"\xff\xd8\xff\xe0"},
    {"crop_b64": "abc"},
    {"jpeg": "/9j/" + "A" * 300},
    {"nested": {"list": [{"photo": "p"}]}},
    {"thing": object()},
])
def test_privacy_refusals(tmp_path: Path, fields: dict) -> None:
    log = AuditLog(tmp_path / "a.log", KEY)
    with pytest.raises(InputError) as e:
        log.append("payment", **fields)
    assert e.value.code == "privacy_violation"
    assert not (tmp_path / "a.log").exists() or b"1234" not in (tmp_path / "a.log").read_bytes()


def test_ordinary_fields_pass() -> None:
    check_privacy({"order": "O-20260101-0001", "amount": "12.30", "id": "110101********1234",
                   "reason": "liveness failed 3 times", "count": 3, "ok": False, "phone": "138****0000"})
    with pytest.raises(InputError):
        AuditLog("/tmp/x.log", KEY).append("Bad Event")


def test_tail_cut_with_head_deleted_is_still_caught(tmp_path: Path) -> None:
    """Removing the last records and the head sidecar together must not pass as intact."""
    log = _log(tmp_path)
    lines = _lines(log)
    log.path.write_bytes(b"".join(lines[:-2]))
    log.head_path.unlink()
    r = verify_log(log.path, KEY)
    assert not r.ok and r.first_bad_seq == len(lines) - 1 and "missing" in r.reason, r
    # the head pins the last record's hash: a whole other chain (same key) under this head is refused
    log.path.write_bytes(b"".join(lines))
    AuditLog(log.path, KEY).append("admin_action", action="x")  # head now for 7 records
    head = log.head_path.read_bytes()
    other = _log(tmp_path / "other", 7)
    log.path.write_bytes(other.path.read_bytes())
    log.head_path.write_bytes(head)
    r = verify_log(log.path, KEY)
    assert not r.ok and r.first_bad_seq == 7 and "head hash" in r.reason, r
    # an empty log that was never appended to is fine
    empty = tmp_path / "empty.log"
    empty.write_bytes(b"")
    assert verify_log(empty, KEY).ok


@pytest.mark.parametrize("fields", [
    {"id": 110101199003071234},  # an ID number given as a JSON integer
    {"id": 110101900307123},  # 15-digit (first-generation) card as an integer
    {"by_id": {"110101199003071234": "ok"}},  # as a key inside a mapping
    {"note": "ID 110101 19900307 1234 at counter"},  # grouped 6-8-4 as printed on forms
    {"note": "110101-19900307-123X"},
])
def test_privacy_refuses_id_numbers_as_integers_keys_or_grouped(tmp_path: Path, fields: dict) -> None:
    log = AuditLog(tmp_path / "a.log", KEY)
    with pytest.raises(InputError) as e:
        log.append("payment", **fields)
    assert e.value.code == "privacy_violation"
    assert not (tmp_path / "a.log").exists() or b"1234" not in (tmp_path / "a.log").read_bytes()


def test_ids_and_amounts_the_terminal_logs_still_pass() -> None:
    check_privacy({"amount_fen": 1230, "ts_ms": 1796212546873, "setl_id": "S20261202A1B2C3D4E5F60718",
                   "by_order": {"O-20260101-0001": "paid"}, "phone": "138 0013 8000"})


@pytest.mark.parametrize("text", [
    "psn110101199003071233",  # glued to letters before
    "110101199003071233abc",  # and after
    "cert=11010119900301006x;",  # check character X, lower case
    "ID:440304200112314566",
])
def test_privacy_refuses_a_real_id_number_glued_to_letters(text: str) -> None:
    with pytest.raises(InputError) as e:
        check_privacy({"note": text})
    assert e.value.code == "privacy_violation"
    with pytest.raises(InputError):
        check_privacy({text: "as a key"})


def test_digit_runs_that_are_no_id_number_pass_when_glued() -> None:
    # hex digests and tokens can hold 18 digits in a row: refused only as a real GB 11643 number
    check_privacy({"hash": "ab110101199003071238cd",  # wrong check character
                   "token": "x123456789012345678y",  # no real birth date (digits 7-14: 78901234)
                   "sha": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"})
