"""The bridge process: a local HTTP API on 127.0.0.1:8730 for the kiosk app.

Its own process (systemd/kiosk-bridge.service) so that a crash of the kiosk
app or of the bridge does not take the other down. FastAPI endpoints are plain
``def``: they run in the server's thread pool and block on ``Link.request``,
which is thread-safe; the serial link itself is served by the Link's threads.

Every call but ``GET /v1/status`` needs the per-boot token the bridge writes
to ``--token-file`` at start (firmware_bridge/access.py): the keypad, frames,
printer, firmware and simulator belong to the kiosk app, not to whatever else
runs on the machine.

    python -m firmware_bridge.service --serial /dev/ttyUSB0
    python -m firmware_bridge.service --serial sim     # in-process simulator (demo), adds /v1/sim
"""
from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import json
import logging
import socket
import sys
from pathlib import Path
from collections.abc import AsyncIterator, Callable
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from firmware_bridge import DEFAULT_PORT
from firmware_bridge.access import TOKEN_HEADER, new_token, read_token_file, token_matches, write_token_file
from firmware_bridge.bridge import Bridge
from firmware_bridge.escpos import Receipt
from firmware_bridge.messages import BuzzerPattern, LedColor, LedPattern, LightChannel
from firmware_bridge.session import Link
from kiosk import metrics
from kiosk.errors import DeviceError, InputError, IntegrityError, KioskError

log = logging.getLogger(__name__)


class EntryStart(BaseModel):
    timeout_s: float = Field(120.0, ge=1, le=600)
    reveal_last: int = Field(1, ge=0, le=4)


class LightReq(BaseModel):
    channel: Literal["fill", "ir"]
    level: int = Field(ge=0, le=100)


class LedReq(BaseModel):
    color: Literal["off", "green", "red", "amber", "blue"]
    pattern: Literal["solid", "slow_blink", "fast_blink", "pulse"] = "solid"


class BuzzerReq(BaseModel):
    pattern: Literal["off", "short", "double", "long", "error"] = "short"
    repeat: int = Field(1, ge=1, le=10)


class PrintReq(BaseModel):
    escpos_b64: str = Field(min_length=1, max_length=1_000_000)


class ReceiptReq(BaseModel):
    title: str = Field(max_length=64)
    lines: list[tuple[str, str] | str] = Field(default_factory=list, max_length=200)
    footer: str = Field("", max_length=200)
    columns: int = Field(32, ge=24, le=64)


class FirmwareReq(BaseModel):
    # a bare file name in the bridge's firmware directory (KIOSK_BRIDGE_FIRMWARE_DIR), e.g. "mcu-2.1.0.kfw"
    name: str = Field(min_length=1, max_length=255)


class SimCommand(BaseModel):
    line: str = Field(max_length=200)


def _error(status: int, e: KioskError) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": e.to_dict()})


# what anyone on the machine may call: the watchdog's and technician page's liveness probe, the metrics scrape
OPEN_PATHS = frozenset({("GET", "/v1/status"), ("HEAD", "/v1/status"),
                        ("GET", "/metrics")})  # counters and states only (loopback scrape)
_REFUSED = json.dumps({"error": {"code": "bridge_unauthorized", "message":
                                 f"this call needs the kiosk app's bridge token ({TOKEN_HEADER})"}}).encode()


class TokenGate:
    """ASGI middleware: every request but OPEN_PATHS carries the per-boot token, or gets 401 and nothing else.

    It runs before routing, so a refused caller learns nothing: not whether an
    entry or route exists, and the entry in progress is neither cancelled nor read.
    """

    def __init__(self, app: Any, token: str) -> None:
        self.app, self.token = app, token
        self._header = TOKEN_HEADER.lower().encode()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or (scope["method"], scope["path"]) in OPEN_PATHS:
            return await self.app(scope, receive, send)
        presented = None
        for k, v in scope.get("headers") or ():
            if k == self._header:
                presented = v.decode("latin-1")
                break
        if token_matches(presented, self.token):
            return await self.app(scope, receive, send)
        await send({"type": "http.response.start", "status": 401,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(_REFUSED)).encode())]})
        await send({"type": "http.response.body", "body": _REFUSED})


