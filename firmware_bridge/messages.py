"""Commands, events, status codes and their payload layouts (pure).

Every REQ payload and RSP data layout is listed in docs/protocol.md; the
codecs here are the single implementation both the host and the simulator use.
A RSP payload is ``STATUS (1 byte) + data``. Integers are little-endian.
"""
from __future__ import annotations

import enum
import struct
from dataclasses import dataclass


class Cmd(enum.IntEnum):
    HELLO = 0x01  # version negotiation + device info
    PING = 0x02  # heartbeat
    ECHO = 0x03  # link test: data echoed back
    GET_STATUS = 0x04  # peripheral status flags
    REBOOT = 0x05
    KEYPAD_ENABLE = 0x10  # route key presses to the host as KEY events
    LIGHT_SET = 0x20  # fill light / IR illuminator level
    LED_SET = 0x21  # status LED colour + pattern
    BUZZER = 0x22  # buzzer pattern
    PRINT = 0x30  # ESC/POS bytes passed through to the receipt printer
    PRINTER_STATUS = 0x31
    CARD_STATUS = 0x40  # social-security card reader presence / ATR
    SELF_TEST = 0x60
    FW_BEGIN = 0x50
    FW_CHUNK = 0x51
    FW_COMMIT = 0x52
    FW_STATUS = 0x53


class Evt(enum.IntEnum):
    BOOT = 0x80
    KEY = 0x81
    PRINTER = 0x82
    CARD = 0x83
    TAMPER = 0x84


class Status(enum.IntEnum):
    OK = 0x00
    UNKNOWN_COMMAND = 0x01
    BAD_PAYLOAD = 0x02
    BUSY = 0x03
    UNSUPPORTED_VERSION = 0x04
    NOT_READY = 0x05  # HELLO not yet done since boot
    PERIPHERAL_FAULT = 0x06
    PAPER_OUT = 0x07
    COVER_OPEN = 0x08
    NO_CARD = 0x09
    FW_BAD_OFFSET = 0x0A
    FW_BAD_IMAGE = 0x0B  # SHA-256 of the received image differs from FW_BEGIN's
    FW_BAD_SIGNATURE = 0x0C
    FW_BAD_STATE = 0x0D  # commit before all bytes arrived / chunk without begin
    FW_ROLLBACK = 0x0E  # image version not newer than the running one


STATUS_TEXT = {
    Status.OK: "ok",
    Status.UNKNOWN_COMMAND: "the device does not know this command",
    Status.BAD_PAYLOAD: "the device rejected the command's payload",
    Status.BUSY: "the device is busy",
    Status.UNSUPPORTED_VERSION: "no common protocol version",
    Status.NOT_READY: "the device has not been greeted (HELLO) since it booted",
    Status.PERIPHERAL_FAULT: "a peripheral reported a fault",
    Status.PAPER_OUT: "the receipt printer is out of paper",
    Status.COVER_OPEN: "the receipt printer cover is open",
    Status.NO_CARD: "no card in the reader",
    Status.FW_BAD_OFFSET: "firmware chunk at an unexpected offset",
    Status.FW_BAD_IMAGE: "firmware image digest mismatch",
    Status.FW_BAD_SIGNATURE: "firmware signature invalid",
    Status.FW_BAD_STATE: "firmware update not in a state to accept this",
    Status.FW_ROLLBACK: "firmware image is not newer than the running version",
}


def status_text(code: int) -> str:
    try:
        return STATUS_TEXT[Status(code)]
    except ValueError:
        return f"unknown status 0x{code:02X}"


class PayloadError(ValueError):
    """A payload does not match its layout (maps to Status.BAD_PAYLOAD)."""


def _unpack(fmt: str, data: bytes, what: str) -> tuple:
    try:
        return struct.unpack(fmt, data)
    except struct.error as e:
        raise PayloadError(f"{what}: expected {struct.calcsize(fmt)} bytes, got {len(data)}") from e


# --- device info / version ---------------------------------------------------------------

Version = tuple[int, int, int]


def fmt_version(v: Version) -> str:
    return "%d.%d.%d" % v


def parse_version(s: str) -> Version:
    parts = s.split(".")
    if len(parts) != 3 or not all(p.isdigit() and int(p) < 256 for p in parts):
        raise ValueError(f"version must be MAJOR.MINOR.PATCH with parts 0-255, got {s!r}")
    return int(parts[0]), int(parts[1]), int(parts[2])


def _pstr(s: str) -> bytes:
    b = s.encode("utf-8")[:255]
    return bytes((len(b),)) + b


def _read_pstr(data: bytes, i: int, what: str) -> tuple[str, int]:
    if i >= len(data) or i + 1 + data[i] > len(data):
        raise PayloadError(f"{what}: truncated string")
    n = data[i]
    return data[i + 1 : i + 1 + n].decode("utf-8", "replace"), i + 1 + n


@dataclass(frozen=True)
class HelloReq:
    proto_min: int
    proto_max: int

    def encode(self) -> bytes:
        return struct.pack("<BB", self.proto_min, self.proto_max)

    @classmethod
    def decode(cls, data: bytes) -> HelloReq:
        return cls(*_unpack("<BB", data, "HELLO"))


