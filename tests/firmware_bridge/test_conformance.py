"""Conformance: the bridge against a device written from docs/protocol.md ALONE.

``DocDevice`` below was written by reading only the protocol document (no import
of the project's framer, CRC or message codecs): its CRC is the doc's bit-by-bit
definition, its frames follow the §1 table, its behaviour §2-§7. If the bridge
and the doc drift apart, these tests fail.
"""
from __future__ import annotations

import hashlib
import os
import random
import re
import select
import socket
import struct
import threading
import time
from collections.abc import Iterator

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from fastapi.testclient import TestClient

from firmware_bridge.bridge import Bridge
from firmware_bridge.client import BridgeClient
from firmware_bridge.service import create_app
from firmware_bridge.session import Link
from kiosk.config import ROOT
from kiosk.errors import DeviceError

from .conftest import FAST, wait_for

SOF, REQ, RSP, EVT, ACK, NAK = 0xA5, 1, 2, 3, 4, 5
MAXP = 1024


def crc16(data: bytes) -> int:
    """§1: CRC-16/CCITT-FALSE, bit by bit, MSB first."""
    crc = 0xFFFF
    for b in data:
        crc ^= b << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) & 0xFFFF if crc & 0x8000 else (crc << 1) & 0xFFFF
    return crc


def frame(typ: int, seq: int, cmd: int, payload: bytes = b"") -> bytes:
    n = len(payload)
    hdr = bytes([typ, seq, cmd, n & 0xFF, n >> 8])
    body = hdr + bytes([(~sum(hdr)) & 0xFF]) + payload
    c = crc16(body)
    return bytes([SOF]) + body + bytes([c >> 8, c & 0xFF])


class Parser:
    """§1 length-based resync (the T_gap rule is not needed: the host never truncates)."""

    def __init__(self) -> None:
        self.buf = bytearray()

    def feed(self, data: bytes) -> list[tuple]:
        self.buf += data
        out: list[tuple] = []
        while True:
            i = self.buf.find(SOF)
            if i < 0:
                self.buf.clear()
                return out
            del self.buf[:i]
            if len(self.buf) < 7:
                return out
            typ, seq, cmd, lo, hi, hcs = self.buf[1:7]
            n = lo | hi << 8
            if not 1 <= typ <= 5 or n > MAXP or (~(typ + seq + cmd + lo + hi)) & 0xFF != hcs:
                del self.buf[:1]
                continue
            if len(self.buf) < 9 + n:
                return out
            body, crcf = bytes(self.buf[1 : 7 + n]), bytes(self.buf[7 + n : 9 + n])
            if crc16(body) != crcf[0] << 8 | crcf[1]:
                del self.buf[:1]
                out.append(("bad", typ, seq, cmd))
                continue
            del self.buf[: 9 + n]
            out.append(("ok", typ, seq, cmd, body[6:], crcf))


