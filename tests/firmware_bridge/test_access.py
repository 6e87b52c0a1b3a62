"""Who may use the bridge's local API (per-boot token) and which files it installs firmware from.

The scenario of issue 13 (item 6): a hostile local process talks to 127.0.0.1:8730
while the kiosk app's ID entry is active; and (item 5) firmware requests that name
FIFOs, devices, symlinks out, absolute or ../ paths, over-size and missing files.
"""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from firmware_bridge.access import (TOKEN_HEADER, UNAVAILABLE_MESSAGE, new_token, read_token_file, token_matches,
                                    write_token_file)
from firmware_bridge.bridge import Bridge
from firmware_bridge.client import BridgeClient
from firmware_bridge.firmware import sign_image
from firmware_bridge.service import create_app
from firmware_bridge.session import Link
from firmware_bridge.sim import Simulator, VirtualMcu
from kiosk.config import ROOT
from kiosk.errors import DeviceError

from .conftest import FAST, wait_for

ID = "11010519491231002X"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------ the token


def test_token_file_is_private_atomic_and_read_back(tmp_path: Path) -> None:
    t = new_token()
    assert len(bytes.fromhex(t)) == 32
    p = write_token_file(tmp_path / "run" / "token", t)
    assert stat.S_IMODE(p.stat().st_mode) == 0o600
    assert read_token_file(p) == t
    t2 = new_token()
    write_token_file(p, t2)  # a restart replaces it
    assert read_token_file(p) == t2 and [x.name for x in p.parent.iterdir()] == ["token"]  # no temp left
    p.write_text("not a token\n")
    assert read_token_file(p) is None and read_token_file(tmp_path / "missing") is None
    os.mkfifo(tmp_path / "fifo")
    assert read_token_file(tmp_path / "fifo") is None  # no hang on a FIFO planted where the token should be
    assert token_matches(t, t) and not token_matches(None, t) and not token_matches(t2, t)
    assert not token_matches("é" * 64, t)


@pytest.fixture
def served(link: Link, sim: Simulator) -> Iterator[tuple[str, str]]:
    """The bridge on a real loopback port: (url, token)."""
    from kiosk.app.runtime import ServerThread

    app = create_app(Bridge(link), sim=sim)
    port = free_port()
    server = ServerThread(app, port=port).start()
    try:
        yield f"http://127.0.0.1:{port}", app.state.token
    finally:
        server.stop()


HOSTILE = r"""
import json, sys, httpx
url, sid, token_guess = sys.argv[1], sys.argv[2], sys.argv[3]
out = []
with httpx.Client(base_url=url, timeout=5) as c:
    for headers in ({}, {"X-Bridge-Token": token_guess}, {"X-Bridge-Token": ""}):
        for method, path, body in [
            ("POST", "/v1/keypad/id-entry", {"timeout_s": 60, "reveal_last": 4}),
            ("GET", f"/v1/keypad/id-entry/{sid}", None),
            ("DELETE", f"/v1/keypad/id-entry/{sid}", None),
            ("GET", "/v1/keypad/id-entry/nope", None),
            ("GET", "/v1/frames", None),
            ("GET", "/v1/events", None),
            ("POST", "/v1/sim", {"line": "keys 999<enter>"}),
            ("POST", "/v1/print", {"escpos_b64": "aGk="}),
            ("POST", "/v1/firmware", {"name": "x.kfw"}),
            ("POST", "/v1/led", {"color": "red"}),
            ("GET", "/openapi.json", None),
        ]:
            r = c.request(method, path, json=body, headers=headers)
            out.append([method, path, r.status_code, r.text])
    out.append(["GET", "/v1/status", c.get("/v1/status").status_code, ""])
print(json.dumps(out))
"""