@dataclass(frozen=True)
class DeviceInfo:
    """HELLO response: ``proto u8, max_payload u16, fw 3*u8, boot_id u32, model pstr, serial pstr``."""

    protocol: int
    max_payload: int
    firmware: Version
    boot_id: int
    model: str
    serial: str

    def encode(self) -> bytes:
        return struct.pack("<BHBBBI", self.protocol, self.max_payload, *self.firmware, self.boot_id) + _pstr(self.model) + _pstr(self.serial)

    @classmethod
    def decode(cls, data: bytes) -> DeviceInfo:
        head = struct.calcsize("<BHBBBI")
        p, mp, a, b, c, boot = _unpack("<BHBBBI", data[:head], "HELLO response")
        model, i = _read_pstr(data, head, "HELLO model")
        serial, i = _read_pstr(data, i, "HELLO serial")
        return cls(p, mp, (a, b, c), boot, model, serial)


# --- status flags ------------------------------------------------------------------------


class Flag(enum.IntFlag):
    PAPER_OUT = 0x01
    COVER_OPEN = 0x02
    CARD_PRESENT = 0x04
    TAMPER = 0x08
    KEYPAD_ENABLED = 0x10
    PAPER_NEAR_END = 0x20


@dataclass(frozen=True)
class DeviceStatus:
    """GET_STATUS response: ``flags u8, fill u8, ir u8, led_color u8, led_pattern u8, uptime_ms u32``."""

    flags: Flag
    fill_level: int
    ir_level: int
    led_color: int
    led_pattern: int
    uptime_ms: int

    def encode(self) -> bytes:
        return struct.pack("<BBBBBI", int(self.flags), self.fill_level, self.ir_level, self.led_color, self.led_pattern, self.uptime_ms)

    @classmethod
    def decode(cls, data: bytes) -> DeviceStatus:
        f, fl, ir, c, p, up = _unpack("<BBBBBI", data, "GET_STATUS response")
        return cls(Flag(f), fl, ir, c, p, up)


# --- peripherals -------------------------------------------------------------------------


class LightChannel(enum.IntEnum):
    FILL = 0
    IR = 1


class LedColor(enum.IntEnum):
    OFF = 0
    GREEN = 1
    RED = 2
    AMBER = 3
    BLUE = 4


class LedPattern(enum.IntEnum):
    SOLID = 0
    SLOW_BLINK = 1
    FAST_BLINK = 2
    PULSE = 3


class BuzzerPattern(enum.IntEnum):
    OFF = 0
    SHORT = 1  # 80 ms
    DOUBLE = 2  # 2 x 80 ms
    LONG = 3  # 600 ms
    ERROR = 4  # 3 x 150 ms


class SelfTestBit(enum.IntFlag):
    KEYPAD = 0x01
    PRINTER = 0x02
    CARD_READER = 0x04
    FILL_LIGHT = 0x08
    IR_LIGHT = 0x10
    BUZZER = 0x20
    LED = 0x40


class BootReason(enum.IntEnum):
    POWER_ON = 0
    WATCHDOG = 1
    FIRMWARE_UPDATE = 2
    COMMAND = 3


@dataclass(frozen=True)
class BootEvent:
    """BOOT event: ``boot_id u32, fw 3*u8, reason u8``."""

    boot_id: int
    firmware: Version
    reason: BootReason

    def encode(self) -> bytes:
        return struct.pack("<IBBBB", self.boot_id, *self.firmware, int(self.reason))

    @classmethod
    def decode(cls, data: bytes) -> BootEvent:
        b, x, y, z, r = _unpack("<IBBBB", data, "BOOT event")
        return cls(b, (x, y, z), BootReason(r) if r in BootReason._value2member_map_ else BootReason.POWER_ON)


@dataclass(frozen=True)
class CardInfo:
    """CARD event and CARD_STATUS response: ``present u8, atr_len u8, atr``."""

    present: bool
    atr: bytes = b""

    def encode(self) -> bytes:
        return bytes((1 if self.present else 0, len(self.atr))) + self.atr

    @classmethod
    def decode(cls, data: bytes) -> CardInfo:
        if len(data) < 2 or len(data) != 2 + data[1]:
            raise PayloadError("CARD: expected present, atr_len, atr")
        return cls(bool(data[0]), bytes(data[2:]))


# --- firmware ----------------------------------------------------------------------------


@dataclass(frozen=True)
class FwBegin:
    """FW_BEGIN: ``size u32, version 3*u8, sha256 32 bytes``."""

    size: int
    version: Version
    sha256: bytes

    def encode(self) -> bytes:
        return struct.pack("<IBBB", self.size, *self.version) + self.sha256

    @classmethod
    def decode(cls, data: bytes) -> FwBegin:
        if len(data) != 39:
            raise PayloadError(f"FW_BEGIN: expected 39 bytes, got {len(data)}")
        size, a, b, c = struct.unpack("<IBBB", data[:7])
        return cls(size, (a, b, c), bytes(data[7:]))


def u32(n: int) -> bytes:
    return struct.pack("<I", n)


def read_u32(data: bytes, what: str) -> int:
    return _unpack("<I", data[:4], what)[0] if len(data) >= 4 else _unpack("<I", data, what)[0]


KEY_BACKSPACE = 0x08
KEY_ENTER = 0x0D
KEY_CANCEL = 0x1B
KEYS = frozenset(b"0123456789X") | {KEY_BACKSPACE, KEY_ENTER, KEY_CANCEL}
