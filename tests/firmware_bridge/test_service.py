"""The bridge's HTTP API, in-process (TestClient) and as a real subprocess."""
from __future__ import annotations

import base64
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from firmware_bridge.bridge import Bridge
from firmware_bridge.client import BridgeClient
from firmware_bridge.escpos import Receipt
from firmware_bridge.access import TOKEN_HEADER
from firmware_bridge.service import create_app
from firmware_bridge.session import Link
from firmware_bridge.sim import Simulator
from kiosk.config import ROOT
from kiosk.errors import DeviceError, InputError

from .conftest import FAST, wait_for


@pytest.fixture
def client(link: Link, sim: Simulator) -> Iterator[BridgeClient]:
    app = create_app(Bridge(link), sim=sim)
    with TestClient(app) as http:
        yield BridgeClient("http://testserver", http=http, token=app.state.token)


def test_status_reports_connection_and_firmware(client: BridgeClient) -> None:
    st = client.status()
    assert st["state"] == "connected" and st["firmware"] == "1.0.0" and st["protocol"] == 1
    assert st["peripherals"]["paper_out"] is False


def test_id_entry_session_through_the_keypad(client: BridgeClient, sim: Simulator) -> None:
    e = client.start_id_entry(timeout_s=30)
    assert e["state"] == "active" and e["display"] == ""
    assert sim.mcu.keypad  # the device now forwards keys
    sim.mcu.press_keys("110105")
    wait_for(lambda: client.id_entry(e["session_id"])["length"] == 6, what="6 keys")
    assert client.id_entry(e["session_id"])["display"] == "*****5"
    sim.mcu.press_keys("194912310021\r")  # wrong check digit
    wait_for(lambda: client.id_entry(e["session_id"])["error"], what="checksum refusal")
    got = client.id_entry(e["session_id"])
    assert got["state"] == "active" and got["value"] is None and "check character" in got["error"]
    sim.mcu.press_keys("\bX\r")
    done = client.wait_id_entry(e["session_id"], poll=0.01, timeout=3)
    assert done["state"] == "accepted" and done["value"] == "11010519491231002X"
    assert not sim.mcu.keypad  # keypad switched off again
    keys = [ev for ev in client.events() if ev["kind"] == "key"]
    assert len(keys) == 22 and all(set(ev) == {"id", "t", "kind"} for ev in keys)  # no digit logged


def test_id_entry_cancel_and_unknown_session(client: BridgeClient, sim: Simulator) -> None:
    e = client.start_id_entry()
    assert client.cancel_id_entry(e["session_id"])["state"] == "cancelled"
    with pytest.raises(InputError) as ei:
        client.id_entry("nope")
    assert ei.value.code == "not_found"


def test_peripheral_endpoints(client: BridgeClient, sim: Simulator) -> None:
    client.light("fill", 60)
    client.light("ir", 20)
    client.led("green", "pulse")
    client.buzz("double", 2)
    assert (sim.mcu.fill, sim.mcu.ir, sim.mcu.led) == (60, 20, (1, 3))
    with pytest.raises(InputError) as ei:
        client.light("ir", 101)
    assert ei.value.field == "level"
    assert client.self_test()["passed"] is True
    assert client.card() == {"present": False, "atr": ""}
    sim.mcu.insert_card(bytes.fromhex("3B6800000073C84013009000"))
    assert client.card() == {"present": True, "atr": "3B6800000073C84013009000"}


def test_print_raw_and_receipt_with_paper_status(client: BridgeClient, sim: Simulator) -> None:
    job = Receipt().title("收据").rule().kv("合计", "12.30").finish()
    r = client.print_escpos(job)
    assert r["printed"] and bytes(sim.mcu.printed) == job
    r = client.print_receipt("收据", [("合计", "12.30")])
    assert r["printed"] and bytes(sim.mcu.printed) == job * 2  # same bytes from the server-side builder
    sim.mcu.paper_out(True)
    r = client.print_escpos(b"\x1b@x\n")
    assert r == {"printed": False, "status": "paper_out", "paper_out": True, "cover_open": False, "bytes_sent": 0}
    wait_for(lambda: client.status()["peripherals"]["paper_out"], what="paper event")
    assert client.printer()["paper_out"] is True


def test_frames_for_the_technician_page(client: BridgeClient) -> None:
    client.buzz()
    frames = [f for f in client.frames(limit=10) if " BUZZER " in f["summary"]]
    assert [f["direction"] for f in frames[-2:]] == ["tx", "rx"]
    assert frames[-2]["hex"].startswith("a5 01") and frames[-1]["hex"].startswith("a5 02")
    assert frames[-1]["summary"].endswith("OK")


def test_disconnected_device_is_a_503_with_a_clear_message(client: BridgeClient, sim: Simulator, link: Link) -> None:
    sim.unplug(0.5)
    wait_for(lambda: client.status()["state"] != "connected", what="disconnected")
    with pytest.raises(DeviceError) as ei:
        client.buzz()
    assert ei.value.code == "disconnected" and "disconnected" in ei.value.message


