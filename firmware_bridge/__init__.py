"""Serial link to the terminal's microcontroller (MCU) and its peripherals.

Layers, innermost first (pure code does no I/O):

    crc, frame, messages, keypad, escpos     pure: bytes in, values out
    session (Link)                           ACK/NAK, retransmission, heartbeat, reconnect
    transport                                pyserial URLs (/dev/tty*, loop://, socket://, rfc2217://)
    peripherals, firmware                    typed commands on top of a Link
    bridge, service, client                  the bridge process and its local HTTP API (127.0.0.1:8730)
    sim                                      a virtual MCU speaking the same bytes

The wire protocol is specified in docs/protocol.md.
"""
from __future__ import annotations

PROTOCOL_VERSION = 1
DEFAULT_PORT = 8730
