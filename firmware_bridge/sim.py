"""A virtual MCU: the device side of docs/protocol.md, on a pty or a TCP port.

The simulator uses the same ``frame``/``messages`` code as the host, so it
speaks exactly the documented bytes. It is scriptable (key presses, paper out,
cover open, card, tamper, unplug, corrupt/truncate/duplicate frames, garbage,
slow responses, BUSY, peripheral faults, reboot) from Python (tests), from stdin lines or a script file
(demo). ``python -m firmware_bridge.sim --help``.
"""
from __future__ import annotations

import argparse
import collections
import errno
import hashlib
import os
import random
import select
import socket
import sys
import threading
import time
import tty
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from firmware_bridge import PROTOCOL_VERSION
from firmware_bridge.firmware import signed_header
from firmware_bridge.frame import MAX_PAYLOAD, Damaged, Deframer, Frame, FrameType, NakReason
from firmware_bridge.messages import (
    KEYS,
    BootEvent,
    BootReason,
    CardInfo,
    Cmd,
    DeviceInfo,
    DeviceStatus,
    Evt,
    Flag,
    FwBegin,
    HelloReq,
    LightChannel,
    PayloadError,
    SelfTestBit,
    Status,
    Version,
    u32,
)
from kiosk.errors import KioskError

EVENT_RTO = 0.1  # device retransmits an unacknowledged event after this long
CACHE = 32  # responses kept for duplicate detection
FLASH_SIZE = 4 * 1024 * 1024


@dataclass
class Faults:
    """One-shot fault knobs (counters decrement as frames pass)."""

    corrupt_tx: int = 0  # flip a payload/CRC bit in the next N outgoing frames
    truncate_tx: int = 0  # send only the first half of the next N outgoing frames
    duplicate_tx: int = 0  # send the next N outgoing frames twice
    drop_rx: int = 0  # ignore the next N incoming valid frames (lost on the wire)
    drop_rx_acks: int = 0  # ignore the next N incoming ACKs
    drop_tx_acks: int = 0  # do not send the next N ACKs
    delay: float = 0.0  # slow device: ACK at once, RSP after this many seconds
    mute: bool = False  # stop answering entirely (cable cut one way)
    busy: int = 0  # answer BUSY to the next N commands (HELLO and PING excepted: the heartbeat must not eat them)
    broken: set[str] = field(default_factory=set)  # "printer", "card": PERIPHERAL_FAULT, self-test bit cleared
    no_card_status: bool = False  # CARD_STATUS with no card answers NO_CARD instead of OK present=0


@dataclass
class Staging:
    """Firmware staging area (survives reboots and cable pulls: it is flash)."""

    begin: FwBegin | None = None
    data: bytearray = field(default_factory=bytearray)


