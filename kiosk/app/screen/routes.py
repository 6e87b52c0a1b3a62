"""HTTP endpoints of the patient's screen (mounted under /screen on the kiosk app).

    GET /screen/              the page (kiosk browser opens this full screen)
    GET /screen/static/...    its CSS/JS (package data, no build step)
    GET /screen/strings       zh/en texts for phases, reasons and labels
    GET /screen/state         the current ScreenState (JSON; polling fallback)
    GET /screen/events        Server-Sent Events: one `state` event per change
    GET /screen/camera.jpg    the current frame as JPEG (204 when there is none)
    GET /screen/camera.mjpg   the same as an MJPEG stream (multipart/x-mixed-replace)
    POST /screen/session      the secret (X-Screen-Token) for the page's session cookie

Camera bytes are produced in memory per request and sent with no-store. State,
events, camera and session answer only the holder of the screen's per-start
secret (kiosk.app.screen.access); the page, static files and strings are open.
"""
from __future__ import annotations

import asyncio
from pathlib import Path

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles

from kiosk.app.screen.access import COOKIE, LOOPBACK, ScreenGate, new_token, session_value
from kiosk.app.screen.bus import ScreenBus
from kiosk.app.screen.preview import encode_jpeg
from kiosk.app.screen.texts import catalogue

STATIC = Path(__file__).resolve().parent / "static"
NO_STORE = {"Cache-Control": "no-store, max-age=0", "Pragma": "no-cache"}
HEARTBEAT_S = 15.0
MJPEG_FPS = 15


def sse_message(bus: ScreenBus) -> bytes:
    st = bus.current()
    return f"id: {st.seq}\nevent: state\ndata: {st.model_dump_json()}\n\n".encode()


def loopback_only(request: Request) -> None:
    """The screen carries the live camera preview and the patient's amounts: it is for the kiosk
    browser on this machine, even when the app is bound wider for a POS on the shop's network."""
    if not request.client or request.client.host not in LOOPBACK:
        raise HTTPException(403, "the patient's screen answers on loopback only")


GUARDED = ("/state", "/events", "/camera.jpg", "/camera.mjpg", "/session")


def build_router(bus: ScreenBus, prefix: str, token: str) -> APIRouter:
    """The screen's routes; only `mount` serves them, behind the ScreenGate for `token`."""
    r = APIRouter(prefix=prefix, tags=["screen"], dependencies=[Depends(loopback_only)])
    strings = catalogue()

    @r.get("", include_in_schema=False)
    async def _root() -> RedirectResponse:
        return RedirectResponse(prefix + "/")

    @r.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers=NO_STORE, media_type="text/html; charset=utf-8")

    @r.get("/strings")
    async def get_strings() -> JSONResponse:
        return JSONResponse(strings)

    @r.post("/session", status_code=204)
    async def session() -> Response:
        # reached only with the secret (the gate); the cookie carries a value derived from it
        resp = Response(status_code=204, headers=NO_STORE)
        resp.set_cookie(COOKIE, session_value(token), path=prefix + "/", httponly=True, samesite="strict")
        return resp

    @r.get("/state")
    async def get_state() -> Response:
        return Response(bus.current().model_dump_json(), media_type="application/json", headers=NO_STORE)

    @r.get("/events")
    async def events(request: Request) -> StreamingResponse:
        sub = bus.subscribe()

        async def stream():  # type: ignore[no-untyped-def]
            try:
                yield b"retry: 500\n\n" + sse_message(bus)
                while not bus.closed:
                    try:
                        await asyncio.wait_for(sub.event.wait(), HEARTBEAT_S)
                    except asyncio.TimeoutError:
                        if await request.is_disconnected():
                            return
                        yield b": keep-alive\n\n"
                        continue
                    sub.event.clear()
                    if bus.closed:
                        return
                    yield sse_message(bus)
            finally:
                bus.unsubscribe(sub)

        headers = dict(NO_STORE, **{"X-Accel-Buffering": "no"})
        return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)

    @r.get("/camera.jpg")
    async def camera_jpg() -> Response:
        _, frame = bus.latest_frame()
        if frame is None or not bus.current().camera:
            return Response(status_code=204, headers=NO_STORE)
        data = await asyncio.to_thread(encode_jpeg, frame)
        return Response(data, media_type="image/jpeg", headers=NO_STORE)

    @r.get("/camera.mjpg")
    async def camera_mjpg(request: Request) -> StreamingResponse:
        async def stream():  # type: ignore[no-untyped-def]
            last = -1
            while not bus.closed and not await request.is_disconnected():
                seq, frame = bus.latest_frame()
                if frame is not None and seq != last and bus.current().camera:
                    last = seq
                    data = await asyncio.to_thread(encode_jpeg, frame)
                    yield (b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: "
                           + str(len(data)).encode() + b"\r\n\r\n" + data + b"\r\n")
                await asyncio.sleep(1 / MJPEG_FPS)

        return StreamingResponse(stream(), media_type="multipart/x-mixed-replace; boundary=frame", headers=NO_STORE)

    return r


def mount(app: FastAPI, bus: ScreenBus, prefix: str = "/screen", token: str | None = None) -> str:
    """Mount the screen; `token` is its secret (a fresh one when None). Returns the secret, also
    `app.state.screen_token`, for the caller to write where the kiosk browser's launcher reads it."""
    token = token or new_token()
    app.state.screen_token = token
    app.add_middleware(ScreenGate, token=token, guarded=frozenset(prefix + p for p in GUARDED))
    app.include_router(build_router(bus, prefix, token))
    app.mount(prefix + "/static", StaticFiles(directory=STATIC), name="screen-static")
    return token
