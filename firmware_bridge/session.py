"""The link session: ACK/NAK, retransmission, duplicate detection, heartbeat,
version negotiation and reconnection with backoff, over any transport.

Threads, not asyncio: pyserial is a blocking API (pyserial-asyncio is not a
dependency and its pty/rfc2217 support is partial). One reader thread per open
connection blocks in ``read`` and reacts to a byte within microseconds, with
no event-loop hop; one supervisor thread opens, greets (HELLO), sends
heartbeats and reconnects. Callers (HTTP worker threads) call ``request`` from
any thread; it is thread-safe and blocks only its caller. See docs/protocol.md.
"""
from __future__ import annotations

import collections
import enum
import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from firmware_bridge import PROTOCOL_VERSION
from firmware_bridge.frame import MAX_PAYLOAD, Damaged, Deframer, Frame, FrameType, NakReason
from firmware_bridge.messages import BootEvent, Cmd, DeviceInfo, Evt, HelloReq, PayloadError, Status, fmt_version, status_text
from firmware_bridge.transport import DEFAULT_BAUD, SerialTransport
from kiosk.errors import DeviceError

log = logging.getLogger(__name__)

PROTO_MIN = 1
PROTO_MAX = PROTOCOL_VERSION


class LinkState(str, enum.Enum):
    DISCONNECTED = "disconnected"
    CONNECTING = "connecting"
    CONNECTED = "connected"


@dataclass(frozen=True)
class Timing:
    """Link timers (seconds). Defaults suit 115200 baud; docs/protocol.md §Timing."""

    rto: float = 0.05  # wait for RSP/ACK before retransmitting (plus line time of the frame)
    retries: int = 3  # retransmissions after the first send
    exec_timeout: float = 2.0  # after an ACK, wait this long for the RSP
    heartbeat: float = 1.0  # PING when the line has been quiet this long
    gap: float = 0.02  # inter-byte gap that abandons a partial frame
    backoff_min: float = 0.05
    backoff_max: float = 2.0


@dataclass(frozen=True)
class Response:
    cmd: int
    status: int
    data: bytes

    @property
    def ok(self) -> bool:
        return self.status == Status.OK

    def check(self, what: str) -> bytes:
        """Data when OK; otherwise a DeviceError naming the status."""
        if self.status != Status.OK:
            try:
                name = Status(self.status).name.lower()
            except ValueError:
                name = f"status_{self.status:02x}"
            raise DeviceError(f"{what}: {status_text(self.status)}", code=f"device_{name}")
        return self.data


@dataclass(frozen=True)
class RawFrame:
    t: float  # unix time
    direction: str  # "tx" | "rx" | "bad"
    hex: str
    summary: str


class FrameRing:
    """The last N raw frames, for the technician page."""

    def __init__(self, size: int = 200) -> None:
        self._d: collections.deque[RawFrame] = collections.deque(maxlen=size)
        self._lock = threading.Lock()
        self.enabled = True

    def add(self, direction: str, raw: bytes, summary: str) -> None:
        if self.enabled:
            with self._lock:
                self._d.append(RawFrame(time.time(), direction, raw.hex(" "), summary))

    def snapshot(self, limit: int = 200) -> list[RawFrame]:
        with self._lock:
            return list(self._d)[-limit:]


@dataclass
class _Pending:
    seq: int
    cmd: int
    raw: bytes
    wake: threading.Event = field(default_factory=threading.Event)
    response: bytes | None = None
    acked: bool = False
    nak: bool = False
    failed: str | None = None


EventListener = Callable[[int, bytes], None]


@dataclass
class LinkStats:
    requests: int = 0
    retransmits: int = 0
    naks_sent: int = 0
    naks_received: int = 0
    events: int = 0
    duplicate_events: int = 0
    reconnects: int = 0


