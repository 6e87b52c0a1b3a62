"""Device identity: permissions, encryption at rest, rotation that keeps old keys."""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from kiosk.errors import ConfigError, InputError, IntegrityError
from kiosk.security.keystore import KeyStore
from kiosk.security.seal import SealContext, seal


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_init_creates_private_store(tmp_path: Path) -> None:
    ks = KeyStore.init(tmp_path / "keys", device_id="KIOSK-TEST-1")
    d = tmp_path / "keys"
    assert _mode(d) == 0o700 and _mode(d / "keys") == 0o700
    for f in d.rglob("*"):
        if f.is_file():
            assert _mode(f) == 0o600, f
    ident = ks.public_identity()
    assert ident["device_id"] == "KIOSK-TEST-1" and ident["kid"] == ks.current_kid
    assert len(bytes.fromhex(ident["ed25519"])) == 32 and len(bytes.fromhex(ident["sm2"])) == 65
    with pytest.raises(ConfigError):
        KeyStore.init(d)  # never overwrites an identity


def test_open_refuses_a_store_others_can_read(tmp_path: Path) -> None:
    KeyStore.init(tmp_path / "k")
    os.chmod(tmp_path / "k", 0o755)
    with pytest.raises(ConfigError) as e:
        KeyStore.open(tmp_path / "k")
    assert e.value.code == "keystore_permissions"


def test_keys_survive_reopen_and_sign(tmp_path: Path) -> None:
    ks = KeyStore.init(tmp_path / "k")
    again = KeyStore.open(tmp_path / "k")
    assert again.public_identity() == ks.public_identity()
    sig = again.signing_key().sign(b"m")
    ks.signing_key().public_key().verify(sig, b"m")
    assert again.sm2_key().d == ks.sm2_key().d


def test_passphrase_encrypts_private_keys_at_rest(tmp_path: Path) -> None:
    ks = KeyStore.init(tmp_path / "k", passphrase="correct horse")
    raw = (tmp_path / "k" / "keys" / f"{ks.current_kid}.json").read_text()
    priv = ks.signing_key().private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                          serialization.NoEncryption())
    assert priv.hex() not in raw and ks.sm2_key().to_bytes().hex() not in raw
    assert "private_sealed" in json.loads(raw) and "private" not in json.loads(raw)
    assert KeyStore.open(tmp_path / "k", passphrase="correct horse").sm2_key().d == ks.sm2_key().d
    with pytest.raises(IntegrityError, match="wrong passphrase"):
        KeyStore.open(tmp_path / "k", passphrase="wrong").signing_key()
    with pytest.raises(ConfigError, match="passphrase"):
        KeyStore.open(tmp_path / "k").signing_key()


def test_tampered_key_file_is_refused(tmp_path: Path) -> None:
    ks = KeyStore.init(tmp_path / "k")
    p = tmp_path / "k" / "keys" / f"{ks.current_kid}.json"
    doc = json.loads(p.read_text())
    doc["public"]["x25519"] = "00" * 32
    p.write_text(json.dumps(doc))
    with pytest.raises(IntegrityError, match="disagree"):
        KeyStore.open(tmp_path / "k").agreement_key()


def test_rotation_keeps_old_versions_for_sealed_data(tmp_path: Path) -> None:
    ks = KeyStore.init(tmp_path / "k", passphrase="pw")
    old_kid = ks.current_kid
    cached = ks.encrypt_at_rest(b"\x01\x02template", purpose="enrol-cache", record_id="E1")
    ctx = SealContext(ks.device_id, "S1", "second-factor")
    sealed_for_us = seal(b"crop", ks.agreement_key().public_key(), old_kid, ctx)
    new_kid = ks.rotate()
    assert new_kid != old_kid and new_kid.startswith("v0002-") and ks.kids() == [old_kid, new_kid]
    reopened = KeyStore.open(tmp_path / "k", passphrase="pw")
    assert reopened.current_kid == new_kid
    assert reopened.public_identity()["ed25519"] != reopened.public_identity(old_kid)["ed25519"]
    assert reopened.decrypt_at_rest(cached, purpose="enrol-cache", record_id="E1") == b"\x01\x02template"
    assert reopened.open_sealed(sealed_for_us, ctx) == b"crop"
    fresh = reopened.encrypt_at_rest(b"t2", purpose="enrol-cache", record_id="E2")
    assert fresh[4:4 + len(new_kid)] == new_kid.encode()
    with pytest.raises(IntegrityError):
        reopened.decrypt_at_rest(cached, purpose="enrol-cache", record_id="E2")  # bound to its record


def _init_or_open(path: str, q) -> None:
    q.put(KeyStore.open_or_init(path).public_identity()["kid"])


def test_concurrent_provisioning_creates_one_identity(tmp_path: Path) -> None:
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    q = ctx.Queue()
    ps = [ctx.Process(target=_init_or_open, args=(str(tmp_path / "k"), q)) for _ in range(4)]
    for p in ps:
        p.start()
    for p in ps:
        p.join(30)
    kids = {q.get(timeout=5) for _ in ps}
    assert len(kids) == 1 and KeyStore.open(tmp_path / "k").kids() == sorted(kids)


def test_rotation_never_writes_a_clear_key_into_a_protected_store(tmp_path: Path) -> None:
    KeyStore.init(tmp_path / "k", passphrase="pw")
    for wrong in (None, "typo"):
        with pytest.raises((ConfigError, IntegrityError)):
            KeyStore.open(tmp_path / "k", passphrase=wrong).rotate()
    ks = KeyStore.open(tmp_path / "k", passphrase="pw")
    assert len(ks.kids()) == 1
    new = ks.rotate()
    assert "private_sealed" in json.loads((tmp_path / "k" / "keys" / f"{new}.json").read_text())
    # a second handle opened before that rotation rotates from the true current version
    stale = KeyStore.open(tmp_path / "k", passphrase="pw")
    ks.rotate()
    assert stale.rotate().startswith("v0004-") and KeyStore.open(tmp_path / "k").current_kid.startswith("v0004-")


def test_damaged_metadata_is_a_clear_error(tmp_path: Path) -> None:
    KeyStore.init(tmp_path / "k")
    (tmp_path / "k" / "device.json").write_text("{not json")
    with pytest.raises(IntegrityError, match="device.json"):
        KeyStore.open(tmp_path / "k")


def test_bad_locations_and_key_ids_are_clear_errors(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="cannot create key store"):
        KeyStore.init(tmp_path / "file")
    KeyStore.init(tmp_path / "k")
    meta = tmp_path / "k" / "device.json"
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "current": "../../outside"}))
    (tmp_path / "outside.json").write_text("{}")
    with pytest.raises(InputError, match="malformed key version"):
        KeyStore.open(tmp_path / "k").signing_key()


def test_operator_token_is_made_once_owner_only_and_env_overrides(tmp_path, monkeypatch):
    from kiosk.security.keystore import operator_token

    monkeypatch.delenv("KIOSK_TEST_OPERATOR_TOKEN", raising=False)
    p = tmp_path / "svc" / "admin.token"
    first = operator_token(p, "KIOSK_TEST_OPERATOR_TOKEN")
    assert len(first) >= 24 and operator_token(p, "KIOSK_TEST_OPERATOR_TOKEN") == first  # a restart keeps it
    assert (p.stat().st_mode & 0o777) == 0o600
    monkeypatch.setenv("KIOSK_TEST_OPERATOR_TOKEN", "from-the-environment")
    assert operator_token(p, "KIOSK_TEST_OPERATOR_TOKEN") == "from-the-environment"