def test_a_hostile_local_process_cannot_take_over_or_read_the_kiosks_id_entry(served, sim: Simulator) -> None:
    url, token = served
    kiosk = BridgeClient(url, token=token)
    e = kiosk.start_id_entry(timeout_s=60)
    sim.mcu.press_keys(ID[:10])
    wait_for(lambda: kiosk.id_entry(e["session_id"])["length"] == 10, what="10 keys")
    stolen_looking = new_token()  # right shape, wrong secret
    r = subprocess.run([sys.executable, "-c", HOSTILE, url, e["session_id"], stolen_looking], capture_output=True,
                       text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    answers = json.loads(r.stdout)
    refused = [a for a in answers if a[1] != "/v1/status"]
    assert {(a[2], a[3]) for a in refused} == {(401, refused[0][3])}  # one answer for every call
    assert json.loads(refused[0][3])["error"]["code"] == "bridge_unauthorized"
    assert ID[:10] not in r.stdout and "*" not in r.stdout  # nothing of the entry leaked
    assert answers[-1][2] == 200  # the watchdog's liveness probe stays open
    # the kiosk's entry is untouched: still active, keypad on, and it completes with the patient's number
    # (length still 10: the hostile "keys 999" never reached the simulated keypad)
    got = kiosk.id_entry(e["session_id"])
    assert got["state"] == "active" and got["length"] == 10 and sim.mcu.keypad
    sim.mcu.press_keys(ID[10:] + "\r")
    done = kiosk.wait_id_entry(e["session_id"], poll=0.01, timeout=5)
    assert done["state"] == "accepted" and done["value"] == ID
    kiosk.close()


def test_the_client_reads_the_token_file_and_follows_a_restarted_bridge(link: Link, sim: Simulator,
                                                                         tmp_path: Path) -> None:
    app = create_app(Bridge(link), sim=sim)
    tf = tmp_path / "token"
    write_token_file(tf, new_token())  # the previous run's secret
    with TestClient(app) as http:
        c = BridgeClient("http://testserver", http=http, token_file=tf)
        assert c.status()["state"] == "connected"  # open without a token
        with pytest.raises(DeviceError) as ei:
            c.start_id_entry()
        assert ei.value.code == "bridge_unauthorized" and str(tf) in ei.value.message
        write_token_file(tf, app.state.token)  # the bridge (re)started and wrote its new secret
        e = c.start_id_entry()
        assert c.cancel_id_entry(e["session_id"])["state"] == "cancelled"
        nobody = BridgeClient("http://testserver", http=http, token_file=tmp_path / "missing")
        with pytest.raises(DeviceError) as ei:
            nobody.frames()
        assert ei.value.code == "bridge_unauthorized"


# ------------------------------------------------------------------------------ firmware files

MAX = 64 * 1024


@pytest.fixture
def fw(tmp_path: Path) -> Iterator[tuple[TestClient, Path, Simulator, bytes]]:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    good = sign_image(key, (2, 1, 0), os.urandom(3000)).to_bytes()
    d = tmp_path / "firmware"
    d.mkdir()
    outside = tmp_path / "outside.kfw"
    outside.write_bytes(good)  # a perfectly good image, but not in the firmware directory
    with Simulator(VirtualMcu(trusted_key=key.public_key()), link=tmp_path / "mcu") as s, \
            Link(s.url, timing=FAST) as link:
        link.wait_connected(3)
        app = create_app(Bridge(link, firmware_dir=d, firmware_max_bytes=MAX))
        with TestClient(app, headers={TOKEN_HEADER: app.state.token}) as http:
            yield http, d, s, good


def _refusals(http: TestClient, d: Path, good: bytes) -> dict[str, tuple[int, str]]:
    tmp = d.parent
    os.mkfifo(d / "pipe.kfw")
    (d / "zero.kfw").symlink_to("/dev/zero")
    (d / "out.kfw").symlink_to(tmp / "outside.kfw")
    (d / "in.kfw").write_bytes(good)
    (d / "alias.kfw").symlink_to(d / "in.kfw")  # a link is refused even when it points inside
    (d / "big.kfw").write_bytes(good + b"\0" * (MAX + 1 - len(good)))
    (d / "dir.kfw").mkdir()
    names = {
        "fifo": "pipe.kfw", "dev_zero": "/dev/zero", "dev_zero_link": "zero.kfw", "symlink_out": "out.kfw",
        "symlink_in": "alias.kfw", "absolute": str(tmp / "outside.kfw"), "dotdot": "../outside.kfw",
        "dotdot_nested": "x/../../outside.kfw", "over_size": "big.kfw", "missing": "missing.kfw",
        "directory": "dir.kfw", "dot": ".", "hidden": ".in.kfw", "nul": "in.kfw\0", "not_kfw": "in.bin",
    }
    out: dict[str, tuple[int, str]] = {}
    for what, name in names.items():
        res: list = []
        t = threading.Thread(target=lambda: res.append(http.post("/v1/firmware", json={"name": name})), daemon=True)
        t.start()
        t.join(10)
        assert not t.is_alive(), f"{what}: the request hung a worker"
        out[what] = (res[0].status_code, res[0].text)
    return out


def test_every_refused_firmware_file_gets_the_same_answer_and_none_hangs(fw) -> None:
    http, d, sim, good = fw
    answers = _refusals(http, d, good)
    assert len(set(answers.values())) == 1, answers  # no existence oracle
    status, body = next(iter(answers.values()))
    err = json.loads(body)["error"]
    assert status == 404 and err["code"] == "firmware_unavailable" and err["message"] == UNAVAILABLE_MESSAGE
    assert http.get("/v1/firmware").json()["state"] == "idle"  # nothing started
    assert sim.mcu.firmware == (1, 0, 0)


def test_a_signed_image_in_the_firmware_directory_still_installs(fw) -> None:
    http, d, sim, good = fw
    (d / "mcu-2.1.0.kfw").write_bytes(good)
    r = http.post("/v1/firmware", json={"name": "mcu-2.1.0.kfw"})
    assert r.status_code == 200 and r.json()["state"] == "running", r.text
    wait_for(lambda: http.get("/v1/firmware").json()["state"] != "running", timeout=10, what="update finished")
    assert http.get("/v1/firmware").json()["state"] == "done" and sim.mcu.firmware == (2, 1, 0)


def test_without_a_firmware_directory_nothing_installs(link: Link) -> None:
    app = create_app(Bridge(link))
    with TestClient(app, headers={TOKEN_HEADER: app.state.token}) as http:
        r = http.post("/v1/firmware", json={"name": "x.kfw"})
    assert r.status_code == 404 and r.json()["error"]["message"] == UNAVAILABLE_MESSAGE