def create_app(bridge: Bridge, *, sim: Any = None, token: str | None = None,
               on_stop: Callable[[], None] | None = None) -> FastAPI:
    """``token``: the secret callers must present (a fresh one when None; it is ``app.state.token``).

    ``on_stop`` runs when the server shuts down (uvicorn re-raises SIGTERM after
    its shutdown, so code after ``uvicorn.run`` does not run under systemd).
    """

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        if on_stop is not None:
            on_stop()

    app = FastAPI(title="kiosk firmware bridge", version="1", docs_url=None, redoc_url=None, lifespan=lifespan)
    app.state.token = token or new_token()
    app.add_middleware(TokenGate, token=app.state.token)
    metrics.instrument_bridge(app, bridge)  # GET /metrics (loopback): link and peripheral states
    p = bridge.peripherals

    @app.exception_handler(DeviceError)
    def _device_error(_: Request, e: DeviceError) -> JSONResponse:
        return _error(503, e)

    @app.exception_handler(InputError)
    def _input_error(_: Request, e: InputError) -> JSONResponse:
        return _error({"not_found": 404, "firmware_unavailable": 404, "busy": 409}.get(e.code, 422), e)

    @app.exception_handler(RequestValidationError)
    def _validation_error(_: Request, e: RequestValidationError) -> JSONResponse:
        # the documented error shape (docs/protocol.md §11), naming the first bad field, instead of FastAPI's "detail" list
        first = (e.errors() or [{}])[0]
        if first.get("type") == "json_invalid":
            return _error(422, InputError("the request body is not valid JSON", code="invalid_input", field="body"))
        loc = [str(x) for x in first.get("loc", ())[1:] if not any(c in str(x) for c in "[|")]  # no union/tuple type tags
        field = ".".join(loc) or None
        msg = f"{field}: {first.get('msg', 'invalid request')}" if field else str(first.get("msg", "invalid request"))
        return _error(422, InputError(msg, code="invalid_input", field=field))

    @app.exception_handler(IntegrityError)
    def _integrity_error(_: Request, e: IntegrityError) -> JSONResponse:
        return _error(422, e)

    @app.get("/v1/status")
    def status() -> dict[str, Any]:
        return bridge.status()

    @app.get("/v1/frames")
    def frames(limit: int = 50) -> list[dict[str, Any]]:
        return [vars(f) for f in bridge.link.ring.snapshot(max(1, min(limit, 200)))]

    @app.get("/v1/events")
    def events(after: int = 0) -> list[dict[str, Any]]:
        return bridge.events(after)

    @app.post("/v1/keypad/id-entry")
    def start_entry(req: EntryStart) -> dict[str, Any]:
        return bridge.start_id_entry(req.timeout_s, req.reveal_last)

    @app.get("/v1/keypad/id-entry/{sid}")
    def poll_entry(sid: str) -> dict[str, Any]:
        return bridge.entry(sid)

    @app.delete("/v1/keypad/id-entry/{sid}")
    def cancel_entry(sid: str) -> dict[str, Any]:
        return bridge.cancel_entry(sid)

    @app.post("/v1/light")
    def light(req: LightReq) -> dict[str, Any]:
        p.light(LightChannel[req.channel.upper()], req.level)
        return {"ok": True}

    @app.post("/v1/led")
    def led(req: LedReq) -> dict[str, Any]:
        p.led(LedColor[req.color.upper()], LedPattern[req.pattern.upper()])
        return {"ok": True}

    @app.post("/v1/buzzer")
    def buzzer(req: BuzzerReq) -> dict[str, Any]:
        p.buzz(BuzzerPattern[req.pattern.upper()], req.repeat)
        return {"ok": True}

    @app.post("/v1/print")
    def print_raw(req: PrintReq) -> dict[str, Any]:
        try:
            data = base64.b64decode(req.escpos_b64, validate=True)
        except (binascii.Error, ValueError) as e:
            raise InputError("escpos_b64 is not valid base64", field="escpos_b64") from e
        return vars(p.print_escpos(data))

    @app.post("/v1/print/receipt")
    def print_receipt(req: ReceiptReq) -> dict[str, Any]:
        r = Receipt(columns=req.columns).title(req.title).rule()
        for line in req.lines:
            r.kv(*line) if isinstance(line, tuple) else r.text(line)
        if req.footer:
            r.rule().text(req.footer, where="center")
        return vars(p.print_escpos(r.finish()))

    @app.get("/v1/printer")
    def printer() -> dict[str, Any]:
        flags = p.printer_flags()
        return {"paper_out": bool(flags & 0x01), "cover_open": bool(flags & 0x02), "paper_near_end": bool(flags & 0x20)}

    @app.get("/v1/card")
    def card() -> dict[str, Any]:
        c = p.card()
        return {"present": c.present, "atr": c.atr.hex().upper()}

    @app.post("/v1/self-test")
    def self_test() -> dict[str, Any]:
        results = p.self_test()
        return {"passed": all(results.values()), "results": results}

    @app.post("/v1/firmware")
    def firmware_update(req: FirmwareReq) -> dict[str, Any]:
        """Start or resume a signed update from a .kfw file in the firmware directory; poll GET /v1/firmware."""
        return bridge.start_firmware_update(req.name)

    @app.get("/v1/firmware")
    def firmware_job() -> dict[str, Any]:
        return bridge.firmware_job()

    if sim is not None:

        @app.post("/v1/sim")
        def sim_command(req: SimCommand) -> dict[str, Any]:
            """Demo only (``--serial sim``): drive the simulated MCU (key presses, paper out, ...)."""
            return {"result": sim.run_command(req.line)}

    return app


