"""Gaps found by the bridge audit (issue 6): each test failed before its fix."""
from __future__ import annotations

import time

import httpx
import pytest
import serial

from firmware_bridge.client import BridgeClient
from firmware_bridge.frame import Deframer, Frame, FrameType, encode
from firmware_bridge.messages import Cmd, Evt, Status
from firmware_bridge.session import Link
from firmware_bridge.sim import Simulator, VirtualMcu
from kiosk.errors import DeviceError

from .conftest import FAST


def _raw_host(s: Simulator):
    port = serial.serial_for_url(s.url, timeout=0.02)
    df = Deframer()

    def rx(seconds: float = 0.15) -> list[Frame]:
        out: list = []
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            data = port.read(4096)
            if data:
                out += [f for f in df.feed(data) if isinstance(f, Frame)]
        return out

    return port, rx


def test_hello_with_min_above_max_is_bad_payload(sim: Simulator) -> None:
    """protocol.md §4: proto_min > proto_max is BAD_PAYLOAD (was UNSUPPORTED_VERSION)."""
    port, rx = _raw_host(sim)
    port.write(encode(FrameType.REQ, 7, Cmd.HELLO, bytes((3, 2))))
    rsps = [f for f in rx() if f.type == FrameType.RSP]
    assert [f.payload[:1] for f in rsps] == [bytes((Status.BAD_PAYLOAD,))]
    port.close()


def test_nak_of_an_event_resends_the_event_not_a_cached_response_with_the_same_seq(sim: Simulator) -> None:
    """EVT and REQ SEQs are independent: a NAK for EVT seq N must not replay the cached RSP of REQ seq N."""
    port, rx = _raw_host(sim)
    for f in rx():  # BOOT, seq 0
        if f.type == FrameType.EVT:
            port.write(encode(FrameType.ACK, f.seq, f.cmd))
    port.write(encode(FrameType.REQ, 1, Cmd.HELLO, bytes((1, 1))))
    port.write(encode(FrameType.REQ, 2, Cmd.KEYPAD_ENABLE, b"\x01"))
    rx()
    port.write(encode(FrameType.REQ, 1, Cmd.PING))  # cached RSP for REQ seq 1
    rx()
    sim.mcu.press_keys("5")  # EVT seq 1
    evts = [f for f in rx(0.05) if f.type == FrameType.EVT]
    assert evts and evts[0].seq == 1
    port.write(encode(FrameType.NAK, 1, Evt.KEY, b"\x01"))
    again = rx(0.05)  # the NAK's answer (and maybe the event's own 100 ms retransmission)
    assert again and {(f.type, f.cmd) for f in again} == {(FrameType.EVT, Evt.KEY)}, again
    port.close()


def test_incompatible_version_error_names_both_ranges_and_what_to_do(sim: Simulator) -> None:
    sim.mcu.protocols = (2, 3)
    with Link(sim.url, timing=FAST) as link:
        with pytest.raises(DeviceError):
            link.wait_connected(0.5)
        err = link.last_error or ""
        assert "2..3" in err and "1..1" in err, err
        assert "update the bridge software" in err, err
        with pytest.raises(DeviceError) as ei:
            link.request(Cmd.PING)
        assert "2..3" in ei.value.message and "cable" not in ei.value.message, ei.value.message


def test_disconnected_error_says_what_to_do(sim: Simulator) -> None:
    with Link(sim.url, timing=FAST) as link:
        link.wait_connected(3)
        sim.unplug(1.0)
        deadline = time.monotonic() + 2
        while link.state.value == "connected" and time.monotonic() < deadline:
            time.sleep(0.01)
        with pytest.raises(DeviceError) as ei:
            link.request(Cmd.PING)
        assert ei.value.code == "disconnected"
        assert "cable" in ei.value.message and "reconnect" in ei.value.message, ei.value.message


def test_bridge_down_error_says_how_to_start_it() -> None:
    with BridgeClient("http://127.0.0.1:9", http=httpx.Client(base_url="http://127.0.0.1:9", timeout=0.5)) as c:
        with pytest.raises(DeviceError) as ei:
            c.status()
        assert ei.value.code == "bridge_down"
        assert "kiosk-bridge" in ei.value.message, ei.value.message


def test_id_entry_survives_an_mcu_reboot(link: Link, sim: Simulator) -> None:
    """A device boots with the keypad off (protocol.md §4): an entry in progress must switch it on again,
    or the patient's key presses vanish and the entry just times out."""
    from fastapi.testclient import TestClient

    from firmware_bridge.bridge import Bridge
    from firmware_bridge.service import create_app

    from .conftest import wait_for

    app = create_app(Bridge(link), sim=sim)
    with TestClient(app) as http:
        client = BridgeClient("http://testserver", http=http, token=app.state.token)
        e = client.start_id_entry(timeout_s=30)
        sim.mcu.press_keys("110105")
        wait_for(lambda: client.id_entry(e["session_id"])["length"] == 6, what="6 keys")
        sim.mcu.reboot()
        wait_for(lambda: sim.mcu.keypad, what="keypad switched on again after the reboot")
        sim.mcu.press_keys("19491231002X\r")
        done = client.wait_id_entry(e["session_id"], poll=0.01, timeout=3)
        assert done["state"] == "accepted" and done["value"] == "11010519491231002X"
