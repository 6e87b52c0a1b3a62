"""`kiosk fleet keygen|register|publish|rollout` against a running fleet service; the terminal's
real key store (kiosk.security.keystore) signs its beats, in Ed25519 and in SM2."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from kiosk.cli import main
from kiosk.fleet import artifacts as art
from kiosk.fleet.agent import FleetAgent, StaticStatus, signer_from_keystore
from kiosk.fleet.app import create_app
from kiosk.fleet.notify import RecordingNotifier
from kiosk.security.keystore import KeyStore
from tests.app.screen.server import serve

from .conftest import TOKEN
from .test_rollout import make_pack


def test_operator_commands_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("KIOSK_FLEET_ADMIN_TOKEN", TOKEN)
    monkeypatch.setenv("KIOSK_SQLITE_SYNCHRONOUS", "NORMAL")
    assert main(["fleet", "keygen", "--out", str(tmp_path / "op")]) == 0
    assert json.loads(capsys.readouterr().out)["public"].endswith("operator.pub")
    app = create_app(f"sqlite:///{tmp_path}/fleet.db", data_dir=tmp_path, notifier=RecordingNotifier(),
                     operator_pub=tmp_path / "op" / "operator.pub", job=False)
    with serve(app) as url:
        agents = []
        for alg, name in (("Ed25519", "ks-ed"), ("SM2", "ks-sm2")):
            ks = KeyStore.init(tmp_path / name)
            assert main(["fleet", "register", "--url", url, "--keys", str(tmp_path / name),
                         "--institution", "H37020200001", "--district", "370202", "--alg", alg]) == 0
            agents.append(FleetAgent(url, signer_from_keystore(ks, alg=alg), StaticStatus(),
                                     trust_key=art.load_public(tmp_path / "op" / "operator.pub"),
                                     state_dir=tmp_path / f"agent-{name}"))
        capsys.readouterr()
        assert all(a.beat() is not None for a in agents)
        pack = tmp_path / "pack"
        make_pack(tmp_path, "cli")
        (tmp_path / "pack-cli").rename(pack)
        assert main(["fleet", "publish", "--url", url, "--key", str(tmp_path / "op" / "operator.key"),
                     "--kind", "model_pack", "--version", "2026.12.3", str(pack)]) == 0
        sha = json.loads(capsys.readouterr().out)["sha256"]
        assert main(["fleet", "rollout", "start", sha, "--url", url]) == 0
        rid = json.loads(capsys.readouterr().out)["id"]
        for step in ("advance", "advance"):
            assert main(["fleet", "rollout", step, str(rid), "--url", url]) == 0
        assert json.loads(capsys.readouterr().out.split("\n}\n")[-1] or "{}") is not None
        for a in agents:
            a.beat()
        assert all(a.installed["model_pack"].current == sha for a in agents)
        assert main(["fleet", "rollout", "status", str(rid), "--url", url]) == 0
        st = json.loads(capsys.readouterr().out)
        assert st["percent"] == 100 and st["terminals"] == {"applied": 2}
        # a wrong token is one clear line and exit 2
        assert main(["fleet", "rollout", "halt", str(rid), "--url", url, "--token", "nope"]) == 2
        err = capsys.readouterr().err
        assert "401" in err and len(err.strip().splitlines()) == 1
        # a pack signed with another key is refused at publish
        other = tmp_path / "other"
        art.write_keypair(other)
        assert main(["fleet", "publish", "--url", url, "--key", str(other / "operator.key"),
                     "--kind", "model_pack", "--version", "x1", str(pack)]) == 2
