"""`kiosk crypto envelope`, `kiosk crypto open`, `kiosk audit verify`, `kiosk keys`."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from kiosk.cli import main
from kiosk.security.audit import AuditLog
from kiosk.security.envelope import open_envelope
from kiosk.security.keystore import KeyStore
from kiosk.security.sm import Sm2PrivateKey, load_private_pem

APP_ID, SECRET = "43AF047BBA47FC8A1AE8EFB232BDBBCB", "4117E877F5FA0A0188891283E4B617D5"


@pytest.fixture()
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("KIOSK_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("KIOSK_KEY_PASSPHRASE", raising=False)
    return tmp_path


def test_envelope_with_a_pem_key(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = Sm2PrivateKey.generate()
    (data_dir / "k.pem").write_text(key.to_pem())
    (data_dir / "p.json").write_text(json.dumps({"psn_no": "P1", "amt": "1.00"}))
    assert main(["crypto", "envelope", "--app-id", APP_ID, "--app-secret", SECRET,
                 "--sm2-key", str(data_dir / "k.pem"), str(data_dir / "p.json")]) == 0
    env = json.loads(capsys.readouterr().out)
    assert set(env) == {"appId", "encType", "signType", "timestamp", "version", "encData", "signData"}
    assert open_envelope(env, app_secret=SECRET, sm2_public_key=key.public_key()).payload == {"psn_no": "P1", "amt": "1.00"}
    (data_dir / "env.json").write_text(json.dumps(env))
    (data_dir / "pub.pem").write_text(key.public_key().to_pem())
    assert main(["crypto", "open", "--app-id", APP_ID, "--app-secret", SECRET, "--sm2-pub", str(data_dir / "pub.pem"),
                 str(data_dir / "env.json")]) == 0
    assert json.loads(capsys.readouterr().out) == {"psn_no": "P1", "amt": "1.00"}
    (data_dir / "env.json").write_text(json.dumps({**env, "timestamp": "1"}))
    assert main(["crypto", "open", "--app-id", APP_ID, "--app-secret", SECRET, "--sm2-pub", str(data_dir / "pub.pem"),
                 str(data_dir / "env.json")]) == 2
    assert "signData" in capsys.readouterr().err


def test_envelope_errors_are_one_line(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (data_dir / "p.json").write_text("[1, 2]")
    assert main(["crypto", "envelope", "--app-id", APP_ID, "--app-secret", SECRET, str(data_dir / "p.json")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "payload" in err
    (data_dir / "p.json").write_text("{")
    assert main(["crypto", "envelope", "--app-id", APP_ID, "--app-secret", SECRET, str(data_dir / "p.json")]) == 2
    assert "not valid JSON" in capsys.readouterr().err
    (data_dir / "p.json").write_text("{}")
    # no --sm2-key and no key store yet
    assert main(["crypto", "envelope", "--app-id", APP_ID, "--app-secret", SECRET, str(data_dir / "p.json")]) == 2
    assert "keys init" in capsys.readouterr().err


def test_keys_and_audit_verify(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keys", "init", "--device-id", "KIOSK-CLI-1"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["device_id"] == "KIOSK-CLI-1"
    assert main(["keys", "rotate"]) == 0
    second = json.loads(capsys.readouterr().out)
    assert second["kid"] != first["kid"]
    assert main(["keys", "show"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["versions"] == [first["kid"], second["kid"]] and "BEGIN PUBLIC KEY" in shown["sm2_pem"]
    (data_dir / "p.json").write_text('{"a": "b"}')
    assert main(["crypto", "envelope", "--app-id", APP_ID, "--app-secret", SECRET, str(data_dir / "p.json")]) == 0
    capsys.readouterr()

    ks = KeyStore.open(data_dir / "keys")
    log = AuditLog(data_dir / "audit.log", ks.audit_key())
    for i in range(4):
        log.append("admin_action", action=f"a{i}")
    assert main(["audit", "verify"]) == 0
    assert "intact: 5 records" in capsys.readouterr().out  # the rotation's key_rotation record + 4
    lines = (data_dir / "audit.log").read_bytes().splitlines(keepends=True)
    (data_dir / "audit.log").write_bytes(lines[0] + lines[1] + lines[3] + lines[4])
    assert main(["audit", "verify", str(data_dir / "audit.log")]) == 1
    assert "record 3" in capsys.readouterr().err
    # tail removal through the CLI: exit 1 naming the first removed record
    (data_dir / "audit.log").write_bytes(b"".join(lines[:4]))
    assert main(["audit", "verify", str(data_dir / "audit.log")]) == 1
    assert "record 5" in capsys.readouterr().err
    # no key store to check with: a one-line error, exit 2
    assert main(["audit", "verify", str(data_dir / "audit.log"), "--key-store", str(data_dir / "nope")]) == 2


def test_envelope_with_an_encrypted_pem_key(data_dir: Path, capsys: pytest.CaptureFixture[str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The passphrase of an encrypted --sm2-key comes from env:VAR or file:PATH, never the command line."""
    if shutil.which("openssl") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("openssl command line is missing on the CI machine")
        pytest.skip("needs openssl to write an encrypted PEM")
    subprocess.run(["openssl", "genpkey", "-algorithm", "SM2", "-aes-256-cbc", "-pass", "pass:pw 1",
                    "-out", str(data_dir / "k.pem")], check=True, capture_output=True)
    key = load_private_pem((data_dir / "k.pem").read_text(), "pw 1")
    (data_dir / "p.json").write_text('{"a": "b"}')
    (data_dir / "pw.txt").write_text("pw 1\n")
    monkeypatch.setenv("SM2_PW", "pw 1")
    base = ["crypto", "envelope", "--app-id", APP_ID, "--app-secret", SECRET, "--sm2-key", str(data_dir / "k.pem")]
    for src in ("env:SM2_PW", f"file:{data_dir / 'pw.txt'}"):
        assert main([*base, "--sm2-key-pass", src, str(data_dir / "p.json")]) == 0
        env = json.loads(capsys.readouterr().out)
        assert open_envelope(env, app_secret=SECRET, sm2_public_key=key.public_key()).payload == {"a": "b"}
    for extra, words in (([], "--sm2-key-pass"), (["--sm2-key-pass", "pass:pw 1"], "env:VAR"),
                         (["--sm2-key-pass", "env:NOT_SET_X"], "NOT_SET_X"),
                         (["--sm2-key-pass", f"file:{data_dir / 'p.json'}"], "wrong passphrase")):
        assert main([*base, *extra, str(data_dir / "p.json")]) == 2
        err = capsys.readouterr().err
        assert words in err and err.count("\n") == 1 and "Traceback" not in err, err
    # a binary file given as the key is a one-line error too
    (data_dir / "bin.pem").write_bytes(bytes(range(256)))
    assert main(["crypto", "envelope", "--app-id", APP_ID, "--app-secret", SECRET, "--sm2-key",
                 str(data_dir / "bin.pem"), str(data_dir / "p.json")]) == 2
    assert "sm2_key" in capsys.readouterr().err


