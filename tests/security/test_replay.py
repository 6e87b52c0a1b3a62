"""Signed requests with nonce + timestamp: replays, stale messages and tampering are refused."""
from __future__ import annotations

import os
import threading
import uuid
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from kiosk.clock import ManualClock
from kiosk.errors import ConfigError, IntegrityError
from kiosk.security.replay import (
    HEADERS,
    H_SIGNATURE,
    H_TIMESTAMP,
    DatabaseNonceStore,
    MemoryNonceStore,
    ReplayGuard,
    RequestSigner,
    RequestVerifier,
    SqliteNonceStore,
)
from kiosk.security.sm import Sm2PrivateKey

ED = Ed25519PrivateKey.generate()
SM2 = Sm2PrivateKey.generate()
BODY = b'{"infno":"2207","input":{"data":{"psn_no":"P1"}}}'


def _pair(store=None, window_s: float = 300):
    clock = ManualClock()
    signer = RequestSigner(ED, device_id="KIOSK-1", key_id="v0001-aa", clock=clock)
    keys = {("KIOSK-1", "v0001-aa"): ED.public_key(), ("KIOSK-1", "sm2-1"): SM2.public_key()}
    verifier = RequestVerifier(keys, ReplayGuard(store or MemoryNonceStore(), window_s=window_s, clock=clock))
    return clock, signer, verifier


def _code(fn) -> str:
    with pytest.raises(IntegrityError) as e:
        fn()
    return e.value.code


def test_fresh_request_accepted_replay_refused() -> None:
    _, signer, verifier = _pair()
    h = signer.headers("POST", "/fsi/api/2207", BODY)
    assert set(h) == set(HEADERS)
    v = verifier.verify("POST", "/fsi/api/2207", BODY, h)
    assert v.device_id == "KIOSK-1" and v.key_id == "v0001-aa"
    assert _code(lambda: verifier.verify("POST", "/fsi/api/2207", BODY, h)) == "replayed"
    # the same body again, signed afresh, is a new message
    verifier.verify("POST", "/fsi/api/2207", BODY, signer.headers("POST", "/fsi/api/2207", BODY))


def test_sm2_signed_requests_work_too() -> None:
    clock, _, verifier = _pair()
    s = RequestSigner(SM2, device_id="KIOSK-1", key_id="sm2-1", clock=clock)
    verifier.verify("POST", "/x", BODY, s.headers("POST", "/x", BODY))


def test_window_is_configurable_and_applies_both_ways() -> None:
    clock, signer, verifier = _pair(window_s=30)
    h = signer.headers("POST", "/x", BODY)
    clock.advance(seconds=31)
    assert _code(lambda: verifier.verify("POST", "/x", BODY, h)) == "stale"
    h2 = signer.headers("POST", "/x", BODY)
    clock.advance(seconds=-62)  # message from 31 s in the future
    assert _code(lambda: verifier.verify("POST", "/x", BODY, h2)) == "stale"
    clock.advance(seconds=40)
    verifier.verify("POST", "/x", BODY, h2)


def test_tampering_anything_breaks_the_signature() -> None:
    _, signer, verifier = _pair()
    h = signer.headers("POST", "/x", BODY)
    assert _code(lambda: verifier.verify("POST", "/x", BODY + b" ", h)) == "bad_signature"
    assert _code(lambda: verifier.verify("PUT", "/x", BODY, h)) == "bad_signature"
    assert _code(lambda: verifier.verify("POST", "/y", BODY, h)) == "bad_signature"
    for name in HEADERS:
        if name in ("X-Kiosk-Device", "X-Kiosk-Key"):
            bad = {**h, name: h[name] + "x"}
            assert _code(lambda: verifier.verify("POST", "/x", BODY, bad)) == "unknown_key"
            continue
        v = h[name]
        bad = {**h, name: v[:-1] + ("1" if v[-1] != "1" else "2")}
        assert _code(lambda: verifier.verify("POST", "/x", BODY, bad)) in ("bad_signature", "bad_timestamp"), name
    # a forged message must not burn the real nonce
    verifier.verify("POST", "/x", BODY, h)