def _int_in(lo: int, hi: int):
    def parse(v: str) -> int:
        try:
            n = int(v)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {v!r}") from None
        if not lo <= n <= hi:
            raise argparse.ArgumentTypeError(f"must be {lo}..{hi}, got {n}")
        return n

    return parse


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    from kiosk.config import load

    settings = load()
    ap = argparse.ArgumentParser(prog="python -m firmware_bridge.service", description="firmware bridge: serial link to the terminal MCU, local HTTP API")
    ap.add_argument("--serial", default=settings.serial_url or "", help="pyserial URL (/dev/ttyUSB0, socket://h:p, rfc2217://h:p, loop://) or 'sim'")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=_int_in(1, 65535), default=DEFAULT_PORT)
    ap.add_argument("--baud", type=_int_in(50, 4_000_000), default=115200)
    ap.add_argument("--token-file", type=Path, default=settings.bridge_token_path(),
                    help="where to write this run's API secret for the kiosk app (KIOSK_BRIDGE_TOKEN_FILE)")
    ap.add_argument("--firmware-dir", type=Path, default=settings.bridge_firmware_path(),
                    help="the only directory firmware images are installed from (KIOSK_BRIDGE_FIRMWARE_DIR)")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    sim = None
    url = a.serial
    if url == "sim":
        from firmware_bridge.sim import Simulator

        sim = Simulator().start()
        url = sim.url
        log.info("simulated MCU on %s", url)
    if not url:
        print("service: no serial URL: pass --serial URL or set KIOSK_SERIAL_URL", file=sys.stderr)
        return 2
    try:  # a busy or unusable address is one clear line, before any thread starts
        with socket.socket(socket.AF_INET6 if ":" in a.host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((a.host, a.port))
    except OSError as e:
        print(f"service: cannot listen on {a.host}:{a.port}: {e.strerror or e}", file=sys.stderr)
        if sim is not None:
            sim.close()
        return 2
    token = new_token()
    try:
        write_token_file(a.token_file, token)
        a.firmware_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as e:
        print(f"service: cannot write the API token {a.token_file} or make {a.firmware_dir}: {e.strerror or e}",
              file=sys.stderr)
        if sim is not None:
            sim.close()
        return 2
    link = Link(url, baudrate=a.baud).start()

    def forget_token() -> None:  # a secret of a bridge no longer running is of no use to anyone
        if read_token_file(a.token_file) == token:
            a.token_file.unlink(missing_ok=True)

    app = create_app(Bridge(link, firmware_dir=a.firmware_dir, firmware_max_bytes=settings.bridge_firmware_max_bytes),
                     sim=sim, token=token, on_stop=forget_token)
    try:
        uvicorn.run(app, host=a.host, port=a.port, log_level="warning")
    finally:
        forget_token()
        link.stop()
        if sim is not None:
            sim.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