class VirtualMcu:
    """Device logic; ``attach(write)`` then ``on_bytes(data)`` / ``tick()``."""

    def __init__(
        self,
        *,
        firmware: Version = (1, 0, 0),
        trusted_key: Ed25519PublicKey | None = None,
        model: str = "KM-100 sim",
        serial: str = "SIM0001",
        protocols: tuple[int, int] = (1, PROTOCOL_VERSION),
        max_payload: int = MAX_PAYLOAD,
    ) -> None:
        self.firmware = firmware
        self.trusted_key = trusted_key or Ed25519PrivateKey.generate().public_key()
        self.model, self.serial = model, serial
        self.protocols = protocols
        self.max_payload = max_payload
        self.faults = Faults()
        self.staging = Staging()
        self.flags = Flag(0)
        self.atr = b""
        self.printed = bytearray()  # everything the "printer" received
        self.commands: list[int] = []  # executed commands, in order (for tests)
        self._lock = threading.RLock()
        self._write_fn = None
        self._boot(BootReason.POWER_ON)

    # --- wiring ----------------------------------------------------------------------

    def attach(self, write) -> None:
        with self._lock:
            self._write_fn = write
            self._deframer = Deframer(max_payload=self.max_payload)

    def detach(self) -> None:
        with self._lock:
            self._write_fn = None

    def _boot(self, reason: BootReason) -> None:
        self.boot_id = random.getrandbits(32)
        self.booted_at = time.monotonic()
        self.greeted = False
        self.cache: collections.OrderedDict[int, tuple[bytes, bytes]] = collections.OrderedDict()
        self.evt_seq = 0
        self.evt_queue: collections.deque[tuple[int, bytes]] = collections.deque()
        self.evt_out: tuple[int, Frame, float] | None = None  # seq, frame, sent_at
        self.keypad = False
        self.fill = self.ir = 0
        self.led = (0, 0)
        self._deframer = Deframer(max_payload=self.max_payload)
        self.emit(Evt.BOOT, BootEvent(self.boot_id, self.firmware, reason).encode())

    # --- scripting API ---------------------------------------------------------------

    def emit(self, evt: int, payload: bytes = b"") -> None:
        with self._lock:
            self.evt_queue.append((evt, payload))
            self._pump_events()

    def press_keys(self, keys: str | bytes) -> int:
        """Queue key presses ('0'-'9', 'X', '\\b' backspace, '\\r' enter, '\\x1b' cancel); returns how many were sent."""
        raw = keys.encode() if isinstance(keys, str) else keys
        n = 0
        for k in raw:
            if k in KEYS and self.keypad:
                self.emit(Evt.KEY, bytes((k,)))
                n += 1
        return n

    def set_flag(self, flag: Flag, on: bool, evt: int | None = None) -> None:
        with self._lock:
            before = self.flags
            self.flags = (self.flags | flag) if on else (self.flags & ~flag)
            if evt is not None and before != self.flags:
                if evt == Evt.PRINTER:
                    self.emit(evt, bytes((int(self.flags) & 0x23,)))
                elif evt == Evt.TAMPER:
                    self.emit(evt, bytes((1 if on else 0,)))

    def paper_out(self, on: bool = True) -> None:
        self.set_flag(Flag.PAPER_OUT, on, Evt.PRINTER)

    def cover_open(self, on: bool = True) -> None:
        self.set_flag(Flag.COVER_OPEN, on, Evt.PRINTER)

    def tamper(self, opened: bool = True) -> None:
        self.set_flag(Flag.TAMPER, opened, Evt.TAMPER)

    def insert_card(self, atr: bytes = bytes.fromhex("3B6800000073C84013009000")) -> None:
        with self._lock:
            self.atr = atr
            self.set_flag(Flag.CARD_PRESENT, True)
            self.emit(Evt.CARD, CardInfo(True, atr).encode())

    def remove_card(self) -> None:
        with self._lock:
            self.atr = b""
            self.set_flag(Flag.CARD_PRESENT, False)
            self.emit(Evt.CARD, CardInfo(False).encode())

    def reboot(self, reason: BootReason = BootReason.WATCHDOG) -> None:
        with self._lock:
            self._boot(reason)

    def inject(self, raw: bytes) -> None:
        """Put raw bytes (garbage, half frames) on the line."""
        self._send_raw(raw)

    # --- byte processing -------------------------------------------------------------

    def on_bytes(self, data: bytes) -> None:
        with self._lock:
            for it in self._deframer.feed(data):
                self._on_item(it)

    def on_idle(self) -> None:
        with self._lock:
            for it in self._deframer.expire():
                self._on_item(it)

    def tick(self) -> None:
        with self._lock:
            self._pump_events(retransmit=True)

    def _send_raw(self, raw: bytes) -> None:
        w = self._write_fn
        if w is not None and not self.faults.mute:
            try:
                w(raw)
            except OSError:
                pass

    def _send(self, frame: Frame) -> None:
        raw = frame.encode()
        f = self.faults
        if frame.type == FrameType.ACK and f.drop_tx_acks > 0:
            f.drop_tx_acks -= 1
            return
        if f.corrupt_tx > 0:
            f.corrupt_tx -= 1
            b = bytearray(raw)
            b[-1] ^= 0x01
            raw = bytes(b)
        if f.truncate_tx > 0:
            f.truncate_tx -= 1
            raw = raw[: max(1, len(raw) // 2)]
        self._send_raw(raw)
        if f.duplicate_tx > 0:
            f.duplicate_tx -= 1
            self._send_raw(raw)

    def _pump_events(self, retransmit: bool = False) -> None:
        now = time.monotonic()
        if self.evt_out is not None:
            if retransmit and now - self.evt_out[2] >= EVENT_RTO:
                seq, frame, _ = self.evt_out
                self.evt_out = (seq, frame, now)
                self._send(frame)
            return
        if self.evt_queue:
            evt, payload = self.evt_queue.popleft()
            seq = self.evt_seq
            self.evt_seq = (self.evt_seq + 1) & 0xFF
            frame = Frame(FrameType.EVT, seq, evt, payload)
            self.evt_out = (seq, frame, now)
            self._send(frame)

    def _on_item(self, it: Frame | Damaged) -> None:
        f = self.faults
        if isinstance(it, Damaged):
            if it.type == FrameType.REQ:
                self._send(Frame(FrameType.NAK, it.seq, it.cmd, bytes((NakReason.BAD_CRC,))))
            return
        if f.drop_rx > 0:
            f.drop_rx -= 1
            return
        if it.type == FrameType.ACK:
            if f.drop_rx_acks > 0:
                f.drop_rx_acks -= 1
                return
            if self.evt_out is not None and self.evt_out[0] == it.seq:
                self.evt_out = None
                self._pump_events()
            return
        if it.type == FrameType.NAK:
            # EVT and REQ SEQs are numbered independently: the NAK's CMD says which frame it means
            if self.evt_out is not None and self.evt_out[0] == it.seq and self.evt_out[1].cmd == it.cmd:
                self._send(self.evt_out[1])
            elif it.seq in self.cache and self.cache[it.seq][1][3] == it.cmd:
                self._send_raw(self.cache[it.seq][1])
            return
        if it.type != FrameType.REQ:
            return
        fp = it.encode()[-2:]  # the frame's CRC field: same SEQ + same CRC = a retransmission
        cached = self.cache.get(it.seq)
        if it.cmd != Cmd.HELLO and cached is not None and cached[0] == fp:
            self._send_raw(cached[1])  # duplicate: replay, do not execute again
            return
        if f.delay > 0:
            self._send(Frame(FrameType.ACK, it.seq, it.cmd))
            self._lock.release()
            try:
                time.sleep(f.delay)
            finally:
                self._lock.acquire()
        status, data = self._execute(it.cmd, it.payload)
        rsp = Frame(FrameType.RSP, it.seq, it.cmd, bytes((status,)) + data)
        raw = rsp.encode()
        self.cache[it.seq] = (fp, raw)
        self.cache.move_to_end(it.seq)
        while len(self.cache) > CACHE:
            self.cache.popitem(last=False)
        self._send(rsp)
        if it.cmd == Cmd.FW_COMMIT and status == Status.OK:
            self._boot(BootReason.FIRMWARE_UPDATE)
        elif it.cmd == Cmd.REBOOT and status == Status.OK:
            self._boot(BootReason.COMMAND)

    # --- commands --------------------------------------------------------------------

    def _execute(self, cmd: int, p: bytes) -> tuple[int, bytes]:
        try:
            if cmd == Cmd.HELLO:
                req = HelloReq.decode(p)
                if req.proto_min > req.proto_max:  # protocol.md §4: BAD_PAYLOAD, not UNSUPPORTED_VERSION
                    return Status.BAD_PAYLOAD, b""
                lo, hi = max(req.proto_min, self.protocols[0]), min(req.proto_max, self.protocols[1])
                if lo > hi:
                    return Status.UNSUPPORTED_VERSION, bytes((self.protocols[0], self.protocols[1]))
                self.greeted = True
                self.cache.clear()
                self.commands.append(cmd)
                return Status.OK, DeviceInfo(hi, self.max_payload, self.firmware, self.boot_id, self.model, self.serial).encode()
            if not self.greeted:
                return Status.NOT_READY, b""
            self.commands.append(cmd)
            if self.faults.busy > 0 and cmd != Cmd.PING:
                self.faults.busy -= 1
                return Status.BUSY, b""
            handler = _HANDLERS.get(cmd)
            if handler is None:
                return Status.UNKNOWN_COMMAND, b""
            return handler(self, p)
        except PayloadError:
            return Status.BAD_PAYLOAD, b""

    def _uptime_ms(self) -> int:
        return int((time.monotonic() - self.booted_at) * 1000) & 0xFFFFFFFF

    def _cmd_ping(self, p: bytes) -> tuple[int, bytes]:
        return Status.OK, u32(self._uptime_ms())

    def _cmd_echo(self, p: bytes) -> tuple[int, bytes]:
        if len(p) > self.max_payload - 1:  # the status byte must fit too
            return Status.BAD_PAYLOAD, b""
        return Status.OK, p

    def _cmd_status(self, p: bytes) -> tuple[int, bytes]:
        flags = self.flags | (Flag.KEYPAD_ENABLED if self.keypad else Flag(0))
        return Status.OK, DeviceStatus(flags, self.fill, self.ir, self.led[0], self.led[1], self._uptime_ms()).encode()

    def _cmd_reboot(self, p: bytes) -> tuple[int, bytes]:
        return Status.OK, b""

    def _cmd_keypad(self, p: bytes) -> tuple[int, bytes]:
        if len(p) != 1 or p[0] > 1:
            raise PayloadError("KEYPAD_ENABLE")
        self.keypad = bool(p[0])
        return Status.OK, b""

    def _cmd_light(self, p: bytes) -> tuple[int, bytes]:
        if len(p) != 2 or p[0] not in (0, 1) or p[1] > 100:
            raise PayloadError("LIGHT_SET")
        if p[0] == LightChannel.FILL:
            self.fill = p[1]
        else:
            self.ir = p[1]
        return Status.OK, b""

    def _cmd_led(self, p: bytes) -> tuple[int, bytes]:
        if len(p) != 2 or p[0] > 4 or p[1] > 3:
            raise PayloadError("LED_SET")
        self.led = (p[0], p[1])
        return Status.OK, b""

    def _cmd_buzzer(self, p: bytes) -> tuple[int, bytes]:
        if len(p) != 2 or p[0] > 4 or not 1 <= p[1] <= 10:
            raise PayloadError("BUZZER")
        return Status.OK, b""

    def _printer_flags(self) -> bytes:
        return bytes((int(self.flags) & 0x23,))

    def _cmd_print(self, p: bytes) -> tuple[int, bytes]:
        if "printer" in self.faults.broken:
            return Status.PERIPHERAL_FAULT, b""
        if self.flags & Flag.COVER_OPEN:
            return Status.COVER_OPEN, self._printer_flags()
        if self.flags & Flag.PAPER_OUT:
            return Status.PAPER_OUT, self._printer_flags()
        self.printed += p
        return Status.OK, self._printer_flags()

    def _cmd_printer_status(self, p: bytes) -> tuple[int, bytes]:
        return Status.OK, self._printer_flags()

    def _cmd_card(self, p: bytes) -> tuple[int, bytes]:
        if "card" in self.faults.broken:
            return Status.PERIPHERAL_FAULT, b""
        if self.faults.no_card_status and not self.flags & Flag.CARD_PRESENT:
            return Status.NO_CARD, b""
        return Status.OK, CardInfo(bool(self.flags & Flag.CARD_PRESENT), self.atr).encode()

    def _cmd_self_test(self, p: bytes) -> tuple[int, bytes]:
        ok = SelfTestBit.KEYPAD | SelfTestBit.CARD_READER | SelfTestBit.FILL_LIGHT | SelfTestBit.IR_LIGHT | SelfTestBit.BUZZER | SelfTestBit.LED
        if not self.flags & (Flag.PAPER_OUT | Flag.COVER_OPEN):
            ok |= SelfTestBit.PRINTER
        if "printer" in self.faults.broken:
            ok &= ~SelfTestBit.PRINTER
        if "card" in self.faults.broken:
            ok &= ~SelfTestBit.CARD_READER
        tested = 0x7F
        return Status.OK, bytes((tested, int(ok)))

    def _cmd_fw_begin(self, p: bytes) -> tuple[int, bytes]:
        b = FwBegin.decode(p)
        if b.size == 0 or b.size > FLASH_SIZE:
            return Status.BAD_PAYLOAD, u32(0)
        if b.version <= self.firmware:
            return Status.FW_ROLLBACK, u32(0)
        st = self.staging
        if st.begin != b:
            st.begin, st.data = b, bytearray()
        return Status.OK, u32(len(st.data))

    def _cmd_fw_chunk(self, p: bytes) -> tuple[int, bytes]:
        st = self.staging
        if st.begin is None:
            return Status.FW_BAD_STATE, u32(0)
        if len(p) < 5:
            raise PayloadError("FW_CHUNK")
        off = int.from_bytes(p[:4], "little")
        if off != len(st.data) or off + len(p) - 4 > st.begin.size:
            return Status.FW_BAD_OFFSET, u32(len(st.data))
        st.data += p[4:]
        return Status.OK, u32(len(st.data))

    def _cmd_fw_commit(self, p: bytes) -> tuple[int, bytes]:
        st = self.staging
        if len(p) != 64:
            raise PayloadError("FW_COMMIT")
        if st.begin is None or len(st.data) != st.begin.size:
            return Status.FW_BAD_STATE, u32(len(st.data))
        b = st.begin
        if hashlib.sha256(st.data).digest() != b.sha256:
            self.staging = Staging()
            return Status.FW_BAD_IMAGE, b""
        try:
            self.trusted_key.verify(p, signed_header(b.version, b.size, b.sha256))
        except Exception:  # InvalidSignature
            self.staging = Staging()
            return Status.FW_BAD_SIGNATURE, b""
        self.firmware = b.version
        self.staging = Staging()
        return Status.OK, b""

    def _cmd_fw_status(self, p: bytes) -> tuple[int, bytes]:
        st = self.staging
        if st.begin is None:
            return Status.OK, u32(0) + u32(0) + bytes(32)
        return Status.OK, u32(len(st.data)) + u32(st.begin.size) + st.begin.sha256


_HANDLERS = {
    Cmd.PING: VirtualMcu._cmd_ping,
    Cmd.ECHO: VirtualMcu._cmd_echo,
    Cmd.GET_STATUS: VirtualMcu._cmd_status,
    Cmd.REBOOT: VirtualMcu._cmd_reboot,
    Cmd.KEYPAD_ENABLE: VirtualMcu._cmd_keypad,
    Cmd.LIGHT_SET: VirtualMcu._cmd_light,
    Cmd.LED_SET: VirtualMcu._cmd_led,
    Cmd.BUZZER: VirtualMcu._cmd_buzzer,
    Cmd.PRINT: VirtualMcu._cmd_print,
    Cmd.PRINTER_STATUS: VirtualMcu._cmd_printer_status,
    Cmd.CARD_STATUS: VirtualMcu._cmd_card,
    Cmd.SELF_TEST: VirtualMcu._cmd_self_test,
    Cmd.FW_BEGIN: VirtualMcu._cmd_fw_begin,
    Cmd.FW_CHUNK: VirtualMcu._cmd_fw_chunk,
    Cmd.FW_COMMIT: VirtualMcu._cmd_fw_commit,
    Cmd.FW_STATUS: VirtualMcu._cmd_fw_status,
}


# --- ports: where the virtual MCU's UART is plugged -----------------------------------------


class _Port:
    """A thread pumping bytes between an OS handle and the MCU."""

    url: str

    def __init__(self, mcu: VirtualMcu) -> None:
        self.mcu = mcu
        self._stop = threading.Event()
        self._unplugged_until = 0.0
        self._pulled = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> _Port:
        self._plug()
        self._thread = threading.Thread(target=self._run, name=type(self).__name__, daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=3)
        self._unplug()

    def unplug(self, seconds: float) -> None:
        """Pull the cable for ``seconds`` (the host sees an I/O error / EOF); returns once it is out."""
        self._pulled.clear()
        self._unplugged_until = time.monotonic() + seconds
        if self._thread is not None and self._thread is not threading.current_thread():
            self._pulled.wait(1.0)

    def _plug(self) -> None: ...
    def _unplug(self) -> None: ...
    def _poll(self) -> None: ...

    def _run(self) -> None:
        plugged = True
        while not self._stop.is_set():
            if time.monotonic() < self._unplugged_until:
                if plugged:
                    self.mcu.detach()
                    self._unplug()
                    plugged = False
                self._pulled.set()
                time.sleep(0.005)
                continue
            if not plugged:
                self._plug()
                plugged = True
            try:
                self._poll()
            except OSError:
                time.sleep(0.005)
            self.mcu.tick()


class PtyPort(_Port):
    """The MCU on a pseudo-terminal; ``url`` is the slave path (or a stable symlink)."""

    def __init__(self, mcu: VirtualMcu, link: Path | None = None) -> None:
        super().__init__(mcu)
        self.link = link
        self.master = self.slave = -1
        self.url = ""

    def _plug(self) -> None:
        self.master, self.slave = os.openpty()
        tty.setraw(self.master)
        tty.setraw(self.slave)  # the host reopens it raw anyway; no echo meanwhile
        path = os.ttyname(self.slave)
        if self.link is not None:
            tmp = self.link.with_name(self.link.name + ".tmp")
            tmp.unlink(missing_ok=True)
            tmp.symlink_to(path)
            tmp.replace(self.link)
            self.url = str(self.link)
        else:
            self.url = path
        master = self.master
        os.set_blocking(master, False)

        def write(b: bytes) -> None:
            view = memoryview(b)
            while view:
                try:
                    n = os.write(master, view)
                except BlockingIOError:  # nobody reads the line: bytes fall off the wire, as on a UART
                    return
                view = view[n:]

        self.mcu.attach(write)

    def _unplug(self) -> None:
        if self.link is not None:  # an unplugged USB adapter disappears from /dev; its pty number may be reused
            self.link.unlink(missing_ok=True)
        for fd in (self.master, self.slave):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.master = self.slave = -1

    def _poll(self) -> None:
        r, _, _ = select.select([self.master], [], [], 0.01)
        if r:
            try:
                data = os.read(self.master, 65536)
            except OSError as e:
                if e.errno in (errno.EIO, errno.EAGAIN):
                    time.sleep(0.005)
                    return
                raise
            self.mcu.on_bytes(data)
            self._last = time.monotonic()
        elif self.mcu._deframer.buffered:
            self.mcu.on_idle()

    def close(self) -> None:
        super().close()
        if self.link is not None:
            self.link.unlink(missing_ok=True)


class TcpPort(_Port):
    """The MCU behind a TCP port, one client at a time; ``url`` is ``socket://127.0.0.1:PORT``."""

    def __init__(self, mcu: VirtualMcu, port: int = 0, host: str = "127.0.0.1") -> None:
        super().__init__(mcu)
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((host, port))
        self.listener.listen(1)
        self.url = f"socket://{host}:{self.listener.getsockname()[1]}"
        self.conn: socket.socket | None = None

    def _plug(self) -> None:
        pass

    def _unplug(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            except OSError:
                pass
            self.conn = None

    def _poll(self) -> None:
        if self.conn is None:
            r, _, _ = select.select([self.listener], [], [], 0.01)
            if r:
                conn, _ = self.listener.accept()
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                conn.setblocking(False)
                self.conn = conn

                def write(b: bytes) -> None:
                    view = memoryview(b)
                    while view:
                        try:
                            view = view[conn.send(view) :]
                        except BlockingIOError:  # the host stopped reading: drop, never block the MCU
                            return

                self.mcu.attach(write)
            return
        r, _, _ = select.select([self.conn], [], [], 0.01)
        if r:
            try:
                data = self.conn.recv(65536)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self.mcu.detach()
                self._unplug()
                return
            self.mcu.on_bytes(data)
        elif self.mcu._deframer.buffered:
            self.mcu.on_idle()

    def close(self) -> None:
        super().close()
        self.listener.close()


class _PtyLines:
    """A pty has no modem lines: accept the RFC 2217 control requests and ignore them."""

    def __init__(self, ser) -> None:
        object.__setattr__(self, "_ser", ser)

    def __getattr__(self, name: str):
        if name in ("cts", "dsr", "ri", "cd"):
            return False
        return getattr(self._ser, name)

    def __setattr__(self, name: str, value) -> None:
        if name in ("rts", "dtr", "break_condition"):
            return
        setattr(self._ser, name, value)


class Rfc2217Server:
    """An RFC 2217 port server in front of a pty, as a terminal server (e.g. a
    serial-to-Ethernet box) exposes a UART: lets tests open ``rfc2217://``."""

    def __init__(self, tty_path: str, port: int = 0, host: str = "127.0.0.1") -> None:
        self.tty_path = tty_path
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((host, port))
        self.listener.listen(1)
        self.url = f"rfc2217://{host}:{self.listener.getsockname()[1]}"
        self.logger = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="rfc2217", daemon=True)

    def start(self) -> Rfc2217Server:
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=3)
        self.listener.close()

    def _serve(self) -> None:
        import serial
        import serial.rfc2217

        while not self._stop.is_set():
            try:
                r, _, _ = select.select([self.listener], [], [], 0.05)
                if not r:
                    continue
                conn, _ = self.listener.accept()
            except (OSError, ValueError):
                return
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            ser = serial.serial_for_url(self.tty_path, timeout=0.01)

            class _Conn:
                def write(self, data: bytes) -> None:
                    conn.sendall(data)

            mgr = serial.rfc2217.PortManager(_PtyLines(ser), _Conn(), logger=self.logger)
            alive = threading.Event()
            alive.set()

            def uart_to_net() -> None:
                while alive.is_set():
                    try:
                        data = ser.read(ser.in_waiting or 1)
                        if data:
                            conn.sendall(b"".join(mgr.escape(data)))
                    except (OSError, serial.SerialException, TypeError):
                        alive.clear()

            t = threading.Thread(target=uart_to_net, daemon=True)
            t.start()
            try:
                while alive.is_set() and not self._stop.is_set():
                    r, _, _ = select.select([conn], [], [], 0.05)
                    if r:
                        data = conn.recv(4096)
                        if not data:
                            break
                        ser.write(b"".join(mgr.filter(data)))
            except OSError:
                pass
            finally:
                alive.clear()
                t.join(timeout=1)
                ser.close()
                conn.close()


class Simulator:
    """A virtual MCU plugged into a pty (default) or a TCP port."""

    def __init__(self, mcu: VirtualMcu | None = None, *, tcp: int | None = None, link: Path | None = None) -> None:
        self.mcu = mcu or VirtualMcu()
        self.port: _Port = TcpPort(self.mcu, tcp) if tcp is not None else PtyPort(self.mcu, link)

    @property
    def url(self) -> str:
        return self.port.url

    def start(self) -> Simulator:
        self.port.start()
        return self

    def close(self) -> None:
        self.port.close()

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def unplug(self, seconds: float) -> None:
        self.port.unplug(seconds)

    def run_command(self, line: str) -> str:
        """One script/stdin command; returns a short acknowledgement (or what was wrong with it)."""
        try:
            return self._run_command(line)
        except ValueError as e:  # a typo in a script line must not kill the simulator
            return f"bad arguments in {line.strip()!r}: {e}"

    def _run_command(self, line: str) -> str:
        m = self.mcu
        words = line.split()
        if not words or words[0].startswith("#"):
            return ""
        w, args = words[0].lower(), words[1:]
        arg = args[0] if args else ""
        if w == "keys":
            s = " ".join(args).replace("<bs>", "\b").replace("<enter>", "\r").replace("<cancel>", "\x1b")
            return f"keys sent: {m.press_keys(s)}"
        if w == "paper":
            m.paper_out(arg == "out")
        elif w == "cover":
            m.cover_open(arg == "open")
        elif w == "card":
            if arg == "remove":
                m.remove_card()
            else:
                m.insert_card(bytes.fromhex(args[1]) if len(args) > 1 else bytes.fromhex("3B6800000073C84013009000"))
        elif w == "tamper":
            m.tamper(arg != "closed")
        elif w == "unplug":
            self.unplug(float(arg or 2))
        elif w == "corrupt":
            m.faults.corrupt_tx += int(arg or 1)
        elif w == "truncate":
            m.faults.truncate_tx += int(arg or 1)
        elif w == "duplicate":
            m.faults.duplicate_tx += int(arg or 1)
        elif w == "garbage":
            m.inject(bytes.fromhex(arg) if arg else os.urandom(16))
        elif w == "slow":
            m.faults.delay = float(arg or 0)
        elif w == "mute":
            m.faults.mute = arg != "off"
        elif w == "busy":
            m.faults.busy += int(arg or 1)
        elif w == "fault":
            if arg in ("printer", "card"):
                m.faults.broken.add(arg)
            elif arg in ("off", "none"):
                m.faults.broken.clear()
            else:
                return f"fault: expected printer, card or off, got {arg!r}"
        elif w == "nocard":
            m.faults.no_card_status = arg != "off"
        elif w == "reboot":
            m.reboot()
        elif w == "sleep":
            time.sleep(float(arg))
        elif w == "status":
            return f"flags={m.flags!r} keypad={m.keypad} fill={m.fill} ir={m.ir} led={m.led} fw={'.'.join(map(str, m.firmware))} printed={len(m.printed)}"
        else:
            return f"unknown command {w!r}; try: keys, paper out|in, cover open|closed, card insert [ATR]|remove, tamper open|closed, unplug S, corrupt N, truncate N, duplicate N, garbage HEX, slow S, mute on|off, busy N, fault printer|card|off, nocard on|off, reboot, sleep S, status"
        return "ok"


def main(argv: list[str] | None = None) -> int:
    from firmware_bridge.firmware import load_public_key
    from firmware_bridge.messages import parse_version

    ap = argparse.ArgumentParser(prog="python -m firmware_bridge.sim", description="virtual terminal MCU on a pty or TCP port")
    ap.add_argument("--tcp", type=int, metavar="PORT", help="listen on 127.0.0.1:PORT (0 = any free port) instead of a pty")
    ap.add_argument("--link", type=Path, help="keep a symlink to the current pty here (stable across unplug)")
    ap.add_argument("--script", type=Path, help="run these commands (one a line) after start")
    ap.add_argument("--trust", type=Path, help="Ed25519 public key (PEM) firmware images must be signed with")
    ap.add_argument("--firmware", default="1.0.0", help="running firmware version")
    ap.add_argument("--rfc2217", type=int, metavar="PORT", help="also serve the pty as an RFC 2217 port on 127.0.0.1:PORT (0 = any)")
    a = ap.parse_args(argv)
    try:
        key = load_public_key(a.trust.read_bytes()) if a.trust else None
        script = a.script.read_text().splitlines() if a.script else []
        sim = Simulator(VirtualMcu(firmware=parse_version(a.firmware), trusted_key=key), tcp=a.tcp, link=a.link).start()
    except (OSError, ValueError, OverflowError, KioskError) as e:
        print(f"sim: {e}", file=sys.stderr)
        return 2
    print(f"URL {sim.url}", flush=True)
    rfc = None
    if a.rfc2217 is not None and a.tcp is None:
        rfc = Rfc2217Server(sim.url, a.rfc2217).start()
        print(f"RFC2217 {rfc.url}", flush=True)
    try:
        if script:
            for line in script:
                out = sim.run_command(line)
                if out:
                    print(out, flush=True)
        for line in sys.stdin:
            out = sim.run_command(line)
            if out:
                print(out, flush=True)
        if not sys.stdin.isatty():
            threading.Event().wait()  # stdin closed (e.g. started by a service): keep running
    except KeyboardInterrupt:
        pass
    finally:
        if rfc is not None:
            rfc.close()
        sim.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
