"""Round trips through the simulator over a real pty and a TCP socket."""
from __future__ import annotations

import pytest

from firmware_bridge.messages import (
    BuzzerPattern,
    Cmd,
    Evt,
    Flag,
    LedColor,
    LedPattern,
    LightChannel,
    Status,
)
from firmware_bridge.peripherals import Peripherals
from firmware_bridge.session import Link, LinkState
from firmware_bridge.sim import Simulator, VirtualMcu
from kiosk.errors import DeviceError

from .conftest import FAST, wait_for


@pytest.mark.parametrize("kind", ["pty", "tcp"])
def test_echo_round_trips(kind: str, sim: Simulator, tcp_sim: Simulator) -> None:
    s = sim if kind == "pty" else tcp_sim
    with Link(s.url, timing=FAST) as link:
        info = link.wait_connected(3)
        assert info.model == "KM-100 sim" and info.firmware == (1, 0, 0) and link.protocol == 1
        for i in range(200):
            payload = bytes([i]) * (i % 50) + i.to_bytes(2, "little")
            rsp = link.request(Cmd.ECHO, payload)
            assert rsp.ok and rsp.data == payload
        big = (bytes(range(256)) * 4)[:1023]
        assert link.request(Cmd.ECHO, big).data == big  # a maximum-size response frame
        assert link.request(Cmd.ECHO, big + b"!").status == Status.BAD_PAYLOAD
        # every command executed exactly once, even if a slow scheduler caused a retransmission
        assert s.mcu.commands.count(Cmd.ECHO) == 202


def test_peripherals_change_device_state(link: Link, sim: Simulator) -> None:
    p = Peripherals(link)
    p.light(LightChannel.FILL, 80)
    p.light(LightChannel.IR, 35)
    p.led(LedColor.AMBER, LedPattern.FAST_BLINK)
    p.buzz(BuzzerPattern.DOUBLE, 2)
    st = p.status()
    assert (st.fill_level, st.ir_level, st.led_color, st.led_pattern) == (80, 35, LedColor.AMBER, LedPattern.FAST_BLINK)
    assert (sim.mcu.fill, sim.mcu.ir) == (80, 35)
    assert p.self_test() == {k: True for k in ("keypad", "printer", "card_reader", "fill_light", "ir_light", "buzzer", "led")}


def test_printer_passes_bytes_through_and_reports_paper(link: Link, sim: Simulator) -> None:
    p = Peripherals(link)
    job = bytes(range(256)) * 10  # several frames' worth
    r = p.print_escpos(job)
    assert r.printed and r.bytes_sent == len(job)
    assert bytes(sim.mcu.printed) == job
    sim.mcu.paper_out(True)
    r = p.print_escpos(b"\x1b@hello\n")
    assert not r.printed and r.status == "paper_out" and r.paper_out
    assert bytes(sim.mcu.printed) == job  # nothing printed without paper
    sim.mcu.paper_out(False)
    sim.mcu.cover_open(True)
    r = p.print_escpos(b"\x1b@hello\n")
    assert r.status == "cover_open" and r.cover_open
    assert p.self_test()["printer"] is False


def test_events_arrive_once_and_in_order(link: Link, sim: Simulator) -> None:
    got: list[tuple[int, bytes]] = []
    link.add_listener(lambda c, p: got.append((c, p)) if c != Evt.BOOT else None)
    sim.mcu.press_keys("123")  # keypad disabled: the device drops them
    Peripherals(link).keypad(True)
    sim.mcu.press_keys("4567X\b\r\x1b")
    sim.mcu.insert_card(bytes.fromhex("3B8F8001"))
    sim.mcu.tamper(True)
    sim.mcu.paper_out(True)
    wait_for(lambda: len(got) == 11, what="11 events")
    keys = [p for c, p in got if c == Evt.KEY]
    assert b"".join(keys) == b"4567X\b\r\x1b"
    assert (Evt.CARD, bytes.fromhex("01 04 3B8F8001")) in got
    assert (Evt.TAMPER, b"\x01") in got
    assert (Evt.PRINTER, bytes((Flag.PAPER_OUT,))) in got
    card = Peripherals(link).card()
    assert card.present and card.atr == bytes.fromhex("3B8F8001")


def test_key_digits_never_reach_the_frame_log(link: Link, sim: Simulator) -> None:
    Peripherals(link).keypad(True)
    sim.mcu.press_keys("7")
    wait_for(lambda: any(f.summary.startswith("EVT #") and " KEY " in f.summary for f in link.ring.snapshot()), what="key frame logged")
    (f,) = [f for f in link.ring.snapshot() if f.summary.startswith("EVT #") and " KEY " in f.summary]
    assert "redacted" in f.summary and "37" not in f.hex.replace(" ", "")[14:]


def test_unknown_command_and_bad_payload_are_values(link: Link) -> None:
    assert link.request(0x7E).status == Status.UNKNOWN_COMMAND
    rsp = link.request(Cmd.LIGHT_SET, b"\x00\xff")
    assert rsp.status == Status.BAD_PAYLOAD
    with pytest.raises(DeviceError) as ei:
        rsp.check("fill light")
    assert ei.value.code == "device_bad_payload" and "fill light" in ei.value.message


def test_version_negotiation_picks_the_highest_common(sim: Simulator) -> None:
    sim.mcu.protocols = (1, 7)
    with Link(sim.url, timing=FAST) as link:
        assert link.wait_connected(3).protocol == 1


def test_no_common_version_is_reported_and_not_connected(tmp_path) -> None:
    with Simulator(VirtualMcu(protocols=(2, 3)), link=tmp_path / "mcu") as s, Link(s.url, timing=FAST) as link:
        with pytest.raises(DeviceError) as ei:
            link.wait_connected(0.5)
        assert ei.value.code == "disconnected"
        assert "protocol version" in (link.last_error or "")
        assert link.state != LinkState.CONNECTED


def test_loop_url_opens_and_times_out_cleanly() -> None:
    """loop:// echoes our own REQ back: not a device, so no HELLO response; the link says why."""
    with Link("loop://", timing=FAST) as link:
        with pytest.raises(DeviceError):
            link.wait_connected(0.4)
        assert "no response" in (link.last_error or "")


def test_bad_url_is_a_clear_error() -> None:
    with Link("/dev/does-not-exist", timing=FAST) as link:
        with pytest.raises(DeviceError) as ei:
            link.wait_connected(0.3)
        assert "/dev/does-not-exist" in ei.value.message


def test_rfc2217_url_through_a_port_server(sim: Simulator) -> None:
    from firmware_bridge.sim import Rfc2217Server

    server = Rfc2217Server(sim.url).start()
    try:
        with Link(server.url, timing=FAST) as link:
            link.wait_connected(5)
            for i in range(50):
                assert link.request(Cmd.ECHO, b"%d" % i).data == b"%d" % i
            # binary data containing the telnet IAC byte (0xFF) survives the escaping
            assert link.request(Cmd.ECHO, b"\xff\xff\xa5\xff").data == b"\xff\xff\xa5\xff"
    finally:
        server.close()
