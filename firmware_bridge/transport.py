"""Byte transport over any pyserial URL, translated into DeviceError.

``/dev/ttyUSB0``, ``/dev/pts/N``, ``loop://``, ``socket://host:port`` and
``rfc2217://host:port`` all go through ``serial.serial_for_url``. Reconnection
policy (backoff) lives in the session; this layer only opens, reads, writes and
closes, and says ``disconnected`` by raising DeviceError(code="disconnected").
"""
from __future__ import annotations

import serial

from kiosk.errors import DeviceError

DEFAULT_BAUD = 115200


class SerialTransport:
    def __init__(self, url: str, *, baudrate: int = DEFAULT_BAUD, read_timeout: float = 0.01) -> None:
        if not url:
            raise DeviceError("no serial URL configured (KIOSK_SERIAL_URL or --serial)", code="no_serial_url", field="serial_url")
        self.url = url
        self.baudrate = baudrate
        self.read_timeout = read_timeout
        self._port: serial.SerialBase | None = None

    def open(self) -> None:
        try:
            # a local tty is locked (flock) so a second bridge or a stray terminal program cannot steal frames
            local = "://" not in self.url
            port = serial.serial_for_url(
                self.url,
                baudrate=self.baudrate,
                timeout=self.read_timeout,
                write_timeout=1.0 if local else None,  # rfc2217:// refuses a write timeout
                do_not_open=True,
                exclusive=True if local else None,
            )
            port.open()
        except (serial.SerialException, OSError, ValueError, NotImplementedError) as e:
            raise DeviceError(f"cannot open {self.url}: {e}", code="disconnected", field="serial_url") from e
        try:
            port.reset_input_buffer()
        except (serial.SerialException, OSError, NotImplementedError):
            pass
        self._port = port

    @property
    def is_open(self) -> bool:
        return self._port is not None

    def read(self, max_bytes: int = 4096) -> bytes:
        """Whatever is available (blocks at most ``read_timeout`` for the first byte)."""
        port = self._port
        if port is None:
            raise DeviceError("serial port is closed", code="disconnected")
        try:
            data = port.read(1)
            if data:
                waiting = port.in_waiting
                if waiting:
                    data += port.read(min(waiting, max_bytes))
            return data
        except (serial.SerialException, OSError, TypeError, AttributeError) as e:
            # TypeError/AttributeError: pyserial internals after a concurrent close
            raise DeviceError(f"serial link lost: {e}", code="disconnected") from e

    def write(self, data: bytes) -> None:
        port = self._port
        if port is None:
            raise DeviceError("serial port is closed", code="disconnected")
        try:
            port.write(data)
        except (serial.SerialException, OSError, TypeError, AttributeError) as e:
            raise DeviceError(f"serial write failed: {e}", code="disconnected") from e

    def close(self) -> None:
        port, self._port = self._port, None
        if port is not None:
            try:
                port.close()
            except (serial.SerialException, OSError):
                pass
