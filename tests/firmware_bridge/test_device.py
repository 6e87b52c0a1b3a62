"""The simulated device at the byte level (no I/O): what a compatible MCU must do."""
from __future__ import annotations

import time

from firmware_bridge.examples import worked_examples
from firmware_bridge.frame import Deframer, Frame, FrameType
from firmware_bridge.messages import Cmd, Evt, HelloReq, Status
from firmware_bridge.sim import EVENT_RTO, VirtualMcu


def device() -> tuple[VirtualMcu, list[Frame]]:
    mcu = VirtualMcu(model="KM-100", serial="SN0001")
    mcu.boot_id = 0x12345678
    out: list[Frame] = []
    d = Deframer()
    mcu.attach(lambda raw: out.extend(f for f in d.feed(raw) if isinstance(f, Frame)))
    mcu.evt_out = None
    mcu.evt_queue.clear()
    mcu.evt_seq = 0  # the power-on BOOT event is not part of these tests
    return mcu, out


def hello(mcu: VirtualMcu) -> None:
    mcu.on_bytes(Frame(FrameType.REQ, 0x10, Cmd.HELLO, HelloReq(1, 1).encode()).encode())


def test_device_answers_the_documented_example_bytes() -> None:
    mcu, out = device()
    ex = {what: f for _, what, f in worked_examples()}
    by_type = [(d, f) for d, _, f in worked_examples()]
    for (d, req), (_, want) in zip(by_type, by_type[1:]):
        if d == "H→D" and req.type == FrameType.REQ and req.cmd in (Cmd.HELLO, Cmd.LIGHT_SET, 0x7E):
            out.clear()
            mcu.on_bytes(req.encode())
            assert out == [want], f"response to {req}"
    assert ex  # the examples exist


def test_commands_before_hello_are_not_ready_and_hello_negotiates() -> None:
    mcu, out = device()
    mcu.on_bytes(Frame(FrameType.REQ, 1, Cmd.PING).encode())
    assert out[-1].payload == bytes((Status.NOT_READY,))
    mcu.on_bytes(Frame(FrameType.REQ, 2, Cmd.HELLO, HelloReq(5, 9).encode()).encode())
    assert out[-1].payload[0] == Status.UNSUPPORTED_VERSION and out[-1].payload[1:] == b"\x01\x01"
    hello(mcu)
    assert out[-1].payload[0] == Status.OK and mcu.greeted


def test_corrupted_request_is_naked_with_its_seq() -> None:
    mcu, out = device()
    raw = bytearray(Frame(FrameType.REQ, 0x42, Cmd.PING).encode())
    raw[-1] ^= 0xFF
    mcu.on_bytes(bytes(raw))
    assert out == [Frame(FrameType.NAK, 0x42, Cmd.PING, b"\x01")]


def test_duplicate_request_is_replayed_not_executed() -> None:
    mcu, out = device()
    hello(mcu)
    req = Frame(FrameType.REQ, 7, Cmd.BUZZER, b"\x01\x01").encode()
    mcu.on_bytes(req)
    mcu.on_bytes(req)
    assert out[-1] == out[-2] and mcu.commands.count(Cmd.BUZZER) == 1
    # same seq, different content: a new command
    mcu.on_bytes(Frame(FrameType.REQ, 7, Cmd.BUZZER, b"\x02\x01").encode())
    assert mcu.commands.count(Cmd.BUZZER) == 2


def test_nak_from_host_resends_the_cached_response() -> None:
    mcu, out = device()
    hello(mcu)
    mcu.on_bytes(Frame(FrameType.REQ, 9, Cmd.PING).encode())
    first = out[-1]
    mcu.on_bytes(Frame(FrameType.NAK, 9, Cmd.PING, b"\x01").encode())
    assert out[-1] == first and mcu.commands.count(Cmd.PING) == 1


def test_unacknowledged_event_is_retransmitted_then_next_one_sent_after_ack() -> None:
    mcu, out = device()
    hello(mcu)
    mcu.keypad = True
    mcu.press_keys("12")
    assert [f for f in out if f.type == FrameType.EVT] == [Frame(FrameType.EVT, 0, Evt.KEY, b"1")]  # one in flight
    time.sleep(EVENT_RTO + 0.01)
    mcu.tick()
    assert [f.payload for f in out if f.type == FrameType.EVT] == [b"1", b"1"]
    mcu.on_bytes(Frame(FrameType.ACK, 0, Evt.KEY).encode())
    assert out[-1] == Frame(FrameType.EVT, 1, Evt.KEY, b"2")
