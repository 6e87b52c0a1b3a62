"""Fault injection through the simulator: the link heals, nothing runs twice, nothing is lost."""
from __future__ import annotations

import threading
import time

import pytest

from firmware_bridge.frame import Frame, FrameType
from firmware_bridge.messages import Cmd, Evt, Status
from firmware_bridge.peripherals import Peripherals
from firmware_bridge.session import Link, LinkState, Timing
from firmware_bridge.sim import Simulator
from kiosk.errors import DeviceError

from .conftest import FAST, wait_for


def echo(link: Link, data: bytes) -> None:
    rsp = link.request(Cmd.ECHO, data)
    assert rsp.ok and rsp.data == data


def test_corrupted_crc_in_a_response_is_naked_and_resent(link: Link, sim: Simulator) -> None:
    sim.mcu.faults.corrupt_tx = 1
    echo(link, b"once")
    assert link.stats.naks_sent >= 1
    assert sim.mcu.commands.count(Cmd.ECHO) == 1  # resent from the device's cache, not re-executed


def test_truncated_response_is_abandoned_and_the_request_retransmitted(link: Link, sim: Simulator) -> None:
    sim.mcu.faults.truncate_tx = 1
    echo(link, b"half")
    assert link.stats.retransmits >= 1
    assert sim.mcu.commands.count(Cmd.ECHO) == 1


def test_lost_request_is_retransmitted(link: Link, sim: Simulator) -> None:
    sim.mcu.faults.drop_rx = 2
    echo(link, b"lost twice")
    assert link.stats.retransmits >= 2


def test_garbage_between_frames(link: Link, sim: Simulator) -> None:
    for junk in (b"\x00" * 50, b"\xa5" * 30, bytes(range(256)), b"\xa5\x02\x01\x02\xff\x03"):
        sim.mcu.inject(junk)
        echo(link, junk[:8])
    assert sim.mcu.commands.count(Cmd.ECHO) == 4


def test_garbage_from_the_host_side_is_skipped_by_the_device(link: Link, sim: Simulator) -> None:
    link.write_raw(b"\xa5\xa5\x00\x13\x37" + bytes(range(200)))
    echo(link, b"after garbage")


def test_duplicate_event_frames_are_delivered_once(link: Link, sim: Simulator) -> None:
    got: list[bytes] = []
    link.add_listener(lambda c, p: got.append(p) if c == Evt.KEY else None)
    Peripherals(link).keypad(True)
    sim.mcu.faults.duplicate_tx = 3
    sim.mcu.press_keys("123")
    wait_for(lambda: len(got) == 3, what="3 keys")
    time.sleep(0.05)
    assert got == [b"1", b"2", b"3"]
    assert link.stats.duplicate_events >= 1


def test_dropped_ack_of_an_event_causes_one_retransmission_and_no_duplicate(link: Link, sim: Simulator) -> None:
    got: list[bytes] = []
    link.add_listener(lambda c, p: got.append(p) if c == Evt.KEY else None)
    Peripherals(link).keypad(True)
    sim.mcu.faults.drop_rx_acks = 1
    sim.mcu.press_keys("9")
    wait_for(lambda: sim.mcu.evt_out is None and not sim.mcu.evt_queue, what="event acknowledged")
    assert got == [b"9"]
    assert link.stats.duplicate_events == 1


def test_dropped_ack_of_a_slow_command(link: Link, sim: Simulator) -> None:
    """The device's early ACK is lost: the host retransmits, the device does not run it twice."""
    sim.mcu.faults.delay = 0.08
    sim.mcu.faults.drop_tx_acks = 1
    echo(link, b"slow")
    sim.mcu.faults.delay = 0
    assert sim.mcu.commands.count(Cmd.ECHO) == 1


def test_slow_response_is_waited_for_after_the_ack(link: Link, sim: Simulator) -> None:
    sim.mcu.faults.delay = 0.15  # 5x the RTO
    t = time.monotonic()
    echo(link, b"slow")
    assert time.monotonic() - t >= 0.15
    sim.mcu.faults.delay = 0
    assert link.stats.retransmits == 0 and sim.mcu.commands.count(Cmd.ECHO) == 1


@pytest.mark.parametrize("kind", ["pty", "tcp"])
def test_unplug_mid_frame_reports_disconnected_then_reconnects(kind: str, sim: Simulator, tcp_sim: Simulator) -> None:
    s = sim if kind == "pty" else tcp_sim
    states: list[LinkState] = []
    with Link(s.url, timing=FAST) as link:
        link.add_state_listener(states.append)
        link.wait_connected(3)
        s.mcu.inject(Frame(FrameType.RSP, 1, Cmd.ECHO, b"\x00" + b"x" * 100).encode()[:30])  # half a frame...
        s.unplug(0.3)  # ...then the cable goes
        wait_for(lambda: link.state == LinkState.DISCONNECTED, what="disconnected")
        with pytest.raises(DeviceError) as ei:
            link.request(Cmd.PING)
        assert ei.value.code == "disconnected"
        link.wait_connected(3)
        echo(link, b"back")
        assert LinkState.DISCONNECTED in states and link.stats.reconnects >= 1