def test_missing_headers_and_unknown_keys() -> None:
    _, signer, verifier = _pair()
    h = signer.headers("GET", "/x")
    for name in HEADERS:
        assert _code(lambda: verifier.verify("GET", "/x", b"", {k: v for k, v in h.items() if k != name})) == "missing_header"
    lower = {k.lower(): v for k, v in h.items()}  # HTTP header names are case-insensitive
    verifier.verify("GET", "/x", b"", lower)
    stranger = RequestSigner(Ed25519PrivateKey.generate(), device_id="KIOSK-1", key_id="v0001-aa")
    assert _code(lambda: verifier.verify("GET", "/x", b"", stranger.headers("GET", "/x"))) == "bad_signature"
    assert _code(lambda: verifier.verify("GET", "/x", b"", {**h, H_TIMESTAMP: "12a"})) == "bad_timestamp"
    assert _code(lambda: verifier.verify("GET", "/x", b"", {**h, H_SIGNATURE: "!!"})) == "bad_signature"


def test_memory_store_ttl_and_bound() -> None:
    s = MemoryNonceStore(max_items=3)
    assert s.add("d", "n1", 0, 100) and not s.add("d", "n1", 50, 100)
    assert s.add("d", "n1", 100, 100)  # expired -> usable again (the guard refuses it as stale anyway)
    assert s.add("e", "n1", 100, 100)  # scopes are separate
    for i in range(10):
        s.add("d", f"x{i}", 120, 100)
    assert len(s) <= 3


def test_sqlite_store_survives_restart(tmp_path: Path) -> None:
    p = tmp_path / "nonces.db"
    clock, signer, verifier = _pair(SqliteNonceStore(p))
    h = signer.headers("POST", "/x", BODY)
    verifier.verify("POST", "/x", BODY, h)
    verifier2 = RequestVerifier(verifier._keys, ReplayGuard(SqliteNonceStore(p), clock=clock))
    assert _code(lambda: verifier2.verify("POST", "/x", BODY, h)) == "replayed"


def _race(store) -> int:
    clock, signer, verifier = _pair(store)
    h = signer.headers("POST", "/x", BODY)
    ok = []
    barrier = threading.Barrier(8)

    def worker() -> None:
        barrier.wait()
        try:
            verifier.verify("POST", "/x", BODY, h)
            ok.append(1)
        except IntegrityError:
            pass

    ts = [threading.Thread(target=worker) for _ in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(10)
    return len(ok)


def test_database_store_on_kiosk_storage_sqlite(tmp_path: Path) -> None:
    from kiosk.storage import open_database

    db = open_database(f"sqlite:///{tmp_path / 'kiosk.db'}")
    try:
        assert _race(DatabaseNonceStore(db)) == 1
    finally:
        db.close()


def test_database_store_on_postgresql() -> None:
    url = os.environ.get("KIOSK_TEST_PG_URL")
    if not url:
        if os.environ.get("CI") == "true":
            pytest.fail("KIOSK_TEST_PG_URL is not set under CI (scripts/test starts PostgreSQL)")
        pytest.skip("no local PostgreSQL (run via scripts/test)")
    from kiosk.storage import open_database

    db = open_database(url)
    try:
        store = DatabaseNonceStore(db)
        scope = f"test-{uuid.uuid4().hex}"
        assert store.add(scope, "n", 1000, 100) and not store.add(scope, "n", 1050, 100)
        assert store.add(scope, "n", 1100, 100)
        assert _race(store) == 1
    finally:
        db.close()


def test_window_defaults_to_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = ManualClock()
    monkeypatch.setenv("KIOSK_REPLAY_WINDOW_S", "10")
    guard = ReplayGuard(MemoryNonceStore(), clock=clock)
    now = int(clock.now().timestamp() * 1000)
    guard.check("d", "n1", now - 9_000)
    with pytest.raises(IntegrityError) as e:
        guard.check("d", "n2", now - 11_000)
    assert e.value.code == "stale"
    monkeypatch.delenv("KIOSK_REPLAY_WINDOW_S")
    ReplayGuard(MemoryNonceStore(), clock=clock).check("d", "n3", now - 299_000)
    for bad in (0, -5, 10**6):
        with pytest.raises(ConfigError):
            ReplayGuard(window_s=bad)