class DocDevice:
    """A minimal MCU: HELLO/PING/ECHO/GET_STATUS/REBOOT/keypad/lights/LED/buzzer/printer/card/self-test."""

    def __init__(self, trusted: Ed25519PublicKey | None = None) -> None:
        self.fw = (1, 0, 0)
        self.trusted = trusted  # §8: the vendor's Ed25519 public key in the boot loader
        self.staging: dict = {"begin": None, "data": bytearray()}  # flash: survives reboots
        self.lock = threading.RLock()
        self.write = None
        self.rx: list[tuple[int, int, int, bytes]] = []  # (type, seq, cmd, payload) of every valid frame received
        self.executed: list[int] = []
        self.printed = bytearray()
        self.paper_out = False
        self.busy: set[int] = set()  # CMDs answered BUSY / PERIPHERAL_FAULT once
        self.fault: set[int] = set()
        self.drop_rsp: set[int] = set()  # CMDs whose next RSP is lost / damaged / whose next REQ arrives damaged
        self.corrupt_rsp: set[int] = set()
        self.damage_req: set[int] = set()
        self.no_card_status = True  # answer CARD_STATUS with NO_CARD when empty (§6 allows either)
        self.boot(0)

    def boot(self, reason: int) -> None:
        with self.lock:
            self.boot_id, self.t0 = random.getrandbits(32), time.monotonic()
            self.greeted, self.cache, self.evseq, self.queue, self.inflight = False, {}, 0, [], None
            self.keypad, self.fill, self.ir, self.led = False, 0, 0, (0, 0)
            self.event(0x80, struct.pack("<I3BB", self.boot_id, *self.fw, reason))

    def send(self, data: bytes) -> None:
        w = self.write
        if w is not None:
            try:
                w(data)
            except OSError:
                pass

    def event(self, cmd: int, payload: bytes) -> None:
        with self.lock:
            self.queue.append((cmd, payload))
            self._pump()

    def _pump(self) -> None:
        if self.inflight is None and self.queue:
            cmd, payload = self.queue.pop(0)
            self.inflight = [self.evseq, cmd, frame(EVT, self.evseq, cmd, payload), time.monotonic()]
            self.evseq = (self.evseq + 1) & 0xFF
            self.send(self.inflight[2])

    def tick(self) -> None:  # §2: retransmit the unacknowledged event every 100 ms
        with self.lock:
            if self.inflight and time.monotonic() - self.inflight[3] >= 0.1:
                self.inflight[3] = time.monotonic()
                self.send(self.inflight[2])

    def press(self, keys: str) -> None:
        for k in keys:
            if self.keypad:
                self.event(0x81, bytes([{"<": 0x08, "\n": 0x0D, "!": 0x1B}.get(k, ord(k))]))

    def on_bytes(self, parser: Parser, data: bytes) -> None:
        with self.lock:
            for f in parser.feed(data):
                self.on_frame(f)

    def on_frame(self, f: tuple) -> None:
        if f[0] == "bad":
            if f[1] == REQ:
                self.send(frame(NAK, f[2], f[3], b"\x01"))
            return
        _, typ, seq, cmd, payload, crcf = f
        self.rx.append((typ, seq, cmd, payload))
        if typ == ACK:
            if self.inflight and self.inflight[0] == seq and self.inflight[1] == cmd:
                self.inflight = None
                self._pump()
        elif typ == NAK:
            if self.inflight and self.inflight[0] == seq:
                self.send(self.inflight[2])
            elif seq in self.cache:
                self.send(self.cache[seq][1])
        elif typ == REQ:
            if cmd in self.damage_req:  # as if a bit flipped on the wire: §1 step 3
                self.damage_req.discard(cmd)
                self.send(frame(NAK, seq, cmd, b"\x01"))
                return
            if cmd != 0x01 and seq in self.cache and self.cache[seq][0] == crcf:
                self.send(self.cache[seq][1])  # §3 duplicate: replay, never execute twice
                return
            if cmd == 0x01 and self.inflight:
                self.send(self.inflight[2])  # the unacknowledged BOOT races the HELLO answer (worst case for the host)
            if cmd in (0x30, 0x60):
                self.send(frame(ACK, seq, cmd))  # §2: slower than 10 ms, ACK first
            status, data = self.execute(cmd, payload)
            rsp = frame(RSP, seq, cmd, bytes([status]) + data)
            self.cache[seq] = (crcf, rsp)
            if len(self.cache) > 32:
                self.cache.pop(next(iter(self.cache)))
            if cmd in self.drop_rsp:
                self.drop_rsp.discard(cmd)
            elif cmd in self.corrupt_rsp:  # a bit flipped on the way to the host: it NAKs, we replay the cache
                self.corrupt_rsp.discard(cmd)
                self.send(rsp[:-1] + bytes([rsp[-1] ^ 0x01]))
            else:
                self.send(rsp)
            if cmd == 0x05 and status == 0:
                self.boot(3)
            if cmd == 0x52 and status == 0:
                self.fw = self.staging["begin"][1]
                self.staging = {"begin": None, "data": bytearray()}
                self.boot(2)

    def flags(self) -> int:
        return self.paper_out * 0x01 | self.keypad * 0x10

    def execute(self, cmd: int, p: bytes) -> tuple[int, bytes]:
        if cmd == 0x01:
            if len(p) != 2:
                return 2, b""
            if p[1] < 1 or p[0] > 1:
                return 4, b"\x01\x01"
            self.greeted, self.cache = True, {}
            return 0, struct.pack("<BH3BI", 1, MAXP, *self.fw, self.boot_id) + b"\x06DOC-MC\x05D0001"
        if not self.greeted:
            return 5, b""
        self.executed.append(cmd)
        if cmd in self.busy:
            self.busy.discard(cmd)
            return 3, b""
        if cmd == 0x02:
            return 0, struct.pack("<I", int((time.monotonic() - self.t0) * 1000))
        if cmd == 0x03:
            return 0, bytes(p)
        if cmd == 0x04:
            return 0, struct.pack("<5BI", self.flags(), self.fill, self.ir, *self.led, 0)
        if cmd == 0x05:
            return 0, b""
        if cmd == 0x10:
            if len(p) != 1 or p[0] > 1:
                return 2, b""
            self.keypad = bool(p[0])
            return 0, b""
        if cmd == 0x20:
            if len(p) != 2 or p[0] > 1 or p[1] > 100:
                return 2, b""
            if p[0] == 0:
                self.fill = p[1]
            else:
                self.ir = p[1]
            return 0, b""
        if cmd == 0x21:
            if len(p) != 2 or p[0] > 4 or p[1] > 3:
                return 2, b""
            self.led = (p[0], p[1])
            return 0, b""
        if cmd == 0x22:
            return (0 if len(p) == 2 and p[0] <= 4 and 1 <= p[1] <= 10 else 2), b""
        if cmd == 0x30:
            if cmd in self.fault:
                self.fault.discard(cmd)
                return 6, b""
            if self.paper_out:
                return 7, bytes([self.flags() & 0x23])
            self.printed += p
            return 0, bytes([self.flags() & 0x23])
        if cmd == 0x31:
            return 0, bytes([self.flags() & 0x23])
        if cmd == 0x40:
            return (9, b"") if self.no_card_status else (0, b"\x00\x00")
        if cmd == 0x60:
            return 0, b"\x7f\x7f"
        if 0x50 <= cmd <= 0x53:
            return self.firmware(cmd, p)
        return 1, b""

    def firmware(self, cmd: int, p: bytes) -> tuple[int, bytes]:
        """§8, from the text: FW_BEGIN (resume), FW_CHUNK (append at next_offset), FW_COMMIT (digest, signature)."""
        st, u32 = self.staging, lambda n: struct.pack("<I", n)
        if cmd == 0x50:
            if len(p) != 39:
                return 2, b""
            size, ver, digest = struct.unpack_from("<I", p)[0], tuple(p[4:7]), p[7:39]
            if size == 0:
                return 2, b""
            if ver <= self.fw:
                return 0x0E, b""
            if st["begin"] != (size, ver, digest):
                self.staging = st = {"begin": (size, ver, digest), "data": bytearray()}
            return 0, u32(len(st["data"]))
        if cmd == 0x51:
            if st["begin"] is None:
                return 0x0D, u32(0)
            if len(p) < 5:
                return 2, b""
            off = struct.unpack_from("<I", p)[0]
            if off != len(st["data"]) or off + len(p) - 4 > st["begin"][0]:
                return 0x0A, u32(len(st["data"]))
            st["data"] += p[4:]
            return 0, u32(len(st["data"]))
        if cmd == 0x52:
            if len(p) != 64:
                return 2, b""
            if st["begin"] is None or len(st["data"]) != st["begin"][0]:
                return 0x0D, u32(len(st["data"]))
            size, ver, digest = st["begin"]
            if hashlib.sha256(st["data"]).digest() != digest:
                self.staging = {"begin": None, "data": bytearray()}  # a failed check erases staging
                return 0x0B, b""
            try:
                if self.trusted is None:
                    raise InvalidSignature
                self.trusted.verify(p, b"KFW1" + bytes(ver) + struct.pack("<I", size) + digest)
            except InvalidSignature:
                self.staging = {"begin": None, "data": bytearray()}
                return 0x0C, b""
            return 0, b""
        if st["begin"] is None:
            return 0, bytes(40)
        return 0, u32(len(st["data"])) + u32(st["begin"][0]) + st["begin"][2]