def test_bridge_down_is_a_device_error() -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with BridgeClient(f"http://127.0.0.1:{port}", timeout=1) as c, pytest.raises(DeviceError) as ei:
        c.status()
    assert ei.value.code == "bridge_down" and "not running" in ei.value.message


def test_real_service_process_with_simulated_mcu(tmp_path) -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "firmware_bridge.service", "--serial", "sim", "--port", str(port),
         "--token-file", str(tmp_path / "run" / "token"), "--firmware-dir", str(tmp_path / "fw")],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        with BridgeClient(f"http://127.0.0.1:{port}", timeout=2, token_file=tmp_path / "run" / "token") as c:
            deadline = time.monotonic() + 20
            while True:
                try:
                    if c.status()["state"] == "connected":
                        break
                except DeviceError:
                    pass
                assert time.monotonic() < deadline and proc.poll() is None, "bridge did not come up"
                time.sleep(0.1)
            assert (tmp_path / "run" / "token").stat().st_mode & 0o777 == 0o600  # the kiosk user's only
            assert (tmp_path / "fw").is_dir()
            e = c.start_id_entry()
            assert c.sim("keys 440524188001010014<enter>") == "keys sent: 19"
            assert c.wait_id_entry(e["session_id"], poll=0.02, timeout=5)["value"] == "440524188001010014"
            assert c.print_escpos(base64.b64decode(base64.b64encode(b"\x1b@hi\n")))["printed"]
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert not (tmp_path / "run" / "token").exists()  # a stopped bridge leaves no secret behind


def test_firmware_update_endpoint_resumes_after_a_failure(tmp_path) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from firmware_bridge.firmware import sign_image
    from firmware_bridge.sim import VirtualMcu

    key = Ed25519PrivateKey.generate()
    image = sign_image(key, (2, 0, 0), os.urandom(5000))
    fw_dir = tmp_path / "firmware"
    fw_dir.mkdir()
    (fw_dir / "fw.kfw").write_bytes(image.to_bytes())
    with Simulator(VirtualMcu(trusted_key=key.public_key()), link=tmp_path / "mcu") as s, Link(s.url, timing=FAST) as link:
        link.wait_connected(3)
        app = create_app(Bridge(link, firmware_dir=fw_dir))
        with TestClient(app) as http:
            c = BridgeClient("http://testserver", http=http, token=app.state.token)
            # an earlier attempt was interrupted after two chunks (1020 bytes each)
            from firmware_bridge.firmware import FirmwareUpdater

            FirmwareUpdater(link).update(image, stop_after_chunks=2)
            job = c.firmware_update("fw.kfw")
            assert job["state"] == "running" and job["size"] == 5000
            wait_for(lambda: c.firmware_job()["state"] != "running", timeout=10, what="update finished")
            assert c.firmware_job()["state"] == "done" and s.mcu.firmware == (2, 0, 0)
            assert c.firmware_job()["resumed_from"] == 2040
            assert c.status()["firmware"] == "2.0.0"
            with pytest.raises(InputError) as ei:
                c.firmware_update("missing.kfw")
            assert ei.value.field == "name" and ei.value.code == "firmware_unavailable"
            (fw_dir / "bad.kfw").write_bytes(image.to_bytes()[:-1])
            with pytest.raises(InputError) as ei:
                c.firmware_update("bad.kfw")
            assert "truncated" in ei.value.message


def test_bad_input_has_the_documented_error_shape(link: Link, sim: Simulator) -> None:
    """docs/protocol.md §11: {"error": {code, message, field}} for every 422, schema errors included."""
    app = create_app(Bridge(link), sim=sim)
    with TestClient(app, headers={TOKEN_HEADER: app.state.token}) as http:
        for method, path, kw, field in [
            ("post", "/v1/light", {"json": {"channel": "uv", "level": 5}}, "channel"),
            ("post", "/v1/buzzer", {"json": {"pattern": "short", "repeat": 11}}, "repeat"),
            ("post", "/v1/print/receipt", {"json": {"title": "T", "lines": [["a", "b", "c"]]}}, "lines.0"),
            ("get", "/v1/frames?limit=abc", {}, "limit"),
            ("post", "/v1/light", {"content": b"{not json", "headers": {"content-type": "application/json"}}, "body"),
        ]:
            r = getattr(http, method)(path, **kw)
            assert r.status_code == 422, path
            err = r.json()["error"]
            assert err["code"] == "invalid_input" and err["field"] == field and err["message"], (path, err)


def test_service_cli_refuses_a_bad_or_busy_port_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    from firmware_bridge.service import main

    with pytest.raises(SystemExit) as ei:
        main(["--serial", "socket://127.0.0.1:1", "--port", "99999"])
    assert ei.value.code == 2 and "must be 1..65535" in capsys.readouterr().err
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["--serial", "socket://127.0.0.1:1", "--port", str(port)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"service: cannot listen on 127.0.0.1:{port}: Address already in use"]