def test_silent_device_is_detected_by_heartbeat(link: Link, sim: Simulator) -> None:
    sim.mcu.faults.mute = True
    wait_for(lambda: link.state != LinkState.CONNECTED, timeout=3, what="heartbeat failure")
    assert "no response" in (link.last_error or "")
    sim.mcu.faults.mute = False
    link.wait_connected(3)
    echo(link, b"alive")


def test_mcu_reboot_is_noticed_and_greeted_again(link: Link, sim: Simulator) -> None:
    first_boot = link.info.boot_id
    sim.mcu.reboot()
    wait_for(lambda: link.info is not None and link.info.boot_id != first_boot, what="re-HELLO")
    echo(link, b"after reboot")


def test_request_racing_a_reboot_gets_not_ready_and_is_retried(link: Link, sim: Simulator) -> None:
    sim.mcu.greeted = False  # rebooted, BOOT event not yet seen by the host
    echo(link, b"raced")
    assert sim.mcu.greeted


def test_too_many_failures_give_a_clear_timeout(link: Link, sim: Simulator) -> None:
    sim.mcu.faults.drop_rx = 100
    with pytest.raises(DeviceError) as ei:
        link.request(Cmd.PING)
    assert ei.value.code == "timeout" and "PING" in ei.value.message
    sim.mcu.faults.drop_rx = 0


def test_events_survive_a_disconnect(link: Link, sim: Simulator) -> None:
    """An event raised while unplugged is delivered after reconnection (the device keeps it until ACKed)."""
    got: list[bytes] = []
    link.add_listener(lambda c, p: got.append(p) if c == Evt.TAMPER else None)
    sim.unplug(0.2)
    wait_for(lambda: link.state == LinkState.DISCONNECTED, what="disconnected")
    sim.mcu.tamper(True)
    link.wait_connected(3)
    wait_for(lambda: got == [b"\x01"], what="tamper event")


def test_status_values_for_device_refusals(link: Link, sim: Simulator) -> None:
    assert link.request(Cmd.FW_CHUNK, b"\x00\x00\x00\x00x").status == Status.FW_BAD_STATE


@pytest.mark.parametrize("kind", ["pty", "tcp"])
def test_device_never_blocks_when_nobody_reads(kind: str, sim: Simulator, tcp_sim: Simulator) -> None:
    s = sim if kind == "pty" else tcp_sim
    if kind == "tcp":  # a host that connects and then stops reading
        import socket

        host, port = s.url.removeprefix("socket://").split(":")
        stalled = socket.create_connection((host, int(port)))
        wait_for(lambda: s.mcu._write_fn is not None, what="tcp client attached")
    t = time.monotonic()
    s.mcu.inject(b"\x00" * 5_000_000)  # far more than any pty or socket buffer
    assert time.monotonic() - t < 2.0
    if kind == "tcp":
        stalled.close()
    with Link(s.url, timing=FAST) as link:
        link.wait_connected(3)
        echo(link, b"still alive")


def test_cable_pull_fails_the_command_in_flight_and_reports_disconnected_at_once(tcp_sim: Simulator) -> None:
    """Not after the retransmissions, nor after pyserial's 0.3 s pause in closing a socket:// port."""
    slow_rto = Timing(rto=0.5, retries=3, exec_timeout=2.0, heartbeat=5.0, gap=0.01, backoff_min=0.5, backoff_max=1.0)
    with Link(tcp_sim.url, timing=slow_rto) as link:
        link.wait_connected(3)
        tcp_sim.mcu.faults.mute = True  # the REQ goes unanswered...
        got: list[BaseException] = []
        t = threading.Thread(target=lambda: _capture(got, lambda: link.request(Cmd.PING)))
        t.start()
        time.sleep(0.05)
        t0 = time.monotonic()
        tcp_sim.unplug(1.0)  # ...and the cable goes
        wait_for(lambda: link.state == LinkState.DISCONNECTED, timeout=1, what="disconnected")
        t.join(1)
        elapsed = time.monotonic() - t0
        assert isinstance(got[0], DeviceError) and got[0].code == "disconnected"
        assert elapsed < 0.2, elapsed


def _capture(out: list[BaseException], fn) -> None:
    try:
        fn()
    except BaseException as e:  # noqa: BLE001 - handed to the test thread
        out.append(e)


def test_reconnect_backs_off_exponentially_up_to_the_cap() -> None:
    """§4: reopen with backoff from backoff_min doubling to backoff_max, state disconnected meanwhile."""
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        url = f"socket://127.0.0.1:{s.getsockname()[1]}"
    tm = Timing(rto=0.03, retries=3, exec_timeout=1.0, heartbeat=0.2, gap=0.01, backoff_min=0.02, backoff_max=0.16)
    tries: list[float] = []
    with Link(url, timing=tm) as link:
        link.add_state_listener(lambda st: tries.append(time.monotonic()) if st == LinkState.CONNECTING else None)
        time.sleep(1.2)
        assert link.state == LinkState.DISCONNECTED and "cannot open" in (link.last_error or "")
    gaps = [b - a for a, b in zip(tries, tries[1:])]
    assert 5 <= len(tries) <= 12, gaps  # neither a busy loop nor stuck
    assert gaps[0] < 0.1 and gaps[3] > gaps[0] * 2, gaps  # grows...
    assert max(gaps) < 0.16 + 0.15, gaps  # ...and stops at the cap