class TcpPort:
    """The device behind a TCP port (socket:// URL); ``unplug()`` drops the connection."""

    def __init__(self, dev: DocDevice) -> None:
        self.dev, self.conn = dev, None
        self.srv = socket.create_server(("127.0.0.1", 0))
        self.url = f"socket://127.0.0.1:{self.srv.getsockname()[1]}"
        self.stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        self.srv.settimeout(0.05)
        while not self.stop.is_set():
            try:
                c, _ = self.srv.accept()
            except OSError:
                self.dev.tick()
                continue
            c.settimeout(0.01)
            parser = Parser()
            with self.dev.lock:
                self.conn, self.dev.write = c, c.sendall
                if self.dev.inflight:
                    self.dev.send(self.dev.inflight[2])
            while not self.stop.is_set():
                try:
                    d = c.recv(4096)
                    if not d:
                        break
                    self.dev.on_bytes(parser, d)
                except TimeoutError:
                    self.dev.tick()
                except OSError:
                    break
            with self.dev.lock:
                self.dev.write = None
            c.close()

    def unplug(self) -> None:
        c = self.conn
        if c is not None:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed

    def close(self) -> None:
        self.stop.set()
        self.unplug()
        self.srv.close()


class PtyPort:
    """The device on the master side of a real pseudo-terminal."""

    def __init__(self, dev: DocDevice) -> None:
        self.dev = dev
        self.master, slave = os.openpty()
        self.url = os.ttyname(slave)
        self._slave = slave  # kept open so the master never sees EIO while the host reopens
        self.stop = threading.Event()
        dev.write = lambda b: os.write(self.master, b)
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        parser = Parser()
        while not self.stop.is_set():
            r, _, _ = select.select([self.master], [], [], 0.01)
            if r:
                try:
                    self.dev.on_bytes(parser, os.read(self.master, 4096))
                except OSError:
                    time.sleep(0.01)
            self.dev.tick()

    def close(self) -> None:
        self.stop.set()
        time.sleep(0.03)
        os.close(self.master)
        os.close(self._slave)