class Link:
    """A session with one MCU. ``start()`` then ``request(cmd, payload)``."""

    def __init__(
        self,
        url: str = "",
        *,
        baudrate: int = DEFAULT_BAUD,
        timing: Timing | None = None,
        transport_factory: Callable[[], SerialTransport] | None = None,
        ring: FrameRing | None = None,
        window: int = 8,
    ) -> None:
        self.url = url
        self.timing = timing or Timing()
        self.baudrate = baudrate
        self._factory = transport_factory or (lambda: SerialTransport(url, baudrate=baudrate))
        self.ring = ring or FrameRing()
        self.stats = LinkStats()
        self.state = LinkState.DISCONNECTED
        self.info: DeviceInfo | None = None
        self.protocol: int | None = None
        self.last_error: str | None = None
        self._listeners: list[EventListener] = []
        self._state_listeners: list[Callable[[LinkState], None]] = []
        self._pending: dict[int, _Pending] = {}
        self._plock = threading.Lock()
        self._wlock = threading.Lock()
        self._seq = itertools.count(int(time.monotonic_ns()) & 0xFF)
        self._window = threading.BoundedSemaphore(window)
        self._transport: SerialTransport | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._rehello = threading.Event()
        self._boot_seen: int | None = None  # boot_id of the latest BOOT event (None: none or malformed)
        self._connected = threading.Condition()
        self._supervisor: threading.Thread | None = None
        self._last_rx = 0.0
        self._last_evt: tuple[int, bytes] | None = None
        self._max_payload = MAX_PAYLOAD

    # --- public -------------------------------------------------------------------------

    def add_listener(self, fn: EventListener) -> None:
        """``fn(event_code, payload)`` is called on the reader thread for each new event: keep it quick."""
        self._listeners.append(fn)

    def add_state_listener(self, fn: Callable[[LinkState], None]) -> None:
        self._state_listeners.append(fn)

    def start(self) -> Link:
        if self._supervisor is None:
            self._supervisor = threading.Thread(target=self._supervise, name="link-supervisor", daemon=True)
            self._supervisor.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._supervisor is not None:
            self._supervisor.join(timeout=5)
            self._supervisor = None

    def __enter__(self) -> Link:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait_connected(self, timeout: float = 5.0) -> DeviceInfo:
        deadline = time.monotonic() + timeout
        with self._connected:
            while self.state != LinkState.CONNECTED:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise DeviceError(f"terminal microcontroller not connected on {self.url or 'link'}: {self.last_error or 'no answer'}", code="disconnected")
                self._connected.wait(left)
        assert self.info is not None
        return self.info

    def request(self, cmd: int, payload: bytes = b"", *, exec_timeout: float | None = None) -> Response:
        """Send one command and wait for its response (retransmitting as needed).

        Raises DeviceError(code="disconnected"|"timeout") when the link fails;
        a non-OK status is returned as a value (``Response.check`` raises).
        """
        if self.state != LinkState.CONNECTED:
            why = self.last_error or "not connected"
            todo = "" if "no common protocol version" in why else (  # that error carries its own remedy
                "; check the cable to the terminal controller: the bridge keeps trying to reconnect")
            raise DeviceError(f"terminal microcontroller is disconnected ({why}){todo}", code="disconnected")
        rsp = self._request(cmd, payload, exec_timeout)
        if rsp.status == Status.NOT_READY and cmd != Cmd.HELLO:  # device rebooted under us
            self._handshake()
            rsp = self._request(cmd, payload, exec_timeout)
        return rsp

    def write_raw(self, data: bytes) -> None:
        """Test hook: put arbitrary bytes on the line."""
        self._write(data, None)

    # --- internals ----------------------------------------------------------------------

    def _set_state(self, s: LinkState) -> None:
        if s != self.state:
            self.state = s
            with self._connected:
                self._connected.notify_all()
            for fn in self._state_listeners:
                try:
                    fn(s)
                except Exception:  # a listener's bug must not kill the link
                    log.exception("state listener failed")

    def _next_seq(self) -> int:
        with self._plock:
            while True:
                s = next(self._seq) & 0xFF
                if s not in self._pending:
                    return s

    def _write(self, raw: bytes, frame: Frame | None) -> None:
        t = self._transport
        if t is None:
            raise DeviceError("terminal microcontroller is disconnected", code="disconnected")
        self.ring.add("tx", raw, describe(frame) if frame else "raw bytes")  # before the answer can be logged
        with self._wlock:
            t.write(raw)

    def _request(self, cmd: int, payload: bytes, exec_timeout: float | None) -> Response:
        tm = self.timing
        if len(payload) > self._max_payload:
            raise DeviceError(f"payload of {len(payload)} bytes exceeds the device's maximum of {self._max_payload}", code="too_long")
        with self._window:
            seq = self._next_seq()
            frame = Frame(FrameType.REQ, seq, cmd, payload)
            p = _Pending(seq, cmd, frame.encode())
            with self._plock:
                self._pending[seq] = p
            self.stats.requests += 1
            rto = tm.rto + (len(p.raw) + 64) * 10 / self.baudrate
            try:
                self._write(p.raw, frame)
                sent = 1
                deadline = time.monotonic() + rto
                while True:
                    left = deadline - time.monotonic()
                    if left > 0 and p.wake.wait(left):
                        p.wake.clear()
                        if p.response is not None:
                            break
                        if p.failed:
                            raise DeviceError(f"{_cmd_name(cmd)}: {p.failed}", code="disconnected")
                        if p.nak and sent <= tm.retries:
                            p.nak = False
                            self.stats.retransmits += 1
                            self._write(p.raw, frame)
                            sent += 1
                            deadline = time.monotonic() + rto
                        elif p.acked:
                            deadline = time.monotonic() + (exec_timeout or tm.exec_timeout)
                            p.acked = False  # extend once per ACK
                        continue
                    if p.response is not None:
                        break
                    if sent > tm.retries:
                        raise DeviceError(f"{_cmd_name(cmd)}: no response from the terminal microcontroller after {sent} attempts", code="timeout")
                    self.stats.retransmits += 1
                    self._write(p.raw, frame)
                    sent += 1
                    deadline = time.monotonic() + rto
            finally:
                with self._plock:
                    self._pending.pop(seq, None)
        data = p.response
        if not data:
            return Response(cmd, Status.BAD_PAYLOAD, b"")
        return Response(cmd, data[0], bytes(data[1:]))

    def _handshake(self) -> DeviceInfo:
        rsp = self._request(Cmd.HELLO, HelloReq(PROTO_MIN, PROTO_MAX).encode(), None)
        if rsp.status == Status.UNSUPPORTED_VERSION:
            dev = f"{rsp.data[0]}..{rsp.data[1]}" if len(rsp.data) >= 2 else "an unknown range"
            fix = "update the bridge software" if len(rsp.data) >= 2 and rsp.data[0] > PROTO_MAX else "update the terminal controller's firmware"
            raise DeviceError(
                f"no common protocol version: the terminal controller speaks {dev}, this bridge {PROTO_MIN}..{PROTO_MAX}; {fix}",
                code="unsupported_version",
            )
        try:
            info = DeviceInfo.decode(rsp.check("HELLO"))
        except PayloadError as e:
            raise DeviceError(f"HELLO: malformed response: {e}", code="protocol_error") from e
        if not PROTO_MIN <= info.protocol <= PROTO_MAX:
            raise DeviceError(f"device chose protocol {info.protocol}, outside {PROTO_MIN}..{PROTO_MAX}", code="unsupported_version")
        self.info, self.protocol = info, info.protocol
        self._max_payload = min(MAX_PAYLOAD, info.max_payload)
        log.info("MCU %s %s firmware %s protocol %d", info.model, info.serial, fmt_version(info.firmware), info.protocol)
        return info

    def _fail_pending(self, why: str) -> None:
        with self._plock:
            for p in self._pending.values():
                p.failed = why
                p.wake.set()

    def _supervise(self) -> None:
        tm = self.timing
        delay = tm.backoff_min
        first = True
        while not self._stop.is_set():
            if not first:
                self.stats.reconnects += 1
            first = False
            self._set_state(LinkState.CONNECTING)
            try:
                t = self._factory()
                t.open()
            except Exception as e:  # noqa: BLE001 - the supervisor must never die
                self.last_error = e.message if isinstance(e, DeviceError) else f"cannot open {self.url}: {e!r}"
                self._set_state(LinkState.DISCONNECTED)
                self._stop.wait(delay)
                delay = min(delay * 2, tm.backoff_max)
                continue
            self._transport = t
            alive = threading.Event()
            alive.set()
            reader = threading.Thread(target=self._read_loop, args=(t, alive), name="link-reader", daemon=True)
            reader.start()
            try:
                self._rehello.clear()
                self._handshake()
                self.last_error = None
                self._set_state(LinkState.CONNECTED)
                delay = tm.backoff_min
                while not self._stop.is_set() and alive.is_set():
                    if self._rehello.is_set():
                        self._rehello.clear()
                        # a BOOT that raced our HELLO carries the boot_id we were just told: no second HELLO
                        # (it would clear the device's response cache under a command in flight)
                        if self.info is None or self._boot_seen != self.info.boot_id:
                            self._handshake()
                    elif not self._pending and time.monotonic() - self._last_rx >= tm.heartbeat:
                        # (an outstanding command is its own liveness check)
                        self._request(Cmd.PING, b"", None)
                    self._wake.wait(tm.heartbeat / 4)
                    self._wake.clear()
                if alive.is_set() is False and not self._stop.is_set():
                    self.last_error = self.last_error or "serial link lost"
            except DeviceError as e:
                self.last_error = e.message
                log.warning("link %s: %s", self.url, e.message)
            except Exception as e:  # noqa: BLE001 - a bug here must not stop reconnection
                self.last_error = f"internal error: {e!r}"
                log.exception("link %s supervisor", self.url)
            finally:
                alive.clear()
                self._transport = None
                self._fail_pending(self.last_error or "link closed")
                self._set_state(LinkState.DISCONNECTED)  # before close(): pyserial's socket:// close sleeps 0.3 s
                t.close()
                reader.join(timeout=2)
            if not self._stop.is_set():
                self._stop.wait(delay)
                delay = min(delay * 2, tm.backoff_max)

    def _read_loop(self, t: SerialTransport, alive: threading.Event) -> None:
        deframer = Deframer()
        gap = self.timing.gap
        last = time.monotonic()
        while alive.is_set():
            try:
                data = t.read()
            except Exception as e:  # noqa: BLE001 - any failure here means the link is gone
                if alive.is_set():
                    self.last_error = str(e.args[0] if e.args else e)
                alive.clear()
                self._fail_pending(self.last_error or "serial link lost")  # callers (and a heartbeat PING) stop waiting now
                self._wake.set()
                return
            now = time.monotonic()
            if data:
                last = self._last_rx = now
                items = deframer.feed(data)
            elif deframer.buffered and now - last > gap:
                items = deframer.expire()
            else:
                continue
            for it in items:
                try:
                    self._on_item(it)
                except DeviceError:
                    pass  # write failed: the read side will notice the loss

    def _on_item(self, it: Frame | Damaged) -> None:
        if isinstance(it, Damaged):
            self.ring.add("bad", b"", f"damaged type={it.type} seq={it.seq} cmd=0x{it.cmd:02X}")
            if it.type in (FrameType.RSP, FrameType.EVT):
                self.stats.naks_sent += 1
                nak = Frame(FrameType.NAK, it.seq, it.cmd, bytes((NakReason.BAD_CRC,)))
                self._write(nak.encode(), nak)
            return
        if it.type == FrameType.EVT and it.cmd == Evt.KEY:  # key codes are ID-number digits: never shown
            self.ring.add("rx", it.encode()[:7], f"{describe(it)} (key redacted)")
        else:
            self.ring.add("rx", it.encode(), describe(it))
        if it.type in (FrameType.RSP, FrameType.ACK, FrameType.NAK):
            with self._plock:
                p = self._pending.get(it.seq)
            if p is None or (p.cmd != it.cmd and it.type != FrameType.NAK):
                return  # late duplicate of an answered request
            if it.type == FrameType.RSP:
                p.response = it.payload
            elif it.type == FrameType.ACK:
                p.acked = True
            else:
                self.stats.naks_received += 1
                p.nak = True
            p.wake.set()
        elif it.type == FrameType.EVT:
            ack = Frame(FrameType.ACK, it.seq, it.cmd)
            self._write(ack.encode(), ack)
            key = (it.seq, it.encode()[-2:])  # same SEQ and CRC as the last event: a retransmission
            if key == self._last_evt:
                self.stats.duplicate_events += 1
                return
            self._last_evt = key
            self.stats.events += 1
            if it.cmd == Evt.BOOT:
                try:
                    boot = BootEvent.decode(it.payload)
                except PayloadError:
                    boot = None
                self._boot_seen = boot.boot_id if boot is not None else None
                if self.info is None or boot is None or boot.boot_id != self.info.boot_id:
                    self._rehello.set()
                    self._wake.set()
            for fn in self._listeners:
                try:
                    fn(it.cmd, it.payload)
                except Exception:
                    log.exception("event listener failed")


def describe(f: Frame) -> str:
    """One line for the technician page: ``REQ #12 PRINT 37 B``."""
    name = Evt(f.cmd).name if f.cmd in Evt._value2member_map_ else _cmd_name(f.cmd)
    extra = ""
    if f.type == FrameType.RSP and f.payload:
        extra = f" {Status(f.payload[0]).name if f.payload[0] in Status._value2member_map_ else hex(f.payload[0])}"
    return f"{f.type.name} #{f.seq} {name} {len(f.payload)} B{extra}"


def _cmd_name(cmd: int) -> str:
    try:
        return Cmd(cmd).name
    except ValueError:
        return f"command 0x{cmd:02X}"
