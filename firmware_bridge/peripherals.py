"""Typed peripheral commands on top of a Link (lights, LED, buzzer, printer, card, keypad)."""
from __future__ import annotations

from dataclasses import dataclass

from firmware_bridge.messages import (
    BuzzerPattern,
    CardInfo,
    Cmd,
    DeviceStatus,
    Flag,
    LedColor,
    LedPattern,
    LightChannel,
    PayloadError,
    SelfTestBit,
    Status,
)
from firmware_bridge.session import Link
from kiosk.errors import DeviceError, InputError


@dataclass(frozen=True)
class PrintResult:
    printed: bool
    status: str  # "ok", "paper_out", "cover_open", ...
    paper_out: bool
    cover_open: bool
    bytes_sent: int


class Peripherals:
    def __init__(self, link: Link) -> None:
        self.link = link

    def status(self) -> DeviceStatus:
        data = self.link.request(Cmd.GET_STATUS).check("status")
        try:
            return DeviceStatus.decode(data)
        except PayloadError as e:
            raise DeviceError(f"status: {e}", code="protocol_error") from e

    def keypad(self, enabled: bool) -> None:
        self.link.request(Cmd.KEYPAD_ENABLE, bytes((1 if enabled else 0,))).check("keypad")

    def light(self, channel: LightChannel, level: int) -> None:
        if not 0 <= level <= 100:
            raise InputError("light level must be 0..100", field="level")
        self.link.request(Cmd.LIGHT_SET, bytes((int(channel), level))).check(f"{channel.name.lower()} light")

    def led(self, color: LedColor, pattern: LedPattern = LedPattern.SOLID) -> None:
        self.link.request(Cmd.LED_SET, bytes((int(color), int(pattern)))).check("status LED")

    def buzz(self, pattern: BuzzerPattern = BuzzerPattern.SHORT, repeat: int = 1) -> None:
        if not 1 <= repeat <= 10:
            raise InputError("buzzer repeat must be 1..10", field="repeat")
        self.link.request(Cmd.BUZZER, bytes((int(pattern), repeat))).check("buzzer")

    def printer_flags(self) -> Flag:
        data = self.link.request(Cmd.PRINTER_STATUS).check("printer status")
        return Flag(data[0] if data else 0)

    def print_escpos(self, data: bytes) -> PrintResult:
        """Send ESC/POS bytes in chunks; stops at the first refusal (paper out, cover open)."""
        if not data:
            raise InputError("nothing to print", field="escpos")
        chunk = (self.link.info.max_payload if self.link.info else 1024)
        sent = 0
        status, flags = Status.OK, 0
        while sent < len(data):
            rsp = self.link.request(Cmd.PRINT, data[sent : sent + chunk], exec_timeout=10.0)
            flags = rsp.data[0] if rsp.data else 0
            status = rsp.status
            if status != Status.OK:
                break
            sent += min(chunk, len(data) - sent)
        name = Status(status).name.lower() if status in Status._value2member_map_ else f"status_{status:02x}"
        return PrintResult(status == Status.OK, name, bool(flags & Flag.PAPER_OUT), bool(flags & Flag.COVER_OPEN), sent)

    def card(self) -> CardInfo:
        rsp = self.link.request(Cmd.CARD_STATUS)
        if rsp.status == Status.NO_CARD:  # a reader that says "no card" instead of present=0 (docs/protocol.md §6)
            return CardInfo(False, b"")
        data = rsp.check("card reader")
        try:
            return CardInfo.decode(data)
        except PayloadError as e:
            raise DeviceError(f"card reader: {e}", code="protocol_error") from e

    def self_test(self) -> dict[str, bool]:
        data = self.link.request(Cmd.SELF_TEST, exec_timeout=10.0).check("self-test")
        if len(data) != 2:
            raise DeviceError("self-test: malformed response", code="protocol_error")
        tested, passed = data
        return {b.name.lower(): bool(passed & b) for b in SelfTestBit if tested & b}