@pytest.fixture(params=["pty", "tcp"])
def rig(request: pytest.FixtureRequest) -> Iterator[tuple[DocDevice, object, Link, BridgeClient]]:
    dev = DocDevice()
    port = PtyPort(dev) if request.param == "pty" else TcpPort(dev)
    try:
        with Link(port.url, timing=FAST) as link:
            link.wait_connected(3)
            app = create_app(Bridge(link))
            with TestClient(app) as http:
                yield dev, port, link, BridgeClient("http://testserver", http=http, token=app.state.token)
    finally:
        port.close()


def test_doc_examples_reencode_with_the_doc_rules() -> None:
    """Every worked example in §9 is a valid frame by the doc's own HCS/CRC rules."""
    assert crc16(b"123456789") == 0x29B1
    doc = (ROOT / "docs" / "protocol.md").read_text()
    rows = re.findall(r"^\| \d+ \| [DH]→[DH] \| .*? \| `([0-9a-f ]+)` \|$", doc, re.M)
    assert len(rows) >= 20
    for hx in rows:
        raw = bytes.fromhex(hx)
        got = Parser().feed(raw)
        assert len(got) == 1 and got[0][0] == "ok", hx
        _, typ, seq, cmd, payload, _ = got[0]
        assert frame(typ, seq, cmd, payload) == raw


def test_bridge_drives_a_doc_only_device(rig) -> None:
    dev, _, link, c = rig
    st = c.status()
    assert st["state"] == "connected" and st["model"] == "DOC-MC" and st["device_serial"] == "D0001" and st["firmware"] == "1.0.0"
    wait_for(lambda: any(t == ACK and cmd == 0x80 and seq == 0 for t, seq, cmd, _ in dev.rx), what="ACK of BOOT")
    time.sleep(0.1)
    # the BOOT raced the HELLO and carries the boot_id of its answer: one HELLO only (a second one would
    # clear the device's response cache under a command in flight, §4)
    assert sum(1 for t, _, cmd, _ in dev.rx if t == REQ and cmd == 0x01) == 1
    assert not any(t in (RSP, EVT) for t, *_ in dev.rx)  # §2: the host never sends device frame types
    # heartbeat: PING when quiet
    n = len(dev.rx)
    wait_for(lambda: any(t == REQ and cmd == 0x02 for t, _, cmd, _ in dev.rx[n:]), 2, "PING")
    # ID entry: keypad enabled, keys as events, check character verified, keypad off again
    e = c.start_id_entry(timeout_s=30)
    wait_for(lambda: dev.keypad, what="KEYPAD_ENABLE 1")
    dev.press("110105194912310021<X\n")
    done = c.wait_id_entry(e["session_id"], poll=0.01, timeout=3)
    assert done["state"] == "accepted" and done["value"] == "11010519491231002X" and done["display"] == "*" * 18
    wait_for(lambda: not dev.keypad, what="KEYPAD_ENABLE 0")
    # print passes ESC/POS through unchanged, in order, across several PRINT frames
    job = b"\x1b@" + bytes(range(256)) * 5 + b"\n"
    r = c.print_escpos(job)
    assert r["printed"] and r["bytes_sent"] == len(job) and bytes(dev.printed) == job
    dev.paper_out = True
    r = c.print_escpos(b"again\n")
    assert not r["printed"] and r["status"] == "paper_out" and r["paper_out"] and r["bytes_sent"] == 0
    c.light("ir", 40)
    c.led("amber", "pulse")
    assert dev.ir == 40 and dev.led == (3, 3)


