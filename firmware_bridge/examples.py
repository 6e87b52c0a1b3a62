"""Worked example frames for docs/protocol.md, generated from the code.

``python -m firmware_bridge.examples`` prints the markdown table the document
embeds; tests/firmware_bridge/test_protocol_doc.py checks the document still
matches, so the examples cannot drift from the implementation.
"""
from __future__ import annotations

from firmware_bridge.frame import Frame, FrameType, NakReason
from firmware_bridge.messages import (
    BootEvent,
    BootReason,
    Cmd,
    DeviceInfo,
    Evt,
    FwBegin,
    HelloReq,
    LedColor,
    LedPattern,
    Status,
    u32,
)

REQ, RSP, EVT, ACK, NAK = FrameType.REQ, FrameType.RSP, FrameType.EVT, FrameType.ACK, FrameType.NAK


def worked_examples() -> list[tuple[str, str, Frame]]:
    """(direction, what, frame) in the order of a typical session."""
    ok = bytes((Status.OK,))
    return [
        ("D→H", "EVT BOOT after power-on: boot_id 0x12345678, firmware 1.0.0, reason POWER_ON", Frame(EVT, 0x00, Evt.BOOT, BootEvent(0x12345678, (1, 0, 0), BootReason.POWER_ON).encode())),
        ("H→D", "ACK of that event", Frame(ACK, 0x00, Evt.BOOT)),
        ("H→D", "REQ HELLO, host speaks protocol 1..1", Frame(REQ, 0x10, Cmd.HELLO, HelloReq(1, 1).encode())),
        ("D→H", "RSP HELLO: OK, protocol 1, max payload 1024, firmware 1.0.0, boot_id, model \"KM-100\", serial \"SN0001\"", Frame(RSP, 0x10, Cmd.HELLO, ok + DeviceInfo(1, 1024, (1, 0, 0), 0x12345678, "KM-100", "SN0001").encode())),
        ("H→D", "REQ PING (heartbeat)", Frame(REQ, 0x11, Cmd.PING)),
        ("D→H", "RSP PING: OK, uptime 10000 ms", Frame(RSP, 0x11, Cmd.PING, ok + u32(10000))),
        ("H→D", "NAK: the PING response arrived with a bad CRC, resend it", Frame(NAK, 0x11, Cmd.PING, bytes((NakReason.BAD_CRC,)))),
        ("H→D", "REQ LIGHT_SET fill light to 80 %", Frame(REQ, 0x12, Cmd.LIGHT_SET, bytes((0, 80)))),
        ("D→H", "RSP LIGHT_SET: OK", Frame(RSP, 0x12, Cmd.LIGHT_SET, ok)),
        ("H→D", "REQ LED_SET green, slow blink", Frame(REQ, 0x13, Cmd.LED_SET, bytes((LedColor.GREEN, LedPattern.SLOW_BLINK)))),
        ("H→D", "REQ KEYPAD_ENABLE on", Frame(REQ, 0x14, Cmd.KEYPAD_ENABLE, b"\x01")),
        ("D→H", "EVT KEY '5'", Frame(EVT, 0x01, Evt.KEY, b"5")),
        ("H→D", "ACK of the key event", Frame(ACK, 0x01, Evt.KEY)),
        ("H→D", "REQ PRINT: ESC @, \"OK\", LF", Frame(REQ, 0x15, Cmd.PRINT, b"\x1b@OK\n")),
        ("D→H", "ACK: print accepted, response will take longer than 10 ms", Frame(ACK, 0x15, Cmd.PRINT)),
        ("D→H", "RSP PRINT refused: PAPER_OUT, printer flags 0x01", Frame(RSP, 0x15, Cmd.PRINT, bytes((Status.PAPER_OUT, 0x01)))),
        ("D→H", "EVT CARD inserted, ATR 3B 68 00 00 00 73 C8 40 13 00 90 00", Frame(EVT, 0x02, Evt.CARD, bytes.fromhex("01 0c 3b6800000073c84013009000"))),
        ("H→D", "REQ FW_BEGIN: 4096 bytes, version 1.1.0, SHA-256 (here 32 x 0xAB)", Frame(REQ, 0x16, Cmd.FW_BEGIN, FwBegin(4096, (1, 1, 0), b"\xab" * 32).encode())),
        ("D→H", "RSP FW_BEGIN: OK, resume at offset 1024", Frame(RSP, 0x16, Cmd.FW_BEGIN, ok + u32(1024))),
        ("H→D", "REQ FW_CHUNK at offset 1024, 4 data bytes DE AD BE EF", Frame(REQ, 0x17, Cmd.FW_CHUNK, u32(1024) + bytes.fromhex("deadbeef"))),
        ("H→D", "REQ 0x7E (unknown)", Frame(REQ, 0x18, 0x7E)),
        ("D→H", "RSP: UNKNOWN_COMMAND", Frame(RSP, 0x18, 0x7E, bytes((Status.UNKNOWN_COMMAND,)))),
    ]


def markdown() -> str:
    rows = ["| # | dir | what | bytes (hex) |", "|---|---|---|---|"]
    for i, (d, what, f) in enumerate(worked_examples(), 1):
        rows.append(f"| {i} | {d} | {what} | `{f.encode().hex(' ')}` |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(markdown())