def test_audit_verify_on_a_directory_is_a_one_line_error(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keys", "init"]) == 0
    capsys.readouterr()
    assert main(["audit", "verify", str(data_dir)]) == 2
    err = capsys.readouterr().err
    assert "not an audit log file" in err and err.count("\n") == 1
    assert main(["audit", "verify", str(data_dir / "none.log")]) == 1  # a missing log is a broken trail
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("text, expected", [
    ("[" * 100_000, "nested too deeply"),  # was a RecursionError traceback
    ('{"amt": "1.00", "amt": "9.00"}', "twice"),  # was silently last-wins
    ('{"a": {"b": 1, "b": 2}}', "twice"),
])
def test_envelope_payload_nested_too_deep_or_with_duplicate_keys_is_one_line(
        data_dir: Path, capsys: pytest.CaptureFixture[str], text: str, expected: str) -> None:
    key = Sm2PrivateKey.generate()
    (data_dir / "k.pem").write_text(key.to_pem())
    (data_dir / "p.json").write_text(text)
    assert main(["crypto", "envelope", "--app-id", APP_ID, "--app-secret", SECRET,
                 "--sm2-key", str(data_dir / "k.pem"), str(data_dir / "p.json")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "payload" in err and expected in err


def test_keys_rotate_writes_a_key_rotation_audit_record(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keys", "init", "--device-id", "D-ROT"]) == 0
    old = KeyStore.open(data_dir / "keys").current_kid
    assert main(["keys", "rotate"]) == 0
    new = KeyStore.open(data_dir / "keys").current_kid
    capsys.readouterr()
    lines = [json.loads(x) for x in (data_dir / "audit.log").read_text().splitlines()]
    assert [(r["event"], r["data"]) for r in lines][-1] == ("key_rotation", {"old_kid": old, "new_kid": new})
    assert main(["audit", "verify"]) == 0