def test_lost_or_damaged_frames_never_execute_twice(rig) -> None:
    dev, _, link, c = rig
    dev.drop_rsp.add(0x20)  # §3 lost RSP: the host's RTO resends the identical REQ, the device replays its cache
    c.light("fill", 33)
    assert dev.fill == 33 and dev.executed.count(0x20) == 1 and link.stats.retransmits == 1
    dev.corrupt_rsp.add(0x30)  # §3 damaged RSP of an ACKed PRINT: NAK, the cached RSP comes again
    assert c.print_escpos(b"once\n")["printed"]
    assert bytes(dev.printed) == b"once\n" and dev.executed.count(0x30) == 1
    assert link.stats.naks_sent == 1
    dev.damage_req.add(0x20)  # §3 damaged REQ: NAK, the host resends at once
    c.light("fill", 70)
    assert dev.fill == 70 and link.stats.naks_received == 1


def test_status_codes_busy_fault_no_card(rig) -> None:
    dev, _, link, c = rig
    dev.busy.add(0x20)
    with pytest.raises(DeviceError) as ei:
        c.light("fill", 10)
    assert ei.value.code == "device_busy"
    c.light("fill", 10)  # BUSY is an answer, not a broken link
    dev.fault.add(0x30)
    r = c.print_escpos(b"x\n")
    assert not r["printed"] and r["status"] == "peripheral_fault" and r["bytes_sent"] == 0
    assert c.card() == {"present": False, "atr": ""}  # NO_CARD to CARD_STATUS means "no card"
    dev.no_card_status = False
    assert c.card() == {"present": False, "atr": ""}


def test_reboot_and_unplug(rig) -> None:
    dev, port, link, c = rig
    before = sum(1 for t, _, cmd, _ in dev.rx if t == REQ and cmd == 0x01)
    dev.boot(1)  # watchdog: BOOT with a new boot_id, NOT_READY until greeted
    wait_for(lambda: dev.greeted, what="HELLO after BOOT")
    assert sum(1 for t, _, cmd, _ in dev.rx if t == REQ and cmd == 0x01) > before
    c.light("fill", 5)
    assert dev.fill == 5
    if isinstance(port, TcpPort):
        port.unplug()
        wait_for(lambda: c.status()["state"] != "connected", what="disconnected")
        wait_for(lambda: c.status()["state"] == "connected", what="reconnected")
        c.light("fill", 6)
        assert dev.fill == 6


KEY = Ed25519PrivateKey.generate()


@pytest.mark.parametrize("stop", [0, 3, 6])
def test_firmware_update_with_resume_on_a_doc_only_device(stop: int) -> None:
    """§8: the host's updater (image built by the project's signer) against the device's reading of the doc."""
    from firmware_bridge.firmware import FirmwareUpdater, sign_image

    image = sign_image(KEY, (1, 2, 0), os.urandom(100 * 6 + 7))  # 7 chunks of 100 bytes, the last short
    dev = DocDevice(trusted=KEY.public_key())
    port = TcpPort(dev)
    try:
        with Link(port.url, timing=FAST) as link:
            link.wait_connected(3)
            up = FirmwareUpdater(link, chunk_size=100)
            first = up.update(image, stop_after_chunks=stop)
            assert not first.complete and len(dev.staging["data"]) == stop * 100
            port.unplug()  # interruption: staging survives, the next FW_BEGIN resumes
            wait_for(lambda: link.state.value != "connected", what="unplugged")
            link.wait_connected(3)
            second = up.update(image)
            assert second.complete and second.resumed_from == stop * 100 and second.chunks_sent == 7 - stop
            assert dev.fw == (1, 2, 0) and link.info.firmware == (1, 2, 0)
            assert dev.executed.count(0x51) == 7  # every chunk sent exactly once
    finally:
        port.close()


def test_firmware_signed_by_another_key_is_refused_and_erased() -> None:
    from firmware_bridge.firmware import FirmwareUpdater, sign_image

    image = sign_image(Ed25519PrivateKey.generate(), (1, 2, 0), os.urandom(300))
    dev = DocDevice(trusted=KEY.public_key())
    port = TcpPort(dev)
    try:
        with Link(port.url, timing=FAST) as link:
            link.wait_connected(3)
            with pytest.raises(DeviceError) as ei:
                FirmwareUpdater(link).update(image)
            assert ei.value.code == "device_fw_bad_signature"
            assert dev.fw == (1, 0, 0) and dev.staging["begin"] is None
    finally:
        port.close()
